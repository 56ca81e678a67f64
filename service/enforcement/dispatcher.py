"""The CoA request state machine, and the dispatcher that drives rows through it.

    queued -> sent -> ack | nak | timeout | failed
                 \\-> sent (no answer: retried with a doubled wait, up to `coa_retries`)
                 \\-> fallback -> sent ... (a CoA-Request was NAKed: a Disconnect-Request instead)

Every attempt is claimed in the database first (`claim`: attempts+1, state `sent`,
next_attempt_at = now + this attempt's wait), committed, and only then sent: a process that dies
mid-attempt leaves a `sent` row whose next_attempt_at passes, and the next dispatcher (the
RADIUS server's or `schoolgate coa run`) retries it with its attempt count kept. The answer is
recorded by `settle`. Both take the moment explicitly; the `Dispatcher` reads its clock once per
step and owns the transactions (one per claim, one per answer), like any adapter's action.

Rows run concurrently, one task each, so one NAS that is down never holds up another. Packets
are sent by a `CoaSender` (`service.enforcement.sending`), handed in by the process that starts
the dispatcher: the UDP one from `radius.coa.sender_for(settings)`, or the null one, under
which no row is claimed and every request stays `queued`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from service.config import Settings
from service.enforcement.leader import (
    CHECK_DEADLINE_SECONDS,
    CHECK_SECONDS,
    RETRY_SECONDS,
    DispatcherLock,
    active_dispatcher,
    dispatcher_lock,
)
from service.enforcement.records import record
from service.enforcement.sending import CoaAnswer, CoaReply, CoaSender, CoaTarget
from service.enforcement.triggers import queue_expired_grants
from service.enforcement.workers import lagging_workers
from service.enums import PENDING_COA_STATES, CoaKind, CoaState, NasVendor
from service.export_types import iso
from service.models import NasClient
from service.models.coa import CoaRequest

log = logging.getLogger("schoolgate.coa")

Clock = Callable[[], datetime]

EXPIRY_CHECK_SECONDS = 30.0
MAX_BACKOFF_SECONDS = 30.0
# Claimed rows wait this much longer than the attempt's own wait before another dispatcher
# may take them over, so an answer arriving at the last moment is still settled by its sender.
CLAIM_GRACE_SECONDS = 0.5
# How often a row held for the RADIUS workers is looked at again: they report a reload as
# soon as they have it, so this is most of the wait the ordering adds.
HOLD_POLL_SECONDS = 0.02
DEFAULT_COA_PORT = 3799

REQUEST_NAMES = {CoaKind.COA: "CoA-Request", CoaKind.DISCONNECT: "Disconnect-Request"}


def wall_clock() -> datetime:
    return datetime.now(UTC)


def attempt_wait(settings: Settings, attempt: int) -> float:
    """Seconds to wait for an answer to the `attempt`-th send (1-based): doubling backoff."""
    return float(min(settings.coa_timeout_seconds * 2.0 ** (attempt - 1), MAX_BACKOFF_SECONDS))


@dataclass(frozen=True, slots=True)
class Attempt:
    """One claimed send: what `claim` hands the sender and `settle` checks the answer against."""

    row_id: int
    number: int  # 1-based, counted again from 1 after a fallback
    kind: CoaKind
    target: CoaTarget
    wait: float


@dataclass(frozen=True, slots=True)
class Held:
    """A queued row not claimed yet: a live RADIUS worker has not loaded its change."""

    row_id: int
    waiting_for: str  # the workers, for a log line


def due_request_ids(
    *, session: Session, now: datetime, device_ids: Iterable[int] | None = None
) -> list[int]:
    """Pending rows whose next attempt is due at `now` (of these devices only, if given)."""
    query = select(CoaRequest.id).where(
        CoaRequest.state.in_(PENDING_COA_STATES),
        CoaRequest.next_attempt_at <= now,
    )
    if device_ids is not None:
        query = query.where(CoaRequest.device_id.in_(list(device_ids) or [-1]))
    return list(session.scalars(query.order_by(CoaRequest.id)))


def any_pending(*, session: Session) -> bool:
    """Whether a row is still on its way (queued, sent and waiting, or falling back)."""
    found = session.scalar(
        select(CoaRequest.id).where(CoaRequest.state.in_(PENDING_COA_STATES)).limit(1)
    )
    return found is not None


def resolve_target(*, session: Session, row: CoaRequest) -> CoaTarget | str:
    """The NAS to send the row's request to, or why there is none (a sentence)."""
    nas = session.get(NasClient, row.nas_id) if row.nas_id is not None else None
    if nas is None and row.nas_ip:
        for candidate in session.scalars(select(NasClient)):
            try:
                net = ipaddress.ip_network(candidate.address, strict=False)
                if ipaddress.ip_address(row.nas_ip) in net:
                    nas = candidate
                    break
            except ValueError:
                continue
    if nas is None:
        return f"no NAS client is known for {row.nas_ip or 'this session'}"
    address = row.nas_ip
    if not address:
        net = ipaddress.ip_network(nas.address, strict=False)
        if net.num_addresses != 1:
            return f"NAS {nas.name} is a range and the session has no NAS-IP-Address"
        address = str(net.network_address)
    return CoaTarget(
        address=address,
        port=nas.coa_port or DEFAULT_COA_PORT,
        secret=nas.secret.encode(),
        vendor=NasVendor(nas.vendor),
        mac=row.mac,
        acct_session_id=row.acct_session_id,
        username=row.username,
        nas_ip=row.nas_ip,
    )


