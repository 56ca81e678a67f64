"""The writer thread: the decision log and accounting, in batches, off the hot path.

The event loop only appends to a queue. The thread commits accounting as soon as any is
waiting (then hands the batch's Accounting-Responses back to the loop: a NAS is answered only
once its record is durable) and the decision log every `radius_log_batch_seconds`. When the
database cannot keep up, decision rows beyond the backlog limit are dropped and counted;
accounting is never dropped here: it is simply not answered, so the NAS retransmits.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from radius.counters import Counters
from service.accounting import AcctRecord, apply_accounting
from service.db import SessionFactory
from service.decisions import DecisionRow, record_decisions

# DecisionRow is the domain's (service/decisions.py); radius/authorizer.py names it from here.
__all__ = ["AcctTicket", "DecisionRow", "LogWriter"]

log = logging.getLogger("schoolgate.radius.writer")


@dataclass(frozen=True, slots=True)
class AcctTicket:
    """What the loop needs to answer one accounting packet once it is stored."""

    record: AcctRecord
    reply: bytes
    address: tuple[str, int]
    dedup_key: tuple[Any, ...]


_STOP = object()


class LogWriter:
    def __init__(
        self,
        factory: SessionFactory,
        *,
        batch_seconds: float,
        counters: Counters,
        deliver: Callable[[Sequence[AcctTicket]], None],
        give_up: Callable[[Sequence[AcctTicket]], None],
        max_backlog: int = 200_000,
    ) -> None:
        self._factory = factory
        self._batch = max(0.01, batch_seconds)
        self._counters = counters
        self._deliver = deliver
        self._give_up = give_up
        self._max_backlog = max_backlog
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="radius-writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Write everything queued, then end the thread."""
        self._queue.put(_STOP)
        self._thread.join(timeout=30)

    def log_decision(self, row: DecisionRow) -> None:
        if self._queue.qsize() > self._max_backlog:
            self._counters.decisions_lost += 1
            return
        self._queue.put(row)

    def submit_accounting(self, ticket: AcctTicket) -> None:
        self._queue.put(ticket)

    def _run(self) -> None:
        decisions: list[DecisionRow] = []
        tickets: list[AcctTicket] = []
        deadline = time.monotonic() + self._batch
        stopping = False
        get = self._queue.get
        while not stopping:
            timeout = max(0.0, deadline - time.monotonic())
            try:
                item = get(timeout=timeout)
            except queue.Empty:
                item = None
            while item is not None:
                if item is _STOP:
                    stopping = True
                elif isinstance(item, AcctTicket):
                    tickets.append(item)
                else:
                    decisions.append(item)
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    item = None
            if tickets:
                self._write_accounting(tickets)
                tickets = []
            if decisions and (stopping or time.monotonic() >= deadline):
                self._write_decisions(decisions)
                decisions = []
            if time.monotonic() >= deadline:
                deadline = time.monotonic() + self._batch

    def _write_accounting(self, tickets: list[AcctTicket]) -> None:
        try:
            with self._factory() as session, session.begin():
                apply_accounting(session=session, records=[t.record for t in tickets])
        except Exception:  # the loop boundary: the NAS retransmits what we did not answer
            log.exception("accounting batch of %d not stored; not answered", len(tickets))
            self._give_up(tickets)
            return
        self._deliver(tickets)

    def _write_decisions(self, rows: list[DecisionRow]) -> None:
        try:
            with self._factory() as session, session.begin():
                record_decisions(session=session, rows=rows)
            self._counters.decisions_logged += len(rows)
        except Exception:  # the loop boundary: answers went out; the log lost this batch
            log.exception("decision log batch of %d rows lost", len(rows))
            self._counters.decisions_lost += len(rows)
