"""A running snapshot patched with what each change changed (issue 13): a change is answered
right after it without a rebuild, and a snapshot patched through a random sequence of changes
equals one built from scratch."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pyrad.packet import AccessAccept, AccessReject
from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from radius.snapshot import UNCACHED, HotState, build_state, patch_state
from service import registry
from service.change_log import prune
from service.db import transaction
from service.enums import AgreementKind, DeviceStatus, SignatureSource
from service.errors import SchoolgateError
from service.facts import Snapshot, change_version, load_delta, load_snapshot
from service.models import AccessException, ChangeKind, ChangeLogEntry, Device, Person
from service.policy import device_key
from tests.radius.conftest import mab_request, start_server, vlan_of

ACTOR = "test"


def _full(factory: sessionmaker[Session]) -> Snapshot:
    with factory() as session:
        return load_snapshot(session)


def _patch(factory: sessionmaker[Session], state: HotState) -> bool:
    """Patch `state` with what changed; False when the change log says to rebuild."""
    with factory() as session:
        delta = load_delta(session=session, snapshot=state.snapshot)
    if delta is None:
        return False
    patch_state(state, delta)
    return True


def _facts_keys(state: HotState) -> dict[str, Any]:
    """Each MAC's facts key as the state numbers it (numbers differ between builds)."""
    keys = {number: key for key, number in state.numbers.items()}
    return {
        mac: None if number == UNCACHED else keys[number] for mac, number in state.profiles.items()
    }


def assert_same(patched: HotState, fresh: Snapshot) -> None:
    snapshot = patched.snapshot
    assert snapshot.version == fresh.version
    assert snapshot.devices == fresh.devices
    assert snapshot.device_owner == fresh.device_owner
    assert snapshot.credentials == fresh.credentials
    assert _facts_keys(patched) == {mac: device_key(f) for mac, f in fresh.devices.items()}


# ------------------------------------------------------------ the random changes
class School:
    """The changes an admin, the portal and the exit process make, each through the service
    function that makes it, on random devices and people of the seeded school."""

    def __init__(self, session: Session, rng: random.Random, now: datetime) -> None:
        self.session = session
        self.rng = rng
        self.now = now

    def _mac(self, *statuses: DeviceStatus) -> str | None:
        query = select(Device.mac).order_by(Device.mac)
        if statuses:
            query = query.where(Device.status.in_(statuses))
        macs = list(self.session.scalars(query))
        return self.rng.choice(macs) if macs else None

    def _person(self, *, active: bool | None = None) -> Person | None:
        query = select(Person).order_by(Person.id)
        if active is not None:
            query = query.where(Person.active.is_(active))
        people = list(self.session.scalars(query))
        return self.rng.choice(people) if people else None

    def add_device(self) -> None:
        owner = self._person(active=True)
        device_class = self.rng.choice(
            ["school_single", "school_shared", "staff_owned", "visitor_owned", "learner_owned"]
        )
        registry.add_device(
            self.session,
            mac="02:5a:" + ":".join(f"{self.rng.randrange(256):02x}" for _ in range(4)),
            site_code="westgate",
            device_class=device_class,
            owner=owner if device_class not in {"school_single", "school_shared"} else None,
            actor=ACTOR,
        )

    def approve(self) -> None:
        mac = self._mac(DeviceStatus.PENDING, DeviceStatus.REVOKED, DeviceStatus.LOST)
        if mac:
            registry.approve_device(self.session, mac=mac, actor=ACTOR, anyway=True)

    def revoke(self) -> None:
        mac = self._mac(DeviceStatus.ACTIVE, DeviceStatus.PENDING)
        if mac:
            registry.revoke_device(self.session, mac=mac, reason="random revoke", actor=ACTOR)

    def lose(self) -> None:
        mac = self._mac(DeviceStatus.ACTIVE)
        if mac:
            registry.report_lost(self.session, mac=mac, reported_by="office", actor=ACTOR)

    def exit(self) -> None:
        mac = self._mac()
        if mac:
            registry.exit_device(self.session, mac=mac, actor=ACTOR)

    def add_person(self) -> None:
        number = self.rng.randrange(10**6)
        registry.add_person(
            self.session,
            site_code="westgate",
            role=self.rng.choice(["staff", "visitor"]),
            name=f"Person {number}",
            username=f"user{number}",
            actor=ACTOR,
        )

    def set_password(self) -> None:
        person = self._person(active=True)
        if person is not None and person.username:
            registry.set_password(
                self.session, person=person, password=f"pw-{self.rng.random()}", actor=ACTOR
            )

    def leave(self) -> None:
        person = self._person(active=True)
        if person is not None:
            registry.leave_person(self.session, person=person, actor=ACTOR)

    def grant(self) -> None:
        mac = self._mac()
        if mac:
            registry.grant_exception(
                self.session,
                mac=mac,
                access=self.rng.choice(["full", "segregated", "internet"]),
                reason="random exception",
                approved_by="head",
                actor=ACTOR,
                valid_until=self.now + timedelta(days=self.rng.randrange(1, 30)),
            )

    def revoke_grant(self) -> None:
        ids = list(
            self.session.scalars(
                select(AccessException.id).where(AccessException.revoked_at.is_(None))
            )
        )
        if ids:
            registry.revoke_exception(self.session, exception_id=self.rng.choice(ids), actor=ACTOR)

    def sign_byod(self) -> None:
        person = self._person(active=True)
        if person is not None:
            registry.sign_agreement(
                self.session,
                kind=AgreementKind.STAFF_BYOD,
                typed_name=person.name,
                signed_at=self.now,
                source=SignatureSource.PORTAL,
                actor=ACTOR,
                person=person,
            )

    def sign_aua(self) -> None:
        mac = self._mac()
        if mac:
            registry.sign_agreement(
                self.session,
                kind=AgreementKind.VISITOR_AUA,
                typed_name="A Visitor",
                signed_at=self.now,
                source=SignatureSource.PORTAL,
                actor=ACTOR,
                device_mac=mac,
                site_code="westgate",
            )

    def delete_device(self) -> None:
        """An ORM delete (no service function deletes devices yet): the log sees it too."""
        mac = self._mac()
        if mac:
            self.session.delete(registry.get_device(self.session, mac))
            self.session.flush()

    def rename_person(self) -> None:
        """A plain ORM edit of a person's name and login, as an admin screen would make."""
        person = self._person()
        if person is not None:
            person.name = f"{person.name} Jr"
            person.username = f"renamed{self.rng.randrange(10**6)}"
            self.session.flush()


