"""The internal metrics port every long-running command opens with `--metrics-port`
(`SCHOOLGATE_METRICS_PORT`; 0, the default, opens nothing): `/metrics` in Prometheus's text
format, `/healthz` (the process answers) and `/readyz` (200, or 503 with one line saying what
is not ready: the database, a stale snapshot, a stopped capture).

Standard library HTTP and `prometheus_client` only: this is a probe port on loopback or an
internal network, not a web application. Each server hands in its own registry and readiness
question; the values are read when scraped (collectors), never pushed from a hot path.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from service.errors import Conflict

log = logging.getLogger("schoolgate.metrics")

# None: ready; else the one line `/readyz` answers with its 503.
Readiness = Callable[[], str | None]


def always_ready() -> str | None:
    return None


class _Handler(BaseHTTPRequestHandler):
    server: _MetricsHttpServer

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            try:
                body = generate_latest(self.server.registry)
            except Exception:  # a collector that fails must not kill the probe port
                log.exception("collecting metrics failed")
                self._answer(500, b"collecting metrics failed\n")
                return
            self._answer(200, body, CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            self._answer(200, b"ok\n")
        elif path == "/readyz":
            try:
                problem = self.server.ready()
            except Exception as exc:  # noqa: BLE001 - not ready, and why
                problem = f"readiness check failed: {exc}"
            if problem is None:
                self._answer(200, b"ready\n")
            else:
                self._answer(503, f"not ready: {problem}\n".encode())
        else:
            self._answer(404, b"not found: /metrics, /healthz, /readyz\n")

    def _answer(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes every 15 s would drown the service's own log: not logged."""


class _MetricsHttpServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, sock: socket.socket, registry: CollectorRegistry, ready: Readiness) -> None:
        self.registry = registry
        self.ready = ready
        family = sock.family
        self.address_family = family
        super().__init__(sock.getsockname()[:2], _Handler, bind_and_activate=False)
        self.socket.close()
        self.socket = sock
        self.server_address = sock.getsockname()[:2]


def bind_metrics(host: str, port: int) -> socket.socket:
    """The listening socket of the metrics port, bound now (so a port in use is one clear
    `Conflict` before anything starts); serve it with `MetricsServer`."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise Conflict(
            f"cannot open the metrics port {host}:{port}: {exc.strerror or exc} "
            "(set --metrics-port / SCHOOLGATE_METRICS_PORT to a free port, or 0 for none)"
        ) from exc
    sock.listen(16)
    return sock


class MetricsServer:
    """`/metrics`, `/healthz` and `/readyz` on a bound socket, served by a daemon thread
    (`start`) or by the calling thread (`serve_forever`, for a process of its own)."""

    def __init__(
        self, sock: socket.socket, registry: CollectorRegistry, ready: Readiness = always_ready
    ) -> None:
        self._http = _MetricsHttpServer(sock, registry, ready)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._http.server_address[1])

    def start(self) -> MetricsServer:
        self._thread = threading.Thread(
            target=self._http.serve_forever, name="metrics", daemon=True
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._http.serve_forever()

    def stop(self) -> None:
        self._http.shutdown()
        self._http.server_close()


def start_metrics(
    host: str, port: int, registry: CollectorRegistry, ready: Readiness = always_ready
) -> MetricsServer | None:
    """The metrics port on a thread of this process, or None when `port` is 0 (off)."""
    if not port:
        return None
    server = MetricsServer(bind_metrics(host, port), registry, ready).start()
    log.info("metrics on http://%s:%d/metrics (/healthz, /readyz)", host, server.port)
    return server


# --- values handed from forked processes to the one that serves the port -------------------


def report_dir() -> Path:
    """A fresh directory for the per-process reports (in /dev/shm when there is one: they are
    rewritten every second and need no disk)."""
    shm = Path("/dev/shm")  # noqa: S108 - a private mkdtemp directory inside it
    base = shm if shm.is_dir() and os.access(shm, os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix="schoolgate-metrics-", dir=base))


def write_report(directory: Path, name: str, values: dict[str, Any]) -> None:
    """Replace `directory/name.json` atomically (a scrape never reads half a file)."""
    values = {**values, "written_at": time.time()}
    target = directory / f"{name}.json"
    temporary = directory / f".{name}.{os.getpid()}.tmp"
    temporary.write_text(json.dumps(values, separators=(",", ":")))
    temporary.replace(target)


def read_reports(directory: Path) -> dict[str, dict[str, Any]]:
    """Every report in `directory`, by name; a file being replaced or unreadable is skipped."""
    reports: dict[str, dict[str, Any]] = {}
    for path in sorted(directory.glob("*.json")):
        try:
            reports[path.stem] = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
    return reports


# --- the CoA dispatcher's outcomes (`coa run`, and the dispatcher process of `radius serve`) --


def coa_transitions() -> dict[str, int]:
    """What this process's dispatcher did, by the state each request reached."""
    from service.enforcement.records import TRANSITIONS

    return dict(TRANSITIONS)


class CoaCollector:
    """`schoolgate_coa_requests_total{state}`: the outcomes this process recorded, by the state
    a request moved to (ack, nak, timeout, fallback, failed...; the claim that sends it is a
    conditional UPDATE, not counted), read from `transitions()` when scraped."""

    def __init__(self, transitions: Callable[[], dict[str, int]] = coa_transitions) -> None:
        self._transitions = transitions

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily

        family = CounterMetricFamily(
            "schoolgate_coa_requests",
            "CoA / Disconnect outcomes this process recorded, by the state reached",
            labels=["state"],
        )
        for state, count in sorted(self._transitions().items()):
            family.add_metric([state], count)
        yield family
