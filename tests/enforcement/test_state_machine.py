"""The CoA request state machine as a table: each answer (or none) moves a claimed request to
one state, at the moment the caller gives. No sockets: a scripted sender stands in for the NAS
(the UDP path is covered by tests/radius/test_coa_dispatch.py against a real peer)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from service import enforcement
from service.config import load_settings
from service.db import make_engine, make_session_factory, transaction
from service.enforcement import (
    Attempt,
    CoaAnswer,
    CoaReply,
    CoaTarget,
    Dispatcher,
    NullCoaSender,
    claim,
    settle,
)
from service.enums import CoaKind, NasVendor
from service.models import NasClient
from service.models.coa import CoaRequest
from tests.enforcement.sessions import open_session

T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
SETTINGS = load_settings(None, coa_timeout_seconds=1.0, coa_retries=3)
ACK = CoaReply(CoaAnswer.ACK, packet="Disconnect-ACK")
NO_ANSWER = CoaReply(None)


@dataclass
class ScriptedSender:
    """Answers each send with the next scripted reply; only Cisco takes CoA-Request."""

    replies: list[CoaReply] = field(default_factory=list)
    sent: list[tuple[CoaKind, int]] = field(default_factory=list)
    sends: bool = True

    def takes_coa_request(self, vendor: NasVendor) -> bool:
        return vendor is NasVendor.CISCO

    async def send(self, target: CoaTarget, kind: CoaKind, wait: float) -> CoaReply:
        self.sent.append((kind, target.port))
        return self.replies.pop(0)


@pytest.fixture
def queued(westgate: SimpleNamespace, session_factory: sessionmaker[Session]) -> int:
    """The school laptop's session on the demo NAS has one Disconnect queued at T0."""
    with session_factory() as session:
        nas_id = session.scalar(select(NasClient.id))
    open_session(session_factory, westgate.school_laptop, nas_id=nas_id)
    with transaction(session_factory) as session:
        (row,) = enforcement.disconnect_device(
            session=session, mac=westgate.school_laptop, actor="t", now=T0
        )
        return row.id


def _row(factory: sessionmaker[Session], row_id: int) -> CoaRequest:
    with factory() as session:
        row = session.get(CoaRequest, row_id)
        assert row is not None
        return row


def _set(factory: sessionmaker[Session], row_id: int, **values: object) -> None:
    with transaction(factory) as session:
        session.execute(update(CoaRequest).where(CoaRequest.id == row_id).values(**values))


def _claim(factory: sessionmaker[Session], row_id: int, now: datetime) -> Attempt | None:
    with transaction(factory) as session:
        return claim(
            session=session, row_id=row_id, settings=SETTINGS, sender=ScriptedSender(), now=now
        )


def test_claim_takes_a_due_row_for_one_attempt(
    queued: int, session_factory: sessionmaker[Session]
) -> None:
    attempt = _claim(session_factory, queued, T0)
    assert attempt is not None
    assert (attempt.number, attempt.kind, attempt.wait) == (1, CoaKind.DISCONNECT, 1.0)
    row = _row(session_factory, queued)
    assert (row.state, row.attempts) == ("sent", 1)
    assert row.next_attempt_at == T0 + timedelta(seconds=1.5)  # the wait and a grace period
    assert row.history[-1]["detail"].startswith("Disconnect-Request attempt 1 to 127.0.0.1:")
    # Claimed: a second dispatcher does not take it before the wait has run out...
    assert _claim(session_factory, queued, T0 + timedelta(seconds=1)) is None
    # ...and takes it over (attempt 2, wait doubled) once it has.
    again = _claim(session_factory, queued, T0 + timedelta(seconds=2))
    assert again is not None
    assert (again.number, again.wait) == (2, 2.0)


def test_a_row_not_yet_due_is_left_alone(
    queued: int, session_factory: sessionmaker[Session]
) -> None:
    assert _claim(session_factory, queued, T0 - timedelta(seconds=1)) is None
    assert _row(session_factory, queued).state == "queued"


def test_attempts_used_up_is_a_timeout(queued: int, session_factory: sessionmaker[Session]) -> None:
    _set(session_factory, queued, state="sent", attempts=3)
    assert _claim(session_factory, queued, T0) is None
    row = _row(session_factory, queued)
    assert (row.state, row.finished_at) == ("timeout", T0)
    assert row.detail == "no answer from 127.0.0.1 after 3 attempts"


def test_no_nas_known_is_a_failure(queued: int, session_factory: sessionmaker[Session]) -> None:
    _set(session_factory, queued, nas_id=None, nas_ip="192.0.2.7")
    assert _claim(session_factory, queued, T0) is None
    row = _row(session_factory, queued)
    assert (row.state, row.detail) == ("failed", "no NAS client is known for 192.0.2.7")


