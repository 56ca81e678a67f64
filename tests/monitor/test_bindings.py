"""`export bindings` (who held an IP when) and stale accounting sessions (issue 14): a NAS that
rebooted never sent the Stop, and its session must not pin the IP to the old device once a
newer DHCP lease says otherwise, nor for ever."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from radius import codec
from radius.accounting import parse_accounting
from service.accounting import apply_accounting
from service.db import transaction
from service.models import NasClient
from service.monitor.attribution import Attributor
from tests.monitor import traffic as t

OLD_MAC = "02:00:00:00:77:77"  # a device that left when the NAS rebooted
SHARED_IP = "10.0.0.23"
WEB = "93.184.216.34"


def _at(offset: float) -> datetime:
    return datetime.fromtimestamp(t.T0 + offset, UTC)


def _local(offset: float) -> str:
    """The time as a user types it: site-local, no offset (Europe/London is UTC in November)."""
    return _at(offset).strftime("%Y-%m-%dT%H:%M:%S")


def _account(session_factory, status: int, session_id: str, mac: str, ip: str, at: datetime):
    """An Accounting-Request through the RADIUS server's own path: encoded, decoded, parsed and
    applied as its batch writer does (radius/writer.py), received at `at`."""
    raw = codec.encode_request(
        codec.ACCOUNTING_REQUEST,
        1,
        b"".join(
            (
                codec.attr_int(codec.ACCT_STATUS_TYPE, status),
                codec.attr_text(codec.ACCT_SESSION_ID, session_id),
                codec.attr_text(codec.CALLING_STATION_ID, mac.replace(":", "-")),
                codec.attr_ipv4(codec.FRAMED_IP_ADDRESS, ip),
            )
        ),
        b"s",
    )
    with transaction(session_factory) as session:
        nas_id = session.scalar(select(NasClient.id))
        assert nas_id is not None
        record = parse_accounting(
            codec.decode(raw),
            nas_id=nas_id,
            nas_ip="127.0.0.1",
            site_code="westgate",
            policy=None,
            now=at,
        )
        apply_accounting(session=session, records=[record])


def _get(port: int, offset: float, ip: str = SHARED_IP, mac: str = t.VISITOR_MAC):
    return t.tcp_session(ip, port, WEB, 80, t.T0 + offset, b"GET / HTTP/1.1\r\n\r\n", mac=mac)


def test_who_had_the_ip_at_a_moment_and_a_stale_session_loses_it(
    westgate, session_factory, run_cli, tmp_path
) -> None:
    # 10:56: the old device's session starts; the NAS reboots without Accounting-On, so
    # neither a Stop nor an interim ever comes. 11:06:40 the visitor's phone leases the IP.
    _account(session_factory, codec.ACCT_START, "old-1", OLD_MAC, SHARED_IP, _at(-600))
    pkts = _get(40000, -300, mac=OLD_MAC)
    pkts += t.dhcp_dora(t.VISITOR_MAC, SHARED_IP, "visitor-phone", t.T0, lease=3600)
    pkts += _get(40001, 800)
    capture = t.write(tmp_path / "hall.pcap", pkts)
    run_cli("monitor", "run", "--read", str(capture), "--site", "westgate", "--quiet")

    flows = {
        f["orig_port"]: f
        for f in map(
            json.loads, run_cli("export", "traffic", "--format", "jsonl").stdout.splitlines()
        )
    }
    assert (flows[40000]["mac"], flows[40000]["mac_source"]) == (OLD_MAC, "radius")
    assert (flows[40001]["mac"], flows[40001]["mac_source"], flows[40001]["person"]) == (
        t.VISITOR_MAC,
        "dhcp",
        "Sam Visitor",
    )

    def who_had(at: str) -> list[dict[str, str]]:
        out = run_cli(
            "export", "bindings", "--ip", SHARED_IP, "--at", at, "--format", "jsonl", "--utc"
        ).stdout
        return [json.loads(line) for line in out.splitlines()]

    now = who_had(_local(800))
    assert [(b["mac"], b["source"], b["person"], b["device_class"]) for b in now] == [
        (t.VISITOR_MAC, "dhcp", "Sam Visitor", "visitor_owned")
    ]
    assert (now[0]["start"], now[0]["end"], now[0]["end_reason"], now[0]["hostname"]) == (
        _at(0.3).isoformat(timespec="seconds"),
        _at(3600.3).isoformat(timespec="seconds"),
        "lease-expired",
        "visitor-phone",
    )
    before = who_had(_local(-300))
    assert [(b["mac"], b["source"], b["end_reason"]) for b in before] == [
        (OLD_MAC, "radius", "replaced")
    ]
    assert before[0]["end"] == now[0]["start"]

    # The whole history of the IP, on the terminal.
    table = run_cli("export", "bindings", "--ip", SHARED_IP, "--format", "table").stdout
    for text in (OLD_MAC, t.VISITOR_MAC, "replaced", "lease-expired"):
        assert text in table
    # By MAC, over a window.
    rows = run_cli(
        "export",
        "bindings",
        "--mac",
        OLD_MAC.upper(),
        "--since",
        _local(-3600),
        "--until",
        _local(3600),
        "--format",
        "jsonl",
    ).stdout.splitlines()
    assert [json.loads(r)["mac"] for r in rows] == [OLD_MAC]


def test_who_leaves_out_stale_and_overtaken_sessions(westgate, session_factory, run_cli, tmp_path):
    now = datetime.now(UTC)
    _account(session_factory, codec.ACCT_START, "a", westgate.school_laptop, "10.0.0.31", now)
    # No update for five hours: the NAS rebooted (default accounting_stale_after: 4 h).
    stale = now - timedelta(hours=5)
    _account(session_factory, codec.ACCT_START, "b", westgate.shared_ipad, "10.0.0.32", stale)
    # Open and recent, but the monitor has since seen the IP leased to another device.
    _account(session_factory, codec.ACCT_START, "c", OLD_MAC, "10.0.0.33", now - timedelta(1 / 24))
    lease = t.dhcp_dora(t.VISITOR_MAC, "10.0.0.33", "phone", now.timestamp() - 60)
    run_cli("monitor", "run", "--read", str(t.write(tmp_path / "l.pcap", lease)), "--quiet")

    present = json.loads(run_cli("who", "--json").stdout)
    assert [p["mac"] for p in present] == [westgate.school_laptop]
    # A longer allowance brings the quiet session back (the overtaken one stays out).
    longer = run_cli("who", "--json", env={"SCHOOLGATE_ACCOUNTING_STALE_AFTER": "21600"}).stdout
    assert sorted(p["mac"] for p in json.loads(longer)) == sorted(
        [westgate.school_laptop, westgate.shared_ipad]
    )


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # no database question in it
def test_bad_bindings_arguments_are_one_line_errors(westgate, run_cli) -> None:
    for args, message in (
        (("--ip", "10.0.0.300"), "error: not an IP address: '10.0.0.300'"),
        (("--mac", "zz"), "error: not a MAC address: 'zz'"),
        (("--at", "yesterday"), "error: not an ISO 8601 date-time: 'yesterday'"),
    ):
        result = run_cli("export", "bindings", *args, check=False)
        assert result.returncode == 1, args
        assert result.stderr.startswith(message), result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    wrong = run_cli("export", "traffic", "--ip", "10.0.0.1", check=False)
    assert wrong.stderr.startswith("error: --ip, --mac and --at are for `export bindings`")
    nothing = run_cli("export", "bindings", "--ip", "10.9.9.9", "--format", "table").stdout
    assert "no bindings found" in nothing


def test_a_newer_wire_binding_overtakes_a_session_only_after_its_last_update() -> None:
    attributor = Attributor()
    # A session started at 0, last interim at 1000, expiring (stale) at 1000 + 4 h.
    attributor.learn("10.0.0.5", OLD_MAC, 0.0, "radius", until=15400.0, confirmed=1000.0)
    # Another MAC's ARP at 500, before the interim that confirmed the session: RADIUS holds.
    attributor.learn("10.0.0.5", "bb:bb:bb:bb:bb:bb", 500.0, "arp")
    assert attributor.who("10.0.0.5", 800.0)[:2] == (OLD_MAC, "radius")
    # A DHCP lease to a third MAC after the last interim: it wins from then on.
    attributor.learn("10.0.0.5", "cc:cc:cc:cc:cc:cc", 2000.0, "dhcp", until=5600.0)
    assert attributor.who("10.0.0.5", 1999.0)[:2] == (OLD_MAC, "radius")
    assert attributor.who("10.0.0.5", 3000.0)[:2] == ("cc:cc:cc:cc:cc:cc", "dhcp")
    # Past the session's stale end, with no lease: the ARP binding (no end) is what is left.
    assert attributor.who("10.0.0.5", 16000.0)[:2] == ("bb:bb:bb:bb:bb:bb", "arp")
