"""The admin HTTP API under /api/v1 and `schoolgate token`, against the real database."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from service.db import transaction
from service.tokens import create_token
from tests.conftest import SCHOOLGATE, RunCli
from tests.helpers import free_tcp_port, wait_for_tcp
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
    # Issue 11 item 15: the docs and schema are off by default (tests below turn them on).
    assert api.get("/api/v1/openapi.json").status_code == 404
    assert api.get("/api/v1/docs").status_code == 404


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


# ---------------------------------------------------------------- issue 11 item 15
GUEST = "10.99.0.40"  # a device on the guest / registration network


def test_the_api_answers_only_the_admin_networks(
    client_at: Clients, session_factory: sessionmaker[Session]
) -> None:
    write = token(session_factory, "devices:read", "devices:write")
    guest = client_at(GUEST)
    for method, path in [
        ("GET", "/api/v1/devices"),
        ("POST", "/api/v1/devices/02:00:00:00:10:01/revoke"),
        ("GET", "/api/v1/openapi.json"),
        ("GET", "/api/v1/docs"),
        ("GET", "/api/v1/nothing-here"),
    ]:
        # a valid token does not help from the guest network
        r = guest.request(method, path, headers=write, json={"reason": "from the guest Wi-Fi"})
        assert r.status_code == 403, (path, r.text)
        assert r.json() == {
            "detail": "the admin API answers only the admin networks "
            f"(SCHOOLGATE_ADMIN_NETWORKS); {GUEST} is not in them"
        }
    # IPv6 loopback and the IPv4 loopback network are admin by default
    assert client_at("::1").get("/api/v1/devices", headers=write).status_code == 200
    assert client_at("127.0.0.2").get("/api/v1/devices", headers=write).status_code == 200
    # nothing was revoked from the guest network
    shown = client_at("127.0.0.1").get("/api/v1/devices/02:00:00:00:10:01", headers=write)
    assert shown.json()["status"] == "active"


def test_docs_when_turned_on_answer_only_the_configured_management_subnet(
    westgate: SimpleNamespace, session_factory: sessionmaker[Session]
) -> None:
    from portal.app import create_app
    from service.config import load_settings
    from tests.portal.conftest import NOW, PORTAL

    settings = load_settings(
        database_url=westgate.db_url,
        portal_url=PORTAL,
        secret_key="portal-test-secret",
        admin_networks=["10.0.10.0/24"],
        api_docs=True,
    )
    app = create_app(settings, session_factory=session_factory, clock=lambda: NOW)

    def at(ip: str) -> TestClient:
        return TestClient(app, base_url=PORTAL.rstrip("/"), client=(ip, 40000))

    with at("10.0.10.7") as office, at("127.0.0.1") as loopback, at(GUEST) as guest:
        schema = office.get("/api/v1/openapi.json")
        assert schema.status_code == 200
        assert "/api/v1/devices/{mac}/approve" in schema.json()["paths"]
        assert office.get("/api/v1/docs").status_code == 200
        assert office.get("/api/v1/devices").status_code == 401  # a token is still needed
        # loopback is not admin once the setting names other networks; guests never are
        assert loopback.get("/api/v1/openapi.json").status_code == 403
        assert guest.get("/api/v1/openapi.json").status_code == 403
        assert guest.get("/api/v1/docs").status_code == 403


def test_admin_networks_from_the_environment_and_a_bad_one_in_one_line(run_cli: RunCli) -> None:
    from service.config import load_settings
    from service.errors import Invalid

    assert load_settings(admin_networks="127.0.0.1/32, 10.0.10.0/24").admin_networks == [
        "127.0.0.1/32",
        "10.0.10.0/24",
    ]
    with pytest.raises(Invalid, match=r"^bad setting admin_networks: .*'10.0.0.0/33'"):
        load_settings(admin_networks=["10.0.0.0/33"])
    bad = run_cli("token", "list", env={"SCHOOLGATE_ADMIN_NETWORKS": "10.0.0.0/33"}, check=False)
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines() == [
        "error: bad setting admin_networks: Value error, '10.0.0.0/33' is not a network"
    ]


def test_behind_the_trusted_proxy_a_guest_is_not_admin(
    westgate: SimpleNamespace, session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    """`portal serve --trusted-proxy 127.0.0.1`: the proxy connects from loopback, and the
    client it names in X-Forwarded-For decides, over real HTTP."""
    write = token(session_factory, "devices:read")
    port = free_tcp_port()
    env = {
        **os.environ,
        "SCHOOLGATE_DATABASE_URL": westgate.db_url,
        "SCHOOLGATE_PORTAL_URL": f"http://127.0.0.1:{port}/",
        "SCHOOLGATE_SECRET_KEY": "proxy-test-secret-0123456789abcdef",
    }
    with (tmp_path / "portal.log").open("w") as log:
        portal = subprocess.Popen(
            [
                *SCHOOLGATE,
                "portal",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--trusted-proxy",
                "127.0.0.1",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=tmp_path,
        )
    try:
        wait_for_tcp(port, timeout=60)
        base = f"http://127.0.0.1:{port}/api/v1/devices"
        proxied_guest = httpx.get(base, headers={**write, "X-Forwarded-For": GUEST}, timeout=10)
        assert proxied_guest.status_code == 403
        assert GUEST in proxied_guest.json()["detail"]
        proxied_admin = httpx.get(
            base, headers={**write, "X-Forwarded-For": "127.0.0.1"}, timeout=10
        )
        assert proxied_admin.status_code == 200
    finally:
        portal.terminate()
        portal.wait(timeout=15)


# ---------------------------------------------------------------- issue 11 item 6
def test_token_create_and_revoke_are_in_the_audit_log(run_cli: RunCli, westgate: object) -> None:
    created = json.loads(
        run_cli("token", "create", "--name", "mdm", "--scope", "devices:read", "--json").stdout
    )
    run_cli("token", "revoke", str(created["id"]))
    lines = run_cli("export", "audit", "--format", "jsonl").stdout.splitlines()
    entries = [json.loads(line) for line in lines if line.strip()]
    mine = [
        (e["actor"], e["tag"], e["detail"]["name"])
        for e in entries
        if e["subject"] == f"token:{created['id']}"
    ]
    assert mine == [
        ("tester", "admin:token:create", "mdm"),
        ("tester", "admin:token:revoke", "mdm"),
    ]
    assert created["token"] not in "\n".join(lines)  # the secret itself is never logged
    assert run_cli("audit", "verify").returncode == 0
