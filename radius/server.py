"""`schoolgate radius serve`: asyncio UDP endpoints around the authorizer, N worker processes.

Each worker owns SO_REUSEPORT sockets on the auth and accounting ports, its own snapshot
keeper thread, writer thread and argon2 thread pool. On the accounting port the kernel spreads
NAS source addresses over the workers (a NAS's records stay in order, in one worker). On the
auth port, on Linux, a classic BPF program spreads Access-Requests by their RADIUS identifier
(so a school with one controller still uses every worker); without it, by source address.
Either way a retransmission, byte for byte the same, reaches the worker that holds its cached
answer.
SIGTERM/SIGINT stop a worker cleanly: no new requests, queued accounting written and
answered, the decision log flushed, the counters logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import os
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from radius.authorizer import Authorizer, PapJob
from radius.counters import Counters
from radius.decision_log import DecisionLog
from radius.pap import PapVerifier
from radius.snapshot import HotState, SnapshotKeeper, load_state, stale_state
from radius.spool import Spool, spool_path
from radius.writer import AcctTicket, LogWriter
from service.config import Settings
from service.db import make_engine, make_session_factory
from service.errors import Conflict
from service.throttle import DatabaseFailures, FallbackFailures, MemoryFailures, Throttle

log = logging.getLogger("schoolgate.radius")

COUNTER_LOG_SECONDS = 60.0
DRAIN_LIMIT = 256
FLUSH_SECONDS = 0.05
MAX_DATAGRAM = 8192
RECEIVE_BUFFER = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ServeOptions:
    host: str = "0.0.0.0"  # noqa: S104 - a RADIUS server listens for the site's NAS clients
    auth_port: int = 1812
    acct_port: int = 1813
    workers: int = 1
    pap_threads: int = 2
    coa_dispatcher: bool = True
    # The metrics port (0: none) and, set by `serve`, the directory the workers report to.
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 0
    metrics_dir: str | None = None


class _Endpoint:
    """One UDP port, read with `loop.add_reader`: each wake-up drains every datagram waiting
    (up to `DRAIN_LIMIT`), where asyncio's datagram transport takes one per loop iteration.
    Replies go out with a non-blocking sendto; a full send buffer drops the reply (counted),
    the NAS retransmits and the duplicate cache answers. Every datagram is handled inside
    the loop-boundary try: one bad packet never stops the server."""

    def __init__(
        self,
        worker: Worker,
        sock: socket.socket,
        handle: Callable[[bytes, tuple[str, int]], Any],
    ) -> None:
        self.worker = worker
        self.sock = sock
        self.handle = handle
        self.closed = False

    def sendto(self, data: bytes, address: tuple[str, int]) -> None:
        if self.closed:
            return
        try:
            self.sock.sendto(data, address)
        except (BlockingIOError, InterruptedError):
            self.worker.counters.drop("send_buffer_full")
        except OSError as exc:
            self.worker.counters.drop("send_error")
            log.debug("sendto %s failed: %s", address, exc)

    def read_ready(self) -> None:
        # recvfrom_into a preallocated buffer was measured no faster: copying the datagram
        # out of it costs what the allocation saved.
        sock = self.sock
        recvfrom = sock.recvfrom
        send = sock.sendto
        handle = self.handle
        counters = self.worker.counters
        for _ in range(DRAIN_LIMIT):
            try:
                data, addr = recvfrom(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. ICMP port unreachable reported on the socket
                log.debug("recvfrom failed: %s", exc)
                return
            try:
                result = handle(data, addr)
            except Exception:  # the loop boundary
                counters.drop("internal_error")
                log.exception("error handling a packet from %s:%s", addr[0], addr[1])
                continue
            if result is None:
                continue
            if result.__class__ is bytes:
                try:  # `sendto`, inline: once per answer
                    send(result, addr)
                except (BlockingIOError, InterruptedError):
                    counters.drop("send_buffer_full")
                except OSError as exc:
                    counters.drop("send_error")
                    log.debug("sendto %s failed: %s", addr, exc)
            elif isinstance(result, PapJob):
                self.worker.check_pap(result, self)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.sock.close()


def _freeze_heap() -> None:
    """Move everything alive now (the snapshot: tens of thousands of objects per 10,000
    devices, and the imported modules) out of the garbage collector's generations. A full
    collection then walks only what the hot path allocates, instead of stopping the loop for
    tens of milliseconds (a p99 spike) whenever it runs. Frozen objects are still freed by
    reference counting when a new snapshot replaces them."""
    gc.freeze()


SO_ATTACH_REUSEPORT_CBPF = getattr(socket, "SO_ATTACH_REUSEPORT_CBPF", 51)


def spread_by_identifier(sock: socket.socket, workers: int) -> bool:
    """Attach to `sock`'s SO_REUSEPORT group a classic BPF program choosing the socket
    `identifier % workers` (the second octet of the RADIUS packet). Linux only; False when it
    cannot be attached (the kernel then hashes the source address). While fewer than `workers`
    sockets are in the group, the kernel falls back to the hash for the indexes missing."""
    if not sys.platform.startswith("linux") or workers < 2:
        return False
    import ctypes

    program = (
        (0x30, 0, 0, 1),  # ld  [1]: one octet of the UDP payload, the RADIUS identifier
        (0x94, 0, 0, workers),  # mod #workers
        (0x16, 0, 0, 0),  # ret a: the index of the socket in the group
    )
    filters = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *op) for op in program))
    fprog = struct.pack("HL", len(program), ctypes.addressof(filters))  # struct sock_fprog
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)
    except OSError as exc:
        log.debug("cannot spread requests by identifier: %s", exc)
        return False
    return True


def bind_udp(host: str, port: int) -> socket.socket:
    """A non-blocking UDP socket with SO_REUSEPORT (workers share the port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if hasattr(socket, "SO_REUSEPORT"):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
    sock.bind((host, port))
    sock.setblocking(False)
    return sock


def _holder_pid(name: bytes) -> int | None:
    """The pid of the process listening on the abstract socket `name` (SO_PEERCRED), or None."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(0.2)
            probe.connect(name)
            creds = probe.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    pid, _uid, _gid = struct.unpack("3i", creds)
    return int(pid) or None


def claim_ports(ports: Sequence[int]) -> list[socket.socket]:
    """Make this server the only one on `ports`; keep the sockets returned for as long as it
    serves (its forked workers inherit them). Raises `Conflict` naming the port and the pid
    of the server that holds it.

    Why: the workers share each port with SO_REUSEPORT, and so could a second `radius serve`
    of the same user, silently taking a share of the requests with its own database. Each
    port is claimed with a Unix socket bound in Linux's abstract namespace (one name per
    port): the kernel frees it when the last process holding it dies, even by `kill -9`,
    so there is no stale lock file, and the namespace belongs to the network namespace,
    exactly like the ports. A server of another product on the port still gets EADDRINUSE
    from `bind`, as it does not set SO_REUSEPORT. Elsewhere than Linux, nothing is claimed.
    """
    if not sys.platform.startswith("linux"):
        return []
    held: list[socket.socket] = []
    for port in ports:
        name = f"\0schoolgate-radius-udp-{port}".encode()
        claim = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            claim.bind(name)
        except OSError as exc:
            claim.close()
            for sock in held:
                sock.close()
            pid = _holder_pid(name)
            holder = f" (pid {pid})" if pid else ""
            raise Conflict(
                f"another schoolgate RADIUS server{holder} already serves UDP port {port}: "
                "stop it, or give this one other --auth-port/--acct-port"
            ) from exc
        claim.listen(8)
        held.append(claim)
    return held


class Worker:
    """One process's server: endpoints, authorizer, keeper and writer."""

    def __init__(self, settings: Settings, options: ServeOptions, index: int = 0) -> None:
        self.settings = settings
        self.options = options
        self.index = index
        self.counters = Counters()
        spool_dir = settings.key_dir
        self.decision_log = DecisionLog(
            settings.database_url,
            counters=self.counters,
            batch_seconds=settings.radius_log_batch_seconds,
            spool_path=spool_path(
                spool_dir, auth_port=options.auth_port, worker=index, kind="decisions"
            ),
            spool_max_bytes=settings.radius_spool_max_bytes,
        )
        self.decision_log.start()  # first: forked before any thread or connection exists
        try:
            self.engine = make_engine(settings.database_url)
            self.factory = make_session_factory(self.engine)
            self.loop: asyncio.AbstractEventLoop | None = None
            self.auth: _Endpoint | None = None
            self.acct: _Endpoint | None = None
            self.pool = ThreadPoolExecutor(
                max_workers=options.pap_threads, thread_name_prefix="pap"
            )
            self.writer = LogWriter(
                self.factory,
                batch_seconds=settings.radius_log_batch_seconds,
                counters=self.counters,
                deliver=self._deliver_from_thread,
                give_up=self._give_up_from_thread,
                spool=Spool(
                    spool_path(
                        spool_dir, auth_port=options.auth_port, worker=index, kind="accounting"
                    ),
                    max_bytes=settings.radius_spool_max_bytes,
                    what="accounting",
                ),
            )
            state = load_state(self.factory)
            self.authorizer = Authorizer(
                state,
                counters=self.counters,
                writer=self.writer,
                log_decision=self.decision_log.add,
                duplicate_window=settings.radius_duplicate_window_seconds,
                # PAP failures shared with every node and the portal (issue 13), asked in
                # the argon2 threads; in memory while the database cannot be reached.
                pap=PapVerifier(
                    shared=Throttle(
                        store=FallbackFailures(DatabaseFailures(self.factory), MemoryFailures())
                    )
                ),
            )
            self.keeper = SnapshotKeeper(
                self.engine,
                self.factory,
                poll_seconds=settings.radius_snapshot_poll_seconds,
                on_swap=self._swap,
                current_version=state.version,
                state=state,  # patched in place by later changes
                # The CoA dispatcher waits for every worker's report of a change.
                report_as_worker=True,
                heartbeat_seconds=settings.radius_worker_heartbeat_seconds,
            )
            # The last state loaded from the database, and whether the authorizer answers
            # from `stale_state(fresh)` instead (`_watch_database`).
            self._fresh = state
            self._stale = False
            self._state_lock = threading.Lock()
            self._reachable = True
            self._set_status()
        except BaseException:
            self.decision_log.stop()  # no orphan writer when the database is not usable
            raise

    def _swap(self, state: HotState) -> None:
        with self._state_lock:  # the keeper's thread
            self._fresh = state
            if not self._stale:
                self.authorizer.state = state  # one assignment: the hot path sees old or new
        _freeze_heap()

    def _set_status(self) -> None:
        """The Reply-Message of Status-Server answers: readiness, for a probe (`radclient`)."""
        version = self._fresh.version
        if self._reachable:
            message = f"ready: database reachable, snapshot {version}"
        else:
            age = time.monotonic() - self.keeper.last_ok
            answer = "stale answers (when_stale)" if self._stale else f"snapshot {version}"
            message = (
                f"not ready: database unreachable for {age:.0f} s (snapshot not refreshed); "
                f"answering from {answer}"
            )
        self.authorizer.status_message = message.encode()

    def _sync_spool_counters(self) -> None:
        writer, decisions, counters = self.writer, self.decision_log, self.counters
        counters.spool_depth = writer.spool_depth + decisions.spool_depth
        counters.spooled = writer.spooled + decisions.spooled
        counters.replayed = writer.replayed + decisions.replayed

    def _watch_database(self) -> None:
        """Once a second, on the loop: readiness follows the keeper's last successful poll,
        and past `radius_max_stale_seconds` the answers come from `stale_state` until the
        database answers again. One log line per change (the keeper logs the database's
        own going and coming back)."""
        keeper = self.keeper
        self._reachable = keeper.failing_since is None
        age = time.monotonic() - keeper.last_ok
        stale = age > self.settings.radius_max_stale_seconds
        with self._state_lock:
            if stale != self._stale:
                self._stale = stale
                if stale:
                    self.authorizer.state = stale_state(self._fresh)
                    log.error(
                        "worker %d: snapshot %d is %.0f s old, over radius_max_stale_seconds "
                        "(%g): answering as the policy's [radius] when_stale says until the "
                        "database is back",
                        self.index,
                        self._fresh.version,
                        age,
                        self.settings.radius_max_stale_seconds,
                    )
                else:
                    self.authorizer.state = self._fresh
                    log.warning(
                        "worker %d: answering from snapshot %d again",
                        self.index,
                        self._fresh.version,
                    )
        self._set_status()

    def _report_metrics(self) -> None:
        """Once a second: the counters and the snapshot's state for the metrics process."""
        directory = self.options.metrics_dir
        if directory is None:
            return
        from radius.metrics import worker_report
        from service.metrics import write_report

        report = worker_report(
            self.counters,
            index=self.index,
            snapshot_version=self._fresh.version,
            database_version=self.keeper.database_version,
            snapshot_age=time.monotonic() - self.keeper.last_ok,
            reachable=self._reachable,
            stale=self._stale,
        )
        try:
            write_report(Path(directory), f"worker-{self.index}", report)
        except OSError as exc:
            log.warning("worker %d: cannot write its metrics report: %s", self.index, exc)

    # --- PAP ------------------------------------------------------------------------------

    def check_pap(self, job: PapJob, endpoint: _Endpoint) -> None:
        assert self.loop is not None
        future = self.loop.run_in_executor(self.pool, self.authorizer.check_pap, job)

        def done(fut: asyncio.Future[bool]) -> None:
            try:
                verified = fut.result()
            except asyncio.CancelledError:  # shutting down: the NAS will ask again
                return
            except Exception:  # the loop boundary for the slow path
                log.exception("PAP check failed for %r", job.username)
                verified = False
            reply = self.authorizer.finish_pap(job, verified=verified)
            if reply is not None:
                endpoint.sendto(reply, job.address)

        future.add_done_callback(done)

    # --- accounting answers from the writer thread ----------------------------------------

    def _deliver_from_thread(self, tickets: Sequence[AcctTicket]) -> None:
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._deliver, tickets)

    def _give_up_from_thread(self, tickets: Sequence[AcctTicket]) -> None:
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._give_up, tickets)

    def _deliver(self, tickets: Sequence[AcctTicket]) -> None:
        for ticket in tickets:
            reply = self.authorizer.accounting_stored(ticket)
            if self.acct is not None:
                self.acct.sendto(reply, ticket.address)

    def _give_up(self, tickets: Sequence[AcctTicket]) -> None:
        for ticket in tickets:
            self.authorizer.accounting_failed(ticket)

    # --- life cycle -----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        self.loop = asyncio.get_running_loop()
        opts = self.options
        try:
            auth_sock = bind_udp(opts.host, opts.auth_port)
            acct_sock = bind_udp(opts.host, opts.acct_port)
            spread_by_identifier(auth_sock, opts.workers)
        except OSError:
            self.pool.shutdown(wait=False)
            self.decision_log.stop()
            self.engine.dispose()
            raise
        self.writer.start()
        self.keeper.start()
        self.auth = _Endpoint(self, auth_sock, self.authorizer.handle_auth)
        self.acct = _Endpoint(self, acct_sock, self.authorizer.handle_acct)
        self.loop.add_reader(auth_sock.fileno(), self.auth.read_ready)
        self.loop.add_reader(acct_sock.fileno(), self.acct.read_ready)
        snapshot = self.authorizer.state.snapshot
        self._report_metrics()
        gc.collect()
        _freeze_heap()
        log.info(
            "worker %d (pid %d) listening on %s auth %d acct %d; snapshot %d: %d devices, "
            "%d NAS clients, %d site policies",
            self.index,
            os.getpid(),
            opts.host,
            opts.auth_port,
            opts.acct_port,
            snapshot.version,
            len(snapshot.devices),
            len(snapshot.nas_clients),
            len(snapshot.policies),
        )
        # Hand the decision log over often, in small batches: the pickling then never holds
        # the GIL long enough to show in the p99 (bench/radius_load.py).
        batch = min(FLUSH_SECONDS, max(0.01, self.settings.radius_log_batch_seconds))
        last_purge = last_counters = self.loop.time()
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=batch)
            self.decision_log.flush()
            self.authorizer.purge()  # a slice at a time: cheap, and never a long stall
            now = self.loop.time()
            if now - last_purge >= 1.0:
                last_purge = now
                self._watch_database()
                self._sync_spool_counters()
                self._report_metrics()
                if not self.decision_log.alive():
                    log.error("the decision log writer died; answers continue unlogged")
            if now - last_counters >= COUNTER_LOG_SECONDS:
                last_counters = now
                log.info("worker %d counters: %s", self.index, self.counters.summary())
        await self.shutdown()

    async def shutdown(self) -> None:
        assert self.loop is not None
        # Stop reading both ports; the accounting socket stays open to send the answers of
        # what the writer still stores.
        for endpoint in (self.auth, self.acct):
            if endpoint is not None:
                self.loop.remove_reader(endpoint.sock.fileno())
        if self.auth is not None:
            self.auth.close()
        self.keeper.stop()
        self.pool.shutdown(wait=True, cancel_futures=True)
        await self.loop.run_in_executor(None, self.writer.stop)
        await self.loop.run_in_executor(None, self.decision_log.stop)
        await asyncio.sleep(0)  # let the last accounting answers go out
        if self.acct is not None:
            self.acct.close()
        self.engine.dispose()
        self._sync_spool_counters()
        log.info("worker %d stopped; counters: %s", self.index, self.counters.summary())


