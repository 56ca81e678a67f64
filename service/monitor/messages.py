"""What the capture side (recording.py) and the writer process (writer.py) tell each other.

Both import this module and neither imports the other at module level: the capture side stays
clear of SQLAlchemy (recording.py), and the writer process needs these types, not the capture.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from service.monitor.categories import CategoryList
from service.monitor.records import Row

# What the writer process keeps of the rows for the run's closing summary.
SUMMARY_KINDS = ("visits", "alerts", "p2p_flows")


@dataclass
class Setup:
    """What the writer process needs besides the event batches."""

    database_url: str
    site_code: str | None = None
    categories: CategoryList | None = None
    visit_idle_gap: float = 300.0
    keep_summary: bool = False
    accounting_stale_after: float = 4 * 3600.0  # seconds; Settings.accounting_stale_after
    refresh_seconds: float = 30.0  # Settings.monitor_refresh_seconds


@dataclass
class Ready:
    """The writer process's first message: it has the database, the site and the attributor."""

    timezone: str | None  # the site's, when a site was named


@dataclass
class Failed:
    """The writer process's first message when it cannot start: one line for the user."""

    message: str


@dataclass
class RecordingResult:
    written: dict[str, int]
    errors: int
    last_error: str | None
    counters: dict[str, int] = field(default_factory=dict)  # the recorder's: dns, visits, alerts
    kept: dict[str, list[Row]] = field(default_factory=dict)  # SUMMARY_KINDS -> rows
    # For the summary: device id -> "name (class)", person id -> name.
    names: dict[str, dict[int, str]] = field(default_factory=dict)
