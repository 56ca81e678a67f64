"""The RADIUS server under faults (issue 11): one bad row costs that row only, a second
server cannot take a share of the ports, a killed worker is restarted, and an answer from a
snapshot the database can no longer refresh is bounded in age.

Every test runs `schoolgate radius serve` and talks to it over UDP, on SQLite and PostgreSQL
where the database is part of the fault.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
from pathlib import Path

import pytest
from pyrad.packet import AccessAccept
from sqlalchemy import create_engine, text

from service.models import AccountingSession, DecisionRecord
from tests.conftest import PG_ADMIN_URL, REPO, SCHOOLGATE
from tests.radius.conftest import (
    Timeout,
    acct_request,
    mab_request,
    start_server,
    status_server,
    vlan_of,
)
from tests.radius.test_server import rows, wait_for

NUL_NAME = "evil\x00name"


def counters_line(log: str) -> dict[str, int]:
    """The numbers of the last "counters:" line a server logged."""
    lines = [line for line in log.splitlines() if "counters:" in line]
    assert lines, log
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", lines[-1])}


def test_a_nul_in_a_user_name_or_session_id_costs_no_row(westgate, tmp_path):
    """A User-Name and an Acct-Session-Id with a NUL (which PostgreSQL text cannot hold) are
    stored escaped; the 60 answers sent with them in the same batch are all logged."""
    server = start_server(
        westgate.db_url, tmp_path, env={"SCHOOLGATE_RADIUS_LOG_BATCH_SECONDS": "1.0"}
    )
    try:
        client = server.client()
        for index in range(61):
            request = mab_request(client, westgate.school_laptop)
            if index == 30:
                request["User-Name"] = NUL_NAME
            assert vlan_of(client.SendPacket(request)) == "10"
        for session_id in ("good-1", "bad\x00id", "good-2"):
            client.SendPacket(acct_request(client, "Start", session_id, westgate.school_laptop))
    finally:
        log = server.stop()
    decisions = rows(westgate.db_url, DecisionRecord, mac=westgate.school_laptop)
    assert len(decisions) == 61
    assert [d.username for d in decisions if "evil" in (d.username or "")] == ["evil\\x00name"]
    sessions = sorted(s.acct_session_id for s in rows(westgate.db_url, AccountingSession))
    assert sessions == ["bad\\x00id", "good-1", "good-2"]
    counted = counters_line(log)
    assert counted["decisions_logged"] == 61
    assert counted["decisions_lost"] == 0
    assert "Traceback" not in log


def refuse_username(db_url: str, username: str) -> None:
    """Make the database refuse decision rows of one User-Name (a constraint; on SQLite, a
    trigger): a row the database will not take, whatever the reason."""
    engine = create_engine(db_url)
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(
                text(
                    "ALTER TABLE decisions ADD CONSTRAINT refuse_one "
                    f"CHECK (username IS NULL OR username <> '{username}') NOT VALID"
                )
            )
        else:
            conn.execute(
                text(
                    "CREATE TRIGGER refuse_one BEFORE INSERT ON decisions "
                    f"WHEN NEW.username = '{username}' "
                    "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
                )
            )
    engine.dispose()


def test_a_row_the_database_refuses_is_lost_alone_counted_and_logged(westgate, tmp_path):
    refuse_username(westgate.db_url, "poison")
    server = start_server(
        westgate.db_url, tmp_path, env={"SCHOOLGATE_RADIUS_LOG_BATCH_SECONDS": "1.0"}
    )
    try:
        client = server.client()
        for index in range(61):
            request = mab_request(client, westgate.shared_ipad)
            if index == 17:
                request["User-Name"] = "poison"
            assert vlan_of(client.SendPacket(request)) == "10"
    finally:
        log = server.stop()
    assert len(rows(westgate.db_url, DecisionRecord, mac=westgate.shared_ipad)) == 60
    counted = counters_line(log)
    assert counted["decisions_logged"] == 60
    assert counted["decisions_lost"] == 1
    lost = [line for line in log.splitlines() if "decision row lost" in line]
    assert len(lost) == 1
    assert "'poison'" in lost[0]
    assert westgate.shared_ipad in lost[0]
    assert "Traceback" not in log


def other_db(tmp_path: Path) -> str:
    """A second, empty database: a server on it knows no NAS and answers nobody, so any
    request it took from the first server would go unanswered."""
    url = f"sqlite:///{tmp_path / 'other.db'}"
    env = {**os.environ, "SCHOOLGATE_DATABASE_URL": url}
    subprocess.run(
        [*SCHOOLGATE, "db", "upgrade"], env=env, cwd=tmp_path, check=True, capture_output=True
    )
    return url


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("workers", [1, 2])
def test_a_second_server_on_the_same_ports_is_refused(westgate, tmp_path, workers):
    first = start_server(westgate.db_url, tmp_path, workers=2)
    other = other_db(tmp_path)
    env = {**os.environ, "SCHOOLGATE_DATABASE_URL": other}
    args = ["--host", "127.0.0.1", "--auth-port", str(first.auth_port)]
    args += ["--acct-port", str(first.acct_port), "--workers", str(workers)]
    second = subprocess.Popen(
        [*SCHOOLGATE, "radius", "serve", *args],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        try:
            out, err = second.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            second.terminate()
            second.communicate(timeout=20)
            pytest.fail("a second server on the same ports kept running")
        assert second.returncode != 0
        assert err.strip().splitlines() == [
            f"error: another schoolgate RADIUS server (pid {first.process.pid}) already serves "
            f"UDP port {first.auth_port}: stop it, or give this one other "
            "--auth-port/--acct-port"
        ]
        client = first.client()
        for _ in range(20):  # every request reaches the first server
            assert vlan_of(client.SendPacket(mab_request(client, westgate.school_laptop))) == "10"
    finally:
        log = first.stop()
    assert "Traceback" not in log


def worker_pids(log: str) -> dict[int, int]:
    """Worker index -> pid, from the "worker N (pid P) listening" lines (the last of each)."""
    return {int(i): int(p) for i, p in re.findall(r"worker (\d+) \(pid (\d+)\) listening", log)}


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_worker_killed_with_sigkill_is_restarted_and_counted(westgate, tmp_path):
    server = start_server(westgate.db_url, tmp_path, workers=2)
    try:
        pids = wait_for(lambda: len(worker_pids(server.log_path.read_text())) == 2, timeout=20)
        assert pids
        victim = worker_pids(server.log_path.read_text())[1]
        os.kill(victim, signal.SIGKILL)
        # A request that reached the victim's socket before it died is lost with it (the NAS
        # retransmits); from its death on, the other worker takes the whole port.
        assert wait_for(lambda: "restarting it" in server.log_path.read_text(), timeout=20)
        client = server.client()
        for _ in range(40):
            assert vlan_of(client.SendPacket(mab_request(client, westgate.school_laptop))) == "10"
        assert wait_for(lambda: worker_pids(server.log_path.read_text())[1] != victim, timeout=30)
        assert server.process.poll() is None
        for _ in range(20):  # and with the new worker
            assert vlan_of(client.SendPacket(mab_request(client, westgate.school_laptop))) == "10"
    finally:
        log = server.stop()
    restarts = [line for line in log.splitlines() if "restarting it" in line]
    assert len(restarts) == 1
    assert f"worker 1 (pid {victim}) killed by signal 9" in restarts[0]
    assert "worker restarts: 1" in restarts[0]
    assert "radius server stopped; worker restarts: 1" in log
    assert "Traceback" not in log


def status_message(server) -> str | None:
    """The Reply-Message of the server's answer to a Status-Server, or None: no answer."""
    client = server.client(timeout=0.5)
    try:
        reply = status_server(client)
    except Timeout:
        return None
    return str(reply["Reply-Message"][0])


