"""RADIUS load benchmark: schoolgate against FreeRADIUS, same load, same machine, same run.

    python bench/radius_load.py [--devices 30000] [--workers 1] [--requests 40000]
                                [--window 64] [--rate 2000] [--rate-seconds 5]

1. Builds a SQLite school (Westgate's full policy, one NAS at 127.0.0.1) with `--devices`
   registered devices of every class, and starts `schoolgate radius serve --workers N`.
2. Pre-builds signed MAB Access-Requests (Message-Authenticator included; 10 % from unknown
   devices) and sends them at a fixed window of outstanding requests: answers/s, p50/p99.
3. Sends at a fixed rate (`--rate` per second) and reports p50/p99 latency there too
   (the target: p99 under 5 ms at 2,000 requests/s).
4. When FreeRADIUS is installed (Debian `freeradius`), writes a flat-file MAB configuration
   of the same devices (bench/freeradius/radiusd.conf.template, the `files` module) into a
   temporary directory, starts `freeradius -f -d DIR`, runs the same load and prints the
   throughput ratio (target: schoolgate >= 0.5x FreeRADIUS).

The load generator is one Python process; on a small machine it shares the CPUs with the
server under test, for both servers alike. It also prints the cost of one argon2 check: PAP
is not part of the load (a success is cached, a failure costs a full argon2 check).
"""

from __future__ import annotations

import argparse
import os
import random
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from radius import codec  # noqa: E402
from service.mac import format_mac  # noqa: E402

SECRET = b"bench-secret-123"
CLASSES = (
    # (class, share of devices, FreeRADIUS answer: VLAN or None for a reject)
    ("school_single", 0.45, "10"),
    ("school_shared", 0.20, "10"),
    ("learner_owned", 0.10, None),
    ("staff_owned", 0.10, None),
    ("visitor_owned", 0.15, "99"),  # no signed AUA yet: registration
)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def device_mac(index: int) -> str:
    return "02:10:" + ":".join(f"{(index >> s) & 0xFF:02x}" for s in (24, 16, 8, 0))


def device_classes(count: int) -> list[tuple[str, str, str | None]]:
    out: list[tuple[str, str, str | None]] = []
    rng = random.Random(7)
    names = [c[0] for c in CLASSES]
    weights = [c[1] for c in CLASSES]
    vlans = {c[0]: c[2] for c in CLASSES}
    for i in range(count):
        cls = rng.choices(names, weights)[0]
        out.append((device_mac(i), cls, vlans[cls]))
    return out


def build_school(db_url: str, devices: list[tuple[str, str, str | None]]) -> None:
    from sqlalchemy import insert, select

    from service import audit, registry
    from service.db import make_engine, make_session_factory, transaction, upgrade
    from service.models import Device, Site

    upgrade(db_url)
    engine = make_engine(db_url)
    factory = make_session_factory(engine)
    with transaction(factory) as session:
        registry.load_policy_file(
            session, path=REPO / "deploy" / "policies" / "westgate.toml", actor="bench"
        )
        registry.add_nas(
            session,
            site_code="westgate",
            name="bench-nas",
            address="127.0.0.1",
            secret=SECRET.decode(),
            vendor="generic",
            actor="bench",
        )
        site_id = session.scalar(select(Site.id).where(Site.code == "westgate"))
        session.execute(
            insert(Device),
            [
                {
                    "site_id": site_id,
                    "mac": mac,
                    "device_class": cls,
                    "status": "active",
                    "needs_reassignment": False,
                }
                for mac, cls, _ in devices
            ],
        )
        audit.bump_change(session)
    engine.dispose()


