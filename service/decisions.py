"""The decision log: one row per answer the RADIUS server gave, written in batches.

The server builds each row as a plain tuple on its hot path (`DecisionRow`, in the column
order of `DECISION_COLUMNS`) and a writer process hands batches of them to `record_decisions`
(radius/decision_log.py); `bench/radius_load.py` guards both.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

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


def record_decisions(*, session: Session, rows: Sequence[DecisionRow]) -> None:
    """Insert a batch of decision rows with one DBAPI executemany (the caller commits).

    The SQLAlchemy insert costs 20-30 µs a row in bind processing, in the same process (and
    under the same GIL) as the hot path; a plain executemany costs a few. The only conversion
    is the time (POSIX seconds in the row): naive UTC text on SQLite (as `UTCDateTime` stores
    it), an aware datetime on PostgreSQL. The rows are in the database when this returns.
    """
    connection = session.connection()
    dialect = connection.dialect
    placeholder = "?" if dialect.paramstyle == "qmark" else "%s"
    columns = ", ".join(DECISION_COLUMNS)
    values = ", ".join([placeholder] * len(DECISION_COLUMNS))
    table = DecisionRecord.__tablename__
    sql = f"INSERT INTO {table} ({columns}) VALUES ({values})"  # noqa: S608 - fixed names
    if dialect.name == "sqlite":
        params: list[tuple[Any, ...]] = [(sqlite_time(r[0]), *r[1:]) for r in rows]
    else:
        utc_time = datetime.fromtimestamp
        params = [(utc_time(r[0], UTC), *r[1:]) for r in rows]
    connection.exec_driver_sql(sql, params)
