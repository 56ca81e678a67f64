"""What the monitor hands on: the rows of each traffic table as tuples (their fields, their time
columns), the counters of a run, and the per-second expiry buckets both halves of the monitor
(engine and recorder) use."""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

# The rows the engine hands to its sink: one tuple per record, fields in this order (the
# traffic tables' columns but the id, in the same order; tests/monitor/test_rows.py checks).
# Tuples, not dicts: building, pickling to the writer process and unpickling a 25-key dict
# costs about 8 us a row against 2 us for a tuple (bench/monitor_pcap.py).
FIELDS: dict[str, tuple[str, ...]] = {
    "flows": (
        "site_code",
        "started_at",
        "ended_at",
        "duration",
        "proto",
        "orig_ip",
        "orig_port",
        "resp_ip",
        "resp_port",
        "vlan",
        "orig_packets",
        "orig_bytes",
        "resp_packets",
        "resp_bytes",
        "end_reason",
        "service",
        "server_name",
        "name_source",
        "version",
        "alpn",
        "p2p",
        "info_hash",
        "client_ip",
        "mac",
        "mac_source",
        "device_id",
        "person_id",
    ),
    "dns": (
        "site_code",
        "queried_at",
        "client_ip",
        "client_port",
        "server_ip",
        "server_port",
        "trans_id",
        "query",
        "qtype",
        "qtype_name",
        "rcode",
        "rcode_name",
        "rtt",
        "answers",
        "ttls",
        "mac",
        "device_id",
        "person_id",
    ),
    "visits": (
        "site_code",
        "started_at",
        "ended_at",
        "duration",
        "server_name",
        "client_ip",
        "mac",
        "device_id",
        "person_id",
        "flows",
        "bytes_up",
        "bytes_down",
        "category",
    ),
    "alerts": (
        "site_code",
        "raised_at",
        "kind",
        "category",
        "severity",
        "client_ip",
        "mac",
        "device_id",
        "person_id",
        "evidence",
    ),
    # Device names (recorder.local_name, DHCP hostnames): upserted, not appended
    # (service.device_names.record_device_names).
    "names": ("site_code", "first_seen", "last_seen", "mac", "ip", "name", "source"),
    "bindings": (
        "site_code",
        "seen_at",
        "source",
        "msg_type",
        "ip",
        "mac",
        "hostname",
        "lease_seconds",
        "requested_ip",
        "is_lease",
        "server_ip",
        "vendor_class",
        "circuit_id",
        "remote_id",
        "relay_ip",
        "domain",
        "message",
        "trans_id",
    ),
}
Row = tuple[Any, ...]
Sink = Callable[[str, Row], None]  # (kind, row): where finished records go
# The time columns of each kind of row. The engine gives them as float epoch seconds (UTC); the
# batch writer turns them into the database's UTC timestamps, `with_datetimes` into datetimes.
TIME_COLUMNS: dict[str, tuple[str, ...]] = {
    "flows": ("started_at", "ended_at"),
    "dns": ("queried_at",),
    "visits": ("started_at", "ended_at"),
    "alerts": ("raised_at",),
    "bindings": ("seen_at",),
    "names": ("first_seen", "last_seen"),
}
P2P_FIELD = FIELDS["flows"].index("p2p")
NEVER = 1e15  # expiry times from here on (an infinite visit gap) are never due


def with_datetimes(kind: str, row: Row) -> dict[str, Any]:
    """A row as a dict by field name, its times (epoch seconds in the rows the engine hands
    out, so no datetime is built per record on the hot path) as timezone-aware UTC datetimes."""
    out = dict(zip(FIELDS[kind], row, strict=True))
    for column in TIME_COLUMNS[kind]:
        value = out[column]
        out[column] = None if value is None else datetime.fromtimestamp(value, UTC)
    return out


@dataclass
class Counters:
    packets: int = 0
    bytes: int = 0
    skipped_truncated: int = 0
    skipped_corrupt: int = 0
    skipped_oversized: int = 0
    skipped_linktype: int = 0
    not_ip: int = 0
    flows: int = 0
    dns: int = 0
    dns_errors: int = 0
    dhcp: int = 0
    arp: int = 0
    visits: int = 0
    alerts: int = 0
    kernel_drops: int = 0
    quic_undecryptable: int = 0  # QUIC Initial packets that did not decrypt (skipped)
    # TCP directions no longer read (stream.py): too much out of order, or a header past its
    # limit. The flow is still recorded; only names in its later payload may be missed.
    tcp_streams_given_up: int = 0
    extra: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, int]:
        out = {k: v for k, v in self.__dict__.items() if k != "extra"}
        out.update(self.extra)
        return out


class Due:
    """Things (flows, visits) filed under the whole second at or before which they may go
    idle; `pop_due(now)` returns those filed under a second before `now`. Filing something
    again (its time moved) is fine: the caller checks the real condition and skips the gone."""

    __slots__ = ("buckets", "heap")

    def __init__(self) -> None:
        self.buckets: dict[int, list[Any]] = {}
        self.heap: list[int] = []

    def add(self, item: object, at: float) -> None:
        if not at < NEVER:
            return
        second = int(at)
        bucket = self.buckets.get(second)
        if bucket is None:
            self.buckets[second] = [item]
            heapq.heappush(self.heap, second)
        else:
            bucket.append(item)

    def pop_due(self, now: float) -> list[Any]:
        heap = self.heap
        due: list[Any] = []
        while heap and heap[0] < now:
            due += self.buckets.pop(heapq.heappop(heap))
        return due
