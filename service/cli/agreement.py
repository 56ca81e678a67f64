"""`agreement` and `exception` commands."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import typer

from service import agreements, registry, sites
from service.cli.common import (
    JsonOption,
    console,
    fail,
    get_state,
    parse_when,
    print_rows,
)
from service.enums import SignatureSource
from service.exports import ExportQuery, export_exceptions

agreement_app = typer.Typer(help="Visitor AUA and staff BYOD statement.", no_args_is_help=True)
exception_app = typer.Typer(help="Case-by-case exceptions that widen access.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(agreement_app, name="agreement")
    app.add_typer(exception_app, name="exception")


@agreement_app.command("publish")
def agreement_publish(
    ctx: typer.Context,
    kind: str = typer.Argument(..., help="visitor_aua, staff_byod"),
    file: Path = typer.Argument(..., help="The agreement's text (plain text or Markdown)."),
    site: str | None = typer.Option(
        None, "--site", help="Only for this site (default: trust-wide)."
    ),
    title: str | None = typer.Option(None, "--title"),
) -> None:
    """Publish a new version of an agreement."""
    state = get_state(ctx)
    agreement_kind = registry.parse_kind(kind)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        fail(f"cannot read {file}: {exc.strerror}")
    except UnicodeDecodeError:
        fail(f"{file}: not UTF-8 text")
    with state.transaction() as session:
        agreement = registry.publish_agreement(
            session,
            kind=agreement_kind,
            text=text,
            actor=state.actor,
            title=title,
            site_code=site,
        )
        console.print(
            f"published {agreement.kind.value} version {agreement.version} "
            f"(sha256 {agreement.sha256[:16]}…)",
            highlight=False,
        )


@agreement_app.command("list")
def agreement_list(ctx: typer.Context, as_json: bool = JsonOption) -> None:
    """List agreement versions and how many signatures each has."""
    state = get_state(ctx)
    with state.reading() as session:
        rows = [
            {
                "kind": a.kind.value,
                "site": a.site or "(trust-wide)",
                "version": a.version,
                "title": a.title,
                "sha256": a.sha256,
                "published_at": a.published_at.isoformat(timespec="seconds"),
                "signatures": a.signatures,
            }
            for a in agreements.list_agreements(session=session)
        ]
    print_rows(
        rows,
        ["kind", "site", "version", "title", "published_at", "signatures"],
        as_json,
        empty="no agreements published yet",
    )


@agreement_app.command("sign")
def agreement_sign(
    ctx: typer.Context,
    person: str = typer.Option(..., "--person", help="Email, username or id of the signer."),
    kind: str = typer.Option(..., "--kind", help="visitor_aua, staff_byod"),
    device: str | None = typer.Option(None, "--device", help="MAC of the device it covers."),
    signed_at: str | None = typer.Option(
        None, "--signed-at", help="When the paper/form was signed (ISO 8601; default now)."
    ),
    typed_name: str | None = typer.Option(
        None, "--typed-name", help="Name as signed (default: the person's name)."
    ),
) -> None:
    """Record a signature made on paper or a form (the portal is the usual way)."""
    state = get_state(ctx)
    agreement_kind = registry.parse_kind(kind)
    with state.transaction() as session:
        signer = registry.find_person(session, person)
        tz = sites.site_timezone(session=session, site_id=signer.site_id)
        when = parse_when(signed_at, tz) or datetime.now(UTC)
        if when > datetime.now(UTC):
            fail("--signed-at is in the future")
        signature = registry.sign_agreement(
            session,
            kind=agreement_kind,
            person=signer,
            device_mac=device,
            typed_name=typed_name or signer.name,
            signed_at=when,
            source=SignatureSource.PAPER,
            actor=state.actor,
        )
        until = (
            signature.valid_until.isoformat(timespec="minutes")
            if signature.valid_until
            else "no expiry"
        )
        console.print(
            f"recorded {agreement_kind.value} signature by {signer.name} (valid until {until})",
            highlight=False,
        )


@exception_app.command("grant")
def exception_grant(
    ctx: typer.Context,
    mac: str = typer.Argument(...),
    access: str = typer.Option(..., "--access", help="full, segregated, internet"),
    reason: str = typer.Option(..., "--reason"),
    approved_by: str = typer.Option(..., "--approved-by", help="Who decided (e.g. headteacher)."),
    until: str | None = typer.Option(None, "--until", help="ISO 8601 expiry (site-local)."),
    start: str | None = typer.Option(None, "--from", help="ISO 8601 start (default now)."),
) -> None:
    """Record a case-by-case exception (a pupil's medical device, SLT permission)."""
    state = get_state(ctx)
    with state.transaction() as session:
        device = registry.get_device(session, mac)
        tz = sites.site_timezone(session=session, site_id=device.site_id)
        grant = registry.grant_exception(
            session,
            mac=mac,
            access=access,
            reason=reason,
            approved_by=approved_by,
            actor=state.actor,
            valid_from=parse_when(start, tz),
            valid_until=parse_when(until, tz),
        )
        console.print(
            f"exception {grant.id}: {device.mac} gets {access} until {until or 'revoked'}",
            highlight=False,
        )


@exception_app.command("list")
def exception_list(
    ctx: typer.Context,
    site: str | None = typer.Option(None, "--site"),
    as_json: bool = JsonOption,
) -> None:
    """List exceptions, current and past."""
    state = get_state(ctx)
    with state.reading() as session:
        rows = list(export_exceptions(session, ExportQuery(site=site)))
    print_rows(
        rows,
        ["id", "site", "mac", "access", "reason", "approved_by", "valid_until", "revoked_at"],
        as_json,
        empty="no exceptions",
    )


@exception_app.command("revoke")
def exception_revoke(ctx: typer.Context, exception_id: int = typer.Argument(...)) -> None:
    """End an exception now."""
    state = get_state(ctx)
    with state.transaction() as session:
        registry.revoke_exception(session, exception_id=exception_id, actor=state.actor)
        console.print(f"exception {exception_id} revoked", highlight=False)