def workers_behind(
    *, session: Session, row: CoaRequest, settings: Settings, now: datetime
) -> tuple[str, bool] | None:
    """Whether a queued row must wait for the RADIUS workers: None when every live worker has
    loaded its change (or it announces none), else (which workers, whether the wait is over:
    `coa_wait_for_workers_seconds` after it was queued)."""
    if row.change_version is None or row.state != CoaState.QUEUED or row.attempts:
        return None
    lagging = lagging_workers(
        session=session,
        version=row.change_version,
        now=now,
        live_seconds=settings.radius_worker_dead_seconds,
    )
    if not lagging:
        return None
    names = ", ".join(worker.describe() for worker in lagging)
    waited = (now - row.created_at).total_seconds()
    return names, waited >= settings.coa_wait_for_workers_seconds


def claim(
    *, session: Session, row_id: int, settings: Settings, sender: CoaSender, now: datetime
) -> Attempt | Held | None:
    """Take the row for one attempt at `now`, or close it; None when there is nothing to send.

    Closes it as `timeout` when its attempts are used up, `failed` when no NAS is known.
    A queued row whose change a live RADIUS worker has not loaded yet is `Held`, unclaimed,
    until the workers have it or `coa_wait_for_workers_seconds` pass (then it is sent, and its
    history names the workers it did not wait for).
    The claim is one conditional UPDATE: of two dispatchers claiming a row, one wins.
    """
    row = session.get(CoaRequest, row_id)
    if row is None or CoaState(row.state).is_final:
        return None
    if row.next_attempt_at > now:
        return None  # another dispatcher holds it
    behind = workers_behind(session=session, row=row, settings=settings, now=now)
    if behind is not None and not behind[1]:
        return Held(row_id=row_id, waiting_for=behind[0])
    if row.attempts >= settings.coa_retries:
        record(
            row,
            CoaState.TIMEOUT,
            f"no answer from {row.nas_ip} after {row.attempts} attempts",
            now=now,
        )
        session.flush()
        return None
    target = resolve_target(session=session, row=row)
    if isinstance(target, str):
        record(row, CoaState.FAILED, target, now=now)
        session.flush()
        return None
    kind = CoaKind(row.kind)
    if kind is CoaKind.COA and not sender.takes_coa_request(target.vendor):
        kind = CoaKind.DISCONNECT
    number = row.attempts + 1
    wait = attempt_wait(settings, number)
    detail = f"{REQUEST_NAMES[kind]} attempt {number} to {target.address}:{target.port}"
    if behind is not None:
        detail += (
            f"; sent after waiting {settings.coa_wait_for_workers_seconds:g} s for RADIUS "
            f"workers to load change {row.change_version}: {behind[0]} had not"
        )
        log.warning("CoA request %s: %s", row_id, detail)
    result: Any = session.execute(
        update(CoaRequest)
        .where(
            CoaRequest.id == row_id,
            CoaRequest.attempts == row.attempts,
            CoaRequest.state == row.state,
        )
        .values(
            attempts=number,
            state=CoaState.SENT.value,
            kind=kind.value,
            next_attempt_at=now + timedelta(seconds=wait + CLAIM_GRACE_SECONDS),
            updated_at=now,
            detail=detail,
            history=[
                *(row.history or []),
                {"at": iso(now), "state": CoaState.SENT.value, "detail": detail},
            ],
        )
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        return None
    return Attempt(row_id=row_id, number=number, kind=kind, target=target, wait=wait)


def settle(
    *, session: Session, attempt: Attempt, reply: CoaReply, settings: Settings, now: datetime
) -> bool:
    """Record the answer to `attempt` at `now`; True when the row wants another attempt now.

    No answer: retried until `coa_retries`, then `timeout`. ACK: `ack`. NAK of a CoA-Request:
    `fallback`, and a Disconnect-Request is tried from attempt 1. NAK of a Disconnect: `nak`.
    An answer we cannot trust, or of the wrong code: `failed`.
    """
    row = session.get(CoaRequest, attempt.row_id)
    if row is None or row.state != CoaState.SENT or row.attempts != attempt.number:
        return False  # taken over meanwhile (our wait ran out and another dispatcher claimed it)
    again = False
    if reply.answer is None:
        detail = reply.problem or f"no answer to attempt {attempt.number}"
        if attempt.number >= settings.coa_retries:
            record(
                row,
                CoaState.TIMEOUT,
                f"{detail}; gave up after {attempt.number} attempts to {row.nas_ip}",
                now=now,
            )
        else:
            record(row, CoaState.SENT, f"{detail}; retrying", now=now)
            row.next_attempt_at = now
            again = True
    elif reply.answer is CoaAnswer.UNTRUSTED:
        record(row, CoaState.FAILED, reply.problem or "untrusted answer", now=now)
    elif reply.answer is CoaAnswer.ACK:
        row.error_cause = reply.error_cause
        record(row, CoaState.ACK, reply.packet or "ACK", now=now)
    elif reply.answer is CoaAnswer.NAK:
        row.error_cause = reply.error_cause
        said = f"{reply.packet or 'NAK'} ({reply.cause or 'no Error-Cause'})"
        if attempt.kind is CoaKind.COA:
            record(row, CoaState.FALLBACK, f"{said}: sending Disconnect-Request", now=now)
            row.kind = CoaKind.DISCONNECT.value
            row.attempts = 0
            row.next_attempt_at = now
            again = True
        else:
            record(row, CoaState.NAK, said, now=now)
    else:
        record(row, CoaState.FAILED, f"unexpected answer {reply.packet}", now=now)
    session.flush()
    return again


def fail_request(*, session: Session, row_id: int, detail: str, now: datetime) -> None:
    """Close a row that broke the dispatcher (a bug, not a NAS problem) as `failed`."""
    row = session.get(CoaRequest, row_id)
    if row is not None and not CoaState(row.state).is_final:
        record(row, CoaState.FAILED, detail, now=now)
        session.flush()


class Dispatcher:
    """Works due rows with `sender`: one pass (`run_once`) or the long-running loop (`run`).

    `session_factory` is a sync SQLAlchemy factory; each claim and each answer is one
    transaction. `clock` is read once per step (tests pass their own).
    """

    def __init__(
        self,
        *,
        session_factory: sessionmaker[Session],
        settings: Settings,
        sender: CoaSender,
        clock: Clock = wall_clock,
    ) -> None:
        self.factory = session_factory
        self.settings = settings
        self.sender = sender
        self.clock = clock

    def due_ids(self, device_ids: Iterable[int] | None = None) -> list[int]:
        with self.factory() as session:
            return due_request_ids(session=session, now=self.clock(), device_ids=device_ids)

    async def run_once(self, device_ids: Iterable[int] | None = None) -> int:
        """Work every due row to an end (or until cancelled); returns how many were taken."""
        if not self.sender.sends:
            return 0
        ids = self.due_ids(device_ids)
        if ids:
            await asyncio.gather(*(self.work(row_id) for row_id in ids))
        return len(ids)

    async def work(self, row_id: int) -> None:
        """Drive one row until it is final or waits for a later attempt; never raises."""
        # A held row is looked at again until the workers have its change; past the bound
        # (on the monotonic clock, whatever `clock` says) it is left to the next pass.
        hold_until = time.monotonic() + self.settings.coa_wait_for_workers_seconds + 1.0
        try:
            while True:
                with self.factory() as session, session.begin():
                    attempt = claim(
                        session=session,
                        row_id=row_id,
                        settings=self.settings,
                        sender=self.sender,
                        now=self.clock(),
                    )
                if isinstance(attempt, Held):
                    if time.monotonic() >= hold_until:
                        return
                    await asyncio.sleep(HOLD_POLL_SECONDS)
                    continue
                if attempt is None:
                    return
                reply = await self.sender.send(attempt.target, attempt.kind, attempt.wait)
                with self.factory() as session, session.begin():
                    again = settle(
                        session=session,
                        attempt=attempt,
                        reply=reply,
                        settings=self.settings,
                        now=self.clock(),
                    )
                if not again:
                    return
        except asyncio.CancelledError:
            raise
        except Exception:  # one bad row must not stop the others
            log.exception("CoA request %s failed unexpectedly", row_id)
            with self.factory() as session, session.begin():
                fail_request(
                    session=session,
                    row_id=row_id,
                    detail="internal error (see the service log)",
                    now=self.clock(),
                )

    async def run(self, stop_event: asyncio.Event, poll_seconds: float = 0.5) -> None:
        """The long-running loop: due rows, and every ~30 s the exceptions that expired."""
        last_check = self.clock()
        next_check = time.monotonic() + EXPIRY_CHECK_SECONDS
        tasks: dict[int, asyncio.Task[None]] = {}
        database_down = False
        while not stop_event.is_set():
            try:
                if time.monotonic() >= next_check:
                    now = self.clock()
                    with self.factory() as session, session.begin():
                        queue_expired_grants(session=session, since=last_check, until=now)
                    last_check, next_check = now, time.monotonic() + EXPIRY_CHECK_SECONDS
                for row_id in self.due_ids():
                    if row_id not in tasks:
                        tasks[row_id] = asyncio.create_task(self.work(row_id))
            except DBAPIError as exc:  # one line per outage, not a traceback per pass
                if not database_down:
                    reason = str(exc.orig or exc).strip().splitlines()[0]
                    log.warning("CoA dispatcher: the database does not answer (%s)", reason)
                database_down = True
            except Exception:
                log.exception("CoA dispatcher pass failed")
            else:
                if database_down:
                    log.warning("CoA dispatcher: the database answers again")
                database_down = False
            for row_id, task in list(tasks.items()):
                if task.done():
                    del tasks[row_id]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop_event.wait(), poll_seconds)
        for task in tasks.values():
            task.cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)


