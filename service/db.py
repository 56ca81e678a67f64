"""Engine and session factory, and the migration runner behind `schoolgate db upgrade`."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, create_engine, event, make_url, text
from sqlalchemy.exc import InterfaceError, OperationalError, ProgrammingError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from service.config import database_url_from, sqlite_path

if TYPE_CHECKING:
    from service.audit import AuditChain

# What adapters name in type hints: they take a session and hand it to service functions, and
# never import SQLAlchemy themselves (docs/ARCHITECTURE.md).
SessionFactory = sessionmaker[Session]
__all__ = ["Engine", "Session", "SessionFactory"]

# The key of `Session.info` that carries the audit chain's key (service/audit.py).
AUDIT_CHAIN_INFO = "schoolgate.audit_chain"
MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def normalize_url(url: str) -> str:
    """Accept `postgresql://` and `postgres://` as psycopg 3 URLs, and a plain path as the
    SQLite file it names."""
    url = database_url_from(url)
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def create_private_sqlite_file(url: str) -> None:
    """Create a new SQLite database file 0600 before SQLite does (it would make it 0644 under
    the usual umask, and its -wal and -shm files follow the database file's mode)."""
    path = sqlite_path(url)
    if path is None or path.exists() or not path.parent.is_dir():
        return  # an existing file keeps its mode; a missing directory is SQLite's error to give
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        return
    except OSError:
        return  # SQLite reports it in its own words when it opens the file


def make_engine(url: str, **kwargs: Any) -> Engine:
    url = normalize_url(url)
    if url.startswith("sqlite"):
        create_private_sqlite_file(url)
        engine = create_engine(url, connect_args={"timeout": 30}, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            # WAL lets the RADIUS server read its snapshot while the CLI writes.
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True, **kwargs)


def dedicated_connection(engine: Engine) -> Connection:
    """A connection of its own, in autocommit, outside the pool: closing it closes the
    database session (and drops what the session holds, e.g. an advisory lock), and no other
    user is ever handed it (service/enforcement/leader.py)."""
    conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    conn.detach()
    return conn


def describe_database_error(exc: SQLAlchemyError) -> str:
    """One line for a person: "database: no such table: sites (run `schoolgate db upgrade`
    first)", not SQLAlchemy's paragraph with the statement and a link."""
    if isinstance(exc, (OperationalError, ProgrammingError)):
        text = str(exc.orig) if exc.orig is not None else str(exc)
        first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        hint = ""
        if "no such table" in first or "does not exist" in first:
            hint = " (run `schoolgate db upgrade` first)"
        return f"database: {first}{hint}"
    return f"database: {type(exc).__name__}: {str(exc).splitlines()[0]}"


def database_error_message(exc: BaseException) -> str | None:
    """`describe_database_error` for a SQLAlchemy error; None for any other exception (the
    CLI's last resort, which itself imports no SQLAlchemy)."""
    return describe_database_error(exc) if isinstance(exc, SQLAlchemyError) else None


def is_database_outage(exc: BaseException) -> bool:
    """Whether `exc` says the database cannot be reached or used (connection refused, gone,
    missing file or table), as opposed to one statement it refused (a constraint, bad data):
    only the first is an outage a health check should report."""
    return isinstance(exc, (OperationalError, InterfaceError))


def display_url(url: str) -> str:
    """The database URL as it may be printed: the password masked."""
    return make_url(normalize_url(url)).render_as_string(hide_password=True)


def make_session_factory(
    engine: Engine, *, audit_chain: AuditChain | None = None
) -> sessionmaker[Session]:
    """Sessions for `engine`. `audit_chain` (`service.audit.chain_for(settings)`): the key and
    anchor file the audit log's new entries are written with; without it a database whose
    chain is keyed refuses audited changes (service/audit.py)."""
    return sessionmaker(engine, expire_on_commit=False, info={AUDIT_CHAIN_INFO: audit_chain})


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: commit at the end, roll everything back on any error."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def alembic_config(url: str) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", normalize_url(url).replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Run the Alembic migrations up to `revision` (a thin wrapper, as warehouse does)."""
    from alembic import command

    command.upgrade(alembic_config(url), revision)


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        try:
            row = conn.execute(text("SELECT version_num FROM alembic_version")).first()
        except Exception:  # noqa: BLE001 - no table means no migration has run
            return None
    return None if row is None else str(row[0])
