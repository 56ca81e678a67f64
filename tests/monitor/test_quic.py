"""QUIC: server names, versions and ALPN from client Initial packets (issue 14).

Known answers from RFC 9001 Appendix A and RFC 9369 Appendix A; nDPI's captures of QUIC v1,
v2, draft-29, 0-RTT and Google QUIC compared with nDPI's own output; and Initials built here
with the cryptography package for what those captures do not cover (a ClientHello split over
three packets and out of order, coalesced packets, Retry and Version Negotiation, a damaged
packet)."""

from __future__ import annotations

import json
import re

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from service.monitor import extract, quic
from tests.monitor import traffic as t
from tests.monitor.conftest import SHARED_PCAPS, shared

V1 = quic.VERSIONS[b"\x00\x00\x00\x01"]
V2 = quic.VERSIONS[b"\x6b\x33\x43\xcf"]
RFC_DCID = bytes.fromhex("8394c8f03e515708")
# RFC 9001 A.2: the client's CRYPTO frame (a ClientHello for example.com, ALPN "alpn").
RFC_CRYPTO_FRAME = bytes.fromhex(
    "060040f1010000ed0303ebf8fa56f12939b9584a3896472ec40bb863cfd3e868"
    "04fe3a47f06a2b69484c00000413011302010000c000000010000e00000b6578"
    "616d706c652e636f6dff01000100000a00080006001d00170018001000070005"
    "04616c706e000500050100000000003300260024001d00209370b2c9caa47fba"
    "baf4559fedba753de171fa71f50f1ce15d43e994ec74d748002b000302030400"
    "0d0010000e0403050306030203080408050806002d00020101001c0002400100"
    "3900320408ffffffffffffffff05048000ffff07048000ffff08011001048000"
    "75300901100f088394c8f03e51570806048000ffff"
)


def _varint(value: int) -> bytes:
    if value < 0x40:
        return bytes((value,))
    if value < 0x4000:
        return (value | 0x4000).to_bytes(2, "big")
    return (value | 0x80000000).to_bytes(4, "big")


def test_rfc9001_client_initial_known_answer() -> None:
    """RFC 9001 A.1-A.2: the keys, and the protected packet's first and last bytes."""
    key, iv, hp = quic.initial_secrets(V1, RFC_DCID)
    assert (key.hex(), iv.hex(), hp.hex()) == (
        "1f369613dd76d5467730efcbe3b1a22d",
        "fa044b2f42a3fd3b46fb255c",
        "9f50449e04a0e810283a1e9933adedd2",
    )
    payload = RFC_CRYPTO_FRAME + bytes(1162 - len(RFC_CRYPTO_FRAME))
    packet = quic.seal_initial(V1, RFC_DCID, 2, payload)
    assert len(packet) == 1200
    assert packet[:32].hex() == "c000000001088394c8f03e5157080000449e7b9aec34d1b1c98dd7689fb8ec11"
    assert packet[-48:].hex() == (
        "7e78bfe706ca4cf5e9c5453e9f7cfd2b8b4c8d169a44e55c88d4a9a7f9474241"
        "e221af44860018ab0856972e194cd934"
    )
    plain = quic.decrypt_initial(packet, 0, 18, 1200, quic.InitialKeys(V1, RFC_DCID))
    assert plain == payload
    (offset, hello_bytes), *_ = quic.crypto_frames(plain)
    assert offset == 0
    hello = extract.client_hello(hello_bytes)
    assert hello == extract.ClientHello("example.com", "alpn", "tls1.3")
    state = quic.QuicFlow()
    assert state.datagram(packet) == hello
    assert state.version == "quic-v1"


def test_rfc9369_v2_keys_known_answer() -> None:
    key, iv, hp = quic.initial_secrets(V2, RFC_DCID)
    assert (key.hex(), iv.hex(), hp.hex()) == (
        "8b1a0bc121284290a29e0971b5cd045d",
        "91f73e2351d8fa91660e909f",
        "45b95e15235d6f45a6b19cbcb0294ba9",
    )
    payload = RFC_CRYPTO_FRAME + bytes(1162 - len(RFC_CRYPTO_FRAME))
    packet = quic.seal_initial(V2, RFC_DCID, 2, payload)
    # RFC 9369 A.2: the protected v2 Initial begins so (type bits 01 for Initial).
    assert packet[:22].hex() == "d76b3343cf088394c8f03e5157080000449ea0c95e82"
    assert quic.QuicFlow().datagram(packet) == extract.ClientHello("example.com", "alpn", "tls1.3")


# --- nDPI's captures ------------------------------------------------------------------------

_NDPI_VERSIONS = {"V-1": "quic-v1", "V-2": "quic-v2"}


