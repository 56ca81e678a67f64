"""Issue 13, many nodes: two `portal serve` processes on one database share the staff
sign-in throttle (`signin_failures`): wrong passwords through portal A make portal B refuse
the next attempt (429, Retry-After) without checking the password; after the wait the right
password works there and resets the account. On PostgreSQL and on SQLite (a school box may
run two portal processes on one file)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from service.db import transaction
from service.models.throttle import SigninFailure
from tests.helpers import portal_server
from tests.portal.conftest import Connect

PHONE = "3c:22:fb:00:13:31"


def sign_in(url: str, password: str) -> httpx.Response:
    with httpx.Client(base_url=url, timeout=30) as client:
        page = client.get("staff")
        assert page.status_code == 200, page.text
        match = re.search(r'name="csrf" value="([^"]*)"', page.text)
        assert match
        return client.post(
            "staff", data={"csrf": match.group(1), "username": "jsmith", "password": password}
        )


@pytest.fixture
def two_portals(
    westgate: SimpleNamespace, st_andrews: str, connect: Connect, tmp_path: Path
) -> Iterator[tuple[str, str]]:
    connect(PHONE, "127.0.0.1", site=st_andrews)
    connect(PHONE, "127.0.0.1", at=datetime.now(UTC))  # seen just now
    env = {"SCHOOLGATE_PORTAL_LOGIN_MAX_FAILURES": "2"}  # waits 1, 2, 4 s after the 2nd
    with (
        portal_server(westgate.db_url, tmp_path, env) as first,
        portal_server(westgate.db_url, tmp_path, env) as second,
    ):
        yield first, second


def test_failures_through_one_portal_throttle_the_other(
    two_portals: tuple[str, str],
    westgate: SimpleNamespace,
    session_factory: sessionmaker[Session],
) -> None:
    first, second = two_portals
    # Wrong passwords through portal A, waiting out each backoff, until A itself says wait
    # at least 3 s (a margin: argon2 on a loaded machine takes a while, and the wait runs
    # from the charge, made before the check).
    retry = 0
    for _ in range(10):
        wrong = sign_in(first, "a-guess")
        if wrong.status_code == 429:
            retry = int(wrong.headers["retry-after"])
            if retry >= 3:
                break
            time.sleep(retry)
        else:
            assert wrong.status_code == 400, wrong.text[-500:]
    assert retry >= 3
    # Portal B: the right password is refused without being checked.
    refused = sign_in(second, westgate.staff_password)
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["retry-after"]) <= retry
    assert "Register your device" not in refused.text
    time.sleep(int(refused.headers["retry-after"]) + 0.2)
    signed = sign_in(second, westgate.staff_password)
    assert signed.status_code == 200, signed.text[-500:]
    assert "Register your device, Jo Smith" in signed.text
    with transaction(session_factory) as session:  # the account starts again
        keys = set(session.scalars(select(SigninFailure.key)))
    assert "account:jsmith" not in keys
    assert "source:ip:127.0.0.1" in keys  # the device gave one failure back, not all