async def run_dispatcher(
    *,
    session_factory: sessionmaker[Session],
    settings: Settings,
    sender: CoaSender,
    stop_event: asyncio.Event,
    lock: DispatcherLock | None = None,
) -> None:
    """For a server process: run the dispatcher until `stop_event` is set (idle when CoA is
    disabled or the sender sends nothing: the rows wait, queued).

    Only while it holds the dispatcher lock (`service.enforcement.leader`, one per database):
    otherwise it is a standby that tries again every `RETRY_SECONDS`, and one that loses the
    lock stops dispatching at once and becomes a standby again."""
    if not settings.coa_enabled or not sender.sends:
        await stop_event.wait()
        return
    dispatcher = Dispatcher(session_factory=session_factory, settings=settings, sender=sender)
    lock = lock or dispatcher_lock(session_factory=session_factory)
    loop = asyncio.get_running_loop()
    try:
        while not stop_event.is_set():
            if not await _wait_for_lock(lock, session_factory, stop_event):
                break
            node, pid = socket.gethostname(), os.getpid()
            log.info("CoA dispatcher active on %s pid %d: it holds the dispatcher lock", node, pid)
            term = asyncio.Event()  # set when this process stops, or loses the lock
            watcher = asyncio.create_task(_watch_lock(lock, stop_event, term))
            try:
                await dispatcher.run(term)
            finally:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
            if not stop_event.is_set():
                log.warning("CoA dispatcher lost the dispatcher lock: stopped sending; standby")
    finally:
        await loop.run_in_executor(None, lock.release)


