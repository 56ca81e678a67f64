"""Raw-bytes parser for the capture hot path: link layer, VLAN tags, IPv4/IPv6 (with fragment
reassembly), TCP/UDP/ARP headers. Nothing here allocates more than a tuple per packet.

Hot path: guarded by `bench/monitor_pcap.py` (target: 5x tshark end to end). Keep it to slicing
and `int.from_bytes`; no scapy, no dataclasses, no logging.
"""

from __future__ import annotations

import mmap
import struct
from typing import Final, TypeAlias

# Link types (pcap LINKTYPE_*) we understand.
LINK_NULL: Final = 0
LINK_ETHERNET: Final = 1
LINK_RAW: Final = 101
LINK_RAW_BSD: Final = 12
LINK_LINUX_SLL: Final = 113
LINK_IPV4: Final = 228
LINK_IPV6: Final = 229
LINK_LINUX_SLL2: Final = 276
KNOWN_LINKTYPES: Final = frozenset(
    {
        LINK_NULL,
        LINK_ETHERNET,
        LINK_RAW,
        LINK_RAW_BSD,
        LINK_LINUX_SLL,
        LINK_IPV4,
        LINK_IPV6,
        LINK_LINUX_SLL2,
    }
)

PROTO_TCP: Final = 6
PROTO_UDP: Final = 17
ARP: Final = -1  # the `proto` of an ARP packet tuple

MAX_FRAME: Final = 65535 + 64  # anything larger is "oversized" and skipped
_FRAG_LIMIT: Final = 2048  # at most this many reassemblies in flight
_FRAG_TIMEOUT: Final = 30.0

# A parsed packet: (proto, src_ip, dst_ip, sport, dport, payload, ip_len, tcp_flags, src_mac, vlan,
# tcp_seq) src_ip/dst_ip are the raw 4- or 16-byte addresses; src_mac the raw 6 bytes (b"" if no
# L2); tcp_seq the TCP sequence number (0 for anything else).
# For ARP: (ARP, sender_ip, target_ip, opcode, 0, b"", 0, 0, sender_mac, vlan, 0).
Packet = tuple[int, bytes, bytes, int, int, bytes, int, int, bytes, int, int]

# What frames are handed over in: a bytes block of the capture, or the mapped capture file
# (capture._mapped); either way a slice of it is bytes.
FrameBuffer: TypeAlias = bytes | mmap.mmap


# The fast path's view of an untagged Ethernet frame carrying IPv4 without options, read with one
# unpack_from at the frame's start: ethertype, version/IHL, total length, flags/fragment offset,
# protocol, the two ports, and for TCP the data offset and flags (offsets 46 and 47; for UDP
# those two bytes are payload and unused). Source, destination and ports are the 12 bytes at
# offsets 26..38, which is also the flow key (`flow_key`). The engine uses it only for frames of
# at least ETH_IPV4_MIN bytes and falls back to `parse` for anything else, so both agree.
ETH_IPV4: Final = struct.Struct(">12xHBxH2xHxB2x8xHH8xBB")
ETH_IPV4_MIN: Final = ETH_IPV4.size  # 48
ETH_IPV4_KEY: Final = 26  # offset of source address, destination address, ports
ETH_IPV4_SEQ: Final = 38  # offset of the TCP sequence number (read with TCP_SEQ when needed)
TCP_SEQ: Final = struct.Struct(">I")
_PORTS: Final = struct.Struct(">HH").pack


def flow_key(src: bytes, dst: bytes, sport: int, dport: int) -> bytes:
    """Source and destination address and port in wire order: the flow table's key (for IPv4
    without options it is a plain slice of the packet, see ETH_IPV4_KEY)."""
    return src + dst + _PORTS(sport, dport)


class Truncated(Exception):
    """A header ran past the end of the captured bytes."""


