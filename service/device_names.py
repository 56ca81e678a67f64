"""Device names seen on the network (mDNS, LLMNR, NetBIOS, DHCP hostname): recorded by the
monitor's writer, read where the IT lead looks at a device (`device show`, `device list
--wide`, `export names`)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Connection, delete, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from service.config import Settings
from service.export_types import ExportQuery, iso
from service.mac import normalize_mac
from service.models.names import DeviceName

if TYPE_CHECKING:
    from sqlalchemy import Table

_TABLE = cast("Table", DeviceName.__table__)


def record_device_names(*, session: Session | Connection, rows: Iterable[dict[str, Any]]) -> int:
    """Upsert names (dicts with DeviceName's columns but the id): one row per (mac, name,
    source), first_seen kept, last_seen and ip moved on by a later sighting. Returns how many
    distinct names were given. Flushes nothing else; the caller commits."""
    merged: dict[tuple[str, str, str], dict[str, Any]] = {}
    for row in rows:
        key = (row["mac"], row["name"], row["source"])
        seen = merged.get(key)
        if seen is None:
            merged[key] = dict(row)
            continue
        seen["first_seen"] = min(seen["first_seen"], row["first_seen"])
        if row["last_seen"] >= seen["last_seen"]:
            seen["last_seen"], seen["ip"] = row["last_seen"], row["ip"] or seen["ip"]
    if not merged:
        return 0
    dialect = session.get_bind().dialect.name if isinstance(session, Session) else None
    dialect = dialect or session.dialect.name  # type: ignore[union-attr]
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = insert(_TABLE).values(list(merged.values()))
    excluded = statement.excluded
    statement = statement.on_conflict_do_update(
        index_elements=["mac", "name", "source"],
        set_={"last_seen": excluded.last_seen, "ip": func.coalesce(excluded.ip, _TABLE.c.ip)},
        where=_TABLE.c.last_seen < excluded.last_seen,
    )
    session.execute(statement)
    return len(merged)


def names_of(*, session: Session, macs: Iterable[str]) -> dict[str, list[DeviceName]]:
    """MAC -> its names on the network, the most recently seen first."""
    wanted = {normalize_mac(mac) for mac in macs}
    out: dict[str, list[DeviceName]] = {}
    if not wanted:
        return out
    query = (
        select(DeviceName)
        .where(DeviceName.mac.in_(wanted))
        .order_by(DeviceName.mac, DeviceName.last_seen.desc(), DeviceName.id)
    )
    for row in session.scalars(query):
        out.setdefault(row.mac, []).append(row)
    return out


def export_names(session: Session, q: ExportQuery) -> Iterator[dict[str, Any]]:
    """`export names`: every device name seen, by MAC, last seen within --since/--until."""
    query = select(DeviceName).order_by(DeviceName.mac, DeviceName.first_seen, DeviceName.id)
    if q.site:
        query = query.where(DeviceName.site_code == q.site)
    if q.since is not None:
        query = query.where(DeviceName.last_seen >= q.since)
    if q.until is not None:
        query = query.where(DeviceName.first_seen < q.until)
    for row in session.scalars(query):
        yield {
            "mac": row.mac,
            "name": row.name,
            "source": row.source,
            "ip": row.ip,
            "first_seen": iso(row.first_seen),
            "last_seen": iso(row.last_seen),
            "site": row.site_code,
        }


def purge(session: Session, settings: Settings, now: datetime) -> dict[str, int]:
    """Retention: names not seen for `retention_days["device_names"]` days are deleted (a
    device's name, "Sams-iPad", is personal data like the traffic it was seen in)."""
    days = settings.retention_days.get("device_names")
    if days is None:
        return {}
    cutoff = now - timedelta(days=days)
    result: Any = session.execute(delete(DeviceName).where(DeviceName.last_seen < cutoff))
    return {"device_names": int(result.rowcount or 0)}