async def _call(function: Callable[[], bool]) -> bool:
    """A blocking lock call, off the event loop, bounded by `CHECK_DEADLINE_SECONDS` (a
    connection to a machine that vanished can hang until TCP gives up)."""
    loop = asyncio.get_running_loop()
    return await asyncio.wait_for(loop.run_in_executor(None, function), CHECK_DEADLINE_SECONDS)


async def _wait_for_lock(
    lock: DispatcherLock, factory: sessionmaker[Session], stop_event: asyncio.Event
) -> bool:
    """Try the lock every `RETRY_SECONDS` until this process holds it (True) or is told to
    stop (False). One log line when it becomes a standby, one when the database fails."""
    said_standby = database_down = False
    while not stop_event.is_set():
        try:
            if await _call(lock.acquire):
                return True
        except (OSError, DBAPIError, TimeoutError) as exc:
            if not database_down:
                reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
                log.warning(
                    "CoA dispatcher: the database does not answer (%s)",
                    reason[0] if reason else type(exc).__name__,
                )
            database_down = True
        else:
            if not said_standby:
                log.info("CoA dispatcher standby: %s", _who_is_active(factory))
            said_standby, database_down = True, False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop_event.wait(), RETRY_SECONDS)
    return False


def _who_is_active(factory: sessionmaker[Session]) -> str:
    try:
        with factory() as session:
            active = active_dispatcher(session=session)
    except DBAPIError:
        return "another process holds the dispatcher lock"
    if active is None:
        return "another process holds the dispatcher lock"
    return f"{active.describe()} holds the dispatcher lock"


