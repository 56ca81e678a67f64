"""Re-importing the school's exports: the MDM asset list (`device import [--sync]
[--dry-run]`) and the MIS people list (`person import`), through the real command on SQLite
and PostgreSQL."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from service.accounting import AcctRecord, AcctStatus, apply_accounting
from service.db import make_engine, make_session_factory, transaction

# A term later: the iPads are tagged, Jo's laptop was replaced, a new iPad arrived.
MDM_LATER = (
    "MAC Address,Device Class,Asset Tag,Owner Email\n"
    "02:00:00:00:10:02,school_shared,WG-T04B,\n"
    "02:00:00:00:50:01,school_shared,WG-T05,\n"
    "02:00:00:00:50:02,school_shared,WG-T06,\n"
    "02:00:00:00:50:03,school_single,WG-L02,jsmith@westgate.example\n"
)


def devices(run_cli) -> dict[str, dict]:
    return {d["mac"]: d for d in json.loads(run_cli("device", "list", "--json").stdout)}


def open_session(db_url: str, mac: str) -> None:
    """The device is on the network: an Accounting Start from the demo NAS, stored as the
    RADIUS server's writer stores it."""
    engine = make_engine(db_url)
    with transaction(make_session_factory(engine)) as session:
        apply_accounting(
            session=session,
            records=[
                AcctRecord(
                    status=AcctStatus.START,
                    nas_id=1,
                    nas_ip="127.0.0.1",
                    site_code="westgate",
                    at=datetime.now(UTC),
                    nas_identifier="AP-HALL-1",
                    acct_session_id=f"s-{mac}",
                    mac=mac,
                )
            ],
        )
    engine.dispose()


def test_the_mdm_export_imported_again_then_synced(run_cli, db_url, tmp_path: Path) -> None:
    run_cli("db", "upgrade")
    run_cli("demo")
    mdm = tmp_path / "mdm.csv"
    # The demo registered the laptop and the trolley iPad already, as the file says: today the
    # first registered row stopped the import.
    mdm.write_text(
        "MAC Address,Device Class,Owner Email\n"
        "02:00:00:00:10:01,school_single,jsmith@westgate.example\n"
        "02:00:00:00:10:02,school_shared,\n"
        "02:00:00:00:50:01,school_shared,\n"
    )
    result = json.loads(
        run_cli("device", "import", str(mdm), "--site", "westgate", "--json").stdout
    )
    assert result["added"] == 1
    assert result["unchanged"] == 2
    again = json.loads(run_cli("device", "import", str(mdm), "--site", "westgate", "--json").stdout)
    assert (again["added"], again["unchanged"]) == (0, 3)

    # Rows that differ from the register: every conflicting line named, nothing stored.
    mdm.write_text(MDM_LATER.replace("WG-T05", "WG-T05X"))
    before = devices(run_cli)
    refused = run_cli("device", "import", str(mdm), "--site", "westgate", check=False)
    assert refused.returncode == 1
    assert refused.stderr.count("\n") == 1
    assert "line 2: 02:00:00:00:10:02 has asset tag - -> WG-T04B" in refused.stderr
    assert "line 3: 02:00:00:00:50:01 has asset tag - -> WG-T05X" in refused.stderr
    assert "nothing imported" in refused.stderr
    assert devices(run_cli) == before

    # --sync --dry-run: the diff, and nothing changes.
    mdm.write_text(MDM_LATER)
    open_session(db_url, "02:00:00:00:10:01")
    dry = run_cli("device", "import", str(mdm), "--site", "westgate", "--sync", "--dry-run")
    assert dry.stdout.splitlines()[0] == (
        "dry run: westgate: would add 2, would change 2, would retire 1, "
        "0 already registered as in the file"
    )
    assert "  + 02:00:00:00:50:02" in dry.stdout
    assert "  ~ 02:00:00:00:10:02: asset tag - -> WG-T04B" in dry.stdout
    assert "  - 02:00:00:00:10:01 (exit process)" in dry.stdout
    assert devices(run_cli) == before

    synced = json.loads(
        run_cli("device", "import", str(mdm), "--site", "westgate", "--sync", "--json").stdout
    )
    assert synced["retired"] == ["02:00:00:00:10:01"]
    after = devices(run_cli)
    assert after["02:00:00:00:10:01"]["status"] == "exited"
    assert after["02:00:00:00:10:02"]["asset_tag"] == "WG-T04B"
    assert after["02:00:00:00:50:02"]["status"] == "active"
    # Devices of classes the MDM file does not list are not its to retire.
    assert after["02:00:00:00:30:01"]["status"] == "active"
    assert after["02:00:00:00:20:01"]["status"] == "active"
    # Audited, and the retired laptop's open session gets its Disconnect/CoA queued.
    tags = [
        json.loads(line)["tag"]
        for line in run_cli("export", "audit", "--format", "jsonl").stdout.splitlines()
    ]
    assert tags.count("admin:device:update") == 2
    assert "admin:device:exit" in tags
    coa = json.loads(run_cli("coa", "list", "--mac", "02:00:00:00:10:01", "--json").stdout)
    assert coa, "no CoA request for the retired device's open session"
    # The same file again: nothing to do.
    same = json.loads(
        run_cli("device", "import", str(mdm), "--site", "westgate", "--sync", "--json").stdout
    )
    assert (same["added"], same["changed"], same["retired"], same["unchanged"]) == (0, [], [], 4)


