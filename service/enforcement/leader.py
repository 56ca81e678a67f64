"""Exactly one active CoA dispatcher per database, whatever the number of nodes.

Every RADIUS node runs a dispatcher (and `schoolgate coa run` may run more); only the one that
holds the dispatcher lock works rows, the others are standbys that try again every
`RETRY_SECONDS`. Claims are conditional UPDATEs (`dispatcher.claim`), so two dispatchers never
send the same attempt; the lock keeps the rest orderly: one process retries, expires grants and
logs, and a NAS sees one sender.

- PostgreSQL: a session-level advisory lock (`pg_try_advisory_lock(LOCK_KEY)`) on a dedicated
  connection (`service.db.dedicated_connection`) held for the dispatcher's life. The server
  drops it the moment that connection closes, so a node killed with `kill -9`, or whose machine
  dies (once TCP notices), hands over to a standby within about `RETRY_SECONDS`. The holder
  checks its connection every `CHECK_SECONDS`; when the check fails (or hangs past
  `CHECK_DEADLINE_SECONDS`) it stops dispatching at once and becomes a standby. The
  connection's `application_name` says who holds it, so any process can tell (`active`).
- SQLite: one machine by nature; an `flock` on `<database>.coa-dispatcher.lock` keeps two
  dispatchers on that machine (a RADIUS server and a `coa run`) from both working. The kernel
  drops it when the process dies. The file holds who took it.
- SQLite in memory: one process, nothing to share: always held.

The post-commit send (`send_queued`, bounded to a few seconds in the process that made the
change) and `coa run --once` take no lock: they only work the rows they can claim.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import Connection, Engine, text
from sqlalchemy.orm import Session, sessionmaker

from service.config import sqlite_path
from service.db import dedicated_connection

# pg_try_advisory_lock(bigint): below 2**31, so pg_locks shows it as classid 0, objid LOCK_KEY.
LOCK_KEY = 0x53474344  # "SGCD": schoolgate CoA dispatcher
RETRY_SECONDS = 1.0
CHECK_SECONDS = 1.0
CHECK_DEADLINE_SECONDS = 3.0
ACTIVE_NAME = "schoolgate-coa active"
STANDBY_NAME = "schoolgate-coa standby"
LOCK_FILE_SUFFIX = ".coa-dispatcher.lock"


@dataclass(frozen=True, slots=True)
class ActiveDispatcher:
    """The dispatcher that holds the lock: where it runs and since when."""

    node: str
    pid: int
    since: datetime | None
    standbys: int | None = None  # None: not known (SQLite cannot count them)

    def describe(self) -> str:
        since = "" if self.since is None else f" since {self.since.isoformat(timespec='seconds')}"
        return f"{self.node} pid {self.pid}{since}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "pid": self.pid,
            "since": None if self.since is None else self.since.isoformat(),
            "standbys": self.standbys,
        }


class DispatcherLock(Protocol):
    """What the dispatcher loop asks of the lock (one implementation per kind of database)."""

    def acquire(self) -> bool:
        """Try once, without waiting: True when this process now holds it (or already did).
        May raise a database error (the caller counts it as not held)."""
        ...

    def held(self) -> bool:
        """Whether this process still holds it (asks the database: False when the
        connection is gone)."""
        ...

    def release(self) -> None:
        """Let go (and close what holds it); never raises."""
        ...


def _identity() -> tuple[str, int]:
    return socket.gethostname(), os.getpid()


def _app_name(prefix: str, since: float | None = None) -> str:
    node, pid = _identity()
    stamp = "" if since is None else f" {int(since)}"
    return f"{prefix}{stamp} {pid} {node}"[:63]  # NAMEDATALEN - 1


class PostgresLock:
    """The advisory lock, on a connection of its own (outside the pool: it must not be handed
    to another user with the lock still held)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._conn: Connection | None = None
        self._holding = False

    def _connection(self) -> Connection:
        if self._conn is None:
            conn = dedicated_connection(self._engine)
            try:
                conn.execute(
                    text("SELECT set_config('application_name', :n, false)"),
                    {"n": _app_name(STANDBY_NAME)},
                )
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def acquire(self) -> bool:
        if self._holding:
            return self.held()
        try:
            conn = self._connection()
            got = bool(
                conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": LOCK_KEY}).scalar()
            )
            if got:
                conn.execute(
                    text("SELECT set_config('application_name', :n, false)"),
                    {"n": _app_name(ACTIVE_NAME, time.time())},
                )
        except BaseException:
            self.release()
            raise
        self._holding = got
        return got

    def held(self) -> bool:
        if not self._holding or self._conn is None:
            return False
        try:
            count = self._conn.execute(
                text(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
                    " AND pid = pg_backend_pid() AND classid = 0 AND objid = :k"
                    " AND objsubid = 1"
                ),
                {"k": LOCK_KEY},
            ).scalar()
        except Exception:  # noqa: BLE001 - a connection that fails a check holds nothing
            self.release()
            return False
        if not count:
            self.release()
        return bool(count)

    def release(self) -> None:
        """Unlock, then close. Closing the session alone drops the lock too, but only once
        the server has noticed the disconnect: a standby asking at once would be refused."""
        holding, self._holding = self._holding, False
        conn, self._conn = self._conn, None
        if conn is not None:
            if holding:
                with contextlib.suppress(Exception):
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": LOCK_KEY})
            with contextlib.suppress(Exception):
                conn.close()  # closing the session drops the lock with it


