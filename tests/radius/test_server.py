"""`schoolgate radius serve` over real UDP, with pyrad's client, on SQLite and PostgreSQL.

The Westgate school of the `westgate` fixture: a school laptop and a class iPad get full
access (VLAN 10), a visitor's phone with a signed AUA internet (VLAN 30), a pupil's phone and
a member of staff's own phone are refused (Westgate gives them no network access), and a
device nobody registered lands in registration (VLAN 99).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
from pyrad.packet import AccessAccept, AccessReject, AccountingResponse
from sqlalchemy import select

from radius import codec
from service.db import make_engine, make_session_factory
from service.models import AccountingSession, DecisionRecord
from tests.radius.conftest import (
    SECRET,
    Timeout,
    acct_request,
    exchange,
    mab_request,
    pap_request,
    start_server,
    status_server,
    vlan_of,
)


def rows(db_url: str, model, **where):
    engine = make_engine(db_url)
    try:
        with make_session_factory(engine)() as session:
            query = select(model)
            for name, value in where.items():
                query = query.where(getattr(model, name) == value)
            return list(session.scalars(query))
    finally:
        engine.dispose()


def wait_for(predicate, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


@pytest.mark.parametrize(
    ("device", "style", "code", "vlan"),
    [
        ("school_laptop", "bare", AccessAccept, "10"),
        ("shared_ipad", "hyphen-upper", AccessAccept, "10"),
        ("visitor_phone", "colon", AccessAccept, "30"),
        ("pupil_phone", "dotted", AccessReject, None),
        ("staff_phone", "hyphen", AccessReject, None),
        ("unknown", "bare", AccessAccept, "99"),
    ],
)
def test_mab_gives_each_class_its_westgate_vlan(radius_server, westgate, device, style, code, vlan):
    client = radius_server.client()
    mac = getattr(westgate, device)
    reply = client.SendPacket(mab_request(client, mac, style=style))
    assert reply.code == code
    assert vlan_of(reply) == vlan
    if code == AccessAccept:
        assert reply["Tunnel-Type"] == ["VLAN"]
        assert reply["Tunnel-Medium-Type"] == ["IEEE-802"]
        assert reply["Filter-Id"] == [{"10": "full", "30": "internet", "99": "registration"}[vlan]]
        assert reply["Session-Timeout"][0] > 0
    else:
        assert "no network access" in reply["Reply-Message"][0]
    # Message-Authenticator is the first attribute of every reply (BlastRADIUS).
    assert next(iter(reply.keys())) == "Message-Authenticator"


def test_pap_right_and_wrong_password_and_accounting_and_logs(radius_server, westgate, run_cli):
    client = radius_server.client()
    new_phone = "02:00:00:00:55:01"
    # Jo Smith's own password, from a phone schoolgate has never seen: decided as her own
    # staff-owned device (still pending), which Westgate's policy keeps off the network; the
    # refusal says why, unlike a wrong password.
    reply = client.SendPacket(pap_request(client, "jsmith", westgate.staff_password, new_phone))
    assert reply.code == AccessReject
    assert reply["Reply-Message"][0].startswith("A member of staff's own device")
    # Answered again from the success cache (argon2 is slow by design); user names are
    # matched without regard to case.
    reply = client.SendPacket(pap_request(client, "JSmith", westgate.staff_password, new_phone))
    assert reply["Reply-Message"][0].startswith("A member of staff's own device")
    reply = client.SendPacket(pap_request(client, "jsmith", "not-the-password", new_phone))
    assert reply.code == AccessReject
    assert reply["Reply-Message"] == ["Wrong username or password."]
    reply = client.SendPacket(pap_request(client, "nobody", "whatever-password", new_phone))
    assert reply.code == AccessReject

    # Accounting: start, interim, stop of one session gives one row with its address.
    laptop = westgate.school_laptop
    for status, extra in (
        ("Start", {"Framed-IP-Address": "10.10.0.23"}),
        ("Interim-Update", {"Acct-Session-Time": 60, "Acct-Input-Octets": 1000}),
        (
            "Stop",
            {
                "Acct-Session-Time": 125,
                "Acct-Input-Octets": 5000,
                "Acct-Output-Octets": 7000,
                "Acct-Input-Gigawords": 1,
                "Acct-Terminate-Cause": "User-Request",
            },
        ),
    ):
        reply = client.SendPacket(acct_request(client, status, "sess-0001", laptop, **extra))
        assert reply.code == AccountingResponse
        # Answered only once stored: the row is there as soon as the answer is.
        stored = rows(westgate.db_url, AccountingSession, acct_session_id="sess-0001")
        assert len(stored) == 1
    (session,) = stored
    assert session.mac == laptop
    assert session.framed_ip == "10.10.0.23"
    assert session.stopped_at is not None
    assert session.session_time == 125
    assert session.input_octets == (1 << 32) + 5000
    assert session.output_octets == 7000
    assert session.terminate_cause == "User-Request"
    assert session.location == "staffroom"
    assert session.site_code == "westgate"

    # The decision log (written in batches) and the IT admin's exports.
    logged = wait_for(lambda: len(rows(westgate.db_url, DecisionRecord)) >= 4)
    assert logged
    decisions = rows(westgate.db_url, DecisionRecord)
    assert {d.rule for d in decisions} >= {"access.staff_owned", "pap.failed"}
    assert all(d.micros is not None and d.nas_name == "demo-controller" for d in decisions)
    out = run_cli("export", "decisions", "--format", "csv").stdout
    assert "pap.failed" in out
    assert "jsmith" in out
    out = run_cli("export", "sessions", "--format", "jsonl").stdout
    assert "10.10.0.23" in out
    assert "sess-0001" in out


def test_status_server_duplicates_and_drops(radius_server, westgate):
    client = radius_server.client()
    assert status_server(client).code == AccessAccept
    assert status_server(client, accounting=True).code == AccountingResponse

    # A retransmission (same source port, identifier and authenticator) gets the cached answer
    # and makes no second decision.
    attrs = codec.attr_text(codec.USER_NAME, "020000001001") + codec.attr_text(
        codec.CALLING_STATION_ID, "02-00-00-00-10-01"
    )
    packet = codec.encode_request(codec.ACCESS_REQUEST, 42, attrs, SECRET)
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(2)
        sock.sendto(packet, ("127.0.0.1", radius_server.auth_port))
        first = sock.recv(4096)
        sock.sendto(packet, ("127.0.0.1", radius_server.auth_port))
        second = sock.recv(4096)
    assert first == second
    assert codec.decode(first).code == codec.ACCESS_ACCEPT

    acct = codec.encode_request(
        codec.ACCOUNTING_REQUEST,
        7,
        codec.attr_int(codec.ACCT_STATUS_TYPE, codec.ACCT_START)
        + codec.attr_text(codec.ACCT_SESSION_ID, "dup-1")
        + codec.attr_text(codec.CALLING_STATION_ID, "02-00-00-00-10-02"),
        SECRET,
    )
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(2)
        sock.sendto(acct, ("127.0.0.1", radius_server.acct_port))
        first = sock.recv(4096)
        sock.sendto(acct, ("127.0.0.1", radius_server.acct_port))
        second = sock.recv(4096)
    assert first == second
    reply = codec.decode(first)
    assert codec.verify_response_authenticator(reply, codec.decode(acct).authenticator, SECRET)

    # Dropped, never answered: an unknown client (127.0.0.2 is not a NAS), a wrong secret
    # (bad Message-Authenticator / Request Authenticator), no Message-Authenticator while the
    # NAS requires one, garbage, and a code the port does not take.
    good = codec.encode_request(codec.ACCESS_REQUEST, 1, attrs, SECRET)
    assert exchange(good, radius_server.auth_port, source="127.0.0.2", timeout=0.5) is None
    wrong = codec.encode_request(codec.ACCESS_REQUEST, 2, attrs, b"wrong-secret")
    assert exchange(wrong, radius_server.auth_port, timeout=0.5) is None
    bare = codec.encode_request(
        codec.ACCESS_REQUEST, 3, attrs, SECRET, with_message_authenticator=False
    )
    assert exchange(bare, radius_server.auth_port, timeout=0.5) is None
    bad_acct = codec.encode_request(
        codec.ACCOUNTING_REQUEST,
        8,
        codec.attr_int(codec.ACCT_STATUS_TYPE, 1) + codec.attr_text(codec.ACCT_SESSION_ID, "x"),
        b"wrong-secret",
        with_message_authenticator=False,
    )
    assert exchange(bad_acct, radius_server.acct_port, timeout=0.5) is None
    assert exchange(b"\x01\x02\x00\x05garbage", radius_server.auth_port, timeout=0.3) is None
    assert exchange(bytes(range(200)), radius_server.acct_port, timeout=0.3) is None
    coa = codec.encode_request(codec.COA_REQUEST, 9, b"", SECRET)
    assert exchange(coa, radius_server.auth_port, timeout=0.3) is None
    with pytest.raises(Timeout):
        radius_server.client(secret=b"not-the-secret", timeout=0.5, retries=1).SendPacket(
            mab_request(radius_server.client(secret=b"not-the-secret"), westgate.school_laptop)
        )

    # The server is still up and answering, and counted every drop.
    assert status_server(client).code == AccessAccept
    log = radius_server.stop()
    assert "unknown_client=1" in log
    assert "bad_message_authenticator=2" in log
    assert "missing_message_authenticator=1" in log
    assert "bad_authenticator=1" in log
    assert "unknown_code=1" in log
    assert "duplicates=2" in log
    assert "Traceback" not in log


def test_a_device_added_with_the_cli_is_answered_within_two_seconds(
    radius_server, westgate, run_cli
):
    client = radius_server.client()
    mac = "02:00:00:00:77:01"
    assert vlan_of(client.SendPacket(mab_request(client, mac))) == "99"
    run_cli("device", "add", mac, "--site", "westgate", "--class", "school_single")
    changed = time.monotonic()
    while True:
        vlan = vlan_of(client.SendPacket(mab_request(client, mac)))
        if vlan == "10" or time.monotonic() - changed > 5:
            break
        time.sleep(0.05)
    assert vlan == "10"
    assert time.monotonic() - changed < 2.0
    # And revoked again: refused without a restart.
    run_cli("device", "revoke", mac, "--reason", "test")
    reply = wait_for(
        lambda: (r := client.SendPacket(mab_request(client, mac))).code == AccessReject and r,
        timeout=3,
    )
    assert reply
    assert "revoked" in reply["Reply-Message"][0]


def test_locations_and_vendor_profiles(radius_server, westgate, run_cli):
    run_cli(
        "nas",
        "add",
        "--site",
        "westgate",
        "--name",
        "aruba-md",
        "--address",
        "127.0.0.3/32",
        "--secret",
        "aruba-secret",
        "--vendor",
        "aruba",
    )
    run_cli(
        "nas",
        "add",
        "--site",
        "westgate",
        "--name",
        "wlc",
        "--address",
        "127.0.4.0/24",
        "--secret",
        "cisco-secret",
        "--vendor",
        "cisco",
    )
    dictionary = codec.load_dictionary()
    from pyrad.packet import Packet

    def ask(source: str, secret: bytes, **attrs: str) -> Packet:
        body = b"".join(
            codec.attr_text(code, value)
            for code, value in (
                (codec.USER_NAME, "020000003001"),
                (codec.CALLING_STATION_ID, "02-00-00-00-30-01"),
                (codec.NAS_IDENTIFIER, attrs.get("nas_id", "AP-HALL-2")),
            )
        )
        packet = codec.encode_request(codec.ACCESS_REQUEST, 5, body, secret)
        raw = wait_for(lambda: exchange(packet, radius_server.auth_port, source=source), 3)
        assert raw is not None
        reply = codec.decode(raw)
        assert codec.verify_response_authenticator(
            reply, codec.decode(packet).authenticator, secret
        )
        assert codec.verify_message_authenticator(reply, secret, codec.decode(packet).authenticator)
        return Packet(packet=raw, secret=secret, dict=dictionary)

    aruba = ask("127.0.0.3", b"aruba-secret")
    assert aruba["Aruba-User-Role"] == ["internet"]
    assert aruba["Tunnel-Private-Group-Id"] == ["30"]
    cisco = ask("127.0.4.9", b"cisco-secret")
    assert cisco["Airespace-Interface-Name"] == ["internet"]
    # Old kit that cannot send Message-Authenticator: answered only where the NAS is
    # registered with --allow-missing-message-authenticator (and still gets it first).
    run_cli(
        "nas",
        "add",
        "--site",
        "westgate",
        "--name",
        "old-switch",
        "--address",
        "127.0.0.5",
        "--secret",
        "old-secret",
        "--allow-missing-message-authenticator",
    )
    bare = codec.encode_request(
        codec.ACCESS_REQUEST,
        6,
        codec.attr_text(codec.USER_NAME, "020000001001"),
        b"old-secret",
        with_message_authenticator=False,
    )
    raw = wait_for(lambda: exchange(bare, radius_server.auth_port, source="127.0.0.5"), 3)
    assert raw is not None
    assert codec.decode(raw).ma_offset == 20
    assert codec.decode(raw).code == codec.ACCESS_ACCEPT
    # The location from NAS-Identifier is in the decision log.
    logged = wait_for(
        lambda: [d for d in rows(westgate.db_url, DecisionRecord) if d.location == "hall"]
    )
    assert logged
    assert logged[0].nas_name in {"aruba-md", "wlc"}


@pytest.mark.slow
def test_several_workers_share_the_ports(westgate, tmp_path):
    server = start_server(westgate.db_url, tmp_path, workers=2)
    try:
        client = server.client()
        for _ in range(20):
            reply = client.SendPacket(mab_request(client, westgate.school_laptop))
            assert vlan_of(reply) == "10"
    finally:
        log = server.stop()
    assert log.count("listening on 127.0.0.1") == 2
    assert "Traceback" not in log


def test_decided_at_is_utc(radius_server, westgate):
    client = radius_server.client()
    before = datetime.now(UTC)
    client.SendPacket(mab_request(client, westgate.shared_ipad))
    logged = wait_for(lambda: rows(westgate.db_url, DecisionRecord, mac=westgate.shared_ipad))
    assert logged
    assert logged[0].decided_at >= before.replace(microsecond=0)
    assert logged[0].access == "full"
    assert logged[0].vlan == 10
