"""People (staff, pupils, visitors...), their credentials and the leaver's exit process."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

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
    role_value, name, email, username = _checked(role, name, email, username, year_group)
    if email is not None and session.scalar(select(Person.id).where(Person.email == email)):
        raise Conflict(f"a person with email {email} already exists")
    if username is not None and session.scalar(
        select(Person.id).where(Person.username == username)
    ):
        raise Conflict(f"username {username!r} is taken")
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


def _checked(
    role: str, name: str, email: str | None, username: str | None, year_group: int | None
) -> tuple[Role, str, str | None, str | None]:
    """A person's typed fields checked and normalised: (role, name, email, username)."""
    try:
        role_value = Role(role.strip().lower())
    except ValueError as exc:
        raise Invalid(f"unknown role {role!r} (known: {', '.join(r.value for r in Role)})") from exc
    name = check_text(name.strip(), field="the name")
    if not name:
        raise Invalid("a name is required")
    if email is not None:
        email = check_text(email.strip().lower(), field="the email address")
        if "@" not in email or email.startswith("@") or email.endswith("@"):
            raise Invalid(f"not an email address: {email!r}")
    if username is not None:
        username = check_text(username.strip(), field="the username")
        if not username or " " in username:
            raise Invalid(f"not a usable username: {username!r}")
    if year_group is not None and not 0 <= year_group <= 14:
        raise Invalid(f"year group {year_group} is out of range 0-14")
    return role_value, name, email, username


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


MIS_COLUMNS = ("name", "role", "email", "username", "year")


@dataclass
class PeopleImportResult:
    """What `import_people` did (or, with `dry_run`, would do). People are named by their
    email, else their username."""

    added: list[str] = field(default_factory=list)
    changed: list[tuple[str, list[str]]] = field(default_factory=list)
    left: list[str] = field(default_factory=list)  # `sync`: gone from the file, exit process
    unchanged: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _PersonRow:
    line: int
    key: str  # email, else username: how a re-import finds the person again
    role: Role
    name: str
    email: str | None
    username: str | None
    year_group: int | None


def import_people(
    *,
    session: Session,
    text: str,
    site_code: str,
    actor: str,
    sync: bool = False,
    dry_run: bool = False,
) -> PeopleImportResult:
    """Import people from the MIS export: a CSV whose header names the columns `name`, `role`,
    `email`, `username` and `year` (other columns are ignored; `year` empty for staff). A row
    is matched to a person by email, else username, so importing the same file again changes
    nothing.

    A malformed row stops the import with its line number. A row for a person registered with
    another name, role or year group (or who has left) is a conflict: without `sync` every
    conflicting line is reported in one error and nothing is stored. With `sync` the file is the
    truth for the people it covers (the site's people in the roles it lists): differences are
    applied and the people missing from it go through the exit process (`leave_person`).
    `dry_run`: work out the same diff, change nothing."""
    site = get_site(session, site_code)
    rows = _read_people(text)
    emails = {r.email for r in rows if r.email}
    usernames = {r.username for r in rows if r.username}
    known = list(
        session.scalars(
            select(Person).where(
                or_(
                    Person.site_id == site.id,
                    Person.email.in_(sorted(emails) or [""]),
                    Person.username.in_(sorted(usernames) or [""]),
                )
            )
        )
    )
    by_email = {p.email: p for p in known if p.email}
    by_username = {p.username: p for p in known if p.username}
    result = PeopleImportResult()
    new_rows: list[_PersonRow] = []
    updates: list[tuple[Person, _PersonRow, list[str]]] = []
    conflicts: list[str] = []
    matched: set[int] = set()
    for row in rows:
        person = (by_email.get(row.email) if row.email else None) or (
            by_username.get(row.username) if row.username else None
        )
        if person is None:
            new_rows.append(row)
            continue
        if person.site_id != site.id:
            raise Conflict(f"CSV line {row.line}: {row.key} is registered at another site")
        matched.add(person.id)
        differences = _person_differences(person, row, by_email, by_username)
        if not differences:
            result.unchanged.append(row.key)
        elif sync:
            updates.append((person, row, differences))
            result.changed.append((row.key, differences))
        else:
            conflicts.append(f"line {row.line}: {row.key} has {', '.join(differences)}")
    if conflicts:
        raise Conflict(
            f"CSV {'; '.join(conflicts)} (registered value -> file); nothing imported: "
            "use --sync to apply the file"
        )
    leavers: list[Person] = []
    if sync:
        covered = {row.role for row in rows}
        leavers = sorted(
            (
                p
                for p in known
                if p.site_id == site.id and p.active and p.role in covered and p.id not in matched
            ),
            key=lambda p: p.name,
        )
        result.left = [p.email or p.username or p.name for p in leavers]
    result.added = [row.key for row in new_rows]
    if dry_run:
        return result
    for row in new_rows:
        add_person(
            session,
            site_code=site_code,
            role=row.role.value,
            name=row.name,
            email=row.email,
            username=row.username,
            year_group=row.year_group,
            actor=actor,
        )
    for person, row, differences in updates:
        with _watch_person(session, person, f"person import ({person.name})"):
            person.name = row.name
            person.role = row.role
            person.year_group = row.year_group
            person.email = row.email or person.email
            person.username = row.username or person.username
            if not person.active:
                person.active = True
                person.left_at = None
            session.flush()
            audit.record(
                session,
                actor=actor,
                tag=AuditTag.PERSON_UPDATE,
                subject=str(person.id),
                detail={"changes": differences, "source": "person import --sync"},
            )
    for person in leavers:
        leave_person(session, person=person, actor=actor)
    return result


