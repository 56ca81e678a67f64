"""The spool file (radius/spool.py) and the keys that make a replay store each record once."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from radius.spool import Spool, SpoolFull, decode_record, encode_record, spool_path
from service.accounting import AcctRecord, AcctStatus, apply_accounting
from service.decisions import DecisionRow, record_decisions
from service.errors import Invalid
from service.models import AccountingSession, DecisionRecord, NasClient
from service.models.ledger import AccountingRecord
from tests.helpers import free_udp_port
from tests.radius.conftest import start_server

T0 = datetime(2025, 3, 3, 8, 30, tzinfo=UTC)


def record(status: AcctStatus, seconds: int, octets: int, key: str, nas_id: int = 1) -> AcctRecord:
    return AcctRecord(
        status=status,
        nas_id=nas_id,
        nas_ip="127.0.0.1",
        site_code="westgate",
        at=T0 + timedelta(seconds=seconds),
        acct_session_id="sess-1",
        mac="02:00:00:00:10:01",
        session_time=seconds,
        input_octets=octets,
        output_octets=octets * 2,
        key=key,
    )


def test_records_come_back_in_order_and_the_file_empties_once_replayed(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "a.spool", max_bytes=1 << 20, what="test")
    spool.append([{"n": i} for i in range(5)])
    spool.append([{"n": i} for i in range(5, 8)])
    assert spool.depth == 8
    first, offset = spool.peek(3)
    assert first == [{"n": 0}, {"n": 1}, {"n": 2}]
    spool.consumed(offset, len(first))
    assert spool.depth == 5
    spool.append([{"n": 8}])  # written while replaying: behind the rest
    rest, offset = spool.peek(100)
    assert [item["n"] for item in rest] == [3, 4, 5, 6, 7, 8]
    spool.consumed(offset, len(rest))
    assert spool.depth == 0
    assert (tmp_path / "a.spool").stat().st_size == 0
    spool.close()


def test_a_torn_last_record_is_skipped_with_one_line_and_cut_off(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "torn.spool"
    spool = Spool(path, max_bytes=1 << 20, what="test")
    spool.append([{"n": 1}, {"n": 2}])
    spool.close()
    whole = path.stat().st_size
    with path.open("ab") as file:  # a crash in the middle of the next write
        file.write(b'0badc0de {"n": 3')
    with caplog.at_level(logging.WARNING, logger="schoolgate.radius.spool"):
        again = Spool(path, max_bytes=1 << 20, what="test")
    assert again.depth == 2
    assert path.stat().st_size == whole
    torn = [r.getMessage() for r in caplog.records if "torn last record" in r.getMessage()]
    assert len(torn) == 1, caplog.text
    again.append([{"n": 4}])
    items, _ = again.peek(10)
    assert items == [{"n": 1}, {"n": 2}, {"n": 4}]
    again.close()


def test_a_damaged_record_in_the_middle_is_skipped_and_the_rest_replayed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "bad.spool"
    spool = Spool(path, max_bytes=1 << 20, what="test")
    spool.append([{"n": 1}, {"n": 2}, {"n": 3}])
    spool.close()
    lines = path.read_bytes().splitlines(keepends=True)
    lines[1] = lines[1].replace(b'"n":2', b'"n":9')  # the checksum no longer matches
    path.write_bytes(b"".join(lines))
    with caplog.at_level(logging.ERROR, logger="schoolgate.radius.spool"):
        again = Spool(path, max_bytes=1 << 20, what="test")
        items, _ = again.peek(10)
    assert items == [{"n": 1}, {"n": 3}]
    assert "damaged record skipped" in caplog.text
    again.close()


def test_past_its_cap_the_spool_refuses_whole_batches_and_says_so_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "cap.spool"
    spool = Spool(path, max_bytes=4096, what="test")
    batch = [{"pad": "x" * 100, "n": i} for i in range(10)]  # about 1,250 bytes
    spool.append(batch)
    spool.append(batch)
    spool.append(batch)
    size = path.stat().st_size
    with caplog.at_level(logging.ERROR, logger="schoolgate.radius.spool"):
        for _ in range(3):
            with pytest.raises(SpoolFull):
                spool.append(batch)
    assert path.stat().st_size == size  # nothing half-written
    assert spool.depth == 30
    assert caplog.text.count("is full") == 1
    items, offset = spool.peek(1000)
    spool.consumed(offset, len(items))
    spool.append(batch)  # drained: room again
    assert spool.depth == 10
    spool.close()


def test_a_spool_that_cannot_be_created_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "state").write_text("a file, not a directory")
    with pytest.raises(Invalid, match=r"cannot open the RADIUS spool .*state directory"):
        Spool(tmp_path / "state" / "spool" / "x.spool", max_bytes=4096, what="test")


def test_an_accounting_record_survives_the_round_trip_through_the_spool(tmp_path: Path) -> None:
    original = record(AcctStatus.INTERIM, 60, 1000, "k-1")
    spool = Spool(tmp_path / "acct.spool", max_bytes=1 << 20, what="test")
    spool.append([encode_record(original)])
    spool.close()
    again = Spool(tmp_path / "acct.spool", max_bytes=1 << 20, what="test")
    items, _ = again.peek(1)
    assert decode_record(items[0]) == original
    again.close()


def test_accounting_applied_twice_counts_once(
    westgate: SimpleNamespace, session_factory: sessionmaker[Session]
) -> None:
    """A record stored just before an outage and again from the spool: one ledger row each,
    and the session's octets and stop time as if each came once."""
    with session_factory() as session:
        nas_id = session.scalars(select(NasClient.id)).first()
    assert nas_id is not None
    records = [
        record(AcctStatus.START, 0, 0, "k-start", nas_id),
        record(AcctStatus.INTERIM, 60, 1000, "k-interim", nas_id),
        record(AcctStatus.STOP, 120, 3000, "k-stop", nas_id),
    ]
    with session_factory() as session, session.begin():
        apply_accounting(session=session, records=records[:2])
    with session_factory() as session, session.begin():
        apply_accounting(session=session, records=records)  # the replay: two seen already
    with session_factory() as session, session.begin():
        apply_accounting(session=session, records=records[1:2] * 3)  # and a key thrice at once
    with session_factory() as session:
        keys = session.scalars(select(AccountingRecord.record_key)).all()
        assert sorted(keys) == ["k-interim", "k-start", "k-stop"]
        row = session.scalars(select(AccountingSession)).one()
        assert (row.input_octets, row.output_octets, row.session_time) == (3000, 6000, 120)
        assert row.stopped_at == T0 + timedelta(seconds=120)


