"""Who sent a flow: IP -> MAC at that moment (RADIUS accounting, DHCP, ARP), then MAC -> device
-> person. IPs are reused, so every binding carries the time it was valid from (and until)."""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the capture side does not import the database (monitor/recording.py)
    from sqlalchemy.orm import Session

# Who: (mac, source of the mapping, device id, person id)
Who = tuple[str | None, str | None, int | None, int | None]
_NOBODY: Who = (None, None, None, None)
# A RADIUS session is authoritative over what the wire says for the same moment.
_PRIORITY = {"radius": 2, "dhcp": 1, "arp": 0}


@dataclass(frozen=True, slots=True)
class DeviceRef:
    device_id: int
    person_id: int | None


class Attributor:
    """Time-aware IP->MAC bindings and the MAC->device->person table."""

    def __init__(self, devices: dict[str, DeviceRef] | None = None) -> None:
        self.devices = devices or {}
        # ip -> sorted list of (start, end or inf, priority, mac, source)
        self.bindings: dict[str, list[tuple[float, float, int, str, str]]] = {}

    def learn(
        self, ip: str, mac: str, start: float, source: str, until: float | None = None
    ) -> bool:
        """Record that `ip` was `mac` from `start`; returns False if nothing changed."""
        entries = self.bindings.setdefault(ip, [])
        current = self._lookup(entries, start)
        priority = _PRIORITY[source]
        end = until if until is not None else float("inf")
        if current is not None and current[3] == mac and current[2] >= priority:
            if current[2] == priority and end > current[1]:
                # A renewal (the DHCP ACK a client gets halfway through its lease, or a RADIUS
                # interim): the same binding, now valid for longer. Kept as a new entry, the
                # old end would leave the address unattributed until the next renewal.
                entries.remove(current)
                bisect.insort(entries, (current[0], end, priority, mac, current[4]))
                return True
            # Already known, from as good a source (an ARP inside a DHCP lease, say): keeping
            # it would grow the list by one entry per ARP for the whole lease.
            return False
        bisect.insort(entries, (start, end, priority, mac, source))
        return True

    @staticmethod
    def _lookup(
        entries: list[tuple[float, float, int, str, str]], ts: float
    ) -> tuple[float, float, int, str, str] | None:
        best = None
        # The latest binding started at or before ts and still valid; RADIUS wins ties.
        for entry in reversed(entries[: bisect.bisect_right(entries, (ts, float("inf"), 9))]):
            if entry[1] < ts:
                continue
            if best is None or entry[2] > best[2]:
                best = entry
            if best[2] == 2:
                break
        return best

    def who(self, ip: str, ts: float) -> Who:
        entries = self.bindings.get(ip)
        if not entries:
            return _NOBODY
        entry = self._lookup(entries, ts)
        if entry is None:
            return _NOBODY
        mac, source = entry[3], entry[4]
        ref = self.devices.get(mac)
        if ref is None:
            return (mac, source, None, None)
        return (mac, source, ref.device_id, ref.person_id)


def load_attributor(
    session: Session, *, site_code: str | None = None, since: datetime | None = None
) -> Attributor:
    """Devices and owners, and every RADIUS accounting session with a Framed-IP-Address."""
    from sqlalchemy import select

    from service.models import AccountingSession, Device

    devices = {
        mac: DeviceRef(device_id, owner_id)
        for mac, device_id, owner_id in session.execute(
            select(Device.mac, Device.id, Device.owner_id)
        )
    }
    attributor = Attributor(devices)
    query = select(
        AccountingSession.framed_ip,
        AccountingSession.mac,
        AccountingSession.started_at,
        AccountingSession.stopped_at,
    ).where(AccountingSession.framed_ip.is_not(None), AccountingSession.mac.is_not(None))
    if site_code:
        query = query.where(AccountingSession.site_code == site_code)
    if since is not None:
        query = query.where(
            (AccountingSession.stopped_at.is_(None)) | (AccountingSession.stopped_at >= since)
        )
    for framed_ip, mac, started_at, stopped_at in session.execute(query):
        if framed_ip is None or mac is None:
            continue
        attributor.learn(
            framed_ip,
            mac,
            started_at.timestamp(),
            "radius",
            until=stopped_at.timestamp() if stopped_at else None,
        )
    return attributor
