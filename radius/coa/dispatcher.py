"""Deprecated: removed when the portal calls `service.enforcement.send_queued` (the lead
deletes this module at merge). The dispatcher is the domain's now
(`service.enforcement.dispatcher`); this keeps the portal's interim import working."""

from __future__ import annotations

from collections.abc import Iterable

from radius.coa.sender import sender_for
from service.config import Settings
from service.db import SessionFactory
from service.enforcement import send_queued


def dispatch_pending(
    session_factory: SessionFactory,
    settings: Settings,
    *,
    device_ids: Iterable[int] | None = None,
    deadline: float = 2.0,
) -> int:
    """`send_queued` with the sender chosen from settings."""
    return send_queued(
        session_factory=session_factory,
        settings=settings,
        sender=sender_for(settings),
        device_ids=device_ids,
        deadline=deadline,
    )
