"""Who is on the network now: the open accounting sessions, with the device, its owner and
the access the policy gives it at this moment (`schoolgate who`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.accounting import DEFAULT_STALE_AFTER, open_at
from service.devices import parse_class
from service.facts import load_device_facts, load_policies
from service.models import AccountingSession, NasClient
from service.models.traffic import TrafficBinding
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
    stale_after: timedelta = DEFAULT_STALE_AFTER,
) -> list[Presence]:
    """The open sessions, oldest first, filtered by site (NotFound if unknown), device class
    (Invalid if unknown) and NAS name or NAS-Identifier. Open: no Accounting Stop, a Start or
    Interim-Update within `stale_after`, and no DHCP lease or ARP binding of its IP to another
    MAC seen since (accounting.session_end: a NAS that rebooted never sends the Stop). One
    query for the sessions, one for the bindings that overtook them, then the engine's
    set-based loaders (facts for all their MACs at once, the policies): no query per row."""
    cls = parse_class(device_class) if device_class else None
    query = (
        select(AccountingSession, NasClient.name)
        .outerjoin(NasClient, AccountingSession.nas_id == NasClient.id)
        .where(open_at(now, stale_after), AccountingSession.mac.is_not(None))
        .order_by(AccountingSession.started_at, AccountingSession.id)
    )
    if site:
        get_site(session, site)
        query = query.where(AccountingSession.site_code == site)
    if nas:
        query = query.where((NasClient.name == nas) | (AccountingSession.nas_identifier == nas))
    found = session.execute(query).all()
    moved = _moved(session, found)
    rows = [row for row in found if not _overtaken(row[0], moved)]
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


def _moved(session: Session, rows: Any) -> dict[str, list[tuple[datetime, str]]]:
    """IP -> (seen at, MAC) of the DHCP leases and ARP bindings the monitor saw for the
    sessions' IPs since the oldest of their last updates."""
    ips = {row.framed_ip for row, _ in rows if row.framed_ip}
    if not ips:
        return {}
    oldest = min(row.updated_at for row, _ in rows)
    found: dict[str, list[tuple[datetime, str]]] = {}
    for ip, seen_at, mac in session.execute(
        select(TrafficBinding.ip, TrafficBinding.seen_at, TrafficBinding.mac).where(
            TrafficBinding.ip.in_(ips),
            TrafficBinding.seen_at > oldest,
            TrafficBinding.is_lease.is_(True) | (TrafficBinding.source == "arp"),
        )
    ):
        if ip is not None:
            found.setdefault(ip, []).append((seen_at, mac))
    return found


def _overtaken(row: AccountingSession, moved: dict[str, list[tuple[datetime, str]]]) -> bool:
    return any(
        seen_at > row.updated_at and mac != row.mac
        for seen_at, mac in moved.get(row.framed_ip or "", ())
    )
