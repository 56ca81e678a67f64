"""Live capture: a veth pair with one end in a network namespace; the monitor listens on the
other end while tcpreplay sends the crafted school day through it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.monitor import traffic as t

pytestmark = [pytest.mark.netns, pytest.mark.slow]


def _need() -> str | None:
    if os.geteuid() != 0:
        return "needs root for network namespaces"
    for tool in ("ip", "tcpreplay"):
        if shutil.which(tool) is None:
            return f"needs {tool} (Debian package {'iproute2' if tool == 'ip' else tool})"
    return None


@pytest.fixture
def veth():
    problem = _need()
    if problem:
        pytest.skip(problem)
    tag = uuid.uuid4().hex[:6]
    ns, outside, inside = f"sgmon-{tag}", f"sgm{tag}a", f"sgm{tag}b"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(
            ["ip", "link", "add", outside, "type", "veth", "peer", "name", inside], check=True
        )
        subprocess.run(["ip", "link", "set", inside, "netns", ns], check=True)
        subprocess.run(["ip", "link", "set", outside, "up"], check=True)
        subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "set", inside, "up"], check=True)
        yield ns, outside, inside
    finally:
        subprocess.run(["ip", "link", "del", outside], check=False, capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


def _capturing(monitor: subprocess.Popen[str]) -> str:
    """The monitor's first line on stderr: "capturing on IF (...)" once it listens."""
    assert monitor.stderr is not None
    line = monitor.stderr.readline()
    if not line.startswith("capturing on"):
        monitor.kill()
        pytest.fail(f"the monitor did not start capturing: {line}{monitor.stderr.read()}")
    return line.strip()


def replay(ns: str, interface: str, capture: Path) -> None:
    """Send a capture's packets at full speed out of `interface` in namespace `ns` (the
    veth fixture's inside end), so the monitor on the outside end sees them."""
    subprocess.run(
        ["ip", "netns", "exec", ns, "tcpreplay", "-q", "--topspeed", "-i", interface, str(capture)],
        check=True,
        capture_output=True,
    )


def test_live_capture_on_a_veth_pair(veth, sqlite_url, tmp_path) -> None:
    ns, outside, inside = veth
    capture = t.write(tmp_path / "day.pcap", t.school_day())
    env = {**os.environ, "SCHOOLGATE_DATABASE_URL": sqlite_url}
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
            "60",
            "--json",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Start-up (imports, the writer process, the socket) takes a second or ten on a busy
        # machine: replay once the monitor says its socket and ring are open.
        said = _capturing(monitor)
        assert said.startswith(f"capturing on {outside} ("), said
        for _ in range(3):
            replay(ns, inside, capture)
        time.sleep(1.0)  # the last ring block is handed over within 50 ms; then stop
        monitor.send_signal(signal.SIGTERM)
        out, err = monitor.communicate(timeout=60)
    finally:
        if monitor.poll() is None:
            monitor.kill()
    assert monitor.returncode == 0, err
    summary = json.loads(out)
    counters = summary["counters"]
    # IPv6 router solicitations and the like may add a few; all 3 x 68 replayed frames arrive.
    assert counters["packets"] >= 3 * 68
    assert summary["capture"]["kernel_drops"] == 0
    assert counters["dhcp"] >= 12
    assert counters["dns"] >= 6
    names = {visit["site"] for device in summary["devices"] for visit in device["visits"]}
    assert {"bbc.co.uk", "example.com", "bet365.com"} <= names
    visitor = next(d for d in summary["devices"] if d["mac"] == t.VISITOR_MAC)
    assert visitor["bittorrent_flows"] >= 5
