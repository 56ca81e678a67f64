"""Benchmark: `schoolgate monitor run --read` end to end (parse, flows, names, visits, batch
writes to a fresh SQLite database) against `tshark -T fields` extracting the same fields from the
same large capture. Target: at least 5x tshark's packets/s.

    /work/venv/bin/python bench/monitor_pcap.py [--copies 400] [--database-url URL]

The capture is the generated school day (tests/monitor/traffic.py) plus every reference trace in
../shared/pcaps with Ethernet framing, repeated with shifted times and addresses.
"""

from __future__ import annotations

import argparse
import os
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "pcaps"
sys.path.insert(0, str(REPO))

TSHARK_FIELDS = [
    "frame.time_epoch",
    "eth.src",
    "vlan.id",
    "ip.src",
    "ip.dst",
    "ipv6.src",
    "ipv6.dst",
    "tcp.srcport",
    "tcp.dstport",
    "udp.srcport",
    "udp.dstport",
    "dns.qry.name",
    "dns.a",
    "dns.flags.rcode",
    "tls.handshake.extensions_server_name",
    "http.host",
    "dhcp.hw.mac_addr",
    "dhcp.ip.your",
    "bittorrent.info_hash",
]


def _records() -> list[tuple[float, bytes]]:
    from scapy.utils import RawPcapReader

    from tests.monitor import traffic

    records: list[tuple[float, bytes]] = []
    with tempfile.TemporaryDirectory() as tmp:
        day = traffic.write(Path(tmp) / "day.pcap", traffic.school_day())
        sources = [day, *sorted(SHARED.glob("*/*.pcap"))]
        for path in sources:
            with RawPcapReader(str(path)) as reader:
                if getattr(reader, "linktype", None) != 1:
                    continue
                base = None
                for data, meta in reader:
                    ts = meta.sec + meta.usec / 1e6
                    base = ts if base is None else base
                    records.append((ts - base, bytes(data)))
    return records


def build(path: Path, copies: int) -> int:
    """Write `copies` of the traces, each shifted 20 minutes and with the client's last address
    byte changed (so flows do not merge across copies)."""
    records = _records()
    count = 0
    with path.open("wb") as out:
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for copy in range(copies):
            offset = 1_795_000_000 + copy * 1200.0
            for rel, data in records:
                frame = bytearray(data)
                if len(frame) >= 34 and frame[12:14] == b"\x08\x00":
                    frame[29] = (frame[29] + copy) % 256  # IPv4 source, last byte
                ts = offset + rel
                sec = int(ts)
                out.write(struct.pack("<IIII", sec, int((ts - sec) * 1e6), len(frame), len(frame)))
                out.write(frame)
                count += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--copies", type=int, default=400)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        capture = Path(tmp) / "big.pcap"
        packets = build(capture, args.copies)
        size = capture.stat().st_size
        print(f"capture: {packets} packets, {size / 1e6:.1f} MB")
        url = args.database_url or f"sqlite:///{tmp}/bench.db"
        env = {**os.environ, "SCHOOLGATE_DATABASE_URL": url}
        schoolgate = [sys.executable, "-m", "service"]
        subprocess.run([*schoolgate, "db", "upgrade"], env=env, check=True, capture_output=True)

        started = time.perf_counter()
        run = subprocess.run(
            [*schoolgate, "monitor", "run", "--read", str(capture), "--quiet"],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        ours = time.perf_counter() - started
        print(run.stdout.strip().splitlines()[0])

        tshark_cmd = ["tshark", "-n", "-r", str(capture), "-T", "fields"]
        for field in TSHARK_FIELDS:
            tshark_cmd += ["-e", field]
        started = time.perf_counter()
        with open(os.devnull, "w") as sink:
            subprocess.run(tshark_cmd, check=True, stdout=sink, stderr=subprocess.DEVNULL)
        theirs = time.perf_counter() - started

        dns_only = ["tshark", "-n", "-r", str(capture), "-T", "fields", "-e", "dns.qry.name"]
        started = time.perf_counter()
        with open(os.devnull, "w") as sink:
            subprocess.run(dns_only, check=True, stdout=sink, stderr=subprocess.DEVNULL)
        theirs_dns = time.perf_counter() - started

    print(
        f"schoolgate monitor run --read (incl. start-up and DB writes): {ours:6.2f}s "
        f"{packets / ours:10,.0f} packets/s"
    )
    print(
        f"tshark -T fields ({len(TSHARK_FIELDS)} fields):                     {theirs:6.2f}s "
        f"{packets / theirs:10,.0f} packets/s"
    )
    print(
        f"tshark -T fields -e dns.qry.name:                          {theirs_dns:6.2f}s "
        f"{packets / theirs_dns:10,.0f} packets/s"
    )
    print(
        f"ratio vs tshark (same fields): {theirs / ours:.2f}x; vs tshark DNS names only: "
        f"{theirs_dns / ours:.2f}x (target 5x)"
    )


if __name__ == "__main__":
    main()
