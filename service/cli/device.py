"""`device` commands: add, import, list, show, approve, revoke, lost, exit."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from service import device_names, devices, registry
from service.cli.common import (
    DryRunOption,
    JsonOption,
    WideOption,
    console,
    err_console,
    fail,
    get_state,
    print_json,
    print_rows,
)
from service.enums import IncidentKind
from service.errors import Invalid, NotFound

if TYPE_CHECKING:
    from service.db import Session

device_app = typer.Typer(help="The device register.", no_args_is_help=True)
PROGRESS_THRESHOLD = 500  # rows; smaller imports finish before a bar is worth drawing


def register(app: typer.Typer) -> None:
    app.add_typer(device_app, name="device")


@device_app.command("add")
def device_add(
    ctx: typer.Context,
    mac: str = typer.Argument(..., help="MAC address, any common format."),
    site: str = typer.Option(..., "--site"),
    device_class: str = typer.Option(
        ...,
        "--class",
        help="school_single, school_shared, authorised, staff_owned, learner_owned, visitor_owned",
    ),
    owner: str | None = typer.Option(None, "--owner", help="Owner's email or username."),
    asset_tag: str | None = typer.Option(None, "--asset-tag"),
    name: str | None = typer.Option(None, "--name"),
) -> None:
    """Register a device. Staff-owned devices start pending until approved."""
    state = get_state(ctx)
    with state.transaction() as session:
        device = registry.add_device(
            session,
            mac=mac,
            site_code=site,
            device_class=device_class,
            owner=owner,
            asset_tag=asset_tag,
            name=name,
            actor=state.actor,
        )
        console.print(
            f"added {device.mac} as {device.device_class.value} ({device.status.value})",
            highlight=False,
        )


@device_app.command("import")
def device_import(
    ctx: typer.Context,
    file: Path = typer.Argument(..., help="MDM asset list: CSV with a header row."),
    site: str = typer.Option(..., "--site"),
    default_class: str = typer.Option(
        "school_shared", "--default-class", help="Class for rows without a class column."
    ),
    skip_bad_rows: bool = typer.Option(
        False, "--skip-bad-rows", help="Store the good rows and report each bad one."
    ),
    sync: bool = typer.Option(
        False,
        "--sync",
        help="The file is the truth for the site's devices of the classes it lists: apply "
        "changed rows, put devices missing from it through the exit process.",
    ),
    dry_run: bool = DryRunOption,
    as_json: bool = JsonOption,
) -> None:
    """Import an MDM asset list (MAC, class, asset tag, owner email). Rows already registered
    as the file says are left alone; a malformed row, or one that differs from the register
    (without --sync), stops the import and nothing is stored."""
    state = get_state(ctx)
    try:
        text = file.read_text(encoding="utf-8-sig")
    except OSError as exc:
        fail(f"cannot read {file}: {exc.strerror}")
    except UnicodeDecodeError:
        fail(f"{file}: not UTF-8 text (save the CSV as UTF-8)")
    total = max(0, text.count("\n") - 1)
    cls = registry.parse_class(default_class)
    with state.transaction() as session:
        if total >= PROGRESS_THRESHOLD and not as_json and not dry_run:
            with Progress(
                TextColumn("importing"),
                BarColumn(),
                MofNCompleteColumn(),
                console=console,
                transient=True,
            ) as bar:
                task = bar.add_task("import", total=total)
                result = registry.import_devices(
                    session,
                    text=text,
                    site_code=site,
                    actor=state.actor,
                    default_class=cls,
                    progress=lambda n: bar.update(task, completed=n),
                    skip_bad_rows=skip_bad_rows,
                    sync=sync,
                    dry_run=dry_run,
                )
        else:
            result = registry.import_devices(
                session,
                text=text,
                site_code=site,
                actor=state.actor,
                default_class=cls,
                skip_bad_rows=skip_bad_rows,
                sync=sync,
                dry_run=dry_run,
            )
    if as_json:
        data: dict[str, object] = {
            "added": len(result.added),
            "skipped": [{"line": line, "problem": p} for line, p in result.skipped],
        }
        if sync or dry_run or result.unchanged:
            data.update(
                {
                    "dry_run": dry_run,
                    "added_macs": result.added,
                    "changed": [{"mac": m, "changes": c} for m, c in result.changed],
                    "retired": result.retired,
                    "unchanged": len(result.unchanged),
                }
            )
        print_json(data)
        return
    if dry_run:
        said = ["would add", "would change", "would retire"]
    else:
        said = ["added", "changed", "retired"]
    summary = f"{'dry run: ' if dry_run else ''}{site}: {said[0]} {len(result.added)}"
    if sync:
        summary += f", {said[1]} {len(result.changed)}, {said[2]} {len(result.retired)}"
    summary += f", {len(result.unchanged)} already registered as in the file"
    if not dry_run and not sync and not result.unchanged:
        summary = f"imported {len(result.added)} device(s) into {site}"
    console.print(summary, highlight=False)
    if dry_run or sync:
        for mac in result.added:
            console.print(f"  + {mac}", highlight=False)
        for mac, changes in result.changed:
            console.print(f"  ~ {mac}: {'; '.join(changes)}", highlight=False)
        for mac in result.retired:
            console.print(f"  - {mac} (exit process)", highlight=False)
    for line, problem in result.skipped:
        console.print(f"  skipped line {line}: {problem}", highlight=False)


@device_app.command("list")
def device_list(
    ctx: typer.Context,
    site: str | None = typer.Option(None, "--site"),
    status: str | None = typer.Option(
        None, "--status", help="pending, active, revoked, lost, exited"
    ),
    device_class: str | None = typer.Option(None, "--class"),
    wide: bool = WideOption,
    as_json: bool = JsonOption,
) -> None:
    """List devices (pending ones are waiting for approval)."""
    state = get_state(ctx)
    with state.reading() as session:
        if site:
            registry.get_site(session, site)
        # Filtered here, not by list_devices: an unknown --status or --class lists nothing.
        rows = [
            d.as_row()
            for d in devices.list_devices(session=session, site=site)
            if (status is None or d.status.value == status)
            and (device_class is None or d.device_class.value == device_class)
        ]
        seen = device_names.names_of(session=session, macs=[row["mac"] for row in rows])
    for row in rows:
        # The names the device goes by on the network (mDNS, NetBIOS, DHCP...), newest first.
        names = list(dict.fromkeys(n.name for n in seen.get(row["mac"], [])))
        row["seen_as"] = names if as_json else ", ".join(names) or None
    print_rows(
        rows,
        [
            "mac",
            "site",
            "device_class",
            "status",
            "owner",
            "asset_tag",
            "name",
            "seen_as",
            "needs_reassignment",
        ],
        as_json,
        empty="no devices",
        wide=wide,
        drop_order=[
            "seen_as",
            "needs_reassignment",
            "name",
            "site",
            "asset_tag",
            "owner",
            "device_class",
        ],
    )


@device_app.command("show")
def device_show(
    ctx: typer.Context,
    ref: str = typer.Argument(
        ..., metavar="DEVICE", help="MAC address, asset tag, or owner's email or username."
    ),
    as_json: bool = JsonOption,
) -> None:
    """Everything known about one device: owner, status, signatures, exceptions, incidents.
    When an owner has several devices they are listed to choose from."""
    state = get_state(ctx)
    with state.reading() as session:
        mac = _choose_device(session, ref)
        record = devices.device_record(session=session, mac=mac)
        device, owner = record.device, record.owner
        signatures = [
            {
                "kind": s.agreement.kind.value,
                "version": s.agreement.version,
                "signed_at": s.signed_at.isoformat(timespec="seconds"),
                "valid_until": s.valid_until.isoformat(timespec="seconds")
                if s.valid_until
                else None,
                "typed_name": s.typed_name,
            }
            for s in record.signatures
        ]
        grants = [
            {
                "id": g.id,
                "access": g.access.value,
                "reason": g.reason,
                "approved_by": g.approved_by,
                "until": g.valid_until.isoformat(timespec="seconds") if g.valid_until else None,
                "revoked": g.revoked_at is not None,
            }
            for g in record.exceptions
        ]
        incidents = [
            {
                "id": i.id,
                "kind": i.kind.value,
                "reported_by": i.reported_by,
                "reported_at": i.reported_at.isoformat(timespec="seconds"),
                "dpo_notified_at": i.dpo_notified_at.isoformat(timespec="seconds")
                if i.dpo_notified_at
                else None,
            }
            for i in record.incidents
        ]
        seen_as = [
            {
                "name": n.name,
                "source": n.source,
                "ip": n.ip,
                "first_seen": n.first_seen.isoformat(timespec="seconds"),
                "last_seen": n.last_seen.isoformat(timespec="seconds"),
            }
            for n in device_names.names_of(session=session, macs=[device.mac]).get(device.mac, [])
        ]
        data = {
            "mac": device.mac,
            "site": record.site,
            "device_class": device.device_class.value,
            "status": device.status.value,
            "status_reason": device.status_reason,
            "asset_tag": device.asset_tag,
            "name": device.name,
            "needs_reassignment": device.needs_reassignment,
            "owner": None
            if owner is None
            else {
                "name": owner.name,
                "email": owner.email,
                "role": owner.role.value,
                "active": owner.active,
            },
            "created_at": device.created_at.isoformat(timespec="seconds"),
            "signatures": signatures,
            "exceptions": grants,
            "incidents": incidents,
            "seen_as": seen_as,
        }
    if as_json:
        print_json(data)
        return
    for key in (
        "mac",
        "site",
        "device_class",
        "status",
        "status_reason",
        "asset_tag",
        "name",
        "needs_reassignment",
        "created_at",
    ):
        if data[key] is not None:
            console.print(f"{key.replace('_', ' '):>18}: {data[key]}", highlight=False)
    if owner is not None:
        console.print(
            f"{'owner':>18}: {owner.name} ({owner.role.value}"
            f"{', left' if not owner.active else ''})",
            highlight=False,
        )
    for sig in signatures:
        console.print(
            f"{'signed':>18}: {sig['kind']} v{sig['version']} at {sig['signed_at']}"
            f" (valid until {sig['valid_until'] or 'no expiry'})",
            highlight=False,
        )
    for grant in grants:
        console.print(
            f"{'exception':>18}: {grant['access']} — {grant['reason']} "
            f"(by {grant['approved_by']}, until {grant['until'] or 'no expiry'})",
            highlight=False,
        )
    for seen in seen_as:
        console.print(
            f"{'seen as':>18}: {seen['name']} ({seen['source']}"
            f"{', ' + seen['ip'] if seen['ip'] else ''}; {seen['first_seen']} to "
            f"{seen['last_seen']})",
            highlight=False,
        )
    for incident in incidents:
        console.print(
            f"{'incident':>18}: {incident['id']}, {incident['kind']} reported by "
            f"{incident['reported_by']} at {incident['reported_at']}; DPO told "
            f"{incident['dpo_notified_at'] or 'not yet'}",
            highlight=False,
        )


def _choose_device(session: Session, ref: str) -> str:
    """The MAC of the one device `ref` names; several are listed, and on a terminal the user
    picks one by number, else it is an error asking for the MAC."""
    found = devices.find_devices(session=session, ref=ref)
    if not found:
        raise NotFound(f"no device with MAC, asset tag or owner {ref!r}")
    if len(found) == 1:
        return found[0].mac
    err_console.print(f"{len(found)} devices match {ref!r}:", highlight=False)
    for number, device in enumerate(found, 1):
        err_console.print(
            f"  {number}. {device.mac}  {device.device_class.value}  {device.status.value}"
            f"  {device.asset_tag or ''}  {device.name or ''}".rstrip(),
            highlight=False,
        )
    if not sys.stdin.isatty():
        fail("several devices match: give the MAC of one")
    choice: int = typer.prompt("Which one (number)", type=int, err=True)
    if not 1 <= choice <= len(found):
        fail(f"no device number {choice}")
    return found[choice - 1].mac


@device_app.command("approve")
def device_approve(
    ctx: typer.Context,
    mac: str = typer.Argument(...),
    note: str | None = typer.Option(None, "--note"),
    anyway: bool = typer.Option(
        False,
        "--anyway",
        help="Approve even when the site's policy gives the device's class no network access.",
    ),
) -> None:
    """Give permission for a pending device (or reinstate a revoked/lost one)."""
    state = get_state(ctx)
    try:
        with state.transaction() as session:
            device = registry.approve_device(
                session, mac=mac, actor=state.actor, note=note, anyway=anyway
            )
            console.print(f"approved {device.mac}", highlight=False)
    except devices.ApprovalChangesNothing as exc:
        fail(f"{exc}; --anyway approves it all the same")


@device_app.command("revoke")
def device_revoke(
    ctx: typer.Context,
    mac: str = typer.Argument(...),
    reason: str = typer.Option(..., "--reason"),
) -> None:
    """Revoke a device's access."""
    state = get_state(ctx)
    with state.transaction() as session:
        device = registry.revoke_device(session, mac=mac, reason=reason, actor=state.actor)
        console.print(f"revoked {device.mac}: {reason}", highlight=False)