def build_requests(
    macs: list[str], count: int, sockets: int, seed: int, start: int = 0
) -> list[bytes]:
    """Signed MAB requests; request i goes out on socket i % sockets with id (i // sockets)."""
    rng = random.Random(seed)
    out = []
    for i in range(start, start + count):
        mac = (
            rng.choice(macs)
            if rng.random() < 0.9
            else f"06:99:00:{i >> 16 & 255:02x}:" + (f"{i >> 8 & 255:02x}:{i & 255:02x}")
        )
        bare = format_mac(mac, "bare")
        attrs = b"".join(
            (
                codec.attr_text(codec.USER_NAME, bare),
                codec.attr(
                    codec.USER_PASSWORD,
                    codec.encrypt_user_password(bare.encode(), SECRET, bytes(16)),
                ),
                codec.attr_text(codec.CALLING_STATION_ID, format_mac(mac, "hyphen-upper")),
                codec.attr_int(codec.SERVICE_TYPE, codec.SERVICE_TYPE_CALL_CHECK),
                codec.attr_int(codec.NAS_PORT_TYPE, codec.NAS_PORT_TYPE_WIRELESS),
                codec.attr_text(codec.NAS_IDENTIFIER, "AP-HALL-03"),
                codec.attr_text(codec.CALLED_STATION_ID, "AA-BB-CC-00-11-22:Westgate-Pupils"),
            )
        )
        ident = (i // sockets) & 0xFF
        out.append(codec.encode_request(codec.ACCESS_REQUEST, ident, attrs, SECRET))
    return out


@dataclass
class Result:
    sent: int
    answered: int
    seconds: float
    latencies: list[float]

    @property
    def rate(self) -> float:
        return self.answered / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        data = sorted(self.latencies)
        return data[min(len(data) - 1, int(q * len(data)))] * 1000


def open_sockets(count: int, port: int) -> list[socket.socket]:
    socks = []
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        sock.bind(("127.0.0.1", 0))
        sock.connect(("127.0.0.1", port))
        sock.setblocking(False)
        socks.append(sock)
    return socks


def run_window(port: int, packets: list[bytes], window: int, sockets: int) -> Result:
    """Keep `window` requests outstanding until all are answered (or time out after 1 s)."""
    socks = open_sockets(sockets, port)
    selector = selectors.DefaultSelector()
    for index, sock in enumerate(socks):
        selector.register(sock, selectors.EVENT_READ, index)
    sent_at: dict[tuple[int, int], float] = {}
    latencies: list[float] = []
    nxt = 0
    total = len(packets)
    perf = time.perf_counter
    started = perf()

    def send_one() -> None:
        nonlocal nxt
        i = nxt
        nxt += 1
        slot = i % sockets
        sent_at[(slot, packets[i][1])] = perf()
        socks[slot].send(packets[i])

    while nxt < total and len(sent_at) < window:
        send_one()
    while sent_at:
        events = selector.select(timeout=1.0)
        if not events:
            sent_at.clear()  # lost: count as unanswered, keep going
        for key, _ in events:
            sock = socks[key.data]
            while True:
                try:
                    data = sock.recv(4096)
                except BlockingIOError:
                    break
                t0 = sent_at.pop((key.data, data[1]), None)
                if t0 is not None:
                    latencies.append(perf() - t0)
                    if nxt < total:
                        send_one()
        while nxt < total and len(sent_at) < window:
            send_one()
    seconds = perf() - started
    for sock in socks:
        sock.close()
    return Result(total, len(latencies), seconds, latencies)


def run_rate(port: int, packets: list[bytes], rate: float, sockets: int) -> Result:
    """Send at a fixed rate; measure each answer's latency."""
    socks = open_sockets(sockets, port)
    selector = selectors.DefaultSelector()
    for index, sock in enumerate(socks):
        selector.register(sock, selectors.EVENT_READ, index)
    sent_at: dict[tuple[int, int], float] = {}
    latencies: list[float] = []
    perf = time.perf_counter
    interval = 1.0 / rate
    started = perf()
    for i, packet in enumerate(packets):
        due = started + i * interval
        while True:
            now = perf()
            wait = due - now
            events = selector.select(timeout=max(0.0, wait)) if wait > 0 else []
            if wait <= 0 and not events:
                events = selector.select(timeout=0)
            for key, _ in events:
                sock = socks[key.data]
                while True:
                    try:
                        data = sock.recv(4096)
                    except BlockingIOError:
                        break
                    t0 = sent_at.pop((key.data, data[1]), None)
                    if t0 is not None:
                        latencies.append(perf() - t0)
            if perf() >= due:
                break
        slot = i % sockets
        sent_at[(slot, packet[1])] = perf()
        socks[slot].send(packet)
    deadline = perf() + 1.0
    while sent_at and perf() < deadline:
        for key, _ in selector.select(timeout=0.05):
            sock = socks[key.data]
            while True:
                try:
                    data = sock.recv(4096)
                except BlockingIOError:
                    break
                t0 = sent_at.pop((key.data, data[1]), None)
                if t0 is not None:
                    latencies.append(perf() - t0)
    seconds = perf() - started
    for sock in socks:
        sock.close()
    return Result(len(packets), len(latencies), seconds, latencies)


def wait_status(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.3)
        while time.monotonic() < deadline:
            sock.sendto(
                codec.encode_request(codec.STATUS_SERVER, 1, b"", SECRET), ("127.0.0.1", port)
            )
            try:
                sock.recv(4096)
                return
            except TimeoutError:
                continue
    raise SystemExit(f"no server answering Status-Server on port {port}")


def start_schoolgate(
    db_url: str, workers: int, workdir: Path
) -> tuple[subprocess.Popen[bytes], int]:
    port, acct = free_udp_port(), free_udp_port()
    env = {
        **os.environ,
        "SCHOOLGATE_DATABASE_URL": db_url,
    }
    log = (workdir / "schoolgate.log").open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "service",
            "radius",
            "serve",
            "--host",
            "127.0.0.1",
            "--auth-port",
            str(port),
            "--acct-port",
            str(acct),
            "--workers",
            str(workers),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=workdir,
    )
    wait_status(port)
    return process, port


