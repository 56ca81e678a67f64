"""The monitor against outside references: Zeek's logs and nDPI's classification of the same
captures (../shared/pcaps, read in place; skipped with a reason where absent)."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from tests.monitor.conftest import SHARED_PCAPS, shared


def zeek_log(name: str) -> list[dict[str, str]]:
    path = SHARED_PCAPS / "zeek" / "baselines" / name
    if not path.is_file():
        pytest.skip(f"reference log {path} is absent")
    fields: list[str] = []
    rows = []
    for line in path.read_text().splitlines():
        if line.startswith("#fields"):
            fields = line.split("\t")[1:]
        elif line and not line.startswith("#"):
            if not fields:  # zeek-cut output (*.cut): the first line names the columns
                fields = line.split("\t")
                continue
            rows.append(dict(zip(fields, line.split("\t"), strict=False)))
    return rows


def zeek_dns(name: str) -> Counter[tuple[str, str, str]]:
    """(client, query, rcode) for every answered query in Zeek's dns.log."""
    return Counter(
        (r["id.orig_h"], r["query"], r["rcode"]) for r in zeek_log(name) if r["rcode"] != "-"
    )


def ours_dns(recorded) -> Counter[tuple[str, str, str]]:
    return Counter(
        (r["client_ip"], r["query"], str(r["rcode"]))
        for r in recorded.of("dns")
        if r["rcode"] is not None
    )


@pytest.mark.parametrize(
    ("pcap", "log"),
    [
        ("zeek/dns53.pcap", "dns53.dns.log"),
        ("zeek/wikipedia.pcap", "wikipedia.dns.log"),
        ("zeek/ipv6-fragmented-dns.pcap", "ipv6-fragmented-dns.dns.log"),
    ],
)
def test_dns_answers_match_zeek(run_file, pcap: str, log: str) -> None:
    recorded = run_file(shared(pcap))
    expected = zeek_dns(log)
    ours = ours_dns(recorded)
    assert set(ours) == set(expected)
    # qtype: Zeek leaves it empty ("-") where it took the name from an answer (mDNS, and the
    # port-53-to-port-53 exchange of dns53); where it has one, ours is the same.
    zeek_types = {(r["query"], r["qtype"]) for r in zeek_log(log) if r["qtype"] != "-"}
    assert zeek_types <= {(r["query"], str(r["qtype"])) for r in recorded.of("dns")}
    # The answers themselves (addresses and CNAMEs) match Zeek's for each query.
    zeek_answers = {
        (r["query"], r["answers"])
        for r in zeek_log(log)
        if r["rcode"] != "-" and r["answers"] != "-"
    }
    our_answers = {(r["query"], ",".join(r["answers"])) for r in recorded.of("dns") if r["answers"]}
    assert zeek_answers <= our_answers | {(q, a) for q, a in zeek_answers if a.startswith("TXT")}
    txt = [r for r in recorded.of("dns") if r["qtype_name"] == "TXT" and r["answers"]]
    if "fragmented" in pcap:
        assert txt
        assert txt[0]["answers"][0].startswith("TXT 33 This TXT record should be ignored")


def test_dns_queries_match_zeek(run_file) -> None:
    recorded = run_file(shared("zeek/wikipedia.pcap"))
    expected = {(r["id.orig_h"], r["query"]) for r in zeek_log("wikipedia.dns.log")}
    assert {(r["client_ip"], r["query"]) for r in recorded.of("dns")} == expected


def test_tls_server_name_matches_zeek(run_file) -> None:
    recorded = run_file(shared("zeek/tls-conn-with-extensions.pcap"))
    expected = {
        (r["id.orig_h"], r["id.orig_p"], r["id.resp_h"], r["server_name"])
        for r in zeek_log("tls-conn-with-extensions.ssl.log")
    }
    ours = {
        (f["orig_ip"], str(f["orig_port"]), f["resp_ip"], f["server_name"])
        for f in recorded.of("flows")
        if f["name_source"] == "sni"
    }
    assert ours == expected == {("192.168.1.105", "62045", "74.125.224.79", "ssl.gstatic.com")}