@device_app.command("lost")
def device_lost(
    ctx: typer.Context,
    mac: str = typer.Argument(...),
    reported_by: str = typer.Option(..., "--reported-by"),
    kind: str = typer.Option("lost", "--kind", help="lost, stolen, compromised"),
    description: str | None = typer.Option(None, "--description"),
    dpo_notified: bool = typer.Option(
        False, "--dpo-notified", help="The DPO has been told (seed 001)."
    ),
) -> None:
    """Report a device lost, stolen or compromised: access revoked now, incident logged."""
    state = get_state(ctx)
    try:
        incident_kind = IncidentKind(kind)
    except ValueError as exc:
        raise Invalid(f"unknown incident kind {kind!r} (lost, stolen, compromised)") from exc
    with state.transaction() as session:
        device, incident = registry.report_lost(
            session,
            mac=mac,
            reported_by=reported_by,
            actor=state.actor,
            kind=incident_kind,
            description=description,
            dpo_notified=dpo_notified,
        )
        console.print(
            f"{device.mac} marked {incident_kind.value}; access revoked; incident "
            f"{incident.id} logged" + ("" if dpo_notified else " (remember to tell the DPO)"),
            highlight=False,
        )


@device_app.command("exit")
def device_exit(
    ctx: typer.Context,
    mac: str = typer.Argument(...),
    reason: str | None = typer.Option(None, "--reason"),
) -> None:
    """Exit process for a device no longer used at the school."""
    state = get_state(ctx)
    with state.transaction() as session:
        device = registry.exit_device(session, mac=mac, actor=state.actor, reason=reason)
        console.print(f"{device.mac} exited", highlight=False)
