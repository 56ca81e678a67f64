"""RFC 2866 accounting records as session rows.

One `AccountingSession` row per (NAS, Acct-Session-Id, MAC): Start creates it, Interim-Update
and Stop update it (creating it when the Start was lost), Accounting-On/Off close every open
session of that NAS (it rebooted). The RADIUS server parses packets into `AcctRecord`s
(radius/accounting.py) and its writer thread applies them in batches (radius/writer.py),
committing before the Accounting-Responses of the batch are sent.

Exactly once: each record carries a key (the packet's identity, `radius/accounting.py`) that
goes into `accounting_records` with ON CONFLICT DO NOTHING; a record is applied to its session
only when its key is new. A record stored just before a database outage and again from the
RADIUS spool afterwards (radius/spool.py), or sent by a NAS to both of its RADIUS servers,
counts once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import astuple, dataclass, replace
from datetime import datetime, timedelta
from enum import IntEnum
from typing import Any

from sqlalchemy import Table, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from service.decisions import storable_text
from service.models import AccountingSession, utcnow
from service.models.ledger import AccountingRecord


class AcctStatus(IntEnum):
    """Acct-Status-Type values (RFC 2866 §5.1)."""

    START = 1
    STOP = 2
    INTERIM = 3
    ACCOUNTING_ON = 7
    ACCOUNTING_OFF = 8


NAS_RESTART = (AcctStatus.ACCOUNTING_ON, AcctStatus.ACCOUNTING_OFF)
DEFAULT_STALE_AFTER = timedelta(hours=4)  # Settings.accounting_stale_after's default


def session_end(
    *, updated_at: datetime, stopped_at: datetime | None, stale_after: timedelta
) -> datetime:
    """When a session stops binding its IP to its device: its Stop, else its last Start or
    Interim-Update plus `stale_after` (a NAS that rebooted without Accounting-On never sends
    the Stop; without this the IP would stay pinned to the old device for ever). The one rule
    for `who`, `export bindings` and the monitor's attribution."""
    return stopped_at if stopped_at is not None else updated_at + stale_after


def open_at(now: datetime, stale_after: timedelta) -> Any:
    """The SQL condition for a session still open at `now` by `session_end`'s rule."""
    return AccountingSession.stopped_at.is_(None) & (
        AccountingSession.updated_at > now - stale_after
    )


@dataclass(frozen=True, slots=True)
class AcctRecord:
    """One Accounting-Request as the domain keeps it (radius/accounting.py builds it)."""

    status: int  # an AcctStatus value
    nas_id: int
    nas_ip: str
    site_code: str
    at: datetime  # event time: now minus Acct-Delay-Time
    nas_identifier: str | None = None
    acct_session_id: str | None = None  # always set except for Accounting-On/Off
    mac: str | None = None
    username: str | None = None
    framed_ip: str | None = None
    called_station_id: str | None = None
    nas_port_id: str | None = None
    location: str | None = None
    session_time: int | None = None
    input_octets: int | None = None
    output_octets: int | None = None
    terminate_cause: str | None = None
    # The packet's identity (radius/accounting.py); None: derived from the fields above.
    key: str | None = None


def record_key(record: AcctRecord) -> str:
    """The record's key: the one the parser gave it, else a hash of its fields."""
    if record.key is not None:
        return record.key
    return hashlib.blake2b(repr(astuple(record)).encode(), digest_size=16).hexdigest()


LEDGER_CHUNK = 500  # rows per INSERT (SQLite allows 32,766 parameters; 5 per row)


