"""Sends queued CoA / Disconnect requests and drives each row through its states.

Every attempt is claimed in the database first (attempts+1, state `sent`, next_attempt_at =
now + this attempt's wait), committed, and only then sent: a process that dies mid-attempt
leaves a `sent` row whose next_attempt_at passes, and the next dispatcher (the RADIUS server
or `schoolgate coa run`) retries it with its attempt count kept. Rows run concurrently, each
with its own socket and timeout, so one NAS that is down never holds up another.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from radius import codec
from radius.coa.packets import ERROR_CAUSES, PACKET_NAMES, Target, build, uses_coa_request
from service import enforcement as enf
from service.config import Settings
from service.enums import NasVendor
from service.models import NasClient
from service.models.coa import CoaRequest

log = logging.getLogger("schoolgate.coa")

EXPIRY_CHECK_SECONDS = 30.0
MAX_BACKOFF_SECONDS = 30.0


def _now() -> datetime:
    return datetime.now(UTC)


def attempt_wait(settings: Settings, attempt: int) -> float:
    """Seconds to wait for an answer to the `attempt`-th send (1-based): doubling backoff."""
    return float(min(settings.coa_timeout_seconds * 2.0 ** (attempt - 1), MAX_BACKOFF_SECONDS))


@dataclass(frozen=True, slots=True)
class _Reply:
    code: int | None  # None: no answer in time
    error_cause: int | None = None
    problem: str | None = None  # a reply we could not trust, or a socket error


class _Client(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.replies: asyncio.Queue[bytes] = asyncio.Queue()
        self.error: OSError | None = None

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:  # noqa: ARG002
        self.replies.put_nowait(data)

    def error_received(self, exc: Exception) -> None:
        if isinstance(exc, OSError):
            self.error = exc


async def exchange(packet: bytes, address: str, port: int, secret: bytes, wait: float) -> _Reply:
    """Send one request and wait up to `wait` seconds for its verified answer."""
    loop = asyncio.get_running_loop()
    family = 6 if ipaddress.ip_address(address).version == 6 else 4

    try:
        transport, proto = await loop.create_datagram_endpoint(
            _Client,
            remote_addr=(address, port),
            family=socket.AF_INET6 if family == 6 else socket.AF_INET,
        )
    except OSError as exc:
        return _Reply(None, problem=f"cannot send: {exc.strerror or exc}")
    request_auth = packet[4:20]
    identifier = packet[1]
    try:
        transport.sendto(packet)
        deadline = loop.time() + wait
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                detail = None
                if proto.error is not None:
                    detail = f"no answer ({proto.error.strerror or proto.error})"
                return _Reply(None, problem=detail)
            try:
                data = await asyncio.wait_for(proto.replies.get(), remaining)
            except TimeoutError:
                continue
            try:
                reply = codec.decode(data)
            except codec.PacketError as exc:
                return _Reply(None, problem=f"malformed answer ({exc.reason})")
            if reply.identifier != identifier:
                continue  # a late answer to an earlier attempt
            if not codec.verify_response_authenticator(reply, request_auth, secret):
                return _Reply(
                    reply.code,
                    problem="bad Response Authenticator in the answer (wrong shared secret?)",
                )
            if reply.ma_offset >= 0 and not codec.verify_message_authenticator(
                reply, secret, request_auth
            ):
                return _Reply(reply.code, problem="bad Message-Authenticator in the answer")
            return _Reply(reply.code, error_cause=reply.integer(codec.ERROR_CAUSE))
    finally:
        transport.close()


class Dispatcher:
    """One pass or a loop over the queue; `session_factory` is a sync SQLAlchemy factory."""

    def __init__(self, session_factory: sessionmaker[Session], settings: Settings) -> None:
        self.factory = session_factory
        self.settings = settings

    def due_ids(self, device_ids: Iterable[int] | None = None) -> list[int]:
        with self.factory() as session:
            query = select(CoaRequest.id).where(
                CoaRequest.state.in_(enf.PENDING_STATES),
                CoaRequest.next_attempt_at <= _now(),
            )
            ids = list(device_ids) if device_ids is not None else None
            if ids is not None:
                query = query.where(CoaRequest.device_id.in_(ids or [-1]))
            return list(session.scalars(query.order_by(CoaRequest.id)))

    async def run_once(self, device_ids: Iterable[int] | None = None) -> int:
        """Work every due row to an end (or until cancelled); returns how many were taken."""
        ids = self.due_ids(device_ids)
        if ids:
            await asyncio.gather(*(self.work(row_id) for row_id in ids))
        return len(ids)

    async def work(self, row_id: int) -> None:
        try:
            await self._work(row_id)
        except asyncio.CancelledError:
            raise
        except Exception:  # one bad row must not stop the others
            log.exception("CoA request %s failed unexpectedly", row_id)
            with self.factory() as session, session.begin():
                row = session.get(CoaRequest, row_id)
                if row is not None and row.state not in enf.FINAL_STATES:
                    enf.record(row, enf.FAILED, "internal error (see the service log)")

    async def _work(self, row_id: int) -> None:
        while True:
            claimed = self._claim(row_id)
            if claimed is None:
                return
            code, target, attempt = claimed
            wait = attempt_wait(self.settings, attempt)
            identifier = int.from_bytes(os.urandom(1), "big")
            packet = build(code, identifier, target)
            reply = await exchange(packet, target.address, target.port, target.secret, wait)
            if not self._settle(row_id, code, attempt, reply):
                return

    def _claim(self, row_id: int) -> tuple[int, Target, int] | None:
        """Take the row for one attempt (or close it); None when there is nothing to send."""
        now = _now()
        with self.factory() as session, session.begin():
            row = session.get(CoaRequest, row_id)
            if row is None or row.state in enf.FINAL_STATES:
                return None
            if row.next_attempt_at > now:
                return None  # another dispatcher holds it
            if row.attempts >= self.settings.coa_retries:
                enf.record(
                    row, enf.TIMEOUT, f"no answer from {row.nas_ip} after {row.attempts} attempts"
                )
                return None
            target = self._target(session, row)
            if isinstance(target, str):
                enf.record(row, enf.FAILED, target)
                return None
            if row.kind == enf.KIND_COA and not uses_coa_request(target.vendor):
                row.kind = enf.KIND_DISCONNECT
            code = codec.COA_REQUEST if row.kind == enf.KIND_COA else codec.DISCONNECT_REQUEST
            attempt = row.attempts + 1
            wait = attempt_wait(self.settings, attempt)
            result = session.execute(
                update(CoaRequest)
                .where(
                    CoaRequest.id == row_id,
                    CoaRequest.attempts == row.attempts,
                    CoaRequest.state == row.state,
                )
                .values(
                    attempts=attempt,
                    state=enf.SENT,
                    kind=row.kind,
                    next_attempt_at=now + timedelta(seconds=wait + 0.5),
                    updated_at=now,
                    detail=f"{PACKET_NAMES[code]} attempt {attempt} to "
                    f"{target.address}:{target.port}",
                    history=[
                        *(row.history or []),
                        {
                            "at": now.isoformat(timespec="seconds"),
                            "state": enf.SENT,
                            "detail": f"{PACKET_NAMES[code]} attempt {attempt} to "
                            f"{target.address}:{target.port}",
                        },
                    ],
                )
                .execution_options(synchronize_session=False)
            )
            if result.rowcount != 1:  # type: ignore[attr-defined]
                return None
            return code, target, attempt

    def _target(self, session: Session, row: CoaRequest) -> Target | str:
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
        return Target(
            address=address,
            port=nas.coa_port or 3799,
            secret=nas.secret.encode(),
            vendor=NasVendor(nas.vendor),
            mac=row.mac,
            acct_session_id=row.acct_session_id,
            username=row.username,
            nas_ip=row.nas_ip,
        )

    def _settle(self, row_id: int, code: int, attempt: int, reply: _Reply) -> bool:
        """Record the answer; True when the row wants another attempt now."""
        with self.factory() as session, session.begin():
            row = session.get(CoaRequest, row_id)
            if row is None or row.state != enf.SENT or row.attempts != attempt:
                return False
            if reply.code is None:
                detail = reply.problem or f"no answer to attempt {attempt}"
                if attempt >= self.settings.coa_retries:
                    enf.record(
                        row,
                        enf.TIMEOUT,
                        f"{detail}; gave up after {attempt} attempts to {row.nas_ip}",
                    )
                    return False
                enf.record(row, enf.SENT, f"{detail}; retrying")
                row.next_attempt_at = _now()
                return True
            if reply.problem is not None:
                enf.record(row, enf.FAILED, reply.problem)
                return False
            name = PACKET_NAMES.get(reply.code, f"code {reply.code}")
            if reply.code in (codec.DISCONNECT_ACK, codec.COA_ACK):
                row.error_cause = reply.error_cause
                enf.record(row, enf.ACK, name)
                return False
            if reply.code in (codec.DISCONNECT_NAK, codec.COA_NAK):
                row.error_cause = reply.error_cause
                cause = _cause_text(reply.error_cause)
                if code == codec.COA_REQUEST:
                    enf.record(row, enf.FALLBACK, f"{name} ({cause}): sending Disconnect-Request")
                    row.kind = enf.KIND_DISCONNECT
                    row.attempts = 0
                    row.next_attempt_at = _now()
                    return True
                enf.record(row, enf.NAK, f"{name} ({cause})")
                return False
            enf.record(row, enf.FAILED, f"unexpected answer {name}")
            return False

    async def run(self, stop_event: asyncio.Event, poll_seconds: float = 0.5) -> None:
        """The long-running loop: due rows, and every ~30 s the exceptions that expired."""
        last_check = _now()
        next_check = time.monotonic() + EXPIRY_CHECK_SECONDS
        tasks: dict[int, asyncio.Task[None]] = {}
        while not stop_event.is_set():
            try:
                if time.monotonic() >= next_check:
                    now = _now()
                    with self.factory() as session, session.begin():
                        enf.queue_expired_grants(session, last_check, now)
                    last_check, next_check = now, time.monotonic() + EXPIRY_CHECK_SECONDS
                for row_id in self.due_ids():
                    if row_id not in tasks:
                        tasks[row_id] = asyncio.create_task(self.work(row_id))
            except Exception:
                log.exception("CoA dispatcher pass failed")
            for row_id, task in list(tasks.items()):
                if task.done():
                    del tasks[row_id]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop_event.wait(), poll_seconds)
        for task in tasks.values():
            task.cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)


def _cause_text(cause: int | None) -> str:
    if cause is None:
        return "no Error-Cause"
    return f"Error-Cause {cause} {ERROR_CAUSES.get(cause, 'unknown')}"


async def run_dispatcher(
    session_factory: sessionmaker[Session], settings: Settings, stop_event: asyncio.Event
) -> None:
    """For the RADIUS server: run the dispatcher as a task until `stop_event` is set."""
    if not settings.coa_enabled:
        await stop_event.wait()
        return
    await Dispatcher(session_factory, settings).run(stop_event)


def dispatch_pending(
    session_factory: sessionmaker[Session],
    settings: Settings,
    *,
    device_ids: Iterable[int] | None = None,
    deadline: float = 2.0,
) -> int:
    """Synchronously work the due rows for up to `deadline` seconds (after a CLI command).

    Rows still waiting when the deadline passes stay `sent` and are taken up again by the
    next dispatcher once their wait has run out.
    """
    if not settings.coa_enabled:
        return 0
    dispatcher = Dispatcher(session_factory, settings)

    async def bounded() -> int:
        task = asyncio.ensure_future(dispatcher.run_once(device_ids))
        try:
            return await asyncio.wait_for(asyncio.shield(task), deadline)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            return -1

    return asyncio.run(bounded())


def drain(session_factory: sessionmaker[Session], settings: Settings, *, limit: float) -> int:
    """Run passes until nothing is pending (retries included) or `limit` seconds pass."""
    dispatcher = Dispatcher(session_factory, settings)

    async def loop() -> int:
        end = time.monotonic() + limit
        total = 0
        while time.monotonic() < end:
            total += await dispatcher.run_once()
            with dispatcher.factory() as session:
                pending = session.scalar(
                    select(CoaRequest.id).where(CoaRequest.state.in_(enf.PENDING_STATES)).limit(1)
                )
            if pending is None:
                break
            await asyncio.sleep(0.1)
        return total

    return asyncio.run(loop())
