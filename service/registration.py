"""Registration at the portal: a visitor signs the AUA for their own device, a member of staff
registers a personal device and signs the BYOD statement.

Both have one shape (`_register`): add the device unless it is known and may be signed for,
then record the signature, all inside one `enforcement.watch` at the portal's `now`, so the
CoA the change causes is decided at the same moment the portal decided the change at.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from service import audit, enforcement, visitors
from service.agreements import current_agreement, sign_agreement
from service.devices import add_device, find_device
from service.enums import (
    AgreementKind,
    AuditTag,
    DeviceClass,
    DeviceStatus,
    SignatureSource,
    VisitorVerify,
)
from service.errors import Invalid, PolicyError
from service.explain import class_refusal
from service.facts import load_policy
from service.models import Device, Person, Signature
from service.signin import active_person
from service.text import check_text, strip_controls

MAX_NAME = 200  # the longest device name a visitor's own name and organisation make


class Refused(Invalid):
    """The school's policy gives every device of this class no network access: registering
    one could never let it on. The message is the school's own explanation."""


def refuse_if_never_allowed(*, session: Session, site_code: str, device_class: DeviceClass) -> None:
    """Raise `Refused` (with the school's explanation) when the policy at `site_code` gives
    `device_class` no network access; the portal asks before showing a form, and the
    registrations ask again before storing anything."""
    refusal = class_refusal(session=session, site_code=site_code, device_class=device_class)
    if refusal is not None:
        raise Refused(refusal)


@dataclass(frozen=True, slots=True)
class Registration:
    """What a registration stored: the device (new or known) and the signature."""

    device: Device
    signature: Signature
    device_added: bool


@dataclass(frozen=True, slots=True)
class _NewDevice:
    device_class: DeviceClass
    name: str
    owner: Person | None = None
    status: DeviceStatus | None = None


def _register(
    session: Session,
    *,
    kind: AgreementKind,
    mac: str,
    site_code: str,
    new_device: _NewDevice,
    may_sign_for: Callable[[Device], None],
    typed_name: str,
    actor: str,
    now: datetime,
    person: Person | None = None,
    client_ip: str | None = None,
    user_agent: str | None = None,
    organisation: str | None = None,
    visiting: str | None = None,
    watch_device_ids: list[int] | None = None,
    signed_at: datetime | None = None,
    verify: Callable[[Signature], None] | None = None,
) -> Registration:
    """Add the device if it is new (else `may_sign_for` raises Invalid when it is someone
    else's), then sign: one CoA request for the session, decided at `now`."""
    for field, value in (
        ("the name typed to sign", typed_name),
        ("the organisation", organisation),
        ("whom you are visiting", visiting),
    ):
        if value:
            check_text(value, field=field)
    if user_agent:  # sent by the browser, not typed: kept, without what a terminal would run
        user_agent = strip_controls(user_agent)
    with enforcement.watch(
        session,
        macs=[mac],
        device_ids=watch_device_ids,
        reason=f"{kind.value} signed",
        now=now,
    ):
        device = find_device(session=session, mac=mac)
        added = device is None
        if device is None:
            device = add_device(
                session,
                mac=mac,
                site_code=site_code,
                device_class=new_device.device_class,
                owner=new_device.owner,
                name=new_device.name,
                status=new_device.status,
                actor=actor,
                now=now,
            )
        else:
            may_sign_for(device)
        signature = sign_agreement(
            session,
            kind=kind,
            typed_name=typed_name,
            signed_at=signed_at or now,
            source=SignatureSource.PORTAL,
            actor=actor,
            person=person,
            device_mac=mac,
            site_code=site_code,
            client_ip=client_ip,
            user_agent=user_agent,
            organisation=organisation,
            visiting=visiting,
            now=now,
        )
        if verify is not None:  # record how the visitor was verified, with the signature
            verify(signature)
            session.flush()
    return Registration(device=device, signature=signature, device_added=added)