def _new_records(session: Session, records: Sequence[AcctRecord]) -> list[AcctRecord]:
    """The records of `records` whose key the ledger did not hold (now it does), in order;
    a key twice in the batch counts once."""
    keyed: dict[str, AcctRecord] = {}
    for record in records:
        keyed.setdefault(record_key(record), record)
    if not keyed:
        return []
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    table = AccountingRecord.__table__
    assert isinstance(table, Table)
    fresh: set[str] = set()
    items = list(keyed.items())
    for start in range(0, len(items), LEDGER_CHUNK):
        chunk = items[start : start + LEDGER_CHUNK]
        statement = (
            insert(table)
            .values(
                [
                    {
                        "record_key": key,
                        "nas_id": r.nas_id,
                        "acct_session_id": r.acct_session_id,
                        "status": int(r.status),
                        "event_at": r.at,
                    }
                    for key, r in chunk
                ]
            )
            .on_conflict_do_nothing(index_elements=["record_key"])
            .returning(table.c.record_key)
        )
        fresh.update(session.scalars(statement))
    return [r for key, r in items if key in fresh]


def apply_accounting(*, session: Session, records: Sequence[AcctRecord]) -> None:
    """Write a batch of records as session rows, in order, with one query for the rows the
    batch already has; flushes, the caller commits (and only then answers the NAS). The text a
    NAS sent is made storable first (`storable_text`: a NUL escaped, not the batch lost). A
    record whose key is already in the ledger (written before) is skipped: exactly once."""
    records = _new_records(session, [_storable(r) for r in records])
    now = utcnow()
    session_ids = {r.acct_session_id for r in records if r.acct_session_id}
    rows: dict[tuple[int | None, str, str | None], AccountingSession] = {}
    if session_ids:
        for row in session.scalars(
            select(AccountingSession).where(AccountingSession.acct_session_id.in_(session_ids))
        ):
            rows[(row.nas_id, row.acct_session_id, row.mac)] = row
    for record in records:
        if record.status in NAS_RESTART:
            session.flush()
            session.execute(
                update(AccountingSession)
                .where(
                    AccountingSession.nas_id == record.nas_id,
                    AccountingSession.stopped_at.is_(None),
                )
                .values(
                    stopped_at=record.at,
                    updated_at=record.at,
                    terminate_cause="NAS-Reboot",
                    changed_at=now,
                )
            )
            continue
        assert record.acct_session_id is not None  # parse_accounting guarantees it
        key = (record.nas_id, record.acct_session_id, record.mac)
        found = rows.get(key)
        if found is not None:
            row = found
        else:
            started = record.at
            if record.status != AcctStatus.START and record.session_time:
                started = record.at - timedelta(seconds=record.session_time)
            row = AccountingSession(
                nas_id=record.nas_id,
                nas_ip=record.nas_ip,
                nas_identifier=record.nas_identifier,
                site_code=record.site_code,
                mac=record.mac,
                username=record.username,
                framed_ip=record.framed_ip,
                acct_session_id=record.acct_session_id,
                called_station_id=record.called_station_id,
                nas_port_id=record.nas_port_id,
                location=record.location,
                started_at=started,
                updated_at=record.at,
                input_octets=0,
                output_octets=0,
            )
            session.add(row)
            rows[key] = row
        _update(row, record)
        row.changed_at = now
    session.flush()


_NAS_TEXT = ("nas_identifier", "acct_session_id", "username", "called_station_id", "nas_port_id")


def _storable(record: AcctRecord) -> AcctRecord:
    """`record` with the text its NAS chose made storable; the same object when it already is
    (the usual case: a few `isprintable` calls)."""
    changes: dict[str, Any] = {}
    for name in _NAS_TEXT:
        value = getattr(record, name)
        if value is not None and not value.isprintable():
            changes[name] = storable_text(value)
    return replace(record, **changes) if changes else record


def _update(row: AccountingSession, record: AcctRecord) -> None:
    row.updated_at = max(row.updated_at, record.at)
    if record.framed_ip:
        row.framed_ip = record.framed_ip
    if record.username and not row.username:
        row.username = record.username
    if record.location and not row.location:
        row.location = record.location
    if record.session_time is not None:
        row.session_time = max(row.session_time or 0, record.session_time)
    if record.input_octets is not None:
        row.input_octets = max(row.input_octets or 0, record.input_octets)
    if record.output_octets is not None:
        row.output_octets = max(row.output_octets or 0, record.output_octets)
    if record.status == AcctStatus.STOP:
        row.stopped_at = record.at
        row.terminate_cause = record.terminate_cause
