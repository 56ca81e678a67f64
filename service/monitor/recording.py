"""The capture side of the writer process: the recorder's calls (recorder.RecorderCalls) as event
batches into a pipe, and what the process reports back.

This module and everything the capture loop imports stay clear of SQLAlchemy and the models:
the writer process imports them (writer.py) after the fork and connects to the database while
the capture is already running, so a run's start-up costs one core a second less
(bench/monitor_pcap.py). A problem it meets first (no such site, a database without tables)
comes back as `Invalid` from `check()` before any row is written.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import queue
from typing import Any, NoReturn

from service.errors import Invalid
from service.monitor.messages import Failed, Ready, RecordingResult, Setup
from service.monitor.recorder import CALLS

Event = tuple[int, tuple[Any, ...]]  # (index of the call in recorder.CALLS, its arguments)
_FLOW, _DNS, _DHCP, _ARP, _TICK, _FINISH = range(6)
_LOCAL_NAME = CALLS.index("local_name")
_HTTP_HOST = CALLS.index("http_host")
_EVIDENCE = CALLS.index("evidence")


class Recording:
    """The recorder's calls from the capture loop, carried in batches to a writer process
    (forked) that runs a `Recorder` and inserts its rows (writer.record_and_write). `close()`
    returns the RecordingResult."""

    def __init__(self, setup: Setup, *, batch_size: int = 5000, niceness: int = 0) -> None:
        self.batch_size = batch_size
        self.events: list[Event] = []
        self.ready: Ready | None = None
        self.failed: str | None = None  # the writer process's Failed message
        self.result = RecordingResult({}, 0, None)
        context = multiprocessing.get_context("fork")
        # Up to 64 batches wait (a burst, a slow database, or the process still starting);
        # the queue's feeder thread pickles them into the pipe.
        self._batches: multiprocessing.Queue[list[Event] | None] = context.Queue(64)
        self._results, results_out = context.Pipe(duplex=False)
        self._process = context.Process(
            target=_writer_process,
            args=(setup, self._batches, results_out, niceness),
            name="monitor-writer",
            daemon=True,
        )
        self._process.start()
        results_out.close()

    # --- recorder.RecorderCalls (typed there): one event each ------------------------------

    def flow(self, *args: Any) -> None:
        self._put((_FLOW, args))

    def dns(self, *args: Any) -> None:
        self._put((_DNS, args))

    def dhcp(self, *args: Any) -> None:
        self._put((_DHCP, args))

    def arp(self, *args: Any) -> None:
        self._put((_ARP, args))

    def local_name(self, *args: Any) -> None:
        self._put((_LOCAL_NAME, args))

    def http_host(self, *args: Any) -> None:
        self._put((_HTTP_HOST, args))

    def tick(self, *args: Any) -> None:
        self._put((_TICK, args))

    def evidence(self, *args: Any) -> None:
        self._put((_EVIDENCE, args))

    def finish(self) -> None:
        self._put((_FINISH, ()))

    # --- the process --------------------------------------------------------------------

    def check(self) -> None:
        """Raise Invalid if the writer process could not start (no such site, no database);
        note its Ready. Cheap: call it between blocks of packets."""
        if self.ready is not None:
            return
        if not self._results.poll():
            if not self._process.is_alive() and not self._results.poll():
                self._fail(self._ended())
            return
        try:
            message = self._results.recv()
        except EOFError:
            message = Failed(self._ended())
        if isinstance(message, Failed):
            self._fail(message.message)
        self.ready = message

    def _ended(self) -> str:
        return f"the writer process ended (exit code {self._process.exitcode})"

    def _fail(self, message: str) -> NoReturn:
        self.failed = message
        self._stop()
        raise Invalid(message)

    def _put(self, event: Event) -> None:
        self.events.append(event)
        if len(self.events) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        if not self.events or self.failed is not None:
            return
        batch, self.events = self.events, []
        while True:
            try:
                self._batches.put(batch, timeout=1.0)
                return
            except queue.Full:
                if not self._process.is_alive():
                    self._lost(batch)
                    return

    def close(self) -> RecordingResult:
        """Write what is left and wait for the writer process; Invalid if it never started."""
        if self.failed is not None:
            raise Invalid(self.failed)
        self.flush()
        if self._process.is_alive():
            self._batches.put(None)
        outcome = None
        while self._process.is_alive() or self._results.poll():
            if self._results.poll(0.5):
                try:
                    message = self._results.recv()
                except EOFError:
                    break
                if isinstance(message, Failed):
                    self._fail(message.message)
                if isinstance(message, Ready):
                    self.ready = message
                    continue
                outcome = message
                break
        self._stop()
        result = self.result
        if outcome is None:
            result.errors += 1
            result.last_error = self._ended()
            return result
        result.written = outcome.written
        result.errors += outcome.errors
        result.last_error = outcome.last_error or result.last_error
        result.counters = outcome.counters
        result.kept = outcome.kept
        result.names = outcome.names
        return result

    def abandon(self) -> None:
        """Stop the writer process without writing anything (the capture could not start)."""
        self.failed = self.failed or "abandoned"
        self._process.terminate()
        self._stop()

    def _stop(self) -> None:
        self._process.join(timeout=10)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(timeout=5)
        self._batches.close()
        self._batches.cancel_join_thread()

    def _lost(self, batch: list[Event]) -> None:
        self.result.errors += 1
        self.result.last_error = f"writer process ended; {len(batch)} records not written"


# In a live capture the writer process yields the CPU to the capture loop: a late capture
# loop loses packets (the ring overflows), a late writer only writes a few seconds later (its
# queue holds about a million packets' events). bench/monitor_live.py: on 2 cores the capture
# loop, the writer and the kernel's packet delivery compete for the CPU. Reading a file, the
# two run at the same priority (nothing is lost by waiting; the run ends when both are done).
LIVE_WRITER_NICENESS = 5


def _writer_process(setup: Setup, batches: Any, results: Any, niceness: int) -> None:
    """Entry of the forked writer process: the database side is imported here, not before."""
    if niceness:
        # setpriority refused (a seccomp filter): the writer keeps the capture's priority
        with contextlib.suppress(OSError):
            os.nice(niceness)
    from service.monitor.writer import record_and_write

    record_and_write(setup, batches, results)
