"""The dispatcher lock (service/enforcement/leader.py) on the real databases: one holder, the
holder named, the lock lost when its connection is cut (and dispatching stopped with it)."""

from __future__ import annotations

import asyncio
import logging

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from service import enforcement
from service.config import load_settings
from service.enforcement.leader import LOCK_KEY, ActiveDispatcher
from service.enforcement.sending import CoaReply, CoaTarget
from service.enums import CoaKind, NasVendor


def _active(factory: sessionmaker[Session]) -> ActiveDispatcher | None:
    with factory() as session:
        return enforcement.active_dispatcher(session=session)


def test_one_holder_at_a_time_and_the_next_after_release(
    session_factory: sessionmaker[Session],
) -> None:
    first = enforcement.dispatcher_lock(session_factory=session_factory)
    second = enforcement.dispatcher_lock(session_factory=session_factory)
    try:
        assert _active(session_factory) is None
        assert first.acquire()
        assert first.acquire()  # again: still ours
        assert not second.acquire()
        assert first.held()
        assert not second.held()
        holder = _active(session_factory)
        assert holder is not None
        assert holder.pid > 0
        assert holder.since is not None
        first.release()
        assert not first.held()
        assert second.acquire()
        assert _active(session_factory) is not None
    finally:
        first.release()
        second.release()
    assert _active(session_factory) is None


class _Idle:
    """A sender that sends (so the dispatcher runs) but is never asked to: no rows."""

    sends = True

    def takes_coa_request(self, vendor: NasVendor) -> bool:
        return False

    async def send(self, target: CoaTarget, kind: CoaKind, wait: float) -> CoaReply:
        raise AssertionError("nothing is queued")


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_a_cut_lock_connection_stops_dispatching_then_it_is_taken_again(
    session_factory: sessionmaker[Session], caplog: pytest.LogCaptureFixture
) -> None:
    """The server ends the lock's session (as when the network to the database drops): the
    dispatcher says it stopped sending within the check interval, and takes the lock again."""
    settings = load_settings(coa_enabled=True)

    def holder_backend() -> int | None:
        with session_factory() as session:
            return session.scalar(
                text(
                    "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
                    " AND objid = :k AND database = (SELECT oid FROM pg_database"
                    " WHERE datname = current_database())"
                ),
                {"k": LOCK_KEY},
            )

    async def scenario() -> tuple[int, int]:
        stop = asyncio.Event()
        task = asyncio.create_task(
            enforcement.run_dispatcher(
                session_factory=session_factory, settings=settings, sender=_Idle(), stop_event=stop
            )
        )
        backend = None
        for _ in range(100):
            await asyncio.sleep(0.05)
            backend = holder_backend()
            if backend is not None:
                break
        assert backend is not None
        with session_factory() as session, session.begin():
            session.execute(text("SELECT pg_terminate_backend(:p)"), {"p": backend})
        again = None
        for _ in range(100):
            await asyncio.sleep(0.05)
            again = holder_backend()
            if again is not None and again != backend:
                break
        stop.set()
        await asyncio.wait_for(task, 10)
        assert again is not None
        return backend, again

    with caplog.at_level(logging.INFO, logger="schoolgate.coa"):
        first, second = asyncio.run(scenario())
    assert first != second
    said = [r.getMessage() for r in caplog.records if r.name == "schoolgate.coa"]
    assert [line.split(" on ")[0].split(":")[0] for line in said] == [
        "CoA dispatcher active",
        "CoA dispatcher lost the dispatcher lock",
        "CoA dispatcher active",
    ]
    assert holder_backend() is None  # released when it stopped
