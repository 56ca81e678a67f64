"""Application-layer metadata from payload bytes: DNS, TLS SNI, HTTP Host, DHCP, P2P markers.

Only names and addresses leave this module: never a URL path, header, cookie or body (seed 002:
"will not monitor the content of the user's own device"). Called only for the few packets that
can carry them (first payload packets of a flow, port 53/5353/5355, 67/68), so the cost stays off
the per-packet hot path.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Final

# Query and record types by number (IANA "Resource Record (RR) TYPEs"); a type not here is
# written "TYPE<n>" (RFC 3597's presentation form), see `qtype_name`.
DNS_TYPES: Final = {
    1: "A",
    2: "NS",
    3: "MD",
    4: "MF",
    5: "CNAME",
    6: "SOA",
    7: "MB",
    8: "MG",
    9: "MR",
    10: "NULL",
    11: "WKS",
    12: "PTR",
    13: "HINFO",
    14: "MINFO",
    15: "MX",
    16: "TXT",
    17: "RP",
    18: "AFSDB",
    19: "X25",
    20: "ISDN",
    21: "RT",
    22: "NSAP",
    23: "NSAP-PTR",
    24: "SIG",
    25: "KEY",
    26: "PX",
    27: "GPOS",
    28: "AAAA",
    29: "LOC",
    30: "NXT",
    31: "EID",
    32: "NIMLOC",
    33: "SRV",
    34: "ATMA",
    35: "NAPTR",
    36: "KX",
    37: "CERT",
    38: "A6",
    39: "DNAME",
    40: "SINK",
    41: "OPT",
    42: "APL",
    43: "DS",
    44: "SSHFP",
    45: "IPSECKEY",
    46: "RRSIG",
    47: "NSEC",
    48: "DNSKEY",
    49: "DHCID",
    50: "NSEC3",
    51: "NSEC3PARAM",
    52: "TLSA",
    53: "SMIMEA",
    55: "HIP",
    56: "NINFO",
    57: "RKEY",
    58: "TALINK",
    59: "CDS",
    60: "CDNSKEY",
    61: "OPENPGPKEY",
    62: "CSYNC",
    63: "ZONEMD",
    64: "SVCB",
    65: "HTTPS",
    99: "SPF",
    100: "UINFO",
    101: "UID",
    102: "GID",
    103: "UNSPEC",
    104: "NID",
    105: "L32",
    106: "L64",
    107: "LP",
    108: "EUI48",
    109: "EUI64",
    249: "TKEY",
    250: "TSIG",
    251: "IXFR",
    252: "AXFR",
    253: "MAILB",
    254: "MAILA",
    255: "*",
    256: "URI",
    257: "CAA",
    258: "AVC",
    259: "DOA",
    260: "AMTRELAY",
    261: "RESINFO",
    32768: "TA",
    32769: "DLV",
}
# NetBIOS name service (RFC 1002 4.2.1.2) reuses two numbers for its own types.
NETBIOS_TYPES: Final = {32: "NB", 33: "NBSTAT"}
RCODES: Final = {
    0: "NOERROR",
    1: "FORMERR",
    2: "SERVFAIL",
    3: "NXDOMAIN",
    4: "NOTIMP",
    5: "REFUSED",
}


def qtype_name(qtype: int | None, *, netbios: bool = False) -> str | None:
    """The name of a query type: every registered type, NB/NBSTAT on the NetBIOS port, and
    any other number as "TYPE<n>" (RFC 3597), so no query goes unnamed."""
    if qtype is None:
        return None
    if netbios and qtype in NETBIOS_TYPES:
        return NETBIOS_TYPES[qtype]
    return DNS_TYPES.get(qtype) or f"TYPE{qtype}"


@dataclass(slots=True)
class DnsMessage:
    trans_id: int
    is_response: bool
    query: str | None
    qtype: int | None
    rcode: int
    answers: list[str] = field(default_factory=list)
    addresses: list[str] = field(default_factory=list)  # A/AAAA only, for labelling flows
    ttls: list[int] = field(default_factory=list)


def _name(data: bytes, pos: int) -> tuple[str, int]:
    """A DNS name with compression; returns (name, position after it in the original run)."""
    labels: list[bytes] = []
    jumps = 0
    after = -1
    n = len(data)
    while True:
        if pos >= n:
            raise ValueError("DNS name runs past the message")
        length = data[pos]
        if length == 0:
            pos += 1
            break
        if length & 0xC0 == 0xC0:
            if pos + 1 >= n:
                raise ValueError("DNS pointer runs past the message")
            if after < 0:
                after = pos + 2
            pos = ((length & 0x3F) << 8) | data[pos + 1]
            jumps += 1
            if jumps > 32:
                raise ValueError("DNS compression loop")
            continue
        if length & 0xC0:
            raise ValueError("DNS label type not supported")
        labels.append(data[pos + 1 : pos + 1 + length])
        pos += 1 + length
    # One decode for the whole name: "ascii"/"replace" works byte by byte, so this is the
    # same as decoding label by label.
    return b".".join(labels).decode("ascii", "replace"), (after if after >= 0 else pos)


ADDRESS_TEXT: dict[bytes, str] = {}


def address_text(raw: bytes) -> str:
    """4 or 16 address bytes as text, cached (DNS answers and flows name the same few
    thousand addresses over and over)."""
    text = ADDRESS_TEXT.get(raw)
    if text is None:
        if len(ADDRESS_TEXT) > 65536:
            ADDRESS_TEXT.clear()
        text = ADDRESS_TEXT[raw] = str(ipaddress.ip_address(raw))
    return text


_NIBBLES: Final = "ABCDEFGHIJKLMNOP"
_AS_HEX: Final = str.maketrans(_NIBBLES, "0123456789abcdef")


def _netbios(name: str) -> str:
    """NetBIOS first-level decoding (RFC 1001 14.1): 32 letters A-P to a 16-byte name."""
    first, _, _rest = name.partition(".")
    if len(first) != 32 or first.strip(_NIBBLES):
        return name
    # Each letter is a nibble (A=0 .. P=15): as hex digits, bytes.fromhex does the pairing.
    raw = bytes.fromhex(first.translate(_AS_HEX))
    return raw[:15].decode("ascii", "replace").rstrip()


def parse_dns(data: bytes, *, netbios: bool = False) -> DnsMessage:
    """Header, first question and the answer section (NetBIOS names decoded when `netbios`).
    Names are lower-cased (DNS is case-insensitive), NetBIOS names kept as sent. Raises
    ValueError on a corrupt message."""
    if len(data) < 12:
        raise ValueError("DNS message shorter than its header")
    flags = (data[2] << 8) | data[3]
    qdcount = (data[4] << 8) | data[5]
    ancount = (data[6] << 8) | data[7]
    msg = DnsMessage(
        (data[0] << 8) | data[1], bool(flags & 0x8000), None, None, flags & 0x0F, [], [], []
    )
    pos = 12
    for index in range(qdcount):
        name, pos = _name(data, pos)
        if pos + 4 > len(data):
            raise ValueError("DNS question truncated")
        if index == 0:
            msg.query = _netbios(name) if netbios else name.lower()
            msg.qtype = (data[pos] << 8) | data[pos + 1]
        pos += 4
    for _ in range(min(ancount, 64)):
        owner, pos = _name(data, pos)
        if msg.query is None:  # mDNS answers carry no question: name them by the first owner
            msg.query = _netbios(owner) if netbios else owner.lower()
        if pos + 10 > len(data):
            raise ValueError("DNS answer truncated")
        rtype = (data[pos] << 8) | data[pos + 1]
        ttl = int.from_bytes(data[pos + 4 : pos + 8], "big")
        rdlen = (data[pos + 8] << 8) | data[pos + 9]
        rdata_at = pos + 10
        pos = rdata_at + rdlen
        if pos > len(data):
            raise ValueError("DNS rdata truncated")
        rdata = data[rdata_at:pos]
        if (rtype == 1 and rdlen == 4) or (rtype == 28 and rdlen == 16):
            text = address_text(rdata)
            msg.addresses.append(text)
        elif rtype in (2, 5, 12):
            text = _name(data, rdata_at)[0]
        elif rtype == 16:
            parts = []
            at = 0
            while at < rdlen:
                size = rdata[at]
                parts.append(
                    f"TXT {size} " + rdata[at + 1 : at + 1 + size].decode("utf-8", "replace")
                )
                at += 1 + size
            text = " ".join(parts)
        elif rtype == 33 and rdlen > 6:
            text = _name(data, rdata_at + 6)[0]
        else:
            continue
        msg.answers.append(text)
        msg.ttls.append(ttl)
    return msg


# --- local names: mDNS, LLMNR, NetBIOS name service --------------------------------------

MDNS_PORT: Final = 5353
LLMNR_PORT: Final = 5355
NETBIOS_NS_PORT: Final = 137
_NETBIOS_DEVICE_SUFFIXES: Final = (0x00, 0x20)  # workstation, file server: a machine's name
_NETBIOS_CLAIMS: Final = (5, 8, 9)  # opcodes: registration, refresh (RFC 1002 4.2.1.1)


def _netbios_unique(name: str) -> str | None:
    """A NetBIOS-encoded owner name as the machine name it stands for, or None when it is not
    one (a group or domain suffix such as <1c>, the '*' of a node status query, not encoded)."""
    first = name.partition(".")[0]
    if len(first) != 32 or first.strip(_NIBBLES):
        return None
    raw = bytes.fromhex(first.translate(_AS_HEX))
    if raw[15] not in _NETBIOS_DEVICE_SUFFIXES or raw[0] in (0x2A, 0):
        return None
    text = raw[:15].decode("ascii", "replace").rstrip()
    return text or None


def _reverse_address(owner: str) -> bytes | None:
    """The address a reverse-lookup owner name stands for (7.2.0.10.in-addr.arpa -> 10.0.2.7)."""
    lower = owner.lower()
    try:
        if lower.endswith(".in-addr.arpa"):
            parts = lower[: -len(".in-addr.arpa")].split(".")
            if len(parts) == 4:
                return bytes(int(p) for p in reversed(parts))
        elif lower.endswith(".ip6.arpa"):
            nibbles = lower[: -len(".ip6.arpa")].split(".")
            if len(nibbles) == 32:
                return bytes.fromhex("".join(reversed(nibbles)))
    except ValueError:
        return None
    return None


def local_names(data: bytes, port: int) -> list[tuple[str, bytes]]:
    """The names a device claims for itself in one mDNS (5353), LLMNR (5355) or NetBIOS name
    service (137) message, as (name, address bytes) pairs: mDNS A/AAAA records of `x.local`
    and reverse PTRs to `x.local` in any section (answers, probes and announcements); LLMNR
    answers; NetBIOS registrations, refreshes and positive answers for a machine's own name
    (not group names). Queries for other devices' names claim nothing. Raises ValueError on a
    corrupt message."""
    if len(data) < 12:
        raise ValueError("DNS message shorter than its header")
    flags = (data[2] << 8) | data[3]
    response = bool(flags & 0x8000)
    opcode = (flags >> 11) & 0x0F
    if port == LLMNR_PORT and (not response or flags & 0x0F):
        return []
    if port == NETBIOS_NS_PORT and not (
        opcode in _NETBIOS_CLAIMS or (response and opcode == 0 and not flags & 0x0F)
    ):
        return []
    qdcount = (data[4] << 8) | data[5]
    records = ((data[6] << 8) | data[7]) + ((data[8] << 8) | data[9])
    records += (data[10] << 8) | data[11]
    pos = 12
    for _ in range(qdcount):
        pos = _name(data, pos)[1] + 4
    found: list[tuple[str, bytes]] = []
    for _ in range(min(records, 64)):
        owner, pos = _name(data, pos)
        if pos + 10 > len(data):
            raise ValueError("DNS record truncated")
        rtype = (data[pos] << 8) | data[pos + 1]
        rdlen = (data[pos + 8] << 8) | data[pos + 9]
        rdata_at = pos + 10
        pos = rdata_at + rdlen
        if pos > len(data):
            raise ValueError("DNS rdata truncated")
        if port == NETBIOS_NS_PORT:
            if rtype == 32 and rdlen >= 6:
                name = _netbios_unique(owner)
                if name is not None:  # each entry: NB flags (G bit: a group name), address
                    found.extend(
                        (name, data[at + 2 : at + 6])
                        for at in range(rdata_at, pos - 5, 6)
                        if not data[at] & 0x80
                    )
            continue
        if (rtype == 1 and rdlen == 4) or (rtype == 28 and rdlen == 16):
            if port == MDNS_PORT:
                if owner.lower().endswith(".local"):
                    found.append((owner[:-6], data[rdata_at:pos]))
            else:
                found.append((owner, data[rdata_at:pos]))
        elif rtype == 12 and port == MDNS_PORT:
            target = _name(data, rdata_at)[0]
            address = _reverse_address(owner)
            if address is not None and target.lower().endswith(".local"):
                found.append((target[:-6], address))
    return [(name, address) for name, address in found if name and "." not in name]


@dataclass(frozen=True, slots=True)
class ClientHello:
    """What a TLS ClientHello says in the clear: the server name (SNI), the protocols offered
    (ALPN, comma-separated as sent, e.g. "h3" or "h2,http/1.1") and the highest TLS version
    offered ("tls1.3" when supported_versions lists it, else the legacy version field)."""

    server_name: str | None
    alpn: str | None
    tls_version: str | None


_TLS_VERSIONS: Final = {0x0301: "tls1.0", 0x0302: "tls1.1", 0x0303: "tls1.2", 0x0304: "tls1.3"}


def client_hello(data: bytes, start: int = 0, limit: int | None = None) -> ClientHello | None:
    """A bare ClientHello handshake message (type 1, 3-byte length, body) at data[start:],
    without the TLS record header: the form QUIC carries in its CRYPTO frames. None when
    the bytes are not a ClientHello or stop before its extensions."""
    end = len(data) if limit is None else min(len(data), limit)
    if end - start < 38 or data[start] != 0x01:
        return None
    end = min(end, start + 4 + int.from_bytes(data[start + 1 : start + 4], "big"))
    legacy = (data[start + 4] << 8) | data[start + 5]
    pos = start + 4 + 2 + 32  # handshake header, client version, random
    if pos >= end:
        return None
    pos += 1 + data[pos]  # session id
    if pos + 2 > end:
        return None
    pos += 2 + ((data[pos] << 8) | data[pos + 1])  # cipher suites
    if pos >= end:
        return None
    pos += 1 + data[pos]  # compression methods
    if pos + 2 > end:
        return None
    ext_end = min(end, pos + 2 + ((data[pos] << 8) | data[pos + 1]))
    pos += 2
    name = alpn = None
    version = _TLS_VERSIONS.get(legacy)
    while pos + 4 <= ext_end:
        etype = (data[pos] << 8) | data[pos + 1]
        elen = (data[pos + 2] << 8) | data[pos + 3]
        pos += 4
        body_end = min(pos + elen, ext_end)
        if etype == 0 and pos + 5 <= body_end:
            # server_name_list: list length (2), name type (1), name length (2), name
            nlen = (data[pos + 3] << 8) | data[pos + 4]
            raw = data[pos + 5 : min(pos + 5 + nlen, body_end)]
            if data[pos + 2] == 0 and raw:
                name = raw.decode("ascii", "replace").lower()
        elif etype == 16 and pos + 2 <= body_end:
            # protocol_name_list: list length (2), then (length (1), name) each
            at, names = pos + 2, []
            while at < body_end:
                size = data[at]
                names.append(data[at + 1 : min(at + 1 + size, body_end)].decode("ascii", "replace"))
                at += 1 + size
            alpn = ",".join(names)[:64] or None
        elif etype == 43 and pos < body_end:
            # supported_versions: list length (1), then 2-byte versions (GREASE values skipped)
            offered = [(data[at] << 8) | data[at + 1] for at in range(pos + 1, body_end - 1, 2)]
            known = [v for v in offered if v in _TLS_VERSIONS]
            if known:
                version = _TLS_VERSIONS[max(known)]
        pos += elen
    return ClientHello(name, alpn, version)


def tls_client_hello(data: bytes) -> ClientHello | None:
    """The ClientHello in a TLS record at the start of `data` (a TCP payload), else None."""
    if len(data) < 43 or data[0] != 0x16 or data[5] != 0x01:
        return None
    return client_hello(data, 5, 5 + ((data[3] << 8) | data[4]))


def tls_server_name(data: bytes) -> str | None:
    """The SNI of a TLS ClientHello at the start of `data` (one record), else None."""
    hello = tls_client_hello(data)
    return hello.server_name if hello is not None else None


_HEADER_LIMIT: Final = 8192  # an HTTP request header longer than this is not waited for


@dataclass(slots=True)
class HttpRequest:
    method: str
    host: str | None  # the proxied host for CONNECT, else the Host header (without the port)
    complete: bool  # the header's end (or the Host line's) was in the bytes


def _strip_port(value: str) -> str | None:
    if value.startswith("["):
        return value[1:].split("]", maxsplit=1)[0] or None
    return (value.rsplit(":", 1)[0] if value.count(":") == 1 else value) or None


def http_request(data: bytes) -> HttpRequest | None:
    """The method and host of an HTTP/1 request starting at `data`, as clients send it: any
    method token, lines ending in CRLF or a bare LF, `CONNECT host:port` (the host is the
    proxied one). `complete` is False while the header may still go on in the next segment
    and no Host was found yet (the caller may wait for more). None when `data` does not start
    like an HTTP request. Only the request line's method and the host are read: never the path,
    another header or the body."""
    head = data[:_HEADER_LIMIT]
    space = head.find(b" ", 0, 24)
    if space < 3 or not head[:space].isupper() or not head[:space].isalpha():
        return None
    method = head[:space].decode("ascii")
    line_end = head.find(b"\n")
    line = head[: line_end if line_end >= 0 else len(head)].rstrip(b"\r")
    parts = line.split(b" ")
    if line_end >= 0 and (len(parts) != 3 or not parts[2].startswith(b"HTTP/")):
        return None
    if line_end < 0:
        return HttpRequest(method, None, len(data) >= _HEADER_LIMIT)
    if method == "CONNECT":
        target = parts[1].decode("ascii", "replace").lower()
        return HttpRequest(method, _strip_port(target), True)
    lower = head.lower()
    at = lower.find(b"\nhost:", line_end - 1)
    if at >= 0:
        stop = head.find(b"\n", at + 7)
        if stop >= 0 or len(data) >= _HEADER_LIMIT:
            value = head[at + 7 : stop if stop >= 0 else len(head)].strip()
            return HttpRequest(method, _strip_port(value.decode("ascii", "replace").lower()), True)
        return HttpRequest(method, None, False)
    ended = b"\n\n" in head or b"\n\r\n" in head or len(data) >= _HEADER_LIMIT
    return HttpRequest(method, None, ended)


def http_header_end(data: bytes) -> int:
    """Where the request header at the start of `data` ends (the index after its blank line,
    CRLF or bare LF), or -1 if it has not ended within the bytes given."""
    lf = data.find(b"\n\n")
    crlf = data.find(b"\n\r\n")
    if lf < 0:
        return crlf + 3 if crlf >= 0 else -1
    if crlf < 0 or lf < crlf:
        return lf + 2
    return crlf + 3


def http_body_length(header: bytes) -> int | None:
    """The body length a request header announces: Content-Length, 0 without one, None for a
    body that cannot be framed without reading it (chunked, or a bad length)."""
    lower = header.lower()
    if b"\ntransfer-encoding:" in lower:
        return None
    at = lower.find(b"\ncontent-length:")
    if at < 0:
        return 0
    stop = lower.find(b"\n", at + 16)
    value = lower[at + 16 : stop if stop >= 0 else len(lower)].strip()
    return int(value) if value.isdigit() else None


def http_host(data: bytes) -> str | None:
    """The Host header (or CONNECT's proxied host) of an HTTP request starting at `data`."""
    request = http_request(data)
    return request.host if request is not None else None


# --- peer-to-peer markers ---------------------------------------------------------------

BT_HANDSHAKE: Final = b"\x13BitTorrent protocol"


def bittorrent_tcp(data: bytes) -> tuple[str, str | None] | None:
    """('handshake'|'tracker', info_hash hex or None) for a BitTorrent TCP payload."""
    if data.startswith(BT_HANDSHAKE):
        info_hash = data[28:48].hex() if len(data) >= 48 else None
        return "handshake", info_hash
    if data.startswith(b"GET ") and b"info_hash=" in data[:2048]:
        line = data[: data.find(b"\r\n")] if b"\r\n" in data else data[:2048]
        at = line.find(b"info_hash=")
        raw = line[at + 10 :].split(b"&", 1)[0].split(b" ", 1)[0]
        return "tracker", _url_bytes(raw).hex() if raw else None
    return None


def _url_bytes(raw: bytes) -> bytes:
    out = bytearray()
    i = 0
    while i < len(raw):
        if raw[i] == 0x25 and i + 2 < len(raw):
            try:
                out.append(int(raw[i + 1 : i + 3], 16))
                i += 3
                continue
            except ValueError:
                pass
        out.append(raw[i])
        i += 1
    return bytes(out)


def bittorrent_udp(data: bytes) -> tuple[str, str | None] | None:
    """('dht'|'utp'|'udp_tracker', info_hash or None) for a UDP payload, else None."""
    n = len(data)
    if (
        n >= 12
        and data[0] == 0x64
        and data[-1] == 0x65
        and (b"1:y1:q" in data or b"1:y1:r" in data or b"1:y1:e" in data)
    ):
        at = data.find(b"9:info_hash20:")
        return "dht", data[at + 14 : at + 34].hex() if at >= 0 and n >= at + 34 else None
    if n >= 16 and data[:8] == b"\x00\x00\x04\x17\x27\x10\x19\x80":
        return "udp_tracker", None  # UDP tracker connect request (BEP 15 magic)
    if n >= 20:
        kind = data[0] >> 4
        # uTP (BEP 29): version 1, type 0..4, a known extension, and a sane window.
        if data[0] & 0x0F == 1 and kind <= 4 and data[1] in (0, 1, 2, 3):
            ext = data[1]
            pos = 20
            while ext and pos + 2 <= n:  # extension chain must be well formed
                ext, elen = data[pos], data[pos + 1]
                pos += 2 + elen
            if pos <= n and (kind != 4 or n == pos):  # a SYN carries no payload
                return "utp", None
    return None


# --- DHCP ------------------------------------------------------------------------------


@dataclass(slots=True)
class DhcpMessage:
    msg_type: str
    xid: int
    mac: str
    client_addr: str | None
    assigned_addr: str | None
    requested_addr: str | None
    hostname: str | None
    lease_seconds: int | None
    server_id: str | None
    vendor_class: str | None = None  # option 60 ("MSFT 5.0", "android-dhcp-13")
    domain: str | None = None  # option 15
    message: str | None = None  # option 56: why a NAK or DECLINE
    circuit_id: str | None = None  # option 82 sub-option 1: the switch port / AP the relay saw
    remote_id: str | None = None  # option 82 sub-option 2: the relay (switch) itself
    relay_addr: str | None = None  # giaddr: the relay that forwarded it


_DHCP_TYPES: Final = {
    1: "DISCOVER",
    2: "OFFER",
    3: "REQUEST",
    4: "DECLINE",
    5: "ACK",
    6: "NAK",
    7: "RELEASE",
    8: "INFORM",
}


def _dhcp_text(raw: bytes | None) -> str | None:
    """An option's text as a log line can carry it: printable ASCII as is, else hex (a
    circuit id is often binary: a VLAN and port number); at most 255 characters."""
    if raw is None:
        return None
    raw = raw.rstrip(b"\x00")
    if not raw:
        return None
    if all(32 <= b < 127 for b in raw):
        return raw.decode("ascii")[:255]
    return raw.hex(":")[:255]


def _relay_agent(raw: bytes | None) -> tuple[str | None, str | None]:
    """Option 82 (RFC 3046): sub-options 1 (circuit id) and 2 (remote id)."""
    circuit = remote = None
    if raw:
        pos, n = 0, len(raw)
        while pos + 2 <= n:
            code, size = raw[pos], raw[pos + 1]
            if pos + 2 + size > n:
                raise ValueError("DHCP relay agent sub-option runs past the option")
            value = raw[pos + 2 : pos + 2 + size]
            if code == 1:
                circuit = _dhcp_text(value)
            elif code == 2:
                remote = _dhcp_text(value)
            pos += 2 + size
    return circuit, remote


def parse_dhcp(data: bytes) -> DhcpMessage | None:
    """BOOTP/DHCP (RFC 2131/2132) from raw bytes: the fixed header and options 12, 15, 50, 51,
    53, 54, 56, 60 and 82 (relay agent: circuit and remote id, RFC 3046). Returns None for
    BOOTP without the DHCP magic; raises ValueError on corrupt options.
    (Decoded by hand rather than with scapy: 60x faster, and DHCP storms are not rare.)"""
    if len(data) < 240 or data[236:240] != b"\x63\x82\x53\x63" or data[0] not in (1, 2):
        return None
    options: dict[int, bytes] = {}
    pos = 240
    n = len(data)
    while pos < n:
        code = data[pos]
        if code == 255:
            break
        if code == 0:
            pos += 1
            continue
        if pos + 1 >= n:
            raise ValueError("DHCP option runs past the packet")
        size = data[pos + 1]
        if pos + 2 + size > n:
            raise ValueError("DHCP option runs past the packet")
        # RFC 3396: an option repeated is one long option, its parts concatenated.
        value = data[pos + 2 : pos + 2 + size]
        options[code] = options[code] + value if code in options else value
        pos += 2 + size
    kind = options.get(53)
    if not kind:
        return None

    def addr(raw: bytes | None) -> str | None:
        if raw is None or len(raw) != 4 or raw == b"\x00\x00\x00\x00":
            return None
        return ".".join(str(b) for b in raw)

    lease = options.get(51)
    hostname = options.get(12)
    circuit_id, remote_id = _relay_agent(options.get(82))
    return DhcpMessage(
        msg_type=_DHCP_TYPES.get(kind[0], "UNKNOWN"),
        xid=int.from_bytes(data[4:8], "big"),
        mac=data[28:34].hex(":"),
        client_addr=addr(data[12:16]),
        assigned_addr=addr(data[16:20]),
        requested_addr=addr(options.get(50)),
        hostname=hostname.rstrip(b"\x00").decode("ascii", "replace") if hostname else None,
        lease_seconds=int.from_bytes(lease, "big") if lease and len(lease) == 4 else None,
        server_id=addr(options.get(54)),
        vendor_class=_dhcp_text(options.get(60)),
        domain=_dhcp_text(options.get(15)),
        message=_dhcp_text(options.get(56)),
        circuit_id=circuit_id,
        remote_id=remote_id,
        relay_addr=addr(data[24:28]),
    )
