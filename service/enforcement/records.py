"""The request rows as people read them: one transition recorded, listing, export, retention."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from service.config import Settings
from service.enums import FINAL_COA_STATES, CoaState
from service.export_types import Exporter, ExportQuery, iso
from service.mac import normalize_mac
from service.models import AccountingSession
from service.models.coa import CoaRequest

# Transitions this process made, by the state reached: the CoA outcomes on /metrics
# (service/metrics.py reads it when scraped).
TRANSITIONS: Counter[str] = Counter()


def record(row: CoaRequest, state: CoaState, detail: str, *, now: datetime) -> None:
    """Move a request to `state` at `now`, appending the transition to its history."""
    TRANSITIONS[state.value] += 1
    row.state = state
    row.updated_at = now
    row.detail = detail
    row.history = [*(row.history or []), {"at": iso(now), "state": state.value, "detail": detail}]
    if state.is_final:
        row.finished_at = now


def request_dict(row: CoaRequest) -> dict[str, Any]:
    return {
        "id": row.id,
        "created_at": iso(row.created_at),
        "updated_at": iso(row.updated_at),
        "mac": row.mac,
        "nas_ip": row.nas_ip,
        "acct_session_id": row.acct_session_id,
        "kind": row.kind,
        "state": row.state,
        "attempts": row.attempts,
        "error_cause": row.error_cause,
        "reason": row.reason,
        "change": _change_text(row),
        "detail": row.detail,
        "history": row.history,
    }


def _change_text(row: CoaRequest) -> str | None:
    if row.new_access is None:
        return None

    def part(access: str | None, vlan: int | None) -> str:
        if access is None:
            return "?"
        return access if vlan is None else f"{access}/vlan {vlan}"

    return f"{part(row.old_access, row.old_vlan)} -> {part(row.new_access, row.new_vlan)}"


def list_requests(
    *,
    session: Session,
    mac: str | None = None,
    state: str | None = None,
    limit: int = 50,
) -> list[CoaRequest]:
    """The latest requests first, optionally of one device or in one state."""
    query = select(CoaRequest).order_by(CoaRequest.id.desc()).limit(limit)
    if mac:
        query = query.where(CoaRequest.mac == normalize_mac(mac))
    if state:
        query = query.where(CoaRequest.state == state)
    return list(session.scalars(query))


def export_coa(session: Session, q: ExportQuery) -> Iterator[dict[str, Any]]:
    query = select(CoaRequest).order_by(CoaRequest.id)
    if q.since is not None:
        query = query.where(CoaRequest.created_at >= q.since)
    if q.until is not None:
        query = query.where(CoaRequest.created_at < q.until)
    if q.site:
        query = query.join(
            AccountingSession, CoaRequest.session_row_id == AccountingSession.id
        ).where(AccountingSession.site_code == q.site)
    for row in session.scalars(query):
        yield {"type": "coa_request", **request_dict(row)}


def purge(session: Session, settings: Settings, now: datetime) -> dict[str, int]:
    """Retention: finished requests older than `retention_days["coa_requests"]` (they hold
    MACs and user names); pending ones are kept whatever their age."""
    days = settings.retention_days.get("coa_requests")
    if days is None:
        return {}
    result: Any = session.execute(
        delete(CoaRequest).where(
            CoaRequest.state.in_(FINAL_COA_STATES),
            CoaRequest.created_at < now - timedelta(days=days),
        )
    )
    return {"coa_requests": int(result.rowcount or 0)}


EXPORTS: dict[str, Exporter] = {"coa": export_coa}