def start_freeradius(
    devices: list[tuple[str, str, str | None]], workdir: Path, threads: int
) -> tuple[subprocess.Popen[bytes], int] | None:
    binary = shutil.which("freeradius") or shutil.which("radiusd")
    if binary is None:
        return None
    conf_dir = workdir / "freeradius"
    for sub in ("log", "run", "radacct"):
        (conf_dir / sub).mkdir(parents=True, exist_ok=True)
    port = free_udp_port()
    template = (REPO / "bench" / "freeradius" / "radiusd.conf.template").read_text()
    (conf_dir / "radiusd.conf").write_text(
        template.replace("{dir}", str(conf_dir))
        .replace("{port}", str(port))
        .replace("{secret}", SECRET.decode())
        .replace("{threads}", str(threads))
    )
    shutil.copy(REPO / "bench" / "freeradius" / "dictionary", conf_dir / "dictionary")
    lines = []
    for mac, _cls, vlan in devices:
        bare = format_mac(mac, "bare")
        if vlan is None:
            lines.append(f'{bare}\tAuth-Type := Reject\n\tReply-Message = "no network access"\n')
        else:
            lines.append(
                f"{bare}\tAuth-Type := Accept\n\tTunnel-Type = VLAN, Tunnel-Medium-Type = "
                f'IEEE-802, Tunnel-Private-Group-Id = "{vlan}", Session-Timeout = 3600\n'
            )
    lines.append(
        "DEFAULT\tAuth-Type := Accept\n\tTunnel-Type = VLAN, Tunnel-Medium-Type = IEEE-802, "
        'Tunnel-Private-Group-Id = "99", Session-Timeout = 300\n'
    )
    (conf_dir / "users").write_text("\n".join(lines))
    log = (workdir / "freeradius.log").open("wb")
    process = subprocess.Popen(
        [binary, "-f", "-d", str(conf_dir)], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        wait_status(port, timeout=60)
    except SystemExit:
        process.kill()
        print((workdir / "freeradius.log").read_text()[-2000:])
        raise
    return process, port


def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def measure(
    name: str, port: int, args: argparse.Namespace, macs: list[str]
) -> tuple[Result, Result]:
    warm = build_requests(macs, 2000, args.sockets, seed=1, start=0)
    run_window(port, warm, args.window, args.sockets)
    load = build_requests(macs, args.requests, args.sockets, seed=2, start=10_000)
    window = run_window(port, load, args.window, args.sockets)
    paced_packets = build_requests(
        macs, int(args.rate * args.rate_seconds), args.sockets, seed=3, start=10_000 + args.requests
    )
    paced = run_rate(port, paced_packets, args.rate, args.sockets)
    print(
        f"{name:<12} window {args.window}: {window.rate:9.0f} answers/s "
        f"({window.answered}/{window.sent} answered), p50 {window.pct(0.5):6.2f} ms, "
        f"p99 {window.pct(0.99):6.2f} ms | at {args.rate:.0f}/s: {paced.answered}/{paced.sent} "
        f"answered, p50 {paced.pct(0.5):5.2f} ms, p99 {paced.pct(0.99):5.2f} ms",
        flush=True,
    )
    return window, paced


def argon2_cost() -> float:
    from service.people import _HASHER, verify_password

    stored = _HASHER.hash("benchmark-password")
    started = time.perf_counter()
    for _ in range(5):
        verify_password(stored, "benchmark-password")
    return (time.perf_counter() - started) / 5 * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=30_000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--requests", type=int, default=40_000)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--sockets", type=int, default=4)
    parser.add_argument("--rate", type=float, default=2000)
    parser.add_argument("--rate-seconds", type=float, default=5)
    parser.add_argument("--freeradius-threads", type=int, default=4)
    parser.add_argument("--no-freeradius", action="store_true")
    parser.add_argument("--keep", action="store_true", help="Keep the temporary directory.")
    args = parser.parse_args()
    if args.window > 250 * args.sockets:
        parser.error("--window must stay below 250 x --sockets (8-bit RADIUS identifiers)")

    workdir = Path(tempfile.mkdtemp(prefix="sg-radius-bench-"))
    try:
        devices = device_classes(args.devices)
        db_url = f"sqlite:///{workdir / 'bench.db'}"
        started = time.perf_counter()
        build_school(db_url, devices)
        print(
            f"school with {len(devices)} devices built in {time.perf_counter() - started:.1f} s; "
            f"{os.cpu_count()} CPUs; load: {args.requests} MAB requests, window {args.window}, "
            f"then {args.rate:.0f}/s for {args.rate_seconds:.0f} s",
            flush=True,
        )
        macs = [mac for mac, _, _ in devices]
        process, port = start_schoolgate(db_url, args.workers, workdir)
        try:
            ours, ours_paced = measure(f"schoolgate/{args.workers}w", port, args, macs)
        finally:
            stop(process)
        log = (workdir / "schoolgate.log").read_text()
        for line in log.splitlines():
            if "stopped; counters" in line:
                print("  " + line.split("]: ", 1)[-1])
        theirs = None
        if not args.no_freeradius:
            started_fr = start_freeradius(devices, workdir, args.freeradius_threads)
            if started_fr is None:
                print("FreeRADIUS not installed (Debian package freeradius): no comparison")
            else:
                fr_process, fr_port = started_fr
                try:
                    theirs, _ = measure("freeradius", fr_port, args, macs)
                finally:
                    stop(fr_process)
        if theirs is not None and theirs.rate:
            ratio = ours.rate / theirs.rate
            print(
                f"ratio schoolgate/freeradius throughput: {ratio:.2f}x "
                f"(target >= 0.5x) {'OK' if ratio >= 0.5 else 'BELOW TARGET'}"
            )
        p99 = ours_paced.pct(0.99)
        print(
            f"schoolgate p99 at {args.rate:.0f}/s: {p99:.2f} ms (target < 5 ms) "
            f"{'OK' if p99 < 5 else 'ABOVE TARGET'}"
        )
        if ours.latencies:
            mean = statistics.fmean(ours.latencies) * 1000
            print(f"  mean latency under the window load: {mean:.2f} ms")
        print(f"argon2 check (PAP, not cached): {argon2_cost():.1f} ms each")
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
