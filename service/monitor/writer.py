"""Batch writer: the capture loop appends rows to a list per table; each full batch goes to a
writer process that converts and inserts it, so the capture never waits on the database and the
inserts run on another core (bench/monitor_pcap.py: a thread sharing the GIL with the capture
loop took as long again as the capture itself). Rows come from the engine with times as float
epoch seconds and are converted in the writer process. On PostgreSQL it creates the daily
partition a batch needs before inserting."""

from __future__ import annotations

import itertools
import multiprocessing
import operator
import queue
import signal
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, insert, text
from sqlalchemy.exc import DBAPIError

from service.models.base import UTCDateTime, sqlite_time
from service.models.traffic import (
    PARTITION_COLUMNS,
    TrafficAlert,
    TrafficBinding,
    TrafficDns,
    TrafficFlow,
    TrafficVisit,
)
from service.monitor.engine import with_datetimes

TABLES: dict[str, Any] = {
    "flows": TrafficFlow.__table__,
    "dns": TrafficDns.__table__,
    "visits": TrafficVisit.__table__,
    "alerts": TrafficAlert.__table__,
    "bindings": TrafficBinding.__table__,
}
# Each table's columns in INSERT order (all but the id), and those holding times: epoch seconds
# in the engine's rows, UTC timestamps in the database.
COLUMNS = {kind: [c for c in table.columns if c.name != "id"] for kind, table in TABLES.items()}
Batch = dict[str, list[dict[str, Any]]]  # kind -> rows


class BatchWriter:
    """`add(kind, row)` from the capture loop; rows reach the database in batches, written by a
    child process (forked, so it shares the engine's configuration). `written`, `errors` and
    `last_error` are complete once `close()` has returned."""

    def __init__(
        self,
        engine: Engine,
        *,
        batch_size: int = 5000,
        on_row: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        self.engine = engine
        self.batch_size = batch_size
        self.on_row = on_row
        self.pending: dict[str, list[dict[str, Any]]] = {kind: [] for kind in TABLES}
        self._count = 0
        self.written: dict[str, int] = dict.fromkeys(TABLES, 0)
        self.errors = 0
        self.last_error: str | None = None
        context = multiprocessing.get_context("fork")
        # Up to 64 batches wait (a burst or a slow database); the queue's feeder thread pickles
        # them into the pipe.
        self._batches: multiprocessing.Queue[Batch | None] = context.Queue(64)
        self._results, results_out = context.Pipe(duplex=False)
        self._process = context.Process(
            target=_write_batches,
            args=(engine, self._batches, results_out),
            name="monitor-writer",
            daemon=True,
        )
        self._process.start()
        results_out.close()

    def add(self, kind: str, row: dict[str, Any]) -> None:
        self.pending[kind].append(row)
        if self.on_row is not None:
            self.on_row(kind, row)
        self._count += 1
        if self._count >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        if not self._count:
            return
        # The rows go as they are: pickling the dicts costs the capture less than making
        # tuples first (the writer process does that).
        batch = {kind: rows for kind, rows in self.pending.items() if rows}
        self.pending = {kind: [] for kind in TABLES}
        self._count = 0
        while True:
            try:
                self._batches.put(batch, timeout=1.0)
                return
            except queue.Full:
                if not self._process.is_alive():
                    self._lost(batch)
                    return

    def close(self) -> None:
        """Write what is left and wait for the writer process."""
        self.flush()
        if self._process.is_alive():
            self._batches.put(None)
        result = None
        while self._process.is_alive() or self._results.poll():
            if self._results.poll(0.5):
                try:
                    result = self._results.recv()
                except EOFError:
                    result = None
                break
        self._process.join(timeout=10)
        self._batches.close()
        self._batches.cancel_join_thread()
        if result is None:
            self.errors += 1
            self.last_error = f"writer process ended (exit code {self._process.exitcode})"
            return
        written, errors, last_error = result
        for kind, count in written.items():
            self.written[kind] += count
        self.errors += errors
        self.last_error = last_error or self.last_error

    def _lost(self, batch: Batch) -> None:
        self.errors += 1
        self.last_error = f"writer process ended; {sum(map(len, batch.values()))} rows not written"


def _write_batches(engine: Engine, batches: Any, results: Any) -> None:
    """The writer process: batches until None, then (written, errors, last error) back."""
    # Ctrl-C and SIGTERM go to the capture process, which stops and sends what is left.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    engine.dispose(close=False)  # the parent's pooled connections stay the parent's
    inserter = _Inserter(engine)
    while True:
        batch = batches.get()
        if batch is None:
            break
        inserter.write(batch)
    results.send((inserter.written, inserter.errors, inserter.last_error))
    results.close()


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
                if self._plans:
                    for kind, rows in batch.items():
                        self._plans[kind].write(conn, rows)
                else:
                    dicts = {
                        kind: [with_datetimes(kind, r) for r in rows]
                        for kind, rows in batch.items()
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
        self.getter = operator.itemgetter(*self.names)
        self.converters: list[tuple[int, Callable[[Any], Any]]] = []
        for index, column in enumerate(columns):
            if isinstance(column.type, UTCDateTime):
                self.converters.append((index, sqlite_time))
                continue
            processor = column.type.dialect_impl(dialect).bind_processor(dialect)
            if processor is not None:
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

    def values(self, rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        tuples = list(map(self.getter, rows))
        if not self.converters or not tuples:
            return tuples
        columns = list(zip(*tuples, strict=True))
        for index, convert in self.converters:
            columns[index] = tuple(map(convert, columns[index]))
        return list(zip(*columns, strict=True))

    def write(self, conn: Any, rows: list[dict[str, Any]]) -> None:
        values = self.values(rows)
        step = self.per_statement
        for at in range(0, len(values), step):
            chunk = values[at : at + step]
            conn.exec_driver_sql(
                self.statement(len(chunk)), tuple(itertools.chain.from_iterable(chunk))
            )


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
