"""The names devices go by on the local network (issue 14): what a device announces for itself
over mDNS, LLMNR and NetBIOS, and the hostname it sends in DHCP. The IT lead sees them beside
the MAC (`device show`, `device list --wide`, `export names`); the monitor's writer keeps one
row per (MAC, name, source) with when it was first and last seen."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from service.models.base import Base, UTCDateTime, intpk


class DeviceName(Base):
    __tablename__ = "device_names"
    __table_args__ = (
        UniqueConstraint("mac", "name", "source", name="uq_device_names_mac_name_source"),
        Index("ix_device_names_last_seen", "last_seen"),
    )

    id: Mapped[intpk]
    site_code: Mapped[str | None] = mapped_column(String(64))
    first_seen: Mapped[datetime] = mapped_column(UTCDateTime())
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime())
    mac: Mapped[str] = mapped_column(String(17))
    ip: Mapped[str | None] = mapped_column(String(64))  # the address it last announced
    name: Mapped[str] = mapped_column(String(255))
    source: Mapped[str] = mapped_column(String(8))  # mdns, llmnr, netbios, dhcp
