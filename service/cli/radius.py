"""`radius serve`: the RADIUS authorizer (MAB, PAP, accounting, Status-Server)."""

from __future__ import annotations

import typer

from service.cli.common import MetricsPortOption, fail, get_state, metrics_port, setup_logging

radius_app = typer.Typer(help="The RADIUS authorizer for Wi-Fi controllers and switches.")


def register(app: typer.Typer) -> None:
    app.add_typer(radius_app, name="radius", no_args_is_help=True)


@radius_app.command("serve")
def radius_serve(
    ctx: typer.Context,
    host: str = typer.Option("0.0.0.0", "--host", help="Address to listen on."),  # noqa: S104
    auth_port: int = typer.Option(1812, "--auth-port", help="Access-Request port."),
    acct_port: int = typer.Option(1813, "--acct-port", help="Accounting-Request port."),
    workers: int = typer.Option(
        1,
        "--workers",
        help="Worker processes sharing the ports (SO_REUSEPORT); one that dies is restarted.",
    ),
    coa: bool = typer.Option(
        True,
        "--coa/--no-coa",
        help="Also run the CoA dispatcher (a process of its own) that sends queued requests.",
    ),
    log_level: str = typer.Option(
        "info", "--log-level", help="debug logs every dropped packet and why."
    ),
    metrics_port_option: int | None = MetricsPortOption,
) -> None:
    """Answer NAS clients registered with `nas add` until SIGTERM or Ctrl-C."""
    from radius.server import ServeOptions, serve

    state = get_state(ctx)
    metrics = metrics_port(state, metrics_port_option)
    if workers < 1 or workers > 64:
        fail("--workers must be between 1 and 64")
    for name, port in (("--auth-port", auth_port), ("--acct-port", acct_port)):
        if not 0 < port < 65536:
            fail(f"{name} {port} is not a UDP port")
    if auth_port == acct_port:
        fail("--auth-port and --acct-port must differ")
    setup_logging(state, log_level)
    options = ServeOptions(
        host=host,
        auth_port=auth_port,
        acct_port=acct_port,
        workers=workers,
        coa_dispatcher=coa,
        metrics_host=state.settings.metrics_host,
        metrics_port=metrics,
    )
    try:
        code = serve(state.settings, options)
    except OSError as exc:
        fail(f"cannot listen on {host} ports {auth_port}/{acct_port}: {exc.strerror or exc}")
    raise typer.Exit(code)
