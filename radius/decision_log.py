"""The decision log, written by a separate process.

Why a process: a writer thread in the server process costs the hot path more than its own
CPU time. Every sendto/recvfrom releases the GIL and the writer, once it holds it, keeps it for
the switch interval (the "convoy effect"); measured with `bench/radius_load.py` it halved the
answers per second. The event loop now only appends a tuple to a list and, every few tens of
milliseconds, hands the list to a multiprocessing queue (pickled by its feeder thread, in C);
the writer process does the inserts, one transaction per `radius_log_batch_seconds` (a commit
costs as much CPU as thousands of rows, and the writer shares the CPUs with the server). When
the writer falls behind, whole batches are dropped and counted (`decisions_lost`); answers
never wait for the log.

When the database cannot be reached, the writer appends the rows to the worker's spool
(radius/spool.py) instead of losing them, and replays the spool in order once the database
answers (new rows go behind it meanwhile); only a full spool loses rows (counted). Each row
gets a key in the writer (`log_key`: this writer's start and the row's sequence number, no
cost on the hot path), so a row stored just before an outage and again from the spool is
stored once.

A row the database refuses costs that row only (`radius.writer.store_isolating`), logged with
its identifiers. The writer counts what it stored and lost in two shared integers, which the
server copies into its counters (`decisions_logged`, `decisions_lost`): what the shutdown line
and the minute's counters say is what reached the database.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import multiprocessing
import os
import queue
import signal
import socket
import time
from pathlib import Path
from typing import Any

from radius.counters import Counters
from radius.spool import Spool, SpoolFull
from radius.writer import Outage, describe_decision, store_isolating
from service.decisions import DecisionRow, record_decisions

log = logging.getLogger("schoolgate.radius.decisions")

MAX_QUEUED_BATCHES = 256
MAX_BATCH_ROWS = 5000
MAX_TRANSACTION_ROWS = 50_000
GRACE_SECONDS = 5.0
WRITER_NICENESS = 5
REPLAY_BATCH = 5000  # rows per replay transaction
RETRY_SECONDS = 1.0  # between replay attempts while the database is away
DEFAULT_SPOOL_BYTES = 256 * 1024 * 1024

KeyedRow = tuple[str, DecisionRow]


class DecisionLog:
    def __init__(
        self,
        database_url: str,
        *,
        counters: Counters,
        batch_seconds: float = 0.5,
        spool_path: Path | None = None,
        spool_max_bytes: int = DEFAULT_SPOOL_BYTES,
    ) -> None:
        # fork: started before the server opens its database, threads or sockets, so the
        # child starts clean and no module is imported twice.
        context = multiprocessing.get_context("fork")
        self._counters = counters
        self._queue: Any = context.Queue(maxsize=MAX_QUEUED_BATCHES)
        # Rows the writer stored and lost, written by it alone (so no lock), read here.
        self._written: Any = context.RawValue("q", 0)
        self._writer_lost: Any = context.RawValue("q", 0)
        # The spool's tally, written by the writer alone: spooled, replayed, waiting.
        self._spool_tally: Any = context.RawArray("q", 3)
        self._dropped = 0  # rows this process could not hand over (the queue was full)
        self._process = context.Process(
            target=_writer_main,
            args=(
                self._queue,
                database_url,
                os.getpid(),
                max(0.01, batch_seconds),
                (self._written, self._writer_lost),
                spool_path,
                spool_max_bytes,
                self._spool_tally,
            ),
            name="schoolgate-decision-log",
            daemon=True,
        )
        self._rows: list[DecisionRow] = []
        self.add = self._rows.append  # the hot path: one list append per answer

    def start(self) -> None:
        self._process.start()

    def flush(self) -> None:
        """Hand the rows gathered so far to the writer (called by the loop's timer)."""
        self.sync_counters()
        rows = self._rows
        if not rows:
            return
        batch = rows[:]
        rows.clear()
        for start in range(0, len(batch), MAX_BATCH_ROWS):
            part = batch[start : start + MAX_BATCH_ROWS]
            try:
                self._queue.put_nowait(part)
            except queue.Full:
                self._dropped += len(part)
        self.sync_counters()

    def sync_counters(self) -> None:
        """Copy what the writer stored and lost (and what never reached it) into the counters."""
        self._counters.decisions_logged = self._written.value
        self._counters.decisions_lost = self._dropped + self._writer_lost.value

    @property
    def spooled(self) -> int:
        return int(self._spool_tally[0])

    @property
    def replayed(self) -> int:
        return int(self._spool_tally[1])

    @property
    def spool_depth(self) -> int:
        return int(self._spool_tally[2])

    def alive(self) -> bool:
        return self._process.is_alive()

    def stop(self) -> None:
        """Flush, tell the writer to finish, wait for it."""
        self.flush()
        with contextlib.suppress(ValueError, OSError):
            self._queue.put(None, timeout=5)
        self._process.join(timeout=30)
        if self._process.is_alive():
            self._process.terminate()
        self._queue.close()
        self.sync_counters()


def _writer_main(
    batches: Any,
    database_url: str,
    parent_pid: int,
    batch_seconds: float = 0.5,
    tally: tuple[Any, Any] | None = None,
    spool_path: Path | None = None,
    spool_max_bytes: int = DEFAULT_SPOOL_BYTES,
    spool_tally: Any = None,
) -> None:
    """The writer process: insert batches until told to stop or the server is gone."""
    from service.db import make_engine, make_session_factory

    # The server decides when the log ends (it sends None after its last batch), so a
    # Ctrl-C or a SIGTERM to the whole process group does not lose the rows in flight; a
    # SIGTERM aimed at this process alone still ends it after a grace period.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Background work: when the CPUs are busy, the answers go first and the log catches up
    # (a burst of 40,000 answers otherwise costs the next seconds' p99 a few milliseconds).
    with contextlib.suppress(OSError):
        os.nice(WRITER_NICENESS)
    grace: list[float] = []
    signal.signal(signal.SIGTERM, lambda _s, _f: grace.append(time.monotonic() + GRACE_SECONDS))
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"
    )
    engine = make_engine(database_url)
    spool = None
    if spool_path is not None:
        spool = Spool(spool_path, max_bytes=spool_max_bytes, what="decision log")
    writer = _Writer(make_session_factory(engine), tally, spool, spool_tally)
    stopping = False
    try:
        while not stopping:
            if grace and time.monotonic() > grace[0]:
                break
            writer.replay_due()
            try:
                batch = batches.get(timeout=0.5 if not writer.replay_waiting() else 0.05)
            except queue.Empty:
                if os.getppid() != parent_pid:
                    break  # the server died without saying goodbye
                continue
            if batch is None:
                break
            rows: list[DecisionRow] = list(batch)
            # Gather what arrives during the batch period: one transaction for all of it.
            deadline = time.monotonic() + batch_seconds
            while len(rows) < MAX_TRANSACTION_ROWS:
                wait = deadline - time.monotonic()
                try:
                    more = batches.get(timeout=wait) if wait > 0 else batches.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stopping = True
                    break
                rows.extend(more)
            writer.write(rows)
    finally:
        if spool is not None:
            spool.close()
        engine.dispose()


