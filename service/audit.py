"""The append-only, hash-chained audit log, and the change counter every admin change bumps."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, text, update
from sqlalchemy.orm import Session

from service.enums import AuditTag
from service.models import AuditEntry, ChangeCounter, utcnow

GENESIS = "0" * 64
NOTIFY_CHANNEL = "schoolgate_changes"


def bump_change(session: Session) -> None:
    """Move the change counter (servers rebuild their snapshot) and, on PostgreSQL, NOTIFY.

    The UPDATE also takes the row lock that serialises audit-chain appends across writers.
    """
    session.execute(
        update(ChangeCounter)
        .where(ChangeCounter.id == 1)
        .values(value=ChangeCounter.value + 1, changed_at=utcnow())
    )
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text(f"NOTIFY {NOTIFY_CHANNEL}"))


def entry_hash(
    prev_hash: str, at: datetime, actor: str, tag: str, subject: str, detail: dict[str, Any]
) -> str:
    body = json.dumps(
        [prev_hash, at.isoformat(timespec="microseconds"), actor, tag, subject, detail],
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )
    return hashlib.sha256(body.encode()).hexdigest()


def record(
    session: Session,
    *,
    actor: str,
    tag: AuditTag,
    subject: str,
    detail: dict[str, Any] | None = None,
    changes_decisions: bool = True,
) -> AuditEntry:
    """Append one audit entry (and bump the change counter unless told it changes nothing)."""
    if changes_decisions:
        bump_change(session)
    else:
        session.execute(
            update(ChangeCounter).where(ChangeCounter.id == 1).values(value=ChangeCounter.value)
        )
    prev = session.scalar(select(AuditEntry.hash).order_by(AuditEntry.id.desc()).limit(1))
    at = utcnow()
    clean = json.loads(json.dumps(detail or {}, default=str))
    entry = AuditEntry(
        at=at,
        actor=actor,
        tag=tag.value,
        subject=subject,
        detail=clean,
        prev_hash=prev or GENESIS,
        hash=entry_hash(prev or GENESIS, at, actor, tag.value, subject, clean),
    )
    session.add(entry)
    session.flush()
    return entry


@dataclass(frozen=True, slots=True)
class VerifyResult:
    ok: bool
    entries: int
    first_bad_id: int | None = None
    problem: str | None = None


def verify(session: Session) -> VerifyResult:
    """Recompute the chain; report the first entry whose hash or link does not hold."""
    prev = GENESIS
    count = 0
    for entry in session.scalars(select(AuditEntry).order_by(AuditEntry.id)):
        count += 1
        if entry.prev_hash != prev:
            return VerifyResult(False, count, entry.id, "link to the previous entry is broken")
        expected = entry_hash(
            entry.prev_hash, entry.at, entry.actor, entry.tag, entry.subject, entry.detail
        )
        if expected != entry.hash:
            return VerifyResult(False, count, entry.id, "entry was altered after it was written")
        prev = entry.hash
    return VerifyResult(True, count)