async def _serve_worker(settings: Settings, options: ServeOptions, index: int) -> None:
    stop = _stop_on_signals()
    worker = Worker(settings, options, index)
    await worker.run(stop)


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def _serve_dispatcher(settings: Settings, metrics_dir: str | None = None) -> None:
    """The CoA dispatcher, in its own process: its database work never delays an answer."""
    from radius.coa import sender_for
    from service.enforcement import run_dispatcher

    stop = _stop_on_signals()
    engine = make_engine(settings.database_url)
    reporter = (
        asyncio.create_task(_report_coa(Path(metrics_dir), stop))
        if metrics_dir is not None
        else None
    )
    try:
        await run_dispatcher(
            session_factory=make_session_factory(engine),
            settings=settings,
            sender=sender_for(settings),
            stop_event=stop,
        )
    finally:
        if reporter is not None:
            reporter.cancel()
        engine.dispose()


async def _report_coa(directory: Path, stop: asyncio.Event) -> None:
    """Once a second: the dispatcher's outcomes for the metrics process."""
    from service.metrics import coa_transitions, write_report

    while not stop.is_set():
        try:
            write_report(directory, "coa", {"kind": "coa", "transitions": coa_transitions()})
        except OSError as exc:
            log.warning("the CoA dispatcher cannot write its metrics report: %s", exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=1.0)


