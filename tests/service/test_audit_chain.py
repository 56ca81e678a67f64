"""Issue 11, item 5: the audit log is tamper-evident for someone who can write to the database.

Each attack edits the database directly (as a DBA, or someone with the database password,
would) and then runs the real `schoolgate audit verify`, on SQLite and on PostgreSQL. The
chain is keyed with the audit key `db upgrade` keeps outside the database, and its head is
anchored in `audit-anchor.log` beside the key after every audited change.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from service.audit import GENESIS, entry_hash
from service.db import make_engine, make_session_factory, transaction
from service.models import AuditEntry
from tests.service.test_cli import WESTGATE

Tamper = Callable[[Callable[[Session], None]], None]


@pytest.fixture
def tamper(db_url: str) -> Iterator[Tamper]:
    """Change the database behind schoolgate's back, in one transaction."""
    engine = make_engine(db_url)
    factory = make_session_factory(engine)

    def run(change: Callable[[Session], None]) -> None:
        with transaction(factory) as session:
            change(session)

    yield run
    engine.dispose()


def entries(session: Session) -> list[AuditEntry]:
    return list(session.scalars(select(AuditEntry).order_by(AuditEntry.id)))


def rehash_from(session: Session, start: int, *, key: bytes | None = None) -> None:
    """Recompute the chain from the `start`th entry on, as the published algorithm does
    (plain SHA-256, or an HMAC under a key the attacker guesses)."""
    rows = entries(session)
    prev = rows[start - 1].hash if start > 0 else GENESIS
    for row in rows[start:]:
        row.prev_hash = prev
        row.hash = entry_hash(prev, row.at, row.actor, row.tag, row.subject, row.detail, key)
        if key is None:
            row.chain_version = 0  # pretend it was written before the key existed
        prev = row.hash
    session.flush()


@pytest.fixture
def school(run_cli) -> None:
    """A new install: `db upgrade` (which makes the keys), then a few audited changes."""
    run_cli("db", "upgrade")
    run_cli("policy", "load", WESTGATE)
    run_cli("person", "add", "--site", "westgate", "--role", "staff", "--name", "Jo Smith")
    run_cli("person", "add", "--site", "westgate", "--role", "visitor", "--name", "Al Jones")
    run_cli("person", "add", "--site", "westgate", "--role", "staff", "--name", "Ann Lee")


