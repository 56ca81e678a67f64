"""What every route shares, declared once: the app-wide `Portal` (on `app.state.portal`,
built by `create_app`: settings, clock, signer, rate limiter, OIDC provider, CoA sender,
templates) and the `Annotated` dependencies routes ask for by type, as the FastAPI
full-stack template's `api/deps.py` does (`SessionDep`, `CurrentUser`): `PortalDep`,
`SessionDep` (the admin API's transaction) and `SeenClientDep` (the device behind the request).

Pages open their own short transactions through `Portal.db()` (a page may need two: the
change, then the page showing its errors); the admin API takes one per request (`SessionDep`).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, cast
from urllib.parse import urlparse

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from portal.oidc import OidcSignIn
from portal.ratelimit import RateLimiter
from portal.tokens import Signer
from service import enforcement
from service.clients import Client, Mismatch, Unidentified, client_for_ip
from service.config import Settings
from service.db import Session, SessionFactory, transaction
from service.enforcement import CoaSender
from service.explain import PlainDecision, explain_for_mac, local_time_text
from service.facts import decide_for_mac, load_policy
from service.policy.model import Decision
from service.throttle import Throttle

log = logging.getLogger("schoolgate.portal")
HERE = Path(__file__).parent
MAX_FIELD = 200


@dataclass(frozen=True)
class Portal:
    """The app-wide objects and the helpers every journey's pages use."""

    settings: Settings
    session_factory: SessionFactory
    clock: Callable[[], datetime]
    signer: Signer
    limiter: RateLimiter
    throttle: Throttle  # sign-in backoff per source and per account (in the database)
    oidc: OidcSignIn | None
    coa_sender: CoaSender
    templates: Jinja2Templates
    portal_url: str  # ends in "/"
    admin_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    @property
    def portal_host(self) -> str:
        return urlparse(self.portal_url).netloc.lower()

    @contextmanager
    def db(self) -> Iterator[Session]:
        """One short transaction (committed at the end, rolled back on any error)."""
        with transaction(self.session_factory) as session:
            yield session

    def send_coa(self) -> None:
        """After the commit: send the CoA the change queued (the RADIUS server's dispatcher
        retries whatever this does not finish)."""
        enforcement.send_queued(
            session_factory=self.session_factory, settings=self.settings, sender=self.coa_sender
        )

    # ------------------------------------------------------------ who is asking
    def from_admin_network(self, request: Request) -> bool:
        """Whether the client (as `client_ip` sees it: after --trusted-proxy) is in one of
        the configured admin networks (`SCHOOLGATE_ADMIN_NETWORKS`)."""
        try:
            ip = ipaddress.ip_address(client_ip(request))
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in network for network in self.admin_networks)

    def who(self, session: Session, request: Request, claimed_mac: str | None = None) -> Client:
        """The device behind this request; Unidentified or Mismatch when it cannot be told."""
        return client_for_ip(
            session=session,
            ip=client_ip(request),
            claimed_mac=claimed_mac,
            now=self.clock(),
            stale_after=timedelta(seconds=self.settings.accounting_stale_after),
        )

    def seen_client(self, request: Request) -> Client | None:
        """The device behind this request (its own transaction), or None: answer `unseen`."""
        try:
            with self.db() as session:
                return self.who(session, request)
        except (Unidentified, Mismatch):
            return None

    def decision_for(self, session: Session, client: Client) -> Decision:
        return decide_for_mac(
            session,
            client.mac,
            site_code=client.site_code,
            nas_identifier=client.nas_identifier,
            called_station_id=client.called_station_id,
            nas_port_id=client.nas_port_id,
            now=self.clock(),
        )

    def explain(self, session: Session, client: Client) -> PlainDecision:
        """The decision for this device where the network saw it, in plain words."""
        return explain_for_mac(
            session=session,
            mac=client.mac,
            site_code=client.site_code,
            nas_identifier=client.nas_identifier,
            called_station_id=client.called_station_id,
            nas_port_id=client.nas_port_id,
            now=self.clock(),
        )

    def local_time(self, session: Session, site_code: str, moment: datetime | None) -> str | None:
        """`moment` as the site's people read it ("18:00", "08:50 tomorrow"), or None."""
        if moment is None:
            return None
        return local_time_text(load_policy(session, site_code), moment, self.clock())

    # ------------------------------------------------------------ pages
    def render(self, request: Request, name: str, status: int = 200, **ctx: Any) -> HTMLResponse:
        return self.templates.TemplateResponse(request, name, ctx, status_code=status)

    def problem(self, request: Request, title: str, message: str, status: int) -> HTMLResponse:
        return self.render(request, "problem.html", status, title=title, message=message)

    def unseen(self, request: Request) -> HTMLResponse:
        """No open accounting session for this IP (or the URL's MAC disagrees with it)."""
        return self.problem(
            request,
            "We cannot see your device yet",
            "Please reconnect to the school Wi-Fi and open any web page again.",
            409,
        )


def client_ip(request: Request) -> str:
    return request.client.host if request.client else "0.0.0.0"  # noqa: S104


def get_portal(request: Request) -> Portal:
    return cast(Portal, request.app.state.portal)


PortalDep = Annotated[Portal, Depends(get_portal)]


def get_session(request: Request, portal: PortalDep) -> Iterator[Session]:
    """One transaction per API request; after a POST commits, the CoA it queued is sent."""
    with portal.db() as session:
        yield session
    if request.method == "POST":
        portal.send_coa()


SessionDep = Annotated[Session, Depends(get_session)]


def get_seen_client(request: Request, portal: PortalDep) -> Client | None:
    return portal.seen_client(request)


SeenClientDep = Annotated[Client | None, Depends(get_seen_client)]
