"""Run the portal with uvicorn (for `portal serve` and the core's all-in-one `serve`)."""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

from portal.app import create_app
from service.config import Settings
from service.db import SessionFactory
from service.enforcement import CoaSender


def run_portal(
    settings: Settings,
    *,
    host: str = "0.0.0.0",  # noqa: S104 - the walled garden reaches it from client VLANs
    port: int = 8080,
    trusted_proxy: str | None = None,
    session_factory: SessionFactory | None = None,
    coa_sender: CoaSender | None = None,
) -> None:
    """Blocks until SIGINT/SIGTERM. `trusted_proxy`: the one address whose X-Forwarded-For is
    believed (a TLS reverse proxy on the portal host). `coa_sender`: the composition root's
    choice (`radius.coa.sender.sender_for(settings)`); the null sender when not given."""
    import uvicorn

    from portal.metrics import PortalMetrics
    from service.logs import configure_logging
    from service.metrics import bind_metrics

    json_logs = settings.log_format == "json"
    if json_logs:  # uvicorn's loggers then propagate to the root's JSON handler
        configure_logging(log_format="json")
    metrics = None
    if settings.metrics_port:
        metrics = PortalMetrics()
        # Bound now: a port in use is one line before the portal starts.
        metrics_sock = bind_metrics(settings.metrics_host, settings.metrics_port)
    app = create_app(
        settings, session_factory=session_factory, coa_sender=coa_sender, metrics=metrics
    )
    if metrics is not None:
        _start_metrics(metrics, metrics_sock, app.state.portal.session_factory)
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level="info",
        log_config=None if json_logs else uvicorn.config.LOGGING_CONFIG,
        proxy_headers=trusted_proxy is not None,
        forwarded_allow_ips=trusted_proxy,
    )


def _start_metrics(metrics: Any, sock: socket.socket, session_factory: SessionFactory) -> None:
    """The metrics port on a thread: ready while the database answers `SELECT 1`."""
    import logging

    from service.health import database_problem
    from service.metrics import MetricsServer

    def ready() -> str | None:
        with session_factory() as session:
            return database_problem(session=session)

    server = MetricsServer(sock, metrics.registry, ready).start()
    host = sock.getsockname()[0]
    logging.getLogger("schoolgate.portal").info(
        "metrics on http://%s:%d/metrics (/healthz, /readyz)", host, server.port
    )


def _primary_address(family: socket.AddressFamily) -> str | None:
    """The address this machine would send from to reach the outside (no packet is sent:
    a UDP socket only picks its route on connect)."""
    target = "2001:db8::1" if family == socket.AF_INET6 else "192.0.2.1"
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.connect((target, 9))
            address = str(sock.getsockname()[0])
    except OSError:
        return None
    return None if ipaddress.ip_address(address).is_unspecified else address


def portal_url_for(settings: Settings, *, host: str, port: int) -> str:
    """The URL the portal redirects to and the controller must send captive clients to:
    `SCHOOLGATE_PORTAL_URL` when set, else how this server was started (the address it
    binds; for a wildcard, the machine's primary address, else its hostname)."""
    if "portal_url" in settings.model_fields_set:
        url = settings.portal_url
        return url if url.endswith("/") else url + "/"
    name = host
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is not None and address.is_unspecified:
        family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
        name = _primary_address(family) or socket.gethostname() or "127.0.0.1"
        try:
            address = ipaddress.ip_address(name)
        except ValueError:
            address = None
    if address is not None and address.version == 6:
        name = f"[{name}]"
    return f"http://{name}/" if port == 80 else f"http://{name}:{port}/"


def with_portal_url(settings: Settings, *, host: str, port: int) -> Settings:
    """`settings` with the portal URL `portal_url_for` gives (unchanged when it was set)."""
    url = portal_url_for(settings, host=host, port=port)
    if "portal_url" in settings.model_fields_set:
        return settings
    return settings.model_copy(update={"portal_url": url})
