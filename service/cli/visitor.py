"""`visitor` commands: reception issues the codes visitors type on the portal's form
(`[visitor] verify = "code"`), and lists those still open."""

from __future__ import annotations

from datetime import UTC, datetime

import typer

from service import sites, visitors
from service.cli.common import JsonOption, console, fail, get_state, local_text, print_rows
from service.db import Session
from service.policy.loader import parse_duration

visitor_app = typer.Typer(
    help='Visitor codes reception gives to visitors (policy [visitor] verify = "code").',
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    app.add_typer(visitor_app, name="visitor")


def _site(session: Session, site: str | None) -> sites.SiteSummary:
    known = sites.list_sites(session=session)
    if site is None:
        if len(known) == 1:
            return known[0]
        listed = ", ".join(s.code for s in known) or "none yet"
        fail(f"give --site (sites: {listed})")
    found = [summary for summary in known if summary.code == site]
    if not found:
        fail(f"no site {site!r}")
    return found[0]


@visitor_app.command("code")
def visitor_code(
    ctx: typer.Context,
    name: str | None = typer.Option(
        None, "--name", help="The visitor's name, as on their slip (required unless --daily)."
    ),
    valid_for: str | None = typer.Option(
        None,
        "--valid-for",
        help="How long the code works, e.g. 8h, 90m, 2d (default: 8h; --daily: until midnight).",
    ),
    site: str | None = typer.Option(None, "--site", help="The site (needed if there are several)."),
    daily: bool = typer.Option(
        False,
        "--daily",
        help="The day's code for every visitor: reusable until it expires, not spent on use.",
    ),
) -> None:
    """Issue a visitor code and print it (once: only its hash is kept)."""
    state = get_state(ctx)
    seconds: int | None = None
    if valid_for is not None:
        try:
            seconds = parse_duration(valid_for)
        except ValueError:
            fail(f"--valid-for {valid_for!r}: use a duration such as 8h, 90m or 2d")
    now = datetime.now(UTC)
    with state.transaction() as session:
        summary = _site(session, site)
        info, code = visitors.issue_code(
            session=session,
            site_code=summary.code,
            actor=state.actor,
            now=now,
            visitor_name=name,
            valid_for_seconds=seconds,
            daily=daily,
        )
    kind = (
        "the day's code, for every visitor" if info.daily else f"for {info.visitor_name}, one use"
    )
    console.print(f"visitor code: {code}", highlight=False)
    console.print(
        f"{kind} at {summary.code}, valid until {local_text(info.valid_until, summary.timezone)}",
        highlight=False,
    )


@visitor_app.command("codes")
def visitor_codes(
    ctx: typer.Context,
    site: str | None = typer.Option(None, "--site", help="Only this site's codes."),
    as_json: bool = JsonOption,
) -> None:
    """List the visitor codes that can still be typed (not expired, not used)."""
    state = get_state(ctx)
    with state.reading() as session:
        zones = {s.code: s.timezone for s in sites.list_sites(session=session)}
        if site is not None and site not in zones:
            fail(f"no site {site!r}")
        rows = [
            {
                "id": c.id,
                "site": c.site_code,
                "visitor": c.visitor_name,
                "kind": "daily" if c.daily else "one use",
                "issued_by": c.issued_by,
                "issued_at": local_text(c.issued_at, zones[c.site_code]),
                "valid_until": local_text(c.valid_until, zones[c.site_code]),
            }
            for c in visitors.list_open_codes(
                session=session, now=datetime.now(UTC), site_code=site
            )
        ]
    print_rows(
        rows,
        ["id", "site", "visitor", "kind", "issued_by", "valid_until"],
        as_json,
        empty="no open visitor codes",
    )
