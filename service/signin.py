"""Staff sign-in at the portal: a local password (throttled, never locked: `service/throttle.py`)
or an email a school OIDC provider has verified. The HTTP, JWT and OIDC protocol parts stay in
`portal/`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache

from argon2 import PasswordHasher
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from service.enums import Role
from service.errors import Invalid
from service.models import Person
from service.people import verify_password
from service.throttle import Throttle

GENERIC_REFUSAL = "that username or password is not right"


class SignInRefused(Invalid):
    """The sign-in cannot be accepted: the message is for the person, `reason` for the log."""

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason or message


class Throttled(Invalid):
    """Too many failed sign-ins from this source or for this account: wait `retry_after` s."""

    def __init__(self, retry_after: float) -> None:
        self.retry_after = max(1, round(retry_after + 0.499))
        super().__init__(
            "too many failed sign-ins from this device or for this account: "
            f"try again in {self.retry_after} second{'' if self.retry_after == 1 else 's'}"
        )


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


@cache
def _dummy_hash() -> str:
    """A hash with the same argon2 parameters as real ones, to verify unknown users against."""
    return PasswordHasher().hash("schoolgate: no such account")


def check_password(stored_hash: str | None, password: str) -> bool:
    """argon2 verification that costs the same whether or not there is a hash to check: an
    unknown username does the work of a wrong password (no timing difference)."""
    if not stored_hash:
        verify_password(_dummy_hash(), password)
        return False
    return verify_password(stored_hash, password)


def sign_in_with_password(
    *,
    session: Session,
    username: str,
    password: str,
    now: datetime,
    throttle: Throttle,
    sources: Sequence[str] = (),
) -> StaffMember:
    """Active staff with this username (or email) and argon2 password, else Invalid.

    `throttle` slows repeated failures from `sources` (the client's IP, its MAC) and for the
    typed account name, whether or not it exists: `Throttled` (checking no password) while
    they must wait. An unknown username and a wrong password give the same message after the
    same work. Nothing is written to the database.
    """
    username = username.strip()
    if not username or not password:
        raise Invalid("enter your username and password")
    wait = throttle.begin(sources=sources, account=username, now=now.timestamp())
    if wait > 0:
        raise Throttled(wait)
    person = session.scalar(
        select(Person).where(or_(Person.username == username, Person.email == username.lower()))
    )
    right = check_password(person.password_hash if person is not None else None, password)
    if person is None or not right:
        raise Invalid(GENERIC_REFUSAL)
    throttle.succeeded(sources=sources, account=username)
    if not person.active:
        raise Invalid("this account is no longer active")
    if person.role is not Role.STAFF:
        raise Invalid("only staff register their own devices here")
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
