"""`who` (who is on the network now) and `incident` (an incident's record after the fact)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import typer

from service import presence
from service.cli.common import (
    JsonOption,
    WideOption,
    console,
    fail,
    get_state,
    local_text,
    print_rows,
)
from service.devices import record_dpo_notified

incident_app = typer.Typer(help="Lost, stolen or compromised devices.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.command("who")(who)
    app.add_typer(incident_app, name="incident")


def who(
    ctx: typer.Context,
    site: str | None = typer.Option(None, "--site"),
    device_class: str | None = typer.Option(
        None,
        "--class",
        help="school_single, school_shared, authorised, staff_owned, learner_owned, visitor_owned",
    ),
    nas: str | None = typer.Option(None, "--nas", help="NAS name or NAS-Identifier."),
    wide: bool = WideOption,
    as_json: bool = JsonOption,
) -> None:
    """Who is on the network now: each open session with its device, person, the access and
    VLAN the policy gives it now, where, and since when (from RADIUS accounting). A session
    with no Stop and no update for `accounting_stale_after` (default 4 h), or whose IP the
    monitor has since seen leased to another device, is no longer open."""
    state = get_state(ctx)
    now = datetime.now(UTC)
    with state.reading() as session:
        found = presence.who(
            session=session,
            now=now,
            site=site,
            device_class=device_class,
            nas=nas,
            stale_after=timedelta(seconds=state.settings.accounting_stale_after),
        )
    rows = [
        {
            "mac": p.mac,
            "person": p.person,
            "class": p.device_class or "unregistered",
            "access": p.access,
            "vlan": p.vlan,
            "nas": p.nas,
            "location": p.location,
            "ip": p.framed_ip,
            "site": p.site,
            "since": p.since.isoformat(timespec="seconds")
            if as_json
            else local_text(p.since, p.timezone),
        }
        for p in found
    ]
    print_rows(
        rows,
        ["mac", "person", "class", "access", "vlan", "nas", "location", "ip", "site", "since"],
        as_json,
        empty="nobody is on the network (no open accounting sessions)",
        wide=wide,
        drop_order=["site", "ip", "location", "class", "nas", "since", "vlan"],
    )


@incident_app.command("update")
def incident_update(
    ctx: typer.Context,
    incident: int = typer.Argument(..., help="The incident's number (device show lists it)."),
    dpo_notified_at: str = typer.Option(
        ...,
        "--dpo-notified-at",
        help="When the DPO was told: ISO 8601, site-local when no offset (e.g. 2026-11-23T10:00).",
    ),
) -> None:
    """Record when the DPO was told of an incident, after the fact (audited)."""
    state = get_state(ctx)
    try:
        when = datetime.fromisoformat(dpo_notified_at.strip())
    except ValueError:
        fail(f"not an ISO 8601 date-time: {dpo_notified_at!r} (e.g. 2026-11-23T10:00)")
    with state.transaction() as session:
        record = record_dpo_notified(
            session=session, incident_id=incident, notified_at=when, actor=state.actor
        )
        console.print(f"incident {record.id}: DPO told at {local_text(when)}", highlight=False)
