"""The writer process (the recorder fed in event batches, then the inserts) records exactly what
the engine and recorder record in one process, row for row and in the same order, on SQLite and
PostgreSQL."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from service.db import make_engine
from service.monitor.attribution import load_attributor
from service.monitor.run import run_monitor
from service.monitor.writer import TABLES, UPSERTED
from tests.monitor import traffic as t
from tests.monitor.conftest import REPO, RunFile, shared


def _upserted(rows: list[dict]) -> list[dict]:
    """Device names as the writer keeps them: one row per (mac, name, source), in the order
    first written, first and last seen spanning its sightings, the latest address known."""
    merged: dict[tuple[str, str, str], dict] = {}
    for row in rows:
        key = (row["mac"], row["name"], row["source"])
        if key not in merged:
            merged[key] = dict(row)
            continue
        seen = merged[key]
        seen["first_seen"] = min(seen["first_seen"], row["first_seen"])
        if row["last_seen"] >= seen["last_seen"]:
            seen["last_seen"], seen["ip"] = row["last_seen"], row["ip"] or seen["ip"]
    return list(merged.values())


def test_the_writer_process_records_what_the_engine_records_in_process(
    westgate, db_url, session_factory, run_file: RunFile, tmp_path: Path
) -> None:
    day = t.write(tmp_path / "day.pcap", t.school_day())
    captures = [day, shared("ndpi/bittorrent.pcap")]
    engine = make_engine(db_url)
    try:
        expected: dict[str, list[dict]] = {kind: [] for kind in TABLES}
        counted: dict[str, int] = {}
        for capture in captures:
            with session_factory() as session:
                attributor = load_attributor(session, site_code="westgate")
                result = run_monitor(
                    db_url,
                    read=capture,
                    site_code="westgate",
                    categories_dir=REPO / "deploy" / "categories",
                )
            assert result.writer_errors == 0, result.writer_last_error
            recorded = run_file(capture, attributor=attributor)
            for kind in TABLES:
                expected[kind] += recorded.of(kind)
            for name in ("dns", "visits", "alerts", "flows"):
                counted[name] = counted.get(name, 0) + result.counters[name]
                assert result.counters[name] == getattr(recorded.monitor.counters, name)
            assert result.visits == recorded.of("visits")
            assert result.alerts == recorded.of("alerts")
            assert result.p2p_flows == [f for f in recorded.of("flows") if f["p2p"]]
        with engine.connect() as conn:
            for kind, table in TABLES.items():
                stored = [
                    {k: v for k, v in row._mapping.items() if k != "id"}
                    for row in conn.execute(select(table).order_by(table.c.id))
                ]
                if kind in UPSERTED:
                    assert stored == _upserted(expected[kind]), kind
                else:
                    assert stored == expected[kind], kind
        assert all(counted[name] > 0 for name in ("flows", "dns", "visits", "alerts")), counted
    finally:
        engine.dispose()
