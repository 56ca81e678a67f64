"""Plain data in and out of the policy engine. Frozen dataclasses, no database, no clock.

Times inside facts are POSIX timestamps (float seconds, UTC) so the hot path compares numbers;
`math.inf` means "no expiry".
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from service.enums import Access, DeviceClass, DeviceStatus, Role, VisitorVerify

NO_EXPIRY = float("inf")


@dataclass(frozen=True, slots=True)
class AccessRequest:
    """What the NAS told us about where the device is asking from."""

    mac: str | None
    nas_identifier: str | None = None
    called_station_id: str | None = None  # AP MAC, optionally ":SSID"
    nas_port_id: str | None = None
    username: str | None = None
    # The role of the person whose own password (PAP) this request carried, once it checked
    # out, and whether that person is still active; None for MAB (the device alone decides).
    user_role: Role | None = None
    user_active: bool = True


@dataclass(frozen=True, slots=True)
class Grant:
    """An exception in force for a device: the access it widens to, and for how long."""

    access: Access
    valid_from: float
    valid_until: float  # NO_EXPIRY when open-ended
    reason: str
    approved_by: str


@dataclass(frozen=True, slots=True)
class DeviceFacts:
    """Everything the engine needs to know about one registered device and its owner."""

    mac: str
    device_class: DeviceClass
    status: DeviceStatus
    site_code: str | None = None
    status_reason: str | None = None
    owner_name: str | None = None
    owner_role: Role | None = None
    owner_active: bool = True
    # Latest expiry of a signature of each kind (NO_EXPIRY for none); None = never signed.
    aua_valid_until: float | None = None
    byod_valid_until: float | None = None
    grants: tuple[Grant, ...] = ()


@dataclass(frozen=True, slots=True)
class Decision:
    """One answer, and how long it holds.

    The answer stays the same until `valid_until` (POSIX seconds; None: until the facts
    change, nothing in the policy moves it) for every request whose facts have the same
    `facts_key` (the device's facts as `decide()` reads them, and the place it matched; None
    when the answer is the device's own, e.g. it has exceptions granted). Meanwhile its
    Session-Timeout at an instant `ts` is `session_timeout_at(ts, valid_until,
    timeout_cap)`: that is how the RADIUS server reuses an answer without re-deriving it.
    """

    access: Access
    vlan: int | None
    reason: str
    rule: str
    session_timeout: int | None  # seconds until the answer could change; None for a reject
    location: str | None = None
    valid_until: float | None = None
    # The longest Session-Timeout this answer is given (the policy's maximum; the registration
    # timeout behind a gate); None for a reject.
    timeout_cap: int | None = None
    facts_key: tuple[Any, ...] | None = None
    # With an exception in force: the narrowing rule it lifted (its access was below the
    # exception's and the exception won), and the one it did not lift (`lifted_by_exceptions`
    # false: a safeguarding area or an exam session caps the exception too).
    lifted_rule: str | None = None
    held_rule: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "access": self.access.value,
            "vlan": self.vlan,
            "reason": self.reason,
            "rule": self.rule,
            "session_timeout": self.session_timeout,
            "location": self.location,
            "valid_until": (
                None
                if self.valid_until is None
                else datetime.fromtimestamp(self.valid_until, UTC).isoformat(timespec="seconds")
            ),
            "exception_lifted_rule": self.lifted_rule,
            "exception_not_lifted_rule": self.held_rule,
        }


@dataclass(frozen=True, slots=True)
class LocationSpec:
    name: str
    patterns: tuple[str, ...]
    regex: re.Pattern[str]  # the globs, compiled once, case-insensitive


@dataclass(frozen=True, slots=True)
class Rule:
    """A narrowing rule: when it matches, access goes down to `access`, never up."""

    name: str
    classes: frozenset[DeviceClass]
    access: Access
    days: frozenset[int] | None = None  # 0 = Monday; None = every day
    window: tuple[int, int] | None = None  # minutes after local midnight, [start, end)
    locations: frozenset[str] | None = None  # only at these; None = everywhere
    except_locations: frozenset[str] = frozenset()
    starts: float | None = None  # absolute window, POSIX seconds
    ends: float | None = None
    # Whether an access exception for a device raises it above this rule. False keeps the
    # rule in force over exceptions (a BYOD-free changing room, an exam session); the loader
    # defaults it from the rule's shape (`Loader.lifted_by_exceptions`).
    lifted_by_exceptions: bool = True


WHEN_STALE = ("registration", "reject")  # the first is the default


@dataclass(frozen=True)
class SitePolicy:
    """A validated, compiled site policy (see DESIGN.md for the TOML it comes from)."""

    site: str
    timezone: str
    vlans: dict[Access, int]
    access: dict[DeviceClass, Access]
    locations: tuple[LocationSpec, ...]
    rules: tuple[Rule, ...]
    school_name: str = ""
    aua_valid_until: str = "end_of_day"  # or a duration in seconds, as a decimal string
    school_day_ends: int = 18 * 60  # minutes after midnight; "end_of_day" ends here
    registration_timeout: int = 300
    max_session_timeout: int = 12 * 3600
    staff_needs_approval: bool = True
    staff_needs_byod_statement: bool = True
    explanations: dict[str, str] = field(default_factory=dict)
    # `[radius] when_stale`: RADIUS's answer once its snapshot is too old (WHEN_STALE).
    when_stale: str = "registration"
    # `[visitor] verify`: how a visitor proves they are one before the AUA gives internet.
    visitor_verify: VisitorVerify = VisitorVerify.SELF
    # `[monitor] bypass_alerts`: the traffic monitor's alerts on attempts to bypass the
    # filter (VPNs, encrypted DNS, Tor, proxies, DNS tunnels); on unless a site says false.
    bypass_alerts: bool = True
    # `[monitor] dns_tunnel_allow`: the site's own domains (its antivirus, its mail filter's
    # DNSBLs) added to deploy/categories/dns_allow.txt: never counted toward a DNS tunnel.
    dns_tunnel_allow: tuple[str, ...] = ()
    # Memo tables the engine fills as it goes (location by NAS identifiers, local clock by
    # minute, boundaries by day). They make repeated decisions cheap and do not change answers.
    _memo: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def tz(self) -> ZoneInfo:
        zone = self._memo.get("tz")
        if zone is None:
            zone = self._memo["tz"] = ZoneInfo(self.timezone)
        return zone