class Reassembler:
    """IPv4 and IPv6 fragment reassembly, bounded in memory and time."""

    __slots__ = ("pending", "timeouts")

    def __init__(self) -> None:
        # key -> [first_seen, {offset: bytes}, total_len or -1, proto]
        self.pending: dict[tuple[bytes, bytes, int, int], list[object]] = {}
        self.timeouts = 0

    def add(
        self,
        key: tuple[bytes, bytes, int, int],
        ts: float,
        offset: int,
        more: bool,
        data: bytes,
        proto: int,
    ) -> bytes | None:
        entry = self.pending.get(key)
        if entry is None:
            if len(self.pending) >= _FRAG_LIMIT:
                self.expire(ts, force=True)
            entry = [ts, {}, -1, proto]
            self.pending[key] = entry
        parts: dict[int, bytes] = entry[1]  # type: ignore[assignment]
        parts[offset] = data
        if not more:
            entry[2] = offset + len(data)
        if offset == 0:
            entry[3] = proto
        total: int = entry[2]  # type: ignore[assignment]
        if total < 0:
            return None
        # Complete when the pieces cover [0, total) without holes.
        position = 0
        chunks = []
        for start in sorted(parts):
            if start > position:
                return None
            piece = parts[start]
            if start + len(piece) > position:
                chunks.append(piece[position - start :])
                position = start + len(piece)
        if position < total:
            return None
        del self.pending[key]
        return b"".join(chunks)[:total]

    def expire(self, now: float, *, force: bool = False) -> None:
        stale = [k for k, v in self.pending.items() if force or now - v[0] > _FRAG_TIMEOUT]  # type: ignore[operator]
        for key in stale:
            del self.pending[key]
        self.timeouts += len(stale)


