"""The monitor's first half: flow table, DNS transactions, fragments and P2P peers.

`Monitor.packet(ts, frame)` is the per-packet hot path (guarded by `bench/monitor_pcap.py`): it
parses a few header fields from raw bytes, updates one flow, and only looks at payload bytes for
the first packets of a flow or on the few ports that carry DNS/DHCP. What it finds (finished
flows, DNS transactions, DHCP and ARP) goes to the second half, the recorder (recorder.py), which
names and attributes it, builds visits and alerts and hands rows (records.FIELDS, times as float
epoch seconds) to a sink. The engine itself never touches the database.
"""

from __future__ import annotations

import ipaddress
from collections import deque
from collections.abc import Callable

from service.monitor import bypass, extract, parser, quic
from service.monitor.attribution import Attributor
from service.monitor.categories import CategoryList
from service.monitor.recorder import FlowRecord, Recorder, RecorderCalls
from service.monitor.records import Counters, Due, Sink
from service.monitor.stream import Stream, seq_diff

_PAYLOAD_PACKETS = 4  # how many payload packets per direction are searched for names/P2P
_TCP_IDLE = 300.0
_UDP_IDLE = 60.0
_DNS_TIMEOUT = 10.0  # seconds after which a query with no answer is written as unanswered
_DNS_PORTS = frozenset({53, 137, 5353, 5355})
_LOCAL_NAME_PORTS = frozenset({137, 5353, 5355})  # where devices announce their own names
_DNS_TCP_LIMIT = 65536  # bytes of an unfinished DNS-over-TCP message waited for, per direction
_ALWAYS = 1 << 62  # Flow.o_scan/r_scan of a direction read as a stream: every payload is parsed
_HEAD_LIMIT = 8192  # bytes of an HTTP request header or TLS ClientHello waited for
_BODY_LIMIT = 65536  # an HTTP request body longer than this ends the reading of the connection
_MORE_HOSTS = 16  # other hosts recorded per HTTP connection (a proxy's keepalive connection)
# What a Stream is read as (Stream.kind).
_S_DNS = 1
_S_HTTP = 2
_S_TLS = 3
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


_LOCAL_SOURCES = {137: "netbios", 5353: "mdns", 5355: "llmnr"}

# A new flow that looks like a bypass attempt by its first packet alone (bypass.py decides):
# DoT/DoQ (853), PPTP (1723 over TCP), IP protocols that are tunnels (GRE 47, ESP 50).
_EVIDENCE_PORT = bypass.DOT_PORT
_PPTP_PORT = bypass.PPTP_PORT
_TUNNEL_PROTOCOLS = frozenset(bypass.TUNNEL_PROTOCOLS)
_EVIDENCE_DUE, _EVIDENCE_SENT = 1, 2
_NAME_CACHE = 100_000

_DNS = 1  # Flow.kind of a UDP flow on a DNS port (every payload is parsed as DNS)
_DHCP = 2  # Flow.kind of a UDP flow between DHCP ports
_ETH_IPV4 = parser.ETH_IPV4.unpack_from
_ETH_IPV4_MIN = parser.ETH_IPV4_MIN
_MAX_FRAME = parser.MAX_FRAME
_TCP = parser.PROTO_TCP
_UDP = parser.PROTO_UDP
_ETHERNET = parser.LINK_ETHERNET
_KEY_AT = parser.ETH_IPV4_KEY
_KEY_END = parser.ETH_IPV4_KEY + 12
_SEQ = parser.TCP_SEQ.unpack_from
_SEQ_AT = parser.ETH_IPV4_SEQ


def _pair(a: bytes, b: bytes) -> bytes:
    """Two addresses in either order as one key (P2P peers)."""
    return a + b if a <= b else b + a


