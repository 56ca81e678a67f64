"""Crafted traffic for the monitor tests: scapy builds the packets, wrpcap writes the files."""

from __future__ import annotations

from pathlib import Path

from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.dns import DNS, DNSQR, DNSRR
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether
from scapy.packet import Packet, Raw
from scapy.utils import wrpcap

LAPTOP_MAC = "02:00:00:00:10:01"  # westgate's school laptop
VISITOR_MAC = "02:00:00:00:30:01"  # westgate's visitor phone
ROUTER_MAC = "02:00:00:00:00:fe"
LAPTOP_IP = "10.10.0.21"
VISITOR_IP = "10.30.0.55"
DNS_SERVER = "10.0.0.53"
T0 = 1_795_000_000.0  # 2026-11-18 (a Wednesday), fixed so the tests are repeatable
INFO_HASH = bytes(range(20))


def tcp_session(
    client: str,
    cport: int,
    server: str,
    sport: int,
    t: float,
    request: bytes,
    response: bytes = b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * 500,
    mac: str = LAPTOP_MAC,
    vlan: list[Packet] | None = None,
) -> list[Packet]:
    """Handshake, one request, one response, FIN both ways."""

    def l2(src: str) -> Packet:
        frame = Ether(src=src, dst=ROUTER_MAC if src == mac else mac)
        for tag in vlan or []:
            frame = frame / tag
        return frame

    c, s = l2(mac), l2(ROUTER_MAC)
    ip_c, ip_s = IP(src=client, dst=server), IP(src=server, dst=client)
    pkts = [
        c / ip_c / TCP(sport=cport, dport=sport, flags="S", seq=100),
        s / ip_s / TCP(sport=sport, dport=cport, flags="SA", seq=900, ack=101),
        c / ip_c / TCP(sport=cport, dport=sport, flags="A", seq=101, ack=901),
        c / ip_c / TCP(sport=cport, dport=sport, flags="PA", seq=101, ack=901) / Raw(request),
        s
        / ip_s
        / TCP(sport=sport, dport=cport, flags="PA", seq=901, ack=101 + len(request))
        / Raw(response),
        c / ip_c / TCP(sport=cport, dport=sport, flags="FA"),
        s / ip_s / TCP(sport=sport, dport=cport, flags="FA"),
        c / ip_c / TCP(sport=cport, dport=sport, flags="A"),
    ]
    for index, pkt in enumerate(pkts):
        pkt.time = t + index * 0.01
    return pkts


def client_hello(name: str) -> bytes:
    """A TLS 1.2 ClientHello record with SNI and one more extension, byte by byte (RFC 8446 4.1.2;
    scapy's TLS layer needs the cryptography package for this, which is not installed here)."""
    host = name.encode()
    sni_list = b"\x00" + len(host).to_bytes(2, "big") + host
    sni = (
        b"\x00\x00"
        + (len(sni_list) + 2).to_bytes(2, "big")
        + len(sni_list).to_bytes(2, "big")
        + sni_list
    )
    alpn = b"\x00\x10\x00\x05\x00\x03\x02h2"
    extensions = alpn + sni
    body = (
        b"\x03\x03"
        + b"\x11" * 32
        + b"\x20"
        + b"\x22" * 32
        + b"\x00\x04\x13\x01\xc0\x2f"
        + b"\x01\x00"
        + len(extensions).to_bytes(2, "big")
        + extensions
    )
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + len(handshake).to_bytes(2, "big") + handshake


def dns_exchange(
    client: str,
    name: str,
    answer: str,
    t: float,
    *,
    qtype: str = "A",
    txid: int = 4242,
    mac: str = LAPTOP_MAC,
) -> list[Packet]:
    query = (
        Ether(src=mac, dst=ROUTER_MAC)
        / IP(src=client, dst=DNS_SERVER)
        / UDP(sport=40000 + txid % 1000, dport=53)
        / DNS(id=txid, rd=1, qd=DNSQR(qname=name, qtype=qtype))
    )
    reply = (
        Ether(src=ROUTER_MAC, dst=mac)
        / IP(src=DNS_SERVER, dst=client)
        / UDP(sport=53, dport=40000 + txid % 1000)
        / DNS(
            id=txid,
            qr=1,
            rd=1,
            ra=1,
            qd=DNSQR(qname=name, qtype=qtype),
            an=[
                DNSRR(rrname=name, type="CNAME", ttl=60, rdata="edge." + name),
                DNSRR(rrname="edge." + name, type=qtype, ttl=300, rdata=answer),
            ],
        )
    )
    query.time, reply.time = t, t + 0.02
    return [query, reply]


