"""Accounting records to session rows, on SQLite and PostgreSQL (no server: the service function
the batch writer calls, with the records a NAS would send)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from radius import codec
from radius.accounting import parse_accounting
from service.accounting import AcctRecord, AcctStatus, apply_accounting
from service.db import transaction
from service.models import AccountingSession, NasClient

T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)


def record(status: int, nas_id: int, session_id: str | None = "s-1", **fields) -> AcctRecord:
    return AcctRecord(
        status=status,
        nas_id=nas_id,
        nas_ip="127.0.0.1",
        site_code="westgate",
        at=fields.pop("at", T0),
        acct_session_id=session_id,
        mac=fields.pop("mac", "02:00:00:00:10:01"),
        **fields,
    )


def test_interim_without_start_and_nas_reboot(westgate, session_factory):
    with session_factory() as session:
        nas_id = session.scalar(select(NasClient.id))
    later = T0 + timedelta(minutes=10)
    with transaction(session_factory) as session:
        # The Start was lost: the interim creates the row, started session_time earlier.
        apply_accounting(
            session=session,
            records=[
                record(
                    codec.ACCT_INTERIM, nas_id, at=later, session_time=600, framed_ip="10.0.0.9"
                ),
                record(codec.ACCT_START, nas_id, "s-2", mac="02:00:00:00:30:01", at=later),
            ],
        )
    with transaction(session_factory) as session:
        # The NAS rebooted: every open session of it ends.
        apply_accounting(
            session=session,
            records=[record(codec.ACCT_ON, nas_id, None, at=later + timedelta(minutes=1))],
        )
    with session_factory() as session:
        rows = {r.acct_session_id: r for r in session.scalars(select(AccountingSession))}
    assert set(rows) == {"s-1", "s-2"}
    assert rows["s-1"].started_at == T0
    assert rows["s-1"].framed_ip == "10.0.0.9"
    assert all(r.terminate_cause == "NAS-Reboot" for r in rows.values())
    assert all(r.stopped_at == later + timedelta(minutes=1) for r in rows.values())


def test_parse_accounting_reads_delay_gigawords_and_cause():
    raw = codec.encode_request(
        codec.ACCOUNTING_REQUEST,
        1,
        b"".join(
            (
                codec.attr_int(codec.ACCT_STATUS_TYPE, codec.ACCT_STOP),
                codec.attr_text(codec.ACCT_SESSION_ID, "abc"),
                codec.attr_text(codec.CALLING_STATION_ID, "0200.0000.1001"),
                codec.attr_int(codec.ACCT_DELAY_TIME, 30),
                codec.attr_int(codec.ACCT_OUTPUT_OCTETS, 5),
                codec.attr_int(codec.ACCT_OUTPUT_GIGAWORDS, 2),
                codec.attr_int(codec.ACCT_TERMINATE_CAUSE, 4),
                codec.attr_ipv4(codec.FRAMED_IP_ADDRESS, "192.0.2.7"),
            )
        ),
        b"s",
    )
    parsed = parse_accounting(
        codec.decode(raw), nas_id=1, nas_ip="127.0.0.1", site_code="westgate", policy=None, now=T0
    )
    assert parsed.at == T0 - timedelta(seconds=30)
    assert parsed.mac == "02:00:00:00:10:01"
    assert parsed.output_octets == (2 << 32) + 5
    assert parsed.terminate_cause == "Idle-Timeout"
    assert parsed.framed_ip == "192.0.2.7"


def test_start_interim_stop_in_one_batch(westgate, session_factory):
    with session_factory() as session:
        nas_id = session.scalar(select(NasClient.id))
    with transaction(session_factory) as session:
        apply_accounting(
            session=session,
            records=[
                record(codec.ACCT_START, nas_id, username="jsmith"),
                record(
                    codec.ACCT_INTERIM,
                    nas_id,
                    at=T0 + timedelta(minutes=5),
                    session_time=300,
                    input_octets=100,
                ),
                record(
                    codec.ACCT_STOP,
                    nas_id,
                    at=T0 + timedelta(minutes=10),
                    session_time=600,
                    input_octets=150,
                    output_octets=7,
                    terminate_cause="User-Request",
                ),
            ],
        )
    with session_factory() as session:
        (row,) = session.scalars(select(AccountingSession))
    assert (row.started_at, row.updated_at, row.stopped_at) == (
        T0,
        T0 + timedelta(minutes=10),
        T0 + timedelta(minutes=10),
    )
    assert (row.username, row.session_time, row.input_octets, row.output_octets) == (
        "jsmith",
        600,
        150,
        7,
    )
    assert row.terminate_cause == "User-Request"


def test_acct_status_is_the_codecs_acct_status_type():
    assert (
        AcctStatus.START,
        AcctStatus.STOP,
        AcctStatus.INTERIM,
        AcctStatus.ACCOUNTING_ON,
        AcctStatus.ACCOUNTING_OFF,
    ) == (codec.ACCT_START, codec.ACCT_STOP, codec.ACCT_INTERIM, codec.ACCT_ON, codec.ACCT_OFF)
