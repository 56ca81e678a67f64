"""`schoolgate monitor run --read` on a school's capture, then `export traffic|dns|alerts`,
with the real command against SQLite and PostgreSQL; retention on both."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select, text

from service.config import load_settings
from service.db import transaction
from service.models import AccountingSession
from service.models.traffic import TrafficFlow
from service.monitor.attribution import Attributor
from service.monitor.exports import purge
from tests.monitor import traffic as t

REPO_CATEGORIES = str(
    __import__("pathlib").Path(__file__).resolve().parents[2] / "deploy" / "categories"
)


def _ts(offset: float) -> datetime:
    return datetime.fromtimestamp(t.T0 + offset, UTC)


def _accounting(session_factory) -> None:
    """The visitor's phone has the IP now; an hour earlier a different device had it."""
    with transaction(session_factory) as session:
        for mac, start, stop, sid in (
            ("02:00:00:00:77:77", _ts(-3600), _ts(-1800), "old"),
            (t.VISITOR_MAC, _ts(-60), None, "now"),
        ):
            session.add(
                AccountingSession(
                    nas_ip="127.0.0.1",
                    site_code="westgate",
                    mac=mac,
                    framed_ip=t.VISITOR_IP,
                    acct_session_id=sid,
                    started_at=start,
                    updated_at=start,
                    stopped_at=stop,
                )
            )


def test_monitor_run_shows_people_sites_and_bittorrent_then_exports(
    westgate, session_factory, run_cli, tmp_path
) -> None:
    _accounting(session_factory)
    capture = t.write(tmp_path / "mirror.pcap", t.school_day())
    result = run_cli(
        "monitor",
        "run",
        "--read",
        str(capture),
        "--site",
        "westgate",
        "--categories",
        REPO_CATEGORIES,
    )
    out = result.stdout
    assert "Jo Smith — school laptop (J. Smith) (school_single) — 02:00:00:00:10:01" in out
    assert "bbc.co.uk" in out
    assert "1m00s" in out
    assert "Sam Visitor — visitor's phone (signed AUA) (visitor_owned)" in out
    assert "BITTORRENT: 5 flow(s)" in out
    assert "ALERT [weekly] gambling" in out
    assert "2026-11-18 11:06 GMT" in out  # times in the site's zone

    jsonl = run_cli("export", "traffic", "--format", "jsonl", "--site", "westgate").stdout
    flows = [json.loads(line) for line in jsonl.splitlines()]
    bt = [f for f in flows if f["p2p"] == "bittorrent-handshake"]
    assert len(bt) == 1
    assert bt[0]["person"] == "Sam Visitor"
    assert bt[0]["mac_source"] == "radius"
    assert bt[0]["device_class"] == "visitor_owned"
    bbc = [f for f in flows if f["server_name"] == "www.bbc.co.uk"]
    assert {f["person"] for f in bbc} == {"Jo Smith"}

    dns = list(csv.DictReader(io.StringIO(run_cli("export", "dns").stdout)))
    assert {r["query"] for r in dns} == {"www.bbc.co.uk", "bet365.com"}
    assert dns[0]["answers"] == "edge.www.bbc.co.uk,151.101.0.81"
    assert dns[0]["person"] == "Jo Smith"

    out_file = tmp_path / "alerts.csv"
    run_cli("export", "alerts", "-o", str(out_file))
    alerts = list(csv.DictReader(out_file.open()))
    assert {(a["kind"], a["category"], a["severity"], a["person"]) for a in alerts} == {
        ("category", "gambling", "weekly", "Jo Smith"),
        ("p2p", "peer-to-peer", "weekly", "Sam Visitor"),
    }
    visits = [
        json.loads(x) for x in run_cli("export", "visits", "--format", "jsonl").stdout.splitlines()
    ]
    bbc_visit = next(v for v in visits if v["server_name"] == "bbc.co.uk")
    assert bbc_visit["flows"] == 2
    assert bbc_visit["person"] == "Jo Smith"
    dhcp = list(csv.DictReader(io.StringIO(run_cli("export", "dhcp").stdout)))
    assert any(r["msg_type"] == "ACK" and r["ip"] == t.LAPTOP_IP for r in dhcp)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # no database question in it
def test_monitor_run_bad_arguments_are_one_line_errors(westgate, run_cli, tmp_path) -> None:
    both = run_cli("monitor", "run", check=False)
    assert both.returncode == 1
    assert both.stderr.startswith("error: give exactly one")
    missing = run_cli("monitor", "run", "--read", str(tmp_path / "none.pcap"), check=False)
    assert missing.returncode == 1
    assert "no capture file" in missing.stderr
    assert "Traceback" not in missing.stderr
    junk = tmp_path / "junk.pcap"
    junk.write_bytes(b"not a capture at all, just text")
    bad = run_cli("monitor", "run", "--read", str(junk), check=False)
    assert bad.returncode == 1
    assert "not a pcap" in bad.stderr
    assert "Traceback" not in bad.stderr
    # The writer process finds these; the capture stops and nothing is written.
    day = t.write(tmp_path / "day.pcap", t.school_day())
    nowhere = run_cli("monitor", "run", "--read", str(day), "--site", "nowhere", check=False)
    assert nowhere.returncode == 1
    assert nowhere.stderr.strip() == "error: no site 'nowhere'"
    empty = tmp_path / "empty.db"
    unmigrated = run_cli(
        "--database-url",
        f"sqlite:///{empty}",
        "monitor",
        "run",
        "--read",
        str(day),
        check=False,
    )
    assert unmigrated.returncode == 1
    assert unmigrated.stderr.startswith("error: database: no such table")
    assert "schoolgate db upgrade" in unmigrated.stderr
    assert "Traceback" not in nowhere.stderr + unmigrated.stderr
    counts = run_cli("export", "traffic", "--format", "jsonl").stdout
    assert counts.strip() == ""


