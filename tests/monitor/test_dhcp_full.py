"""DHCP in full (issue 14): every message type, option 82 (relay agent), vendor class, INFORM,
renewals and RELEASE, against Zeek's dhcp.log for its capture and on crafted traffic."""

from __future__ import annotations

from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Packet

from service.monitor.attribution import Attributor
from tests.monitor import traffic as t
from tests.monitor.conftest import shared
from tests.monitor.test_references import zeek_log

PHONE_MAC = "02:00:00:00:55:01"
RELAY = "10.10.0.1"
SERVER = "10.0.0.1"
# Option 82 as a Cisco switch sends it: circuit id = VLAN 10, module 1, port 7 (binary),
# remote id = the switch's name.
OPTION_82 = b"\x01\x06\x00\x04\x00\x0a\x01\x07\x02\x0bswitch-hall"


def test_every_field_of_zeeks_dhcp_log_is_recorded(run_file) -> None:
    recorded = run_file(shared("zeek/dhcp.pcap"))
    rows = recorded.of("bindings")
    zeek = zeek_log("dhcp.dhcp.log")
    # Zeek groups the messages of a transaction into one line; ours are one row each, in order.
    assert [r["msg_type"] for r in rows] == [
        kind for line in zeek for kind in line["msg_types"].split(",")
    ]
    assert {line["server_addr"] for line in zeek if line["server_addr"] != "-"} <= {
        r["server_ip"] for r in rows
    }
    assert {line["domain"] for line in zeek if line["domain"] != "-"} <= {r["domain"] for r in rows}
    messages = {line["server_message"] for line in zeek if line["server_message"] != "-"}
    nak = next(r for r in rows if r["msg_type"] == "NAK")
    assert {nak["message"]} == messages
    requested = {line["requested_addr"] for line in zeek if line["requested_addr"] != "-"}
    for kind in ("REQUEST", "INFORM"):
        assert requested <= {r["requested_ip"] for r in rows if r["msg_type"] == kind}, kind
    assert {line["mac"] for line in zeek} == {r["mac"] for r in rows}
    # What Zeek does not log: the vendor class (an Aruba access point's server) and the xid.
    assert {r["vendor_class"] for r in rows if r["msg_type"] == "ACK"} == {"ArubaAP"}
    assert {r["trans_id"] for r in rows if r["msg_type"] == "RELEASE"} == {1948}


def _dhcp(
    t0: float, kind: str, mac: str, *, ciaddr: str = "0.0.0.0", yiaddr: str = "0.0.0.0", **opts
) -> Packet:
    """One DHCP message, relayed (giaddr set) between the relay and the server."""
    to_server = kind in ("discover", "request", "inform", "release", "decline")
    src, dst = (RELAY, SERVER) if to_server else (SERVER, RELAY)
    options = [("message-type", kind), *opts.items(), "end"]
    pkt = (
        Ether(src=t.ROUTER_MAC, dst=t.ROUTER_MAC)
        / IP(src=src, dst=dst)
        / UDP(sport=67, dport=67)
        / BOOTP(
            op=1 if to_server else 2,
            chaddr=bytes.fromhex(mac.replace(":", "")),
            ciaddr=ciaddr,
            yiaddr=yiaddr,
            giaddr=RELAY,
            xid=0x5C0,
        )
        / DHCP(options=options)
    )
    pkt.time = t0
    return pkt


