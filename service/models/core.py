"""The core tables: sites, NAS clients, people, devices, agreements, signatures, approvals,
exceptions, incidents, site policies, the decision log, accounting sessions, the audit log and
the change counter that tells the RADIUS snapshot to rebuild."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    Boolean,
    Enum,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from service.enums import (
    Access,
    AgreementKind,
    DeviceClass,
    DeviceStatus,
    IncidentKind,
    NasVendor,
    Role,
    SignatureSource,
)
from service.models.base import (
    Base,
    BigIntId,
    JSONType,
    UTCDateTime,
    intpk,
    utc,
    utcnow,
)


def enum_column(enum: type[StrEnum]) -> Enum:
    """Store a StrEnum as its value in a VARCHAR (no native PG enum: migrations stay simple)."""
    return Enum(
        enum,
        native_enum=False,
        create_constraint=False,
        length=32,
        values_callable=lambda members: [m.value for m in members],
    )


class Site(Base):
    __tablename__ = "sites"

    id: Mapped[intpk]
    code: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(255))
    timezone: Mapped[str] = mapped_column(String(64), default="Europe/London")
    created_at: Mapped[utc] = mapped_column(default=utcnow)


class Location(Base):
    """A named place at a site (staffroom, exam hall), matched from the policy's patterns."""

    __tablename__ = "locations"
    __table_args__ = (UniqueConstraint("site_id", "name", name="uq_locations_site_name"),)

    id: Mapped[intpk]
    site_id: Mapped[int] = mapped_column(BigIntId, ForeignKey("sites.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(128))
    patterns: Mapped[list[str]] = mapped_column(JSONType)


class NasClient(Base):
    __tablename__ = "nas_clients"
    __table_args__ = (UniqueConstraint("site_id", "name", name="uq_nas_clients_site_name"),)

    id: Mapped[intpk]
    site_id: Mapped[int] = mapped_column(BigIntId, ForeignKey("sites.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(128))
    address: Mapped[str] = mapped_column(String(64))  # an IP or a CIDR, IPv4 or IPv6
    secret: Mapped[str] = mapped_column(String(255))
    vendor: Mapped[NasVendor] = mapped_column(enum_column(NasVendor), default=NasVendor.GENERIC)
    coa_port: Mapped[int] = mapped_column(Integer, default=3799)
    require_message_authenticator: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[utc] = mapped_column(default=utcnow)

    site: Mapped[Site] = relationship()


class Person(Base):
    __tablename__ = "people"

    id: Mapped[intpk]
    site_id: Mapped[int] = mapped_column(BigIntId, ForeignKey("sites.id", ondelete="CASCADE"))
    role: Mapped[Role] = mapped_column(enum_column(Role))
    name: Mapped[str] = mapped_column(String(255))
    email: Mapped[str | None] = mapped_column(String(255), unique=True)
    username: Mapped[str | None] = mapped_column(String(128), unique=True)
    year_group: Mapped[int | None] = mapped_column(Integer)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    left_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    password_hash: Mapped[str | None] = mapped_column(String(255))
    failed_logins: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[utc] = mapped_column(default=utcnow)

    site: Mapped[Site] = relationship()


class Device(Base):
    __tablename__ = "devices"
    __table_args__ = (Index("ix_devices_owner_id", "owner_id"),)

    id: Mapped[intpk]
    site_id: Mapped[int] = mapped_column(BigIntId, ForeignKey("sites.id", ondelete="CASCADE"))
    mac: Mapped[str] = mapped_column(String(17), unique=True)
    device_class: Mapped[DeviceClass] = mapped_column(enum_column(DeviceClass))
    owner_id: Mapped[int | None] = mapped_column(
        BigIntId, ForeignKey("people.id", ondelete="SET NULL")
    )
    asset_tag: Mapped[str | None] = mapped_column(String(128))
    name: Mapped[str | None] = mapped_column(String(255))
    status: Mapped[DeviceStatus] = mapped_column(enum_column(DeviceStatus))
    status_reason: Mapped[str | None] = mapped_column(Text)
    needs_reassignment: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[utc] = mapped_column(default=utcnow)
    updated_at: Mapped[utc] = mapped_column(default=utcnow, onupdate=utcnow)
    status_changed_at: Mapped[utc] = mapped_column(default=utcnow)

    site: Mapped[Site] = relationship()
    owner: Mapped[Person | None] = relationship()


class Agreement(Base):
    """A published version of the visitor AUA or the staff BYOD statement, with its hash."""

    __tablename__ = "agreements"
    __table_args__ = (
        UniqueConstraint("kind", "site_id", "version", name="uq_agreements_kind_site_version"),
    )

    id: Mapped[intpk]
    kind: Mapped[AgreementKind] = mapped_column(enum_column(AgreementKind))
    site_id: Mapped[int | None] = mapped_column(
        BigIntId, ForeignKey("sites.id", ondelete="CASCADE")
    )
    version: Mapped[int] = mapped_column(Integer)
    title: Mapped[str] = mapped_column(String(255))
    text: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    published_at: Mapped[utc] = mapped_column(default=utcnow)
    published_by: Mapped[str] = mapped_column(String(255))


class Signature(Base):
    __tablename__ = "signatures"
    __table_args__ = (
        Index("ix_signatures_person_id", "person_id"),
        Index("ix_signatures_device_id", "device_id"),
    )

    id: Mapped[intpk]
    agreement_id: Mapped[int] = mapped_column(BigIntId, ForeignKey("agreements.id"))
    person_id: Mapped[int | None] = mapped_column(
        BigIntId, ForeignKey("people.id", ondelete="SET NULL")
    )
    device_id: Mapped[int | None] = mapped_column(
        BigIntId, ForeignKey("devices.id", ondelete="SET NULL")
    )
    agreement_sha256: Mapped[str] = mapped_column(String(64))
    signed_at: Mapped[utc]
    typed_name: Mapped[str] = mapped_column(String(255))
    organisation: Mapped[str | None] = mapped_column(String(255))
    visiting: Mapped[str | None] = mapped_column(String(255))
    client_ip: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(512))
    valid_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    source: Mapped[SignatureSource] = mapped_column(enum_column(SignatureSource))
    recorded_by: Mapped[str | None] = mapped_column(String(255))
    # How the visitor was verified (`[visitor] verify`): the code they typed, or the
    # sponsorship their member of staff approved (service/models/visitors.py).
    visitor_code_id: Mapped[int | None] = mapped_column(
        BigIntId, ForeignKey("visitor_codes.id", ondelete="SET NULL")
    )
    sponsorship_id: Mapped[int | None] = mapped_column(
        BigIntId, ForeignKey("sponsorships.id", ondelete="SET NULL")
    )

    agreement: Mapped[Agreement] = relationship()
    person: Mapped[Person | None] = relationship()
    device: Mapped[Device | None] = relationship()


class Approval(Base):
    __tablename__ = "approvals"

    id: Mapped[intpk]
    device_id: Mapped[int] = mapped_column(BigIntId, ForeignKey("devices.id", ondelete="CASCADE"))
    approved_by: Mapped[str] = mapped_column(String(255))
    approved_at: Mapped[utc] = mapped_column(default=utcnow)
    note: Mapped[str | None] = mapped_column(Text)


class AccessException(Base):
    """A case-by-case decision (a pupil's medical device, SLT permission) that widens access."""

    __tablename__ = "exceptions"
    __table_args__ = (Index("ix_exceptions_device_id", "device_id"),)

    id: Mapped[intpk]
    device_id: Mapped[int] = mapped_column(BigIntId, ForeignKey("devices.id", ondelete="CASCADE"))
    access: Mapped[Access] = mapped_column(enum_column(Access))
    reason: Mapped[str] = mapped_column(Text)
    approved_by: Mapped[str] = mapped_column(String(255))
    valid_from: Mapped[utc]
    valid_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[utc] = mapped_column(default=utcnow)

    device: Mapped[Device] = relationship()


class Incident(Base):
    __tablename__ = "incidents"

    id: Mapped[intpk]
    device_id: Mapped[int] = mapped_column(BigIntId, ForeignKey("devices.id", ondelete="CASCADE"))
    kind: Mapped[IncidentKind] = mapped_column(enum_column(IncidentKind))
    reported_by: Mapped[str] = mapped_column(String(255))
    reported_at: Mapped[utc] = mapped_column(default=utcnow)
    description: Mapped[str | None] = mapped_column(Text)
    dpo_notified_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    device: Mapped[Device] = relationship()


class SitePolicy(Base):
    """Every loaded version of a site's TOML policy; the highest version is in force."""

    __tablename__ = "site_policies"
    __table_args__ = (UniqueConstraint("site_id", "version", name="uq_site_policies_site_version"),)

    id: Mapped[intpk]
    site_id: Mapped[int] = mapped_column(BigIntId, ForeignKey("sites.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    source_name: Mapped[str] = mapped_column(String(512))
    toml: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    loaded_at: Mapped[utc] = mapped_column(default=utcnow)
    loaded_by: Mapped[str] = mapped_column(String(255))


class DecisionRecord(Base):
    """The decision log: one row per RADIUS answer (and per `policy explain` kept on purpose)."""

    __tablename__ = "decisions"
    __table_args__ = (
        Index("ix_decisions_decided_at", "decided_at"),
        Index("ix_decisions_mac", "mac"),
    )

    id: Mapped[intpk]
    decided_at: Mapped[utc]
    site_code: Mapped[str | None] = mapped_column(String(64))
    nas_name: Mapped[str | None] = mapped_column(String(128))
    nas_ip: Mapped[str | None] = mapped_column(String(64))
    mac: Mapped[str | None] = mapped_column(String(17))
    username: Mapped[str | None] = mapped_column(String(255))
    location: Mapped[str | None] = mapped_column(String(128))
    access: Mapped[str] = mapped_column(String(32))
    vlan: Mapped[int | None] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(Text)
    rule: Mapped[str] = mapped_column(String(255))
    session_timeout: Mapped[int | None] = mapped_column(Integer)
    micros: Mapped[int | None] = mapped_column(Integer)
    # Who wrote the row and its sequence number (radius/decision_log.py): a row replayed from
    # the spool after an outage is stored once (migration 0008_sp).
    log_key: Mapped[str | None] = mapped_column(String(64), unique=True)


class AccountingSession(Base):
    """RFC 2866 accounting kept as one row per session; maps an IP to a device and person."""

    __tablename__ = "accounting_sessions"
    __table_args__ = (
        UniqueConstraint(
            "nas_id", "acct_session_id", "mac", name="uq_accounting_sessions_nas_session_mac"
        ),
        Index("ix_accounting_sessions_mac", "mac"),
        Index("ix_accounting_sessions_framed_ip", "framed_ip"),
        Index("ix_accounting_sessions_started_at", "started_at"),
        Index("ix_accounting_sessions_changed_at", "changed_at"),
    )

    id: Mapped[intpk]
    nas_id: Mapped[int | None] = mapped_column(
        BigIntId, ForeignKey("nas_clients.id", ondelete="SET NULL")
    )
    nas_ip: Mapped[str | None] = mapped_column(String(64))
    nas_identifier: Mapped[str | None] = mapped_column(String(255))
    site_code: Mapped[str | None] = mapped_column(String(64))
    mac: Mapped[str | None] = mapped_column(String(17))
    username: Mapped[str | None] = mapped_column(String(255))
    framed_ip: Mapped[str | None] = mapped_column(String(64))
    acct_session_id: Mapped[str] = mapped_column(String(255))
    called_station_id: Mapped[str | None] = mapped_column(String(255))
    nas_port_id: Mapped[str | None] = mapped_column(String(255))
    location: Mapped[str | None] = mapped_column(String(128))
    started_at: Mapped[utc]
    updated_at: Mapped[utc]
    stopped_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    session_time: Mapped[int | None] = mapped_column(Integer)
    input_octets: Mapped[int] = mapped_column(BigIntId, default=0)
    output_octets: Mapped[int] = mapped_column(BigIntId, default=0)
    terminate_cause: Mapped[str | None] = mapped_column(String(64))
    # When this row was last written, by the writer's clock (`updated_at` is the time the
    # record reports): what a running monitor follows (monitor/attribution.py).
    changed_at: Mapped[utc] = mapped_column(default=utcnow)


class AuditEntry(Base):
    """Append-only, hash-chained record of every administrative change."""

    __tablename__ = "audit_log"

    id: Mapped[intpk]
    at: Mapped[utc]
    actor: Mapped[str] = mapped_column(String(255))
    tag: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(String(255))
    detail: Mapped[dict[str, Any]] = mapped_column(JSONType)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64), unique=True)
    # 0: plain SHA-256, written before the audit key existed; 1: HMAC-SHA256 with the audit key
    # (service/audit.py). Once a keyed entry exists, every later one must be keyed.
    chain_version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class ChangeCounter(Base):
    """One row; bumped by every change that can alter a decision. Servers poll it."""

    __tablename__ = "change_counter"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    value: Mapped[int] = mapped_column(BigIntId, default=0)
    changed_at: Mapped[utc] = mapped_column(default=utcnow)