def _ndpi_quic(name: str) -> dict[tuple[tuple[str, str], ...], tuple[str, str, str | None]]:
    """nDPI's QUIC flows with a server name: endpoints -> (name, version, ALPNs)."""
    path = SHARED_PCAPS / "ndpi" / name
    if not path.is_file():
        pytest.skip(f"reference output {path} is absent")
    flows = {}
    for line in path.read_text().splitlines():
        ends = re.search(r"UDP \[?([\w.:]+?)\]?:(\d+) <?-> \[?([\w.:]+?)\]?:(\d+) ", line)
        sni = re.search(r"\[Hostname/SNI: ([^\]]+)\]", line)
        ver = re.search(r"\[QUIC ver: ([^\]]+)\]", line)
        if not (ends and sni and ver):
            continue
        alpn = re.search(r"\[\(Advertised\) ALPNs: ([^\]]+)\]", line)
        a, ap, b, bp = ends.groups()
        raw = ver.group(1)
        version = _NDPI_VERSIONS.get(raw) or (
            "quic-draft" + raw.removeprefix("Draft-")
            if raw.startswith("Draft-")
            else "gquic-" + raw
        )
        flows[tuple(sorted([(a, ap), (b, bp)]))] = (
            sni.group(1),
            version,
            alpn.group(1).replace(";", ",") if alpn else None,
        )
    return flows


@pytest.mark.parametrize(
    ("pcap", "count"),
    [
        ("ndpi/quic.pcap", 8),  # Google QUIC Q024-Q030: the CHLO in the clear
        ("ndpi/quic-29.pcap", 1),
        ("ndpi/quic-v2.pcapng", 1),
        ("ndpi/quic_0RTT.pcap", 2),  # v1 with 0-RTT packets, and draft-28
    ],
)
def test_quic_names_match_ndpi(run_file, pcap: str, count: int) -> None:
    expected = _ndpi_quic(pcap.removeprefix("ndpi/") + ".out")
    assert len(expected) == count
    recorded = run_file(shared(pcap))
    ours = {
        tuple(sorted([(f["orig_ip"], str(f["orig_port"])), (f["resp_ip"], str(f["resp_port"]))])): (
            f["server_name"],
            f["version"],
            f["alpn"],
        )
        for f in recorded.of("flows")
        if f["name_source"] == "quic"
    }
    assert ours == expected
    assert all(f["service"] == "quic" for f in recorded.of("flows") if f["proto"] == "udp")
    assert recorded.monitor.counters.quic_undecryptable == 0
    visits = {v["server_name"] for v in recorded.of("visits")}
    assert {name.removeprefix("www.") for name, _, _ in expected.values()} <= visits


# --- generated Initials ---------------------------------------------------------------------

CLIENT, SERVER = "10.10.0.21", "142.250.1.1"


def _hello(name: str, size: int = 3000) -> bytes:
    """A bare ClientHello (no record header) for `name`, ALPN h2 (traffic.client_hello's),
    grown to about `size` bytes with a padding extension, as a post-quantum key share does."""
    record = t.client_hello(name)
    body = bytearray(record[5 + 4 :])
    pad = size - len(body)
    ext_at = 2 + 32 + 1 + 32 + 2 + 4 + 2  # version, random, session id, suites, compression
    extensions = body[ext_at + 2 :] + b"\x00\x15" + pad.to_bytes(2, "big") + bytes(pad)
    body[ext_at:] = len(extensions).to_bytes(2, "big") + extensions
    return b"\x01" + len(body).to_bytes(3, "big") + bytes(body)


def _crypto(offset: int, data: bytes) -> bytes:
    return b"\x06" + _varint(offset) + _varint(len(data)) + data


def _datagrams(*payloads: bytes, sport: int = 51000, dport: int = 443) -> list:
    frames = []
    for index, payload in enumerate(payloads):
        frame = (
            Ether(src=t.LAPTOP_MAC, dst=t.ROUTER_MAC)
            / IP(src=CLIENT, dst=SERVER)
            / UDP(sport=sport, dport=dport)
            / Raw(payload)
        )
        frame.time = t.T0 + index * 0.01
        frames.append(frame)
    return frames


def test_client_hello_split_over_three_initials_out_of_order(run_file, tmp_path) -> None:
    hello = _hello("classroom.example.org")
    dcid = bytes(range(8))
    thirds = [(0, hello[:1100]), (1100, hello[1100:2200]), (2200, hello[2200:])]
    packets = [
        # The last piece first, then a PING and ACK-bearing packet with the first, then the
        # middle one split in two frames with PADDING between them.
        quic.seal_initial(V1, dcid, 0, _crypto(*thirds[2]) + bytes(200)),
        quic.seal_initial(V1, dcid, 1, b"\x01" + b"\x02\x00\x00\x00\x00" + _crypto(*thirds[0])),
        quic.seal_initial(
            V1,
            dcid,
            2,
            _crypto(1100, hello[1100:1700]) + bytes(30) + _crypto(1700, hello[1700:2200]),
        ),
    ]
    state = quic.QuicFlow()
    assert state.datagram(packets[0]) is None
    assert state.datagram(packets[1]) is None
    assert state.datagram(packets[2]) == extract.ClientHello(
        "classroom.example.org", "h2", "tls1.2"
    )
    # Through the engine, on a port that is not 443.
    recorded = run_file(t.write(tmp_path / "split.pcap", _datagrams(*packets, dport=8443)))
    (flow,) = recorded.of("flows")
    assert (flow["server_name"], flow["name_source"], flow["version"], flow["alpn"]) == (
        "classroom.example.org",
        "quic",
        "quic-v1",
        "h2",
    )
    assert flow["service"] == "quic"


