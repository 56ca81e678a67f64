"""The sign-in throttle's failure counts, shared by every portal and RADIUS node
(`service/throttle.py`, issue 13).

On PostgreSQL the table is UNLOGGED (migration 0013): a crash may empty it, which costs an
attacker's count and nothing else, and its constant small writes cost no WAL. Times are
seconds since the epoch (the throttle's own clock arithmetic), not timestamps.
"""

from __future__ import annotations

from sqlalchemy import Double, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from service.models.base import Base


class SigninFailure(Base):
    """One throttle key (`source:...` or `account:...`): its failures, when the last was
    charged, the wait that count earns, and when the key is forgotten."""

    __tablename__ = "signin_failures"
    __table_args__ = (Index("ix_signin_failures_forget_at", "forget_at"),)

    key: Mapped[str] = mapped_column(String(512), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer)
    last_at: Mapped[float] = mapped_column(Double)  # epoch seconds of the last charge
    delay_seconds: Mapped[float] = mapped_column(Double)  # the wait after `last_at`
    forget_at: Mapped[float] = mapped_column(Double)  # quiet until then: starts again from 0
