"""Capture adapter: packets from a pcap/pcapng file or a live interface, via scapy's readers and
sockets, as raw frames for the engine (`feed_file` hands each to the engine's frame handler as
(timestamp, buffer, start, end); `read_file` and `LiveCapture.packets` yield (timestamp, bytes,
linktype)). The only monitor module that imports scapy at module level (CONVENTIONS.md 1: the
adapter lives here by design)."""

from __future__ import annotations

import io
import logging
import mmap
import os
import select
import socket
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from scapy.error import Scapy_Exception
from scapy.utils import RawPcapNgReader, RawPcapReader

from service.errors import Invalid
from service.monitor.parser import FrameBuffer

SOL_PACKET = 263
PACKET_STATISTICS = 6
PACKET_RX_RING = 5
PACKET_VERSION = 10
TPACKET_V3 = 2
# The receive ring (TPACKET_V3): blocks the kernel fills with packets and hands over whole,
# so the capture loop makes no system call per packet and copies nothing (bench/monitor_live.py:
# recv() per packet was the ceiling below 200,000 packets/s on the 2-core machine).
RING_BLOCK = 1 << 20  # bytes per block
# 256 MiB in all: about 300,000 packets of the school-day mix (770 bytes on average), 1.5 s at
# 200,000 packets/s, so a burst, a pause of the writer or a busy machine is absorbed rather than
# dropped. A kernel that cannot lock that much gets the largest of the smaller sizes it can.
RING_BLOCKS = 256
RING_BLOCK_CHOICES = (RING_BLOCKS, 64, 16)
RING_FRAME = 2048
RING_TIMEOUT_MS = 50  # a block is handed over after this long even when not full
_BLOCK_HEADER = struct.Struct("=IIIIII").unpack_from  # version, priv, status, num, first, len
_BLOCK_STATUS_SEQ = struct.Struct("=8xI12xQ").unpack_from  # status, seq_num
_PACKET_HEADER = struct.Struct("=IIIII4xH").unpack_from  # next, sec, nsec, snaplen, len, mac
_TP_STATUS_USER = 1
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
    ring_resyncs: int = 0  # times the capture found the kernel filling another ring block


# A frame handler: (timestamp, buffer, start, end) with the frame at buffer[start:end].
FrameHandler = Callable[[float, FrameBuffer, int, int], None]

_CHUNK = 1 << 22  # bytes per read from the capture file
_MAX_DATA = 0xFFFF * 4  # what scapy's reader keeps of one record (the rest is skipped)
_MAPPED_BLOCK = 8192  # records between yields when the file is mapped


def _open(path: str | Path) -> RawPcapReader:
    file = Path(path)
    if not file.is_file():
        raise Invalid(f"no capture file at {file}")
    try:
        return RawPcapReader(str(file))
    except (Scapy_Exception, OSError, EOFError, struct.error) as exc:
        raise Invalid(f"{file} is not a pcap or pcapng capture: {exc}") from exc


def read_file(path: str | Path, stats: CaptureStats) -> Iterator[tuple[float, bytes, int]]:
    """Every record of a pcap or pcapng file as (timestamp, frame, linktype); a file that ends
    mid-record ends the iteration. (The monitor itself uses `feed_file`, which skips the
    per-packet tuple and slice.)"""
    batch: list[tuple[float, bytes, int]] = []

    def handler(linktype: int) -> FrameHandler:
        def keep(ts: float, buf: FrameBuffer, start: int, end: int) -> None:
            batch.append((ts, buf[start:end], linktype))

        return keep

    for _ in feed_file(path, stats, handler):
        yield from batch
        batch.clear()


