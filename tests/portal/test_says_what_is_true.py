"""Issue 12, the portal: the landing and done pages say what the decision says (access, where,
when it changes, the reason `policy explain` gives, no success style for no access); a
registration the policy always refuses is refused before anything is stored; agreements are
HTML; a failed submit keeps what was typed; the pupil page speaks to the pupil.

HTTP to the app (TestClient) over the seeded database, SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import html
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from portal.app import create_app
from portal.tokens import Signer
from service.agreements import current_agreement, publish_agreement
from service.config import load_settings
from service.db import transaction
from service.enums import AgreementKind, DeviceStatus
from service.facts import decide_for_mac
from service.models import Device, Person, Signature
from service.models.coa import CoaRequest
from tests.portal.conftest import PORTAL, Connect
from tests.portal.test_portal_http import csrf_of, staff_sign_in, visitor_form

# Monday 23 November 2026, 10:00 in London (= UTC): lesson time at St Andrew's (08:50-15:15).
LESSON_TIME = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
VISITOR = "3c:22:fb:00:12:01"
STAFF_PHONE = "3c:22:fb:00:12:02"

Clients = Callable[[str], TestClient]


@pytest.fixture
def lesson_time_at(
    westgate: SimpleNamespace, session_factory: sessionmaker[Session]
) -> Iterator[Clients]:
    """Clients of a portal whose clock says 10:00 on a Monday."""
    settings = load_settings(
        database_url=westgate.db_url,
        portal_url=PORTAL,
        secret_key="portal-test-secret",
        portal_rate_limit_per_minute=1000,
        coa_enabled=False,
    )
    app = create_app(settings, session_factory=session_factory, clock=lambda: LESSON_TIME)
    clients: list[TestClient] = []

    def make(ip: str) -> TestClient:
        client = TestClient(
            app, base_url=PORTAL.rstrip("/"), client=(ip, 40000), follow_redirects=False
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def main_text(page: str) -> str:
    """The <main> of a page as plain text (tags dropped, entities decoded, spaces folded)."""
    body = page.split('<main id="main">', 1)[1].split("</main>", 1)[0]
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", body)).split())


def sign_as_visitor(client: TestClient) -> str:
    form = client.get("/visitor").text
    response = client.post("/visitor", data=visitor_form(form))
    assert response.status_code == 303, response.text
    done = client.get("/done")
    assert done.status_code == 200
    return done.text


# ---------------------------------------------------------------- done and landing pages
def test_visitor_in_lesson_time_is_told_no_access_and_when_it_comes(
    lesson_time_at: Clients,
    connect: Connect,
    st_andrews: str,
    session_factory: sessionmaker[Session],
) -> None:
    connect(VISITOR, "10.98.0.1", site=st_andrews, called="AP-HALL-1")
    done = sign_as_visitor(lesson_time_at("10.98.0.1"))
    text = main_text(done)
    assert "You are connected" not in text
    assert 'class="ok"' not in done  # never the success style for no access
    assert 'class="refused"' in done
    assert "No network access now; internet from 15:15." in text
    with session_factory() as session:
        reason = decide_for_mac(
            session,
            VISITOR,
            nas_identifier="AP-HALL-1",
            called_station_id="AP-HALL-1",
            now=LESSON_TIME,
        ).reason
    assert f"Why: {reason}" in text  # the reason `policy explain` prints, word for word
    assert "none access" not in text


def test_visitor_in_the_staff_room_is_told_where_and_from_when(
    lesson_time_at: Clients, connect: Connect, st_andrews: str
) -> None:
    connect(VISITOR, "10.98.0.2", site=st_andrews, called="AP-STAFFROOM-1")
    client = lesson_time_at("10.98.0.2")
    done = sign_as_visitor(client)
    assert "You are connected" in done
    assert 'class="ok"' in done
    said = (
        "Internet in the staff room now; everywhere from 15:15 until 17:30; "
        "then this device must sign in again."  # St Andrew's school day ends at 17:30
    )
    assert said in main_text(done)
    assert said in main_text(client.get("/").text)  # the landing page, opened again


def test_approved_staff_device_at_westgate_is_not_shown_as_connected(
    client_at: Clients, connect: Connect, westgate: SimpleNamespace
) -> None:
    connect(westgate.staff_phone, "10.98.0.3")
    landing = client_at("10.98.0.3").get("/")
    assert landing.status_code == 200
    text = main_text(landing.text)
    assert "No network access now." in text
    assert "do not join the school network at Westgate" in text  # the school's explanation
    assert "already has" not in text
    assert 'class="ok"' not in landing.text


def test_done_page_shows_the_signatures_real_end_in_the_sites_zone(
    client_at: Clients, connect: Connect, session_factory: sessionmaker[Session]
) -> None:
    # 16:00 in London; Westgate's visitor agreement holds until the school day ends at 18:00.
    connect(VISITOR, "10.98.0.4")
    text = main_text(sign_as_visitor(client_at("10.98.0.4")))
    assert "Internet now until 18:00; then this device must sign in again." in text
    assert "17:59" not in text
    with session_factory() as session:
        signature = session.scalar(select(Signature).where(Signature.typed_name == "Ada Lovelace"))
        assert signature is not None
        valid_until = signature.valid_until
        assert valid_until is not None
        assert valid_until.replace(tzinfo=UTC) == datetime(2026, 11, 23, 18, 0, tzinfo=UTC)


# ---------------------------------------------------------------- refused up front
def test_westgate_refuses_staff_registration_before_the_form_and_stores_nothing(
    client_at: Clients, connect: Connect, session_factory: sessionmaker[Session]
) -> None:
    connect(STAFF_PHONE, "10.98.0.5")
    client = client_at("10.98.0.5")
    with session_factory() as session:
        signatures = session.scalar(select(func.count()).select_from(Signature))
    page = staff_sign_in(client)
    assert page.status_code == 403
    text = main_text(page.text)
    assert "Staff-owned devices are allowed in school but do not join the school network" in text
    assert "nothing was registered" in text
    assert 'name="ticket"' not in page.text  # no registration form at all
    # A registration posted anyway (a valid ticket for this device) is refused the same way.
    with session_factory() as session:
        person_id = session.scalar(select(Person.id).where(Person.username == "jsmith"))
    assert person_id is not None
    signer = Signer("portal-test-secret")
    posted = client.post(
        "/staff/register",
        data={
            "ticket": signer.ticket(person_id, STAFF_PHONE),
            "csrf": signer.csrf("staff-byod", STAFF_PHONE),
            "device_name": "Jo's phone",
            "agree": "yes",
            "typed_name": "Jo Smith",
        },
    )
    assert posted.status_code == 403
    assert "do not join the school network at Westgate" in posted.text
    assert "waiting for approval" not in posted.text
    with session_factory() as session:
        assert session.scalar(select(Device).where(Device.mac == STAFF_PHONE)) is None
        assert session.scalar(select(func.count()).select_from(CoaRequest)) == 0
        assert session.scalar(select(func.count()).select_from(Signature)) == signatures


def test_api_approve_answers_409_for_a_class_with_no_access_unless_anyway(
    client_at: Clients, session_factory: sessionmaker[Session]
) -> None:
    from service.devices import add_device
    from service.tokens import create_token

    with transaction(session_factory) as session:
        add_device(
            session,
            mac=STAFF_PHONE,
            site_code="westgate",
            device_class="staff_owned",
            owner="jsmith",
            actor="t",
        )
        _, secret = create_token(session=session, name="it", scopes=["devices:write"], actor="t")
    admin = client_at("127.0.0.1")
    auth = {"Authorization": f"Bearer {secret}"}
    refused = admin.post(f"/api/v1/devices/{STAFF_PHONE}/approve", headers=auth)
    assert refused.status_code == 409, refused.text
    assert "no network access" in refused.json()["detail"]
    assert "do not join the school network at Westgate" in refused.json()["detail"]
    assert "?anyway=true" in refused.json()["detail"]
    with session_factory() as session:
        device = session.scalar(select(Device).where(Device.mac == STAFF_PHONE))
        assert device is not None
        assert device.status is DeviceStatus.PENDING
    approved = admin.post(
        f"/api/v1/devices/{STAFF_PHONE}/approve", params={"anyway": "true"}, headers=auth
    )
    assert approved.status_code == 200, approved.text
    assert approved.json()["status"] == "active"


# ---------------------------------------------------------------- agreements as HTML
def test_agreement_is_html_with_real_headings_and_the_hash_is_of_the_source(
    client_at: Clients, connect: Connect, session_factory: sessionmaker[Session]
) -> None:
    connect(VISITOR, "10.98.0.6")
    client = client_at("10.98.0.6")
    page = client.get("/visitor").text
    section = page.split('<section class="agreement"', 1)[1].split("</section>", 1)[0]
    assert "<h2>Visitor and community user acceptable use agreement</h2>" in section
    assert "<ul>" in section
    assert "<li>" in section
    assert "# Visitor" not in section
    assert "\n- " not in section
    assert "agreement-text" not in page  # no pre-wrapped box of source text
    sign_as_visitor(client)
    with session_factory() as session:
        agreement = current_agreement(session, AgreementKind.VISITOR_AUA, "westgate")
        signature = session.scalar(select(Signature).where(Signature.typed_name == "Ada Lovelace"))
        assert signature is not None
        assert signature.agreement_sha256 == hashlib.sha256(agreement.text.encode()).hexdigest()


def test_markup_in_a_published_agreement_is_shown_as_text(
    client_at: Clients, connect: Connect, session_factory: sessionmaker[Session]
) -> None:
    with transaction(session_factory) as session:
        publish_agreement(
            session,
            kind=AgreementKind.VISITOR_AUA,
            text='# Rules\n\n<script>alert(1)</script>\n\n[x](javascript:alert(2)) <b onclick="x">b</b>',
            actor="t",
            site_code="westgate",
        )
    connect(VISITOR, "10.98.0.7")
    page = client_at("10.98.0.7").get("/visitor").text
    assert "<script>alert" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert 'href="javascript' not in page
    assert "<b onclick" not in page
    assert "<h2>Rules</h2>" in page


# ---------------------------------------------------------------- forms and words
def test_a_failed_visitor_submit_keeps_the_tick_and_the_typed_name(
    client_at: Clients, connect: Connect
) -> None:
    connect(VISITOR, "10.98.0.8")
    client = client_at("10.98.0.8")
    form = client.get("/visitor").text
    assert " checked" not in form
    again = client.post("/visitor", data=visitor_form(form, visiting=""))
    assert again.status_code == 400
    assert re.search(
        r'<input type="checkbox" id="agree" name="agree" value="yes" required checked>', again.text
    )
    assert 'name="typed_name" required maxlength="200" value="Ada Lovelace"' in again.text


def test_a_failed_staff_submit_keeps_the_tick_and_the_typed_name(
    client_at: Clients, connect: Connect, st_andrews: str
) -> None:
    connect(STAFF_PHONE, "10.98.0.9", site=st_andrews)
    client = client_at("10.98.0.9")
    byod = staff_sign_in(client)
    assert byod.status_code == 200
    again = client.post(
        "/staff/register",
        data={
            "ticket": csrf_of(byod.text, "ticket"),
            "csrf": csrf_of(byod.text),
            "device_name": "",
            "agree": "yes",
            "typed_name": "Jo Smith",
        },
    )
    assert again.status_code == 400
    assert 'value="yes" required checked>' in again.text
    assert 'value="Jo Smith"' in again.text


def test_landing_has_no_jargon_and_the_pupil_page_speaks_to_the_pupil(
    client_at: Clients, connect: Connect, westgate: SimpleNamespace
) -> None:
    connect("1a:2b:3c:4d:5e:99", "10.98.0.10")  # a private (locally administered) address
    landing = main_text(client_at("10.98.0.10").get("/").text)
    assert "private address" not in landing
    assert "Device address" not in landing
    assert "the school office can find this device by the code 1a:2b:3c:4d:5e:99" in landing
    connect(westgate.pupil_phone, "10.98.0.11")
    page = client_at("10.98.0.11").get("/refused")
    assert page.status_code == 200
    text = main_text(page.text)
    assert "Your device cannot join the school network" in text
    assert "devices you bring from home" in text
    assert "ask your teacher" in text
    assert '<a class="button secondary" href="/">Back</a>' in page.text
