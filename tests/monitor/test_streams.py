"""TCP streams as clients really send them (issue 14): retransmitted, out-of-order and
wrapped-around segments of DNS over TCP, keepalive HTTP connections, request headers and
ClientHellos over many segments. Generated captures, read the way `monitor run --read` reads."""

from __future__ import annotations

import itertools

from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from service.monitor.stream import HOLD_SEGMENTS, Stream
from tests.monitor import traffic as t
from tests.monitor.test_dns_tcp import CLIENT_PORT, _message

SERVER = "93.184.216.34"


def _connection(
    server: str,
    port: int,
    client: list[tuple[int, bytes]],
    replies: list[tuple[int, bytes]] = (),  # type: ignore[assignment]
    *,
    client_isn: int = 1000,
    server_isn: int = 5000,
    syn: bool = True,
) -> list:
    """A TCP connection whose segments are given with their sequence numbers as offsets from
    each side's first payload byte, in the order they are to appear in the capture."""
    c = Ether(src=t.LAPTOP_MAC, dst=t.ROUTER_MAC) / IP(src=t.LAPTOP_IP, dst=server)
    s = Ether(src=t.ROUTER_MAC, dst=t.LAPTOP_MAC) / IP(src=server, dst=t.LAPTOP_IP)
    first_c, first_s = (client_isn + 1) & 0xFFFFFFFF, (server_isn + 1) & 0xFFFFFFFF
    pkts = []
    if syn:
        pkts = [
            c / TCP(sport=CLIENT_PORT, dport=port, flags="S", seq=client_isn),
            s / TCP(sport=port, dport=CLIENT_PORT, flags="SA", seq=server_isn, ack=first_c),
            c / TCP(sport=CLIENT_PORT, dport=port, flags="A", seq=first_c, ack=first_s),
        ]
    pkts += [
        c / TCP(sport=CLIENT_PORT, dport=port, flags="PA", seq=(first_c + at) & 0xFFFFFFFF) / Raw(x)
        for at, x in client
    ]
    pkts += [
        s / TCP(sport=port, dport=CLIENT_PORT, flags="PA", seq=(first_s + at) & 0xFFFFFFFF) / Raw(x)
        for at, x in replies
    ]
    for index, pkt in enumerate(pkts):
        pkt.time = t.T0 + index * 0.01
    return pkts


def _cut(data: bytes, *cuts: int) -> list[tuple[int, bytes]]:
    """`data` cut at the given offsets: (offset, piece) each, in order."""
    edges = [0, *cuts, len(data)]
    return [(a, data[a:b]) for a, b in itertools.pairwise(edges)]


def _dns_rows(recorded) -> list[tuple[int, str, list[str]]]:
    return sorted((r["trans_id"], r["query"], r["answers"]) for r in recorded.of("dns"))


QUERIES = b"".join(_message(n, f"q{n}.example") for n in (1, 2, 3))
ANSWERS = b"".join(_message(n, f"q{n}.example", f"192.0.2.{n}") for n in (1, 2, 3))
EXPECTED = [(n, f"q{n}.example", [f"192.0.2.{n}"]) for n in (1, 2, 3)]


def test_a_retransmitted_segment_is_read_once(tmp_path, run_file) -> None:
    pieces = _cut(QUERIES, 20, len(_message(1, "q1.example")) + 1)  # the 2nd cut mid-prefix
    client = [pieces[0], pieces[1], pieces[1], pieces[0], pieces[2]]  # two retransmissions
    # The server's first answer, a whole message in its segment, sent twice: one row.
    answers = _cut(ANSWERS, len(_message(1, "q1.example", "192.0.2.1")))
    replies = [answers[0], answers[0], answers[1], answers[1]]
    recorded = run_file(
        t.write(tmp_path / "retx.pcap", _connection(t.DNS_SERVER, 53, client, replies))
    )
    assert _dns_rows(recorded) == EXPECTED
    assert recorded.monitor is not None
    assert recorded.monitor.counters.dns_errors == 0


def test_out_of_order_segments_are_all_parsed(tmp_path, run_file) -> None:
    # The client's first segment arrives last (the SYN says where the stream starts), the
    # server's middle one first; one length prefix is cut between two segments.
    q = _cut(QUERIES, 10, len(_message(1, "q1.example")) + 1, 60)
    a = _cut(ANSWERS, 35, 70)
    recorded = run_file(
        t.write(
            tmp_path / "ooo.pcap",
            _connection(t.DNS_SERVER, 53, [q[2], q[1], q[3], q[0]], [a[1], a[0], a[2]]),
        )
    )
    assert _dns_rows(recorded) == EXPECTED
    assert recorded.monitor is not None
    assert recorded.monitor.counters.tcp_streams_given_up == 0


def test_sequence_numbers_wrapping_around_zero(tmp_path, run_file) -> None:
    # Both sides' sequence numbers pass 2**32 inside a message, out of order on the way.
    q = _cut(QUERIES, 30, 50)
    a = _cut(ANSWERS, 40, 90)
    pkts = _connection(
        t.DNS_SERVER,
        53,
        [q[0], q[2], q[1]],
        [a[0], a[2], a[1]],
        client_isn=0xFFFFFFFF - 40,
        server_isn=0xFFFFFFFF - 45,
    )
    recorded = run_file(t.write(tmp_path / "wrap.pcap", pkts))
    assert _dns_rows(recorded) == EXPECTED


