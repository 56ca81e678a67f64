from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from service.monitor.attribution import Attributor
from service.monitor.capture import CaptureStats, feed_file
from service.monitor.categories import load_categories
from service.monitor.engine import Monitor
from service.monitor.records import with_datetimes

REPO = Path(__file__).resolve().parents[2]
# The reference captures live beside the checkout (../shared/pcaps); a clone elsewhere (CI)
# finds them through SCHOOLGATE_SHARED_PCAPS or the workplace's /work/shared.
SHARED_PCAPS = next(
    (
        p
        for p in (
            Path(os.environ.get("SCHOOLGATE_SHARED_PCAPS", REPO.parent / "shared" / "pcaps")),
            Path("/work/shared/pcaps"),
        )
        if p.is_dir()
    ),
    REPO.parent / "shared" / "pcaps",
)


class Recorded:
    def __init__(self) -> None:
        self.rows: dict[str, list[dict[str, Any]]] = {}
        self.monitor: Monitor | None = None
        self.stats = CaptureStats()

    def __call__(self, kind: str, row: dict[str, Any]) -> None:
        # The engine gives times as epoch seconds; the tests read them as the database keeps
        # them, aware UTC datetimes.
        self.rows.setdefault(kind, []).append(with_datetimes(kind, row))

    def of(self, kind: str) -> list[dict[str, Any]]:
        return self.rows.get(kind, [])


RunFile = Callable[..., Recorded]


@pytest.fixture
def run_file() -> RunFile:
    """Run the engine over a capture file, recording what it would write."""

    def run(
        path: Path, *, attributor: Attributor | None = None, categories: bool = True
    ) -> Recorded:
        recorded = Recorded()
        monitor = Monitor(
            recorded,
            site_code="westgate",
            attributor=attributor,
            categories=load_categories(REPO / "deploy" / "categories") if categories else None,
        )
        # The way `schoolgate monitor run --read` feeds the engine (its fast path included).
        for _block in feed_file(path, recorded.stats, monitor.handler):
            pass
        monitor.finish()
        recorded.monitor = monitor
        return recorded

    return run


def shared(relative: str) -> Path:
    path = SHARED_PCAPS / relative
    if not path.is_file():
        pytest.skip(
            f"reference capture {path} is absent (it lives beside the repo in ../shared/pcaps)"
        )
    return path
