"""Visitors are verified, not self-declared (issue 12, `[visitor] verify`): through the real
interfaces: the CLI issues the code reception hands out, the portal (HTTP) takes it, `policy
explain` says what the device gets; a sponsor's email arrives at a real SMTP server on
loopback and its link approves the visitor. SQLite and PostgreSQL."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Callable, Iterator
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlsplit

import pytest
from aiosmtpd.controller import Controller
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from portal.app import create_app
from service.config import load_settings
from service.demo import DEMO_VISITOR_CODE
from service.models import Signature
from service.models.coa import CoaRequest
from service.models.visitors import Sponsorship, VisitorCode
from tests.conftest import REPO, RunCli
from tests.portal.conftest import NOW, PORTAL, Connect
from tests.portal.test_portal_http import visitor_form

Clients = Callable[[str], TestClient]
VISITOR = "3c:22:fb:00:07:01"
SECOND_VISITOR = "3c:22:fb:00:07:02"
AT_NOW = NOW.isoformat()


def use_verify(run_cli: RunCli, tmp_path: Path, verify: str) -> None:
    """Load Westgate's policy with `[visitor] verify` set, as the IT lead would."""
    text = (REPO / "deploy" / "policies" / "westgate.toml").read_text(encoding="utf-8")
    text = re.sub(r"(?m)^verify = .*\n", "", text)
    text = text.replace("[visitor]\n", f'[visitor]\nverify = "{verify}"\n', 1)
    path = tmp_path / f"westgate-{verify}.toml"
    path.write_text(text, encoding="utf-8")
    run_cli("policy", "load", str(path))


def explain(run_cli: RunCli, mac: str) -> dict[str, object]:
    out = run_cli("policy", "explain", mac, "--site", "westgate", "--at", AT_NOW, "--json")
    return dict(json.loads(out.stdout))


def issue(run_cli: RunCli, *args: str) -> str:
    out = run_cli("visitor", "code", *args).stdout
    match = re.search(r"visitor code: ([A-Z0-9]{6})\b", out)
    assert match, out
    return match.group(1)


# ---------------------------------------------------------------- verify = "code"
def test_a_visitor_with_reception_s_code_gets_internet_and_one_without_does_not(
    westgate: SimpleNamespace,
    run_cli: RunCli,
    tmp_path: Path,
    client_at: Clients,
    connect: Connect,
    session_factory: sessionmaker[Session],
) -> None:
    use_verify(run_cli, tmp_path, "code")
    # A pupil taps "I am a visitor" with no code: the form says what is missing.
    connect(westgate.unknown, "10.99.7.1")
    pupil = client_at("10.99.7.1")
    page = pupil.get("/visitor")
    assert 'name="code"' in page.text
    assert "Visitor code from reception" in page.text
    r = pupil.post("/visitor", data=visitor_form(page.text, code=""))
    assert r.status_code == 400
    assert "The visitor code from reception is required." in r.text
    r = pupil.post("/visitor", data=visitor_form(page.text, code="ZZZZZZ"))
    assert r.status_code == 400
    assert "not a visitor code from reception" in r.text
    assert explain(run_cli, westgate.unknown)["access"] == "registration"

    code = issue(run_cli, "--name", "Ada Lovelace", "--valid-for", "8h")
    assert all(ch in "ABCDEFGHJKMNPQRSTUVWXYZ23456789" for ch in code)
    listed = json.loads(run_cli("visitor", "codes", "--json").stdout)
    assert [(c["visitor"], c["kind"], c["issued_by"]) for c in listed] == [
        ("(daily code)", "daily", "test-fixture"),  # the demo school's code for today
        ("Ada Lovelace", "one use", "tester"),
    ]

    connect(VISITOR, "10.99.7.2")
    visitor = client_at("10.99.7.2")
    page = visitor.get("/visitor")
    typed = code[:3].lower() + " " + code[3:].lower()  # as typed off the slip
    r = visitor.post("/visitor", data=visitor_form(page.text, code=typed))
    assert r.status_code == 303, r.text
    assert explain(run_cli, VISITOR)["access"] == "internet"
    with session_factory() as session:
        signature = session.scalar(select(Signature).where(Signature.visiting == "Mrs Patel"))
        assert signature is not None
        assert signature.visitor_code_id is not None
        used = session.get(VisitorCode, signature.visitor_code_id)
        assert used is not None
        assert (used.visitor_name, used.issued_by, used.daily) == ("Ada Lovelace", "tester", False)
        assert used.used_at == NOW
        assert code not in (used.code_sha256,)  # only the hash is stored
        assert session.scalars(select(CoaRequest).where(CoaRequest.mac == VISITOR)).all()

    # Used once, it is spent: another device cannot reuse it, and it is no longer open.
    connect(SECOND_VISITOR, "10.99.7.3")
    other = client_at("10.99.7.3")
    page = other.get("/visitor")
    r = other.post("/visitor", data=visitor_form(page.text, code=code))
    assert r.status_code == 400
    assert "already been used" in r.text
    assert explain(run_cli, SECOND_VISITOR)["access"] == "registration"
    assert "Ada Lovelace" not in run_cli("visitor", "codes").stdout


