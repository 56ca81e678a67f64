"""The accounting ledger: one row per Accounting-Request applied, keyed by the packet's
identity, so a record written twice (before an outage and again from the RADIUS spool) is
applied once (`service.accounting.apply_accounting`, migration 0008_sp)."""

from __future__ import annotations

from sqlalchemy import BigInteger, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from service.models.base import Base, intpk, utc


class AccountingRecord(Base):
    __tablename__ = "accounting_records"
    __table_args__ = (
        UniqueConstraint("record_key", name="uq_accounting_records_record_key"),
        Index("ix_accounting_records_event_at", "event_at"),
    )

    id: Mapped[intpk]
    record_key: Mapped[str] = mapped_column(String(64))
    nas_id: Mapped[int | None] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"))
    acct_session_id: Mapped[str | None] = mapped_column(String(255))
    status: Mapped[int] = mapped_column(Integer)
    event_at: Mapped[utc]
