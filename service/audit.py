"""The append-only, hash-chained audit log, and the change counter every admin change bumps.

Tamper evidence against someone who can write to the database (issue 11):

- the chain is keyed: each entry's hash is an HMAC-SHA256 under the audit key, which lives
  outside the database (`audit.key`, service/secrets_store.py), so an edited entry cannot be
  re-hashed, nor the chain recomputed, without it. Entries written before the key existed
  (`chain_version` 0, plain SHA-256) still verify; once a keyed entry exists, and after the
  `keyed-from` anchor, an unkeyed entry is a failure;
- the head is anchored outside the database: after every committed audited change its id and
  hash are appended to the anchor log (`audit-anchor.log` beside the key) and sent to syslog;
  `verify` checks that every anchored entry is still there with the same hash, so deleting the
  last entries, or all of them, fails.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import logging.handlers
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import event, func, select, update
from sqlalchemy.orm import Session

# The counter lives with its change log (importing it registers the session events that
# write the log); `audit.bump_change` stays a name callers know.
from service.change_log import bump_change
from service.config import Settings
from service.db import AUDIT_CHAIN_INFO
from service.enums import AuditTag
from service.errors import Invalid
from service.models import AuditEntry, ChangeCounter, utcnow

GENESIS = "0" * 64
LEGACY = 0  # plain SHA-256: entries written before the audit key existed
KEYED = 1  # HMAC-SHA256 under the audit key
_HEAD_INFO = "schoolgate.audit_head"  # Session.info: the head to anchor once committed

log = logging.getLogger("schoolgate.audit")
anchor_log = logging.getLogger("schoolgate.audit.anchor")


@dataclass(frozen=True, slots=True)
class AuditChain:
    """How this process writes the chain: the key, and where the head is anchored."""

    key: bytes
    anchor_file: Path | None
    syslog: bool = True

    def __repr__(self) -> str:  # never print the key
        return f"AuditChain(anchor_file={self.anchor_file!r})"


def chain_for(settings: Settings) -> AuditChain | None:
    """The chain settings give, or None when no audit key is set or stored."""
    if settings.audit_key is None:
        return None
    return AuditChain(
        key=settings.audit_key.get_secret_value().encode(),
        anchor_file=settings.anchor_file,
        syslog=settings.audit_anchor_syslog,
    )


def entry_hash(
    prev_hash: str,
    at: datetime,
    actor: str,
    tag: str,
    subject: str,
    detail: dict[str, Any],
    key: bytes | None = None,
) -> str:
    """SHA-256 of the entry and its predecessor's hash; HMAC-SHA256 under `key` when given."""
    body = json.dumps(
        [prev_hash, at.isoformat(timespec="microseconds"), actor, tag, subject, detail],
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    ).encode()
    if key is None:
        return hashlib.sha256(body).hexdigest()
    return hmac.new(key, body, hashlib.sha256).hexdigest()


def record(
    session: Session,
    *,
    actor: str,
    tag: AuditTag,
    subject: str,
    detail: dict[str, Any] | None = None,
    changes_decisions: bool = True,
) -> AuditEntry:
    """Append one audit entry (and bump the change counter unless told it changes nothing).

    Keyed when the session carries the audit chain (`make_session_factory(audit_chain=...)`);
    a keyed log refuses an unkeyed entry rather than quietly weakening the chain.
    """
    if changes_decisions:
        bump_change(session)
    else:
        session.execute(
            update(ChangeCounter).where(ChangeCounter.id == 1).values(value=ChangeCounter.value)
        )
    chain: AuditChain | None = session.info.get(AUDIT_CHAIN_INFO)
    last = session.execute(
        select(AuditEntry.hash, AuditEntry.chain_version).order_by(AuditEntry.id.desc()).limit(1)
    ).first()
    if chain is None and last is not None and last.chain_version != LEGACY:
        raise Invalid(
            "the audit log is keyed but this process has no audit key: set "
            "SCHOOLGATE_AUDIT_KEY or SCHOOLGATE_STATE_DIR (the directory holding audit.key)"
        )
    prev = last.hash if last is not None else GENESIS
    at = utcnow()
    clean = json.loads(json.dumps(detail or {}, default=str))
    entry = AuditEntry(
        at=at,
        actor=actor,
        tag=tag.value,
        subject=subject,
        detail=clean,
        prev_hash=prev,
        hash=entry_hash(prev, at, actor, tag.value, subject, clean, chain.key if chain else None),
        chain_version=KEYED if chain else LEGACY,
    )
    session.add(entry)
    session.flush()
    if chain is not None and chain.anchor_file is not None:
        session.info[_HEAD_INFO] = (entry.id, entry.hash)
    return entry


