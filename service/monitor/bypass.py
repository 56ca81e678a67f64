"""Attempts to get round the school's filter: encrypted DNS, VPNs, Tor, proxies, DNS tunnels.

Two halves, like the monitor itself:

- `udp_label` / `tcp_label` look at one payload and name a VPN protocol by its wire format
  (WireGuard message types and sizes, OpenVPN's hard-reset packets, an IKE header on 500/4500).
  The engine calls them on a flow's first payload packets and keeps the name in `flow.service`;
  they are on the capture's per-flow path (bench/monitor_pcap.py) and only compare bytes.
- `BypassDetector` sees the finished flows and DNS transactions in the recorder and decides
  what is an attempt to bypass the filter, with the evidence a DSL or IT lead can check: the
  signature, the list and entry (deploy/categories/*.txt marked `# bypass: KIND`), the server
  name or address, the counts.

The DNS-tunnel heuristic has an allow-list (deploy/categories/dns_allow.txt, `# allow: dns-tunnel`,
and a site policy's `[monitor] dns_tunnel_allow`): antivirus and reputation services (Sophos
Live Protection, McAfee GTI, Team Cymru's hash registry, DNSBLs) look files and addresses up
with long hash-like names under one domain, which is exactly a tunnel's pattern. Names under a
listed domain never count toward a tunnel alert; the other detections ignore the list.

Nothing here raises on odd input: a payload or name that fits no rule is simply not a finding.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from service.errors import Invalid


class BypassKind(StrEnum):
    """The alert `kind` of a bypass alert (its category is always "bypass")."""

    ENCRYPTED_DNS = "encrypted-dns"
    VPN = "vpn"
    TOR = "tor"
    PROXY = "proxy"
    DNS_TUNNEL = "dns-tunnel"


BYPASS_CATEGORY = "bypass"


@dataclass(frozen=True, slots=True)
class Finding:
    kind: BypassKind
    evidence: str


# --- payload signatures (per-flow path: bench/monitor_pcap.py) ------------------------------

# WireGuard (whitepaper section 5.4): type byte, three reserved zero bytes; handshake
# initiation, response and cookie reply have fixed sizes, transport data is 16 bytes of header
# plus a multiple of 16 (padded plaintext and its 16-byte tag).
_WG_SIZES = (0, 148, 92, 64)  # by type; type 4 (data) is checked apart
# OpenVPN control packets: opcode << 3 | key id. Hard resets (client v2/v3, server v2) with
# key id 0 open every session; after the 8-byte session id comes, with --tls-auth, an HMAC of
# one of these sizes, a packet id and a time; with --tls-crypt the packet id and time first.
_OVPN_CLIENT_RESET = (0x38, 0x50)
_OVPN_SERVER_RESET = 0x40
_OVPN_HMAC = (0, 16, 20, 28, 32, 48, 64)
_ZERO4 = b"\x00\x00\x00\x00"
_ZERO5 = b"\x00\x00\x00\x00\x00"
# A plausible OpenVPN timestamp: 2010 to 2043.
_OVPN_TIME_MIN, _OVPN_TIME_MAX = 0x4B000000, 0x8A000000
_IKE_PORTS = (500, 4500)


def _openvpn(payload: bytes) -> bool:
    """An OpenVPN hard-reset packet (without TCP's length prefix)."""
    size = len(payload)
    if size < 14:
        return False
    opcode = payload[0]
    if opcode in _OVPN_CLIENT_RESET:
        if size == 14:  # no tls-auth: ack count 0, message packet id 0
            return payload[9:14] == _ZERO5
        return _ovpn_replay_header(payload, _OVPN_HMAC)
    if opcode == _OVPN_SERVER_RESET:
        # Plain: ack count 1, acked packet id 0, the client's session id, message packet id 0.
        if size == 26:
            return payload[9] == 1 and payload[10:14] == _ZERO4 and payload[22:26] == _ZERO4
        return _ovpn_replay_header(payload, _OVPN_HMAC[1:])
    return False


def _ovpn_replay_header(payload: bytes, hmac_sizes: tuple[int, ...]) -> bool:
    """After the session id, with tls-auth (an HMAC of one of `hmac_sizes` first) or tls-crypt
    (hmac size 0: packet id and time first): replay packet id 1 and a plausible time."""
    size = len(payload)
    for hmac in hmac_sizes:
        at = 9 + hmac
        if size < at + 8:
            break
        if payload[at : at + 4] == b"\x00\x00\x00\x01":
            when = int.from_bytes(payload[at + 4 : at + 8], "big")
            if _OVPN_TIME_MIN <= when <= _OVPN_TIME_MAX:
                return True
    return False


def _ike(payload: bytes) -> bool:
    """An ISAKMP/IKE header (RFC 7296 3.1) whose length field is the payload's length."""
    return (
        len(payload) >= 28
        and payload[17] in (0x10, 0x20)  # IKEv1, IKEv2
        and int.from_bytes(payload[24:28], "big") == len(payload)
        and payload[0:8] != b"\x00" * 8
    )


def udp_label(payload: bytes, sport: int, dport: int) -> str | None:
    """ "wireguard", "openvpn", "ike" or "ipsec" when one UDP payload has that protocol's
    wire format, else None. Per-flow path: a few byte comparisons."""
    first = payload[0]
    size = len(payload)
    if 0 < first <= 4:
        if payload[1:4] == b"\x00\x00\x00" and (
            _WG_SIZES[first] == size if first < 4 else size >= 32 and size % 16 == 0
        ):
            return "wireguard"
    elif (first in _OVPN_CLIENT_RESET or first == _OVPN_SERVER_RESET) and _openvpn(payload):
        return "openvpn"
    if sport in _IKE_PORTS or dport in _IKE_PORTS:
        if sport == 4500 or dport == 4500:
            if payload[:4] == _ZERO4:  # non-ESP marker: IKE follows (RFC 3948)
                return "ike" if _ike(payload[4:]) else None
            return "ipsec" if size >= 24 else None  # ESP in UDP; 1 byte: a keepalive
        return "ike" if _ike(payload) else None
    return None


def tcp_label(payload: bytes) -> str | None:
    """ "openvpn" for the first segment of OpenVPN over TCP (a 2-byte length, then a hard
    reset), else None."""
    if (
        len(payload) >= 16
        and int.from_bytes(payload[:2], "big") == len(payload) - 2
        and (payload[2] in _OVPN_CLIENT_RESET or payload[2] == _OVPN_SERVER_RESET)
        and _openvpn(payload[2:])
    ):
        return "openvpn"
    return None


# Engine labels that are themselves a VPN, with the words the evidence uses.
_VPN_SERVICES = {
    "wireguard": "WireGuard message signature",
    "openvpn": "OpenVPN hard-reset signature",
    "ike": "IPsec key exchange (IKE header)",
    "ipsec": "IPsec ESP in UDP (port 4500)",
}
# IP protocols that are themselves tunnels, as the recorder names them (by number).
# IP protocols, ports: also what the engine (engine.py) sends as evidence on a first packet.
TUNNEL_PROTOCOLS = {50: "IPsec ESP (IP protocol 50)", 47: "GRE (IP protocol 47, PPTP)"}
_TUNNEL_BY_NAME = {str(number): what for number, what in TUNNEL_PROTOCOLS.items()}
PPTP_PORT = 1723
DOT_PORT = 853
_FLOW_SERVICES = frozenset({*_VPN_SERVICES, "http-connect"})
_LISTED = {
    BypassKind.ENCRYPTED_DNS: "DNS over HTTPS resolver",
    BypassKind.VPN: "VPN service",
    BypassKind.TOR: "Tor",
    BypassKind.PROXY: "proxy",
    BypassKind.DNS_TUNNEL: "DNS tunnel",
}
_DNS_PORTS = frozenset({53, 137, 5353, 5355})


# --- lists ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Entry:
    """One line of a bypass list: what it listed, in which file, and its comment (the
    provider, e.g. "Mullvad")."""

    kind: BypassKind
    source: str  # file name
    value: str  # the line's entry as written
    note: str

    def describe(self) -> str:
        text = f"{self.value} is on {self.source}"
        return f"{text} ({self.note})" if self.note else text


@dataclass
class BypassLists:
    """Names (a listed domain matches its subdomains), addresses, networks and address:port
    endpoints, each naming the entry that listed it."""

    names: dict[str, Entry] = field(default_factory=dict)
    addresses: dict[str, Entry] = field(default_factory=dict)
    endpoints: dict[tuple[str, int], Entry] = field(default_factory=dict)
    # prefix length -> network address as an integer -> entry, per IP version.
    networks: dict[int, dict[int, dict[int, Entry]]] = field(default_factory=dict)
    # The DNS-tunnel allow-list (`# allow: dns-tunnel` files): domain -> its entry. Kept
    # apart from `names`, which are bypass evidence, not exemptions.
    tunnel_allow: dict[str, Entry] = field(default_factory=dict)

    def add(self, kind: BypassKind, source: str, line: str) -> None:
        """One list line: `entry  # note`. Raises Invalid for an entry that is none of a
        domain, an address, a network or an IPv4 address:port."""
        value, _, note = line.partition("#")
        value = value.strip()
        if not value:
            return
        token = value.split()[0].lower().rstrip(".")
        entry = Entry(kind, source, token, note.strip())
        try:
            if "/" in token:
                network = ipaddress.ip_network(token, strict=False)
                by_length = self.networks.setdefault(network.version, {})
                by_length.setdefault(network.prefixlen, {})[int(network.network_address)] = entry
                return
            if token.count(":") == 1 and token[0].isdigit():
                host, _, port = token.partition(":")
                self.endpoints[(str(ipaddress.IPv4Address(host)), int(port))] = entry
                return
            if ":" in token or token.replace(".", "").isdigit():
                self.addresses[str(ipaddress.ip_address(token))] = entry
                return
        except ValueError as exc:
            raise Invalid(f"{source}: {token!r} is not an address, network or host:port") from exc
        if not all(part and len(part) < 64 for part in token.split(".")):
            raise Invalid(f"{source}: {token!r} is not a domain name")
        self.names[token] = entry

    def allow_tunnel_domain(self, source: str, line: str) -> None:
        """One line of a `# allow: dns-tunnel` list: `domain  # why`. Raises Invalid for an
        entry that is not a domain name one could register (see `allow_entry_problem`)."""
        value, _, note = line.partition("#")
        value = value.strip()
        if not value:
            return
        token = value.split()[0].lower().rstrip(".")
        problem = allow_entry_problem(token)
        if problem is not None:
            raise Invalid(f"{source}: {problem}")
        self.tunnel_allow[token] = Entry(BypassKind.DNS_TUNNEL, source, token, note.strip())

    def match_name(self, name: str) -> Entry | None:
        labels = name.lower().rstrip(".").split(".")
        names = self.names
        for start in range(len(labels)):
            found = names.get(".".join(labels[start:]))
            if found is not None:
                return found
        return None

    def match_address(self, address: str, port: int) -> Entry | None:
        found = self.endpoints.get((address, port)) if self.endpoints else None
        if found is None:
            found = self.addresses.get(address)
        if found is None and self.networks:
            try:
                parsed = ipaddress.ip_address(address)
            except ValueError:
                return None
            by_length = self.networks.get(parsed.version)
            if by_length:
                value = int(parsed)
                bits = parsed.max_prefixlen
                for length, table in by_length.items():
                    found = table.get(value >> (bits - length) << (bits - length))
                    if found is not None:
                        break
        return found

    def __len__(self) -> int:
        nets = sum(len(t) for v in self.networks.values() for t in v.values())
        return len(self.names) + len(self.addresses) + len(self.endpoints) + nets


def bypass_kind_of(header: str) -> BypassKind:
    """The kind named by a list's `# bypass: KIND` line; Invalid for an unknown one."""
    try:
        return BypassKind(header.strip().lower())
    except ValueError as exc:
        known = ", ".join(kind.value for kind in BypassKind)
        raise Invalid(f"bypass list kind {header.strip()!r}: use one of {known}") from exc


def load_bypass_list(lists: BypassLists, path: Path, kind: BypassKind, lines: list[str]) -> None:
    for line in lines:
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            lists.add(kind, path.name, stripped)


def allow_kind_of(header: str) -> BypassKind:
    """The detection named by a list's `# allow: KIND` line: only the DNS-tunnel heuristic
    has an allow-list (a listed resolver, VPN or relay is never an exemption)."""
    if header.strip().lower() != BypassKind.DNS_TUNNEL.value:
        raise Invalid(f"allow list kind {header.strip()!r}: use {BypassKind.DNS_TUNNEL.value}")
    return BypassKind.DNS_TUNNEL


def load_allow_list(lists: BypassLists, path: Path, lines: list[str]) -> None:
    for line in lines:
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            lists.allow_tunnel_domain(path.name, stripped)


# --- DNS tunnels ----------------------------------------------------------------------------

_TUNNEL_WINDOW = 600.0  # seconds one client's queries under one domain are counted over
_TUNNEL_NAMES = 20  # distinct long random-looking names under one domain in the window
_TUNNEL_NULL = 10  # NULL queries (type 10: nothing legitimate asks for it)
_TUNNEL_TXT = 60  # TXT queries under one domain
_LONG_SUBDOMAIN = 20  # characters to the left of the registered domain, dots not counted
# A name shorter than this cannot hold a long subdomain and a registered domain ("a.bc").
_SHORTEST_SUSPICIOUS = _LONG_SUBDOMAIN + 4
_RANDOM_ENTROPY = 3.5  # bits per character; English-like host names stay below
_QTYPE_TXT, _QTYPE_NULL = 16, 10
# Second-level labels under which registrations sit one level down (co.uk, sch.uk, com.au):
# a small stand-in for the public suffix list, enough to group a tunnel's names.
_SECOND_LEVEL = frozenset(
    {"co", "ac", "sch", "org", "gov", "net", "com", "ltd", "plc", "me", "nhs", "police", "edu"}
)
_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_")


def registered_domain(name: str) -> str:
    """The domain a (lower-case) name was registered under, roughly: the last two labels, or
    three under a country's second level (example.co.uk). rpartition, not split: a tunnel's
    names are long and come by the thousand."""
    head, _, top = name.rstrip(".").rpartition(".")
    if not head:
        return top
    rest, _, second = head.rpartition(".")
    if rest and len(top) == 2 and second in _SECOND_LEVEL:
        return f"{rest.rpartition('.')[2]}.{second}.{top}"
    return f"{second}.{top}"


def allow_entry_problem(name: str) -> str | None:
    """Why `name` (lower-case, no trailing dot) cannot be a DNS-tunnel allow-list entry, or
    None. An entry is a registered domain ("sophosxl.net") or a name under one
    ("avqs.mcafee.com"): a bare suffix ("net", "co.uk") would exempt every domain under it
    from tunnel detection, so it is refused, as is anything that is not a host name."""
    labels = name.split(".")
    if (
        not name
        or len(name) > 253
        or not all(
            label
            and len(label) < 64
            and set(label) <= _HOST_CHARS
            and not label.startswith("-")
            and not label.endswith("-")
            for label in labels
        )
    ):
        hint = " (write it without '*.': its subdomains are covered)" if "*" in name else ""
        return f"{name!r} is not a domain name{hint}"
    if len(labels) < 2 or registered_domain(f"x.{name}") != registered_domain(name):
        return f"{name!r} is a public suffix, not a domain: name the service's own domain"
    return None


def _entropy(text: str) -> float:
    """Shannon entropy in bits per character (str.count per distinct character: faster than
    a Counter on host-name-sized strings)."""
    size = len(text)
    log2 = math.log2
    return -sum(n / size * log2(n / size) for n in map(text.count, set(text)))


def random_looking(subdomain: str) -> bool:
    """Long, and either high in entropy or carrying bytes no host name has (tunnels that
    encode raw bytes, as iodine does)."""
    letters = subdomain.replace(".", "")
    if len(letters) < _LONG_SUBDOMAIN:
        return False
    if not set(letters.lower()) <= _HOST_CHARS:
        return True
    return _entropy(letters.lower()) >= _RANDOM_ENTROPY


def _printable(name: str, limit: int = 80) -> str:
    text = "".join(c if c.isascii() and c.isprintable() else "?" for c in name)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _TunnelCount:
    __slots__ = ("alerted", "example", "first", "names", "null", "queries", "txt")

    def __init__(self, ts: float) -> None:
        self.first = ts
        self.names: set[str] = set()
        self.null = 0
        self.txt = 0
        self.queries = 0
        self.example = ""
        self.alerted = False


# --- the detector ---------------------------------------------------------------------------


_UNSEEN = Entry(BypassKind.PROXY, "", "", "")  # a name not looked up yet
_NAME_CACHE = 100_000


class BypassDetector:
    """Findings from the recorder's flows and DNS transactions (recorder.py raises the alerts,
    one per device and kind an hour)."""

    def __init__(self, lists: BypassLists | None = None, tunnel_allow: Iterable[str] = ()) -> None:
        """`tunnel_allow`: the site policy's `[monitor] dns_tunnel_allow` (validated by the
        policy loader), added to the lists' `# allow: dns-tunnel` entries."""
        self.lists = lists or BypassLists()
        self.tunnels: dict[tuple[str, str], _TunnelCount] = {}
        allowed = {*self.lists.tunnel_allow, *(name.lower().rstrip(".") for name in tunnel_allow)}
        self._allowed = frozenset(allowed)
        # The registered domains of the entries: one set lookup per candidate query decides
        # whether the (rare) walk over its deeper suffixes is needed at all.
        self._allowed_domains = frozenset(registered_domain(name) for name in allowed)
        self._names: dict[str, Entry | None] = {}  # server name -> its list entry, if any
        self._random: dict[str, bool] = {}  # subdomain -> random_looking(subdomain)
        self._next_expiry = 0.0

    def flow(
        self,
        proto: str,
        client: str,
        server: str,
        server_port: int,
        service: str | None,
        name: str | None,
        name_source: str | None,
    ) -> Finding | None:
        """A finished flow, client and server as the recorder attributed them. Called for
        every flow in the writer process (bench/monitor_pcap.py): the common case, no
        finding, costs a few dict lookups (names are looked up once each, then cached)."""
        kind: BypassKind | None = None
        what = ""
        entry = None
        if service is not None and service in _FLOW_SERVICES:
            if service == "http-connect":
                return Finding(
                    BypassKind.PROXY,
                    f"HTTP CONNECT through proxy {server}:{server_port} to {name or '?'}",
                )
            kind, what = BypassKind.VPN, _VPN_SERVICES[service]
            entry = self.lists.match_address(server, server_port)
        elif proto in _TUNNEL_BY_NAME:
            return Finding(BypassKind.VPN, f"{_TUNNEL_BY_NAME[proto]}: {client} -> {server}")
        elif server_port == PPTP_PORT and proto == "tcp":
            kind, what = BypassKind.VPN, "PPTP control connection"
        elif server_port == DOT_PORT:
            kind = BypassKind.ENCRYPTED_DNS
            what = "DNS over TLS (port 853)" if proto == "tcp" else "DNS over QUIC (port 853)"
        elif server_port in _DNS_PORTS:
            return None
        else:
            if name is not None and self.lists.names:
                entry = self._names.get(name, _UNSEEN)
                if entry is _UNSEEN:
                    if len(self._names) > _NAME_CACHE:
                        self._names.clear()
                    entry = self._names[name] = self.lists.match_name(name)
            if entry is None:
                entry = self.lists.match_address(server, server_port)
                if entry is None:
                    return None
            kind = entry.kind
            what = _LISTED[kind]
            if kind is BypassKind.ENCRYPTED_DNS and server_port not in (443, 80):
                what = "encrypted DNS resolver"
        evidence = f"{what}: {proto.upper()} {client} -> {server}:{server_port}"
        if name:
            evidence += f" ({name}, {name_source})"
        if entry is not None:
            evidence += f"; {entry.describe()}"
        return Finding(kind, evidence)

    def dns(
        self, ts: float, client: str, server_port: int, query: str, qtype: int | None
    ) -> Finding | None:
        """One DNS transaction from `client` (unicast DNS only: local names are not
        tunnels)."""
        if server_port != 53:
            return None
        tunnel_type = qtype == _QTYPE_NULL or qtype == _QTYPE_TXT  # noqa: PLR1714 (speed)
        if len(query) < _SHORTEST_SUSPICIOUS and not tunnel_type:
            return None  # most names: too short to carry a tunnel's data
        lowered = query.lower()
        if lowered.startswith("2.dnscrypt-cert."):
            return Finding(
                BypassKind.ENCRYPTED_DNS,
                f"DNSCrypt certificate query {_printable(query)} from {client}",
            )
        if lowered.endswith((".arpa", ".local")):
            return None
        domain = registered_domain(lowered)
        if domain in self._allowed_domains and self._tunnel_allowed(lowered, domain):
            return None  # an antivirus or reputation lookup (dns_allow.txt, the policy)
        key = (client, domain)
        count = self.tunnels.get(key)
        if count is not None and count.alerted and ts - count.first <= _TUNNEL_WINDOW:
            return None  # this tunnel is reported for the window: no more work per query
        subdomain = lowered[: -len(domain)].rstrip(".") if len(lowered) > len(domain) else ""
        suspicious = self._random.get(subdomain)
        if suspicious is None:
            if len(self._random) > _NAME_CACHE:
                self._random.clear()
            suspicious = self._random[subdomain] = random_looking(subdomain)
        if not suspicious and not tunnel_type:
            return None
        if count is None or ts - count.first > _TUNNEL_WINDOW:
            count = self.tunnels[key] = _TunnelCount(ts)
        count.queries += 1
        if qtype == _QTYPE_NULL:
            count.null += 1
        elif qtype == _QTYPE_TXT:
            count.txt += 1
        if suspicious and len(count.names) < _TUNNEL_NAMES:
            count.names.add(lowered)
            if len(query) > len(count.example):
                count.example = query
        if count.alerted:
            return None
        reasons = []
        if len(count.names) >= _TUNNEL_NAMES:
            reasons.append(f"{_TUNNEL_NAMES} distinct long random-looking names")
        if count.null >= _TUNNEL_NULL:
            reasons.append(f"{count.null} NULL queries")
        if count.txt >= _TUNNEL_TXT:
            reasons.append(f"{count.txt} TXT queries")
        if not reasons:
            return None
        count.alerted = True
        example = f", e.g. {_printable(count.example)}" if count.example else ""
        return Finding(
            BypassKind.DNS_TUNNEL,
            f"DNS tunnel under {domain}: {' and '.join(reasons)} in {ts - count.first:.0f}s "
            f"({count.queries} counted queries{example})",
        )

    def _tunnel_allowed(self, name: str, domain: str) -> bool:
        """Whether `name` is `domain` or under it at an allow-listed suffix (the entry may be
        deeper than the registered domain: avqs.mcafee.com, not all of mcafee.com)."""
        allowed = self._allowed
        if domain in allowed:
            return True
        suffix = name[: -len(domain)]
        while suffix:
            head, _, last = suffix.rstrip(".").rpartition(".")
            domain = f"{last}.{domain}"
            if domain in allowed:
                return True
            suffix = head + "." if head else ""
        return False

    def expire(self, now: float) -> None:
        """Forget tunnel counts older than the window (called on the recorder's ticks)."""
        if now < self._next_expiry:
            return
        self._next_expiry = now + 60.0
        if self.tunnels:
            for key, count in list(self.tunnels.items()):
                if now - count.first > _TUNNEL_WINDOW:
                    del self.tunnels[key]
