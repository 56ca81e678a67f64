"""Crafted DNS, TLS, HTTP, DHCP, ARP, BitTorrent, uTP and DHT traffic: every field checked."""

from __future__ import annotations

import struct
from datetime import UTC, datetime

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from service.monitor.attribution import Attributor, DeviceRef
from tests.monitor import traffic as t


def at(offset: float) -> datetime:
    return datetime.fromtimestamp(t.T0 + offset, UTC)


@pytest.fixture
def day(tmp_path, run_file):
    attributor = Attributor({t.LAPTOP_MAC: DeviceRef(11, 21), t.VISITOR_MAC: DeviceRef(12, None)})
    return run_file(t.write(tmp_path / "day.pcap", t.school_day()), attributor=attributor)


def test_dns_query_and_answer_are_recorded_with_the_device(day) -> None:
    bbc = next(r for r in day.of("dns") if r["query"] == "www.bbc.co.uk")
    assert bbc["qtype"] == 1
    assert bbc["qtype_name"] == "A"
    assert bbc["rcode"] == 0
    assert bbc["rcode_name"] == "NOERROR"
    assert bbc["answers"] == ["edge.www.bbc.co.uk", "151.101.0.81"]
    assert bbc["ttls"] == [60, 300]
    assert bbc["client_ip"] == t.LAPTOP_IP
    assert bbc["server_ip"] == t.DNS_SERVER
    assert bbc["server_port"] == 53
    assert bbc["trans_id"] == 4242
    assert bbc["rtt"] == pytest.approx(0.02, abs=1e-3)
    assert bbc["queried_at"] == at(1)
    assert (bbc["mac"], bbc["device_id"], bbc["person_id"]) == (t.LAPTOP_MAC, 11, 21)


def test_tls_flow_is_named_by_sni_and_counted_both_ways(day) -> None:
    flows = [f for f in day.of("flows") if f["resp_port"] == 443 and f["resp_ip"] == "151.101.0.81"]
    assert len(flows) == 2
    first = min(flows, key=lambda f: f["started_at"])
    assert first["server_name"] == "www.bbc.co.uk"
    assert first["name_source"] == "sni"
    assert first["service"] == "tls"
    assert first["proto"] == "tcp"
    assert first["orig_ip"] == t.LAPTOP_IP
    assert first["orig_port"] == 50001
    # The final ACK after both FINs arrives once the flow is written: not counted.
    assert first["orig_packets"] == 4
    assert first["resp_packets"] == 3
    assert first["end_reason"] == "fin"
    assert first["started_at"] == at(2)
    assert first["duration"] == pytest.approx(0.06)
    hello = len(t.client_hello("www.bbc.co.uk"))
    assert first["orig_bytes"] == 4 * 40 + hello
    assert first["resp_bytes"] == 3 * 40 + 903
    assert (first["mac"], first["mac_source"], first["person_id"]) == (t.LAPTOP_MAC, "dhcp", 21)


def test_http_records_the_host_only_never_path_or_cookie(day) -> None:
    flow = next(
        f for f in day.of("flows") if f["resp_port"] == 80 and f["resp_ip"] == "93.184.216.34"
    )
    assert flow["server_name"] == "example.com"
    assert flow["name_source"] == "http"
    text = repr(day.rows)
    assert "secret" not in text
    assert "Cookie" not in text
    assert "s=1" not in text


def test_flow_without_sni_or_host_is_named_by_the_clients_dns_answer(day) -> None:
    flow = next(f for f in day.of("flows") if f["resp_ip"] == "5.226.180.10")
    assert flow["server_name"] == "bet365.com"
    assert flow["name_source"] == "dns"


def test_visits_join_flows_within_the_idle_gap(day) -> None:
    visits = {v["server_name"]: v for v in day.of("visits")}
    bbc = visits["bbc.co.uk"]
    assert bbc["flows"] == 2
    assert bbc["started_at"] == at(2)
    assert bbc["ended_at"] == at(62.06)
    assert bbc["duration"] == pytest.approx(60.06)
    assert bbc["bytes_down"] == 2 * (3 * 40 + 903)
    assert bbc["person_id"] == 21
    assert bbc["mac"] == t.LAPTOP_MAC
    assert visits["example.com"]["flows"] == 1
    assert visits["bet365.com"]["category"] == "gambling"


def test_dhcp_lease_and_arp_bindings(day) -> None:
    dhcp = [b for b in day.of("bindings") if b["source"] == "dhcp"]
    assert [b["msg_type"] for b in dhcp] == ["DISCOVER", "OFFER", "REQUEST", "ACK"]
    ack = dhcp[-1]
    assert ack["mac"] == t.LAPTOP_MAC
    assert ack["ip"] == t.LAPTOP_IP
    assert ack["is_lease"]
    assert ack["lease_seconds"] == 3600
    assert dhcp[2]["hostname"] == "laptop-21"
    assert dhcp[2]["requested_ip"] == t.LAPTOP_IP
    arp = [b for b in day.of("bindings") if b["source"] == "arp"]
    assert [(b["ip"], b["mac"], b["msg_type"]) for b in arp] == [
        (t.VISITOR_IP, t.VISITOR_MAC, "reply")
    ]