def parse(frame: bytes, linktype: int, ts: float, frags: Reassembler) -> Packet | None:
    """One frame to a `Packet`, or None for what the monitor does not follow (other ethertypes,
    ICMP, a fragment still waiting for the rest). Raises `Truncated`/`ValueError` on bad bytes."""
    n = len(frame)
    src_mac = b""
    vlan = 0
    if linktype == LINK_ETHERNET:
        if n < 14:
            raise Truncated
        src_mac = frame[6:12]
        etype = (frame[12] << 8) | frame[13]
        off = 14
        # 802.1Q, 802.1ad (QinQ) and the old 0x9100 tag; the outermost VLAN id is kept.
        while etype in (0x8100, 0x88A8, 0x9100):
            if n < off + 4:
                raise Truncated
            if not vlan:
                vlan = ((frame[off] << 8) | frame[off + 1]) & 0x0FFF
            etype = (frame[off + 2] << 8) | frame[off + 3]
            off += 4
    elif linktype in (LINK_RAW, LINK_RAW_BSD, LINK_IPV4, LINK_IPV6):
        if n < 1:
            raise Truncated
        etype = 0x0800 if frame[0] >> 4 == 4 else 0x86DD
        off = 0
    elif linktype == LINK_LINUX_SLL:
        if n < 16:
            raise Truncated
        etype = (frame[14] << 8) | frame[15]
        if frame[10:12] == b"\x00\x06":
            src_mac = frame[6:12]
        off = 16
    elif linktype == LINK_LINUX_SLL2:
        if n < 20:
            raise Truncated
        etype = (frame[0] << 8) | frame[1]
        if frame[11] == 6:
            src_mac = frame[12:18]
        off = 20
    elif linktype == LINK_NULL:
        if n < 4:
            raise Truncated
        family = int.from_bytes(frame[0:4], "little")
        if family > 0xFFFF:
            family = int.from_bytes(frame[0:4], "big")
        etype = 0x0800 if family == 2 else 0x86DD
        off = 4
    else:
        raise ValueError("unknown link type")

    if etype == 0x0800:
        if n < off + 20:
            raise Truncated
        vihl = frame[off]
        ihl = (vihl & 0x0F) * 4
        if vihl >> 4 != 4 or ihl < 20:
            raise ValueError("bad IPv4 header")
        total = (frame[off + 2] << 8) | frame[off + 3]
        if total < ihl:
            raise ValueError("bad IPv4 length")
        proto = frame[off + 9]
        src = frame[off + 12 : off + 16]
        dst = frame[off + 16 : off + 20]
        end = off + total
        if end > n:
            raise Truncated
        fragword = (frame[off + 6] << 8) | frame[off + 7]
        l4 = off + ihl
        if fragword & 0x3FFF:  # MF set or a non-zero offset: a fragment
            data = frags.add(
                (src, dst, (frame[off + 4] << 8) | frame[off + 5], proto),
                ts,
                (fragword & 0x1FFF) * 8,
                bool(fragword & 0x2000),
                frame[l4:end],
                proto,
            )
            if data is None:
                return None
            frame = data
            l4 = 0
            end = len(data)
            total = end + ihl
    elif etype == 0x86DD:
        if n < off + 40:
            raise Truncated
        if frame[off] >> 4 != 6:
            raise ValueError("bad IPv6 header")
        plen = (frame[off + 4] << 8) | frame[off + 5]
        proto = frame[off + 6]
        src = frame[off + 8 : off + 24]
        dst = frame[off + 24 : off + 40]
        l4 = off + 40
        end = l4 + plen
        if end > n:
            raise Truncated
        total = plen + 40
        # Walk extension headers: hop-by-hop, routing, destination options, fragment.
        while proto in (0, 43, 60, 44):
            if end < l4 + 8:
                raise Truncated
            if proto == 44:
                fragword = (frame[l4 + 2] << 8) | frame[l4 + 3]
                ident = int.from_bytes(frame[l4 + 4 : l4 + 8], "big")
                proto = frame[l4]
                l4 += 8
                if fragword & 0xFFF9:  # offset or M flag
                    data = frags.add(
                        (src, dst, ident, 256),
                        ts,
                        fragword & 0xFFF8,
                        bool(fragword & 1),
                        frame[l4:end],
                        proto,
                    )
                    if data is None:
                        return None
                    frame = data
                    l4 = 0
                    end = len(data)
                continue
            proto, l4 = frame[l4], l4 + (frame[l4 + 1] + 1) * 8
    elif etype == 0x0806:
        if n < off + 28:
            raise Truncated
        # Ethernet/IPv4 ARP only: sender MAC/IP, target IP, opcode.
        if frame[off + 4] != 6 or frame[off + 5] != 4:
            return None
        return (
            ARP,
            frame[off + 14 : off + 18],
            frame[off + 24 : off + 28],
            frame[off + 7],
            0,
            b"",
            28,
            0,
            frame[off + 8 : off + 14],
            vlan,
            0,
        )
    else:
        return None

    if proto == PROTO_TCP:
        if end < l4 + 20:
            raise Truncated
        doff = (frame[l4 + 12] >> 4) * 4
        if doff < 20 or l4 + doff > end:
            raise ValueError("bad TCP header")
        return (
            PROTO_TCP,
            src,
            dst,
            (frame[l4] << 8) | frame[l4 + 1],
            (frame[l4 + 2] << 8) | frame[l4 + 3],
            frame[l4 + doff : end],
            total,
            frame[l4 + 13],
            src_mac,
            vlan,
            int.from_bytes(frame[l4 + 4 : l4 + 8], "big"),
        )
    if proto == PROTO_UDP:
        if end < l4 + 8:
            raise Truncated
        return (
            PROTO_UDP,
            src,
            dst,
            (frame[l4] << 8) | frame[l4 + 1],
            (frame[l4 + 2] << 8) | frame[l4 + 3],
            frame[l4 + 8 : end],
            total,
            0,
            src_mac,
            vlan,
            0,
        )
    # Other IP protocols (ICMP, GRE, ...) are counted as flows without ports.
    return (proto, src, dst, 0, 0, b"", total, 0, src_mac, vlan, 0)
