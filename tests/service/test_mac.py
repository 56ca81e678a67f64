from __future__ import annotations

import pytest

from service.errors import Invalid
from service.mac import format_mac, is_locally_administered, normalize_mac


@pytest.mark.parametrize(
    "spelling",
    [
        "aa:bb:cc:dd:ee:ff",
        "AA-BB-CC-DD-EE-FF",
        "aabb.ccdd.eeff",
        "aabbccddeeff",
        "AABB-CCDD-EEFF",
        " aa:BB:cc:DD:ee:FF ",
    ],
)
def test_common_spellings_normalise(spelling: str) -> None:
    assert normalize_mac(spelling) == "aa:bb:cc:dd:ee:ff"


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "aa:bb:cc:dd:ee",
        "aa:bb:cc:dd:ee:fg",
        "aa:bb:cc:dd:ee:ff:00",
        "a:abb:cc:dd:ee:ff",
        "aabb.ccdd.eef",
        "hello",
        "aa:bb-cc:dd:ee:ff",
    ],
)
def test_malformed_mac_is_refused_with_the_value_named(bad: str) -> None:
    with pytest.raises(Invalid, match="not a MAC address"):
        normalize_mac(bad)


def test_private_address_bit() -> None:
    assert is_locally_administered("02:00:00:00:00:01")
    assert is_locally_administered("da:a1:19:00:00:01")
    assert not is_locally_administered("00:1b:63:84:45:e6")


@pytest.mark.parametrize(
    ("style", "expected"),
    [
        ("colon", "aa:bb:cc:dd:ee:ff"),
        ("hyphen-upper", "AA-BB-CC-DD-EE-FF"),
        ("hyphen", "aa-bb-cc-dd-ee-ff"),
        ("dotted", "aabb.ccdd.eeff"),
        ("bare", "aabbccddeeff"),
    ],
)
def test_format_for_nas(style: str, expected: str) -> None:
    assert format_mac("aa:bb:cc:dd:ee:ff", style) == expected
