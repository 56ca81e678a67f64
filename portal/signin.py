"""Sign-in sources for staff. Local schoolgate accounts now; an OIDC source (Google
Workspace, Microsoft Entra) would implement the same `SignInSource` protocol."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from service.enums import Role
from service.errors import Invalid
from service.models import Person
from service.registry import verify_password


class SignInSource(Protocol):
    name: str

    def authenticate(
        self, session: Session, username: str, password: str, now: datetime
    ) -> Person: ...


class LocalAccounts:
    """argon2 passwords from `schoolgate person`; locks the account after repeated failures."""

    name = "local"

    def __init__(self, max_failures: int = 5, lockout_minutes: int = 15) -> None:
        self.max_failures = max_failures
        self.lockout = timedelta(minutes=lockout_minutes)

    def authenticate(self, session: Session, username: str, password: str, now: datetime) -> Person:
        generic = Invalid("that username or password is not right")
        username = username.strip()
        if not username or not password:
            raise Invalid("enter your username and password")
        person = session.scalar(
            select(Person).where(or_(Person.username == username, Person.email == username.lower()))
        )
        if person is None:
            verify_password(None, password)
            raise generic
        if person.locked_until is not None and person.locked_until > now:
            raise Invalid(
                "too many failed attempts: this account is locked for a while; "
                "try again later or ask the IT office"
            )
        if not verify_password(person, password):
            person.failed_logins = (person.failed_logins or 0) + 1
            if person.failed_logins >= self.max_failures:
                person.locked_until = now + self.lockout
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
        return person
