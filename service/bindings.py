"""`schoolgate export bindings`: which MAC held which IP from when to when, and from what
evidence (a DHCP lease, an ARP or DHCP INFORM sighting, a RADIUS accounting session), with the
device and person where known: the device/IP/person line the DfE filtering and monitoring
standards ask logs to carry. "Who had 10.0.0.23 at 10:14?" is `--ip 10.0.0.23 --at 10:14`.

How an interval is built, per IP and MAC and source:
- DHCP: an ACK with an address starts a lease until ACK + lease time; an ACK of the same lease
  before it ends (a renewal) extends it; a RELEASE ends it.
- ARP (and DHCP INFORM: an address the client set itself): from the first sighting, with no
  end of its own (the monitor records an ARP binding when it changes, not every ARP).
- RADIUS accounting: Start to Stop; a session with no Stop ends at its last Start or
  Interim-Update plus `accounting_stale_after` (accounting.session_end).
Then the newer evidence wins, as the monitor's attribution does (monitor/attribution.py): an
interval ends where a binding of the same IP to another MAC begins after its last renewal or
update, if that binding's source is as good (RADIUS > DHCP > ARP) or the interval is a RADIUS
session (which a NAS reboot can leave without its Stop).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.accounting import DEFAULT_STALE_AFTER, session_end
from service.export_types import ExportQuery, iso
from service.models import AccountingSession, Device, Person
from service.models.traffic import TrafficBinding

_PRIORITY = {"radius": 2, "dhcp": 1, "arp": 0}
# A lease granted this long before --since can still hold inside the window (DHCP servers
# rarely lease for more than 8 days); earlier rows are not read.
LOOKBACK = timedelta(days=8)
_INFINITE_LEASE = 0xFFFFFFFF  # RFC 2132: a lease that never ends


@dataclass(slots=True)
class Binding:
    """One IP held by one MAC for a time, from one kind of evidence. `end` None: still held
    as far as the records go. `end_reason`: lease-expired, release, stop (RADIUS Stop),
    stale (a session with no Stop nor recent update), replaced (another MAC took the IP), or
    open."""

    ip: str
    mac: str
    source: str  # dhcp, arp, radius
    start: datetime
    end: datetime | None
    end_reason: str
    site: str | None
    confirmed: datetime  # its last renewal, interim update or sighting
    hostname: str | None = None
    location: str | None = None  # RADIUS: NAS location or port; DHCP: the relay's circuit id
    username: str | None = None  # RADIUS: the User-Name of the session
    vendor_class: str | None = None  # DHCP option 60 ("MSFT 5.0", "android-dhcp-14")

    def holds_at(self, at: datetime) -> bool:
        return self.start <= at and (self.end is None or at < self.end)

    def overlaps(self, since: datetime | None, until: datetime | None) -> bool:
        return (until is None or self.start < until) and (
            since is None or self.end is None or self.end > since
        )


def bindings(
    *,
    session: Session,
    now: datetime,
    ip: str | None = None,
    mac: str | None = None,
    at: datetime | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    site: str | None = None,
    stale_after: timedelta = DEFAULT_STALE_AFTER,
) -> list[Binding]:
    """The bindings of `ip` (or `mac`, or every IP) that held at `at`, or overlapped
    [`since`, `until`), ordered by IP then start. Times are aware UTC."""
    first, last = at or since, at or until
    low = first - LOOKBACK if first is not None else None
    high = last + LOOKBACK if last is not None else None
    ips: set[str] | None = None
    if ip is not None:
        ips = {ip}
    elif mac is not None:
        # Every IP the MAC held, then every binding of those IPs: another MAC's later
        # binding is what ends this one's.
        found = set(
            session.scalars(select(TrafficBinding.ip).where(TrafficBinding.mac == mac))
        ) | set(
            session.scalars(select(AccountingSession.framed_ip).where(AccountingSession.mac == mac))
        )
        ips = {address for address in found if address is not None}
        if not ips:
            return []
    raw = _wire(session, ips, site, low, high) + _radius(
        session, ips, site, low, high, now, stale_after
    )
    by_ip: dict[str, list[Binding]] = {}
    for binding in raw:
        by_ip.setdefault(binding.ip, []).append(binding)
    out: list[Binding] = []
    for address in sorted(by_ip, key=_ip_key):
        held = sorted(by_ip[address], key=lambda b: (b.start, -_PRIORITY[b.source]))
        _overtake(held)
        for binding in held:
            if mac is not None and binding.mac != mac:
                continue
            if at is not None and not binding.holds_at(at):
                continue
            if at is None and not binding.overlaps(since, until):
                continue
            out.append(binding)
    return out


def _ip_key(ip: str) -> tuple[int, str]:
    parts = ip.split(".")
    if len(parts) == 4 and all(p.isdigit() for p in parts):
        return (0, "".join(f"{int(p):03d}" for p in parts))
    return (1, ip)


def _wire(
    session: Session,
    ips: set[str] | None,
    site: str | None,
    low: datetime | None,
    high: datetime | None,
) -> list[Binding]:
    """Intervals from what the monitor saw: DHCP leases (renewed, released), ARP and INFORM."""
    query = (
        select(TrafficBinding)
        .where(TrafficBinding.ip.is_not(None))
        .order_by(TrafficBinding.seen_at, TrafficBinding.id)
    )
    if ips is not None:
        query = query.where(TrafficBinding.ip.in_(ips))
    if site:
        query = query.where(TrafficBinding.site_code == site)
    if low is not None:
        query = query.where(TrafficBinding.seen_at >= low)
    if high is not None:
        query = query.where(TrafficBinding.seen_at < high)
    out: list[Binding] = []
    leases: dict[tuple[str, str], Binding] = {}  # (ip, mac) -> its latest DHCP lease
    sightings: dict[tuple[str, str], Binding] = {}  # (ip, mac) -> its latest ARP/INFORM
    for row in session.scalars(query):
        ip = row.ip
        if ip is None:
            continue
        key = (ip, row.mac)
        if row.is_lease:
            lease = leases.get(key)
            end = None
            if row.lease_seconds and row.lease_seconds != _INFINITE_LEASE:
                end = row.seen_at + timedelta(seconds=row.lease_seconds)
            if lease is not None and lease.end_reason != "release" and lease.holds_at(row.seen_at):
                lease.end = None if end is None or lease.end is None else max(lease.end, end)
                lease.confirmed = row.seen_at
            else:
                lease = Binding(
                    ip=ip,
                    mac=row.mac,
                    source="dhcp",
                    start=row.seen_at,
                    end=end,
                    end_reason="lease-expired" if end is not None else "open",
                    site=row.site_code,
                    confirmed=row.seen_at,
                    location=row.circuit_id,
                    vendor_class=row.vendor_class,
                )
                leases[key] = lease
                out.append(lease)
            if row.circuit_id:
                lease.location = row.circuit_id
        elif row.source == "dhcp" and row.msg_type == "RELEASE":
            lease = leases.get(key)
            if lease is not None and lease.holds_at(row.seen_at):
                lease.end, lease.end_reason = row.seen_at, "release"
        elif row.source == "arp" or (row.source == "dhcp" and row.msg_type == "INFORM"):
            sighting = sightings.get(key)
            if sighting is not None and sighting.holds_at(row.seen_at):
                sighting.confirmed = row.seen_at
                continue
            sighting = Binding(
                ip=ip,
                mac=row.mac,
                source="arp",
                start=row.seen_at,
                end=None,
                end_reason="open",
                site=row.site_code,
                confirmed=row.seen_at,
                location=row.circuit_id,
            )
            sightings[key] = sighting
            out.append(sighting)
    # The name a client gives is in its DISCOVER and REQUEST, which carry no address yet.
    hostnames = dict(
        session.execute(
            select(TrafficBinding.mac, TrafficBinding.hostname)
            .where(
                TrafficBinding.mac.in_({b.mac for b in out}),
                TrafficBinding.hostname.is_not(None),
            )
            .order_by(TrafficBinding.seen_at, TrafficBinding.id)
        ).all()
    )
    for binding in out:
        binding.hostname = hostnames.get(binding.mac)
    return out


def _radius(
    session: Session,
    ips: set[str] | None,
    site: str | None,
    low: datetime | None,
    high: datetime | None,
    now: datetime,
    stale_after: timedelta,
) -> list[Binding]:
    """Intervals from RADIUS accounting: Start to Stop, or to the last update + stale_after."""
    query = select(AccountingSession).where(
        AccountingSession.framed_ip.is_not(None), AccountingSession.mac.is_not(None)
    )
    if ips is not None:
        query = query.where(AccountingSession.framed_ip.in_(ips))
    if site:
        query = query.where(AccountingSession.site_code == site)
    if low is not None:
        query = query.where(
            AccountingSession.stopped_at.is_(None) | (AccountingSession.stopped_at >= low)
        )
    if high is not None:
        query = query.where(AccountingSession.started_at < high)
    out = []
    for row in session.scalars(query):
        if row.framed_ip is None or row.mac is None:
            continue
        end: datetime | None = session_end(
            updated_at=row.updated_at, stopped_at=row.stopped_at, stale_after=stale_after
        )
        if row.stopped_at is not None:
            reason = "stop"
        elif end is not None and end <= now:
            reason = "stale"
        else:
            end, reason = None, "open"
        out.append(
            Binding(
                ip=row.framed_ip,
                mac=row.mac,
                source="radius",
                start=row.started_at,
                end=end,
                end_reason=reason,
                site=row.site_code,
                confirmed=row.updated_at,
                location=row.location or row.nas_port_id or row.nas_identifier,
                username=row.username,
            )
        )
    return out


def _overtake(held: list[Binding]) -> None:
    """End each interval where a binding of its IP to another MAC begins after its last
    renewal or update, when that binding's source is as good, or the interval is a RADIUS
    session (its Stop may never come). `held` is one IP's intervals by start."""
    for index, binding in enumerate(held):
        for later in held[index + 1 :]:
            if binding.end is not None and later.start >= binding.end:
                break
            if (
                later.mac != binding.mac
                and later.start > binding.confirmed
                and (
                    binding.source == "radius"
                    or _PRIORITY[later.source] >= _PRIORITY[binding.source]
                )
            ):
                binding.end, binding.end_reason = later.start, "replaced"
                break


