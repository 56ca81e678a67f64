"""`schoolgate monitor run`: live capture from a mirror port or a forensic import of a file."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from service.cli.common import (
    MetricsPortOption,
    console,
    err_console,
    fail,
    get_state,
    local_text,
    metrics_port,
    print_json,
    setup_logging,
)
from service.errors import Invalid, SchoolgateError

if TYPE_CHECKING:
    from service.monitor.observe import MonitorProbe

monitor_app = typer.Typer(
    help="Traffic-metadata monitor (mirror port or capture file).", no_args_is_help=True
)


def register(app: typer.Typer) -> None:
    app.add_typer(monitor_app, name="monitor")


def _human_bytes(count: int) -> str:
    size = float(count)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{count} B"


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, sec = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{sec:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


@monitor_app.command("run")
def run(
    ctx: typer.Context,
    interface: str | None = typer.Option(None, "--interface", "-i", help="Mirror/SPAN port."),
    read: Path | None = typer.Option(None, "--read", "-r", help="A .pcap or .pcapng file."),
    site: str | None = typer.Option(None, "--site", help="Site code the traffic belongs to."),
    bpf: str | None = typer.Option(None, "--bpf", help="BPF filter for live capture."),
    categories: Path | None = typer.Option(
        None, "--categories", help="Folder of category lists (deploy/categories)."
    ),
    visit_gap: float = typer.Option(300.0, "--visit-gap", help="Idle seconds that end a visit."),
    duration: float | None = typer.Option(None, "--duration", help="Stop a live capture after S."),
    max_packets: int | None = typer.Option(None, "--count", help="Stop after N live packets."),
    quiet: bool = typer.Option(
        False, "--quiet", "-q", help="Counters only, no per-device summary."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    metrics_port_option: int | None = MetricsPortOption,
) -> None:
    """Record flows, DNS, server names, DHCP/ARP, visits and P2P/category alerts."""
    from service.monitor.run import run_monitor

    if (interface is None) == (read is None):
        fail("give exactly one of --interface IF or --read FILE")
    state = get_state(ctx)
    port = metrics_port(state, metrics_port_option)
    observe = None
    if port:
        setup_logging(state)
        observe = _metrics_observer(state.settings.metrics_host, port)
    try:
        result = run_monitor(
            state.settings.database_url,
            read=read,
            interface=interface,
            bpf=bpf,
            site_code=site,
            categories_dir=categories,
            visit_idle_gap=visit_gap,
            duration=duration,
            max_packets=max_packets,
            keep_summary=not quiet,
            accounting_stale_after=state.settings.accounting_stale_after,
            refresh_seconds=state.settings.monitor_refresh_seconds,
            observe=observe,
            on_capturing=lambda what: err_console.print(
                f"capturing on {what}", markup=False, highlight=False
            ),
        )
    except Invalid as exc:
        fail(str(exc))
    tz = result.timezone or "Europe/London"
    names = result.names
    rate = result.counters["packets"] / result.seconds if result.seconds else 0.0
    summary: dict[str, Any] = {
        "counters": result.counters,
        "capture": result.capture.__dict__,
        "written": result.written,
        "writer_errors": result.writer_errors,
        "seconds": round(result.seconds, 3),
        "packets_per_second": round(rate),
    }
    if result.writer_errors:
        err_console.print(
            f"warning: {result.writer_errors} batch(es) not written: {result.writer_last_error}",
            markup=False,
            highlight=False,
        )
    if as_json:
        summary["devices"] = _per_device(result, names, tz)
        print_json(summary)
        return
    c = result.counters
    console.print(
        f"{c['packets']} packets in {result.seconds:.2f}s ({rate:,.0f}/s): {c['flows']} flows, "
        f"{c['dns']} DNS, {c['dhcp']} DHCP, {c['arp']} ARP, {c['visits']} visits, "
        f"{c['alerts']} alerts; skipped {c['skipped_truncated']} truncated, "
        f"{c['skipped_corrupt']} corrupt, {c['skipped_oversized']} oversized, "
        f"{c['skipped_linktype']} unknown link type; {result.capture.truncated_records} "
        f"truncated record(s); kernel drops {result.capture.kernel_drops}",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
    if not quiet:
        _print_summary(_per_device(result, names, tz))


def _metrics_observer(host: str, port: int) -> Callable[[MonitorProbe], None]:
    """Bind the metrics port now (a port in use is one line before the capture starts); serve
    the run's counters on it once the capture is set up."""
    from prometheus_client import CollectorRegistry

    from service.metrics import MetricsServer, bind_metrics
    from service.monitor.observe import MonitorCollector

    try:
        sock = bind_metrics(host, port)
    except SchoolgateError as exc:
        fail(str(exc))

    def observe(probe: MonitorProbe) -> None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(MonitorCollector(probe))
        MetricsServer(sock, registry, probe.readiness).start()

    return observe


