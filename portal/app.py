"""The captive portal and admin API: `create_app(settings) -> FastAPI`.

Pages are server-rendered and work with no JavaScript and no cookies: every form carries an
HMAC-signed token bound to the device, and every POST ends in a redirect or a page.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlparse
from zoneinfo import ZoneInfo

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from sqlalchemy.orm import Session, sessionmaker
from starlette.background import BackgroundTask

from portal import api
from portal.identify import Client, Mismatch, Unidentified, identify
from portal.oidc import OidcSignIn, ProviderUnavailable, SignInRefused
from portal.ratelimit import RateLimiter
from portal.signin import LocalAccounts, SignInSource
from portal.tokens import Signer
from portal.vendors import RedirectInfo, parse_redirect, safe_url
from service import enforcement, registry
from service.config import Settings
from service.db import make_engine, make_session_factory, transaction
from service.enums import Access, AgreementKind, DeviceClass, DeviceStatus, SignatureSource
from service.errors import Invalid, NotFound, SchoolgateError
from service.facts import decide_for_mac, load_policy
from service.mac import is_locally_administered
from service.models import Device, Person
from service.policy.model import Decision

log = logging.getLogger("schoolgate.portal")
HERE = Path(__file__).parent
ACTOR = "portal"

# What each OS expects from its probe once the network is open.
PROBE_ANSWERS: dict[str, tuple[int, str, str]] = {
    "/hotspot-detect.html": (
        200,
        "<HTML><HEAD><TITLE>Success</TITLE></HEAD><BODY>Success</BODY></HTML>",
        "text/html",
    ),
    "/library/test/success.html": (
        200,
        "<HTML><HEAD><TITLE>Success</TITLE></HEAD><BODY>Success</BODY></HTML>",
        "text/html",
    ),
    "/generate_204": (204, "", "text/plain"),
    "/gen_204": (204, "", "text/plain"),
    "/connecttest.txt": (200, "Microsoft Connect Test", "text/plain"),
    "/ncsi.txt": (200, "Microsoft NCSI", "text/plain"),
    "/redirect": (200, "", "text/plain"),
    "/canonical.html": (
        200,
        '<meta http-equiv="refresh" content="0;url=https://support.mozilla.org/kb/captive-portal"/>',
        "text/html",
    ),
    "/success.txt": (200, "success\n", "text/plain"),
}
MAX_FIELD = 200


def create_app(
    settings: Settings,
    *,
    session_factory: sessionmaker[Session] | None = None,
    clock: Callable[[], datetime] | None = None,
    sign_in: SignInSource | None = None,
    oidc: OidcSignIn | None = None,
) -> FastAPI:
    factory = session_factory or make_session_factory(make_engine(settings.database_url))
    now_fn = clock or (lambda: datetime.now(UTC))
    signer = Signer(settings.secret_key.get_secret_value())
    limiter = RateLimiter(settings.portal_rate_limit_per_minute)
    source = sign_in or LocalAccounts(
        settings.portal_login_max_failures, settings.portal_lockout_minutes
    )
    portal_url = (
        settings.portal_url if settings.portal_url.endswith("/") else settings.portal_url + "/"
    )
    portal_host = urlparse(portal_url).netloc.lower()
    # Staff may also sign in with the school's OIDC provider when one is configured.
    oidc = oidc or OidcSignIn.from_settings(settings, signer, portal_url + "staff/oidc/callback")
    templates = Jinja2Templates(directory=str(HERE / "templates"))

    app = FastAPI(
        title="schoolgate portal and admin API",
        version="1",
        docs_url="/api/v1/docs",
        redoc_url=None,
        openapi_url="/api/v1/openapi.json",
    )
    app.state.session_factory = factory
    app.state.settings = settings
    app.state.clock = now_fn
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    app.include_router(api.router)

    def send_coa() -> None:
        """After the commit: send the CoA the change queued (the RADIUS server's dispatcher
        retries whatever this does not finish)."""
        flush_coa(settings, factory)

    @contextmanager
    def db() -> Iterator[Session]:
        with transaction(factory) as session:
            session.info[enforcement.CLOCK_KEY] = now_fn
            yield session

    def client_ip(request: Request) -> str:
        return request.client.host if request.client else "0.0.0.0"  # noqa: S104

    def render(request: Request, name: str, status: int = 200, **ctx: Any) -> HTMLResponse:
        return templates.TemplateResponse(request, name, ctx, status_code=status)

    def problem(request: Request, title: str, message: str, status: int) -> HTMLResponse:
        return render(request, "problem.html", status, title=title, message=message)

    def unseen(request: Request) -> HTMLResponse:
        """No open accounting session for this IP (or the URL's MAC disagrees with it)."""
        return problem(
            request,
            "We cannot see your device yet",
            "Please reconnect to the school Wi-Fi and open any web page again.",
            409,
        )

    def seen_client(request: Request) -> Client | None:
        """The device behind this request (its own transaction), or None: answer `unseen`."""
        try:
            with db() as session:
                return who(session, request, RedirectInfo("none"))
        except (Unidentified, Mismatch):
            return None

    def who(session: Session, request: Request, info: RedirectInfo) -> Client:
        return identify(session, client_ip(request), info.mac)

    def decision_for(session: Session, client: Client) -> Decision:
        return decide_for_mac(
            session,
            client.mac,
            site_code=client.site_code,
            nas_identifier=client.nas_identifier,
            called_station_id=client.called_station_id,
            nas_port_id=client.nas_port_id,
            now=now_fn(),
        )

    def local_time(session: Session, site_code: str, moment: datetime | None) -> str | None:
        if moment is None:
            return None
        tz = ZoneInfo(load_policy(session, site_code).timezone)
        return moment.astimezone(tz).strftime("%H:%M on %A %d %B %Y")

    @app.middleware("http")
    async def guard(request: Request, call_next: Callable[[Request], Any]) -> Response:
        if not limiter.allow(client_ip(request)):
            return PlainTextResponse(
                "Too many requests from this address: please wait a minute and try again.",
                status_code=429,
                headers={"Retry-After": "60"},
            )
        host = (request.headers.get("host") or "").lower()
        path = request.url.path
        if host != portal_host and not path.startswith("/api/v1"):
            return probe(request, path)
        if path in PROBE_ANSWERS:
            return probe(request, path)
        response: Response = await call_next(request)
        if path.startswith("/api/captive") or response.headers.get("content-type", "").startswith(
            "text/html"
        ):
            response.headers.setdefault("Cache-Control", "no-store")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("X-Frame-Options", "DENY")
        return response

    def is_captive(request: Request) -> bool:
        """Captive unless the network knows this device and it has more than the garden."""
        try:
            with db() as session:
                client = identify(session, client_ip(request))
                return decision_for(session, client).access is Access.REGISTRATION
        except (SchoolgateError, Unidentified):
            return True

    def probe(request: Request, path: str) -> Response:
        if is_captive(request) or path not in PROBE_ANSWERS:
            return RedirectResponse(
                portal_url, status_code=302, headers={"Cache-Control": "no-store"}
            )
        status, body, media = PROBE_ANSWERS[path]
        return Response(
            body, status_code=status, media_type=media, headers={"Cache-Control": "no-store"}
        )

    @app.get("/api/captive", include_in_schema=False)
    def captive_api(request: Request) -> Response:
        """RFC 8908 Captive Portal API."""
        import json

        body: dict[str, Any] = {"captive": True, "user-portal-url": portal_url}
        try:
            with db() as session:
                client = identify(session, client_ip(request))
                decision = decision_for(session, client)
                if decision.access is not Access.REGISTRATION:
                    body["captive"] = False
                    if decision.session_timeout:
                        body["seconds-remaining"] = int(decision.session_timeout)
                    body["can-extend-session"] = False
        except (SchoolgateError, Unidentified):
            pass
        body["venue-info-url"] = portal_url + "about"
        return Response(
            json.dumps(body),
            media_type="application/captive+json",
            headers={"Cache-Control": "private"},
        )

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> PlainTextResponse:
        return PlainTextResponse("ok")

    @app.get("/about", response_class=HTMLResponse, include_in_schema=False)
    def about(request: Request) -> HTMLResponse:
        return render(request, "about.html")

    def carry(info: RedirectInfo) -> str:
        """The continue URL travels in a hidden field (validated again on the way back)."""
        return info.continue_url or ""

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def landing(request: Request) -> Response:
        info = parse_redirect(dict(request.query_params))
        if info.raw_mac and info.mac is None:
            return problem(
                request,
                "Bad link",
                "The link from the network has a device address "
                "that is not valid. Please open any web page again.",
                400,
            )
        try:
            with db() as session:
                client = who(session, request, info)
                decision = decision_for(session, client)
                policy = load_policy(session, client.site_code)
                device = session.query(Device).filter(Device.mac == client.mac).one_or_none()
                ctx: dict[str, Any] = {
                    "mac": client.mac,
                    "school": policy.school_name or client.site_code,
                    "decision": decision,
                    "device": device,
                    "private_mac": is_locally_administered(client.mac),
                    "continue_url": carry(info),
                }
        except Mismatch:
            return problem(
                request,
                "We could not confirm your device",
                "The address in the link does not match the device the network saw. "
                "Please reconnect to the Wi-Fi and open any web page again.",
                403,
            )
        except Unidentified:
            return problem(
                request,
                "We cannot see your device yet",
                "Please make sure you are connected to the school Wi-Fi, wait a few "
                "seconds and open any web page again.",
                409,
            )
        if device is not None and device.device_class is DeviceClass.LEARNER_OWNED:
            return RedirectResponse("/refused", status_code=303)
        return render(request, "landing.html", **ctx)

    @app.get("/refused", response_class=HTMLResponse, include_in_schema=False)
    def refused(request: Request) -> HTMLResponse:
        try:
            with db() as session:
                client = who(session, request, RedirectInfo("none"))
                policy = load_policy(session, client.site_code)
                device = session.query(Device).filter(Device.mac == client.mac).one_or_none()
                cls = device.device_class if device else DeviceClass.LEARNER_OWNED
                text = policy.explanations.get(cls.value) or (
                    "This device is not allowed on the school network by the school's policy."
                )
                return render(request, "refused.html", school=policy.school_name, text=text)
        except (Unidentified, Mismatch):
            return unseen(request)

    # ---------------------------------------------------------------- visitor
    @app.get("/visitor", response_class=HTMLResponse, include_in_schema=False)
    def visitor_form(request: Request) -> HTMLResponse:
        return _visitor_page(request, {}, [])

    def _visitor_page(
        request: Request, form: dict[str, str], errors: list[str], status: int = 200
    ) -> HTMLResponse:
        try:
            with db() as session:
                client = who(session, request, RedirectInfo("none"))
                agreement = registry.current_agreement(
                    session, AgreementKind.VISITOR_AUA, client.site_code
                )
                policy = load_policy(session, client.site_code)
                return render(
                    request,
                    "visitor.html",
                    status,
                    agreement=agreement,
                    school=policy.school_name or client.site_code,
                    csrf=signer.csrf("visitor", client.mac),
                    form=form,
                    errors=errors,
                    continue_url=form.get("continue_url")
                    or request.query_params.get("continue_url", ""),
                )
        except (Unidentified, Mismatch):
            return unseen(request)
        except NotFound:
            return problem(
                request,
                "Visitor access is not set up",
                "The school has not published its visitor agreement yet. Please ask at reception.",
                503,
            )

    @app.post("/visitor", response_class=HTMLResponse, include_in_schema=False)
    async def visitor_submit(request: Request) -> Response:
        form = {k: str(v)[:2048] for k, v in (await request.form()).items()}
        return _visitor_sign(request, form)

    def _visitor_sign(request: Request, form: dict[str, str]) -> Response:
        errors: list[str] = []
        name = form.get("name", "").strip()
        org = form.get("organisation", "").strip()
        visiting = form.get("visiting", "").strip()
        typed = form.get("typed_name", "").strip()
        for label, value in (
            ("Your name", name),
            ("Whom you are visiting", visiting),
            ("Your typed name to sign", typed),
        ):
            if not value:
                errors.append(f"{label} is required.")
            elif len(value) > MAX_FIELD:
                errors.append(f"{label} is too long (at most {MAX_FIELD} characters).")
        if len(org) > MAX_FIELD:
            errors.append(f"Organisation is too long (at most {MAX_FIELD} characters).")
        if form.get("agree") != "yes":
            errors.append("Tick the box to agree to the acceptable use agreement.")
        if typed and name and typed.casefold() != name.casefold():
            errors.append("Type your name exactly as above to sign.")
        try:
            with db() as session:
                client = who(session, request, RedirectInfo("none"))
                signer.check_csrf(form.get("csrf"), "visitor", client.mac)
                if errors:
                    raise Invalid("; ".join(errors))
                agreement = registry.current_agreement(
                    session, AgreementKind.VISITOR_AUA, client.site_code
                )
                if str(agreement.version) != form.get("version"):
                    raise Invalid(
                        "the agreement changed while you were reading it: please "
                        "read the current version and sign again"
                    )
                # add_device and sign_agreement each queue the CoA their change causes
                # (enforcement.watch), after the signature: one request for the session.
                device = session.query(Device).filter(Device.mac == client.mac).one_or_none()
                if device is None:
                    registry.add_device(
                        session,
                        mac=client.mac,
                        site_code=client.site_code,
                        device_class=DeviceClass.VISITOR_OWNED,
                        name=f"{name} ({org})"[:MAX_FIELD] if org else name,
                        actor=ACTOR,
                    )
                elif device.device_class is not DeviceClass.VISITOR_OWNED:
                    raise Invalid(
                        "this device is already registered to the school; "
                        "visitor access is for visitors' own devices"
                    )
                registry.sign_agreement(
                    session,
                    kind=AgreementKind.VISITOR_AUA,
                    typed_name=typed,
                    signed_at=now_fn(),
                    source=SignatureSource.PORTAL,
                    actor=ACTOR,
                    device_mac=client.mac,
                    site_code=client.site_code,
                    client_ip=client.ip,
                    user_agent=request.headers.get("user-agent"),
                    organisation=org or None,
                    visiting=visiting,
                )
                log.info("portal: visitor AUA signed for %s from %s", client.mac, client.ip)
        except (Unidentified, Mismatch):
            return unseen(request)
        except Invalid as exc:
            msgs = errors or [str(exc)]
            return _visitor_page(request, form, msgs, 400)
        next_url = safe_url(form.get("continue_url"))
        target = "/done" + ("?" + urlencode({"continue_url": next_url}) if next_url else "")
        return RedirectResponse(target, status_code=303, background=BackgroundTask(send_coa))

    @app.get("/done", response_class=HTMLResponse, include_in_schema=False)
    def done(request: Request) -> HTMLResponse:
        try:
            with db() as session:
                client = who(session, request, RedirectInfo("none"))
                decision = decision_for(session, client)
                device = session.query(Device).filter(Device.mac == client.mac).one_or_none()
                until = None
                if decision.session_timeout and decision.access not in (
                    Access.NONE,
                    Access.REGISTRATION,
                ):
                    from datetime import timedelta

                    until = local_time(
                        session,
                        client.site_code,
                        now_fn() + timedelta(seconds=decision.session_timeout),
                    )
                next_url = safe_url(request.query_params.get("continue_url"))
                return render(
                    request,
                    "done.html",
                    decision=decision,
                    until=until,
                    device=device,
                    pending=device is not None and device.status is DeviceStatus.PENDING,
                    continue_url=next_url or "",
                )
        except (Unidentified, Mismatch):
            return unseen(request)

    # ---------------------------------------------------------------- staff
    @app.get("/staff", response_class=HTMLResponse, include_in_schema=False)
    def staff_form(request: Request) -> HTMLResponse:
        return _staff_signin_page(request, [], "")

    def _staff_signin_page(
        request: Request, errors: list[str], username: str, status: int = 200
    ) -> HTMLResponse:
        client = seen_client(request)
        if client is None:
            return unseen(request)
        return render(
            request,
            "staff_signin.html",
            status,
            errors=errors,
            username=username,
            csrf=signer.csrf("staff-signin", client.mac),
            oidc_name=oidc.name if oidc else None,
        )

    @app.post("/staff", response_class=HTMLResponse, include_in_schema=False)
    async def staff_signin(request: Request) -> Response:
        form = {k: str(v)[:1024] for k, v in (await request.form()).items()}
        username = form.get("username", "")
        session = factory()
        try:
            client = who(session, request, RedirectInfo("none"))
            signer.check_csrf(form.get("csrf"), "staff-signin", client.mac)
            person = source.authenticate(session, username, form.get("password", ""), now_fn())
            ticket = signer.ticket(person.id, client.mac)
            session.commit()
        except (Unidentified, Mismatch):
            session.rollback()
            return unseen(request)
        except Invalid as exc:
            session.commit()  # keep the failed-attempt count
            log.info(
                "portal: staff sign-in refused for %r from %s: %s",
                username,
                client_ip(request),
                exc,
            )
            return _staff_signin_page(request, [str(exc)], username, 400)
        finally:
            session.close()
        return _byod_page(request, ticket, {}, [])

    # ---------------------------------------------------------------- staff: OIDC
    def _oidc_unavailable(request: Request) -> HTMLResponse:
        return problem(
            request,
            "Not available",
            "Signing in with a school Google or Microsoft account is not set up here.",
            404,
        )

    @app.get("/staff/oidc", include_in_schema=False)
    def staff_oidc_start(request: Request) -> Response:
        """Start the OIDC sign-in: 302 to the provider, the device's MAC inside `state`."""
        if oidc is None:
            return _oidc_unavailable(request)
        client = seen_client(request)
        if client is None:
            return unseen(request)
        try:
            url = oidc.start(client.mac)
        except ProviderUnavailable as exc:
            log.warning("portal: OIDC sign-in for %s (%s): %s", client.ip, client.mac, exc)
            return _staff_signin_page(
                request,
                [
                    f"We cannot reach {oidc.name} just now: try again in a minute, "
                    "or sign in with your school network account."
                ],
                "",
                503,
            )
        return RedirectResponse(url, status_code=302)

    @app.get("/staff/oidc/callback", response_class=HTMLResponse, include_in_schema=False)
    def staff_oidc_callback(request: Request) -> Response:
        """The provider's redirect back: same device, verified ID token, active staff."""
        if oidc is None:
            return _oidc_unavailable(request)
        params = {k: v[:4096] for k, v in request.query_params.items()}
        client = seen_client(request)
        if client is None:
            return unseen(request)
        try:
            claims = oidc.finish(params, client.mac)  # no DB transaction held over the network
            with db() as session:
                person = oidc.person_for(session, claims)
                ticket = signer.ticket(person.id, client.mac)
                who_signed = person.username or person.email or str(person.id)
        except ProviderUnavailable as exc:
            log.warning("portal: OIDC sign-in for %s (%s): %s", client.ip, client.mac, exc)
            return _staff_signin_page(
                request,
                [f"We cannot reach {oidc.name} just now: please try again in a minute."],
                "",
                503,
            )
        except SignInRefused as exc:
            log.info(
                "portal: OIDC sign-in refused for %s (%s): %s", client.ip, client.mac, exc.reason
            )
            return _staff_signin_page(request, [str(exc)], "", 400)
        log.info(
            "portal: staff %s signed in with %s for %s (%s)",
            who_signed,
            oidc.name,
            client.mac,
            client.ip,
        )
        return _byod_page(request, ticket, {}, [])

    def _byod_page(
        request: Request, ticket: str, form: dict[str, str], errors: list[str], status: int = 200
    ) -> HTMLResponse:
        with db() as session:
            client = who(session, request, RedirectInfo("none"))
            person_id = signer.check_ticket(ticket, client.mac)
            person = session.get(Person, person_id)
            agreement = registry.current_agreement(
                session, AgreementKind.STAFF_BYOD, client.site_code
            )
            return render(
                request,
                "staff_byod.html",
                status,
                person=person,
                agreement=agreement,
                ticket=ticket,
                csrf=signer.csrf("staff-byod", client.mac),
                form=form,
                errors=errors,
                private_mac=is_locally_administered(client.mac),
                mac=client.mac,
            )

    @app.post("/staff/register", response_class=HTMLResponse, include_in_schema=False)
    async def staff_register(request: Request) -> Response:
        form = {k: str(v)[:1024] for k, v in (await request.form()).items()}
        ticket = form.get("ticket", "")
        errors: list[str] = []
        device_name = form.get("device_name", "").strip()
        typed = form.get("typed_name", "").strip()
        if not device_name:
            errors.append("Give the device a name, such as “Jo's iPhone”.")
        elif len(device_name) > MAX_FIELD:
            errors.append(f"The device name is too long (at most {MAX_FIELD} characters).")
        if form.get("agree") != "yes":
            errors.append("Tick the box to agree to the BYOD statement.")
        if not typed:
            errors.append("Type your name to sign.")
        try:
            with db() as session:
                client = who(session, request, RedirectInfo("none"))
                person_id = signer.check_ticket(ticket, client.mac)
                signer.check_csrf(form.get("csrf"), "staff-byod", client.mac)
                person = session.get(Person, person_id)
                if person is None or not person.active:
                    raise Invalid("please sign in again")
                if errors:
                    raise Invalid("; ".join(errors))
                # add_device and sign_agreement each queue the CoA their change causes
                # (enforcement.watch), after the signature: one request for the session.
                device = session.query(Device).filter(Device.mac == client.mac).one_or_none()
                if device is None:
                    registry.add_device(
                        session,
                        mac=client.mac,
                        site_code=client.site_code,
                        device_class=DeviceClass.STAFF_OWNED,
                        owner=person,
                        name=device_name,
                        status=DeviceStatus.PENDING,
                        actor=f"portal:{person.username or person.id}",
                    )
                elif device.owner_id != person.id:
                    raise Invalid(
                        "this device is already registered to someone else: "
                        "please ask the IT office"
                    )
                registry.sign_agreement(
                    session,
                    kind=AgreementKind.STAFF_BYOD,
                    typed_name=typed,
                    signed_at=now_fn(),
                    source=SignatureSource.PORTAL,
                    actor=f"portal:{person.username or person.id}",
                    person=person,
                    device_mac=client.mac,
                    site_code=client.site_code,
                    client_ip=client.ip,
                    user_agent=request.headers.get("user-agent"),
                )
        except (Unidentified, Mismatch):
            return unseen(request)
        except Invalid as exc:
            try:
                return _byod_page(request, ticket, form, errors or [str(exc)], 400)
            except Invalid:
                return _staff_signin_page(request, [str(exc)], "", 400)
        return RedirectResponse("/done", status_code=303, background=BackgroundTask(send_coa))

    return app


def flush_coa(settings: Settings, factory: sessionmaker[Session]) -> None:
    if not settings.coa_enabled:
        return
    try:
        from radius.coa.dispatcher import dispatch_pending
    except ImportError:  # a portal-only install: the RADIUS nodes' dispatcher sends them
        return
    try:
        dispatch_pending(factory, settings, deadline=2.0)
    except Exception:  # the change is committed; the dispatcher retries
        log.exception("portal: sending CoA after the change failed")
