"""The real `schoolgate` command in a subprocess: bad input, imports, exports (SQLite; the
walkthrough in test_cli_walkthrough.py runs on both backends)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
WESTGATE = str(REPO / "deploy" / "policies" / "westgate.toml")
AUA = str(REPO / "deploy" / "agreements" / "visitor_aua.md")
BYOD = str(REPO / "deploy" / "agreements" / "staff_byod.md")


def explain(run_cli, mac: str, *extra: str) -> dict:
    return json.loads(run_cli("policy", "explain", mac, "--json", *extra).stdout)


@pytest.fixture
def db_url(sqlite_url: str) -> str:
    """CLI behaviour does not depend on the backend: these run on SQLite only."""
    return sqlite_url


@pytest.fixture
def school(run_cli) -> None:
    run_cli("db", "upgrade")
    run_cli("policy", "load", WESTGATE)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("device", "add", "aa:bb:cc:dd:ee", "--site", "westgate", "--class", "school_single"),
            "error: not a MAC address: 'aa:bb:cc:dd:ee'",
        ),
        (
            ("device", "add", "aa:bb:cc:dd:ee:01", "--site", "narnia", "--class", "school_single"),
            "error: unknown site 'narnia' (sites: westgate)",
        ),
        (
            ("device", "add", "aa:bb:cc:dd:ee:01", "--site", "westgate", "--class", "tablet"),
            "error: unknown device class 'tablet'",
        ),
        (
            ("device", "add", "aa:bb:cc:dd:ee:01", "--site", "westgate", "--class", "staff_owned"),
            "error: a staff-owned device needs --owner",
        ),
        (("device", "approve", "aa:bb:cc:dd:ee:77"), "error: no device with MAC aa:bb:cc:dd:ee:77"),
        (
            ("person", "add", "--site", "westgate", "--role", "janitor", "--name", "X"),
            "error: unknown role 'janitor'",
        ),
        (
            (
                "nas",
                "add",
                "--site",
                "westgate",
                "--name",
                "x",
                "--address",
                "10.0.0.300",
                "--secret",
                "abcdefgh",
            ),
            "error: not an IP address or CIDR: '10.0.0.300'",
        ),
        (("policy", "load", "/nonexistent/policy.toml"), "error: cannot read /nonexistent"),
        (
            ("policy", "explain", "aa:bb:cc:dd:ee:01", "--at", "yesterday"),
            "error: not an ISO 8601 date-time: 'yesterday'",
        ),
        (("export", "nonsense"), "error: unknown export 'nonsense'"),
        (
            (
                "exception",
                "grant",
                "aa:bb:cc:dd:ee:01",
                "--access",
                "full",
                "--reason",
                "x",
                "--approved-by",
                "head",
            ),
            "error: no device with MAC",
        ),
    ],
)
def test_bad_input_gives_one_line_error_and_non_zero_exit(school, run_cli, args, message) -> None:
    result = run_cli(*args, check=False)
    assert result.returncode != 0
    assert result.stderr.startswith(message), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert len(result.stderr.strip().splitlines()) == 1


def test_duplicate_device_is_refused(school, run_cli) -> None:
    run_cli("device", "add", "aa:bb:cc:dd:ee:01", "--site", "westgate", "--class", "school_single")
    result = run_cli(
        "device",
        "add",
        "AABBCCDDEE01",
        "--site",
        "westgate",
        "--class",
        "school_shared",
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "error: device aa:bb:cc:dd:ee:01 is already registered (school_single, active)"
    )


def test_bad_policy_file_stores_nothing(school, run_cli, tmp_path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(Path(WESTGATE).read_text().replace("full = 10", "full = 9999"))
    result = run_cli("policy", "load", str(bad), check=False)
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: {bad}: vlans.full: VLAN id 9999 is out of range 1-4094"
    shown = json.loads(run_cli("policy", "show", "westgate", "--json").stdout)
    assert shown["version"] == 1
    assert shown["vlans"]["full"] == 10


def test_import_large_csv_all_or_nothing_then_skip_bad_rows(school, run_cli, tmp_path) -> None:
    rows = ["mac,class,asset tag,owner email"]
    rows += [
        f"02:00:00:01:{i // 256:02x}:{i % 256:02x},school_shared,WG-{i:04d}," for i in range(1200)
    ]
    rows.insert(600, "02:00:00:99:99,school_shared,broken,")
    path = tmp_path / "mdm.csv"
    path.write_text("\n".join(rows) + "\n")
    result = run_cli("device", "import", str(path), "--site", "westgate", check=False)
    assert result.returncode == 1
    assert (
        result.stderr.strip() == "error: CSV line 601: not a MAC address: '02:00:00:99:99' "
        "(expected e.g. aa:bb:cc:dd:ee:ff)"
    )
    assert json.loads(run_cli("device", "list", "--json").stdout) == []
    result = run_cli(
        "device", "import", str(path), "--site", "westgate", "--skip-bad-rows", "--json"
    )
    assert json.loads(result.stdout) == {
        "added": 1200,
        "skipped": [
            {
                "line": 601,
                "problem": "not a MAC address: '02:00:00:99:99' (expected e.g. aa:bb:cc:dd:ee:ff)",
            }
        ],
    }
    listed = json.loads(run_cli("device", "list", "--json").stdout)
    assert len(listed) == 1200
    assert {d["asset_tag"] for d in listed} >= {"WG-0000", "WG-1199"}


def test_unreadable_csv(school, run_cli, tmp_path) -> None:
    path = tmp_path / "bin.csv"
    path.write_bytes(b"\xff\xfe\x00garbage\x00\x81")
    result = run_cli("device", "import", str(path), "--site", "westgate", check=False)
    assert result.returncode == 1
    assert "not UTF-8 text" in result.stderr
    nomac = tmp_path / "nomac.csv"
    nomac.write_text("serial,model\n1,ipad\n")
    result = run_cli("device", "import", str(nomac), "--site", "westgate", check=False)
    assert result.stderr.startswith("error: CSV line 1: no MAC column in the header")


def test_person_leave_and_exports(school, run_cli, tmp_path) -> None:
    run_cli(
        "person",
        "add",
        "--site",
        "westgate",
        "--role",
        "staff",
        "--name",
        "Leaving Teacher",
        "--email",
        "lt@westgate.example",
    )
    run_cli(
        "device",
        "add",
        "aa:bb:cc:dd:ee:10",
        "--site",
        "westgate",
        "--class",
        "school_single",
        "--owner",
        "lt@westgate.example",
    )
    run_cli(
        "device",
        "add",
        "aa:bb:cc:dd:ee:11",
        "--site",
        "westgate",
        "--class",
        "staff_owned",
        "--owner",
        "lt@westgate.example",
    )
    out = json.loads(run_cli("person", "leave", "lt@westgate.example", "--json").stdout)
    assert out["revoked"] == ["aa:bb:cc:dd:ee:11"]
    assert out["flagged_for_reassignment"] == ["aa:bb:cc:dd:ee:10"]
    assert json.loads(run_cli("person", "list", "--json").stdout) == []
    exported = run_cli("export", "devices").stdout
    table = list(csv.DictReader(io.StringIO(exported)))
    assert {(r["mac"], r["status"], r["needs_reassignment"]) for r in table} == {
        ("aa:bb:cc:dd:ee:10", "active", "True"),
        ("aa:bb:cc:dd:ee:11", "exited", "False"),
    }
    target = tmp_path / "audit.jsonl"
    run_cli("export", "audit", "--format", "jsonl", "-o", str(target))
    tags = [json.loads(line)["tag"] for line in target.read_text().splitlines()]
    assert "admin:person:leave" in tags
    assert not (tmp_path / "audit.jsonl.part").exists()


def test_lost_phone_and_exception(school, run_cli) -> None:
    run_cli("device", "add", "aa:bb:cc:dd:ee:20", "--site", "westgate", "--class", "learner_owned")
    run_cli(
        "exception",
        "grant",
        "aa:bb:cc:dd:ee:20",
        "--access",
        "internet",
        "--reason",
        "medical monitoring app",
        "--approved-by",
        "Headteacher",
        "--until",
        "2099-07-20T15:30",
    )
    decision = explain(run_cli, "aa:bb:cc:dd:ee:20")
    assert (decision["access"], decision["rule"]) == ("internet", "exception")
    listed = json.loads(run_cli("exception", "list", "--json").stdout)
    assert listed[0]["approved_by"] == "Headteacher"
    run_cli("device", "lost", "aa:bb:cc:dd:ee:20", "--reported-by", "parent", "--kind", "stolen")
    decision = explain(run_cli, "aa:bb:cc:dd:ee:20")
    assert (decision["access"], decision["rule"]) == ("none", "status.lost")
    incidents = list(csv.DictReader(io.StringIO(run_cli("export", "incidents").stdout)))
    assert incidents[0]["kind"] == "stolen"


def test_uninitialised_database_says_what_to_do(run_cli) -> None:
    result = run_cli(
        "device",
        "list",
        check=False,
        env={
            "SCHOOLGATE_DATABASE_URL": f"sqlite:////tmp/schoolgate-never-created-{id(run_cli)}.db"
        },
    )
    assert result.returncode == 1
    assert "run `schoolgate db upgrade` first" in result.stderr


def test_nas_add_takes_the_vendors_coa_port_unless_given(school, run_cli, tmp_path) -> None:
    """A Cisco controller listens for CoA on udp 1700: `nas add --vendor cisco` without
    --coa-port stores 1700 and says so, `nas list` shows it; a bad port is refused in one line.
    (Every vendor's default, and --coa-port overriding it: test_registry.py.)"""
    secret = tmp_path / "nas.secret"
    secret.write_text("s3cret-value\n")
    nas = ("nas", "add", "--site", "westgate", "--secret-file", str(secret), "--vendor", "cisco")
    added = run_cli(*nas, "--name", "wlc", "--address", "10.0.0.2")
    assert added.stdout.strip() == "added NAS wlc (10.0.0.2, cisco, CoA udp 1700) at westgate"
    bad = run_cli(*nas, "--name", "x", "--address", "10.0.0.9", "--coa-port", "70000", check=False)
    assert bad.returncode != 0
    assert bad.stderr.strip() == "error: CoA port 70000 is out of range 1-65535", bad.stderr
    listed = json.loads(run_cli("nas", "list", "--json").stdout)
    assert [(row["name"], row["vendor"], row["coa_port"]) for row in listed] == [
        ("wlc", "cisco", 1700)
    ]