def _run_worker(settings: Settings, options: ServeOptions, index: int) -> None:
    asyncio.run(_serve_worker(settings, options, index))


RESTART_FIRST_SECONDS = 0.5
RESTART_MAX_SECONDS = 30.0
HEALTHY_SECONDS = 60.0  # a child that ran this long before dying restarts after the first delay
STARTUP_SECONDS = 10.0  # a child that fails (exit 1) this soon after the server started, stops it
SUPERVISE_SECONDS = 0.1


def _fork(name: str, run: Callable[[], None]) -> int:
    pid = os.fork()
    if pid:
        return pid
    code = 0  # the child: its own engine, threads and loop
    # The supervisor's handlers are not the child's: until the worker sets its own, a signal
    # ends it (SIGINT as Python's KeyboardInterrupt).
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        run()
    except Exception:
        log.exception("%s failed", name)
        code = 1
    finally:
        logging.shutdown()
        sys.stderr.flush()
        os._exit(code)


@dataclass
class _Child:
    """A process the supervisor keeps running."""

    name: str
    run: Callable[[], None]
    pid: int = 0  # 0: not running
    started: float = 0.0
    runs: int = 0
    quick_failures: int = 0  # in a row, each within HEALTHY_SECONDS of its start
    restart_at: float | None = None

    def start(self) -> None:
        self.pid = _fork(self.name, self.run)
        self.started = time.monotonic()
        self.runs += 1
        self.restart_at = None


