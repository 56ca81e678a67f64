"""The metrics ports (`--metrics-port`): real servers, real packets and pages, scraped over
HTTP and parsed with prometheus_client's own parser; and the JSON log lines."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections import Counter

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pyrad.packet import AccessAccept

from service.db import make_engine, make_session_factory
from service.metrics import MetricsServer, bind_metrics
from tests.conftest import SCHOOLGATE
from tests.helpers import free_tcp_port, wait_for_tcp
from tests.monitor import traffic as t
from tests.radius.conftest import acct_request, mab_request, start_server

SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def samples(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample on /metrics: (name, labels) -> value."""
    status, text = get(port, "/metrics")
    assert status == 200, text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def by_label(found: dict, name: str, label: str) -> dict[str, float]:
    totals: Counter[str] = Counter()
    for (sample, labels), value in found.items():
        if sample == name:
            totals[dict(labels)[label]] += value
    return dict(totals)


def test_radius_metrics_count_the_requests_and_decisions_sent(westgate, tmp_path):
    """Two workers and the dispatcher, JSON logs: the scrape counts exactly what was sent,
    by code and NAS, and the decisions by access level agree with the decision log."""
    metrics_port = free_tcp_port()
    server = start_server(
        westgate.db_url,
        tmp_path,
        "--metrics-port",
        str(metrics_port),
        workers=2,
        env={"SCHOOLGATE_LOG_FORMAT": "json"},
    )
    try:
        wait_for_tcp(metrics_port)
        client = server.client()
        devices = ["school_laptop", "shared_ipad", "visitor_phone", "pupil_phone", "unknown"]
        sent = 0
        accepted = 0
        for round_ in range(3):
            for device in devices:
                reply = client.SendPacket(mab_request(client, getattr(westgate, device)))
                sent += 1
                accepted += reply.code == AccessAccept
            client.SendPacket(
                acct_request(client, "Start", f"metrics-{round_}", westgate.school_laptop)
            )
        deadline = time.monotonic() + 10
        while True:
            found = samples(metrics_port)
            requests = {
                dict(labels)["code"]: value
                for (name, labels), value in found.items()
                if name == "schoolgate_radius_requests_total"
                and dict(labels)["nas"] == "demo-controller"
            }
            decided = by_label(found, "schoolgate_radius_decisions_total", "access")
            if (
                requests.get("Access-Request") == sent
                and sum(decided.values()) == sent
                and requests.get("Accounting-Request") == 3
            ):
                break
            assert time.monotonic() < deadline, (requests, decided)
            time.sleep(0.2)

        # The decision log, written by the workers to the database, says the same.
        from sqlalchemy import select

        from service.models import DecisionRecord

        engine = make_engine(westgate.db_url)
        try:
            deadline = time.monotonic() + 10
            while True:
                with make_session_factory(engine)() as session:
                    logged = Counter(session.scalars(select(DecisionRecord.access)))
                if sum(logged.values()) >= sent or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
        finally:
            engine.dispose()
        assert decided == dict(logged)
        assert len(decided) >= 3  # full, internet, none, registration: not one lump
        by_worker = by_label(found, "schoolgate_radius_accepted_total", "worker")
        assert sum(by_worker.values()) == accepted
        assert set(by_worker) <= {"0", "1"}
        # The histogram holds every answer; its buckets only grow.
        count = found[("schoolgate_radius_answer_seconds_count", frozenset())]
        assert count == sent
        buckets = sorted(
            (float(dict(labels)["le"]), value)
            for (name, labels), value in found.items()
            if name == "schoolgate_radius_answer_seconds_bucket"
        )
        assert [v for _, v in buckets] == sorted(v for _, v in buckets)
        assert buckets[-1] == (float("inf"), sent)
        # Each worker's snapshot: current, reachable, no lag.
        lag = by_label(found, "schoolgate_radius_snapshot_lag", "worker")
        assert lag == {"0": 0, "1": 0}
        assert get(metrics_port, "/healthz") == (200, "ok\n")
        assert get(metrics_port, "/readyz") == (200, "ready\n")
        assert get(metrics_port, "/nothing")[0] == 404
    finally:
        output = server.stop()
    lines = [line for line in output.splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all({"ts", "level", "logger", "message"} <= r.keys() for r in records)
    assert any("metrics on http://127.0.0.1" in r["message"] for r in records)


@SQLITE_ONLY
def test_a_metrics_port_in_use_is_one_line(westgate, tmp_path):
    sock = bind_metrics("127.0.0.1", 0)
    port = sock.getsockname()[1]
    try:
        result = subprocess.run(
            [*SCHOOLGATE, "coa", "run", "--metrics-port", str(port)],
            env={**os.environ, "SCHOOLGATE_DATABASE_URL": westgate.db_url},
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
            check=False,
        )
    finally:
        sock.close()
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: cannot open the metrics port 127.0.0.1:{port}: Address already in use "
        "(set --metrics-port / SCHOOLGATE_METRICS_PORT to a free port, or 0 for none)"
    ]


