"""Issue 11 item 7 for RADIUS PAP, over real UDP to `schoolgate radius serve`: the portal's
throttle (`service/throttle.py`) per NAS + Calling-Station-Id and per account. A throttled
request is an Access-Reject with no password check (not even the right password gets in); the
real owner on another device waits a second, not a lockout; an unknown user costs the same
argon2 work as a wrong password."""

from __future__ import annotations

import statistics
import time

from pyrad.packet import AccessReject

from service.models import DecisionRecord
from tests.radius.conftest import pap_request
from tests.radius.test_server import rows, wait_for

ATTACKER_PHONE = "02:00:00:00:66:01"
OWNER_PHONE = "02:00:00:00:66:02"
THROTTLED = "Too many failed sign-ins from this device or for this account: try again later."
RIGHT = "A member of staff's own device"  # Westgate refuses the device, but the password was right


def test_pap_failures_are_throttled_per_device_and_account(radius_server, westgate) -> None:
    client = radius_server.client(timeout=5.0)

    def pap(password: str, phone: str, username: str = "jsmith") -> str:
        reply = client.SendPacket(pap_request(client, username, password, phone))
        assert reply.code == AccessReject  # (Westgate refuses staff-owned phones anyway)
        return str(reply["Reply-Message"][0])

    for _ in range(5):
        assert pap("a-guess", ATTACKER_PHONE) == "Wrong username or password."
    # The sixth attempt from that phone is refused before any check, the right password too.
    started = time.perf_counter()
    assert pap(westgate.staff_password, ATTACKER_PHONE) == THROTTLED
    throttled_seconds = time.perf_counter() - started
    # The owner's own phone: slowed for a second (the account's backoff), then in.
    assert pap(westgate.staff_password, OWNER_PHONE) == THROTTLED
    time.sleep(1.2)
    assert pap(westgate.staff_password, OWNER_PHONE).startswith(RIGHT)
    # The attacker's phone: its own backoff runs on (1 s after five failures, then 2, 4 ...).
    assert pap("another-guess", ATTACKER_PHONE) == "Wrong username or password."
    assert pap(westgate.staff_password, ATTACKER_PHONE) == THROTTLED
    # A throttled answer does no argon2 work: it is much quicker than a checked one.
    started = time.perf_counter()
    pap("a-guess", "02:00:00:00:66:09", username="someone-else")
    checked_seconds = time.perf_counter() - started
    assert throttled_seconds < checked_seconds / 2, (throttled_seconds, checked_seconds)

    # The decision log shows the throttled refusals for the operator.
    assert wait_for(lambda: len(rows(westgate.db_url, DecisionRecord, rule="pap.throttled")) >= 3)


def test_pap_unknown_user_costs_the_same_as_a_wrong_password(radius_server, westgate) -> None:
    client = radius_server.client(timeout=5.0)

    def timed(username: str, phone: str) -> float:
        started = time.perf_counter()
        reply = client.SendPacket(pap_request(client, username, "wrong-password", phone))
        elapsed = time.perf_counter() - started
        assert reply.code == AccessReject
        assert reply["Reply-Message"] == ["Wrong username or password."]
        return elapsed

    # Each from its own phone and under the free attempts, so the throttle stays out of it.
    timed("jsmith", "02:00:00:00:67:00")
    timed("nobody-here", "02:00:00:00:67:01")
    known: list[float] = []
    unknown: list[float] = []
    for i in range(4):  # interleaved, so a busy machine slows both alike
        known.append(timed("jsmith", f"02:00:00:00:68:0{i}"))
        unknown.append(timed(f"nobody{i}", f"02:00:00:00:69:0{i}"))
    # (before: an unknown user was answered without any argon2 work, hundreds of times faster)
    ratio = statistics.median(unknown) / statistics.median(known)
    assert 0.5 < ratio < 2, (unknown, known)
