"""What the long-running commands share for being observed: the `--metrics-port` option
(`SCHOOLGATE_METRICS_PORT`, 0 = off) and the log format (`SCHOOLGATE_LOG_FORMAT`,
`schoolgate --log-format json`)."""

from __future__ import annotations

import logging

import typer

from service.cli.common import CliState, fail
from service.logs import configure_logging

MetricsPortOption = typer.Option(
    None,
    "--metrics-port",
    help="Serve /metrics, /healthz and /readyz on this TCP port of SCHOOLGATE_METRICS_HOST "
    "(default 127.0.0.1); 0, the default, serves none. Env: SCHOOLGATE_METRICS_PORT.",
    show_default=False,
)


def metrics_port(state: CliState, option: int | None) -> int:
    """The option when given, else the settings' (`SCHOOLGATE_METRICS_PORT`)."""
    port = state.settings.metrics_port if option is None else option
    if not 0 <= port < 65536:
        fail(f"--metrics-port {port} is not a TCP port (0 for none)")
    return port


def setup_logging(state: CliState, level_name: str = "info") -> int:
    """Configure the root logger in the settings' format; returns the level."""
    level = getattr(logging, level_name.upper(), None)
    if not isinstance(level, int):
        fail(f"unknown log level {level_name!r} (debug, info, warning, error)")
    configure_logging(level, log_format=state.settings.log_format)
    return level
