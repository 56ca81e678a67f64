"""MAC addresses: one canonical form (lower-case, colon-separated), parsed at every boundary."""

from __future__ import annotations

import re

from service.errors import Invalid

_HEX = re.compile(r"[0-9a-f]{12}")
_SEPARATORS = str.maketrans("", "", ":-. ")


def normalize_mac(value: str) -> str:
    """Return `aa:bb:cc:dd:ee:ff` for any common spelling, or raise `Invalid`.

    Accepts `aa:bb:cc:dd:ee:ff`, `AA-BB-CC-DD-EE-FF`, `aabb.ccdd.eeff`, `aabbccddeeff` and
    `aabb-ccdd-eeff`. Used on the RADIUS hot path, so it avoids netaddr's heavier parser.
    """
    raw = value.strip().lower()
    digits = raw.translate(_SEPARATORS)
    if len(digits) != 12 or not _HEX.fullmatch(digits) or not _well_grouped(raw):
        raise Invalid(f"not a MAC address: {value!r} (expected e.g. aa:bb:cc:dd:ee:ff)")
    return ":".join(digits[i : i + 2] for i in range(0, 12, 2))


def registrable_mac(value: str) -> str:
    """`normalize_mac`, refusing what cannot be one device's own address: all zeros, the
    broadcast address and any group (multicast) address, whose first octet has its lowest
    (I/G) bit set. For the places a device is registered, not for RADIUS, which answers
    whatever a NAS asks about."""
    canonical = normalize_mac(value)
    if canonical == "00:00:00:00:00:00":
        raise Invalid(f"{canonical} is the all-zero address, not a device's own")
    if canonical == "ff:ff:ff:ff:ff:ff":
        raise Invalid(f"{canonical} is the broadcast address, not a device's own")
    if int(canonical[0:2], 16) & 0x01:
        raise Invalid(
            f"{canonical} is a multicast (group) address, not a device's own "
            "(the first octet is odd)"
        )
    return canonical


def try_normalize_mac(value: str | None) -> str | None:
    """`normalize_mac`, or None when the value is not a MAC (e.g. a PAP user name)."""
    if not value:
        return None
    try:
        return normalize_mac(value)
    except Invalid:
        return None


def _well_grouped(raw: str) -> bool:
    """Separators must split the digits into groups of 2 (`:`/`-`) or 4 (`.`/`-`), or be absent."""
    for sep in ":-. ":
        if sep in raw:
            groups = raw.split(sep)
            return all(len(g) == len(groups[0]) for g in groups) and len(groups) in (3, 6)
    return True


def is_locally_administered(mac: str) -> bool:
    """True for randomised ("private") addresses: bit 1 of the first octet is set."""
    return bool(int(mac[0:2], 16) & 0x02)


def format_mac(mac: str, style: str) -> str:
    """Format a canonical MAC the way a NAS expects it.

    Styles: `colon` (aa:bb:cc:dd:ee:ff), `hyphen-upper` (AA-BB-CC-DD-EE-FF, RFC 3580),
    `hyphen` (aa-bb-cc-dd-ee-ff), `dotted` (aabb.ccdd.eeff, Cisco), `bare` (aabbccddeeff).
    """
    digits = mac.replace(":", "")
    if style == "colon":
        return mac
    if style == "hyphen-upper":
        return mac.replace(":", "-").upper()
    if style == "hyphen":
        return mac.replace(":", "-")
    if style == "dotted":
        return f"{digits[0:4]}.{digits[4:8]}.{digits[8:12]}"
    if style == "bare":
        return digits
    raise Invalid(f"unknown MAC format style: {style!r}")
