"""Policy files: every shipped policy loads; bad ones are refused with the key named."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.enums import Access, DeviceClass
from service.errors import PolicyError
from service.policy import load_policy_text
from tests.service.policy_fixtures import POLICIES

WESTGATE = (POLICIES / "westgate.toml").read_text()


@pytest.mark.parametrize("path", sorted(POLICIES.glob("*.toml")), ids=lambda p: p.stem)
def test_shipped_policies_load(path: Path) -> None:
    policy = load_policy_text(path.read_text(), str(path))
    assert policy.site == path.stem
    assert set(policy.access) == set(DeviceClass)
    assert policy.school_name


def test_westgate_matches_seed_003() -> None:
    policy = load_policy_text(WESTGATE, "westgate.toml")
    assert policy.access[DeviceClass.SCHOOL_SINGLE] is Access.FULL
    assert policy.access[DeviceClass.SCHOOL_SHARED] is Access.FULL
    assert policy.access[DeviceClass.STAFF_OWNED] is Access.NONE
    assert policy.access[DeviceClass.VISITOR_OWNED] is Access.INTERNET
    assert policy.access[DeviceClass.LEARNER_OWNED] is Access.NONE


BAD = [
    (
        "unknown class",
        'learner_owned = "none"',
        'tablet = "none"\nlearner_owned = "none"',
        "access.tablet: unknown device class",
    ),
    ("vlan out of range", "full = 10", "full = 5000", "vlans.full: VLAN id 5000 is out of range"),
    ("vlan zero", "full = 10", "full = 0", "vlans.full: VLAN id 0 is out of range"),
    ("missing vlan", "segregated = 20\n", "", "vlans: missing VLAN for segregated"),
    (
        "bad level",
        'authorised = "internet"',
        'authorised = "everything"',
        "access.authorised: 'everything' is not an access level",
    ),
    (
        "unknown top key",
        'site = "westgate"',
        'site = "westgate"\nsitee = "x"',
        "sitee: unknown key",
    ),
    (
        "bad timezone",
        'timezone = "Europe/London"',
        'timezone = "Mars/Olympus"',
        "timezone: unknown time zone",
    ),
    (
        "bad aua",
        'aua_valid_until = "end_of_day"',
        'aua_valid_until = "tomorrow"',
        "visitor.aua_valid_until",
    ),
]


@pytest.mark.parametrize(("label", "old", "new", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_policy_is_refused_naming_the_key(label, old, new, message) -> None:
    assert old in WESTGATE
    with pytest.raises(PolicyError) as err:
        load_policy_text(WESTGATE.replace(old, new, 1), "westgate.toml")
    assert str(err.value).startswith("westgate.toml: ")
    assert message in str(err.value)


RULE = """
[[rules]]
name = "r"
classes = ["staff_owned"]
{extra}
access = "none"
"""


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('between = "15:30-08:30"', "rules[0].between: '15:30-08:30': the start must be before"),
        ('between = "8.30 to 3.30"', "rules[0].between"),
        ('between = "25:00-26:00"', "is not a time of day"),
        ('days = "mon-funday"', "rules[0].days"),
        ('locations = ["gym"]', "rules[0].locations: unknown location 'gym'"),
        ('except_locations = ["library"]', "rules[0].except_locations: unknown location 'library'"),
        ('from = "2027-06-01T00:00"\nuntil = "2027-05-01T00:00"', "rules[0].until: must be after"),
        ('from = "next tuesday"', "rules[0].from: 'next tuesday' is not an ISO 8601"),
        ('colour = "red"', "rules[0].colour: unknown key"),
    ],
)
def test_bad_rule_is_refused(extra: str, message: str) -> None:
    with pytest.raises(PolicyError, match="westgate.toml") as err:
        load_policy_text(WESTGATE + RULE.format(extra=extra), "westgate.toml")
    assert message in str(err.value)


def test_toml_syntax_error_names_the_line() -> None:
    with pytest.raises(PolicyError) as err:
        load_policy_text(WESTGATE + "\n[vlans\n", "westgate.toml")
    assert "westgate.toml: not valid TOML" in str(err.value)
    assert "line" in str(err.value)


def test_rule_with_unknown_class_is_refused() -> None:
    with pytest.raises(PolicyError, match=r"rules\[0\].classes: unknown device class 'phones'"):
        load_policy_text(
            WESTGATE + RULE.format(extra="").replace('["staff_owned"]', '["phones"]'), "w.toml"
        )
