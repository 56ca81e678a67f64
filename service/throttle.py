"""One sign-in throttle for the portal's staff sign-in, visitor codes and RADIUS PAP:
exponential backoff per source and per account, never a lock.

Why not a lock: six wrong passwords used to lock a staff account, so anyone on the guest
Wi-Fi could lock any teacher out by typing their username. Now each source (client IP, MAC,
or NAS + Calling-Station-Id) and each account name (as typed, known or not) has a failure
count; after `free` failures every further attempt must wait `base * 2**k` seconds, capped.
The source cap is high (an attacker's device is slowed hard); the account cap is low (the
real owner, from another device, waits a minute at worst, and is never locked out).

Attempts are charged before the password is checked (`begin`) and refunded on success
(`succeeded`), so requests sent in parallel cannot all slip past one count. An attempt made
while waiting is refused without checking the password and without being counted.

Where the counts live (a `FailureStore`, issue 13: nodes hold no state of their own):
`DatabaseFailures` keeps them in the `signin_failures` table, so every portal and RADIUS node
behind a load balancer sees one count and a restart forgets nothing; each charge is one
atomic upsert per key, in the store's own short transaction (a failed sign-in rolls its
request back, never the count). `MemoryFailures` keeps them in this process (unit tests, and
the fallback): a RADIUS node whose database is unreachable goes on with `FallbackFailures`,
which uses memory until the database answers again and logs once per outage.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import case, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from service.db import transaction
from service.models.throttle import SigninFailure

log = logging.getLogger("schoolgate.throttle")

DEFAULT_FREE_FAILURES = 5
DEFAULT_SOURCE_MAX_SECONDS = 900.0
DEFAULT_ACCOUNT_MAX_SECONDS = 60.0
DEFAULT_FORGET_AFTER = 3600.0


@dataclass(frozen=True, slots=True)
class Backoff:
    """`free` failures cost nothing; the next ones wait `base`, 2 x `base`, ... up to `cap`."""

    free: int = DEFAULT_FREE_FAILURES
    base: float = 1.0
    cap: float = DEFAULT_SOURCE_MAX_SECONDS

    def delay(self, failures: int) -> float:
        if failures < self.free:
            return 0.0
        return min(self.cap, self.base * 2.0 ** min(failures - self.free, 62))


# A throttle key and the backoff it counts with. In every list the sources come first and
# the account is last (`succeeded` refunds the sources one failure and resets the account).
Keyed = tuple[str, Backoff]


class FailureStore(Protocol):
    """Where the failure counts live. `now` is the caller's clock in seconds (one clock per
    store: wall time for a shared store, which several processes read)."""

    def retry_after(self, keys: Sequence[Keyed], now: float) -> float:
        """Seconds until an attempt charged to `keys` may be tried (0.0: now)."""
        ...

    def begin(self, keys: Sequence[Keyed], now: float) -> float:
        """0.0 and one failure charged to every key, or the seconds to wait (nothing charged
        to a key that must wait)."""
        ...

    def succeeded(self, keys: Sequence[Keyed]) -> None:
        """The sources get their charge back; the account (the last key) starts again."""
        ...


class MemoryFailures:
    """The counts in this process's memory, bounded (the oldest forgotten first)."""

    def __init__(
        self, *, forget_after: float = DEFAULT_FORGET_AFTER, max_keys: int = 100_000
    ) -> None:
        # A key quiet for this long (after its wait) starts again from zero.
        self.forget_after = forget_after
        self.max_keys = max_keys
        self._failures: dict[str, tuple[int, float]] = {}
        self._lock = threading.Lock()

    def _wait(self, key: str, backoff: Backoff, now: float) -> float:
        entry = self._failures.get(key)
        if entry is None:
            return 0.0
        failures, last = entry
        delay = backoff.delay(failures)
        if now - last > delay + self.forget_after:
            del self._failures[key]
            return 0.0
        return max(0.0, last + delay - now)

    def retry_after(self, keys: Sequence[Keyed], now: float) -> float:
        with self._lock:
            return max(self._wait(k, b, now) for k, b in keys)

    def begin(self, keys: Sequence[Keyed], now: float) -> float:
        with self._lock:
            wait = max(self._wait(k, b, now) for k, b in keys)
            if wait > 0:
                return wait
            for key, _ in keys:
                failures, _last = self._failures.pop(key, (0, now))
                self._failures[key] = (failures + 1, now)  # re-inserted: newest last
            while len(self._failures) > self.max_keys:  # bounded: forget the oldest
                del self._failures[next(iter(self._failures))]
        return 0.0

    def succeeded(self, keys: Sequence[Keyed]) -> None:
        with self._lock:
            for key, _ in keys[:-1]:
                entry = self._failures.get(key)
                if entry is not None:
                    if entry[0] <= 1:
                        del self._failures[key]
                    else:
                        self._failures[key] = (entry[0] - 1, entry[1])
            self._failures.pop(keys[-1][0], None)


# ------------------------------------------------------------------ the shared store (SQL)
_T = SigninFailure.__table__.c


