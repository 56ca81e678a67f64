"""Liveness (`/healthz`: the process answers) and readiness (`/readyz`: the database answers),
and the middleware that turns a database that does not answer into a clear 503, logged once
when the database goes and once when it comes back, not a traceback per request."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, cast

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from portal.deps import PortalDep, get_portal
from service.db import database_error_message, is_database_outage
from service.health import database_problem

log = logging.getLogger("schoolgate.portal")
router = APIRouter(include_in_schema=False)
HEALTH_PATHS = frozenset({"/healthz", "/readyz"})
RETRY_SECONDS = "30"


class DatabaseWatch:
    """Whether the database answered the last time the portal asked, with a log line once per
    change of state (from any thread: pages run in the thread pool)."""

    def __init__(self, recheck_seconds: float = 2.0) -> None:
        self.down_reason: str | None = None
        self.recheck_seconds = recheck_seconds
        self._checked = 0.0
        self._lock = threading.Lock()

    def recheck_due(self) -> bool:
        """While down: whether to ask the database again after a page that worked (at most
        every `recheck_seconds`, so a flood of requests is not a flood of probes)."""
        with self._lock:
            now = time.monotonic()
            if self.down_reason is None or now - self._checked < self.recheck_seconds:
                return False
            self._checked = now
            return True

    def down(self, reason: str) -> None:
        with self._lock:
            if self.down_reason is None:
                log.error("portal: the database does not answer (%s): pages answer 503", reason)
            self.down_reason = reason

    def up(self) -> None:
        with self._lock:
            if self.down_reason is not None:
                log.warning("portal: the database answers again")
            self.down_reason = None


def watch_for(request: Request) -> DatabaseWatch:
    """The app's one `DatabaseWatch` (put on `app.state` by `create_app`)."""
    return cast(DatabaseWatch, request.app.state.database_watch)


def check_database(request: Request) -> str | None:
    """Ask the database `SELECT 1` (a service function); record and return the problem."""
    portal = get_portal(request)
    with portal.session_factory() as session:
        problem = database_problem(session=session)
    watch = watch_for(request)
    if problem is None:
        watch.up()
    else:
        watch.down(problem)
    return problem


@router.get("/healthz")
def healthz() -> PlainTextResponse:
    """Liveness: the process is up and answering (the database is `/readyz`'s business)."""
    return PlainTextResponse("ok")


@router.get("/readyz")
def readyz(request: Request, portal: PortalDep) -> JSONResponse:
    """Readiness: 200 when the database answers, else 503 with a one-line reason (the
    database's own words only to the admin networks; guests learn no host names)."""
    problem = check_database(request)
    if problem is None:
        return JSONResponse({"status": "ready"})
    reason = problem if portal.from_admin_network(request) else "the database does not answer"
    return JSONResponse(
        {"status": "unavailable", "reason": reason},
        status_code=503,
        headers={"Retry-After": RETRY_SECONDS, "Cache-Control": "no-store"},
    )


def unavailable(request: Request) -> Response:
    """What a page or an API call answers while the database does not."""
    headers = {"Retry-After": RETRY_SECONDS, "Cache-Control": "no-store"}
    if request.url.path.startswith("/api/"):
        return JSONResponse(
            {"detail": "the service's database does not answer: try again in a few minutes"},
            status_code=503,
            headers=headers,
        )
    response = get_portal(request).problem(
        request,
        "Not available just now",
        "Registration is not available just now. Please try again in a few minutes.",
        503,
    )
    response.headers.update(headers)
    return response


async def database_guard(request: Request, call_next: Callable[[Request], Any]) -> Response:
    """The outermost HTTP middleware: a database error anywhere below becomes a 503 page (or
    JSON under /api/), logged once per change of state. Any other error goes on up."""
    try:
        response: Response = await call_next(request)
    except Exception as exc:
        reason = database_error_message(exc) if is_database_outage(exc) else None
        if reason is None:
            raise
        watch_for(request).down(reason)
        return unavailable(request)
    if (
        response.status_code < 500
        and request.url.path not in HEALTH_PATHS
        and not request.url.path.startswith("/static")
        and watch_for(request).recheck_due()
    ):
        check_database(request)  # a page worked while the database was down: is it back?
    return response
