"""`schoolgate serve`: RADIUS (with its CoA dispatcher) and the captive portal on one machine.

The RADIUS server runs as a child process (`radius serve`, so its workers keep their own
event loops and the portal's requests never delay an answer); the portal runs in this one.
Ctrl-C or SIGTERM stops both.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import typer
from pydantic import SecretStr

from service.cli.common import console, err_console, fail, get_state, metrics_port
from service.config import Settings
from service.secrets_store import check_serving_keys

READY_SECONDS = 20.0


@dataclass(frozen=True)
class ServeAddresses:
    host: str = "0.0.0.0"  # noqa: S104 - NAS clients and the walled garden reach it
    auth_port: int = 1812
    acct_port: int = 1813
    portal_port: int = 8080
    workers: int = 1
    # RADIUS's metrics port (its CoA dispatcher's outcomes included); the portal's is this
    # one + 2, as in the documented defaults (9812 radius, 9814 portal). 0: none.
    metrics_port: int = 0


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)


def serve(
    ctx: typer.Context,
    host: str = typer.Option("0.0.0.0", "--host", help="Address to listen on."),  # noqa: S104
    auth_port: int = typer.Option(1812, "--auth-port", help="RADIUS Access-Request port."),
    acct_port: int = typer.Option(1813, "--acct-port", help="RADIUS Accounting-Request port."),
    portal_port: int = typer.Option(8080, "--portal-port", help="Captive portal HTTP port."),
    workers: int = typer.Option(1, "--workers", help="RADIUS worker processes."),
    metrics_port_option: int | None = typer.Option(
        None,
        "--metrics-port",
        help="RADIUS's metrics port (/metrics, /healthz, /readyz); the portal's is this + 2. "
        "0, the default, serves none. Env: SCHOOLGATE_METRICS_PORT.",
        show_default=False,
    ),
) -> None:
    """Run the RADIUS authorizer, its CoA dispatcher and the captive portal until Ctrl-C."""
    state = get_state(ctx)
    port = metrics_port(state, metrics_port_option)
    if port > 65533:
        fail(f"--metrics-port {port}: the portal's would be {port + 2}, not a TCP port")
    serve_all(
        state.settings,
        ServeAddresses(host, auth_port, acct_port, portal_port, workers, port),
    )


def settings_env(settings: Settings) -> dict[str, str]:
    """The settings as `SCHOOLGATE_*` variables, so a child process sees exactly these."""
    env: dict[str, str] = {}
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if value is None:
            continue  # unset: the child's default is None too
        if isinstance(value, SecretStr):
            text = value.get_secret_value()
        elif isinstance(value, dict | list):
            text = json.dumps(value)
        else:
            text = str(value)
        env[f"SCHOOLGATE_{name.upper()}"] = text
    return env


def refuse_weak_keys(settings: Settings, host: str) -> None:
    """One line and exit 1 when a key is missing or weak and `host` is not loopback; on
    loopback, one warning line per weak key (the demo and the tests serve there)."""
    for warning in check_serving_keys(settings, host):
        err_console.print(warning, markup=False, highlight=False, soft_wrap=True)


def port_in_use(host: str, port: int, kind: socket.SocketKind = socket.SOCK_DGRAM) -> bool:
    with socket.socket(socket.AF_INET, kind) as sock:
        if kind == socket.SOCK_STREAM:  # as uvicorn does: a closed portal's TIME_WAIT is no clash
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


def start_radius(settings: Settings, where: ServeAddresses) -> subprocess.Popen[bytes]:
    """`radius serve` as a child; returns once both ports are bound, or fails in one line."""
    for port in (where.auth_port, where.acct_port):
        if port_in_use(where.host, port):
            fail(f"UDP port {port} on {where.host} is in use (is another RADIUS server running?)")
    command = [
        sys.executable,
        "-m",
        "service",
        "radius",
        "serve",
        "--host",
        where.host,
        "--auth-port",
        str(where.auth_port),
        "--acct-port",
        str(where.acct_port),
        "--workers",
        str(where.workers),
        "--metrics-port",
        str(where.metrics_port),
    ]
    # preexec_fn only calls prctl; the portal and its threads start after this.
    child = subprocess.Popen(
        command,
        env={**os.environ, **settings_env(settings)},
        preexec_fn=_die_with_parent,  # noqa: PLW1509
    )
    deadline = time.monotonic() + READY_SECONDS
    while time.monotonic() < deadline:
        if child.poll() is not None:
            fail(f"the RADIUS server exited with status {child.returncode} (see above)")
        if all(port_in_use(where.host, p) for p in (where.auth_port, where.acct_port)):
            return child
        time.sleep(0.1)
    stop_child(child)
    return fail(f"the RADIUS server did not start within {READY_SECONDS:.0f} s")


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it if we die, even by SIGKILL (Linux prctl)."""
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def stop_child(child: subprocess.Popen[bytes]) -> None:
    if child.poll() is None:
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(timeout=15)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def serve_all(
    settings: Settings,
    where: ServeAddresses,
    *,
    on_ready: Callable[[], None] | None = None,
) -> None:
    """Start RADIUS, call `on_ready`, then serve the portal in the foreground until Ctrl-C."""
    from portal.serve import run_portal, with_portal_url
    from radius.coa.sender import sender_for
    from service.audit import chain_for
    from service.db import make_engine, make_session_factory

    if not 0 < where.portal_port < 65536:
        fail(f"--portal-port {where.portal_port} is not a TCP port")
    refuse_weak_keys(settings, where.host)
    if port_in_use(where.host, where.portal_port, socket.SOCK_STREAM):
        fail(f"TCP port {where.portal_port} on {where.host} is in use (is a portal running?)")
    settings = with_portal_url(settings, host=where.host, port=where.portal_port)
    radius = start_radius(settings, where)
    settings = settings.model_copy(
        update={"metrics_port": where.metrics_port + 2 if where.metrics_port else 0}
    )
    engine = make_engine(settings.database_url)
    try:
        if on_ready is not None:
            on_ready()
        console.print(
            f"RADIUS on {where.host}:{where.auth_port}/{where.acct_port}, CoA dispatcher on, "
            f"portal on {where.host}:{where.portal_port}; the controller must redirect captive "
            f"clients to {settings.portal_url} (Ctrl-C stops all)",
            highlight=False,
        )
        run_portal(
            settings,
            host=where.host,
            port=where.portal_port,
            session_factory=make_session_factory(engine, audit_chain=chain_for(settings)),
            coa_sender=sender_for(settings),
        )
    finally:
        stop_child(radius)
        engine.dispose()