def broken(run_cli, *fragments: str, args: tuple[str, ...] = ()) -> str:
    result = run_cli("audit", "verify", *args, check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    line = result.stderr.strip()
    assert line.startswith("error: audit log broken at entry ")
    assert "\n" not in line
    for fragment in fragments:
        assert fragment in line, line
    return line


def test_an_untouched_log_verifies_and_prints_its_head(run_cli, school, tamper, tmp_path) -> None:
    rows: list[tuple[int, str, int]] = []
    tamper(lambda s: rows.extend((e.id, e.hash, e.chain_version) for e in entries(s)))
    head_id, head_hash, _version = rows[-1]
    out = run_cli("audit", "verify").stdout
    assert f"audit log intact: {len(rows)} entries ({len(rows)} keyed)" in out
    assert f"head id {head_id} hash {head_hash}" in out
    assert "anchors hold" in out
    anchor_lines = (tmp_path / "audit-anchor.log").read_text().splitlines()
    assert anchor_lines[0].split()[1:3] == ["keyed-from", "id=0"]
    assert anchor_lines[-1].endswith(f"head id={head_id} hash={head_hash}")


def test_deleting_the_last_entries_fails(run_cli, school, tamper) -> None:
    def drop_last_two(session: Session) -> None:
        ids = [e.id for e in entries(session)[-2:]]
        session.execute(delete(AuditEntry).where(AuditEntry.id.in_(ids)))

    tamper(drop_last_two)
    broken(run_cli, "anchored entry is missing: the log was truncated")


def test_deleting_everything_fails(run_cli, school, tamper) -> None:
    tamper(lambda s: s.execute(delete(AuditEntry)))
    broken(run_cli, "the log was truncated (now 0 entries")


def test_editing_the_last_entry_and_rehashing_it_fails(run_cli, school, tamper) -> None:
    def edit_last(session: Session) -> None:
        last = entries(session)[-1]
        last.subject = "someone else"
        session.flush()
        rehash_from(session, len(entries(session)) - 1)

    tamper(edit_last)
    broken(run_cli, "unkeyed entry after keyed ones")


def test_rehashing_with_a_guessed_key_fails(run_cli, school, tamper) -> None:
    def edit_last(session: Session) -> None:
        last = entries(session)[-1]
        last.actor = "nobody"
        session.flush()
        rehash_from(session, len(entries(session)) - 1, key=b"change-me")

    tamper(edit_last)
    broken(run_cli, "entry was altered after it was written")


def test_recomputing_the_whole_chain_from_an_edited_entry_fails(run_cli, school, tamper) -> None:
    def rewrite(session: Session) -> None:
        first = entries(session)[0]
        first.actor = "nobody"
        session.flush()
        rehash_from(session, 0)

    tamper(rewrite)
    broken(run_cli, "unkeyed entry written after the audit key was made")


def test_a_copy_of_the_anchors_catches_truncation(run_cli, school, tamper, tmp_path) -> None:
    """`audit verify --anchor` checks against a copy kept elsewhere (here: after `audit
    anchor`, which a cron job runs), even when the default anchor log is gone."""
    out = run_cli("audit", "anchor").stdout
    assert out.startswith("anchored head id ")
    copy = tmp_path / "anchors-from-syslog.log"
    shutil.copyfile(tmp_path / "audit-anchor.log", copy)
    (tmp_path / "audit-anchor.log").unlink()
    tamper(lambda s: s.execute(delete(AuditEntry).where(AuditEntry.id == entries(s)[-1].id)))
    broken(run_cli, "truncated", args=("--anchor", str(copy)))
    bad = tmp_path / "not-anchors.log"
    bad.write_text("hello\n")
    result = run_cli("audit", "verify", "--anchor", str(bad), check=False)
    assert result.returncode == 1
    assert result.stderr.strip() == (f"error: anchor file {bad} line 1 is not an anchor: 'hello'")


def test_without_the_audit_key_nothing_is_appended_or_verified(run_cli, school, tmp_path) -> None:
    elsewhere = {"SCHOOLGATE_STATE_DIR": str(tmp_path / "elsewhere")}
    result = run_cli(
        "person",
        "add",
        "--site",
        "westgate",
        "--role",
        "staff",
        "--name",
        "X",
        env=elsewhere,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "error: the audit log is keyed but this process has no audit key: set "
        "SCHOOLGATE_AUDIT_KEY or SCHOOLGATE_STATE_DIR (the directory holding audit.key)"
    )
    result = run_cli("audit", "verify", env=elsewhere, check=False)
    assert result.returncode == 1
    assert "entry is keyed but no audit key is set" in result.stderr
    assert "intact" in run_cli("audit", "verify").stdout


def test_entries_from_before_the_key_still_verify(run_cli, tamper) -> None:
    """An existing database: entries hashed before the key existed keep verifying; keying
    starts at `db upgrade`; an edit to an old entry is still caught."""
    run_cli("policy", "load", WESTGATE)  # before any key: unkeyed entries
    run_cli("db", "upgrade")
    run_cli("person", "add", "--site", "westgate", "--role", "staff", "--name", "Jo Smith")
    versions: list[int] = []
    tamper(lambda s: versions.extend(e.chain_version for e in entries(s)))
    assert versions[0] == 0
    assert versions[-1] == 1
    out = run_cli("audit", "verify").stdout
    assert f"intact: {len(versions)} entries ({versions.count(1)} keyed)" in out

    def edit_first(session: Session) -> None:
        entries(session)[0].actor = "nobody"

    tamper(edit_first)
    broken(run_cli, "entry was altered after it was written")
