"""Run the commands the deployment files name, as they name them: the same arguments, with
only the test's database, ports, state directory and interface put in (no Docker engine and no
systemd as PID 1 run here, so the tests play their part)."""

from __future__ import annotations

import secrets
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import SCHOOLGATE
from tests.helpers import free_tcp_port, free_udp_port
from tests.radius.conftest import status_ok

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
POLICY = DEPLOY / "policies" / "westgate.toml"


def substitute(argv: Sequence[str], values: Mapping[str, str]) -> list[str]:
    """`argv` with the value after each option in `values` replaced. Every option must be
    there: a command that lost one fails the test rather than silently using a default."""
    out = list(argv)
    for option, value in values.items():
        assert option in out, f"{option} not in the command {' '.join(argv)}"
        out[out.index(option) + 1] = value
    return out


@dataclass
class Ports:
    auth: int = field(default_factory=free_udp_port)
    acct: int = field(default_factory=free_udp_port)
    portal: int = field(default_factory=free_tcp_port)
    metrics: dict[str, int] = field(
        default_factory=lambda: {
            name: free_tcp_port() for name in ("radius", "coa", "portal", "monitor")
        }
    )


def with_ports(role: str, argv: Sequence[str], ports: Ports) -> list[str]:
    """The command of a role with the test's loopback ports in place of the real ones."""
    if role == "radius":
        return substitute(
            argv,
            {
                "--host": "127.0.0.1",
                "--auth-port": str(ports.auth),
                "--acct-port": str(ports.acct),
            },
        )
    if role == "portal":
        return substitute(argv, {"--host": "127.0.0.1", "--port": str(ports.portal)})
    return list(argv)


def run_once(argv: Sequence[str], env: Mapping[str, str], cwd: Path, timeout: float = 90) -> str:
    """A one-shot command; asserts it exits 0 and returns what it printed."""
    result = subprocess.run(
        [*SCHOOLGATE, *argv],
        env=dict(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, (
        f"schoolgate {' '.join(argv)} exited {result.returncode}\n{result.stdout}{result.stderr}"
    )
    return result.stdout


def run_all(jobs: Sequence[tuple[Sequence[str], Mapping[str, str]]], cwd: Path) -> None:
    """One-shot commands started together (each start-up costs a second or more), each of
    which must exit 0."""
    processes = [
        (
            argv,
            subprocess.Popen(
                [*SCHOOLGATE, *argv],
                env=dict(env),
                cwd=cwd,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            ),
        )
        for argv, env in jobs
    ]
    for argv, process in processes:
        output, _ = process.communicate(timeout=120)
        assert process.returncode == 0, (
            f"schoolgate {' '.join(argv)} exited {process.returncode}\n{output}"
        )


def seed_school(database_url: str, state_dir: Path) -> bytes:
    """What deploy/README.md has the technician do after `db upgrade` (`policy load`, `nas
    add`), done in-process to spare two start-ups: Westgate's policy and a controller on
    loopback. Writes through the audit chain `db upgrade` keyed. Returns the shared secret."""
    from service.audit import chain_for
    from service.config import load_settings
    from service.db import make_engine, make_session_factory, transaction
    from service.sites import add_nas, load_policy_file

    settings = load_settings(None, database_url=database_url, state_dir=state_dir)
    secret = secrets.token_urlsafe(24)
    engine = make_engine(database_url)
    try:
        factory = make_session_factory(engine, audit_chain=chain_for(settings))
        with transaction(factory) as session:
            load_policy_file(session, path=POLICY, actor="deploy-test")
            add_nas(
                session,
                site_code="westgate",
                name="test-controller",
                address="127.0.0.1",
                secret=secret,
                actor="deploy-test",
            )
    finally:
        engine.dispose()
    return secret.encode()


@dataclass
class Running:
    name: str
    process: subprocess.Popen[str]
    log: Path

    def output(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def alive(self) -> None:
        assert self.process.poll() is None, (
            f"{self.name} exited {self.process.returncode}:\n{self.output()}"
        )


@contextmanager
def started(
    commands: Mapping[str, Sequence[str]], env: Mapping[str, Mapping[str, str]], cwd: Path
) -> Iterator[dict[str, Running]]:
    """Start every long-running command; SIGTERM them all at the end and check each stopped
    cleanly (exit 0, or -15 where the server lets the signal end it)."""
    running: dict[str, Running] = {}
    try:
        for name, argv in commands.items():
            log = cwd / f"{name}.log"
            with log.open("w") as handle:
                process = subprocess.Popen(
                    [*SCHOOLGATE, *argv],
                    env=dict(env[name]),
                    cwd=cwd,
                    stdout=handle,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
            running[name] = Running(name, process, log)
        yield running
    finally:
        for item in running.values():
            if item.process.poll() is None:
                item.process.send_signal(signal.SIGTERM)
        for item in running.values():
            try:
                item.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                item.process.kill()
                item.process.wait()


def http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except OSError:
        return None


def wait_until(check: object, what: str, running: Mapping[str, Running], timeout: float = 120):
    """Poll `check()` until it is true; fail with every log if it never is."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for item in running.values():
            item.alive()
        if check():  # type: ignore[operator]
            return
        time.sleep(0.2)
    logs = "\n".join(f"--- {n}\n{r.output()}" for n, r in running.items())
    raise AssertionError(f"{what}: not within {timeout} s\n{logs}")


def has_metrics() -> bool:
    """Whether the servers take --metrics-port yet (the metrics work of the same issue):
    then the health checks on the metrics ports are checked too."""
    return "--metrics-port" in (REPO / "service" / "cli" / "radius.py").read_text()


def check_servers(
    running: Mapping[str, Running], ports: Ports, nas_secret: bytes, metrics: bool
) -> None:
    """RADIUS answers Status-Server on both ports, the portal its health endpoints, the CoA
    dispatcher stays up; with metrics, each one's /healthz on its metrics port."""
    wait_until(
        lambda: status_ok(ports.auth, nas_secret) and status_ok(ports.acct, nas_secret),
        "RADIUS Status-Server answer",
        running,
    )
    base = f"http://127.0.0.1:{ports.portal}"
    wait_until(lambda: http_status(f"{base}/healthz") == 200, "portal /healthz", running)
    assert http_status(f"{base}/readyz") == 200
    if metrics:
        for role in ("radius", "coa", "portal"):
            url = f"http://127.0.0.1:{ports.metrics[role]}/healthz"
            wait_until(lambda url=url: http_status(url) == 200, f"{role} metrics /healthz", running)
    time.sleep(1.0)  # the dispatcher has had its first rounds against the database
    for item in running.values():
        item.alive()
