"""The visitor journey: read the acceptable use agreement, sign it, get the internet.

How a visitor shows they are one is the policy's `[visitor] verify`: "self" (the form alone),
"code" (the code reception issued, typed on the form; wrong codes are throttled per device and
address like staff sign-in) or "sponsor" (the visitor names the member of staff they visit, who
approves from an emailed link: `/visitor/approve`; meanwhile `/visitor/waiting`)."""

from __future__ import annotations

import logging
import math
from datetime import datetime
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.background import BackgroundTask

from portal.deps import MAX_FIELD, Portal, PortalDep, client_ip
from portal.vendors import safe_url
from service import visitors
from service.agreements import current_agreement
from service.clients import Client, Mismatch, Unidentified
from service.db import Session
from service.enums import AgreementKind, VisitorVerify
from service.errors import Conflict, Invalid, NotFound, PolicyError
from service.facts import load_policy
from service.notify import NotifyFailed, notifier_for
from service.registration import approve_sponsored_visitor, register_visitor
from service.text import find_control

log = logging.getLogger("schoolgate.portal")
router = APIRouter(include_in_schema=False)


@router.get("/visitor", response_class=HTMLResponse)
def visitor_form(request: Request, portal: PortalDep) -> HTMLResponse:
    return _visitor_page(portal, request, {}, [])


def _visitor_page(
    portal: Portal, request: Request, form: dict[str, str], errors: list[str], status: int = 200
) -> HTMLResponse:
    try:
        with portal.db() as session:
            client = portal.who(session, request)
            agreement = current_agreement(session, AgreementKind.VISITOR_AUA, client.site_code)
            policy = load_policy(session, client.site_code)
            return portal.render(
                request,
                "visitor.html",
                status,
                agreement=agreement,
                school=policy.school_name or client.site_code,
                verify=policy.visitor_verify.value,
                csrf=portal.signer.csrf("visitor", client.mac),
                form=form,
                errors=errors,
                continue_url=form.get("continue_url")
                or request.query_params.get("continue_url", ""),
            )
    except (Unidentified, Mismatch):
        return portal.unseen(request)
    except NotFound:
        return portal.problem(
            request,
            "Visitor access is not set up",
            "The school has not published its visitor agreement yet. Please ask at reception.",
            503,
        )


def _form_errors(
    name: str,
    org: str,
    visiting: str,
    typed: str,
    agree: str | None,
    verify: VisitorVerify = VisitorVerify.SELF,
    check: str = "",
) -> list[str]:
    """`check`: the visitor code (verify "code") or the sponsor's email (verify "sponsor")."""
    errors: list[str] = []
    required = [("Your name", name)]
    if verify is VisitorVerify.SPONSOR:
        required.append(("The email of the member of staff you are visiting", check))
    else:
        required.append(("Whom you are visiting", visiting))
    if verify is VisitorVerify.CODE:
        required.append(("The visitor code from reception", check))
    required.append(("Your typed name to sign", typed))
    for label, value in required:
        if not value:
            errors.append(f"{label} is required.")
        elif len(value) > MAX_FIELD:
            errors.append(f"{label} is too long (at most {MAX_FIELD} characters).")
    if len(org) > MAX_FIELD:
        errors.append(f"Organisation is too long (at most {MAX_FIELD} characters).")
    for label, value in (
        ("Your name", name),
        ("Organisation", org),
        ("Whom you are visiting", visiting),
        ("Your typed name to sign", typed),
        ("The visitor code or staff email", check),
    ):
        if (char := find_control(value)) is not None:
            errors.append(
                f"{label} contains an invisible control character (U+{ord(char):04X}): "
                "please type it again."
            )
    if agree != "yes":
        errors.append("Tick the box to agree to the acceptable use agreement.")
    if typed and name and typed.casefold() != name.casefold():
        errors.append("Type your name exactly as above to sign.")
    return errors


@router.post("/visitor", response_class=HTMLResponse)
async def visitor_submit(request: Request, portal: PortalDep) -> Response:
    form = {k: str(v)[:2048] for k, v in (await request.form()).items()}
    return _visitor_sign(portal, request, form)


