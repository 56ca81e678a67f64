"""Benchmark: what the bypass checks (service/monitor/bypass.py) cost the monitor.

    .venv/bin/python bench/monitor_bypass_cost.py [--copies 200] [--repeat 2]

Runs the engine and the recorder in one process over bench/monitor_pcap.py's capture, with the
bypass checks and with them stubbed out (the monitor as it was before them), alternating, and
prints the best run of each in CPU seconds of this process (wall time on a shared machine
varies by a third between identical runs). The capture holds nDPI's VPN, DoH and iodine
traces, so the recorder raises bypass alerts and counts a DNS tunnel in every copy: more work
than ordinary traffic gives it.
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

import monitor_pcap  # noqa: E402

from service.monitor import bypass, engine  # noqa: E402
from service.monitor.capture import CaptureStats, feed_file  # noqa: E402
from service.monitor.categories import load_categories  # noqa: E402

REAL = (bypass.udp_label, bypass.tcp_label)


def run(path: Path, *, checks: bool) -> tuple[float, int, int]:
    if checks:
        bypass.udp_label, bypass.tcp_label = REAL
    else:
        bypass.udp_label = lambda _payload, _sport, _dport: None
        bypass.tcp_label = lambda _payload: None
    rows = {"alerts": 0}

    def sink(kind: str, _row: object) -> None:
        if kind == "alerts":
            rows["alerts"] += 1

    monitor = engine.Monitor(sink, categories=load_categories(REPO / "deploy" / "categories"))
    if not checks:
        monitor.recorder.bypass = None  # type: ignore[attr-defined]
    gc.collect()
    started = time.process_time()
    for _block in feed_file(path, CaptureStats(), monitor.handler):
        pass
    monitor.finish()
    return time.process_time() - started, monitor.counters.packets, rows["alerts"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--copies", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "capture.pcap"
        monitor_pcap.build(path, args.copies)
        best = {False: float("inf"), True: float("inf")}
        for _ in range(args.repeat):
            for checks in (False, True):
                seconds, packets, alerts = run(path, checks=checks)
                best[checks] = min(best[checks], seconds)
                print(
                    f"bypass checks {'on ' if checks else 'off'}: {seconds:.2f} CPU s "
                    f"{packets / seconds:,.0f} packets/s, {alerts} alerts",
                    flush=True,
                )
    change = 100 * (best[True] / best[False] - 1)
    print(f"best: off {best[False]:.2f}s, on {best[True]:.2f}s ({change:+.1f}%)")


if __name__ == "__main__":
    main()
