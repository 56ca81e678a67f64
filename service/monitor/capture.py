"""Capture adapter: packets from a pcap/pcapng file or a live interface, via scapy's readers and
sockets, as raw (timestamp, bytes, linktype) for the engine. The only monitor module that
imports scapy at module level (CONVENTIONS.md 1: the adapter lives here by design)."""

from __future__ import annotations

import logging
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from scapy.error import Scapy_Exception
from scapy.utils import RawPcapNgReader, RawPcapReader

from service.errors import Invalid

SOL_PACKET = 263
PACKET_STATISTICS = 6
RCVBUF_BYTES = 64 * 1024 * 1024  # a large buffer rides out bursts and database pauses

# scapy warns once per odd record ("packet has been truncated"); we count those instead.
logging.getLogger("scapy.runtime").setLevel(logging.ERROR)


@dataclass
class CaptureStats:
    records: int = 0
    truncated_records: int = 0  # the file ended mid-record, or caplen > what is there
    read_errors: int = 0
    kernel_packets: int = 0
    kernel_drops: int = 0


def read_file(path: str | Path, stats: CaptureStats) -> Iterator[tuple[float, bytes, int]]:
    """Every record of a pcap or pcapng file; a file that ends mid-record ends the iteration."""
    file = Path(path)
    if not file.is_file():
        raise Invalid(f"no capture file at {file}")
    try:
        reader = RawPcapReader(str(file))
    except (Scapy_Exception, OSError, EOFError, struct.error) as exc:
        raise Invalid(f"{file} is not a pcap or pcapng capture: {exc}") from exc
    with reader:
        if isinstance(reader, RawPcapNgReader):
            yield from _pcapng(reader, stats)
            return
        linktype = reader.linktype
        divisor = 1e9 if reader.nano else 1e6
        read = reader._read_packet
        while True:
            try:
                data, meta = read(0xFFFF * 4)
            except EOFError:
                return
            except (Scapy_Exception, struct.error, ValueError):
                stats.read_errors += 1
                return
            stats.records += 1
            if len(data) < meta.caplen:
                stats.truncated_records += 1
            yield meta.sec + meta.usec / divisor, data, linktype


def _pcapng(reader: RawPcapNgReader, stats: CaptureStats) -> Iterator[tuple[float, bytes, int]]:
    read = reader._read_packet
    while True:
        try:
            data, meta = read(0xFFFF * 4)
        except EOFError:
            return
        except (Scapy_Exception, struct.error, ValueError, IndexError, KeyError):
            stats.read_errors += 1
            return
        stats.records += 1
        ts = ((meta.tshigh << 32) | meta.tslow) / (meta.tsresol or 1_000_000)
        yield ts, data, meta.linktype


class LiveCapture:
    """A scapy L2 listening socket on `interface` with an optional BPF filter (compiled by
    scapy), a large receive buffer and the kernel's drop counter (PACKET_STATISTICS)."""

    def __init__(self, interface: str, bpf: str | None, stats: CaptureStats) -> None:
        from scapy.arch.linux import L2ListenSocket

        self.stats = stats
        try:
            self.sock = L2ListenSocket(iface=interface, filter=bpf, promisc=True)
        except (OSError, Scapy_Exception) as exc:
            raise Invalid(f"cannot capture on {interface}: {exc}") from exc
        raw: socket.socket = self.sock.ins
        for option in (33, socket.SO_RCVBUF):  # SO_RCVBUFFORCE needs root; fall back if not
            try:
                raw.setsockopt(socket.SOL_SOCKET, option, RCVBUF_BYTES)
                break
            except OSError:
                continue
        raw.settimeout(0.2)
        self.raw = raw
        self.read_drops()  # reset the kernel counters

    def read_drops(self) -> int:
        """Packets and drops since the last call, added to the stats; returns new drops."""
        try:
            data = self.raw.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)
        except OSError:
            return 0
        packets, drops = struct.unpack("II", data)
        self.stats.kernel_packets += int(packets)
        self.stats.kernel_drops += int(drops)
        return int(drops)

    def packets(
        self, *, stop_after: float | None = None, max_packets: int | None = None
    ) -> Iterator[tuple[float, bytes, int]]:
        deadline = None if stop_after is None else time.monotonic() + stop_after
        recv = self.raw.recv
        count = 0
        while deadline is None or time.monotonic() < deadline:
            try:
                data = recv(0xFFFF)
            except TimeoutError:
                yield time.time(), b"", -1  # a heartbeat so the engine can expire flows
                continue
            except OSError:
                self.stats.read_errors += 1
                continue
            self.stats.records += 1
            yield time.time(), data, 1
            count += 1
            if max_packets is not None and count >= max_packets:
                return

    def close(self) -> None:
        self.read_drops()
        self.sock.close()
