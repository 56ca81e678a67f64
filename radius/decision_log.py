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

A row the database refuses costs that row only (`radius.writer.store_isolating`), logged with
its identifiers. The writer counts what it stored and lost in two shared integers, which the
server copies into its counters (`decisions_logged`, `decisions_lost`): what the shutdown line
and the minute's counters say is what reached the database.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import queue
import signal
import time
from typing import Any

from radius.counters import Counters
from radius.writer import Outage, describe_decision, store_isolating
from service.decisions import DecisionRow, record_decisions

log = logging.getLogger("schoolgate.radius.decisions")

MAX_QUEUED_BATCHES = 256
MAX_BATCH_ROWS = 5000
MAX_TRANSACTION_ROWS = 50_000
GRACE_SECONDS = 5.0
WRITER_NICENESS = 5


class DecisionLog:
    def __init__(
        self, database_url: str, *, counters: Counters, batch_seconds: float = 0.5
    ) -> None:
        # fork: started before the server opens its database, threads or sockets, so the
        # child starts clean and no module is imported twice.
        context = multiprocessing.get_context("fork")
        self._counters = counters
        self._queue: Any = context.Queue(maxsize=MAX_QUEUED_BATCHES)
        # Rows the writer stored and lost, written by it alone (so no lock), read here.
        self._written: Any = context.RawValue("q", 0)
        self._writer_lost: Any = context.RawValue("q", 0)
        self._dropped = 0  # rows this process could not hand over (the queue was full)
        self._process = context.Process(
            target=_writer_main,
            args=(
                self._queue,
                database_url,
                os.getpid(),
                max(0.01, batch_seconds),
                (self._written, self._writer_lost),
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
    factory = make_session_factory(engine)
    outage = Outage("decision log", log)
    stopping = False
    try:
        while not stopping:
            if grace and time.monotonic() > grace[0]:
                break
            try:
                batch = batches.get(timeout=0.5)
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
            _write(factory, rows, tally, outage)
    finally:
        engine.dispose()


def _write(
    factory: Any, rows: list[DecisionRow], tally: tuple[Any, Any] | None, outage: Outage
) -> None:
    """One batch, in one transaction, or split around the rows the database refuses."""

    def store(part: list[DecisionRow]) -> None:
        with factory() as session, session.begin():
            record_decisions(session=session, rows=part)

    result = store_isolating(store, rows)
    for row, reason in result.refused:
        log.error("decision row lost (%s): %s", describe_decision(row), reason)
    if result.unstored:  # the next batch may go in
        outage.failed(len(result.unstored), result.error)
    elif result.stored:
        outage.worked()
    if tally is not None:
        written, lost = tally
        written.value += len(result.stored)
        lost.value += len(result.refused) + len(result.unstored)
