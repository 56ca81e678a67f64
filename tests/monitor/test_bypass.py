"""Bypass alerts: encrypted DNS, VPNs, Tor, proxies and DNS tunnels, flagged with their
evidence on nDPI's captures (compared with nDPI's own classification), none on ordinary
browsing; the policy switch; `monitor run --read` and `export alerts` end to end."""

from __future__ import annotations

import csv
import random
import re
import string
from pathlib import Path

import pytest

from service.db import transaction
from service.errors import Invalid, PolicyError
from service.monitor import bypass
from service.monitor.categories import load_categories
from service.monitor.recorder import Recorder
from service.monitor.writer import monitor_policy
from service.policy import load_policy_text
from service.sites import store_policy
from tests.monitor import traffic as t
from tests.monitor.conftest import REPO, SHARED_PCAPS, Recorded, shared

CATEGORIES = REPO / "deploy" / "categories"
WESTGATE_POLICY = REPO / "deploy" / "policies" / "westgate.toml"


def _bypass(recorded: Recorded) -> list[dict[str, object]]:
    return [a for a in recorded.of("alerts") if a["category"] == "bypass"]


def _ndpi(name: str, protocol: str) -> set[tuple[str, str, str, str, str]]:
    """nDPI's flows classified as `protocol` (.out lines): (proto, a, a port, b, b port)."""
    path = SHARED_PCAPS / "ndpi" / name
    if not path.is_file():
        pytest.skip(f"reference output {path} is absent")
    flows = set()
    pattern = rf"(TCP|UDP) ([\d.]+):(\d+) <?-> ([\d.]+):(\d+) \[proto: [\d.]+/{protocol}\b"
    for line in path.read_text().splitlines():
        found = re.search(pattern, line)
        if found:
            proto, a, ap, b, bp = found.groups()
            flows.add((proto.lower(), a, ap, b, bp))
    return flows


# --- nDPI's captures ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pcap", "kind", "evidence"),
    [
        (
            "ndpi/doh.pcapng",
            "encrypted-dns",
            "TCP 192.168.1.253 -> 1.1.1.1:443; 1.1.1.1 is on doh.txt",
        ),
        (
            "ndpi/dns_dot.pcap",
            "encrypted-dns",
            "DNS over TLS (port 853): TCP 192.168.1.185 -> 8.8.8.8:853",
        ),
        (
            "ndpi/mullvad_wireguard.pcap",
            "vpn",
            "WireGuard message signature: UDP 192.168.122.11 -> 198.54.131.98:5060; "
            "198.54.131.98 is on vpn.txt",
        ),
        ("ndpi/dns-tunnel-iodine.pcap", "dns-tunnel", "DNS tunnel under pirate.sea: "),
    ],
)
def test_bypass_captures_are_flagged_with_evidence(run_file, pcap, kind, evidence) -> None:
    recorded = run_file(shared(pcap))
    alerts = _bypass(recorded)
    assert [a["kind"] for a in alerts] == [kind]
    assert evidence in alerts[0]["evidence"]


def test_doh_and_dot_servers_are_those_ndpi_names() -> None:
    """nDPI sees TLS to Cloudflare in doh.pcapng and DoH_DoT to Google in dns_dot.pcap: the
    servers the evidence above names."""
    assert {f[3] for f in _ndpi("doh.pcapng.out", "TLS")} == {"1.1.1.1"}
    assert {f[3:] for f in _ndpi("dns_dot.pcap.out", r"TLS\.DoH_DoT")} == {("8.8.8.8", "853")}


def test_iodine_tunnel_counts_null_queries_and_random_names(run_file) -> None:
    recorded = run_file(shared("ndpi/dns-tunnel-iodine.pcap"))
    (alert,) = _bypass(recorded)
    assert alert["client_ip"] == "10.0.2.30"  # nDPI's DNS flow 10.0.2.30 <-> 10.0.2.20:53
    assert ("udp", "10.0.2.30", "44639", "10.0.2.20", "53") in _ndpi(
        "dns-tunnel-iodine.pcap.out", "DNS"
    )
    nulls = int(re.search(r"(\d+) NULL queries", alert["evidence"]).group(1))
    assert nulls >= 10
    assert sum(1 for d in recorded.of("dns") if d["qtype"] == 10) > nulls  # one alert, not 200


