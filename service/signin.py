"""Staff sign-in at the portal: a local password (with its lockout bookkeeping) or an email a
school OIDC provider has verified. The HTTP, JWT and OIDC protocol parts stay in `portal/`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from service.enums import Role
from service.errors import Invalid
from service.models import Person
from service.people import verify_password


class SignInRefused(Invalid):
    """The sign-in cannot be accepted: the message is for the person, `reason` for the log."""

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason or message


@dataclass(frozen=True, slots=True)
class StaffMember:
    """Who signed in, as the portal shows and tickets them."""

    id: int
    name: str
    username: str | None
    email: str | None

    @classmethod
    def of(cls, person: Person) -> StaffMember:
        return cls(id=person.id, name=person.name, username=person.username, email=person.email)


def sign_in_with_password(
    *,
    session: Session,
    username: str,
    password: str,
    now: datetime,
    max_failures: int = 5,
    lockout_minutes: int = 15,
) -> StaffMember:
    """Active staff with this username (or email) and argon2 password, else Invalid.

    A wrong password counts against the account and locks it for `lockout_minutes` after
    `max_failures`: the caller commits even when this raises, to keep the count.
    """
    generic = Invalid("that username or password is not right")
    username = username.strip()
    if not username or not password:
        raise Invalid("enter your username and password")
    person = session.scalar(
        select(Person).where(or_(Person.username == username, Person.email == username.lower()))
    )
    if person is None:
        verify_password(None, password)  # the same time whether or not the account exists
        raise generic
    if person.locked_until is not None and person.locked_until > now:
        raise Invalid(
            "too many failed attempts: this account is locked for a while; "
            "try again later or ask the IT office"
        )
    if not verify_password(person, password):
        person.failed_logins = (person.failed_logins or 0) + 1
        if person.failed_logins >= max_failures:
            person.locked_until = now + timedelta(minutes=lockout_minutes)
            person.failed_logins = 0
        session.flush()
        raise generic
    if not person.active:
        raise Invalid("this account is no longer active")
    if person.role is not Role.STAFF:
        raise Invalid("only staff register their own devices here")
    person.failed_logins = 0
    person.locked_until = None
    session.flush()
    return StaffMember.of(person)


def staff_by_email(*, session: Session, email: str) -> StaffMember:
    """The active member of staff with this (provider-verified) email, else SignInRefused."""
    email = email.strip().lower()
    person = session.scalar(select(Person).where(Person.email == email))
    if person is None:
        raise SignInRefused(
            f"no staff member with the email {email} is registered here: ask the IT office",
            f"{email}: no such person",
        )
    if not person.active:
        raise SignInRefused("this account is no longer active", f"{email}: not active")
    if person.role is not Role.STAFF:
        raise SignInRefused("only staff register their own devices here", f"{email}: not staff")
    return StaffMember.of(person)


def ticket_holder(*, session: Session, person_id: int) -> StaffMember | None:
    """The person a sign-in ticket names (None if they are gone)."""
    person = session.get(Person, person_id)
    return None if person is None else StaffMember.of(person)


def active_person(*, session: Session, person_id: int) -> Person:
    """The person a sign-in ticket names, still active (else Invalid: sign in again)."""
    person = session.get(Person, person_id)
    if person is None or not person.active:
        raise Invalid("please sign in again")
    return person
