"""`coa list`, `coa run` and `device disconnect MAC`; registers the after-commit hook that
sends queued CoA / Disconnect requests as soon as a command commits."""

from __future__ import annotations

import asyncio
import signal

import typer

from service import enforcement
from service.cli.common import (
    CliState,
    JsonOption,
    MetricsPortOption,
    WideOption,
    console,
    fail,
    get_state,
    metrics_port,
    print_json,
    print_rows,
    setup_logging,
)
from service.cli.device import device_app
from service.errors import SchoolgateError

coa_app = typer.Typer(help="CoA / Disconnect requests sent to the NAS (RFC 5176).")

COLUMNS = [
    "id",
    "created_at",
    "mac",
    "nas_ip",
    "kind",
    "state",
    "attempts",
    "error_cause",
    "change",
    "reason",
    "detail",
]
# What `coa list` leaves out first at 80 columns (--wide shows all).
COA_DROP = ["detail", "change", "error_cause", "attempts", "nas_ip", "created_at", "kind"]


FLUSH_DEADLINE_SECONDS = 2.0


def flush_queued(state: CliState) -> None:
    """After-commit hook: send what the command queued (up to ~2 s), then return; the 'within
    a second' promise holds even when no RADIUS server runs its dispatcher."""
    if not state.last_info.get(enforcement.QUEUED_FLAG):
        return  # nothing queued: skip choosing a sender (and loading the RADIUS code)
    enforcement.send_queued(
        session_factory=state.session_factory(),
        settings=state.settings,
        sender=state.coa_sender,
        deadline=FLUSH_DEADLINE_SECONDS,
    )


def register(app: typer.Typer) -> None:
    app.add_typer(coa_app, name="coa")


@coa_app.command("list")
def coa_list(
    ctx: typer.Context,
    mac: str | None = typer.Option(None, "--mac", help="Only this device."),
    state_filter: str | None = typer.Option(
        None, "--state", help="queued, sent, ack, nak, timeout, fallback, failed"
    ),
    limit: int = typer.Option(50, "--limit", min=1),
    history: bool = typer.Option(False, "--history", help="Show every transition."),
    wide: bool = WideOption,
    as_json: bool = JsonOption,
) -> None:
    """The latest requests and their state: why a device did (not) move."""
    state = get_state(ctx)
    try:
        with state.reading() as session:
            rows = [
                enforcement.request_dict(r)
                for r in enforcement.list_requests(
                    session=session, mac=mac, state=state_filter, limit=limit
                )
            ]
    except SchoolgateError as exc:
        fail(str(exc))
    if history and not as_json:
        for row in rows:
            console.print(f"#{row['id']} {row['mac']} -> {row['nas_ip']}", highlight=False)
            for step in row["history"]:
                console.print(
                    f"  {step['at']}  {step['state']:<8} {step['detail']}", highlight=False
                )
        return
    print_rows(rows, COLUMNS, as_json, empty="no CoA requests", wide=wide, drop_order=COA_DROP)


@coa_app.command("status")
def coa_status(ctx: typer.Context, as_json: bool = JsonOption) -> None:
    """Which dispatcher sends (one per database holds the dispatcher lock; the others wait)."""
    state = get_state(ctx)
    try:
        with state.reading() as session:
            active = enforcement.active_dispatcher(session=session)
    except SchoolgateError as exc:
        fail(str(exc))
    if as_json:
        print_json({"active": None if active is None else active.as_dict()})
        return
    if active is None:
        console.print("no CoA dispatcher is active: queued requests wait", highlight=False)
        return
    standbys = "" if active.standbys is None else f"; {active.standbys} standby"
    console.print(f"active CoA dispatcher: {active.describe()}{standbys}", highlight=False)


@coa_app.command("run")
def coa_run(
    ctx: typer.Context,
    once: bool = typer.Option(
        False, "--once", help="Send what is pending (retries included), then exit."
    ),
    limit: float = typer.Option(60.0, "--limit", help="With --once: give up after seconds."),
    metrics_port_option: int | None = MetricsPortOption,
) -> None:
    """Run the dispatcher on its own (the RADIUS server also runs it). Of all the dispatchers
    of one database, one sends at a time; the others are standbys (`coa status`)."""
    from radius.coa import UdpCoaSender  # sends even when CoA is off for the other commands

    state = get_state(ctx)
    port = metrics_port(state, metrics_port_option)
    setup_logging(state)
    factory = state.session_factory()
    sender = UdpCoaSender()
    if once:
        count = enforcement.drain(
            session_factory=factory, settings=state.settings, sender=sender, limit=limit
        )
        console.print(f"worked {count} request attempt(s)", highlight=False)
        return

    if port:
        _serve_coa_metrics(state, port)

    async def forever() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await enforcement.run_dispatcher(
            session_factory=factory, settings=state.settings, sender=sender, stop_event=stop
        )

    asyncio.run(forever())


def _serve_coa_metrics(state: CliState, port: int) -> None:
    """`coa run`'s metrics port, on a thread: its outcomes, ready while the database answers."""
    from prometheus_client import CollectorRegistry

    from service.health import database_problem
    from service.metrics import CoaCollector, start_metrics

    factory = state.session_factory()

    def ready() -> str | None:
        with factory() as session:
            return database_problem(session=session)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(CoaCollector())
    try:
        start_metrics(state.settings.metrics_host, port, registry, ready)
    except SchoolgateError as exc:
        fail(str(exc))


@device_app.command("disconnect")
def device_disconnect(
    ctx: typer.Context,
    mac: str = typer.Argument(..., help="MAC address, any common format."),
    reason: str = typer.Option("disconnected by hand", "--reason"),
) -> None:
    """Send a Disconnect-Request for every open session of the device now."""
    state = get_state(ctx)
    try:
        with state.transaction() as session:
            rows = enforcement.disconnect_device(
                session=session, mac=mac, reason=reason, actor=state.actor
            )
            ids = [r.id for r in rows]
    except SchoolgateError as exc:
        fail(str(exc))
    if not ids:
        fail(f"no open session for {mac}: nothing to disconnect")
    with state.reading() as session:
        shown = [
            enforcement.request_dict(r)
            for r in enforcement.list_requests(session=session, limit=1000)
            if r.id in ids
        ]
    print_rows(shown, COLUMNS, False)
