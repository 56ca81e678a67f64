from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from service.monitor.attribution import Attributor
from service.monitor.capture import CaptureStats, read_file
from service.monitor.categories import load_categories
from service.monitor.engine import Monitor

REPO = Path(__file__).resolve().parents[2]
SHARED_PCAPS = REPO.parent / "shared" / "pcaps"


class Recorded:
    def __init__(self) -> None:
        self.rows: dict[str, list[dict[str, Any]]] = {}
        self.monitor: Monitor | None = None
        self.stats = CaptureStats()

    def __call__(self, kind: str, row: dict[str, Any]) -> None:
        self.rows.setdefault(kind, []).append(row)

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
        for ts, frame, linktype in read_file(path, recorded.stats):
            monitor.packet(ts, frame, linktype)
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
