"""The DNS-tunnel allow-list (issue 14): antivirus and reputation lookups (Sophos Live
Protection, McAfee GTI, ...) have a tunnel's shape, many long hash-like names under one
domain, and must not raise tunnel alerts; deploy/categories/dns_allow.txt and a site policy's
`[monitor] dns_tunnel_allow` exempt them, for the tunnel heuristic only."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from service.errors import Invalid, PolicyError
from service.monitor.capture import feed_file
from service.monitor.categories import load_categories
from service.monitor.engine import Monitor
from service.policy import load_policy_text
from tests.monitor import traffic as t
from tests.monitor.conftest import REPO, Recorded, shared

CATEGORIES = REPO / "deploy" / "categories"
WESTGATE_POLICY = REPO / "deploy" / "policies" / "westgate.toml"


def _lookups(client: str, mac: str, domain: str, start: float, count: int = 200) -> list:
    """`count` reputation-style lookups from one device, as Sophos Live Protection makes them:
    `<sha1 hex>.<digits>.DOMAIN`, TXT and A in turn, a second apart."""
    packets = []
    for i in range(count):
        digest = hashlib.sha1(f"{domain} file {i}".encode()).hexdigest()
        qtype, answer = ("TXT", "1611956489 28") if i % 2 else ("A", "127.0.4.8")
        name = f"{digest}.{i % 7}0{i}.{domain}"
        packets += t.dns_exchange(
            client, name, answer, start + i, qtype=qtype, txid=1000 + i, mac=mac
        )
    return packets


def _bypass(rows: list[dict]) -> list[dict]:
    return [a for a in rows if a["category"] == "bypass"]


def test_shipped_allow_list_loads_apart_from_the_bypass_names() -> None:
    lists = load_categories(CATEGORIES).bypass
    assert {"sophosxl.net", "avqs.mcafee.com", "avts.mcafee.com"} <= set(lists.tunnel_allow)
    assert lists.tunnel_allow["sophosxl.net"].source == "dns_allow.txt"
    # An exemption is not evidence: no flow to an allowed name is a bypass.
    assert lists.match_name("4.sophosxl.net") is None


def test_sophos_lookups_raise_no_alert_an_unlisted_domain_does(run_file, tmp_path) -> None:
    """The laptop's 200 Sophos lookups and 200 McAfee GTI ones (an entry deeper than the
    registered domain) pass; the visitor phone's same pattern under an unlisted domain, and
    under mcafee.com outside the listed zone, is a tunnel with its evidence."""
    packets = _lookups(t.LAPTOP_IP, t.LAPTOP_MAC, "sophosxl.net", t.T0)
    packets += _lookups(t.LAPTOP_IP, t.LAPTOP_MAC, "avts.mcafee.com", t.T0 + 300)
    packets += _lookups(t.VISITOR_IP, t.VISITOR_MAC, "lookup.example-av.net", t.T0, count=40)
    packets.sort(key=lambda p: p.time)
    recorded = run_file(t.write(tmp_path / "av.pcap", packets))
    assert len(recorded.of("dns")) == 440
    (alert,) = _bypass(recorded.of("alerts"))
    assert (alert["client_ip"], alert["kind"]) == (t.VISITOR_IP, "dns-tunnel")
    assert alert["evidence"].startswith(
        "DNS tunnel under example-av.net: 20 distinct long random-looking names in 19s"
    )
    assert ".lookup.example-av.net" in alert["evidence"]  # the example name

    other = _lookups(t.LAPTOP_IP, t.LAPTOP_MAC, "www.mcafee.com", t.T0, count=30)
    recorded = run_file(t.write(tmp_path / "mcafee.pcap", other))
    (alert,) = _bypass(recorded.of("alerts"))
    assert alert["evidence"].startswith("DNS tunnel under mcafee.com: ")


def test_allow_list_leaves_the_other_detections_alone(run_file, tmp_path) -> None:
    """An allow-list naming a resolver's domain does not hide DoH/DoT (nor iodine's tunnel,
    whose domain is not on it)."""
    folder = tmp_path / "lists"
    folder.mkdir()
    for path in CATEGORIES.glob("*.txt"):
        (folder / path.name).write_text(path.read_text())
    with (folder / "dns_allow.txt").open("a") as extra:
        extra.write("dns.google  # a test's: must not hide DoT to Google\n")
    lists = load_categories(folder)
    assert "dns.google" in lists.bypass.tunnel_allow
    recorded = Recorded()
    monitor = Monitor(recorded, site_code="westgate", categories=lists)
    for _block in feed_file(shared("ndpi/dns_dot.pcap"), recorded.stats, monitor.handler):
        pass
    monitor.finish()
    assert [a["kind"] for a in _bypass(recorded.of("alerts"))] == ["encrypted-dns"]
    iodine = run_file(shared("ndpi/dns-tunnel-iodine.pcap"))
    assert [a["kind"] for a in _bypass(iodine.of("alerts"))] == ["dns-tunnel"]


def test_allow_list_files_refuse_bad_entries(tmp_path: Path) -> None:
    folder = tmp_path / "lists"
    folder.mkdir()
    (folder / "av.txt").write_text("# allow: dns-tunnel\nexample-av.net  # ours\n")
    assert load_categories(folder).bypass.tunnel_allow["example-av.net"].note == "ours"
    (folder / "av.txt").write_text("# allow: dns-tunnel\nco.uk\n")
    with pytest.raises(Invalid, match=r"^av.txt: 'co.uk' is a public suffix, not a domain"):
        load_categories(folder)
    (folder / "av.txt").write_text("# allow: vpn\nexample-av.net\n")
    with pytest.raises(Invalid, match="allow list kind 'vpn': use dns-tunnel"):
        load_categories(folder)


def test_policy_entries_are_validated_one_line_each() -> None:
    text = WESTGATE_POLICY.read_text() + "\n[monitor]\n"
    assert load_policy_text(text).dns_tunnel_allow == ()
    policy = load_policy_text(text + 'dns_tunnel_allow = ["Example-AV.net.", "av.example.co.uk"]')
    assert policy.dns_tunnel_allow == ("example-av.net", "av.example.co.uk")
    for value, message in [
        ('["example-av.net", "net"]', "monitor.dns_tunnel_allow[1]: 'net' is a public suffix"),
        ('["*.example-av.net"]', "monitor.dns_tunnel_allow[0]: '*.example-av.net' is not a "),
        ('["example av.net"]', "monitor.dns_tunnel_allow[0]: 'example av.net' is not a domain"),
        ("[3]", "monitor.dns_tunnel_allow[0]: 3 must be a domain name in quotes"),
        ('"example-av.net"', "monitor.dns_tunnel_allow: a list of domains"),
    ]:
        with pytest.raises(PolicyError) as caught:
            load_policy_text(text + f"dns_tunnel_allow = {value}\n", "westgate.toml")
        assert str(caught.value).startswith(f"westgate.toml: {message}")
        assert "\n" not in str(caught.value)


def test_monitor_run_policy_allow_stops_the_alert(westgate, run_cli, tmp_path) -> None:
    """`monitor run --read` end to end: Sophos passes, the unlisted domain alerts until the
    site's policy lists it; a bad entry is refused by `policy load` in one line."""
    packets = _lookups(t.LAPTOP_IP, t.LAPTOP_MAC, "sophosxl.net", t.T0)
    packets += _lookups(t.VISITOR_IP, t.VISITOR_MAC, "lookup.example-av.net", t.T0, count=40)
    packets.sort(key=lambda p: p.time)
    capture = str(t.write(tmp_path / "av.pcap", packets))
    args = ("monitor", "run", "--read", capture, "--site", "westgate")
    args += ("--categories", str(CATEGORIES))
    out = run_cli(*args).stdout
    assert "1 alerts" in out
    assert "DNS tunnel under example-av.net: 20 distinct long random-looking names" in out
    assert "sophosxl" not in out

    bad = tmp_path / "bad.toml"
    bad.write_text(WESTGATE_POLICY.read_text() + '\n[monitor]\ndns_tunnel_allow = ["net"]\n')
    result = run_cli("policy", "load", str(bad), check=False)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"error: {bad}: monitor.dns_tunnel_allow[0]: 'net' is a public suffix, not a domain: "
        "name the service's own domain"
    )
    good = tmp_path / "westgate.toml"
    good.write_text(
        WESTGATE_POLICY.read_text() + '\n[monitor]\ndns_tunnel_allow = ["example-av.net"]\n'
    )
    run_cli("policy", "load", str(good))
    out = run_cli(*args).stdout
    assert "0 alerts" in out
    assert "DNS tunnel" not in out


def test_unanswered_query_is_written_by_the_tick_ten_seconds_on(run_file, tmp_path) -> None:
    """Engine.tick expires unanswered queries from the front of its queue (Monitor._dns_due):
    the query with no answer is written once the capture's clock is 10 s past it, before
    the later exchange, not at the end of the capture."""
    lost = t.dns_exchange(t.LAPTOP_IP, "lost.example.net", "192.0.2.1", t.T0, txid=1)[:1]
    first = t.dns_exchange(t.LAPTOP_IP, "first.example.net", "192.0.2.2", t.T0 + 1, txid=2)
    later = t.dns_exchange(t.LAPTOP_IP, "later.example.net", "192.0.2.3", t.T0 + 20, txid=3)
    recorded = run_file(t.write(tmp_path / "dns.pcap", lost + first + later))
    rows = [(d["query"], d["rcode"]) for d in recorded.of("dns")]
    assert rows == [
        ("first.example.net", 0),
        ("lost.example.net", None),
        ("later.example.net", 0),
    ]
    assert not recorded.monitor.pending_dns
