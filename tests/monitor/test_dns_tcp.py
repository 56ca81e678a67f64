"""DNS over TCP (RFC 7766): length-prefixed messages, several in a segment or one across
segments, both directions, whole keepalive connections; every query type named."""

from __future__ import annotations

import subprocess

import pytest
from scapy.layers.dns import DNS, DNSQR, DNSRR
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from service.monitor.extract import qtype_name
from tests.monitor import traffic as t
from tests.monitor.conftest import shared

CLIENT_PORT = 51000


def _message(txid: int, name: str, answer: str | None = None, qtype: int | str = "A") -> bytes:
    if answer is None:
        dns = DNS(id=txid, rd=1, qd=DNSQR(qname=name, qtype=qtype))
    else:
        dns = DNS(
            id=txid,
            qr=1,
            rd=1,
            ra=1,
            qd=DNSQR(qname=name, qtype=qtype),
            an=DNSRR(rrname=name, type="A", ttl=300, rdata=answer),
        )
    raw = bytes(dns)
    return len(raw).to_bytes(2, "big") + raw


def _sequenced(start: int, segments: list[bytes]) -> list[tuple[int, bytes]]:
    """Each segment with its TCP sequence number, the bytes following each other."""
    out = []
    for segment in segments:
        out.append((start, segment))
        start += len(segment)
    return out


def _tcp_stream(client_segments: list[bytes], server_segments: list[bytes]) -> list:
    """One TCP connection to port 53: handshake, the client's segments, the server's, FINs."""
    c = Ether(src=t.LAPTOP_MAC, dst=t.ROUTER_MAC) / IP(src=t.LAPTOP_IP, dst=t.DNS_SERVER)
    s = Ether(src=t.ROUTER_MAC, dst=t.LAPTOP_MAC) / IP(src=t.DNS_SERVER, dst=t.LAPTOP_IP)
    pkts = [
        c / TCP(sport=CLIENT_PORT, dport=53, flags="S", seq=1000),
        s / TCP(sport=53, dport=CLIENT_PORT, flags="SA", seq=5000),
        c / TCP(sport=CLIENT_PORT, dport=53, flags="A", seq=1001),
    ]
    pkts += [
        c / TCP(sport=CLIENT_PORT, dport=53, flags="PA", seq=seq) / Raw(x)
        for seq, x in _sequenced(1001, client_segments)
    ]
    pkts += [
        s / TCP(sport=53, dport=CLIENT_PORT, flags="PA", seq=seq) / Raw(x)
        for seq, x in _sequenced(5001, server_segments)
    ]
    pkts += [
        c / TCP(sport=CLIENT_PORT, dport=53, flags="FA"),
        s / TCP(sport=53, dport=CLIENT_PORT, flags="FA"),
    ]
    for index, pkt in enumerate(pkts):
        pkt.time = t.T0 + index * 0.01
    return pkts


def test_a_message_split_mid_message_and_two_in_one_segment(tmp_path, run_file) -> None:
    queries = [_message(1, "one.example"), _message(2, "two.example"), _message(3, "three.ex")]
    answers = [
        _message(1, "one.example", "192.0.2.1"),
        _message(2, "two.example", "192.0.2.2"),
        _message(3, "three.ex", "192.0.2.3"),
    ]
    stream = b"".join(queries)
    # Client: the first query cut inside its question (and inside a length prefix later).
    client = [stream[:9], stream[9 : len(queries[0]) + 1], stream[len(queries[0]) + 1 :]]
    # Server: two answers in one segment, the third in two halves.
    server = [answers[0] + answers[1], answers[2][:5], answers[2][5:]]
    recorded = run_file(t.write(tmp_path / "dns-tcp.pcap", _tcp_stream(client, server)))
    rows = sorted(recorded.of("dns"), key=lambda r: r["trans_id"])
    assert [(r["trans_id"], r["query"], r["answers"], r["rcode"]) for r in rows] == [
        (1, "one.example", ["192.0.2.1"], 0),
        (2, "two.example", ["192.0.2.2"], 0),
        (3, "three.ex", ["192.0.2.3"], 0),
    ]
    assert {(r["client_ip"], r["client_port"], r["server_port"]) for r in rows} == {
        (t.LAPTOP_IP, CLIENT_PORT, 53)
    }
    assert all(r["rtt"] is not None and r["rtt"] > 0 for r in rows)
    [flow] = recorded.of("flows")
    assert flow["service"] == "dns"
    assert recorded.monitor is not None
    assert recorded.monitor.counters.dns_errors == 0


def test_a_stream_that_is_not_dns_is_given_up_without_a_crash(tmp_path, run_file) -> None:
    # A length prefix of 65535 that never completes: buffered up to the limit, then dropped.
    junk = [b"\xff\xff" + b"x" * 1400] + [b"y" * 1400] * 60
    recorded = run_file(t.write(tmp_path / "junk.pcap", _tcp_stream(junk, [])))
    assert recorded.of("dns") == []
    assert recorded.monitor is not None
    assert recorded.monitor.counters.dns_errors == 1
    assert len(recorded.of("flows")) == 1


def _tshark(path, *fields: str) -> list[list[str]]:
    try:
        out = subprocess.run(
            [
                "tshark",
                "-n",
                "-r",
                str(path),
                "-T",
                "fields",
                *[x for f in fields for x in ("-e", f)],
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except FileNotFoundError:
        pytest.skip("tshark is not installed")
    return [line.split("\t") for line in out.splitlines() if line.strip("\t")]


def test_keepalive_capture_matches_tshark(run_file) -> None:
    path = shared("zeek/dns-over-tcp-keepalive.pcap")
    recorded = run_file(path)
    theirs = sorted(
        (r[0], int(r[1], 16), r[2], int(r[3]))
        for r in _tshark(path, "dns.flags.response", "dns.id", "dns.qry.name", "dns.qry.type")
        if r[0] == "False" or r[0] == "0"
    )
    assert theirs  # two queries, one per keepalive connection
    ours = sorted((theirs[0][0], r["trans_id"], r["query"], r["qtype"]) for r in recorded.of("dns"))
    assert ours == theirs
    assert all(r["rcode_name"] == "NOERROR" and r["answers"] for r in recorded.of("dns"))


@pytest.mark.parametrize(
    ("qtype", "name"),
    [(1, "A"), (64, "SVCB"), (65, "HTTPS"), (249, "TKEY"), (12345, "TYPE12345"), (99, "SPF")],
)
def test_every_query_type_is_named(tmp_path, run_file, qtype: int, name: str) -> None:
    query = (
        Ether(src=t.LAPTOP_MAC, dst=t.ROUTER_MAC)
        / IP(src=t.LAPTOP_IP, dst=t.DNS_SERVER)
        / UDP(sport=40001, dport=53)
        / DNS(id=7, rd=1, qd=DNSQR(qname="svc.example", qtype=qtype))
    )
    query.time = t.T0
    recorded = run_file(t.write(tmp_path / "q.pcap", [query]))
    [row] = recorded.of("dns")
    assert (row["query"], row["qtype"], row["qtype_name"]) == ("svc.example", qtype, name)
    assert qtype_name(qtype) == name


def test_netbios_types_are_named_on_the_netbios_port() -> None:
    assert qtype_name(32, netbios=True) == "NB"
    assert qtype_name(33, netbios=True) == "NBSTAT"
    assert qtype_name(33) == "SRV"
    assert qtype_name(None) is None