def test_openvpn_flows_match_ndpi(run_file) -> None:
    """All ten of nDPI's OpenVPN flows (UDP and TCP, ports 443, 1194 and others, with and
    without tls-auth/tls-crypt) are labelled openvpn; one alert per device."""
    recorded = run_file(shared("ndpi/openvpn.pcap"))
    expected = {
        (p, *sorted([(a, ap), (b, bp)])) for p, a, ap, b, bp in _ndpi("openvpn.pcap.out", "OpenVPN")
    }
    assert len(expected) == 10
    ours = {
        (
            f["proto"],
            *sorted([(f["orig_ip"], str(f["orig_port"])), (f["resp_ip"], str(f["resp_port"]))]),
        )
        for f in recorded.of("flows")
        if f["service"] == "openvpn"
    }
    assert ours == expected
    alerts = _bypass(recorded)
    assert {a["kind"] for a in alerts} == {"vpn"}
    # One per flow: the capture's sessions are hours apart (192.168.12.156's two as well).
    assert len(alerts) == 10
    assert all("OpenVPN hard-reset signature" in a["evidence"] for a in alerts)


@pytest.mark.parametrize(
    "pcap",
    [
        "zeek/wikipedia.pcap",
        "zeek/tls-conn-with-extensions.pcap",
        "zeek/dhcp.pcap",
        "zeek/http-get.pcap",
        "zeek/dns53.pcap",
        "zeek/mdns.pcap",
        "zeek/dns-over-tcp-keepalive.pcap",
        "zeek/http-no-crlf.pcap",
        "zeek/ipv6-fragmented-dns.pcap",
        "ndpi/quic.pcap",
        "ndpi/quic-29.pcap",
        "ndpi/quic-v2.pcapng",
        "ndpi/quic_0RTT.pcap",
        "ndpi/netbios.pcap",
        "ndpi/bittorrent.pcap",
        "ndpi/bittorrent_utp.pcap",
    ],
)
def test_ordinary_traffic_raises_no_bypass_alert(run_file, pcap) -> None:
    recorded = run_file(shared(pcap))
    assert recorded.of("flows")
    assert _bypass(recorded) == []


def test_generated_school_day_raises_no_bypass_alert(run_file, tmp_path) -> None:
    recorded = run_file(t.write(tmp_path / "day.pcap", t.school_day()))
    assert len(recorded.of("flows")) > 10
    assert _bypass(recorded) == []


# --- signatures and rules on built input -------------------------------------------------


def test_wireguard_handshake_and_ike_signatures() -> None:
    initiation = b"\x01\x00\x00\x00" + bytes(range(144))
    assert bypass.udp_label(initiation, 40000, 51820) == "wireguard"
    assert bypass.udp_label(initiation[:-1], 40000, 51820) is None  # size is part of it
    response = b"\x02\x00\x00\x00" + bytes(88)
    assert bypass.udp_label(response, 51820, 40000) == "wireguard"
    ike = bytearray(bytes(range(1, 9)) + bytes(8) + b"\x21\x20\x22\x08" + bytes(4))
    ike += (300).to_bytes(4, "big") + bytes(300 - 28)
    assert bypass.udp_label(bytes(ike), 500, 500) == "ike"
    assert bypass.udp_label(bytes(ike[:-1]), 500, 500) is None  # the length field disagrees
    assert bypass.udp_label(b"\x00\x00\x00\x00" + bytes(ike), 50123, 4500) == "ike"  # NAT-T
    assert bypass.udp_label(b"\xff", 50123, 4500) is None  # NAT keepalive
    # Ordinary UDP: QUIC long header, DNS-looking bytes, RTP.
    for payload in (
        b"\xc3\x00\x00\x00\x01" + bytes(1200),
        b"\x12\x34\x01\x00" + bytes(30),
        b"\x80" + bytes(171),
    ):
        assert bypass.udp_label(payload, 50000, 443) is None


def _recorder(*, bypass_alerts: bool = True) -> tuple[Recorded, Recorder]:
    recorded = Recorded()
    recorder = Recorder(
        recorded,
        site_code="westgate",
        categories=load_categories(CATEGORIES),
        bypass_alerts=bypass_alerts,
    )
    return recorded, recorder


def _flow(
    ts: float, client: str, server: str, port: int, service: str | None, name: str | None
) -> tuple:
    return (
        ts, ts + 5, 6, bytes(map(int, client.split("."))), 50000,
        bytes(map(int, server.split("."))), port, 0, 5, 500, 5, 5000, "fin",
        service, name, "sni" if name else None, None, None, None, None,
    )  # fmt: skip


