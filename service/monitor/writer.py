"""The writer process (started by recording.Recording): the recorder (recorder.py) turns the
engine's event batches into rows, which are converted and inserted, so the capture loop never
waits on the database and the naming, attribution and inserts run on another core
(bench/monitor_pcap.py: a thread sharing the GIL with the capture loop took as long again as
the capture itself). Rows carry times as float epoch seconds and are converted here. On
PostgreSQL it creates the daily partition a batch needs before inserting."""

from __future__ import annotations

import itertools
import json
import logging
import queue
import signal
import sqlite3
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, insert, select, text
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.orm import Session
from sqlalchemy.sql import sqltypes

from service.db import describe_database_error, make_engine
from service.device_names import record_device_names
from service.errors import Invalid, NotFound, SchoolgateError
from service.facts import load_policy
from service.models import Device, Person, Site
from service.models.base import UTCDateTime, sqlite_time
from service.models.names import DeviceName
from service.models.traffic import (
    PARTITION_COLUMNS,
    TrafficAlert,
    TrafficBinding,
    TrafficDns,
    TrafficFlow,
    TrafficVisit,
)
from service.monitor.attribution import AttributionFeed
from service.monitor.messages import SUMMARY_KINDS, Failed, Ready, RecordingResult, Setup
from service.monitor.recorder import CALLS, Recorder
from service.monitor.records import FIELDS, P2P_FIELD, Counters, Row, with_datetimes

TABLES: dict[str, Any] = {
    "flows": TrafficFlow.__table__,
    "dns": TrafficDns.__table__,
    "visits": TrafficVisit.__table__,
    "alerts": TrafficAlert.__table__,
    "bindings": TrafficBinding.__table__,
    "names": DeviceName.__table__,
}
UPSERTED = frozenset({"names"})  # one row per key, kept up to date: not partitioned
# Each table's columns in INSERT order: the engine's row fields (all columns but the id).
COLUMNS = {kind: [table.c[name] for name in FIELDS[kind]] for kind, table in TABLES.items()}
Batch = dict[str, list[Row]]  # kind -> rows
_json_string: Callable[[str], str] = json.encoder.encode_basestring_ascii
log = logging.getLogger("schoolgate.monitor")


def record_and_write(setup: Setup, batches: Any, results: Any) -> None:
    """The writer process (recording.Recording starts it): connect, look up the site, load the
    attributor, say Ready (or Failed), then record and insert event batches until None, and
    send a RecordingResult back."""
    # Ctrl-C and SIGTERM go to the capture process, which stops and sends what is left.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        engine = make_engine(setup.database_url)
        with Session(engine) as session:
            timezone = None
            if setup.site_code is not None:
                site = session.scalar(select(Site).where(Site.code == setup.site_code))
                if site is None:
                    raise Invalid(f"no site {setup.site_code!r}")
                timezone = site.timezone
                bypass_alerts, tunnel_allow = monitor_policy(session, setup.site_code)
            else:
                bypass_alerts, tunnel_allow = True, ()
            feed = AttributionFeed(
                site_code=setup.site_code,
                stale_after=timedelta(seconds=setup.accounting_stale_after),
            )
            attributor = feed.load(session)
        inserter = _Inserter(engine)
    except SchoolgateError as exc:
        results.send(Failed(str(exc)))
        return
    except SQLAlchemyError as exc:
        results.send(Failed(describe_database_error(exc)))
        return
    results.send(Ready(timezone))

    rows: Batch = {kind: [] for kind in TABLES}
    kept: dict[str, list[Row]] = {kind: [] for kind in SUMMARY_KINDS}

    def sink(kind: str, row: Row) -> None:
        rows[kind].append(row)
        if setup.keep_summary:
            if kind == "flows":
                if row[P2P_FIELD]:
                    kept["p2p_flows"].append(row)
            elif kind in kept:
                kept[kind].append(row)

    counters = Counters()
    recorder = Recorder(
        sink,
        site_code=setup.site_code,
        attributor=attributor,
        categories=setup.categories,
        visit_idle_gap=setup.visit_idle_gap,
        counters=counters,
        bypass_alerts=bypass_alerts,
        dns_tunnel_allow=tunnel_allow,
    )
    calls = [getattr(recorder, name) for name in CALLS]
    errors = 0
    last_error = None
    refresher = _Refresher(engine, feed, setup.refresh_seconds)
    while True:
        try:
            batch = batches.get(timeout=refresher.wait())
        except queue.Empty:
            refresher.maybe()
            continue
        if batch is None:
            break
        refresher.maybe()
        try:
            for code, args in batch:
                calls[code](*args)
        except Exception as exc:  # noqa: BLE001  (counted; what was recorded is still written)
            errors += 1
            last_error = f"{type(exc).__name__}: {str(exc)[:200]}"
        written = {kind: batch_rows for kind, batch_rows in rows.items() if batch_rows}
        if written:
            inserter.write(written)
            rows = {kind: [] for kind in TABLES}
    names: dict[str, dict[int, str]] = {}
    if setup.keep_summary:
        try:
            with Session(engine) as session:
                names = summary_names(session, kept)
        except SQLAlchemyError as exc:
            errors += 1
            last_error = describe_database_error(exc)
    results.send(
        RecordingResult(
            inserter.written,
            inserter.errors + errors,
            last_error or inserter.last_error,
            {"dns": counters.dns, "visits": counters.visits, "alerts": counters.alerts},
            kept,
            names,
        )
    )
    results.close()


