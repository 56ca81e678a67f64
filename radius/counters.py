"""Counters of what the server received, answered and dropped (and why)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

# Upper bounds (nanoseconds) of the answer-latency histogram's buckets: `bisect` gives the
# index of an answer's bucket, `len(LATENCY_BOUNDS_NS)` being +Inf. Exported in seconds by
# radius/metrics.py.
LATENCY_BOUNDS_NS = (
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    1_000_000_000,
)


@dataclass
class Counters:
    """Plain integers bumped on the hot path; logged at INFO every minute and on shutdown."""

    received: int = 0
    answered: int = 0
    accepted: int = 0
    rejected: int = 0
    accounting: int = 0
    duplicates: int = 0
    status_server: int = 0
    decisions_logged: int = 0
    decisions_lost: int = 0
    # The spool (radius/spool.py): records waiting in it, written to it, replayed from it
    # (accounting and decision rows together; set by the worker from its writers' tallies).
    spool_depth: int = 0
    spooled: int = 0
    replayed: int = 0
    # PAP requests refused by the shared throttle (another node's failures) before argon2.
    pap_shared_throttled: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    # Requests by (NAS name, RADIUS code), counted once the NAS is known; answers to
    # Access-Requests by (access level, latency bucket): decisions and the latency histogram
    # in one dict update per answer. Read at scrape time (radius/metrics.py).
    requests: dict[tuple[str, int], int] = field(default_factory=dict)
    answers: dict[tuple[str, int], int] = field(default_factory=dict)

    def drop(self, reason: str) -> None:
        self.dropped[reason] += 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "answered": self.answered,
            "accepted": self.accepted,
            "rejected": self.rejected,
            "accounting": self.accounting,
            "duplicates": self.duplicates,
            "status_server": self.status_server,
            "decisions_logged": self.decisions_logged,
            "decisions_lost": self.decisions_lost,
            "spool_depth": self.spool_depth,
            "spooled": self.spooled,
            "replayed": self.replayed,
            "pap_shared_throttled": self.pap_shared_throttled,
            "dropped": dict(sorted(self.dropped.items())),
        }

    def summary(self) -> str:
        dropped = ", ".join(f"{k}={v}" for k, v in sorted(self.dropped.items())) or "none"
        return (
            f"received={self.received} answered={self.answered} accepted={self.accepted} "
            f"rejected={self.rejected} accounting={self.accounting} "
            f"duplicates={self.duplicates} status_server={self.status_server} "
            f"decisions_logged={self.decisions_logged} decisions_lost={self.decisions_lost} "
            f"spool_depth={self.spool_depth} spooled={self.spooled} replayed={self.replayed} "
            f"pap_shared_throttled={self.pap_shared_throttled} dropped: {dropped}"
        )
