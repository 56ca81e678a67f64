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
        self._process = context.Process(
            target=_writer_main,
            args=(self._queue, database_url, os.getpid(), max(0.01, batch_seconds)),
            name="schoolgate-decision-log",
            daemon=True,
        )
        self._rows: list[DecisionRow] = []
        self.add = self._rows.append  # the hot path: one list append per answer

    def start(self) -> None:
        self._process.start()

    def flush(self) -> None:
        """Hand the rows gathered so far to the writer (called by the loop's timer)."""
        rows = self._rows
        if not rows:
            return
        batch = rows[:]
        rows.clear()
        for start in range(0, len(batch), MAX_BATCH_ROWS):
            part = batch[start : start + MAX_BATCH_ROWS]
            try:
                self._queue.put_nowait(part)
                self._counters.decisions_logged += len(part)
            except queue.Full:
                self._counters.decisions_lost += len(part)

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


def _writer_main(
    batches: Any, database_url: str, parent_pid: int, batch_seconds: float = 0.5
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
            try:
                with factory() as session, session.begin():
                    record_decisions(session=session, rows=rows)
            except Exception:  # the loop boundary: this batch is lost, the next may go in
                log.exception("decision log batch of %d rows lost", len(rows))
    finally:
        engine.dispose()
