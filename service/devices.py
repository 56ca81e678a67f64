"""The device register: add, import from an MDM asset list, approve, revoke, lost, exit."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import or_, select
from sqlalchemy.orm import Session, joinedload

from service import audit, enforcement
from service.enums import AuditTag, DeviceClass, DeviceStatus, IncidentKind
from service.errors import Conflict, Invalid, NotFound
from service.explain import class_refusal
from service.export_types import iso
from service.mac import normalize_mac, registrable_mac
from service.models import (
    AccessException,
    Approval,
    Device,
    Incident,
    Person,
    Signature,
    Site,
    utcnow,
)
from service.people import find_person
from service.sites import get_site, site_timezone
from service.text import check_text


def parse_class(value: str) -> DeviceClass:
    try:
        return DeviceClass(value.strip().lower())
    except ValueError as exc:
        known = ", ".join(c.value for c in DeviceClass)
        raise Invalid(f"unknown device class {value!r} (known: {known})") from exc


def get_device(session: Session, mac: str) -> Device:
    canonical = normalize_mac(mac)
    device = session.scalar(select(Device).where(Device.mac == canonical))
    if device is None:
        raise NotFound(f"no device with MAC {canonical}")
    return device


def default_status(device_class: DeviceClass) -> DeviceStatus:
    """Staff devices wait for permission (seed 001); everything else registered is active."""
    return DeviceStatus.PENDING if device_class is DeviceClass.STAFF_OWNED else DeviceStatus.ACTIVE


def add_device(
    session: Session,
    *,
    mac: str,
    site_code: str,
    device_class: str | DeviceClass,
    owner: str | Person | None = None,
    asset_tag: str | None = None,
    name: str | None = None,
    status: DeviceStatus | None = None,
    actor: str,
    audit_tag: AuditTag = AuditTag.DEVICE_CREATE,
    now: datetime | None = None,
) -> Device:
    canonical = registrable_mac(mac)
    _check_labels(asset_tag=asset_tag, name=name)
    site = get_site(session, site_code)
    cls = device_class if isinstance(device_class, DeviceClass) else parse_class(device_class)
    person = find_person(session, owner) if isinstance(owner, str) and owner else owner
    if not isinstance(person, Person):
        person = None
    if cls is DeviceClass.STAFF_OWNED and person is None:
        raise Invalid("a staff-owned device needs --owner (the member of staff)")
    existing = session.scalar(select(Device).where(Device.mac == canonical))
    if existing is not None:
        raise Conflict(
            f"device {canonical} is already registered ({existing.device_class.value}, "
            f"{existing.status.value})"
        )
    device = Device(
        site_id=site.id,
        mac=canonical,
        device_class=cls,
        owner_id=person.id if person else None,
        asset_tag=asset_tag or None,
        name=name or None,
        status=status or default_status(cls),
    )
    with enforcement.watch(session, macs=[canonical], reason="device added", now=now):
        session.add(device)
        session.flush()
    audit.record(
        session,
        actor=actor,
        tag=audit_tag,
        subject=canonical,
        detail={
            "site": site_code,
            "class": cls.value,
            "owner": person.email or person.username if person else None,
            "asset_tag": asset_tag,
            "status": device.status.value,
        },
    )
    return device


@dataclass
class ImportResult:
    """What an import did (or, with `dry_run`, would do): the diff against the register."""

    added: list[str] = field(default_factory=list)
    # (MAC, ["class school_shared -> school_single", ...]) for each device whose row differs.
    changed: list[tuple[str, list[str]]] = field(default_factory=list)
    retired: list[str] = field(default_factory=list)  # `--sync`: gone from the file
    unchanged: list[str] = field(default_factory=list)  # already registered as in the file
    skipped: list[tuple[int, str]] = field(default_factory=list)  # (line, problem)


COLUMN_ALIASES = {
    "mac": ("mac", "mac address", "mac_address", "wifi mac", "wi-fi mac", "wifi_mac"),
    "class": ("class", "device class", "device_class", "type"),
    "asset_tag": ("asset tag", "asset_tag", "asset", "tag", "serial"),
    "owner": ("owner", "owner email", "owner_email", "email", "user"),
    "name": ("name", "device name", "device_name", "model"),
}
SYNC_EXIT_REASON = "not in the MDM export (device import --sync)"


@dataclass(frozen=True, slots=True)
class _Row:
    line: int
    mac: str
    device_class: DeviceClass
    owner: Person | None
    values: dict[str, str]  # the file's cells, by column key


def import_devices(
    session: Session,
    *,
    text: str,
    site_code: str,
    actor: str,
    default_class: DeviceClass = DeviceClass.SCHOOL_SHARED,
    skip_bad_rows: bool = False,
    sync: bool = False,
    dry_run: bool = False,
    progress: Callable[[int], None] | None = None,
) -> ImportResult:
    """Import an MDM asset list (CSV with a header row).

    A row for a device already registered as the file says is left alone (`unchanged`), so
    the same export can be imported again. A row that is malformed (bad MAC, unknown class or
    owner, a MAC twice) stops the import with its line number: nothing is stored. A row for a
    registered device whose class, owner, asset tag or name differ is a conflict: without
    `sync` every conflicting line is reported in one error and nothing is stored. With
    `skip_bad_rows` both kinds are reported per line and the other rows stored.

    `sync`: the file is the truth for the devices it covers, those of the site in the classes
    the file lists. Differing rows are applied and each covered device missing from the file
    goes through the exit process; every change is audited and CoA is queued as for any
    change. `dry_run`: work out the same diff, change nothing."""
    site_id = get_site(session, site_code).id
    parsed, result = _read_rows(session, text, default_class, skip_bad_rows=skip_bad_rows)
    existing = {d.mac: d for d in session.scalars(select(Device))}
    new_rows: list[_Row] = []
    updates: list[tuple[Device, dict[str, Any], list[str]]] = []
    conflicts: list[str] = []
    for row in parsed:
        device = existing.get(row.mac)
        if device is None:
            new_rows.append(row)
            continue
        if device.site_id != site_id:
            problem = f"device {row.mac} is registered at another site"
            if not skip_bad_rows:
                raise Conflict(f"CSV line {row.line}: {problem}")
            result.skipped.append((row.line, problem))
            continue
        wanted, differences = _differences(device, row)
        if not differences:
            result.unchanged.append(row.mac)
        elif sync:
            updates.append((device, wanted, differences))
            result.changed.append((row.mac, differences))
        elif skip_bad_rows:
            result.skipped.append(
                (row.line, f"device {row.mac} is registered with {', '.join(differences)}")
            )
        else:
            conflicts.append(f"line {row.line}: {row.mac} has {', '.join(differences)}")
    if conflicts:
        raise Conflict(
            f"CSV {'; '.join(conflicts)} (registered value -> file); nothing imported: "
            "use --sync to apply the file, or --skip-bad-rows"
        )
    retire: list[Device] = []
    if sync:
        listed = {row.mac for row in parsed}
        covered = {row.device_class for row in parsed}
        retire = sorted(
            (
                d
                for d in existing.values()
                if d.site_id == site_id
                and d.device_class in covered
                and d.mac not in listed
                and d.status is not DeviceStatus.EXITED
            ),
            key=lambda d: d.mac,
        )
        result.retired = [d.mac for d in retire]
    result.added = [row.mac for row in new_rows]
    result.skipped.sort()
    if dry_run:
        return result
    # A device with an open session before it was registered (seen as unknown) moves now.
    with enforcement.watch(
        session,
        macs=[row.mac for row in new_rows],
        device_ids=[d.id for d, _, _ in updates] + [d.id for d in retire],
        reason="device import",
    ):
        for count, row in enumerate(new_rows, 1):
            session.add(
                Device(
                    site_id=site_id,
                    mac=row.mac,
                    device_class=row.device_class,
                    owner_id=row.owner.id if row.owner else None,
                    asset_tag=row.values.get("asset_tag") or None,
                    name=row.values.get("name") or None,
                    status=default_status(row.device_class),
                )
            )
            if progress is not None:
                progress(count)
        for device, wanted, differences in updates:
            for attribute, value in wanted.items():
                setattr(device, attribute, value)
            audit.record(
                session,
                actor=actor,
                tag=AuditTag.DEVICE_UPDATE,
                subject=device.mac,
                detail={"changes": differences, "source": "device import --sync"},
            )
        now = utcnow()
        for device in retire:
            previous = device.status
            device.status = DeviceStatus.EXITED
            device.status_reason = SYNC_EXIT_REASON
            device.status_changed_at = now
            device.needs_reassignment = False
            audit.record(
                session,
                actor=actor,
                tag=AuditTag.DEVICE_EXIT,
                subject=device.mac,
                detail={"from": previous.value, "to": "exited", "reason": SYNC_EXIT_REASON},
            )
        session.flush()
    audit.record(
        session,
        actor=actor,
        tag=AuditTag.DEVICE_IMPORT,
        subject=site_code,
        detail={
            "added": len(result.added),
            "changed": len(result.changed),
            "retired": len(result.retired),
            "unchanged": len(result.unchanged),
            "skipped": result.skipped,
            "sync": sync,
        },
    )
    return result


def _read_rows(
    session: Session, text: str, default_class: DeviceClass, *, skip_bad_rows: bool
) -> tuple[list[_Row], ImportResult]:
    """The file's rows, checked: MAC, labels, class and owner. A bad row raises `Invalid`
    naming its line, or is reported in the result with `skip_bad_rows`."""
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader)
    except StopIteration as exc:
        raise Invalid("the CSV file is empty (a header row is needed)") from exc
    except csv.Error as exc:
        raise Invalid(f"CSV line 1: {exc}") from exc
    columns = _map_columns(header)
    result = ImportResult()
    rows: list[_Row] = []
    seen: set[str] = set()
    owners: dict[str, Person] = {}
    while True:
        try:
            values = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            if not skip_bad_rows:
                raise Invalid(f"CSV line {reader.line_num}: {exc}") from exc
            result.skipped.append((reader.line_num, str(exc)))
            continue
        line = reader.line_num
        if not any(v.strip() for v in values):
            continue
        cells = {key: values[i].strip() if i < len(values) else "" for key, i in columns.items()}
        try:
            mac = registrable_mac(cells["mac"])
            _check_labels(asset_tag=cells.get("asset_tag"), name=cells.get("name"))
            if mac in seen:
                raise Conflict(f"MAC {mac} appears twice in the file")
            cls = parse_class(cells["class"]) if cells.get("class") else default_class
            owner = None
            if cells.get("owner"):
                ref = cells["owner"]
                owner = owners.get(ref) or find_person(session, ref)
                owners[ref] = owner
            if cls is DeviceClass.STAFF_OWNED and owner is None:
                raise Invalid("a staff-owned device needs an owner")
        except (Invalid, Conflict, NotFound) as exc:
            if not skip_bad_rows:
                raise type(exc)(f"CSV line {line}: {exc}") from exc
            result.skipped.append((line, str(exc)))
            continue
        seen.add(mac)
        rows.append(_Row(line=line, mac=mac, device_class=cls, owner=owner, values=cells))
    return rows, result


def _differences(device: Device, row: _Row) -> tuple[dict[str, Any], list[str]]:
    """The attributes to set for the device to match its row (only the columns the file has;
    an exited device listed is in use again), and each difference said as "registered ->
    file"."""
    wanted: dict[str, Any] = {}
    said: list[str] = []
    if "class" in row.values and row.device_class is not device.device_class:
        wanted["device_class"] = row.device_class
        said.append(f"class {device.device_class.value} -> {row.device_class.value}")
    if "owner" in row.values:
        owner_id = row.owner.id if row.owner else None
        if owner_id != device.owner_id:
            wanted["owner_id"] = owner_id
            target = (row.owner.email or row.owner.username or row.owner.name) if row.owner else "-"
            said.append(f"owner -> {target}")
    if device.status is DeviceStatus.EXITED:
        # Back in the school's MDM after an exit: in use again (revoked and lost devices
        # stay as IT left them: someone decided that).
        wanted["status"] = default_status(row.device_class)
        wanted["status_reason"] = None
        wanted["status_changed_at"] = utcnow()
        said.append(f"status exited -> {wanted['status'].value}")
    for key, attribute in (("asset_tag", "asset_tag"), ("name", "name")):
        if key in row.values:
            value = row.values[key] or None
            current = getattr(device, attribute)
            if value != current:
                wanted[attribute] = value
                said.append(f"{key.replace('_', ' ')} {current or '-'} -> {value or '-'}")
    return wanted, said


