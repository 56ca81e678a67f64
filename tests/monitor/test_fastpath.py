"""The monitor's fast paths against its plain ones: the block reader against scapy's
record-by-record reader, the engine's inlined Ethernet/IPv4 path against the full parser, and the
SQLite time format against SQLAlchemy's own."""

from __future__ import annotations

import random
import struct
from datetime import UTC, datetime
from pathlib import Path

import pytest
from scapy.utils import RawPcapReader
from sqlalchemy import create_engine, insert, select, text

from service.monitor import capture
from service.monitor.capture import CaptureStats, read_file
from service.monitor.engine import Monitor
from service.monitor.records import with_datetimes
from service.monitor.writer import TABLES, sqlite_time
from tests.monitor import traffic as t
from tests.monitor.conftest import SHARED_PCAPS


def _pcap(path: Path, records: list[tuple[float, bytes]], *, endian: str = "<", nano: bool = False):
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    with path.open("wb") as out:
        out.write(struct.pack(endian + "IHHiIII", magic, 2, 4, 0, 0, 65535, 1))
        for ts, frame in records:
            sec = int(ts)
            frac = round((ts - sec) * (1e9 if nano else 1e6))
            out.write(struct.pack(endian + "IIII", sec, frac, len(frame), len(frame)))
            out.write(frame)
    return path


def _scapy_records(path: Path) -> tuple[list[tuple[float, bytes]], int]:
    """Records as scapy's reader gives them one by one, and how many were cut short."""
    out = []
    truncated = 0
    with RawPcapReader(str(path)) as reader:
        divisor = 1e9 if reader.nano else 1e6
        while True:
            try:
                data, meta = reader._read_packet(0xFFFF * 4)
            except EOFError:
                return out, truncated
            out.append((meta.sec + meta.usec / divisor, data))
            truncated += len(data) < meta.caplen


@pytest.mark.parametrize("mapped", [True, False], ids=["mapped", "blocks"])
@pytest.mark.parametrize(("endian", "nano"), [("<", False), (">", True)])
def test_block_reader_gives_what_scapys_reader_gives(
    tmp_path, monkeypatch, endian, nano, mapped
) -> None:
    monkeypatch.setattr(capture, "_CHUNK", 4096)  # records straddle many blocks
    monkeypatch.setattr(capture, "_MAPPED_BLOCK", 7)  # and yields come often
    if not mapped:  # as for a gzip-compressed capture
        monkeypatch.setattr(capture, "_mapped", lambda _file: None)
    rng = random.Random(5)
    records = [
        (t.T0 + i * 0.001, bytes(rng.randrange(256) for _ in range(rng.randrange(0, 3000))))
        for i in range(300)
    ]
    records.insert(100, (t.T0 + 0.5, b"\x01" * 300_000))  # more than scapy keeps (0xFFFF*4)
    records.insert(200, (t.T0 + 0.6, b"\x02" * 262_140))  # exactly what it keeps
    path = _pcap(tmp_path / "blocks.pcap", records, endian=endian, nano=nano)
    data = path.read_bytes()
    last = 16 + len(records[-1][1])
    # The whole file, cut inside the last record, inside its header, just after it.
    for cut in (len(data), len(data) - 10, len(data) - last + 8, len(data) - last + 16):
        path.write_bytes(data[:cut])
        stats = CaptureStats()
        ours = [(ts, frame) for ts, frame, _linktype in read_file(path, stats)]
        expected, truncated = _scapy_records(path)
        assert ours == expected
        assert stats.records == len(ours)
        assert stats.truncated_records == truncated >= 1


def _rows(path: Path, *, full_parser: bool) -> dict[str, list[dict]]:
    rows: dict[str, list[dict]] = {}
    monitor = Monitor(lambda kind, row: rows.setdefault(kind, []).append(row))
    if full_parser:
        monitor._ether = lambda ts, buf, start, end: monitor._parsed(ts, buf[start:end], 1)  # type: ignore[method-assign]
    for ts, frame, linktype in read_file(path, CaptureStats()):
        monitor.packet(ts, frame, linktype)
    monitor.finish()
    return rows


def test_engine_fast_path_agrees_with_the_full_parser(tmp_path) -> None:
    day = t.school_day()
    # The same day again, later, with packets out of time order and a client reusing ports.
    again = t.school_day()
    for index, packet in enumerate(again):
        packet.time = float(packet.time) + 290 + (index % 7) * 0.5
    paths = [t.write(tmp_path / "day.pcap", day + again)]
    paths += sorted(SHARED_PCAPS.glob("*/*.pcap"))
    for path in paths:
        assert _rows(path, full_parser=False) == _rows(path, full_parser=True), path


@pytest.mark.parametrize(
    "ts",
    [
        t.T0,
        t.T0 + 0.5,
        t.T0 + 0.0000005,
        t.T0 + 0.9999995,
        t.T0 + 61.060001,
        1_700_000_000.123456,
        0.0,
        4_000_000_000.999999,
    ],
)
def test_sqlite_time_is_what_sqlalchemy_stores(ts: float) -> None:
    engine = create_engine("sqlite://")
    table = TABLES["alerts"]
    table.create(engine)
    row = {
        "site_code": None,
        "raised_at": ts,
        "kind": "p2p",
        "category": "peer-to-peer",
        "severity": "weekly",
        "client_ip": "10.0.0.1",
        "mac": None,
        "device_id": None,
        "person_id": None,
        "evidence": "x",
    }
    with engine.begin() as conn:
        conn.execute(insert(table), [with_datetimes("alerts", tuple(row.values()))])
        stored = conn.execute(text("SELECT raised_at FROM traffic_alerts")).scalar_one()
        assert sqlite_time(ts) == stored
        assert conn.execute(select(table.c.raised_at)).scalar_one() == datetime.fromtimestamp(
            ts, UTC
        )
