"""What each change changed, so a RADIUS snapshot can be patched instead of rebuilt.

Every transaction that changes a fact the snapshot holds (`service.facts.load_snapshot`)
writes rows to `change_log` at commit: (the change counter value, kind, key). Nothing calls
this module: SQLAlchemy session events watch the ORM's flushes, so every service function
that changes a device, person, exception, signature, NAS client, site or policy records it
without knowing (and a new one cannot forget):

- `after_flush` notes the keys of the rows a flush inserted, changed (only the columns the
  snapshot reads: a failed login or `updated_at` is not a change) or deleted;
- an ORM bulk UPDATE/DELETE/INSERT on one of those tables (`session.execute(update(Device))`)
  cannot say which rows: it records `full`;
- `before_commit` writes the rows with the counter's value. It moves the counter first when
  nothing did in this transaction (a change the snapshot would otherwise never hear of). The
  counter's row stays locked until the commit, so change-log versions commit in order: a
  reader that sees counter value C sees every row of version <= C.

Rows older than `KEEP_SECONDS` are pruned now and then by a writer; a `pruned` row keeps the
last version pruned, and a snapshot older than it rebuilds in full (`changes_since`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, event, func, insert, inspect, select, text, update
from sqlalchemy.orm import ORMExecuteState, Session, SessionTransaction, UOWTransaction

from service.models import (
    AccessException,
    Agreement,
    ChangeCounter,
    ChangeKind,
    ChangeLogEntry,
    Device,
    NasClient,
    Person,
    Signature,
    Site,
    SitePolicy,
    utcnow,
)

NOTIFY_CHANNEL = "schoolgate_changes"
KEEP_SECONDS = 3600.0  # a worker more than an hour behind rebuilds in full
PRUNE_EVERY = 256  # a writer prunes when its version is a multiple of this
# More changed keys than this since the version held: a full build is as cheap.
MAX_KEYS = 20_000

_PENDING = "schoolgate.change_log.pending"  # Session.info: set of (kind, key) not yet written
_BUMPED = "schoolgate.change_log.bumped"  # Session.info: this transaction moved the counter

# The columns the snapshot reads, per table (a change elsewhere changes no answer).
_DEVICE_COLUMNS = ("mac", "site_id", "device_class", "owner_id", "status", "status_reason")
_PERSON_COLUMNS = ("site_id", "role", "name", "username", "active", "password_hash")
_SIGNATURE_COLUMNS = ("agreement_id", "person_id", "device_id", "valid_until")
_GRANT_COLUMNS = (
    "device_id",
    "access",
    "valid_from",
    "valid_until",
    "reason",
    "approved_by",
    "revoked_at",
)
_TRACKED = (Device, Person, AccessException, Signature, Agreement, NasClient, Site, SitePolicy)


def bump_change(session: Session) -> None:
    """Move the change counter (servers reload their snapshot) and, on PostgreSQL, NOTIFY.

    The UPDATE also takes the row lock that serialises audit-chain appends across writers.
    """
    session.execute(
        update(ChangeCounter)
        .where(ChangeCounter.id == 1)
        .values(value=ChangeCounter.value + 1, changed_at=utcnow())
    )
    session.info[_BUMPED] = True
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text(f"NOTIFY {NOTIFY_CHANNEL}"))


# ---------------------------------------------------------------- recording
def _changed(obj: Any, columns: tuple[str, ...]) -> list[tuple[Any, ...]]:
    """(old, new) values of the columns of `columns` this flush changed."""
    state = inspect(obj)
    out = []
    for name in columns:
        history = state.attrs[name].history
        if history.has_changes():
            out.append((*history.deleted, *history.added))
    return out


def _values(obj: Any, name: str, changes: list[tuple[Any, ...]] | None) -> set[Any] | None:
    """The column's value now and, when it changed, before; None when it is not loaded (a
    lazy load here would read a row the flush may have deleted)."""
    state = inspect(obj)
    if name not in state.dict:
        return None
    values = {state.dict[name]}
    if changes:
        values.update(state.attrs[name].history.deleted)
    values.discard(None)
    return values


def _tagged(kind: ChangeKind, values: set[Any] | None) -> set[tuple[str, str]]:
    if values is None:
        return {(ChangeKind.FULL.value, f"unloaded {kind.value}")}
    return {(kind.value, str(value)) for value in values}


def _keys_of(obj: Any, how: str) -> set[tuple[str, str]]:
    """The (kind, key) pairs a flushed row change touches; `how`: new, dirty or deleted."""
    dirty = how == "dirty"
    if isinstance(obj, Device):
        changes = _changed(obj, _DEVICE_COLUMNS) if dirty else None
        if dirty and not changes:
            return set()
        return _tagged(ChangeKind.MAC, _values(obj, "mac", changes))
    if isinstance(obj, Person):
        if dirty and not _changed(obj, _PERSON_COLUMNS):
            return set()
        return _tagged(ChangeKind.PERSON, _values(obj, "id", None))
    if isinstance(obj, (AccessException, Signature)):
        columns = _GRANT_COLUMNS if isinstance(obj, AccessException) else _SIGNATURE_COLUMNS
        changes = _changed(obj, columns) if dirty else None
        if dirty and not changes:
            return set()
        keys = _tagged(ChangeKind.DEVICE, _values(obj, "device_id", changes))
        if isinstance(obj, Signature):
            keys |= _tagged(ChangeKind.PERSON, _values(obj, "person_id", changes))
        return keys
    if isinstance(obj, Agreement):
        # A new agreement changes nothing until it is signed (the signature says so).
        if how == "new" or (dirty and not _changed(obj, ("kind",))):
            return set()
        return {(ChangeKind.FULL.value, "agreement")}
    if isinstance(obj, Site):
        if dirty and not _changed(obj, ("code",)):
            return set()
        return {(ChangeKind.FULL.value, "site")}
    if isinstance(obj, NasClient):
        return {(ChangeKind.FULL.value, "nas")}
    if isinstance(obj, SitePolicy):
        return {(ChangeKind.FULL.value, "policy")}
    return set()


@event.listens_for(Session, "after_flush")
def _note_flushed(session: Session, _flush: UOWTransaction) -> None:
    """Called while the flush's history is still there: note what it changed."""
    keys: set[tuple[str, str]] = set()
    for how, objects in (
        ("new", session.new),
        ("dirty", session.dirty),
        ("deleted", session.deleted),
    ):
        for obj in objects:
            if isinstance(obj, _TRACKED):
                keys |= _keys_of(obj, how)
    if keys:
        session.info.setdefault(_PENDING, set()).update(keys)