def _check_labels(*, asset_tag: str | None, name: str | None) -> None:
    """A device's asset tag and name are shown in listings and exports: no control
    characters (service/text.py)."""
    if asset_tag:
        check_text(asset_tag, field="the asset tag")
    if name:
        check_text(name, field="the device name")


def _map_columns(header: list[str]) -> dict[str, int]:
    names = [h.strip().lower() for h in header]
    columns: dict[str, int] = {}
    for key, aliases in COLUMN_ALIASES.items():
        for i, name in enumerate(names):
            if name in aliases:
                columns[key] = i
                break
    if "mac" not in columns:
        raise Invalid(
            "CSV line 1: no MAC column in the header (expected one of: "
            + ", ".join(COLUMN_ALIASES["mac"])
            + ")"
        )
    return columns


def _change_status(
    session: Session,
    *,
    mac: str,
    status: DeviceStatus,
    reason: str | None,
    actor: str,
    tag: AuditTag,
    allowed_from: Iterable[DeviceStatus],
) -> Device:
    if reason:
        check_text(reason, field="the reason", multiline=True)
    device = get_device(session, mac)
    if device.status not in set(allowed_from):
        raise Conflict(
            f"device {device.mac} is {device.status.value}; cannot make it {status.value}"
        )
    with enforcement.watch(session, device_ids=[device.id], reason=f"device {status.value}"):
        previous = device.status
        device.status = status
        device.status_reason = reason
        device.status_changed_at = utcnow()
        session.flush()
        audit.record(
            session,
            actor=actor,
            tag=tag,
            subject=device.mac,
            detail={"from": previous.value, "to": status.value, "reason": reason},
        )
    return device