def _code_sources(request: Request, client: Client) -> tuple[str, str]:
    return (f"ip:{client_ip(request)}", f"mac:{client.mac}")


def _visitor_sign(portal: Portal, request: Request, form: dict[str, str]) -> Response:
    name = form.get("name", "").strip()
    org = form.get("organisation", "").strip()
    visiting = form.get("visiting", "").strip()
    typed = form.get("typed_name", "").strip()
    code = form.get("code", "").strip()
    sponsor_email = form.get("sponsor_email", "").strip()
    now = portal.clock()
    errors: list[str] = []
    # Visitor-code attempts to give back, once this transaction is over: the throttle writes
    # in a transaction of its own, which on SQLite would wait on this one's write lock.
    refunds: list[tuple[tuple[str, str], str]] = []
    try:
        with portal.db() as session:
            client = portal.who(session, request)
            portal.signer.check_csrf(form.get("csrf"), "visitor", client.mac)
            verify = load_policy(session, client.site_code).visitor_verify
            check = sponsor_email if verify is VisitorVerify.SPONSOR else code
            errors += _form_errors(name, org, visiting, typed, form.get("agree"), verify, check)
            if errors:
                raise Invalid("; ".join(errors))
            if verify is VisitorVerify.SPONSOR:
                sponsor_request = visitors.request_sponsorship(
                    session=session,
                    mac=client.mac,
                    site_code=client.site_code,
                    visitor_name=name,
                    typed_name=typed,
                    sponsor_email=sponsor_email,
                    agreement_version=form.get("version"),
                    now=now,
                    valid_for_minutes=portal.settings.sponsor_link_valid_minutes,
                    organisation=org or None,
                    client_ip=client.ip,
                    user_agent=request.headers.get("user-agent"),
                )
                view = visitors.sponsorship_view(
                    session=session, sponsorship_id=sponsor_request.sponsorship_id
                )
            else:
                _sign_visitor(
                    portal, session, request, client, form, verify=verify, now=now, refunds=refunds
                )
    except (Unidentified, Mismatch):
        return portal.unseen(request)
    except Invalid as exc:
        return _visitor_page(portal, request, form, errors or [str(exc)], 400)
    except PolicyError as exc:
        return _visitor_page(portal, request, form, [str(exc)], 403)
    finally:
        for sources, account in refunds:
            portal.throttle.succeeded(sources=sources, account=account)
    if verify is VisitorVerify.SPONSOR:
        return _ask_sponsor(portal, request, sponsor_request, view)
    log.info("portal: visitor AUA signed for %s from %s", client.mac, client.ip)
    next_url = safe_url(form.get("continue_url"))
    target = "/done" + ("?" + urlencode({"continue_url": next_url}) if next_url else "")
    return RedirectResponse(target, status_code=303, background=BackgroundTask(portal.send_coa))


def _sign_visitor(
    portal: Portal,
    session: Session,
    request: Request,
    client: Client,
    form: dict[str, str],
    *,
    verify: VisitorVerify,
    now: datetime,
    refunds: list[tuple[tuple[str, str], str]],
) -> None:
    """Sign (verify "self" or "code"). A code attempt is charged to this device and address
    before it is checked and refunded when it is right (added to `refunds`, given back by the
    caller after its transaction), so guessing slows down fast."""
    sources = _code_sources(request, client)
    account = f"visitor-code:{client.mac}"
    if verify is VisitorVerify.CODE:
        wait = portal.throttle.begin(sources=sources, account=account, now=now.timestamp())
        if wait > 0:
            raise Invalid(
                f"Too many wrong visitor codes from this device: please wait "
                f"{math.ceil(wait)} seconds, or ask at reception."
            )
    try:
        register_visitor(
            session=session,
            mac=client.mac,
            site_code=client.site_code,
            name=form.get("name", "").strip(),
            typed_name=form.get("typed_name", "").strip(),
            agreement_version=form.get("version"),
            now=now,
            organisation=form.get("organisation", "").strip() or None,
            visiting=form.get("visiting", "").strip(),
            client_ip=client.ip,
            user_agent=request.headers.get("user-agent"),
            code=form.get("code", "").strip() or None,
        )
    except visitors.BadCode:
        log.info("portal: wrong visitor code from %s (%s)", client.mac, client.ip)
        raise
    except Exception:
        if verify is VisitorVerify.CODE:  # not the code's fault: give the attempt back
            refunds.append((sources, account))
        raise
    if verify is VisitorVerify.CODE:
        refunds.append((sources, account))


