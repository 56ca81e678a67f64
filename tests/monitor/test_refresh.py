"""A monitor runs for weeks: devices registered and RADIUS sessions started after it started
are seen on its flows without a restart (issue 14, AttributionFeed in monitor/attribution.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from service.accounting import AcctRecord, AcctStatus, apply_accounting
from service.db import transaction
from service.devices import add_device
from service.models import Device, NasClient, Person
from service.models.traffic import TrafficFlow
from service.monitor.attribution import AttributionFeed
from tests.monitor import traffic as t
from tests.monitor.test_live import _capturing, replay, veth  # noqa: F401  (the fixture)

PHONE = "02:00:00:00:51:01"
PHONE_IP = "10.20.0.7"
WEB = "93.184.216.34"


def _account(session_factory, status: AcctStatus, at: datetime, ip: str = PHONE_IP) -> None:
    """What the RADIUS server's batch writer does with an Accounting-Request (radius/writer.py):
    apply it in a transaction of its own."""
    with transaction(session_factory) as session:
        nas_id = session.scalar(select(NasClient.id))
        assert nas_id is not None
        record = AcctRecord(
            status=status,
            nas_id=nas_id,
            nas_ip="127.0.0.1",
            site_code="westgate",
            at=at,
            acct_session_id="phone-1",
            mac=PHONE,
            framed_ip=ip,
        )
        apply_accounting(session=session, records=[record])


def _add_phone(session_factory) -> tuple[int, int]:
    with transaction(session_factory) as session:
        device = add_device(
            session,
            mac=PHONE,
            site_code="westgate",
            device_class="school_single",
            owner="jsmith",
            actor="test",
        )
        assert device.owner_id is not None
        return device.id, device.owner_id


def test_a_refresh_reads_new_devices_and_sessions_and_their_stop(westgate, session_factory):
    feed = AttributionFeed(site_code="westgate", stale_after=timedelta(hours=4))
    with session_factory() as session:
        who = feed.load(session).who
    now = datetime.now(UTC).replace(microsecond=0)
    assert who(PHONE_IP, now.timestamp()) == (None, None, None, None)

    device_id, person_id = _add_phone(session_factory)
    # Started ten minutes ago, arriving only now (spooled through an outage): `changed_at`,
    # not the record's own time, says it is new.
    _account(session_factory, AcctStatus.START, now - timedelta(minutes=10))
    with session_factory() as session:
        assert feed.refresh(session) >= 2  # the device and the session
    assert who(PHONE_IP, now.timestamp()) == (PHONE, "radius", device_id, person_id)

    _account(session_factory, AcctStatus.STOP, now)
    with session_factory() as session:
        feed.refresh(session)
        # Nothing changed since: only the accounting overlap is read again.
        assert feed.refresh(session) <= 1
    assert who(PHONE_IP, now.timestamp() - 60)[2] == device_id
    assert who(PHONE_IP, now.timestamp() + 1) == (None, None, None, None)
    assert feed.full_device_loads == 0

    with transaction(session_factory) as session:
        phone = session.scalar(select(Device).where(Device.mac == PHONE))
        session.delete(phone)
    with session_factory() as session:
        feed.refresh(session)
    assert who(PHONE_IP, now.timestamp() - 60) == (PHONE, "radius", None, None)


@pytest.mark.netns
@pytest.mark.slow
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_running_monitor_names_a_phone_registered_after_it_started(
    veth,  # noqa: F811
    westgate,
    session_factory,
    run_cli,
    tmp_path,
):
    ns, outside, inside = veth
    env = {
        **os.environ,
        "SCHOOLGATE_DATABASE_URL": westgate.db_url,
        "SCHOOLGATE_MONITOR_REFRESH_SECONDS": "0.3",
    }
    command = [sys.executable, "-m", "service", "monitor", "run", "--interface", outside]
    monitor = subprocess.Popen(
        [*command, "--site", "westgate", "--duration", "60", "--quiet"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _capturing(monitor)
        # The phone joins this morning: registered at the desk, then its RADIUS session.
        run_cli(
            "device",
            "add",
            PHONE,
            "--site",
            "westgate",
            "--class",
            "school_single",
            "--owner",
            "jsmith",
        )
        _account(session_factory, AcctStatus.START, datetime.now(UTC))
        time.sleep(1.5)  # a few refreshes (every 0.3 s here, 30 s by default)
        packets = t.tcp_session(
            PHONE_IP, 41000, WEB, 80, time.time(), b"GET / HTTP/1.1\r\n\r\n", mac=PHONE
        )
        capture = t.write(tmp_path / "phone.pcap", packets)
        replay(ns, inside, capture)
        time.sleep(1.0)
        monitor.send_signal(signal.SIGTERM)
        _out, err = monitor.communicate(timeout=60)
    finally:
        if monitor.poll() is None:
            monitor.kill()
    assert monitor.returncode == 0, err
    with session_factory() as session:
        jo = session.scalar(select(Person.id).where(Person.username == "jsmith"))
        phone = session.scalar(select(Device.id).where(Device.mac == PHONE))
        flows = session.execute(
            select(TrafficFlow.mac, TrafficFlow.device_id, TrafficFlow.person_id).where(
                TrafficFlow.orig_ip == PHONE_IP
            )
        ).all()
    assert flows == [(PHONE, phone, jo)]