@pytest.mark.parametrize(
    ("vendor", "sent_as"),
    [("cisco", CoaKind.COA), ("generic", CoaKind.DISCONNECT)],
)
def test_coa_is_sent_as_disconnect_where_the_vendor_takes_no_coa_request(
    queued: int, session_factory: sessionmaker[Session], vendor: str, sent_as: CoaKind
) -> None:
    _set(session_factory, queued, kind="coa")
    with transaction(session_factory) as session:
        session.execute(update(NasClient).values(vendor=vendor))
    attempt = _claim(session_factory, queued, T0)
    assert attempt is not None
    assert attempt.kind is sent_as
    assert _row(session_factory, queued).kind == sent_as.value


NAK_503 = CoaReply(
    CoaAnswer.NAK,
    packet="Disconnect-NAK",
    error_cause=503,
    cause="Error-Cause 503 Session-Context-Not-Found",
)
COA_NAK = CoaReply(CoaAnswer.NAK, packet="CoA-NAK")


# (kind claimed, attempt number, reply) -> (state, kind after, attempts after, again, detail)
SETTLE_TABLE = [
    pytest.param(
        CoaKind.DISCONNECT, 1, ACK, ("ack", "disconnect", 1, False, "Disconnect-ACK"), id="ack"
    ),
    pytest.param(
        CoaKind.DISCONNECT,
        1,
        NAK_503,
        (
            "nak",
            "disconnect",
            1,
            False,
            "Disconnect-NAK (Error-Cause 503 Session-Context-Not-Found)",
        ),
        id="nak-is-final",
    ),
    pytest.param(
        CoaKind.COA,
        1,
        COA_NAK,
        ("fallback", "disconnect", 0, True, "CoA-NAK (no Error-Cause): sending Disconnect-Request"),
        id="coa-nak-falls-back",
    ),
    pytest.param(
        CoaKind.DISCONNECT,
        1,
        NO_ANSWER,
        ("sent", "disconnect", 1, True, "no answer to attempt 1; retrying"),
        id="silence-is-retried",
    ),
    pytest.param(
        CoaKind.DISCONNECT,
        3,
        CoaReply(None, problem="no answer (Connection refused)"),
        (
            "timeout",
            "disconnect",
            3,
            False,
            "no answer (Connection refused); gave up after 3 attempts to 127.0.0.1",
        ),
        id="last-silence-times-out",
    ),
    pytest.param(
        CoaKind.DISCONNECT,
        1,
        CoaReply(
            CoaAnswer.UNTRUSTED, packet="Disconnect-ACK", problem="bad Response Authenticator"
        ),
        ("failed", "disconnect", 1, False, "bad Response Authenticator"),
        id="untrusted-fails",
    ),
    pytest.param(
        CoaKind.DISCONNECT,
        1,
        CoaReply(CoaAnswer.UNEXPECTED, packet="code 2"),
        ("failed", "disconnect", 1, False, "unexpected answer code 2"),
        id="wrong-code-fails",
    ),
]


@pytest.mark.parametrize(("kind", "number", "reply", "expected"), SETTLE_TABLE)
def test_settle(
    queued: int,
    session_factory: sessionmaker[Session],
    kind: CoaKind,
    number: int,
    reply: CoaReply,
    expected: tuple[str, str, int, bool, str],
) -> None:
    _set(session_factory, queued, state="sent", kind=kind.value, attempts=number)
    target = CoaTarget("127.0.0.1", 3799, b"testing123", NasVendor.GENERIC, None, None, None, None)
    attempt = Attempt(row_id=queued, number=number, kind=kind, target=target, wait=1.0)
    later = T0 + timedelta(seconds=5)
    with transaction(session_factory) as session:
        again = settle(session=session, attempt=attempt, reply=reply, settings=SETTINGS, now=later)
    row = _row(session_factory, queued)
    assert (row.state, row.kind, row.attempts, again, row.detail) == expected
    assert row.updated_at == later
    assert row.history[-1] == {
        "at": later.isoformat(timespec="seconds"),
        "state": expected[0],
        "detail": expected[4],
    }
    assert row.finished_at == (
        later if expected[0] in ("ack", "nak", "timeout", "failed") else None
    )
    if again:
        assert row.next_attempt_at == later  # straight on, no wait
    if reply.answer in (CoaAnswer.ACK, CoaAnswer.NAK):
        assert row.error_cause == reply.error_cause


