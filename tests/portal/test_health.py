"""Issue 11 item 10 (the portal's half), over HTTP to the portal app: `/healthz` is liveness
(the process answers), `/readyz` is readiness (the database answers `SELECT 1`), and while the
database does not answer every page is a clear 503, logged once, not a 500 per request."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from portal.app import create_app
from service.config import load_settings
from service.db import make_engine, make_session_factory, transaction
from service.demo import seed_demo_school
from service.tokens import create_token
from tests.conftest import _pg_admin
from tests.portal.conftest import PORTAL

GUEST_IP = "10.99.0.60"
DOWN = "the database does not answer"
BACK = "the database answers again"


def portal_for(database_url: str) -> TestClient:
    settings = load_settings(
        database_url=database_url,
        portal_url=PORTAL,
        secret_key="portal-test-secret",
        portal_rate_limit_per_minute=1000,
        coa_enabled=False,
    )
    return TestClient(create_app(settings), base_url=PORTAL.rstrip("/"), follow_redirects=False)


def at(client: TestClient, ip: str) -> TestClient:
    return TestClient(client.app, base_url=PORTAL.rstrip("/"), client=(ip, 40000))


def log_lines(caplog: pytest.LogCaptureFixture, words: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if words in r.getMessage()]


def test_a_portal_whose_database_is_missing_is_alive_not_ready_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="schoolgate.portal")
    missing = tmp_path / "gone" / "schoolgate.db"  # its directory does not exist
    portal = portal_for(f"sqlite:///{missing}")
    with at(portal, "127.0.0.1") as admin, at(portal, GUEST_IP) as guest:
        assert guest.get("/healthz").text == "ok"
        ready = admin.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["status"] == "unavailable"
        assert ready.json()["reason"].startswith("database: unable to open database file")
        # a guest learns that it is down, not the database's own words
        assert guest.get("/readyz").json() == {"status": "unavailable", "reason": DOWN}
        for _ in range(3):
            for path in ("/", "/staff", "/visitor", "/done", "/refused"):
                page = guest.get(path)
                assert page.status_code == 503, path
                assert "Not available just now" in page.text
                assert "Traceback" not in page.text
                assert page.headers["Retry-After"] == "30"
            captive = guest.get("/api/captive")
            assert captive.status_code == 503
        posted = guest.post("/staff", data={"username": "jsmith", "password": "x", "csrf": "x"})
        assert posted.status_code == 503
        api = admin.get("/api/v1/devices", headers={"Authorization": "Bearer sgt_x"})
        assert api.status_code == 503
        assert api.json()["detail"].startswith("the service's database does not answer")
    assert len(log_lines(caplog, DOWN)) == 1  # once per change of state, not once a request
    assert not [r for r in caplog.records if r.exc_info]


@pytest.mark.postgres
def test_postgres_dropped_under_a_running_portal_then_restored(
    postgres_url: str, request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="schoolgate.portal")
    name = postgres_url.rsplit("/", 1)[1]
    template = request.getfixturevalue("_pg_template")

    def seed() -> str:
        engine = make_engine(postgres_url)
        with transaction(make_session_factory(engine)) as session:
            seed_demo_school(session, actor="test-fixture")
            _, secret = create_token(session=session, name="t", scopes=["devices:read"], actor="t")
        engine.dispose()
        return secret

    auth = {"Authorization": f"Bearer {seed()}"}
    portal = portal_for(postgres_url)
    with at(portal, "127.0.0.1") as admin:
        assert admin.get("/readyz").json() == {"status": "ready"}
        assert admin.get("/api/v1/devices", headers=auth).status_code == 200

        _pg_admin(f'DROP DATABASE "{name}" WITH (FORCE)')
        assert admin.get("/healthz").status_code == 200
        ready = admin.get("/readyz")
        assert ready.status_code == 503
        assert name in ready.json()["reason"]  # "database "sg_...” does not exist"
        for _ in range(5):
            assert admin.get("/api/v1/devices", headers=auth).status_code == 503
            page = admin.get("/")
            assert page.status_code == 503
            assert "Not available just now" in page.text

        _pg_admin(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        auth = {"Authorization": f"Bearer {seed()}"}
        assert admin.get("/api/v1/devices", headers=auth).status_code == 200
        assert admin.get("/readyz").json() == {"status": "ready"}
    assert len(log_lines(caplog, DOWN)) == 1
    assert len(log_lines(caplog, BACK)) == 1
    assert not [r for r in caplog.records if r.exc_info]


def test_a_database_that_answers_is_ready_on_any_host(sqlite_url: str) -> None:
    """A database that answers is ready; /healthz and /readyz answer on any Host (a load
    balancer probes by address), where other paths are captive-portal probes."""
    portal = portal_for(sqlite_url)
    with TestClient(
        portal.app,
        base_url="http://192.0.2.1:8080",
        client=("127.0.0.1", 1),
        follow_redirects=False,
    ) as lb:
        assert lb.get("/readyz").json() == {"status": "ready"}
        assert lb.get("/healthz").text == "ok"
        assert lb.get("/anything").status_code == 302  # the OS-probe redirect, as before


def test_a_refused_statement_is_not_an_outage(tmp_path: Path) -> None:
    """Only an unreachable database is reported as down; one statement the database refuses
    (a constraint) is that request's error, not an outage of every page."""
    from sqlalchemy import text
    from sqlalchemy.exc import SQLAlchemyError

    from service.db import is_database_outage, make_engine

    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    errors: list[SQLAlchemyError] = []
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY)"))
        conn.execute(text("INSERT INTO t VALUES (1)"))
    for statement in ("INSERT INTO t VALUES (1)", "SELECT * FROM missing_table"):
        try:
            with engine.begin() as conn:
                conn.execute(text(statement))
        except SQLAlchemyError as exc:
            errors.append(exc)
    refused, missing = errors
    assert not is_database_outage(refused)
    assert is_database_outage(missing)
    gone = make_engine(f"sqlite:///{tmp_path / 'removed' / 'db.sqlite'}")
    with pytest.raises(SQLAlchemyError) as unreachable:
        gone.connect()
    assert is_database_outage(unreachable.value)