def test_ip_reuse_is_attributed_by_time() -> None:
    attributor = Attributor()
    attributor.learn("10.0.0.5", "aa:aa:aa:aa:aa:aa", 100.0, "radius", until=200.0)
    attributor.learn("10.0.0.5", "bb:bb:bb:bb:bb:bb", 300.0, "dhcp", until=400.0)
    attributor.learn("10.0.0.5", "cc:cc:cc:cc:cc:cc", 350.0, "arp")
    assert attributor.who("10.0.0.5", 150.0)[:2] == ("aa:aa:aa:aa:aa:aa", "radius")
    assert attributor.who("10.0.0.5", 250.0)[0] is None
    assert attributor.who("10.0.0.5", 320.0)[:2] == ("bb:bb:bb:bb:bb:bb", "dhcp")
    assert attributor.who("10.0.0.5", 360.0)[:2] == (
        "bb:bb:bb:bb:bb:bb",
        "dhcp",
    )  # lease wins over ARP
    assert attributor.who("10.0.0.5", 500.0)[:2] == ("cc:cc:cc:cc:cc:cc", "arp")


def test_arp_inside_a_lease_adds_no_bindings() -> None:
    """A host ARPs every minute or so: a day of that must not grow the table per ARP."""
    attributor = Attributor()
    assert attributor.learn("10.0.0.7", "bb:bb:bb:bb:bb:bb", 0.0, "dhcp", until=86400.0)
    added = [
        attributor.learn("10.0.0.7", "bb:bb:bb:bb:bb:bb", float(t), "arp")
        for t in range(60, 86400, 60)
    ]
    assert not any(added)
    assert len(attributor.bindings["10.0.0.7"]) == 1
    # after the lease ends, ARP is the evidence again, once
    assert attributor.learn("10.0.0.7", "bb:bb:bb:bb:bb:bb", 90000.0, "arp")
    assert not attributor.learn("10.0.0.7", "bb:bb:bb:bb:bb:bb", 90060.0, "arp")
    assert attributor.who("10.0.0.7", 90030.0)[:2] == ("bb:bb:bb:bb:bb:bb", "arp")


def test_a_renewed_lease_stays_attributed_to_its_new_end() -> None:
    """A client renews halfway through its lease, and again halfway through the renewal: the
    address is that device's throughout, in one binding, not gone at the first lease's end."""
    attributor = Attributor()
    mac = "bb:bb:bb:bb:bb:bb"
    assert attributor.learn("10.0.0.8", mac, 0.0, "dhcp", until=3600.0)
    assert attributor.learn("10.0.0.8", mac, 1800.0, "dhcp", until=5400.0)
    assert attributor.learn("10.0.0.8", mac, 3600.0, "dhcp", until=7200.0)
    assert not attributor.learn("10.0.0.8", mac, 3700.0, "dhcp", until=7000.0)  # no longer
    for ts in (10.0, 3599.0, 3601.0, 5000.0, 7199.0):
        assert attributor.who("10.0.0.8", ts)[:2] == (mac, "dhcp"), ts
    assert attributor.who("10.0.0.8", 7201.0)[0] is None
    assert len(attributor.bindings["10.0.0.8"]) == 1
    # A different device given the address after it: its own binding.
    assert attributor.learn("10.0.0.8", "cc:cc:cc:cc:cc:cc", 8000.0, "dhcp", until=9000.0)
    assert attributor.who("10.0.0.8", 8500.0)[0] == "cc:cc:cc:cc:cc:cc"


def test_purge_removes_traffic_past_retention(
    westgate, session_factory, run_cli, tmp_path, db_url
) -> None:
    capture = t.write(tmp_path / "mirror.pcap", t.school_day())
    run_cli("monitor", "run", "--read", str(capture), "--quiet")
    settings = load_settings(database_url=db_url, retention_days={"flows": 30})
    with transaction(session_factory) as session:
        total = session.scalar(select(func.count()).select_from(TrafficFlow))
        assert total
        assert purge(session, settings, _ts(29 * 86400))["traffic_flows"] == 0
    with transaction(session_factory) as session:
        removed = purge(session, settings, _ts(32 * 86400))
        assert removed["traffic_flows"] == total
        assert session.scalar(select(func.count()).select_from(TrafficFlow)) == 0
        if session.get_bind().dialect.name == "postgresql":
            parts = (
                session.execute(
                    text(
                        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                        "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'traffic_flows'"
                    )
                )
                .scalars()
                .all()
            )
            assert "traffic_flows_20261118" not in parts  # the day's partition was dropped
            assert "traffic_flows_default" in parts


def test_postgres_rows_land_in_daily_partitions(
    westgate, session_factory, run_cli, tmp_path
) -> None:
    capture = t.write(tmp_path / "mirror.pcap", t.school_day())
    run_cli("monitor", "run", "--read", str(capture), "--quiet")
    with session_factory() as session:
        if session.get_bind().dialect.name != "postgresql":
            assert session.scalar(select(func.count()).select_from(TrafficFlow))
            return
        count = session.execute(
            text("SELECT count(*) FROM traffic_parts.traffic_flows_20261118")
        ).scalar_one()
        default = session.execute(
            text("SELECT count(*) FROM traffic_parts.traffic_flows_default")
        ).scalar_one()
        assert count > 0
        assert default == 0
