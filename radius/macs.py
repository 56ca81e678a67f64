"""The device's MAC address in a Calling-Station-Id or User-Name, parsed once per raw value.

Hot path (guarded by `bench/radius_load.py`): a device asks again and again with the same
bytes, and parsing costs more than a dict lookup, so `MacReader` memoises by the raw value.
The authorizer reads `MacReader.memo` inline and calls `read()` only on a miss.
"""

from __future__ import annotations

import re
from typing import Any

from service.mac import try_normalize_mac

MAC_MEMO_LIMIT = 100_000
MISSING: Any = object()  # a memo miss (None is a value: "not a MAC")

# The two spellings NAS clients send nearly always (AA-BB-CC-DD-EE-FF or aa:bb:..., and bare
# aabbccddeeff), parsed without `service.mac.normalize_mac`'s general rules: same result.
_HEX2 = rb"[0-9A-Fa-f]{2}"
_GROUPED_MAC = re.compile(_HEX2 + rb"([:-])" + rb"\1".join([_HEX2] * 5))
_BARE_MAC = re.compile(rb"[0-9A-Fa-f]{12}")


def parse_mac(raw: bytes) -> str | None:
    """The canonical MAC in an attribute value, or None when it is not one."""
    match = _GROUPED_MAC.fullmatch(raw)
    if match is not None:
        return raw.replace(match[1], b":").decode().lower()
    if _BARE_MAC.fullmatch(raw) is not None:
        text = raw.decode().lower()
        return f"{text[0:2]}:{text[2:4]}:{text[4:6]}:{text[6:8]}:{text[8:10]}:{text[10:12]}"
    return try_normalize_mac(raw.decode("latin-1"))


class MacReader:
    """`parse_mac` memoised by the raw value. Two generations: a full memo becomes the old
    one, whose entries move back when asked for."""

    __slots__ = ("memo", "old")

    def __init__(self) -> None:
        self.memo: dict[bytes, str | None] = {}
        self.old: dict[bytes, str | None] = {}

    def read(self, raw: bytes) -> str | None:
        memo = self.memo
        mac = memo.get(raw, MISSING)
        if mac is not MISSING:
            return mac  # type: ignore[no-any-return]
        mac = self.old.get(raw, MISSING)
        if mac is MISSING:
            mac = parse_mac(raw)
        if len(memo) >= MAC_MEMO_LIMIT:
            self.old = memo
            memo = self.memo = {}
        memo[raw] = mac
        return mac  # type: ignore[no-any-return]