def pg_connections(db_url: str, *, allow: bool) -> None:
    """Open or close a test database to every client (a superuser too); closing also ends
    the connections it has. The shared server itself keeps running."""
    name = db_url.rsplit("/", 1)[1]
    engine = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(allow).lower()}'))
        if not allow:
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = :name AND pid <> pg_backend_pid()"
                ),
                {"name": name},
            )
    engine.dispose()


def answer(server, mac: str) -> str | None:
    """The VLAN of an Access-Accept, "reject" for an Access-Reject. Asked as a NAS asks:
    retried (three tries of 2 s), since one datagram answered late on a loaded machine is not
    what these tests are about."""
    client = server.client()
    reply = client.SendPacket(mab_request(client, mac))
    return vlan_of(reply) if reply.code == AccessAccept else "reject"


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
@pytest.mark.parametrize(
    ("when_stale", "stale_answer"),
    [pytest.param(None, "99", id="registration"), pytest.param("reject", "reject", id="reject")],
)
def test_answers_from_a_snapshot_the_database_cannot_refresh_are_bounded(
    westgate, tmp_path, run_cli, when_stale, stale_answer
):
    """The database goes away: the server says at once that it is not ready, answers from
    its snapshot for `radius_max_stale_seconds` (5 s here), then as the policy's
    `[radius] when_stale` says (by default: every device to registration, VLAN 99), and
    from the database again once it is back; one log line per change, no traceback."""
    if when_stale is not None:
        policy = Path(REPO / "deploy" / "policies" / "westgate.toml").read_text()
        path = tmp_path / "westgate.toml"
        path.write_text(f'{policy}\n[radius]\nwhen_stale = "{when_stale}"\n')
        run_cli("policy", "load", str(path))
    # --no-coa: the CoA dispatcher (service/enforcement) is not this test's subject.
    server = start_server(
        westgate.db_url, tmp_path, "--no-coa", env={"SCHOOLGATE_RADIUS_MAX_STALE_SECONDS": "5"}
    )
    try:
        laptop = westgate.school_laptop
        assert wait_for(lambda: (status_message(server) or "").startswith("ready"))
        assert answer(server, laptop) == "10"
        pg_connections(westgate.db_url, allow=False)
        try:
            assert answer(server, laptop) == "10"  # still the snapshot: well under 5 s old
            assert wait_for(
                lambda: (status_message(server) or "").startswith("not ready"), timeout=10
            )
            assert wait_for(lambda: answer(server, laptop) == stale_answer, timeout=20)
            assert "database unreachable" in (status_message(server) or "")
        finally:
            pg_connections(westgate.db_url, allow=True)
        assert wait_for(lambda: answer(server, laptop) == "10", timeout=20)
        assert wait_for(lambda: (status_message(server) or "").startswith("ready"), timeout=10)
    finally:
        log = server.stop()
        print(log)  # shown by pytest when the test fails
    assert "Traceback" not in log
    assert log.count("snapshot reload failed") == 1
    assert log.count("over radius_max_stale_seconds") == 1
    assert log.count("database reachable again") == 1
    assert log.count("answering from snapshot") >= 1


