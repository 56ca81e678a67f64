"""The authorizer's decision cache answers exactly what `decide()` answers, at every instant.

In-process, no database: policies with time windows, days and places (Chancery, SPT), devices
of every class and state (signatures about to expire, pending, revoked, owner gone, an
exception), asked again and again through one `Authorizer` while the clock moves across rule
boundaries, days and signature expiries. Each answer and its decision-log row must be the
engine's fresh decision for that instant: same access, VLAN, reason, rule, place and
Session-Timeout.
"""

from __future__ import annotations

import ipaddress
import math
import random
from datetime import UTC, datetime
from pathlib import Path

import pytest

from radius import authorizer as authorizer_module
from radius import codec
from radius.authorizer import Authorizer
from radius.counters import Counters
from radius.decision_cache import DECISION_TTL
from radius.snapshot import UNCACHED, build_state
from service.enums import Access, DeviceClass, DeviceStatus, NasVendor
from service.facts import NasInfo, Snapshot
from service.mac import format_mac
from service.policy import AccessRequest, DeviceFacts, Grant, decide, load_policy_text

REPO = Path(__file__).resolve().parents[2]
SECRET = b"testing123"
NAS = ("127.0.0.1", 40000)
# Monday 2 March 2026, 06:00 UTC; the clock then runs for a week.
START = datetime(2026, 3, 2, 6, 0, tzinfo=UTC).timestamp()


def _devices(start: float) -> dict[str, DeviceFacts]:
    out: dict[str, DeviceFacts] = {}
    n = 0

    def add(cls: DeviceClass, status: DeviceStatus = DeviceStatus.ACTIVE, **facts: object) -> None:
        nonlocal n
        n += 1
        mac = f"02:00:00:00:{n >> 8:02x}:{n & 255:02x}"
        out[mac] = DeviceFacts(mac=mac, device_class=cls, status=status, **facts)  # type: ignore[arg-type]

    for cls in DeviceClass:
        add(cls)
        add(cls)  # a second device with the same facts shares the cached decision
        add(cls, DeviceStatus.PENDING)
        add(cls, DeviceStatus.REVOKED, status_reason="left in a taxi")
        add(cls, owner_active=False)
    for offset in (-600.0, 3 * 3600.0, 9 * 3600.0 + 0.25, 26 * 3600.0, 4 * 86400.0):
        add(DeviceClass.VISITOR_OWNED, aua_valid_until=start + offset)
        add(DeviceClass.STAFF_OWNED, byod_valid_until=start + offset)
        add(DeviceClass.STAFF_OWNED, DeviceStatus.PENDING, byod_valid_until=start + offset)
    grant = Grant(Access.FULL, start + 7200, start + 30 * 3600, "trip", "the head")
    add(DeviceClass.LEARNER_OWNED, grants=(grant,))
    add(DeviceClass.VISITOR_OWNED, aua_valid_until=start + 86400, grants=(grant,))
    return out


def _authorizer(policy_file: str) -> tuple[Authorizer, list[tuple[object, ...]], Snapshot]:
    policy = load_policy_text((REPO / "deploy" / "policies" / policy_file).read_text(), policy_file)
    snapshot = Snapshot(
        version=1,
        devices=_devices(START),
        policies={policy.site: policy},
        nas_clients=(
            NasInfo(
                id=1,
                site_code=policy.site,
                name="cache-nas",
                network=ipaddress.ip_network("127.0.0.1/32"),
                secret=SECRET.decode(),
                vendor=NasVendor.ARUBA,
                coa_port=3799,
                require_message_authenticator=True,
            ),
        ),
    )
    rows: list[tuple[object, ...]] = []
    authorizer = Authorizer(
        build_state(snapshot), counters=Counters(), writer=None, log_decision=rows.append
    )
    return authorizer, rows, snapshot


def _instants(rng: random.Random) -> list[float]:
    """A week of instants: random steps, and every minute edge of a school day."""
    out: list[float] = []
    ts = START
    while ts < START + 7 * 86400:
        out.append(ts)
        ts += rng.choice((0.5, 7.25, 59.999999, 61.0, 600.0, 1799.0, 3601.5))
        ts = round(ts, 6)
    day = datetime(2026, 3, 3, tzinfo=UTC).timestamp()
    for minute in range(7 * 60, 16 * 60):
        for delta in (-0.5, -0.000001, 0.0, 0.000001, 0.5):
            out.append(round(day + minute * 60 + delta, 6))
    out.append(START + 9 * 3600 + 0.25)  # a visitor's agreement expiring to the microsecond
    return sorted(out)


def _edges() -> list[float]:
    """Just before, at and after the rule edges of Chancery and SPT on a Tuesday (London is on
    UTC in March), and Friday to Saturday midnight (the days change)."""
    day = datetime(2026, 3, 3, tzinfo=UTC).timestamp()
    minutes = (8 * 60 + 30, 8 * 60 + 45, 10 * 60 + 30, 10 * 60 + 45, 12 * 60 + 15, 13 * 60 + 15)
    minutes += (15 * 60 + 15, 15 * 60 + 30, 3 * 1440 + 24 * 60)
    return [
        round(day + minute * 60 + delta, 6)
        for minute in minutes
        for delta in (-30.0, -0.000001, 0.0, 0.25, 30.0)
    ]