def test_a_capture_that_starts_mid_connection(tmp_path, run_file) -> None:
    # No handshake: the stream starts at the first segment seen (a message boundary here).
    q = _cut(QUERIES, 25)
    a = _cut(ANSWERS, 7)
    pkts = _connection(t.DNS_SERVER, 53, [q[0], q[1], q[0]], [a[0], a[1], a[0]], syn=False)
    recorded = run_file(t.write(tmp_path / "mid.pcap", pkts))
    assert _dns_rows(recorded) == EXPECTED


def test_too_much_out_of_order_is_given_up_and_counted(tmp_path, run_file) -> None:
    # A hole that never fills and more segments than may wait behind it.
    segments = [(1 + 10 * n, b"x" * 10) for n in range(HOLD_SEGMENTS + 1)]
    recorded = run_file(t.write(tmp_path / "hole.pcap", _connection(t.DNS_SERVER, 53, segments)))
    assert recorded.monitor is not None
    assert recorded.monitor.counters.tcp_streams_given_up == 1
    assert len(recorded.of("flows")) == 1
    assert recorded.of("dns") == []


def _request(host: str, path: str = "/", body: bytes = b"") -> bytes:
    head = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: test\r\n"
    if body:
        head = head.replace("GET", "POST") + f"Content-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


def test_keepalive_connection_with_three_requests(tmp_path, run_file) -> None:
    # Three requests: the second with a body and pipelined with the third in one segment;
    # the third names another host (a proxy's connection): a visit of its own.
    first = _request("www.example.org")
    second = _request("www.example.org", "/form", b"a=1&b=" + b"2" * 300)
    third = _request("other.example.net", "/x")
    pkts = _connection(SERVER, 80, [(0, first), (len(first), second + third)])
    recorded = run_file(t.write(tmp_path / "keepalive.pcap", pkts))
    [flow] = recorded.of("flows")
    assert (flow["server_name"], flow["name_source"], flow["service"]) == (
        "www.example.org",
        "http",
        "http",
    )
    visits = sorted((v["server_name"], v["client_ip"]) for v in recorded.of("visits"))
    assert visits == [("example.org", t.LAPTOP_IP), ("other.example.net", t.LAPTOP_IP)]


def test_a_header_split_over_ten_segments(tmp_path, run_file) -> None:
    request = (
        b"GET /a/long/path?with=query HTTP/1.1\r\nUser-Agent: " + b"u" * 400 + b"\r\n"
        b"Accept: */*\r\nCookie: " + b"c" * 600 + b"\r\nHost: split.example.com\r\n\r\n"
    )
    step = len(request) // 10 + 1
    pieces = _cut(request, *range(step, len(request), step))
    assert len(pieces) == 10
    pieces[4], pieces[5] = pieces[5], pieces[4]  # and two of them out of order
    recorded = run_file(t.write(tmp_path / "ten.pcap", _connection(SERVER, 80, pieces)))
    [flow] = recorded.of("flows")
    assert flow["server_name"] == "split.example.com"


def test_a_client_hello_across_segments(tmp_path, run_file) -> None:
    # A ClientHello whose SNI comes after a large key share: the name is in the 2nd segment.
    hello = t.client_hello("pq.example.com")
    padded = _pad_before_sni(hello, 1800)
    pieces = _cut(padded, 1000)
    recorded = run_file(t.write(tmp_path / "hello.pcap", _connection(SERVER, 443, pieces)))
    [flow] = recorded.of("flows")
    assert (flow["server_name"], flow["name_source"]) == ("pq.example.com", "sni")


def _pad_before_sni(record: bytes, size: int) -> bytes:
    """The ClientHello record with an unknown extension of `size` bytes put first among its
    extensions (lengths fixed up), as a post-quantum key share before the SNI would be."""
    body = bytearray(record[5:])
    pos = 4 + 2 + 32
    pos += 1 + body[pos]
    pos += 2 + int.from_bytes(body[pos : pos + 2], "big")
    pos += 1 + body[pos]
    ext_len = int.from_bytes(body[pos : pos + 2], "big")
    extra = (0xFE0D).to_bytes(2, "big") + size.to_bytes(2, "big") + b"k" * size
    body[pos : pos + 2] = (ext_len + len(extra)).to_bytes(2, "big")
    body[pos + 2 : pos + 2] = extra
    body[1:4] = (len(body) - 4).to_bytes(3, "big")
    return record[:3] + len(body).to_bytes(2, "big") + bytes(body)


def test_stream_unit_cases() -> None:
    stream = Stream(0, 0xFFFFFFF0)
    assert stream.add(0x00000000, b"B" * 4) == b""  # ahead of a hole: waits
    assert stream.add(0xFFFFFFF0, b"A" * 16) == b"A" * 16 + b"B" * 4  # fills it, wraps
    assert stream.add(0xFFFFFFF8, b"A" * 12) == b""  # all old
    assert stream.add(0x00000002, b"BBCC") == b"CC"  # overlap: only the new bytes
    assert stream.next == 6
