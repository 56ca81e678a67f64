"""Who sent a flow: IP -> MAC at that moment (RADIUS accounting, DHCP, ARP), then MAC -> device
-> person. IPs are reused, so every binding carries the time it was valid from (and until)."""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the capture side does not import the database (monitor/recording.py)
    from sqlalchemy.orm import Session

# Who: (mac, source of the mapping, device id, person id)
Who = tuple[str | None, str | None, int | None, int | None]
_NOBODY: Who = (None, None, None, None)
DEFAULT_STALE_AFTER = timedelta(hours=4)  # Settings.accounting_stale_after's default
# A RADIUS session is authoritative over what the wire says for the same moment.
_PRIORITY = {"radius": 2, "dhcp": 1, "arp": 0}


@dataclass(frozen=True, slots=True)
class DeviceRef:
    device_id: int
    person_id: int | None


# A binding: (start, end or inf, priority, mac, source, confirmed: its last renewal or
# interim update, from which a newer binding of the IP to another MAC overtakes it).
Entry = tuple[float, float, int, str, str, float]
_INF = float("inf")


class Attributor:
    """Time-aware IP->MAC bindings and the MAC->device->person table.

    At a moment the binding valid then with the best source wins (RADIUS over DHCP over ARP),
    except that a RADIUS session is overtaken by a DHCP lease or ARP binding of its IP to
    another MAC seen after its last Start or Interim-Update: a NAS that rebooted never sent
    the Stop, and the address has moved on (issue 14). Sessions without a Stop end anyway
    at their last update plus `accounting_stale_after` (`load_attributor`)."""

    def __init__(self, devices: dict[str, DeviceRef] | None = None) -> None:
        self.devices = devices or {}
        # ip -> sorted list of Entry
        self.bindings: dict[str, list[Entry]] = {}
        # accounting session row id -> (ip, the entry it gave): replaced when it changes.
        self._sessions: dict[int, tuple[str, Entry]] = {}

    def learn(
        self,
        ip: str,
        mac: str,
        start: float,
        source: str,
        until: float | None = None,
        confirmed: float | None = None,
    ) -> bool:
        """Record that `ip` was `mac` from `start` (last confirmed at `confirmed`, default
        `start`); returns False if nothing changed."""
        entries = self.bindings.setdefault(ip, [])
        current = self._lookup(entries, start)
        priority = _PRIORITY[source]
        end = until if until is not None else _INF
        seen = start if confirmed is None else confirmed
        if current is not None and current[3] == mac and current[2] >= priority:
            if current[2] == priority and end > current[1]:
                # A renewal (the DHCP ACK a client gets halfway through its lease, or a RADIUS
                # interim): the same binding, now valid for longer. Kept as a new entry, the
                # old end would leave the address unattributed until the next renewal.
                entries.remove(current)
                bisect.insort(
                    entries, (current[0], end, priority, mac, current[4], max(seen, current[5]))
                )
                return True
            # Already known, from as good a source (an ARP inside a DHCP lease, say): keeping
            # it would grow the list by one entry per ARP for the whole lease.
            return False
        bisect.insort(entries, (start, end, priority, mac, source, seen))
        return True

    def session(
        self, row_id: int, ip: str, mac: str, start: float, *, until: float, confirmed: float
    ) -> None:
        """A RADIUS accounting session's binding (its row id), replacing what the same session
        said before: an Interim-Update moves its end, a Stop ends it (`AttributionFeed`)."""
        entries = self.bindings.setdefault(ip, [])
        old = self._sessions.get(row_id)
        if old is not None:
            old_entries = self.bindings.get(old[0])
            if old_entries is not None and old[1] in old_entries:
                old_entries.remove(old[1])
        entry = (start, until, _PRIORITY["radius"], mac, "radius", confirmed)
        bisect.insort(entries, entry)
        self._sessions[row_id] = (ip, entry)

    def release(self, ip: str, mac: str, ts: float) -> bool:
        """A DHCP RELEASE: `mac`'s lease of `ip` ends at `ts`. False if it held none."""
        entries = self.bindings.get(ip)
        if not entries:
            return False
        for entry in entries:
            if entry[3] == mac and entry[4] == "dhcp" and entry[0] <= ts <= entry[1]:
                entries.remove(entry)
                bisect.insort(entries, (entry[0], ts, *entry[2:]))
                return True
        return False

    @staticmethod
    def _lookup(entries: list[Entry], ts: float) -> Entry | None:
        best = None
        wire: list[Entry] = []  # valid DHCP/ARP bindings started later than the entry at hand
        # The latest binding started at or before ts and still valid; RADIUS wins ties
        # unless a newer wire binding to another MAC overtook it.
        for entry in reversed(entries[: bisect.bisect_right(entries, (ts, _INF, 9))]):
            if entry[1] < ts:
                continue
            if entry[2] == 2:
                if any(w[0] > entry[5] and w[3] != entry[3] for w in wire):
                    continue
                return entry
            wire.append(entry)
            if best is None or entry[2] > best[2]:
                best = entry
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
    session: Session,
    *,
    site_code: str | None = None,
    since: datetime | None = None,
    stale_after: timedelta = DEFAULT_STALE_AFTER,
) -> Attributor:
    """Devices and owners, and every RADIUS accounting session with a Framed-IP-Address; a
    session without a Stop ends `stale_after` after its last update (accounting.session_end).
    A monitor that keeps it up to date uses `AttributionFeed` instead."""
    feed = AttributionFeed(site_code=site_code, stale_after=stale_after)
    return feed.load(session, since=since)


