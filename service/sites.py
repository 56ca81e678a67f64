"""Sites, their policies (versioned TOML) and their NAS clients."""

from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from service import audit, enforcement
from service.enums import AuditTag, NasVendor
from service.errors import Conflict, Invalid, NotFound
from service.models import Location, NasClient, Site, SitePolicy
from service.policy import load_policy_text
from service.policy.model import SitePolicy as CompiledPolicy

_CODE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
DEFAULT_TIMEZONE = "Europe/London"


def get_site(session: Session, code: str) -> Site:
    site = session.scalar(select(Site).where(Site.code == code))
    if site is None:
        known = ", ".join(session.scalars(select(Site.code).order_by(Site.code))) or "none yet"
        raise NotFound(f"unknown site {code!r} (sites: {known})")
    return site


def add_site(
    session: Session, *, code: str, name: str, timezone: str = "Europe/London", actor: str
) -> Site:
    if not _CODE.fullmatch(code):
        raise Invalid(f"site code {code!r} must be short: a-z, 0-9, '-' or '_'")
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise Invalid(f"unknown time zone {timezone!r}") from exc
    if session.scalar(select(Site.id).where(Site.code == code)) is not None:
        raise Conflict(f"site {code!r} already exists")
    site = Site(code=code, name=name, timezone=timezone)
    session.add(site)
    session.flush()
    audit.record(
        session,
        actor=actor,
        tag=AuditTag.SITE_CREATE,
        subject=code,
        detail={"name": name, "timezone": timezone},
    )
    return site


def load_policy_file(
    session: Session, *, path: Path, actor: str, create_site: bool = True
) -> tuple[SitePolicy, CompiledPolicy]:
    """Validate a policy file and store it as the site's next version (nothing on error)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise Invalid(f"cannot read {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise Invalid(f"{path}: not UTF-8 text") from exc
    return store_policy(session, text=text, source=str(path), actor=actor, create_site=create_site)


def store_policy(
    session: Session, *, text: str, source: str, actor: str, create_site: bool = True
) -> tuple[SitePolicy, CompiledPolicy]:
    compiled = load_policy_text(text, source)
    site = session.scalar(select(Site).where(Site.code == compiled.site))
    if site is None:
        if not create_site:
            raise NotFound(f"{source}: site {compiled.site!r} does not exist")
        site = add_site(
            session,
            code=compiled.site,
            name=compiled.school_name,
            timezone=compiled.timezone,
            actor=actor,
        )
    elif site.timezone != compiled.timezone:
        site.timezone = compiled.timezone
    digest = hashlib.sha256(text.encode()).hexdigest()
    with enforcement.watch(session, site_ids=[site.id], reason=f"policy reload ({source})"):
        version = (
            session.scalar(
                select(func.max(SitePolicy.version)).where(SitePolicy.site_id == site.id)
            )
            or 0
        ) + 1
        row = SitePolicy(
            site_id=site.id,
            version=version,
            source_name=Path(source).name,
            toml=text,
            sha256=digest,
            loaded_by=actor,
        )
        session.add(row)
        session.execute(delete(Location).where(Location.site_id == site.id))
        for spec in compiled.locations:
            session.add(Location(site_id=site.id, name=spec.name, patterns=list(spec.patterns)))
        session.flush()
        audit.record(
            session,
            actor=actor,
            tag=AuditTag.POLICY_LOAD,
            subject=site.code,
            detail={"version": version, "sha256": digest, "source": source},
        )
    return row, compiled


def add_nas(
    session: Session,
    *,
    site_code: str,
    name: str,
    address: str,
    secret: str,
    vendor: str = "generic",
    coa_port: int | None = None,
    require_message_authenticator: bool = True,
    actor: str,
) -> NasClient:
    """Register a NAS client. Without `coa_port` it gets its vendor's default CoA/Disconnect port
    (`NasVendor.default_coa_port`: 1700 for Cisco and Meraki, else 3799)."""
    site = get_site(session, site_code)
    try:
        network = ipaddress.ip_network(address, strict=False)
    except ValueError as exc:
        raise Invalid(f"not an IP address or CIDR: {address!r}") from exc
    try:
        vendor_value = NasVendor(vendor)
    except ValueError as exc:
        known = ", ".join(v.value for v in NasVendor)
        raise Invalid(f"unknown NAS vendor {vendor!r} (known: {known})") from exc
    if not secret or len(secret) < 6:
        raise Invalid("the shared secret must be at least 6 characters")
    if coa_port is None:
        coa_port = vendor_value.default_coa_port
    if not 1 <= coa_port <= 65535:
        raise Invalid(f"CoA port {coa_port} is out of range 1-65535")
    if session.scalar(
        select(NasClient.id).where(NasClient.site_id == site.id, NasClient.name == name)
    ):
        raise Conflict(f"NAS {name!r} already exists at site {site_code}")
    for other in session.scalars(select(NasClient)):
        if ipaddress.ip_network(other.address, strict=False).overlaps(network):
            raise Conflict(f"address {address} overlaps NAS {other.name!r} ({other.address})")
    nas = NasClient(
        site_id=site.id,
        name=name,
        address=str(network) if network.num_addresses > 1 else str(network.network_address),
        secret=secret,
        vendor=vendor_value,
        coa_port=coa_port,
        require_message_authenticator=require_message_authenticator,
    )
    session.add(nas)
    session.flush()
    audit.record(
        session,
        actor=actor,
        tag=AuditTag.NAS_CREATE,
        subject=name,
        detail={
            "site": site_code,
            "address": nas.address,
            "vendor": vendor_value.value,
            "coa_port": coa_port,
            "require_message_authenticator": require_message_authenticator,
        },
    )
    return nas


def find_site(*, session: Session, code: str) -> Site | None:
    """The site with this code, or None when there is none (`get_site` raises instead)."""
    return session.scalar(select(Site).where(Site.code == code))


def site_timezone(*, session: Session, site_id: int) -> str:
    """The site's time zone, in which its people type dates (Europe/London if it has none)."""
    return session.scalar(select(Site.timezone).where(Site.id == site_id)) or DEFAULT_TIMEZONE


