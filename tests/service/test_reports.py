"""`schoolgate report weekly`: a week made through the CLI and the service functions (the demo
school, a revoke and a lost report, RADIUS decisions, a capture with a DNS tunnel through
`monitor run --read`, a CoA request that timed out), then the report's counts, its window's
edges, its files, and a tampered audit log, on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select, text

from service.db import transaction
from service.decisions import record_decisions
from service.models import NasClient
from service.models.coa import CoaRequest
from tests.monitor.conftest import shared

WIDE = ("--since", "2000-01-01", "--until", "2100-01-01")
T = datetime(2026, 11, 18, 10, 0, tzinfo=UTC)  # a Wednesday, GMT


def _decision(at: datetime, mac: str, access: str, reason: str) -> tuple:
    vlan = {"full": 10, "registration": 99}.get(access)
    return (at.timestamp(), "westgate", "demo-controller", "127.0.0.1", mac, None, None,
            access, vlan, reason, "matrix", None, 120)  # fmt: skip


def _week(westgate, session_factory, run_cli) -> None:
    run_cli("device", "revoke", westgate.pupil_phone, "--reason", "phone in class")
    run_cli("device", "lost", westgate.school_laptop, "--reported-by", "Jo Smith")
    run_cli(
        "monitor", "run", "--read", str(shared("ndpi/dns-tunnel-iodine.pcap")),
        "--site", "westgate", "--quiet",
    )  # fmt: skip
    with transaction(session_factory) as session:
        record_decisions(
            session=session,
            rows=[
                _decision(T, westgate.shared_ipad, "full", "school device"),
                _decision(T, westgate.shared_ipad, "full", "school device"),
                _decision(T, westgate.pupil_phone, "none", "device revoked"),
                _decision(T, westgate.unknown, "registration", "unknown device"),
            ],
        )
        nas = session.scalar(select(NasClient).where(NasClient.name == "demo-controller"))
        session.add(
            CoaRequest(
                mac=westgate.pupil_phone, nas_id=nas.id, nas_ip="127.0.0.1", kind="disconnect",
                state="timeout", reason="device revoked", attempts=3,
            )
        )  # fmt: skip


def test_the_weeks_counts_are_what_was_made(
    westgate, session_factory, run_cli, tmp_path: Path
) -> None:
    _week(westgate, session_factory, run_cli)
    report = json.loads(run_cli("report", "weekly", *WIDE, "--json").stdout)
    assert report["audit"]["ok"] is True
    assert report["audit"]["entries"] > 0
    (site,) = report["sites"]
    it, sg, dpo = site["it_lead"], site["safeguarding"], site["dpo"]
    assert it["decisions"]["total"] == 4
    assert it["decisions"]["by_access"] == {"full": 2, "none": 1, "registration": 1}
    assert it["decisions"]["by_nas"] == {"demo-controller": 4}
    assert it["decisions"]["top_refusal_reasons"] == [{"name": "device revoked", "count": 1}]
    assert it["registration_network_devices"] == 1
    # The demo adds 5 devices and approves the staff phone; then one revoke, one lost.
    assert it["devices"] == {"added": 5, "approved": 1, "revoked": 1, "lost": 1, "exited": 0}
    assert it["coa"] == {"timeout": 1}
    assert it["unanswered_nas"] == [{"name": "demo-controller", "count": 1}]
    assert it["silent_nas"] == []
    assert sg["alerts"]["total"] == 1
    assert sg["alerts"]["by_kind"] == {"dns-tunnel": 1}
    assert sg["alerts"]["by_category"] == {"bypass": 1}
    assert sg["alerts"]["top_devices"] == [{"name": "10.0.2.30", "count": 1}]
    assert sg["incidents"] == {"total": 1, "by_kind": {"lost": 1}}
    assert sg["visitor_aua_signatures"] == 1
    assert dpo["lost_device_reports"] == 1

    page = run_cli("report", "weekly", *WIDE).stdout
    assert "audit chain: verified" in page
    assert "RADIUS decisions: 4" in page
    assert "by kind: dns-tunnel 1" in page
    assert "lost or stolen device reports: 1" in page

    # --output-dir: the report and that week's exports (2010's, with the capture's alert).
    out = tmp_path / "reports"
    out.mkdir()
    run_cli(
        "report",
        "weekly",
        "--since",
        "2010-08-16",
        "--until",
        "2010-08-23",
        "--output-dir",
        str(out),
    )
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "alerts-all-2010-08-16.csv",
        "coa-all-2010-08-16.csv",
        "incidents-all-2010-08-16.csv",
        "report-all-2010-08-16.txt",
    ]
    with (out / "alerts-all-2010-08-16.csv").open() as handle:
        (alert,) = list(csv.DictReader(handle))
    assert alert["kind"] == "dns-tunnel"
    # The week's exports only: this week's lost laptop and CoA are not in 2010's files.
    assert (out / "incidents-all-2010-08-16.csv").read_text() == ""
    assert "alerts: 1" in (out / "report-all-2010-08-16.txt").read_text()


def test_the_window_is_half_open_in_the_sites_time(westgate, session_factory, run_cli) -> None:
    just_before = datetime(2026, 11, 16, 23, 59, 59, tzinfo=UTC)
    with transaction(session_factory) as session:
        record_decisions(
            session=session,
            rows=[
                _decision(just_before, westgate.shared_ipad, "full", "school device"),
                _decision(T, westgate.shared_ipad, "full", "school device"),
                _decision(datetime(2026, 11, 24, tzinfo=UTC), westgate.shared_ipad, "full", "x"),
            ],
        )

    def decisions(*window: str) -> int:
        report = json.loads(
            run_cli("report", "weekly", "--site", "westgate", *window, "--json").stdout
        )
        return report["sites"][0]["it_lead"]["decisions"]["total"]

    # 2026-11-17 00:00 GMT to 2026-11-24 00:00 (not included): only the Wednesday's.
    assert decisions("--since", "2026-11-17") == 1
    assert decisions("--until", "2026-11-24") == 1
    assert decisions("--since", "2026-11-16T23:59:59") == 2
    empty = run_cli("report", "weekly", "--since", "2027-01-04").stdout
    assert "Nothing was recorded at this site in this period." in empty


def test_a_tampered_audit_log_fails_the_run_and_heads_the_report(
    westgate, session_factory, run_cli, tmp_path: Path
) -> None:
    with transaction(session_factory) as session:
        session.execute(text("UPDATE audit_log SET actor = 'someone else' WHERE id = 2"))
    page = tmp_path / "week.txt"
    result = run_cli("report", "weekly", "-o", str(page), check=False)
    assert result.returncode == 3
    written = page.read_text()
    assert written.startswith("!! AUDIT LOG BROKEN: entry 2: entry was altered")
    assert "audit chain: DOES NOT VERIFY" in written
    as_json = run_cli("report", "weekly", "--json", check=False)
    assert as_json.returncode == 3
    assert json.loads(as_json.stdout)["audit"]["first_bad_id"] == 2


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # no database question
def test_bad_input_is_one_line_and_writes_nothing(westgate, run_cli, tmp_path: Path) -> None:
    page = tmp_path / "week.txt"
    for args, message in (
        (("--since", "last monday"), "error: --since: not an ISO 8601 date or date-time"),
        (("--since", "2026-11-20", "--until", "2026-11-13"), "error: --since must be before"),
        (("--site", "eastgate"), "error: no site 'eastgate'"),
        (("--output-dir", str(tmp_path / "absent")), "is not a directory"),
    ):
        output = () if "--output-dir" in args else ("-o", str(page))
        result = run_cli("report", "weekly", *args, *output, check=False)
        assert result.returncode == 1, result
        assert message in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert not page.exists()
    assert list(tmp_path.glob("*.part")) == []
