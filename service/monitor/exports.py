"""`schoolgate export traffic|tls|http|dns|alerts|visits|dhcp`, and the retention purge for the
monitor's tables (`purge`, collected by `service.retention`)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, text
from sqlalchemy.orm import Session

from service.config import Settings
from service.export_types import Exporter, ExportQuery, iso
from service.models import Device, Person
from service.models.traffic import (
    PARTITION_COLUMNS,
    TrafficAlert,
    TrafficBinding,
    TrafficDns,
    TrafficFlow,
    TrafficVisit,
)


def rows_of(
    session: Session, model: Any, when: Any, q: ExportQuery, *where: Any
) -> Iterator[tuple[Any, ...]]:
    """(row, person name, device name, device class) of `model` in the query's window."""
    query = (
        select(model, Person.name, Device.name, Device.device_class)
        .outerjoin(Person, Person.id == model.person_id)
        .outerjoin(Device, Device.id == model.device_id)
        .order_by(when, model.id)
        .where(*where)
    )
    if q.site:
        query = query.where(model.site_code == q.site)
    if q.since is not None:
        query = query.where(when >= q.since)
    if q.until is not None:
        query = query.where(when < q.until)
    yield from session.execute(query.execution_options(yield_per=2000))


def _who(row: Any, person: str | None, device: str | None, device_class: Any) -> dict[str, Any]:
    return {
        "client_ip": row.client_ip,
        "mac": row.mac,
        "device": device,
        "device_class": device_class.value if device_class is not None else None,
        "person": person,
    }


def flow_rows(
    session: Session, q: ExportQuery, services: tuple[str, ...] | None = None
) -> Iterator[tuple[Any, ...]]:
    """The flows in the window (of those services), with person and device."""
    where = [TrafficFlow.service.in_(services)] if services else []
    return rows_of(session, TrafficFlow, TrafficFlow.started_at, q, *where)


def export_traffic(session: Session, q: ExportQuery) -> Iterator[dict[str, Any]]:
    """One line per flow (like Zeek's conn.log); bytes are IP bytes."""
    yield from _flows(session, q)


def export_tls(session: Session, q: ExportQuery) -> Iterator[dict[str, Any]]:
    """The TLS and QUIC flows (like Zeek's ssl.log), with their server names."""
    yield from _flows(session, q, ("tls", "quic"))


def export_http(session: Session, q: ExportQuery) -> Iterator[dict[str, Any]]:
    """The plain HTTP flows (like Zeek's http.log), with their Host."""
    yield from _flows(session, q, ("http", "http-connect"))


def _flows(
    session: Session, q: ExportQuery, services: tuple[str, ...] | None = None
) -> Iterator[dict[str, Any]]:
    for row, person, device, device_class in flow_rows(session, q, services):
        yield {
            "started_at": iso(row.started_at),
            "ended_at": iso(row.ended_at),
            "duration": row.duration,
            "site": row.site_code,
            "proto": row.proto,
            "orig_ip": row.orig_ip,
            "orig_port": row.orig_port,
            "resp_ip": row.resp_ip,
            "resp_port": row.resp_port,
            "vlan": row.vlan,
            "service": row.service,
            "server_name": row.server_name,
            "name_source": row.name_source,
            "version": row.version,
            "alpn": row.alpn,
            "orig_packets": row.orig_packets,
            "orig_bytes": row.orig_bytes,
            "resp_packets": row.resp_packets,
            "resp_bytes": row.resp_bytes,
            "end_reason": row.end_reason,
            "p2p": row.p2p,
            "info_hash": row.info_hash,
            **_who(row, person, device, device_class),
            "mac_source": row.mac_source,
        }


def export_dns(session: Session, q: ExportQuery) -> Iterator[dict[str, Any]]:
    for row, person, device, device_class in rows_of(session, TrafficDns, TrafficDns.queried_at, q):
        yield {
            "queried_at": iso(row.queried_at),
            "site": row.site_code,
            "client_ip": row.client_ip,
            "client_port": row.client_port,
            "server_ip": row.server_ip,
            "server_port": row.server_port,
            "trans_id": row.trans_id,
            "query": row.query,
            "qtype": row.qtype,
            "qtype_name": row.qtype_name,
            "rcode": row.rcode,
            "rcode_name": row.rcode_name,
            "rtt": row.rtt,
            "answers": ",".join(row.answers or []),
            "mac": row.mac,
            "device": device,
            "device_class": device_class.value if device_class is not None else None,
            "person": person,
        }


