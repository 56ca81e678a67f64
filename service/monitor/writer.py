"""Batch writer: the capture loop appends rows to a list and hands full batches to a thread that
inserts them (one executemany per table per batch), so the hot path never waits on the database.
On PostgreSQL it creates the daily partition a batch needs before inserting."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, insert, text
from sqlalchemy.exc import DBAPIError

from service.models.traffic import (
    PARTITION_COLUMNS,
    TrafficAlert,
    TrafficBinding,
    TrafficDns,
    TrafficFlow,
    TrafficVisit,
)

TABLES: dict[str, Any] = {
    "flows": TrafficFlow.__table__,
    "dns": TrafficDns.__table__,
    "visits": TrafficVisit.__table__,
    "alerts": TrafficAlert.__table__,
    "bindings": TrafficBinding.__table__,
}


class BatchWriter:
    """`add(kind, row)` from the capture thread; rows reach the database in batches."""

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
        self.pending: list[tuple[str, dict[str, Any]]] = []
        self.written: dict[str, int] = dict.fromkeys(TABLES, 0)
        self.errors = 0
        self.last_error: str | None = None
        self._queue: queue.Queue[list[tuple[str, dict[str, Any]]] | None] = queue.Queue(64)
        self._partitions: set[tuple[str, str]] = set()
        self._statements = _prepare(engine)
        self._thread = threading.Thread(target=self._run, name="monitor-writer", daemon=True)
        self._thread.start()

    def add(self, kind: str, row: dict[str, Any]) -> None:
        self.pending.append((kind, row))
        if self.on_row is not None:
            self.on_row(kind, row)
        if len(self.pending) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self._queue.put(self.pending)
            self.pending = []

    def close(self) -> None:
        """Write what is left and wait for the thread."""
        self.flush()
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        while True:
            batch = self._queue.get()
            if batch is None:
                return
            by_kind: dict[str, list[dict[str, Any]]] = {}
            for kind, row in batch:
                by_kind.setdefault(kind, []).append(row)
            try:
                with self.engine.begin() as conn:
                    if conn.dialect.name == "postgresql":
                        self._ensure_partitions(conn, by_kind)
                    for kind, rows in by_kind.items():
                        prepared = self._statements.get(kind)
                        if prepared is None:
                            conn.execute(insert(TABLES[kind]), rows)
                            continue
                        sql, columns = prepared
                        # One driver-level executemany with the columns' own bind processors:
                        # a tenth of the cost of the ORM/Core path per row (bench/monitor_pcap.py).
                        conn.exec_driver_sql(
                            sql,
                            [
                                tuple(
                                    row[name] if proc is None else proc(row[name])
                                    for name, proc in columns
                                )
                                for row in rows
                            ],
                        )
                for kind, rows in by_kind.items():
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


def _prepare(engine: Engine) -> dict[str, tuple[str, list[tuple[str, Any]]]]:
    """SQLite, per table: the INSERT with qmark parameters and each column's bind processor."""
    dialect = engine.dialect
    if dialect.name != "sqlite":
        return {}  # PostgreSQL: SQLAlchemy's insertmanyvalues adapts JSONB and is fast enough
    marker = "?"
    prepared = {}
    for kind, table in TABLES.items():
        columns = [c for c in table.columns if c.name != "id"]
        sql = (
            f"INSERT INTO {table.name} ({', '.join(c.name for c in columns)}) "  # noqa: S608
            f"VALUES ({', '.join([marker] * len(columns))})"
        )
        prepared[kind] = (sql, [(c.name, c.type.bind_processor(dialect)) for c in columns])
    return prepared


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