class FileLock:
    """An `flock` on a file next to the SQLite database."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> bool:
        if self._fd is not None:
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        node, pid = _identity()
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"node": node, "pid": pid, "since": time.time()}).encode())
        self._fd = fd
        return True

    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)  # closing the descriptor drops the lock


class AlwaysHeld:
    """An in-memory SQLite database lives in one process: nothing to share."""

    def acquire(self) -> bool:
        return True

    def held(self) -> bool:
        return True

    def release(self) -> None:
        return None


def _engine_of(factory: sessionmaker[Session]) -> Engine:
    bind = factory.kw.get("bind")
    if not isinstance(bind, Engine):
        raise TypeError("the session factory is not bound to an engine")
    return bind


def lock_file_for(engine: Engine) -> Path | None:
    """The lock file of a SQLite database file; None for memory (or PostgreSQL)."""
    path = sqlite_path(engine.url.render_as_string(hide_password=False))
    return None if path is None else path.with_name(path.name + LOCK_FILE_SUFFIX)


def dispatcher_lock(*, session_factory: sessionmaker[Session]) -> DispatcherLock:
    """The lock for the database `session_factory` opens."""
    engine = _engine_of(session_factory)
    if engine.dialect.name == "postgresql":
        return PostgresLock(engine)
    path = lock_file_for(engine)
    return AlwaysHeld() if path is None else FileLock(path)


def _from_app_name(name: str) -> tuple[datetime | None, int, str] | None:
    parts = name[len(ACTIVE_NAME) :].split(" ", 3)
    try:
        _, stamp, pid, node = parts
        return datetime.fromtimestamp(int(stamp), UTC), int(pid), node
    except ValueError:
        return None


def active_dispatcher(*, session: Session) -> ActiveDispatcher | None:
    """Who holds the dispatcher lock of this database now, or None (no dispatcher runs, or
    none has taken it yet)."""
    bind = session.get_bind()
    if bind.dialect.name == "postgresql":
        row = session.execute(
            text(
                "SELECT a.application_name, a.pid, a.backend_start,"
                " (SELECT count(*) FROM pg_stat_activity s WHERE s.datname = current_database()"
                "   AND s.application_name LIKE :standby)"
                " FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
                " WHERE l.locktype = 'advisory' AND l.granted AND l.classid = 0"
                " AND l.objid = :k AND l.objsubid = 1"
                " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            ),
            {"k": LOCK_KEY, "standby": STANDBY_NAME + "%"},
        ).first()
        if row is None:
            return None
        name, backend_pid, started, standbys = row
        parsed = _from_app_name(name or "")
        if parsed is None:  # held by something else (a person with psql, say)
            return ActiveDispatcher(
                node=f"backend {backend_pid} ({name or 'no application_name'})",
                pid=0,
                since=started,
                standbys=int(standbys),
            )
        since, pid, node = parsed
        return ActiveDispatcher(node=node, pid=pid, since=since, standbys=int(standbys))
    engine = bind if isinstance(bind, Engine) else bind.engine
    path = lock_file_for(engine)
    if path is None or not path.exists():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pass  # held: read who holds it
        else:
            return None  # nobody holds it (the shared lock goes with the descriptor)
        try:
            held = json.loads(os.read(fd, 4096).decode() or "{}")
            return ActiveDispatcher(
                node=str(held["node"]),
                pid=int(held["pid"]),
                since=datetime.fromtimestamp(float(held["since"]), UTC),
            )
        except (ValueError, KeyError, TypeError):
            return ActiveDispatcher(node="unknown (lock file unreadable)", pid=0, since=None)
    finally:
        os.close(fd)