def test_when_stale_is_checked_when_the_policy_is_loaded(run_cli, tmp_path):
    policy = Path(REPO / "deploy" / "policies" / "westgate.toml").read_text()
    path = tmp_path / "westgate.toml"
    path.write_text(f'{policy}\n[radius]\nwhen_stale = "accept"\n')
    result = run_cli("policy", "load", str(path), check=False)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        f'error: {path}: radius.when_stale: \'accept\': use "registration" or "reject"'
    ]


def refuse_session_id(db_url: str, session_id: str) -> None:
    """Make the database refuse accounting rows of one Acct-Session-Id."""
    engine = create_engine(db_url)
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(
                text(
                    "ALTER TABLE accounting_sessions ADD CONSTRAINT refuse_one "
                    f"CHECK (acct_session_id <> '{session_id}') NOT VALID"
                )
            )
        else:
            conn.execute(
                text(
                    "CREATE TRIGGER refuse_one BEFORE INSERT ON accounting_sessions "
                    f"WHEN NEW.acct_session_id = '{session_id}' "
                    "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
                )
            )
    engine.dispose()


def test_an_accounting_record_the_database_refuses_is_the_only_one_unanswered(westgate, tmp_path):
    """A burst of 31 Accounting-Requests, one of which the database refuses: the other 30
    are stored and answered, whatever batch they shared with it."""
    refuse_session_id(westgate.db_url, "poison")
    server = start_server(westgate.db_url, tmp_path)
    try:
        client = server.client()
        names = [f"s-{n}" for n in range(15)] + ["poison"] + [f"s-{n}" for n in range(15, 30)]
        packets = {}
        for name in names:
            request = acct_request(client, "Start", name, westgate.school_laptop)
            packets[request.id] = (name, request.RequestPacket())
        answered = set()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            sock.settimeout(2.0)
            for _, data in packets.values():
                sock.sendto(data, ("127.0.0.1", server.acct_port))
            with contextlib.suppress(TimeoutError):
                while len(answered) < len(packets):
                    reply = sock.recv(4096)
                    answered.add(packets[reply[1]][0])
    finally:
        log = server.stop()
    assert answered == set(names) - {"poison"}
    stored = {s.acct_session_id for s in rows(westgate.db_url, AccountingSession)}
    assert stored == set(names) - {"poison"}
    refused = [line for line in log.splitlines() if "accounting record not stored" in line]
    assert refused
    assert all("Acct-Session-Id 'poison'" in line for line in refused)
    assert "Traceback" not in log