def test_the_day_s_code_lets_every_visitor_in_until_it_expires(
    westgate: SimpleNamespace,
    run_cli: RunCli,
    tmp_path: Path,
    client_at: Clients,
    connect: Connect,
) -> None:
    use_verify(run_cli, tmp_path, "code")
    code = issue(run_cli, "--daily")
    for mac, ip in ((VISITOR, "10.99.7.4"), (SECOND_VISITOR, "10.99.7.5")):
        connect(mac, ip)
        client = client_at(ip)
        page = client.get("/visitor")
        assert client.post("/visitor", data=visitor_form(page.text, code=code)).status_code == 303
        assert explain(run_cli, mac)["access"] == "internet"
    out = run_cli("visitor", "codes").stdout
    assert "daily" in out


def test_wrong_codes_are_throttled_per_device(
    westgate: SimpleNamespace,
    run_cli: RunCli,
    tmp_path: Path,
    client_at: Clients,
    connect: Connect,
) -> None:
    use_verify(run_cli, tmp_path, "code")
    code = issue(run_cli, "--name", "Ada Lovelace")
    connect(VISITOR, "10.99.7.6")
    client = client_at("10.99.7.6")
    page = client.get("/visitor").text
    for guess in ("AAAAAA", "BBBBBB", "CCCCCC", "DDDDDD", "EEEEEE"):
        r = client.post("/visitor", data=visitor_form(page, code=guess))
        assert "not a visitor code" in r.text
    r = client.post("/visitor", data=visitor_form(page, code=code))
    assert r.status_code == 400
    assert "Too many wrong visitor codes from this device" in r.text
    assert explain(run_cli, VISITOR)["access"] == "registration"


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # no database question in it
def test_visitor_code_command_errors_are_one_line(
    westgate: SimpleNamespace, run_cli: RunCli
) -> None:
    for args, message in (
        ((), "a visitor code needs the visitor's --name (or use --daily)"),
        (("--name", "Ada", "--valid-for", "soon"), "--valid-for 'soon': use a duration"),
        (("--name", "Ada", "--valid-for", "30d"), "--valid-for must be between"),
        (("--name", "Ada", "--site", "nowhere"), "no site 'nowhere'"),
        (("--name", "Ada\x1b[31m"), "contains a control character"),
    ):
        result = run_cli("visitor", "code", *args, check=False)
        assert result.returncode != 0, args
        assert message in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1
        assert "Traceback" not in result.stderr
    listing = run_cli("visitor", "codes").stdout
    assert "Ada" not in listing
    assert "(daily code)" in listing
    assert DEMO_VISITOR_CODE not in listing  # codes are shown once, when issued


# ---------------------------------------------------------------- verify = "sponsor"
class _Inbox:
    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
        del server, session
        self.messages.append(message_from_bytes(envelope.content))  # type: ignore[attr-defined]
        return "250 OK"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def smtp_server() -> Iterator[tuple[int, _Inbox]]:
    """A real SMTP server on loopback (aiosmtpd), collecting what it receives."""
    inbox = _Inbox()
    port = _free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    yield port, inbox
    controller.stop()


def _sponsor_client(
    westgate: SimpleNamespace, session_factory: sessionmaker[Session], smtp_port: int, ip: str
) -> TestClient:
    settings = load_settings(
        database_url=westgate.db_url,
        portal_url=PORTAL,
        secret_key="portal-test-secret",
        portal_rate_limit_per_minute=1000,
        coa_enabled=False,
        smtp_host="127.0.0.1",
        smtp_port=smtp_port,
        smtp_from="wifi@westgate.example",
    )
    app = create_app(settings, session_factory=session_factory, clock=lambda: NOW)
    return TestClient(app, base_url=PORTAL.rstrip("/"), client=(ip, 40000), follow_redirects=False)