@event.listens_for(Session, "after_commit")
def _anchor_committed_head(session: Session) -> None:
    """After the commit (never before: a rolled-back head would be a false alarm)."""
    head = session.info.pop(_HEAD_INFO, None)
    chain: AuditChain | None = session.info.get(AUDIT_CHAIN_INFO)
    if head is None or chain is None or chain.anchor_file is None:
        return
    try:
        write_anchor(chain.anchor_file, head[0], head[1], syslog=chain.syslog)
    except OSError as exc:  # the change is committed; the next anchor catches up
        log.warning("audit head %s not anchored in %s: %s", head[0], chain.anchor_file, exc)


@event.listens_for(Session, "after_rollback")
def _forget_head(session: Session) -> None:
    session.info.pop(_HEAD_INFO, None)


# ---------------------------------------------------------------- anchors
@dataclass(frozen=True, slots=True)
class Anchor:
    """One line of the anchor log: `<time> head|keyed-from id=<id> hash=<hash>`."""

    kind: str  # "head", or "keyed-from": the head when the audit key was made
    entry_id: int  # 0: the empty log
    hash: str
    line: int = 0


_ANCHOR_LINE = re.compile(r"^\S+ (head|keyed-from) id=(\d+) hash=([0-9a-f]{64})$")


def write_anchor(
    path: Path, entry_id: int, entry_hash_: str, *, kind: str = "head", syslog: bool = True
) -> str:
    """Append one anchor line (the file is created 0600) and send it to syslog; the line."""
    line = (
        f"{datetime.now(UTC).isoformat(timespec='seconds')} {kind} id={entry_id} hash={entry_hash_}"
    )
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)
    if syslog:
        _syslog(f"schoolgate audit {kind} id={entry_id} hash={entry_hash_}")
    return line


_syslog_ready: list[bool] = []


def _syslog(message: str) -> None:
    """To the local syslog (the journal on systemd) when /dev/log exists; else nowhere."""
    if not _syslog_ready:
        _syslog_ready.append(True)
        if Path("/dev/log").exists():
            try:
                handler = logging.handlers.SysLogHandler(
                    address="/dev/log", facility=logging.handlers.SysLogHandler.LOG_AUTHPRIV
                )
            except OSError:
                pass
            else:
                anchor_log.addHandler(handler)
                anchor_log.setLevel(logging.INFO)
                anchor_log.propagate = False
    if anchor_log.handlers:
        anchor_log.info(message)