@event.listens_for(Session, "do_orm_execute")
def _note_bulk(state: ORMExecuteState) -> None:
    """A bulk statement on a tracked table cannot say which rows: rebuild in full."""
    if not (state.is_update or state.is_delete or state.is_insert):
        return
    mapper = state.bind_mapper
    if mapper is not None and mapper.class_ in _TRACKED:
        state.session.info.setdefault(_PENDING, set()).add(
            (ChangeKind.FULL.value, f"bulk {mapper.class_.__tablename__}")
        )


@event.listens_for(Session, "before_commit")
def _write_pending(session: Session) -> None:
    session.flush()  # what the commit would flush: its keys too
    pending: set[tuple[str, str]] | None = session.info.pop(_PENDING, None)
    if not pending:
        return
    if not session.info.get(_BUMPED):
        bump_change(session)
    version = int(session.scalar(select(ChangeCounter.value).where(ChangeCounter.id == 1)) or 0)
    now = utcnow()
    session.execute(
        insert(ChangeLogEntry),
        [
            {"version": version, "kind": kind, "key": key[:64], "recorded_at": now}
            for kind, key in sorted(pending)
        ],
    )
    if version % PRUNE_EVERY == 0:
        prune(session=session, keep_seconds=KEEP_SECONDS)


@event.listens_for(Session, "after_transaction_end")
def _forget(session: Session, transaction: SessionTransaction) -> None:
    """At the end of the outermost transaction only: a savepoint rolled back keeps what the
    transaction around it changed (noting a key too many only reloads it)."""
    if transaction.parent is None:
        session.info.pop(_PENDING, None)
        session.info.pop(_BUMPED, None)


def prune(*, session: Session, keep_seconds: float) -> int:
    """Delete rows older than `keep_seconds` and leave a `pruned` row at the last version
    deleted; the number of rows deleted."""
    cutoff = utcnow() - timedelta(seconds=keep_seconds)
    last = session.scalar(
        select(func.max(ChangeLogEntry.version)).where(ChangeLogEntry.recorded_at < cutoff)
    )
    if last is None:
        return 0
    deleted = session.execute(delete(ChangeLogEntry).where(ChangeLogEntry.version <= last))
    session.execute(
        insert(ChangeLogEntry).values(
            version=last, kind=ChangeKind.PRUNED.value, key="", recorded_at=utcnow()
        )
    )
    session.flush()
    return int(getattr(deleted, "rowcount", 0) or 0)


# ---------------------------------------------------------------- reading
@dataclass(slots=True)
class Changes:
    """What changed after a version: MACs, device ids and person ids to reload."""

    macs: set[str] = field(default_factory=set)
    device_ids: set[int] = field(default_factory=set)
    person_ids: set[int] = field(default_factory=set)


def changes_since(*, session: Session, version: int) -> Changes | None:
    """The facts changed by every change after `version` (and perhaps a few later ones), or
    None when the snapshot must be rebuilt: a NAS, site or policy changed, the log was pruned
    past `version`, or too many keys changed."""
    rows = session.execute(
        select(ChangeLogEntry.kind, ChangeLogEntry.key)
        .where(ChangeLogEntry.version > version)
        .limit(MAX_KEYS + 1)
    ).all()
    if len(rows) > MAX_KEYS:
        return None
    changes = Changes()
    for kind, key in rows:
        if kind == ChangeKind.MAC:
            changes.macs.add(key)
        elif kind == ChangeKind.DEVICE:
            changes.device_ids.add(int(key))
        elif kind == ChangeKind.PERSON:
            changes.person_ids.add(int(key))
        else:  # full, pruned, or a kind this version does not know
            return None
    return changes