CHANGES: list[Callable[[School], None]] = [
    School.add_device,
    School.approve,
    School.revoke,
    School.lose,
    School.exit,
    School.add_person,
    School.set_password,
    School.leave,
    School.grant,
    School.revoke_grant,
    School.sign_byod,
    School.sign_aua,
    School.delete_device,
    School.rename_person,
]


@pytest.mark.parametrize("seed", [1])
def test_a_snapshot_patched_through_random_changes_equals_a_fresh_build(
    westgate: SimpleNamespace, session_factory: sessionmaker[Session], seed: int
) -> None:
    rng = random.Random(seed)
    state = build_state(_full(session_factory))
    made: set[str] = set()
    now = datetime.now(UTC)
    for step in range(45):
        change = CHANGES[step % len(CHANGES)] if step < len(CHANGES) else rng.choice(CHANGES)
        try:
            with transaction(session_factory) as session:
                change(School(session, rng, now))
        except SchoolgateError:
            continue  # refused (already left, nothing to approve): nothing written
        made.add(change.__name__)
        if rng.random() < 0.5:  # sometimes several changes in one patch
            assert _patch(session_factory, state), f"{change.__name__} asked for a rebuild"
            assert_same(state, _full(session_factory))
    assert _patch(session_factory, state)
    assert_same(state, _full(session_factory))
    assert made == {c.__name__ for c in CHANGES}  # every path was taken at least once


def test_every_change_is_logged_with_the_counter_it_committed(
    westgate: SimpleNamespace, session_factory: sessionmaker[Session]
) -> None:
    with transaction(session_factory) as session:
        before = change_version(session)
        registry.revoke_device(session, mac=westgate.school_laptop, reason="lost", actor=ACTOR)
    with session_factory() as session:
        after = change_version(session)
        rows = session.execute(
            select(ChangeLogEntry.version, ChangeLogEntry.kind, ChangeLogEntry.key).where(
                ChangeLogEntry.version > before
            )
        ).all()
    assert after > before
    assert rows == [(after, ChangeKind.MAC.value, westgate.school_laptop)]


