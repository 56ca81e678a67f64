"""`export` and `audit` commands."""

from __future__ import annotations

import ipaddress
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import typer

from service import audit
from service.cli.common import WideOption, console, fail, get_state, parse_when, print_rows
from service.exports import ExportQuery, all_exporters, export_zones, localise, write_rows
from service.mac import normalize_mac
from service.monitor.zeek_json import ZEEK_EXPORTS

audit_app = typer.Typer(help="The keyed, hash-chained audit log.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.command("export")(export)
    app.command("purge")(purge)
    app.add_typer(audit_app, name="audit")


def export(
    ctx: typer.Context,
    name: str = typer.Argument(
        ...,
        help="devices, decisions, sessions, signatures, incidents, exceptions, audit, coa, "
        "traffic, tls, http, dns, visits, dhcp, bindings, alerts, names.",
    ),
    fmt: str = typer.Option(
        "csv",
        "--format",
        help="csv, jsonl, table (on the terminal), or zeek-json (traffic, dns, tls, http: "
        "Zeek's field names).",
    ),
    since: str | None = typer.Option(None, "--since", help="ISO 8601 (site-local if no offset)"),
    until: str | None = typer.Option(None, "--until"),
    site: str | None = typer.Option(None, "--site"),
    ip: str | None = typer.Option(None, "--ip", help="bindings: this IP address only."),
    mac: str | None = typer.Option(None, "--mac", help="bindings: this MAC address only."),
    at: str | None = typer.Option(
        None, "--at", help="bindings: who held it at this moment (ISO 8601, site-local)."
    ),
    output: Path | None = typer.Option(None, "-o", "--output", help="File (default stdout)."),
    utc: bool = typer.Option(
        False, "--utc", help="Write times in UTC (default: the site's time zone, with offset)."
    ),
    wide: bool = WideOption,
) -> None:
    """Export a table for the IT lead, the DSL or the DPO. Times are ISO 8601 in the site's
    time zone with its offset (e.g. 2026-06-01T09:00:00+01:00), or UTC with --utc.
    Who had an address at a moment: `export bindings --ip 10.0.0.23 --at 2026-11-30T10:14`."""
    state = get_state(ctx)
    exporters = all_exporters()
    if name not in exporters:
        fail(f"unknown export {name!r} (known: {', '.join(sorted(exporters))})")
    if fmt not in ("csv", "jsonl", "table", "zeek-json"):
        fail(f"unknown format {fmt!r} (csv, jsonl, table or zeek-json)")
    if fmt == "zeek-json":
        if name not in ZEEK_EXPORTS:
            fail(f"--format zeek-json is for {', '.join(ZEEK_EXPORTS)}, not {name}")
        exporter = ZEEK_EXPORTS[name]
    else:
        exporter = exporters[name]
    if name != "bindings" and (ip or mac or at):
        fail("--ip, --mac and --at are for `export bindings`")
    query = ExportQuery(
        since=parse_when(since),
        until=parse_when(until),
        site=site,
        ip=_address(ip),
        mac=normalize_mac(mac) if mac else None,
        at=parse_when(at),
        now=datetime.now(UTC),
        stale_after=timedelta(seconds=state.settings.accounting_stale_after),
    )
    with state.reading() as session:
        # Zeek's JSON carries epoch times: no time zone to write them in.
        zone_for = None if utc or fmt == "zeek-json" else export_zones(session=session, site=site)
        if fmt == "table":
            if output is not None:
                fail("--format table is for the terminal: use csv or jsonl with --output")
            rows = list(localise(exporter(session, query), zone_for))
            columns = list(rows[0]) if rows else []
            print_rows(
                rows,
                columns,
                False,
                empty=f"no {name} found",
                wide=wide,
                drop_order=table_drop_order(name, columns),
            )
            return
        fmt = "jsonl" if fmt == "zeek-json" else fmt
        if output is None:
            write_rows(exporter(session, query), sys.stdout, fmt, zone_for=zone_for)
            return
        tmp = output.with_name(output.name + ".part")
        try:
            with tmp.open("w", encoding="utf-8", newline="") as handle:
                count = write_rows(exporter(session, query), handle, fmt, zone_for=zone_for)
            tmp.replace(output)  # never leave a half-written export behind
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            fail(f"cannot write {output}: {exc.strerror}")
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    console.print(f"wrote {count} {name} row(s) to {output}", highlight=False)


# What a terminal table keeps longest, per export (the rest goes first, from the last column):
# the answer to the question the export is for, then who it was.
TABLE_KEEPS: dict[str, tuple[str, ...]] = {
    "traffic": ("started_at", "client_ip", "resp_ip", "resp_port", "service", "server_name"),
    "tls": ("started_at", "client_ip", "server_name", "version", "alpn", "device", "person"),
    "http": ("started_at", "client_ip", "server_name", "service", "device", "person"),
    "dns": ("queried_at", "client_ip", "query", "qtype_name", "rcode_name", "answers"),
    "alerts": ("raised_at", "client_ip", "kind", "evidence", "category", "device", "person"),
    "bindings": ("ip", "mac", "start", "end", "source", "device", "person"),
    "names": ("mac", "name", "source", "last_seen"),
}


def table_drop_order(name: str, columns: list[str]) -> list[str] | None:
    """The order `print_rows` leaves columns out in for this export, or None (from the last)."""
    keeps = [c for c in TABLE_KEEPS.get(name, ()) if c in columns]
    if not keeps:
        return None
    rest = [c for c in reversed(columns) if c not in keeps]
    return rest + list(reversed(keeps))


def _address(value: str | None) -> str | None:
    """An IP address as the monitor writes it (`10.0.0.23`, `fe80::1`), or a one-line error."""
    if value is None:
        return None
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        fail(f"not an IP address: {value!r} (e.g. 10.0.0.23)")


def purge(ctx: typer.Context) -> None:
    """Delete records past their retention period (settings: retention_days per table)."""
    from service import retention

    state = get_state(ctx)
    with state.transaction() as session:
        removed = retention.purge(
            session, settings=state.settings, now=datetime.now(UTC), actor=state.actor
        )
    for table, count in sorted(removed.items()):
        console.print(f"{table}: {count} row(s) past retention removed", highlight=False)


@audit_app.command("verify")
def audit_verify(
    ctx: typer.Context,
    anchor: Path | None = typer.Option(
        None,
        "--anchor",
        help="Anchor log to check against (default: the audit-anchor.log beside the key).",
    ),
) -> None:
    """Check the audit log's keyed hash chain and its anchored head; exit 1 if any entry was
    altered, removed or rewritten."""
    state = get_state(ctx)
    settings = state.settings
    anchor_file = anchor or settings.anchor_file
    key = settings.audit_key
    with state.reading() as session:
        result = audit.verify_configured(session, settings=settings, anchor_file=anchor)
    if not result.ok:
        fail(f"audit log broken at entry {result.first_bad_id}: {result.problem}")
    console.print(
        f"audit log intact: {result.entries} entries ({result.keyed} keyed), "
        f"head id {result.head_id} hash {result.head_hash}",
        highlight=False,
    )
    if result.anchors:
        console.print(f"{result.anchors} anchors hold ({anchor_file})", highlight=False)
    else:
        console.print(
            f"warning: no anchors in {anchor_file}: deleted last entries cannot be detected",
            highlight=False,
        )
    if key is None:
        console.print(
            "warning: no audit key: entries are unkeyed (run `schoolgate db upgrade`)",
            highlight=False,
        )


@audit_app.command("anchor")
def audit_anchor(ctx: typer.Context) -> None:
    """Verify the chain, then append its head to the anchor log (and syslog): run from cron."""
    state = get_state(ctx)
    settings = state.settings
    chain = audit.chain_for(settings)
    if chain is None or chain.anchor_file is None:
        fail("no audit key: run `schoolgate db upgrade` first")
    anchor_file = chain.anchor_file
    anchors = audit.read_anchors(anchor_file) if anchor_file.exists() else []
    with state.reading() as session:
        result = audit.verify(session, key=chain.key, anchors=anchors)
    if not result.ok:
        fail(f"audit log broken at entry {result.first_bad_id}: {result.problem}; not anchored")
    try:
        audit.write_anchor(anchor_file, result.head_id, result.head_hash, syslog=chain.syslog)
    except OSError as exc:
        fail(f"cannot write {anchor_file}: {exc.strerror}")
    console.print(
        f"anchored head id {result.head_id} hash {result.head_hash} "
        f"({result.entries} entries) in {anchor_file}",
        highlight=False,
    )
