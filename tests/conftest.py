"""Fixtures: a fresh migrated database per test (SQLite and PostgreSQL), a seeded school,
and the real `schoolgate` command in a subprocess."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session, sessionmaker

from service.db import make_engine, make_session_factory, transaction, upgrade
from service.demo import DEMO_NAS_SECRET, DEMO_PASSWORD, UNKNOWN_DEVICE, seed_demo_school

PG_ADMIN_URL = os.environ.get(
    "SCHOOLGATE_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REPO = Path(__file__).resolve().parents[1]
SCHOOLGATE = [sys.executable, "-m", "service"]


def _pg_available() -> str | None:
    try:
        engine = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
    except Exception as exc:
        return f"PostgreSQL not reachable at {PG_ADMIN_URL}: {type(exc).__name__}"
    return None


_PG_PROBLEM = _pg_available()


def _pg_url(name: str) -> str:
    return PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name


def _pg_admin(sql: str) -> None:
    engine = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(sql))
    engine.dispose()


@pytest.fixture(scope="session")
def _sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.db"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def _pg_template() -> Iterator[str]:
    if _PG_PROBLEM:
        pytest.skip(_PG_PROBLEM)
    name = f"sg_tmpl_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    _pg_admin(f'CREATE DATABASE "{name}"')
    upgrade(_pg_url(name))
    yield name
    _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _fresh_sqlite(template: Path, tmp_path: Path) -> str:
    path = tmp_path / "schoolgate.db"
    shutil.copyfile(template, path)
    return f"sqlite:///{path}"


@pytest.fixture
def sqlite_url(_sqlite_template: Path, tmp_path: Path) -> str:
    """A fresh, migrated SQLite database file."""
    return _fresh_sqlite(_sqlite_template, tmp_path)


@pytest.fixture
def postgres_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh, migrated PostgreSQL database (copied from a migrated template)."""
    template = request.getfixturevalue("_pg_template")
    name = f"sg_{uuid.uuid4().hex[:12]}"
    _pg_admin(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    yield _pg_url(name)
    _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    """A fresh, migrated database: once on SQLite, once on PostgreSQL."""
    if request.param == "sqlite":
        return str(request.getfixturevalue("sqlite_url"))
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def session_factory(db_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(db_url)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture
def session(session_factory: sessionmaker[Session]) -> Iterator[Session]:
    with session_factory() as db_session:
        yield db_session


@pytest.fixture
def westgate(db_url: str, session_factory: sessionmaker[Session]) -> SimpleNamespace:
    """Westgate Primary as `schoolgate demo` sets it up (service/demo.py):

    - NAS `demo-controller` at 127.0.0.1, secret `testing123`, vendor generic;
    - staff Jo Smith (username `jsmith`, password `demo-password`), visitor `visitor1`,
      pupil `pupil1` (Year 6);
    - 02:00:00:00:10:01 school_single (full, VLAN 10), 02:00:00:00:10:02 school_shared (full),
      02:00:00:00:20:01 staff_owned approved + BYOD signed (none at Westgate: Access-Reject),
      02:00:00:00:30:01 visitor_owned with a signed AUA (internet, VLAN 30),
      02:00:00:00:40:01 learner_owned (none), 02:00:00:00:99:99 unregistered (registration, 99).
    """
    with transaction(session_factory) as db_session:
        seed_demo_school(db_session, actor="test-fixture")
    return SimpleNamespace(
        db_url=db_url,
        site="westgate",
        nas_secret=DEMO_NAS_SECRET,
        staff_password=DEMO_PASSWORD,
        school_laptop="02:00:00:00:10:01",
        shared_ipad="02:00:00:00:10:02",
        staff_phone="02:00:00:00:20:01",
        visitor_phone="02:00:00:00:30:01",
        pupil_phone="02:00:00:00:40:01",
        unknown=UNKNOWN_DEVICE,
        vlans={"full": 10, "segregated": 20, "internet": 30, "registration": 99},
    )


RunCli = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def run_cli(db_url: str, tmp_path: Path) -> RunCli:
    """Run the real `schoolgate` command against the test's database."""

    def run(
        *args: str,
        input: str | None = None,
        check: bool = True,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        full_env = {
            **os.environ,
            "SCHOOLGATE_DATABASE_URL": db_url,
            "SCHOOLGATE_ACTOR": "tester",
            "COLUMNS": "200",
            **(env or {}),
        }
        result = subprocess.run(
            [*SCHOOLGATE, *args],
            input=input,
            capture_output=True,
            text=True,
            env=full_env,
            cwd=cwd or tmp_path,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"schoolgate {' '.join(args)} exited {result.returncode}\n"
                f"stdout: {result.stdout}\nstderr: {result.stderr}"
            )
        return result

    return run