def _next_delay(failures: Any, delay: Any, backoff: Backoff) -> Any:
    """SQL for `backoff.delay(failures)` given `delay`, the wait of `failures - 1` (no
    power() needed: SQLite may lack it). Exact except after `succeeded` halved a capped
    wait, which only shortens it."""
    doubled = delay * 2.0
    return case(
        (failures < backoff.free, 0.0),
        (failures == backoff.free, min(backoff.base, backoff.cap)),
        (doubled > backoff.cap, backoff.cap),
        else_=doubled,
    )


def failure_wait(session: Session, *, keys: Sequence[Keyed], now: float) -> float:
    """Seconds until an attempt charged to `keys` may be tried, from the shared counts."""
    waits = session.execute(
        select(_T.last_at + _T.delay_seconds).where(
            _T.key.in_([k for k, _ in keys]), _T.forget_at >= now
        )
    ).scalars()
    return max((until - now for until in waits), default=0.0) if keys else 0.0


def charge_failures(
    session: Session, *, keys: Sequence[Keyed], now: float, forget_after: float
) -> float:
    """One failure charged to each key, one atomic upsert per key (parallel requests on
    other nodes cannot slip past a count). A key that must wait (another node charged it
    meanwhile) is left as it is; the answer is then its wait, else 0.0. Flushes nothing
    else: the caller commits."""
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    wait = 0.0
    for key, backoff in keys:
        first = backoff.delay(1)
        waiting = _T.last_at + _T.delay_seconds > now
        forgotten = _T.forget_at < now
        delay = case(
            (waiting, _T.delay_seconds),
            (forgotten, first),
            else_=_next_delay(_T.failures + 1, _T.delay_seconds, backoff),
        )
        values = insert(SigninFailure).values(
            key=key,
            failures=1,
            last_at=now,
            delay_seconds=first,
            forget_at=now + first + forget_after,
        )
        stmt = values.on_conflict_do_update(
            index_elements=[_T.key],
            set_={
                "failures": case((waiting, _T.failures), (forgotten, 1), else_=_T.failures + 1),
                "delay_seconds": delay,
                "last_at": case((waiting, _T.last_at), else_=now),
                "forget_at": case((waiting, _T.forget_at), else_=now + delay + forget_after),
            },
        ).returning(_T.last_at, _T.delay_seconds)
        row = session.execute(stmt).one()
        if row.last_at != now:  # it was waiting: not charged
            wait = max(wait, row.last_at + row.delay_seconds - now)
    return wait


def refund_failures(session: Session, *, keys: Sequence[Keyed]) -> None:
    """A right password: each source gives back one failure, the account starts again."""
    (account, _), sources = keys[-1], keys[:-1]
    session.execute(delete(SigninFailure).where(_T.key == account))
    for key, backoff in sources:
        session.execute(delete(SigninFailure).where(_T.key == key, _T.failures <= 1))
        session.execute(
            update(SigninFailure)
            .where(_T.key == key)
            .values(
                failures=_T.failures - 1,
                delay_seconds=case(
                    (_T.failures - 1 < backoff.free, 0.0),
                    (_T.failures - 1 == backoff.free, min(backoff.base, backoff.cap)),
                    else_=_T.delay_seconds / 2.0,
                ),
            )
        )


def purge_failures(session: Session, *, now: float, max_keys: int = 100_000) -> int:
    """Forget the keys quiet for long enough, and the oldest beyond `max_keys` (bounded
    under a flood of made-up usernames). How many rows went."""
    result = session.execute(delete(SigninFailure).where(_T.forget_at < now))
    gone = int(getattr(result, "rowcount", 0) or 0)
    oldest = select(_T.key).order_by(_T.last_at.desc()).offset(max_keys).scalar_subquery()
    result = session.execute(delete(SigninFailure).where(_T.key.in_(oldest)))
    return gone + int(getattr(result, "rowcount", 0) or 0)


def purge(session: Session, _settings: object, now: datetime) -> dict[str, int]:
    """The retention purge's share (`service/retention.py`): the forgotten keys go daily even
    when no one signs in."""
    return {"signin_failures": purge_failures(session, now=now.timestamp())}


class DatabaseFailures:
    """The counts in the `signin_failures` table, each call its own short transaction from
    `session_factory` (never the request's: a failed sign-in rolls back its request, the
    throttle's charge stays). Expired keys are purged by whichever node charges next, at
    most once per `purge_seconds`."""

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        *,
        forget_after: float = DEFAULT_FORGET_AFTER,
        max_keys: int = 100_000,
        purge_seconds: float = 60.0,
    ) -> None:
        self.session_factory = session_factory
        self.forget_after = forget_after
        self.max_keys = max_keys
        self.purge_seconds = purge_seconds
        self._next_purge = 0.0

    def retry_after(self, keys: Sequence[Keyed], now: float) -> float:
        with transaction(self.session_factory) as session:
            return failure_wait(session, keys=keys, now=now)

    def begin(self, keys: Sequence[Keyed], now: float) -> float:
        # A read first (most refusals cost no write), then the upserts in a transaction of
        # their own that starts with a write (SQLite: no read-to-write upgrade to fail).
        wait = self.retry_after(keys, now)
        if wait > 0:
            return wait
        with transaction(self.session_factory) as session:
            wait = charge_failures(session, keys=keys, now=now, forget_after=self.forget_after)
            if time.monotonic() >= self._next_purge:
                self._next_purge = time.monotonic() + self.purge_seconds
                purge_failures(session, now=now, max_keys=self.max_keys)
        return wait

    def succeeded(self, keys: Sequence[Keyed]) -> None:
        with transaction(self.session_factory) as session:
            refund_failures(session, keys=keys)


