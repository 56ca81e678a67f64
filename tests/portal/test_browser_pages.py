"""Issue 12 in a real headless Chromium on a phone-sized viewport, against `schoolgate portal
serve`: the agreement is part of the page (no inner scroll box, real `<h2>` headings), and the
done page says the access in words, in the right style. Screenshots go to a temp dir."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy.orm import Session, sessionmaker

from service.db import transaction
from service.demo import DEMO_VISITOR_CODE
from service.models import AccountingSession
from tests.helpers import portal_server

CHROMIUM = "/usr/bin/chromium"
VISITOR = "3c:22:fb:00:14:01"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed"),
]

# Every element that scrolls on its own (overflow auto/scroll and more content than room).
INNER_SCROLLERS = """() => [...document.querySelectorAll('main *')].filter(e => {
  const s = getComputedStyle(e);
  return /(auto|scroll)/.test(s.overflowY + s.overflow) && e.scrollHeight > e.clientHeight + 1;
}).map(e => e.tagName + '.' + e.className)"""


@pytest.fixture
def portal_url(
    westgate: SimpleNamespace,
    session_factory: sessionmaker[Session],
    tmp_path: Path,
    run_cli: object,
) -> Iterator[str]:
    # A fixed 8-hour agreement, so the done page does not depend on the hour the test runs.
    root = Path(__file__).resolve().parents[2]
    policy = tmp_path / "westgate-8h.toml"
    policy.write_text(
        (root / "deploy/policies/westgate.toml")
        .read_text()
        .replace('aua_valid_until = "end_of_day"', 'aua_valid_until = "8h"')
    )
    run_cli("policy", "load", str(policy))  # type: ignore[operator]
    now = datetime.now(UTC)
    with transaction(session_factory) as session:  # what RADIUS accounting would store
        session.add(
            AccountingSession(
                nas_ip="127.0.0.1",
                nas_identifier="AP-HALL-1",
                site_code="westgate",
                mac=VISITOR,
                framed_ip="127.0.0.1",
                acct_session_id="browser-pages",
                called_station_id="AP-HALL-1",
                started_at=now,
                updated_at=now,
            )
        )
    with portal_server(
        westgate.db_url, tmp_path, {"SCHOOLGATE_SECRET_KEY": "b" * 48}, clean=True
    ) as url:
        yield url


def test_agreement_and_done_page_on_a_phone(portal_url: str) -> None:
    from playwright.sync_api import sync_playwright

    shots = Path(os.environ.get("SCHOOLGATE_SCREENSHOTS", "/tmp/schoolgate-screenshots"))
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"]
        )
        page = browser.new_context(
            viewport={"width": 360, "height": 640}, is_mobile=True
        ).new_page()
        page.goto(portal_url + "visitor")
        page.screenshot(path=str(shots / "visitor-agreement.png"), full_page=True)
        assert page.evaluate(INNER_SCROLLERS) == []
        agreement = page.locator("section.agreement")
        box = agreement.bounding_box()
        assert box is not None
        assert box["height"] > 640  # the whole text in the page flow, not a 318-px box
        headings = agreement.locator("h2")
        assert headings.count() >= 1
        assert headings.first.inner_text() == "Visitor and community user acceptable use agreement"
        assert agreement.locator("ul > li").count() >= 3
        assert "# " not in agreement.inner_text()
        width = page.evaluate("() => document.documentElement.scrollWidth")
        assert width <= 360

        page.get_by_label("Your name", exact=True).fill("Ada Lovelace")
        page.get_by_label("Whom you are visiting").fill("Mrs Patel")
        page.get_by_label("I have read and agree").check()
        page.get_by_label("Visitor code from reception").fill(DEMO_VISITOR_CODE)
        page.get_by_label("Type your name to sign").fill("Someone Else")  # a mistake
        page.get_by_role("button", name="Sign and connect").click()
        assert page.get_by_label("I have read and agree").is_checked()  # kept after the error
        assert page.get_by_label("Type your name to sign").input_value() == "Someone Else"
        page.get_by_label("Type your name to sign").fill("Ada Lovelace")
        page.get_by_label("Visitor code from reception").fill(DEMO_VISITOR_CODE)
        page.get_by_role("button", name="Sign and connect").click()
        page.wait_for_url(re.compile(r"/done"))
        page.screenshot(path=str(shots / "visitor-done.png"), full_page=True)
        main = page.inner_text("main")
        assert re.search(r"Internet now until \d\d:\d\d", main), main
        assert "Why: A visitor's own device gets internet-only access" in main
        status = page.locator("#access")
        assert status.get_attribute("class") == "ok"
        browser.close()