@dataclass(frozen=True, slots=True)
class SiteSummary:
    """A school and the version of its policy in force (None before the first load)."""

    code: str
    name: str
    timezone: str
    policy_version: int | None


def list_sites(*, session: Session) -> list[SiteSummary]:
    """Every site with its newest policy version, ordered by code: one query."""
    query = (
        select(Site.code, Site.name, Site.timezone, func.max(SitePolicy.version))
        .outerjoin(SitePolicy, SitePolicy.site_id == Site.id)
        .group_by(Site.id, Site.code, Site.name, Site.timezone)
        .order_by(Site.code)
    )
    return [
        SiteSummary(code=code, name=name, timezone=timezone, policy_version=version)
        for code, name, timezone, version in session.execute(query)
    ]


def policy_in_force(*, session: Session, site_code: str) -> SitePolicy | None:
    """The stored policy in force at a site (its newest version, with the TOML as loaded), or
    None before the first load; NotFound for an unknown site."""
    site = get_site(session, site_code)
    return session.scalar(
        select(SitePolicy)
        .where(SitePolicy.site_id == site.id)
        .order_by(SitePolicy.version.desc())
        .limit(1)
    )


@dataclass(frozen=True, slots=True)
class NasSummary:
    """A NAS client as listings show it: everything but its shared secret."""

    site: str
    name: str
    address: str
    vendor: NasVendor
    coa_port: int
    require_message_authenticator: bool


def list_nas_clients(*, session: Session) -> list[NasSummary]:
    """Every NAS client, ordered by site code and name: one query."""
    query = (
        select(NasClient, Site.code)
        .join(Site, NasClient.site_id == Site.id)
        .order_by(Site.code, NasClient.name)
    )
    return [
        NasSummary(
            site=code,
            name=nas.name,
            address=nas.address,
            vendor=nas.vendor,
            coa_port=nas.coa_port,
            require_message_authenticator=nas.require_message_authenticator,
        )
        for nas, code in session.execute(query)
    ]
