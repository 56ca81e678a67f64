"""The duplicate-request cache: a retransmitted request gets the first answer again.

Keyed by (source address, identifier, authenticator); the value is (expires, reply, or None
while the answer is still being made: a PAP check, an accounting record being written). Hot
path (guarded by `bench/radius_load.py`): the authorizer reads `current` and `previous`
inline.
"""

from __future__ import annotations

import time
from typing import Any

DEDUP_LIMIT = 200_000

_monotonic = time.monotonic

Seen = tuple[float, bytes | None]


class DuplicateCache:
    """Two generations, swapped once a window, so forgetting is O(1) on the loop; the
    generation before that is freed a slice at a time by `purge()` (freeing 100,000 entries
    at once would stall the loop for milliseconds)."""

    __slots__ = ("current", "dying", "previous", "rotated", "slice", "window")

    def __init__(self, window: float) -> None:
        self.window = window
        self.current: dict[tuple[Any, ...], Seen] = {}
        self.previous: dict[tuple[Any, ...], Seen] = {}
        self.dying: dict[tuple[Any, ...], Seen] = {}
        self.rotated = _monotonic()
        self.slice = 256

    def get(self, key: tuple[Any, ...]) -> Seen | None:
        found = self.current.get(key)
        return self.previous.get(key) if found is None else found

    def __setitem__(self, key: tuple[Any, ...], value: Seen) -> None:
        self.current[key] = value

    def pop(self, key: tuple[Any, ...], default: Any = None) -> Any:
        found = self.current.pop(key, default)
        older = self.previous.pop(key, default)
        return older if found is default else found

    def __len__(self) -> int:
        return len(self.current) + len(self.previous)

    def purge(self, now: float) -> None:
        """Free a slice of the expired generation; swap generations once a window (every
        entry of `previous` has then expired: it was added at least a window ago)."""
        dying = self.dying
        if dying:
            popitem = dying.popitem
            for _ in range(min(len(dying), self.slice)):
                popitem()
        if now - self.rotated >= self.window or len(self.current) > DEDUP_LIMIT:
            dying.clear()  # only left over when the loop fell far behind
            self.dying = self.previous
            self.previous = self.current
            self.current = {}
            self.rotated = now
            self.slice = max(256, len(self.dying) // 20 + 1)
