"""The monitor's metrics: what the capture loop counted, read when scraped (no cost per
packet beyond the counters it keeps anyway), and whether the capture is running (`/readyz`).

`run_monitor(..., observe=...)` hands a `MonitorProbe` to the caller once the capture is set
up; the CLI registers `MonitorCollector(probe)` and serves it on the metrics port.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from service.monitor.capture import CaptureStats
    from service.monitor.records import Counters

SKIPPED_PREFIX = "skipped_"


@dataclass
class MonitorProbe:
    counters: Counters
    capture: CaptureStats
    capturing: bool = False
    ended: bool = False

    def readiness(self) -> str | None:
        if self.ended:
            return "the capture has ended"
        if not self.capturing:
            return "the capture has not started"
        return None


class MonitorCollector:
    """`schoolgate_monitor_packets_total` (seen), `..._skipped_total{reason}` (not parsed:
    truncated, corrupt, oversized, unknown link type), `..._kernel_packets_total` and
    `..._kernel_drops_total` (the kernel's PACKET_STATISTICS: dropped before we saw them),
    and every other engine counter as `schoolgate_monitor_<name>_total`."""

    def __init__(self, probe: MonitorProbe) -> None:
        self.probe = probe

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        counts = self.probe.counters.as_dict()
        counts.pop("kernel_drops", None)  # the capture's own figure below is the live one
        skipped = CounterMetricFamily(
            "schoolgate_monitor_skipped",
            "Frames seen but not parsed, by reason",
            labels=["reason"],
        )
        for name, value in sorted(counts.items()):
            if name.startswith(SKIPPED_PREFIX):
                skipped.add_metric([name.removeprefix(SKIPPED_PREFIX)], value)
            else:
                yield CounterMetricFamily(
                    f"schoolgate_monitor_{name}", f"Monitor {name} seen", value=value
                )
        yield skipped
        capture = self.probe.capture
        for spec in fields(capture):
            yield CounterMetricFamily(
                f"schoolgate_monitor_{spec.name}",
                f"Capture {spec.name.replace('_', ' ')}",
                value=getattr(capture, spec.name),
            )
        yield GaugeMetricFamily(
            "schoolgate_monitor_capturing",
            "1 while the capture runs",
            value=1 if self.probe.capturing and not self.probe.ended else 0,
        )
