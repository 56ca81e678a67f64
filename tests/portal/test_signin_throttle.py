"""Issue 11 item 7, over HTTP to the portal app: wrong passwords slow a source and an account
down (exponential backoff) but never lock the real owner out, and an unknown username cannot
be told from a wrong password (same page, same status, same argon2 work)."""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from portal.app import create_app
from service.config import load_settings
from tests.portal.conftest import NOW, PORTAL, Connect
from tests.portal.test_portal_http import csrf_of

ATTACKER_PHONE, ATTACKER_IP = "3c:22:fb:00:00:51", "10.99.0.51"
OWNER_PHONE, OWNER_IP = "3c:22:fb:00:00:52", "10.99.0.52"
PROBER_PHONE, PROBER_IP = "3c:22:fb:00:00:53", "10.99.0.53"


class Clock:
    """The portal's injectable clock, moved on by the test."""

    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def at(
    westgate: SimpleNamespace, session_factory: sessionmaker[Session], clock: Clock
) -> Iterator[Callable[[str], TestClient]]:
    settings = load_settings(
        database_url=westgate.db_url,
        portal_url=PORTAL,
        secret_key="portal-test-secret",
        portal_rate_limit_per_minute=1000,
        coa_enabled=False,
    )
    app = create_app(settings, session_factory=session_factory, clock=clock)
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


def sign_in(client: TestClient, username: str, password: str) -> tuple[int, str, str | None]:
    """POST the staff sign-in form: (status, the page without its per-request tokens,
    Retry-After)."""
    page = client.get("/staff")
    assert page.status_code == 200
    r = client.post(
        "/staff", data={"csrf": csrf_of(page.text), "username": username, "password": password}
    )
    return r.status_code, re.sub(r'value="[^"]*"', 'value=""', r.text), r.headers.get("retry-after")


def test_an_attacker_slows_the_account_down_but_never_locks_the_owner_out(
    at: Callable[[str], TestClient],
    connect: Connect,
    clock: Clock,
    westgate: SimpleNamespace,
    st_andrews: str,
) -> None:
    # At St Andrew's: Westgate refuses staff registration before any form (issue 12).
    connect(ATTACKER_PHONE, ATTACKER_IP, site=st_andrews)
    connect(OWNER_PHONE, OWNER_IP, site=st_andrews)
    attacker, owner = at(ATTACKER_IP), at(OWNER_IP)
    for _ in range(5):  # the free attempts
        status, page, _ = sign_in(attacker, "jsmith", "guess")
        assert status == 400
        assert "that username or password is not right" in page
    status, page, retry = sign_in(attacker, "jsmith", westgate.staff_password)
    assert (status, retry) == (429, "1")  # even the right password waits: no check is made
    assert "try again in 1 second" in page
    assert "Register your device" not in page
    # The teacher, on their own phone, is slowed for a second, not locked out (this used to
    # lock the account for 15 minutes).
    assert sign_in(owner, "jsmith", westgate.staff_password)[0] == 429
    clock.advance(1.5)
    status, page, _ = sign_in(owner, "jsmith", westgate.staff_password)
    assert status == 200
    assert "Register your device, Jo Smith" in page

    # The attacker keeps going: every further failure doubles their device's wait
    # (2, 4, 8 ... s, up to 15 minutes), while the account's own wait stops at a minute.
    waits: list[int] = []
    for _ in range(12):
        status, _, retry = sign_in(attacker, "jsmith", "guess")
        while status == 429:
            assert retry is not None
            waits.append(int(retry))
            clock.advance(int(retry))
            status, _, retry = sign_in(attacker, "jsmith", "guess")
        assert status == 400
    assert waits[:6] == [2, 4, 8, 16, 32, 64]
    assert max(waits) <= 900
    status, _, retry = sign_in(attacker, "jsmith", "guess")
    assert status == 429
    assert int(retry or 0) >= 600  # slowed hard: one guess per ten minutes and more
    # The owner, right after all that, waits at most the account cap, then signs in.
    status, _, retry = sign_in(owner, "jsmith", westgate.staff_password)
    if status == 429:
        assert int(retry or 0) <= 60
        clock.advance(int(retry or 0))
        status, _, _ = sign_in(owner, "jsmith", westgate.staff_password)
    assert status == 200
    # ... and the attacker's device is still waiting.
    assert sign_in(attacker, "jsmith", westgate.staff_password)[0] == 429


def test_an_unknown_username_looks_exactly_like_a_wrong_password(
    at: Callable[[str], TestClient], connect: Connect
) -> None:
    connect(ATTACKER_PHONE, ATTACKER_IP)
    connect(PROBER_PHONE, PROBER_IP)
    known, unknown = at(ATTACKER_IP), at(PROBER_IP)
    for _ in range(5):
        wrong = sign_in(known, "jsmith", "not-the-password")
        nobody = sign_in(unknown, "nosuchteacher", "not-the-password")
        assert wrong[0] == nobody[0] == 400
        assert wrong[1].replace("jsmith", "X") == nobody[1].replace("nosuchteacher", "X")
    # After the free attempts both are throttled the same way (an unknown account never
    # showed "locked", which told a real username from a made-up one).
    wrong = sign_in(known, "jsmith", "not-the-password")
    nobody = sign_in(unknown, "nosuchteacher", "not-the-password")
    assert wrong[0] == nobody[0] == 429
    assert wrong[2] == nobody[2] == "1"
    assert wrong[1].replace("jsmith", "X") == nobody[1].replace("nosuchteacher", "X")


def test_an_unknown_username_costs_the_same_argon2_work(
    at: Callable[[str], TestClient], connect: Connect, clock: Clock
) -> None:
    """Timing: an unknown user is checked against a dummy argon2 hash, so the answer takes as
    long as a wrong password (it used to come back without any argon2 work)."""
    connect(PROBER_PHONE, PROBER_IP)
    prober = at(PROBER_IP)

    def timed(username: str) -> float:
        clock.advance(3600)  # out of the throttle's way: this measures the password check
        connect(PROBER_PHONE, PROBER_IP, at=clock())  # the NAS's Interim-Update: still here
        page = prober.get("/staff")
        started = time.perf_counter()
        r = prober.post(
            "/staff",
            data={"csrf": csrf_of(page.text), "username": username, "password": "wrong-one"},
        )
        elapsed = time.perf_counter() - started
        assert r.status_code == 400
        return elapsed

    timed("jsmith")  # warm up (the dummy hash is made once)
    timed("nosuchteacher")
    known: list[float] = []
    unknown: list[float] = []
    for _ in range(5):  # interleaved, so a busy machine slows both alike
        known.append(timed("jsmith"))
        unknown.append(timed("nosuchteacher"))
    # (before: an unknown user was answered without any argon2 work, some 40 times faster)
    ratio = statistics.median(unknown) / statistics.median(known)
    assert 0.5 < ratio < 2, (unknown, known)
