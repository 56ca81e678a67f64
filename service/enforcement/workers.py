"""Which change each RADIUS worker answers with, so a CoA never races the new answer.

A CoA or Disconnect tells the NAS to ask again now; if the worker that answers still holds the
snapshot from before the change, the device gets the old answer (the walled garden, with its
Session-Timeout) and stays there. So every RADIUS worker reports the change counter it has
loaded (`report_worker`, from its snapshot keeper's thread, never the packet path), each request
records the change it announces (`CoaRequest.change_version`, set by `triggers`), and the
dispatcher claims a request only once no live worker is behind it (`lagging_workers`), or once
`coa_wait_for_workers_seconds` has passed (then it sends anyway and says so in the history).

Every worker loads every NAS client, so every live worker could answer for any NAS.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from service.models.coa import RadiusWorker

# Rows not heard from in this long are deleted when any worker reports (a dead worker's row is
# ignored long before, after `radius_worker_dead_seconds`; this only keeps the table small).
FORGET_AFTER = timedelta(days=1)


@dataclass(frozen=True, slots=True)
class WorkerReport:
    """A RADIUS worker as it last reported: the snapshot it answers from, and when."""

    node: str
    pid: int
    loaded_version: int
    heartbeat_at: datetime

    def describe(self) -> str:
        return f"{self.node} pid {self.pid} (snapshot {self.loaded_version})"


def report_worker(
    *, session: Session, node: str, pid: int, loaded_version: int, now: datetime
) -> None:
    """Record that the worker `pid` on `node` answers from snapshot `loaded_version` at `now`."""
    row = session.scalar(
        select(RadiusWorker).where(RadiusWorker.node == node, RadiusWorker.pid == pid)
    )
    if row is None:
        session.add(
            RadiusWorker(
                node=node, pid=pid, loaded_version=loaded_version, started_at=now, heartbeat_at=now
            )
        )
        session.execute(delete(RadiusWorker).where(RadiusWorker.heartbeat_at < now - FORGET_AFTER))
    else:
        row.loaded_version = loaded_version
        row.heartbeat_at = now
    session.flush()


def forget_worker(*, session: Session, node: str, pid: int) -> None:
    """A worker stopping cleanly: nothing waits for it any more."""
    session.execute(delete(RadiusWorker).where(RadiusWorker.node == node, RadiusWorker.pid == pid))
    session.flush()


def lagging_workers(
    *, session: Session, version: int, now: datetime, live_seconds: float
) -> list[WorkerReport]:
    """The live workers (heard from within `live_seconds` of `now`) whose snapshot is older
    than `version`."""
    rows = session.execute(
        select(
            RadiusWorker.node,
            RadiusWorker.pid,
            RadiusWorker.loaded_version,
            RadiusWorker.heartbeat_at,
        )
        .where(
            RadiusWorker.loaded_version < version,
            RadiusWorker.heartbeat_at >= now - timedelta(seconds=live_seconds),
        )
        .order_by(RadiusWorker.node, RadiusWorker.pid)
    ).all()
    return [WorkerReport(*row) for row in rows]


def list_workers(*, session: Session) -> list[WorkerReport]:
    """Every reported worker, live or not (for tests and `coa` diagnostics)."""
    rows = session.execute(
        select(
            RadiusWorker.node,
            RadiusWorker.pid,
            RadiusWorker.loaded_version,
            RadiusWorker.heartbeat_at,
        ).order_by(RadiusWorker.node, RadiusWorker.pid)
    ).all()
    return [WorkerReport(*row) for row in rows]
