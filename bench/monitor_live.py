"""Live benchmark: replay a large capture at a fixed rate into a veth pair (one end in a network
namespace) while `schoolgate monitor run --interface` listens on the other; print what the kernel
dropped (PACKET_STATISTICS). Needs root, iproute2 and tcpreplay.

    .venv/bin/python bench/monitor_live.py [--pps 200000] [--copies 300] [--quic-flows 6]

Target (issue 14): zero kernel drops at 200,000 packets/s, a busy 1 Gbit/s school uplink, with
QUIC decryption included. The capture is bench/monitor_pcap.py's (the school day and the
reference traces, copies with shifted addresses) with `--quic-flows` HTTP/3 connections added to
each copy: per connection a ClientHello split over two client Initials (each with its own
Destination Connection ID, so every one costs a key derivation and two AES operations), three
server long-header packets and 16 short-header packets, the way browsers open connections.

The monitor is started, and the replay begins when it prints "capturing on IF (...)"; tcpreplay
preloads the capture (`--preload-pcap`, `--pps-multi`) and the rate it reached is reported, as
are each process's CPU per packet (the capture loop, the writer process, tcpreplay with the
veth's kernel work it carries) and how long the capture loop waited on the run queue for a CPU.
The target is met only with 0 drops, every packet seen and the replay at 200,000 packets/s.

What it showed on the 2-core machine in December 2026 (load average 7-17 from other work):
capture 4.3-5.7 us a packet, writer 2.7-4.0, tcpreplay 2.6-4.7: some 10-13 us of CPU a packet
in all, so two free cores would carry about 160-200,000 packets/s. 495,000 packets at 199,600/s
(`--copies 150`): 0 drops, every packet seen (the 256 MiB ring absorbs what a starved capture
loop cannot take at once); the full 991,000 (5 s): 175-460,000 drops, the capture loop having
waited on the run queue for a CPU as long as or longer than it ran (2.3-9.1 s waited). Fanning
out over several capture processes (PACKET_FANOUT) adds no CPU on this machine, where every
core is already busy; it is the step for more cores.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import signal
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
    parser.add_argument("--pps", type=int, default=200_000)
    parser.add_argument("--copies", type=int, default=300)
    parser.add_argument("--quic-flows", type=int, default=6, help="QUIC connections per copy")
    parser.add_argument(
        "--pps-multi",
        type=int,
        default=10,
        help="packets tcpreplay sends per timing step (its --pps-multi: fewer sleeps)",
    )
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        help="run the monitor and tcpreplay at this niceness (e.g. -10 on a machine other work "
        "is loading: what `Nice=` in the monitor's systemd unit would give it)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        help="py-spy samples of the capture process, collapsed stacks, written to this file",
    )
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
        packets, initials = build(capture, args.copies, args.quic_flows, monitor_pcap)
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
            # Stopped with SIGTERM once the replay is done and the ring drained, so a slow
            # replay or a busy machine does not cut the capture short.
            seconds = packets / args.pps * 4 + 30
            monitor = subprocess.Popen(
                [
                    "nice",
                    "-n",
                    str(args.nice),
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
            assert monitor.stderr is not None
            said = monitor.stderr.readline()  # "capturing on ...": the ring is open
            if not said.startswith("capturing on"):
                monitor.kill()
                raise SystemExit(f"the monitor did not start: {said}{monitor.stderr.read()}")
            cpu = _CpuWatch(monitor.pid)
            cpu.start()  # after start-up (imports, the writer, the socket)
            spy = None
            if args.profile:
                spy = subprocess.Popen(
                    [
                        "py-spy",
                        "record",
                        "--format",
                        "raw",
                        "--rate",
                        "200",
                        "--nonblocking",
                        "--subprocesses",
                        "-o",
                        str(args.profile),
                        "--pid",
                        str(monitor.pid),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            replay = subprocess.run(
                [
                    "ip",
                    "netns",
                    "exec",
                    ns,
                    "nice",
                    "-n",
                    str(args.nice),
                    "tcpreplay",
                    "--preload-pcap",
                    "--pps",
                    str(args.pps),
                    "--pps-multi",
                    str(args.pps_multi),
                    "-i",
                    inside,
                    str(capture),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            sender_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            cpu.wait_idle()  # the ring drained: the capture process stops using CPU
            load = os.getloadavg()
            monitor.send_signal(signal.SIGTERM)
            out, err = monitor.communicate(timeout=seconds + 60)
            cpu.stop()
            if spy is not None:
                spy.wait(timeout=60)
        finally:
            subprocess.run(["ip", "link", "del", outside], check=False, capture_output=True)
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)
    if monitor.returncode != 0:
        print(err)
        raise SystemExit(1)
    report(
        json.loads(out), said.strip(), replay.stdout, packets, initials, args, cpu, sender_cpu, load
    )


def report(
    summary: dict,
    said: str,
    replay_out: str,
    packets: int,
    initials: int,
    args: argparse.Namespace,
    cpu: _CpuWatch,
    sender_cpu: float,
    load: tuple[float, float, float],
) -> None:
    counters = summary["counters"]
    capture = summary["capture"]
    rate_line = next((x for x in replay_out.splitlines() if "Rated:" in x), "").strip()
    sent = re.search(r"([\d.]+) pps", rate_line)
    achieved = float(sent.group(1)) if sent else 0.0
    drops = capture["kernel_drops"]
    seen = counters["packets"]
    sent_ok = re.search(r"Successful packets:\s*(\d+)", replay_out)
    failed = re.search(r"Failed packets:\s*(\d+)", replay_out)
    delivered = int(sent_ok.group(1)) if sent_ok else packets
    print(
        f"load average {' '.join(f'{x:.2f}' for x in load)} on {os.cpu_count()} CPUs; "
        f"niceness {args.nice}; "
        f"monitor: {said}"
    )
    print(
        f"sent {packets} packets ({initials} QUIC client Initials) asking --pps {args.pps}: "
        f"tcpreplay reached {achieved:,.0f} packets/s ({rate_line}); sent {delivered}, "
        f"failed {failed.group(1) if failed else '?'} (tcpreplay's counts)"
    )
    print(
        f"kernel: {capture['kernel_packets']} packets, {drops} dropped; engine saw {seen}; "
        f"ring resyncs {capture.get('ring_resyncs')}; "
        f"flows {counters['flows']}, QUIC undecryptable {counters.get('quic_undecryptable')}, "
        f"rows written {summary['written']}"
    )
    for name, busy in (("capture", cpu.capture), ("writer", cpu.writer), ("tcpreplay", None)):
        seconds = sender_cpu if busy is None else busy
        per_packet = seconds / max(1, seen if busy is not None else packets) * 1e6
        print(
            f"CPU {name:9} {seconds:6.2f} s, {per_packet:5.2f} us a packet"
            + (f" (one free core: {1e6 / per_packet:,.0f} packets/s)" if per_packet else "")
        )
    print(
        f"the capture loop waited {cpu.waited:.2f} s for a CPU (runnable, others running) while "
        f"it ran {cpu.capture:.2f} s"
    )
    # tcpreplay's pacing lands a few hundred packets/s either side of what it is asked for:
    # within 1% of the target counts as reaching it (the rate itself is printed above).
    reached = achieved >= TARGET_PPS * 0.99
    met = drops == 0 and seen >= delivered and reached
    why = []
    if not reached:
        why.append(f"the replay reached only {achieved:,.0f} packets/s")
    if drops:
        why.append(f"{drops} kernel drops")
    print(
        f"target: 0 kernel drops at {TARGET_PPS:,} packets/s: "
        + ("met" if met else "NOT met (" + "; ".join(why or ["packets missing"]) + ")")
    )


TARGET_PPS = 200_000


class _CpuWatch:
    """CPU seconds (user + system, from /proc) of the capture process and of its writer
    process (its child), counted from `start()`: on a shared, loaded machine the drops say
    little, the cost per packet says what a free core would keep up with."""

    def __init__(self, pid: int) -> None:
        import threading

        self.pid = pid
        self.capture = self.writer = 0.0
        self._base = self._wait_base = self.waited = 0.0
        self._writer_base: dict[int, float] = {}
        self._writers: dict[int, float] = {}
        self._ticks = os.sysconf("SC_CLK_TCK")
        self.running = True
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def _read(self, pid: int) -> float:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return -1.0
        return (int(fields[11]) + int(fields[12])) / self._ticks  # utime, stime

    def _children(self) -> list[int]:
        try:
            text = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text()
        except OSError:
            return []
        return [int(x) for x in text.split()]

    def _waited(self) -> float:
        """Seconds the capture loop (the main thread) has waited on a run queue for a CPU
        (/proc/PID/schedstat): runnable but not running, the machine's other work ahead of it."""
        try:
            return int(Path(f"/proc/{self.pid}/schedstat").read_text().split()[1]) / 1e9
        except (OSError, IndexError, ValueError):
            return self._wait_base + self.waited

    def _sample(self) -> bool:
        capture = self._read(self.pid)
        if capture < 0:
            return False
        self.capture = capture - self._base
        self.waited = self._waited() - self._wait_base
        for child in self._children():  # the writer: its last reading stays once it ends
            seconds = self._read(child)
            if seconds >= 0:
                self._writers[child] = seconds - self._writer_base.get(child, 0.0)
        self.writer = sum(self._writers.values())
        return True

    def start(self) -> None:
        self._base = max(0.0, self._read(self.pid))
        self._wait_base = self._waited()
        self._writer_base = {child: max(0.0, self._read(child)) for child in self._children()}
        self.thread.start()

    def _watch(self) -> None:
        while self.running and self._sample():
            time.sleep(0.1)

    def wait_idle(self, limit: float = 120.0) -> None:
        """Until the capture process has used no CPU for half a second: the ring is drained."""
        deadline = time.monotonic() + limit
        last = -1.0
        while time.monotonic() < deadline:
            time.sleep(0.5)
            if self.capture - last < 0.02:
                return
            last = self.capture

    def stop(self) -> None:
        self.running = False
        self.thread.join()


