"""Clients on the network: which device is behind an IP (what the portal asks first), and the
accounting sessions an admin lists."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.accounting import open_at
from service.errors import SchoolgateError
from service.models import AccountingSession, NasClient, Site
from service.models.traffic import TrafficBinding

log = logging.getLogger("schoolgate.portal")


class Unidentified(SchoolgateError):
    """No open accounting session for this client IP: the portal cannot tell who it is."""


class Mismatch(SchoolgateError):
    """The controller's redirect named a different MAC from the one the network saw."""


@dataclass(frozen=True, slots=True)
class Client:
    ip: str
    mac: str
    site_code: str
    nas_identifier: str | None
    called_station_id: str | None
    nas_port_id: str | None


def client_for_ip(
    *,
    session: Session,
    ip: str,
    claimed_mac: str | None = None,
    now: datetime | None = None,
    stale_after: timedelta | None = None,
) -> Client:
    """The device behind `ip`, from its open accounting session (newest first), else from a
    current DHCP lease the monitor saw.

    A DHCP lease of the IP to another MAC seen after the session's last update overtakes
    it (a NAS that rebooted never sends the Stop, and the IP has been handed to someone
    else); with `stale_after`, so does silence: a session whose last Start or Interim-Update
    is older than that no longer names the device (`service.accounting.session_end`).

    A MAC in the redirect URL only has to agree: a different one is refused (Mismatch) and
    logged. `now` judges a lease's expiry; it defaults to the wall clock, which the monitor
    stamps leases with.
    """
    now = now or datetime.now(UTC)
    row = session.scalar(
        select(AccountingSession)
        .where(
            AccountingSession.framed_ip == ip,
            AccountingSession.stopped_at.is_(None)
            if stale_after is None
            else open_at(now, stale_after),
        )
        .order_by(AccountingSession.updated_at.desc(), AccountingSession.id.desc())
        .limit(1)
    )
    if row is not None and _overtaken(session, ip, row):
        row = None
    if row is None or not row.mac:
        return _from_lease(session, ip, claimed_mac, now)
    if claimed_mac is not None and claimed_mac != row.mac:
        log.warning(
            "portal: redirect claimed MAC %s but the session for %s is %s: refused",
            claimed_mac,
            ip,
            row.mac,
        )
        raise Mismatch(f"redirect MAC {claimed_mac} does not match the network's {row.mac}")
    site_code = row.site_code
    if site_code is None and row.nas_id is not None:
        site_code = session.scalar(
            select(Site.code)
            .join(NasClient, NasClient.site_id == Site.id)
            .where(NasClient.id == row.nas_id)
        )
    if site_code is None or session.scalar(select(Site.id).where(Site.code == site_code)) is None:
        raise Unidentified(f"the session for {ip} is at no known site ({site_code})")
    return Client(
        ip=ip,
        mac=row.mac,
        site_code=site_code,
        nas_identifier=row.nas_identifier,
        called_station_id=row.called_station_id,
        nas_port_id=row.nas_port_id,
    )


def _overtaken(session: Session, ip: str, row: AccountingSession) -> bool:
    """Whether the monitor saw `ip` leased to another MAC after the session's last update."""
    return (
        session.scalar(
            select(TrafficBinding.id)
            .where(
                TrafficBinding.ip == ip,
                TrafficBinding.is_lease.is_(True),
                TrafficBinding.mac != row.mac,
                TrafficBinding.seen_at > row.updated_at,
            )
            .limit(1)
        )
        is not None
    )


def _from_lease(session: Session, ip: str, claimed_mac: str | None, now: datetime) -> Client:
    """No accounting for this IP: a current DHCP lease the monitor saw will do (wired ports
    and controllers that send no Framed-IP-Address)."""
    lease = session.scalar(
        select(TrafficBinding)
        .where(TrafficBinding.ip == ip, TrafficBinding.is_lease.is_(True))
        .order_by(TrafficBinding.seen_at.desc(), TrafficBinding.id.desc())
        .limit(1)
    )
    if (
        lease is None
        or lease.site_code is None
        or lease.seen_at + timedelta(seconds=lease.lease_seconds or 3600) < now
    ):
        raise Unidentified(f"no open network session or DHCP lease for {ip}")
    if claimed_mac is not None and claimed_mac != lease.mac:
        log.warning(
            "portal: redirect claimed MAC %s but the DHCP lease for %s is %s: refused",
            claimed_mac,
            ip,
            lease.mac,
        )
        raise Mismatch(f"redirect MAC {claimed_mac} does not match the network's {lease.mac}")
    if session.scalar(select(Site.id).where(Site.code == lease.site_code)) is None:
        raise Unidentified(f"the lease for {ip} is at no known site ({lease.site_code})")
    return Client(ip, lease.mac, lease.site_code, None, None, None)


@dataclass(frozen=True, slots=True)
class SessionRow:
    """One accounting session as the admin API lists it."""

    mac: str | None
    username: str | None
    framed_ip: str | None
    site: str | None
    nas_identifier: str | None
    acct_session_id: str
    started_at: datetime
    stopped_at: datetime | None


def list_sessions(
    *, session: Session, open_only: bool = False, limit: int = 1000
) -> list[SessionRow]:
    """The newest accounting sessions first (at most `limit`), optionally only the open ones."""
    query = select(AccountingSession).order_by(AccountingSession.started_at.desc()).limit(limit)
    if open_only:
        query = query.where(AccountingSession.stopped_at.is_(None))
    return [
        SessionRow(
            mac=s.mac,
            username=s.username,
            framed_ip=s.framed_ip,
            site=s.site_code,
            nas_identifier=s.nas_identifier,
            acct_session_id=s.acct_session_id,
            started_at=s.started_at,
            stopped_at=s.stopped_at,
        )
        for s in session.scalars(query)
    ]
