"""One monitor run: a capture source into the engine, rows into the batch writer, and a summary
of what was seen (for the CLI's closing report)."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from service.monitor.attribution import load_attributor
from service.monitor.capture import CaptureStats, LiveCapture, read_file
from service.monitor.categories import CategoryList, load_categories
from service.monitor.engine import Monitor
from service.monitor.writer import BatchWriter


@dataclass
class RunResult:
    counters: dict[str, int]
    capture: CaptureStats
    written: dict[str, int]
    writer_errors: int
    writer_last_error: str | None
    seconds: float
    visits: list[dict[str, Any]] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    p2p_flows: list[dict[str, Any]] = field(default_factory=list)


def run_monitor(
    engine: Engine,
    session: Session,
    *,
    read: Path | None = None,
    interface: str | None = None,
    bpf: str | None = None,
    site_code: str | None = None,
    categories_dir: Path | None = None,
    visit_idle_gap: float = 300.0,
    duration: float | None = None,
    max_packets: int | None = None,
    keep_summary: bool = True,
) -> RunResult:
    categories = load_categories(categories_dir) if categories_dir else CategoryList()
    attributor = load_attributor(session, site_code=site_code)
    result = RunResult({}, CaptureStats(), {}, 0, None, 0.0)

    def keep(kind: str, row: dict[str, Any]) -> None:
        if kind == "visits":
            result.visits.append(row)
        elif kind == "alerts":
            result.alerts.append(row)
        elif kind == "flows" and row["p2p"]:
            result.p2p_flows.append(row)

    writer = BatchWriter(engine, on_row=keep if keep_summary else None)
    monitor = Monitor(
        writer.add,
        site_code=site_code,
        attributor=attributor,
        categories=categories,
        visit_idle_gap=visit_idle_gap,
    )
    stats = result.capture
    started = time.perf_counter()
    stop = {"now": False}

    def on_signal(_signum: int, _frame: object) -> None:
        stop["now"] = True

    previous = signal.signal(signal.SIGTERM, on_signal)
    live: LiveCapture | None = None
    try:
        source: Iterator[tuple[float, bytes, int]]
        if read is not None:
            source = read_file(read, stats)
        else:
            assert interface is not None
            live = LiveCapture(interface, bpf, stats)
            source = live.packets(stop_after=duration, max_packets=max_packets)
        packet = monitor.packet
        last_drops = time.monotonic()
        try:
            for ts, frame, linktype in source:
                if linktype == -1:
                    monitor.tick(ts)
                else:
                    packet(ts, frame, linktype)
                if live is not None:
                    if stop["now"]:
                        break
                    if time.monotonic() - last_drops > 1.0:
                        live.read_drops()
                        last_drops = time.monotonic()
                        writer.flush()
        except KeyboardInterrupt:
            pass
        monitor.finish()
    finally:
        if live is not None:
            live.close()
        writer.close()
        signal.signal(signal.SIGTERM, previous)
    result.seconds = time.perf_counter() - started
    monitor.counters.kernel_drops = stats.kernel_drops
    result.counters = monitor.counters.as_dict()
    result.written = dict(writer.written)
    result.writer_errors = writer.errors
    result.writer_last_error = writer.last_error
    return result