def export_visits(session: Session, q: ExportQuery) -> Iterator[dict[str, Any]]:
    for row, person, device, device_class in rows_of(
        session, TrafficVisit, TrafficVisit.started_at, q
    ):
        yield {
            "started_at": iso(row.started_at),
            "ended_at": iso(row.ended_at),
            "duration": row.duration,
            "site": row.site_code,
            "server_name": row.server_name,
            "category": row.category,
            "flows": row.flows,
            "bytes_up": row.bytes_up,
            "bytes_down": row.bytes_down,
            **_who(row, person, device, device_class),
        }


def export_alerts(session: Session, q: ExportQuery) -> Iterator[dict[str, Any]]:
    for row, person, device, device_class in rows_of(
        session, TrafficAlert, TrafficAlert.raised_at, q
    ):
        yield {
            "raised_at": iso(row.raised_at),
            "site": row.site_code,
            "severity": row.severity,
            "kind": row.kind,
            "category": row.category,
            **_who(row, person, device, device_class),
            "evidence": row.evidence,
        }


def export_dhcp(session: Session, q: ExportQuery) -> Iterator[dict[str, Any]]:
    """DHCP messages and ARP bindings seen on the wire: the IP->MAC evidence."""
    query = select(TrafficBinding).order_by(TrafficBinding.seen_at, TrafficBinding.id)
    if q.site:
        query = query.where(TrafficBinding.site_code == q.site)
    if q.since is not None:
        query = query.where(TrafficBinding.seen_at >= q.since)
    if q.until is not None:
        query = query.where(TrafficBinding.seen_at < q.until)
    for row in session.scalars(query):
        yield {
            "seen_at": iso(row.seen_at),
            "site": row.site_code,
            "source": row.source,
            "msg_type": row.msg_type,
            "ip": row.ip,
            "mac": row.mac,
            "hostname": row.hostname,
            "lease_seconds": row.lease_seconds,
            "requested_ip": row.requested_ip,
            "is_lease": row.is_lease,
            "server_ip": row.server_ip,
            "vendor_class": row.vendor_class,
            "circuit_id": row.circuit_id,
            "remote_id": row.remote_id,
            "relay_ip": row.relay_ip,
            "domain": row.domain,
            "message": row.message,
            "trans_id": row.trans_id,
        }


EXPORTS: dict[str, Exporter] = {
    "traffic": export_traffic,
    "tls": export_tls,
    "http": export_http,
    "dns": export_dns,
    "visits": export_visits,
    "alerts": export_alerts,
    "dhcp": export_dhcp,
}

# settings.retention_days key -> table
RETENTION_KEYS = {
    "flows": TrafficFlow,
    "dns_queries": TrafficDns,
    "visits": TrafficVisit,
    "alerts": TrafficAlert,
    "bindings": TrafficBinding,
}
_DEFAULT_DAYS = {"bindings": 90}


def purge(session: Session, settings: Settings, now: datetime) -> dict[str, int]:
    """Delete traffic rows past retention. On PostgreSQL whole daily partitions older than the
    cutoff are dropped first (cheap), then rows in the DEFAULT partition are deleted."""
    removed: dict[str, int] = {}
    for key, model in RETENTION_KEYS.items():
        days = settings.retention_days.get(key, _DEFAULT_DAYS.get(key))
        if days is None:
            continue
        table = model.__tablename__
        column = getattr(model, PARTITION_COLUMNS[table])
        cutoff = now - timedelta(days=days)
        count = 0
        if session.get_bind().dialect.name == "postgresql":
            count += _drop_partitions(session, table, cutoff)
        result: Any = session.execute(delete(model).where(column < cutoff))
        count += int(result.rowcount or 0)
        removed[f"traffic_{key}"] = count
    return removed


def _drop_partitions(session: Session, table: str, cutoff: datetime) -> int:
    """Drop `traffic_parts.<table>_YYYYMMDD` partitions whose whole day is before the cutoff."""
    names = session.execute(
        text(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = :table"
        ),
        {"table": table},
    ).scalars()
    rows = 0
    for name in list(names):
        suffix = name.rsplit("_", 1)[-1]
        if not (suffix.isdigit() and len(suffix) == 8):
            continue
        day_end = datetime.strptime(suffix, "%Y%m%d").replace(tzinfo=cutoff.tzinfo) + timedelta(
            days=1
        )
        if day_end <= cutoff:
            rows += int(
                session.execute(text(f"SELECT count(*) FROM traffic_parts.{name}")).scalar_one()  # noqa: S608
            )
            session.execute(text(f"DROP TABLE traffic_parts.{name}"))
    return rows
