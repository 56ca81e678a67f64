"""The CoA dispatcher against a pyrad fake NAS: ACK, NAK with Error-Cause, timeouts with
retries, a wrong secret, CoA -> Disconnect fallback, durability across a restart."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from radius.coa import UdpCoaSender
from service import enforcement
from service.config import Settings, load_settings
from service.db import transaction
from service.devices import report_lost
from service.models import NasClient
from service.models.coa import CoaRequest
from tests.conftest import RunCli
from tests.enforcement.fakenas import COA_REQUEST, DISCONNECT_REQUEST, FakeNas
from tests.enforcement.sessions import open_session, point_nas
from tests.helpers import free_udp_port

SECRET = b"testing123"
FAST: dict[str, Any] = {"coa_timeout_seconds": 0.2, "coa_retries": 3}


def _rows(factory: sessionmaker[Session]) -> list[CoaRequest]:
    with factory() as session:
        return list(session.scalars(select(CoaRequest).order_by(CoaRequest.id)))


def drain(factory: sessionmaker[Session], settings: Settings, *, limit: float) -> int:
    return enforcement.drain(
        session_factory=factory, settings=settings, sender=UdpCoaSender(), limit=limit
    )


def _lose(factory: sessionmaker[Session], mac: str) -> None:
    with transaction(factory) as session:
        report_lost(session, mac=mac, reported_by="Ms Head", actor="tester")


def test_lost_phone_via_cli_is_disconnected_within_a_second(
    westgate: SimpleNamespace,
    session_factory: sessionmaker[Session],
    run_cli: RunCli,
) -> None:
    with FakeNas(SECRET) as nas:
        nas_id = point_nas(session_factory, nas.port)
        open_session(session_factory, westgate.school_laptop, nas_id=nas_id, acct_session_id="A1")
        open_session(session_factory, westgate.shared_ipad, nas_id=nas_id, acct_session_id="A2")
        run_cli("device", "lost", westgate.school_laptop, "--reported-by", "Ms Head")
        # The command sends the Disconnect itself before it exits: the NAS has it by then
        # (how fast a send is, is bench/coa_dispatch.py's business, not a timed test's).
        assert nas.arrived.wait(0.5)
        listed = json.loads(run_cli("coa", "list", "--json").stdout)
    assert len(nas.received) == 1, "only the lost device's session is touched"
    got = nas.received[0]
    assert got.code == DISCONNECT_REQUEST
    assert got.authenticator_ok
    assert got.attrs["Calling-Station-Id"] == ["02-00-00-00-10-01"]  # generic: RFC 3580 style
    assert got.attrs["Acct-Session-Id"] == ["A1"]
    assert got.attrs["NAS-IP-Address"] == ["127.0.0.1"]
    assert abs(got.attrs["Event-Timestamp"][0] - time.time()) < 60
    assert "Message-Authenticator" in got.attrs
    assert [(r["mac"], r["state"], r["kind"]) for r in listed] == [
        (westgate.school_laptop, "ack", "disconnect")
    ]
    assert [h["state"] for h in listed[0]["history"]] == ["queued", "sent", "ack"]


def test_nak_503_is_recorded_and_not_retried(
    westgate: SimpleNamespace, session_factory: sessionmaker[Session]
) -> None:
    with FakeNas(SECRET, mode="nak503") as nas:
        nas_id = point_nas(session_factory, nas.port)
        open_session(session_factory, westgate.school_laptop, nas_id=nas_id)
        _lose(session_factory, westgate.school_laptop)
        drain(session_factory, load_settings(None, **FAST), limit=10)
    (row,) = _rows(session_factory)
    assert (row.state, row.error_cause, row.attempts) == ("nak", 503, 1)
    assert "Session-Context-Not-Found" in (row.detail or "")
    assert len(nas.received) == 1


def test_down_nas_times_out_while_others_are_sent(
    westgate: SimpleNamespace, session_factory: sessionmaker[Session]
) -> None:
    dead_port = free_udp_port()  # nothing listens: ICMP port unreachable or silence
    with (
        FakeNas(SECRET, mode="silent") as silent,
        FakeNas(SECRET, host="127.0.0.2") as alive,  # all of 127/8 is loopback
    ):
        down_id = point_nas(session_factory, silent.port)
        with transaction(session_factory) as session:
            site_id = session.scalar(select(NasClient.site_id).where(NasClient.id == down_id))
            up = NasClient(
                site_id=site_id,
                name="up",
                address="127.0.0.2",
                secret="testing123",
                coa_port=alive.port,
            )
            dead = NasClient(
                site_id=site_id,
                name="dead",
                address="127.0.0.3",
                secret="testing123",
                coa_port=dead_port,
            )
            session.add_all([up, dead])
            session.flush()
            up_id, dead_id = up.id, dead.id
        open_session(session_factory, westgate.school_laptop, nas_id=down_id)
        open_session(session_factory, westgate.shared_ipad, nas_id=up_id, nas_ip="127.0.0.2")
        open_session(session_factory, westgate.visitor_phone, nas_id=dead_id, nas_ip="127.0.0.3")
        for mac in (westgate.school_laptop, westgate.shared_ipad, westgate.visitor_phone):
            _lose(session_factory, mac)
        started = time.monotonic()
        drain(session_factory, load_settings(None, **FAST), limit=20)
        elapsed = time.monotonic() - started
    by_mac = {r.mac: r for r in _rows(session_factory)}
    assert by_mac[westgate.shared_ipad].state == "ack"
    assert by_mac[westgate.school_laptop].state == "timeout"
    assert by_mac[westgate.school_laptop].attempts == 3
    assert by_mac[westgate.visitor_phone].state == "timeout"
    assert len(silent.received) == 3, "exactly coa_retries attempts, then give up"
    # Backoff 0.2 + 0.4 + 0.8 s, concurrently for both dead NASes: not 2 x 1.4 s in series.
    assert elapsed < 2.6
    assert [h["state"] for h in by_mac[westgate.school_laptop].history][-1] == "timeout"


def test_wrong_secret_answer_is_failed_not_trusted(
    westgate: SimpleNamespace, session_factory: sessionmaker[Session]
) -> None:
    with FakeNas(SECRET, mode="wrong-secret") as nas:
        nas_id = point_nas(session_factory, nas.port)
        open_session(session_factory, westgate.school_laptop, nas_id=nas_id)
        _lose(session_factory, westgate.school_laptop)
        drain(session_factory, load_settings(None, **FAST), limit=10)
    (row,) = _rows(session_factory)
    assert row.state == "failed"
    assert "Response Authenticator" in (row.detail or "")
    assert len(nas.received) == 1


def test_cisco_coa_nak_falls_back_to_disconnect(
    westgate: SimpleNamespace, session_factory: sessionmaker[Session]
) -> None:
    with FakeNas(SECRET, mode="coa-nak") as nas:
        nas_id = point_nas(session_factory, nas.port, vendor="cisco")
        open_session(session_factory, westgate.school_laptop, nas_id=nas_id)
        # A move, not a revocation: an exception lifts the pupil's phone from none to
        # internet; the laptop's session on the same NAS must not be touched.
        open_session(session_factory, westgate.pupil_phone, nas_id=nas_id, acct_session_id="P1")
        from service.grants import grant_exception

        with transaction(session_factory) as session:
            grant_exception(
                session,
                mac=westgate.pupil_phone,
                access="internet",
                reason="medical monitoring app",
                approved_by="Head",
                actor="tester",
            )
        drain(session_factory, load_settings(None, **FAST), limit=10)
    (row,) = _rows(session_factory)
    assert row.mac == westgate.pupil_phone
    assert [r.code for r in nas.received] == [COA_REQUEST, DISCONNECT_REQUEST]
    assert nas.received[0].attrs["Cisco-AVPair"] == ["subscriber:command=reauthenticate"]
    assert nas.received[0].attrs["Calling-Station-Id"] == [westgate.pupil_phone]  # colon style
    assert [h["state"] for h in row.history] == ["queued", "sent", "fallback", "sent", "ack"]
    assert row.state == "ack"
    assert row.kind == "disconnect"


def test_request_in_flight_at_a_crash_is_retried_on_start(
    westgate: SimpleNamespace, session_factory: sessionmaker[Session]
) -> None:
    with FakeNas(SECRET) as nas:
        nas_id = point_nas(session_factory, nas.port)
        open_session(session_factory, westgate.school_laptop, nas_id=nas_id)
        _lose(session_factory, westgate.school_laptop)
        # The process died after claiming attempt 1: the row says `sent`, its wait is over.
        with transaction(session_factory) as session:
            session.execute(
                update(CoaRequest).values(
                    state="sent",
                    attempts=1,
                    next_attempt_at=datetime.now(UTC) - timedelta(seconds=1),
                )
            )
        drain(session_factory, load_settings(None, **FAST), limit=10)
    (row,) = _rows(session_factory)
    assert (row.state, row.attempts) == ("ack", 2)
    assert len(nas.received) == 1


def test_device_disconnect_by_hand_and_export(
    westgate: SimpleNamespace, session_factory: sessionmaker[Session], run_cli: RunCli
) -> None:
    with FakeNas(SECRET) as nas:
        nas_id = point_nas(session_factory, nas.port)
        open_session(session_factory, westgate.school_laptop, nas_id=nas_id)
        out = run_cli("device", "disconnect", "02-00-00-00-10-01").stdout
        assert len(nas.received) == 1
    assert "ack" in out
    exported = run_cli("export", "coa").stdout
    assert "coa_request" in exported
    assert "ack" in exported
    missing = run_cli("device", "disconnect", westgate.shared_ipad, check=False)
    assert missing.returncode == 1
    assert "no open session" in missing.stderr
    assert "Traceback" not in missing.stderr
    bad = run_cli("device", "disconnect", "not-a-mac", check=False)
    assert bad.returncode == 1
    assert "Traceback" not in bad.stderr
    with session_factory() as session:
        assert len(enforcement.list_requests(session=session)) == 1


def test_queued_request_survives_until_a_dispatcher_runs(
    westgate: SimpleNamespace, session_factory: sessionmaker[Session], run_cli: RunCli
) -> None:
    with FakeNas(SECRET) as nas:
        nas_id = point_nas(session_factory, nas.port)
        open_session(session_factory, westgate.school_laptop, nas_id=nas_id)
        # No dispatcher anywhere (CoA off for this command): the request waits, durably.
        run_cli(
            "device",
            "lost",
            westgate.school_laptop,
            "--reported-by",
            "Ms Head",
            env={"SCHOOLGATE_COA_ENABLED": "false"},
        )
        assert nas.received == []
        assert [r.state for r in _rows(session_factory)] == ["queued"]
        # The service comes back: a fresh process picks the row up.
        run_cli("coa", "run", "--once", "--limit", "10")
        assert len(nas.received) == 1
    shown = run_cli("coa", "list", "--history").stdout
    assert "queued" in shown
    assert "Disconnect-ACK" in shown
    assert [r.state for r in _rows(session_factory)] == ["ack"]
