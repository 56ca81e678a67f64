"""`schoolgate demo`: a demo school on the embedded SQLite default, and its decision table."""

from __future__ import annotations

import socket
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import typer

from service import db as dbmod
from service import sites
from service.cli.admin import provision_keys
from service.cli.common import console, get_state, print_rows
from service.demo import DEMO_DEVICES, DEMO_VISITOR_CODE, UNKNOWN_DEVICE, seed_demo_school
from service.facts import decide_for_mac

if TYPE_CHECKING:
    from service.cli.serve import ServeAddresses


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)


def demo(
    ctx: typer.Context,
    serve: bool = typer.Option(
        False, "--serve/--no-serve", help="Then start the RADIUS server and the portal."
    ),
    auth_port: int = typer.Option(1812, "--auth-port", help="With --serve: RADIUS auth port."),
    acct_port: int = typer.Option(1813, "--acct-port", help="With --serve: accounting port."),
    portal_port: int = typer.Option(8080, "--portal-port", help="With --serve: portal port."),
) -> None:
    """Create the Westgate demo school (if not there yet) and print what each device gets."""
    state = get_state(ctx)
    dbmod.upgrade(state.settings.database_url)
    provision_keys(state)
    with state.transaction() as session:
        if sites.find_site(session=session, code="westgate") is None:
            seed_demo_school(session, actor=state.actor)
            console.print(
                f"created the Westgate Primary demo school ({state.settings.database_url})",
                highlight=False,
            )
    now = datetime.now(UTC)
    rows = []
    with state.reading() as session:
        for mac, _cls, _owner, label in (
            *DEMO_DEVICES,
            (UNKNOWN_DEVICE, "", None, "unregistered device"),
        ):
            decision = decide_for_mac(session, mac, site_code="westgate", now=now)
            rows.append(
                {
                    "device": label,
                    "mac": mac,
                    "access": decision.access.value,
                    "vlan": decision.vlan if decision.vlan is not None else "reject",
                    "why": decision.reason,
                }
            )
    print_rows(
        rows,
        ["device", "mac", "access", "vlan", "why"],
        False,
        title="Westgate Primary: what each device gets now",
    )
    console.print(
        "Explain one: schoolgate policy explain 02:00:00:00:20:01 --json", highlight=False
    )
    console.print(
        f"Visitors type a code from reception: today's is {DEMO_VISITOR_CODE}"
        " (more: schoolgate visitor code --name NAME)",
        highlight=False,
    )
    if serve:
        from service.cli.serve import ServeAddresses, serve_all

        where = ServeAddresses("127.0.0.1", auth_port, acct_port, portal_port)
        settings = state.settings.model_copy(
            update={"portal_url": f"http://127.0.0.1:{where.portal_port}/"}
        )
        serve_all(settings, where, on_ready=lambda: start_demo_browser_session(where))


def start_demo_browser_session(where: ServeAddresses) -> None:
    """Play the demo controller: an Accounting Start saying this machine's browser
    (127.0.0.1) is the unregistered device, so the portal can tell who it is."""
    from radius import codec
    from service.demo import DEMO_NAS_SECRET

    attributes = b"".join(
        (
            codec.attr_int(codec.ACCT_STATUS_TYPE, 1),  # Start
            codec.attr_text(codec.ACCT_SESSION_ID, "demo-browser"),
            codec.attr_text(codec.USER_NAME, UNKNOWN_DEVICE.replace(":", "")),
            codec.attr_text(codec.CALLING_STATION_ID, UNKNOWN_DEVICE.replace(":", "-").upper()),
            codec.attr_text(codec.NAS_IDENTIFIER, "demo-controller"),
            codec.attr_ipv4(codec.NAS_IP_ADDRESS, "127.0.0.1"),
            codec.attr_ipv4(codec.FRAMED_IP_ADDRESS, "127.0.0.1"),
        )
    )
    packet = codec.encode_request(codec.ACCOUNTING_REQUEST, 1, attributes, DEMO_NAS_SECRET.encode())
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2.0)
        for _ in range(3):
            sock.sendto(packet, ("127.0.0.1", where.acct_port))
            try:
                sock.recv(4096)
            except TimeoutError:
                continue
            console.print(
                f"demo: the browser on this machine is the unregistered device {UNKNOWN_DEVICE};"
                f" open http://127.0.0.1:{where.portal_port}/ to sign the visitor AUA"
                f" with today's visitor code {DEMO_VISITOR_CODE}",
                highlight=False,
            )
            return
    console.print("demo: the RADIUS server did not answer the accounting start", style="red")