@pytest.mark.parametrize(
    ("pcap", "log"),
    [("zeek/http-get.pcap", "http-get.http.log"), ("zeek/wikipedia.pcap", "wikipedia.http.log")],
)
def test_http_hosts_match_zeek(run_file, pcap: str, log: str) -> None:
    recorded = run_file(shared(pcap))
    expected = {(r["id.orig_h"], r["id.orig_p"], r["id.resp_h"], r["host"]) for r in zeek_log(log)}
    ours = {
        (f["orig_ip"], str(f["orig_port"]), f["resp_ip"], f["server_name"])
        for f in recorded.of("flows")
        if f["name_source"] == "http"
    }
    assert expected <= ours
    # One more in wikipedia: port 35634 starts mid-connection (Zeek's conn.log: state OTH, no
    # SYN), so Zeek's HTTP analyser never attached; its request still names www.wikipedia.org.
    assert ours - expected <= {("141.142.220.118", "35634", "208.80.152.2", "www.wikipedia.org")}


def test_http_in_vlan_tags_matches_zeek(run_file) -> None:
    recorded = run_file(shared("zeek/http-vlan-0.pcap"))
    http = [f for f in recorded.of("flows") if f["name_source"] == "http"]
    assert [f["server_name"] for f in http] == ["bro.org"]
    # Zeek's conn.log for this trace: one connection, vlan 0, no inner VLAN; we see the same
    # connection and store 0 as "no VLAN".
    zeek = zeek_log("http-vlan-0.conn.log.cut")
    assert [(r["vlan"], r["inner_vlan"]) for r in zeek] == [("0", "-")]
    assert [f["vlan"] for f in recorded.of("flows")] == [None] * len(zeek)
    assert http[0]["vlan"] is None


def test_dhcp_lease_matches_zeek(run_file) -> None:
    recorded = run_file(shared("zeek/dhcp.pcap"))
    zeek = [r for r in zeek_log("dhcp.dhcp.log") if r["assigned_addr"] != "-"]
    leases = [b for b in recorded.of("bindings") if b["is_lease"]]
    assert {(b["mac"], b["ip"], float(b["lease_seconds"])) for b in leases} == {
        (r["mac"], r["assigned_addr"], float(r["lease_time"])) for r in zeek
    }
    hostnames = {b["hostname"] for b in recorded.of("bindings") if b["hostname"]}
    assert {r["host_name"] for r in zeek_log("dhcp.dhcp.log") if r["host_name"] != "-"} <= hostnames
    types = Counter(b["msg_type"] for b in recorded.of("bindings"))
    for kind in ("DISCOVER", "OFFER", "REQUEST", "ACK", "NAK", "DECLINE", "RELEASE", "INFORM"):
        assert types[kind] >= 1, kind


def _ndpi_flows(name: str) -> set[tuple[str, ...]]:
    path = SHARED_PCAPS / "ndpi" / name
    if not path.is_file():
        pytest.skip(f"reference output {path} is absent")
    flows = set()
    for line in path.read_text().splitlines():
        found = re.search(
            r"(TCP|UDP) ([\d.]+):(\d+) <?-> ([\d.]+):(\d+) \[proto: [\d.]+/BitTorrent", line
        )
        if found:
            proto, a, ap, b, bp = found.groups()
            flows.add((proto.lower(), *sorted([(a, ap), (b, bp)])))  # type: ignore[arg-type]
    return flows


@pytest.mark.parametrize(
    ("pcap", "out", "count"),
    [
        ("ndpi/bittorrent.pcap", "bittorrent.pcap.out", 24),
        ("ndpi/bittorrent_utp.pcap", "bittorrent_utp.pcap.out", 2),
    ],
)
def test_bittorrent_flows_match_ndpi(run_file, pcap: str, out: str, count: int) -> None:
    recorded = run_file(shared(pcap))
    expected = _ndpi_flows(out)
    assert len(expected) == count
    ours = {
        (
            f["proto"],
            *sorted([(f["orig_ip"], str(f["orig_port"])), (f["resp_ip"], str(f["resp_port"]))]),
        )
        for f in recorded.of("flows")
        if f["p2p"]
    }
    assert ours == expected
    assert any(a["kind"] == "p2p" for a in recorded.of("alerts"))


@pytest.mark.parametrize("pcap", ["zeek/ip4-trunc.pcap", "zeek/dns-corrupt.pcap"])
def test_truncated_and_corrupt_captures_pass(run_file, pcap: str) -> None:
    recorded = run_file(shared(pcap))
    counters = recorded.monitor.counters
    assert counters.packets == recorded.stats.records >= 1
    if "trunc" in pcap:
        assert counters.skipped_truncated == 1
        assert not recorded.of("flows")
