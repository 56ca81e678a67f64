"""People (staff, pupils, visitors...), their credentials and the leaver's exit process."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from service import audit, enforcement
from service.enums import AuditTag, DeviceStatus, Role
from service.errors import Conflict, Invalid, NotFound
from service.models import Device, Person, Site, utcnow
from service.sites import get_site
from service.text import check_text

_HASHER = PasswordHasher()
MIN_PASSWORD = 8


def find_person(session: Session, ref: str) -> Person:
    """A person by email, username or numeric id."""
    ref = ref.strip()
    conditions = [Person.email == ref.lower(), Person.username == ref]
    if ref.isdigit():
        conditions.append(Person.id == int(ref))
    person = session.scalar(select(Person).where(or_(*conditions)))
    if person is None:
        raise NotFound(f"no person with email, username or id {ref!r}")
    return person


def add_person(
    session: Session,
    *,
    site_code: str,
    role: str,
    name: str,
    email: str | None = None,
    username: str | None = None,
    year_group: int | None = None,
    actor: str,
) -> Person:
    site = get_site(session, site_code)
    try:
        role_value = Role(role)
    except ValueError as exc:
        raise Invalid(f"unknown role {role!r} (known: {', '.join(r.value for r in Role)})") from exc
    name = check_text(name.strip(), field="the name")
    if not name:
        raise Invalid("a name is required")
    if email is not None:
        email = check_text(email.strip().lower(), field="the email address")
        if "@" not in email or email.startswith("@") or email.endswith("@"):
            raise Invalid(f"not an email address: {email!r}")
        if session.scalar(select(Person.id).where(Person.email == email)):
            raise Conflict(f"a person with email {email} already exists")
    if username is not None:
        username = check_text(username.strip(), field="the username")
        if not username or " " in username:
            raise Invalid(f"not a usable username: {username!r}")
        if session.scalar(select(Person.id).where(Person.username == username)):
            raise Conflict(f"username {username!r} is taken")
    if year_group is not None and not 0 <= year_group <= 14:
        raise Invalid(f"year group {year_group} is out of range 0-14")
    person = Person(
        site_id=site.id,
        role=role_value,
        name=name,
        email=email,
        username=username,
        year_group=year_group,
        active=True,
    )
    session.add(person)
    session.flush()
    audit.record(
        session,
        actor=actor,
        tag=AuditTag.PERSON_CREATE,
        subject=str(person.id),
        detail={
            "site": site_code,
            "role": role_value.value,
            "name": name,
            "email": email,
            "username": username,
        },
    )
    return person


def set_password(session: Session, *, person: Person, password: str, actor: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise Invalid(f"a password needs at least {MIN_PASSWORD} characters")
    person.password_hash = _HASHER.hash(password)
    person.failed_logins = 0
    person.locked_until = None
    session.flush()
    audit.record(
        session,
        actor=actor,
        tag=AuditTag.PERSON_PASSWORD,
        subject=str(person.id),
        detail={"username": person.username},
    )


def verify_password(person_or_hash: Person | str | None, password: str) -> bool:
    """argon2 check; False for no hash, a bad hash or a wrong password."""
    stored = person_or_hash.password_hash if isinstance(person_or_hash, Person) else person_or_hash
    if not stored:
        return False
    try:
        return _HASHER.verify(stored, password)
    except (VerificationError, InvalidHashError):
        return False


@contextmanager
def _watch_person(session: Session, person: Person, reason: str) -> Iterator[list[Device]]:
    devices = list(session.scalars(select(Device).where(Device.owner_id == person.id)))
    with enforcement.watch(session, device_ids=[d.id for d in devices], reason=reason):
        yield devices


def leave_person(session: Session, *, person: Person, actor: str) -> dict[str, list[str]]:
    """The exit process (seed 003): personal devices revoked, school devices flagged for
    reassignment. Returns the MACs in each group."""
    if not person.active:
        raise Conflict(f"{person.name} has already left (on {person.left_at:%d %b %Y})")
    revoked: list[str] = []
    flagged: list[str] = []
    with _watch_person(session, person, f"person leave ({person.name})") as devices:
        now = utcnow()
        person.active = False
        person.left_at = now
        for device in devices:
            if device.device_class.is_personal or device.device_class.value == "authorised":
                if device.status not in (DeviceStatus.LOST, DeviceStatus.EXITED):
                    device.status = DeviceStatus.EXITED
                    device.status_reason = f"owner {person.name} left"
                    device.status_changed_at = now
                revoked.append(device.mac)
            else:
                device.needs_reassignment = True
                flagged.append(device.mac)
        session.flush()
        audit.record(
            session,
            actor=actor,
            tag=AuditTag.PERSON_LEAVE,
            subject=str(person.id),
            detail={"name": person.name, "revoked": revoked, "flagged": flagged},
        )
    return {"revoked": revoked, "flagged_for_reassignment": flagged}


@dataclass(frozen=True, slots=True)
class PersonSummary:
    """A person as listings show them (never the password hash: only whether there is one)."""

    id: int
    site: str
    role: Role
    name: str
    email: str | None
    username: str | None
    year_group: int | None
    active: bool
    has_password: bool


def list_people(
    *,
    session: Session,
    site: str | None = None,
    role: Role | str | None = None,
    include_left: bool = False,
) -> list[PersonSummary]:
    """People ordered by site code and name, filtered by site (NotFound if unknown) and role;
    those who left only with `include_left`. One query."""
    query = select(Person, Site.code).join(Site, Person.site_id == Site.id)
    query = query.order_by(Site.code, Person.name)
    if site:
        get_site(session, site)
        query = query.where(Site.code == site)
    if role:
        query = query.where(Person.role == role)
    if not include_left:
        query = query.where(Person.active.is_(True))
    return [
        PersonSummary(
            id=person.id,
            site=code,
            role=person.role,
            name=person.name,
            email=person.email,
            username=person.username,
            year_group=person.year_group,
            active=person.active,
            has_password=person.password_hash is not None,
        )
        for person, code in session.execute(query)
    ]
