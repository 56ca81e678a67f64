"""The shapes every exporter shares: the query an export answers and the exporter's type.

Its own module so the export registry (`service.exports`) imports the areas' exporters and
the areas import only these: the dependency points one way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session


@dataclass(frozen=True, slots=True)
class ExportQuery:
    since: datetime | None = None
    until: datetime | None = None
    site: str | None = None
    # `export bindings` only: one IP or MAC, the moment asked about, the clock, and how long
    # an accounting session without a Stop counts (Settings.accounting_stale_after).
    ip: str | None = None
    mac: str | None = None
    at: datetime | None = None
    now: datetime | None = None
    stale_after: timedelta | None = None


Exporter = Callable[[Session, ExportQuery], Iterable[dict[str, Any]]]


def iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat(timespec="seconds")