# ---------------------------------------------------------------- verify = "sponsor"
def _ask_sponsor(
    portal: Portal,
    request: Request,
    sponsor_request: visitors.SponsorRequest,
    view: visitors.SponsorshipView,
) -> Response:
    """After the request committed: email the sponsor their approve link, then the visitor
    waits. An email that cannot be sent is said on the page (ask at reception)."""
    query = urlencode({"token": sponsor_request.token})
    approve_url = f"{portal.portal_url}visitor/approve?{query}"
    subject, body = visitors.sponsor_email(sponsor_request, view, approve_url)
    try:
        notifier_for(portal.settings).send(
            to=sponsor_request.sponsor_email, subject=subject, body=body
        )
    except NotifyFailed as exc:
        log.warning("portal: sponsor email for request %s not sent: %s", view.id, exc)
        return portal.problem(
            request,
            "We could not email the member of staff",
            f"We could not send the approval email to {view.sponsor_name}. "
            "Please ask at reception.",
            503,
        )
    log.info("portal: visitor %s asked %s to approve", view.device_mac, view.sponsor_name)
    return RedirectResponse("/visitor/waiting", status_code=303)


@router.get("/visitor/waiting", response_class=HTMLResponse)
def visitor_waiting(request: Request, portal: PortalDep) -> Response:
    """The visitor's page while their sponsor has not approved yet (it checks again itself)."""
    try:
        with portal.db() as session:
            client = portal.who(session, request)
            pending = visitors.pending_for_device(
                session=session, mac=client.mac, now=portal.clock()
            )
            if pending is None:
                return RedirectResponse("/done", status_code=303)
            return portal.render(
                request,
                "visitor_waiting.html",
                sponsor=pending.sponsor_name,
                until=portal.local_time(session, client.site_code, pending.expires_at),
            )
    except (Unidentified, Mismatch):
        return portal.unseen(request)


def _link_problem(portal: Portal, request: Request, exc: Exception) -> HTMLResponse:
    status = 404 if isinstance(exc, NotFound) else 409 if isinstance(exc, Conflict) else 410
    return portal.problem(request, "This approval link cannot be used", str(exc), status)


@router.get("/visitor/approve", response_class=HTMLResponse)
def sponsor_link(request: Request, portal: PortalDep, token: str = "") -> Response:
    """What the sponsor's link opens: who is asking, and a button. Opening the link changes
    nothing (mail scanners follow links); the button does."""
    try:
        with portal.db() as session:
            view = visitors.link_view(session=session, token=token[:128], now=portal.clock())
            return portal.render(
                request,
                "visitor_approve.html",
                view=view,
                token=token[:128],
                asked=portal.local_time(session, view.site_code, view.requested_at),
            )
    except (NotFound, Conflict, Invalid) as exc:
        return _link_problem(portal, request, exc)


@router.post("/visitor/approve", response_class=HTMLResponse)
async def sponsor_approve(request: Request, portal: PortalDep) -> Response:
    """The sponsor approves: the visitor's signature is recorded with the sponsorship and
    the CoA is sent after the commit, as for any registration."""
    form = await request.form()
    token = str(form.get("token", ""))[:128]
    try:
        with portal.db() as session:
            registration = approve_sponsored_visitor(
                session=session, token=token, now=portal.clock()
            )
            visitor_name = registration.signature.typed_name
            mac = registration.device.mac
    except (NotFound, Conflict, Invalid) as exc:
        return _link_problem(portal, request, exc)
    log.info("portal: sponsor approved visitor %s", mac)
    response = portal.render(request, "visitor_approve.html", approved=visitor_name)
    response.background = BackgroundTask(portal.send_coa)
    return response
