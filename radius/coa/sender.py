"""The UDP `CoaSender` (RFC 5176 over the wire), and the choice of sender from settings."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy.orm import Session, sessionmaker

from radius.coa.dispatcher import dispatch_pending
from service.config import Settings
from service.enforcement import CoaSender, NullCoaSender


class UdpCoaSender:
    """INTERIM (service-layer issue): works the queue through the radius-side dispatcher."""

    def send_queued(
        self,
        session_factory: sessionmaker[Session],
        settings: Settings,
        *,
        device_ids: Iterable[int] | None,
        deadline: float,
    ) -> int:
        return dispatch_pending(session_factory, settings, device_ids=device_ids, deadline=deadline)


def sender_for(settings: Settings) -> CoaSender:
    """The UDP sender when CoA is enabled, else the null one: chosen once per process."""
    return UdpCoaSender() if settings.coa_enabled else NullCoaSender()