def _quic_records(copy: int, flows: int) -> list[tuple[float, bytes]]:
    """`flows` HTTP/3 connections from one client of copy `copy` (see the module docstring)."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether

    from service.monitor import quic
    from tests.monitor import traffic

    version = quic.VERSIONS[b"\x00\x00\x00\x01"]
    records = []
    client = f"10.{40 + copy // 250}.{copy % 250}.7"
    for index in range(flows):
        name = f"video{index}.cdn{copy}.example.org"
        record = traffic.client_hello(name)
        hello = record[5:] + bytes(1400)  # a large key share makes it two packets
        hello = b"\x01" + (len(hello) - 4).to_bytes(3, "big") + hello[4:]
        dcid = copy.to_bytes(4, "big") + index.to_bytes(4, "big")
        half = len(hello) // 2

        def crypto(offset: int, data: bytes) -> bytes:
            return (
                b"\x06"
                + (0x4000 | offset).to_bytes(2, "big")
                + (0x4000 | len(data)).to_bytes(2, "big")
                + data
            )

        up = (
            Ether(src=traffic.LAPTOP_MAC, dst=traffic.ROUTER_MAC)
            / IP(src=client, dst="142.250.0.1")
            / UDP(sport=50000 + index, dport=443)
        )
        down = (
            Ether(src=traffic.ROUTER_MAC, dst=traffic.LAPTOP_MAC)
            / IP(src="142.250.0.1", dst=client)
            / UDP(sport=443, dport=50000 + index)
        )
        frames = [
            up / quic.seal_initial(version, dcid, 0, crypto(0, hello[:half])),
            up / quic.seal_initial(version, dcid, 1, crypto(half, hello[half:])),
        ]
        frames += [down / (b"\xc1\x00\x00\x00\x01" + bytes(1195))] * 3
        for n in range(16):
            frames.append((down if n % 3 else up) / (b"\x41" + bytes(1199 if n % 3 else 60)))
        records += [(0.001 * k, bytes(f)) for k, f in enumerate(frames)]
    return records


def build(path: Path, copies: int, quic_flows: int, monitor_pcap) -> tuple[int, int]:
    """monitor_pcap's capture with QUIC connections added to every copy: (packets, Initials)."""
    import struct

    base = monitor_pcap._records()
    count = initials = 0
    with path.open("wb") as out:
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for copy in range(copies):
            offset = 1_795_000_000 + copy * 1200.0
            quic_part = _quic_records(copy, quic_flows)
            initials += 2 * quic_flows
            step = max(1, len(base) // max(1, len(quic_part)))
            mixed: list[tuple[float, bytes]] = []
            for at, record in enumerate(base):
                frame = bytearray(record[1])
                if len(frame) >= 34 and frame[12:14] == b"\x08\x00":
                    frame[29] = (frame[29] + copy) % 256  # IPv4 source, last byte
                mixed.append((record[0], bytes(frame)))
                if at % step == 0 and quic_part:
                    mixed.append(quic_part.pop(0))
            mixed += quic_part
            for rel, data in mixed:
                ts = offset + rel
                sec = int(ts)
                out.write(struct.pack("<IIII", sec, int((ts - sec) * 1e6), len(data), len(data)))
                out.write(data)
                count += 1
    return count, initials


if __name__ == "__main__":
    main()
