"""The writer thread: the decision log and accounting, in batches, off the hot path.

The event loop only appends to a queue. The thread commits accounting as soon as any is
waiting (then hands the batch's Accounting-Responses back to the loop: a NAS is answered only
once its record is durable) and the decision log every `radius_log_batch_seconds`. When the
database cannot keep up, decision rows beyond the backlog limit are dropped and counted;
accounting is never dropped here. When the database cannot be reached, accounting goes to the
worker's spool (radius/spool.py), fsync'd before it is answered, and is replayed in order, in
batches, by this thread once the database answers; while the spool holds anything, new
records go behind it. Without a spool, or with the spool full, accounting is not answered,
so the NAS retransmits.

A batch the database refuses because of one row (a value it cannot store, a constraint) is
split in halves until that row is found (`store_isolating`): the bad row alone is lost,
counted and logged with its identifiers; the others are stored.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from radius.counters import Counters
from radius.spool import Spool, SpoolFull, decode_record, encode_record
from service.accounting import AcctRecord, apply_accounting
from service.db import SessionFactory, database_error_message
from service.decisions import DecisionRow, record_decisions, refused_by_database

# DecisionRow is the domain's (service/decisions.py); radius/authorizer.py names it from here.
__all__ = ["AcctTicket", "DecisionRow", "LogWriter", "Outage", "Stored", "store_isolating"]

log = logging.getLogger("schoolgate.radius.writer")

T = TypeVar("T")


def one_line(exc: BaseException) -> str:
    """The database's complaint in one line (no statement, no parameters)."""
    message = database_error_message(exc)
    if message is None:
        first = str(exc).strip().splitlines()
        message = f"{type(exc).__name__}: {first[0] if first else ''}"
    return message


@dataclass
class Stored(Generic[T]):
    """What `store_isolating` did with each row of a batch."""

    stored: list[T] = field(default_factory=list)
    refused: list[tuple[T, str]] = field(default_factory=list)  # (row, the database's reason)
    unstored: list[T] = field(default_factory=list)  # not tried: the database failed
    error: str | None = None  # why `unstored` were not tried


def store_isolating(store: Callable[[list[T]], None], rows: Sequence[T]) -> Stored[T]:
    """Store `rows` with `store` (one transaction per call), in order. When the database
    refuses a part because of a row in it, the part is split in halves until the row is
    found: k bad rows in n cost about 2k·log2(n) extra transactions, and only those k rows.
    Any other failure (the database unreachable) stops at once: what is left is `unstored`."""
    result: Stored[T] = Stored()
    pending = [list(rows)]
    while pending:
        part = pending.pop()
        if result.error is not None:
            result.unstored.extend(part)
            continue
        try:
            store(part)
        except Exception as exc:  # noqa: BLE001 - the loop boundary of one part: sorted below
            if not refused_by_database(exc):
                result.error = one_line(exc)
                result.unstored.extend(part)
            elif len(part) == 1:
                result.refused.append((part[0], one_line(exc)))
            else:
                middle = len(part) // 2
                pending.append(part[middle:])
                pending.append(part[:middle])  # popped first: the rows stay in order
            continue
        result.stored.extend(part)
    return result


class Outage:
    """One log line when writing to the database starts failing and one when it works again,
    with the rows lost meanwhile: not a line per batch while the database is away."""

    def __init__(self, what: str, logger: logging.Logger) -> None:
        self.what = what
        self.log = logger
        self.since: float | None = None
        self.lost = 0

    def failed(self, rows: int, reason: str | None) -> None:
        """`rows` lost (0: kept in the spool) because the database failed with `reason`."""
        self.lost += rows
        if self.since is None:
            self.since = time.monotonic()
            self.log.error("%s: %d rows lost: %s (logged once)", self.what, rows, reason)

    def worked(self) -> None:
        if self.since is not None:
            self.log.warning(
                "%s: stored again after %.0f s; %d rows lost meanwhile",
                self.what,
                time.monotonic() - self.since,
                self.lost,
            )
            self.since = None
            self.lost = 0


def describe_decision(row: DecisionRow) -> str:
    """The identifiers of a decision row, for the log line of its loss."""
    return f"NAS {row[2]!r} ({row[3]}), MAC {row[4]}, User-Name {row[5]!r}, access {row[7]}"


@dataclass(frozen=True, slots=True)
class AcctTicket:
    """What the loop needs to answer one accounting packet once it is stored."""

    record: AcctRecord
    reply: bytes
    address: tuple[str, int]
    dedup_key: tuple[Any, ...]