class FallbackFailures:
    """`primary` (the database) while it answers; `fallback` (memory) while it does not, one
    warning per outage, and the database tried again at most every `retry_seconds` (a RADIUS
    node keeps answering PAP from its snapshot during an outage, issue 13, and must not wait
    on a connect per packet)."""

    def __init__(
        self, primary: FailureStore, fallback: FailureStore, *, retry_seconds: float = 5.0
    ) -> None:
        self.primary = primary
        self.fallback = fallback
        self.retry_seconds = retry_seconds
        self.failing_since: float | None = None
        self._retry_at = 0.0
        self._lock = threading.Lock()

    def _use_primary(self) -> bool:
        return self.failing_since is None or time.monotonic() >= self._retry_at

    def _worked(self) -> None:
        if self.failing_since is not None:
            with self._lock:
                if self.failing_since is not None:
                    log.warning(
                        "sign-in throttle: the database answers again after %.0f s: "
                        "failure counts are shared again",
                        time.monotonic() - self.failing_since,
                    )
                    self.failing_since = None

    def _failed(self, exc: SQLAlchemyError) -> None:
        with self._lock:
            self._retry_at = time.monotonic() + self.retry_seconds
            if self.failing_since is None:
                self.failing_since = time.monotonic()
                log.warning(
                    "sign-in throttle: the database cannot be reached (%s): counting failures "
                    "in this process's memory until it answers",
                    str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__,
                )

    def retry_after(self, keys: Sequence[Keyed], now: float) -> float:
        if self._use_primary():
            try:
                wait = self.primary.retry_after(keys, now)
            except SQLAlchemyError as exc:
                self._failed(exc)
            else:
                self._worked()
                return wait
        return self.fallback.retry_after(keys, now)

    def begin(self, keys: Sequence[Keyed], now: float) -> float:
        if self._use_primary():
            try:
                wait = self.primary.begin(keys, now)
            except SQLAlchemyError as exc:
                self._failed(exc)
            else:
                self._worked()
                return wait
        return self.fallback.begin(keys, now)

    def succeeded(self, keys: Sequence[Keyed]) -> None:
        self.fallback.succeeded(keys)
        if self._use_primary():
            try:
                self.primary.succeeded(keys)
            except SQLAlchemyError as exc:
                self._failed(exc)
            else:
                self._worked()


# ------------------------------------------------------------------ the throttle
class Throttle:
    """Failure counts per key (`source:...` and `account:...`) in a `FailureStore`
    (this process's memory unless given one)."""

    def __init__(
        self,
        *,
        source: Backoff | None = None,
        account: Backoff | None = None,
        store: FailureStore | None = None,
    ) -> None:
        self.source = source or Backoff()
        self.account = account or Backoff(cap=DEFAULT_ACCOUNT_MAX_SECONDS)
        self.store: FailureStore = store or MemoryFailures()
        self.refused = 0  # attempts answered "wait" (a counter for the operator)

    @classmethod
    def from_limits(
        cls,
        *,
        free: int = DEFAULT_FREE_FAILURES,
        source_max_seconds: float = DEFAULT_SOURCE_MAX_SECONDS,
        account_max_seconds: float = DEFAULT_ACCOUNT_MAX_SECONDS,
        store: FailureStore | None = None,
    ) -> Throttle:
        return cls(
            source=Backoff(free=free, cap=source_max_seconds),
            account=Backoff(free=free, cap=account_max_seconds),
            store=store,
        )

    def _keys(self, sources: Iterable[str], account: str) -> list[Keyed]:
        keys = [(f"source:{s}", self.source) for s in dict.fromkeys(sources) if s]
        keys.append((f"account:{account.strip().lower()}", self.account))
        return keys

    def retry_after(self, *, sources: Iterable[str], account: str, now: float) -> float:
        """Seconds until the next attempt for this account from these sources may be tried."""
        return self.store.retry_after(self._keys(sources, account), now)

    def begin(self, *, sources: Iterable[str], account: str, now: float) -> float:
        """0.0 and the attempt counted as a failure (until `succeeded`), or the seconds to wait
        (nothing counted: the caller refuses without checking the password)."""
        wait = self.store.begin(self._keys(sources, account), now)
        if wait > 0:
            self.refused += 1
        return wait

    def succeeded(self, *, sources: Iterable[str], account: str) -> None:
        """The password was right: the account starts again; each source gets its charge back."""
        self.store.succeeded(self._keys(sources, account))
