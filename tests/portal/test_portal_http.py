"""Every portal route and its bad inputs, with httpx (Starlette's TestClient) against the app
and the real seeded database (SQLite and PostgreSQL)."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta
from types import SimpleNamespace

from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from portal.app import create_app
from portal.tokens import Signer
from service.config import load_settings
from service.db import transaction
from service.demo import DEMO_VISITOR_CODE
from service.enums import Access, DeviceStatus, SignatureSource
from service.facts import decide_for_mac
from service.models import Device, Person, Signature
from tests.portal.conftest import NOW, PORTAL, Connect

NEW_VISITOR = "3c:22:fb:00:00:01"  # a universally administered (burned-in) address
PRIVATE_PHONE = "1a:2b:3c:4d:5e:6f"  # locally administered: a private Wi-Fi address

Clients = Callable[[str], TestClient]


def csrf_of(html: str, name: str = "csrf") -> str:
    match = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert match, f"no {name} field in page"
    return match.group(1)


def visitor_form(html: str, **over: str) -> dict[str, str]:
    data = {
        "csrf": csrf_of(html),
        "version": csrf_of(html, "version"),
        "continue_url": "",
        "name": "Ada Lovelace",
        "organisation": "Analytical Engines Ltd",
        "visiting": "Mrs Patel",
        "agree": "yes",
        "typed_name": "Ada Lovelace",
        "code": DEMO_VISITOR_CODE,  # Westgate verifies visitors with a code (issue 12)
    }
    data.update(over)
    return {k: v for k, v in data.items() if v is not None}


# ---------------------------------------------------------------- probes
def test_probes_redirect_a_captive_device_to_the_portal(
    client_at: Clients, connect: Connect
) -> None:
    connect(NEW_VISITOR, "10.99.0.5")
    client = client_at("10.99.0.5")
    for host, path in [
        ("captive.apple.com", "/hotspot-detect.html"),
        ("connectivitycheck.gstatic.com", "/generate_204"),
        ("www.msftconnecttest.com", "/connecttest.txt"),
        ("www.msftncsi.com", "/ncsi.txt"),
        ("www.msftconnecttest.com", "/redirect"),
        ("detectportal.firefox.com", "/canonical.html"),
        ("detectportal.firefox.com", "/success.txt"),
        ("example.org", "/any/other/path?x=1"),
    ]:
        response = client.get(path, headers={"Host": host})
        assert response.status_code == 302, (host, path)
        assert response.headers["location"] == PORTAL


def test_probes_answer_as_each_os_expects_once_not_captive(
    client_at: Clients, connect: Connect, westgate: SimpleNamespace
) -> None:
    connect(westgate.school_laptop, "10.99.0.6")
    client = client_at("10.99.0.6")
    r = client.get("/generate_204", headers={"Host": "connectivitycheck.gstatic.com"})
    assert r.status_code == 204
    assert r.content == b""
    r = client.get("/hotspot-detect.html", headers={"Host": "captive.apple.com"})
    assert r.status_code == 200
    assert "<TITLE>Success</TITLE>" in r.text
    assert client.get("/connecttest.txt", headers={"Host": "x"}).text == "Microsoft Connect Test"
    assert client.get("/ncsi.txt", headers={"Host": "x"}).text == "Microsoft NCSI"
    assert client.get("/success.txt", headers={"Host": "x"}).text == "success\n"
    assert "captive-portal" in client.get("/canonical.html", headers={"Host": "x"}).text


def test_unknown_ip_is_captive_and_told_to_reconnect(client_at: Clients) -> None:
    client = client_at("10.99.9.9")
    assert client.get("/generate_204", headers={"Host": "g.example"}).status_code == 302
    page = client.get("/")
    assert page.status_code == 409
    assert "cannot see your device" in page.text


def test_a_session_silent_past_its_stale_time_names_nobody(
    client_at: Clients, connect: Connect
) -> None:
    """A NAS that rebooted never sends the Stop: once a session has heard no Start or
    Interim-Update for `accounting_stale_after` (4 h), its IP no longer names its device, so a
    newcomer handed that IP is not taken for the old device (issue 14, stale sessions)."""
    connect(NEW_VISITOR, "10.99.0.8")
    connect(NEW_VISITOR, "10.99.0.8", at=NOW - timedelta(hours=3, minutes=59))
    assert "I am a visitor" in client_at("10.99.0.8").get("/").text
    connect(NEW_VISITOR, "10.99.0.8", at=NOW - timedelta(hours=4, minutes=1))
    page = client_at("10.99.0.8").get("/")
    assert page.status_code == 409
    assert "cannot see your device" in page.text


# ---------------------------------------------------------------- RFC 8908
def test_captive_api(client_at: Clients, connect: Connect, westgate: SimpleNamespace) -> None:
    connect(NEW_VISITOR, "10.99.0.7")
    r = client_at("10.99.0.7").get("/api/captive")
    assert r.headers["content-type"] == "application/captive+json"
    assert r.headers["cache-control"] == "private"
    assert r.json() == {
        "captive": True,
        "user-portal-url": PORTAL,
        "venue-info-url": PORTAL + "about",
    }
    connect(westgate.school_laptop, "10.99.0.8")
    body = client_at("10.99.0.8").get("/api/captive").json()
    assert body["captive"] is False
    assert body["seconds-remaining"] > 0
    assert body["can-extend-session"] is False


# ---------------------------------------------------------------- visitor flow
def test_visitor_signs_and_gets_internet(
    client_at: Clients, connect: Connect, session_factory: sessionmaker[Session]
) -> None:
    connect(NEW_VISITOR, "10.99.0.10")
    client = client_at("10.99.0.10")
    landing = client.get(
        "/", params={"id": NEW_VISITOR, "ap": "aa:bb:cc:00:00:01", "url": "http://example.org/news"}
    )
    assert landing.status_code == 200
    assert "I am a visitor" in landing.text
    form = client.get("/visitor", params={"continue_url": "http://example.org/news"})
    assert form.status_code == 200
    assert "Visitor" in form.text
    assert "version" in form.text
    response = client.post(
        "/visitor",
        data=visitor_form(form.text, continue_url="http://example.org/news"),
        headers={"User-Agent": "TestPhone/1.0"},
    )
    assert response.status_code == 303
    done = client.get(response.headers["location"])
    assert done.status_code == 200
    # (issue 12: the access in plain words, and the signature's real end, not 17:59)
    assert "<strong>Internet now until 18:00; then this device must sign in again.</strong>" in (
        done.text
    )
    assert 'href="http://example.org/news"' in done.text
    with session_factory() as session:
        signature = session.scalar(
            select(Signature).where(Signature.source == SignatureSource.PORTAL)
        )
        assert signature is not None
        assert signature.typed_name == "Ada Lovelace"
        assert signature.organisation == "Analytical Engines Ltd"
        assert signature.visiting == "Mrs Patel"
        assert signature.client_ip == "10.99.0.10"
        assert signature.user_agent == "TestPhone/1.0"
        assert len(signature.agreement_sha256) == 64
        assert signature.valid_until is not None
        device = session.scalar(select(Device).where(Device.mac == NEW_VISITOR))
        assert device is not None
        assert signature.device_id == device.id
        decision = decide_for_mac(session, NEW_VISITOR, now=NOW)
        assert decision.access is Access.INTERNET
        assert decision.vlan == 30
        # the change was queued for the NAS (CoA) in the same transaction as the signature
        from service.models.coa import CoaRequest

        queued = session.scalars(select(CoaRequest).where(CoaRequest.mac == NEW_VISITOR)).all()
        assert len(queued) == 1
    # and the OS probe now closes the captive assistant
    assert client.get("/generate_204", headers={"Host": "g.example"}).status_code == 204


def test_visitor_missing_fields_are_explained_on_the_page(
    client_at: Clients, connect: Connect
) -> None:
    connect(NEW_VISITOR, "10.99.0.11")
    client = client_at("10.99.0.11")
    form = client.get("/visitor").text
    r = client.post(
        "/visitor", data=visitor_form(form, name="", visiting="", agree=None, typed_name="")
    )
    assert r.status_code == 400
    assert "Your name is required." in r.text
    assert "Whom you are visiting is required." in r.text
    assert "Tick the box" in r.text
    r = client.post("/visitor", data=visitor_form(form, typed_name="Someone Else"))
    assert r.status_code == 400
    assert "Type your name exactly" in r.text
    r = client.post("/visitor", data=visitor_form(form, name="x" * 300, typed_name="x" * 300))
    assert r.status_code == 400
    assert "too long" in r.text
    r = client.post("/visitor", data=visitor_form(form, version="999"))
    assert r.status_code == 400
    assert "agreement changed" in r.text


def test_forged_mac_in_redirect_is_refused(
    client_at: Clients, connect: Connect, westgate: SimpleNamespace
) -> None:
    connect(NEW_VISITOR, "10.99.0.12")
    client = client_at("10.99.0.12")
    for params in (
        {"id": westgate.school_laptop, "ap": "x"},
        {"client_mac": westgate.school_laptop, "base_grant_url": "http://n.example/grant"},
        {"client_mac": westgate.school_laptop, "switch_url": "http://wlc/login", "wlan": "Guest"},
        {"mac": westgate.school_laptop, "essid": "Guest", "apname": "AP1"},
        {"clientmac": westgate.school_laptop, "gatewayname": "gw"},
    ):
        r = client.get("/", params=params)
        assert r.status_code == 403, params
        assert "does not match" in r.text
    r = client.get("/", params={"id": "not-a-mac", "ap": "x"})
    assert r.status_code == 400


def test_csrf_missing_forged_stale_and_replayed(
    client_at: Clients, connect: Connect, session_factory: sessionmaker[Session]
) -> None:
    connect(NEW_VISITOR, "10.99.0.13")
    connect("3c:22:fb:00:00:02", "10.99.0.14")
    mine = client_at("10.99.0.13")
    other = client_at("10.99.0.14")
    form = mine.get("/visitor").text
    r = mine.post("/visitor", data=visitor_form(form, csrf=""))
    assert r.status_code == 400
    assert "security token is missing" in r.text
    r = mine.post("/visitor", data=visitor_form(form, csrf="abc.def"))
    assert r.status_code == 400
    assert "not valid" in r.text
    forged = Signer("wrong-secret").csrf("visitor", NEW_VISITOR)
    r = mine.post("/visitor", data=visitor_form(form, csrf=forged))
    assert r.status_code == 400
    assert "not valid" in r.text
    stale = Signer("portal-test-secret").csrf("visitor", NEW_VISITOR, now=0)
    r = mine.post("/visitor", data=visitor_form(form, csrf=stale))
    assert r.status_code == 400
    assert "expired" in r.text
    # A form (and so a signature) issued to one device, replayed from another.
    r = other.post("/visitor", data=visitor_form(form))
    assert r.status_code == 400
    assert "another device" in r.text
    with session_factory() as session:
        assert (
            session.scalar(select(Signature).where(Signature.source == SignatureSource.PORTAL))
            is None
        )


def test_unknown_site_is_not_served(client_at: Clients, connect: Connect) -> None:
    connect(NEW_VISITOR, "10.99.0.15", site="atlantis")
    r = client_at("10.99.0.15").get("/")
    assert r.status_code == 409
    assert client_at("10.99.0.15").get("/visitor").status_code == 409


def test_school_device_cannot_be_signed_as_visitor(
    client_at: Clients, connect: Connect, westgate: SimpleNamespace
) -> None:
    # The school laptop is not captive; a visitor form posted for it is still refused.
    connect(westgate.school_laptop, "10.99.0.16")
    client = client_at("10.99.0.16")
    form = client.get("/visitor").text
    r = client.post("/visitor", data=visitor_form(form))
    assert r.status_code == 400
    assert "already registered to the school" in r.text


# ---------------------------------------------------------------- learner
def test_pupil_device_gets_a_kind_explanation(
    client_at: Clients, connect: Connect, westgate: SimpleNamespace
) -> None:
    connect(westgate.pupil_phone, "10.99.0.20")
    client = client_at("10.99.0.20")
    r = client.get("/")
    assert r.status_code == 303
    assert r.headers["location"] == "/refused"
    page = client.get("/refused")
    assert page.status_code == 200
    assert "hand their phone in" in page.text
    assert "not a fault" in page.text


# ---------------------------------------------------------------- staff flow
def staff_sign_in(client: TestClient, password: str = "demo-password") -> TestClient:
    page = client.get("/staff")
    assert page.status_code == 200
    return client.post(
        "/staff", data={"csrf": csrf_of(page.text), "username": "jsmith", "password": password}
    )


def test_staff_registers_device_pending_then_approved_by_api(
    client_at: Clients,
    connect: Connect,
    session_factory: sessionmaker[Session],
    portal_app: object,
) -> None:
    # St Andrew's gives approved staff devices internet access (seed 000), so the move shows.
    from pathlib import Path

    from service import registry

    with transaction(session_factory) as session:
        registry.load_policy_file(
            session,
            path=Path(__file__).parents[2] / "deploy/policies/st-andrews.toml",
            actor="test",
        )
    connect(PRIVATE_PHONE, "10.99.0.30", site="st-andrews")
    client = client_at("10.99.0.30")
    byod = staff_sign_in(client)
    assert byod.status_code == 200
    assert "Register your device, Jo Smith" in byod.text
    assert "private Wi-Fi address" in byod.text
    assert "per-network" in byod.text
    ticket = csrf_of(byod.text, "ticket")
    # a second sign-in gives a new session id
    assert csrf_of(staff_sign_in(client).text, "ticket") != ticket
    bad = client.post(
        "/staff/register",
        data={"ticket": ticket, "csrf": csrf_of(byod.text), "device_name": "", "typed_name": ""},
    )
    assert bad.status_code == 400
    assert "Give the device a name" in bad.text
    assert "Tick the box" in bad.text
    r = client.post(
        "/staff/register",
        data={
            "ticket": ticket,
            "csrf": csrf_of(byod.text),
            "device_name": "Jo's phone",
            "agree": "yes",
            "typed_name": "Jo Smith",
        },
    )
    assert r.status_code == 303
    done = client.get("/done")
    assert "waiting for approval" in done.text
    assert "You may close this page" in done.text
    with session_factory() as session:
        device = session.scalar(select(Device).where(Device.mac == PRIVATE_PHONE))
        assert device is not None
        assert device.status is DeviceStatus.PENDING
        assert device.name == "Jo's phone"
        assert decide_for_mac(session, PRIVATE_PHONE, now=NOW).access is Access.REGISTRATION
    # the IT admin approves through the admin API
    with transaction(session_factory) as session:
        from service.tokens import create_token

        _, secret = create_token(session=session, name="it", scopes=["devices:write"], actor="test")
    # (from the IT office: the API answers only the admin networks, loopback by default)
    approved = client_at("127.0.0.1").post(
        f"/api/v1/devices/{PRIVATE_PHONE}/approve", headers={"Authorization": f"Bearer {secret}"}
    )
    assert approved.status_code == 200, approved.text
    assert approved.json()["status"] == "active"
    with session_factory() as session:
        after = decide_for_mac(session, PRIVATE_PHONE, now=NOW)
        assert after.access is Access.INTERNET, after


def test_staff_ticket_for_another_device_is_refused(
    client_at: Clients, connect: Connect, st_andrews: str
) -> None:
    # At St Andrew's: Westgate refuses staff registration before any form (issue 12).
    connect(PRIVATE_PHONE, "10.99.0.31", site=st_andrews)
    connect(NEW_VISITOR, "10.99.0.32", site=st_andrews)
    byod = staff_sign_in(client_at("10.99.0.31"))
    other = client_at("10.99.0.32")
    r = other.post(
        "/staff/register",
        data={
            "ticket": csrf_of(byod.text, "ticket"),
            "csrf": csrf_of(byod.text),
            "device_name": "x",
            "agree": "yes",
            "typed_name": "Jo Smith",
        },
    )
    assert r.status_code == 400
    assert "another device" in r.text


def test_staff_wrong_passwords_are_slowed_not_locked(
    client_at: Clients, connect: Connect, session_factory: sessionmaker[Session]
) -> None:
    # Issue 11 item 7: this used to lock the account (`locked_until`); now the sixth attempt
    # from the same device must wait (429, Retry-After), and nothing is written to the database.
    connect(PRIVATE_PHONE, "10.99.0.33")
    client = client_at("10.99.0.33")
    for _ in range(5):
        r = staff_sign_in(client, "wrong-password")
        assert r.status_code == 400
        assert "not right" in r.text
    r = staff_sign_in(client)  # the right password, but this device must wait now
    assert r.status_code == 429
    assert "try again in 1 second" in r.text
    assert r.headers["Retry-After"] == "1"
    with session_factory() as session:
        person = session.scalar(select(Person).where(Person.username == "jsmith"))
        assert person is not None
        assert person.locked_until is None
    page = client.get("/staff")
    r = client.post("/staff", data={"csrf": csrf_of(page.text), "username": "", "password": ""})
    assert r.status_code == 400
    assert "enter your username" in r.text


def test_pupil_account_cannot_register(
    client_at: Clients, connect: Connect, session_factory: sessionmaker[Session]
) -> None:
    from service import registry

    with transaction(session_factory) as session:
        pupil = registry.find_person(session, "pupil1")
        registry.set_password(session, person=pupil, password="pupil-password", actor="t")
    connect(PRIVATE_PHONE, "10.99.0.34")
    client = client_at("10.99.0.34")
    page = client.get("/staff")
    r = client.post(
        "/staff",
        data={"csrf": csrf_of(page.text), "username": "pupil1", "password": "pupil-password"},
    )
    assert r.status_code == 400
    assert "only staff" in r.text


# ---------------------------------------------------------------- rate limit, headers
def test_rate_limit_per_client_ip(
    westgate: SimpleNamespace, session_factory: sessionmaker[Session]
) -> None:
    settings = load_settings(
        database_url=westgate.db_url, portal_url=PORTAL, portal_rate_limit_per_minute=3
    )
    app = create_app(settings, session_factory=session_factory, clock=lambda: NOW)
    one = TestClient(
        app, base_url=PORTAL.rstrip("/"), client=("10.1.1.1", 1), follow_redirects=False
    )
    two = TestClient(
        app, base_url=PORTAL.rstrip("/"), client=("10.1.1.2", 1), follow_redirects=False
    )
    codes = [one.get("/about").status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    assert two.get("/about").status_code == 200


def test_pages_are_not_cached_and_have_security_headers(client_at: Clients) -> None:
    r = client_at("10.1.1.3").get("/about")
    assert r.headers["cache-control"] == "no-store"
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["x-content-type-options"] == "nosniff"
    css = client_at("10.1.1.3").get("/static/portal.css")
    assert css.status_code == 200
    assert "focus-visible" in css.text


def test_dhcp_lease_from_the_monitor_identifies_a_device_without_accounting(
    client_at: Clients, session_factory: sessionmaker[Session], westgate: SimpleNamespace
) -> None:
    from datetime import UTC, datetime

    from service.models.traffic import TrafficBinding

    with transaction(session_factory) as session:
        for ip, seen, lease in (
            ("10.77.0.1", datetime.now(UTC), 3600),
            ("10.77.0.2", NOW.replace(year=2020), 60),
        ):
            session.add(
                TrafficBinding(
                    site_code="westgate",
                    seen_at=seen,
                    source="dhcp",
                    msg_type="ack",
                    ip=ip,
                    mac=NEW_VISITOR,
                    lease_seconds=lease,
                    is_lease=True,
                )
            )
    client = client_at("10.77.0.1")
    assert "I am a visitor" in client.get("/").text
    forged = client.get("/", params={"id": westgate.school_laptop, "ap": "x"})
    assert forged.status_code == 403
    # an expired lease identifies nobody
    assert client_at("10.77.0.2").get("/").status_code == 409
