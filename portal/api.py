"""Admin HTTP API under /api/v1, with bearer tokens (`schoolgate token create --scope ...`)."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from service import registry
from service.db import transaction
from service.enforcement import CLOCK_KEY
from service.enums import IncidentKind
from service.errors import Conflict, Invalid, NotFound, SchoolgateError
from service.facts import decide_for_mac
from service.models import AccountingSession, Agreement, Device, Person, Signature, Site
from service.models.portal import ApiToken

SCOPES = (
    "devices:read",
    "devices:write",
    "signatures:read",
    "sessions:read",
)
TOKEN_PREFIX = "sgt_"  # noqa: S105 - a public prefix, not a secret

router = APIRouter(prefix="/api/v1", tags=["admin"])
bearer = HTTPBearer(auto_error=False)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(
    session: Session, *, name: str, scopes: list[str], actor: str
) -> tuple[ApiToken, str]:
    """A new token; the secret is returned once and only its hash is kept."""
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
    return row, secret


def revoke_token(session: Session, token_id: int) -> ApiToken:
    row = session.get(ApiToken, token_id)
    if row is None:
        raise NotFound(f"no API token with id {token_id}")
    if row.revoked_at is not None:
        raise Conflict(f"token {token_id} is already revoked")
    row.revoked_at = datetime.now(UTC)
    session.flush()
    return row


def get_session(request: Request) -> Iterator[Session]:
    with transaction(request.app.state.session_factory) as session:
        session.info[CLOCK_KEY] = request.app.state.clock
        yield session
    if request.method == "POST":
        # The change is committed: send the CoA it queued (the dispatcher retries the rest).
        from portal.app import flush_coa

        flush_coa(request.app.state.settings, request.app.state.session_factory)


DB = Annotated[Session, Depends(get_session)]


def _error(exc: SchoolgateError) -> HTTPException:
    status = 404 if isinstance(exc, NotFound) else 409 if isinstance(exc, Conflict) else 422
    return HTTPException(status_code=status, detail=str(exc))


def require(scope: str) -> Any:
    def check(
        session: DB,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> ApiToken:
        if credentials is None:
            raise HTTPException(401, "a bearer token is required", {"WWW-Authenticate": "Bearer"})
        row = session.scalar(
            select(ApiToken).where(ApiToken.token_sha256 == hash_token(credentials.credentials))
        )
        if row is None or row.revoked_at is not None:
            raise HTTPException(401, "this token is not valid", {"WWW-Authenticate": "Bearer"})
        granted = set(row.scopes.split())
        if scope not in granted and not (
            scope.endswith(":read") and scope.replace(":read", ":write") in granted
        ):
            raise HTTPException(403, f"this token lacks the {scope} scope")
        row.last_used_at = datetime.now(UTC)
        return row

    return Depends(check)


class DeviceOut(BaseModel):
    mac: str
    site: str | None
    device_class: str
    status: str
    owner: str | None
    name: str | None
    asset_tag: str | None


class DeviceIn(BaseModel):
    mac: str = Field(max_length=64)
    site: str = Field(max_length=64)
    device_class: str = Field(max_length=32)
    owner: str | None = Field(default=None, max_length=255)
    name: str | None = Field(default=None, max_length=255)
    asset_tag: str | None = Field(default=None, max_length=128)


class RevokeIn(BaseModel):
    reason: str = Field(min_length=1, max_length=500)


def _device_out(session: Session, device: Device) -> DeviceOut:
    site = session.scalar(select(Site.code).where(Site.id == device.site_id))
    owner = session.get(Person, device.owner_id) if device.owner_id else None
    return DeviceOut(
        mac=device.mac,
        site=site,
        device_class=device.device_class.value,
        status=device.status.value,
        owner=(owner.email or owner.username or owner.name) if owner else None,
        name=device.name,
        asset_tag=device.asset_tag,
    )


def _actor(token: ApiToken) -> str:
    return f"api:{token.name}"


@router.get("/devices", response_model=list[DeviceOut])
def list_devices(
    session: DB, status: str | None = None, _: ApiToken = require("devices:read")
) -> list[DeviceOut]:
    query = select(Device).order_by(Device.mac)
    if status:
        query = query.where(Device.status == status)
    return [_device_out(session, d) for d in session.scalars(query)]


@router.get("/devices/{mac}", response_model=DeviceOut)
def show_device(mac: str, session: DB, _: ApiToken = require("devices:read")) -> DeviceOut:
    try:
        return _device_out(session, registry.get_device(session, mac))
    except SchoolgateError as exc:
        raise _error(exc) from exc


@router.get("/devices/{mac}/decision")
def device_decision(mac: str, session: DB, _: ApiToken = require("devices:read")) -> dict[str, Any]:
    try:
        return decide_for_mac(session, mac, now=datetime.now(UTC)).as_dict()
    except SchoolgateError as exc:
        raise _error(exc) from exc


@router.post("/devices", response_model=DeviceOut, status_code=201)
def add_device(
    body: DeviceIn, session: DB, token: ApiToken = require("devices:write")
) -> DeviceOut:
    try:
        device = registry.add_device(
            session,
            mac=body.mac,
            site_code=body.site,
            device_class=registry.parse_class(body.device_class),
            owner=body.owner,
            name=body.name,
            asset_tag=body.asset_tag,
            actor=_actor(token),
        )
        return _device_out(session, device)
    except SchoolgateError as exc:
        raise _error(exc) from exc


@router.post("/devices/{mac}/approve", response_model=DeviceOut)
def approve(mac: str, session: DB, token: ApiToken = require("devices:write")) -> DeviceOut:
    try:
        return _device_out(session, registry.approve_device(session, mac=mac, actor=_actor(token)))
    except SchoolgateError as exc:
        raise _error(exc) from exc


@router.post("/devices/{mac}/revoke", response_model=DeviceOut)
def revoke(
    mac: str, body: RevokeIn, session: DB, token: ApiToken = require("devices:write")
) -> DeviceOut:
    try:
        return _device_out(
            session,
            registry.revoke_device(session, mac=mac, reason=body.reason, actor=_actor(token)),
        )
    except SchoolgateError as exc:
        raise _error(exc) from exc


class LostIn(BaseModel):
    reported_by: str = Field(min_length=1, max_length=255)
    kind: str = Field(default="lost", pattern="^(lost|stolen|compromised)$")
    description: str | None = Field(default=None, max_length=2000)


class ExitIn(BaseModel):
    reason: str | None = Field(default=None, max_length=500)


@router.post("/devices/{mac}/lost", response_model=DeviceOut)
def lost(
    mac: str, body: LostIn, session: DB, token: ApiToken = require("devices:write")
) -> DeviceOut:
    """Report a device lost, stolen or compromised: access revoked, incident logged."""
    try:
        device, _incident = registry.report_lost(
            session,
            mac=mac,
            reported_by=body.reported_by,
            actor=_actor(token),
            kind=IncidentKind(body.kind),
            description=body.description,
        )
        return _device_out(session, device)
    except SchoolgateError as exc:
        raise _error(exc) from exc


@router.post("/devices/{mac}/exit", response_model=DeviceOut)
def exit_device(
    mac: str, body: ExitIn, session: DB, token: ApiToken = require("devices:write")
) -> DeviceOut:
    """The exit process for a device no longer used."""
    try:
        device = registry.exit_device(session, mac=mac, actor=_actor(token), reason=body.reason)
        return _device_out(session, device)
    except SchoolgateError as exc:
        raise _error(exc) from exc


@router.get("/signatures")
def list_signatures(session: DB, _: ApiToken = require("signatures:read")) -> list[dict[str, Any]]:
    rows = session.execute(
        select(Signature, Agreement.kind, Agreement.version, Device.mac)
        .join(Agreement, Agreement.id == Signature.agreement_id)
        .outerjoin(Device, Device.id == Signature.device_id)
        .order_by(Signature.signed_at)
    )
    return [
        {
            "id": sig.id,
            "kind": kind.value if hasattr(kind, "value") else kind,
            "version": version,
            "agreement_sha256": sig.agreement_sha256,
            "typed_name": sig.typed_name,
            "organisation": sig.organisation,
            "visiting": sig.visiting,
            "device": mac,
            "person_id": sig.person_id,
            "signed_at": sig.signed_at.isoformat(),
            "valid_until": sig.valid_until.isoformat() if sig.valid_until else None,
            "client_ip": sig.client_ip,
            "source": sig.source.value,
        }
        for sig, kind, version, mac in rows
    ]


@router.get("/sessions")
def list_sessions(
    session: DB, open_only: bool = False, _: ApiToken = require("sessions:read")
) -> list[dict[str, Any]]:
    query = select(AccountingSession).order_by(AccountingSession.started_at.desc()).limit(1000)
    if open_only:
        query = query.where(AccountingSession.stopped_at.is_(None))
    return [
        {
            "mac": s.mac,
            "username": s.username,
            "framed_ip": s.framed_ip,
            "site": s.site_code,
            "nas_identifier": s.nas_identifier,
            "acct_session_id": s.acct_session_id,
            "started_at": s.started_at.isoformat(),
            "stopped_at": s.stopped_at.isoformat() if s.stopped_at else None,
        }
        for s in session.scalars(query)
    ]


def not_found_json(_: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=404)
