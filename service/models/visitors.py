"""Tables of visitor verification (`[visitor] verify`): codes reception issues, and
sponsorships a member of staff approves from an email. The signature they led to points back
at them (`signatures.visitor_code_id`, `signatures.sponsorship_id`)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from service.models.base import Base, BigIntId, UTCDateTime, intpk, utc
from service.models.core import Agreement, Person, Site


class VisitorCode(Base):
    """A code reception gave a visitor (or the day's code for every visitor). Only the
    SHA-256 of the site and the code is kept; the code is printed once, when issued."""

    __tablename__ = "visitor_codes"
    __table_args__ = (Index("ix_visitor_codes_code_sha256", "code_sha256"),)

    id: Mapped[intpk]
    site_id: Mapped[int] = mapped_column(BigIntId, ForeignKey("sites.id", ondelete="CASCADE"))
    code_sha256: Mapped[str] = mapped_column(String(64))
    visitor_name: Mapped[str] = mapped_column(String(255))  # "(daily code)" for a daily one
    daily: Mapped[bool] = mapped_column(Boolean, default=False)  # many visitors, until expiry
    issued_by: Mapped[str] = mapped_column(String(255))
    issued_at: Mapped[utc]
    valid_until: Mapped[utc]
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())  # a per-visitor code, once

    site: Mapped[Site] = relationship()


class Sponsorship(Base):
    """A visitor's request to be let in by the member of staff they visit: what they typed on
    the form, kept until the sponsor approves (then it becomes the signature) or it expires.
    Only the SHA-256 of the approve link's secret is kept."""

    __tablename__ = "sponsorships"
    __table_args__ = (Index("ix_sponsorships_device_mac", "device_mac"),)

    id: Mapped[intpk]
    site_id: Mapped[int] = mapped_column(BigIntId, ForeignKey("sites.id", ondelete="CASCADE"))
    sponsor_id: Mapped[int | None] = mapped_column(
        BigIntId, ForeignKey("people.id", ondelete="SET NULL")
    )
    sponsor_email: Mapped[str] = mapped_column(String(255))
    sponsor_name: Mapped[str] = mapped_column(String(255))
    agreement_id: Mapped[int] = mapped_column(BigIntId, ForeignKey("agreements.id"))
    device_mac: Mapped[str] = mapped_column(String(17))
    visitor_name: Mapped[str] = mapped_column(String(255))
    typed_name: Mapped[str] = mapped_column(String(255))
    organisation: Mapped[str | None] = mapped_column(String(255))
    client_ip: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(512))
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    requested_at: Mapped[utc]
    expires_at: Mapped[utc]
    approved_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    site: Mapped[Site] = relationship()
    sponsor: Mapped[Person | None] = relationship()
    agreement: Mapped[Agreement] = relationship()