class _Refresher:
    """Brings the attributor up to date every `every` seconds, between batches (the capture
    goes on meanwhile: batches wait in the queue). A refresh reads only what changed
    (AttributionFeed.refresh). Database unreachable: the last attributor stays, and that is
    logged once until a refresh works again."""

    def __init__(self, engine: Engine, feed: AttributionFeed, every: float) -> None:
        self.engine = engine
        self.feed = feed
        self.every = every
        self.due = time.monotonic() + every
        self.failing = False

    def wait(self) -> float:
        """How long the writer may wait for a batch before the next refresh is due."""
        return max(0.01, self.due - time.monotonic())

    def maybe(self) -> None:
        now = time.monotonic()
        if now < self.due:
            return
        self.due = now + self.every
        try:
            with Session(self.engine) as session:
                self.feed.refresh(session)
        except SQLAlchemyError as exc:
            if not self.failing:
                log.warning(
                    "attribution not refreshed, keeping the last one: %s",
                    describe_database_error(exc),
                )
            self.failing = True
            return
        if self.failing:
            log.warning("attribution refreshed again")
        self.failing = False


def monitor_policy(session: Session, site_code: str) -> tuple[bool, tuple[str, ...]]:
    """The site policy's `[monitor]` section: `bypass_alerts` and `dns_tunnel_allow` (on and
    none for a site with no policy yet)."""
    try:
        policy = load_policy(session, site_code)
    except NotFound:
        return True, ()
    return policy.bypass_alerts, policy.dns_tunnel_allow


def summary_names(session: Session, kept: dict[str, list[Row]]) -> dict[str, dict[int, str]]:
    """Device id -> "name (class)" and person id -> name, for the devices and people in the
    summary's rows."""
    device_ids: set[int] = set()
    person_ids: set[int] = set()
    for kind, rows in kept.items():
        fields = FIELDS["flows" if kind == "p2p_flows" else kind]
        device_at, person_at = fields.index("device_id"), fields.index("person_id")
        device_ids.update(row[device_at] for row in rows if row[device_at])
        person_ids.update(row[person_at] for row in rows if row[person_at])
    devices = {
        device_id: f"{name or mac} ({device_class.value})"
        for device_id, name, mac, device_class in session.execute(
            select(Device.id, Device.name, Device.mac, Device.device_class).where(
                Device.id.in_(device_ids)
            )
        )
    }
    people = dict(
        session.execute(select(Person.id, Person.name).where(Person.id.in_(person_ids))).all()
    )
    return {"devices": devices, "people": people}