def test_an_answer_for_an_attempt_taken_over_is_ignored(
    queued: int, session_factory: sessionmaker[Session]
) -> None:
    _set(session_factory, queued, state="sent", attempts=2)  # another dispatcher's attempt 2
    target = CoaTarget("127.0.0.1", 3799, b"testing123", NasVendor.GENERIC, None, None, None, None)
    stale = Attempt(row_id=queued, number=1, kind=CoaKind.DISCONNECT, target=target, wait=1.0)
    with transaction(session_factory) as session:
        assert not settle(session=session, attempt=stale, reply=ACK, settings=SETTINGS, now=T0)
    assert _row(session_factory, queued).state == "sent"


def _ticks(start: datetime) -> Iterator[datetime]:
    moment = start
    while True:
        yield moment
        moment += timedelta(seconds=1)


def test_dispatcher_drives_a_row_to_its_end_on_its_clock(
    queued: int, session_factory: sessionmaker[Session]
) -> None:
    _set(session_factory, queued, kind="coa")
    with transaction(session_factory) as session:
        session.execute(update(NasClient).values(vendor="cisco"))
    sender = ScriptedSender([NO_ANSWER, COA_NAK, ACK])
    clock = _ticks(T0)
    dispatcher = Dispatcher(
        session_factory=session_factory,
        settings=SETTINGS,
        sender=sender,
        clock=lambda: next(clock),
    )
    assert asyncio.run(dispatcher.run_once()) == 1
    row = _row(session_factory, queued)
    assert [kind for kind, _ in sender.sent] == [CoaKind.COA, CoaKind.COA, CoaKind.DISCONNECT]
    assert [step["state"] for step in row.history] == [
        "queued",
        "sent",
        "sent",
        "sent",
        "fallback",
        "sent",
        "ack",
    ]
    assert (row.state, row.kind, row.attempts) == ("ack", "disconnect", 1)
    assert T0 < row.finished_at < T0 + timedelta(minutes=1)  # the dispatcher's clock, not ours


def test_under_the_null_sender_rows_stay_queued(
    queued: int, session_factory: sessionmaker[Session]
) -> None:
    sender = NullCoaSender()
    sent = enforcement.send_queued(
        session_factory=session_factory, settings=SETTINGS, sender=sender
    )
    drained = enforcement.drain(
        session_factory=session_factory, settings=SETTINGS, sender=sender, limit=1
    )
    assert (sent, drained) == (0, 0)
    row = _row(session_factory, queued)
    assert (row.state, row.attempts) == ("queued", 0)


def test_send_queued_sends_nothing_with_coa_disabled(
    queued: int, session_factory: sessionmaker[Session]
) -> None:
    sender = ScriptedSender([ACK])
    disabled = load_settings(None, coa_enabled=False)
    assert (
        enforcement.send_queued(session_factory=session_factory, settings=disabled, sender=sender)
        == 0
    )
    assert sender.sent == []
    assert _row(session_factory, queued).state == "queued"


def test_send_queued_sends_what_was_queued(
    queued: int, session_factory: sessionmaker[Session]
) -> None:
    sender = ScriptedSender([ACK])
    assert (
        enforcement.send_queued(session_factory=session_factory, settings=SETTINGS, sender=sender)
        == 1
    )
    assert _row(session_factory, queued).state == "ack"


def test_the_long_running_dispatcher_sends_then_stops_when_told(
    queued: int, session_factory: sessionmaker[Session]
) -> None:
    sender = ScriptedSender([ACK])

    async def serve() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(
            enforcement.run_dispatcher(
                session_factory=session_factory, settings=SETTINGS, sender=sender, stop_event=stop
            )
        )
        for _ in range(50):
            await asyncio.sleep(0.1)
            if _row(session_factory, queued).state == "ack":
                break
        stop.set()
        await asyncio.wait_for(task, 5)

    asyncio.run(serve())
    assert [kind for kind, _ in sender.sent] == [CoaKind.DISCONNECT]
    assert _row(session_factory, queued).state == "ack"


def test_a_database_outage_is_one_log_line_not_a_traceback_per_pass(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The RADIUS server's dispatcher polls twice a second: with its database gone it says so
    once, not with a traceback on every pass."""
    gone = tmp_path / "removed" / "schoolgate.db"  # a directory that does not exist
    factory = make_session_factory(make_engine(f"sqlite:///{gone}"))

    async def serve() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(
            enforcement.run_dispatcher(
                session_factory=factory,
                settings=SETTINGS,
                sender=ScriptedSender(),
                stop_event=stop,
            )
        )
        await asyncio.sleep(0.05 + 0.5 * 4)  # five passes
        stop.set()
        await asyncio.wait_for(task, 5)

    with caplog.at_level(logging.WARNING, logger="schoolgate.coa"):
        asyncio.run(serve())
    lines = [r for r in caplog.records if r.name == "schoolgate.coa"]
    assert [r.getMessage().split(" (")[0] for r in lines] == [
        "CoA dispatcher: the database does not answer"
    ]
    assert all(r.exc_info is None for r in lines)
