"""The visitor journey: read the acceptable use agreement, sign it, get the internet."""

from __future__ import annotations

import logging
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.background import BackgroundTask

from portal.deps import MAX_FIELD, Portal, PortalDep
from portal.vendors import safe_url
from service.agreements import current_agreement
from service.clients import Mismatch, Unidentified
from service.enums import AgreementKind
from service.errors import Invalid, NotFound
from service.facts import load_policy
from service.registration import register_visitor
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


def _form_errors(name: str, org: str, visiting: str, typed: str, agree: str | None) -> list[str]:
    errors: list[str] = []
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
    for label, value in (
        ("Your name", name),
        ("Organisation", org),
        ("Whom you are visiting", visiting),
        ("Your typed name to sign", typed),
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


def _visitor_sign(portal: Portal, request: Request, form: dict[str, str]) -> Response:
    name = form.get("name", "").strip()
    org = form.get("organisation", "").strip()
    visiting = form.get("visiting", "").strip()
    typed = form.get("typed_name", "").strip()
    errors = _form_errors(name, org, visiting, typed, form.get("agree"))
    try:
        with portal.db() as session:
            client = portal.who(session, request)
            portal.signer.check_csrf(form.get("csrf"), "visitor", client.mac)
            if errors:
                raise Invalid("; ".join(errors))
            register_visitor(
                session=session,
                mac=client.mac,
                site_code=client.site_code,
                name=name,
                typed_name=typed,
                agreement_version=form.get("version"),
                now=portal.clock(),
                organisation=org or None,
                visiting=visiting,
                client_ip=client.ip,
                user_agent=request.headers.get("user-agent"),
            )
            log.info("portal: visitor AUA signed for %s from %s", client.mac, client.ip)
    except (Unidentified, Mismatch):
        return portal.unseen(request)
    except Invalid as exc:
        return _visitor_page(portal, request, form, errors or [str(exc)], 400)
    next_url = safe_url(form.get("continue_url"))
    target = "/done" + ("?" + urlencode({"continue_url": next_url}) if next_url else "")
    return RedirectResponse(target, status_code=303, background=BackgroundTask(portal.send_coa))
