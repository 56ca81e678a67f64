"""FreeRADIUS's own `radclient`, as a network admin types it when wiring up a controller:

printf 'User-Name = "020000001001"\\nCalling-Station-Id = "02-00-00-00-10-01"\\n
Message-Authenticator = 0x00\\n' | radclient -x 127.0.0.1:1812 auth testing123
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
from sqlalchemy import select

from service.db import make_engine, make_session_factory
from service.mac import format_mac
from service.models import AccountingSession

pytestmark = [
    pytest.mark.freeradius,
    pytest.mark.skipif(
        shutil.which("radclient") is None,
        reason="radclient not installed (Debian package freeradius-utils)",
    ),
]


def radclient(port: int, kind: str, lines: list[str], secret: str = "testing123") -> str:
    result = subprocess.run(
        ["radclient", "-x", "-r", "2", "-t", "2", f"127.0.0.1:{port}", kind, secret],
        input="\n".join(lines) + "\n",
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return result.stdout + result.stderr


def mab_lines(mac: str, *extra: str) -> list[str]:
    return [
        f'User-Name = "{format_mac(mac, "bare")}"',
        f'User-Password = "{format_mac(mac, "bare")}"',
        f'Calling-Station-Id = "{format_mac(mac, "hyphen-upper")}"',
        "Service-Type = Call-Check",
        "NAS-Port-Type = Wireless-802.11",
        "Message-Authenticator = 0x00",
        *extra,
    ]


@pytest.mark.parametrize(
    ("device", "answer", "vlan"),
    [
        ("school_laptop", "Access-Accept", "10"),
        ("shared_ipad", "Access-Accept", "10"),
        ("visitor_phone", "Access-Accept", "30"),
        ("unknown", "Access-Accept", "99"),
        ("pupil_phone", "Access-Reject", None),
        ("staff_phone", "Access-Reject", None),
    ],
)
def test_radclient_mab(radius_server, westgate, device, answer, vlan):
    out = radclient(radius_server.auth_port, "auth", mab_lines(getattr(westgate, device)))
    assert f"Received {answer}" in out, out
    assert "invalid Message-Authenticator" not in out
    if vlan is None:
        assert "Tunnel-Private-Group-Id" not in out
        assert "Reply-Message" in out
    else:
        assert re.search(rf'Tunnel-Private-Group-Id(:0)? = "{vlan}"', out), out
        assert re.search(r"Tunnel-Type(:0)? = VLAN", out), out
        assert re.search(r"Tunnel-Medium-Type(:0)? = IEEE-802", out), out
        assert "Session-Timeout = " in out


def test_radclient_pap_status_and_accounting(radius_server, westgate):
    port = radius_server.auth_port
    wrong = radclient(
        port,
        "auth",
        [
            'User-Name = "jsmith"',
            'User-Password = "wrong-password"',
            'Calling-Station-Id = "02-00-00-00-20-01"',
            "Service-Type = Framed-User",
            "Message-Authenticator = 0x00",
        ],
    )
    assert "Received Access-Reject" in wrong
    assert "Wrong username or password" in wrong
    right = radclient(
        port,
        "auth",
        [
            'User-Name = "jsmith"',
            f'User-Password = "{westgate.staff_password}"',
            'Calling-Station-Id = "02-00-00-00-10-01"',
            "Service-Type = Framed-User",
            "Message-Authenticator = 0x00",
        ],
    )
    # Her school laptop, signed in with her own password: full access.
    assert "Received Access-Accept" in right, right
    assert re.search(r'Tunnel-Private-Group-Id(:0)? = "10"', right)

    for target in (port, radius_server.acct_port):
        status = radclient(target, "status", ["Message-Authenticator = 0x00"])
        assert "Received Access-Accept" in status or "Received Accounting-Response" in status
        assert "invalid" not in status

    out = radclient(
        radius_server.acct_port,
        "acct",
        [
            "Acct-Status-Type = Start",
            'Acct-Session-Id = "radclient-1"',
            'Calling-Station-Id = "02-00-00-00-30-01"',
            'User-Name = "020000003001"',
            "Framed-IP-Address = 10.30.0.7",
            'Called-Station-Id = "AA-BB-CC-DD-EE-FF:Westgate-Staff"',
        ],
    )
    assert "Received Accounting-Response" in out, out
    assert "invalid" not in out
    engine = make_engine(westgate.db_url)
    with make_session_factory(engine)() as session:
        row = session.scalars(
            select(AccountingSession).where(AccountingSession.acct_session_id == "radclient-1")
        ).one()
    engine.dispose()
    assert row.framed_ip == "10.30.0.7"
    assert row.mac == westgate.visitor_phone
    assert row.location == "staffroom"

    # A wrong shared secret is never answered.
    out = radclient(port, "auth", mab_lines(westgate.school_laptop), secret="not-it")
    assert "No reply from server" in out
