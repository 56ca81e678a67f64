"""Benchmark: change -> the device re-authenticated with the new answer, with a real NAS.

    sudo .venv/bin/python bench/coa_vlan.py [N]        # N changes, default 50; needs root

hostapd (driver=wired, IEEE 802.1X) is the NAS, in a network namespace, with a real wired
supplicant (wpa_supplicant -D wired) in a second one: the setup of
tests/radius/test_coa_hostapd.py. `schoolgate radius serve` runs on loopback against a SQLite
database (its default snapshot poll: nothing wakes it sooner on SQLite) and reports the
snapshot it has loaded; the change is made as `device revoke` / `device approve` make it (one
transaction) and the Disconnect-Request sent as the CLI sends it after its commit
(`send_queued`, which waits for the RADIUS workers to have the change).

Each of the N changes (revoke and approve alternately, of the station's device) is timed from
just before its commit until:

1. hostapd has applied the Disconnect (the station is no longer authorised), and
2. the RADIUS server, asked at that instant the Access-Request the NAS sends when the device
   comes back (MAC authentication of the station), answers with the new decision: an
   Access-Reject after a revoke, VLAN 10 after an approve. An old answer is counted and
   reported: before issue 12 that was the walled garden / old VLAN for up to a poll interval.

hostapd's wired driver takes its EAP from its own server here (schoolgate answers MAB and PAP,
not EAP), so the VLAN is read from schoolgate's answer rather than from a VLAN interface; the
station is then made to re-authenticate (`wpa_cli reassociate`) so the next change has a live
session, and that re-authentication time is printed separately.

Prints p50 and p99 of change -> new answer; target < 2 s.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from pyrad.client import Client, Timeout
from pyrad.packet import AccessAccept, AccessReject, AccessRequest
from sqlalchemy import delete, select, update

from radius import codec
from radius.coa import UdpCoaSender
from service.config import load_settings
from service.db import make_engine, make_session_factory, transaction, upgrade
from service.demo import seed_demo_school
from service.devices import approve_device, revoke_device
from service.enforcement import send_queued
from service.mac import format_mac
from service.models import AccountingSession, NasClient

SECRET = "testing123"
STATION_MAC = "02:00:00:00:10:01"  # the Westgate school laptop: full access, VLAN 10
IDENTITY = "laptop01"
TARGET_SECONDS = 2.0
REPO = Path(__file__).resolve().parents[1]


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, check=check, timeout=20)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Lab:
    """hostapd and wpa_supplicant in two namespaces; the DAS reachable from the root one."""

    def __init__(self, tmp: Path) -> None:
        tag = f"{os.getpid() % 10000}"
        self.tmp = tmp
        self.nas_ns, self.sta_ns = f"sgbn{tag}", f"sgbs{tag}"
        subnet = 1 + (os.getpid() + 7) % 250
        self.our_ip, self.nas_ip = f"10.232.{subnet}.1", f"10.232.{subnet}.2"
        self.das_port = free_udp_port()
        self.up, up_peer = f"sgbu{tag}", f"sgbv{tag}"
        wire, self.wire_peer = f"sgbw{tag}", f"sgbx{tag}"
        self.ctrl = tmp / "hostapd-ctrl"
        self.wpa_ctrl = tmp / "wpa-ctrl"
        self.processes: list[subprocess.Popen[bytes]] = []
        for ns in (self.nas_ns, self.sta_ns):
            run("ip", "netns", "add", ns)
            run("ip", "-n", ns, "link", "set", "lo", "up")
        run("ip", "link", "add", self.up, "type", "veth", "peer", "name", up_peer)
        run("ip", "link", "set", up_peer, "netns", self.nas_ns)
        run("ip", "addr", "add", f"{self.our_ip}/30", "dev", self.up)
        run("ip", "link", "set", self.up, "up")
        run("ip", "-n", self.nas_ns, "addr", "add", f"{self.nas_ip}/30", "dev", up_peer)
        run("ip", "-n", self.nas_ns, "link", "set", up_peer, "up")
        run("ip", "link", "add", wire, "type", "veth", "peer", "name", self.wire_peer)
        run("ip", "link", "set", wire, "netns", self.nas_ns)
        run("ip", "link", "set", self.wire_peer, "netns", self.sta_ns)
        run("ip", "-n", self.sta_ns, "link", "set", self.wire_peer, "address", STATION_MAC)
        run("ip", "-n", self.nas_ns, "link", "set", wire, "up")
        run("ip", "-n", self.sta_ns, "link", "set", self.wire_peer, "up")
        (tmp / "eap_users").write_text(f'"{IDENTITY}" MD5 "secret-pass"\n')
        (tmp / "hostapd.conf").write_text(
            "\n".join(
                [
                    f"interface={wire}",
                    "driver=wired",
                    f"ctrl_interface={self.ctrl}",
                    "ieee8021x=1",
                    "eapol_version=2",
                    "eap_server=1",
                    f"eap_user_file={tmp / 'eap_users'}",
                    "nas_identifier=hostapd-bench",
                    f"own_ip_addr={self.nas_ip}",
                    "auth_server_addr=127.0.0.1",
                    f"auth_server_port={free_udp_port()}",
                    "auth_server_shared_secret=unused",
                    f"radius_das_port={self.das_port}",
                    f"radius_das_client={self.our_ip} {SECRET}",
                    "",
                ]
            )
        )
        (tmp / "wpa.conf").write_text(
            "ap_scan=0\n"
            f"ctrl_interface={self.wpa_ctrl}\n"
            "network={\n  key_mgmt=IEEE8021X\n  eap=MD5\n"
            f'  identity="{IDENTITY}"\n  password="secret-pass"\n  eapol_flags=0\n}}\n'
        )
        self.spawn(self.nas_ns, "hostapd", str(tmp / "hostapd.conf"), log="hostapd.log")
        time.sleep(0.5)
        self.spawn(
            self.sta_ns,
            "wpa_supplicant",
            "-D",
            "wired",
            "-i",
            self.wire_peer,
            "-c",
            str(tmp / "wpa.conf"),
            log="wpa.log",
        )

    def spawn(self, ns: str, *args: str, log: str) -> None:
        out = (self.tmp / log).open("wb")
        self.processes.append(
            subprocess.Popen(["ip", "netns", "exec", ns, *args], stdout=out, stderr=out)
        )

    def sta(self) -> str:
        return run(
            "ip",
            "netns",
            "exec",
            self.nas_ns,
            "hostapd_cli",
            "-p",
            str(self.ctrl),
            "sta",
            STATION_MAC,
            check=False,
        ).stdout

    def session_id(self) -> str | None:
        out = self.sta()
        if "AUTHORIZED" not in out:
            return None
        match = re.search(r"dot1xAuthSessionId=([0-9A-Fa-f]+)", out)
        return match.group(1) if match else None

    def wait_authorized(self, limit: float = 20) -> str:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            found = self.session_id()
            if found:
                return found
            time.sleep(0.02)
        raise SystemExit("the wired supplicant did not authenticate with hostapd")

    def reassociate(self) -> None:
        run(
            "ip",
            "netns",
            "exec",
            self.sta_ns,
            "wpa_cli",
            "-p",
            str(self.wpa_ctrl),
            "-i",
            self.wire_peer,
            "reassociate",
            check=False,
        )

    def close(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
        run("ip", "link", "del", self.up, check=False)
        for ns in (self.nas_ns, self.sta_ns):
            run("ip", "netns", "del", ns, check=False)


def start_radius(url: str, tmp: Path) -> tuple[subprocess.Popen[bytes], int]:
    auth, acct = free_udp_port(), free_udp_port()
    env = {**os.environ, "SCHOOLGATE_DATABASE_URL": url}
    log = (tmp / "radius.log").open("wb")
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "service", "radius", "serve", "--host", "127.0.0.1"),
            *("--auth-port", str(auth), "--acct-port", str(acct), "--no-coa"),
        ],
        stdout=log,
        stderr=log,
        env=env,
        cwd=REPO,
    )
    return process, auth


def radius_log(tmp: Path) -> str:
    return (tmp / "radius.log").read_text(errors="replace")[-3000:]


def mab_answer(client: Client) -> tuple[int, str | None]:
    request = client.CreateAuthPacket(code=AccessRequest, message_authenticator=True)
    request["User-Name"] = format_mac(STATION_MAC, "bare")
    request["User-Password"] = request.PwCrypt(format_mac(STATION_MAC, "bare"))
    request["Calling-Station-Id"] = format_mac(STATION_MAC, "hyphen-upper")
    request["Service-Type"] = "Call-Check"
    request["NAS-Port-Type"] = "Ethernet"
    reply = client.SendPacket(request)
    vlan = reply.get("Tunnel-Private-Group-Id")
    return reply.code, (str(vlan[0]) if vlan else None)


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    if os.geteuid() != 0:
        raise SystemExit("needs root: network namespaces for hostapd and the supplicant")
    for tool in ("ip", "hostapd", "hostapd_cli", "wpa_supplicant", "wpa_cli"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (apt-get install hostapd wpasupplicant)")
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        url = f"sqlite:///{tmp / 'bench.db'}"
        upgrade(url)
        factory = make_session_factory(make_engine(url))
        settings = load_settings(None, database_url=url)
        lab = Lab(tmp)
        radius, auth_port = start_radius(url, tmp)
        try:
            session_id = lab.wait_authorized()
            with transaction(factory) as session:
                seed_demo_school(session, actor="bench")
                nas_id = session.scalar(select(NasClient.id))
                # One NAS: hostapd for CoA (its DAS address) and the bench's MAB requests
                # (from loopback: a /32 per source is enough, so widen to both).
                session.execute(
                    update(NasClient)
                    .where(NasClient.id == nas_id)
                    .values(address=lab.nas_ip, coa_port=lab.das_port)
                )
                session.add(
                    NasClient(
                        site_id=session.scalar(select(NasClient.site_id)),
                        name="bench-loopback",
                        address="127.0.0.1",
                        secret=SECRET,
                    )
                )
            client = Client(
                server="127.0.0.1",
                authport=auth_port,
                secret=SECRET.encode(),
                dict=codec.load_dictionary(),
                retries=1,
                timeout=2,
                enforce_ma=True,
            )
            deadline = time.monotonic() + 30
            while True:  # the server up, with the seeded school in its snapshot
                try:
                    if mab_answer(client)[0] == AccessAccept:
                        break
                except Timeout:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit(f"radius serve did not answer:\n{radius_log(tmp)}")
                time.sleep(0.2)
            latencies: list[float] = []
            reauth: list[float] = []
            old_answers = 0
            for index in range(count):
                now = datetime.now(UTC)
                with transaction(factory) as session:
                    # The station's live session, as hostapd's accounting would leave it (it
                    # may keep its session id across a re-authentication).
                    session.execute(delete(AccountingSession))
                    session.add(
                        AccountingSession(
                            nas_id=nas_id,
                            nas_ip=lab.nas_ip,
                            site_code="westgate",
                            mac=STATION_MAC,
                            acct_session_id=session_id,
                            started_at=now,
                            updated_at=now,
                        )
                    )
                revoking = index % 2 == 0
                started = time.monotonic()
                with transaction(factory) as session:
                    if revoking:
                        revoke_device(session, mac=STATION_MAC, reason="bench", actor="bench")
                    else:
                        approve_device(session, mac=STATION_MAC, actor="bench")
                sender = threading.Thread(
                    target=send_queued,
                    kwargs={
                        "session_factory": factory,
                        "settings": settings,
                        "sender": UdpCoaSender(),
                        "deadline": 10.0,
                    },
                )
                sender.start()
                while lab.session_id() == session_id:
                    if time.monotonic() - started > 20:
                        raise SystemExit(f"change {index}: hostapd never dropped the station")
                    time.sleep(0.005)
                code, vlan = mab_answer(client)
                elapsed = time.monotonic() - started
                expected = (AccessReject, None) if revoking else (AccessAccept, "10")
                if (code, vlan) != expected:
                    old_answers += 1
                latencies.append(elapsed)
                sender.join()
                back = time.monotonic()
                lab.reassociate()
                session_id = lab.wait_authorized()
                reauth.append(time.monotonic() - back)
        finally:
            radius.send_signal(signal.SIGTERM)
            try:
                radius.wait(20)
            except subprocess.TimeoutExpired:
                radius.kill()
            lab.close()
    latencies.sort()
    p50 = statistics.median(latencies)
    p99 = latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))]
    # An old answer is the race this guards against: the target is missed whatever the time.
    verdict = "met" if p99 < TARGET_SECONDS and old_answers == 0 else "MISSED"
    print(
        f"{count} changes (revoke/approve) -> hostapd dropped the station and RADIUS gave the "
        f"new answer: p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, max "
        f"{latencies[-1] * 1000:.0f} ms; target p99 < {TARGET_SECONDS:g} s: {verdict}"
    )
    print(f"old answers right after the Disconnect: {old_answers} of {count}")
    print(f"station re-authenticated with hostapd: p50 {statistics.median(reauth) * 1000:.0f} ms")


if __name__ == "__main__":
    main()