def _read_people(text: str) -> list[_PersonRow]:
    reader = csv.reader(io.StringIO(text))
    try:
        header = [h.strip().lower() for h in next(reader)]
    except StopIteration as exc:
        raise Invalid("the CSV file is empty (a header row is needed)") from exc
    except csv.Error as exc:
        raise Invalid(f"CSV line 1: {exc}") from exc
    missing = [c for c in MIS_COLUMNS if c not in header]
    if missing:
        raise Invalid(
            f"CSV line 1: the header has no {', '.join(missing)} column "
            f"(expected {','.join(MIS_COLUMNS)})"
        )
    index = {c: header.index(c) for c in MIS_COLUMNS}
    rows: list[_PersonRow] = []
    seen: set[str] = set()
    while True:
        try:
            values = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise Invalid(f"CSV line {reader.line_num}: {exc}") from exc
        line = reader.line_num
        if not any(v.strip() for v in values):
            continue
        cell = {c: values[i].strip() if i < len(values) else "" for c, i in index.items()}
        try:
            year: int | None = None
            if cell["year"]:
                try:
                    year = int(cell["year"])
                except ValueError as exc:
                    raise Invalid(f"year {cell['year']!r} is not a number") from exc
            role, name, email, username = _checked(
                cell["role"], cell["name"], cell["email"] or None, cell["username"] or None, year
            )
            key = email or username
            if key is None:
                raise Invalid(f"{name} has no email or username to be known by on re-import")
            if key in seen:
                raise Conflict(f"{key} appears twice in the file")
            seen.update(k for k in (email, username) if k)
        except (Invalid, Conflict) as exc:
            raise type(exc)(f"CSV line {line}: {exc}") from exc
        rows.append(_PersonRow(line, key, role, name, email, username, year))
    return rows


def _person_differences(
    person: Person,
    row: _PersonRow,
    by_email: dict[str, Person],
    by_username: dict[str, Person],
) -> list[str]:
    """Each difference between the registered person and their row, "registered -> file"."""
    said = []
    if person.name != row.name:
        said.append(f"name {person.name} -> {row.name}")
    if person.role is not row.role:
        said.append(f"role {person.role.value} -> {row.role.value}")
    if person.year_group != row.year_group:
        said.append(f"year {person.year_group or '-'} -> {row.year_group or '-'}")
    for label, mine, theirs, index in (
        ("email", person.email, row.email, by_email),
        ("username", person.username, row.username, by_username),
    ):
        if theirs and mine != theirs:
            other = index.get(theirs)
            if other is not None and other.id != person.id:
                raise Conflict(f"CSV line {row.line}: {label} {theirs} belongs to {other.name}")
            said.append(f"{label} {mine or '-'} -> {theirs}")
    if not person.active:
        said.append("left -> active")
    return said
