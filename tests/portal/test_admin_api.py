"""The admin HTTP API under /api/v1 and `schoolgate token`, against the real database."""

from __future__ import annotations

import json
from collections.abc import Callable
from types import SimpleNamespace

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from service.db import transaction
from service.tokens import create_token
from tests.conftest import RunCli
from tests.portal.conftest import Connect

Clients = Callable[[str], TestClient]


def token(session_factory: sessionmaker[Session], *scopes: str) -> dict[str, str]:
    with transaction(session_factory) as session:
        _, secret = create_token(session=session, name="t", scopes=list(scopes), actor="test")
    return {"Authorization": f"Bearer {secret}"}


def test_api_requires_a_valid_token_with_the_scope(
    client_at: Clients, session_factory: sessionmaker[Session]
) -> None:
    api = client_at("127.0.0.1")
    assert api.get("/api/v1/devices").status_code == 401
    assert api.get("/api/v1/devices", headers={"Authorization": "Bearer nope"}).status_code == 401
    read = token(session_factory, "signatures:read")
    assert api.get("/api/v1/devices", headers=read).status_code == 403
    schema = api.get("/api/v1/openapi.json").json()
    assert "/api/v1/devices/{mac}/approve" in schema["paths"]


def test_devices_crud_and_errors(
    client_at: Clients, session_factory: sessionmaker[Session], westgate: SimpleNamespace
) -> None:
    api = client_at("127.0.0.1")
    write = token(session_factory, "devices:write")
    listed = api.get("/api/v1/devices", headers=write)
    assert listed.status_code == 200
    assert westgate.school_laptop in {d["mac"] for d in listed.json()}
    r = api.post(
        "/api/v1/devices",
        headers=write,
        json={
            "mac": "AA-BB-CC-00-00-01",
            "site": "westgate",
            "device_class": "school_shared",
            "name": "Trolley iPad 7",
        },
    )
    assert r.status_code == 201, r.text
    assert r.json()["mac"] == "aa:bb:cc:00:00:01"
    assert (
        api.post(
            "/api/v1/devices",
            headers=write,
            json={"mac": "aa:bb:cc:00:00:01", "site": "westgate", "device_class": "school_shared"},
        ).status_code
        == 409
    )
    assert (
        api.post(
            "/api/v1/devices",
            headers=write,
            json={"mac": "zz", "site": "westgate", "device_class": "school_shared"},
        ).status_code
        == 422
    )
    assert (
        api.post(
            "/api/v1/devices",
            headers=write,
            json={"mac": "aa:bb:cc:00:00:02", "site": "nowhere", "device_class": "school_shared"},
        ).status_code
        == 404
    )
    assert api.post("/api/v1/devices", headers=write, json={"mac": "x"}).status_code == 422
    shown = api.get("/api/v1/devices/aabb.cc00.0001", headers=write)
    assert shown.json()["name"] == "Trolley iPad 7"
    decision = api.get("/api/v1/devices/aa:bb:cc:00:00:01/decision", headers=write).json()
    assert decision["access"] == "full"
    assert decision["vlan"] == 10
    assert api.get("/api/v1/devices/aa:bb:cc:00:00:09", headers=write).status_code == 404
    revoked = api.post(
        "/api/v1/devices/aa:bb:cc:00:00:01/revoke",
        headers=write,
        json={"reason": "stolen from the trolley"},
    )
    assert revoked.status_code == 200
    assert revoked.json()["status"] == "revoked"
    assert (
        api.post(
            "/api/v1/devices/aa:bb:cc:00:00:01/revoke", headers=write, json={"reason": ""}
        ).status_code
        == 422
    )


def test_lost_and_exit(
    client_at: Clients, session_factory: sessionmaker[Session], westgate: SimpleNamespace
) -> None:
    api = client_at("127.0.0.1")
    write = token(session_factory, "devices:write")
    r = api.post(
        f"/api/v1/devices/{westgate.shared_ipad}/lost",
        headers=write,
        json={"reported_by": "jsmith", "kind": "stolen", "description": "left on the bus"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "lost"
    bad = api.post(
        f"/api/v1/devices/{westgate.school_laptop}/lost",
        headers=write,
        json={"reported_by": "jsmith", "kind": "misplaced"},
    )
    assert bad.status_code == 422
    r = api.post(f"/api/v1/devices/{westgate.school_laptop}/exit", headers=write, json={})
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "exited"
    decision = api.get(f"/api/v1/devices/{westgate.school_laptop}/decision", headers=write)
    assert decision.json()["access"] == "none"


def test_signatures_and_sessions(
    client_at: Clients,
    session_factory: sessionmaker[Session],
    connect: Connect,
    westgate: SimpleNamespace,
) -> None:
    connect(westgate.school_laptop, "10.5.5.5")
    api = client_at("127.0.0.1")
    headers = token(session_factory, "signatures:read", "sessions:read")
    sigs = api.get("/api/v1/signatures", headers=headers).json()
    assert {s["kind"] for s in sigs} >= {"visitor_aua", "staff_byod"}
    sessions = api.get("/api/v1/sessions", params={"open_only": True}, headers=headers).json()
    assert [s["framed_ip"] for s in sessions] == ["10.5.5.5"]


def test_token_cli(run_cli: RunCli, westgate: SimpleNamespace, client_at: Clients) -> None:
    created = json.loads(
        run_cli("token", "create", "--name", "mdm", "--scope", "devices:write", "--json").stdout
    )
    assert created["token"].startswith("sgt_")
    api = client_at("127.0.0.1")
    auth = {"Authorization": f"Bearer {created['token']}"}
    assert api.get("/api/v1/devices", headers=auth).status_code == 200
    listed = json.loads(run_cli("token", "list", "--json").stdout)
    assert listed[0]["name"] == "mdm"
    assert "token" not in listed[0]
    assert listed[0]["last_used_at"] is not None
    run_cli("token", "revoke", str(created["id"]))
    assert api.get("/api/v1/devices", headers=auth).status_code == 401
    bad = run_cli("token", "create", "--scope", "everything", check=False)
    assert bad.returncode == 1
    assert "unknown scope" in bad.stderr
    again = run_cli("token", "revoke", str(created["id"]), check=False)
    assert again.returncode == 1
    assert "already revoked" in again.stderr
