"""`schoolgate backup FILE` / `restore FILE`: a copy of the whole database, and back.

SQLite: SQLite's online backup API (`sqlite3.Connection.backup`), a consistent copy while
RADIUS and the portal keep writing (WAL), and restored through the same API into the live file
in one transaction: readers see the old database or the new one, never half of each.
PostgreSQL: `pg_dump -Fc` and `pg_restore --single-transaction` (the recipe of
deploy/README.md), run here when the tools are on PATH.

A backup is checked before anything is written: it must be a SQLite file that passes
`quick_check`, hold an `alembic_version` this code knows, and the schoolgate tables. A target
that already holds data is overwritten only with `force`.

The keys in the state directory (secret.key, audit.key, audit-anchor.log) are not in the
database: `KEY_FILES` names what to copy beside a backup (SECURITY.md).
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import inspect, text
from sqlalchemy.engine import make_url

from service.config import sqlite_path
from service.db import MIGRATIONS_DIR, make_engine, normalize_url
from service.errors import Conflict, Invalid
from service.secrets_store import ANCHOR_FILE, AUDIT_KEY_FILE, SECRET_KEY_FILE

KEY_FILES = (SECRET_KEY_FILE, AUDIT_KEY_FILE, ANCHOR_FILE)
# Tables every schoolgate database has had since the first migration.
_SIGNATURE_TABLES = ("alembic_version", "sites", "devices", "people", "audit_log")
_IGNORED_TABLES = {"alembic_version", "radius_workers", "change_counter"}


@dataclass(frozen=True)
class BackupResult:
    path: Path
    revision: str
    tables: int
    rows: int


@dataclass(frozen=True)
class PgCommand:
    """A pg_dump / pg_restore command line and the environment it needs (the password goes in
    PGPASSWORD, never on the command line where `ps` shows it)."""

    argv: list[str]
    env: dict[str, str]

    def shell(self) -> str:
        """The command as a technician types it (password left to ~/.pgpass or PGPASSWORD)."""
        return " ".join(_quote(a) for a in self.argv)


def known_revisions() -> set[str]:
    """The Alembic revisions this code's migrations define."""
    found: set[str] = set()
    for path in (MIGRATIONS_DIR / "versions").glob("*.py"):
        match = re.search(
            r'^revision\s*(?::\s*str\s*)?=\s*["\']([^"\']+)["\']', path.read_text(), re.M
        )
        if match:
            found.add(match.group(1))
    return found


def is_postgres(url: str) -> bool:
    return normalize_url(url).startswith("postgresql")


# --- SQLite -----------------------------------------------------------------------------


def _sqlite_file(url: str) -> Path:
    path = sqlite_path(normalize_url(url))
    if path is None:
        raise Invalid(f"backup needs a SQLite file or PostgreSQL, not {url!r}")
    return path


def _table_counts(conn: sqlite3.Connection) -> dict[str, int]:
    names = [
        row[0]
        for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        )
    ]
    return {
        name: int(conn.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0])  # noqa: S608
        for name in names
    }


def inspect_sqlite_backup(path: Path) -> tuple[str, dict[str, int]]:
    """The revision and row counts of a SQLite backup; Invalid unless it is a sound schoolgate
    database at a migration this code knows."""
    if not path.is_file():
        raise Invalid(f"{path}: no such file")
    with path.open("rb") as handle:
        if handle.read(16) != b"SQLite format 3\x00":
            raise Invalid(f"{path} is not a schoolgate backup (not a SQLite file)")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise Invalid(f"{path} cannot be opened: {exc}") from exc
    try:
        check = conn.execute("PRAGMA quick_check").fetchone()
        if check is None or check[0] != "ok":
            raise Invalid(f"{path} is damaged: {check[0] if check else 'no answer'}")
        counts = _table_counts(conn)
        missing = [t for t in _SIGNATURE_TABLES if t not in counts]
        if missing:
            raise Invalid(f"{path} is not a schoolgate backup (no table {missing[0]})")
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.Error as exc:
        raise Invalid(f"{path} is not a readable SQLite database: {exc}") from exc
    finally:
        conn.close()
    revision = str(row[0]) if row else ""
    if revision not in known_revisions():
        raise Invalid(
            f"{path} is at migration {revision or 'none'!r}, which this version of schoolgate "
            "does not know (restore it with the version that made it)"
        )
    return revision, counts


