"""`schoolgate export NAME`: stable, documented tables for the IT lead, the DSL and the DPO.

Each exporter yields plain dicts with a fixed key order (like Zeek's logs: one field list per
record type, times in ISO 8601 UTC). `write_rows` writes the times in the site's time zone
with its offset (`2026-11-23T10:00:00+00:00`, `2026-06-01T09:00:00+01:00`), or in UTC when
asked (`export --utc`). Areas add their own through a module-level `EXPORTS`,
which this registry imports; the areas import only `service.export_types` (no cycle).
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, tzinfo
from typing import IO, Any, TypeVar
from zoneinfo import ZoneInfo

from sqlalchemy import Select, select
from sqlalchemy.orm import Session, aliased

from service import bindings, enforcement
from service.device_names import export_names
from service.devices import list_devices
from service.export_types import Exporter, ExportQuery, iso
from service.models import (
    AccessException,
    AccountingSession,
    Agreement,
    AuditEntry,
    DecisionRecord,
    Device,
    Incident,
    Person,
    Signature,
    Site,
)
from service.monitor import exports as monitor_exports
from service.sites import list_sites
from service.text import json_visible, spreadsheet_cell

# ExportQuery, Exporter and iso are named here too, for the commands that export.
__all__ = [
    "CORE_EXPORTS",
    "ExportQuery",
    "Exporter",
    "all_exporters",
    "export_audit",
    "export_decisions",
    "export_devices",
    "export_exceptions",
    "export_incidents",
    "export_sessions",
    "export_signatures",
    "export_zones",
    "iso",
    "localise",
    "write_rows",
]

_Q = TypeVar("_Q", bound="Select[*tuple[Any, ...]]")


def _window(query: _Q, column: Any, q: ExportQuery) -> _Q:
    if q.since is not None:
        query = query.where(column >= q.since)
    if q.until is not None:
        query = query.where(column < q.until)
    return query


def export_devices(session: Session, q: ExportQuery) -> Iterator[dict[str, Any]]:
    for device in list_devices(
        session=session, site=q.site, created_since=q.since, created_until=q.until
    ):
        yield device.as_row()


def export_decisions(session: Session, q: ExportQuery) -> Iterator[dict[str, Any]]:
    query = select(DecisionRecord).order_by(DecisionRecord.decided_at, DecisionRecord.id)
    if q.site:
        query = query.where(DecisionRecord.site_code == q.site)
    query = _window(query, DecisionRecord.decided_at, q)
    for row in session.scalars(query.execution_options(yield_per=1000)):
        yield {
            "decided_at": iso(row.decided_at),
            "site": row.site_code,
            "nas": row.nas_name,
            "nas_ip": row.nas_ip,
            "mac": row.mac,
            "username": row.username,
            "location": row.location,
            "access": row.access,
            "vlan": row.vlan,
            "reason": row.reason,
            "rule": row.rule,
            "session_timeout": row.session_timeout,
            "micros": row.micros,
        }


def export_sessions(session: Session, q: ExportQuery) -> Iterator[dict[str, Any]]:
    owner = aliased(Person)
    query = (
        select(AccountingSession, owner.name)
        .outerjoin(Device, Device.mac == AccountingSession.mac)
        .outerjoin(owner, Device.owner_id == owner.id)
        .order_by(AccountingSession.started_at, AccountingSession.id)
    )
    if q.site:
        query = query.where(AccountingSession.site_code == q.site)
    query = _window(query, AccountingSession.started_at, q)
    for row, person in session.execute(query):
        yield {
            "started_at": iso(row.started_at),
            "updated_at": iso(row.updated_at),
            "stopped_at": iso(row.stopped_at),
            "site": row.site_code,
            "nas_ip": row.nas_ip,
            "nas_identifier": row.nas_identifier,
            "acct_session_id": row.acct_session_id,
            "mac": row.mac,
            "person": person,
            "username": row.username,
            "framed_ip": row.framed_ip,
            "called_station_id": row.called_station_id,
            "nas_port_id": row.nas_port_id,
            "location": row.location,
            "session_time": row.session_time,
            "input_octets": row.input_octets,
            "output_octets": row.output_octets,
            "terminate_cause": row.terminate_cause,
        }


def export_signatures(session: Session, q: ExportQuery) -> Iterator[dict[str, Any]]:
    query = (
        select(Signature, Agreement, Person, Device)
        .join(Agreement, Signature.agreement_id == Agreement.id)
        .outerjoin(Person, Signature.person_id == Person.id)
        .outerjoin(Device, Signature.device_id == Device.id)
        .order_by(Signature.signed_at, Signature.id)
    )
    if q.site:
        query = query.outerjoin(Site, Device.site_id == Site.id).where(Site.code == q.site)
    query = _window(query, Signature.signed_at, q)
    for sig, agreement, person, device in session.execute(query):
        yield {
            "signed_at": iso(sig.signed_at),
            "kind": agreement.kind.value,
            "agreement_version": agreement.version,
            "agreement_sha256": sig.agreement_sha256,
            "typed_name": sig.typed_name,
            "person": person.name if person else None,
            "person_email": person.email if person else None,
            "organisation": sig.organisation,
            "visiting": sig.visiting,
            "mac": device.mac if device else None,
            "client_ip": sig.client_ip,
            "user_agent": sig.user_agent,
            "valid_until": iso(sig.valid_until),
            "source": sig.source.value,
            "recorded_by": sig.recorded_by,
        }


def export_incidents(session: Session, q: ExportQuery) -> Iterator[dict[str, Any]]:
    query = (
        select(Incident, Device, Person, Site.code)
        .join(Device, Incident.device_id == Device.id)
        .join(Site, Device.site_id == Site.id)
        .outerjoin(Person, Device.owner_id == Person.id)
        .order_by(Incident.reported_at)
    )
    if q.site:
        query = query.where(Site.code == q.site)
    query = _window(query, Incident.reported_at, q)
    for incident, device, person, site in session.execute(query):
        yield {
            "reported_at": iso(incident.reported_at),
            "site": site,
            "kind": incident.kind.value,
            "mac": device.mac,
            "device_class": device.device_class.value,
            "asset_tag": device.asset_tag,
            "owner": person.name if person else None,
            "reported_by": incident.reported_by,
            "description": incident.description,
            "dpo_notified_at": iso(incident.dpo_notified_at),
        }


def export_exceptions(session: Session, q: ExportQuery) -> Iterator[dict[str, Any]]:
    query = (
        select(AccessException, Device, Site.code)
        .join(Device, AccessException.device_id == Device.id)
        .join(Site, Device.site_id == Site.id)
        .order_by(AccessException.created_at)
    )
    if q.site:
        query = query.where(Site.code == q.site)
    query = _window(query, AccessException.created_at, q)
    for grant, device, site in session.execute(query):
        yield {
            "id": grant.id,
            "site": site,
            "mac": device.mac,
            "access": grant.access.value,
            "reason": grant.reason,
            "approved_by": grant.approved_by,
            "valid_from": iso(grant.valid_from),
            "valid_until": iso(grant.valid_until),
            "revoked_at": iso(grant.revoked_at),
        }


def export_audit(session: Session, q: ExportQuery) -> Iterator[dict[str, Any]]:
    query = _window(select(AuditEntry).order_by(AuditEntry.id), AuditEntry.at, q)
    for entry in session.scalars(query):
        yield {
            "id": entry.id,
            "at": iso(entry.at),
            "actor": entry.actor,
            "tag": entry.tag,
            "subject": entry.subject,
            "detail": entry.detail,
            "prev_hash": entry.prev_hash,
            "hash": entry.hash,
        }


CORE_EXPORTS: dict[str, Exporter] = {
    "devices": export_devices,
    "decisions": export_decisions,
    "sessions": export_sessions,
    "signatures": export_signatures,
    "incidents": export_incidents,
    "exceptions": export_exceptions,
    "audit": export_audit,
}


def all_exporters() -> dict[str, Exporter]:
    """The core's exporters plus every area's `EXPORTS`."""
    return {
        **CORE_EXPORTS,
        **enforcement.EXPORTS,
        **monitor_exports.EXPORTS,
        "names": export_names,
        **bindings.EXPORTS,
    }


ZoneFor = Callable[[dict[str, Any]], tzinfo | None]
# What `iso()` writes for a UTC time: the times `write_rows` moves to the site's zone.
_UTC_ISO = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?\+00:00")


def export_zones(*, session: Session, site: str | None = None) -> ZoneFor:
    """The time zone each exported row's times are written in: that of the row's `site`,
    else of the site asked for (`--site`), else the one zone all sites share, else UTC."""
    zones = {s.code: ZoneInfo(s.timezone) for s in list_sites(session=session)}
    fallback: tzinfo | None = None
    if site and site in zones:
        fallback = zones[site]
    elif len({str(z) for z in zones.values()}) == 1:
        fallback = next(iter(zones.values()))

    def zone_for(row: dict[str, Any]) -> tzinfo | None:
        code = row.get("site")
        return zones.get(code, fallback) if isinstance(code, str) else fallback

    return zone_for


def _localised(row: dict[str, Any], zone: tzinfo | None) -> dict[str, Any]:
    if zone is None:
        return row
    out = dict(row)
    for key, value in row.items():
        if isinstance(value, datetime) and value.tzinfo is not None:
            out[key] = value.astimezone(zone).isoformat(timespec="seconds")
        elif isinstance(value, str) and _UTC_ISO.fullmatch(value):
            out[key] = datetime.fromisoformat(value).astimezone(zone).isoformat()
    return out


def localise(rows: Iterable[dict[str, Any]], zone_for: ZoneFor | None) -> Iterable[dict[str, Any]]:
    """The rows with their times in the zone `zone_for` gives (None: as they are, UTC)."""
    if zone_for is None:
        return rows
    return (_localised(row, zone_for(row)) for row in rows)


def write_rows(
    rows: Iterable[dict[str, Any]], out: IO[str], fmt: str, *, zone_for: ZoneFor | None = None
) -> int:
    """Write rows as CSV (header from the first row) or JSON Lines; returns the count.

    `zone_for` (`export_zones`): the time zone a row's times are written in, with their offset
    (a time is a value as `iso()` writes it in UTC); None keeps UTC.

    CSV is for a spreadsheet, so each text cell passes through `spreadsheet_cell`: a cell
    starting with `=`, `+`, `-`, `@`, tab or carriage return gets a leading `'` (OWASP's
    advice against formula injection) and control characters are written as escapes
    (`\\x1b`). JSON Lines keep the data exact; the control characters `json.dumps` leaves
    raw are written as `\\uXXXX` escapes.
    """
    rows = localise(rows, zone_for)
    count = 0
    if fmt == "jsonl":
        for row in rows:
            out.write(json_visible(json.dumps(row, default=str, ensure_ascii=False)) + "\n")
            count += 1
        return count
    writer: csv.DictWriter[str] | None = None
    for row in rows:
        if writer is None:
            writer = csv.DictWriter(out, fieldnames=list(row), lineterminator="\n")
            writer.writeheader()
        writer.writerow({k: _csv_cell(v) for k, v in row.items()})
        count += 1
    return count


def _csv_cell(value: Any) -> Any:
    """Numbers, booleans and empty cells as they are; text (and JSON of a dict or list) as
    a spreadsheet must show it: never as a formula."""
    if value is None or isinstance(value, bool | int | float):
        return value
    text = json.dumps(value) if isinstance(value, dict | list) else str(value)
    return spreadsheet_cell(text)