def test_decision_rows_with_the_same_key_are_stored_once(
    session_factory: sessionmaker[Session],
) -> None:
    row: DecisionRow = (
        T0.timestamp(),
        "westgate",
        "demo-controller",
        "127.0.0.1",
        "02:00:00:00:10:01",
        "020000001001",
        None,
        "full",
        10,
        "school device",
        "school_device",
        3600,
        120,
    )
    with session_factory() as session, session.begin():
        record_decisions(session=session, rows=[row, row], keys=["w:1", "w:2"])
    with session_factory() as session, session.begin():
        record_decisions(session=session, rows=[row, row, row], keys=["w:2", "w:3", "w:1"])
    with session_factory() as session:
        keys = session.scalars(select(DecisionRecord.log_key).order_by(DecisionRecord.id)).all()
        assert keys == ["w:1", "w:2", "w:3"]
        assert session.scalar(select(func.count()).select_from(DecisionRecord)) == 3


def test_a_server_that_starts_with_a_spool_replays_it_first(
    westgate: SimpleNamespace, session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    """What a worker spooled before it died (its records acknowledged) reaches the database
    when the server starts again, once, and the files are emptied."""
    auth_port, acct_port = free_udp_port(), free_udp_port()
    while acct_port == auth_port:
        acct_port = free_udp_port()
    with session_factory() as session:
        nas_id = session.scalars(select(NasClient.id)).first()
    assert nas_id is not None
    accounting = Spool(
        spool_path(tmp_path, auth_port=auth_port, worker=0, kind="accounting"),
        max_bytes=1 << 20,
        what="test",
    )
    accounting.append(
        [
            encode_record(record(AcctStatus.START, 0, 0, "left-start", nas_id)),
            encode_record(record(AcctStatus.STOP, 90, 700, "left-stop", nas_id)),
        ]
    )
    accounting.close()
    decisions = Spool(
        spool_path(tmp_path, auth_port=auth_port, worker=0, kind="decisions"),
        max_bytes=1 << 20,
        what="test",
    )
    row = [T0.timestamp(), "westgate", "demo-controller", "127.0.0.1", "02:00:00:00:10:01"]
    row += [None, None, "full", 10, "left behind", "school_device", 3600, 5]
    decisions.append([["left:0", *row], ["left:1", *row]])
    decisions.close()
    server = start_server(
        westgate.db_url,
        tmp_path,
        ports=(auth_port, acct_port),
        env={"SCHOOLGATE_STATE_DIR": str(tmp_path)},
    )
    try:
        deadline = time.monotonic() + 15
        files = list((tmp_path / "spool").glob("*.spool"))
        while time.monotonic() < deadline and any(p.stat().st_size for p in files):
            time.sleep(0.1)
    finally:
        output = server.stop()
    assert len(files) == 2
    assert [p.name for p in files if p.stat().st_size] == [], output
    assert "replaying them first" in output
    with session_factory() as session:
        keys = session.scalars(select(AccountingRecord.record_key)).all()
        assert sorted(keys) == ["left-start", "left-stop"]
        acct = session.scalars(select(AccountingSession)).one()
        assert (acct.input_octets, acct.stopped_at) == (700, T0 + timedelta(seconds=90))
        logged = session.scalars(
            select(DecisionRecord.log_key).where(DecisionRecord.reason == "left behind")
        ).all()
        assert sorted(logged) == ["left:0", "left:1"]
