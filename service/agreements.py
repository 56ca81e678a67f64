"""Agreements (visitor AUA, staff BYOD statement), their versions, and signatures."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from service import audit, enforcement
from service.enums import AgreementKind, AuditTag, SignatureSource
from service.errors import Invalid, NotFound
from service.facts import load_policy
from service.mac import normalize_mac
from service.models import Agreement, Device, Person, Signature, Site
from service.policy.model import SitePolicy as CompiledPolicy
from service.sites import get_site


def parse_kind(value: str) -> AgreementKind:
    try:
        return AgreementKind(value)
    except ValueError as exc:
        known = ", ".join(k.value for k in AgreementKind)
        raise Invalid(f"unknown agreement kind {value!r} (known: {known})") from exc


def publish_agreement(
    session: Session,
    *,
    kind: AgreementKind,
    text: str,
    actor: str,
    title: str | None = None,
    site_code: str | None = None,
) -> Agreement:
    """A new version of an agreement; earlier signatures stay valid for what they signed."""
    body = text.strip()
    if len(body) < 20:
        raise Invalid("the agreement text is empty or too short to be an agreement")
    site_id = get_site(session, site_code).id if site_code else None
    version = (
        session.scalar(
            select(func.max(Agreement.version)).where(
                Agreement.kind == kind,
                Agreement.site_id.is_(None) if site_id is None else Agreement.site_id == site_id,
            )
        )
        or 0
    ) + 1
    first_line = body.splitlines()[0].strip("# ").strip()
    agreement = Agreement(
        kind=kind,
        site_id=site_id,
        version=version,
        title=(title or first_line)[:255],
        text=body,
        sha256=hashlib.sha256(body.encode()).hexdigest(),
        published_by=actor,
    )
    session.add(agreement)
    session.flush()
    audit.record(
        session,
        actor=actor,
        tag=AuditTag.AGREEMENT_PUBLISH,
        subject=kind.value,
        detail={"version": version, "sha256": agreement.sha256, "site": site_code},
        changes_decisions=False,
    )
    return agreement


def current_agreement(
    session: Session, kind: AgreementKind, site_code: str | None = None
) -> Agreement:
    """The newest version for the site, else the newest trust-wide version."""
    query = select(Agreement).where(Agreement.kind == kind)
    if site_code:
        site = get_site(session, site_code)
        query = query.where(or_(Agreement.site_id == site.id, Agreement.site_id.is_(None)))
        query = query.order_by(Agreement.site_id.is_(None), Agreement.version.desc())
    else:
        query = query.where(Agreement.site_id.is_(None)).order_by(Agreement.version.desc())
    agreement = session.scalars(query.limit(1)).first()
    if agreement is None:
        raise NotFound(
            f"no {kind.value} agreement published (schoolgate agreement publish {kind.value} FILE)"
        )
    return agreement


def aua_expiry(policy: CompiledPolicy, signed_at: datetime) -> datetime:
    """When a visitor AUA signed at `signed_at` stops counting: the end of the school day
    (or midnight when signed after it), or a fixed duration, as the site policy says."""
    if policy.aua_valid_until != "end_of_day":
        return signed_at + timedelta(seconds=int(policy.aua_valid_until))
    local = signed_at.astimezone(policy.tz)
    end_minute = policy.school_day_ends
    end = local.replace(hour=end_minute // 60, minute=end_minute % 60, second=0, microsecond=0)
    if end <= local:
        nxt = (local + timedelta(days=1)).date()
        end = datetime(nxt.year, nxt.month, nxt.day, tzinfo=policy.tz)
    return end.astimezone(UTC)


def sign_agreement(
    session: Session,
    *,
    kind: AgreementKind,
    typed_name: str,
    signed_at: datetime,
    source: SignatureSource,
    actor: str,
    person: Person | None = None,
    device_mac: str | None = None,
    site_code: str | None = None,
    client_ip: str | None = None,
    user_agent: str | None = None,
    organisation: str | None = None,
    visiting: str | None = None,
    now: datetime | None = None,
) -> Signature:
    """Record a signature of the current version, for a person and/or a device."""
    if not typed_name.strip():
        raise Invalid("the signer's typed name is required")
    if signed_at.tzinfo is None:
        raise Invalid("the signing time needs a time zone")
    device: Device | None = None
    if device_mac:
        canonical = normalize_mac(device_mac)
        device = session.scalar(select(Device).where(Device.mac == canonical))
        if device is None:
            raise NotFound(f"no device with MAC {canonical}")
    if person is None and device is None:
        raise Invalid("a signature needs a person or a device")
    if site_code is None:
        site_id = device.site_id if device is not None else person.site_id  # type: ignore[union-attr]
        site_code = session.scalar(select(Site.code).where(Site.id == site_id))
    agreement = current_agreement(session, kind, site_code)
    valid_until = None
    if kind is AgreementKind.VISITOR_AUA and site_code:
        valid_until = aua_expiry(load_policy(session, site_code), signed_at)
    device_ids = [device.id] if device is not None else []
    if person is not None:
        device_ids += list(session.scalars(select(Device.id).where(Device.owner_id == person.id)))
    # `now`: the moment the change is decided at (the portal's clock), not `signed_at`, which
    # may be a paper form's date.
    with enforcement.watch(session, device_ids=device_ids, reason=f"{kind.value} signed", now=now):
        signature = Signature(
            agreement_id=agreement.id,
            person_id=person.id if person else None,
            device_id=device.id if device else None,
            agreement_sha256=agreement.sha256,
            signed_at=signed_at,
            typed_name=typed_name.strip(),
            organisation=organisation,
            visiting=visiting,
            client_ip=client_ip,
            user_agent=(user_agent or "")[:512] or None,
            valid_until=valid_until,
            source=source,
            recorded_by=actor,
        )
        session.add(signature)
        session.flush()
        audit.record(
            session,
            actor=actor,
            tag=AuditTag.SIGNATURE_PORTAL
            if source is SignatureSource.PORTAL
            else AuditTag.SIGNATURE_RECORD,
            subject=kind.value,
            detail={
                "signature": signature.id,
                "version": agreement.version,
                "person": person.id if person else None,
                "device": device.mac if device else None,
                "valid_until": valid_until.isoformat() if valid_until else None,
            },
        )
    return signature


@dataclass(frozen=True, slots=True)
class SignatureRow:
    """One signature with its agreement's kind and version, as the admin API lists it."""

    id: int
    kind: AgreementKind
    version: int
    agreement_sha256: str
    typed_name: str
    organisation: str | None
    visiting: str | None
    device: str | None  # the device's MAC
    person_id: int | None
    signed_at: datetime
    valid_until: datetime | None
    client_ip: str | None
    source: SignatureSource