class Flow:
    __slots__ = (
        "alpn",
        "done",
        "end_reason",
        "evidence",
        "first",
        "info_hash",
        "isn",
        "key",
        "kind",
        "last",
        "name",
        "name_source",
        "o_bytes",
        "o_pkts",
        "o_scan",
        "o_stream",
        "orig",
        "orig_port",
        "p2p",
        "proto",
        "quic",
        "r_bytes",
        "r_pkts",
        "r_scan",
        "r_stream",
        "resp",
        "resp_port",
        "rkey",
        "seq",
        "service",
        "table",
        "tcp_fin",
        "timeout",
        "version",
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
        self.version: str | None = None  # "quic-v1", "tls1.3"... from the client's hello
        self.alpn: str | None = None
        self.quic: quic.QuicFlow | None = None  # reassembly until the ClientHello is read
        self.service: str | None = _SERVICE_BY_PORT.get(resp_port)
        self.vlan = vlan
        self.kind = 0  # _DNS or _DHCP for UDP flows on those ports
        self.timeout = _TCP_IDLE if proto == parser.PROTO_TCP else _UDP_IDLE
        # Set by Monitor._new_flow: creation order, the flow table and both directions' keys
        # (`table` is None once the flow has left the table).
        self.seq = 0
        self.table: dict[bytes, tuple[Flow, bool]] | None = None
        self.key = self.rkey = b""
        # Each direction's payload in sequence order, for the flows read beyond one segment
        # (DNS over TCP, HTTP requests, a long TLS ClientHello): see stream.py.
        self.o_stream: Stream | None = None
        self.r_stream: Stream | None = None
        # The first payload byte's sequence number each way, from the SYN and SYN-ACK.
        self.isn: list[int | None] | None = None
        # Bypass evidence (Monitor._evidence): 0 none seen, _EVIDENCE_DUE the first packet
        # showed some (a tunnel protocol, DoT/PPTP port, listed address), _EVIDENCE_SENT sent.
        self.evidence = 0


class Monitor:
    """Feed frames with `packet()` (or the faster `handler(linktype)` callables), call `tick()`
    now and then and `finish()` at the end. Rows go to `sink` through a `Recorder` made from
    the keyword arguments, unless `recorder` is given (writer.Recording: the recorder then runs
    in the writer process)."""

    def __init__(
        self,
        sink: Sink | None = None,
        *,
        site_code: str | None = None,
        attributor: Attributor | None = None,
        categories: CategoryList | None = None,
        visit_idle_gap: float = 300.0,
        p2p_severity: str = "weekly",
        recorder: RecorderCalls | None = None,
        bypass_lists: bypass.BypassLists | None = None,
    ) -> None:
        self.counters = Counters()
        if bypass_lists is None and categories is not None:
            bypass_lists = categories.bypass
        self._set_bypass_lists(bypass_lists)
        if recorder is None:
            if sink is None:
                raise TypeError("Monitor needs a sink or a recorder")
            recorder = Recorder(
                sink,
                site_code=site_code,
                attributor=attributor,
                categories=categories,
                visit_idle_gap=visit_idle_gap,
                p2p_severity=p2p_severity,
                counters=self.counters,
            )
        self.recorder = recorder
        # Flow tables, one per IP protocol: flow key (see parser.flow_key) -> (flow, whether
        # the key is the flow's originator direction). Each flow is under both directions' keys.
        self.tables: dict[int, dict[bytes, tuple[Flow, bool]]] = {
            parser.PROTO_TCP: {},
            parser.PROTO_UDP: {},
        }
        self._tcp = self.tables[parser.PROTO_TCP]
        self._udp = self.tables[parser.PROTO_UDP]
        self._flow_seq = 0
        # Idle expiry: flows filed under the whole second they may expire at, so a tick looks
        # only at those due instead of at every flow (see `tick`).
        self._flows_due = Due()
        self.frags = parser.Reassembler()
        self.pending_dns: dict[
            tuple[bytes, int, bytes, int, int], tuple[float, extract.DnsMessage]
        ] = {}
        # The unanswered queries' keys in the order they came, with their times: a tick pops
        # the expired ones off the front instead of copying every pending query each second.
        # An entry whose query was answered (or asked again) meanwhile is skipped.
        self._dns_due: deque[tuple[float, tuple[bytes, int, bytes, int, int]]] = deque()
        self.p2p_peers: dict[bytes, str] = {}  # _pair(a, b) -> label
        self.now = 0.0
        self._next_tick = 0.0

    def _set_bypass_lists(self, lists: bypass.BypassLists | None) -> None:
        """What the engine needs of the bypass lists to send a flow's evidence as its first
        packets show it (`_evidence`): listed addresses as packed bytes, networks as shifted
        integers, and the names (matched once per name, cached)."""
        self._bypass_lists = lists if lists is not None and lists.names else None
        self._listed_names: dict[str, bool] = {}
        listed: set[bytes] = set()
        networks: list[tuple[int, int, frozenset[int]]] = []
        if lists is not None:
            for address in lists.addresses:
                listed.add(ipaddress.ip_address(address).packed)
            for host, _port in lists.endpoints:
                listed.add(ipaddress.ip_address(host).packed)
            for version, by_length in lists.networks.items():
                size = 4 if version == 4 else 16
                for length, table in by_length.items():
                    shift = size * 8 - length
                    networks.append((size, shift, frozenset(n >> shift for n in table)))
        self._listed_addresses = frozenset(listed)
        self._listed_networks = networks

    def _listed(self, address: bytes) -> bool:
        if address in self._listed_addresses:
            return True
        if self._listed_networks:
            value = int.from_bytes(address, "big")
            size = len(address)
            for length, shift, prefixes in self._listed_networks:
                if length == size and value >> shift in prefixes:
                    return True
        return False

    def _listed_name(self, name: str) -> bool:
        lists = self._bypass_lists
        if lists is None:
            return False
        found = self._listed_names.get(name)
        if found is None:
            if len(self._listed_names) > _NAME_CACHE:
                self._listed_names.clear()
            found = self._listed_names[name] = lists.match_name(name) is not None
        return found

    # --- hot path -----------------------------------------------------------------------

    def handler(self, linktype: int) -> Callable[[float, parser.FrameBuffer, int, int], None]:
        """The fastest way in for frames of `linktype`: a callable taking (timestamp, buffer,
        start, end) with the frame at buffer[start:end] (capture.feed_file's handler)."""
        if linktype == parser.LINK_ETHERNET:
            return self._ether
        parsed = self._parsed

        def other(ts: float, buf: parser.FrameBuffer, start: int, end: int) -> None:
            parsed(ts, buf[start:end], linktype)

        return other

    def packet(self, ts: float, frame: bytes, linktype: int = parser.LINK_ETHERNET) -> None:
        """One captured frame. Bad bytes are counted and skipped, never raised."""
        if linktype == parser.LINK_ETHERNET:
            self._ether(ts, frame, 0, len(frame))
        else:
            self._parsed(ts, frame, linktype)

    def _ether(self, ts: float, buf: parser.FrameBuffer, start: int, end: int) -> None:
        """An Ethernet frame at buf[start:end]. Hot path (bench/monitor_pcap.py): untagged IPv4
        TCP/UDP is read with one unpack_from (parser.ETH_IPV4) and a packet of a known, open
        flow is settled here: one dict lookup on a slice of the header, counters, and only on
        FIN/RST or a payload still to be scanned a call out. Everything else (new flows, VLAN
        tags, IPv6, ARP, fragments, IP options, bad headers) goes through `parser.parse` and
        `_flow_packet`, which this must agree with (tests/monitor/test_fastpath.py)."""
        size = end - start
        if size < _ETH_IPV4_MIN or size > _MAX_FRAME:
            self._parsed(ts, buf[start:end], _ETHERNET)
            return
        etype, vihl, total, frag, proto, sport, dport, doff, flags = _ETH_IPV4(buf, start)
        if etype != 0x0800 or vihl != 0x45 or frag & 0x3FFF or total + 14 > size:
            self._parsed(ts, buf[start:end], _ETHERNET)
            return
        if proto == _TCP:
            hlen = (doff >> 2) & 0x3C
            if hlen < 20 or hlen + 20 > total:
                self._parsed(ts, buf[start:end], _ETHERNET)
                return
        elif proto != _UDP or total < 28:
            self._parsed(ts, buf[start:end], _ETHERNET)
            return
        counters = self.counters
        counters.packets += 1
        counters.bytes += size
        if ts > self.now:
            self.now = ts
            if ts >= self._next_tick:
                self.tick(ts)
        key = buf[start + _KEY_AT : start + _KEY_END]
        if proto == _TCP:
            entry = self._tcp.get(key)
            if entry is not None:
                flow, forward = entry
                if not flow.done:
                    # A packet of a known, open connection: as `_flow_packet`, inlined.
                    if ts < flow.last:
                        self._late(flow, ts)
                    flow.last = ts
                    if forward:
                        flow.o_pkts += 1
                        flow.o_bytes += total
                        if flags & 0x07:  # FIN, SYN or RST
                            self._tcp_flags(flow, flags, True, _SEQ(buf, start + _SEQ_AT)[0])
                        if total > hlen + 20 and flow.o_scan:
                            self._tcp_payload(
                                flow,
                                buf[start + 34 + hlen : start + 14 + total],
                                True,
                                _SEQ(buf, start + _SEQ_AT)[0],
                            )
                    else:
                        flow.r_pkts += 1
                        flow.r_bytes += total
                        if flags & 0x07:
                            self._tcp_flags(flow, flags, False, _SEQ(buf, start + _SEQ_AT)[0])
                        if total > hlen + 20 and flow.r_scan:
                            self._tcp_payload(
                                flow,
                                buf[start + 34 + hlen : start + 14 + total],
                                False,
                                _SEQ(buf, start + _SEQ_AT)[0],
                            )
                    return
            payload = buf[start + 34 + hlen : start + 14 + total]
            seq = _SEQ(buf, start + _SEQ_AT)[0]
        else:
            entry = self._udp.get(key)
            if entry is not None:
                # A packet of a known UDP flow (never `done` while in the table: only ticks
                # and finish() close them, and they take it out at once): as `_flow_packet`.
                flow, forward = entry
                if ts < flow.last:
                    self._late(flow, ts)
                flow.last = ts
                if forward:
                    flow.o_pkts += 1
                    flow.o_bytes += total
                else:
                    flow.r_pkts += 1
                    flow.r_bytes += total
                if total > 28:
                    kind = flow.kind
                    if kind == _DNS:
                        self._dns(
                            ts,
                            key[0:4],
                            sport,
                            key[4:8],
                            dport,
                            buf[start + 42 : start + 14 + total],
                            buf[start + 6 : start + 12],
                        )
                    elif kind == _DHCP:
                        self._dhcp(ts, buf[start + 42 : start + 14 + total])
                    elif flow.o_scan if forward else flow.r_scan:
                        self._udp_payload(flow, buf[start + 42 : start + 14 + total], forward)
                return
            payload = buf[start + 42 : start + 14 + total]
            flags = seq = 0
        src, dst = key[0:4], key[4:8]
        self._flow_packet(
            ts,
            proto,
            key,
            src,
            sport,
            dst,
            dport,
            flags,
            0,
            total,
            payload,
            buf[start + 6 : start + 12],
            seq,
        )

    def _parsed(self, ts: float, frame: bytes, linktype: int) -> None:
        """Any frame, through the full parser."""
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
        proto, src, dst, sport, dport, payload, ip_len, flags, src_mac, vlan, seq = pkt
        if proto == parser.ARP:
            self._arp(ts, src, src_mac, sport)
            return
        key = parser.flow_key(src, dst, sport, dport)
        self._flow_packet(
            ts, proto, key, src, sport, dst, dport, flags, vlan, ip_len, payload, src_mac, seq
        )

    def _flow_packet(
        self,
        ts: float,
        proto: int,
        key: bytes,
        src: bytes,
        sport: int,
        dst: bytes,
        dport: int,
        flags: int,
        vlan: int,
        ip_len: int,
        payload: bytes,
        src_mac: bytes = b"",
        seq: int = 0,
    ) -> None:
        """One IP packet of a flow, every case (the fast path in `_ether` is the common
        subset of this, kept in step with it)."""
        table = self.tables.get(proto)
        if table is None:
            table = self.tables[proto] = {}
        entry = table.get(key)
        if entry is None:
            flow, forward = self._new_flow(
                table, key, proto, src, sport, dst, dport, ts, flags, vlan
            )
        else:
            flow, forward = entry
            if flow.done:
                if proto != parser.PROTO_TCP or flags & 0x12 != 0x02:
                    return  # a late ACK or retransmission of a connection already written
                self._forget(flow)
                flow, forward = self._new_flow(
                    table, key, proto, src, sport, dst, dport, ts, flags, vlan
                )
        if ts < flow.last:
            self._late(flow, ts)
        flow.last = ts
        if forward:
            flow.o_pkts += 1
            flow.o_bytes += ip_len
        else:
            flow.r_pkts += 1
            flow.r_bytes += ip_len
        if proto == parser.PROTO_TCP:
            if flags & 0x07:  # FIN, SYN or RST
                self._tcp_flags(flow, flags, forward, seq)
            if payload and (flow.o_scan if forward else flow.r_scan):
                self._tcp_payload(flow, payload, forward, seq)
        elif proto == parser.PROTO_UDP and payload:
            if flow.kind == _DNS:
                self._dns(ts, src, sport, dst, dport, payload, src_mac)
            elif flow.kind == _DHCP:
                self._dhcp(ts, payload)
            elif flow.o_scan if forward else flow.r_scan:
                self._udp_payload(flow, payload, forward)
        if flow.evidence == _EVIDENCE_DUE:
            # Its first packet showed it (`_new_flow`); after the payload was read, so a
            # signature in it (WireGuard on a listed endpoint) is part of the evidence.
            self._evidence(flow)

    # --- per-flow work ------------------------------------------------------------------

    def _new_flow(
        self,
        table: dict[bytes, tuple[Flow, bool]],
        key: bytes,
        proto: int,
        src: bytes,
        sport: int,
        dst: bytes,
        dport: int,
        ts: float,
        flags: int,
        vlan: int,
    ) -> tuple[Flow, bool]:
        # A SYN-ACK seen first means we missed the SYN: the sender is the responder.
        if proto == parser.PROTO_TCP and flags & 0x12 == 0x12:
            flow = Flow(proto, dst, dport, src, sport, ts, vlan)
            forward = False
        else:
            flow = Flow(proto, src, sport, dst, dport, ts, vlan)
            forward = True
        if proto == parser.PROTO_UDP:
            if sport in _DNS_PORTS or dport in _DNS_PORTS:
                flow.kind = _DNS
            elif sport in _DHCP_PORTS and dport in _DHCP_PORTS:
                flow.kind = _DHCP
        peer_label = self.p2p_peers.get(_pair(src, dst)) if self.p2p_peers else None
        if peer_label is not None:
            flow.p2p = "peer:" + peer_label
        flow.seq = self._flow_seq
        self._flow_seq += 1
        flow.table = table
        flow.key = key
        rkey = flow.rkey = parser.flow_key(dst, src, dport, sport)
        if rkey == key:  # a packet to itself: every packet counts as the originator's
            table[key] = (flow, True)
            forward = True
        else:
            table[key] = (flow, forward)
            table[rkey] = (flow, not forward)
        self._flows_due.add(flow, ts + flow.timeout)
        self.counters.flows += 1
        if (
            proto in _TUNNEL_PROTOCOLS
            or flow.resp_port == _EVIDENCE_PORT
            or (flow.resp_port == _PPTP_PORT and proto == _TCP)
            or (
                (self._listed_addresses or self._listed_networks)
                and (self._listed(dst) or self._listed(src))
            )
        ):
            flow.evidence = _EVIDENCE_DUE
        return flow, forward

    def _late(self, flow: Flow, ts: float) -> None:
        """A packet older than the flow's last one (captures are not always in time order):
        the flow may now go idle sooner, so file it under the earlier time too."""
        self._flows_due.add(flow, ts + (5.0 if flow.done else flow.timeout))

    def _tcp_flags(self, flow: Flow, flags: int, forward: bool, seq: int) -> None:
        """A SYN notes where that direction's bytes start (a stream read later starts there,
        so even its first segment may arrive out of order); FIN and RST may end the flow."""
        if flags & 0x02:
            isn = flow.isn
            if isn is None:
                isn = flow.isn = [None, None]
            isn[0 if forward else 1] = (seq + 1) & 0xFFFFFFFF
        if flags & 0x05:
            self._tcp_end(flow, flags, forward)

    def _tcp_end(self, flow: Flow, flags: int, forward: bool) -> None:
        if flags & 0x04:
            flow.end_reason = "rst"
        else:
            flow.tcp_fin |= 1 if forward else 2
            if flow.tcp_fin != 3:
                return
            flow.end_reason = "fin"
        self._close(flow)
        self._flows_due.add(flow, flow.last + 5.0)  # kept 5 s for the last ACKs

    def _stream(self, flow: Flow, kind: int, forward: bool, seq: int | None) -> Stream:
        """Start reading one direction of `flow` as a stream (stream.py), from its SYN's
        sequence number when one was seen, else from its first segment's (`seq`: this
        segment's, or None for the other direction)."""
        isn = flow.isn[0 if forward else 1] if flow.isn is not None else None
        if isn is not None and seq is not None and not -65536 < seq_diff(seq, isn) < 65536:
            isn = None  # a SYN of another connection on the same ports: start here
        stream = Stream(kind, isn)
        if forward:
            flow.o_stream = stream
            flow.o_scan = _ALWAYS
        else:
            flow.r_stream = stream
            flow.r_scan = _ALWAYS
        return stream

    def _stop(self, flow: Flow, forward: bool, given_up: bool = False) -> None:
        """Stop reading one direction's stream; `given_up` counts it (too much out of order,
        or a header or message past its limit)."""
        if forward:
            flow.o_stream = None
            flow.o_scan = 0
        else:
            flow.r_stream = None
            flow.r_scan = 0
        if given_up:
            self.counters.tcp_streams_given_up += 1

    def _tcp_payload(self, flow: Flow, payload: bytes, forward: bool, seq: int) -> None:
        if forward:
            flow.o_scan -= 1
        else:
            flow.r_scan -= 1
        stream = flow.o_stream if forward else flow.r_stream
        if stream is None:
            if (flow.resp_port == 53 or flow.orig_port == 53) and flow.p2p is None:
                # DNS over TCP (port 53 only: 853 is TLS, 5353 is multicast over UDP): every
                # message of the connection is parsed, keepalive connections carry many.
                flow.service = "dns"
                self._stream(flow, _S_DNS, not forward, None)
                stream = self._stream(flow, _S_DNS, forward, seq)
            else:
                if flow.p2p is None or flow.p2p.startswith("peer:"):
                    found = extract.bittorrent_tcp(payload)
                    if found is not None:
                        self._mark_p2p(flow, "bittorrent-" + found[0], found[1])
                        return
                if not forward or flow.name_source is not None:
                    return
                first = payload[0]
                if first == 0x16:
                    hello = extract.tls_client_hello(payload)
                    if hello is not None and hello.server_name:
                        self._hello(flow, hello)
                        return
                    if (
                        hello is None
                        or len(payload) >= 5 + ((payload[3] << 8) | payload[4])
                        or flow.o_scan != _PAYLOAD_PACKETS - 1
                    ):
                        return  # a whole ClientHello without a name, or not its start
                    stream = self._stream(flow, _S_TLS, True, seq)  # cut short: read on
                elif 0x41 <= first <= 0x5A:
                    if extract.http_request(payload) is None:
                        return
                    stream = self._stream(flow, _S_HTTP, True, seq)
                elif first == 0 and bypass.tcp_label(payload) is not None:
                    flow.service = "openvpn"  # over TCP (bypass.py); the recorder alerts
                    flow.o_scan = flow.r_scan = 0
                    self._evidence(flow)
                    return
                else:
                    return
        data = stream.add(seq, payload)
        if data is None:
            self._stop(flow, forward, True)
        elif data:
            kind = stream.kind
            if kind == _S_DNS:
                self._dns_tcp(flow, stream, data, forward)
            elif kind == _S_HTTP:
                self._http_stream(flow, stream, data)
            else:
                self._tls_stream(flow, stream, data)

    def _hello(self, flow: Flow, hello: extract.ClientHello) -> None:
        flow.name, flow.name_source, flow.service = hello.server_name, "sni", "tls"
        flow.version, flow.alpn = hello.tls_version, hello.alpn
        flow.o_scan = 0
        name = hello.server_name
        if name and self._bypass_lists is not None and self._listed_name(name):
            self._evidence(flow)

    def _tls_stream(self, flow: Flow, stream: Stream, data: bytes) -> None:
        """A ClientHello longer than its first segment (post-quantum key shares make them
        2 KB and more): read once whole, or once _HEAD_LIMIT bytes of it are in."""
        data = stream.pending + data
        size = 5 + ((data[3] << 8) | data[4])
        if len(data) < size and len(data) < _HEAD_LIMIT:
            stream.pending = data
            return
        hello = extract.tls_client_hello(data[:size])
        self._stop(flow, True)
        if hello is not None and hello.server_name:
            self._hello(flow, hello)

    def _http_stream(self, flow: Flow, stream: Stream, data: bytes) -> None:
        """The requests of an HTTP/1 connection, keepalive and pipelined, each header in as
        many segments as it takes (up to _HEAD_LIMIT). The flow is named by the first request
        with a Host; a later request naming another host (a proxy's connection) is handed to
        the recorder as a visit of its own (`http_host`). Bodies are skipped by their
        Content-Length; a chunked or long body, a CONNECT (a tunnel follows) or bytes that
        are not a request end the reading."""
        if stream.pending:
            data = stream.pending + data
            stream.pending = b""
        while data:
            if stream.skip:
                if stream.skip >= len(data):
                    stream.skip -= len(data)
                    return
                data = data[stream.skip :]
                stream.skip = 0
            request = extract.http_request(data)
            if request is None:
                self._stop(flow, True)
                return
            end = extract.http_header_end(data)
            if request.host:
                self._http_host(flow, stream, request)
            if end < 0:
                if len(data) >= _HEAD_LIMIT:
                    self._stop(flow, True, True)
                else:
                    stream.pending = data
                return
            body = extract.http_body_length(data[:end])
            if request.method == "CONNECT" or body is None or body > _BODY_LIMIT:
                self._stop(flow, True)
                return
            stream.skip = body
            data = data[end:]

    def _http_host(self, flow: Flow, stream: Stream, request: extract.HttpRequest) -> None:
        host = request.host
        if host is None:
            return
        if flow.name_source is None:
            flow.name, flow.name_source = host, "http"
            if request.method == "CONNECT":
                flow.service = "http-connect"
                self._evidence(flow)
            else:
                flow.service = "http"
                if self._bypass_lists is not None and self._listed_name(host):
                    self._evidence(flow)
            return
        if host == flow.name or flow.name_source != "http":
            return
        hosts = stream.hosts
        if hosts is None:
            hosts = stream.hosts = set()
        if host in hosts or len(hosts) >= _MORE_HOSTS:
            return
        hosts.add(host)
        self.recorder.http_host(flow.last, flow.orig, host)

    def _dns_tcp(self, flow: Flow, stream: Stream, data: bytes, forward: bool) -> None:
        """DNS over TCP (RFC 7766): each message is preceded by its 2-byte length; one segment
        may carry several and a message may span segments. A direction's unfinished bytes
        wait on its stream, up to _DNS_TCP_LIMIT; past that (not DNS, or lost segments) that
        direction is no longer read."""
        if stream.pending:
            data = stream.pending + data
        if forward:
            src, sport, dst, dport = flow.orig, flow.orig_port, flow.resp, flow.resp_port
        else:
            src, sport, dst, dport = flow.resp, flow.resp_port, flow.orig, flow.orig_port
        at = 0
        end = len(data)
        while at + 2 <= end:
            size = (data[at] << 8) | data[at + 1]
            if at + 2 + size > end:
                break
            self._dns(flow.last, src, sport, dst, dport, data[at + 2 : at + 2 + size])
            at += 2 + size
        rest = data[at:]
        if len(rest) > _DNS_TCP_LIMIT:
            self.counters.dns_errors += 1
            self._stop(flow, forward)
            return
        stream.pending = rest

    def _udp_payload(self, flow: Flow, payload: bytes, forward: bool) -> None:
        if forward:
            flow.o_scan -= 1
        else:
            flow.r_scan -= 1
        # QUIC on any port: a long header naming a version we can read (one slice, one
        # lookup), or Google QUIC with its version ("Q046" at byte 1, "Q025" at byte 9).
        first = payload[0]
        if (
            first & 0x80 and (payload[1:5] in quic.VERSIONS or quic.is_gquic_version(payload[1:5]))
        ) or (first & 0x09 == 0x09 and quic.is_gquic_version(payload[9:13])):
            flow.service = "quic"
            if forward and flow.name_source is None:
                self._quic(flow, payload)
            return
        vpn = bypass.udp_label(payload, flow.orig_port, flow.resp_port)
        if vpn is not None:  # WireGuard, OpenVPN, IKE: the recorder raises a bypass alert
            flow.service = vpn
            flow.o_scan = flow.r_scan = 0
            self._evidence(flow)
            return
        if flow.resp_port == 443 or flow.orig_port == 443:
            flow.service = "quic"
            return
        if flow.p2p is None or flow.p2p.startswith("peer:"):
            found = extract.bittorrent_udp(payload)
            if found is not None:
                self._mark_p2p(flow, "bittorrent-" + found[0], found[1])

    def _quic(self, flow: Flow, payload: bytes) -> None:
        """A client datagram of a QUIC flow: its Initials decrypted and collected (quic.py)
        until the ClientHello is whole, then the name, version and ALPN go on the flow and the
        reassembly state is dropped."""
        state = flow.quic
        if state is None:
            state = flow.quic = quic.QuicFlow()
        failed = state.undecryptable
        hello = state.datagram(payload)
        if state.undecryptable != failed:
            self.counters.quic_undecryptable += state.undecryptable - failed
        flow.version = state.version or flow.version
        if hello is not None:
            if hello.server_name:
                flow.name, flow.name_source = hello.server_name, "quic"
                if self._bypass_lists is not None and self._listed_name(hello.server_name):
                    self._evidence(flow)
            flow.alpn = hello.alpn
            flow.quic = None
            flow.o_scan = 0
        elif state.exhausted:
            flow.quic = None
        elif state.chunks and not flow.o_scan:
            flow.o_scan = 1  # a ClientHello still arriving: the next client packet too

    def _mark_p2p(self, flow: Flow, label: str, info_hash: str | None) -> None:
        flow.p2p = label
        flow.service = "bittorrent"
        if info_hash:
            flow.info_hash = info_hash
        flow.o_scan = flow.r_scan = 0
        self.p2p_peers[_pair(flow.orig, flow.resp)] = label

    # --- DNS, DHCP, ARP -----------------------------------------------------------------

    def _dns(
        self,
        ts: float,
        src: bytes,
        sport: int,
        dst: bytes,
        dport: int,
        payload: bytes,
        src_mac: bytes = b"",
    ) -> None:
        try:
            msg = extract.parse_dns(payload, netbios=sport == 137 or dport == 137)
        except (ValueError, IndexError, UnicodeError):
            self.counters.dns_errors += 1
            return
        if sport in _LOCAL_NAME_PORTS:
            self._local_names(ts, src, sport, payload, src_mac)
        if not msg.is_response:
            key = (src, sport, dst, dport, msg.trans_id)
            self.pending_dns[key] = (ts, msg)
            self._dns_due.append((ts, key))
            return
        pending = self.pending_dns.pop((dst, dport, src, sport, msg.trans_id), None)
        client, client_port, server, server_port = dst, dport, src, sport
        if pending is None and dport in (137, 5353, 5355) and sport == dport:
            client, client_port, server, server_port = src, sport, dst, dport
        self.recorder.dns(
            pending[0] if pending else ts,
            client,
            client_port,
            server,
            server_port,
            msg.trans_id,
            msg.query,
            msg.qtype,
            msg.rcode,
            msg.answers,
            msg.ttls,
            msg.addresses,
            ts - pending[0] if pending else None,
        )

    def _local_names(
        self, ts: float, src: bytes, sport: int, payload: bytes, src_mac: bytes
    ) -> None:
        """The names a device announces for itself (mDNS, LLMNR, NetBIOS), to the recorder
        with the sender's address and frame MAC: it decides which MAC the name belongs to."""
        try:
            names = extract.local_names(payload, sport)
        except (ValueError, IndexError, UnicodeError):
            return  # counted once already, by parse_dns
        source = _LOCAL_SOURCES[sport]
        for name, address in names:
            self.recorder.local_name(ts, address, src, src_mac, name, source)

    def _unanswered(
        self, key: tuple[bytes, int, bytes, int, int], ts: float, msg: extract.DnsMessage
    ) -> None:
        """A query whose answer never came (or not within 10 s): recorded without one."""
        client, client_port, server, server_port, trans_id = key
        self.recorder.dns(
            ts,
            client,
            client_port,
            server,
            server_port,
            trans_id,
            msg.query,
            msg.qtype,
            None,
            msg.answers,
            msg.ttls,
            [],
            None,
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
        self.recorder.dhcp(
            ts,
            msg.msg_type,
            msg.mac,
            msg.assigned_addr or msg.client_addr,
            msg.msg_type == "ACK" and msg.assigned_addr is not None,
            msg.hostname,
            msg.lease_seconds,
            msg.requested_addr,
            (
                msg.server_id,
                msg.vendor_class,
                msg.circuit_id,
                msg.remote_id,
                msg.relay_addr,
                msg.domain,
                msg.message,
                msg.xid,
            ),
        )

    def _arp(self, ts: float, sender_ip: bytes, sender_mac: bytes, opcode: int) -> None:
        self.counters.arp += 1
        if sender_ip == b"\x00\x00\x00\x00":
            return  # ARP probe: the sender has no address yet
        self.recorder.arp(ts, sender_ip, sender_mac, opcode)

    # --- flow end, visits, alerts -------------------------------------------------------

    def _close(self, flow: Flow) -> None:
        if flow.evidence == _EVIDENCE_DUE:
            self._evidence(flow)
        flow.done = True
        self._emit_flow(flow)

    def _evidence(self, flow: Flow) -> None:
        """The packet just read (at `flow.last`) shows the flow may bypass the filter: a VPN
        signature, CONNECT, a DoT/PPTP port, a listed address or name. The recorder decides
        and alerts now, with this packet's time, not when the flow ends hours later (a
        tunnel stays up all day); it raises nothing for the flow at its end. Once per flow."""
        if flow.evidence == _EVIDENCE_SENT:
            return
        flow.evidence = _EVIDENCE_SENT
        self.recorder.evidence(flow.last, self._record(flow))

    def _forget(self, flow: Flow) -> None:
        if flow.table is not None:
            flow.table.pop(flow.key, None)
            flow.table.pop(flow.rkey, None)
            flow.table = None

    def _emit_flow(self, flow: Flow) -> None:
        self.recorder.flow(self._record(flow))

    @staticmethod
    def _record(flow: Flow) -> FlowRecord:
        return (
            flow.first,
            flow.last,
            flow.proto,
            flow.orig,
            flow.orig_port,
            flow.resp,
            flow.resp_port,
            flow.vlan,
            flow.o_pkts,
            flow.o_bytes,
            flow.r_pkts,
            flow.r_bytes,
            flow.end_reason,
            flow.service,
            flow.name,
            flow.name_source,
            flow.version,
            flow.alpn,
            flow.p2p,
            flow.info_hash,
        )

    # --- housekeeping -------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Expire idle flows, unanswered DNS queries, stale fragments and finished visits.
        Written out in the order they were created, as a scan of every flow would."""
        self._next_tick = now + 1.0
        due = self._flows_due.pop_due(now)
        if due:
            candidates = {flow.seq: flow for flow in due if flow.table is not None}
            stale = []
            for seq in sorted(candidates):
                flow = candidates[seq]
                limit = 5.0 if flow.done else flow.timeout
                if now - flow.last > limit:
                    stale.append(flow)
                else:
                    self._flows_due.add(flow, flow.last + limit)
            for flow in stale:
                if not flow.done:
                    if flow.end_reason == "open":
                        flow.end_reason = "idle"
                    self._close(flow)
                self._forget(flow)
        due_dns = self._dns_due
        if due_dns:
            pending_dns = self.pending_dns
            # Capture times barely go backwards: an entry behind a later one waits for it, at
            # most the few milliseconds the capture reordered them by.
            while due_dns and now - due_dns[0][0] > _DNS_TIMEOUT:
                asked, key = due_dns.popleft()
                pending = pending_dns.get(key)
                if pending is not None and pending[0] == asked:
                    del pending_dns[key]
                    self._unanswered(key, asked, pending[1])
        if self.frags.pending:
            self.frags.expire(now)
        self.recorder.tick(now)

    def finish(self) -> None:
        """End of capture: every open flow, query and visit is written as it stands."""
        live = {flow.seq: flow for table in self.tables.values() for flow, _ in table.values()}
        for seq in sorted(live):
            flow = live[seq]
            if not flow.done:
                self._close(flow)
            self._forget(flow)
        for key, (ts, msg) in list(self.pending_dns.items()):
            self._unanswered(key, ts, msg)
        self.pending_dns.clear()
        self._dns_due.clear()
        self.recorder.finish()
        self.counters.extra["fragment_timeouts"] = self.frags.timeouts
