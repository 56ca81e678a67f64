"""Open accounting sessions the way the RADIUS accounting writer would leave them."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from service.db import transaction
from service.models import AccountingSession, NasClient


def point_nas(factory: sessionmaker[Session], port: int, **values: object) -> int:
    """Point the demo NAS's CoA port at a test peer; returns its id."""
    with transaction(factory) as session:
        nas = session.scalars(select(NasClient).order_by(NasClient.id)).first()
        assert nas is not None
        session.execute(
            update(NasClient).where(NasClient.id == nas.id).values(coa_port=port, **values)
        )
        return nas.id


def open_session(
    factory: sessionmaker[Session],
    mac: str,
    *,
    nas_id: int | None,
    nas_ip: str = "127.0.0.1",
    acct_session_id: str | None = None,
    username: str | None = None,
    site_code: str = "westgate",
    called_station_id: str | None = None,
) -> int:
    now = datetime.now(UTC)
    with transaction(factory) as session:
        row = AccountingSession(
            nas_id=nas_id,
            nas_ip=nas_ip,
            nas_identifier="ap-hall-1",
            site_code=site_code,
            mac=mac,
            username=mac.replace(":", "") if username is None else (username or None),
            acct_session_id=acct_session_id or f"S-{mac[-5:].replace(':', '')}",
            called_station_id=called_station_id,
            started_at=now,
            updated_at=now,
        )
        session.add(row)
        session.flush()
        return row.id
