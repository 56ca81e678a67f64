"""The RADIUS server's metrics: what each worker process counted, collected when scraped.

The hot path only bumps plain integers in its `Counters` (no lock, no system call per
packet). Once a second each worker writes a report of them, with its snapshot's version and
age, to a file in a private directory (`service.metrics.write_report`); the dispatcher process
writes its CoA outcomes there too. A process of the server's own serves the metrics port and
turns the reports into Prometheus families at each scrape, one series per worker (a
restarted worker's counters start again at zero: Prometheus reads that as a counter reset).

Every field of `Counters` is exported without an edit here: an integer as
`schoolgate_radius_<field>_total` (a gauge, without `_total`, when its name ends in `_depth`
or is in `GAUGE_FIELDS`), a dict of counts by text as the same with a `reason` label.
"""

from __future__ import annotations

import dataclasses
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from radius import codec
from radius.counters import LATENCY_BOUNDS_NS, Counters
from service.metrics import CoaCollector, read_reports

GAUGE_FIELDS = frozenset({"spool_depth"})
# Fields read by name below (labelled by NAS and code, access level and latency).
SPECIAL_FIELDS = frozenset({"requests", "answers"})
REPORT_FRESH_SECONDS = 5.0  # a worker's report older than this: the worker is not answering

CODE_NAMES = {
    codec.ACCESS_REQUEST: "Access-Request",
    codec.ACCOUNTING_REQUEST: "Accounting-Request",
    codec.STATUS_SERVER: "Status-Server",
}


def worker_report(
    counters: Counters,
    *,
    index: int,
    snapshot_version: int,
    database_version: int,
    snapshot_age: float,
    reachable: bool,
    stale: bool,
) -> dict[str, Any]:
    """What a worker writes once a second (plain JSON)."""
    numbers: dict[str, int] = {}
    labelled: dict[str, dict[str, int]] = {}
    for spec in dataclasses.fields(counters):
        name = spec.name
        value = getattr(counters, name)
        if name in SPECIAL_FIELDS:
            continue
        if isinstance(value, int):
            numbers[name] = value
        elif isinstance(value, dict):
            labelled[name] = {str(k): int(v) for k, v in value.items()}
    return {
        "kind": "worker",
        "index": index,
        "numbers": numbers,
        "labelled": labelled,
        "requests": [[nas, code, n] for (nas, code), n in list(counters.requests.items())],
        "answers": [[access, bucket, n] for (access, bucket), n in list(counters.answers.items())],
        "snapshot_version": snapshot_version,
        "database_version": database_version,
        "snapshot_age_seconds": snapshot_age,
        "reachable": reachable,
        "stale": stale,
    }


def _is_gauge(name: str) -> bool:
    return name in GAUGE_FIELDS or name.endswith("_depth")


