"""`db`, `site`, `policy` and `nas` commands."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

import typer
from rich.text import Text

from service import audit, registry, secrets_store, sites
from service import db as dbmod
from service.cli.common import (
    CliState,
    JsonOption,
    WideOption,
    console,
    fail,
    get_state,
    parse_when,
    print_json,
    print_rows,
)
from service.config import with_stored_keys
from service.facts import decide_for_mac, describe_facts, load_device_facts, load_policy
from service.mac import normalize_mac
from service.text import visible

db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
site_app = typer.Typer(help="Schools (sites) in the trust.", no_args_is_help=True)
policy_app = typer.Typer(
    help="Site policies: load, show, explain a decision.", no_args_is_help=True
)
nas_app = typer.Typer(help="NAS clients: Wi-Fi controllers and switches.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(db_app, name="db")
    app.add_typer(site_app, name="site")
    app.add_typer(policy_app, name="policy")
    app.add_typer(nas_app, name="nas")


@db_app.command("upgrade")
def db_upgrade(ctx: typer.Context) -> None:
    """Create or migrate the schema; generate the secret and audit keys the first time."""
    state = get_state(ctx)
    dbmod.upgrade(state.settings.database_url)
    console.print(
        f"database is up to date ({dbmod.display_url(state.settings.database_url)})",
        highlight=False,
    )
    provision_keys(state)


def provision_keys(state: CliState) -> None:
    """Generate the keys that are neither set nor stored (0600, outside the database), use
    them from now on, and anchor the audit chain's head where keying starts."""
    for path in secrets_store.ensure_keys(state.settings):
        console.print(
            f"generated {path} (mode 600): back it up apart from the database", highlight=False
        )
    state.use_settings(with_stored_keys(state.settings))
    chain = audit.chain_for(state.settings)
    if chain is None:
        return
    with state.reading() as session:
        line = audit.start_keyed_era(session=session, chain=chain)
    if line is not None:
        console.print(
            f"audit chain keyed from here; anchored in {chain.anchor_file}", highlight=False
        )


@site_app.command("add")
def site_add(
    ctx: typer.Context,
    code: str = typer.Argument(..., help="Short code, e.g. westgate."),
    name: str = typer.Option(..., "--name", help="The school's name."),
    timezone: str = typer.Option("Europe/London", "--timezone"),
) -> None:
    """Add a school."""
    state = get_state(ctx)
    with state.transaction() as session:
        site = registry.add_site(
            session, code=code, name=name, timezone=timezone, actor=state.actor
        )
        console.print(f"added site {site.code} ({site.name}, {site.timezone})", highlight=False)


@site_app.command("list")
def site_list(ctx: typer.Context, as_json: bool = JsonOption) -> None:
    """List the schools and the policy version in force at each."""
    state = get_state(ctx)
    with state.reading() as session:
        rows = [
            {
                "code": site.code,
                "name": site.name,
                "timezone": site.timezone,
                "policy_version": site.policy_version,
            }
            for site in sites.list_sites(session=session)
        ]
    print_rows(
        rows,
        ["code", "name", "timezone", "policy_version"],
        as_json,
        empty="no sites yet: schoolgate policy load FILE.toml creates one",
    )


@policy_app.command("load")
def policy_load(
    ctx: typer.Context,
    file: Path = typer.Argument(..., help="The site's policy file (TOML)."),
) -> None:
    """Validate a policy file and make it the site's policy in force (creates the site)."""
    state = get_state(ctx)
    with state.transaction() as session:
        row, compiled = registry.load_policy_file(session, path=file, actor=state.actor)
        console.print(
            f"loaded {file.name} as version {row.version} of {compiled.site}'s policy "
            f"({len(compiled.locations)} locations, {len(compiled.rules)} rules)",
            highlight=False,
        )


