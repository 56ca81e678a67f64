"""Local names: mDNS, LLMNR and NetBIOS name service, and the DHCP hostname, become the names
a device goes by beside its MAC (`device show`, `device list --wide`, `export names`)."""

from __future__ import annotations

import json
import re
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
from scapy.layers.dns import DNS, DNSQR, DNSRR
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from service.config import Settings
from service.device_names import names_of, record_device_names
from service.monitor.attribution import Attributor
from service.retention import purge
from tests.monitor import traffic as t
from tests.monitor.conftest import SHARED_PCAPS, shared

MDNS_V4 = "224.0.0.251"
PRINTER_MAC = "02:00:00:00:50:01"
PRINTER_IP = "10.10.0.80"


def _names(recorded) -> set[tuple[str, str, str | None, str]]:
    return {(r["mac"], r["name"], r["ip"], r["source"]) for r in recorded.of("names")}


def _tshark_first_names(path: Path) -> set[str]:
    try:
        out = subprocess.run(
            ["tshark", "-n", "-r", str(path), "-T", "fields", "-e", "dns.qry.name"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except FileNotFoundError:
        pytest.skip("tshark is not installed")
    return {line.split(",")[0] for line in out.splitlines() if line}


def test_mdns_capture_matches_tshark_and_names_the_machine(run_file) -> None:
    path = shared("zeek/mdns.pcap")
    recorded = run_file(path)
    ours = {r["query"] for r in recorded.of("dns")}
    assert _tshark_first_names(path) <= ours
    machine = "johanna-QEMU-Virtual-Machine"
    # Its IPv4 address, its stable IPv6 address and its temporary (privacy) one.
    assert _names(recorded) == {
        ("8a:3c:d6:e1:4d:c4", machine, "10.0.2.7", "mdns"),
        ("8a:3c:d6:e1:4d:c4", machine, "fd52:429e:c03c:8235:883c:d6ff:fee1:4dc4", "mdns"),
        ("8a:3c:d6:e1:4d:c4", machine, "fd52:429e:c03c:8235:5968:5bc6:1563:f82f", "mdns"),
    }


def _ndpi_hostnames(name: str) -> set[tuple[str, str]]:
    path = SHARED_PCAPS / "ndpi" / name
    if not path.is_file():
        pytest.skip(f"reference output {path} is absent")
    found = set()
    for line in path.read_text().splitlines():
        match = re.search(r"UDP (\S+):137 .*Hostname/SNI: ([^\]]+)\]", line)
        if match:
            found.add((match.group(1), match.group(2)))
    return found


def test_netbios_capture_matches_ndpi_and_names_the_answering_machines(run_file) -> None:
    recorded = run_file(shared("ndpi/netbios.pcap"))
    expected = _ndpi_hostnames("netbios.pcap.out")
    assert {"xstream_hy", "ozi", "gunnar", "guru", "muli"} <= {name for _, name in expected}
    ours = {r["query"].rstrip("\x00").lower() for r in recorded.of("dns") if r["query"]}
    assert {name for _, name in expected} <= ours
    # (Positive answers carry no question: like Zeek, no qtype for them.)
    netbios = recorded.of("dns")
    assert {r["qtype_name"] for r in netbios if r["server_port"] == 137 and r["qtype"]} == {
        "NB",
        "NBSTAT",
    }
    # Only positive answers name a machine: queries for other machines' names claim nothing.
    assert _names(recorded) == {
        ("00:1c:c4:10:79:0f", "GUNNAR", "10.0.4.24", "netbios"),
        ("ec:a8:6b:f4:60:77", "GURU", "10.0.5.1", "netbios"),
    }


def _netbios_name(name: str, suffix: int) -> bytes:
    raw = name.upper().ljust(15).encode() + bytes([suffix])
    encoded = b"".join(bytes([0x41 + (b >> 4), 0x41 + (b & 0x0F)]) for b in raw)
    return b"\x20" + encoded + b"\x00"


def _netbios_registration(name: str, suffix: int, group: bool, ip: str) -> bytes:
    """A NetBIOS name registration request (RFC 1002 4.2.2): the name in the question and an
    NB record in the additional section pointing back at it."""
    header = (0x1234).to_bytes(2, "big") + (0x2910).to_bytes(2, "big")  # opcode 5, RD, B
    header += b"\x00\x01\x00\x00\x00\x00\x00\x01"
    question = _netbios_name(name, suffix) + b"\x00\x20\x00\x01"
    nb_flags = b"\x80\x00" if group else b"\x00\x00"
    rdata = nb_flags + bytes(int(x) for x in ip.split("."))
    record = b"\xc0\x0c\x00\x20\x00\x01" + (300000).to_bytes(4, "big") + b"\x00\x06" + rdata
    return header + question + record


def _udp(src_mac: str, src: str, dst: str, sport: int, dport: int, payload, when: float):
    pkt = (
        Ether(src=src_mac, dst="ff:ff:ff:ff:ff:ff")
        / IP(src=src, dst=dst)
        / UDP(sport=sport, dport=dport)
        / payload
    )
    pkt.time = t.T0 + when
    return pkt


def _local_traffic() -> list:
    announce = DNS(
        id=0,
        qr=1,
        aa=1,
        an=[
            DNSRR(rrname="Sams-iPad.local", type="A", ttl=120, rdata=t.LAPTOP_IP),
            DNSRR(rrname="21.0.10.10.in-addr.arpa", type="PTR", ttl=120, rdata="Sams-iPad.local"),
            DNSRR(rrname="_airplay._tcp.local", type="PTR", ttl=120, rdata="x._airplay._tcp.local"),
        ],
    )
    # An mDNS answer sent on the printer's behalf by another host (a sleep proxy): the name
    # belongs to whoever holds the printer's address, not to the sender.
    proxy = DNS(
        id=0,
        qr=1,
        aa=1,
        an=DNSRR(rrname="Office-Printer.local", type="A", ttl=120, rdata=PRINTER_IP),
    )
    llmnr = DNS(
        id=77,
        qr=1,
        qd=DNSQR(qname="LAB-PC-07"),
        an=DNSRR(rrname="LAB-PC-07", type="A", ttl=30, rdata="10.10.0.77"),
    )
    return [
        _udp(t.LAPTOP_MAC, t.LAPTOP_IP, MDNS_V4, 5353, 5353, announce, 1),
        _udp(t.LAPTOP_MAC, t.LAPTOP_IP, MDNS_V4, 5353, 5353, announce, 2),  # again, soon
        _udp(t.LAPTOP_MAC, t.LAPTOP_IP, MDNS_V4, 5353, 5353, announce, 700),  # much later
        _udp(t.VISITOR_MAC, t.VISITOR_IP, MDNS_V4, 5353, 5353, proxy, 3),
        _udp("02:00:00:00:77:07", "10.10.0.77", "10.10.0.9", 5355, 51111, llmnr, 4),
        _udp(
            "02:00:00:00:88:08",
            "10.10.0.88",
            "10.10.255.255",
            137,
            137,
            Raw(_netbios_registration("classroom-3", 0x00, False, "10.10.0.88")),
            5,
        ),
        _udp(
            "02:00:00:00:88:08",
            "10.10.0.88",
            "10.10.255.255",
            137,
            137,
            Raw(_netbios_registration("SCHOOLDOM", 0x00, True, "10.10.0.88")),  # a group
            6,
        ),
        _udp(
            "02:00:00:00:88:08",
            "10.10.0.88",
            "10.10.255.255",
            137,
            137,
            Raw(_netbios_registration("SCHOOLDOM", 0x1C, False, "10.10.0.88")),  # a DC
            7,
        ),
        *t.dhcp_dora("02:00:00:00:99:09", "10.10.0.99", "chromebook-0099", t.T0 + 8),
    ]


def test_generated_local_names(tmp_path, run_file) -> None:
    attributor = Attributor()
    attributor.learn(PRINTER_IP, PRINTER_MAC, t.T0 - 60, "dhcp")
    recorded = run_file(t.write(tmp_path / "local.pcap", _local_traffic()), attributor=attributor)
    # The DHCP hostname comes in DISCOVER (no address yet) and REQUEST (the address asked
    # for): a row for each address it was seen with.
    assert _names(recorded) == {
        (t.LAPTOP_MAC, "Sams-iPad", t.LAPTOP_IP, "mdns"),
        (PRINTER_MAC, "Office-Printer", PRINTER_IP, "mdns"),
        ("02:00:00:00:77:07", "LAB-PC-07", "10.10.0.77", "llmnr"),
        ("02:00:00:00:88:08", "CLASSROOM-3", "10.10.0.88", "netbios"),
        ("02:00:00:00:99:09", "chromebook-0099", None, "dhcp"),
        ("02:00:00:00:99:09", "chromebook-0099", "10.10.0.99", "dhcp"),
    }
    # Announced three times: written at the first and again at +700 s (at most one row per
    # name per ten minutes; the database keeps first and last seen).
    sams = [r["first_seen"] for r in recorded.of("names") if r["name"] == "Sams-iPad"]
    assert [(s - sams[0]).total_seconds() for s in sams] == [0.0, 699.0]


def _name_row(mac: str, name: str, ip: str | None, first: float, last: float) -> dict:
    return {
        "site_code": "westgate",
        "first_seen": datetime.fromtimestamp(t.T0 + first, UTC),
        "last_seen": datetime.fromtimestamp(t.T0 + last, UTC),
        "mac": mac,
        "ip": ip,
        "name": name,
        "source": "mdns",
    }


def test_record_device_names_upserts(session) -> None:
    """SQLite and PostgreSQL: one row per (mac, name, source); a later sighting moves last_seen
    and the address on, an earlier or address-less one does not undo them."""
    assert (
        record_device_names(
            session=session,
            rows=[
                _name_row(t.LAPTOP_MAC, "Sams-iPad", "10.10.0.21", 0, 0),
                _name_row(t.LAPTOP_MAC, "Sams-iPad", "10.10.0.22", 60, 60),
                _name_row(PRINTER_MAC, "Office-Printer", None, 5, 5),
            ],
        )
        == 2
    )
    session.commit()
    record_device_names(
        session=session,
        rows=[
            _name_row(t.LAPTOP_MAC, "Sams-iPad", None, 900, 900),
            _name_row(PRINTER_MAC, "Office-Printer", "10.10.0.80", 1, 1),  # older: ignored
        ],
    )
    session.commit()
    names = names_of(session=session, macs=[t.LAPTOP_MAC.upper(), PRINTER_MAC])
    [sams] = names[t.LAPTOP_MAC]
    assert (sams.ip, (sams.last_seen - sams.first_seen).total_seconds()) == ("10.10.0.22", 900)
    [printer] = names[PRINTER_MAC]
    assert (printer.ip, printer.first_seen, printer.last_seen) == (
        None,
        datetime.fromtimestamp(t.T0 + 5, UTC),
        datetime.fromtimestamp(t.T0 + 5, UTC),
    )


def test_retention_purges_names_not_seen_for_its_period(session) -> None:
    """A name last seen before `retention_days["device_names"]` is deleted by the purge, one
    seen since is kept, and the audit log says how many went (SQLite and PostgreSQL)."""
    record_device_names(
        session=session,
        rows=[
            _name_row(t.LAPTOP_MAC, "Sams-iPad", "10.10.0.21", 0, 0),
            _name_row(PRINTER_MAC, "Office-Printer", None, 0, 40 * 86400),
        ],
    )
    session.commit()
    settings = Settings(retention_days={"device_names": 30})
    now = datetime.fromtimestamp(t.T0 + 45 * 86400, UTC)
    removed = purge(session, settings=settings, now=now, actor="test")
    session.commit()
    assert removed["device_names"] == 1
    assert list(names_of(session=session, macs=[t.LAPTOP_MAC, PRINTER_MAC])) == [PRINTER_MAC]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # both: the test above
def test_names_reach_device_show_list_and_export(westgate, run_cli, tmp_path) -> None:
    capture = t.write(tmp_path / "local.pcap", _local_traffic())
    for _ in range(2):  # a second run moves nothing back and adds no row
        run_cli("monitor", "run", "--read", str(capture), "--site", "westgate", "--quiet")
    shown = run_cli("device", "show", t.LAPTOP_MAC).stdout
    assert "seen as: Sams-iPad (mdns, 10.10.0.21; 2026-11-18T11:06:41+00:00 to" in shown
    listed = json.loads(run_cli("device", "list", "--json").stdout)
    laptop = next(d for d in listed if d["mac"] == t.LAPTOP_MAC)
    assert laptop["seen_as"] == ["Sams-iPad"]
    assert "Sams-iPad" in run_cli("device", "list", "--wide").stdout
    lines = run_cli("export", "names", "--format", "jsonl").stdout.splitlines()
    exported = [json.loads(line) for line in lines]
    assert len(exported) == len({(e["mac"], e["name"], e["source"]) for e in exported})
    sams = next(e for e in exported if e["name"] == "Sams-iPad")
    assert (sams["mac"], sams["source"], sams["ip"], sams["site"]) == (
        t.LAPTOP_MAC,
        "mdns",
        t.LAPTOP_IP,
        "westgate",
    )
    assert (sams["first_seen"], sams["last_seen"]) == (
        "2026-11-18T11:06:41+00:00",
        "2026-11-18T11:18:20+00:00",
    )