class RadiusCollector:
    """Prometheus families from the reports in `directory` (see the module's docstring)."""

    def __init__(self, directory: Path, node: str | None = None) -> None:
        self.directory = directory
        self.node = node or socket.gethostname()

    def collect(self) -> Iterator[Metric]:
        reports = read_reports(self.directory)
        workers = [r for r in reports.values() if r.get("kind") == "worker"]
        workers.sort(key=lambda r: int(r["index"]))
        now = time.time()
        yield from self._counters(workers)
        yield from self._requests(workers)
        yield from self._answers(workers)
        yield from self._snapshots(workers, now)

    def _counters(self, workers: list[dict[str, Any]]) -> Iterator[Metric]:
        numbers: dict[str, list[tuple[str, int]]] = {}
        labelled: dict[str, list[tuple[str, str, int]]] = {}
        for report in workers:
            worker = str(report["index"])
            for name, value in report["numbers"].items():
                numbers.setdefault(name, []).append((worker, value))
            for name, counts in report["labelled"].items():
                rows = labelled.setdefault(name, [])
                rows.extend((worker, key, value) for key, value in counts.items())
        for name, values in sorted(numbers.items()):
            family: CounterMetricFamily | GaugeMetricFamily
            if _is_gauge(name):
                family = GaugeMetricFamily(
                    f"schoolgate_radius_{name}", f"RADIUS {name}", labels=["worker"]
                )
            else:
                family = CounterMetricFamily(
                    f"schoolgate_radius_{name}", f"RADIUS {name}", labels=["worker"]
                )
            for worker, value in values:
                family.add_metric([worker], value)
            yield family
        for name, rows in sorted(labelled.items()):
            counter = CounterMetricFamily(
                f"schoolgate_radius_{name}",
                f"RADIUS {name}, by reason",
                labels=["worker", "reason"],
            )
            for worker, key, value in rows:
                counter.add_metric([worker, key], value)
            yield counter

    def _requests(self, workers: list[dict[str, Any]]) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "schoolgate_radius_requests",
            "RADIUS requests from known NAS clients, by code and NAS",
            labels=["code", "nas"],
        )
        totals: dict[tuple[str, str], int] = {}
        for report in workers:
            for nas, code, count in report["requests"]:
                key = (CODE_NAMES.get(code, str(code)), nas)
                totals[key] = totals.get(key, 0) + count
        for (code_name, nas), count in sorted(totals.items()):
            family.add_metric([code_name, nas], count)
        yield family

    def _answers(self, workers: list[dict[str, Any]]) -> Iterator[Metric]:
        decisions = CounterMetricFamily(
            "schoolgate_radius_decisions",
            "Access-Requests answered, by the access level decided",
            labels=["access"],
        )
        by_access: dict[str, int] = {}
        buckets = [0] * (len(LATENCY_BOUNDS_NS) + 1)
        for report in workers:
            for access, bucket, count in report["answers"]:
                by_access[str(access)] = by_access.get(str(access), 0) + count
                buckets[min(int(bucket), len(LATENCY_BOUNDS_NS))] += count
        for access, count in sorted(by_access.items()):
            decisions.add_metric([access], count)
        yield decisions
        histogram = HistogramMetricFamily(
            "schoolgate_radius_answer_seconds",
            "Time from an Access-Request read to its answer encoded (PAP: argon2 included)",
        )
        cumulative = 0
        rows: list[tuple[str, float]] = []
        for bound, count in zip([*LATENCY_BOUNDS_NS, None], buckets, strict=True):
            cumulative += count
            rows.append(("+Inf" if bound is None else repr(bound / 1e9), cumulative))
        # The sum is not kept (it would cost a float add per answer); 0 is exported, so
        # rate(_sum)/rate(_count) is meaningless here: use histogram_quantile().
        histogram.add_metric([], rows, sum_value=0)
        yield histogram

    def _snapshots(self, workers: list[dict[str, Any]], now: float) -> Iterator[Metric]:
        labels = ["node", "worker"]
        age = GaugeMetricFamily(
            "schoolgate_radius_snapshot_age_seconds",
            "Seconds since the worker last saw its snapshot current (the database reachable)",
            labels=labels,
        )
        version = GaugeMetricFamily(
            "schoolgate_radius_snapshot_version",
            "The change counter of the snapshot the worker answers from",
            labels=labels,
        )
        lag = GaugeMetricFamily(
            "schoolgate_radius_snapshot_lag",
            "The database's change counter minus the worker's loaded one (0: up to date)",
            labels=labels,
        )
        up = GaugeMetricFamily(
            "schoolgate_radius_database_reachable",
            "1 while the worker's last snapshot poll reached the database",
            labels=labels,
        )
        for report in workers:
            key = [self.node, str(report["index"])]
            since = max(0.0, now - float(report.get("written_at", now)))
            age.add_metric(key, float(report["snapshot_age_seconds"]) + since)
            version.add_metric(key, report["snapshot_version"])
            lag.add_metric(key, max(0, report["database_version"] - report["snapshot_version"]))
            up.add_metric(key, 1 if report["reachable"] else 0)
        yield from (age, version, lag, up)


class _CoaReportTransitions:
    """The dispatcher process's transitions, as it last reported them."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def __call__(self) -> dict[str, int]:
        report = read_reports(self.directory).get("coa")
        return {} if report is None else {k: int(v) for k, v in report["transitions"].items()}


def registry_for(directory: Path) -> CollectorRegistry:
    """The registry the server's metrics process serves."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RadiusCollector(directory))
    registry.register(CoaCollector(_CoaReportTransitions(directory)))
    return registry


def readiness(directory: Path, workers: int) -> str | None:
    """None when every worker has reported in the last few seconds with the database
    reachable and its snapshot fresh; else what is not."""
    reports = read_reports(directory)
    now = time.time()
    for index in range(workers):
        report = reports.get(f"worker-{index}")
        if report is None:
            return f"worker {index} has not started"
        if now - float(report.get("written_at", 0)) > REPORT_FRESH_SECONDS:
            return f"worker {index} has not reported for {REPORT_FRESH_SECONDS:.0f} s"
        if report["stale"]:
            return f"worker {index} answers as when_stale says: its snapshot is too old"
        if not report["reachable"]:
            return f"worker {index} cannot reach the database (snapshot not refreshed)"
    return None
