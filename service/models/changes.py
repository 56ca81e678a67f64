"""The change log: which facts each change-counter value changed (service/change_log.py)."""

from __future__ import annotations

from enum import StrEnum

from sqlalchemy import Index, String
from sqlalchemy.orm import Mapped, mapped_column

from service.models.base import Base, BigIntId, intpk, utc, utcnow


class ChangeKind(StrEnum):
    MAC = "mac"  # a device, by MAC: its row (class, status, owner, site) or its removal
    DEVICE = "device"  # a device, by id: its exceptions or signatures
    PERSON = "person"  # a person, by id: name, role, active, login; their devices' facts
    FULL = "full"  # a NAS client, site, policy or agreement kind: rebuild the whole snapshot
    PRUNED = "pruned"  # every row up to this version was pruned: older snapshots rebuild


class ChangeLogEntry(Base):
    """One fact a committed change touched: `kind` is a `ChangeKind`."""

    __tablename__ = "change_log"
    __table_args__ = (Index("ix_change_log_version", "version"),)

    id: Mapped[intpk]
    # The change counter value the transaction committed with (or any it held the lock for).
    version: Mapped[int] = mapped_column(BigIntId)
    kind: Mapped[str] = mapped_column(String(16))
    key: Mapped[str] = mapped_column(String(64))
    recorded_at: Mapped[utc] = mapped_column(default=utcnow)
