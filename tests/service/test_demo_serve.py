"""The README's first command, end to end: `schoolgate demo --serve` on the SQLite default.

A new user's path (issues 2, 3 and 5): RADIUS answers the unregistered device with the
registration VLAN, the OS probe is redirected to the portal, the visitor signs the AUA there,
RADIUS then answers the internet VLAN, the signature is exported, and Ctrl-C stops it all.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.demo import DEMO_VISITOR_CODE
from tests.conftest import SCHOOLGATE
from tests.helpers import free_tcp_port, free_udp_port, wait_for_tcp

BROWSER_MAC = "02:00:00:00:99:99"  # the demo's unregistered device, at 127.0.0.1


def radclient_vlan(port: int, mac: str) -> str | None:
    """Ask as a controller would, with FreeRADIUS's radclient; the VLAN, or None on reject."""
    request = (
        f'User-Name = "{mac.replace(":", "")}"\n'
        f'Calling-Station-Id = "{mac.replace(":", "-").upper()}"\n'
        "Service-Type = Call-Check\nMessage-Authenticator = 0x00\n"
    )
    result = subprocess.run(
        ["radclient", "-x", "-r", "2", "-t", "2", f"127.0.0.1:{port}", "auth", "testing123"],
        input=request,
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    found = re.search(r'Tunnel-Private-Group-Id(?::0)? = "(\d+)"', result.stdout)
    if "Access-Accept" in result.stdout and found:
        return found.group(1)
    assert "Access-Reject" in result.stdout, result.stdout + result.stderr
    return None


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], int, int, Path]]:
    auth, acct, portal = free_udp_port(), free_udp_port(), free_tcp_port()
    while acct == auth:
        acct = free_udp_port()
    log_path = tmp_path / "demo.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCHOOLGATE_")}
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [
                *SCHOOLGATE,
                "demo",
                "--serve",
                "--auth-port",
                str(auth),
                "--acct-port",
                str(acct),
                "--portal-port",
                str(portal),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=tmp_path,
            env={**env, "COLUMNS": "200"},
        )
    try:
        wait_for_tcp(portal, timeout=60)
        yield process, auth, portal, log_path
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()  # the RADIUS child gets SIGTERM from the kernel (PDEATHSIG)
                process.wait()


@pytest.mark.freeradius
@pytest.mark.slow
def test_demo_serve_walks_a_visitor_from_walled_garden_to_internet(demo, tmp_path) -> None:
    if shutil.which("radclient") is None:
        pytest.skip("radclient not installed (Debian package freeradius-utils)")
    process, auth_port, portal_port, log_path = demo
    assert (tmp_path / "schoolgate.db").exists()  # the embedded SQLite default, in the cwd
    assert radclient_vlan(auth_port, "02:00:00:00:10:01") == "10"  # the school laptop
    assert radclient_vlan(auth_port, "02:00:00:00:40:01") is None  # a pupil's phone
    assert radclient_vlan(auth_port, BROWSER_MAC) == "99"  # unknown: the walled garden

    base = f"http://127.0.0.1:{portal_port}"
    with httpx.Client(base_url=base, timeout=10) as http:
        probe = http.get("/generate_204", headers={"Host": "connectivitycheck.gstatic.com"})
        assert probe.status_code == 302
        assert probe.headers["location"].startswith(f"{base}/")
        form = http.get("/visitor")
        assert form.status_code == 200, form.text
        fields = dict(re.findall(r'type="hidden" name="([^"]+)" value="([^"]*)"', form.text))
        assert {"csrf", "version"} <= fields.keys(), form.text
        fields |= {
            "name": "Alex Guest",
            "organisation": "Acme Supplies",
            "visiting": "the school office",
            "agree": "yes",
            "typed_name": "Alex Guest",
            "code": DEMO_VISITOR_CODE,  # the demo's code for today (issue 12)
        }
        signed = http.post("/visitor", data=fields, follow_redirects=True)
        assert signed.status_code == 200, signed.text
        assert "internet" in signed.text
        assert http.get("/generate_204").status_code == 204  # the assistant closes

    # The snapshot follows the change within 2 s (issue 3); allow a few polls.
    for _ in range(20):
        if radclient_vlan(auth_port, BROWSER_MAC) == "30":
            break
        time.sleep(0.25)
    assert radclient_vlan(auth_port, BROWSER_MAC) == "30"

    exported = subprocess.run(
        [*SCHOOLGATE, "export", "signatures", "--format", "jsonl"],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if not k.startswith("SCHOOLGATE_")},
    ).stdout
    assert "Alex Guest" in exported
    assert BROWSER_MAC in exported

    process.send_signal(signal.SIGINT)  # Ctrl-C stops the portal and the RADIUS child
    assert process.wait(timeout=30) in (0, 130), log_path.read_text()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", auth_port))  # the RADIUS child is gone
    assert "Traceback" not in log_path.read_text()
