"""Bypass alerts as soon as the evidence is seen (issue 14): a tunnel that stays up all day
alerts within seconds of its first signature packet, with that packet's time, and once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime

import pytest
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.l2 import GRE, Ether
from scapy.packet import Packet, Raw
from sqlalchemy import select

from service.models.traffic import TrafficAlert, TrafficFlow
from tests.monitor import traffic as t
from tests.monitor.conftest import REPO
from tests.monitor.test_live import _capturing, replay, veth  # noqa: F401  (the fixture)

VPN_SERVER = "185.65.134.1"  # not on any list: the WireGuard signature alone is the evidence
WG_PORT = 51820


def _udp(ts: float, payload: bytes, *, back: bool = False, client: str = t.LAPTOP_IP) -> Packet:
    ends = (client, VPN_SERVER, 41641, WG_PORT)
    src, dst, sport, dport = (ends[1], ends[0], ends[3], ends[2]) if back else ends
    pkt = (
        Ether(
            src=t.ROUTER_MAC if back else t.LAPTOP_MAC, dst=t.LAPTOP_MAC if back else t.ROUTER_MAC
        )
        / IP(src=src, dst=dst)
        / UDP(sport=sport, dport=dport)
        / Raw(payload)
    )
    pkt.time = ts
    return pkt


def _wireguard(start: float, seconds: float, every: float = 20.0) -> list[Packet]:
    """A keepalive-ish packet nobody can name, then a WireGuard handshake (initiation 148
    bytes, response 92) and transport data both ways every `every` seconds."""
    pkts = [_udp(start, b"\x7f" * 10)]
    pkts.append(_udp(start + 2.0, b"\x01\x00\x00\x00" + bytes(144)))
    pkts.append(_udp(start + 2.05, b"\x02\x00\x00\x00" + bytes(88), back=True))
    at = start + 3.0
    while at < start + seconds:
        pkts.append(_udp(at, b"\x04\x00\x00\x00" + bytes(60)))
        pkts.append(_udp(at + 0.05, b"\x04\x00\x00\x00" + bytes(28), back=True))
        at += every
    return pkts


def _at(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def test_alert_time_is_the_evidence_packet_and_a_two_hour_tunnel_alerts_once(
    run_file, tmp_path
) -> None:
    connect = b"CONNECT youtube.com:443 HTTP/1.1\r\nHost: youtube.com:443\r\n\r\n"
    pkts = _wireguard(t.T0, 2 * 3600.0)
    proxy = t.tcp_session(t.VISITOR_IP, 42000, "203.0.113.8", 3128, t.T0 + 10, connect)
    # The CONNECT comes 30 ms after the SYN (tcp_session), its flow ends 40 ms later.
    pkts += proxy
    pkts.sort(key=lambda p: float(p.time))
    recorded = run_file(t.write(tmp_path / "tunnel.pcap", pkts))
    alerts = {a["kind"]: a for a in recorded.of("alerts") if a["category"] == "bypass"}
    assert sorted(alerts) == ["proxy", "vpn"]
    # The WireGuard initiation, not the unnamed first packet nor the tunnel's end 2 h later.
    assert alerts["vpn"]["raised_at"] == _at(t.T0 + 2.0)
    assert alerts["vpn"]["evidence"].startswith("WireGuard message signature")
    (tunnel,) = [f for f in recorded.of("flows") if f["resp_port"] == WG_PORT]
    assert tunnel["duration"] > 7000
    assert alerts["proxy"]["raised_at"] == _at(float(proxy[3].time))
    assert alerts["proxy"]["raised_at"] != _at(float(proxy[0].time))


def test_gre_and_esp_alert_at_their_first_packet_and_a_ping_raises_none(run_file, tmp_path) -> None:
    """Tunnel protocols (GRE 47, ESP 50) are evidence from their first packet; another IP
    protocol (ICMP) is nothing the bypass check looks at. (Two clients: one alert per device
    and kind an hour.)"""
    pkts = []
    for i, inner in enumerate(
        [
            IP(src=t.LAPTOP_IP, dst="198.51.100.7") / GRE() / Raw(b"x" * 20),
            IP(src=t.VISITOR_IP, dst="198.51.100.8", proto=50) / Raw(bytes(8) + b"y" * 20),
            IP(src=t.LAPTOP_IP, dst="198.51.100.9") / ICMP(),
        ]
    ):
        pkt = Ether(src=t.LAPTOP_MAC, dst=t.ROUTER_MAC) / inner
        pkt.time = t.T0 + i
        pkts.append(pkt)
    recorded = run_file(t.write(tmp_path / "tunnels.pcap", pkts))
    alerts = sorted(
        (a["raised_at"], a["evidence"].split(":")[0])
        for a in recorded.of("alerts")
        if a["category"] == "bypass"
    )
    assert alerts == [
        (_at(t.T0), "GRE (IP protocol 47, PPTP)"),
        (_at(t.T0 + 1), "IPsec ESP (IP protocol 50)"),
    ]


@pytest.mark.netns
@pytest.mark.slow
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_live_wireguard_tunnel_alerts_before_it_ends(
    veth,  # noqa: F811
    westgate,
    session_factory,
    tmp_path,
) -> None:
    ns, outside, inside = veth
    env = {**os.environ, "SCHOOLGATE_DATABASE_URL": westgate.db_url}
    command = [sys.executable, "-m", "service", "monitor", "run", "--interface", outside]
    monitor = subprocess.Popen(
        [
            *command,
            "--site",
            "westgate",
            "--duration",
            "120",
            "--quiet",
            "--categories",
            str(REPO / "deploy" / "categories"),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    def send(pkts: list[Packet], name: str) -> None:
        replay(ns, inside, t.write(tmp_path / name, pkts))

    try:
        _capturing(monitor)
        send(_wireguard(time.time(), 1.0), "handshake.pcap")
        sent = time.monotonic()
        alerts: list[TrafficAlert] = []
        flows: list[TrafficFlow] = []
        while time.monotonic() - sent < 20 and not alerts:
            # The tunnel keeps going: transport data every half second.
            send([_udp(0, b"\x04\x00\x00\x00" + bytes(28))], "data.pcap")
            time.sleep(0.5)
            with session_factory() as session:
                alerts = list(session.scalars(select(TrafficAlert)))
                flows = list(session.scalars(select(TrafficFlow)))
        waited = time.monotonic() - sent
        monitor.send_signal(signal.SIGTERM)
        _out, err = monitor.communicate(timeout=60)
    finally:
        if monitor.poll() is None:
            monitor.kill()
    assert monitor.returncode == 0, err
    assert [(a.kind, a.category, a.mac) for a in alerts] == [("vpn", "bypass", None)], err
    assert waited < 20
    # The tunnel had not ended: its flow row comes when it does.
    assert [f for f in flows if f.service == "wireguard"] == []
    with session_factory() as session:
        # Stopping the monitor ends the flow: its row now, and no second alert.
        # (the kernel's own IPv6 neighbour discovery on a new veth may add flows of its own)
        services = list(session.scalars(select(TrafficFlow.service)))
        assert services.count("wireguard") == 1, services
        assert len(list(session.scalars(select(TrafficAlert)))) == 1