@SQLITE_ONLY
def test_portal_metrics_by_route_and_status(westgate, tmp_path):
    port, metrics_port = free_tcp_port(), free_tcp_port()
    log_path = tmp_path / "portal.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [
                *SCHOOLGATE,
                "--log-format",
                "json",
                "portal",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--metrics-port",
                str(metrics_port),
            ],
            env={
                **os.environ,
                "SCHOOLGATE_DATABASE_URL": westgate.db_url,
                "SCHOOLGATE_SECRET_KEY": "metrics-test-secret-" + "x" * 32,
            },
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=tmp_path,
        )
    try:
        wait_for_tcp(port, timeout=30)
        wait_for_tcp(metrics_port, timeout=30)
        sent = Counter()
        for path in ["/healthz", "/healthz", "/readyz", "/no-such-page", "/static/portal.css"]:
            status, _ = get(port, path)
            sent[path, status] += 1
        found = samples(metrics_port)
        counted = {
            (dict(labels)["route"], int(dict(labels)["status"])): value
            for (name, labels), value in found.items()
            if name == "schoolgate_portal_requests_total"
        }
        assert counted[("/healthz", 200)] == sent["/healthz", 200] == 2
        assert counted[("/readyz", 200)] == 1
        assert counted[("/static", 200)] == 1
        # A path nobody routes is one series, whatever the path was.
        assert sum(v for (route, _), v in counted.items() if route == "(unmatched)") == 1
        assert get(metrics_port, "/readyz") == (200, "ready\n")
        assert get(metrics_port, "/healthz") == (200, "ok\n")
    finally:
        process.terminate()
        process.wait(timeout=20)
    lines = [line for line in log_path.read_text().splitlines() if line.strip()]
    # The log is JSON; the other lines are the command's own start-up words, not log records.
    banner = [line for line in lines if not line.startswith("{")]
    assert all(line.startswith(("portal listening on", "warning: ")) for line in banner), banner
    records = [json.loads(line) for line in lines if line.startswith("{")]
    assert any(r["logger"].startswith("uvicorn") for r in records)


@SQLITE_ONLY
def test_monitor_metrics_count_the_packets_of_a_capture(westgate, tmp_path):
    """`run_monitor(observe=...)`, as `monitor run --metrics-port` calls it: the scrape after
    the capture holds its counters, and /readyz says the capture ended."""
    from prometheus_client import CollectorRegistry

    from service.monitor.observe import MonitorCollector
    from service.monitor.run import run_monitor

    capture = t.write(tmp_path / "mirror.pcap", t.school_day())
    servers: list[MetricsServer] = []

    def observe(probe) -> None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(MonitorCollector(probe))
        servers.append(MetricsServer(bind_metrics("127.0.0.1", 0), registry, probe.readiness))
        servers[0].start()
        assert get(servers[0].port, "/readyz") == (503, "not ready: the capture has not started\n")

    result = run_monitor(westgate.db_url, read=capture, observe=observe)
    (server,) = servers
    try:
        found = samples(server.port)
        assert (
            found[("schoolgate_monitor_packets_total", frozenset())] == result.counters["packets"]
        )
        assert result.counters["packets"] > 0
        assert found[("schoolgate_monitor_records_total", frozenset())] == result.capture.records
        skipped = by_label(found, "schoolgate_monitor_skipped_total", "reason")
        assert skipped == {
            k.removeprefix("skipped_"): v
            for k, v in result.counters.items()
            if k.startswith("skipped_")
        }
        assert found[("schoolgate_monitor_kernel_drops_total", frozenset())] == 0
        assert found[("schoolgate_monitor_capturing", frozenset())] == 0
        assert get(server.port, "/readyz") == (503, "not ready: the capture has ended\n")
    finally:
        server.stop()