MIS = (
    "UPN,name,role,email,username,year,form\n"
    "A1,Jo Smith,staff,jsmith@westgate.example,jsmith,,\n"
    "A2,Ann Teacher,staff,ann@westgate.example,ateacher,,\n"
    "B1,Pat Pupil,learner,,pupil1,6,6B\n"
    "B2,Lee Learner,learner,,llearner,5,5A\n"
)


def people(run_cli) -> dict[str, dict]:
    listed = json.loads(run_cli("person", "list", "--include-left", "--json").stdout)
    return {p["username"]: p for p in listed}


def test_the_mis_export_imported_again_then_synced(run_cli, tmp_path: Path) -> None:
    run_cli("db", "upgrade")
    run_cli("demo")
    mis = tmp_path / "mis.csv"
    mis.write_text(MIS)
    result = json.loads(
        run_cli("person", "import", str(mis), "--site", "westgate", "--json").stdout
    )
    assert result["added"] == ["ann@westgate.example", "llearner"]
    assert result["unchanged"] == 2
    assert people(run_cli)["llearner"]["year"] == 5
    again = json.loads(run_cli("person", "import", str(mis), "--site", "westgate", "--json").stdout)
    assert (again["added"], again["changed"], again["unchanged"]) == ([], [], 4)

    # Pat moves up a year and Jo Smith leaves: a plain import refuses and names the line.
    mis.write_text(
        MIS.replace("pupil1,6,", "pupil1,7,").replace(
            "A1,Jo Smith,staff,jsmith@westgate.example,jsmith,,\n", ""
        )
    )
    refused = run_cli("person", "import", str(mis), "--site", "westgate", check=False)
    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        "error: CSV line 3: pupil1 has year 6 -> 7 (registered value -> file); nothing "
        "imported: use --sync to apply the file"
    )
    dry = json.loads(
        run_cli(
            "person", "import", str(mis), "--site", "westgate", "--sync", "--dry-run", "--json"
        ).stdout
    )
    assert dry["changed"] == [{"person": "pupil1", "changes": ["year 6 -> 7"]}]
    assert dry["left"] == ["jsmith@westgate.example"]
    assert people(run_cli)["jsmith"]["status"] == "active"

    run_cli("person", "import", str(mis), "--site", "westgate", "--sync")
    now = people(run_cli)
    assert now["pupil1"]["year"] == 7
    assert now["jsmith"]["status"] == "left"
    # The exit process ran: Jo's own phone is out, the school laptop awaits reassignment;
    # the visitor (a role the MIS file does not list) is not touched.
    listed = devices(run_cli)
    assert listed["02:00:00:00:20:01"]["status"] == "exited"
    assert listed["02:00:00:00:10:01"]["needs_reassignment"] is True
    assert now["visitor1"]["status"] == "active"


def test_a_mis_file_without_the_columns_is_refused(run_cli, tmp_path: Path) -> None:
    run_cli("db", "upgrade")
    run_cli("demo")
    mis = tmp_path / "mis.csv"
    mis.write_text("name,role,email\nX,staff,x@westgate.example\n")
    result = run_cli("person", "import", str(mis), "--site", "westgate", check=False)
    assert (result.returncode, result.stderr.strip()) == (
        1,
        "error: CSV line 1: the header has no username, year column "
        "(expected name,role,email,username,year)",
    )
    mis.write_text("name,role,email,username,year\nX,janitor,x@westgate.example,,\n")
    result = run_cli("person", "import", str(mis), "--site", "westgate", check=False)
    assert result.stderr.startswith("error: CSV line 2: unknown role 'janitor'")
    assert "x@westgate.example" not in run_cli("person", "list").stdout