def test_http_connect_flow_is_a_proxy_alert_naming_the_proxied_host() -> None:
    """The engine labels a CONNECT request `http-connect` with the proxied host as its name
    (dn's part of the issue); a flow record built the same way raises the alert."""
    recorded, recorder = _recorder()
    recorder.flow(_flow(t.T0, t.LAPTOP_IP, "203.0.113.8", 3128, "http-connect", "youtube.com"))
    recorder.finish()
    (alert,) = _bypass(recorded)
    assert alert["kind"] == "proxy"
    assert alert["evidence"] == "HTTP CONNECT through proxy 203.0.113.8:3128 to youtube.com"


def test_listed_names_and_addresses_tor_and_one_alert_per_device_and_kind_an_hour() -> None:
    recorded, recorder = _recorder()
    recorder.flow(_flow(t.T0, t.LAPTOP_IP, "171.25.193.9", 443, "tls", None))
    recorder.flow(_flow(t.T0 + 60, t.LAPTOP_IP, "193.23.244.244", 9001, None, None))
    recorder.flow(_flow(t.T0 + 90, t.LAPTOP_IP, "198.51.100.7", 443, "tls", "uk1234.nordvpn.com"))
    recorder.flow(_flow(t.T0 + 120, t.LAPTOP_IP, "198.51.100.9", 443, "tls", "www.croxyproxy.com"))
    recorder.flow(_flow(t.T0 + 3700, t.LAPTOP_IP, "193.23.244.244", 9001, None, None))
    recorder.flow(_flow(t.T0 + 3800, t.LAPTOP_IP, "198.51.100.10", 443, "tls", "www.bbc.co.uk"))
    recorder.finish()
    alerts = [(a["kind"], a["evidence"]) for a in _bypass(recorded)]
    assert alerts == [
        (
            "tor",
            f"Tor: TCP {t.LAPTOP_IP} -> 171.25.193.9:443; 171.25.193.9 is on tor.txt (maatuska)",
        ),
        (
            "vpn",
            f"VPN service: TCP {t.LAPTOP_IP} -> 198.51.100.7:443 (uk1234.nordvpn.com, sni); "
            "nordvpn.com is on vpn.txt (NordVPN (servers are COUNTRYNNNN.nordvpn.com))",
        ),
        (
            "proxy",
            f"proxy: TCP {t.LAPTOP_IP} -> 198.51.100.9:443 (www.croxyproxy.com, sni); "
            "croxyproxy.com is on proxies.txt",
        ),
        (
            "tor",
            f"Tor: TCP {t.LAPTOP_IP} -> 193.23.244.244:9001; 193.23.244.244 is on tor.txt (dannenberg)",
        ),
    ]


def _random_label(rng: random.Random, size: int) -> str:
    return "".join(rng.choice(string.ascii_lowercase + string.digits) for _ in range(size))


def test_dns_tunnel_by_random_names_and_dnscrypt_but_not_cdn_names() -> None:
    rng = random.Random(14)
    recorded, recorder = _recorder()
    ip = bytes(map(int, t.LAPTOP_IP.split(".")))
    server = bytes(map(int, t.DNS_SERVER.split(".")))

    def query(ts: float, name: str, qtype: int = 1) -> None:
        recorder.dns(ts, ip, 40000, server, 53, 1, name, qtype, 0, [], [], [], 0.01)

    for i in range(30):  # a browser's ordinary names, many under one domain
        query(t.T0 + i, f"r{i}---sn-aigl6nze.googlevideo.com")
        query(t.T0 + i, f"e{1000 + i}.dscb.akamaiedge.net")
        query(t.T0 + i, "_ldap._tcp.dc._msdcs.westgate.local", 33)
    assert _bypass(recorded) == []
    for i in range(25):  # base32 data in two labels under one domain, as a tunnel sends it
        name = f"{_random_label(rng, 40)}.{_random_label(rng, 20)}.t.exfil.example.co.uk"
        query(t.T0 + 100 + i, name, 5)
    query(t.T0 + 200, "2.dnscrypt-cert.resolver.example.net", 16)
    (tunnel, dnscrypt) = _bypass(recorded)
    assert tunnel["kind"] == "dns-tunnel"
    assert tunnel["evidence"].startswith(
        "DNS tunnel under example.co.uk: 20 distinct long random-looking names in 19s"
    )
    assert dnscrypt["kind"] == "encrypted-dns"
    assert "DNSCrypt certificate query 2.dnscrypt-cert.resolver.example.net" in dnscrypt["evidence"]


