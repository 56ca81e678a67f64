"""The IT lead's day at the command line, through the real `schoolgate` command: tables that
fit 80 columns, help that lists values in full, `who`, `device show` by asset tag or owner,
`incident update`, a plain path for --database-url, exports in the site's time zone."""

from __future__ import annotations

import csv
import io
import json
import re
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from service.accounting import AcctRecord, AcctStatus, apply_accounting
from service.db import make_engine, make_session_factory, transaction

REPO = Path(__file__).resolve().parents[2]
WESTGATE = REPO / "deploy" / "policies" / "westgate.toml"
NARROW = {"COLUMNS": "80"}
MAC = re.compile(r"\b(?:[0-9a-f]{2}:){5}[0-9a-f]{2}\b")


@pytest.fixture
def db_url(request: pytest.FixtureRequest) -> str:
    """What the CLI prints does not depend on the backend: SQLite, but for the `who` test
    below, which runs on both (as test_imports_sync.py does)."""
    if getattr(request, "param", "sqlite") == "postgres":
        return str(request.getfixturevalue("postgres_url"))
    return str(request.getfixturevalue("sqlite_url"))


@pytest.fixture
def demo(run_cli) -> None:
    run_cli("db", "upgrade")
    run_cli("demo")


def accounting(db_url: str, *records: AcctRecord) -> None:
    """Accounting from the demo NAS, stored as the RADIUS server's writer stores it."""
    engine = make_engine(db_url)
    with transaction(make_session_factory(engine)) as session:
        apply_accounting(session=session, records=list(records))
    engine.dispose()


def start(mac: str, session_id: str, *, ap: str, minutes_ago: int, ip: str) -> AcctRecord:
    return AcctRecord(
        status=AcctStatus.START,
        nas_id=1,
        nas_ip="127.0.0.1",
        site_code="westgate",
        at=datetime.now(UTC) - timedelta(minutes=minutes_ago),
        nas_identifier=ap,
        acct_session_id=session_id,
        mac=mac,
        framed_ip=ip,
    )


def assert_fits(output: str, width: int = 80) -> None:
    too_wide = [line for line in output.splitlines() if len(line) > width]
    assert not too_wide, "\n".join(too_wide)