class ApprovalChangesNothing(Conflict):
    """The site's policy gives the device's class no network access: an approval would let
    nothing on. Each adapter says how to approve it all the same (`--anyway`, `?anyway=true`)."""


def approve_device(
    session: Session, *, mac: str, actor: str, note: str | None = None, anyway: bool = False
) -> Device:
    """Give permission (seed 001). Also reinstates a revoked or lost device that IT has checked.

    When the site's policy gives the device's class no network access, approving changes
    nothing the device can reach: refused (`ApprovalChangesNothing`, with the school's
    explanation) unless
    `anyway`, so nobody believes an approval let a device on.
    """
    if not anyway:
        device = get_device(session, mac)
        refusal = class_refusal(
            session=session, site_code=device.site.code, device_class=device.device_class
        )
        if refusal is not None:
            raise ApprovalChangesNothing(
                f"{device.mac} is {device.device_class.value} at {device.site.code}, where the "
                f"policy gives that class no network access ({refusal.rstrip('.')}): "
                "approving would change nothing"
            )
    device = _change_status(
        session,
        mac=mac,
        status=DeviceStatus.ACTIVE,
        reason=note,
        actor=actor,
        tag=AuditTag.DEVICE_APPROVE,
        allowed_from=(DeviceStatus.PENDING, DeviceStatus.REVOKED, DeviceStatus.LOST),
    )
    session.add(Approval(device_id=device.id, approved_by=actor, note=note))
    session.flush()
    return device


