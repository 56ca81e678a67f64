"""The monitor's state: flow table, DNS transactions, IP->MAC bindings, visits and alerts.

`Monitor.packet(ts, frame)` is the per-packet hot path (guarded by `bench/monitor_pcap.py`): it
parses a few header fields from raw bytes, updates one flow, and only looks at payload bytes for
the first packets of a flow or on the few ports that carry DNS/DHCP. Finished records are handed
to a `sink` (the batch writer) as plain dicts; the engine itself never touches the database.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from service.monitor import extract, parser
from service.monitor.attribution import Attributor
from service.monitor.categories import CategoryList

Sink = Callable[[str, dict[str, Any]], None]

_PAYLOAD_PACKETS = 4  # how many payload packets per direction are searched for names/P2P
_TCP_IDLE = 300.0
_UDP_IDLE = 60.0
_DNS_PORTS = frozenset({53, 137, 5353, 5355})
_DHCP_PORTS = frozenset({67, 68})
_SERVICE_BY_PORT = {
    53: "dns",
    137: "dns",
    5353: "dns",
    5355: "dns",
    80: "http",
    443: "tls",
    67: "dhcp",
    68: "dhcp",
    123: "ntp",
}


_IP_TEXT: dict[bytes, str] = {}


def _ip_text(raw: bytes) -> str:
    """Address bytes to text, cached: the same few thousand addresses recur all day."""
    text = _IP_TEXT.get(raw)
    if text is None:
        if len(_IP_TEXT) > 65536:
            _IP_TEXT.clear()
        text = _IP_TEXT[raw] = str(ipaddress.ip_address(raw))
    return text


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


class Flow:
    __slots__ = (
        "client_text",
        "done",
        "end_reason",
        "first",
        "info_hash",
        "last",
        "name",
        "name_source",
        "o_bytes",
        "o_pkts",
        "o_scan",
        "orig",
        "orig_port",
        "p2p",
        "proto",
        "r_bytes",
        "r_pkts",
        "r_scan",
        "resp",
        "resp_port",
        "service",
        "tcp_fin",
        "vlan",
    )

    def __init__(
        self,
        proto: int,
        orig: bytes,
        orig_port: int,
        resp: bytes,
        resp_port: int,
        ts: float,
        vlan: int,
    ) -> None:
        self.proto = proto
        self.orig = orig
        self.orig_port = orig_port
        self.resp = resp
        self.resp_port = resp_port
        self.first = ts
        self.last = ts
        self.o_pkts = self.o_bytes = self.r_pkts = self.r_bytes = 0
        self.o_scan = self.r_scan = _PAYLOAD_PACKETS
        self.tcp_fin = 0  # bit 1: orig FIN, bit 2: resp FIN
        self.end_reason = "open"
        self.done = False  # written out; kept a few seconds to absorb the last ACKs
        self.name: str | None = None
        self.name_source: str | None = None
        self.p2p: str | None = None
        self.info_hash: str | None = None
        self.service: str | None = _SERVICE_BY_PORT.get(resp_port)
        self.vlan = vlan
        self.client_text: str | None = None


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
    extra: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, int]:
        out = {k: v for k, v in self.__dict__.items() if k != "extra"}
        out.update(self.extra)
        return out


class Visit:
    __slots__ = ("bytes_down", "bytes_up", "category", "client", "end", "flows", "start", "who")

    def __init__(
        self, start: float, end: float, client: str, who: tuple[str | None, int | None, int | None]
    ) -> None:
        self.start = start
        self.end = end
        self.client = client
        self.who = who
        self.flows = 0
        self.bytes_up = 0
        self.bytes_down = 0
        self.category: str | None = None


class Monitor:
    """Feed frames with `packet()`, call `tick()` now and then and `finish()` at the end."""

    def __init__(
        self,
        sink: Sink,
        *,
        site_code: str | None = None,
        attributor: Attributor | None = None,
        categories: CategoryList | None = None,
        visit_idle_gap: float = 300.0,
        p2p_severity: str = "weekly",
    ) -> None:
        self.sink = sink
        self.site_code = site_code
        self.attributor = attributor or Attributor()
        self.categories = categories or CategoryList()
        self.visit_idle_gap = visit_idle_gap
        self.p2p_severity = p2p_severity
        self.counters = Counters()
        self.flows: dict[tuple[bytes, int, bytes, int, int], Flow] = {}
        self.frags = parser.Reassembler()
        self.pending_dns: dict[
            tuple[bytes, int, bytes, int, int], tuple[float, extract.DnsMessage]
        ] = {}
        # (client ip, server ip) -> name from a DNS answer, and server ip -> name as a fallback.
        self.dns_names: dict[tuple[str, str], str] = {}
        self.dns_any: dict[str, str] = {}
        self.p2p_peers: dict[frozenset[bytes], str] = {}
        self.visits: dict[tuple[str, str], Visit] = {}
        self.p2p_alerted: dict[str, float] = {}
        self.now = 0.0
        self._next_tick = 0.0

    # --- hot path -----------------------------------------------------------------------

    def packet(self, ts: float, frame: bytes, linktype: int = parser.LINK_ETHERNET) -> None:
        """One captured frame. Bad bytes are counted and skipped, never raised."""
        counters = self.counters
        counters.packets += 1
        counters.bytes += len(frame)
        if len(frame) > parser.MAX_FRAME:
            counters.skipped_oversized += 1
            return
        try:
            pkt = parser.parse(frame, linktype, ts, self.frags)
        except parser.Truncated:
            counters.skipped_truncated += 1
            return
        except (ValueError, IndexError):
            if linktype not in parser.KNOWN_LINKTYPES:
                counters.skipped_linktype += 1
            else:
                counters.skipped_corrupt += 1
            return
        if ts > self.now:
            self.now = ts
            if ts >= self._next_tick:
                self.tick(ts)
        if pkt is None:
            counters.not_ip += 1
            return
        proto, src, dst, sport, dport, payload, ip_len, flags, src_mac, vlan = pkt
        if proto == parser.ARP:
            self._arp(ts, src, src_mac, sport)
            return
        flows = self.flows
        key = (src, sport, dst, dport, proto)
        flow = flows.get(key)
        if flow is None:
            flow = flows.get((dst, dport, src, sport, proto))
            if flow is None:
                flow = self._new_flow(key, ts, flags, vlan)
        if flow.done:
            if proto != parser.PROTO_TCP or flags & 0x12 != 0x02:
                return  # a late ACK or retransmission of a connection already written
            self._forget(flow)
            flow = self._new_flow(key, ts, flags, vlan)
        flow.last = ts
        forward = flow.orig == src and flow.orig_port == sport
        if forward:
            flow.o_pkts += 1
            flow.o_bytes += ip_len
        else:
            flow.r_pkts += 1
            flow.r_bytes += ip_len
        if proto == parser.PROTO_TCP:
            if flags & 0x05:  # FIN or RST
                self._tcp_end(flow, flags, forward)
            if payload and (flow.o_scan if forward else flow.r_scan):
                self._tcp_payload(flow, payload, forward)
        elif proto == parser.PROTO_UDP and payload:
            if sport in _DNS_PORTS or dport in _DNS_PORTS:
                self._dns(ts, src, sport, dst, dport, payload)
            elif sport in _DHCP_PORTS and dport in _DHCP_PORTS:
                self._dhcp(ts, payload)
            elif flow.o_scan if forward else flow.r_scan:
                self._udp_payload(flow, payload, forward)

    # --- per-flow work ------------------------------------------------------------------

    def _new_flow(
        self, key: tuple[bytes, int, bytes, int, int], ts: float, flags: int, vlan: int
    ) -> Flow:
        src, sport, dst, dport, proto = key
        # A SYN-ACK seen first means we missed the SYN: the sender is the responder.
        if proto == parser.PROTO_TCP and flags & 0x12 == 0x12:
            flow = Flow(proto, dst, dport, src, sport, ts, vlan)
        else:
            flow = Flow(proto, src, sport, dst, dport, ts, vlan)
        peer_label = self.p2p_peers.get(frozenset((src, dst)))
        if peer_label is not None:
            flow.p2p = "peer:" + peer_label
        self.flows[key] = flow
        self.counters.flows += 1
        return flow

    def _tcp_end(self, flow: Flow, flags: int, forward: bool) -> None:
        if flags & 0x04:
            flow.end_reason = "rst"
        else:
            flow.tcp_fin |= 1 if forward else 2
            if flow.tcp_fin != 3:
                return
            flow.end_reason = "fin"
        self._close(flow)

    def _tcp_payload(self, flow: Flow, payload: bytes, forward: bool) -> None:
        if forward:
            flow.o_scan -= 1
        else:
            flow.r_scan -= 1
        if flow.p2p is None or flow.p2p.startswith("peer:"):
            found = extract.bittorrent_tcp(payload)
            if found is not None:
                self._mark_p2p(flow, "bittorrent-" + found[0], found[1])
                return
        if forward and flow.name_source is None:
            first = payload[0]
            if first == 0x16:
                name = extract.tls_server_name(payload)
                if name:
                    flow.name, flow.name_source, flow.service = name, "sni", "tls"
                    flow.o_scan = 0
            elif 0x41 <= first <= 0x5A:
                host = extract.http_host(payload)
                if host:
                    flow.name, flow.name_source, flow.service = host, "http", "http"

    def _udp_payload(self, flow: Flow, payload: bytes, forward: bool) -> None:
        if forward:
            flow.o_scan -= 1
        else:
            flow.r_scan -= 1
        if flow.resp_port == 443 or flow.orig_port == 443:
            flow.service = "quic"
            return
        if flow.p2p is None or flow.p2p.startswith("peer:"):
            found = extract.bittorrent_udp(payload)
            if found is not None:
                self._mark_p2p(flow, "bittorrent-" + found[0], found[1])

    def _mark_p2p(self, flow: Flow, label: str, info_hash: str | None) -> None:
        flow.p2p = label
        flow.service = "bittorrent"
        if info_hash:
            flow.info_hash = info_hash
        flow.o_scan = flow.r_scan = 0
        self.p2p_peers[frozenset((flow.orig, flow.resp))] = label

    # --- DNS, DHCP, ARP -----------------------------------------------------------------

    def _dns(
        self, ts: float, src: bytes, sport: int, dst: bytes, dport: int, payload: bytes
    ) -> None:
        try:
            msg = extract.parse_dns(payload, netbios=sport == 137 or dport == 137)
        except (ValueError, IndexError, UnicodeError):
            self.counters.dns_errors += 1
            return
        if not msg.is_response:
            self.pending_dns[(src, sport, dst, dport, msg.trans_id)] = (ts, msg)
            return
        pending = self.pending_dns.pop((dst, dport, src, sport, msg.trans_id), None)
        client, client_port, server, server_port = dst, dport, src, sport
        if pending is None and dport in (137, 5353, 5355) and sport == dport:
            client, client_port, server, server_port = src, sport, dst, dport
        query_ts = pending[0] if pending else ts
        client_text = _ip_text(client)
        for address in msg.addresses:
            if msg.query:
                self.dns_names[(client_text, address)] = msg.query
                self.dns_any[address] = msg.query
        self._emit_dns(
            query_ts,
            client,
            client_port,
            server,
            server_port,
            msg,
            rtt=ts - pending[0] if pending else None,
        )

    def _emit_dns(
        self,
        ts: float,
        client: bytes,
        client_port: int,
        server: bytes,
        server_port: int,
        msg: extract.DnsMessage,
        *,
        rtt: float | None,
    ) -> None:
        client_text = _ip_text(client)
        mac, _src, device_id, person_id = self.attributor.who(client_text, ts)
        self.counters.dns += 1
        self.sink(
            "dns",
            {
                "site_code": self.site_code,
                "queried_at": _utc(ts),
                "client_ip": client_text,
                "client_port": client_port,
                "server_ip": _ip_text(server),
                "server_port": server_port,
                "trans_id": msg.trans_id,
                "query": msg.query,
                "qtype": msg.qtype,
                "qtype_name": extract.DNS_TYPES.get(msg.qtype or -1),
                "rcode": msg.rcode if msg.is_response else None,
                "rcode_name": extract.RCODES.get(msg.rcode) if msg.is_response else None,
                "rtt": rtt,
                "answers": msg.answers,
                "ttls": msg.ttls,
                "mac": mac,
                "device_id": device_id,
                "person_id": person_id,
            },
        )

    def _dhcp(self, ts: float, payload: bytes) -> None:
        try:
            msg = extract.parse_dhcp(payload)
        except (ValueError, IndexError):
            self.counters.skipped_corrupt += 1
            return
        if msg is None:
            return
        self.counters.dhcp += 1
        is_lease = msg.msg_type == "ACK" and msg.assigned_addr is not None
        if is_lease and msg.assigned_addr is not None:
            self.attributor.learn(
                msg.assigned_addr,
                msg.mac,
                ts,
                "dhcp",
                until=ts + msg.lease_seconds if msg.lease_seconds else None,
            )
        self.sink(
            "bindings",
            {
                "site_code": self.site_code,
                "seen_at": _utc(ts),
                "source": "dhcp",
                "msg_type": msg.msg_type,
                "ip": msg.assigned_addr or msg.client_addr,
                "mac": msg.mac,
                "hostname": msg.hostname,
                "lease_seconds": msg.lease_seconds,
                "requested_ip": msg.requested_addr,
                "is_lease": is_lease,
            },
        )

    def _arp(self, ts: float, sender_ip: bytes, sender_mac: bytes, opcode: int) -> None:
        self.counters.arp += 1
        if sender_ip == b"\x00\x00\x00\x00":
            return  # ARP probe: the sender has no address yet
        ip = _ip_text(sender_ip)
        mac = sender_mac.hex(":")
        if self.attributor.learn(ip, mac, ts, "arp"):
            self.sink(
                "bindings",
                {
                    "site_code": self.site_code,
                    "seen_at": _utc(ts),
                    "source": "arp",
                    "msg_type": "reply" if opcode == 2 else "request",
                    "ip": ip,
                    "mac": mac,
                    "hostname": None,
                    "lease_seconds": None,
                    "requested_ip": None,
                    "is_lease": False,
                },
            )

    # --- flow end, visits, alerts -------------------------------------------------------

    def _close(self, flow: Flow) -> None:
        flow.done = True
        self._emit_flow(flow)

    def _forget(self, flow: Flow) -> None:
        self.flows.pop((flow.orig, flow.orig_port, flow.resp, flow.resp_port, flow.proto), None)
        self.flows.pop((flow.resp, flow.resp_port, flow.orig, flow.orig_port, flow.proto), None)

    def _emit_flow(self, flow: Flow) -> None:
        orig = _ip_text(flow.orig)
        resp = _ip_text(flow.resp)
        who = self.attributor.who(orig, flow.first)
        client, server = orig, resp
        if who[0] is None:
            other = self.attributor.who(resp, flow.first)
            if other[0] is not None:
                who, client, server = other, resp, orig
        mac, mac_source, device_id, person_id = who
        if flow.name is None:
            name = self.dns_names.get((client, server)) or self.dns_names.get((server, client))
            if name is None:
                name = self.dns_any.get(server)
            if name is not None:
                flow.name, flow.name_source = name, "dns"
        self.sink(
            "flows",
            {
                "site_code": self.site_code,
                "started_at": _utc(flow.first),
                "ended_at": _utc(flow.last),
                "duration": round(flow.last - flow.first, 6),
                "proto": {6: "tcp", 17: "udp"}.get(flow.proto, str(flow.proto)),
                "orig_ip": orig,
                "orig_port": flow.orig_port,
                "resp_ip": resp,
                "resp_port": flow.resp_port,
                "vlan": flow.vlan or None,
                "orig_packets": flow.o_pkts,
                "orig_bytes": flow.o_bytes,
                "resp_packets": flow.r_pkts,
                "resp_bytes": flow.r_bytes,
                "end_reason": flow.end_reason,
                "service": flow.service,
                "server_name": flow.name,
                "name_source": flow.name_source,
                "p2p": flow.p2p,
                "info_hash": flow.info_hash,
                "client_ip": client,
                "mac": mac,
                "mac_source": mac_source,
                "device_id": device_id,
                "person_id": person_id,
            },
        )
        up, down = (flow.o_bytes, flow.r_bytes) if client == orig else (flow.r_bytes, flow.o_bytes)
        who3 = (mac, device_id, person_id)
        if flow.p2p is not None:
            self._p2p_alert(flow, client, server, who3)
        if flow.name is not None and flow.service != "dns":
            self._visit(flow, client, who3, up, down)

    def _visit(
        self,
        flow: Flow,
        client: str,
        who: tuple[str | None, int | None, int | None],
        up: int,
        down: int,
    ) -> None:
        assert flow.name is not None
        site = flow.name.lower().removeprefix("www.")
        key = (who[0] or client, site)
        visit = self.visits.get(key)
        if visit is not None and flow.first - visit.end > self.visit_idle_gap:
            self._emit_visit(key, visit)
            visit = None
        if visit is None:
            visit = Visit(flow.first, flow.last, client, who)
            self.visits[key] = visit
            match = self.categories.match(site)
            if match is not None:
                visit.category = match[0]
                self._alert(
                    flow.first,
                    "category",
                    match[0],
                    match[1],
                    client,
                    who,
                    f"visit to {site} ({flow.name_source})",
                )
        visit.end = max(visit.end, flow.last)
        visit.flows += 1
        visit.bytes_up += up
        visit.bytes_down += down

    def _emit_visit(self, key: tuple[str, str], visit: Visit) -> None:
        self.visits.pop(key, None)
        self.counters.visits += 1
        self.sink(
            "visits",
            {
                "site_code": self.site_code,
                "started_at": _utc(visit.start),
                "ended_at": _utc(visit.end),
                "duration": round(visit.end - visit.start, 6),
                "server_name": key[1],
                "client_ip": visit.client,
                "mac": visit.who[0],
                "device_id": visit.who[1],
                "person_id": visit.who[2],
                "flows": visit.flows,
                "bytes_up": visit.bytes_up,
                "bytes_down": visit.bytes_down,
                "category": visit.category,
            },
        )

    def _p2p_alert(
        self, flow: Flow, client: str, server: str, who: tuple[str | None, int | None, int | None]
    ) -> None:
        holder = who[0] or client
        last = self.p2p_alerted.get(holder)
        if last is not None and flow.first - last < 3600:
            return  # one P2P alert per device per hour; the flows carry the detail
        self.p2p_alerted[holder] = flow.first
        evidence = f"{flow.p2p} with {server}"
        if flow.info_hash:
            evidence += f" info_hash={flow.info_hash}"
        self._alert(flow.first, "p2p", "peer-to-peer", self.p2p_severity, client, who, evidence)

    def _alert(
        self,
        ts: float,
        kind: str,
        category: str,
        severity: str,
        client: str,
        who: tuple[str | None, int | None, int | None],
        evidence: str,
    ) -> None:
        self.counters.alerts += 1
        self.sink(
            "alerts",
            {
                "site_code": self.site_code,
                "raised_at": _utc(ts),
                "kind": kind,
                "category": category,
                "severity": severity,
                "client_ip": client,
                "mac": who[0],
                "device_id": who[1],
                "person_id": who[2],
                "evidence": evidence[:512],
            },
        )

    # --- housekeeping -------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Expire idle flows, unanswered DNS queries, stale fragments and finished visits."""
        self._next_tick = now + 1.0
        stale = [
            flow
            for flow in self.flows.values()
            if now - flow.last
            > (5.0 if flow.done else _TCP_IDLE if flow.proto == parser.PROTO_TCP else _UDP_IDLE)
        ]
        for flow in stale:
            if not flow.done:
                if flow.end_reason == "open":
                    flow.end_reason = "idle"
                self._close(flow)
            self._forget(flow)
        for key, (ts, msg) in list(self.pending_dns.items()):
            if now - ts > 10.0:
                del self.pending_dns[key]
                self._emit_dns(ts, key[0], key[1], key[2], key[3], msg, rtt=None)
        self.frags.expire(now)
        for site_key, visit in list(self.visits.items()):
            if now - visit.end > self.visit_idle_gap:
                self._emit_visit(site_key, visit)

    def finish(self) -> None:
        """End of capture: every open flow, query and visit is written as it stands."""
        for flow in list(dict.fromkeys(self.flows.values())):
            if not flow.done:
                self._close(flow)
            self._forget(flow)
        for key, (ts, msg) in list(self.pending_dns.items()):
            self._emit_dns(ts, key[0], key[1], key[2], key[3], msg, rtt=None)
        self.pending_dns.clear()
        for site_key, visit in list(self.visits.items()):
            self._emit_visit(site_key, visit)
        self.counters.extra["fragment_timeouts"] = self.frags.timeouts
