"""The decision log: one row per answer the RADIUS server gave, written in batches.

The server builds each row as a plain tuple on its hot path (`DecisionRow`, in the column
order of `DECISION_COLUMNS`) and a writer process hands batches of them to `record_decisions`
(radius/decision_log.py); `bench/radius_load.py` guards both.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.exc import DataError, IntegrityError
from sqlalchemy.orm import Session

from service.models import DecisionRecord
from service.models.base import sqlite_time

# Column order of a decision-log tuple (built on the hot path without a dict).
DECISION_COLUMNS = (
    "decided_at",
    "site_code",
    "nas_name",
    "nas_ip",
    "mac",
    "username",
    "location",
    "access",
    "vlan",
    "reason",
    "rule",
    "session_timeout",
    "micros",
)
DecisionRow = tuple[
    float,  # decided_at, POSIX seconds (cheap to build and to pickle)
    str | None,
    str | None,
    str | None,
    str | None,
    str | None,
    str | None,
    str,
    int | None,
    str,
    str,
    int | None,
    int | None,
]


# C0 controls and DEL: PostgreSQL text cannot hold NUL at all, and the others would reach a
# terminal raw through `export` and `device show`.
_CONTROL = re.compile("[\x00-\x1f\x7f]")


def storable_text(value: str | None, limit: int = 255) -> str | None:
    """`value` as it can be stored and shown: each control character (NUL first of all)
    written as `\\xNN`, cut at `limit` characters. Used for the text a NAS sends (User-Name,
    Acct-Session-Id, ...): recording a name with its NUL escaped beats losing the row."""
    if value is None:
        return None
    if value.isprintable():  # the usual case, one C call
        return value[:limit]
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", value)[:limit]


def refused_by_database(exc: BaseException) -> bool:
    """True when the database refused the rows themselves (a value it cannot store, a
    constraint), False when it could not be reached or failed otherwise: only a refusal is
    worth splitting a batch to find the row at fault (`radius/writer.py`)."""
    return isinstance(exc, (DataError, IntegrityError))


def record_decisions(
    *, session: Session, rows: Sequence[DecisionRow], keys: Sequence[str] | None = None
) -> None:
    """Insert a batch of decision rows with one DBAPI executemany (the caller commits).

    With `keys` (one per row: its writer and sequence number, radius/decision_log.py), each
    row goes in with its `log_key` and ON CONFLICT DO NOTHING: a row stored just before a
    database outage and again from the spool afterwards is stored once.

    The SQLAlchemy insert costs 20-30 µs a row in bind processing, in the same process (and
    under the same GIL) as the hot path; a plain executemany costs a few. The only conversion
    is the time (POSIX seconds in the row): naive UTC text on SQLite (as `UTCDateTime` stores
    it), an aware datetime on PostgreSQL; and the User-Name made storable (`storable_text`).
    The rows are in the database when this returns.
    """
    connection = session.connection()
    dialect = connection.dialect
    placeholder = "?" if dialect.paramstyle == "qmark" else "%s"
    names = DECISION_COLUMNS if keys is None else (*DECISION_COLUMNS, "log_key")
    columns = ", ".join(names)
    values = ", ".join([placeholder] * len(names))
    table = DecisionRecord.__tablename__
    sql = f"INSERT INTO {table} ({columns}) VALUES ({values})"  # noqa: S608 - fixed names
    if keys is not None:
        if len(keys) != len(rows):
            raise ValueError(f"{len(keys)} keys for {len(rows)} decision rows")
        sql += " ON CONFLICT DO NOTHING"
    # The User-Name is the one column the NAS (and so whoever is on the network) chooses.
    text = storable_text
    if dialect.name == "sqlite":
        params: list[tuple[Any, ...]] = [
            (sqlite_time(r[0]), *r[1:5], text(r[5]), *r[6:]) for r in rows
        ]
    else:
        utc_time = datetime.fromtimestamp
        params = [(utc_time(r[0], UTC), *r[1:5], text(r[5]), *r[6:]) for r in rows]
    if keys is not None:
        params = [(*p, k) for p, k in zip(params, keys, strict=True)]
    connection.exec_driver_sql(sql, params)
