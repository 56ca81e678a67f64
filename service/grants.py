"""Exceptions: the headteacher's case-by-case decisions that widen one device's access."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from service import audit, enforcement
from service.devices import get_device
from service.enums import LEVELS, Access, AuditTag
from service.errors import Conflict, Invalid, NotFound
from service.models import AccessException, utcnow


def grant_exception(
    session: Session,
    *,
    mac: str,
    access: str,
    reason: str,
    approved_by: str,
    actor: str,
    valid_from: datetime | None = None,
    valid_until: datetime | None = None,
) -> AccessException:
    if access not in {a.value for a in LEVELS} or access == Access.NONE.value:
        raise Invalid(f"an exception grants full, segregated or internet, not {access!r}")
    if not reason.strip():
        raise Invalid("a reason is required (e.g. 'medical monitoring app, agreed with parents')")
    if not approved_by.strip():
        raise Invalid("--approved-by is required (who decided: e.g. the headteacher)")
    start = valid_from or utcnow()
    if valid_until is not None and valid_until <= start:
        raise Invalid("--until must be later than the start")
    device = get_device(session, mac)
    with enforcement.watch(session, device_ids=[device.id], reason="exception granted"):
        grant = AccessException(
            device_id=device.id,
            access=Access(access),
            reason=reason.strip(),
            approved_by=approved_by.strip(),
            valid_from=start,
            valid_until=valid_until,
        )
        session.add(grant)
        session.flush()
        audit.record(
            session,
            actor=actor,
            tag=AuditTag.EXCEPTION_GRANT,
            subject=device.mac,
            detail={
                "exception": grant.id,
                "access": access,
                "reason": reason,
                "approved_by": approved_by,
                "until": valid_until.isoformat() if valid_until else None,
            },
        )
    return grant


def revoke_exception(session: Session, *, exception_id: int, actor: str) -> AccessException:
    grant = session.get(AccessException, exception_id)
    if grant is None:
        raise NotFound(f"no exception with id {exception_id}")
    if grant.revoked_at is not None:
        raise Conflict(f"exception {exception_id} was already revoked")
    with enforcement.watch(session, device_ids=[grant.device_id], reason="exception revoked"):
        grant.revoked_at = utcnow()
        session.flush()
        audit.record(
            session,
            actor=actor,
            tag=AuditTag.EXCEPTION_REVOKE,
            subject=grant.device.mac,
            detail={"exception": exception_id},
        )
    return grant
