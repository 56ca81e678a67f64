"""The demo school (Westgate Primary, seed 003): used by `schoolgate demo` and the tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy.orm import Session

from service import registry, visitors
from service.enums import AgreementKind, SignatureSource
from service.errors import NotFound

REPO = Path(__file__).resolve().parents[1]
DEMO_PASSWORD = "demo-password"  # noqa: S105 - the demo's documented staff password
DEMO_NAS_SECRET = "testing123"  # noqa: S105 - the demo NAS's documented shared secret
# Westgate's policy has `[visitor] verify = "code"`: the demo issues the day's code, documented
# (like the password) so anyone trying the demo can sign as a visitor. A real school's codes
# come from `schoolgate visitor code`, at random.
DEMO_VISITOR_CODE = "WESTG8"

# (mac, class, owner username or None, label)
DEMO_DEVICES = (
    ("02:00:00:00:10:01", "school_single", "jsmith", "school laptop (J. Smith)"),
    ("02:00:00:00:10:02", "school_shared", None, "class iPad trolley #4"),
    ("02:00:00:00:20:01", "staff_owned", "jsmith", "J. Smith's own phone"),
    ("02:00:00:00:30:01", "visitor_owned", "visitor1", "visitor's phone (signed AUA)"),
    ("02:00:00:00:40:01", "learner_owned", "pupil1", "Year 6 pupil's phone"),
)
UNKNOWN_DEVICE = "02:00:00:00:99:99"


def find_deploy_file(*parts: str) -> Path:
    """A file under deploy/, from the working directory or the source checkout."""
    for base in (Path.cwd(), REPO):
        candidate = base.joinpath("deploy", *parts)
        if candidate.exists():
            return candidate
    raise NotFound(f"cannot find deploy/{'/'.join(parts)}: run from the schoolgate checkout")


def seed_demo_school(session: Session, *, actor: str, nas_address: str = "127.0.0.1") -> None:
    """Westgate's policy, a NAS, both agreements, three people and a device of each kind:
    the staff phone approved with a signed BYOD statement, the visitor's phone with a signed AUA.
    """
    registry.load_policy_file(
        session, path=find_deploy_file("policies", "westgate.toml"), actor=actor
    )
    registry.add_nas(
        session,
        site_code="westgate",
        name="demo-controller",
        address=nas_address,
        secret=DEMO_NAS_SECRET,
        vendor="generic",
        actor=actor,
    )
    for kind in AgreementKind:
        registry.publish_agreement(
            session,
            kind=kind,
            text=find_deploy_file("agreements", f"{kind.value}.md").read_text(),
            actor=actor,
        )
    teacher = registry.add_person(
        session,
        site_code="westgate",
        role="staff",
        name="Jo Smith",
        email="jsmith@westgate.example",
        username="jsmith",
        actor=actor,
    )
    registry.set_password(session, person=teacher, password=DEMO_PASSWORD, actor=actor)
    registry.add_person(
        session,
        site_code="westgate",
        role="visitor",
        name="Sam Visitor",
        email="sam@visitor.example",
        username="visitor1",
        actor=actor,
    )
    registry.add_person(
        session,
        site_code="westgate",
        role="learner",
        name="Pat Pupil",
        username="pupil1",
        year_group=6,
        actor=actor,
    )
    for mac, cls, owner, label in DEMO_DEVICES:
        registry.add_device(
            session,
            mac=mac,
            site_code="westgate",
            device_class=cls,
            owner=owner,
            name=label,
            actor=actor,
        )
    now = datetime.now(UTC)
    # Westgate gives staff devices no network: approved all the same, to show the reject.
    registry.approve_device(session, mac="02:00:00:00:20:01", actor=actor, anyway=True)
    registry.sign_agreement(
        session,
        kind=AgreementKind.STAFF_BYOD,
        person=registry.find_person(session, "jsmith"),
        typed_name="Jo Smith",
        signed_at=now - timedelta(minutes=5),
        source=SignatureSource.PAPER,
        actor=actor,
    )
    registry.sign_agreement(
        session,
        kind=AgreementKind.VISITOR_AUA,
        person=registry.find_person(session, "visitor1"),
        device_mac="02:00:00:00:30:01",
        typed_name="Sam Visitor",
        signed_at=now,
        source=SignatureSource.PAPER,
        actor=actor,
        organisation="Example Supplies",
        visiting="the school office",
    )
    visitors.issue_code(
        session=session,
        site_code="westgate",
        actor=actor,
        now=now,
        daily=True,
        code=DEMO_VISITOR_CODE,
    )
