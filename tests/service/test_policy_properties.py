"""Properties of the engine over generated policies, devices and times (hypothesis)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from service.enums import LEVELS, Access, DeviceClass, DeviceStatus
from service.policy import NO_EXPIRY, AccessRequest, Decision, DeviceFacts, Grant, Rule, decide
from service.policy.loader import glob_regex
from service.policy.model import LocationSpec, SitePolicy

LOCATIONS = ("staffroom", "hall", "changing-rooms")
NAS_IDS = ("AP-STAFFROOM-1", "AP-HALL-1", "AP-CHANGING-1", "AP-CLASS-1", None)
START = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
END = datetime(2028, 1, 1, tzinfo=UTC).timestamp()

levels = st.sampled_from(LEVELS)
instants = st.floats(min_value=START, max_value=END, allow_nan=False)


@st.composite
def rules(draw: st.DrawFn) -> Rule:
    start = draw(st.integers(0, 24 * 60 - 2))
    end = draw(st.integers(start + 1, 24 * 60))
    starts = draw(st.none() | instants)
    ends = None if starts is None else draw(st.none() | st.floats(starts + 1, END + 86400))
    return Rule(
        name=f"r{draw(st.integers(0, 10_000))}",
        classes=frozenset(draw(st.sets(st.sampled_from(list(DeviceClass)), min_size=1))),
        access=draw(levels),
        days=draw(st.none() | st.frozensets(st.integers(0, 6), min_size=1)),
        window=draw(st.none() | st.just((start, end))),
        locations=draw(st.none() | st.frozensets(st.sampled_from(LOCATIONS), min_size=1)),
        except_locations=draw(st.frozensets(st.sampled_from(LOCATIONS))),
        starts=starts,
        ends=ends,
    )


@st.composite
def policies(draw: st.DrawFn) -> SitePolicy:
    return SitePolicy(
        site="gen",
        timezone=draw(st.sampled_from(["Europe/London", "Europe/Paris", "UTC"])),
        vlans={
            Access.FULL: 10,
            Access.SEGREGATED: 20,
            Access.INTERNET: 30,
            Access.REGISTRATION: 99,
        },
        access={c: draw(levels) for c in DeviceClass},
        locations=tuple(
            LocationSpec(name, (f"AP-{name.upper()}-*",), glob_regex([f"AP-{name.upper()}-*"]))
            for name in LOCATIONS
        ),
        rules=tuple(draw(st.lists(rules(), max_size=4, unique_by=lambda r: r.name))),
        max_session_timeout=draw(st.sampled_from([3600, 43200, 86400 * 3])),
        staff_needs_approval=draw(st.booleans()),
        staff_needs_byod_statement=draw(st.booleans()),
    )


@st.composite
def grants(draw: st.DrawFn) -> Grant:
    start = draw(instants)
    until = draw(st.just(NO_EXPIRY) | st.floats(start + 1, END + 86400))
    return Grant(
        draw(st.sampled_from([Access.FULL, Access.SEGREGATED, Access.INTERNET])),
        start,
        until,
        "reason",
        "head",
    )


@st.composite
def devices(draw: st.DrawFn) -> DeviceFacts:
    expiry = st.none() | st.just(NO_EXPIRY) | instants
    return DeviceFacts(
        mac="aa:bb:cc:dd:ee:ff",
        device_class=draw(st.sampled_from(list(DeviceClass))),
        status=draw(st.sampled_from(list(DeviceStatus))),
        owner_active=draw(st.booleans()),
        aua_valid_until=draw(expiry),
        byod_valid_until=draw(expiry),
        grants=tuple(draw(st.lists(grants(), max_size=2))),
    )


def rank(decision: Decision) -> int:
    return decision.access.rank


requests = st.builds(
    AccessRequest, mac=st.just("aa:bb:cc:dd:ee:ff"), nas_identifier=st.sampled_from(NAS_IDS)
)
moments = instants.map(lambda ts: datetime.fromtimestamp(ts, UTC))


@settings(max_examples=400, deadline=None)
@given(policies(), devices(), requests, moments)
def test_rules_only_ever_narrow_access(policy, device, request, now) -> None:
    with_rules = decide(request, device, policy, now)
    without = decide(request, device, dataclasses.replace(policy, rules=(), _memo={}), now)
    assert rank(with_rules) <= rank(without)


@settings(max_examples=400, deadline=None)
@given(policies(), devices(), requests, moments)
def test_exceptions_only_ever_widen_access(policy, device, request, now) -> None:
    with_grants = decide(request, device, policy, now)
    without = decide(request, dataclasses.replace(device, grants=()), policy, now)
    assert rank(with_grants) >= rank(without)
    if with_grants.access is not Access.REGISTRATION and without.access is not Access.REGISTRATION:
        assert rank(with_grants) >= rank(without)


@settings(max_examples=600, deadline=None)
@given(policies(), devices(), requests, moments)
def test_session_timeout_never_outlives_the_answer(policy, device, request, now) -> None:
    decision = decide(request, device, policy, now)
    if decision.session_timeout is None:
        assert decision.access is Access.NONE
        return
    assert decision.session_timeout >= 1
    # Sample the interval the NAS will keep the answer for: every point must give the same.
    step = max(1, decision.session_timeout // 7)
    for offset in [*range(0, decision.session_timeout, step), decision.session_timeout - 1]:
        later = decide(request, device, policy, now + timedelta(seconds=offset))
        assert (later.access, later.vlan) == (decision.access, decision.vlan), (offset, later)