def _per_device(result: Any, names: dict[str, dict[int, str]], tz: str) -> list[dict[str, Any]]:
    groups: dict[str, dict[str, Any]] = defaultdict(
        lambda: {"visits": [], "alerts": [], "bittorrent_flows": 0, "bittorrent_bytes": 0}
    )

    def holder(row: dict[str, Any]) -> dict[str, Any]:
        key = row["mac"] or row["client_ip"]
        group = groups[key]
        group["mac"] = row["mac"]
        group["client_ip"] = row["client_ip"]
        group["device"] = names["devices"].get(row.get("device_id") or 0)
        group["person"] = names["people"].get(row.get("person_id") or 0)
        return group

    for visit in sorted(result.visits, key=lambda v: v["started_at"]):
        holder(visit)["visits"].append(
            {
                "site": visit["server_name"],
                "from": local_text(visit["started_at"], tz),
                "until": local_text(visit["ended_at"], tz),
                "duration": _duration(visit["duration"]),
                "bytes": visit["bytes_up"] + visit["bytes_down"],
                "category": visit["category"],
            }
        )
    for flow in result.p2p_flows:
        group = holder(flow)
        group["bittorrent_flows"] += 1
        group["bittorrent_bytes"] += flow["orig_bytes"] + flow["resp_bytes"]
    for alert in result.alerts:
        holder(alert)["alerts"].append(
            {
                "at": local_text(alert["raised_at"], tz),
                "severity": alert["severity"],
                "category": alert["category"],
                "evidence": alert["evidence"],
            }
        )
    return [{"key": k, **v} for k, v in sorted(groups.items())]


def _print_summary(devices: list[dict[str, Any]]) -> None:
    for group in devices:
        who = group["person"] or "unknown person"
        device = group["device"] or "unregistered device"
        ident = group["mac"] or f"IP {group['client_ip']} (no MAC binding)"
        console.print(
            f"\n{who} — {device} — {ident}", highlight=False, markup=False, soft_wrap=True
        )
        if group["bittorrent_flows"]:
            console.print(
                f"  BITTORRENT: {group['bittorrent_flows']} flow(s), "
                f"{_human_bytes(group['bittorrent_bytes'])}",
                highlight=False,
                markup=False,
                soft_wrap=True,
            )
        for alert in group["alerts"]:
            console.print(
                f"  ALERT [{alert['severity']}] {alert['category']} at {alert['at']}: "
                f"{alert['evidence']}",
                highlight=False,
                markup=False,
                soft_wrap=True,
            )
        for visit in group["visits"]:
            flag = f"  [{visit['category']}]" if visit["category"] else ""
            console.print(
                f"  {visit['from']} – {visit['until']}  {visit['duration']:>7}  "
                f"{_human_bytes(visit['bytes']):>9}  {visit['site']}{flag}",
                highlight=False,
                markup=False,
                soft_wrap=True,
            )
