"""End to end in a real headless Chromium at a phone viewport, against real servers:
`schoolgate radius serve` (accounting tells it the device's IP, MAB answers its VLAN) and
`schoolgate portal serve`. axe-core runs in each page; screenshots go to tests/artifacts/."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy import select

from service.db import make_engine, make_session_factory, transaction
from service.demo import DEMO_VISITOR_CODE
from service.mac import format_mac
from service.models import NasClient
from tests.conftest import SCHOOLGATE
from tests.helpers import free_tcp_port, wait_for_tcp
from tests.radius.conftest import RadiusServer, start_server

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "tests" / "artifacts" / "portal"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VISITOR = "3c:22:fb:12:34:56"  # unknown to RADIUS until the visitor signs
STAFF = "6a:00:00:77:00:01"  # a private (locally administered) address

pytestmark = [
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed"),
    pytest.mark.skipif(shutil.which("radclient") is None, reason="radclient is not installed"),
]


def radclient(port: int, kind: str, lines: list[str]) -> str:
    result = subprocess.run(
        ["radclient", "-x", "-r", "2", "-t", "2", f"127.0.0.1:{port}", kind, "testing123"],
        input="\n".join(lines) + "\n",
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return result.stdout + result.stderr


def mab(port: int, mac: str) -> str:
    return radclient(
        port,
        "auth",
        [
            f'User-Name = "{format_mac(mac, "bare")}"',
            f'User-Password = "{format_mac(mac, "bare")}"',
            f'Calling-Station-Id = "{format_mac(mac, "hyphen-upper")}"',
            "Service-Type = Call-Check",
            "Message-Authenticator = 0x00",
        ],
    )


def accounting(port: int, status: str, mac: str, session_id: str) -> None:
    out = radclient(
        port,
        "acct",
        [
            f"Acct-Status-Type = {status}",
            f'Acct-Session-Id = "{session_id}"',
            f'Calling-Station-Id = "{format_mac(mac, "hyphen-upper")}"',
            f'User-Name = "{format_mac(mac, "bare")}"',
            "Framed-IP-Address = 127.0.0.1",  # the browser below reaches the portal from here
            'Called-Station-Id = "AA-BB-CC-DD-EE-FF:Westgate-Guest"',
        ],
    )
    assert "Received Accounting-Response" in out, out


@pytest.fixture(scope="session")
def axe_source(tmp_path_factory: pytest.TempPathFactory) -> str:
    """axe-core from the npm registry into a temp dir (never committed)."""
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed")
    where = tmp_path_factory.mktemp("axe")
    subprocess.run(
        ["npm", "install", "--silent", "--prefix", str(where), "axe-core@4"],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return (where / "node_modules" / "axe-core" / "axe.min.js").read_text()


@pytest.fixture
def servers(
    westgate: SimpleNamespace, tmp_path: Path, run_cli: object
) -> Iterator[tuple[RadiusServer, str, socket.socket]]:
    # Westgate's policy without its working-day rule and with a fixed 8-hour AUA, so the
    # answer does not depend on the hour the test runs.
    text = (ROOT / "deploy/policies/westgate.toml").read_text()
    # Staff devices get the internet here (Westgate's own "none" refuses their registration
    # up front, issue 12), so the staff journey below can register one.
    text = (
        text.split("[[rules]]")[0]
        .replace('aua_valid_until = "end_of_day"', 'aua_valid_until = "8h"')
        .replace('staff_owned = "none"', 'staff_owned = "internet"')
    )
    policy = tmp_path / "westgate-anytime.toml"
    policy.write_text(text)
    run_cli("policy", "load", str(policy))  # type: ignore[operator]
    # The demo NAS's CoA port, moved to a free port where this test listens as the NAS would.
    nas_socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    nas_socket.bind(("127.0.0.1", 0))
    nas_socket.settimeout(5)
    engine = make_engine(westgate.db_url)
    with transaction(make_session_factory(engine)) as session:
        for nas in session.scalars(select(NasClient)):
            nas.coa_port = nas_socket.getsockname()[1]
    engine.dispose()
    radius = start_server(westgate.db_url, tmp_path)
    port = free_tcp_port()
    portal_url = f"http://127.0.0.1:{port}/"
    env = {
        **os.environ,
        "SCHOOLGATE_DATABASE_URL": westgate.db_url,
        "SCHOOLGATE_PORTAL_URL": portal_url,
        "SCHOOLGATE_SECRET_KEY": "browser-test",
    }
    log = (tmp_path / "portal.log").open("w")
    portal = subprocess.Popen(
        [*SCHOOLGATE, "portal", "serve", "--host", "127.0.0.1", "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=tmp_path,
    )
    try:
        wait_for_tcp(port)
        yield radius, portal_url, nas_socket
    finally:
        nas_socket.close()
        portal.terminate()
        portal.wait(timeout=15)
        log.close()
        radius.stop()


def check_page(page: object, axe: str, name: str) -> None:
    """Screenshot, then axe-core: no serious or critical violations of WCAG 2.x AA."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)  # type: ignore[attr-defined]
    page.evaluate(axe)  # type: ignore[attr-defined]
    result = page.evaluate(  # type: ignore[attr-defined]
        "() => axe.run(document, {runOnly: {type: 'tag', values: "
        "['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'wcag22aa']}})"
    )
    serious = [v for v in result["violations"] if v["impact"] in ("serious", "critical")]
    assert not serious, [(v["id"], v["help"], [n["target"] for n in v["nodes"]]) for v in serious]
    width = page.evaluate("() => document.documentElement.scrollWidth")  # type: ignore[attr-defined]
    assert width <= 320, f"{name} scrolls sideways at 320 px ({width})"


