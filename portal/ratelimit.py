"""A fixed-window request limit per client IP, kept in memory (one per portal process).

Per node on purpose (issue 13): it runs before every request, the captive probes phones send
constantly included, and must not cost a database write each. It guards this process's CPU;
guessing passwords and visitor codes is slowed by the shared sign-in throttle
(`service/throttle.py`, in the database)."""

from __future__ import annotations

import threading
import time


class RateLimiter:
    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._windows: dict[str, tuple[int, int]] = {}
        self._lock = threading.Lock()

    def allow(self, key: str, now: float | None = None) -> bool:
        if self.per_minute <= 0:
            return True
        minute = int((now if now is not None else time.time()) // 60)
        with self._lock:
            window, count = self._windows.get(key, (minute, 0))
            if window != minute:
                window, count = minute, 0
                if len(self._windows) > 100_000:  # bounded memory under a flood
                    self._windows.clear()
            count += 1
            self._windows[key] = (window, count)
            return count <= self.per_minute