def test_bypass_alerts_off_raises_none() -> None:
    recorded, recorder = _recorder(bypass_alerts=False)
    recorder.flow(_flow(t.T0, t.LAPTOP_IP, "8.8.8.8", 853, None, None))
    recorder.finish()
    assert recorded.of("flows")
    assert recorded.of("alerts") == []


# --- lists and policy --------------------------------------------------------------------


def test_shipped_lists_load_with_their_kinds() -> None:
    lists = load_categories(CATEGORIES)
    assert "croxyproxy.com" not in lists.domains  # a bypass list, not a category
    found = lists.bypass.match_address("1.1.1.1", 443)
    assert found is not None
    assert (found.kind, found.source, found.note) == ("encrypted-dns", "doh.txt", "Cloudflare")
    assert lists.bypass.match_name("mozilla.cloudflare-dns.com").kind == "encrypted-dns"
    assert lists.bypass.match_name("cloudflare.com") is None


def test_list_entries_networks_ports_and_bad_lines(tmp_path: Path) -> None:
    folder = tmp_path / "lists"
    folder.mkdir()
    (folder / "open-proxies.txt").write_text(
        "# bypass: proxy\n203.0.113.0/24  # a hosting range\n198.51.100.4:8080\n2001:db8::/32\n"
    )
    lists = load_categories(folder).bypass
    assert lists.match_address("203.0.113.77", 80).value == "203.0.113.0/24"
    assert lists.match_address("198.51.100.4", 8080).value == "198.51.100.4:8080"
    assert lists.match_address("198.51.100.4", 80) is None
    assert lists.match_address("2001:db8::1", 443).note == ""
    (folder / "bad.txt").write_text("# bypass: vpn\n300.1.2.3\n")
    with pytest.raises(Invalid, match=r"bad.txt: '300.1.2.3' is not an address"):
        load_categories(folder)
    (folder / "bad.txt").write_text("# bypass: teleport\nexample.com\n")
    with pytest.raises(Invalid, match="bypass list kind 'teleport': use one of encrypted-dns"):
        load_categories(folder)


def test_policy_switch_is_validated() -> None:
    text = WESTGATE_POLICY.read_text()
    assert load_policy_text(text).bypass_alerts is True
    assert load_policy_text(text + "\n[monitor]\nbypass_alerts = false\n").bypass_alerts is False
    with pytest.raises(PolicyError, match="monitor.bypass_alerts: must be true or false"):
        load_policy_text(text + '\n[monitor]\nbypass_alerts = "no"\n')
    with pytest.raises(PolicyError, match="monitor.bypass: unknown key"):
        load_policy_text(text + "\n[monitor]\nbypass = false\n")


# --- end to end --------------------------------------------------------------------------


def test_monitor_run_flags_wireguard_then_export_alerts(westgate, run_cli, tmp_path) -> None:
    capture = str(shared("ndpi/mullvad_wireguard.pcap"))
    args = (
        "monitor",
        "run",
        "--read",
        capture,
        "--site",
        "westgate",
        "--categories",
        str(CATEGORIES),
    )
    out = run_cli(*args).stdout
    assert "1 alerts" in out
    assert "ALERT [weekly] bypass at " in out
    assert "WireGuard message signature: UDP 192.168.122.11 -> 198.54.131.98:5060" in out
    alerts_csv = tmp_path / "alerts.csv"
    run_cli("export", "alerts", "-o", str(alerts_csv))
    (row,) = list(csv.DictReader(alerts_csv.open()))
    assert (row["kind"], row["category"], row["severity"]) == ("vpn", "bypass", "weekly")
    assert "198.54.131.98 is on vpn.txt" in row["evidence"]


def test_writer_reads_the_switch_from_the_policy_in_force(westgate, session_factory) -> None:
    """`monitor run --site` starts its recorder with the site policy's switch."""
    with transaction(session_factory) as session:
        assert monitor_policy(session, "westgate")[0] is True
        store_policy(
            session,
            text=WESTGATE_POLICY.read_text() + "\n[monitor]\nbypass_alerts = false\n",
            source="westgate.toml",
            actor="test",
        )
    with transaction(session_factory) as session:
        assert monitor_policy(session, "westgate")[0] is False