def serve(settings: Settings, options: ServeOptions) -> int:
    """Run the server until SIGTERM/SIGINT.

    Forks `options.workers` processes when > 1, and one more for the CoA dispatcher (unless
    `options.coa_dispatcher` is off or CoA is disabled in the settings), and restarts any of
    them that dies (`_supervise`). Refuses (`Conflict`) to start when another server holds the
    ports (`claim_ports`).
    """
    claims = claim_ports((options.auth_port, options.acct_port))
    try:
        return _serve(settings, options)
    finally:
        for claim in claims:
            claim.close()


def _serve(settings: Settings, options: ServeOptions) -> int:
    dispatcher = options.coa_dispatcher and settings.coa_enabled
    if options.workers <= 1 and not dispatcher and not options.metrics_port:
        asyncio.run(_serve_worker(settings, options, 0))
        return 0
    # Probe the ports once in the parent, so a port in use is one clear error, not N.
    for port in (options.auth_port, options.acct_port):
        bind_udp(options.host, port).close()
    metrics_sock = None
    if options.metrics_port:
        from service.metrics import bind_metrics, report_dir

        metrics_sock = bind_metrics(options.metrics_host, options.metrics_port)
        options = replace(options, metrics_dir=str(report_dir()))
    children: list[_Child] = []
    if metrics_sock is not None:
        children.append(_Child("metrics", functools.partial(_serve_metrics, metrics_sock, options)))
    if dispatcher:
        children.append(
            _Child(
                "CoA dispatcher",
                lambda: asyncio.run(_serve_dispatcher(settings, options.metrics_dir)),
            )
        )
    children.extend(
        _Child(f"worker {index}", functools.partial(_run_worker, settings, options, index))
        for index in range(options.workers)
    )
    try:
        for child in children:
            child.start()
        return _supervise(children)
    finally:
        if metrics_sock is not None:
            metrics_sock.close()
        if options.metrics_dir is not None:
            import shutil

            shutil.rmtree(options.metrics_dir, ignore_errors=True)


