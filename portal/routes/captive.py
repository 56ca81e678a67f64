"""Captive-portal detection: the OS probes, the RFC 8908 API, the request guard, and the pages
every journey shares (landing, refused, done, about)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response

from portal.deps import Portal, PortalDep, client_ip, get_portal
from portal.health import HEALTH_PATHS
from portal.vendors import parse_redirect, safe_url
from service.clients import Mismatch, Unidentified
from service.devices import find_device
from service.enums import Access, DeviceClass, DeviceStatus
from service.errors import SchoolgateError
from service.facts import load_policy
from service.mac import is_locally_administered

router = APIRouter(include_in_schema=False)

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


async def guard(request: Request, call_next: Callable[[Request], Any]) -> Response:
    """The HTTP middleware: the rate limit, OS probes (by path or by a foreign Host), and the
    security headers on every page."""
    portal = get_portal(request)
    if not portal.limiter.allow(client_ip(request)):
        return PlainTextResponse(
            "Too many requests from this address: please wait a minute and try again.",
            status_code=429,
            headers={"Retry-After": "60"},
        )
    host = (request.headers.get("host") or "").lower()
    path = request.url.path
    if host != portal.portal_host and not path.startswith("/api/v1") and path not in HEALTH_PATHS:
        return probe(portal, request, path)
    if path in PROBE_ANSWERS:
        return probe(portal, request, path)
    response: Response = await call_next(request)
    if path.startswith("/api/captive") or response.headers.get("content-type", "").startswith(
        "text/html"
    ):
        response.headers.setdefault("Cache-Control", "no-store")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    response.headers.setdefault("X-Frame-Options", "DENY")
    return response


def is_captive(portal: Portal, request: Request) -> bool:
    """Captive unless the network knows this device and it has more than the garden."""
    try:
        with portal.db() as session:
            client = portal.who(session, request)
            return portal.decision_for(session, client).access is Access.REGISTRATION
    except SchoolgateError:
        return True


def probe(portal: Portal, request: Request, path: str) -> Response:
    if is_captive(portal, request) or path not in PROBE_ANSWERS:
        return RedirectResponse(
            portal.portal_url, status_code=302, headers={"Cache-Control": "no-store"}
        )
    status, body, media = PROBE_ANSWERS[path]
    return Response(
        body, status_code=status, media_type=media, headers={"Cache-Control": "no-store"}
    )


@router.get("/api/captive")
def captive_api(request: Request, portal: PortalDep) -> Response:
    """RFC 8908 Captive Portal API."""
    body: dict[str, Any] = {"captive": True, "user-portal-url": portal.portal_url}
    try:
        with portal.db() as session:
            client = portal.who(session, request)
            decision = portal.decision_for(session, client)
            if decision.access is not Access.REGISTRATION:
                body["captive"] = False
                if decision.session_timeout:
                    body["seconds-remaining"] = int(decision.session_timeout)
                body["can-extend-session"] = False
    except SchoolgateError:
        pass
    body["venue-info-url"] = portal.portal_url + "about"
    return Response(
        json.dumps(body),
        media_type="application/captive+json",
        headers={"Cache-Control": "private"},
    )


@router.get("/about", response_class=HTMLResponse)
def about(request: Request, portal: PortalDep) -> HTMLResponse:
    return portal.render(request, "about.html")


@router.get("/", response_class=HTMLResponse)
def landing(request: Request, portal: PortalDep) -> Response:
    info = parse_redirect(dict(request.query_params))
    if info.raw_mac and info.mac is None:
        return portal.problem(
            request,
            "Bad link",
            "The link from the network has a device address "
            "that is not valid. Please open any web page again.",
            400,
        )
    try:
        with portal.db() as session:
            client = portal.who(session, request, info.mac)
            decision = portal.decision_for(session, client)
            policy = load_policy(session, client.site_code)
            device = find_device(session=session, mac=client.mac)
            ctx: dict[str, Any] = {
                "mac": client.mac,
                "school": policy.school_name or client.site_code,
                "decision": decision,
                "plain": portal.explain(session, client),
                "device": device,
                "private_mac": is_locally_administered(client.mac),
                # The continue URL travels in a hidden field (validated again on the way back).
                "continue_url": info.continue_url or "",
            }
    except Mismatch:
        return portal.problem(
            request,
            "We could not confirm your device",
            "The address in the link does not match the device the network saw. "
            "Please reconnect to the Wi-Fi and open any web page again.",
            403,
        )
    except Unidentified:
        return portal.problem(
            request,
            "We cannot see your device yet",
            "Please make sure you are connected to the school Wi-Fi, wait a few "
            "seconds and open any web page again.",
            409,
        )
    if device is not None and device.device_class is DeviceClass.LEARNER_OWNED:
        return RedirectResponse("/refused", status_code=303)
    return portal.render(request, "landing.html", **ctx)


@router.get("/refused", response_class=HTMLResponse)
def refused(request: Request, portal: PortalDep) -> HTMLResponse:
    try:
        with portal.db() as session:
            client = portal.who(session, request)
            policy = load_policy(session, client.site_code)
            device = find_device(session=session, mac=client.mac)
            cls = device.device_class if device else DeviceClass.LEARNER_OWNED
            text = policy.explanations.get(cls.value) or (
                "This device is not allowed on the school network by the school's policy."
            )
            return portal.render(
                request,
                "refused.html",
                school=policy.school_name,
                text=text,
                audience="staff" if cls is DeviceClass.STAFF_OWNED else "pupil",
            )
    except (Unidentified, Mismatch):
        return portal.unseen(request)


@router.get("/done", response_class=HTMLResponse)
def done(request: Request, portal: PortalDep) -> HTMLResponse:
    """Where both registrations end: what the device can use now, where, and when that
    changes, with the policy's reason (`service.explain`); never a success for no access."""
    try:
        with portal.db() as session:
            client = portal.who(session, request)
            plain = portal.explain(session, client)
            device = find_device(session=session, mac=client.mac)
            next_url = safe_url(request.query_params.get("continue_url"))
            return portal.render(
                request,
                "done.html",
                plain=plain,
                device=device,
                pending=device is not None and device.status is DeviceStatus.PENDING,
                continue_url=next_url or "",
            )
    except (Unidentified, Mismatch):
        return portal.unseen(request)