@policy_app.command("show")
def policy_show(
    ctx: typer.Context,
    site: str = typer.Argument(..., help="Site code."),
    as_json: bool = JsonOption,
    raw: bool = typer.Option(False, "--raw", help="Print the TOML as loaded."),
    wide: bool = WideOption,
) -> None:
    """Show the policy in force at a site: the matrix, locations and rules."""
    state = get_state(ctx)
    with state.reading() as session:
        row = sites.policy_in_force(session=session, site_code=site)
        policy = load_policy(session, site)
    if raw and row is not None:
        console.print(row.toml, markup=False, highlight=False)
        return
    rules = [
        {
            "name": r.name,
            "classes": ", ".join(sorted(c.value for c in r.classes)),
            "access": r.access.value,
            "days": _days_text(r.days),
            "between": _window_text(r.window),
            "locations": ", ".join(sorted(r.locations)) if r.locations is not None else "",
            "except_locations": ", ".join(sorted(r.except_locations)),
        }
        for r in policy.rules
    ]
    access = [
        {"class": c.value, "access": a.value, "vlan": policy.vlans.get(a)}
        for c, a in policy.access.items()
    ]
    locations = [
        {"location": loc.name, "matches": ", ".join(loc.patterns)} for loc in policy.locations
    ]
    if as_json:
        print_json(
            {
                "site": policy.site,
                "school_name": policy.school_name,
                "timezone": policy.timezone,
                "version": row.version if row else None,
                "sha256": row.sha256 if row else None,
                "vlans": {k.value: v for k, v in policy.vlans.items()},
                "access": {k.value: v.value for k, v in policy.access.items()},
                "visitor_aua_valid_until": policy.aua_valid_until,
                "locations": {loc.name: list(loc.patterns) for loc in policy.locations},
                "rules": rules,
            }
        )
        return
    console.print(
        Text.assemble(
            (visible(policy.school_name), "bold"),
            f" ({policy.site}), policy version {row.version if row else '?'}, "
            f"time zone {policy.timezone}",
        )
    )
    print_rows(
        access, ["class", "access", "vlan"], False, title="Access by device class", wide=wide
    )
    print_rows(
        locations,
        ["location", "matches"],
        False,
        title="Locations",
        empty="no locations",
        wide=wide,
    )
    print_rows(
        rules,
        ["name", "classes", "days", "between", "locations", "except_locations", "access"],
        False,
        title="Rules (they only narrow access)",
        empty="no narrowing rules",
        wide=wide,
        drop_order=["except_locations", "locations", "days", "classes"],
    )


DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def _days_text(days: frozenset[int] | None) -> str:
    return "every day" if days is None else ", ".join(DAY_NAMES[d] for d in sorted(days))


def _window_text(window: tuple[int, int] | None) -> str:
    if window is None:
        return ""
    (a, b) = window
    return f"{a // 60:02d}:{a % 60:02d}-{b // 60:02d}:{b % 60:02d}"


@policy_app.command("explain")
def policy_explain(
    ctx: typer.Context,
    mac: str = typer.Argument(..., help="The device's MAC address, any common format."),
    site: str | None = typer.Option(None, "--site", help="Decide as at this site."),
    nas_id: str | None = typer.Option(None, "--nas-id", help="NAS-Identifier (e.g. AP name)."),
    called_station: str | None = typer.Option(
        None, "--called-station", help="Called-Station-Id: AP MAC, optionally :SSID."
    ),
    nas_port_id: str | None = typer.Option(None, "--nas-port-id"),
    at: str | None = typer.Option(None, "--at", help="ISO 8601; site-local when no offset."),
    as_json: bool = JsonOption,
) -> None:
    """Say what access a device gets, and why."""
    state = get_state(ctx)
    canonical = normalize_mac(mac)
    with state.reading() as session:
        facts = load_device_facts(session, [canonical]).get(canonical)
        code = site or (facts.site_code if facts else None)
        tz = "Europe/London"
        if code:
            tz = registry.get_site(session, code).timezone
        when = parse_when(at, tz) or datetime.now(UTC)
        decision = decide_for_mac(
            session,
            canonical,
            site_code=code,
            nas_identifier=nas_id,
            called_station_id=called_station,
            nas_port_id=nas_port_id,
            now=when,
        )
    result = {
        "mac": canonical,
        "site": code,
        "at": when.isoformat(timespec="seconds"),
        **decision.as_dict(),
        "facts": describe_facts(facts),
    }
    if as_json:
        print_json(result)
        return
    vlan = f"VLAN {decision.vlan}" if decision.vlan is not None else "Access-Reject"
    console.print(
        Text.assemble(
            (canonical, "bold"), f" at {code}: ", (decision.access.value, "bold"), f" ({vlan})"
        )
    )
    console.print(f"  why:     {decision.reason}", highlight=False)
    console.print(f"  rule:    {decision.rule}", highlight=False)
    if decision.location:
        console.print(f"  where:   {decision.location}", highlight=False)
    if decision.lifted_rule:
        console.print(
            f'  lifted:  the exception lifts the rule "{decision.lifted_rule}"', highlight=False
        )
    if decision.held_rule:
        console.print(
            f'  not lifted: the rule "{decision.held_rule}" holds for exceptions too',
            highlight=False,
        )
    timeout = decision.session_timeout
    console.print(f"  re-check in: {'-' if timeout is None else f'{timeout} s'}", highlight=False)