async def _watch_lock(lock: DispatcherLock, stop_event: asyncio.Event, term: asyncio.Event) -> None:
    """Check the lock every `CHECK_SECONDS`; end the term when it is gone or on stop."""
    try:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop_event.wait(), CHECK_SECONDS)
            if stop_event.is_set():
                return
            try:
                still = await _call(lock.held)
            except TimeoutError:
                still = False
            if not still:
                term.set()  # stop dispatching first: closing a hung connection may take long
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        asyncio.get_running_loop().run_in_executor(None, lock.release),
                        CHECK_DEADLINE_SECONDS,
                    )
                return
    finally:
        term.set()


def send_queued(
    *,
    session_factory: sessionmaker[Session],
    settings: Settings,
    sender: CoaSender,
    device_ids: Iterable[int] | None = None,
    deadline: float = 2.0,
) -> int:
    """After a change commits: send what it queued now, for up to `deadline` seconds.

    Adapters call this after their commit (synchronously; not from inside an event loop).
    Returns how many rows were taken, -1 when the deadline passed first: rows still waiting
    then stay `sent` and the long-running dispatcher takes them up once their wait has run
    out. With CoA disabled or the null sender, nothing is sent and the rows stay `queued`.
    Never raises: the change is committed already.
    """
    if not settings.coa_enabled or not sender.sends:
        return 0
    dispatcher = Dispatcher(session_factory=session_factory, settings=settings, sender=sender)

    async def bounded() -> int:
        task = asyncio.ensure_future(dispatcher.run_once(device_ids))
        try:
            return await asyncio.wait_for(asyncio.shield(task), deadline)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            return -1

    try:
        return asyncio.run(bounded())
    except Exception:  # the change is committed; the server's dispatcher will retry
        log.exception("sending CoA after the change failed")
        return 0


def drain(
    *,
    session_factory: sessionmaker[Session],
    settings: Settings,
    sender: CoaSender,
    limit: float,
) -> int:
    """Run passes until nothing is pending (retries included) or `limit` seconds pass
    (`schoolgate coa run --once`); returns how many row attempts were taken."""
    dispatcher = Dispatcher(session_factory=session_factory, settings=settings, sender=sender)

    async def loop() -> int:
        end = time.monotonic() + limit
        total = 0
        while dispatcher.sender.sends and time.monotonic() < end:
            try:  # a row held for the RADIUS workers must not outlast the limit
                total += await asyncio.wait_for(dispatcher.run_once(), end - time.monotonic())
            except TimeoutError:
                break
            with session_factory() as session:
                if not any_pending(session=session):
                    break
            await asyncio.sleep(0.1)
        return total

    return asyncio.run(loop())
