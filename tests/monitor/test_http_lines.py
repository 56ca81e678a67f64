"""HTTP requests as clients send them: bare-LF lines, every method, CONNECT, a request header
split across segments."""

from __future__ import annotations

import pytest
from scapy.layers.inet import TCP

from service.monitor import extract
from tests.monitor import traffic as t
from tests.monitor.conftest import shared
from tests.monitor.test_references import zeek_log

SERVER = "93.184.216.34"


def _session(tmp_path, run_file, segments: list[bytes], port: int = 80):
    pkts = t.tcp_session(t.LAPTOP_IP, 50123, SERVER, port, t.T0, segments[0])
    # tcp_session carries one request; the rest of the segments follow it, client to server.
    request_at = 3
    extra = []
    seq = pkts[request_at][TCP].seq + len(segments[0])
    for index, segment in enumerate(segments[1:], start=1):
        pkt = pkts[request_at].copy()
        pkt.payload.payload.payload.load = segment
        pkt[TCP].seq = seq
        seq += len(segment)
        pkt.time = pkts[request_at].time + index * 0.001
        extra.append(pkt)
    pkts[request_at + 1 : request_at + 1] = extra
    recorded = run_file(t.write(tmp_path / "http.pcap", pkts))
    [flow] = [f for f in recorded.of("flows") if f["resp_port"] == port]
    return flow, recorded


def test_bare_lf_capture_matches_zeek(run_file) -> None:
    recorded = run_file(shared("zeek/http-no-crlf.pcap"))
    expected = {
        (r["id.orig_h"], r["id.orig_p"], r["id.resp_h"], r["host"])
        for r in zeek_log("http-no-crlf.http.log")
    }
    ours = {
        (f["orig_ip"], str(f["orig_port"]), f["resp_ip"], f["server_name"])
        for f in recorded.of("flows")
        if f["name_source"] == "http"
    }
    assert ours == expected == {("10.1.6.206", "49783", "5.2.136.90", "5.2.136.90")}


def test_bare_lf_request_names_its_host(tmp_path, run_file) -> None:
    flow, _ = _session(
        tmp_path, run_file, [b"GET /a HTTP/1.1\nUser-Agent: x\nHost: Example.ORG:8080\n\n"]
    )
    assert (flow["server_name"], flow["name_source"], flow["service"]) == (
        "example.org",
        "http",
        "http",
    )


def test_connect_names_the_proxied_host(tmp_path, run_file) -> None:
    flow, recorded = _session(
        tmp_path,
        run_file,
        [b"CONNECT vpn.example.net:443 HTTP/1.1\r\nHost: proxy.local:3128\r\n\r\n"],
        port=3128,
    )
    assert (flow["server_name"], flow["name_source"], flow["service"]) == (
        "vpn.example.net",
        "http",
        "http-connect",
    )
    [visit] = recorded.of("visits")
    assert visit["server_name"] == "vpn.example.net"


def test_a_request_split_in_three_segments(tmp_path, run_file) -> None:
    request = (
        b"PROPFIND /dav/ HTTP/1.1\r\nUser-Agent: a long agent string\r\n"
        b"Accept: */*\r\nHost: files.example.com\r\nDepth: 1\r\n\r\n"
    )
    cut1, cut2 = 30, request.index(b"files") + 3  # the second cut inside the Host value
    flow, _ = _session(tmp_path, run_file, [request[:cut1], request[cut1:cut2], request[cut2:]])
    assert (flow["server_name"], flow["service"]) == ("files.example.com", "http")


@pytest.mark.parametrize(
    ("data", "method", "host"),
    [
        (b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n", "GET", "a.example"),
        (b"DELETE /x HTTP/1.0\nhost: B.example\n\n", "DELETE", "b.example"),
        (b"CONNECT [2001:db8::1]:443 HTTP/1.1\r\n\r\n", "CONNECT", "2001:db8::1"),
        (b"MKCOL /d HTTP/1.1\r\nHost: [2001:db8::2]:8080\r\n\r\n", "MKCOL", "2001:db8::2"),
        (b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n", "GET", None),
    ],
)
def test_request_lines(data: bytes, method: str, host: str | None) -> None:
    request = extract.http_request(data)
    assert request is not None
    assert (request.method, request.host, request.complete) == (method, host, True)


@pytest.mark.parametrize(
    "data",
    [b"HTTP/1.1 200 OK\r\n\r\n", b"get / HTTP/1.1\r\n\r\n", b"GET / SPDY\r\n\r\n", b"\x16\x03\x01"],
)
def test_not_requests(data: bytes) -> None:
    assert extract.http_request(data) is None


def test_an_unfinished_header_says_so() -> None:
    request = extract.http_request(b"GET / HTTP/1.1\r\nAccept: */*\r\nHo")
    assert request is not None
    assert (request.host, request.complete) == (None, False)
    cut_host = extract.http_request(b"GET / HTTP/1.1\r\nHost: exa")
    assert cut_host is not None
    assert (cut_host.host, cut_host.complete) == (None, False)
