"""Admin HTTP API under /api/v1, with bearer tokens (`schoolgate token create --scope ...`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field

from portal.deps import SessionDep, client_ip, get_portal
from service import agreements, clients, devices, registry
from service.db import Session
from service.devices import ApprovalChangesNothing, DeviceSummary
from service.enums import IncidentKind
from service.errors import Conflict, Invalid, NotFound, SchoolgateError
from service.facts import decide_for_mac
from service.mac import normalize_mac
from service.tokens import ApiCaller, authenticate_token

router = APIRouter(prefix="/api/v1", tags=["admin"])
bearer = HTTPBearer(auto_error=False)


async def admin_networks_only(request: Request, call_next: Callable[[Request], Any]) -> Response:
    """The HTTP middleware that keeps /api/v1 (and its docs) off the guest networks: only
    clients in `SCHOOLGATE_ADMIN_NETWORKS` reach it, whatever token they hold."""
    path = request.url.path
    if path.startswith("/api/v1") and not get_portal(request).from_admin_network(request):
        return JSONResponse(
            {
                "detail": f"the admin API answers only the admin networks "
                f"(SCHOOLGATE_ADMIN_NETWORKS); {client_ip(request)} is not in them"
            },
            status_code=403,
        )
    response: Response = await call_next(request)
    return response


def _error(exc: SchoolgateError) -> HTTPException:
    status = 404 if isinstance(exc, NotFound) else 409 if isinstance(exc, Conflict) else 422
    return HTTPException(status_code=status, detail=str(exc))


def require(scope: str) -> Any:
    """A dependency: the caller's token, which must grant `scope` (401 / 403 otherwise)."""

    def check(
        session: SessionDep,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> ApiCaller:
        if credentials is None:
            raise HTTPException(401, "a bearer token is required", {"WWW-Authenticate": "Bearer"})
        try:
            caller = authenticate_token(session=session, secret=credentials.credentials)
        except Invalid as exc:
            raise HTTPException(401, str(exc), {"WWW-Authenticate": "Bearer"}) from exc
        if not caller.allows(scope):
            raise HTTPException(403, f"this token lacks the {scope} scope")
        return caller

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


class LostIn(BaseModel):
    reported_by: str = Field(min_length=1, max_length=255)
    kind: str = Field(default="lost", pattern="^(lost|stolen|compromised)$")
    description: str | None = Field(default=None, max_length=2000)


class ExitIn(BaseModel):
    reason: str | None = Field(default=None, max_length=500)


def _out(row: DeviceSummary) -> DeviceOut:
    return DeviceOut(
        mac=row.mac,
        site=row.site,
        device_class=row.device_class.value,
        status=row.status.value,
        owner=row.owner_ref,
        name=row.name,
        asset_tag=row.asset_tag,
    )


def _device_out(session: Session, mac: str) -> DeviceOut:
    """The device as the API shows it (with its site and owner), or NotFound."""
    rows = devices.list_devices(session=session, mac=mac)
    if not rows:
        raise NotFound(f"no device with MAC {normalize_mac(mac)}")
    return _out(rows[0])


def _actor(caller: ApiCaller) -> str:
    return f"api:{caller.name}"


@router.get("/devices", response_model=list[DeviceOut])
def list_devices(
    session: SessionDep, status: str | None = None, _: ApiCaller = require("devices:read")
) -> list[DeviceOut]:
    try:
        rows = devices.list_devices(session=session, status=status or None)
    except ValueError:  # not a status: no device has it (an empty list, as always)
        return []
    return [_out(row) for row in sorted(rows, key=lambda row: row.mac)]


@router.get("/devices/{mac}", response_model=DeviceOut)
def show_device(mac: str, session: SessionDep, _: ApiCaller = require("devices:read")) -> DeviceOut:
    try:
        return _device_out(session, mac)
    except SchoolgateError as exc:
        raise _error(exc) from exc


@router.get("/devices/{mac}/decision")
def device_decision(
    mac: str, session: SessionDep, _: ApiCaller = require("devices:read")
) -> dict[str, Any]:
    try:
        return decide_for_mac(session, mac, now=datetime.now(UTC)).as_dict()
    except SchoolgateError as exc:
        raise _error(exc) from exc


@router.post("/devices", response_model=DeviceOut, status_code=201)
def add_device(
    body: DeviceIn, session: SessionDep, caller: ApiCaller = require("devices:write")
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
            actor=_actor(caller),
        )
        return _device_out(session, device.mac)
    except SchoolgateError as exc:
        raise _error(exc) from exc


@router.post("/devices/{mac}/approve", response_model=DeviceOut)
def approve(
    mac: str,
    session: SessionDep,
    caller: ApiCaller = require("devices:write"),
    anyway: bool = False,
) -> DeviceOut:
    """409 with the school's explanation when the policy gives the device's class no
    network access, unless `?anyway=true`."""
    try:
        device = registry.approve_device(session, mac=mac, actor=_actor(caller), anyway=anyway)
        return _device_out(session, device.mac)
    except ApprovalChangesNothing as exc:
        raise HTTPException(409, f"{exc}; ?anyway=true approves it all the same") from exc
    except SchoolgateError as exc:
        raise _error(exc) from exc


@router.post("/devices/{mac}/revoke", response_model=DeviceOut)
def revoke(
    mac: str, body: RevokeIn, session: SessionDep, caller: ApiCaller = require("devices:write")
) -> DeviceOut:
    try:
        device = registry.revoke_device(session, mac=mac, reason=body.reason, actor=_actor(caller))
        return _device_out(session, device.mac)
    except SchoolgateError as exc:
        raise _error(exc) from exc


@router.post("/devices/{mac}/lost", response_model=DeviceOut)
def lost(
    mac: str, body: LostIn, session: SessionDep, caller: ApiCaller = require("devices:write")
) -> DeviceOut:
    """Report a device lost, stolen or compromised: access revoked, incident logged."""
    try:
        device, _incident = registry.report_lost(
            session,
            mac=mac,
            reported_by=body.reported_by,
            actor=_actor(caller),
            kind=IncidentKind(body.kind),
            description=body.description,
        )
        return _device_out(session, device.mac)
    except SchoolgateError as exc:
        raise _error(exc) from exc


@router.post("/devices/{mac}/exit", response_model=DeviceOut)
def exit_device(
    mac: str, body: ExitIn, session: SessionDep, caller: ApiCaller = require("devices:write")
) -> DeviceOut:
    """The exit process for a device no longer used."""
    try:
        device = registry.exit_device(session, mac=mac, actor=_actor(caller), reason=body.reason)
        return _device_out(session, device.mac)
    except SchoolgateError as exc:
        raise _error(exc) from exc


@router.get("/signatures")
def list_signatures(
    session: SessionDep, _: ApiCaller = require("signatures:read")
) -> list[dict[str, Any]]:
    return [
        {
            **asdict(row),
            "kind": row.kind.value,
            "signed_at": row.signed_at.isoformat(),
            "valid_until": row.valid_until.isoformat() if row.valid_until else None,
            "source": row.source.value,
        }
        for row in agreements.list_signatures(session=session)
    ]


@router.get("/sessions")
def list_sessions(
    session: SessionDep, open_only: bool = False, _: ApiCaller = require("sessions:read")
) -> list[dict[str, Any]]:
    return [
        {
            **asdict(row),
            "started_at": row.started_at.isoformat(),
            "stopped_at": row.stopped_at.isoformat() if row.stopped_at else None,
        }
        for row in clients.list_sessions(session=session, open_only=open_only)
    ]
