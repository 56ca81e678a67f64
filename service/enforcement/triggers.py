"""Triggers: which open sessions a change alters, queued as CoA / Disconnect requests.

`watch()` decides before and after a change for every open accounting session it touches and
queues a durable `CoaRequest` row, in the same transaction, for each session whose (access,
VLAN) moved. Revocations (access `none`) become Disconnect-Requests; other moves are queued as
kind `coa` ("apply the new decision"), which the dispatcher turns into a CoA-Request or a
Disconnect-Request depending on what the NAS's vendor takes (`service.enforcement.dispatcher`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from service.enums import Access, CoaKind, CoaState
from service.export_types import iso
from service.facts import load_device_facts, load_policies, version_of_change
from service.mac import normalize_mac
from service.models import AccessException, AccountingSession, Device, Site
from service.models.coa import CoaRequest
from service.policy import AccessRequest, decide

# Set in `session.info` when a transaction queued a request, so the CLI knows to send it.
QUEUED_FLAG = "coa_queued"
# `session.info[PENDING_KEY]`: accounting session id -> the request queued for it so far.
PENDING_KEY = "coa_pending"


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
    "after" are decided at that moment; the wall clock when None. The queued rows are stamped
    with the wall clock whatever `now` is: the dispatcher compares them with the wall clock.
    """
    device_ids = list(device_ids or ())
    macs = list(macs or ())
    site_ids = list(site_ids or ())
    session.flush()
    mac_set, codes = _scope(session, device_ids, macs, site_ids)
    sessions = _open_sessions(session, mac_set, codes)
    now = now or datetime.now(UTC)
    before = _decisions(session, sessions, now)
    yield
    session.flush()
    # The change may have added devices to the scope (an import, a new device).
    mac_set2, codes2 = _scope(session, device_ids, macs, site_ids)
    if mac_set2 != mac_set or codes2 != codes:
        known = {s.id for s in sessions}
        sessions += [s for s in _open_sessions(session, mac_set2, codes2) if s.id not in known]
    after = _decisions(session, sessions, now)
    queued_at = datetime.now(UTC)
    _queue_changes(session, sessions, before, after, reason=reason, actor=actor, now=queued_at)


def _queue_changes(
    session: Session,
    sessions: list[_OpenSession],
    before: dict[int, Outcome],
    after: dict[int, Outcome],
    *,
    reason: str,
    actor: str | None,
    now: datetime,
    changed: bool = True,
) -> list[CoaRequest]:
    """Queue a request for each session whose outcome moved. `changed`: the outcomes moved
    because this transaction changed data (each request then waits for the RADIUS workers to
    load it); False when only time moved (an exception ended), which every snapshot answers."""
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
    version: int | None = None
    for s in sessions:
        old = before.get(s.id)
        new = after.get(s.id)
        if new is None or old == new:
            continue
        kind = CoaKind.DISCONNECT if new[0] is Access.NONE else CoaKind.COA
        row = pending.get(s.id)
        if row is not None and row.state == CoaState.QUEUED:
            # A watch nested in another in this transaction already queued this session:
            # one request, carrying the final outcome.
            row.kind, row.new_access, row.new_vlan = kind, new[0].value, new[1]
            continue
        if version is None and changed:
            version = version_of_change(session)
        row = _add_request(
            session,
            s,
            device_id=device_ids.get(s.mac),
            kind=kind,
            reason=reason,
            actor=actor,
            old=old,
            new=new,
            now=now,
            change=version,
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
    kind: CoaKind,
    reason: str,
    actor: str | None,
    old: Outcome | None,
    new: Outcome | None,
    now: datetime,
    change: int | None = None,
) -> CoaRequest:
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
        state=CoaState.QUEUED,
        attempts=0,
        next_attempt_at=now,
        reason=reason,
        actor=actor,
        old_access=old[0].value if old else None,
        old_vlan=old[1] if old else None,
        new_access=new[0].value if new else None,
        new_vlan=new[1] if new else None,
        history=[{"at": iso(now), "state": CoaState.QUEUED.value, "detail": reason}],
        change_version=change,
    )
    session.add(row)
    session.info[QUEUED_FLAG] = True
    return row


def disconnect_device(
    *,
    session: Session,
    mac: str,
    reason: str = "disconnected by hand",
    actor: str | None = None,
    now: datetime | None = None,
) -> list[CoaRequest]:
    """Queue a Disconnect-Request for every open session of `mac` (`device disconnect`)."""
    now = now or datetime.now(UTC)
    canonical = normalize_mac(mac)
    sessions = _open_sessions(session, {canonical}, set())
    device_id = session.scalar(select(Device.id).where(Device.mac == canonical))
    rows = [
        _add_request(
            session,
            s,
            device_id=device_id,
            kind=CoaKind.DISCONNECT,
            reason=reason,
            actor=actor,
            old=None,
            new=None,
            now=now,
        )
        for s in sessions
    ]
    session.flush()
    return rows


def queue_expired_grants(
    *, session: Session, since: datetime, until: datetime, reason: str = "exception expired"
) -> list[CoaRequest]:
    """Queue for devices whose access exception ended in (since, until]: the decision at
    `since` against the decision at `until` (time moved, nothing was written). `until` is the
    caller's now; the rows are stamped with it."""
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
    return _queue_changes(
        session,
        sessions,
        before,
        after,
        reason=reason,
        actor="schoolgate",
        now=until,
        changed=False,
    )