def feed_file(
    path: str | Path, stats: CaptureStats, handler: Callable[[int], FrameHandler]
) -> Iterator[None]:
    """Hand every record of a pcap or pcapng file to `handler(linktype)`; yields after each
    block of records so the caller can stop between them.

    scapy opens the file (gzip, byte order, micro/nanosecond magic, link type) and its reader
    object's file is then mapped (`_mapped`; a compressed one is read in 4 MiB blocks) and
    walked with one `struct.unpack_from` per record header: scapy's per-record `_read_packet`
    (two reads and a namedtuple per packet) was a fifth of the whole run in
    `bench/monitor_pcap.py`. Records are handled exactly as scapy's
    reader would: at most 0xFFFF*4 bytes kept, the rest skipped, a short last record counted as
    truncated. pcapng goes through scapy's reader record by record. A file that is not a
    capture raises Invalid here, before the first record is asked for."""
    return _feed(_open(path), stats, handler)


def _feed(
    reader: RawPcapReader, stats: CaptureStats, handler: Callable[[int], FrameHandler]
) -> Iterator[None]:
    with reader:
        if isinstance(reader, RawPcapNgReader):
            yield from _pcapng(reader, stats, handler)
            return
        yield from _pcap(reader, stats, handler(reader.linktype))


def _pcap(reader: RawPcapReader, stats: CaptureStats, emit: FrameHandler) -> Iterator[None]:
    # Hot path (bench/monitor_pcap.py): one unpack_from per record, no per-record objects.
    file = reader.f
    header = struct.Struct(reader.endian + "IIII").unpack_from
    divisor = 1e9 if reader.nano else 1e6
    mapped = _mapped(file)
    if mapped is not None:
        with mapped:
            yield from _pcap_mapped(mapped, file.tell(), header, divisor, stats, emit)
        return
    max_data = _MAX_DATA
    buf = b""
    pos = 0
    while True:
        try:
            chunk = file.read(_CHUNK)
        except (OSError, EOFError, zlib.error):
            chunk = b""  # as scapy's reader: a corrupt stream ends the capture
        buf = buf[pos:] + chunk if pos < len(buf) else chunk
        pos = 0
        end = len(buf)
        if not chunk:
            break
        count = 0
        while pos + 16 <= end:
            sec, frac, caplen, _wirelen = header(buf, pos)
            start = pos + 16
            stop = start + caplen
            if stop > end:
                if caplen <= max_data:
                    break  # the rest of the record is in the next block
                data = _oversized(file, buf, start, caplen, stats)
                emit(sec + frac / divisor, data, 0, len(data))
                pos = end  # the whole block belonged to this record
                break
            count += 1
            if caplen > max_data:
                stats.truncated_records += 1
                emit(sec + frac / divisor, buf, start, start + max_data)
            else:
                emit(sec + frac / divisor, buf, start, stop)
            pos = stop
        stats.records += count
        yield
    if _cut_short(buf, pos, header, divisor, stats, emit):
        yield


def _mapped(file: object) -> mmap.mmap | None:
    """A plain (not compressed) capture file mapped read-only: its records are then sliced
    straight from the page cache, with no block reads and no copying of block tails (a tenth
    of the reader's time in bench/monitor_pcap.py). None when the file cannot be mapped."""
    if not isinstance(file, io.BufferedReader):
        return None
    try:
        if os.fstat(file.fileno()).st_size == 0:
            return None
        return mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError):
        return None


def _pcap_mapped(
    buf: mmap.mmap,
    pos: int,
    header: Callable[[FrameBuffer, int], tuple[int, int, int, int]],
    divisor: float,
    stats: CaptureStats,
    emit: FrameHandler,
) -> Iterator[None]:
    """`_pcap` over a mapped file: the same records, caps and truncation counts."""
    max_data = _MAX_DATA
    end = len(buf)
    count = 0
    while pos + 16 <= end:
        sec, frac, caplen, _wirelen = header(buf, pos)
        start = pos + 16
        stop = start + caplen
        if stop > end:
            break  # the file ends inside this record
        if caplen > max_data:
            stats.truncated_records += 1
            emit(sec + frac / divisor, buf, start, start + max_data)
        else:
            emit(sec + frac / divisor, buf, start, stop)
        pos = stop
        count += 1
        if count == _MAPPED_BLOCK:
            stats.records += count
            count = 0
            yield
    stats.records += count
    _cut_short(buf, pos, header, divisor, stats, emit)
    yield


