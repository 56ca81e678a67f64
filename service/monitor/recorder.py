"""The monitor's second half: from what the engine saw (finished flows, DNS transactions, DHCP
leases, ARP) to the rows it records. It names flows (SNI or Host from the engine, else the DNS
answer that resolved the server for that client), attributes them to a device and person
(attribution.py), groups them into visits and raises alerts.

Why a separate half: `schoolgate monitor run` runs it in the writer process, beside the
database inserts, fed by the engine through `Recording` in event batches, so the capture loop
only tracks flows and both cores work (bench/monitor_pcap.py). In tests and anywhere else the
engine calls it directly; either way it sees the same calls in the same order.
"""

from __future__ import annotations

from typing import Protocol

from service.monitor import extract, parser
from service.monitor.attribution import Attributor, Who
from service.monitor.bypass import BYPASS_CATEGORY, BypassDetector, Finding
from service.monitor.categories import CategoryList
from service.monitor.records import Counters, Due, Sink

_ip_text = extract.address_text
_TEXT = extract.ADDRESS_TEXT  # its cache, read first on the per-flow path
_PROTO_NAMES = {parser.PROTO_TCP: "tcp", parser.PROTO_UDP: "udp"}
_NAME_REFRESH = 600.0  # seconds between two rows for the same device name (see local_name)

_NO_DHCP_DETAILS = (None, None, None, None, None, None, None, None)

# A finished flow as the engine hands it over: (first, last, proto, orig address bytes,
# orig port, resp address bytes, resp port, vlan, orig packets, orig bytes, resp packets,
# resp bytes, end reason, service, server name, name source, version, alpn, p2p label,
# info_hash).
FlowRecord = tuple[
    float,
    float,
    int,
    bytes,
    int,
    bytes,
    int,
    int,
    int,
    int,
    int,
    int,
    str,
    "str | None",
    "str | None",
    "str | None",
    "str | None",
    "str | None",
    "str | None",
    "str | None",
]
Who3 = tuple[str | None, int | None, int | None]  # (mac, device id, person id)
# What else a DHCP message says, as the engine hands it over: (server id, vendor class,
# relay agent circuit id, remote id, relay address, domain, message, transaction id).
DhcpDetails = tuple[
    "str | None",
    "str | None",
    "str | None",
    "str | None",
    "str | None",
    "str | None",
    "str | None",
    int,
]


class RecorderCalls(Protocol):
    """What the engine calls, always by position: a `Recorder` itself, or
    `recording.Recording`, which carries the calls to a recorder in the writer process."""

    def flow(self, record: FlowRecord, /) -> None: ...

    def dns(
        self,
        ts: float,
        client: bytes,
        client_port: int,
        server: bytes,
        server_port: int,
        trans_id: int,
        query: str | None,
        qtype: int | None,
        rcode: int | None,
        answers: list[str],
        ttls: list[int],
        addresses: list[str],
        rtt: float | None,
        /,
    ) -> None: ...

    def dhcp(
        self,
        ts: float,
        msg_type: str,
        mac: str,
        ip: str | None,
        is_lease: bool,
        hostname: str | None,
        lease_seconds: int | None,
        requested_ip: str | None,
        details: DhcpDetails,
        /,
    ) -> None: ...

    def arp(self, ts: float, sender_ip: bytes, sender_mac: bytes, opcode: int, /) -> None: ...

    def local_name(
        self,
        ts: float,
        address: bytes,
        sender: bytes,
        sender_mac: bytes,
        name: str,
        source: str,
        /,
    ) -> None: ...

    def http_host(self, ts: float, client: bytes, host: str, /) -> None: ...

    def tick(self, now: float, /) -> None: ...

    def finish(self) -> None: ...

    def evidence(self, ts: float, record: FlowRecord, /) -> None: ...


class Visit:
    __slots__ = (
        "bytes_down",
        "bytes_up",
        "category",
        "client",
        "end",
        "flows",
        "key",
        "open",
        "seq",
        "start",
        "who",
    )

    def __init__(self, start: float, end: float, client: str, who: Who3) -> None:
        self.start = start
        self.end = end
        self.client = client
        self.who = who
        self.flows = 0
        self.bytes_up = 0
        self.bytes_down = 0
        self.category: str | None = None
        self.seq = 0
        self.key: tuple[str, str] = ("", "")
        self.open = True