def test_a_failed_login_is_no_change_and_an_unaudited_change_still_moves_the_counter(
    westgate: SimpleNamespace, session_factory: sessionmaker[Session]
) -> None:
    with transaction(session_factory) as session:
        before = change_version(session)
        person = registry.find_person(session, "jsmith")
        person.failed_logins += 1  # the PAP throttle's bookkeeping: not a fact of the snapshot
    with transaction(session_factory) as session:
        assert change_version(session) == before
        person = registry.find_person(session, "jsmith")
        person.active = False  # no audit entry, no bump: the log moves the counter itself
    with session_factory() as session:
        assert change_version(session) == before + 1
        kinds = set(
            session.execute(
                select(ChangeLogEntry.kind, ChangeLogEntry.key).where(
                    ChangeLogEntry.version == before + 1
                )
            ).all()
        )
    assert kinds == {(ChangeKind.PERSON.value, str(person.id))}


def test_a_policy_a_nas_a_bulk_update_or_a_pruned_log_rebuild_in_full(
    westgate: SimpleNamespace, session_factory: sessionmaker[Session]
) -> None:
    state = build_state(_full(session_factory))
    with transaction(session_factory) as session:
        registry.add_nas(
            session,
            site_code="westgate",
            name="second-controller",
            address="127.0.0.2",
            secret="another-secret",
            vendor="generic",
            actor=ACTOR,
        )
    assert not _patch(session_factory, state)

    state = build_state(_full(session_factory))
    with transaction(session_factory) as session:
        session.execute(delete(AccessException))  # a bulk statement: rows unknown
    assert not _patch(session_factory, state)

    state = build_state(_full(session_factory))
    with transaction(session_factory) as session:
        registry.revoke_device(session, mac=westgate.shared_ipad, reason="r", actor=ACTOR)
    with transaction(session_factory) as session:
        assert prune(session=session, keep_seconds=-1) >= 1  # everything is older than that
    assert not _patch(session_factory, state)  # the change it held is gone: rebuild
    fresh = build_state(_full(session_factory))
    assert _patch(session_factory, fresh)  # a snapshot newer than the pruning patches
    assert_same(fresh, _full(session_factory))


# ------------------------------------------------------------ a real server over UDP
def _wait_for(predicate: Callable[[], bool], seconds: float = 5.0) -> float:
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < seconds, "the server never answered the change"
        time.sleep(0.02)
    return time.monotonic() - started


def test_the_server_answers_each_change_right_after_it_without_a_rebuild(
    westgate: SimpleNamespace, session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    server = start_server(westgate.db_url, tmp_path, "--log-level", "info")
    try:
        client = server.client()

        def answer(mac: str) -> tuple[int, str | None]:
            reply = client.SendPacket(mab_request(client, mac))
            return reply.code, vlan_of(reply) if reply.code == AccessAccept else None

        laptop = westgate.school_laptop
        assert answer(laptop) == (AccessAccept, str(westgate.vlans["full"]))
        assert answer(laptop) == (AccessAccept, str(westgate.vlans["full"]))  # now cached

        # A revoke: the cached answer of the laptop's old facts is not served.
        with transaction(session_factory) as session:
            registry.revoke_device(session, mac=laptop, reason="stolen", actor=ACTOR)
        _wait_for(lambda: answer(laptop)[0] == AccessReject)

        # An exception granted to the pupil's phone (no access at Westgate).
        pupil = westgate.pupil_phone
        assert answer(pupil)[0] == AccessReject
        with transaction(session_factory) as session:
            registry.grant_exception(
                session,
                mac=pupil,
                access="internet",
                reason="medical app",
                approved_by="head",
                actor=ACTOR,
            )
        _wait_for(lambda: answer(pupil) == (AccessAccept, str(westgate.vlans["internet"])))

        # A new device, then the unknown MAC registered as a school device.
        new_mac = "02:5a:00:00:00:01"
        assert answer(new_mac) == (AccessAccept, str(westgate.vlans["registration"]))
        with transaction(session_factory) as session:
            registry.add_device(
                session,
                mac=new_mac,
                site_code="westgate",
                device_class="school_single",
                actor=ACTOR,
            )
        _wait_for(lambda: answer(new_mac) == (AccessAccept, str(westgate.vlans["full"])))

        # The visitor leaves: their phone (a signed AUA: internet) is revoked with them.
        phone = westgate.visitor_phone
        assert answer(phone) == (AccessAccept, str(westgate.vlans["internet"]))
        with transaction(session_factory) as session:
            registry.leave_person(
                session, person=registry.find_person(session, "visitor1"), actor=ACTOR
            )
        _wait_for(lambda: answer(phone)[0] == AccessReject)
    finally:
        output = server.stop()
    assert "listening on" in output  # its log is read: INFO lines are there
    assert "loaded in" not in output, output  # no rebuild: every change was patched in place