def test_coalesced_initial_and_0rtt_and_keys_kept_after_dcid_change(run_file, tmp_path) -> None:
    hello = _hello("coalesced.example.org", size=1800)
    first_dcid, server_cid = b"\x11" * 8, b"\x22" * 8
    zero_rtt = quic.seal_initial(
        V2, first_dcid, 1, b"\x01" * 40, packet_type=2
    )  # skipped, not counted
    # First datagram: 0-RTT before the Initial, as a client may coalesce them.
    one = zero_rtt + quic.seal_initial(V2, first_dcid, 0, _crypto(0, hello[:1000]))
    # Second: after the server's Initial the client writes to the server's connection ID but
    # keeps the first Initial's keys (RFC 9001 5.2); an Initial and a 0-RTT packet again.
    two = (
        quic.seal_initial(V2, server_cid, 2, _crypto(1000, hello[1000:]), key_dcid=first_dcid)
        + zero_rtt
    )
    recorded = run_file(t.write(tmp_path / "coalesced.pcap", _datagrams(one, two)))
    (flow,) = recorded.of("flows")
    assert (flow["server_name"], flow["version"]) == ("coalesced.example.org", "quic-v2")
    assert recorded.monitor.counters.quic_undecryptable == 0


def test_damaged_initial_is_counted_and_the_next_one_read(run_file, tmp_path) -> None:
    hello = _hello("damaged.example.org", size=900)
    good = quic.seal_initial(V1, b"\x33" * 8, 0, _crypto(0, hello) + bytes(100))
    damaged = bytearray(good)
    damaged[-30] ^= 0xFF  # one byte of ciphertext: the GCM tag no longer matches
    retry = bytes((0xF0,)) + b"\x00\x00\x00\x01" + b"\x08" + b"\x44" * 8 + b"\x00" + bytes(40)
    negotiation = b"\x80\x00\x00\x00\x00" + b"\x00\x00" + b"\x00\x00\x00\x01"
    recorded = run_file(
        t.write(tmp_path / "damaged.pcap", _datagrams(bytes(damaged), retry, negotiation, good))
    )
    (flow,) = recorded.of("flows")
    assert flow["server_name"] == "damaged.example.org"
    assert recorded.monitor.counters.quic_undecryptable == 1
    # Nothing but damage: the flow is still recorded, unnamed, and nothing raises.
    only_bad = run_file(t.write(tmp_path / "bad.pcap", _datagrams(bytes(damaged), bytes(damaged))))
    (flow,) = only_bad.of("flows")
    assert flow["server_name"] is None
    assert flow["service"] == "quic"
    assert only_bad.monitor.counters.quic_undecryptable == 2


def test_tls_over_tcp_records_version_and_alpn(run_file, tmp_path) -> None:
    packets = t.tcp_session(CLIENT, 50100, SERVER, 443, t.T0, t.client_hello("www.bbc.co.uk"))
    recorded = run_file(t.write(tmp_path / "tls.pcap", packets))
    (flow,) = recorded.of("flows")
    assert (flow["server_name"], flow["name_source"], flow["version"], flow["alpn"]) == (
        "www.bbc.co.uk",
        "sni",
        "tls1.2",
        "h2",
    )


def test_monitor_run_read_records_quic_names_then_exports(westgate, run_cli) -> None:
    """End to end: `schoolgate monitor run --read` on nDPI's 0-RTT capture, then the export."""
    capture = shared("ndpi/quic_0RTT.pcap")
    run_cli("monitor", "run", "--read", str(capture), "--site", "westgate")
    flows = [
        json.loads(line)
        for line in run_cli("export", "traffic", "--format", "jsonl").stdout.splitlines()
    ]
    quic_flows = {f["server_name"]: f for f in flows if f["name_source"] == "quic"}
    assert set(quic_flows) == {"ssl.gstatic.com", "abcd"}
    assert (quic_flows["ssl.gstatic.com"]["version"], quic_flows["ssl.gstatic.com"]["alpn"]) == (
        "quic-v1",
        "h3",
    )
    assert quic_flows["abcd"]["version"] == "quic-draft28"
