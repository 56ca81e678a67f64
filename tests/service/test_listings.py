"""The service functions the CLI lists and looks things up with, on the seeded school (SQLite
and PostgreSQL): what `site list`, `nas list`, `person list`, `agreement list` and
`device show` print comes from these."""

from __future__ import annotations

import pytest

from service import agreements, devices, people, registry, sites
from service.db import transaction
from service.enums import AgreementKind, IncidentKind, NasVendor, Role
from service.errors import NotFound
from service.sites import NasSummary, SiteSummary


def test_sites_with_their_policy_version_and_nas_clients(westgate, session_factory) -> None:
    with transaction(session_factory) as session:
        registry.add_site(session, code="eastgate", name="Eastgate", actor="test")
    with session_factory() as session:
        assert sites.list_sites(session=session) == [
            SiteSummary("eastgate", "Eastgate", "Europe/London", None),
            SiteSummary("westgate", "Westgate Primary", "Europe/London", 1),
        ]
        in_force = sites.policy_in_force(session=session, site_code="westgate")
        assert in_force is not None
        assert (in_force.version, in_force.source_name) == (1, "westgate.toml")
        assert sites.policy_in_force(session=session, site_code="eastgate") is None
        with pytest.raises(NotFound, match="unknown site 'nowhere'"):
            sites.policy_in_force(session=session, site_code="nowhere")
        assert sites.list_nas_clients(session=session) == [
            NasSummary("westgate", "demo-controller", "127.0.0.1", NasVendor.GENERIC, 3799, True)
        ]
        site = sites.find_site(session=session, code="westgate")
        assert site is not None
        assert sites.find_site(session=session, code="nowhere") is None
        assert sites.site_timezone(session=session, site_id=site.id) == "Europe/London"


def test_people_list_leaves_out_leavers_unless_asked(westgate, session_factory) -> None:
    with session_factory() as session:
        listed = people.list_people(session=session)
        assert [(p.name, p.role, p.site) for p in listed] == [
            ("Jo Smith", Role.STAFF, "westgate"),
            ("Pat Pupil", Role.LEARNER, "westgate"),
            ("Sam Visitor", Role.VISITOR, "westgate"),
        ]
        assert [p.has_password for p in listed] == [True, False, False]
        assert [p.year_group for p in listed] == [None, 6, None]
        assert [p.name for p in people.list_people(session=session, role="staff")] == ["Jo Smith"]
        assert people.list_people(session=session, role="bogus") == []
        with pytest.raises(NotFound):
            people.list_people(session=session, site="nowhere")
    with transaction(session_factory) as session:
        registry.leave_person(session, person=registry.find_person(session, "jsmith"), actor="test")
    with session_factory() as session:
        assert "Jo Smith" not in {p.name for p in people.list_people(session=session)}
        everyone = people.list_people(session=session, site="westgate", include_left=True)
        assert [(p.name, p.active) for p in everyone] == [
            ("Jo Smith", False),
            ("Pat Pupil", True),
            ("Sam Visitor", True),
        ]


def test_agreements_with_their_signature_counts(westgate, session) -> None:
    listed = agreements.list_agreements(session=session)
    assert [(a.kind, a.site, a.version, a.signatures) for a in listed] == [
        (AgreementKind.STAFF_BYOD, None, 1, 1),
        (AgreementKind.VISITOR_AUA, None, 1, 1),
    ]


def test_device_record_gathers_owner_signatures_exceptions_incidents(
    westgate, session_factory
) -> None:
    with transaction(session_factory) as session:
        registry.grant_exception(
            session,
            mac=westgate.pupil_phone,
            access="internet",
            reason="medical",
            approved_by="head",
            actor="test",
        )
        registry.report_lost(
            session,
            mac=westgate.pupil_phone,
            reported_by="jo",
            actor="test",
            kind=IncidentKind.STOLEN,
        )
    with session_factory() as session:
        staff = devices.device_record(session=session, mac=westgate.staff_phone)
        assert staff.owner is not None
        assert (staff.site, staff.owner.name) == ("westgate", "Jo Smith")
        # The owner's BYOD statement counts for the device.
        assert [s.agreement.kind for s in staff.signatures] == [AgreementKind.STAFF_BYOD]
        assert (staff.exceptions, staff.incidents) == ((), ())
        visitor = devices.device_record(session=session, mac=westgate.visitor_phone)
        assert [s.typed_name for s in visitor.signatures] == ["Sam Visitor"]
        pupil = devices.device_record(session=session, mac=westgate.pupil_phone.upper())
        assert pupil.signatures == ()
        assert [(g.access.value, g.reason) for g in pupil.exceptions] == [("internet", "medical")]
        assert [(i.kind, i.reported_by) for i in pupil.incidents] == [(IncidentKind.STOLEN, "jo")]
        ipad = devices.device_record(session=session, mac=westgate.shared_ipad)
        assert (ipad.owner, ipad.signatures) == (None, ())
        with pytest.raises(NotFound, match="no device with MAC 02:00:00:00:99:98"):
            devices.device_record(session=session, mac="02:00:00:00:99:98")