def revoke_device(session: Session, *, mac: str, reason: str, actor: str) -> Device:
    if not reason.strip():
        raise Invalid("a reason is required to revoke a device")
    return _change_status(
        session,
        mac=mac,
        status=DeviceStatus.REVOKED,
        reason=reason,
        actor=actor,
        tag=AuditTag.DEVICE_REVOKE,
        allowed_from=(DeviceStatus.PENDING, DeviceStatus.ACTIVE),
    )


def report_lost(
    session: Session,
    *,
    mac: str,
    reported_by: str,
    actor: str,
    kind: IncidentKind = IncidentKind.LOST,
    description: str | None = None,
    dpo_notified: bool = False,
) -> tuple[Device, Incident]:
    """Lost, stolen or compromised: access revoked at once and an incident logged for the DPO."""
    if not reported_by.strip():
        raise Invalid("--reported-by is required")
    check_text(reported_by, field="--reported-by")
    if description:
        check_text(description, field="the description", multiline=True)
    device = _change_status(
        session,
        mac=mac,
        status=DeviceStatus.LOST,
        reason=f"{kind.value}, reported by {reported_by}",
        actor=actor,
        tag=AuditTag.DEVICE_LOST,
        allowed_from=(DeviceStatus.PENDING, DeviceStatus.ACTIVE, DeviceStatus.REVOKED),
    )
    incident = Incident(
        device_id=device.id,
        kind=kind,
        reported_by=reported_by,
        description=description,
        dpo_notified_at=utcnow() if dpo_notified else None,
    )
    session.add(incident)
    session.flush()
    audit.record(
        session,
        actor=actor,
        tag=AuditTag.INCIDENT_RECORD,
        subject=device.mac,
        detail={
            "incident": incident.id,
            "kind": kind.value,
            "reported_by": reported_by,
            "dpo_notified": dpo_notified,
        },
        changes_decisions=False,
    )
    return device, incident


