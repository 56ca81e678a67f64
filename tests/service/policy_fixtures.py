"""Shared builders for the policy tests: the shipped policies and device facts."""

from __future__ import annotations

from datetime import datetime
from functools import cache
from pathlib import Path
from zoneinfo import ZoneInfo

from service.enums import DeviceClass, DeviceStatus, Role
from service.policy import (
    NO_EXPIRY,
    AccessRequest,
    DeviceFacts,
    Grant,
    SitePolicy,
    load_policy_text,
)

POLICIES = Path(__file__).resolve().parents[2] / "deploy" / "policies"
LONDON = ZoneInfo("Europe/London")
MAC = "aa:bb:cc:00:00:01"


@cache
def policy(name: str) -> SitePolicy:
    path = POLICIES / f"{name}.toml"
    return load_policy_text(path.read_text(), str(path))


def london(text: str) -> datetime:
    """A site-local wall-clock time, e.g. "2026-11-23 10:00" (a Monday)."""
    return datetime.fromisoformat(text).replace(tzinfo=LONDON)


def facts(
    device_class: DeviceClass,
    *,
    status: DeviceStatus = DeviceStatus.ACTIVE,
    aua_until: float | None = None,
    byod_until: float | None = None,
    owner_active: bool = True,
    grants: tuple[Grant, ...] = (),
) -> DeviceFacts:
    return DeviceFacts(
        mac=MAC,
        device_class=device_class,
        status=status,
        owner_role=Role.STAFF if device_class is DeviceClass.STAFF_OWNED else None,
        owner_active=owner_active,
        aua_valid_until=aua_until,
        byod_valid_until=byod_until,
        grants=grants,
    )


def at(nas_identifier: str | None = None) -> AccessRequest:
    return AccessRequest(mac=MAC, nas_identifier=nas_identifier)


SIGNED = NO_EXPIRY