class _Writer:
    """The writer process's state: keys, the database, the spool and the tallies."""

    def __init__(
        self, factory: Any, tally: tuple[Any, Any] | None, spool: Spool | None, spool_tally: Any
    ) -> None:
        self.factory = factory
        self.tally = tally
        self.spool = spool
        self.spool_tally = spool_tally
        self.outage = Outage(
            "decision log" if spool is None else f"decision log (spooled to {spool.path})", log
        )
        # This writer's name in `log_key`: the machine, the process and its start.
        origin = f"{socket.gethostname()}/{os.getpid()}/{time.time_ns()}".encode()
        self.prefix = hashlib.blake2b(origin, digest_size=8).hexdigest()
        self.sequence = 0
        self.retry_at = 0.0
        self._sync_spool()

    def keyed(self, rows: list[DecisionRow]) -> list[KeyedRow]:
        start = self.sequence
        self.sequence += len(rows)
        prefix = self.prefix
        return [(f"{prefix}:{start + i}", row) for i, row in enumerate(rows)]

    def store(self, part: list[KeyedRow]) -> None:
        with self.factory() as session, session.begin():
            record_decisions(session=session, rows=[r for _, r in part], keys=[k for k, _ in part])

    def count(self, written: int, lost: int) -> None:
        if self.tally is not None:
            self.tally[0].value += written
            self.tally[1].value += lost

    def _sync_spool(self) -> None:
        if self.spool_tally is not None and self.spool is not None:
            self.spool_tally[2] = self.spool.depth

    def replay_waiting(self) -> bool:
        return self.spool is not None and self.spool.depth > 0

    def write(self, rows: list[DecisionRow]) -> None:
        """One batch, in one transaction, or split around the rows the database refuses; to
        the spool when the database cannot be reached, or when the spool already holds rows."""
        keyed = self.keyed(rows)
        if self.replay_waiting():
            if not self.to_spool(keyed):
                self.count(0, len(keyed))
            self.replay_due()
            return
        result = store_isolating(self.store, keyed)
        for (_key, row), reason in result.refused:
            log.error("decision row lost (%s): %s", describe_decision(row), reason)
        unstored = result.unstored
        if unstored:  # the next batch may go in
            self.retry_at = time.monotonic() + RETRY_SECONDS
            if self.spool is not None and self.to_spool(unstored):
                unstored = []
            self.outage.failed(len(unstored), result.error)
        elif result.stored:
            self.outage.worked()
        self.count(len(result.stored), len(result.refused) + len(unstored))

    def to_spool(self, keyed: list[KeyedRow]) -> bool:
        """Append to the spool; False when it cannot take them (the caller counts them lost)."""
        assert self.spool is not None
        try:
            self.spool.append([[key, *row] for key, row in keyed])
        except (SpoolFull, OSError) as exc:
            if isinstance(exc, OSError):
                log.error(  # noqa: TRY400 - one line, no traceback: the disk's complaint
                    "decision log: cannot write the spool %s: %s", self.spool.path, exc
                )
            return False
        if self.spool_tally is not None:
            self.spool_tally[0] += len(keyed)
        self._sync_spool()
        return True

    def replay_due(self) -> None:
        """Replay the spool in batches while the database takes them (each batch once: the
        keys), until it is empty or the database fails (then again in RETRY_SECONDS)."""
        spool = self.spool
        while spool is not None and spool.depth and self.retry_at <= time.monotonic():
            items, offset = spool.peek(REPLAY_BATCH)
            keyed: list[KeyedRow] = []
            for item in items:
                if isinstance(item, list) and len(item) == 14 and isinstance(item[0], str):
                    keyed.append((item[0], tuple(item[1:])))
                else:
                    log.error("decision log: a spooled row not understood, skipped")
            result = store_isolating(self.store, keyed)
            if result.unstored:
                self.retry_at = time.monotonic() + RETRY_SECONDS
                self.outage.failed(0, result.error)
                return
            for (_key, row), reason in result.refused:
                log.error("spooled decision row lost (%s): %s", describe_decision(row), reason)
            spool.consumed(offset, len(items))
            self.count(len(result.stored), len(result.refused))
            if self.spool_tally is not None:
                self.spool_tally[1] += len(result.stored)
            self._sync_spool()
            if not spool.depth:
                log.warning("decision log: the spool is replayed")
                self.outage.worked()
