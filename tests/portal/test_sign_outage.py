"""Issue 13: the portal refuses to sign rather than lose a signature. A visitor fills the form
while the database answers; it goes away (a proxy cut, tests/db_proxy.py) before they press
the button: they get the clear 503 page, nothing is half-written, and the same form signs once
the database is back."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from portal.app import create_app
from service.config import load_settings
from tests.db_proxy import CuttableProxy, through
from tests.portal.conftest import NOW, PORTAL, Connect
from tests.portal.test_hostile_input import signatures_for, stored_devices
from tests.portal.test_portal_http import visitor_form

pytestmark = pytest.mark.postgres


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_a_signature_made_while_the_database_is_away_is_refused_whole(
    westgate: SimpleNamespace, session_factory: sessionmaker[Session], connect: Connect
) -> None:
    url = make_url(westgate.db_url)
    proxy = CuttableProxy((url.host or "127.0.0.1", url.port or 5432))
    settings = load_settings(
        database_url=through(westgate.db_url, proxy.port),
        portal_url=PORTAL,
        secret_key="portal-test-secret",
        portal_rate_limit_per_minute=1000,
        coa_enabled=False,
    )
    mac, ip = "3c:22:fb:00:13:01", "10.99.13.1"
    connect(mac, ip)
    app = create_app(settings, clock=lambda: NOW)
    try:
        with TestClient(
            app, base_url=PORTAL.rstrip("/"), client=(ip, 40000), follow_redirects=False
        ) as visitor:
            form = visitor.get("/visitor")
            assert form.status_code == 200, form.text
            proxy.cut()
            refused = visitor.post("/visitor", data=visitor_form(form.text))
            assert refused.status_code == 503
            assert "Not available just now" in refused.text
            assert "Traceback" not in refused.text
            proxy.restore()
            assert signatures_for(session_factory, mac) == 0
            assert stored_devices(session_factory, mac) == []
            signed = visitor.post("/visitor", data=visitor_form(form.text))
            assert signed.status_code == 303, signed.text
    finally:
        proxy.close()
    assert signatures_for(session_factory, mac) == 1
