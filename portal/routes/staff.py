"""The staff journey: sign in (school password or the school's OIDC provider), then register
a personal device and sign the BYOD statement. The sign-in travels as a signed ticket bound
to the device, not a cookie."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.background import BackgroundTask

from portal.deps import MAX_FIELD, Portal, PortalDep, SeenClientDep, client_ip
from portal.oidc import ProviderUnavailable, SignInRefused
from service.agreements import current_agreement
from service.clients import Client, Mismatch, Unidentified
from service.enums import AgreementKind, DeviceClass
from service.errors import Invalid
from service.facts import load_policy
from service.mac import is_locally_administered
from service.registration import Refused, refuse_if_never_allowed, register_staff_device
from service.signin import Throttled, active_person, sign_in_with_password, ticket_holder
from service.text import check_text, find_control

log = logging.getLogger("schoolgate.portal")
router = APIRouter(include_in_schema=False)


def _staff_signin_page(
    portal: Portal,
    request: Request,
    client: Client | None,
    errors: list[str],
    username: str,
    status: int = 200,
) -> HTMLResponse:
    if client is None:
        return portal.unseen(request)
    return portal.render(
        request,
        "staff_signin.html",
        status,
        errors=errors,
        username=username,
        csrf=portal.signer.csrf("staff-signin", client.mac),
        oidc_name=portal.oidc.name if portal.oidc else None,
    )


@router.get("/staff", response_class=HTMLResponse)
def staff_form(request: Request, portal: PortalDep, client: SeenClientDep) -> HTMLResponse:
    return _staff_signin_page(portal, request, client, [], "")


@router.post("/staff", response_class=HTMLResponse)
async def staff_signin(request: Request, portal: PortalDep) -> Response:
    """A wrong password and an unknown username get the same page, status and work; repeated
    failures from this device or for this account are slowed (`service/throttle.py`)."""
    form = {k: str(v)[:1024] for k, v in (await request.form()).items()}
    username = form.get("username", "")
    try:
        with portal.db() as session:
            client = portal.who(session, request)
            portal.signer.check_csrf(form.get("csrf"), "staff-signin", client.mac)
            # No account's name holds a control character, and PostgreSQL cannot even compare NUL.
            check_text(username, field="The username")
            person = sign_in_with_password(
                session=session,
                username=username,
                password=form.get("password", ""),
                now=portal.clock(),
                throttle=portal.throttle,
                sources=(f"ip:{client_ip(request)}", f"mac:{client.mac}"),
            )
            ticket = portal.signer.ticket(person.id, client.mac)
    except (Unidentified, Mismatch):
        return portal.unseen(request)
    except Invalid as exc:
        log.info(
            "portal: staff sign-in refused for %r from %s: %s",
            username,
            client_ip(request),
            exc,
        )
        status = 429 if isinstance(exc, Throttled) else 400
        page = _staff_signin_page(
            portal, request, portal.seen_client(request), [str(exc)], username, status
        )
        if isinstance(exc, Throttled) and page.status_code == status:
            page.headers["Retry-After"] = str(exc.retry_after)
        return page
    return _byod_page(portal, request, ticket, {}, [])


# ---------------------------------------------------------------- OIDC
def _oidc_unavailable(portal: Portal, request: Request) -> HTMLResponse:
    return portal.problem(
        request,
        "Not available",
        "Signing in with a school Google or Microsoft account is not set up here.",
        404,
    )


def _provider_unavailable(
    portal: Portal, request: Request, client: Client, exc: ProviderUnavailable, message: str
) -> HTMLResponse:
    """The school's sign-in provider did not answer: logged, and the sign-in page again."""
    log.warning("portal: OIDC sign-in for %s (%s): %s", client.ip, client.mac, exc)
    return _staff_signin_page(portal, request, client, [message], "", 503)


@router.get("/staff/oidc")
def staff_oidc_start(request: Request, portal: PortalDep) -> Response:
    """Start the OIDC sign-in: 302 to the provider, the device's MAC inside `state`."""
    oidc = portal.oidc
    if oidc is None:
        return _oidc_unavailable(portal, request)
    client = portal.seen_client(request)
    if client is None:
        return portal.unseen(request)
    try:
        url = oidc.start(client.mac)
    except ProviderUnavailable as exc:
        return _provider_unavailable(
            portal,
            request,
            client,
            exc,
            f"We cannot reach {oidc.name} just now: try again in a minute, "
            "or sign in with your school network account.",
        )
    return RedirectResponse(url, status_code=302)