class Recorder:
    """Rows to `sink` from the engine's calls (see RecorderCalls). `counters` gets the dns,
    visits and alerts counts."""

    def __init__(
        self,
        sink: Sink,
        *,
        site_code: str | None = None,
        attributor: Attributor | None = None,
        categories: CategoryList | None = None,
        visit_idle_gap: float = 300.0,
        p2p_severity: str = "weekly",
        counters: Counters | None = None,
        bypass_alerts: bool = True,
        dns_tunnel_allow: tuple[str, ...] = (),
    ) -> None:
        self.sink = sink
        self.site_code = site_code
        self.attributor = attributor or Attributor()
        self.categories = categories or CategoryList()
        self.visit_idle_gap = visit_idle_gap
        self.p2p_severity = p2p_severity
        self.counters = counters or Counters()
        # (client ip, server ip) -> name from a DNS answer, and server ip -> name as a fallback.
        self.dns_names: dict[tuple[str, str], str] = {}
        self.dns_any: dict[str, str] = {}
        self.visits: dict[tuple[str, str], Visit] = {}
        self._visits_due = Due()
        self._visit_seq = 0
        self.p2p_alerted: dict[str, float] = {}
        # Bypass alerts (bypass.py), on unless the site's policy says `bypass_alerts = false`.
        # `dns_tunnel_allow`: the policy's own additions to dns_allow.txt.
        self.bypass = (
            BypassDetector(self.categories.bypass, dns_tunnel_allow) if bypass_alerts else None
        )
        self.bypass_alerted: dict[tuple[str, str], float] = {}
        # Flows alerted on by their evidence (`evidence`), by (orig, orig port, resp, resp
        # port, protocol, first): their end raises no second alert.
        self.bypass_early: set[tuple[bytes, int, bytes, int, int, float]] = set()
        # (mac, name, source, ip) -> when last written: a name is written again at most every
        # _NAME_REFRESH seconds (devices announce every few seconds; the row keeps last seen).
        self.names_written: dict[tuple[str, str, str, str | None], float] = {}

    # --- DNS, DHCP, ARP -----------------------------------------------------------------

    def dns(
        self,
        ts: float,
        client: bytes,
        client_port: int,
        server: bytes,
        server_port: int,
        trans_id: int,
        query: str | None,
        qtype: int | None,
        rcode: int | None,
        answers: list[str],
        ttls: list[int],
        addresses: list[str],
        rtt: float | None,
    ) -> None:
        """One DNS transaction (`rcode` None: a query that had no answer); `addresses` are the
        A/AAAA answers, which name later flows from this client to those servers."""
        client_text = _ip_text(client)
        if query:
            for address in addresses:
                self.dns_names[(client_text, address)] = query
                self.dns_any[address] = query
        mac, _source, device_id, person_id = self.attributor.who(client_text, ts)
        self.counters.dns += 1
        if self.bypass is not None and query:
            finding = self.bypass.dns(ts, client_text, server_port, query, qtype)
            if finding is not None:
                self._bypass_alert(ts, finding, client_text, (mac, device_id, person_id))
        self.sink(
            "dns",
            (
                self.site_code,
                ts,
                client_text,
                client_port,
                _ip_text(server),
                server_port,
                trans_id,
                query,
                qtype,
                extract.qtype_name(qtype, netbios=server_port == 137),
                rcode,
                None if rcode is None else extract.RCODES.get(rcode),
                rtt,
                answers,
                ttls,
                mac,
                device_id,
                person_id,
            ),
        )

    def dhcp(
        self,
        ts: float,
        msg_type: str,
        mac: str,
        ip: str | None,
        is_lease: bool,
        hostname: str | None,
        lease_seconds: int | None,
        requested_ip: str | None,
        details: DhcpDetails,
    ) -> None:
        """One DHCP message. An ACK with an address is a lease (until its lease time; a
        renewal extends it); a RELEASE ends the client's lease now; an INFORM shows an address
        the client configured itself, which binds like an ARP (no lease, no end)."""
        if ip is not None:
            if is_lease:
                self.attributor.learn(
                    ip, mac, ts, "dhcp", until=ts + lease_seconds if lease_seconds else None
                )
            elif msg_type == "RELEASE":
                self.attributor.release(ip, mac, ts)
            elif msg_type == "INFORM":
                self.attributor.learn(ip, mac, ts, "arp")
        self.sink(
            "bindings",
            (
                self.site_code,
                ts,
                "dhcp",
                msg_type,
                ip,
                mac,
                hostname,
                lease_seconds,
                requested_ip,
                is_lease,
                *details,
            ),
        )
        if hostname:
            self._device_name(ts, mac, ip or requested_ip, hostname, "dhcp")

    def local_name(
        self,
        ts: float,
        address: bytes,
        sender: bytes,
        sender_mac: bytes,
        name: str,
        source: str,
    ) -> None:
        """A name a device announced (mDNS, LLMNR, NetBIOS) for `address`. Whose it is: the
        sender's frame MAC when it announced its own address (these protocols stay on the
        local link), else whoever held `address` then (attribution: a NetBIOS server answers
        for other machines, a sleep proxy for sleeping ones). An mDNS host lists all its
        addresses (privacy IPv6 ones too): one nobody else is known to hold is the sender's.
        Unattributable: counted and dropped."""
        ip = _ip_text(address)
        mac: str | None = None
        if address != sender:
            mac = self.attributor.who(ip, ts)[0]
        if mac is None and len(sender_mac) == 6 and (address == sender or source == "mdns"):
            mac = sender_mac.hex(":")
        if mac is None:
            self.counters.extra["names_without_mac"] = (
                self.counters.extra.get("names_without_mac", 0) + 1
            )
            return
        self._device_name(ts, mac, ip, name, source)

    def _device_name(self, ts: float, mac: str, ip: str | None, name: str, source: str) -> None:
        name = name.strip()[:255]
        if not name or not name.isprintable():
            return
        key = (mac, name, source, ip)
        last = self.names_written.get(key)
        if last is not None and 0 <= ts - last < _NAME_REFRESH:
            return
        if len(self.names_written) > 100_000:
            self.names_written.clear()
        self.names_written[key] = ts
        self.sink("names", (self.site_code, ts, ts, mac, ip, name, source))

    def arp(self, ts: float, sender_ip: bytes, sender_mac: bytes, opcode: int) -> None:
        ip = _ip_text(sender_ip)
        mac = sender_mac.hex(":")
        if self.attributor.learn(ip, mac, ts, "arp"):
            self.sink(
                "bindings",
                (
                    self.site_code,
                    ts,
                    "arp",
                    "reply" if opcode == 2 else "request",
                    ip,
                    mac,
                    None,
                    None,
                    None,
                    False,
                    *_NO_DHCP_DETAILS,
                ),
            )

    # --- flows, visits, alerts ----------------------------------------------------------

    def flow(self, record: FlowRecord) -> None:
        (
            first,
            last,
            proto,
            orig_raw,
            orig_port,
            resp_raw,
            resp_port,
            vlan,
            o_pkts,
            o_bytes,
            r_pkts,
            r_bytes,
            end_reason,
            service,
            name,
            name_source,
            version,
            alpn,
            p2p,
            info_hash,
        ) = record
        orig, resp, client, server, who, name, name_source = self._who_and_name(
            orig_raw, resp_raw, first, name, name_source
        )
        mac, mac_source, device_id, person_id = who
        self.sink(
            "flows",
            (
                self.site_code,
                first,
                last,
                round(last - first, 6),
                _PROTO_NAMES.get(proto) or str(proto),
                orig,
                orig_port,
                resp,
                resp_port,
                vlan or None,
                o_pkts,
                o_bytes,
                r_pkts,
                r_bytes,
                end_reason,
                service,
                name,
                name_source,
                version,
                alpn,
                p2p,
                info_hash,
                client,
                mac,
                mac_source,
                device_id,
                person_id,
            ),
        )
        up, down = (o_bytes, r_bytes) if client == orig else (r_bytes, o_bytes)
        who3 = (mac, device_id, person_id)
        if p2p is not None:
            self._p2p_alert(first, p2p, info_hash, client, server, who3)
        if self.bypass is not None and not (
            self.bypass_early
            and self._early_done((orig_raw, orig_port, resp_raw, resp_port, proto, first))
        ):
            finding = self._bypass_finding(
                proto, client, server, resp, orig_port, resp_port, service, name, name_source
            )
            if finding is not None:
                self._bypass_alert(first, finding, client, who3)
        if name is not None and service != "dns":
            self._visit(first, last, name, name_source, client, who3, up, down)

    def http_host(self, ts: float, client: bytes, host: str) -> None:
        """A later request on one HTTP connection naming another host than the connection's
        first (a forward proxy's keepalive connection): a visit of its own, as a flow named
        `host` would make, with no bytes (the connection's bytes stay with its first host,
        which names the flow)."""
        orig = _TEXT.get(client) or _ip_text(client)
        mac, _source, device_id, person_id = self.attributor.who(orig, ts)
        self._visit(ts, ts, host, "http", orig, (mac, device_id, person_id), 0, 0)

    def _visit(
        self,
        first: float,
        last: float,
        name: str,
        name_source: str | None,
        client: str,
        who: Who3,
        up: int,
        down: int,
    ) -> None:
        site = name.lower().removeprefix("www.")
        key = (who[0] or client, site)
        visit = self.visits.get(key)
        if visit is not None and first - visit.end > self.visit_idle_gap:
            self._emit_visit(key, visit)
            visit = None
        if visit is None:
            visit = Visit(first, last, client, who)
            visit.key = key
            visit.seq = self._visit_seq
            self._visit_seq += 1
            self.visits[key] = visit
            self._visits_due.add(visit, visit.end + self.visit_idle_gap)
            match = self.categories.match(site)
            if match is not None:
                visit.category = match[0]
                self._alert(
                    first,
                    "category",
                    match[0],
                    match[1],
                    client,
                    who,
                    f"visit to {site} ({name_source})",
                )
        visit.end = max(visit.end, last)
        visit.flows += 1
        visit.bytes_up += up
        visit.bytes_down += down

    def _emit_visit(self, key: tuple[str, str], visit: Visit) -> None:
        self.visits.pop(key, None)
        visit.open = False
        self.counters.visits += 1
        self.sink(
            "visits",
            (
                self.site_code,
                visit.start,
                visit.end,
                round(visit.end - visit.start, 6),
                key[1],
                visit.client,
                visit.who[0],
                visit.who[1],
                visit.who[2],
                visit.flows,
                visit.bytes_up,
                visit.bytes_down,
                visit.category,
            ),
        )

    def _p2p_alert(
        self,
        first: float,
        label: str,
        info_hash: str | None,
        client: str,
        server: str,
        who: Who3,
    ) -> None:
        holder = who[0] or client
        last = self.p2p_alerted.get(holder)
        if last is not None and first - last < 3600:
            return  # one P2P alert per device per hour; the flows carry the detail
        self.p2p_alerted[holder] = first
        evidence = f"{label} with {server}"
        if info_hash:
            evidence += f" info_hash={info_hash}"
        self._alert(first, "p2p", "peer-to-peer", self.p2p_severity, client, who, evidence)

    def _bypass_alert(self, ts: float, finding: Finding, client: str, who: Who3) -> None:
        kind = finding.kind.value
        key = (who[0] or client, kind)
        last = self.bypass_alerted.get(key)
        if last is not None and abs(ts - last) < 3600:
            return  # one alert per device and kind an hour; the flows and DNS rows carry the rest
        self.bypass_alerted[key] = ts
        self._alert(ts, kind, BYPASS_CATEGORY, "weekly", client, who, finding.evidence)

    def _who_and_name(
        self,
        orig_raw: bytes,
        resp_raw: bytes,
        ts: float,
        name: str | None,
        name_source: str | None,
    ) -> tuple[str, str, str, str, Who, str | None, str | None]:
        """A flow's addresses as text; its client (the end a device of ours held at `ts`,
        the originator if neither) and server; who that was; and its name, from the DNS
        answers seen when the packets named none."""
        orig = _TEXT.get(orig_raw) or _ip_text(orig_raw)
        resp = _TEXT.get(resp_raw) or _ip_text(resp_raw)
        who = self.attributor.who(orig, ts)
        client, server = orig, resp
        if who[0] is None:
            other = self.attributor.who(resp, ts)
            if other[0] is not None:
                who, client, server = other, resp, orig
        if name is None:
            name = self.dns_names.get((client, server)) or self.dns_names.get((server, client))
            if name is None:
                name = self.dns_any.get(server)
            if name is not None:
                name_source = "dns"
        return orig, resp, client, server, who, name, name_source

    def _bypass_finding(
        self,
        proto: int,
        client: str,
        server: str,
        resp: str,
        orig_port: int,
        resp_port: int,
        service: str | None,
        name: str | None,
        name_source: str | None,
    ) -> Finding | None:
        """What the bypass detector makes of a flow, seen from its client (the server's port
        is the responder's unless the client is the responder)."""
        assert self.bypass is not None
        return self.bypass.flow(
            _PROTO_NAMES.get(proto) or str(proto),
            client,
            server,
            resp_port if server == resp else orig_port,
            service,
            name,
            name_source,
        )

    def evidence(self, ts: float, record: FlowRecord) -> None:
        """A flow that may bypass the filter, as the packet at `ts` shows it (the engine's
        `_evidence`: a VPN signature, CONNECT, DoT, a listed address or name): decided and
        alerted now, with that packet's time, so a tunnel up all day is seen within seconds;
        the flow's end (`flow`) then raises no second alert for it."""
        if self.bypass is None:
            return
        first, _last, proto, orig_raw, orig_port, resp_raw, resp_port = record[:7]
        service, name, name_source = record[13:16]
        _orig, resp, client, server, who, name, name_source = self._who_and_name(
            orig_raw, resp_raw, ts, name, name_source
        )
        finding = self._bypass_finding(
            proto, client, server, resp, orig_port, resp_port, service, name, name_source
        )
        if finding is None:
            return  # the flow's end looks again, with all it learnt by then
        self.bypass_early.add((orig_raw, orig_port, resp_raw, resp_port, proto, first))
        self._bypass_alert(ts, finding, client, (who[0], who[2], who[3]))

    def _early_done(self, key: tuple[bytes, int, bytes, int, int, float]) -> bool:
        """Whether the flow was alerted on by its evidence (and forget it: it has ended)."""
        if key in self.bypass_early:
            self.bypass_early.discard(key)
            return True
        return False

    def _alert(
        self,
        ts: float,
        kind: str,
        category: str,
        severity: str,
        client: str,
        who: Who3,
        evidence: str,
    ) -> None:
        self.counters.alerts += 1
        self.sink(
            "alerts",
            (
                self.site_code,
                ts,
                kind,
                category,
                severity,
                client,
                who[0],
                who[1],
                who[2],
                evidence[:512],
            ),
        )

    # --- housekeeping -------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Write out the visits idle for longer than the gap, in the order they began."""
        if self.bypass is not None:
            self.bypass.expire(now)
        visits = self._visits_due.pop_due(now)
        if visits:
            gap = self.visit_idle_gap
            waiting = {visit.seq: visit for visit in visits if visit.open}
            for seq in sorted(waiting):
                visit = waiting[seq]
                if now - visit.end > gap:
                    self._emit_visit(visit.key, visit)
                else:
                    self._visits_due.add(visit, visit.end + gap)

    def finish(self) -> None:
        """End of capture: every open visit is written as it stands."""
        for site_key, visit in list(self.visits.items()):
            self._emit_visit(site_key, visit)


# The calls by number, as recording.Recording sends them (writer.record_and_write).
CALLS = (
    "flow",
    "dns",
    "dhcp",
    "arp",
    "tick",
    "finish",
    "local_name",
    "http_host",
    "evidence",
)