def list_signatures(*, session: Session) -> list[SignatureRow]:
    """Every signature, oldest first: one query."""
    rows = session.execute(
        select(Signature, Agreement.kind, Agreement.version, Device.mac)
        .join(Agreement, Agreement.id == Signature.agreement_id)
        .outerjoin(Device, Device.id == Signature.device_id)
        .order_by(Signature.signed_at)
    )
    return [
        SignatureRow(
            id=sig.id,
            kind=kind,
            version=version,
            agreement_sha256=sig.agreement_sha256,
            typed_name=sig.typed_name,
            organisation=sig.organisation,
            visiting=sig.visiting,
            device=mac,
            person_id=sig.person_id,
            signed_at=sig.signed_at,
            valid_until=sig.valid_until,
            client_ip=sig.client_ip,
            source=sig.source,
        )
        for sig, kind, version, mac in rows
    ]


@dataclass(frozen=True, slots=True)
class AgreementSummary:
    """One published version of an agreement and how many signatures it has."""

    kind: AgreementKind
    site: str | None  # None: trust-wide
    version: int
    title: str
    sha256: str
    published_at: datetime
    signatures: int


def list_agreements(*, session: Session) -> list[AgreementSummary]:
    """Every published version, ordered by kind and version, with its signature count: one
    query."""
    query = (
        select(Agreement, Site.code, func.count(Signature.id))
        .outerjoin(Site, Agreement.site_id == Site.id)
        .outerjoin(Signature, Signature.agreement_id == Agreement.id)
        .group_by(Agreement.id, Site.code)
        .order_by(Agreement.kind, Agreement.version)
    )
    return [
        AgreementSummary(
            kind=agreement.kind,
            site=code,
            version=agreement.version,
            title=agreement.title,
            sha256=agreement.sha256,
            published_at=agreement.published_at,
            signatures=count,
        )
        for agreement, code, count in session.execute(query)
    ]
