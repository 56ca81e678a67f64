"""Small helpers the tests share: free ports, waiting for a server."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_tcp(port: int, host: str = "127.0.0.1", timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


@contextlib.contextmanager
def portal_server(
    db_url: str, workdir: Path, env: dict[str, str] | None = None, *, clean: bool = False
) -> Iterator[str]:
    """`schoolgate portal serve` on a free loopback port against `db_url`, logging to
    `workdir`; yields its base URL (ending in "/") and stops it afterwards. `clean`: start
    from an environment without the caller's SCHOOLGATE_* variables."""
    from tests.conftest import SCHOOLGATE

    port = free_tcp_port()
    url = f"http://127.0.0.1:{port}/"
    base = {k: v for k, v in os.environ.items() if not (clean and k.startswith("SCHOOLGATE_"))}
    full_env = {
        **base,
        "SCHOOLGATE_DATABASE_URL": db_url,
        "SCHOOLGATE_PORTAL_URL": url,
        "SCHOOLGATE_SECRET_KEY": "portal-server-test-secret-0123456789abcdef",
        **(env or {}),
    }
    with (workdir / f"portal-{port}.log").open("w") as log:
        process = subprocess.Popen(
            [*SCHOOLGATE, "portal", "serve", "--host", "127.0.0.1", "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=workdir,
        )
        try:
            wait_for_tcp(port, timeout=60)
            yield url
        finally:
            process.terminate()
            process.wait(timeout=15)
