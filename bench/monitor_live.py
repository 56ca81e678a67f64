"""Live benchmark: replay a large capture at a fixed rate into a veth pair (one end in a network
namespace) while `schoolgate monitor run --interface` listens on the other; print what the kernel
dropped (PACKET_STATISTICS). Needs root, iproute2 and tcpreplay.

    /work/venv/bin/python bench/monitor_live.py [--pps 100000] [--copies 300]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pps", type=int, default=100_000)
    parser.add_argument("--copies", type=int, default=300)
    args = parser.parse_args()
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "monitor_pcap", REPO / "bench" / "monitor_pcap.py"
    )
    assert spec
    assert spec.loader
    monitor_pcap = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(monitor_pcap)

    tag = uuid.uuid4().hex[:6]
    ns, outside, inside = f"sgbench-{tag}", f"sgb{tag}a", f"sgb{tag}b"
    with tempfile.TemporaryDirectory() as tmp:
        capture = Path(tmp) / "big.pcap"
        packets = monitor_pcap.build(capture, args.copies)
        url = f"sqlite:///{tmp}/live.db"
        env = {**os.environ, "SCHOOLGATE_DATABASE_URL": url}
        subprocess.run(
            [sys.executable, "-m", "service", "db", "upgrade"],
            env=env,
            check=True,
            capture_output=True,
        )
        subprocess.run(["ip", "netns", "add", ns], check=True)
        try:
            subprocess.run(
                ["ip", "link", "add", outside, "type", "veth", "peer", "name", inside], check=True
            )
            subprocess.run(["ip", "link", "set", inside, "netns", ns], check=True)
            subprocess.run(["ip", "link", "set", outside, "up"], check=True)
            subprocess.run(
                ["ip", "netns", "exec", ns, "ip", "link", "set", inside, "up"], check=True
            )
            seconds = packets / args.pps + 8
            monitor = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "service",
                    "monitor",
                    "run",
                    "--interface",
                    outside,
                    "--duration",
                    str(seconds),
                    "--json",
                    "--quiet",
                ],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            time.sleep(3)
            replay = subprocess.run(
                [
                    "ip",
                    "netns",
                    "exec",
                    ns,
                    "tcpreplay",
                    "--pps",
                    str(args.pps),
                    "-i",
                    inside,
                    str(capture),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            out, err = monitor.communicate(timeout=seconds + 60)
        finally:
            subprocess.run(["ip", "link", "del", outside], check=False, capture_output=True)
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)
    if monitor.returncode != 0:
        print(err)
        raise SystemExit(1)
    summary = json.loads(out)
    rate_line = next((x for x in replay.stdout.splitlines() if "Rated:" in x), "").strip()
    print(f"replayed {packets} packets at --pps {args.pps}: {rate_line}")
    print(
        f"monitor saw {summary['counters']['packets']} packets; kernel saw "
        f"{summary['capture']['kernel_packets']}, dropped {summary['capture']['kernel_drops']}; "
        f"flows {summary['counters']['flows']}, rows written {summary['written']}"
    )


if __name__ == "__main__":
    main()