def read_anchors(path: Path) -> list[Anchor]:
    """Every anchor in the file; Invalid (one line) for a line that is not one."""
    try:
        content = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise Invalid(f"cannot read anchor file {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise Invalid(f"anchor file {path} is not text") from exc
    anchors = []
    for number, raw in enumerate(content.splitlines(), start=1):
        if not raw.strip():
            continue
        found = _ANCHOR_LINE.match(raw.strip())
        if found is None:
            raise Invalid(f"anchor file {path} line {number} is not an anchor: {raw[:60]!r}")
        anchors.append(Anchor(found[1], int(found[2]), found[3], number))
    return anchors


def head(session: Session) -> tuple[int, str, int]:
    """The newest entry's id and hash (0 and the genesis hash when empty), and the count."""
    last = session.execute(
        select(AuditEntry.id, AuditEntry.hash).order_by(AuditEntry.id.desc()).limit(1)
    ).first()
    count = session.scalar(select(func.count()).select_from(AuditEntry)) or 0
    return (last.id, last.hash, count) if last is not None else (0, GENESIS, 0)


def start_keyed_era(*, session: Session, chain: AuditChain) -> str | None:
    """Anchor the head at the moment the audit key is first used (`db upgrade`): from there on
    an unkeyed entry fails verification. Once per anchor file; the line written, or None."""
    if chain.anchor_file is None:
        return None
    if chain.anchor_file.exists() and chain.anchor_file.stat().st_size > 0:
        return None
    entry_id, entry_hash_, _count = head(session)
    return write_anchor(
        chain.anchor_file, entry_id, entry_hash_, kind="keyed-from", syslog=chain.syslog
    )


# ---------------------------------------------------------------- verification
@dataclass(frozen=True, slots=True)
class VerifyResult:
    ok: bool
    entries: int
    first_bad_id: int | None = None
    problem: str | None = None
    head_id: int = 0
    head_hash: str = GENESIS
    keyed: int = 0  # how many entries are HMAC-keyed
    anchors: int = 0  # how many anchors were checked


def verify(
    session: Session, *, key: bytes | None = None, anchors: Sequence[Anchor] = ()
) -> VerifyResult:
    """Recompute the chain (keyed entries with `key`) and check it against `anchors`; report
    the first entry whose hash, link or anchor does not hold."""
    prev = GENESIS
    count = keyed = 0
    head_id = 0
    keyed_from = min((a.entry_id for a in anchors if a.kind == "keyed-from"), default=None)
    wanted: dict[int, str] = {}
    for anchor in anchors:
        if anchor.entry_id == 0:
            continue  # the empty log: nothing to find
        if wanted.setdefault(anchor.entry_id, anchor.hash) != anchor.hash:
            return VerifyResult(
                False, 0, anchor.entry_id, f"anchor line {anchor.line} contradicts an earlier one"
            )

    def broken(entry_id: int, problem: str) -> VerifyResult:
        return VerifyResult(False, count, entry_id, problem, head_id, prev, keyed, len(anchors))

    for entry in session.scalars(select(AuditEntry).order_by(AuditEntry.id)):
        count += 1
        if entry.prev_hash != prev:
            return broken(entry.id, "link to the previous entry is broken")
        fields = (entry.prev_hash, entry.at, entry.actor, entry.tag, entry.subject, entry.detail)
        if entry.chain_version == KEYED:
            if key is None:
                return broken(
                    entry.id, "entry is keyed but no audit key is set (SCHOOLGATE_AUDIT_KEY)"
                )
            expected = entry_hash(*fields, key=key)
            keyed += 1
        elif entry.chain_version == LEGACY:
            if keyed:
                return broken(
                    entry.id, "unkeyed entry after keyed ones (rewritten without the key)"
                )
            if keyed_from is not None and entry.id > keyed_from:
                return broken(entry.id, "unkeyed entry written after the audit key was made")
            expected = entry_hash(*fields)
        else:
            return broken(entry.id, f"unknown chain version {entry.chain_version}")
        if not hmac.compare_digest(expected, entry.hash):
            return broken(entry.id, "entry was altered after it was written")
        anchored = wanted.pop(entry.id, None)
        if anchored is not None and anchored != entry.hash:
            return broken(entry.id, "entry differs from its anchored hash (chain rewritten)")
        prev = entry.hash
        head_id = entry.id
    if wanted:
        missing = min(wanted)
        return VerifyResult(
            False,
            count,
            missing,
            f"anchored entry is missing: the log was truncated (now {count} entries, "
            f"head id {head_id})",
            head_id,
            prev,
            keyed,
            len(anchors),
        )
    return VerifyResult(True, count, None, None, head_id, prev, keyed, len(anchors))


def verify_configured(
    session: Session, *, settings: Settings, anchor_file: Path | None = None
) -> VerifyResult:
    """`verify` with what the settings give: the audit key and the anchor log (`anchor_file`,
    else the one beside the key, which may not exist yet). `schoolgate audit verify` and the
    weekly report run this one check, so they cannot disagree."""
    path = anchor_file or settings.anchor_file
    anchors = read_anchors(path) if anchor_file is not None or path.exists() else []
    key = settings.audit_key.get_secret_value().encode() if settings.audit_key else None
    return verify(session, key=key, anchors=anchors)
