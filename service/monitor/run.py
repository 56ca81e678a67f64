"""One monitor run: a capture source into the engine, the engine's findings to the writer
process (recording.py), and a summary of what was seen (for the CLI's closing report).

Nothing here needs the database: the writer process connects to it, so a run starts capturing
while that process is still importing SQLAlchemy and loading the attributor."""

from __future__ import annotations

import gc
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.errors import Invalid
from service.monitor.categories import load_categories
from service.monitor.engine import Monitor
from service.monitor.messages import Setup
from service.monitor.observe import MonitorProbe
from service.monitor.parser import LINK_ETHERNET
from service.monitor.recording import LIVE_WRITER_NICENESS, Recording
from service.monitor.records import with_datetimes

if TYPE_CHECKING:  # scapy is imported once the writer process has been forked (see _run)
    from service.monitor.capture import CaptureStats, LiveCapture


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
    timezone: str | None = None  # the site's, when one was named
    # For the summary: device id -> "name (class)", person id -> name.
    names: dict[str, dict[int, str]] = field(default_factory=dict)


def run_monitor(
    database_url: str,
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
    accounting_stale_after: float = 4 * 3600.0,
    refresh_seconds: float = 30.0,
    observe: Callable[[MonitorProbe], None] | None = None,
    on_capturing: Callable[[str], None] | None = None,
) -> RunResult:
    """Capture from `interface` or `read` a file until it ends (or `duration`, `max_packets`,
    SIGTERM, Ctrl-C). Raises Invalid for a capture, site or database it cannot use, before
    anything is written. `observe` receives the run's counters once the capture is set up
    (for the metrics port: service/monitor/observe.py). `on_capturing(description)` is called
    once the live socket and its ring are open, so whoever started the run knows packets sent
    from then on are seen (the CLI prints it; tests and bench/monitor_live.py wait for that
    line instead of sleeping)."""
    setup = Setup(
        database_url,
        site_code=site_code,
        categories=load_categories(categories_dir) if categories_dir else None,
        visit_idle_gap=visit_idle_gap,
        keep_summary=keep_summary,
        accounting_stale_after=accounting_stale_after,
        refresh_seconds=refresh_seconds,
    )
    with _fewer_collections():
        return _run(
            setup,
            read=read,
            interface=interface,
            bpf=bpf,
            duration=duration,
            max_packets=max_packets,
            observe=observe,
            on_capturing=on_capturing,
        )


@contextmanager
def _fewer_collections() -> Iterator[None]:
    """The capture allocates millions of short-lived objects and no garbage cycles: collect
    the young generation less often, and leave the start-up objects (CLI, scapy's tables) out
    of the full collections (and out of the forked writer's copy-on-write pages).
    A sixth of the engine's time in bench/monitor_pcap.py."""
    thresholds = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(max(thresholds[0], 50_000), *thresholds[1:])
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


def _run(
    setup: Setup,
    *,
    read: Path | None,
    interface: str | None,
    bpf: str | None,
    duration: float | None,
    max_packets: int | None,
    observe: Callable[[MonitorProbe], None] | None = None,
    on_capturing: Callable[[str], None] | None = None,
) -> RunResult:
    # The writer process first: it imports the database side and connects while this one
    # imports scapy and opens the capture.
    writer = Recording(setup, niceness=0 if read is not None else LIVE_WRITER_NICENESS)
    monitor = Monitor(
        recorder=writer,
        bypass_lists=setup.categories.bypass if setup.categories is not None else None,
    )
    try:
        from service.monitor.capture import CaptureStats, LiveCapture, feed_file

        result = RunResult({}, CaptureStats(), {}, 0, None, 0.0)
        stats = result.capture
        if read is not None:
            blocks = feed_file(read, stats, monitor.handler)
    except Invalid:
        writer.abandon()
        raise
    probe = MonitorProbe(monitor.counters, stats)
    if observe is not None:
        observe(probe)
    started = time.perf_counter()
    stop = {"now": False}

    def on_signal(_signum: int, _frame: object) -> None:
        stop["now"] = True

    previous = signal.signal(signal.SIGTERM, on_signal)
    live: LiveCapture | None = None
    probe.capturing = True
    try:
        try:
            if read is not None:
                for _block in blocks:
                    writer.check()
                    if stop["now"]:
                        break
            else:
                assert interface is not None
                live = LiveCapture(interface, bpf, stats)
                if on_capturing is not None:
                    on_capturing(live.describe())
                _live(live, monitor, writer, stop, duration, max_packets)
        except KeyboardInterrupt:
            pass
        monitor.finish()
    finally:
        probe.ended = True
        if live is not None:
            live.close()
        recorded = writer.close()
        signal.signal(signal.SIGTERM, previous)
    result.seconds = time.perf_counter() - started
    monitor.counters.kernel_drops = stats.kernel_drops
    result.counters = monitor.counters.as_dict()
    result.counters.update(recorded.counters)  # dns, visits, alerts: counted by the recorder
    result.written = dict(recorded.written)
    result.writer_errors = recorded.errors
    result.writer_last_error = recorded.last_error
    result.visits = [with_datetimes("visits", row) for row in recorded.kept.get("visits", [])]
    result.alerts = [with_datetimes("alerts", row) for row in recorded.kept.get("alerts", [])]
    result.p2p_flows = [with_datetimes("flows", row) for row in recorded.kept.get("p2p_flows", [])]
    result.timezone = writer.ready.timezone if writer.ready else None
    result.names = recorded.names
    return result


def _live(
    live: LiveCapture,
    monitor: Monitor,
    writer: Recording,
    stop: dict[str, bool],
    duration: float | None,
    max_packets: int | None,
) -> None:
    frame_in = monitor.handler(LINK_ETHERNET)  # scapy's L2 socket gives Ethernet frames
    last_drops = time.monotonic()
    next_tick = 0.0
    for ts in live.blocks(frame_in, stop_after=duration, max_packets=max_packets):
        # A heartbeat (no packets for 0.2 s) moves the clock on, at most once a second: a tick
        # walks every unanswered DNS query, and five a second of those cost as much CPU as the
        # idle line itself (bench/monitor_live.py's profile).
        if ts > monitor.now and ts >= next_tick:
            monitor.tick(ts)
            next_tick = ts + 1.0
        if stop["now"] and not live.drain():
            break
        if time.monotonic() - last_drops > 1.0:
            live.read_drops()
            last_drops = time.monotonic()
            writer.flush()
            writer.check()
