"""The service functions against real SQLite and PostgreSQL databases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from service import audit, registry, sites
from service.db import transaction
from service.enums import Access, AgreementKind, DeviceStatus, NasVendor, SignatureSource
from service.errors import Conflict, Invalid, NotFound
from service.facts import change_version, decide_for_mac, load_snapshot
from service.models import AuditEntry, Device, Incident, Signature


def test_seeded_school_decisions(westgate, session) -> None:
    now = datetime.now(UTC)
    expected = {
        westgate.school_laptop: (Access.FULL, 10),
        westgate.shared_ipad: (Access.FULL, 10),
        westgate.staff_phone: (Access.NONE, None),
        westgate.visitor_phone: (Access.INTERNET, 30),
        westgate.pupil_phone: (Access.NONE, None),
    }
    for mac, (access, vlan) in expected.items():
        decision = decide_for_mac(session, mac, now=now)
        assert (decision.access, decision.vlan) == (access, vlan), (mac, decision.reason)
    unknown = decide_for_mac(session, westgate.unknown, site_code="westgate", now=now)
    assert (unknown.access, unknown.vlan) == (Access.REGISTRATION, 99)


def test_snapshot_holds_everything_the_radius_server_needs(westgate, session) -> None:
    snapshot = load_snapshot(session)
    assert set(snapshot.devices) >= {westgate.school_laptop, westgate.visitor_phone}
    assert snapshot.policies["westgate"].school_name == "Westgate Primary"
    assert [n.name for n in snapshot.nas_clients] == ["demo-controller"]
    assert snapshot.nas_clients[0].secret == "testing123"
    assert snapshot.credentials["jsmith"].password_hash.startswith("$argon2")
    assert snapshot.device_owner[westgate.staff_phone].name == "Jo Smith"
    assert snapshot.devices[westgate.visitor_phone].aua_valid_until is not None


def test_every_change_bumps_the_counter_and_is_audited(westgate, session_factory) -> None:
    with session_factory() as session:
        before = change_version(session)
        entries = session.scalar(select(func.count(AuditEntry.id)))
    with transaction(session_factory) as session:
        registry.revoke_device(session, mac=westgate.school_laptop, reason="broken", actor="it")
    with session_factory() as session:
        assert change_version(session) == before + 1
        assert session.scalar(select(func.count(AuditEntry.id))) == entries + 1
        assert audit.verify(session).ok


def test_audit_verify_detects_tampering(westgate, session_factory) -> None:
    with transaction(session_factory) as session:
        entry = session.scalars(select(AuditEntry).order_by(AuditEntry.id).offset(3)).first()
        entry.detail = {**entry.detail, "name": "someone else"}
    with session_factory() as session:
        result = audit.verify(session)
        assert not result.ok
        assert result.first_bad_id == entry.id


def test_staff_device_pending_then_approved_and_signed(westgate, session_factory) -> None:
    now = datetime.now(UTC)
    with transaction(session_factory) as session:
        registry.load_policy_file(
            session,
            path=__import__("pathlib").Path("deploy/policies/guest-network.toml"),
            actor="it",
        )
        teacher = registry.add_person(
            session,
            site_code="guest-network",
            role="staff",
            name="Ali Khan",
            email="ali@school.example",
            actor="it",
        )
        registry.add_device(
            session,
            mac="AA-BB-CC-00-00-07",
            site_code="guest-network",
            device_class="staff_owned",
            owner="ali@school.example",
            actor="it",
        )
        assert registry.get_device(session, "aabb.cc00.0007").status is DeviceStatus.PENDING
        decision = decide_for_mac(session, "aa:bb:cc:00:00:07", now=now)
        assert decision.rule == "gate.staff-approval"
        registry.approve_device(session, mac="aa:bb:cc:00:00:07", actor="it")
        assert decide_for_mac(session, "aa:bb:cc:00:00:07", now=now).rule == "gate.staff-byod"
        registry.sign_agreement(
            session,
            kind=AgreementKind.STAFF_BYOD,
            person=teacher,
            typed_name="Ali Khan",
            signed_at=now,
            source=SignatureSource.PAPER,
            actor="it",
        )
        decision = decide_for_mac(session, "aa:bb:cc:00:00:07", now=now)
        assert (decision.access, decision.vlan) == (Access.SEGREGATED, 220)


def test_lost_device_is_revoked_and_logged_for_the_dpo(westgate, session_factory) -> None:
    with transaction(session_factory) as session:
        device, incident = registry.report_lost(
            session,
            mac=westgate.school_laptop,
            reported_by="Jo Smith",
            actor="it",
        )
    with session_factory() as session:
        assert (
            session.scalar(select(Device.status).where(Device.mac == westgate.school_laptop))
            is DeviceStatus.LOST
        )
        assert session.scalar(select(func.count(Incident.id))) == 1
        decision = decide_for_mac(session, westgate.school_laptop, now=datetime.now(UTC))
        assert decision.access is Access.NONE
        assert "lost or stolen" in decision.reason


def test_leaver_exit_process(westgate, session_factory) -> None:
    with transaction(session_factory) as session:
        person = registry.find_person(session, "jsmith")
        result = registry.leave_person(session, person=person, actor="it")
    assert result == {
        "revoked": [westgate.staff_phone],
        "flagged_for_reassignment": [westgate.school_laptop],
    }
    with session_factory() as session:
        laptop = registry.get_device(session, westgate.school_laptop)
        assert laptop.needs_reassignment
        assert registry.get_device(session, westgate.staff_phone).status is DeviceStatus.EXITED
        with pytest.raises(Conflict, match="already left"):
            registry.leave_person(
                session, person=registry.find_person(session, "jsmith"), actor="it"
            )


def test_visitor_aua_valid_until_end_of_school_day(westgate, session) -> None:
    policy = load_snapshot(session).policies["westgate"]
    signed = datetime(2026, 11, 23, 9, 15, tzinfo=UTC)
    assert registry.aua_expiry(policy, signed) == datetime(2026, 11, 23, 18, 0, tzinfo=UTC)
    evening = datetime(2026, 11, 23, 19, 30, tzinfo=UTC)
    assert registry.aua_expiry(policy, evening) == datetime(2026, 11, 24, 0, 0, tzinfo=UTC)
    summer = datetime(2027, 6, 1, 9, 0, tzinfo=UTC)  # BST: 18:00 local is 17:00 UTC
    assert registry.aua_expiry(policy, summer) == datetime(2027, 6, 1, 17, 0, tzinfo=UTC)


def test_duplicate_device_is_refused_and_nothing_written(westgate, session_factory) -> None:
    with session_factory() as session:
        count = session.scalar(select(func.count(Device.id)))
    with pytest.raises(Conflict, match="already registered"), transaction(session_factory) as s:
        registry.add_device(
            s,
            mac="02:00:00:00:77:77",
            site_code="westgate",
            device_class="school_shared",
            actor="it",
        )
        registry.add_device(
            s, mac="020000007777", site_code="westgate", device_class="school_shared", actor="it"
        )
    with session_factory() as session:
        assert session.scalar(select(func.count(Device.id))) == count


def test_import_is_all_or_nothing_and_reports_line_numbers(westgate, session_factory) -> None:
    csv_text = (
        "MAC Address,Device Class,Asset Tag,Owner Email\n"
        "02:00:00:00:50:01,school_shared,WG-001,\n"
        "02:00:00:00:50:02,school_single,WG-002,jsmith@westgate.example\n"
        "not-a-mac,school_shared,WG-003,\n"
        "02:00:00:00:50:04,spaceship,WG-004,\n"
    )
    with (
        pytest.raises(Invalid, match="CSV line 4: not a MAC address"),
        transaction(session_factory) as session,
    ):
        registry.import_devices(session, text=csv_text, site_code="westgate", actor="it")
    with session_factory() as session:
        assert session.scalar(select(Device).where(Device.mac == "02:00:00:00:50:01")) is None
    with transaction(session_factory) as session:
        result = registry.import_devices(
            session, text=csv_text, site_code="westgate", actor="it", skip_bad_rows=True
        )
    assert result.added == ["02:00:00:00:50:01", "02:00:00:00:50:02"]
    assert [line for line, _ in result.skipped] == [4, 5]
    assert "unknown device class 'spaceship'" in result.skipped[1][1]


def test_exception_grant_and_expiry(westgate, session_factory) -> None:
    now = datetime.now(UTC)
    with transaction(session_factory) as session:
        registry.grant_exception(
            session,
            mac=westgate.pupil_phone,
            access="internet",
            reason="medical: glucose monitor",
            approved_by="Headteacher",
            actor="it",
            valid_until=now + timedelta(days=30),
        )
        decision = decide_for_mac(session, westgate.pupil_phone, now=datetime.now(UTC))
        assert (decision.access, decision.rule) == (Access.INTERNET, "exception")
        later = decide_for_mac(session, westgate.pupil_phone, now=now + timedelta(days=31))
        assert later.access is Access.NONE
    with (
        pytest.raises(Invalid, match="grants full, segregated or internet"),
        transaction(session_factory) as session,
    ):
        registry.grant_exception(
            session,
            mac=westgate.pupil_phone,
            access="none",
            reason="x",
            approved_by="h",
            actor="it",
        )


def test_signature_records_version_and_hash(westgate, session) -> None:
    sig = session.scalars(select(Signature).where(Signature.device_id.is_not(None))).one()
    assert sig.agreement.kind is AgreementKind.VISITOR_AUA
    assert sig.agreement_sha256 == sig.agreement.sha256
    assert sig.valid_until is not None


def test_unknown_things_are_named(westgate, session) -> None:
    with pytest.raises(NotFound, match="unknown site 'narnia'"):
        registry.get_site(session, "narnia")
    with pytest.raises(NotFound, match="no person"):
        registry.find_person(session, "nobody@example.com")
    with pytest.raises(Invalid, match="not a MAC"):
        registry.get_device(session, "zz:zz")


def test_retention_purge_removes_only_what_is_past_its_period(westgate, session_factory) -> None:
    from service import retention
    from service.config import load_settings
    from service.models import AccountingSession, DecisionRecord

    now = datetime.now(UTC)
    old, recent = now - timedelta(days=400), now - timedelta(days=1)
    with transaction(session_factory) as session:
        for when in (old, recent):
            session.add(DecisionRecord(decided_at=when, access="full", reason="r", rule="x"))
            session.add(
                AccountingSession(
                    acct_session_id=f"s{when.timestamp()}",
                    started_at=when,
                    updated_at=when,
                    stopped_at=when,
                )
            )
        session.add(AccountingSession(acct_session_id="open", started_at=old, updated_at=old))
    with transaction(session_factory) as session:
        removed = retention.purge(session, settings=load_settings(), now=now, actor="cron")
    assert removed["decisions"] == 1
    assert removed["accounting_sessions"] == 1
    with session_factory() as session:
        assert session.scalar(select(func.count(DecisionRecord.id))) == 1
        # The open session is kept however old: it still maps an IP to a device.
        assert session.scalar(select(func.count(AccountingSession.id))) == 2


def test_nas_gets_its_vendors_coa_port_unless_one_is_given(westgate, session_factory) -> None:
    """Cisco and Meraki MR listen for Disconnect/CoA on udp 1700, the others on RFC 5176's 3799
    (deploy/README.md, section 5, lists the sources); an explicit port wins and is audited."""
    expected = {
        NasVendor.GENERIC: 3799,
        NasVendor.CISCO: 1700,
        NasVendor.ARUBA: 3799,
        NasVendor.UNIFI: 3799,
        NasVendor.MERAKI: 1700,
        NasVendor.RUCKUS: 3799,
    }
    assert set(expected) == set(NasVendor)
    with transaction(session_factory) as session:
        for i, vendor in enumerate(NasVendor):
            registry.add_nas(
                session,
                site_code="westgate",
                name=f"nas-{vendor.value}",
                address=f"10.9.{i}.0/24",
                secret="s3cret-value",
                vendor=vendor.value,
                actor="it",
            )
        registry.add_nas(
            session,
            site_code="westgate",
            name="wlc-rfc",
            address="10.9.99.1",
            secret="s3cret-value",
            vendor="cisco",
            coa_port=3799,
            actor="it",
        )
    with session_factory() as session:
        ports = {nas.name: nas.coa_port for nas in sites.list_nas_clients(session=session)}
        audited = session.scalars(select(AuditEntry).where(AuditEntry.subject == "wlc-rfc")).one()
    assert {f"nas-{vendor.value}": port for vendor, port in expected.items()}.items() <= (
        ports.items()
    )
    assert ports["wlc-rfc"] == 3799
    assert audited.detail["coa_port"] == 3799
