"""A CoA never races the new answer (issue 12): a request is claimed only once every live
RADIUS worker has loaded the change it announces, or once the bound passes (then it says so).

The ordering is proved without timing: a worker reported at an old snapshot holds the request
unclaimed until it catches up; and end to end, a running server that polls slowly answers the
device's next Access-Request with the new decision the moment the NAS gets the request.
"""

from __future__ import annotations

import json
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from pyrad.packet import AccessReject
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from radius.coa import UdpCoaSender
from service import enforcement
from service.config import load_settings
from service.db import transaction
from service.facts import change_version
from service.models.coa import CoaRequest
from tests.conftest import RunCli
from tests.enforcement.fakenas import DISCONNECT_REQUEST, FakeNas
from tests.enforcement.sessions import open_session, point_nas
from tests.radius.conftest import mab_request, start_server

SECRET = b"testing123"
# The machine running the tests may be slow to start the CLI: a worker reported by the test
# stays live for a minute (a real one beats every `radius_worker_heartbeat_seconds`).
PATIENT: dict[str, Any] = {
    "coa_timeout_seconds": 0.2,
    "coa_retries": 3,
    "radius_worker_dead_seconds": 60,
}
LIVE_ENV = {"SCHOOLGATE_RADIUS_WORKER_DEAD_SECONDS": "60"}


def _rows(factory: sessionmaker[Session]) -> list[CoaRequest]:
    with factory() as session:
        return list(session.scalars(select(CoaRequest).order_by(CoaRequest.id)))


def _report(
    factory: sessionmaker[Session], version: int, *, node: str = "radius-2", age: float = 0
) -> None:
    with transaction(factory) as session:
        enforcement.report_worker(
            session=session,
            node=node,
            pid=4242,
            loaded_version=version,
            now=datetime.now(UTC) - timedelta(seconds=age),
        )


def _version(factory: sessionmaker[Session]) -> int:
    with factory() as session:
        return change_version(session)


def _drain(factory: sessionmaker[Session], *, limit: float, **settings: Any) -> None:
    enforcement.drain(
        session_factory=factory,
        settings=load_settings(None, **PATIENT, **settings),
        sender=UdpCoaSender(),
        limit=limit,
    )


def test_request_waits_unclaimed_for_a_worker_behind_the_change(
    westgate: SimpleNamespace, session_factory: sessionmaker[Session], run_cli: RunCli
) -> None:
    """A second RADIUS worker still answers from the snapshot before the change: the CLI's
    Disconnect stays queued (nothing reaches the NAS) until that worker reports the change."""
    with FakeNas(SECRET) as nas:
        nas_id = point_nas(session_factory, nas.port)
        open_session(session_factory, westgate.school_laptop, nas_id=nas_id, acct_session_id="A1")
        before = _version(session_factory)
        _report(session_factory, before)
        run_cli(
            "device",
            "lost",
            westgate.school_laptop,
            "--reported-by",
            "Ms Head",
            env={**LIVE_ENV, "SCHOOLGATE_COA_WAIT_FOR_WORKERS_SECONDS": "60"},
        )
        (row,) = _rows(session_factory)
        assert row.state == "queued"
        assert row.change_version is not None
        assert row.change_version > before
        _drain(session_factory, limit=1.0, coa_wait_for_workers_seconds=60)
        assert nas.received == []
        assert _rows(session_factory)[0].state == "queued", "held: the worker is behind"
        _report(session_factory, row.change_version)  # the worker has reloaded
        _drain(session_factory, limit=5, coa_wait_for_workers_seconds=60)
    (row,) = _rows(session_factory)
    assert row.state == "ack"
    assert [h["state"] for h in row.history] == ["queued", "sent", "ack"]
    assert "had not" not in row.history[1]["detail"]
    assert [r.code for r in nas.received] == [DISCONNECT_REQUEST]


def test_a_dead_worker_is_not_waited_for(
    westgate: SimpleNamespace, session_factory: sessionmaker[Session]
) -> None:
    with FakeNas(SECRET) as nas:
        nas_id = point_nas(session_factory, nas.port)
        open_session(session_factory, westgate.school_laptop, nas_id=nas_id)
        _report(session_factory, _version(session_factory), age=600)  # silent for 10 minutes
        with transaction(session_factory) as session:
            from service.devices import report_lost

            report_lost(session, mac=westgate.school_laptop, reported_by="Ms Head", actor="t")
        _drain(session_factory, limit=5, coa_wait_for_workers_seconds=60)
    (row,) = _rows(session_factory)
    assert row.state == "ack"
    assert len(nas.received) == 1


def test_past_the_bound_the_request_is_sent_and_says_whom_it_did_not_wait_for(
    westgate: SimpleNamespace, session_factory: sessionmaker[Session], run_cli: RunCli
) -> None:
    with FakeNas(SECRET) as nas:
        nas_id = point_nas(session_factory, nas.port)
        open_session(session_factory, westgate.school_laptop, nas_id=nas_id)
        _report(session_factory, _version(session_factory), node="radius-stuck")
        run_cli(
            "device",
            "lost",
            westgate.school_laptop,
            "--reported-by",
            "Ms Head",
            env={**LIVE_ENV, "SCHOOLGATE_COA_WAIT_FOR_WORKERS_SECONDS": "0.5"},
        )
        assert nas.arrived.wait(5)
        listed = json.loads(run_cli("coa", "list", "--json").stdout)
    assert [h["state"] for h in listed[0]["history"]] == ["queued", "sent", "ack"]
    sent = listed[0]["history"][1]["detail"]
    assert "sent after waiting 0.5 s for RADIUS workers" in sent
    assert "radius-stuck pid 4242" in sent


def test_running_server_reports_its_snapshot_and_the_nas_gets_the_coa_only_once_it_has_it(
    westgate: SimpleNamespace,
    session_factory: sessionmaker[Session],
    run_cli: RunCli,
    tmp_path: Path,
) -> None:
    """End to end: the server polls its change counter only every 10 s (on SQLite nothing
    wakes it sooner). When the NAS gets the Disconnect and the device asks again at once, the
    server already answers with the change: an Access-Reject for the lost laptop. (Sent at
    the commit, as before issue 12, the Disconnect reached the NAS while the server still
    accepted the laptop on VLAN 10.)"""
    waiting = {"SCHOOLGATE_COA_WAIT_FOR_WORKERS_SECONDS": "60"}
    with FakeNas(SECRET) as nas:
        nas_id = point_nas(session_factory, nas.port)
        open_session(session_factory, westgate.school_laptop, nas_id=nas_id)
        server = start_server(
            westgate.db_url,
            tmp_path,
            env={**waiting, "SCHOOLGATE_RADIUS_SNAPSHOT_POLL_SECONDS": "10"},
        )
        try:
            with session_factory() as session:
                (worker,) = enforcement.list_workers(session=session)
            assert (worker.node, worker.loaded_version) == (
                socket.gethostname(),
                _version(session_factory),
            )
            run_cli(
                "device", "lost", westgate.school_laptop, "--reported-by", "Ms Head", env=waiting
            )
            assert nas.arrived.wait(30), server.stop()
            client = server.client()
            reply = client.SendPacket(mab_request(client, westgate.school_laptop))
            assert reply.code == AccessReject, "the NAS was told before the server had the change"
            (row,) = _rows(session_factory)
            with session_factory() as session:
                (worker,) = enforcement.list_workers(session=session)
            assert row.change_version is not None
            assert worker.loaded_version >= row.change_version
        finally:
            server.stop()
    with session_factory() as session:
        assert enforcement.list_workers(session=session) == [], "a clean stop forgets the worker"
