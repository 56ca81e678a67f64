"""Portal fixtures: the app against the seeded Westgate database, and a way to say what the
network saw (an open accounting session for an IP), as the RADIUS accounting would."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from portal.app import create_app
from service.config import load_settings
from service.db import transaction
from service.models import AccountingSession

PORTAL = "http://portal.westgate.test/"
# 16:00 on a Monday in November (London = UTC): after the working-day rule, before 18:00.
NOW = datetime(2026, 11, 23, 16, 0, tzinfo=UTC)

Connect = Callable[..., None]


@pytest.fixture
def connect(session_factory: sessionmaker[Session]) -> Connect:
    """Open an accounting session: the network saw `mac` at `ip` (what RADIUS accounting stores)."""

    def run(
        mac: str,
        ip: str,
        *,
        site: str = "westgate",
        called: str = "AP-HALL-1",
        at: datetime | None = None,
    ) -> None:
        """`at`: an Interim-Update at that moment for a session already open (a session that
        hears nothing for `accounting_stale_after` no longer names its device)."""
        with transaction(session_factory) as session:
            if at is not None:
                row = session.scalar(
                    select(AccountingSession).where(
                        AccountingSession.acct_session_id == f"s-{mac}-{ip}"
                    )
                )
                assert row is not None, "an interim update needs connect() first"
                row.updated_at = at
                return
            session.add(
                AccountingSession(
                    nas_ip="127.0.0.1",
                    nas_identifier=called,
                    site_code=site,
                    mac=mac,
                    framed_ip=ip,
                    acct_session_id=f"s-{mac}-{ip}",
                    called_station_id=called,
                    started_at=NOW,
                    updated_at=NOW,
                )
            )

    return run


@pytest.fixture
def portal_app(westgate: SimpleNamespace, session_factory: sessionmaker[Session]) -> FastAPI:
    settings = load_settings(
        database_url=westgate.db_url,
        portal_url=PORTAL,
        secret_key="portal-test-secret",
        portal_rate_limit_per_minute=1000,
        coa_enabled=False,  # rows are queued; nothing is sent (the browser test sends for real)
    )
    return create_app(settings, session_factory=session_factory, clock=lambda: NOW)


@pytest.fixture
def client_at(portal_app: FastAPI) -> Iterator[Callable[[str], TestClient]]:
    """An HTTP client (httpx, in-process) whose requests come from a given IP."""
    clients: list[TestClient] = []

    def make(ip: str) -> TestClient:
        c = TestClient(
            portal_app, base_url=PORTAL.rstrip("/"), client=(ip, 40000), follow_redirects=False
        )
        clients.append(c)
        return c

    yield make
    for c in clients:
        c.close()


@pytest.fixture
def st_andrews(westgate: SimpleNamespace, session_factory: sessionmaker[Session]) -> str:
    """St Andrew's policy loaded beside Westgate's (seed 000: approved staff devices get the
    internet; Westgate gives them no network, so staff registration there is refused)."""
    from pathlib import Path

    from service import registry

    with transaction(session_factory) as session:
        registry.load_policy_file(
            session,
            path=Path(__file__).parents[2] / "deploy/policies/st-andrews.toml",
            actor="test",
        )
    return "st-andrews"