def dhcp_dora(mac: str, ip: str, hostname: str, t: float, lease: int = 3600) -> list[Packet]:
    chaddr = bytes.fromhex(mac.replace(":", ""))
    base = (
        Ether(src=mac, dst="ff:ff:ff:ff:ff:ff")
        / IP(src="0.0.0.0", dst="255.255.255.255")
        / UDP(sport=68, dport=67)
    )
    back = Ether(src=ROUTER_MAC, dst=mac) / IP(src="10.0.0.1", dst=ip) / UDP(sport=67, dport=68)
    pkts = [
        base
        / BOOTP(op=1, chaddr=chaddr, xid=77)
        / DHCP(options=[("message-type", "discover"), ("hostname", hostname), "end"]),
        back
        / BOOTP(op=2, chaddr=chaddr, xid=77, yiaddr=ip)
        / DHCP(
            options=[
                ("message-type", "offer"),
                ("server_id", "10.0.0.1"),
                ("lease_time", lease),
                "end",
            ]
        ),
        base
        / BOOTP(op=1, chaddr=chaddr, xid=77)
        / DHCP(
            options=[
                ("message-type", "request"),
                ("requested_addr", ip),
                ("hostname", hostname),
                "end",
            ]
        ),
        back
        / BOOTP(op=2, chaddr=chaddr, xid=77, yiaddr=ip)
        / DHCP(
            options=[
                ("message-type", "ack"),
                ("server_id", "10.0.0.1"),
                ("lease_time", lease),
                "end",
            ]
        ),
    ]
    for index, pkt in enumerate(pkts):
        pkt.time = t + index * 0.1
    return pkts


def bittorrent_handshake(client: str, peer: str, t: float, mac: str = VISITOR_MAC) -> list[Packet]:
    hs = b"\x13BitTorrent protocol" + b"\x00" * 8 + INFO_HASH + b"-qB4500-abcdefghijkl"
    return tcp_session(client, 51413, peer, 6881, t, hs, hs, mac=mac)


def utp_packets(client: str, peer: str, t: float, mac: str = VISITOR_MAC) -> list[Packet]:
    syn = bytes([0x41, 0]) + b"\x12\x34" + b"\x00" * 8 + b"\x00\x10\x00\x00" + b"\x00\x01\x00\x00"
    data = (
        bytes([0x01, 0])
        + b"\x12\x35"
        + b"\x00" * 8
        + b"\x00\x10\x00\x00"
        + b"\x00\x02\x00\x01"
        + b"payload"
    )
    pkts = [
        Ether(src=mac, dst=ROUTER_MAC)
        / IP(src=client, dst=peer)
        / UDP(sport=6881, dport=7000)
        / Raw(syn),
        Ether(src=mac, dst=ROUTER_MAC)
        / IP(src=client, dst=peer)
        / UDP(sport=6881, dport=7000)
        / Raw(data),
    ]
    for index, pkt in enumerate(pkts):
        pkt.time = t + index * 0.05
    return pkts


def dht_query(client: str, node: str, t: float, mac: str = VISITOR_MAC) -> list[Packet]:
    krpc = (
        b"d1:ad2:id20:"
        + b"A" * 20
        + b"9:info_hash20:"
        + INFO_HASH
        + b"e1:q9:get_peers1:t2:aa1:y1:qe"
    )
    pkt = (
        Ether(src=mac, dst=ROUTER_MAC)
        / IP(src=client, dst=node)
        / UDP(sport=6882, dport=6881)
        / Raw(krpc)
    )
    pkt.time = t
    return [pkt]