def register_visitor(
    *,
    session: Session,
    mac: str,
    site_code: str,
    name: str,
    typed_name: str,
    agreement_version: str | None,
    now: datetime,
    organisation: str | None = None,
    visiting: str | None = None,
    client_ip: str | None = None,
    user_agent: str | None = None,
    actor: str = "portal",
    code: str | None = None,
) -> Registration:
    """A visitor signs the current AUA for their own device (added as visitor-owned).

    `agreement_version`: the version the visitor read; a newer one published meanwhile is
    refused, so nobody signs a text they did not see. `code`: the visitor code reception
    issued, required (and spent, if per-visitor) when the policy says `[visitor] verify =
    "code"`; a wrong one raises `visitors.BadCode`. With `verify = "sponsor"` a visitor
    cannot sign here: `visitors.request_sponsorship`, then `approve_sponsored_visitor`.
    """
    check_text(name, field="your name")
    refuse_if_never_allowed(
        session=session, site_code=site_code, device_class=DeviceClass.VISITOR_OWNED
    )
    agreement = current_agreement(session, AgreementKind.VISITOR_AUA, site_code)
    if str(agreement.version) != agreement_version:
        raise Invalid(
            "the agreement changed while you were reading it: please "
            "read the current version and sign again"
        )
    verify_mode = load_policy(session, site_code).visitor_verify
    if verify_mode is VisitorVerify.SPONSOR:
        raise PolicyError(
            "visitors here are approved by the member of staff they visit: "
            "name them on the visitor page"
        )
    verify: Callable[[Signature], None] | None = None
    if verify_mode is VisitorVerify.CODE:
        visitor_code = visitors.redeem_code(
            session=session, site_code=site_code, code=code or "", now=now
        )

        def verify(signature: Signature) -> None:
            signature.visitor_code_id = visitor_code.id

    return _register(
        session,
        kind=AgreementKind.VISITOR_AUA,
        mac=mac,
        site_code=site_code,
        new_device=_NewDevice(
            DeviceClass.VISITOR_OWNED,
            f"{name} ({organisation})"[:MAX_NAME] if organisation else name,
        ),
        may_sign_for=_visitors_only,
        typed_name=typed_name,
        actor=actor,
        now=now,
        client_ip=client_ip,
        user_agent=user_agent,
        organisation=organisation,
        visiting=visiting,
        verify=verify,
    )


def _visitors_only(device: Device) -> None:
    if device.device_class is not DeviceClass.VISITOR_OWNED:
        raise Invalid(
            "this device is already registered to the school; "
            "visitor access is for visitors' own devices"
        )


def approve_sponsored_visitor(*, session: Session, token: str, now: datetime) -> Registration:
    """The sponsor followed their approve link: the visitor's signature is recorded as they
    typed it (signed when they asked), with the sponsorship, and the CoA is queued like any
    registration's. The link works once and until it expires."""
    row = visitors.sponsorship_for_link(session=session, token=token, now=now)
    site_code = row.site.code
    agreement = current_agreement(session, AgreementKind.VISITOR_AUA, site_code)
    if agreement.id != row.agreement_id:
        raise Invalid(
            f"The visitor agreement changed after {row.visitor_name} signed it: they need "
            "to sign the new version from the visitor page."
        )
    row.approved_at = now

    def verify(signature: Signature) -> None:
        signature.sponsorship_id = row.id

    registration = _register(
        session,
        kind=AgreementKind.VISITOR_AUA,
        mac=row.device_mac,
        site_code=site_code,
        new_device=_NewDevice(
            DeviceClass.VISITOR_OWNED,
            f"{row.visitor_name} ({row.organisation})"[:MAX_NAME]
            if row.organisation
            else row.visitor_name,
        ),
        may_sign_for=_visitors_only,
        typed_name=row.typed_name,
        actor=f"sponsor:{row.sponsor_email}",
        now=now,
        signed_at=row.requested_at,
        client_ip=row.client_ip,
        user_agent=row.user_agent,
        organisation=row.organisation,
        visiting=row.sponsor_name,
        verify=verify,
    )
    audit.record(
        session,
        actor=f"sponsor:{row.sponsor_email}",
        tag=AuditTag.VISITOR_SPONSOR_APPROVE,
        subject=f"sponsorship:{row.id}",
        detail={"visitor": row.visitor_name, "mac": row.device_mac},
        changes_decisions=False,
    )
    return registration


def register_staff_device(
    *,
    session: Session,
    person_id: int,
    mac: str,
    site_code: str,
    device_name: str,
    typed_name: str,
    now: datetime,
    client_ip: str | None = None,
    user_agent: str | None = None,
) -> Registration:
    """Active staff register their own device (pending the IT office's approval) and sign
    the BYOD statement; a device already theirs is signed for again."""
    person = active_person(session=session, person_id=person_id)
    refuse_if_never_allowed(
        session=session, site_code=site_code, device_class=DeviceClass.STAFF_OWNED
    )
    check_text(device_name, field="the device name")

    def owners_only(device: Device) -> None:
        if device.owner_id != person.id:
            raise Invalid(
                "this device is already registered to someone else: please ask the IT office"
            )

    # The statement covers every device of theirs: watch them all, as sign_agreement does.
    owned = list(session.scalars(select(Device.id).where(Device.owner_id == person.id)))
    return _register(
        session,
        kind=AgreementKind.STAFF_BYOD,
        mac=mac,
        site_code=site_code,
        new_device=_NewDevice(
            DeviceClass.STAFF_OWNED, device_name, owner=person, status=DeviceStatus.PENDING
        ),
        may_sign_for=owners_only,
        typed_name=typed_name,
        actor=f"portal:{person.username or person.id}",
        now=now,
        person=person,
        client_ip=client_ip,
        user_agent=user_agent,
        watch_device_ids=owned,
    )