def test_bittorrent_handshake_tracker_utp_dht_and_remembered_peers(day) -> None:
    p2p = {
        (f["resp_ip"], f["resp_port"]): f
        for f in day.of("flows")
        if f["p2p"] and not f["p2p"].startswith("peer:")
    }
    handshake = next(
        f for k, f in p2p.items() if k == ("198.51.100.7", 6881) and f["orig_port"] == 51413
    )
    assert handshake["p2p"] == "bittorrent-handshake"
    assert handshake["info_hash"] == t.INFO_HASH.hex()
    assert p2p[("198.51.100.9", 80)]["p2p"] == "bittorrent-tracker"
    assert p2p[("198.51.100.9", 80)]["info_hash"] == t.INFO_HASH.hex()
    assert p2p[("198.51.100.8", 7000)]["p2p"] == "bittorrent-utp"
    assert p2p[("198.51.100.10", 6881)]["p2p"] == "bittorrent-dht"
    assert p2p[("198.51.100.10", 6881)]["info_hash"] == t.INFO_HASH.hex()
    later = next(f for f in day.of("flows") if f["orig_port"] == 51999)
    assert later["p2p"] == "peer:bittorrent-handshake"
    assert all(f["mac"] == t.VISITOR_MAC and f["mac_source"] == "arp" for f in p2p.values())


def test_alerts_carry_device_person_category_and_severity(day) -> None:
    alerts = day.of("alerts")
    gambling = next(a for a in alerts if a["kind"] == "category")
    assert gambling["category"] == "gambling"
    assert gambling["severity"] == "weekly"
    assert gambling["person_id"] == 21
    assert gambling["device_id"] == 11
    assert gambling["evidence"] == "visit to bet365.com (dns)"
    p2p = [a for a in alerts if a["kind"] == "p2p"]
    assert len(p2p) == 1  # one per device per hour
    assert p2p[0]["device_id"] == 12
    assert p2p[0]["client_ip"] == t.VISITOR_IP
    assert p2p[0]["raised_at"] == at(100)
    assert "info_hash=" + t.INFO_HASH.hex() in p2p[0]["evidence"]


def test_qinq_vlan_and_ipv6_fragments(tmp_path, run_file) -> None:
    packets = t.tcp_session(
        t.LAPTOP_IP,
        50100,
        "93.184.216.34",
        80,
        t.T0,
        b"GET / HTTP/1.1\r\nHost: tagged.example\r\n\r\n",
        vlan=t.vlan_tags(),
    )
    packets += t.ipv6_fragmented_dns(t.T0 + 5)
    recorded = run_file(t.write(tmp_path / "tags.pcap", packets))
    flow = next(f for f in recorded.of("flows") if f["resp_port"] == 80)
    assert flow["vlan"] == 100
    assert flow["server_name"] == "tagged.example"
    dns = next(r for r in recorded.of("dns") if r["query"] == "big.example")
    assert dns["qtype_name"] == "TXT"
    assert len(dns["answers"]) == 1
    assert dns["answers"][0].startswith("TXT 200 aaaa")
    assert dns["client_ip"] == "2001:db8::21"


def test_bad_input_is_counted_and_skipped(tmp_path, run_file) -> None:
    good = t.dns_exchange(t.LAPTOP_IP, "ok.example", "192.0.2.1", t.T0)
    truncated = Ether(bytes(good[0])[:30])
    corrupt = (
        Ether()
        / IP(src="10.0.0.9", dst=t.DNS_SERVER)
        / UDP(sport=5000, dport=53)
        / Raw(b"\xc0\x0c" * 20)
    )
    oversized = Ether() / Raw(b"\x00" * 70000)
    bad_ip = Ether(bytes(Ether() / IP())[:14] + b"\x45\x00\xff\xff" + b"\x00" * 16)
    for pkt in (truncated, corrupt, oversized, bad_ip):
        pkt.time = t.T0 + 1
    path = t.write(tmp_path / "bad.pcap", [*good, truncated, corrupt, oversized, bad_ip, *good])
    # Cut the file in the middle of the last record.
    data = path.read_bytes()
    path.write_bytes(data[:-20])
    recorded = run_file(path)
    counters = recorded.monitor.counters
    assert counters.skipped_truncated >= 1 + 1  # the 30-byte frame and the cut-off last record
    assert counters.dns_errors == 1
    assert counters.skipped_oversized == 1
    assert recorded.stats.truncated_records == 1
    assert [r["query"] for r in recorded.of("dns")].count("ok.example") >= 1


def test_unknown_link_type_is_counted(tmp_path, run_file) -> None:
    from scapy.utils import PcapWriter

    path = tmp_path / "odd.pcap"
    with PcapWriter(str(path), linktype=147) as writer:  # LINKTYPE_USER0
        writer.write(Raw(b"\x01\x02\x03"))
    recorded = run_file(path)
    assert recorded.monitor.counters.skipped_linktype == 1


def test_not_a_capture_file_is_a_one_line_error(tmp_path) -> None:
    from service.errors import Invalid
    from service.monitor.capture import CaptureStats, read_file

    path = tmp_path / "notes.pcap"
    path.write_bytes(struct.pack("<I", 0xDEADBEEF) + b"x" * 40)
    with pytest.raises(Invalid, match="not a pcap"):
        list(read_file(path, CaptureStats()))
