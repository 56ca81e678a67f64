"""Issue 12 at the command line: `device approve` warns (and needs `--anyway`) when the
device's class gets no network at its site, and `portal serve` / `serve` derive the portal
URL from how they were started and say which URL the controller must redirect to."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from types import SimpleNamespace

import httpx

from tests.conftest import SCHOOLGATE, RunCli
from tests.helpers import free_tcp_port, wait_for_tcp

STAFF_PHONE = "3c:22:fb:00:13:01"


def test_device_approve_needs_anyway_when_the_class_gets_no_network(
    run_cli: RunCli, westgate: SimpleNamespace
) -> None:
    run_cli(
        "device", "add", STAFF_PHONE, "--site", "westgate", "--class", "staff_owned",
        "--owner", "jsmith",
    )  # fmt: skip
    refused = run_cli("device", "approve", STAFF_PHONE, check=False)
    assert refused.returncode == 1
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1, refused.stderr
    assert lines[0].startswith("error: ")
    assert "no network access" in lines[0]
    assert "do not join the school network at Westgate" in lines[0]  # the school's own words
    assert lines[0].endswith("; --anyway approves it all the same")
    assert "Traceback" not in refused.stderr
    shown = json.loads(run_cli("device", "show", STAFF_PHONE, "--json").stdout)
    assert shown["status"] == "pending"  # nothing half-written
    approved = run_cli("device", "approve", STAFF_PHONE, "--anyway")
    assert f"approved {STAFF_PHONE}" in approved.stdout
    assert json.loads(run_cli("device", "show", STAFF_PHONE, "--json").stdout)["status"] == (
        "active"
    )


def test_device_approve_of_a_class_with_access_needs_no_anyway(
    run_cli: RunCli, westgate: SimpleNamespace
) -> None:
    run_cli("device", "add", "3c:22:fb:00:13:02", "--site", "westgate", "--class", "visitor_owned")
    run_cli("device", "revoke", "3c:22:fb:00:13:02", "--reason", "checking")
    assert "approved" in run_cli("device", "approve", "3c:22:fb:00:13:02").stdout


def _serve_line_and_redirect(
    db_url: str, tmp_path: Path, env_extra: dict[str, str]
) -> tuple[str, str]:
    """Start `portal serve` on loopback; return its start-up line and where a probe redirects."""
    port = free_tcp_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCHOOLGATE_")}
    env |= {
        "SCHOOLGATE_DATABASE_URL": db_url,
        "SCHOOLGATE_SECRET_KEY": "serve-url-test-" + "k" * 40,
        "COLUMNS": "200",
        **env_extra,
    }
    log_path = tmp_path / f"portal-{port}.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [*SCHOOLGATE, "portal", "serve", "--host", "127.0.0.1", "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            env=env,
        )
    try:
        wait_for_tcp(port, timeout=60)
        probe = httpx.get(
            f"http://127.0.0.1:{port}/generate_204",
            headers={"Host": "connectivitycheck.gstatic.com"},
            timeout=10,
        )
        assert probe.status_code == 302
        location = probe.headers["location"]
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    lines = log_path.read_text().splitlines()
    first = next(line for line in lines if line.startswith("portal listening"))
    return first.replace(str(port), "PORT"), location.replace(str(port), "PORT")


def test_portal_serve_derives_its_url_from_how_it_was_started(
    westgate: SimpleNamespace, tmp_path: Path
) -> None:
    line, location = _serve_line_and_redirect(westgate.db_url, tmp_path, {})
    assert location == "http://127.0.0.1:PORT/"  # not portal.schoolgate.local
    assert "the controller must redirect captive clients to http://127.0.0.1:PORT/" in line


def test_portal_serve_keeps_a_configured_url(westgate: SimpleNamespace, tmp_path: Path) -> None:
    url = "https://wifi.westgate.example/"
    line, location = _serve_line_and_redirect(
        westgate.db_url, tmp_path, {"SCHOOLGATE_PORTAL_URL": url}
    )
    assert location == url
    assert f"the controller must redirect captive clients to {url}" in line
