"""The service functions behind the portal's journeys, against the seeded Westgate database
(SQLite and PostgreSQL): who is behind an IP, staff sign-in with its throttle, and the visitor's
and the member of staff's registration with the CoA decided at the portal's clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from service.clients import Mismatch, Unidentified, client_for_ip, list_sessions
from service.db import transaction
from service.demo import DEMO_VISITOR_CODE
from service.enums import DeviceClass, DeviceStatus, SignatureSource
from service.errors import Invalid
from service.models import AccountingSession
from service.models.coa import CoaRequest
from service.registration import register_staff_device, register_visitor
from service.signin import SignInRefused, Throttled, sign_in_with_password, staff_by_email
from service.throttle import Backoff, Throttle

# 16:00 on a Monday in November (London = UTC): after the working-day rule, before 18:00.
NOW = datetime(2026, 11, 23, 16, 0, tzinfo=UTC)
VISITOR = "3c:22:fb:00:00:01"


def seen(session_factory, mac: str, ip: str) -> None:
    """The network saw `mac` at `ip` (an open accounting session, as RADIUS stores it)."""
    with transaction(session_factory) as session:
        session.add(
            AccountingSession(
                nas_ip="127.0.0.1",
                nas_identifier="AP-HALL-1",
                site_code="westgate",
                mac=mac,
                framed_ip=ip,
                acct_session_id=f"s-{mac}",
                called_station_id="AP-HALL-1",
                started_at=NOW,
                updated_at=NOW,
            )
        )


def test_the_client_behind_an_ip_is_the_open_session(westgate, session_factory) -> None:
    seen(session_factory, VISITOR, "10.5.0.1")
    with transaction(session_factory) as session:
        client = client_for_ip(session=session, ip="10.5.0.1")
        assert (client.mac, client.site_code, client.called_station_id) == (
            VISITOR,
            "westgate",
            "AP-HALL-1",
        )
        assert client_for_ip(session=session, ip="10.5.0.1", claimed_mac=VISITOR) == client
        with pytest.raises(Mismatch):
            client_for_ip(session=session, ip="10.5.0.1", claimed_mac=westgate.school_laptop)
        with pytest.raises(Unidentified):
            client_for_ip(session=session, ip="10.5.0.2")
        [row] = list_sessions(session=session, open_only=True)
        assert (row.mac, row.framed_ip, row.stopped_at) == (VISITOR, "10.5.0.1", None)


def test_a_visitor_who_signs_gets_one_coa_decided_at_the_portals_clock(
    westgate, session_factory
) -> None:
    seen(session_factory, VISITOR, "10.5.0.3")
    with transaction(session_factory) as session:
        done = register_visitor(
            session=session,
            mac=VISITOR,
            site_code="westgate",
            name="Ada Lovelace",
            typed_name="Ada Lovelace",
            agreement_version="1",
            now=NOW,
            code=DEMO_VISITOR_CODE,  # Westgate verifies visitors with a code (issue 12)
            organisation="Engines Ltd",
            visiting="Mrs Patel",
            client_ip="10.5.0.3",
        )
        assert done.device_added
        assert done.device.device_class is DeviceClass.VISITOR_OWNED
        assert done.device.name == "Ada Lovelace (Engines Ltd)"
        assert done.signature.source is SignatureSource.PORTAL
        assert done.signature.signed_at == NOW
    with transaction(session_factory) as session:
        [request] = session.scalars(select(CoaRequest).where(CoaRequest.mac == VISITOR)).all()
        assert (request.old_access, request.new_access, request.new_vlan) == (
            "registration",
            "internet",
            30,
        )


def test_a_visitor_cannot_sign_for_a_school_device_or_an_old_agreement(
    westgate, session_factory
) -> None:
    with transaction(session_factory) as session:
        with pytest.raises(Invalid, match="agreement changed"):
            register_visitor(
                session=session,
                mac=VISITOR,
                site_code="westgate",
                name="A",
                typed_name="A",
                agreement_version="999",
                now=NOW,
                code=DEMO_VISITOR_CODE,
            )
        with pytest.raises(Invalid, match="already registered to the school"):
            register_visitor(
                session=session,
                mac=westgate.school_laptop,
                site_code="westgate",
                name="A",
                typed_name="A",
                agreement_version="1",
                now=NOW,
                code=DEMO_VISITOR_CODE,
            )


def test_staff_register_their_own_device_pending_approval(westgate, session_factory) -> None:
    # At St Andrew's (approved staff devices get the internet); Westgate refuses (issue 12).
    from pathlib import Path

    from service import registry
    from service.registration import Refused

    phone = "3c:22:fb:00:00:02"
    with transaction(session_factory) as session:
        registry.load_policy_file(
            session,
            path=Path(__file__).parents[2] / "deploy/policies/st-andrews.toml",
            actor="test",
        )
    with transaction(session_factory) as session:
        jo = sign_in_with_password(
            session=session,
            username="jsmith",
            password=westgate.staff_password,
            now=NOW,
            throttle=Throttle(),
        )
        with pytest.raises(Refused, match="do not join the school network at Westgate"):
            register_staff_device(
                session=session,
                person_id=jo.id,
                mac=phone,
                site_code="westgate",
                device_name="Jo's tablet",
                typed_name="Jo Smith",
                now=NOW,
            )
    with transaction(session_factory) as session:
        jo = sign_in_with_password(
            session=session,
            username="jsmith",
            password=westgate.staff_password,
            now=NOW,
            throttle=Throttle(),
        )
        done = register_staff_device(
            session=session,
            person_id=jo.id,
            mac=phone,
            site_code="st-andrews",
            device_name="Jo's tablet",
            typed_name="Jo Smith",
            now=NOW,
        )
        assert done.device.status is DeviceStatus.PENDING
        assert done.device.owner_id == jo.id
        assert done.signature.person_id == jo.id
        with pytest.raises(Invalid, match="someone else"):
            register_staff_device(
                session=session,
                person_id=jo.id,
                mac=westgate.visitor_phone,
                site_code="st-andrews",
                device_name="not mine",
                typed_name="Jo Smith",
                now=NOW,
            )


def test_repeated_wrong_passwords_slow_the_account_down_for_a_while(
    westgate, session_factory
) -> None:
    # Issue 11 item 7: a throttle with backoff instead of the old lock (`locked_until`).
    throttle = Throttle(account=Backoff(free=3, cap=60))
    for _ in range(3):
        with transaction(session_factory) as session, pytest.raises(Invalid, match="not right"):
            sign_in_with_password(
                session=session, username="jsmith", password="wrong", now=NOW, throttle=throttle
            )
    with transaction(session_factory) as session:
        with pytest.raises(Throttled, match="try again in 1 second"):
            sign_in_with_password(
                session=session,
                username="jsmith",
                password=westgate.staff_password,
                now=NOW,
                throttle=throttle,
            )
        jo = sign_in_with_password(
            session=session,
            username="jsmith",
            password=westgate.staff_password,
            now=NOW + timedelta(seconds=2),
            throttle=throttle,
        )
        assert jo.username == "jsmith"
        assert jo == sign_in_with_password(
            session=session,
            username="JSMITH@westgate.example",
            password=westgate.staff_password,
            now=NOW + timedelta(seconds=2),
            throttle=throttle,
        )
        assert staff_by_email(session=session, email="jsmith@westgate.example") == jo
        with pytest.raises(SignInRefused, match="no staff member"):
            staff_by_email(session=session, email="nobody@westgate.example")
