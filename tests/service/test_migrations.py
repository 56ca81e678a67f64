"""`db upgrade` on an empty database gives exactly the models' schema, on both backends."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from service.db import current_revision, make_engine, upgrade
from service.models import Base


def _diff(url: str) -> list[object]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            return list(compare_metadata(context, Base.metadata))
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_url(request: pytest.FixtureRequest, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'empty.db'}"
    # A fresh PostgreSQL database with nothing in it (the conftest template is migrated).
    from tests.conftest import _PG_PROBLEM, _pg_admin, _pg_url

    if _PG_PROBLEM:
        pytest.skip(_PG_PROBLEM)
    import uuid

    name = f"sg_empty_{uuid.uuid4().hex[:10]}"
    _pg_admin(f'CREATE DATABASE "{name}"')
    request.addfinalizer(lambda: _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    return _pg_url(name)


def test_upgrade_gives_exactly_the_models_schema(empty_url: str) -> None:
    upgrade(empty_url)
    assert _diff(empty_url) == []
    engine = make_engine(empty_url)
    try:
        tables = set(inspect(engine).get_table_names())
        assert set(Base.metadata.tables) <= tables
        assert current_revision(engine) is not None
    finally:
        engine.dispose()


def test_upgrade_twice_is_harmless(empty_url: str) -> None:
    upgrade(empty_url)
    upgrade(empty_url)
    assert _diff(empty_url) == []
