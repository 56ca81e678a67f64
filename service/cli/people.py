"""`person` commands: add, import, list, leave (the exit process), set-password."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from service import people, registry
from service.cli.common import (
    DryRunOption,
    JsonOption,
    WideOption,
    console,
    fail,
    get_state,
    print_json,
    print_rows,
)

person_app = typer.Typer(help="Staff, pupils, visitors and others.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(person_app, name="person")


@person_app.command("add")
def person_add(
    ctx: typer.Context,
    site: str = typer.Option(..., "--site"),
    role: str = typer.Option(
        ..., "--role", help="staff, learner, visitor, contractor, governor, volunteer"
    ),
    name: str = typer.Option(..., "--name"),
    email: str | None = typer.Option(None, "--email"),
    username: str | None = typer.Option(None, "--username"),
    year: int | None = typer.Option(None, "--year", help="Year group, for pupils."),
) -> None:
    """Add a person."""
    state = get_state(ctx)
    with state.transaction() as session:
        person = registry.add_person(
            session,
            site_code=site,
            role=role,
            name=name,
            email=email,
            username=username,
            year_group=year,
            actor=state.actor,
        )
        console.print(f"added {person.role.value} {person.name} (id {person.id})", highlight=False)


@person_app.command("import")
def person_import(
    ctx: typer.Context,
    file: Path = typer.Argument(
        ..., help="MIS export: CSV with the columns name, role, email, username, year."
    ),
    site: str = typer.Option(..., "--site"),
    sync: bool = typer.Option(
        False,
        "--sync",
        help="The file is the truth for the site's people in the roles it lists: apply "
        "changed rows; people missing from it go through the exit process (person leave).",
    ),
    dry_run: bool = DryRunOption,
    as_json: bool = JsonOption,
) -> None:
    """Import people from the school's MIS export. Importing the same file again changes
    nothing; a malformed or conflicting row (without --sync) stops it and nothing is stored."""
    state = get_state(ctx)
    try:
        text = file.read_text(encoding="utf-8-sig")
    except OSError as exc:
        fail(f"cannot read {file}: {exc.strerror}")
    except UnicodeDecodeError:
        fail(f"{file}: not UTF-8 text (save the CSV as UTF-8)")
    with state.transaction() as session:
        result = people.import_people(
            session=session,
            text=text,
            site_code=site,
            actor=state.actor,
            sync=sync,
            dry_run=dry_run,
        )
    if as_json:
        print_json(
            {
                "dry_run": dry_run,
                "added": result.added,
                "changed": [{"person": p, "changes": c} for p, c in result.changed],
                "left": result.left,
                "unchanged": len(result.unchanged),
            }
        )
        return
    said = ["would add", "would change", "would leave"] if dry_run else ["added", "changed", "left"]
    summary = f"{'dry run: ' if dry_run else ''}{site}: {said[0]} {len(result.added)}"
    if sync:
        summary += f", {said[1]} {len(result.changed)}, {len(result.left)} {said[2]}"
    summary += f", {len(result.unchanged)} already as in the file"
    console.print(summary, highlight=False)
    for ref in result.added:
        console.print(f"  + {ref}", highlight=False)
    for ref, changes in result.changed:
        console.print(f"  ~ {ref}: {'; '.join(changes)}", highlight=False)
    for ref in result.left:
        console.print(f"  - {ref} (exit process)", highlight=False)


@person_app.command("list")
def person_list(
    ctx: typer.Context,
    site: str | None = typer.Option(None, "--site"),
    role: str | None = typer.Option(None, "--role"),
    include_left: bool = typer.Option(False, "--include-left", help="Also people who left."),
    wide: bool = WideOption,
    as_json: bool = JsonOption,
) -> None:
    """List people."""
    state = get_state(ctx)
    with state.reading() as session:
        rows = [
            {
                "id": p.id,
                "site": p.site,
                "role": p.role.value,
                "name": p.name,
                "email": p.email,
                "username": p.username,
                "year": p.year_group,
                "status": "active" if p.active else "left",
                "has_password": p.has_password,
            }
            for p in people.list_people(
                session=session, site=site, role=role, include_left=include_left
            )
        ]
    print_rows(
        rows,
        ["id", "site", "role", "name", "email", "username", "year", "status"],
        as_json,
        empty="no people",
        wide=wide,
        drop_order=["site", "status", "year", "username", "id", "role"],
    )


@person_app.command("leave")
def person_leave(
    ctx: typer.Context,
    person: str = typer.Argument(..., help="Email, username or id."),
    as_json: bool = JsonOption,
) -> None:
    """Exit process: revoke the person's personal devices, flag school devices for reassignment."""
    state = get_state(ctx)
    with state.transaction() as session:
        found = registry.find_person(session, person)
        result = registry.leave_person(session, person=found, actor=state.actor)
        name = found.name
    if as_json:
        print_json({"person": name, **result})
        return
    console.print(
        f"{name} has left: {len(result['revoked'])} personal device(s) revoked, "
        f"{len(result['flagged_for_reassignment'])} school device(s) flagged for "
        "reassignment",
        highlight=False,
    )
    for mac in result["revoked"]:
        console.print(f"  revoked  {mac}", highlight=False)
    for mac in result["flagged_for_reassignment"]:
        console.print(f"  reassign {mac}", highlight=False)


@person_app.command("set-password")
def person_set_password(
    ctx: typer.Context,
    person: str = typer.Argument(..., help="Email, username or id."),
    password_stdin: bool = typer.Option(
        False, "--password-stdin", help="Read the password from standard input (for scripts)."
    ),
) -> None:
    """Set a person's schoolgate password (portal sign-in and RADIUS PAP); stored with argon2."""
    state = get_state(ctx)
    if password_stdin:
        import sys

        password = sys.stdin.readline().rstrip("\n")
    elif os.environ.get("SCHOOLGATE_PASSWORD"):
        password = os.environ["SCHOOLGATE_PASSWORD"]
    else:
        password = typer.prompt("New password", hide_input=True, confirmation_prompt=True)
    if not password:
        fail("no password given")
    with state.transaction() as session:
        found = registry.find_person(session, person)
        if not found.username:
            fail(f"{found.name} has no username: add one with person add --username")
        registry.set_password(session, person=found, password=password, actor=state.actor)
        console.print(f"password set for {found.username}", highlight=False)
