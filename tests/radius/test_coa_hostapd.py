"""Our Disconnect-Requests against a real NAS: hostapd (driver=wired, IEEE 802.1X, its own
EAP server) in a network namespace, with a real wired supplicant (wpa_supplicant -D wired) in a
second namespace so a real authenticated session exists.

    root ns  <-- veth (UDP: RFC 5176 DAS) -->  nas ns: hostapd  <-- veth (EAPOL) -->  sta ns

Skipped, with the reason, only where the machine forbids network namespaces.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from service.db import transaction
from service.models import NasClient
from tests.conftest import RunCli
from tests.enforcement.sessions import open_session
from tests.helpers import free_udp_port

SECRET = "testing123"
STATION_MAC = "02:00:00:00:10:01"  # the Westgate school laptop
IDENTITY = "laptop01"


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, check=check, timeout=20)


def _namespaces_allowed() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root (CAP_NET_ADMIN)"
    for tool in ("ip", "hostapd", "hostapd_cli", "wpa_supplicant"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install hostapd wpasupplicant iproute2)"
    name = f"sgprobe{os.getpid()}"
    probe = _run("ip", "netns", "add", name, check=False)
    if probe.returncode != 0:
        return f"this machine forbids network namespaces: {probe.stderr.strip()}"
    _run("ip", "netns", "del", name, check=False)
    return None


@pytest.fixture
def hostapd_nas(tmp_path: Path) -> Iterator[SimpleNamespace]:
    reason = _namespaces_allowed()
    if reason:
        pytest.skip(reason)
    tag = f"{os.getpid() % 10000}"
    nas_ns, sta_ns = f"sgnas{tag}", f"sgsta{tag}"
    subnet = 1 + os.getpid() % 250
    our_ip, nas_ip = f"10.231.{subnet}.1", f"10.231.{subnet}.2"
    das_port = free_udp_port()
    up, up_peer = f"sgu{tag}", f"sgv{tag}"  # root <-> nas ns (UDP)
    wire, wire_peer = f"sgw{tag}", f"sgx{tag}"  # nas ns <-> sta ns (EAPOL)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for ns in (nas_ns, sta_ns):
            _run("ip", "netns", "add", ns)
            _run("ip", "-n", ns, "link", "set", "lo", "up")
        _run("ip", "link", "add", up, "type", "veth", "peer", "name", up_peer)
        _run("ip", "link", "set", up_peer, "netns", nas_ns)
        _run("ip", "addr", "add", f"{our_ip}/30", "dev", up)
        _run("ip", "link", "set", up, "up")
        _run("ip", "-n", nas_ns, "addr", "add", f"{nas_ip}/30", "dev", up_peer)
        _run("ip", "-n", nas_ns, "link", "set", up_peer, "up")
        _run("ip", "link", "add", wire, "type", "veth", "peer", "name", wire_peer)
        _run("ip", "link", "set", wire, "netns", nas_ns)
        _run("ip", "link", "set", wire_peer, "netns", sta_ns)
        _run("ip", "-n", sta_ns, "link", "set", wire_peer, "address", STATION_MAC)
        _run("ip", "-n", nas_ns, "link", "set", wire, "up")
        _run("ip", "-n", sta_ns, "link", "set", wire_peer, "up")

        ctrl = tmp_path / "hostapd-ctrl"
        (tmp_path / "eap_users").write_text(f'"{IDENTITY}" MD5 "secret-pass"\n')
        (tmp_path / "hostapd.conf").write_text(
            "\n".join(
                [
                    f"interface={wire}",
                    "driver=wired",
                    f"ctrl_interface={ctrl}",
                    "ieee8021x=1",
                    "eapol_version=2",
                    "eap_server=1",
                    f"eap_user_file={tmp_path / 'eap_users'}",
                    "nas_identifier=hostapd-test",
                    f"own_ip_addr={nas_ip}",
                    # A RADIUS server hostapd never needs (it has its own EAP server); the
                    # DAS is part of its RADIUS client.
                    "auth_server_addr=127.0.0.1",
                    f"auth_server_port={free_udp_port()}",
                    "auth_server_shared_secret=unused",
                    f"radius_das_port={das_port}",
                    f"radius_das_client={our_ip} {SECRET}",
                    "",
                ]
            )
        )
        (tmp_path / "wpa.conf").write_text(
            "ap_scan=0\n"
            f"ctrl_interface={tmp_path / 'wpa-ctrl'}\n"
            "network={\n  key_mgmt=IEEE8021X\n  eap=MD5\n"
            f'  identity="{IDENTITY}"\n  password="secret-pass"\n  eapol_flags=0\n}}\n'
        )
        hostapd_log = (tmp_path / "hostapd.log").open("wb")
        processes.append(
            subprocess.Popen(
                ["ip", "netns", "exec", nas_ns, "hostapd", "-dd", str(tmp_path / "hostapd.conf")],
                stdout=hostapd_log,
                stderr=subprocess.STDOUT,
            )
        )
        time.sleep(0.5)
        processes.append(
            subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    sta_ns,
                    "wpa_supplicant",
                    "-D",
                    "wired",
                    "-i",
                    wire_peer,
                    "-c",
                    str(tmp_path / "wpa.conf"),
                ],
                stdout=(tmp_path / "wpa.log").open("wb"),
                stderr=subprocess.STDOUT,
            )
        )
        session_id = _wait_authorized(nas_ns, ctrl, tmp_path)
        yield SimpleNamespace(
            nas_ip=nas_ip,
            das_port=das_port,
            session_id=session_id,
            log=tmp_path / "hostapd.log",
            nas_ns=nas_ns,
            ctrl=ctrl,
        )
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
        _run("ip", "link", "del", up, check=False)
        for ns in (nas_ns, sta_ns):
            _run("ip", "netns", "del", ns, check=False)


def _sta(nas_ns: str, ctrl: Path) -> str:
    return _run(
        "ip",
        "netns",
        "exec",
        nas_ns,
        "hostapd_cli",
        "-p",
        str(ctrl),
        "sta",
        STATION_MAC,
        check=False,
    ).stdout


def _wait_authorized(nas_ns: str, ctrl: Path, tmp_path: Path) -> str:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        out = _sta(nas_ns, ctrl)
        if "AUTHORIZED" in out:
            match = re.search(r"dot1xAuthSessionId=([0-9A-Fa-f]+)", out)
            assert match, out
            return match.group(1)
        time.sleep(0.3)
    log = (tmp_path / "hostapd.log").read_text(errors="replace")[-3000:]
    wpa = (tmp_path / "wpa.log").read_text(errors="replace")[-2000:]
    pytest.fail(f"the wired supplicant never authenticated\n{log}\n---\n{wpa}")


def test_hostapd_nak_for_unknown_station_and_ack_for_a_real_session(
    hostapd_nas: SimpleNamespace,
    westgate: SimpleNamespace,
    session_factory: sessionmaker[Session],
    run_cli: RunCli,
) -> None:
    with transaction(session_factory) as session:
        nas_id = session.scalar(select(NasClient.id))
        session.execute(
            update(NasClient)
            .where(NasClient.id == nas_id)
            .values(address=hostapd_nas.nas_ip, coa_port=hostapd_nas.das_port)
        )
    # A session hostapd has never heard of: Disconnect-NAK, Error-Cause 503.
    open_session(
        session_factory,
        westgate.shared_ipad,
        nas_id=nas_id,
        nas_ip=hostapd_nas.nas_ip,
        acct_session_id="00000000DEADBEEF",
        username="nobody",
    )
    run_cli("device", "lost", westgate.shared_ipad, "--reported-by", "Ms Head")
    (nak,) = json.loads(run_cli("coa", "list", "--json", "--mac", westgate.shared_ipad).stdout)
    assert (nak["state"], nak["error_cause"]) == ("nak", 503), nak
    assert "Session-Context-Not-Found" in nak["detail"]

    # The laptop's real 802.1X session: the admin reports it lost, hostapd accepts.
    open_session(
        session_factory,
        STATION_MAC,
        nas_id=nas_id,
        nas_ip=hostapd_nas.nas_ip,
        acct_session_id=hostapd_nas.session_id,
        # hostapd's integrated EAP server keeps no identity in its EAPOL state machine (it
        # only does when a RADIUS server answers), so a User-Name could never match there
        # ("No matches remaining after User-Name check"): this session has none, like an
        # accounting record without User-Name. MAC and Acct-Session-Id identify it.
        username="",
    )
    run_cli("device", "lost", STATION_MAC, "--reported-by", "Ms Head")
    # Acknowledged by the time the command has exited, at the first attempt.
    (ack,) = json.loads(run_cli("coa", "list", "--json", "--mac", STATION_MAC).stdout)
    assert ack["state"] == "ack", ack
    assert ack["attempts"] == 1
    deadline = time.monotonic() + 5
    while "AUTHORIZED" in _sta(hostapd_nas.nas_ns, hostapd_nas.ctrl):
        assert time.monotonic() < deadline, "hostapd ACKed but kept the station authorised"
        time.sleep(0.2)
    assert "DAS" in hostapd_nas.log.read_text(errors="replace")
