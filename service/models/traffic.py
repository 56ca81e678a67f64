"""Tables owned by the traffic monitor (issue 6): metadata only, never payloads.

On PostgreSQL every table here is partitioned by day on its time column (migration 0004), so
retention is a partition drop; the primary key there is (id, time column). Rows name the device
and person by id and MAC as attributed at capture time; unattributed traffic keeps them null.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, Float, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from service.models.base import Base, BigIntId, JSONType, UTCDateTime, intpk

# Table name -> the column it is partitioned (and purged) by.
PARTITION_COLUMNS = {
    "traffic_flows": "started_at",
    "traffic_dns": "queried_at",
    "traffic_visits": "started_at",
    "traffic_alerts": "raised_at",
    "traffic_bindings": "seen_at",
}


class TrafficFlow(Base):
    """One TCP/UDP (or other IP) conversation, like a Zeek conn.log line."""

    __tablename__ = "traffic_flows"
    __table_args__ = (
        Index("ix_traffic_flows_started_at", "started_at"),
        Index("ix_traffic_flows_mac", "mac"),
    )

    id: Mapped[intpk]
    site_code: Mapped[str | None] = mapped_column(String(64))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    ended_at: Mapped[datetime] = mapped_column(UTCDateTime())
    duration: Mapped[float] = mapped_column(Float)
    proto: Mapped[str] = mapped_column(String(8))
    orig_ip: Mapped[str] = mapped_column(String(64))
    orig_port: Mapped[int] = mapped_column(Integer)
    resp_ip: Mapped[str] = mapped_column(String(64))
    resp_port: Mapped[int] = mapped_column(Integer)
    vlan: Mapped[int | None] = mapped_column(Integer)
    orig_packets: Mapped[int] = mapped_column(BigIntId)
    orig_bytes: Mapped[int] = mapped_column(BigIntId)
    resp_packets: Mapped[int] = mapped_column(BigIntId)
    resp_bytes: Mapped[int] = mapped_column(BigIntId)
    end_reason: Mapped[str] = mapped_column(String(16))
    service: Mapped[str | None] = mapped_column(String(16))
    server_name: Mapped[str | None] = mapped_column(String(255))
    name_source: Mapped[str | None] = mapped_column(String(8))
    # "quic-v1", "quic-v2", "quic-draft29", "gquic-Q025"; "tls1.3" for TLS over TCP (0009_q)
    version: Mapped[str | None] = mapped_column(String(16))
    alpn: Mapped[str | None] = mapped_column(String(64))  # offered protocols: "h3", "h2,http/1.1"
    p2p: Mapped[str | None] = mapped_column(String(32))
    info_hash: Mapped[str | None] = mapped_column(String(40))
    client_ip: Mapped[str | None] = mapped_column(String(64))
    mac: Mapped[str | None] = mapped_column(String(17))
    mac_source: Mapped[str | None] = mapped_column(String(16))
    device_id: Mapped[int | None] = mapped_column(BigIntId)
    person_id: Mapped[int | None] = mapped_column(BigIntId)


class TrafficDns(Base):
    """One DNS query and its answer (like Zeek's dns.log)."""

    __tablename__ = "traffic_dns"
    __table_args__ = (Index("ix_traffic_dns_queried_at", "queried_at"),)

    id: Mapped[intpk]
    site_code: Mapped[str | None] = mapped_column(String(64))
    queried_at: Mapped[datetime] = mapped_column(UTCDateTime())
    client_ip: Mapped[str] = mapped_column(String(64))
    client_port: Mapped[int] = mapped_column(Integer)
    server_ip: Mapped[str] = mapped_column(String(64))
    server_port: Mapped[int] = mapped_column(Integer)
    trans_id: Mapped[int] = mapped_column(Integer)
    query: Mapped[str | None] = mapped_column(String(255))
    qtype: Mapped[int | None] = mapped_column(Integer)
    qtype_name: Mapped[str | None] = mapped_column(String(16))
    rcode: Mapped[int | None] = mapped_column(Integer)
    rcode_name: Mapped[str | None] = mapped_column(String(16))
    rtt: Mapped[float | None] = mapped_column(Float)
    answers: Mapped[list[str]] = mapped_column(JSONType)
    ttls: Mapped[list[int]] = mapped_column(JSONType)
    mac: Mapped[str | None] = mapped_column(String(17))
    device_id: Mapped[int | None] = mapped_column(BigIntId)
    person_id: Mapped[int | None] = mapped_column(BigIntId)


class TrafficVisit(Base):
    """Flows to one site name from one device, joined while the gaps stay under the idle gap:
    "the timing and duration of visits to websites" (seed 001)."""

    __tablename__ = "traffic_visits"
    __table_args__ = (Index("ix_traffic_visits_started_at", "started_at"),)

    id: Mapped[intpk]
    site_code: Mapped[str | None] = mapped_column(String(64))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    ended_at: Mapped[datetime] = mapped_column(UTCDateTime())
    duration: Mapped[float] = mapped_column(Float)
    server_name: Mapped[str] = mapped_column(String(255))
    client_ip: Mapped[str] = mapped_column(String(64))
    mac: Mapped[str | None] = mapped_column(String(17))
    device_id: Mapped[int | None] = mapped_column(BigIntId)
    person_id: Mapped[int | None] = mapped_column(BigIntId)
    flows: Mapped[int] = mapped_column(Integer)
    bytes_up: Mapped[int] = mapped_column(BigIntId)
    bytes_down: Mapped[int] = mapped_column(BigIntId)
    category: Mapped[str | None] = mapped_column(String(64))


class TrafficAlert(Base):
    """Something the DSL should see: P2P traffic or a visit to a listed category."""

    __tablename__ = "traffic_alerts"
    __table_args__ = (Index("ix_traffic_alerts_raised_at", "raised_at"),)

    id: Mapped[intpk]
    site_code: Mapped[str | None] = mapped_column(String(64))
    raised_at: Mapped[datetime] = mapped_column(UTCDateTime())
    kind: Mapped[str] = mapped_column(String(16))
    category: Mapped[str] = mapped_column(String(64))
    severity: Mapped[str] = mapped_column(String(16))
    client_ip: Mapped[str] = mapped_column(String(64))
    mac: Mapped[str | None] = mapped_column(String(17))
    device_id: Mapped[int | None] = mapped_column(BigIntId)
    person_id: Mapped[int | None] = mapped_column(BigIntId)
    evidence: Mapped[str] = mapped_column(String(512))


class TrafficBinding(Base):
    """An IP-to-MAC binding seen on the wire (DHCP lease or ARP), time-stamped: IPs are reused.
    DHCP rows also carry what Zeek's dhcp.log does (server, domain, message) and the relay
    agent's circuit and remote id (option 82: which switch port or access point)."""

    __tablename__ = "traffic_bindings"
    __table_args__ = (Index("ix_traffic_bindings_seen_at", "seen_at"),)

    id: Mapped[intpk]
    site_code: Mapped[str | None] = mapped_column(String(64))
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime())
    source: Mapped[str] = mapped_column(String(8))
    msg_type: Mapped[str | None] = mapped_column(String(16))
    ip: Mapped[str | None] = mapped_column(String(64))
    mac: Mapped[str] = mapped_column(String(17))
    hostname: Mapped[str | None] = mapped_column(String(255))
    lease_seconds: Mapped[int | None] = mapped_column(Integer)
    requested_ip: Mapped[str | None] = mapped_column(String(64))
    is_lease: Mapped[bool] = mapped_column(Boolean, default=False)
    server_ip: Mapped[str | None] = mapped_column(String(64))
    vendor_class: Mapped[str | None] = mapped_column(String(255))
    circuit_id: Mapped[str | None] = mapped_column(String(255))
    remote_id: Mapped[str | None] = mapped_column(String(255))
    relay_ip: Mapped[str | None] = mapped_column(String(64))
    domain: Mapped[str | None] = mapped_column(String(255))
    message: Mapped[str | None] = mapped_column(String(255))
    trans_id: Mapped[int | None] = mapped_column(BigIntId)