def test_visitor_then_staff_in_a_phone_browser(
    servers: tuple[RadiusServer, str, socket.socket],
    axe_source: str,
    run_cli: object,
    westgate: SimpleNamespace,
) -> None:
    from playwright.sync_api import sync_playwright

    radius, portal_url, nas_socket = servers
    port = portal_url.rsplit(":", 1)[1].strip("/")
    assert re.search(r'Tunnel-Private-Group-Id(:0)? = "99"', mab(radius.auth_port, VISITOR))
    accounting(radius.acct_port, "Start", VISITOR, "browser-visitor")

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(
            viewport={"width": 320, "height": 640},
            is_mobile=True,
            user_agent="SchoolgateTestPhone/1.0",
        )
        page = context.new_page()
        # The OS probe, on another host name: a plain-HTTP redirect to the portal.
        page.goto(f"http://localhost:{port}/generate_204")
        assert page.url == portal_url
        check_page(page, axe_source, "01-landing")
        page.get_by_role("link", name="I am a visitor").click()
        check_page(page, axe_source, "02-visitor-form")
        page.get_by_role("button", name="Sign and connect").click()  # empty: clear messages
        page.get_by_label("Your name", exact=True).fill("Ada Lovelace")
        page.get_by_label("Organisation (optional)").fill("Analytical Engines Ltd")
        page.get_by_label("Whom you are visiting").fill("Mrs Patel")
        page.get_by_label("Visitor code from reception").fill(DEMO_VISITOR_CODE)
        page.get_by_label("I have read and agree").check()
        page.get_by_label("Type your name to sign").fill("Ada Lovelace")
        page.get_by_role("button", name="Sign and connect").click()
        page.wait_for_url(re.compile(r"/done"))
        assert "internet" in page.inner_text("main")
        check_page(page, axe_source, "03-visitor-done")

        # The NAS is told at once (RFC 5176 CoA-Request 43 or Disconnect-Request 40).
        datagram, _ = nas_socket.recvfrom(4096)
        assert datagram[0] in (40, 43), datagram[:4]

        # RADIUS now answers the internet VLAN for that MAC (its snapshot polls for changes).
        import time

        deadline = time.monotonic() + 10
        answer = ""
        while time.monotonic() < deadline:
            answer = mab(radius.auth_port, VISITOR)
            if re.search(r'Tunnel-Private-Group-Id(:0)? = "30"', answer):
                break
            time.sleep(0.3)
        assert re.search(r'Tunnel-Private-Group-Id(:0)? = "30"', answer), answer
        # and the probe now says the network is open
        # (Chromium aborts a navigation to a 204, so ask as the OS's probe would.)
        response = page.request.get(f"http://localhost:{port}/generate_204", max_redirects=0)
        assert response.status == 204

        # A member of staff on a phone with a private address.
        accounting(radius.acct_port, "Stop", VISITOR, "browser-visitor")
        accounting(radius.acct_port, "Start", STAFF, "browser-staff")
        page.goto(f"http://localhost:{port}/hotspot-detect.html")
        page.get_by_role("link", name="I am a member of staff").click()
        check_page(page, axe_source, "04-staff-signin")
        page.get_by_label("Username or email").fill("jsmith")
        page.get_by_label("Password", exact=True).fill("demo-password")
        page.get_by_role("button", name="Sign in").click()
        assert "private Wi-Fi address" in page.inner_text("main")
        check_page(page, axe_source, "05-staff-byod")
        page.get_by_label("A name for this device").fill("Jo's phone")
        page.get_by_label("I have read and agree").check()
        page.get_by_label("Type your name to sign").fill("Jo Smith")
        page.get_by_role("button", name="Sign and ask for approval").click()
        page.wait_for_url(re.compile(r"/done"))
        assert "waiting for approval" in page.inner_text("main")
        check_page(page, axe_source, "06-staff-pending")

        # A pupil's phone is told the rule, kindly.
        accounting(radius.acct_port, "Stop", STAFF, "browser-staff")
        accounting(radius.acct_port, "Start", westgate.pupil_phone, "browser-pupil")
        page.goto(portal_url)
        assert "hand their phone in" in page.inner_text("main")
        check_page(page, axe_source, "07-pupil-refused")
        browser.close()

    shown = run_cli("device", "show", STAFF, "--json")  # type: ignore[operator]
    assert '"pending"' in shown.stdout
    run_cli("device", "approve", STAFF)  # type: ignore[operator]
    assert '"active"' in run_cli("device", "show", STAFF, "--json").stdout  # type: ignore[operator]
    exported = run_cli("export", "signatures", "--format", "jsonl")  # type: ignore[operator]
    assert "Ada Lovelace" in exported.stdout
    assert "Jo Smith" in exported.stdout
