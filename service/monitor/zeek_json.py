"""`export traffic|dns|tls|http --format zeek-json`: JSON lines with Zeek's field names
(conn.log, dns.log, ssl.log, http.log), so a SIEM that already reads Zeek's JSON logs reads
ours. Times are epoch seconds, as Zeek's JSON writer gives them by default.

Only fields we know are written; Zeek's JSON writer leaves unset fields out, and a reader
takes a missing field as unset. Notably `orig_bytes`/`resp_bytes` (Zeek's payload bytes) are
absent: we count IP bytes, which are Zeek's `orig_ip_bytes`/`resp_ip_bytes`. What Zeek has no
field for (the MAC's device and person) goes under `schoolgate.`, a prefix no Zeek log uses.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

from sqlalchemy.orm import Session

from service.export_types import Exporter, ExportQuery
from service.models.traffic import TrafficDns, TrafficFlow
from service.monitor.exports import flow_rows, rows_of

_B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
PREFIX = "schoolgate."
# Our service names that Zeek spells otherwise (its analyser for TLS is "ssl").
_ZEEK_SERVICES = {"tls": "ssl"}


def uid(*parts: object) -> str:
    """A Zeek-shaped connection uid ("C" and 17 base62 characters), stable for a record:
    the same flow gets the same uid in conn.log, ssl.log and http.log exports."""
    number = int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=13).digest())
    chars = []
    for _ in range(17):
        number, digit = divmod(number, 62)
        chars.append(_B62[digit])
    return "C" + "".join(chars)


def conn_state(proto: str, end_reason: str, resp_packets: int) -> str:
    """Zeek's conn_state, as near as what we keep allows: S0 nothing came back, SF ended
    normally (FIN both ways; for UDP, an answer came), RSTO reset, S1 established and open."""
    if resp_packets == 0:
        return "S0"
    if proto != "tcp":
        return "SF"
    return {"fin": "SF", "rst": "RSTO"}.get(end_reason, "S1")


def _flow_uid(row: TrafficFlow) -> str:
    return uid(row.site_code, row.started_at.timestamp(), row.proto, row.orig_ip, row.orig_port)


def _own_name(row: TrafficFlow) -> str | None:
    """The name the flow itself carried (SNI, Host): not one borrowed from a DNS answer,
    which Zeek's ssl.log and http.log would not show."""
    return row.server_name if row.name_source not in (None, "dns") else None


def _id(row: TrafficFlow) -> dict[str, Any]:
    return {
        "id.orig_h": row.orig_ip,
        "id.orig_p": row.orig_port,
        "id.resp_h": row.resp_ip,
        "id.resp_p": row.resp_port,
    }


def _ours(row: Any, person: str | None, device: str | None, device_class: Any) -> dict[str, Any]:
    out = {
        PREFIX + "site": row.site_code,
        PREFIX + "mac": row.mac,
        PREFIX + "device": device,
        PREFIX + "device_class": device_class.value if device_class is not None else None,
        PREFIX + "person": person,
    }
    return {k: v for k, v in out.items() if v is not None}


def _set(record: dict[str, Any]) -> dict[str, Any]:
    """Unset fields left out, as Zeek's JSON writer does."""
    return {k: v for k, v in record.items() if v is not None}


def zeek_conn(session: Session, q: ExportQuery) -> Iterator[dict[str, Any]]:
    for row, person, device, device_class in flow_rows(session, q):
        yield _set(
            {
                "ts": row.started_at.timestamp(),
                "uid": _flow_uid(row),
                **_id(row),
                "proto": row.proto,
                "service": _ZEEK_SERVICES.get(row.service or "", row.service),
                "duration": row.duration,
                "conn_state": conn_state(row.proto, row.end_reason, row.resp_packets),
                "orig_pkts": row.orig_packets,
                "orig_ip_bytes": row.orig_bytes,
                "resp_pkts": row.resp_packets,
                "resp_ip_bytes": row.resp_bytes,
                **_ours(row, person, device, device_class),
            }
        )


def zeek_dns(session: Session, q: ExportQuery) -> Iterator[dict[str, Any]]:
    for row, person, device, device_class in rows_of(session, TrafficDns, TrafficDns.queried_at, q):
        # The DNS table keeps no protocol: DNS over UDP unless a later column says otherwise.
        proto = getattr(row, "proto", None) or "udp"
        yield _set(
            {
                "ts": row.queried_at.timestamp(),
                "uid": uid(
                    row.site_code, row.queried_at.timestamp(), row.client_ip, row.client_port
                ),
                "id.orig_h": row.client_ip,
                "id.orig_p": row.client_port,
                "id.resp_h": row.server_ip,
                "id.resp_p": row.server_port,
                "proto": proto,
                "trans_id": row.trans_id,
                "rtt": row.rtt,
                "query": row.query,
                "qtype": row.qtype,
                "qtype_name": row.qtype_name,
                "rcode": row.rcode,
                "rcode_name": row.rcode_name,
                "answers": list(row.answers) or None,
                "TTLs": [float(t) for t in row.ttls] or None,
                **_ours(row, person, device, device_class),
            }
        )


def zeek_ssl(session: Session, q: ExportQuery) -> Iterator[dict[str, Any]]:
    """TLS and QUIC flows (ssl.log); `server_name` from the ClientHello's SNI."""
    for row, person, device, device_class in flow_rows(session, q, services=("tls", "quic")):
        yield _set(
            {
                "ts": row.started_at.timestamp(),
                "uid": _flow_uid(row),
                **_id(row),
                "server_name": _own_name(row),
                # Zeek's `version` is the version the server chose, which we do not see: the
                # client's offer (highest version, ALPN list) goes under our prefix instead.
                PREFIX + "client_version": row.version,
                PREFIX + "client_alpn": row.alpn,
                **_ours(row, person, device, device_class),
            }
        )


def zeek_http(session: Session, q: ExportQuery) -> Iterator[dict[str, Any]]:
    """HTTP flows (http.log): `host` from the request's Host header."""
    for row, person, device, device_class in flow_rows(
        session, q, services=("http", "http-connect")
    ):
        yield _set(
            {
                "ts": row.started_at.timestamp(),
                "uid": _flow_uid(row),
                **_id(row),
                # We keep the method only where it matters: a CONNECT through a proxy.
                "method": "CONNECT" if row.service == "http-connect" else None,
                "host": _own_name(row),
                **_ours(row, person, device, device_class),
            }
        )


ZEEK_EXPORTS: dict[str, Exporter] = {
    "traffic": zeek_conn,
    "dns": zeek_dns,
    "tls": zeek_ssl,
    "http": zeek_http,
}