def _phone_day() -> list[Packet]:
    """A phone on the hall switch leases 10.10.0.40 for an hour, renews at 30 min, releases it
    at 50 min; a laptop that set its own address sends an INFORM; a flow from each follows."""
    ip = "10.10.0.40"
    relayed = {"relay_agent_information": OPTION_82}
    pkts = [
        _dhcp(
            t.T0,
            "request",
            PHONE_MAC,
            requested_addr=ip,
            hostname=b"pixel-7",
            vendor_class_id=b"android-dhcp-14",
            **relayed,
        ),
        _dhcp(
            t.T0 + 0.1, "ack", PHONE_MAC, yiaddr=ip, server_id=SERVER, lease_time=3600, **relayed
        ),
        _dhcp(t.T0 + 1800, "request", PHONE_MAC, ciaddr=ip, **relayed),
        _dhcp(t.T0 + 1800.1, "ack", PHONE_MAC, yiaddr=ip, server_id=SERVER, lease_time=3600),
        _dhcp(t.T0 + 3000, "release", PHONE_MAC, ciaddr=ip, server_id=SERVER),
        _dhcp(
            t.T0 + 10,
            "inform",
            t.LAPTOP_MAC,
            ciaddr=t.LAPTOP_IP,
            vendor_class_id=b"MSFT 5.0",
            hostname=b"LAB-PC-21",
        ),
    ]
    pkts.sort(key=lambda p: p.time)
    # Flows at 45 min (inside the renewed lease, past the first lease's end) and at 55 min
    # (after the RELEASE), and one from the laptop.
    pkts += t.tcp_session(ip, 50000, "93.184.216.34", 80, t.T0 + 2700, b"GET / HTTP/1.1\r\n\r\n")
    pkts += t.tcp_session(ip, 50001, "93.184.216.34", 80, t.T0 + 3300, b"GET / HTTP/1.1\r\n\r\n")
    pkts += t.tcp_session(
        t.LAPTOP_IP, 50002, "93.184.216.34", 80, t.T0 + 3400, b"GET / HTTP/1.1\r\n\r\n"
    )
    return pkts


def test_relay_agent_vendor_class_inform_renewal_and_release(run_file, tmp_path) -> None:
    recorded = run_file(t.write(tmp_path / "hall.pcap", _phone_day()))
    rows = recorded.of("bindings")
    first = rows[0]
    assert (first["msg_type"], first["requested_ip"], first["hostname"]) == (
        "REQUEST",
        "10.10.0.40",
        "pixel-7",
    )
    assert (first["circuit_id"], first["remote_id"], first["relay_ip"]) == (
        "00:04:00:0a:01:07",
        "switch-hall",
        RELAY,
    )
    assert first["vendor_class"] == "android-dhcp-14"
    leases = [r for r in rows if r["is_lease"]]
    assert [(r["ip"], r["lease_seconds"], r["server_ip"]) for r in leases] == [
        ("10.10.0.40", 3600, SERVER)
    ] * 2
    inform = next(r for r in rows if r["msg_type"] == "INFORM")
    assert (inform["ip"], inform["mac"], inform["vendor_class"], inform["hostname"]) == (
        t.LAPTOP_IP,
        t.LAPTOP_MAC,
        "MSFT 5.0",
        "LAB-PC-21",
    )
    release = next(r for r in rows if r["msg_type"] == "RELEASE")
    assert (release["ip"], release["mac"], release["is_lease"]) == ("10.10.0.40", PHONE_MAC, False)

    by_port = {f["orig_port"]: f for f in recorded.of("flows")}
    # The renewal carried the lease past its first hour; the RELEASE ended it.
    assert (by_port[50000]["mac"], by_port[50000]["mac_source"]) == (PHONE_MAC, "dhcp")
    assert by_port[50001]["mac"] is None
    # An INFORM shows an address the client is using, as an ARP does.
    assert (by_port[50002]["mac"], by_port[50002]["mac_source"]) == (t.LAPTOP_MAC, "arp")


def test_a_corrupt_relay_agent_option_is_counted_not_fatal(run_file, tmp_path) -> None:
    bad = _dhcp(t.T0, "request", PHONE_MAC, relay_agent_information=b"\x01\x09short")
    good = t.dhcp_dora(t.LAPTOP_MAC, t.LAPTOP_IP, "laptop-21", t.T0 + 1)
    recorded = run_file(t.write(tmp_path / "bad82.pcap", [bad, *good]))
    assert recorded.monitor is not None
    assert recorded.monitor.counters.skipped_corrupt == 1
    assert [r["msg_type"] for r in recorded.of("bindings")] == [
        "DISCOVER",
        "OFFER",
        "REQUEST",
        "ACK",
    ]


def test_attributor_release_ends_only_that_macs_lease() -> None:
    attributor = Attributor()
    attributor.learn("10.0.0.9", "aa:aa:aa:aa:aa:aa", 0.0, "dhcp", until=3600.0)
    assert not attributor.release("10.0.0.9", "bb:bb:bb:bb:bb:bb", 100.0)
    assert attributor.who("10.0.0.9", 200.0)[0] == "aa:aa:aa:aa:aa:aa"
    assert attributor.release("10.0.0.9", "aa:aa:aa:aa:aa:aa", 300.0)
    assert attributor.who("10.0.0.9", 299.0)[0] == "aa:aa:aa:aa:aa:aa"
    assert attributor.who("10.0.0.9", 301.0)[0] is None
