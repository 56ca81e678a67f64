"""The policy engine against the seeds: one table row per class × state × rule combination."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from service.enums import Access, DeviceClass, DeviceStatus, Role
from service.errors import PolicyError
from service.policy import (
    NO_EXPIRY,
    AccessRequest,
    Grant,
    SitePolicy,
    decide,
    device_key,
    load_policy_text,
    session_timeout_at,
)
from tests.service.policy_fixtures import POLICIES, SIGNED, at, facts, london, policy

C = DeviceClass
S = DeviceStatus
MONDAY_10 = "2026-11-23 10:00"  # term time, lessons
MONDAY_17 = "2026-11-23 17:00"  # after school
SATURDAY_10 = "2026-11-28 10:00"


def later(hours: float) -> float:
    return (london(MONDAY_10) + timedelta(hours=hours)).timestamp()


# (school, when, NAS identifier, class, status, aua/byod signed?, expected access, expected rule)
TABLE = [
    # Westgate (seed 003): the matrix itself.
    (
        "westgate",
        MONDAY_10,
        None,
        C.SCHOOL_SINGLE,
        S.ACTIVE,
        False,
        Access.FULL,
        "access.school_single",
    ),
    (
        "westgate",
        MONDAY_10,
        None,
        C.SCHOOL_SHARED,
        S.ACTIVE,
        False,
        Access.FULL,
        "access.school_shared",
    ),
    (
        "westgate",
        MONDAY_10,
        None,
        C.AUTHORISED,
        S.ACTIVE,
        False,
        Access.INTERNET,
        "access.authorised",
    ),
    ("westgate", MONDAY_10, None, C.STAFF_OWNED, S.ACTIVE, True, Access.NONE, "access.staff_owned"),
    (
        "westgate",
        MONDAY_10,
        None,
        C.STAFF_OWNED,
        S.PENDING,
        False,
        Access.NONE,
        "access.staff_owned",
    ),
    (
        "westgate",
        MONDAY_10,
        None,
        C.VISITOR_OWNED,
        S.ACTIVE,
        True,
        Access.INTERNET,
        "access.visitor_owned",
    ),
    (
        "westgate",
        MONDAY_10,
        None,
        C.VISITOR_OWNED,
        S.ACTIVE,
        False,
        Access.REGISTRATION,
        "gate.visitor-aua",
    ),
    (
        "westgate",
        MONDAY_10,
        None,
        C.LEARNER_OWNED,
        S.ACTIVE,
        False,
        Access.NONE,
        "access.learner_owned",
    ),
    ("westgate", MONDAY_10, None, C.SCHOOL_SINGLE, S.REVOKED, False, Access.NONE, "status.revoked"),
    ("westgate", MONDAY_10, None, C.SCHOOL_SINGLE, S.LOST, False, Access.NONE, "status.lost"),
    ("westgate", MONDAY_10, None, C.VISITOR_OWNED, S.EXITED, True, Access.NONE, "status.exited"),
    # Guest network school (seed 001): staff segregated after permission and statement.
    (
        "guest-network",
        MONDAY_10,
        None,
        C.STAFF_OWNED,
        S.ACTIVE,
        True,
        Access.SEGREGATED,
        "access.staff_owned",
    ),
    (
        "guest-network",
        MONDAY_10,
        None,
        C.STAFF_OWNED,
        S.PENDING,
        True,
        Access.REGISTRATION,
        "gate.staff-approval",
    ),
    (
        "guest-network",
        MONDAY_10,
        None,
        C.STAFF_OWNED,
        S.ACTIVE,
        False,
        Access.REGISTRATION,
        "gate.staff-byod",
    ),
    (
        "guest-network",
        MONDAY_10,
        "AP-CHANGING-2",
        C.STAFF_OWNED,
        S.ACTIVE,
        True,
        Access.NONE,
        "rule:changing rooms are BYOD free",
    ),
    (
        "guest-network",
        MONDAY_10,
        "AP-CHANGING-2",
        C.SCHOOL_SHARED,
        S.ACTIVE,
        False,
        Access.FULL,
        "access.school_shared",
    ),
    (
        "guest-network",
        "2027-05-12 09:00",
        "AP-HALL-1",
        C.STAFF_OWNED,
        S.ACTIVE,
        True,
        Access.NONE,
        "rule:summer exam season in the exam hall",
    ),
    (
        "guest-network",
        "2027-05-12 18:00",
        "AP-HALL-1",
        C.STAFF_OWNED,
        S.ACTIVE,
        True,
        Access.SEGREGATED,
        "access.staff_owned",
    ),
    (
        "guest-network",
        "2027-07-01 09:00",
        "AP-HALL-1",
        C.STAFF_OWNED,
        S.ACTIVE,
        True,
        Access.SEGREGATED,
        "access.staff_owned",
    ),
    (
        "guest-network",
        "2027-05-12 09:00",
        "AP-HALL-1",
        C.SCHOOL_SINGLE,
        S.ACTIVE,
        False,
        Access.FULL,
        "access.school_single",
    ),
    # Special Partnership Trust (seed 004): 08:30-15:30 except staffroom and SLT offices.
    (
        "spt",
        MONDAY_10,
        "AP-CLASS-3",
        C.STAFF_OWNED,
        S.ACTIVE,
        True,
        Access.NONE,
        "rule:personal devices off in working hours, except staffroom and SLT offices",
    ),
    (
        "spt",
        MONDAY_10,
        "AP-STAFFROOM-1",
        C.STAFF_OWNED,
        S.ACTIVE,
        True,
        Access.SEGREGATED,
        "access.staff_owned",
    ),
    (
        "spt",
        MONDAY_10,
        "AP-SLT-2",
        C.STAFF_OWNED,
        S.ACTIVE,
        True,
        Access.SEGREGATED,
        "access.staff_owned",
    ),
    (
        "spt",
        MONDAY_17,
        "AP-CLASS-3",
        C.STAFF_OWNED,
        S.ACTIVE,
        True,
        Access.SEGREGATED,
        "access.staff_owned",
    ),
    (
        "spt",
        "2026-11-23 08:29",
        "AP-CLASS-3",
        C.STAFF_OWNED,
        S.ACTIVE,
        True,
        Access.SEGREGATED,
        "access.staff_owned",
    ),
    (
        "spt",
        "2026-11-23 08:30",
        "AP-CLASS-3",
        C.STAFF_OWNED,
        S.ACTIVE,
        True,
        Access.NONE,
        "rule:personal devices off in working hours, except staffroom and SLT offices",
    ),
    (
        "spt",
        "2026-11-23 15:30",
        "AP-CLASS-3",
        C.STAFF_OWNED,
        S.ACTIVE,
        True,
        Access.SEGREGATED,
        "access.staff_owned",
    ),
    (
        "spt",
        SATURDAY_10,
        "AP-CLASS-3",
        C.STAFF_OWNED,
        S.ACTIVE,
        True,
        Access.SEGREGATED,
        "access.staff_owned",
    ),
    (
        "spt",
        MONDAY_10,
        "AP-CLASS-3",
        C.VISITOR_OWNED,
        S.ACTIVE,
        True,
        Access.NONE,
        "rule:personal devices off in working hours, except staffroom and SLT offices",
    ),
    (
        "spt",
        MONDAY_10,
        "AP-STAFFROOM-1",
        C.VISITOR_OWNED,
        S.ACTIVE,
        True,
        Access.INTERNET,
        "access.visitor_owned",
    ),
    (
        "spt",
        MONDAY_10,
        "AP-CLASS-3",
        C.SCHOOL_SINGLE,
        S.ACTIVE,
        False,
        Access.FULL,
        "access.school_single",
    ),
    (
        "spt",
        MONDAY_10,
        "AP-CLASS-3",
        C.LEARNER_OWNED,
        S.ACTIVE,
        False,
        Access.NONE,
        "access.learner_owned",
    ),
    # St Andrew's (seed 000): staff devices internet, but only outside contact time or in the staff room.
    (
        "st-andrews",
        MONDAY_17,
        None,
        C.STAFF_OWNED,
        S.ACTIVE,
        True,
        Access.INTERNET,
        "access.staff_owned",
    ),
    (
        "st-andrews",
        MONDAY_10,
        "AP-STAFFROOM",
        C.STAFF_OWNED,
        S.ACTIVE,
        True,
        Access.INTERNET,
        "access.staff_owned",
    ),
    (
        "st-andrews",
        MONDAY_10,
        "AP-YEAR4",
        C.STAFF_OWNED,
        S.ACTIVE,
        True,
        Access.NONE,
        "rule:no personal phones in contact time, except staff room and office",
    ),
    # Chancery (seed 002): lesson blocks, break time allowed.
    (
        "chancery",
        "2026-11-23 10:35",
        "AP-Y5",
        C.STAFF_OWNED,
        S.ACTIVE,
        True,
        Access.SEGREGATED,
        "access.staff_owned",
    ),
    (
        "chancery",
        "2026-11-23 11:00",
        "AP-Y5",
        C.STAFF_OWNED,
        S.ACTIVE,
        True,
        Access.NONE,
        "rule:late-morning lessons: no personal devices where children are",
    ),
    (
        "chancery",
        "2026-11-23 12:30",
        "AP-Y5",
        C.STAFF_OWNED,
        S.ACTIVE,
        True,
        Access.SEGREGATED,
        "access.staff_owned",
    ),
    (
        "chancery",
        "2026-11-23 11:00",
        "AP-STAFFROOM",
        C.STAFF_OWNED,
        S.ACTIVE,
        True,
        Access.SEGREGATED,
        "access.staff_owned",
    ),
]


@pytest.mark.parametrize(
    ("school", "when", "nas", "device_class", "status", "signed", "expected", "rule"), TABLE
)
def test_seed_matrix(school, when, nas, device_class, status, signed, expected, rule) -> None:
    device = facts(
        device_class,
        status=status,
        aua_until=SIGNED if signed else None,
        byod_until=SIGNED if signed else None,
    )
    decision = decide(at(nas), device, policy(school), london(when))
    assert (decision.access, decision.rule) == (expected, rule), decision.reason
    p = policy(school)
    if expected in (Access.NONE,):
        assert decision.vlan is None
        assert decision.session_timeout is None
    else:
        assert decision.vlan == p.vlans[expected]
        assert decision.session_timeout is not None
        assert decision.session_timeout > 0
    assert decision.reason.endswith(".")


def test_unknown_device_goes_to_registration() -> None:
    decision = decide(
        AccessRequest(mac="aa:aa:aa:aa:aa:aa"), None, policy("westgate"), london(MONDAY_10)
    )
    assert decision.access is Access.REGISTRATION
    assert decision.vlan == 99
    assert decision.rule == "unknown-device"
    assert decision.session_timeout == policy("westgate").registration_timeout


def test_visitor_who_signed_yesterday_is_back_in_registration_today() -> None:
    yesterday_end = london("2026-11-22 18:00").timestamp()
    device = facts(C.VISITOR_OWNED, aua_until=yesterday_end)
    decision = decide(at(), device, policy("westgate"), london(MONDAY_10))
    assert decision.access is Access.REGISTRATION
    assert "expired" in decision.reason


def test_visitor_session_ends_when_the_aua_expires() -> None:
    device = facts(C.VISITOR_OWNED, aua_until=london("2026-11-23 18:00").timestamp())
    decision = decide(at(), device, policy("westgate"), london(MONDAY_10))
    assert decision.access is Access.INTERNET
    assert decision.session_timeout == 8 * 3600


def test_staff_session_ends_when_the_working_day_window_starts() -> None:
    device = facts(C.STAFF_OWNED, byod_until=SIGNED)
    decision = decide(at("AP-CLASS-1"), device, policy("spt"), london("2026-11-23 08:00"))
    assert decision.access is Access.SEGREGATED
    assert decision.session_timeout == 30 * 60


def test_pupil_medical_device_exception_widens_access_until_it_expires() -> None:
    until = later(24 * 7)
    grant = Grant(Access.INTERNET, later(-1), until, "glucose monitor app", "headteacher")
    device = facts(C.LEARNER_OWNED, grants=(grant,))
    decision = decide(at(), device, policy("chancery"), london(MONDAY_10))
    assert decision.access is Access.INTERNET
    assert decision.rule == "exception"
    assert "headteacher" in decision.reason
    expired = decide(at(), device, policy("chancery"), london(MONDAY_10) + timedelta(days=8))
    assert expired.access is Access.NONE


def test_exception_is_not_undone_by_a_time_rule() -> None:
    grant = Grant(Access.SEGREGATED, later(-1), NO_EXPIRY, "emergency contact: child unwell", "SLT")
    device = facts(C.STAFF_OWNED, byod_until=SIGNED, grants=(grant,))
    decision = decide(at("AP-CLASS-3"), device, policy("spt"), london(MONDAY_10))
    assert decision.access is Access.SEGREGATED
    assert decision.rule == "exception"


def test_future_exception_does_not_apply_yet_but_shortens_the_session() -> None:
    grant = Grant(Access.INTERNET, later(1), NO_EXPIRY, "trip", "headteacher")
    device = facts(C.LEARNER_OWNED, grants=(grant,))
    decision = decide(at(), device, policy("westgate"), london(MONDAY_10))
    assert decision.access is Access.NONE


def test_leaver_personal_device_has_no_access_but_school_device_keeps_it() -> None:
    phone = facts(C.STAFF_OWNED, byod_until=SIGNED, owner_active=False)
    assert decide(at(), phone, policy("guest-network"), london(MONDAY_10)).rule == "owner-left"
    laptop = facts(C.SCHOOL_SINGLE, owner_active=False)
    assert decide(at(), laptop, policy("guest-network"), london(MONDAY_10)).access is Access.FULL


def test_location_from_called_station_id_ssid() -> None:
    request = AccessRequest(
        mac="aa:bb:cc:00:00:01", called_station_id="AA-BB-CC-11-22-33:Westgate-Staff"
    )
    decision = decide(request, facts(C.SCHOOL_SINGLE), policy("westgate"), london(MONDAY_10))
    assert decision.location == "staffroom"


def test_clock_change_is_respected() -> None:
    """On the last Sunday of March 2027 London moves to BST; 08:30 local is then 07:30 UTC."""
    p = policy("spt")
    device = facts(C.STAFF_OWNED, byod_until=SIGNED)
    monday_bst = london("2027-03-29 08:30").astimezone(UTC)
    assert monday_bst.hour == 7
    assert decide(at("AP-CLASS-1"), device, p, monday_bst).access is Access.NONE
    before = monday_bst - timedelta(minutes=1)
    decision = decide(at("AP-CLASS-1"), device, p, before)
    assert decision.access is Access.SEGREGATED
    assert decision.session_timeout == 60


# A PAP login (the person's own password, checked) from a device the school does not know:
# (school, when, NAS identifier, role, person active, expected access, expected rule)
UNKNOWN_DEVICE_LOGINS = [
    # Active staff: decided as their own device, pending approval (so: registration).
    (
        "guest-network",
        MONDAY_10,
        None,
        Role.STAFF,
        True,
        Access.REGISTRATION,
        "gate.staff-approval",
    ),
    (
        "spt",
        MONDAY_10,
        "AP-STAFFROOM-1",
        Role.STAFF,
        True,
        Access.REGISTRATION,
        "gate.staff-approval",
    ),
    # ... which still follows the rules: a BYOD-free place and time has no access at all.
    (
        "spt",
        MONDAY_10,
        "AP-CLASS-3",
        Role.STAFF,
        True,
        Access.NONE,
        "rule:personal devices off in working hours, except staffroom and SLT offices",
    ),
    # Staff no longer active (a password remembered from before they left): owner left.
    ("guest-network", MONDAY_10, None, Role.STAFF, False, Access.NONE, "owner-left"),
    # Anyone else, and MAB (no person): an unknown device.
    ("guest-network", MONDAY_10, None, Role.LEARNER, True, Access.REGISTRATION, "unknown-device"),
    ("guest-network", MONDAY_10, None, Role.VISITOR, True, Access.REGISTRATION, "unknown-device"),
    ("guest-network", MONDAY_10, None, None, True, Access.REGISTRATION, "unknown-device"),
]


@pytest.mark.parametrize(
    ("school", "when", "nas", "role", "active", "expected", "rule"), UNKNOWN_DEVICE_LOGINS
)
def test_unknown_device_of_a_signed_in_person(school, when, nas, role, active, expected, rule):
    request = AccessRequest(
        mac="aa:bb:cc:00:00:09",
        nas_identifier=nas,
        username="someone",
        user_role=role,
        user_active=active,
    )
    decision = decide(request, None, policy(school), london(when))
    assert (decision.access, decision.rule) == (expected, rule), decision.reason
    if rule.startswith("gate.staff"):
        pending = facts(C.STAFF_OWNED, status=S.PENDING)
        assert decision == decide(at(nas), pending, policy(school), london(when))


def test_staff_login_without_a_device_mac_is_an_unknown_device() -> None:
    request = AccessRequest(mac=None, username="someone", user_role=Role.STAFF)
    decision = decide(request, None, policy("guest-network"), london(MONDAY_10))
    assert decision.rule == "unknown-device"


# The engine says how long its answer holds: (school, when, NAS, class, signed?, valid until
# (site-local; None = until the facts change), timeout cap (None for a reject)).
VALIDITY = [
    # Nothing in Westgate's policy moves a school laptop's answer: up to the policy's maximum.
    ("westgate", MONDAY_10, None, C.SCHOOL_SINGLE, False, None, 12 * 3600),
    # SPT: staff devices are off from 08:30 in classrooms, back at 15:30.
    ("spt", "2026-11-23 08:00", "AP-CLASS-1", C.STAFF_OWNED, True, "2026-11-23 08:30", 12 * 3600),
    ("spt", MONDAY_10, "AP-CLASS-1", C.STAFF_OWNED, True, "2026-11-23 15:30", None),
    # A visitor's agreement that ends at 18:00 ends the answer then.
    ("westgate", MONDAY_10, None, C.VISITOR_OWNED, "2026-11-23 18:00", "2026-11-23 18:00", 43200),
    # Behind a gate: the registration timeout caps the session.
    ("westgate", MONDAY_10, None, C.VISITOR_OWNED, False, None, 300),
]


@pytest.mark.parametrize(
    ("school", "when", "nas", "device_class", "signed", "until", "cap"), VALIDITY
)
def test_decision_says_how_long_it_holds(school, when, nas, device_class, signed, until, cap):
    signature = (
        london(signed).timestamp() if isinstance(signed, str) else SIGNED if signed else None
    )
    device = facts(device_class, aua_until=signature, byod_until=signature)
    p = policy(school)
    decision = decide(at(nas), device, p, london(when))
    assert decision.valid_until == (None if until is None else london(until).timestamp())
    assert decision.timeout_cap == cap
    assert decision.facts_key == (device_key(device), decision.location)
    # The same answer until then, with the Session-Timeout the cache computes for it.
    end = decision.valid_until or london(when).timestamp() + 86400
    for ts in (london(when).timestamp() + 0.5, (london(when).timestamp() + end) / 2, end - 0.25):
        later_decision = decide(at(nas), device, p, datetime.fromtimestamp(ts, UTC))
        assert later_decision.rule == decision.rule
        assert later_decision.valid_until == decision.valid_until
        if cap is not None:
            assert later_decision.session_timeout == session_timeout_at(
                ts, decision.valid_until, cap
            )
    after = decide(at(nas), device, p, datetime.fromtimestamp(end, UTC))
    if until is not None:
        assert after.rule != decision.rule


def test_device_with_exceptions_has_no_shared_facts_key() -> None:
    grant = Grant(Access.INTERNET, later(-1), NO_EXPIRY, "glucose monitor app", "headteacher")
    device = facts(C.LEARNER_OWNED, grants=(grant,))
    assert device_key(device) is None
    assert decide(at(), device, policy("chancery"), london(MONDAY_10)).facts_key is None


# Safeguarding areas and exceptions (issue 12): a rule's `lifted_by_exceptions` says whether an
# exception for a device gets past it. Guest Network School (seed 001): the changing rooms are
# BYOD free; Chancery's lesson-time rules are working-hours windows.
MEDICAL = Grant(Access.INTERNET, later(-1), NO_EXPIRY, "glucose monitor app", "headteacher")
SLT = Grant(Access.SEGREGATED, later(-1), NO_EXPIRY, "emergency contact: child unwell", "SLT")
EXAM_DAY = "2027-05-12 10:00"  # a Wednesday in the summer exam season

# (school, when, NAS, class, grant, access, rule, lifted rule, rule not lifted)
EXCEPTION_TABLE = [
    # A pupil's medical exception works in the corridor...
    (
        "guest-network",
        MONDAY_10,
        "AP-CORRIDOR-1",
        C.LEARNER_OWNED,
        MEDICAL,
        Access.INTERNET,
        "exception",
        None,
        None,
    ),
    # ...but not in the BYOD-free changing room (a rule with locations).
    (
        "guest-network",
        MONDAY_10,
        "AP-CHANGING-2",
        C.LEARNER_OWNED,
        MEDICAL,
        Access.NONE,
        "rule:changing rooms are BYOD free",
        None,
        "changing rooms are BYOD free",
    ),
    # In the exam hall during the exam season the seed allows "special circumstances": the rule
    # says `lifted_by_exceptions = true` (an absolute window would hold by default), so it does
    # not hold the exception back (pupils' phones get no access there anyway: nothing to lift).
    (
        "guest-network",
        EXAM_DAY,
        "AP-EXAM-1",
        C.LEARNER_OWNED,
        MEDICAL,
        Access.INTERNET,
        "exception",
        None,
        None,
    ),
    # A staff phone with an SLT exception in the changing room: the rule holds there too.
    (
        "guest-network",
        MONDAY_10,
        "AP-SPORTS-CR1",
        C.STAFF_OWNED,
        SLT,
        Access.NONE,
        "rule:changing rooms are BYOD free",
        None,
        "changing rooms are BYOD free",
    ),
    # Without an exception nothing is lifted or held: the rule applies as always.
    (
        "guest-network",
        MONDAY_10,
        "AP-CHANGING-2",
        C.STAFF_OWNED,
        None,
        Access.NONE,
        "rule:changing rooms are BYOD free",
        None,
        None,
    ),
    # A working-hours window (no locations) is lifted by the exception, and says so.
    (
        "spt",
        MONDAY_10,
        "AP-CLASS-3",
        C.STAFF_OWNED,
        SLT,
        Access.SEGREGATED,
        "exception",
        "personal devices off in working hours, except staffroom and SLT offices",
        None,
    ),
    # Outside the window there is nothing to lift.
    (
        "spt",
        MONDAY_17,
        "AP-CLASS-3",
        C.STAFF_OWNED,
        SLT,
        Access.SEGREGATED,
        "access.staff_owned",
        None,
        None,
    ),
]


@pytest.mark.parametrize(
    ("school", "when", "nas", "device_class", "grant", "expected", "rule", "lifted", "held"),
    EXCEPTION_TABLE,
)
def test_exceptions_lift_only_the_rules_that_say_so(
    school, when, nas, device_class, grant, expected, rule, lifted, held
) -> None:
    device = facts(device_class, byod_until=SIGNED, grants=(grant,) if grant else ())
    decision = decide(at(nas), device, policy(school), london(when))
    assert (decision.access, decision.rule) == (expected, rule)
    assert (decision.lifted_rule, decision.held_rule) == (lifted, held)
    assert decision.as_dict()["exception_lifted_rule"] == lifted
    assert decision.as_dict()["exception_not_lifted_rule"] == held
    if held is not None:
        assert f'"{held}"' in decision.reason
        assert "does not lift" in decision.reason
    if lifted is not None:
        assert f'lifting the rule "{lifted}"' in decision.reason


def _policy_with(rule_lines: str) -> SitePolicy:
    text = (
        (POLICIES / "guest-network.toml").read_text().split("[[rules]]", 1)[0]
        + "[[rules]]\n"
        + rule_lines
    )
    return load_policy_text(text, "<test>")


@pytest.mark.parametrize(
    ("rule_lines", "lifted"),
    [
        ('name = "r"\nclasses = ["learner_owned"]\naccess = "none"\n', True),
        (
            'name = "r"\nclasses = ["learner_owned"]\nbetween = "08:00-16:00"\naccess = "none"\n',
            True,
        ),
        (
            'name = "r"\nclasses = ["learner_owned"]\nexcept_locations = ["exam-hall"]\n'
            'access = "none"\n',
            True,
        ),
        (
            'name = "r"\nclasses = ["learner_owned"]\nlocations = ["exam-hall"]\naccess = "none"\n',
            False,
        ),
        (
            'name = "r"\nclasses = ["learner_owned"]\nfrom = "2027-05-10T00:00"\naccess = "none"\n',
            False,
        ),
        (
            'name = "r"\nclasses = ["learner_owned"]\nlocations = ["exam-hall"]\naccess = "none"\n'
            "lifted_by_exceptions = true\n",
            True,
        ),
        (
            'name = "r"\nclasses = ["learner_owned"]\naccess = "none"\nlifted_by_exceptions = false\n',
            False,
        ),
    ],
)
def test_lifted_by_exceptions_defaults_from_the_rule_shape(rule_lines, lifted) -> None:
    compiled = _policy_with(rule_lines)
    assert compiled.rules[0].lifted_by_exceptions is lifted
    device = facts(C.LEARNER_OWNED, grants=(MEDICAL,))
    decision = decide(at("AP-EXAM-1"), device, compiled, london("2027-05-12 10:00"))
    assert decision.access is (Access.INTERNET if lifted else Access.NONE)


def test_lifted_by_exceptions_must_be_true_or_false() -> None:
    with pytest.raises(PolicyError, match=r"rules\[0\]\.lifted_by_exceptions.*true or false"):
        _policy_with(
            'name = "r"\nclasses = ["learner_owned"]\naccess = "none"\nlifted_by_exceptions = "no"\n'
        )


def test_a_rule_no_exception_lifts_still_caps_a_lower_lifted_rule() -> None:
    # Both kinds apply: the working-hours rule (lifted) leaves internet, the exception gives
    # segregated, the located rule caps it at internet.
    compiled = _policy_with(
        'name = "lessons"\nclasses = ["staff_owned"]\naccess = "none"\n\n'
        '[[rules]]\nname = "hall"\nclasses = ["staff_owned"]\nlocations = ["exam-hall"]\n'
        'access = "internet"\n'
    )
    device = facts(C.STAFF_OWNED, byod_until=SIGNED, grants=(SLT,))
    decision = decide(at("AP-HALL-1"), device, compiled, london(MONDAY_10))
    assert (decision.access, decision.rule) == (Access.INTERNET, "rule:hall")
    assert (decision.lifted_rule, decision.held_rule) == ("lessons", "hall")


# `policy explain` through the real command (SQLite: the CLI does not depend on the backend).
@pytest.fixture
def db_url(sqlite_url: str) -> str:
    return sqlite_url


def test_policy_explain_says_which_rule_an_exception_did_or_did_not_lift(run_cli) -> None:
    run_cli("db", "upgrade")
    run_cli("policy", "load", str(POLICIES / "guest-network.toml"))
    mac = "aa:bb:cc:dd:ee:30"
    run_cli("device", "add", mac, "--site", "guest-network", "--class", "learner_owned")
    run_cli(
        "exception",
        "grant",
        mac,
        "--access",
        "internet",
        "--reason",
        "glucose monitor app",
        "--approved-by",
        "Headteacher",
    )
    changing = json.loads(
        run_cli("policy", "explain", mac, "--nas-id", "AP-CHANGING-1", "--json").stdout
    )
    assert (changing["access"], changing["rule"]) == ("none", "rule:changing rooms are BYOD free")
    assert changing["exception_not_lifted_rule"] == "changing rooms are BYOD free"
    assert changing["exception_lifted_rule"] is None
    text = run_cli("policy", "explain", mac, "--nas-id", "AP-CHANGING-1").stdout
    assert 'not lifted: the rule "changing rooms are BYOD free" holds for exceptions too' in text
    corridor = json.loads(
        run_cli("policy", "explain", mac, "--nas-id", "AP-CORRIDOR-1", "--json").stdout
    )
    assert (corridor["access"], corridor["rule"]) == ("internet", "exception")
    assert corridor["exception_not_lifted_rule"] is None