def test_a_sponsor_approves_their_visitor_from_the_email(
    westgate: SimpleNamespace,
    run_cli: RunCli,
    tmp_path: Path,
    connect: Connect,
    session_factory: sessionmaker[Session],
    smtp_server: tuple[int, _Inbox],
) -> None:
    port, inbox = smtp_server
    use_verify(run_cli, tmp_path, "sponsor")
    connect(VISITOR, "10.99.7.10")
    with _sponsor_client(westgate, session_factory, port, "10.99.7.10") as visitor:
        page = visitor.get("/visitor")
        assert 'name="sponsor_email"' in page.text
        assert 'name="code"' not in page.text
        # A name that is not a member of staff here is refused on the form.
        r = visitor.post(
            "/visitor", data=visitor_form(page.text, sponsor_email="nobody@example.org")
        )
        assert r.status_code == 400
        assert "could not find a member of staff with that email" in r.text
        assert inbox.messages == []

        r = visitor.post(
            "/visitor", data=visitor_form(page.text, sponsor_email="JSmith@westgate.example")
        )
        assert r.status_code == 303
        assert r.headers["location"] == "/visitor/waiting"
        waiting = visitor.get("/visitor/waiting")
        assert "Waiting for Jo Smith to approve" in waiting.text
        assert explain(run_cli, VISITOR)["access"] == "registration"

        assert len(inbox.messages) == 1
        mail = inbox.messages[0]
        assert mail["To"] == "jsmith@westgate.example"
        assert mail["From"] == "wifi@westgate.example"
        body = mail.get_payload(decode=True).decode()  # type: ignore[union-attr]
        assert "Ada Lovelace (Analytical Engines Ltd)" in body
        link = re.search(r"(http://portal\.westgate\.test/visitor/approve\?token=\S+)", body)
        assert link, body
        url = urlsplit(link.group(1))

        # The sponsor, on their own device (not on the visitor's network).
        sponsor = TestClient(visitor.app, base_url=PORTAL.rstrip("/"), client=("192.0.2.50", 40000))
        opened = sponsor.get(f"{url.path}?{url.query}")
        assert opened.status_code == 200
        assert "Approve Ada Lovelace?" in opened.text
        assert explain(run_cli, VISITOR)["access"] == "registration"  # opening changes nothing
        token = re.search(r'name="token" value="([^"]+)"', opened.text)
        assert token
        approved = sponsor.post("/visitor/approve", data={"token": token.group(1)})
        assert approved.status_code == 200
        assert "Ada Lovelace is approved" in approved.text
        assert explain(run_cli, VISITOR)["access"] == "internet"
        again = sponsor.post("/visitor/approve", data={"token": token.group(1)})
        assert again.status_code == 409
        assert "the link works once" in again.text
        forged = sponsor.post("/visitor/approve", data={"token": "x" * 43})
        assert forged.status_code == 404
        # The visitor's waiting page now moves on.
        assert visitor.get("/visitor/waiting").headers["location"] == "/done"

    with session_factory() as session:
        signature = session.scalar(select(Signature).where(Signature.sponsorship_id.is_not(None)))
        assert signature is not None
        sponsorship = session.get(Sponsorship, signature.sponsorship_id)
        assert sponsorship is not None
        assert sponsorship.sponsor_email == "jsmith@westgate.example"
        assert sponsorship.approved_at == NOW
        assert signature.visiting == "Jo Smith"
        assert signature.recorded_by == "sponsor:jsmith@westgate.example"
        assert session.scalars(select(CoaRequest).where(CoaRequest.mac == VISITOR)).all()


def test_a_sponsor_email_that_cannot_be_sent_says_ask_at_reception(
    westgate: SimpleNamespace,
    run_cli: RunCli,
    tmp_path: Path,
    connect: Connect,
    session_factory: sessionmaker[Session],
) -> None:
    use_verify(run_cli, tmp_path, "sponsor")
    connect(VISITOR, "10.99.7.11")
    with _sponsor_client(westgate, session_factory, _free_port(), "10.99.7.11") as visitor:
        page = visitor.get("/visitor")
        r = visitor.post(
            "/visitor", data=visitor_form(page.text, sponsor_email="jsmith@westgate.example")
        )
        assert r.status_code == 503
        assert "Please ask at reception" in r.text
    assert explain(run_cli, VISITOR)["access"] == "registration"