@SQLITE_ONLY
def test_coa_run_metrics_count_the_outcomes(westgate, session_factory, run_cli, tmp_path):
    """A Disconnect queued while no dispatcher ran; `coa run --metrics-port` sends it: the
    scrape counts each state this dispatcher moved it to, as the row's history says."""
    from sqlalchemy import select

    from service.models.coa import CoaRequest
    from tests.enforcement.fakenas import FakeNas
    from tests.enforcement.sessions import open_session, point_nas

    metrics_port = free_tcp_port()
    with FakeNas(b"testing123") as nas:
        nas_id = point_nas(session_factory, nas.port)
        open_session(session_factory, westgate.school_laptop, nas_id=nas_id)
        run_cli(
            "device",
            "lost",
            westgate.school_laptop,
            "--reported-by",
            "Ms Head",
            env={"SCHOOLGATE_COA_ENABLED": "false"},
        )
        process = subprocess.Popen(
            [*SCHOOLGATE, "coa", "run", "--metrics-port", str(metrics_port)],
            env={**os.environ, "SCHOOLGATE_DATABASE_URL": westgate.db_url},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=tmp_path,
        )
        try:
            wait_for_tcp(metrics_port, timeout=30)
            deadline = time.monotonic() + 20
            while True:
                states = by_label(samples(metrics_port), "schoolgate_coa_requests_total", "state")
                if states.get("ack") or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            assert get(metrics_port, "/readyz") == (200, "ready\n")
        finally:
            process.terminate()
            process.wait(timeout=20)
    assert len(nas.received) == 1
    with session_factory() as session:
        (row,) = session.scalars(select(CoaRequest))
        # After "queued"; "sent" is the claim (a conditional UPDATE), not an outcome.
        history = Counter(step["state"] for step in row.history[1:] if step["state"] != "sent")
    assert row.state == "ack"
    assert states == dict(history)


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_coa_run_readyz_follows_the_database(westgate, tmp_path):
    """`coa run`'s /readyz while PostgreSQL is cut off (a TCP proxy between them, never the
    shared server): 503 with the reason, the process still running; 200 again once it is back."""
    from sqlalchemy.engine import make_url

    from tests.db_proxy import CuttableProxy, through

    url = make_url(westgate.db_url)
    proxy = CuttableProxy((url.host or "127.0.0.1", url.port or 5432))
    metrics_port = free_tcp_port()
    process = subprocess.Popen(
        [*SCHOOLGATE, "coa", "run", "--metrics-port", str(metrics_port)],
        env={**os.environ, "SCHOOLGATE_DATABASE_URL": through(westgate.db_url, proxy.port)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )

    def readyz_becomes(status: int) -> tuple[int, str]:
        deadline = time.monotonic() + 30
        answer = get(metrics_port, "/readyz")
        while answer[0] != status and time.monotonic() < deadline:
            assert process.poll() is None, process.communicate()[1]
            time.sleep(0.2)
            answer = get(metrics_port, "/readyz")
        return answer

    try:
        wait_for_tcp(metrics_port, timeout=60)
        assert readyz_becomes(200) == (200, "ready\n")
        proxy.cut()
        status, body = readyz_becomes(503)
        assert status == 503, body
        assert body.startswith("not ready: database: "), body
        assert len(body.splitlines()) == 1, body
        assert get(metrics_port, "/healthz") == (200, "ok\n")  # alive, only not ready
        proxy.restore()
        assert readyz_becomes(200) == (200, "ready\n")
        assert process.poll() is None
    finally:
        process.terminate()
        process.wait(timeout=20)
        proxy.close()