@pytest.mark.parametrize("policy_file", ["chancery.toml", "spt.toml", "westgate.toml"])
def test_cached_answers_are_the_engines_at_every_instant(
    policy_file: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    authorizer, rows, snapshot = _authorizer(policy_file)
    policy = next(iter(snapshot.policies.values()))
    clock = [START]
    monkeypatch.setattr(authorizer_module, "_time", lambda: clock[0])
    decided = [0]

    def counting_decide(*args: object) -> object:
        decided[0] += 1
        return decide(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(authorizer_module, "decide", counting_decide)
    rng = random.Random(policy_file)
    macs = [*snapshot.devices, "06:99:00:00:00:01"]
    places = [
        ("AP-STAFFROOM-01", None),
        ("AP-HALL-03", "AA-BB-CC-00-11-22:Westgate-Pupils"),
        ("AP-SLT-02", None),
        (None, None),
    ]
    asked = 0
    # Random devices at random instants, then every device and place at each rule edge.
    asks = [(ts, rng.choice(macs), rng.choice(places)) for ts in _instants(rng)]
    asks += [(ts, mac, place) for ts in _edges() for mac in macs for place in places]
    for identifier, (ts, mac, (nas_identifier, called)) in enumerate(asks):
        clock[0] = ts
        attrs = [
            codec.attr_text(codec.USER_NAME, format_mac(mac, "bare")),
            codec.attr_text(codec.CALLING_STATION_ID, format_mac(mac, "hyphen-upper")),
            codec.attr_int(codec.SERVICE_TYPE, codec.SERVICE_TYPE_CALL_CHECK),
        ]
        if nas_identifier:
            attrs.append(codec.attr_text(codec.NAS_IDENTIFIER, nas_identifier))
        if called:
            attrs.append(codec.attr_text(codec.CALLED_STATION_ID, called))
        expected = decide(
            AccessRequest(mac, nas_identifier, called),
            snapshot.devices.get(mac),
            policy,
            datetime.fromtimestamp(ts, UTC),
        )
        want = (
            expected.location,
            expected.access.value,
            expected.vlan,
            expected.reason,
            expected.rule,
            expected.session_timeout,
        )
        for again in range(2):  # the second time from the cache, when the answer is cacheable
            request = codec.encode_request(
                codec.ACCESS_REQUEST, (2 * identifier + again) & 0xFF, b"".join(attrs), SECRET
            )
            reply = authorizer.handle_auth(request, NAS)
            asked += 1
            assert isinstance(reply, bytes)
            row = rows[-1]
            assert (row[6], row[7], row[8], row[9], row[10], row[11]) == want, (
                datetime.fromtimestamp(ts, UTC),
                mac,
            )
            packet = codec.decode(reply)
            assert packet.ma_offset == 20
            assert codec.verify_response_authenticator(
                packet, codec.decode(request).authenticator, SECRET
            )
            assert packet.code == (
                codec.ACCESS_REJECT if expected.access is Access.NONE else codec.ACCESS_ACCEPT
            )
            assert packet.integer(codec.SESSION_TIMEOUT) == expected.session_timeout
    assert decided[0] < 0.6 * asked  # the cache answered the second asks, and more


def test_the_cache_keeps_only_answers_the_engine_says_are_shared(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A device with an exception gets a `facts_key` of None from the engine: answered, never
    stored. The others are stored until the engine's `valid_until` (and the backstop)."""
    authorizer, _, snapshot = _authorizer("spt.toml")
    monkeypatch.setattr(authorizer_module, "_time", lambda: START + 4 * 3600)
    nas = authorizer.state.exact[NAS[0]]
    for identifier, (mac, device) in enumerate(snapshot.devices.items()):
        attrs = codec.attr_text(codec.CALLING_STATION_ID, format_mac(mac, "hyphen-upper"))
        attrs += codec.attr_int(codec.SERVICE_TYPE, codec.SERVICE_TYPE_CALL_CHECK)
        request = codec.encode_request(codec.ACCESS_REQUEST, identifier & 0xFF, attrs, SECRET)
        assert isinstance(authorizer.handle_auth(request, NAS), bytes)
        profile = authorizer.state.profiles[mac]
        answer = nas.decisions.get((profile, None, None, None))
        if device.grants:
            assert profile == UNCACHED
            assert answer is None
        else:
            assert answer is not None
            expected = decide(
                AccessRequest(mac),
                device,
                snapshot.policies["spt"],
                datetime.fromtimestamp(START + 4 * 3600, UTC),
            )
            assert answer[0] == min(
                expected.valid_until or math.inf, START + 4 * 3600 + DECISION_TTL
            )
