"""RFC 2866 accounting: from an Accounting-Request to the domain's `AcctRecord`.

What a record does to the session rows is the domain's (`service.accounting.apply_accounting`);
`radius/writer.py` applies them in batches before the Accounting-Responses of the batch are sent.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta

from radius import codec
from radius.codec import PacketError, RawPacket
from service.accounting import NAS_RESTART, AcctRecord, AcctStatus
from service.mac import try_normalize_mac
from service.policy import AccessRequest, locate
from service.policy.model import SitePolicy

__all__ = ["AcctRecord", "parse_accounting"]

_STATUSES = frozenset(AcctStatus)


def _octets(packet: RawPacket, low: int, high: int) -> int | None:
    value = packet.integer(low)
    if value is None:
        return None
    return value + ((packet.integer(high) or 0) << 32)


def packet_key(packet: RawPacket, nas_id: int, at: datetime, *, restart: bool) -> str:
    """The record's identity, for exactly-once storage (`service.accounting`): the NAS and
    the packet's octets, so a retransmission (the same octets) or the same packet sent to both
    RADIUS servers of a NAS is one record. An Accounting-On/Off carries little that changes
    from one reboot to the next, so its key also holds the minute it happened."""
    digest = hashlib.blake2b(nas_id.to_bytes(8, "big"), digest_size=16)
    digest.update(packet.data)
    if restart:
        digest.update(at.strftime("%Y%m%d%H%M").encode())
    return digest.hexdigest()


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
    value = packet.integer(codec.ACCT_STATUS_TYPE)
    if value not in _STATUSES:
        raise PacketError("bad_accounting", f"Acct-Status-Type {value}")
    status = AcctStatus(value)
    delay = packet.integer(codec.ACCT_DELAY_TIME) or 0
    at = now - timedelta(seconds=min(delay, 86400))
    nas_identifier = packet.text(codec.NAS_IDENTIFIER)
    if status in NAS_RESTART:
        key = packet_key(packet, nas_id, at, restart=True)
        return AcctRecord(status, nas_id, nas_ip, site_code, at, nas_identifier, key=key)
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
        key=packet_key(packet, nas_id, at, restart=False),
    )