def _cut_short(
    buf: FrameBuffer,
    pos: int,
    header: Callable[[FrameBuffer, int], tuple[int, int, int, int]],
    divisor: float,
    stats: CaptureStats,
    emit: FrameHandler,
) -> bool:
    """The file ends inside the record at `pos`: what there is of it (if its header is
    whole), counted as truncated when short, as scapy's reader gives it."""
    if len(buf) - pos < 16:
        return False
    sec, frac, caplen, _wirelen = header(buf, pos)
    data = buf[pos + 16 : pos + 16 + min(caplen, _MAX_DATA)]
    stats.records += 1
    if len(data) < caplen:
        stats.truncated_records += 1
    emit(sec + frac / divisor, data, 0, len(data))
    return True


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


def _oversized(file: _Readable, buf: bytes, start: int, caplen: int, stats: CaptureStats) -> bytes:
    """A record longer than scapy keeps, running past the block: its first 0xFFFF*4 bytes, the
    rest read and dropped (as scapy's reader does, without holding it all)."""
    stats.records += 1
    stats.truncated_records += 1
    data = buf[start : start + _MAX_DATA]
    if len(data) < _MAX_DATA:
        data += file.read(_MAX_DATA - len(data))
    remaining = caplen - max(len(buf) - start, len(data))
    while remaining > 0:
        skipped = file.read(min(remaining, _CHUNK))
        if not skipped:
            break
        remaining -= len(skipped)
    return data