def _serve_metrics(sock: socket.socket, options: ServeOptions) -> None:
    """The metrics process: `/metrics` from the workers' reports, `/readyz` from their
    state (radius/metrics.py). SIGTERM ends it (the default action)."""
    from radius.metrics import readiness, registry_for
    from service.metrics import MetricsServer

    assert options.metrics_dir is not None
    directory = Path(options.metrics_dir)
    server = MetricsServer(
        sock, registry_for(directory), lambda: readiness(directory, options.workers)
    )
    log.info(
        "metrics on http://%s:%d/metrics (/healthz, /readyz)", options.metrics_host, server.port
    )
    server.serve_forever()


def _supervise(children: list[_Child]) -> int:
    """Wait for the children; restart one that dies, until SIGTERM/SIGINT (forwarded to
    them). A killed worker (`kill -9`, the OOM killer, a crash) is restarted after
    RESTART_FIRST_SECONDS, doubled for each further death within HEALTHY_SECONDS of its start
    up to RESTART_MAX_SECONDS, so a crash loop does not spin; each restart is logged once and
    counted (the count is in the last line). Meanwhile the kernel hands the dead worker's share
    of the port to the others. A child that fails on its own at start (the database missing,
    say) stops the server, as before: that is for the operator, not for a retry."""
    stopping: list[int] = []
    restarts = 0
    status = 0
    server_started = time.monotonic()

    def forward(signum: int, _frame: Any) -> None:
        stopping.append(signum)
        for child in children:
            if child.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    while True:
        try:
            pid, wait_status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            pid, wait_status = 0, 0
        now = time.monotonic()
        if pid == 0:
            if stopping and not any(child.pid for child in children):
                break
            for child in children:
                if not stopping and child.restart_at is not None and child.restart_at <= now:
                    child.start()
                    log.info("%s restarted as pid %d", child.name, child.pid)
                    if stopping:  # the signal came while it was being forked
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(child.pid, stopping[0])
            time.sleep(SUPERVISE_SECONDS)
            continue
        dead = next((c for c in children if c.pid == pid), None)
        if dead is None:
            continue
        dead.pid = 0
        code = os.waitstatus_to_exitcode(wait_status)
        if stopping:
            if code not in (0, -signal.SIGTERM, -signal.SIGINT):
                log.error("%s (pid %d) exited with %d while stopping", dead.name, pid, code)
                status = 1
            continue
        if code > 0 and dead.runs == 1 and now - server_started < STARTUP_SECONDS:
            log.error("%s (pid %d) could not start (exit %d); stopping", dead.name, pid, code)
            status = 1
            forward(signal.SIGTERM, None)
            continue
        lived = now - dead.started
        dead.quick_failures = dead.quick_failures + 1 if lived < HEALTHY_SECONDS else 1
        delay = min(RESTART_MAX_SECONDS, RESTART_FIRST_SECONDS * 2 ** (dead.quick_failures - 1))
        dead.restart_at = now + delay
        restarts += 1
        how = f"killed by signal {-code}" if code < 0 else f"exited with {code}"
        log.error(
            "%s (pid %d) %s after %.0f s; restarting it in %.1f s (worker restarts: %d)",
            dead.name,
            pid,
            how,
            lived,
            delay,
            restarts,
        )
    log.info("radius server stopped; worker restarts: %d", restarts)
    return status