class _Inserter:
    """Inserts batches: on SQLite with `_SqlitePlan`s, on PostgreSQL through SQLAlchemy Core
    (insertmanyvalues) after creating the day partitions a batch needs."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.written: dict[str, int] = dict.fromkeys(TABLES, 0)
        self.errors = 0
        self.last_error: str | None = None
        self._partitions: set[tuple[str, str]] = set()
        self._plans = _sqlite_plans(engine)

    def write(self, batch: Batch) -> None:
        try:
            with self.engine.begin() as conn:
                for kind in UPSERTED & batch.keys():
                    record_device_names(
                        session=conn, rows=[with_datetimes(kind, r) for r in batch[kind]]
                    )
                if self._plans:
                    for kind, rows in batch.items():
                        if kind not in UPSERTED:
                            self._plans[kind].write(conn, rows)
                else:
                    dicts = {
                        kind: [with_datetimes(kind, r) for r in rows]
                        for kind, rows in batch.items()
                        if kind not in UPSERTED
                    }
                    if conn.dialect.name == "postgresql":
                        self._ensure_partitions(conn, dicts)
                    for kind, records in dicts.items():
                        if conn.dialect.driver == "psycopg":
                            _copy(conn, kind, records)
                        else:
                            conn.execute(insert(TABLES[kind]), records)
            for kind, rows in batch.items():
                self.written[kind] += len(rows)
        except Exception as exc:  # noqa: BLE001  (a failed batch is counted, the capture goes on)
            self.errors += 1
            self.last_error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"

    def _ensure_partitions(self, conn: Any, by_kind: dict[str, list[dict[str, Any]]]) -> None:
        for kind, rows in by_kind.items():
            table = TABLES[kind].name
            column = PARTITION_COLUMNS[table]
            for day in {row[column].date() for row in rows}:
                if (table, day.isoformat()) in self._partitions:
                    continue
                ensure_partition(conn, table, datetime(day.year, day.month, day.day, tzinfo=UTC))
                self._partitions.add((table, day.isoformat()))


def _copy(conn: Any, kind: str, rows: list[dict[str, Any]]) -> None:
    """PostgreSQL with psycopg 3: COPY into the (partitioned) table, in the batch's transaction;
    a tenth of the time of an INSERT rendered by SQLAlchemy row by row."""
    from psycopg.types.json import Jsonb

    columns = COLUMNS[kind]
    names = [c.name for c in columns]
    # JSON columns: a Python None is JSON null, as SQLAlchemy's JSON type stores it.
    json = [c.name for c in columns if c.type.dialect_impl(conn.dialect).__visit_name__ == "JSONB"]
    statement = f"COPY {TABLES[kind].name} ({', '.join(names)}) FROM STDIN"
    with conn.connection.driver_connection.cursor() as cursor, cursor.copy(statement) as copy:
        for row in rows:
            for name in json:
                row[name] = Jsonb(row[name])
            copy.write_row([row[name] for name in names])


class _SqlitePlan:
    """How one table's rows become SQLite parameters: each column's bind processor applied
    column-wise (times by `sqlite_time`), then multi-row INSERT statements of up to 500 rows
    (fewer trips through the sqlite3 module than executemany's row at a time)."""

    def __init__(self, kind: str, dialect: Any, max_variables: int) -> None:
        columns = COLUMNS[kind]
        self.table = TABLES[kind].name
        self.names = [c.name for c in columns]
        self.converters: list[tuple[int, Callable[[Any], Any]]] = []
        for index, column in enumerate(columns):
            if isinstance(column.type, UTCDateTime):
                self.converters.append((index, sqlite_time))
                continue
            impl = column.type.dialect_impl(dialect)
            processor = impl.bind_processor(dialect)
            if processor is not None:
                if isinstance(impl, sqltypes.JSON):
                    processor = _json_lists(processor)
                self.converters.append((index, processor))
        self.per_statement = max(1, min(500, max_variables // len(columns)))
        self._row_marks = "(" + ", ".join(["?"] * len(columns)) + ")"
        self._statements: dict[int, str] = {}

    def statement(self, rows: int) -> str:
        sql = self._statements.get(rows)
        if sql is None:
            sql = self._statements[rows] = (
                f"INSERT INTO {self.table} ({', '.join(self.names)}) VALUES "  # noqa: S608
                + ", ".join([self._row_marks] * rows)
            )
        return sql

    def values(self, rows: list[Row]) -> list[Row]:
        if not self.converters or not rows:
            return rows
        columns = list(zip(*rows, strict=True))
        for index, convert in self.converters:
            columns[index] = tuple(map(convert, columns[index]))
        return list(zip(*columns, strict=True))

    def write(self, conn: Any, rows: list[Row]) -> None:
        values = self.values(rows)
        step = self.per_statement
        for at in range(0, len(values), step):
            chunk = values[at : at + step]
            conn.exec_driver_sql(
                self.statement(len(chunk)), tuple(itertools.chain.from_iterable(chunk))
            )


def _json_lists(processor: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """SQLAlchemy's JSON bind processor, with the DNS answers' lists of strings or of integers
    encoded directly: the same text `json.dumps` gives (its separators, its C string escaper)
    for a fifth of the cost; anything else goes to SQLAlchemy's processor."""

    def process(value: Any) -> Any:
        if type(value) is list:
            if not value:
                return "[]"
            first = type(value[0])
            if first is str and all(type(item) is str for item in value):
                return "[" + ", ".join(map(_json_string, value)) + "]"
            if first is int and all(type(item) is int for item in value):
                return "[" + ", ".join(map(int.__repr__, value)) + "]"
        return processor(value)

    return process


def _sqlite_plans(engine: Engine) -> dict[str, _SqlitePlan]:
    """SQLite: a plan per table. PostgreSQL: none (SQLAlchemy's insertmanyvalues adapts
    JSONB and makes multi-row INSERTs itself)."""
    dialect = engine.dialect
    if dialect.name != "sqlite":
        return {}
    limit = 999  # SQLite's default before 3.32
    with engine.connect() as conn:
        getlimit = getattr(conn.connection.driver_connection, "getlimit", None)
        if getlimit is not None:
            limit = getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    return {kind: _SqlitePlan(kind, dialect, limit) for kind in TABLES}


def ensure_partition(conn: Any, table: str, day: datetime) -> None:
    """Create `traffic_parts.<table>_<yyyymmdd>` unless the day's rows already sit in DEFAULT
    (PostgreSQL refuses then; those rows stay in DEFAULT and retention deletes them)."""
    name = f"{table}_{day:%Y%m%d}"
    start, end = f"{day:%Y-%m-%d}", f"{day + timedelta(days=1):%Y-%m-%d}"
    try:
        with conn.begin_nested():
            conn.execute(
                text(
                    f"CREATE TABLE IF NOT EXISTS traffic_parts.{name} PARTITION OF {table} "
                    f"FOR VALUES FROM ('{start} 00:00:00+00') TO ('{end} 00:00:00+00')"
                )
            )
    except DBAPIError:
        pass  # the savepoint was rolled back; the rows go to the DEFAULT partition