# How far back of the newest `changed_at` seen a refresh asks again: a transaction that
# stamped its rows before the last look but committed after it (RADIUS writers commit within
# a second or two; this leaves room for a slow one and for clocks a little apart).
REFRESH_OVERLAP = timedelta(seconds=60)
_IN_CHUNK = 500  # MACs per IN (...) when reloading changed devices


class AttributionFeed:
    """One `Attributor` kept up to date with the database while a monitor runs for weeks
    (issue 14): `load` builds it once, `refresh` patches it with what changed since.

    - RADIUS accounting: the sessions written since the last look, by `changed_at` (their
      writer's clock, indexed), each replacing the binding it gave before (an Interim-Update
      moves its stale end, a Stop ends it);
    - devices: the MACs the change log (service/change_log.py) names after the change counter
      value read at the last look; a change the log cannot narrow down (a bulk update, the
      log pruned past us) reloads the device table, which is rare.

    DHCP and ARP bindings the recorder learns from the wire stay in the same Attributor."""

    def __init__(self, *, site_code: str | None, stale_after: timedelta) -> None:
        self.site_code = site_code
        self.stale_after = stale_after
        self.attributor = Attributor()
        self.version = 0  # the change counter value the devices are current with
        self.seen: datetime | None = None  # the newest accounting changed_at seen
        self.full_device_loads = 0

    def load(self, session: Session, *, since: datetime | None = None) -> Attributor:
        """Everything: devices, and accounting sessions (those stopped before `since` left
        out)."""
        self.version = self._counter(session)
        self.seen = self._newest_change(session)
        self.attributor.devices = self._devices(session)
        self._sessions(session, since=since)
        return self.attributor

    def refresh(self, session: Session) -> int:
        """Apply what changed since the last look; the number of sessions and devices
        (re)read. Reads only the changed rows (two indexed lookups when nothing changed)."""
        from sqlalchemy import select

        from service.change_log import changes_since
        from service.models import Device

        count = 0
        version = self._counter(session)
        if version != self.version:
            changes = changes_since(session=session, version=self.version)
            if changes is None:
                self.attributor.devices = self._devices(session)
                self.full_device_loads += 1
                count += len(self.attributor.devices)
            elif changes.macs:
                devices = self.attributor.devices
                macs = sorted(changes.macs)
                for at in range(0, len(macs), _IN_CHUNK):
                    chunk = macs[at : at + _IN_CHUNK]
                    found = {
                        mac: DeviceRef(device_id, owner_id)
                        for mac, device_id, owner_id in session.execute(
                            select(Device.mac, Device.id, Device.owner_id).where(
                                Device.mac.in_(chunk)
                            )
                        )
                    }
                    for mac in chunk:
                        ref = found.get(mac)
                        if ref is None:
                            devices.pop(mac, None)  # removed (or the MAC changed)
                        else:
                            devices[mac] = ref
                    count += len(chunk)
            self.version = version
        newest = self._newest_change(session)
        if newest is not None:
            # From a little before the newest change seen last time: a transaction that
            # stamped its rows before that look may have committed after it.
            changed_from = None if self.seen is None else self.seen - REFRESH_OVERLAP
            count += self._sessions(session, changed_from=changed_from)
            self.seen = newest
        return count

    @staticmethod
    def _counter(session: Session) -> int:
        from sqlalchemy import select

        from service.models import ChangeCounter

        return int(session.scalar(select(ChangeCounter.value).where(ChangeCounter.id == 1)) or 0)

    @staticmethod
    def _newest_change(session: Session) -> datetime | None:
        from sqlalchemy import func, select

        from service.models import AccountingSession

        return session.scalar(select(func.max(AccountingSession.changed_at)))

    @staticmethod
    def _devices(session: Session) -> dict[str, DeviceRef]:
        from sqlalchemy import select

        from service.models import Device

        return {
            mac: DeviceRef(device_id, owner_id)
            for mac, device_id, owner_id in session.execute(
                select(Device.mac, Device.id, Device.owner_id)
            )
        }

    def _sessions(
        self,
        session: Session,
        *,
        since: datetime | None = None,
        changed_from: datetime | None = None,
    ) -> int:
        """(Re)learn the accounting sessions with an IP (changed at or after `changed_from`);
        how many."""
        from sqlalchemy import select

        from service.accounting import session_end
        from service.models import AccountingSession

        query = select(
            AccountingSession.id,
            AccountingSession.framed_ip,
            AccountingSession.mac,
            AccountingSession.started_at,
            AccountingSession.updated_at,
            AccountingSession.stopped_at,
        ).where(AccountingSession.framed_ip.is_not(None), AccountingSession.mac.is_not(None))
        if self.site_code:
            query = query.where(AccountingSession.site_code == self.site_code)
        if since is not None:
            query = query.where(
                (AccountingSession.stopped_at.is_(None)) | (AccountingSession.stopped_at >= since)
            )
        if changed_from is not None:
            query = query.where(AccountingSession.changed_at >= changed_from)
        count = 0
        learn = self.attributor.session
        for row_id, framed_ip, mac, started_at, updated_at, stopped_at in session.execute(query):
            if framed_ip is None or mac is None:
                continue
            end = session_end(
                updated_at=updated_at, stopped_at=stopped_at, stale_after=self.stale_after
            )
            learn(
                row_id,
                framed_ip,
                mac,
                started_at.timestamp(),
                until=end.timestamp(),
                confirmed=updated_at.timestamp(),
            )
            count += 1
        return count