def export_bindings(session: Session, q: ExportQuery) -> Iterator[dict[str, Any]]:
    """`export bindings`: one line per interval, with the device and person of its MAC."""
    found = bindings(
        session=session,
        now=q.now or _utcnow(),
        ip=q.ip,
        mac=q.mac,
        at=q.at,
        since=q.since,
        until=q.until,
        site=q.site,
        stale_after=q.stale_after or DEFAULT_STALE_AFTER,
    )
    macs = {b.mac for b in found}
    devices = {
        mac: (name, device_class, person)
        for mac, name, device_class, person in session.execute(
            select(Device.mac, Device.name, Device.device_class, Person.name)
            .outerjoin(Person, Person.id == Device.owner_id)
            .where(Device.mac.in_(macs))
        )
    }
    for b in found:
        name, device_class, person = devices.get(b.mac, (None, None, None))
        yield {
            "ip": b.ip,
            "mac": b.mac,
            "start": iso(b.start),
            "end": iso(b.end),
            "end_reason": b.end_reason,
            "source": b.source,
            "site": b.site,
            "hostname": b.hostname,
            "device": name,
            "device_class": device_class.value if device_class is not None else None,
            "person": person,
            "username": b.username,
            "vendor_class": b.vendor_class,
            "location": b.location,
        }


def _utcnow() -> datetime:
    return datetime.now(UTC)


EXPORTS = {"bindings": export_bindings}
