"""The captive portal and admin API: `create_app(settings) -> FastAPI`.

Pages are server-rendered and work with no JavaScript and no cookies: every form carries an
HMAC-signed token bound to the device, and every POST ends in a redirect or a page.

One router per journey (`portal/routes/`: captive probes and landing, visitor, staff; and
`portal/api.py`, the admin API); what they share is built here once, put on `app.state`, and
handed to routes through the `Annotated` dependencies in `portal/deps.py`.
"""

from __future__ import annotations

import ipaddress
import logging
import secrets
from collections.abc import Callable
from datetime import UTC, datetime

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from portal import api, health
from portal.agreement_html import agreement_html, starts_with_heading
from portal.deps import HERE, Portal
from portal.metrics import PortalMetrics
from portal.oidc import OidcSignIn
from portal.ratelimit import RateLimiter
from portal.routes import captive, staff, visitor
from portal.tokens import Signer
from service import audit
from service.config import Settings
from service.db import SessionFactory, make_engine, make_session_factory
from service.enforcement import CoaSender, NullCoaSender
from service.secrets_store import SECRET_KEY_FILE
from service.throttle import DatabaseFailures, Throttle


def create_app(
    settings: Settings,
    *,
    session_factory: SessionFactory | None = None,
    clock: Callable[[], datetime] | None = None,
    oidc: OidcSignIn | None = None,
    coa_sender: CoaSender | None = None,
    metrics: PortalMetrics | None = None,
) -> FastAPI:
    """The portal app. `coa_sender`: what sends the CoA a registration or an API change
    queued, right after its commit (the composition root picks it: `sender_for(settings)`);
    the null sender leaves the requests to the RADIUS server's dispatcher."""
    signer = Signer(_signing_key(settings))
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.filters["agreement_html"] = agreement_html
    templates.env.filters["starts_with_heading"] = starts_with_heading
    portal_url = (
        settings.portal_url if settings.portal_url.endswith("/") else settings.portal_url + "/"
    )
    session_factory = session_factory or make_session_factory(
        make_engine(settings.database_url), audit_chain=audit.chain_for(settings)
    )
    portal = Portal(
        settings=settings,
        session_factory=session_factory,
        clock=clock or (lambda: datetime.now(UTC)),
        signer=signer,
        limiter=RateLimiter(settings.portal_rate_limit_per_minute),
        throttle=Throttle.from_limits(
            free=settings.portal_login_max_failures,
            source_max_seconds=settings.signin_backoff_source_max_seconds,
            account_max_seconds=settings.signin_backoff_account_max_seconds,
            # Shared by every portal node (issue 13): the counts are in the database.
            store=DatabaseFailures(session_factory),
        ),
        # Staff may also sign in with the school's OIDC provider when one is configured.
        oidc=oidc or OidcSignIn.from_settings(settings, signer, portal_url + "staff/oidc/callback"),
        coa_sender=coa_sender or NullCoaSender(),
        templates=templates,
        portal_url=portal_url,
        admin_networks=tuple(
            ipaddress.ip_network(n, strict=False) for n in settings.admin_networks
        ),
    )
    app = FastAPI(
        title="schoolgate portal and admin API",
        version="1",
        # The docs and schema are off unless `api_docs` is set, and then, like the API,
        # answer only the admin networks.
        docs_url="/api/v1/docs" if settings.api_docs else None,
        redoc_url=None,
        openapi_url="/api/v1/openapi.json" if settings.api_docs else None,
    )
    app.state.portal = portal
    app.state.database_watch = health.DatabaseWatch()
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    app.middleware("http")(captive.guard)
    app.middleware("http")(api.admin_networks_only)
    app.middleware("http")(health.database_guard)  # a database error is a 503
    if metrics is not None:  # outermost: counts the 503s too
        app.middleware("http")(metrics.middleware)
    app.include_router(health.router)
    app.include_router(api.router)
    app.include_router(captive.router)
    app.include_router(visitor.router)
    app.include_router(staff.router)
    return app


def _signing_key(settings: Settings) -> str:
    """The secret key; with none set or stored (`schoolgate db upgrade` makes one), a random
    key for this process only: nothing signed can be forged, but nothing outlives a restart.
    The serve commands refuse that off loopback (service/secrets_store.check_serving_keys)."""
    if settings.secret_key is not None:
        return settings.secret_key.get_secret_value()
    logging.getLogger("schoolgate.portal").warning(
        "no SCHOOLGATE_SECRET_KEY and no %s: signing with a random key for this process",
        settings.key_dir / SECRET_KEY_FILE,
    )
    return secrets.token_urlsafe(48)
