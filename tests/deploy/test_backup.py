"""`schoolgate backup` and `restore` through the real command: SQLite (online backup API, while
another connection writes) and PostgreSQL (the pg_dump -Fc / pg_restore recipe, on databases
of the test's own), round trips compared table by table; bad backups and full targets refused
in one line with nothing written."""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text

from service.backup import backup_sqlite
from service.db import make_engine, make_session_factory, transaction
from service.demo import seed_demo_school
from tests.conftest import SCHOOLGATE, _pg_admin, _pg_url


def cli(url: str, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SCHOOLGATE_")},
        "SCHOOLGATE_DATABASE_URL": url,
        "SCHOOLGATE_ACTOR": "backup-test",
        "COLUMNS": "200",
    }
    return subprocess.run(
        [*SCHOOLGATE, *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def seed(url: str) -> None:
    engine = make_engine(url)
    with transaction(make_session_factory(engine)) as session:
        seed_demo_school(session, actor="backup-test")
    engine.dispose()


def sqlite_rows(path: Path) -> dict[str, list[tuple[object, ...]]]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        names = [
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        return {n: conn.execute(f'SELECT * FROM "{n}" ORDER BY 1').fetchall() for n in names}
    finally:
        conn.close()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def one_line_error(result: subprocess.CompletedProcess[str], words: str) -> None:
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert words in errors[0], errors[0]


def test_sqlite_round_trip_while_another_connection_writes(sqlite_url: str, tmp_path: Path) -> None:
    seed(sqlite_url)
    live = Path(sqlite_url.removeprefix("sqlite:///"))
    stop = threading.Event()
    written = [0]

    def writer() -> None:  # a server writing the whole time (WAL, as schoolgate runs it)
        conn = sqlite3.connect(live, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("CREATE TABLE IF NOT EXISTS x_load (n INTEGER PRIMARY KEY, pad TEXT)")
        while not stop.is_set():
            with conn:
                conn.execute("INSERT INTO x_load (pad) VALUES (?)", ("x" * 200,))
            written[0] += 1
            stop.wait(0.002)
        conn.close()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        while written[0] < 50:
            stop.wait(0.01)
        backup = tmp_path / "school.backup"
        result = cli(sqlite_url, tmp_path, "backup", str(backup))
    finally:
        stop.set()
        thread.join()
    assert result.returncode == 0, result.stderr
    assert "migration 0007" in result.stdout or "migration" in result.stdout
    for key in ("secret.key", "audit.key", "audit-anchor.log"):
        assert key in result.stdout  # what else to copy
    assert backup.stat().st_mode & 0o077 == 0  # personal data: owner only
    copied = sqlite_rows(backup)
    now = sqlite_rows(live)
    # Consistent: a prefix of the writer's rows, every other table exactly as it is now.
    assert 50 <= len(copied["x_load"]) <= len(now["x_load"])
    assert copied["x_load"] == now["x_load"][: len(copied["x_load"])]
    for name in now:
        if name != "x_load":
            assert copied[name] == now[name], name

    # Into a new file: the same rows, table by table.
    restored = tmp_path / "restored.db"
    result = cli(f"sqlite:///{restored}", tmp_path, "restore", str(backup))
    assert result.returncode == 0, result.stderr
    assert sqlite_rows(restored) == copied
    assert restored.stat().st_mode & 0o077 == 0

    # Onto a database with data: refused, untouched; with --force, replaced.
    assert cli(sqlite_url, tmp_path, "site", "add", "eastgate", "--name", "E").returncode == 0
    before = sqlite_rows(live)
    one_line_error(cli(sqlite_url, tmp_path, "restore", str(backup)), "--force")
    assert sqlite_rows(live) == before
    result = cli(sqlite_url, tmp_path, "restore", str(backup), "--force")
    assert result.returncode == 0, result.stderr
    assert sqlite_rows(live) == copied  # eastgate, added after the backup, is gone
    assert [row[1] for row in copied["sites"]] == ["westgate"]

    # An existing backup file is not overwritten without --force.
    kept = digest(backup)
    one_line_error(cli(sqlite_url, tmp_path, "backup", str(backup)), "already exists")
    assert digest(backup) == kept


def test_restore_refuses_what_is_not_a_schoolgate_backup(sqlite_url: str, tmp_path: Path) -> None:
    seed(sqlite_url)
    target = tmp_path / "empty.db"
    url = f"sqlite:///{target}"

    junk = tmp_path / "junk.backup"
    junk.write_bytes(b"not a database at all\n" * 10)
    one_line_error(cli(url, tmp_path, "restore", str(junk)), "not a schoolgate backup")

    other = tmp_path / "other.sqlite"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE notes (t TEXT)")
    conn.commit()
    conn.close()
    one_line_error(cli(url, tmp_path, "restore", str(other)), "not a schoolgate backup")

    future = tmp_path / "future.backup"
    backup_sqlite(url=sqlite_url, dest=future)
    conn = sqlite3.connect(future)
    conn.execute("UPDATE alembic_version SET version_num = '9999_from_the_future'")
    conn.commit()
    conn.close()
    one_line_error(cli(url, tmp_path, "restore", str(future)), "9999_from_the_future")

    truncated = tmp_path / "truncated.backup"
    backup_sqlite(url=sqlite_url, dest=truncated)
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    result = cli(url, tmp_path, "restore", str(truncated))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr

    one_line_error(cli(url, tmp_path, "restore", str(tmp_path / "missing")), "no such file")
    assert not target.exists()  # nothing was written for any of them


@pytest.fixture
def empty_pg_database() -> Iterator[str]:
    """A PostgreSQL database with nothing in it, as a new server would have."""
    name = f"sg_restore_{uuid.uuid4().hex[:10]}"
    _pg_admin(f'CREATE DATABASE "{name}"')
    yield _pg_url(name)
    _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def pg_rows(url: str) -> dict[str, list[tuple[object, ...]]]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            names = inspect(conn).get_table_names()
            return {
                n: [tuple(r) for r in conn.execute(text(f'SELECT * FROM "{n}" ORDER BY 1'))]
                for n in names
            }
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_postgres_recipe_round_trip(
    postgres_url: str, empty_pg_database: str, tmp_path: Path
) -> None:
    if shutil.which("pg_dump") is None or shutil.which("pg_restore") is None:
        pytest.skip("pg_dump/pg_restore not installed (Debian package postgresql-client)")
    seed(postgres_url)
    original = pg_rows(postgres_url)
    assert sum(len(rows) for rows in original.values()) > 10

    printed = cli(postgres_url, tmp_path, "backup", "--print", "trust.dump")
    assert printed.returncode == 0
    assert printed.stdout.startswith("pg_dump --format=custom")

    dump = tmp_path / "trust.dump"
    result = cli(postgres_url, tmp_path, "backup", str(dump))
    assert result.returncode == 0, result.stderr
    assert dump.read_bytes()[:5] == b"PGDMP"

    printed = cli(empty_pg_database, tmp_path, "restore", "--print", str(dump))
    assert printed.returncode == 0
    assert printed.stdout.startswith("pg_restore --no-owner")
    assert "psql" in printed.stdout
    assert "--single-transaction" in printed.stdout

    result = cli(empty_pg_database, tmp_path, "restore", str(dump))
    assert result.returncode == 0, result.stderr
    assert pg_rows(empty_pg_database) == original

    # Onto the source, which now holds one more site: refused, then replaced with --force.
    assert cli(postgres_url, tmp_path, "site", "add", "eastgate", "--name", "E").returncode == 0
    changed = pg_rows(postgres_url)
    one_line_error(cli(postgres_url, tmp_path, "restore", str(dump)), "--force")
    assert pg_rows(postgres_url) == changed
    result = cli(postgres_url, tmp_path, "restore", str(dump), "--force")
    assert result.returncode == 0, result.stderr
    assert pg_rows(postgres_url) == original

    not_a_dump = tmp_path / "junk.dump"
    not_a_dump.write_text("hello")
    one_line_error(cli(empty_pg_database, tmp_path, "restore", str(not_a_dump)), "pg_dump")