@router.get("/staff/oidc/callback", response_class=HTMLResponse)
def staff_oidc_callback(request: Request, portal: PortalDep) -> Response:
    """The provider's redirect back: same device, verified ID token, active staff."""
    oidc = portal.oidc
    if oidc is None:
        return _oidc_unavailable(portal, request)
    params = {k: v[:4096] for k, v in request.query_params.items()}
    client = portal.seen_client(request)
    if client is None:
        return portal.unseen(request)
    try:
        claims = oidc.finish(params, client.mac)  # no DB transaction held over the network
        with portal.db() as session:
            person = oidc.person_for(session, claims)
            ticket = portal.signer.ticket(person.id, client.mac)
            who_signed = person.username or person.email or str(person.id)
    except ProviderUnavailable as exc:
        return _provider_unavailable(
            portal,
            request,
            client,
            exc,
            f"We cannot reach {oidc.name} just now: please try again in a minute.",
        )
    except SignInRefused as exc:
        log.info("portal: OIDC sign-in refused for %s (%s): %s", client.ip, client.mac, exc.reason)
        return _staff_signin_page(portal, request, client, [str(exc)], "", 400)
    log.info(
        "portal: staff %s signed in with %s for %s (%s)",
        who_signed,
        oidc.name,
        client.mac,
        client.ip,
    )
    return _byod_page(portal, request, ticket, {}, [])


# ---------------------------------------------------------------- BYOD registration
def _byod_page(
    portal: Portal,
    request: Request,
    ticket: str,
    form: dict[str, str],
    errors: list[str],
    status: int = 200,
) -> HTMLResponse:
    with portal.db() as session:
        client = portal.who(session, request)
        person_id = portal.signer.check_ticket(ticket, client.mac)
        person = ticket_holder(session=session, person_id=person_id)
        try:
            # Up front: a school whose policy never lets staff devices on gets no form.
            refuse_if_never_allowed(
                session=session, site_code=client.site_code, device_class=DeviceClass.STAFF_OWNED
            )
        except Refused as exc:
            return portal.render(
                request,
                "refused.html",
                403,
                school=load_policy(session, client.site_code).school_name,
                text=str(exc),
                audience="staff",
            )
        agreement = current_agreement(session, AgreementKind.STAFF_BYOD, client.site_code)
        return portal.render(
            request,
            "staff_byod.html",
            status,
            person=person,
            agreement=agreement,
            ticket=ticket,
            csrf=portal.signer.csrf("staff-byod", client.mac),
            form=form,
            errors=errors,
            private_mac=is_locally_administered(client.mac),
            mac=client.mac,
        )


def _byod_errors(device_name: str, typed: str, agree: str | None) -> list[str]:
    errors: list[str] = []
    if not device_name:
        errors.append("Give the device a name, such as “Jo's iPhone”.")
    elif len(device_name) > MAX_FIELD:
        errors.append(f"The device name is too long (at most {MAX_FIELD} characters).")
    if agree != "yes":
        errors.append("Tick the box to agree to the BYOD statement.")
    if not typed:
        errors.append("Type your name to sign.")
    for label, value in (("The device name", device_name), ("Your typed name", typed)):
        if (char := find_control(value)) is not None:
            errors.append(
                f"{label} contains an invisible control character (U+{ord(char):04X}): "
                "please type it again."
            )
    return errors


@router.post("/staff/register", response_class=HTMLResponse)
async def staff_register(request: Request, portal: PortalDep) -> Response:
    form = {k: str(v)[:1024] for k, v in (await request.form()).items()}
    ticket = form.get("ticket", "")
    device_name = form.get("device_name", "").strip()
    typed = form.get("typed_name", "").strip()
    errors = _byod_errors(device_name, typed, form.get("agree"))
    try:
        with portal.db() as session:
            client = portal.who(session, request)
            person_id = portal.signer.check_ticket(ticket, client.mac)
            portal.signer.check_csrf(form.get("csrf"), "staff-byod", client.mac)
            active_person(session=session, person_id=person_id)
            if errors:
                raise Invalid("; ".join(errors))
            register_staff_device(
                session=session,
                person_id=person_id,
                mac=client.mac,
                site_code=client.site_code,
                device_name=device_name,
                typed_name=typed,
                now=portal.clock(),
                client_ip=client.ip,
                user_agent=request.headers.get("user-agent"),
            )
    except (Unidentified, Mismatch):
        return portal.unseen(request)
    except Invalid as exc:
        try:
            return _byod_page(portal, request, ticket, form, errors or [str(exc)], 400)
        except Invalid:
            return _staff_signin_page(
                portal, request, portal.seen_client(request), [str(exc)], "", 400
            )
    return RedirectResponse("/done", status_code=303, background=BackgroundTask(portal.send_coa))
