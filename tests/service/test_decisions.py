"""The decision log's batch insert, on SQLite and PostgreSQL: the tuples the RADIUS hot path
builds come back as the rows `export decisions` reads."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select

from service.db import transaction
from service.decisions import DECISION_COLUMNS, DecisionRow, record_decisions
from service.models import DecisionRecord

AT = datetime(2026, 11, 23, 8, 30, 15, tzinfo=UTC)


def test_record_decisions_inserts_the_batch(session_factory):
    rows: list[DecisionRow] = [
        (
            AT.timestamp(),
            "westgate",
            "demo-controller",
            "127.0.0.1",
            "02:00:00:00:10:01",
            "020000001001",
            "hall",
            "full",
            10,
            "school device",
            "matrix",
            3600,
            42,
        ),
        (
            AT.timestamp() + 0.5,
            None,
            None,
            "192.0.2.1",
            None,
            None,
            None,
            "none",
            None,
            "unknown NAS",
            "reject",
            None,
            None,
        ),
    ]
    with transaction(session_factory) as session:
        record_decisions(session=session, rows=rows)
    with session_factory() as session:
        stored = list(session.scalars(select(DecisionRecord).order_by(DecisionRecord.id)))
    assert [r.decided_at for r in stored] == [AT, AT.replace(microsecond=500_000)]
    assert [tuple(getattr(r, c) for c in DECISION_COLUMNS[1:]) for r in stored] == [
        row[1:] for row in rows
    ]
