"""Counters of what the server received, answered and dropped (and why)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


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
    dropped: Counter[str] = field(default_factory=Counter)

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
            f"dropped: {dropped}"
        )
