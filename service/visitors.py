"""Visitor verification (`[visitor] verify` in the site policy): a visitor shows they are one
before the AUA they sign gives them the internet.

- `code`: reception issues a short code (`schoolgate visitor code`), one per visitor (used
  once) or the day's code (`--daily`, for every visitor until it expires); the visitor types
  it on the form. Only a hash of the site and the code is stored.
- `sponsor`: the visitor types the email of the member of staff they visit, who gets an email
  with an approve link (a random secret: only its hash is stored; single use; it expires).
  Until approved, nothing is signed and the device stays in registration;
  `service.registration.approve_sponsored_visitor` then signs, recording the sponsorship.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service import audit
from service.agreements import current_agreement
from service.enums import AgreementKind, AuditTag, Role
from service.errors import Conflict, Invalid, NotFound
from service.facts import load_policy
from service.mac import normalize_mac
from service.models import Person
from service.models.visitors import Sponsorship, VisitorCode
from service.sites import get_site
from service.text import check_text, strip_controls

# No 0/O, 1/I/L: read aloud or off a slip, every character is one character.
CODE_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
CODE_LENGTH = 6
DEFAULT_CODE_SECONDS = 8 * 3600
MAX_CODE_SECONDS = 7 * 86400
DAILY_NAME = "(daily code)"


class BadCode(Invalid):
    """The code typed is wrong, expired or used: the portal counts it against the source."""


@dataclass(frozen=True, slots=True)
class VisitorCodeInfo:
    """A code as listed (never the code itself: only its hash is kept)."""

    id: int
    site_code: str
    visitor_name: str
    daily: bool
    issued_by: str
    issued_at: datetime
    valid_until: datetime
    used_at: datetime | None


def normalize_code(text: str) -> str:
    """What the visitor typed, as issued: capitals, without spaces or dashes."""
    return "".join(ch for ch in text.upper() if ch not in " -\t")


def hash_code(site_code: str, code: str) -> str:
    return hashlib.sha256(f"visitor-code:{site_code}:{normalize_code(code)}".encode()).hexdigest()


def _info(row: VisitorCode) -> VisitorCodeInfo:
    return VisitorCodeInfo(
        id=row.id,
        site_code=row.site.code,
        visitor_name=row.visitor_name,
        daily=row.daily,
        issued_by=row.issued_by,
        issued_at=row.issued_at,
        valid_until=row.valid_until,
        used_at=row.used_at,
    )


def _end_of_local_day(moment: datetime, tz_name: str) -> datetime:
    from zoneinfo import ZoneInfo

    local = moment.astimezone(ZoneInfo(tz_name))
    tomorrow = (local + timedelta(days=1)).date()
    end = datetime(tomorrow.year, tomorrow.month, tomorrow.day, tzinfo=local.tzinfo)
    return end.astimezone(moment.tzinfo)


def issue_code(
    *,
    session: Session,
    site_code: str,
    actor: str,
    now: datetime,
    visitor_name: str | None = None,
    valid_for_seconds: int | None = None,
    daily: bool = False,
    code: str | None = None,
) -> tuple[VisitorCodeInfo, str]:
    """A new code and its text (returned once). A per-visitor code needs the visitor's name
    and lasts `valid_for_seconds` (8 hours by default); a daily code lasts until midnight at
    the site unless `valid_for_seconds` says otherwise. `code`: the text to use instead of a
    random one (only the demo school's documented code)."""
    site = get_site(session, site_code)
    if daily:
        name = visitor_name.strip() if visitor_name else DAILY_NAME
    else:
        if not visitor_name or not visitor_name.strip():
            raise Invalid("a visitor code needs the visitor's --name (or use --daily)")
        name = visitor_name.strip()
    check_text(name, field="the visitor's name")
    if len(name) > 200:
        raise Invalid("the visitor's name is too long (at most 200 characters)")
    if valid_for_seconds is not None and not 0 < valid_for_seconds <= MAX_CODE_SECONDS:
        raise Invalid("--valid-for must be between 1 second and 7d")
    if valid_for_seconds is not None:
        valid_until = now + timedelta(seconds=valid_for_seconds)
    elif daily:
        valid_until = _end_of_local_day(now, load_policy(session, site.code).timezone)
    else:
        valid_until = now + timedelta(seconds=DEFAULT_CODE_SECONDS)
    if code is not None and (
        len(code) != CODE_LENGTH or any(ch not in CODE_ALPHABET for ch in code)
    ):
        raise Invalid(f"a visitor code is {CODE_LENGTH} of {CODE_ALPHABET}")
    for _ in range(20):  # an open code with the same text would make both ambiguous
        text = code or "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))
        digest = hash_code(site.code, text)
        clash = session.scalar(
            select(func.count(VisitorCode.id)).where(
                VisitorCode.site_id == site.id,
                VisitorCode.code_sha256 == digest,
                VisitorCode.valid_until > now,
                VisitorCode.used_at.is_(None),
            )
        )
        if not clash:
            break
    else:  # pragma: no cover - 887 million codes
        raise Conflict("could not find a free code: try again")
    row = VisitorCode(
        site_id=site.id,
        code_sha256=digest,
        visitor_name=name,
        daily=daily,
        issued_by=actor,
        issued_at=now,
        valid_until=valid_until,
    )
    session.add(row)
    session.flush()
    audit.record(
        session,
        actor=actor,
        tag=AuditTag.VISITOR_CODE_ISSUE,
        subject=f"visitor-code:{row.id}",
        detail={
            "site": site.code,
            "visitor": name,
            "daily": daily,
            "valid_until": valid_until.isoformat(timespec="seconds"),
        },
        changes_decisions=False,
    )
    return _info(row), text


def list_open_codes(
    *, session: Session, now: datetime, site_code: str | None = None
) -> list[VisitorCodeInfo]:
    """Codes that can still be typed: not expired, and (per-visitor) not used."""
    query = select(VisitorCode).where(VisitorCode.valid_until > now, VisitorCode.used_at.is_(None))
    if site_code:
        query = query.where(VisitorCode.site_id == get_site(session, site_code).id)
    return [_info(row) for row in session.scalars(query.order_by(VisitorCode.id))]


def redeem_code(*, session: Session, site_code: str, code: str, now: datetime) -> VisitorCode:
    """The code a visitor typed, checked and (a per-visitor code) spent; BadCode if not."""
    typed = normalize_code(code)
    if not typed:
        raise BadCode("Type the visitor code reception gave you.")
    site = get_site(session, site_code)
    rows = list(
        session.scalars(
            select(VisitorCode)
            .where(
                VisitorCode.site_id == site.id,
                VisitorCode.code_sha256 == hash_code(site.code, typed),
            )
            .order_by(VisitorCode.valid_until.desc())
        )
    )
    usable = [r for r in rows if r.valid_until > now and (r.daily or r.used_at is None)]
    if usable:
        row = usable[0]
        if not row.daily:
            row.used_at = now
            session.flush()
        return row
    if any(r.valid_until <= now for r in rows):
        raise BadCode("That visitor code has expired: please ask at reception for a new one.")
    if rows:
        raise BadCode(
            "That visitor code has already been used: please ask at reception for your own."
        )
    raise BadCode("That is not a visitor code from reception: please check it and type it again.")


# ---------------------------------------------------------------- sponsorship
@dataclass(frozen=True, slots=True)
class SponsorRequest:
    """A visitor's request to their sponsor; `token` is the approve link's secret (once)."""

    sponsorship_id: int
    sponsor_name: str
    sponsor_email: str
    token: str
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class SponsorshipView:
    """What the sponsor (or the waiting visitor) is shown about a request."""

    id: int
    site_code: str
    sponsor_name: str
    visitor_name: str
    organisation: str | None
    device_mac: str
    requested_at: datetime
    expires_at: datetime
    approved_at: datetime | None


def _view(row: Sponsorship) -> SponsorshipView:
    return SponsorshipView(
        id=row.id,
        site_code=row.site.code,
        sponsor_name=row.sponsor_name,
        visitor_name=row.visitor_name,
        organisation=row.organisation,
        device_mac=row.device_mac,
        requested_at=row.requested_at,
        expires_at=row.expires_at,
        approved_at=row.approved_at,
    )


def hash_link_token(token: str) -> str:
    return hashlib.sha256(f"sponsor-link:{token}".encode()).hexdigest()


def find_sponsor(*, session: Session, site_code: str, email: str) -> Person:
    """An active member of staff at the site with this email; Invalid otherwise."""
    site = get_site(session, site_code)
    address = email.strip().lower()
    person = session.scalar(
        select(Person).where(func.lower(Person.email) == address, Person.site_id == site.id)
    )
    if person is None or not person.active or person.role is not Role.STAFF:
        raise Invalid(
            "We could not find a member of staff with that email address here: "
            "please check it, or ask at reception."
        )
    return person


def request_sponsorship(
    *,
    session: Session,
    mac: str,
    site_code: str,
    visitor_name: str,
    typed_name: str,
    sponsor_email: str,
    agreement_version: str | None,
    now: datetime,
    valid_for_minutes: int,
    organisation: str | None = None,
    client_ip: str | None = None,
    user_agent: str | None = None,
) -> SponsorRequest:
    """Keep what the visitor typed until their sponsor approves it. Nothing is signed yet."""
    for field, value in (
        ("your name", visitor_name),
        ("the name typed to sign", typed_name),
        ("the organisation", organisation),
        ("the staff email", sponsor_email),
    ):
        if value:
            check_text(value, field=field)
    agreement = current_agreement(session, AgreementKind.VISITOR_AUA, site_code)
    if str(agreement.version) != agreement_version:
        raise Invalid(
            "the agreement changed while you were reading it: please "
            "read the current version and sign again"
        )
    sponsor = find_sponsor(session=session, site_code=site_code, email=sponsor_email)
    token = secrets.token_urlsafe(32)
    row = Sponsorship(
        site_id=get_site(session, site_code).id,
        sponsor_id=sponsor.id,
        sponsor_email=sponsor.email or sponsor_email.strip().lower(),
        sponsor_name=sponsor.name,
        agreement_id=agreement.id,
        device_mac=normalize_mac(mac),
        visitor_name=visitor_name,
        typed_name=typed_name,
        organisation=organisation,
        client_ip=client_ip,
        user_agent=strip_controls(user_agent)[:512] if user_agent else None,
        token_sha256=hash_link_token(token),
        requested_at=now,
        expires_at=now + timedelta(minutes=valid_for_minutes),
    )
    session.add(row)
    session.flush()
    return SponsorRequest(
        sponsorship_id=row.id,
        sponsor_name=sponsor.name,
        sponsor_email=row.sponsor_email,
        token=token,
        expires_at=row.expires_at,
    )


def sponsor_email(
    request: SponsorRequest, view: SponsorshipView, approve_url: str
) -> tuple[str, str]:
    """The subject and body of the email to the sponsor."""
    who = view.visitor_name + (f" ({view.organisation})" if view.organisation else "")
    subject = f"Wi-Fi: {view.visitor_name} says they are visiting you"
    body = (
        f"Dear {request.sponsor_name},\n\n"
        f"{who} has asked for visitor Wi-Fi at school and named you as the member of "
        "staff they are visiting. If that is right, approve their device here:\n\n"
        f"{approve_url}\n\n"
        f"The link works once, until {request.expires_at:%H:%M} UTC on {request.expires_at:%d %B}. "
        "If you do not know this visitor, ignore this email: their device stays off the "
        "internet.\n"
    )
    return subject, body


def sponsorship_view(*, session: Session, sponsorship_id: int) -> SponsorshipView:
    row = session.get(Sponsorship, sponsorship_id)
    if row is None:
        raise NotFound(f"no sponsorship {sponsorship_id}")
    return _view(row)


def pending_for_device(*, session: Session, mac: str, now: datetime) -> SponsorshipView | None:
    """The device's newest request still waiting for its sponsor, if any."""
    row = session.scalars(
        select(Sponsorship)
        .where(
            Sponsorship.device_mac == normalize_mac(mac),
            Sponsorship.approved_at.is_(None),
            Sponsorship.expires_at > now,
        )
        .order_by(Sponsorship.id.desc())
        .limit(1)
    ).first()
    return None if row is None else _view(row)


def sponsorship_for_link(*, session: Session, token: str, now: datetime) -> Sponsorship:
    """The request behind an approve link, if it can still be approved; else a one-line
    error: NotFound (no such link), Conflict (already approved), Invalid (expired)."""
    row = session.scalar(
        select(Sponsorship).where(Sponsorship.token_sha256 == hash_link_token(token.strip()))
    )
    if row is None:
        raise NotFound("This approval link is not valid: please use the link in the email.")
    if row.approved_at is not None:
        raise Conflict(f"You already approved {row.visitor_name}; the link works once.")
    if row.expires_at <= now:
        raise Invalid(
            f"This approval link has expired: {row.visitor_name} needs to ask again "
            "from the visitor page."
        )
    return row


def link_view(*, session: Session, token: str, now: datetime) -> SponsorshipView:
    return _view(sponsorship_for_link(session=session, token=token, now=now))