def exit_device(session: Session, *, mac: str, actor: str, reason: str | None = None) -> Device:
    """The exit process for a device no longer used at the school (seed 003)."""
    device = _change_status(
        session,
        mac=mac,
        status=DeviceStatus.EXITED,
        reason=reason or "exit process",
        actor=actor,
        tag=AuditTag.DEVICE_EXIT,
        allowed_from=(
            DeviceStatus.PENDING,
            DeviceStatus.ACTIVE,
            DeviceStatus.REVOKED,
            DeviceStatus.LOST,
        ),
    )
    device.needs_reassignment = False
    session.flush()
    return device


@dataclass(frozen=True, slots=True)
class DeviceSummary:
    """One row of the device register with its site and owner, as listings show it."""

    id: int
    mac: str
    site: str
    device_class: DeviceClass
    status: DeviceStatus
    status_reason: str | None
    owner_id: int | None
    owner_name: str | None
    owner_email: str | None
    owner_username: str | None
    owner_role: str | None
    asset_tag: str | None
    name: str | None
    needs_reassignment: bool
    created_at: datetime
    status_changed_at: datetime | None

    def as_row(self) -> dict[str, Any]:
        """The device as `export devices` and `device list --json` write it."""
        return {
            "mac": self.mac,
            "site": self.site,
            "device_class": self.device_class.value,
            "status": self.status.value,
            "status_reason": self.status_reason,
            "owner": self.owner_name,
            "owner_email": self.owner_email,
            "owner_role": self.owner_role,
            "asset_tag": self.asset_tag,
            "name": self.name,
            "needs_reassignment": self.needs_reassignment,
            "created_at": iso(self.created_at),
            "status_changed_at": iso(self.status_changed_at),
        }

    @property
    def owner_ref(self) -> str | None:
        """How the owner is named to an admin: email, else username, else name."""
        return self.owner_email or self.owner_username or self.owner_name


def find_device(*, session: Session, mac: str) -> Device | None:
    """The device with this MAC (any common form), or None when it is not registered."""
    return session.scalar(select(Device).where(Device.mac == normalize_mac(mac)))


def list_devices(
    *,
    session: Session,
    site: str | None = None,
    mac: str | None = None,
    asset_tag: str | None = None,
    owner: str | None = None,
    status: DeviceStatus | str | None = None,
    device_class: DeviceClass | str | None = None,
    created_since: datetime | None = None,
    created_until: datetime | None = None,
) -> list[DeviceSummary]:
    """The register filtered by any of site, MAC, asset tag, owner (email, username or name),
    status, class and when it was registered (since inclusive, until exclusive), ordered by
    site and MAC: one query, whatever the number of rows."""
    query = (
        select(Device, Site.code, Person)
        .join(Site, Device.site_id == Site.id)
        .outerjoin(Person, Device.owner_id == Person.id)
        .order_by(Site.code, Device.mac)
    )
    if site:
        query = query.where(Site.code == site)
    if mac:
        query = query.where(Device.mac == normalize_mac(mac))
    if asset_tag:
        query = query.where(Device.asset_tag == asset_tag)
    if owner:
        query = query.where(
            or_(Person.email == owner.lower(), Person.username == owner, Person.name == owner)
        )
    if created_since is not None:
        query = query.where(Device.created_at >= created_since)
    if created_until is not None:
        query = query.where(Device.created_at < created_until)
    if status:
        query = query.where(Device.status == DeviceStatus(status))
    if device_class:
        cls = device_class if isinstance(device_class, DeviceClass) else parse_class(device_class)
        query = query.where(Device.device_class == cls)
    return [
        DeviceSummary(
            id=device.id,
            mac=device.mac,
            site=code,
            device_class=device.device_class,
            status=device.status,
            status_reason=device.status_reason,
            owner_id=device.owner_id,
            owner_name=person.name if person else None,
            owner_email=person.email if person else None,
            owner_username=person.username if person else None,
            owner_role=person.role.value if person else None,
            asset_tag=device.asset_tag,
            name=device.name,
            needs_reassignment=device.needs_reassignment,
            created_at=device.created_at,
            status_changed_at=device.status_changed_at,
        )
        for device, code, person in session.execute(query)
    ]


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    """Everything known about one device, for `device show` (ORM rows, to be read only)."""

    device: Device
    site: str | None
    owner: Person | None
    # The device's own and its owner's, oldest first; each with its `agreement` loaded.
    signatures: tuple[Signature, ...]
    exceptions: tuple[AccessException, ...]
    incidents: tuple[Incident, ...]