@pytest.mark.parametrize(
    "db_url", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
def test_who_is_on_the_network_now(demo, run_cli, db_url) -> None:
    accounting(
        db_url,
        start("02:00:00:00:30:01", "v1", ap="AP-HALL-1", minutes_ago=30, ip="10.0.30.5"),
        start("02:00:00:00:10:01", "l1", ap="AP-STAFFROOM-1", minutes_ago=90, ip="10.0.10.7"),
        start("02:00:00:00:99:99", "u1", ap="AP-HALL-2", minutes_ago=5, ip="10.0.99.9"),
        start("02:00:00:00:10:02", "t1", ap="AP-HALL-1", minutes_ago=60, ip="10.0.10.8"),
    )
    accounting(db_url, replace_stop("02:00:00:00:10:02", "t1"))
    listed = json.loads(run_cli("who", "--json").stdout)
    assert [
        (p["mac"], p["person"], p["class"], p["access"], p["vlan"], p["nas"]) for p in listed
    ] == [
        ("02:00:00:00:10:01", "Jo Smith", "school_single", "full", 10, "demo-controller"),
        ("02:00:00:00:30:01", "Sam Visitor", "visitor_owned", "internet", 30, "demo-controller"),
        ("02:00:00:00:99:99", None, "unregistered", "registration", 99, "demo-controller"),
    ]
    assert listed[1]["location"] == "hall"
    assert listed[0]["location"] == "staffroom"
    assert listed[1]["ip"] == "10.0.30.5"
    assert listed[0]["since"] < listed[1]["since"]
    visitors = json.loads(run_cli("who", "--class", "visitor_owned", "--json").stdout)
    assert [p["mac"] for p in visitors] == ["02:00:00:00:30:01"]
    assert json.loads(run_cli("who", "--nas", "AP-STAFFROOM-1", "--json").stdout)[0]["mac"] == (
        "02:00:00:00:10:01"
    )
    assert run_cli("who", "--nas", "nowhere").stdout.strip() == (
        "nobody is on the network (no open accounting sessions)"
    )
    table = run_cli("who", "--site", "westgate", env=NARROW).stdout
    assert_fits(table)
    assert set(MAC.findall(table)) == {
        "02:00:00:00:10:01",
        "02:00:00:00:30:01",
        "02:00:00:00:99:99",
    }
    bad = run_cli("who", "--class", "tablet", check=False)
    assert (bad.returncode, bad.stderr.splitlines()[0][:35]) == (
        1,
        "error: unknown device class 'tablet",
    )


def replace_stop(mac: str, session_id: str) -> AcctRecord:
    return AcctRecord(
        status=AcctStatus.STOP,
        nas_id=1,
        nas_ip="127.0.0.1",
        site_code="westgate",
        at=datetime.now(UTC),
        acct_session_id=session_id,
        mac=mac,
        session_time=3600,
    )


def test_tables_fit_80_columns_and_keep_macs_whole(demo, run_cli, tmp_path: Path) -> None:
    run_cli(
        "device",
        "add",
        "02:00:00:00:60:01",
        "--site",
        "westgate",
        "--class",
        "school_shared",
        "--asset-tag",
        "WG-IPAD-TROLLEY-0001",
        "--name",
        "Year 6 trolley iPad with a long name",
    )
    run_cli("device", "revoke", "02:00:00:00:60:01", "--reason", "screen cracked, sent away")
    for args in (
        ("device", "list"),
        ("person", "list"),
        ("nas", "list"),
        ("coa", "list"),
        ("policy", "show", "westgate"),
        ("exception", "list"),
        ("site", "list"),
    ):
        out = run_cli(*args, env=NARROW).stdout
        assert_fits(out)
    listing = run_cli("device", "list", env=NARROW).stdout
    assert len(MAC.findall(listing)) == 6  # every MAC whole, on one line
    assert "--wide shows them" in listing
    wide = run_cli("device", "list", "--wide", env=NARROW).stdout
    assert "Year 6 trolley iPad with a long name" in wide
    assert "needs reassignment" in wide
    rules = run_cli("policy", "show", "westgate", env=NARROW).stdout
    assert_fits(rules)


@pytest.mark.parametrize(
    "command",
    [
        ("device", "add"),
        ("device", "list"),
        ("export",),
        ("coa", "list"),
        ("who",),
        ("person", "add"),
    ],
)
def test_help_lists_values_in_full_and_no_bool(run_cli, command) -> None:
    shown = run_cli(*command, "--help", env=NARROW).stdout
    assert_fits(shown)
    assert "…" not in shown
    assert "<bool>" not in shown
    if command == ("export",):
        assert "exceptions" in shown
    if command == ("device", "add"):
        assert "visitor_owned" in shown


def test_device_show_by_asset_tag_or_owner(demo, run_cli) -> None:
    run_cli(
        "device",
        "add",
        "02:00:00:00:60:02",
        "--site",
        "westgate",
        "--class",
        "school_shared",
        "--asset-tag",
        "WG-T09",
    )
    by_tag = json.loads(run_cli("device", "show", "WG-T09", "--json").stdout)
    assert by_tag["mac"] == "02:00:00:00:60:02"
    by_owner = json.loads(run_cli("device", "show", "sam@visitor.example", "--json").stdout)
    assert by_owner["mac"] == "02:00:00:00:30:01"
    several = run_cli("device", "show", "jsmith", check=False)
    assert several.returncode == 1
    assert "02:00:00:00:10:01" in several.stderr
    assert "02:00:00:00:20:01" in several.stderr
    assert several.stderr.strip().endswith("error: several devices match: give the MAC of one")
    unknown = run_cli("device", "show", "WG-NOPE", check=False)
    assert unknown.stderr.strip() == "error: no device with MAC, asset tag or owner 'WG-NOPE'"


def test_incident_update_records_the_dpo_told_after_the_fact(demo, run_cli) -> None:
    run_cli("device", "lost", "02:00:00:00:10:01", "--reported-by", "Jo Smith")
    shown = json.loads(run_cli("device", "show", "02:00:00:00:10:01", "--json").stdout)
    (incident,) = shown["incidents"]
    assert incident["dpo_notified_at"] is None
    told = datetime.now(UTC).replace(microsecond=0)
    run_cli("incident", "update", str(incident["id"]), "--dpo-notified-at", told.isoformat())
    (exported,) = json.loads(
        "[" + run_cli("export", "incidents", "--format", "jsonl", "--utc").stdout.strip() + "]"
    )
    assert exported["dpo_notified_at"] == told.isoformat()
    audit = [
        json.loads(x)
        for x in run_cli("export", "audit", "--format", "jsonl").stdout.split("\n")
        if x
    ]
    assert audit[-1]["tag"] == "admin:incident:update"
    assert run_cli("audit", "verify", check=False).returncode == 0
    before = run_cli(
        "incident",
        "update",
        str(incident["id"]),
        "--dpo-notified-at",
        "2020-01-01T09:00",
        check=False,
    )
    assert before.returncode == 1
    assert before.stderr.startswith("error: the DPO cannot have been told before the incident")
    missing = run_cli("incident", "update", "999", "--dpo-notified-at", "2026-01-01", check=False)
    assert missing.stderr.strip() == "error: no incident 999"


def test_database_url_takes_a_plain_path(tmp_path: Path, run_cli) -> None:
    work = tmp_path / "work"
    work.mkdir()
    run_cli("--database-url", "school.db", "db", "upgrade", cwd=work)
    run_cli("--database-url", "school.db", "policy", "load", str(WESTGATE), cwd=work)
    with sqlite3.connect(work / "school.db") as db:
        assert db.execute("SELECT code FROM sites").fetchall() == [("westgate",)]
    sites = run_cli("--database-url", str(work / "school.db"), "site", "list", "--json").stdout
    assert json.loads(sites)[0]["code"] == "westgate"


def test_exports_write_times_in_the_site_zone(demo, run_cli, tmp_path: Path) -> None:
    policy = tmp_path / "westgate.toml"
    policy.write_text(
        WESTGATE.read_text().replace('timezone = "Europe/London"', 'timezone = "Asia/Kolkata"')
    )
    run_cli("policy", "load", str(policy))
    rows = list(csv.DictReader(io.StringIO(run_cli("export", "devices").stdout)))
    assert rows[0]["created_at"].endswith("+05:30")
    utc = list(csv.DictReader(io.StringIO(run_cli("export", "devices", "--utc").stdout)))
    assert utc[0]["created_at"].endswith("+00:00")
    assert datetime.fromisoformat(rows[0]["created_at"]) == datetime.fromisoformat(
        utc[0]["created_at"]
    )
    jsonl = run_cli("export", "devices", "--format", "jsonl").stdout.splitlines()
    assert json.loads(jsonl[0])["created_at"].endswith("+05:30")
    assert json.loads(jsonl[0])["mac"] == rows[0]["mac"]