_STOP = object()
REPLAY_BATCH = 1000  # records per replay transaction
RETRY_SECONDS = 1.0  # between replay attempts while the database is away


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
        spool: Spool | None = None,
    ) -> None:
        self._factory = factory
        self._batch = max(0.01, batch_seconds)
        self._counters = counters
        self._deliver = deliver
        self._give_up = give_up
        self._max_backlog = max_backlog
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._spool = spool
        self.spooled = 0  # accounting records written to the spool (and answered)
        self.replayed = 0  # spooled records stored in the database since
        self._retry_at = 0.0
        self._accounting_outage = Outage(
            "accounting (not answered, the NAS retransmits)"
            if spool is None
            else f"accounting (spooled to {spool.path} until the database is back)",
            log,
        )
        self._decision_outage = Outage("decision log", log)
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

    @property
    def spool_depth(self) -> int:
        return 0 if self._spool is None else self._spool.depth

    def _run(self) -> None:
        decisions: list[DecisionRow] = []
        tickets: list[AcctTicket] = []
        deadline = time.monotonic() + self._batch
        stopping = False
        get = self._queue.get
        while not stopping:
            timeout = max(0.0, deadline - time.monotonic())
            if self.spool_depth and self._retry_at <= time.monotonic():
                timeout = 0.0  # replay goes on between batches of new records
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
            if self.spool_depth and self._retry_at <= time.monotonic():
                self._replay_accounting()
            if decisions and (stopping or time.monotonic() >= deadline):
                self._write_decisions(decisions)
                decisions = []
            if time.monotonic() >= deadline:
                deadline = time.monotonic() + self._batch
        if self._spool is not None:
            self._spool.close()

    def _store_accounting(self, tickets: list[AcctTicket]) -> None:
        with self._factory() as session, session.begin():
            apply_accounting(session=session, records=[t.record for t in tickets])

    def _store_records(self, records: list[AcctRecord]) -> None:
        with self._factory() as session, session.begin():
            apply_accounting(session=session, records=records)

    def _spool_tickets(self, tickets: Sequence[AcctTicket]) -> bool:
        """Append the tickets' records to the spool (fsync'd) and answer them; False (and
        nothing answered) when the spool cannot take them."""
        assert self._spool is not None
        try:
            self._spool.append([encode_record(t.record) for t in tickets])
        except SpoolFull:
            return False
        except OSError as exc:
            log.error(  # noqa: TRY400 - one line, no traceback: the disk's complaint
                "accounting: cannot write the spool %s: %s", self._spool.path, exc
            )
            return False
        self.spooled += len(tickets)
        self._deliver(tickets)
        return True

    def _replay_accounting(self) -> None:
        """One batch from the spool into the database, in order (exactly once: the keys)."""
        spool = self._spool
        assert spool is not None
        items, offset = spool.peek(REPLAY_BATCH)
        records: list[AcctRecord] = []
        for item in items:
            try:
                records.append(decode_record(item))
            except (KeyError, TypeError, ValueError) as exc:
                log.error(  # noqa: TRY400 - one line per record, no traceback
                    "accounting: a spooled record not understood, skipped: %s", exc
                )
        result = store_isolating(self._store_records, records)
        if result.unstored:
            self._retry_at = time.monotonic() + RETRY_SECONDS
            self._accounting_outage.failed(0, result.error)
            return
        for record, reason in result.refused:
            log.error(
                "spooled accounting record refused by the database (NAS %s, Acct-Session-Id "
                "%r, MAC %s): %s",
                record.nas_ip,
                record.acct_session_id,
                record.mac,
                reason,
            )
        spool.consumed(offset, len(items))
        self.replayed += len(result.stored)
        if not spool.depth:
            log.warning("accounting: the spool is replayed (%d records since start)", self.replayed)
            self._accounting_outage.worked()

    def _write_accounting(self, tickets: list[AcctTicket]) -> None:
        if self._spool is not None and self._spool.depth:
            # Behind what waits in the spool, to keep each NAS's records in order.
            if not self._spool_tickets(tickets):
                self._give_up(tickets)
            return
        result = store_isolating(self._store_accounting, tickets)
        if result.stored:
            self._deliver(result.stored)
        # Not answered: the NAS retransmits, and a record the database refused is refused
        # again, alone. Counted by the loop (`accounting_not_stored`).
        for ticket, reason in result.refused:
            record = ticket.record
            log.error(
                "accounting record not stored (NAS %s, Acct-Session-Id %r, MAC %s): %s",
                ticket.address[0],
                record.acct_session_id,
                record.mac,
                reason,
            )
        unstored = result.unstored
        if unstored:
            self._retry_at = time.monotonic() + RETRY_SECONDS
            if self._spool is not None and self._spool_tickets(unstored):
                unstored = []
            self._accounting_outage.failed(len(unstored), result.error)
        elif result.stored:
            self._accounting_outage.worked()
        failed = [ticket for ticket, _ in result.refused] + unstored
        if failed:
            self._give_up(failed)

    def _store_decisions(self, rows: list[DecisionRow]) -> None:
        with self._factory() as session, session.begin():
            record_decisions(session=session, rows=rows)

    def _write_decisions(self, rows: list[DecisionRow]) -> None:
        result = store_isolating(self._store_decisions, rows)
        self._counters.decisions_logged += len(result.stored)
        self._counters.decisions_lost += len(result.refused) + len(result.unstored)
        for row, reason in result.refused:
            log.error("decision row lost (%s): %s", describe_decision(row), reason)
        if result.unstored:
            self._decision_outage.failed(len(result.unstored), result.error)
        elif result.stored:
            self._decision_outage.worked()
