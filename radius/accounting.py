"""RFC 2866 accounting: from an Accounting-Request to a record, and records to session rows.

One `AccountingSession` row per (NAS, Acct-Session-Id, MAC): Start creates it, Interim-Update
and Stop update it (creating it when the Start was lost), Accounting-On/Off close every open
session of that NAS (it rebooted). Rows are written in batches by `radius/writer.py` before
the Accounting-Responses of the batch are sent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from radius import codec
from radius.codec import PacketError, RawPacket
from service.mac import try_normalize_mac
from service.models import AccountingSession
from service.policy import AccessRequest, locate
from service.policy.model import SitePolicy

STATUS_NAMES = {
    codec.ACCT_START: "start",
    codec.ACCT_STOP: "stop",
    codec.ACCT_INTERIM: "interim",
    codec.ACCT_ON: "accounting-on",
    codec.ACCT_OFF: "accounting-off",
}


@dataclass(frozen=True, slots=True)
class AcctRecord:
    status: int
    nas_id: int
    nas_ip: str
    site_code: str
    at: datetime  # event time: now minus Acct-Delay-Time
    nas_identifier: str | None = None
    acct_session_id: str | None = None
    mac: str | None = None
    username: str | None = None
    framed_ip: str | None = None
    called_station_id: str | None = None
    nas_port_id: str | None = None
    location: str | None = None
    session_time: int | None = None
    input_octets: int | None = None
    output_octets: int | None = None
    terminate_cause: str | None = None


def _octets(packet: RawPacket, low: int, high: int) -> int | None:
    value = packet.integer(low)
    if value is None:
        return None
    return value + ((packet.integer(high) or 0) << 32)


def parse_accounting(
    packet: RawPacket,
    *,
    nas_id: int,
    nas_ip: str,
    site_code: str,
    policy: SitePolicy | None,
    now: datetime,
) -> AcctRecord:
    """The record of one Accounting-Request; raises `PacketError` when it cannot be kept."""
    status = packet.integer(codec.ACCT_STATUS_TYPE)
    if status not in STATUS_NAMES:
        raise PacketError("bad_accounting", f"Acct-Status-Type {status}")
    delay = packet.integer(codec.ACCT_DELAY_TIME) or 0
    at = now - timedelta(seconds=min(delay, 86400))
    nas_identifier = packet.text(codec.NAS_IDENTIFIER)
    if status in (codec.ACCT_ON, codec.ACCT_OFF):
        return AcctRecord(status, nas_id, nas_ip, site_code, at, nas_identifier)
    session_id = packet.text(codec.ACCT_SESSION_ID)
    if not session_id:
        raise PacketError("bad_accounting", "no Acct-Session-Id")
    username = packet.text(codec.USER_NAME)
    mac = try_normalize_mac(packet.text(codec.CALLING_STATION_ID)) or try_normalize_mac(username)
    framed = packet.attrs.get(codec.FRAMED_IP_ADDRESS)
    framed_ip = (
        ".".join(str(b) for b in framed) if framed is not None and len(framed) == 4 else None
    )
    called = packet.text(codec.CALLED_STATION_ID)
    port_id = packet.text(codec.NAS_PORT_ID)
    location = None
    if policy is not None:
        location = locate(
            policy,
            AccessRequest(
                mac=mac,
                nas_identifier=nas_identifier,
                called_station_id=called,
                nas_port_id=port_id,
            ),
        )
    cause = packet.integer(codec.ACCT_TERMINATE_CAUSE)
    return AcctRecord(
        status=status,
        nas_id=nas_id,
        nas_ip=nas_ip,
        site_code=site_code,
        at=at,
        nas_identifier=nas_identifier,
        acct_session_id=session_id[:255],
        mac=mac,
        username=username[:255] if username else None,
        framed_ip=framed_ip,
        called_station_id=called[:255] if called else None,
        nas_port_id=port_id[:255] if port_id else None,
        location=location,
        session_time=packet.integer(codec.ACCT_SESSION_TIME),
        input_octets=_octets(packet, codec.ACCT_INPUT_OCTETS, codec.ACCT_INPUT_GIGAWORDS),
        output_octets=_octets(packet, codec.ACCT_OUTPUT_OCTETS, codec.ACCT_OUTPUT_GIGAWORDS),
        terminate_cause=None if cause is None else codec.TERMINATE_CAUSES.get(cause, str(cause)),
    )


def apply_records(session: Session, records: Sequence[AcctRecord]) -> None:
    """Write a batch of records as session rows (the caller commits)."""
    session_ids = {r.acct_session_id for r in records if r.acct_session_id}
    rows: dict[tuple[int | None, str, str | None], AccountingSession] = {}
    if session_ids:
        for row in session.scalars(
            select(AccountingSession).where(AccountingSession.acct_session_id.in_(session_ids))
        ):
            rows[(row.nas_id, row.acct_session_id, row.mac)] = row
    for record in records:
        if record.status in (codec.ACCT_ON, codec.ACCT_OFF):
            session.flush()
            session.execute(
                update(AccountingSession)
                .where(
                    AccountingSession.nas_id == record.nas_id,
                    AccountingSession.stopped_at.is_(None),
                )
                .values(stopped_at=record.at, updated_at=record.at, terminate_cause="NAS-Reboot")
            )
            continue
        assert record.acct_session_id is not None  # parse_accounting guarantees it
        key = (record.nas_id, record.acct_session_id, record.mac)
        found = rows.get(key)
        if found is not None:
            row = found
        else:
            started = record.at
            if record.status != codec.ACCT_START and record.session_time:
                started = record.at - timedelta(seconds=record.session_time)
            row = AccountingSession(
                nas_id=record.nas_id,
                nas_ip=record.nas_ip,
                nas_identifier=record.nas_identifier,
                site_code=record.site_code,
                mac=record.mac,
                username=record.username,
                framed_ip=record.framed_ip,
                acct_session_id=record.acct_session_id,
                called_station_id=record.called_station_id,
                nas_port_id=record.nas_port_id,
                location=record.location,
                started_at=started,
                updated_at=record.at,
                input_octets=0,
                output_octets=0,
            )
            session.add(row)
            rows[key] = row
        _update(row, record)


def _update(row: AccountingSession, record: AcctRecord) -> None:
    row.updated_at = max(row.updated_at, record.at)
    if record.framed_ip:
        row.framed_ip = record.framed_ip
    if record.username and not row.username:
        row.username = record.username
    if record.location and not row.location:
        row.location = record.location
    if record.session_time is not None:
        row.session_time = max(row.session_time or 0, record.session_time)
    if record.input_octets is not None:
        row.input_octets = max(row.input_octets or 0, record.input_octets)
    if record.output_octets is not None:
        row.output_octets = max(row.output_octets or 0, record.output_octets)
    if record.status == codec.ACCT_STOP:
        row.stopped_at = record.at
        row.terminate_cause = record.terminate_cause
