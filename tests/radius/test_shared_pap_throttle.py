"""Issue 13, many nodes: PAP failures for one account through RADIUS node A throttle that
account at node B (the shared `signin_failures` table, asked in the argon2 thread): B rejects
the right password without checking it. With the database cut off, PAP still answers, from
memory, and says so once."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from pyrad.packet import AccessReject
from sqlalchemy.engine import make_url

from tests.db_proxy import CuttableProxy, through
from tests.radius.conftest import RadiusServer, pap_request, start_server

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.parametrize("db_url", ["postgres"], indirect=True),
]

THROTTLED = "Too many failed sign-ins from this device or for this account: try again later."
WRONG = "Wrong username or password."


def pap(server: RadiusServer, password: str, phone: str) -> str:
    client = server.client(timeout=10.0, retries=1)
    reply = client.SendPacket(pap_request(client, "jsmith", password, phone))
    assert reply.code == AccessReject  # (Westgate refuses staff-owned phones anyway)
    return str(reply["Reply-Message"][0])


def test_failures_through_one_node_throttle_the_account_at_the_other(
    westgate: SimpleNamespace, tmp_path: Path
) -> None:
    first = start_server(westgate.db_url, tmp_path, "--no-coa")
    second = start_server(westgate.db_url, tmp_path, "--no-coa")
    try:
        # Wrong passwords through A, each from another phone (only the account is slowed),
        # waiting out each wait, until the account's wait is 8 s (2**(failures - 5)).
        failures = 0
        for index in range(20):
            answer = pap(first, "a-guess", f"02:00:00:00:71:{index:02x}")
            if answer == WRONG:
                failures += 1
                if failures == 8:
                    break
            else:
                assert answer == THROTTLED
                time.sleep(2.0 ** (failures - 5))
        assert failures == 8
        # Node B has seen none of it in its own memory: the shared count refuses the right
        # password, before argon2.
        assert pap(second, westgate.staff_password, "02:00:00:00:72:01") == THROTTLED
    finally:
        first.stop()
        output = second.stop()
    assert "pap_shared_throttled=1" in output


def test_pap_answers_from_memory_while_the_database_is_away(
    westgate: SimpleNamespace, tmp_path: Path
) -> None:
    url = make_url(westgate.db_url)
    proxy = CuttableProxy((url.host or "127.0.0.1", url.port or 5432))
    server = start_server(through(westgate.db_url, proxy.port), tmp_path, "--no-coa")
    try:
        assert pap(server, "a-guess", "02:00:00:00:73:01") == WRONG  # shared: the database
        proxy.cut()
        answers = [pap(server, "a-guess", f"02:00:00:00:73:{i:02x}") for i in range(2, 6)]
        assert answers == [WRONG] * 4  # answered, counted in memory: five failures now
        assert pap(server, westgate.staff_password, "02:00:00:00:73:09") == THROTTLED
    finally:
        output = server.stop()
        proxy.close()
    assert output.count("sign-in throttle: the database cannot be reached") == 1