def device_record(*, session: Session, mac: str) -> DeviceRecord:
    """The device with this MAC, its site, owner, signatures, exceptions and incidents;
    NotFound when it is not registered. A fixed number of queries, whatever the history."""
    device = get_device(session, mac)
    site = session.get(Site, device.site_id)
    owner = session.get(Person, device.owner_id) if device.owner_id else None
    signed_for = Signature.device_id == device.id
    if device.owner_id is not None:
        signed_for = or_(signed_for, Signature.person_id == device.owner_id)
    signatures = session.scalars(
        select(Signature)
        .options(joinedload(Signature.agreement))
        .where(signed_for)
        .order_by(Signature.signed_at)
    )
    exceptions = session.scalars(
        select(AccessException)
        .where(AccessException.device_id == device.id)
        .order_by(AccessException.id)
    )
    incidents = session.scalars(
        select(Incident).where(Incident.device_id == device.id).order_by(Incident.id)
    )
    return DeviceRecord(
        device=device,
        site=site.code if site else None,
        owner=owner,
        signatures=tuple(signatures),
        exceptions=tuple(exceptions),
        incidents=tuple(incidents),
    )


def find_devices(*, session: Session, ref: str) -> list[DeviceSummary]:
    """The devices `ref` names: a MAC (any common form), else an asset tag, else an owner's
    email, username or name. Several when an owner has several devices; none when nothing
    matches."""
    ref = ref.strip()
    try:
        mac = normalize_mac(ref)
    except Invalid:
        mac = None
    if mac is not None:
        return list_devices(session=session, mac=mac)
    return list_devices(session=session, asset_tag=ref) or list_devices(session=session, owner=ref)


def record_dpo_notified(
    *, session: Session, incident_id: int, notified_at: datetime, actor: str
) -> Incident:
    """Record when the DPO was told of an incident, after the fact (seed 001); audited. A time
    without an offset is the device's site's local time. A time already recorded is
    corrected, and the audit entry keeps the previous one."""
    incident = session.get(Incident, incident_id)
    if incident is None:
        raise NotFound(f"no incident {incident_id}")
    device = session.get(Device, incident.device_id)
    if notified_at.tzinfo is None:
        zone = site_timezone(session=session, site_id=device.site_id) if device else "UTC"
        notified_at = notified_at.replace(tzinfo=ZoneInfo(zone))
    notified_at = notified_at.astimezone(UTC)
    if notified_at < incident.reported_at.replace(microsecond=0):
        raise Invalid(
            f"the DPO cannot have been told before the incident was reported "
            f"({iso(incident.reported_at)})"
        )
    if notified_at > utcnow():
        raise Invalid("the DPO notification time is in the future")
    previous = incident.dpo_notified_at
    incident.dpo_notified_at = notified_at
    session.flush()
    audit.record(
        session,
        actor=actor,
        tag=AuditTag.INCIDENT_UPDATE,
        subject=device.mac if device else str(incident.id),
        detail={
            "incident": incident.id,
            "dpo_notified_at": iso(notified_at),
            "previous": iso(previous),
        },
        changes_decisions=False,
    )
    return incident
