"""Enforcement: which open sessions a change alters, queued as CoA / Disconnect requests.

Domain code only (no RADIUS here): `watch()` decides before and after a change for every
open accounting session it touches and queues a durable `CoaRequest` row, in the same
transaction, for each session whose (access, VLAN) moved. The dispatcher in `radius.coa`
sends them. Revocations (access `none`) become Disconnect-Requests; other moves become a
CoA-Request or a Disconnect-Request depending on the NAS's vendor profile, which the
dispatcher knows, so here they are queued as kind `coa` ("apply the new decision").
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import delete, or_, select
from sqlalchemy.orm import Session, sessionmaker

from service.config import Settings
from service.enums import Access
from service.exports import Exporter, ExportQuery, iso
from service.facts import load_device_facts, load_policies
from service.mac import normalize_mac
from service.models import AccessException, AccountingSession, Device, Site
from service.models.coa import CoaRequest
from service.policy import AccessRequest, decide

KIND_DISCONNECT = "disconnect"
KIND_COA = "coa"

QUEUED = "queued"
# Set in `session.info` when a transaction queued a request, so the CLI knows to send it.
QUEUED_FLAG = "coa_queued"
# `session.info[PENDING_KEY]`: accounting session id -> the request queued for it so far.
PENDING_KEY = "coa_pending"
SENT = "sent"
ACK = "ack"
NAK = "nak"
TIMEOUT = "timeout"
FALLBACK = "fallback"  # a CoA-Request was NAKed: a Disconnect-Request is queued in its place
FAILED = "failed"
PENDING_STATES = (QUEUED, SENT, FALLBACK)
FINAL_STATES = (ACK, NAK, TIMEOUT, FAILED)


@dataclass(frozen=True, slots=True)
class _OpenSession:
    id: int
    mac: str
    nas_id: int | None
    nas_ip: str | None
    site_code: str | None
    nas_identifier: str | None
    called_station_id: str | None
    nas_port_id: str | None
    acct_session_id: str
    username: str | None


Outcome = tuple[Access, int | None]


def _now() -> datetime:
    return datetime.now(UTC)


# `session.info[CLOCK_KEY]`: the caller's clock (the portal's), so "before" and "after" are
# decided at the same moment the caller decided the change at.
CLOCK_KEY = "clock"


def _decision_time(session: Session) -> datetime:
    clock = session.info.get(CLOCK_KEY)
    return clock() if callable(clock) else _now()


def _open_sessions(session: Session, macs: set[str], site_codes: set[str]) -> list[_OpenSession]:
    if not macs and not site_codes:
        return []
    conditions = []
    if macs:
        conditions.append(AccountingSession.mac.in_(sorted(macs)))
    if site_codes:
        conditions.append(AccountingSession.site_code.in_(sorted(site_codes)))
    rows = session.execute(
        select(
            AccountingSession.id,
            AccountingSession.mac,
            AccountingSession.nas_id,
            AccountingSession.nas_ip,
            AccountingSession.site_code,
            AccountingSession.nas_identifier,
            AccountingSession.called_station_id,
            AccountingSession.nas_port_id,
            AccountingSession.acct_session_id,
            AccountingSession.username,
        ).where(
            AccountingSession.stopped_at.is_(None),
            AccountingSession.mac.is_not(None),
            or_(*conditions),
        )
    ).all()
    return [_OpenSession(**row._asdict()) for row in rows]


def _decisions(session: Session, sessions: list[_OpenSession], now: datetime) -> dict[int, Outcome]:
    """The (access, VLAN) each open session would get now."""
    if not sessions:
        return {}
    facts = load_device_facts(session, {s.mac for s in sessions})
    policies = load_policies(session)
    out: dict[int, Outcome] = {}
    for s in sessions:
        device = facts.get(s.mac)
        code = s.site_code or (device.site_code if device else None)
        policy = policies.get(code) if code else None
        if policy is None:
            continue
        decision = decide(
            AccessRequest(
                mac=s.mac,
                nas_identifier=s.nas_identifier,
                called_station_id=s.called_station_id,
                nas_port_id=s.nas_port_id,
            ),
            device,
            policy,
            now,
        )
        out[s.id] = (decision.access, decision.vlan)
    return out


def _scope(
    session: Session,
    device_ids: Iterable[int] | None,
    macs: Iterable[str] | None,
    site_ids: Iterable[int] | None,
) -> tuple[set[str], set[str]]:
    mac_set = {normalize_mac(m) for m in macs or ()}
    ids = sorted(set(device_ids or ()))
    if ids:
        mac_set.update(session.scalars(select(Device.mac).where(Device.id.in_(ids))))
    codes: set[str] = set()
    sites = sorted(set(site_ids or ()))
    if sites:
        codes.update(session.scalars(select(Site.code).where(Site.id.in_(sites))))
        mac_set.update(session.scalars(select(Device.mac).where(Device.site_id.in_(sites))))
    return mac_set, codes


@contextmanager
def watch(
    session: Session,
    *,
    device_ids: Iterable[int] | None = None,
    macs: Iterable[str] | None = None,  # devices that may not exist yet
    site_ids: Iterable[int] | None = None,
    reason: str,
    actor: str | None = None,
    now: datetime | None = None,
) -> Iterator[None]:
    """Queue CoA / Disconnect for the open sessions whose decision the wrapped change alters.

    `now`: the moment the caller decided the change at (the portal's clock), so "before" and
    "after" are decided at that moment.
    """
    device_ids = list(device_ids or ())
    macs = list(macs or ())
    site_ids = list(site_ids or ())
    session.flush()
    mac_set, codes = _scope(session, device_ids, macs, site_ids)
    sessions = _open_sessions(session, mac_set, codes)
    now = now or _decision_time(session)
    before = _decisions(session, sessions, now)
    yield
    session.flush()
    # The change may have added devices to the scope (an import, a new device).
    mac_set2, codes2 = _scope(session, device_ids, macs, site_ids)
    if mac_set2 != mac_set or codes2 != codes:
        known = {s.id for s in sessions}
        sessions += [s for s in _open_sessions(session, mac_set2, codes2) if s.id not in known]
    after = _decisions(session, sessions, now)
    _queue_changes(session, sessions, before, after, reason=reason, actor=actor)


def _queue_changes(
    session: Session,
    sessions: list[_OpenSession],
    before: dict[int, Outcome],
    after: dict[int, Outcome],
    *,
    reason: str,
    actor: str | None,
) -> list[CoaRequest]:
    queued: list[CoaRequest] = []
    device_ids = (
        dict(
            session.execute(
                select(Device.mac, Device.id).where(
                    Device.mac.in_(sorted({s.mac for s in sessions}))
                )
            ).all()
        )
        if sessions
        else {}
    )
    pending: dict[int, CoaRequest] = session.info.setdefault(PENDING_KEY, {})
    for s in sessions:
        old = before.get(s.id)
        new = after.get(s.id)
        if new is None or old == new:
            continue
        kind = KIND_DISCONNECT if new[0] in (Access.NONE,) else KIND_COA
        row = pending.get(s.id)
        if row is not None and row.state == QUEUED:
            # A watch nested in another in this transaction already queued this session:
            # one request, carrying the final outcome.
            row.kind, row.new_access, row.new_vlan = kind, new[0].value, new[1]
            continue
        row = _add_request(
            session,
            s,
            device_id=device_ids.get(s.mac),
            kind=kind,
            reason=reason,
            actor=actor,
            old=old,
            new=new,
        )
        pending[s.id] = row
        queued.append(row)
    session.flush()
    return queued


def _add_request(
    session: Session,
    s: _OpenSession,
    *,
    device_id: int | None,
    kind: str,
    reason: str,
    actor: str | None,
    old: Outcome | None,
    new: Outcome | None,
) -> CoaRequest:
    now = _now()
    row = CoaRequest(
        created_at=now,
        updated_at=now,
        device_id=device_id,
        mac=s.mac,
        session_row_id=s.id,
        nas_id=s.nas_id,
        nas_ip=s.nas_ip,
        acct_session_id=s.acct_session_id,
        username=s.username,
        kind=kind,
        state=QUEUED,
        attempts=0,
        next_attempt_at=now,
        reason=reason,
        actor=actor,
        old_access=old[0].value if old else None,
        old_vlan=old[1] if old else None,
        new_access=new[0].value if new else None,
        new_vlan=new[1] if new else None,
        history=[{"at": iso(now), "state": QUEUED, "detail": reason}],
    )
    session.add(row)
    session.info[QUEUED_FLAG] = True
    return row


def disconnect_device(
    session: Session, mac: str, *, reason: str = "disconnected by hand", actor: str | None = None
) -> list[CoaRequest]:
    """Queue a Disconnect-Request for every open session of `mac` (`device disconnect`)."""
    canonical = normalize_mac(mac)
    sessions = _open_sessions(session, {canonical}, set())
    device_id = session.scalar(select(Device.id).where(Device.mac == canonical))
    rows = [
        _add_request(
            session,
            s,
            device_id=device_id,
            kind=KIND_DISCONNECT,
            reason=reason,
            actor=actor,
            old=None,
            new=None,
        )
        for s in sessions
    ]
    session.flush()
    return rows


def queue_expired_grants(
    session: Session, since: datetime, until: datetime, *, reason: str = "exception expired"
) -> list[CoaRequest]:
    """Queue for devices whose access exception ended in (since, until]: the decision at
    `since` against the decision at `until` (time moved, nothing was written)."""
    device_ids = sorted(
        set(
            session.scalars(
                select(AccessException.device_id).where(
                    AccessException.revoked_at.is_(None),
                    AccessException.valid_until.is_not(None),
                    AccessException.valid_until > since,
                    AccessException.valid_until <= until,
                )
            )
        )
    )
    if not device_ids:
        return []
    mac_set, _ = _scope(session, device_ids, None, None)
    sessions = _open_sessions(session, mac_set, set())
    before = _decisions(session, sessions, since)
    after = _decisions(session, sessions, until)
    return _queue_changes(session, sessions, before, after, reason=reason, actor="schoolgate")


def record(row: CoaRequest, state: str, detail: str, *, now: datetime | None = None) -> None:
    """Move a request to `state`, appending the transition to its history."""
    moment = now or _now()
    row.state = state
    row.updated_at = moment
    row.detail = detail
    row.history = [*(row.history or []), {"at": iso(moment), "state": state, "detail": detail}]
    if state in FINAL_STATES:
        row.finished_at = moment


def request_dict(row: CoaRequest) -> dict[str, Any]:
    return {
        "id": row.id,
        "created_at": iso(row.created_at),
        "updated_at": iso(row.updated_at),
        "mac": row.mac,
        "nas_ip": row.nas_ip,
        "acct_session_id": row.acct_session_id,
        "kind": row.kind,
        "state": row.state,
        "attempts": row.attempts,
        "error_cause": row.error_cause,
        "reason": row.reason,
        "change": _change_text(row),
        "detail": row.detail,
        "history": row.history,
    }


def _change_text(row: CoaRequest) -> str | None:
    if row.new_access is None:
        return None

    def part(access: str | None, vlan: int | None) -> str:
        if access is None:
            return "?"
        return access if vlan is None else f"{access}/vlan {vlan}"

    return f"{part(row.old_access, row.old_vlan)} -> {part(row.new_access, row.new_vlan)}"


def list_requests(
    session: Session,
    *,
    mac: str | None = None,
    state: str | None = None,
    limit: int = 50,
) -> list[CoaRequest]:
    query = select(CoaRequest).order_by(CoaRequest.id.desc()).limit(limit)
    if mac:
        query = query.where(CoaRequest.mac == normalize_mac(mac))
    if state:
        query = query.where(CoaRequest.state == state)
    return list(session.scalars(query))


def export_coa(session: Session, q: ExportQuery) -> Iterator[dict[str, Any]]:
    query = select(CoaRequest).order_by(CoaRequest.id)
    if q.since is not None:
        query = query.where(CoaRequest.created_at >= q.since)
    if q.until is not None:
        query = query.where(CoaRequest.created_at < q.until)
    if q.site:
        query = query.join(
            AccountingSession, CoaRequest.session_row_id == AccountingSession.id
        ).where(AccountingSession.site_code == q.site)
    for row in session.scalars(query):
        yield {"type": "coa_request", **request_dict(row)}


def purge(session: Session, settings: Settings, now: datetime) -> dict[str, int]:
    """Retention: finished requests older than `retention_days["coa_requests"]` (they hold
    MACs and user names); pending ones are kept whatever their age."""
    days = settings.retention_days.get("coa_requests")
    if days is None:
        return {}
    result: Any = session.execute(
        delete(CoaRequest).where(
            CoaRequest.state.in_(FINAL_STATES),
            CoaRequest.created_at < now - timedelta(days=days),
        )
    )
    return {"coa_requests": int(result.rowcount or 0)}


EXPORTS: dict[str, Exporter] = {"coa": export_coa}


class CoaSender(Protocol):
    """What sends queued requests to the NAS: the UDP sender in `radius.coa`, or the null one.

    Chosen once from settings by the process that starts an adapter
    (`radius.coa.sender_for(settings)`) and handed to the CLI, the portal and the API.
    INTERIM (service-layer issue): the state machine still runs in radius.coa; it moves here.
    """

    def send_queued(
        self,
        session_factory: sessionmaker[Session],
        settings: Settings,
        *,
        device_ids: Iterable[int] | None,
        deadline: float,
    ) -> int: ...


class NullCoaSender:
    """Sends nothing: requests stay queued for a dispatcher elsewhere (CoA disabled)."""

    def send_queued(
        self,
        session_factory: sessionmaker[Session],  # noqa: ARG002
        settings: Settings,  # noqa: ARG002
        *,
        device_ids: Iterable[int] | None,  # noqa: ARG002
        deadline: float,  # noqa: ARG002
    ) -> int:
        return 0


def send_queued(
    *,
    session_factory: sessionmaker[Session],
    settings: Settings,
    sender: CoaSender,
    device_ids: Iterable[int] | None = None,
    deadline: float = 2.0,
) -> int:
    """After a change commits: send what it queued now, for up to `deadline` seconds.

    Adapters call this after their commit; rows still waiting at the deadline are taken up by
    the long-running dispatcher. Never raises: the change is committed already.
    """
    if not settings.coa_enabled:
        return 0
    try:
        return sender.send_queued(
            session_factory, settings, device_ids=device_ids, deadline=deadline
        )
    except Exception:  # the change is committed; the server's dispatcher will retry
        logging.getLogger("schoolgate.coa").exception("sending CoA after the change failed")
        return 0
