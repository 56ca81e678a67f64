"""`[visitor] verify` in the policy file, and visitor codes' lifetimes (issue 12)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from service import visitors
from service.db import transaction
from service.enums import VisitorVerify
from service.errors import PolicyError
from service.policy import load_policy_text
from tests.conftest import REPO

WESTGATE = (REPO / "deploy" / "policies" / "westgate.toml").read_text(encoding="utf-8")
MINIMAL = """
site = "x"
[vlans]
full = 10
segregated = 20
internet = 30
registration = 99
[access]
school_single = "full"
school_shared = "full"
authorised = "internet"
staff_owned = "none"
visitor_owned = "internet"
learner_owned = "none"
"""


@pytest.mark.parametrize(
    ("visitor_table", "expected"),
    [
        ("", VisitorVerify.SELF),  # files written before the key: as before
        ('[visitor]\nverify = "self"\n', VisitorVerify.SELF),
        ('[visitor]\nverify = "code"\n', VisitorVerify.CODE),
        ('[visitor]\nverify = "sponsor"\n', VisitorVerify.SPONSOR),
    ],
)
def test_visitor_verify_key(visitor_table: str, expected: VisitorVerify) -> None:
    assert load_policy_text(MINIMAL + visitor_table).visitor_verify is expected


@pytest.mark.parametrize("value", ['"codes"', '"Code"', "true", "1", '""'])
def test_visitor_verify_key_is_range_checked(value: str) -> None:
    with pytest.raises(PolicyError) as caught:
        load_policy_text(MINIMAL + f"[visitor]\nverify = {value}\n", "p.toml")
    assert str(caught.value).startswith("p.toml: visitor.verify: ")
    assert 'use one of "self", "code", "sponsor"' in str(caught.value)


def test_the_demo_school_verifies_visitors_with_a_code() -> None:
    assert load_policy_text(WESTGATE).visitor_verify is VisitorVerify.CODE


def test_a_code_works_until_it_expires_and_a_daily_one_until_midnight(
    westgate: object, session_factory: sessionmaker[Session]
) -> None:
    issued = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
    with transaction(session_factory) as session:
        info, code = visitors.issue_code(
            session=session,
            site_code="westgate",
            actor="reception",
            now=issued,
            visitor_name="Ada",
            valid_for_seconds=3600,
        )
        daily, daily_code = visitors.issue_code(
            session=session, site_code="westgate", actor="reception", now=issued, daily=True
        )
    assert info.valid_until == issued + timedelta(hours=1)
    assert daily.valid_until == datetime(2026, 11, 24, 0, 0, tzinfo=UTC)  # London = UTC
    with (
        transaction(session_factory) as session,
        pytest.raises(visitors.BadCode, match="has expired"),
    ):
        visitors.redeem_code(
            session=session, site_code="westgate", code=code, now=issued + timedelta(hours=2)
        )
    with transaction(session_factory) as session:
        for minutes in (10, 20, 30):  # the day's code is not spent
            row = visitors.redeem_code(
                session=session,
                site_code="westgate",
                code=daily_code,
                now=issued + timedelta(minutes=minutes),
            )
            assert row.used_at is None
        open_codes = visitors.list_open_codes(session=session, now=issued)
        assert [(c.visitor_name, c.daily) for c in open_codes if c.issued_by == "reception"] == [
            ("Ada", False),
            (visitors.DAILY_NAME, True),
        ]


def test_codes_are_stored_hashed(tmp_path: Path) -> None:
    digest = visitors.hash_code("westgate", "ab c-123")
    assert digest == visitors.hash_code("westgate", "ABC123")
    assert digest != visitors.hash_code("other", "ABC123")
    assert "ABC123" not in digest
