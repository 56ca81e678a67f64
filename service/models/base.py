"""Declarative base, naming convention and the shared column types."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Annotated, Any

from sqlalchemy import JSON, BigInteger, DateTime, Integer, MetaData, String, TypeDecorator
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


# Epoch second -> "YYYY-MM-DD HH:MM:SS" (bulk writers see the same seconds many times).
_SECONDS: dict[int, str] = {}


def sqlite_time(ts: float | None) -> str | None:
    """Epoch seconds as SQLAlchemy stores a UTC time on SQLite (UTCDateTime, then SQLite's
    DATETIME: "YYYY-MM-DD HH:MM:SS.ffffff"), rounded to the microsecond as
    `datetime.fromtimestamp` rounds (half to even), the date and time of day cached per second."""
    if ts is None:
        return None
    sec = int(ts)
    micro = round((ts - sec) * 1e6)
    if micro >= 1_000_000:
        sec += 1
        micro -= 1_000_000
    prefix = _SECONDS.get(sec)
    if prefix is None:
        if len(_SECONDS) > 100_000:
            _SECONDS.clear()
        t = time.gmtime(sec)
        prefix = _SECONDS[sec] = (
            f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d} "
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}"
        )
    return f"{prefix}.{micro:06d}"


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in and out, on SQLite (which keeps no zone) as on PostgreSQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(
        self,
        value: datetime | None,
        dialect: Dialect,  # noqa: ARG002
    ) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


# An integer primary key that is BIGINT on PostgreSQL and INTEGER (rowid) on SQLite.
BigIntId = BigInteger().with_variant(Integer(), "sqlite")
JSONType = (
    JSON().with_variant(postgresql.JSONB(), "postgresql").with_variant(sqlite.JSON(), "sqlite")
)

intpk = Annotated[int, mapped_column(BigIntId, primary_key=True, autoincrement=True)]
utc = Annotated[datetime, mapped_column(UTCDateTime())]
str_short = Annotated[str, mapped_column(String(255))]
json_dict = Annotated[dict[str, Any], mapped_column(JSONType)]


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
