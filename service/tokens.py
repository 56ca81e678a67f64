"""Bearer tokens for the admin HTTP API: create, list, revoke (audited) and authenticate.

Only the SHA-256 of a secret is stored; the secret itself is shown once, when it is created.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from service import audit
from service.enums import AuditTag
from service.errors import Conflict, Invalid, NotFound
from service.models.portal import ApiToken

SCOPES = (
    "devices:read",
    "devices:write",
    "signatures:read",
    "sessions:read",
)
TOKEN_PREFIX = "sgt_"  # noqa: S105 - a public prefix, not a secret


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """A token as listed to an admin (never its secret)."""

    id: int
    name: str
    prefix: str
    scopes: str
    created_by: str | None
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


@dataclass(frozen=True, slots=True)
class ApiCaller:
    """Who presented a valid token: its name and what it may do."""

    name: str
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        """`x:write` grants `x:read` as well."""
        return scope in self.scopes or (
            scope.endswith(":read") and scope.replace(":read", ":write") in self.scopes
        )


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _info(row: ApiToken) -> TokenInfo:
    return TokenInfo(
        id=row.id,
        name=row.name,
        prefix=row.prefix,
        scopes=row.scopes,
        created_by=row.created_by,
        created_at=row.created_at,
        last_used_at=row.last_used_at,
        revoked_at=row.revoked_at,
    )


def create_token(
    *, session: Session, name: str, scopes: list[str], actor: str
) -> tuple[TokenInfo, str]:
    """A new token and its secret; the secret is returned once and only its hash is kept."""
    name = name.strip()
    if not name:
        raise Invalid("a token needs a name")
    if not scopes:
        raise Invalid(f"give at least one --scope (known: {', '.join(SCOPES)})")
    for scope in scopes:
        if scope not in SCOPES:
            raise Invalid(f"unknown scope {scope!r} (known: {', '.join(SCOPES)})")
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(
        name=name,
        token_sha256=hash_token(secret),
        prefix=secret[:10],
        scopes=" ".join(sorted(set(scopes))),
        created_by=actor,
        created_at=datetime.now(UTC),
    )
    session.add(row)
    session.flush()
    audit.record(
        session,
        actor=actor,
        tag=AuditTag.TOKEN_CREATE,
        subject=f"token:{row.id}",
        detail={"name": row.name, "prefix": row.prefix, "scopes": row.scopes},
        changes_decisions=False,
    )
    return _info(row), secret


def list_tokens(*, session: Session) -> list[TokenInfo]:
    return [_info(row) for row in session.scalars(select(ApiToken).order_by(ApiToken.id))]


def revoke_token(*, session: Session, token_id: int, actor: str) -> TokenInfo:
    row = session.get(ApiToken, token_id)
    if row is None:
        raise NotFound(f"no API token with id {token_id}")
    if row.revoked_at is not None:
        raise Conflict(f"token {token_id} is already revoked")
    row.revoked_at = datetime.now(UTC)
    session.flush()
    audit.record(
        session,
        actor=actor,
        tag=AuditTag.TOKEN_REVOKE,
        subject=f"token:{row.id}",
        detail={"name": row.name, "prefix": row.prefix},
        changes_decisions=False,
    )
    return _info(row)


def authenticate_token(*, session: Session, secret: str) -> ApiCaller:
    """The caller behind a presented secret (its use is recorded), or Invalid."""
    row = session.scalar(select(ApiToken).where(ApiToken.token_sha256 == hash_token(secret)))
    if row is None or row.revoked_at is not None:
        raise Invalid("this token is not valid")
    row.last_used_at = datetime.now(UTC)
    session.flush()
    return ApiCaller(name=row.name, scopes=frozenset(row.scopes.split()))