def backup_sqlite(*, url: str, dest: Path, force: bool = False) -> BackupResult:
    """Copy the live SQLite database to `dest` with the online backup API (consistent while
    the servers write). Written to a temporary file and renamed: no half backup."""
    source = _sqlite_file(url)
    if not source.is_file():
        raise Invalid(f"{source}: no such database (run `schoolgate db upgrade` first)")
    if dest.exists() and not force:
        raise Conflict(f"{dest} already exists (--force to replace it)")
    if dest.resolve() == source.resolve():
        raise Invalid("the backup file cannot be the database itself")
    if not dest.parent.is_dir():
        raise Invalid(f"{dest.parent}: no such directory")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    os.close(fd)  # mkstemp made it 0600: a backup holds personal data
    tmp = Path(tmp_name)
    try:
        src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=30)
        dst = sqlite3.connect(tmp)
        try:
            src.backup(dst)
            dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
        finally:
            dst.close()
            src.close()
        revision, counts = inspect_sqlite_backup(tmp)
        tmp.replace(dest)
    except sqlite3.Error as exc:
        raise Invalid(f"backup of {source} failed: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return BackupResult(dest, revision, len(counts), sum(counts.values()))


def _data_rows(counts: dict[str, int]) -> int:
    return sum(n for name, n in counts.items() if name not in _IGNORED_TABLES)


def restore_sqlite(*, url: str, source: Path, force: bool = False) -> BackupResult:
    """Replace the SQLite database with the backup `source`, in one transaction (SQLite's
    backup API into the live file). Refuses a target holding data unless `force`."""
    target = _sqlite_file(url)
    revision, counts = inspect_sqlite_backup(source)
    created = not target.exists()
    if not created:
        if target.resolve() == source.resolve():
            raise Invalid("the backup file is the database itself")
        try:
            probe = sqlite3.connect(f"file:{target}?mode=ro", uri=True, timeout=30)
            try:
                existing = _data_rows(_table_counts(probe))
            finally:
                probe.close()
        except sqlite3.Error as exc:
            raise Invalid(f"{target} is not a SQLite database: {exc}") from exc
        if existing and not force:
            raise Conflict(
                f"{target} holds {existing} row(s) of data: restoring would replace them "
                "(stop the services, then --force)"
            )
    elif not target.parent.is_dir():
        raise Invalid(f"{target.parent}: no such directory")
    if created:
        os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    try:
        src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
        dst = sqlite3.connect(target, timeout=30)
        try:
            src.backup(dst)  # all pages in one step, one write transaction on the target
        finally:
            dst.close()
            src.close()
    except sqlite3.Error as exc:
        if created:
            target.unlink(missing_ok=True)
        raise Invalid(f"restore into {target} failed, nothing changed: {exc}") from exc
    return BackupResult(target, revision, len(counts), sum(counts.values()))


# --- PostgreSQL -------------------------------------------------------------------------


def _libpq(url: str) -> tuple[str, dict[str, str]]:
    """A libpq connection URI without the password, and the environment carrying it."""
    parsed = make_url(normalize_url(url))
    env: dict[str, str] = {}
    if parsed.password:
        env["PGPASSWORD"] = str(parsed.password)
    plain = parsed.set(drivername="postgresql", password=None)
    return plain.render_as_string(hide_password=False), env


def pg_dump_command(*, url: str, dest: Path) -> PgCommand:
    """`pg_dump -Fc`: the custom format, compressed, restorable table by table."""
    conninfo, env = _libpq(url)
    argv = ["pg_dump", "--format=custom", "--no-owner", "--no-privileges"]
    return PgCommand([*argv, f"--file={dest}", f"--dbname={conninfo}"], env)


def dump_schemas(source: Path) -> list[str]:
    """The schemas a dump creates besides `public` (the traffic partitions' schema)."""
    result = subprocess.run(
        ["pg_restore", "--list", str(source)], capture_output=True, text=True, check=False
    )
    return re.findall(r"^\d+; \d+ \d+ SCHEMA - (\S+) ", result.stdout, re.M)


def pg_restore_commands(
    *, url: str, source: Path, schemas: list[str]
) -> tuple[PgCommand, PgCommand]:
    """`pg_restore -f -` piped into `psql --single-transaction`, which first drops the
    schemas the dump holds: all of it or, on any error, nothing (the database is left as it
    was). (`pg_restore --clean` cannot drop partitioned tables' inherited constraints.)"""
    conninfo, env = _libpq(url)
    produce = PgCommand(
        ["pg_restore", "--no-owner", "--no-privileges", "--file=-", str(source)], {}
    )
    drops = [f"--command=DROP SCHEMA IF EXISTS {name} CASCADE" for name in schemas]
    consume = PgCommand(
        [
            "psql",
            "--no-psqlrc",
            "--quiet",
            "--single-transaction",
            "--set=ON_ERROR_STOP=1",
            *drops,
            "--command=DROP SCHEMA IF EXISTS public CASCADE",
            "--command=CREATE SCHEMA public",
            "--file=-",
            f"--dbname={conninfo}",
        ],
        env,
    )
    return produce, consume


def pipeline_text(produce: PgCommand, consume: PgCommand) -> str:
    return f"{produce.shell()} | {consume.shell()}"


def _missing(*commands: PgCommand) -> None:
    for command in commands:
        if shutil.which(command.argv[0]) is None:
            raise Invalid(
                f"{command.argv[0]} is not on PATH (Debian: apt-get install postgresql-client)"
            )


def _run(command: PgCommand) -> None:
    _missing(command)
    result = subprocess.run(
        command.argv,
        env={**os.environ, **command.env},
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines()
        raise Invalid(f"{command.argv[0]} failed: {lines[0] if lines else result.returncode}")


def pg_backup_revision(source: Path) -> str:
    """The Alembic revision recorded in a `pg_dump -Fc` file; Invalid unless it is one."""
    if not source.is_file():
        raise Invalid(f"{source}: no such file")
    with source.open("rb") as handle:
        if handle.read(5) != b"PGDMP":
            raise Invalid(f"{source} is not a pg_dump custom-format file (pg_dump -Fc)")
    if shutil.which("pg_restore") is None:
        raise Invalid("pg_restore is not on PATH (Debian: apt-get install postgresql-client)")
    result = subprocess.run(
        ["pg_restore", "--data-only", "--table=alembic_version", "--file=-", str(source)],
        capture_output=True,
        text=True,
        check=False,
    )
    match = re.search(r"^COPY [^\n]*alembic_version[^\n]*\n([^\n\\]+)\n", result.stdout, re.M)
    revision = match.group(1).strip() if match else ""
    if result.returncode != 0 or not revision:
        raise Invalid(f"{source} is not a schoolgate backup (no alembic_version data)")
    if revision not in known_revisions():
        raise Invalid(f"{source} is at migration {revision!r}, which this version does not know")
    return revision


def pg_data_rows(url: str) -> int:
    """Rows of data in the PostgreSQL database (0 for a new or freshly upgraded one)."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            names = [n for n in inspect(conn).get_table_names() if n not in _IGNORED_TABLES]
            total = 0
            for name in names:
                total += int(
                    conn.execute(text(f'SELECT count(*) FROM "{name}"')).scalar_one()  # noqa: S608
                )
    finally:
        engine.dispose()
    return total


def backup_postgres(*, url: str, dest: Path, force: bool = False) -> PgCommand:
    if dest.exists() and not force:
        raise Conflict(f"{dest} already exists (--force to replace it)")
    command = pg_dump_command(url=url, dest=dest)
    part = dest.with_name(f".{dest.name}.part")
    _run(pg_dump_command(url=url, dest=part))
    try:
        part.chmod(0o600)
        pg_backup_revision(part)
        part.replace(dest)
    finally:
        part.unlink(missing_ok=True)
    return command


def restore_postgres(*, url: str, source: Path, force: bool = False) -> str:
    """Replace the database's schemas with the dump's, in one transaction; the revision."""
    revision = pg_backup_revision(source)
    existing = pg_data_rows(url)
    if existing and not force:
        raise Conflict(
            f"the database holds {existing} row(s) of data: restoring would replace them "
            "(stop the services, then --force)"
        )
    produce, consume = pg_restore_commands(url=url, source=source, schemas=dump_schemas(source))
    _missing(produce, consume)
    with subprocess.Popen(produce.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as producer:
        result = subprocess.run(
            consume.argv,
            stdin=producer.stdout,
            env={**os.environ, **consume.env},
            capture_output=True,
            text=True,
            check=False,
        )
        if producer.stdout is not None:
            producer.stdout.close()
        producer_err = producer.stderr.read().decode(errors="replace") if producer.stderr else ""
        producer.wait()
    if producer.returncode != 0:
        lines = producer_err.strip().splitlines()
        raise Invalid(f"pg_restore failed, nothing changed: {lines[0] if lines else ''}")
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines()
        raise Invalid(f"psql failed, nothing changed: {lines[0] if lines else result.returncode}")
    return revision


def _quote(arg: str) -> str:
    return arg if re.fullmatch(r"[\w@%+=:,./-]+", arg) else "'" + arg.replace("'", "'\\''") + "'"
