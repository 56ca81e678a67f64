"""From the database to the policy engine's plain facts, and the in-memory snapshot that the
RADIUS hot path answers from: built in full at start (`load_snapshot`), then patched with
what each change changed (`load_delta`, from the change log: service/change_log.py)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.change_log import bump_change, changes_since
from service.enums import AgreementKind, DeviceClass, DeviceStatus, NasVendor, Role
from service.errors import NotFound
from service.mac import normalize_mac
from service.models import (
    AccessException,
    Agreement,
    ChangeCounter,
    Device,
    NasClient,
    Person,
    Signature,
    Site,
    SitePolicy,
)
from service.policy import (
    NO_EXPIRY,
    AccessRequest,
    Decision,
    DeviceFacts,
    Grant,
    decide,
    load_policy_text,
)
from service.policy.model import SitePolicy as CompiledPolicy

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class NasInfo:
    id: int
    site_code: str
    name: str
    network: IPNetwork
    secret: str
    vendor: NasVendor
    coa_port: int
    require_message_authenticator: bool


@dataclass(frozen=True, slots=True)
class Credential:
    person_id: int
    username: str
    password_hash: str | None
    active: bool
    role: Role
    site_code: str
    name: str


@dataclass(frozen=True, slots=True)
class OwnerInfo:
    person_id: int
    name: str
    role: Role
    username: str | None


@dataclass(slots=True)
class Snapshot:
    """What the RADIUS server needs to answer without touching the database."""

    version: int
    devices: dict[str, DeviceFacts] = field(default_factory=dict)
    policies: dict[str, CompiledPolicy] = field(default_factory=dict)
    nas_clients: tuple[NasInfo, ...] = ()
    credentials: dict[str, Credential] = field(default_factory=dict)
    device_owner: dict[str, OwnerInfo] = field(default_factory=dict)


def change_version(session: Session) -> int:
    """The change counter: cheap to poll, bumped by every change that can alter a decision."""
    value = session.scalar(select(ChangeCounter.value).where(ChangeCounter.id == 1))
    return int(value or 0)


# `session.info` key: (the transaction, the counter value it moved to) once it moved it.
_CHANGE_INFO = "change_version_of_transaction"


def version_of_change(session: Session) -> int:
    """The change counter value a snapshot must have reached to contain this transaction's
    changes (what a CoA for them waits for: `service.enforcement.workers`).

    Moves the counter once per transaction (the change's audit entry may move it again: any
    later value contains the change too) and reads it back. The counter's row stays locked
    until the commit, so no snapshot has this value before the change is committed.
    """
    transaction = session.get_transaction()
    known = session.info.get(_CHANGE_INFO)
    if known is not None and transaction is not None and known[0] is transaction:
        return int(known[1])
    bump_change(session)
    version = change_version(session)
    session.info[_CHANGE_INFO] = (transaction, version)
    return version


def load_policies(session: Session) -> dict[str, CompiledPolicy]:
    """The policy in force (highest version) for every site that has one."""
    rows = session.execute(
        select(Site.code, SitePolicy.toml, SitePolicy.source_name, SitePolicy.version)
        .join(SitePolicy, SitePolicy.site_id == Site.id)
        .order_by(Site.code, SitePolicy.version)
    ).all()
    latest: dict[str, tuple[str, str]] = {}
    for code, text, source, _version in rows:
        latest[code] = (text, source)
    return {code: load_policy_text(text, source) for code, (text, source) in latest.items()}


def load_policy(session: Session, site_code: str) -> CompiledPolicy:
    row = session.execute(
        select(SitePolicy.toml, SitePolicy.source_name)
        .join(Site, SitePolicy.site_id == Site.id)
        .where(Site.code == site_code)
        .order_by(SitePolicy.version.desc())
        .limit(1)
    ).first()
    if row is None:
        raise NotFound(f"site {site_code!r} has no policy loaded (schoolgate policy load FILE)")
    return load_policy_text(row[0], row[1])


def load_device_facts(
    session: Session, macs: Iterable[str] | None = None
) -> dict[str, DeviceFacts]:
    """Facts for the given MACs (all devices when None), in four set-based queries."""
    device_query = (
        select(
            Device.id,
            Device.mac,
            Device.device_class,
            Device.status,
            Device.status_reason,
            Site.code,
            Person.name,
            Person.role,
            Person.active,
            Device.owner_id,
        )
        .join(Site, Device.site_id == Site.id)
        .outerjoin(Person, Device.owner_id == Person.id)
    )
    mac_list = None if macs is None else sorted(set(macs))
    if mac_list is not None:
        if not mac_list:
            return {}
        device_query = device_query.where(Device.mac.in_(mac_list))
    rows: Iterable[Any]
    if mac_list is None:
        # Every device: signatures and exceptions first, then the devices streamed in
        # batches, so a trust's 200,000 rows are never all in memory at once as Row objects
        # (the worker's resident memory keeps the peak: `bench/snapshot.py`).
        by_person, by_device = _signature_expiries(session, [], set(), True)
        grants = _grants(session, [], True)
        rows = session.execute(device_query.execution_options(yield_per=5000))
    else:
        rows = session.execute(device_query).all()
        device_ids = [r[0] for r in rows]
        owner_ids = {r[9] for r in rows if r[9] is not None}
        by_person, by_device = _signature_expiries(session, device_ids, owner_ids, False)
        grants = _grants(session, device_ids, False)

    facts: dict[str, DeviceFacts] = {}
    # One string object per distinct site, owner name and status reason, not one per device
    # (a trust's 200,000 devices: `bench/snapshot.py` measures the memory).
    shared: dict[str | None, str | None] = {None: None}
    share = shared.setdefault
    for (
        dev_id,
        mac,
        device_class,
        status,
        status_reason,
        site,
        owner_name,
        owner_role,
        owner_active,
        owner_id,
    ) in rows:
        aua = by_device.get((dev_id, AgreementKind.VISITOR_AUA))
        aua = _later(aua, by_person.get((owner_id, AgreementKind.VISITOR_AUA)))
        byod = _later(
            by_person.get((owner_id, AgreementKind.STAFF_BYOD)),
            by_device.get((dev_id, AgreementKind.STAFF_BYOD)),
        )
        facts[mac] = DeviceFacts(
            mac=mac,
            device_class=DeviceClass(device_class),
            status=DeviceStatus(status),
            site_code=share(site, site),
            status_reason=share(status_reason, status_reason),
            owner_name=share(owner_name, owner_name),
            owner_role=Role(owner_role) if owner_role else None,
            owner_active=True if owner_active is None else bool(owner_active),
            aua_valid_until=aua,
            byod_valid_until=byod,
            grants=tuple(grants.get(dev_id, ())),
        )
    return facts


def _later(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)


def _signature_expiries(
    session: Session, device_ids: list[int], owner_ids: set[int], everything: bool
) -> tuple[dict[tuple[int | None, AgreementKind], float], dict[tuple[int, AgreementKind], float]]:
    """Latest expiry per (person, kind) and per (device, kind).

    A visitor's AUA counts for the device it was signed on (and for the visitor's other devices
    that day); a staff BYOD statement counts for all of the person's devices.
    """
    query = select(
        Signature.person_id, Signature.device_id, Agreement.kind, Signature.valid_until
    ).join(Agreement, Signature.agreement_id == Agreement.id)
    if not everything:
        query = query.where(
            (Signature.device_id.in_(device_ids or [-1]))
            | (Signature.person_id.in_(owner_ids or {-1}))
        )
    by_person: dict[tuple[int | None, AgreementKind], float] = {}
    by_device: dict[tuple[int, AgreementKind], float] = {}
    for person_id, device_id, kind_value, valid_until in session.execute(query):
        expiry = NO_EXPIRY if valid_until is None else valid_until.timestamp()
        kind = AgreementKind(kind_value)
        if person_id is not None:
            key_p = (person_id, kind)
            by_person[key_p] = max(by_person.get(key_p, expiry), expiry)
        if device_id is not None:
            key_d = (device_id, kind)
            by_device[key_d] = max(by_device.get(key_d, expiry), expiry)
    return by_person, by_device


def _grants(session: Session, device_ids: list[int], everything: bool) -> dict[int, list[Grant]]:
    query = select(
        AccessException.device_id,
        AccessException.access,
        AccessException.valid_from,
        AccessException.valid_until,
        AccessException.reason,
        AccessException.approved_by,
    ).where(AccessException.revoked_at.is_(None))
    if not everything:
        query = query.where(AccessException.device_id.in_(device_ids or [-1]))
    out: dict[int, list[Grant]] = {}
    for device_id, access, valid_from, valid_until, reason, approved_by in session.execute(query):
        out.setdefault(device_id, []).append(
            Grant(
                access=access,
                valid_from=valid_from.timestamp(),
                valid_until=NO_EXPIRY if valid_until is None else valid_until.timestamp(),
                reason=reason,
                approved_by=approved_by,
            )
        )
    return out


def load_nas_clients(session: Session) -> tuple[NasInfo, ...]:
    rows = session.execute(
        select(NasClient, Site.code).join(Site, NasClient.site_id == Site.id)
    ).all()
    return tuple(
        NasInfo(
            id=nas.id,
            site_code=code,
            name=nas.name,
            network=ipaddress.ip_network(nas.address, strict=False),
            secret=nas.secret,
            vendor=NasVendor(nas.vendor),
            coa_port=nas.coa_port,
            require_message_authenticator=nas.require_message_authenticator,
        )
        for nas, code in rows
    )


def load_snapshot(session: Session) -> Snapshot:
    """Everything the RADIUS hot path needs, read in one transaction."""
    version = change_version(session)
    snapshot = Snapshot(
        version=version,
        devices=load_device_facts(session),
        policies=load_policies(session),
        nas_clients=load_nas_clients(session),
    )
    snapshot.credentials = _credentials(session, None)
    owners = _device_owners(session, None)
    # Keyed by the devices' own MAC strings: one string per device, not two.
    snapshot.device_owner = {mac: owners[mac] for mac in snapshot.devices if mac in owners}
    return snapshot


def _credentials(session: Session, person_ids: list[int] | None) -> dict[str, Credential]:
    """PAP logins by lower-case username: of these people, or of everyone (None)."""
    query = (
        select(
            Person.id,
            Person.username,
            Person.password_hash,
            Person.active,
            Person.role,
            Site.code,
            Person.name,
        )
        .join(Site, Person.site_id == Site.id)
        .where(Person.username.is_not(None))
    )
    if person_ids is not None:
        query = query.where(Person.id.in_(person_ids))
    out: dict[str, Credential] = {}
    for person_id, username, password_hash, active, role, code, name in session.execute(query):
        if username is None:
            continue
        out[username.lower()] = Credential(
            person_id=person_id,
            username=username,
            password_hash=password_hash,
            active=bool(active),
            role=Role(role),
            site_code=code,
            name=name,
        )
    return out


def _device_owners(session: Session, macs: list[str] | None) -> dict[str, OwnerInfo]:
    """Each device's owner: of these MACs, or of every device (None). One `OwnerInfo` per
    person, shared by their devices."""
    query = select(Device.mac, Person.id, Person.name, Person.role, Person.username).join(
        Person, Device.owner_id == Person.id
    )
    if macs is not None:
        query = query.where(Device.mac.in_(macs))
    out: dict[str, OwnerInfo] = {}
    shared: dict[int, OwnerInfo] = {}
    for mac, person_id, name, role, username in session.execute(query):
        owner = shared.get(person_id)
        if owner is None:
            owner = shared[person_id] = OwnerInfo(person_id, name, Role(role), username)
        out[mac] = owner
    return out


@dataclass(slots=True)
class SnapshotDelta:
    """The facts changed after a snapshot's version, to patch it with (`radius/snapshot.py`).

    `devices` and `device_owner` hold every changed MAC (None: no longer registered, or no
    owner); `credentials` the logins of the people in `person_ids` (a person not there has
    none any more)."""

    version: int
    devices: dict[str, DeviceFacts | None]
    device_owner: dict[str, OwnerInfo | None]
    person_ids: frozenset[int]
    credentials: dict[str, Credential]


def load_delta(*, session: Session, snapshot: Snapshot) -> SnapshotDelta | None:
    """What changed since `snapshot.version`, read in `session`; None when the snapshot must
    be rebuilt in full (`service.change_log.changes_since` says when).

    The counter is read first: every change up to it is in the log and in the rows read
    after it. A later change read too is harmless: its log rows are read again next time.
    """
    version = change_version(session)
    changes = changes_since(session=session, version=snapshot.version)
    if changes is None:
        return None
    macs = set(changes.macs)
    people = changes.person_ids
    for chunk in _chunks(sorted(changes.device_ids)):
        macs.update(session.scalars(select(Device.mac).where(Device.id.in_(chunk))))
    existing: set[int] = set()
    for chunk in _chunks(sorted(people)):
        macs.update(session.scalars(select(Device.mac).where(Device.owner_id.in_(chunk))))
        existing.update(session.scalars(select(Person.id).where(Person.id.in_(chunk))))
    if people - existing:  # people deleted: their devices no longer point at them
        gone = people - existing
        macs.update(m for m, owner in snapshot.device_owner.items() if owner.person_id in gone)
    devices: dict[str, DeviceFacts | None] = dict.fromkeys(macs)
    owners: dict[str, OwnerInfo | None] = dict.fromkeys(macs)
    for chunk in _chunks(sorted(macs)):
        devices.update(load_device_facts(session, chunk))
        owners.update(_device_owners(session, chunk))
    credentials: dict[str, Credential] = {}
    for chunk in _chunks(sorted(people)):
        credentials.update(_credentials(session, chunk))
    return SnapshotDelta(
        version=version,
        devices=devices,
        device_owner=owners,
        person_ids=frozenset(people),
        credentials=credentials,
    )


_CHUNK = 2000  # bound parameters per IN (SQLite allows 32,766; PostgreSQL 65,535)


def _chunks(values: list[Any]) -> Iterable[list[Any]]:
    for start in range(0, len(values), _CHUNK):
        yield values[start : start + _CHUNK]


def decide_for_mac(
    session: Session,
    mac: str,
    *,
    site_code: str | None = None,
    nas_identifier: str | None = None,
    called_station_id: str | None = None,
    nas_port_id: str | None = None,
    now: datetime,
) -> Decision:
    """Decide for one device from the database (the CLI's `policy explain`, the portal).

    The site is the one asked about, else the device's own site.
    """
    canonical = normalize_mac(mac)
    facts = load_device_facts(session, [canonical]).get(canonical)
    code = site_code or (facts.site_code if facts else None)
    if code is None:
        raise NotFound(f"device {canonical} is not registered: give --site to explain for a site")
    policy = load_policy(session, code)
    request = AccessRequest(
        mac=canonical,
        nas_identifier=nas_identifier,
        called_station_id=called_station_id,
        nas_port_id=nas_port_id,
    )
    return decide(request, facts, policy, now)


def describe_facts(facts: DeviceFacts | None) -> dict[str, Any]:
    """The facts as JSON-friendly data, for `policy explain --json`."""
    if facts is None:
        return {"registered": False}

    def when(value: float | None) -> str | None:
        if value is None:
            return None
        if value == NO_EXPIRY:
            return "no expiry"
        return datetime.fromtimestamp(value).astimezone().isoformat(timespec="seconds")

    return {
        "registered": True,
        "device_class": facts.device_class.value,
        "status": facts.status.value,
        "site": facts.site_code,
        "owner": facts.owner_name,
        "owner_role": facts.owner_role.value if facts.owner_role else None,
        "owner_active": facts.owner_active,
        "visitor_aua_valid_until": when(facts.aua_valid_until),
        "byod_statement_valid_until": when(facts.byod_valid_until),
        "exceptions": [
            {
                "access": g.access.value,
                "reason": g.reason,
                "approved_by": g.approved_by,
                "valid_until": when(g.valid_until),
            }
            for g in facts.grants
        ],
    }
