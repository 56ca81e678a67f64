"""One sign-in throttle for the portal's staff sign-in and RADIUS PAP: exponential backoff
per source and per account, never a lock.

Why not a lock: six wrong passwords used to lock a staff account, so anyone on the guest
Wi-Fi could lock any teacher out by typing their username. Now each source (client IP, MAC,
or NAS + Calling-Station-Id) and each account name (as typed, known or not) has a failure
count; after `free` failures every further attempt must wait `base * 2**k` seconds, capped.
The source cap is high (an attacker's device is slowed hard); the account cap is low (the
real owner, from another device, waits a minute at worst, and is never locked out).

Attempts are charged before the password is checked (`begin`) and refunded on success
(`succeeded`), so requests sent in parallel cannot all slip past one count. An attempt made
while waiting is refused without checking the password and without being counted.

State is in this process's memory: the portal runs one process; each RADIUS worker keeps its
own (the kernel sends one NAS's packets to one worker, so a source meets one throttle; an
account attacked through several workers is throttled per worker). A restart forgets it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass

DEFAULT_FREE_FAILURES = 5
DEFAULT_SOURCE_MAX_SECONDS = 900.0
DEFAULT_ACCOUNT_MAX_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class Backoff:
    """`free` failures cost nothing; the next ones wait `base`, 2 x `base`, ... up to `cap`."""

    free: int = DEFAULT_FREE_FAILURES
    base: float = 1.0
    cap: float = DEFAULT_SOURCE_MAX_SECONDS

    def delay(self, failures: int) -> float:
        if failures < self.free:
            return 0.0
        return min(self.cap, self.base * 2.0 ** min(failures - self.free, 62))


class Throttle:
    """Failure counts per key (`source:...` and `account:...`), bounded in memory."""

    def __init__(
        self,
        *,
        source: Backoff | None = None,
        account: Backoff | None = None,
        forget_after: float = 3600.0,
        max_keys: int = 100_000,
    ) -> None:
        self.source = source or Backoff()
        self.account = account or Backoff(cap=DEFAULT_ACCOUNT_MAX_SECONDS)
        # A key quiet for this long (after its wait) starts again from zero.
        self.forget_after = forget_after
        self.max_keys = max_keys
        self._failures: dict[str, tuple[int, float]] = {}
        self._lock = threading.Lock()
        self.refused = 0  # attempts answered "wait" (a counter for the operator)

    @classmethod
    def from_limits(
        cls,
        *,
        free: int = DEFAULT_FREE_FAILURES,
        source_max_seconds: float = DEFAULT_SOURCE_MAX_SECONDS,
        account_max_seconds: float = DEFAULT_ACCOUNT_MAX_SECONDS,
    ) -> Throttle:
        return cls(
            source=Backoff(free=free, cap=source_max_seconds),
            account=Backoff(free=free, cap=account_max_seconds),
        )

    def _keys(self, sources: Iterable[str], account: str) -> list[tuple[str, Backoff]]:
        keys = [(f"source:{s}", self.source) for s in sources if s]
        keys.append((f"account:{account.strip().lower()}", self.account))
        return keys

    def _wait(self, key: str, backoff: Backoff, now: float) -> float:
        entry = self._failures.get(key)
        if entry is None:
            return 0.0
        failures, last = entry
        delay = backoff.delay(failures)
        if now - last > delay + self.forget_after:
            del self._failures[key]
            return 0.0
        return max(0.0, last + delay - now)

    def retry_after(self, *, sources: Iterable[str], account: str, now: float) -> float:
        """Seconds until the next attempt for this account from these sources may be tried."""
        with self._lock:
            return max(self._wait(k, b, now) for k, b in self._keys(sources, account))

    def begin(self, *, sources: Iterable[str], account: str, now: float) -> float:
        """0.0 and the attempt counted as a failure (until `succeeded`), or the seconds to wait
        (nothing counted: the caller refuses without checking the password)."""
        keys = self._keys(sources, account)
        with self._lock:
            wait = max(self._wait(k, b, now) for k, b in keys)
            if wait > 0:
                self.refused += 1
                return wait
            for key, _ in keys:
                failures, _last = self._failures.pop(key, (0, now))
                self._failures[key] = (failures + 1, now)  # re-inserted: newest last
            while len(self._failures) > self.max_keys:  # bounded: forget the oldest
                del self._failures[next(iter(self._failures))]
        return 0.0

    def succeeded(self, *, sources: Iterable[str], account: str) -> None:
        """The password was right: the account starts again; each source gets its charge back."""
        keys = self._keys(sources, account)
        with self._lock:
            for key, _ in keys[:-1]:
                entry = self._failures.get(key)
                if entry is not None:
                    if entry[0] <= 1:
                        del self._failures[key]
                    else:
                        self._failures[key] = (entry[0] - 1, entry[1])
            self._failures.pop(keys[-1][0], None)