def _pcapng(
    reader: RawPcapNgReader, stats: CaptureStats, handler: Callable[[int], FrameHandler]
) -> Iterator[None]:
    handlers: dict[int, FrameHandler] = {}
    read = reader._read_packet
    count = 0
    while True:
        try:
            data, meta = read(_MAX_DATA)
        except EOFError:
            break
        except (Scapy_Exception, struct.error, ValueError, IndexError, KeyError):
            stats.read_errors += 1
            break
        stats.records += 1
        emit = handlers.get(meta.linktype)
        if emit is None:
            emit = handlers[meta.linktype] = handler(meta.linktype)
        emit(((meta.tshigh << 32) | meta.tslow) / (meta.tsresol or 1_000_000), data, 0, len(data))
        count += 1
        if count % 4096 == 0:
            yield
    yield


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
        self.interface = interface
        self.ring_blocks = 0
        self._drain_left: int | None = None  # blocks still to read once drain() was called
        self.ring: mmap.mmap | None = self._ring(raw)
        self.read_drops()  # reset the kernel counters
        self.stats.kernel_packets = self.stats.kernel_drops = 0

    def describe(self) -> str:
        """What is listening: the interface and the ring (or recv() when there is none)."""
        if self.ring is None:
            return f"{self.interface} (recv, no ring)"
        return f"{self.interface} (TPACKET_V3 ring, {self.ring_blocks * RING_BLOCK >> 20} MiB)"

    def _ring(self, raw: socket.socket) -> mmap.mmap | None:
        """A TPACKET_V3 receive ring on the socket (the largest of RING_BLOCK_CHOICES the
        kernel grants), or None where the kernel refuses one (then `packets` reads with recv)."""
        try:
            raw.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
        except OSError:
            return None
        for blocks in RING_BLOCK_CHOICES:
            request = struct.pack(
                "=7I",
                RING_BLOCK,
                blocks,
                RING_FRAME,
                RING_BLOCK * blocks // RING_FRAME,
                RING_TIMEOUT_MS,
                0,
                0,
            )
            try:
                raw.setsockopt(SOL_PACKET, PACKET_RX_RING, request)
            except OSError:
                continue  # ENOMEM: try a smaller ring
            try:
                ring = mmap.mmap(raw.fileno(), RING_BLOCK * blocks)
            except OSError:
                return None
            self.ring_blocks = blocks
            return ring
        return None

    def blocks(
        self, emit: FrameHandler, *, stop_after: float | None = None, max_packets: int | None = None
    ) -> Iterator[float]:
        """Hand every captured Ethernet frame to `emit(ts, ring, start, end)` straight from the
        ring (kernel timestamps); yields the time after each block and every 0.2 s without
        one, so the caller can tick, flush and stop. Without a ring, falls back to `packets`."""
        ring = self.ring
        if ring is None:
            for ts, frame, linktype in self.packets(stop_after=stop_after, max_packets=max_packets):
                if linktype != -1:
                    emit(ts, frame, 0, len(frame))
                yield ts
            return
        deadline = None if stop_after is None else time.monotonic() + stop_after
        poller = select.poll()
        poller.register(self.raw.fileno(), select.POLLIN | select.POLLERR)
        stats = self.stats
        block_header, packet_header = _BLOCK_HEADER, _PACKET_HEADER
        ring_blocks = self.ring_blocks
        block = 0
        total = 0
        while deadline is None or time.monotonic() < deadline:
            at = block * RING_BLOCK
            status, count, first = block_header(ring, at)[2:5]
            if not status & _TP_STATUS_USER:
                if self._drain_left is None:
                    events = poller.poll(200)
                    if block_header(ring, at)[2] & _TP_STATUS_USER:
                        continue
                    if not events:
                        yield time.time()  # a heartbeat so the engine can expire flows
                        continue
                # The socket is readable (or we are stopping) yet this block is not handed
                # over: if the kernel has filled others, carry on from its oldest one, rather
                # than wait here (busy, the rest of the ring filling and then dropping).
                ready = self._oldest_ready()
                if ready is not None:
                    stats.ring_resyncs += 1
                    block = ready
                    continue
                if self._drain_left is not None:
                    return  # stopping: every block the kernel had handed over is read
                self._clear_error()
                time.sleep(0.001)  # a readable socket with nothing to read: no busy loop
                yield time.time()
                continue
            if self._drain_left is not None:
                if self._drain_left == 0:
                    return
                self._drain_left -= 1
            # Hot path (bench/monitor_live.py): one unpack_from per packet, no copies.
            pos = at + first
            ts = 0.0
            if max_packets is not None:
                count = min(count, max_packets - total)
            for _ in range(count):
                step, sec, nsec, snaplen, _wire, mac = packet_header(ring, pos)
                ts = sec + nsec * 1e-9
                emit(ts, ring, pos + mac, pos + mac + snaplen)
                pos += step
            stats.records += count
            total += count
            struct.pack_into("=I", ring, at + 8, 0)  # the block goes back to the kernel
            block = (block + 1) % ring_blocks
            yield ts or time.time()
            if max_packets is not None and total >= max_packets:
                return

    def _oldest_ready(self) -> int | None:
        """The handed-over block with the lowest sequence number (the kernel fills blocks in
        order), or None. Reads every block's header: only off the hot path."""
        ring = self.ring
        assert ring is not None
        best: int | None = None
        best_seq = 0
        for index in range(self.ring_blocks):
            status, seq = _BLOCK_STATUS_SEQ(ring, index * RING_BLOCK)
            if status & _TP_STATUS_USER and (best is None or seq < best_seq):
                best, best_seq = index, seq
        return best

    def _clear_error(self) -> None:
        """Read (and so clear) a pending socket error, which would keep poll() returning."""
        try:
            self.raw.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        except OSError:
            self.stats.read_errors += 1

    def drain(self) -> bool:
        """Stop after the blocks the kernel has already filled (at most one ring's worth), so
        a SIGTERM loses none of what was captured. False without a ring: stop at once."""
        if self.ring is None:
            return False
        if self._drain_left is None:
            self._drain_left = self.ring_blocks
        return True

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
        if self.ring is not None:
            self.ring.close()
        self.sock.close()
