"""Tables owned by the coa area: the durable queue of CoA / Disconnect attempts.

One row per request to one NAS for one accounting session. The row *is* the state machine
(queued -> sent -> ack | nak | timeout | failed, with `fallback` when a CoA-Request was NAKed
and a Disconnect-Request replaces it: `service.enums.CoaState`, driven by
`service.enforcement.dispatcher`); `history` keeps every transition so an admin can see why a
device did not move.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from service.models.base import Base, BigIntId, JSONType, UTCDateTime, intpk, utc, utcnow


class CoaRequest(Base):
    __tablename__ = "coa_requests"
    __table_args__ = (
        Index("ix_coa_requests_state_next", "state", "next_attempt_at"),
        Index("ix_coa_requests_mac", "mac"),
    )

    id: Mapped[intpk]
    created_at: Mapped[utc] = mapped_column(default=utcnow)
    updated_at: Mapped[utc] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    device_id: Mapped[int | None] = mapped_column(
        BigIntId, ForeignKey("devices.id", ondelete="SET NULL")
    )
    mac: Mapped[str | None] = mapped_column(String(17))
    session_row_id: Mapped[int | None] = mapped_column(
        BigIntId, ForeignKey("accounting_sessions.id", ondelete="SET NULL")
    )
    nas_id: Mapped[int | None] = mapped_column(
        BigIntId, ForeignKey("nas_clients.id", ondelete="SET NULL")
    )
    nas_ip: Mapped[str | None] = mapped_column(String(64))
    acct_session_id: Mapped[str | None] = mapped_column(String(255))
    username: Mapped[str | None] = mapped_column(String(255))
    # The values of service.enums.CoaKind and CoaState (a plain VARCHAR, as migration 0002 made it).
    kind: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[utc] = mapped_column(default=utcnow)
    reason: Mapped[str] = mapped_column(Text)
    actor: Mapped[str | None] = mapped_column(String(255))
    old_access: Mapped[str | None] = mapped_column(String(32))
    old_vlan: Mapped[int | None] = mapped_column(Integer)
    new_access: Mapped[str | None] = mapped_column(String(32))
    new_vlan: Mapped[int | None] = mapped_column(Integer)
    error_cause: Mapped[int | None] = mapped_column(Integer)
    detail: Mapped[str | None] = mapped_column(Text)
    history: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, default=list)
    # The change counter (`service.facts.change_version`) a RADIUS snapshot must have reached
    # to answer with the change this request announces: the dispatcher does not send it before
    # every live worker has loaded it (`service.enforcement.workers`). None: nothing to wait for.
    change_version: Mapped[int | None] = mapped_column(BigIntId)


class RadiusWorker(Base):
    """One RADIUS server process and the snapshot it answers from (migration 0007).

    Written by the worker's snapshot keeper when it loads a snapshot and on a heartbeat, off the
    packet path; read by the CoA dispatcher, which waits until every live worker has loaded a
    request's change. A row whose heartbeat is older than `radius_worker_dead_seconds` is a
    worker that died without saying so, and is ignored.
    """

    __tablename__ = "radius_workers"
    __table_args__ = (UniqueConstraint("node", "pid", name="uq_radius_workers_node_pid"),)

    id: Mapped[intpk]
    node: Mapped[str] = mapped_column(String(255))  # the host name
    pid: Mapped[int] = mapped_column(Integer)
    loaded_version: Mapped[int] = mapped_column(BigIntId)
    started_at: Mapped[utc] = mapped_column(default=utcnow)
    heartbeat_at: Mapped[utc] = mapped_column(default=utcnow)