@nas_app.command("add")
def nas_add(
    ctx: typer.Context,
    site: str = typer.Option(..., "--site"),
    name: str = typer.Option(..., "--name"),
    address: str = typer.Option(..., "--address", help="IP address or CIDR the NAS sends from."),
    secret: str | None = typer.Option(
        None,
        "--secret",
        help="RADIUS shared secret; `-` (or leaving it out on a terminal) asks for it, or "
        "reads one line from stdin. Prefer --secret-file: argv is visible in `ps`.",
    ),
    secret_file: Path | None = typer.Option(
        None, "--secret-file", help="Read the shared secret from this file (its first line)."
    ),
    vendor: str = typer.Option(
        "generic", "--vendor", help="generic, cisco, aruba, unifi, meraki, ruckus"
    ),
    coa_port: int | None = typer.Option(
        None,
        "--coa-port",
        help="UDP port the NAS takes Disconnect/CoA on; default: the vendor's "
        "(cisco and meraki 1700, the others 3799).",
    ),
    allow_missing_message_authenticator: bool = typer.Option(
        False,
        "--allow-missing-message-authenticator",
        help="Old kit only: accept Access-Requests without Message-Authenticator (BlastRADIUS).",
    ),
) -> None:
    """Register a Wi-Fi controller or switch that may ask schoolgate."""
    state = get_state(ctx)
    shared_secret = _nas_secret(secret, secret_file)
    with state.transaction() as session:
        nas = registry.add_nas(
            session,
            site_code=site,
            name=name,
            address=address,
            secret=shared_secret,
            vendor=vendor,
            coa_port=coa_port,
            require_message_authenticator=not allow_missing_message_authenticator,
            actor=state.actor,
        )
        console.print(
            f"added NAS {nas.name} ({nas.address}, {nas.vendor.value}, CoA udp {nas.coa_port}) "
            f"at {site}",
            highlight=False,
        )


ASK = "-"  # `--secret -`: ask on a terminal, else read a line of stdin


def _nas_secret(secret: str | None, secret_file: Path | None) -> str:
    """The shared secret from argv, a file, a prompt on a terminal or a line of stdin."""
    if secret is not None and secret_file is not None:
        fail("give the shared secret once: --secret or --secret-file")
    if secret_file is not None:
        try:
            lines = secret_file.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            fail(f"cannot read {secret_file}: {exc.strerror}")
        except UnicodeDecodeError:
            fail(f"{secret_file} is not a text file")
        filled = [line for line in lines if line]
        if len(filled) > 1:
            fail(f"{secret_file} holds more than one line: put only the shared secret in it")
        return filled[0] if filled else ""
    if secret is not None and secret != ASK:
        return secret
    if sys.stdin.isatty():
        value: str = typer.prompt(
            "RADIUS shared secret", hide_input=True, confirmation_prompt=True, err=True
        )
        return value
    if secret == ASK:
        return sys.stdin.readline().rstrip("\r\n")
    return fail(
        "no shared secret: give --secret-file PATH, --secret - (stdin), or run on a terminal"
    )


@nas_app.command("list")
def nas_list(ctx: typer.Context, wide: bool = WideOption, as_json: bool = JsonOption) -> None:
    """List NAS clients (secrets are not shown)."""
    state = get_state(ctx)
    with state.reading() as session:
        rows = [
            {
                "site": nas.site,
                "name": nas.name,
                "address": nas.address,
                "vendor": nas.vendor.value,
                "coa_port": nas.coa_port,
                "message_authenticator": "required"
                if nas.require_message_authenticator
                else "optional",
            }
            for nas in sites.list_nas_clients(session=session)
        ]
    print_rows(
        rows,
        ["site", "name", "address", "vendor", "coa_port", "message_authenticator"],
        as_json,
        empty="no NAS clients yet: schoolgate nas add ...",
        wide=wide,
    )
