"""The trigger table: each administrative change queues CoA / Disconnect for exactly the open
sessions whose decision (access, VLAN) it changed, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from service import enforcement
from service.db import transaction
from service.devices import add_device, approve_device, exit_device, report_lost, revoke_device
from service.grants import grant_exception
from service.models import Device, NasClient
from service.models.coa import CoaRequest
from service.people import find_person, leave_person
from service.sites import store_policy
from tests.enforcement.sessions import open_session

Change = Callable[[Session, SimpleNamespace], None]


@pytest.fixture
def live(westgate: SimpleNamespace, session_factory: sessionmaker[Session]) -> SimpleNamespace:
    """Every demo device (and the unregistered one) has an open session on the demo NAS."""
    with session_factory() as session:
        nas_id = session.scalar(select(NasClient.id))
    for mac in (
        westgate.school_laptop,
        westgate.shared_ipad,
        westgate.staff_phone,
        westgate.visitor_phone,
        westgate.pupil_phone,
        westgate.unknown,
    ):
        open_session(session_factory, mac, nas_id=nas_id, called_station_id="AP-HALL-1:Westgate")
    return westgate


def _queued(factory: sessionmaker[Session]) -> list[tuple[str | None, str, str | None, str | None]]:
    with factory() as session:
        rows = session.scalars(select(CoaRequest).order_by(CoaRequest.mac))
        return [(r.mac, r.kind, r.old_access, r.new_access) for r in rows]


def _apply(factory: sessionmaker[Session], w: SimpleNamespace, change: Change) -> None:
    with transaction(factory) as session:
        change(session, w)


def _revoke(s: Session, w: SimpleNamespace) -> None:
    revoke_device(s, mac=w.school_laptop, reason="stolen charger", actor="t")


def _lost(s: Session, w: SimpleNamespace) -> None:
    report_lost(s, mac=w.shared_ipad, reported_by="Ms Head", actor="t")


def _exit(s: Session, w: SimpleNamespace) -> None:
    exit_device(s, mac=w.visitor_phone, actor="t")


def _leave_visitor(s: Session, w: SimpleNamespace) -> None:
    leave_person(s, person=find_person(s, "visitor1"), actor="t")


def _approve_staff(s: Session, w: SimpleNamespace) -> None:
    add_device(
        s,
        mac="02:00:00:00:20:02",
        site_code="westgate",
        device_class="staff_owned",
        owner="jsmith",
        actor="t",
    )
    approve_device(s, mac="02:00:00:00:20:02", actor="t", anyway=True)  # none at Westgate


def _grant(s: Session, w: SimpleNamespace) -> None:
    grant_exception(
        s,
        mac=w.pupil_phone,
        access="internet",
        reason="medical app",
        approved_by="Head",
        actor="t",
    )


def _register_unknown(s: Session, w: SimpleNamespace) -> None:
    add_device(s, mac=w.unknown, site_code="westgate", device_class="school_single", actor="t")


def _reload_policy(s: Session, w: SimpleNamespace) -> None:
    text = Path("deploy/policies/westgate.toml").read_text(encoding="utf-8")
    store_policy(s, text=text.replace("full = 10", "full = 11"), source="edit", actor="t")


def _reload_same_policy(s: Session, w: SimpleNamespace) -> None:
    text = Path("deploy/policies/westgate.toml").read_text(encoding="utf-8")
    store_policy(s, text=text, source="same", actor="t")


TABLE: list[tuple[str, Change, list[tuple[str, str, str, str]]]] = [
    ("revoke", _revoke, [("02:00:00:00:10:01", "disconnect", "full", "none")]),
    ("lost", _lost, [("02:00:00:00:10:02", "disconnect", "full", "none")]),
    ("exit", _exit, [("02:00:00:00:30:01", "disconnect", "internet", "none")]),
    ("person leave", _leave_visitor, [("02:00:00:00:30:01", "disconnect", "internet", "none")]),
    # Westgate gives staff-owned devices no access even when approved: nothing moves.
    ("approve staff device", _approve_staff, []),
    ("exception granted", _grant, [("02:00:00:00:40:01", "coa", "none", "internet")]),
    (
        "device registered",
        _register_unknown,
        [("02:00:00:00:99:99", "coa", "registration", "full")],
    ),
    (
        "policy reload",
        _reload_policy,
        [
            ("02:00:00:00:10:01", "coa", "full", "full"),
            ("02:00:00:00:10:02", "coa", "full", "full"),
        ],
    ),
    ("policy reload, no change", _reload_same_policy, []),
]


@pytest.mark.parametrize(("name", "change", "expected"), TABLE, ids=[t[0] for t in TABLE])
def test_change_queues_exactly_the_changed_sessions(
    live: SimpleNamespace,
    session_factory: sessionmaker[Session],
    name: str,
    change: Change,
    expected: list[tuple[str, str, str, str]],
) -> None:
    _apply(session_factory, live, change)
    assert _queued(session_factory) == expected


def test_policy_reload_records_the_vlan_move(
    live: SimpleNamespace, session_factory: sessionmaker[Session]
) -> None:
    _apply(session_factory, live, _reload_policy)
    with session_factory() as session:
        vlans = {(r.old_vlan, r.new_vlan) for r in session.scalars(select(CoaRequest))}
    assert vlans == {(10, 11)}


def test_new_signature_moves_visitor_out_of_the_walled_garden(
    live: SimpleNamespace, session_factory: sessionmaker[Session]
) -> None:
    from service.agreements import sign_agreement
    from service.enums import AgreementKind, SignatureSource

    mac = "02:00:00:00:30:02"
    with transaction(session_factory) as session:
        add_device(session, mac=mac, site_code="westgate", device_class="visitor_owned", actor="t")
    with session_factory() as session:
        nas_id = session.scalar(select(NasClient.id))
    open_session(session_factory, mac, nas_id=nas_id)
    with transaction(session_factory) as session:
        sign_agreement(
            session,
            kind=AgreementKind.VISITOR_AUA,
            typed_name="Guest Two",
            signed_at=datetime.now(UTC),
            source=SignatureSource.PORTAL,
            actor="portal",
            device_mac=mac,
            site_code="westgate",
        )
    (row,) = _queued(session_factory)
    assert row[0] == mac
    assert row[3] == "internet"
    assert row[2] != "internet"


def test_expiring_exception_is_queued_by_the_time_check(
    live: SimpleNamespace, session_factory: sessionmaker[Session]
) -> None:
    now = datetime.now(UTC)
    with transaction(session_factory) as session:
        grant_exception(
            session,
            mac=live.pupil_phone,
            access="internet",
            reason="trip",
            approved_by="Head",
            actor="t",
            valid_until=now + timedelta(minutes=10),
        )
        session.execute(delete(CoaRequest))
    with transaction(session_factory) as session:
        assert (
            enforcement.queue_expired_grants(
                session=session, since=now, until=now + timedelta(minutes=5)
            )
            == []
        )
        queued = enforcement.queue_expired_grants(
            session=session, since=now + timedelta(minutes=5), until=now + timedelta(minutes=15)
        )
        assert [(r.mac, r.kind, r.new_access) for r in queued] == [
            (live.pupil_phone, "disconnect", "none")
        ]


def test_stopped_sessions_are_left_alone(
    westgate: SimpleNamespace, session_factory: sessionmaker[Session]
) -> None:
    with session_factory() as session:
        nas_id = session.scalar(select(NasClient.id))
    row_id = open_session(session_factory, westgate.school_laptop, nas_id=nas_id)
    from service.models import AccountingSession

    with transaction(session_factory) as session:
        s = session.get(AccountingSession, row_id)
        assert s is not None
        s.stopped_at = datetime.now(UTC)
    _apply(session_factory, westgate, _revoke)
    assert _queued(session_factory) == []


def test_retention_purges_only_old_finished_requests(
    live: SimpleNamespace, session_factory: sessionmaker[Session]
) -> None:
    from service.config import load_settings
    from service.retention import purge

    _apply(session_factory, live, _reload_policy)  # two rows, both queued
    with transaction(session_factory) as session:
        first, second = session.scalars(select(CoaRequest).order_by(CoaRequest.id))
        old = datetime.now(UTC) - timedelta(days=200)
        first.state, first.created_at = "ack", old
        second.created_at = old  # still pending: kept
    with transaction(session_factory) as session:
        removed = purge(session, settings=load_settings(None), now=datetime.now(UTC), actor="t")
    assert removed["coa_requests"] == 1
    assert [s for (_m, s, _o, _n) in _queued(session_factory)] == ["coa"]


def test_nested_watches_queue_one_request_with_the_final_outcome(
    live: SimpleNamespace, session_factory: sessionmaker[Session]
) -> None:
    """A change made of changes (revoke inside a wider watch) sends one request, not two."""
    with transaction(session_factory) as session:
        device_id = session.scalar(select(Device.id).where(Device.mac == live.school_laptop))
        with enforcement.watch(session, device_ids=[device_id], reason="outer"):
            revoke_device(session, mac=live.school_laptop, reason="inner", actor="t")
    assert _queued(session_factory) == [(live.school_laptop, "disconnect", "full", "none")]
