"""Retention (UK GDPR: keep only what is needed, for a set time): one purge for every table of
personal data, with the period per table from `settings.retention_days`."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete
from sqlalchemy.orm import Session

from service import audit
from service.config import Settings
from service.enums import AuditTag
from service.models import AccountingSession, DecisionRecord
from service.models.ledger import AccountingRecord

# Areas add their own purge functions: (session, settings, now) -> {table: rows removed}.
Purger = Callable[[Session, Settings, datetime], dict[str, int]]


def _core(session: Session, settings: Settings, now: datetime) -> dict[str, int]:
    days = settings.retention_days
    removed: dict[str, int] = {}
    if "decisions" in days:
        cutoff = now - timedelta(days=days["decisions"])
        result: Any = session.execute(
            delete(DecisionRecord).where(DecisionRecord.decided_at < cutoff)
        )
        removed["decisions"] = int(result.rowcount or 0)
    if "accounting_sessions" in days:
        cutoff = now - timedelta(days=days["accounting_sessions"])
        result = session.execute(
            delete(AccountingSession).where(
                AccountingSession.stopped_at.is_not(None), AccountingSession.stopped_at < cutoff
            )
        )
        removed["accounting_sessions"] = int(result.rowcount or 0)
        # The ledger that keeps accounting exactly once (issue 13) ages with the sessions.
        result = session.execute(delete(AccountingRecord).where(AccountingRecord.event_at < cutoff))
        removed["accounting_records"] = int(result.rowcount or 0)
    return removed


def purgers() -> list[Purger]:
    found: list[Purger] = [_core]
    from service import device_names, enforcement, throttle
    from service.monitor import exports as monitor

    for module in (enforcement, monitor, device_names, throttle):
        extra = getattr(module, "purge", None)
        if callable(extra):
            found.append(extra)
    return found


def purge(session: Session, *, settings: Settings, now: datetime, actor: str) -> dict[str, int]:
    """Delete what is past its retention period; the audit log records what was removed."""
    removed: dict[str, int] = {}
    for purger in purgers():
        removed.update(purger(session, settings, now))
    session.flush()
    audit.record(
        session,
        actor=actor,
        tag=AuditTag.RETENTION_PURGE,
        subject="retention",
        detail={"removed": removed, "retention_days": settings.retention_days},
        changes_decisions=False,
    )
    return removed