def tracker_announce(client: str, tracker: str, t: float, mac: str = VISITOR_MAC) -> list[Packet]:
    escaped = "".join(f"%{b:02X}" for b in INFO_HASH)
    request = f"GET /announce?info_hash={escaped}&peer_id=x&port=6881 HTTP/1.1\r\nHost: tracker.example.org\r\n\r\n".encode()
    return tcp_session(client, 52000, tracker, 80, t, request, mac=mac)


def arp_reply(ip: str, mac: str, t: float) -> list[Packet]:
    pkt = Ether(src=mac, dst=ROUTER_MAC) / ARP(
        op=2, hwsrc=mac, psrc=ip, hwdst=ROUTER_MAC, pdst="10.0.0.1"
    )
    pkt.time = t
    return [pkt]


def school_day() -> list[Packet]:
    """A laptop gets a lease, looks up and visits two sites; a visitor phone runs BitTorrent."""
    pkts: list[Packet] = []
    pkts += dhcp_dora(LAPTOP_MAC, LAPTOP_IP, "laptop-21", T0)
    pkts += arp_reply(VISITOR_IP, VISITOR_MAC, T0 + 0.5)
    pkts += dns_exchange(LAPTOP_IP, "www.bbc.co.uk", "151.101.0.81", T0 + 1)
    pkts += tcp_session(
        LAPTOP_IP,
        50001,
        "151.101.0.81",
        443,
        T0 + 2,
        client_hello("www.bbc.co.uk"),
        b"\x16\x03\x03" + b"y" * 900,
    )
    pkts += tcp_session(
        LAPTOP_IP,
        50002,
        "151.101.0.81",
        443,
        T0 + 62,
        client_hello("www.bbc.co.uk"),
        b"\x16\x03\x03" + b"y" * 900,
    )
    pkts += tcp_session(
        LAPTOP_IP,
        50003,
        "93.184.216.34",
        80,
        T0 + 70,
        b"GET /secret/path?q=1 HTTP/1.1\r\nHost: Example.com:8080\r\nCookie: s=1\r\n\r\n",
    )
    pkts += dns_exchange(LAPTOP_IP, "bet365.com", "5.226.180.10", T0 + 80, txid=99)
    pkts += tcp_session(LAPTOP_IP, 50004, "5.226.180.10", 443, T0 + 81, b"\x17\x03\x03" + b"z" * 50)
    pkts += bittorrent_handshake(VISITOR_IP, "198.51.100.7", T0 + 100)
    pkts += tracker_announce(VISITOR_IP, "198.51.100.9", T0 + 101)
    pkts += utp_packets(VISITOR_IP, "198.51.100.8", T0 + 102)
    pkts += dht_query(VISITOR_IP, "198.51.100.10", T0 + 103)
    # Later traffic between the same BitTorrent peers, nothing recognisable in it.
    pkts += tcp_session(
        VISITOR_IP, 51999, "198.51.100.7", 6881, T0 + 200, b"\x00\x00\x00\x05\x04" + b"\x00" * 4
    )
    return pkts


def write(path: Path, packets: list[Packet]) -> Path:
    wrpcap(str(path), packets)
    return path


def vlan_tags() -> list[Packet]:
    return [Dot1AD(vlan=100), Dot1Q(vlan=20)]


def ipv6_fragmented_dns(t: float) -> list[Packet]:
    from scapy.layers.inet6 import IPv6ExtHdrFragment, fragment6

    big = DNS(
        id=7,
        qr=1,
        qd=DNSQR(qname="big.example", qtype="TXT"),
        an=DNSRR(rrname="big.example", type="TXT", rdata=["a" * 200] * 8),
    )
    packet = (
        IPv6(src="2001:db8::53", dst="2001:db8::21")
        / IPv6ExtHdrFragment()
        / UDP(sport=53, dport=41000)
        / big
    )
    frags = fragment6(packet, 600)
    out = [Ether(src=ROUTER_MAC, dst=LAPTOP_MAC) / f for f in frags]
    for index, pkt in enumerate(out):
        pkt.time = t + index * 0.001
    return out
