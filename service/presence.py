"""Who is on the network now: the open accounting sessions, with the device, its owner and
the access the policy gives it at this moment (`schoolgate who`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.devices import parse_class
from service.facts import load_device_facts, load_policies
from service.models import AccountingSession, NasClient
from service.policy import AccessRequest, decide
from service.sites import DEFAULT_TIMEZONE, get_site


@dataclass(frozen=True, slots=True)
class Presence:
    """One open session as `who` shows it. `access` and `vlan` are what the policy gives the
    device now at that NAS and place (None when its site has no policy loaded)."""

    mac: str
    site: str | None
    device_class: str | None  # None: not registered
    person: str | None  # the device's owner, else the RADIUS username
    access: str | None
    vlan: int | None
    nas: str | None  # the NAS's name, else its NAS-Identifier or address
    location: str | None
    framed_ip: str | None
    since: datetime
    timezone: str  # the site's, to show `since` in


def who(
    *,
    session: Session,
    now: datetime,
    site: str | None = None,
    device_class: str | None = None,
    nas: str | None = None,
) -> list[Presence]:
    """The open sessions (no Accounting Stop yet), oldest first, filtered by site (NotFound if
    unknown), device class (Invalid if unknown) and NAS name or NAS-Identifier. One query for
    the sessions, then the engine's set-based loaders (facts for all their MACs at once, the
    policies): no query per row."""
    cls = parse_class(device_class) if device_class else None
    query = (
        select(AccountingSession, NasClient.name)
        .outerjoin(NasClient, AccountingSession.nas_id == NasClient.id)
        .where(AccountingSession.stopped_at.is_(None), AccountingSession.mac.is_not(None))
        .order_by(AccountingSession.started_at, AccountingSession.id)
    )
    if site:
        get_site(session, site)
        query = query.where(AccountingSession.site_code == site)
    if nas:
        query = query.where((NasClient.name == nas) | (AccountingSession.nas_identifier == nas))
    rows = session.execute(query).all()
    facts = load_device_facts(session, {row.mac for row, _ in rows if row.mac})
    policies = load_policies(session)
    out: list[Presence] = []
    for row, nas_name in rows:
        mac = row.mac or ""
        device = facts.get(mac)
        if cls is not None and (device is None or device.device_class is not cls):
            continue
        code = row.site_code or (device.site_code if device else None)
        policy = policies.get(code) if code else None
        decision = None
        if policy is not None:
            request = AccessRequest(
                mac=mac,
                nas_identifier=row.nas_identifier,
                called_station_id=row.called_station_id,
                nas_port_id=row.nas_port_id,
            )
            decision = decide(request, device, policy, now)
        out.append(
            Presence(
                mac=mac,
                site=code,
                device_class=device.device_class.value if device else None,
                person=(device.owner_name if device else None) or row.username,
                access=decision.access.value if decision else None,
                vlan=decision.vlan if decision else None,
                nas=nas_name or row.nas_identifier or row.nas_ip,
                location=(decision.location if decision else None) or row.location,
                framed_ip=row.framed_ip,
                since=row.started_at,
                timezone=policy.timezone if policy else DEFAULT_TIMEZONE,
            )
        )
    return out
