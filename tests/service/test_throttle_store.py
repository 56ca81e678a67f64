"""The sign-in throttle's shared store (`service/throttle.py`, issue 13) on SQLite and
PostgreSQL: the same backoff as the memory store, one count across processes' sessions,
parallel charges that cannot slip past one count, a refund, and the purge."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from service.db import transaction
from service.models.throttle import SigninFailure
from service.throttle import DatabaseFailures, MemoryFailures, Throttle, purge_failures

T0 = 1_700_000_000.0


def rows(factory: sessionmaker[Session]) -> int:
    with transaction(factory) as session:
        return int(session.scalar(select(func.count()).select_from(SigninFailure)) or 0)


def test_the_database_store_backs_off_exactly_like_memory(
    session_factory: sessionmaker[Session],
) -> None:
    shared = Throttle.from_limits(store=DatabaseFailures(session_factory))
    local = Throttle.from_limits(store=MemoryFailures())
    waits: dict[str, list[float]] = {"shared": [], "local": []}
    for name, throttle in (("shared", shared), ("local", local)):
        now = T0
        for _ in range(12):
            wait = throttle.begin(sources=["ip:10.0.0.9"], account="JSmith ", now=now)
            if wait > 0:
                waits[name].append(wait)
                now += wait
                assert throttle.begin(sources=["ip:10.0.0.9"], account="jsmith", now=now) == 0
            now += 0.001
    assert waits["shared"] == waits["local"]
    assert [round(w) for w in waits["shared"]][:5] == [1, 2, 4, 8, 16]
    # A second node's throttle (another store on the same database) sees the same count.
    other = Throttle.from_limits(store=DatabaseFailures(session_factory))
    assert other.retry_after(sources=["ip:10.0.0.77"], account="jsmith", now=now) > 0
    assert other.begin(sources=["ip:10.0.0.77"], account="jsmith", now=now) > 0
    # The right password: the account starts again; the source gives one failure back.
    other.succeeded(sources=["ip:10.0.0.9"], account="jsmith")
    assert other.retry_after(sources=[], account="jsmith", now=now) == 0
    assert other.retry_after(sources=["ip:10.0.0.9"], account="x", now=now) > 0


def test_parallel_charges_from_many_sessions_all_count(
    session_factory: sessionmaker[Session],
) -> None:
    """Forty wrong passwords at once from four 'nodes': every one is charged or refused,
    none slips past a count."""
    nodes = [
        Throttle.from_limits(free=1000, store=DatabaseFailures(session_factory)) for _ in range(4)
    ]

    def attempt(index: int) -> float:
        return nodes[index % 4].begin(sources=[f"ip:10.0.1.{index}"], account="jsmith", now=T0)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(attempt, range(40)))
    assert results == [0.0] * 40
    with transaction(session_factory) as session:
        counted = session.scalar(
            select(SigninFailure.failures).where(SigninFailure.key == "account:jsmith")
        )
    assert counted == 40


def test_forgotten_keys_are_purged(session_factory: sessionmaker[Session]) -> None:
    store = DatabaseFailures(session_factory, forget_after=60.0)
    throttle = Throttle.from_limits(store=store)
    for i in range(5):
        throttle.begin(sources=[f"ip:10.0.2.{i}"], account=f"user{i}", now=T0)
    assert rows(session_factory) == 10
    with transaction(session_factory) as session:
        assert purge_failures(session, now=T0 + 30) == 0
        assert purge_failures(session, now=T0 + 61) == 10
    assert rows(session_factory) == 0
    # Bounded: past `max_keys`, the oldest go first.
    for i in range(6):
        throttle.begin(sources=[], account=f"flood{i}", now=T0 + i)
    with transaction(session_factory) as session:
        assert purge_failures(session, now=T0, max_keys=4) == 2
        left = set(session.scalars(select(SigninFailure.key)))
    assert left == {f"account:flood{i}" for i in range(2, 6)}
