"""Site policy files: TOML in, a validated `SitePolicy` out, or a `PolicyError` naming the key.

The keys are the contract of DESIGN.md; unknown keys are refused so a typo never silently
weakens a school's policy.
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from service.enums import LEVELS, Access, DeviceClass, VisitorVerify
from service.errors import PolicyError
from service.monitor.bypass import allow_entry_problem
from service.policy.model import WHEN_STALE, LocationSpec, Rule, SitePolicy
from service.text import find_control

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
FULL_DAY_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
# RADIUS Session-Timeout is a 32-bit unsigned integer (RFC 2865 5.27): a larger value once
# wrapped (4294967301 went out as 5 seconds).
MAX_SESSION_TIMEOUT = 2**32 - 1
# The longest a visitor's signature may last: ten years keeps every expiry a real date.
MAX_DURATION = 3650 * 86400
# Rule windows (`from`, `until`) must be real dates whose expiry a reader can print.
EARLIEST, LATEST = datetime(1970, 1, 2, tzinfo=UTC), datetime(9998, 12, 31, tzinfo=UTC)
_HHMM = re.compile(r"([01]\d|2[0-3]):([0-5]\d)|24:00")
VLAN_KEYS = (Access.FULL, Access.SEGREGATED, Access.INTERNET, Access.REGISTRATION)
TOP_KEYS = {
    "site",
    "timezone",
    "school_name",
    "vlans",
    "access",
    "visitor",
    "staff",
    "session",
    "explanations",
    "locations",
    "rules",
    "radius",
    "monitor",
}
RULE_KEYS = {
    "name",
    "classes",
    "days",
    "between",
    "locations",
    "except_locations",
    "from",
    "lifted_by_exceptions",
    "until",
    "access",
    "description",
}
MONITOR_KEYS = {"bypass_alerts", "dns_tunnel_allow"}
_SITE_CODE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_DURATION = re.compile(r"(\d+)\s*([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def load_policy_text(text: str, source: str = "<policy>") -> SitePolicy:
    """Parse and validate one policy file's text. `source` names the file in every error."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{source}: not valid TOML: {exc}") from exc
    return _Validator(source).policy(data)


def parse_duration(value: str) -> int:
    """ "8h", "7d", "90m", "1h30m" → seconds; raises ValueError."""
    text = value.strip().lower()
    pos = 0
    total = 0
    for match in _DURATION.finditer(text):
        if match.start() != pos:
            break
        total += int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if pos != len(text) or total <= 0:
        raise ValueError(value)
    return total


def parse_hhmm(value: str) -> int:
    """ "08:30" → minutes after midnight; "24:00" allowed as the end of the day. Exactly
    HH:MM on the 24-hour clock; raises ValueError for anything else ("25:00", "0830")."""
    match = _HHMM.fullmatch(value.strip())
    if match is None:
        raise ValueError(value)
    if match.group(1) is None:
        return 24 * 60
    return int(match.group(1)) * 60 + int(match.group(2))


def glob_regex(patterns: list[str] | tuple[str, ...]) -> re.Pattern[str]:
    return re.compile("|".join(fnmatch.translate(p) for p in patterns), re.IGNORECASE)


class _Validator:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, message: str) -> PolicyError:
        return PolicyError(f"{self.source}: {key}: {message}")

    def policy(self, data: dict[str, Any]) -> SitePolicy:
        unknown = sorted(set(data) - TOP_KEYS)
        if unknown:
            raise self.fail(unknown[0], f"unknown key (known: {', '.join(sorted(TOP_KEYS))})")
        site = data.get("site")
        if not isinstance(site, str) or not _SITE_CODE.fullmatch(site):
            raise self.fail("site", 'required: a short code such as "westgate" (a-z, 0-9, -, _)')
        timezone = data.get("timezone", "Europe/London")
        if not isinstance(timezone, str):
            raise self.fail("timezone", f'{timezone!r}: a zone name such as "Europe/London"')
        try:
            tz = ZoneInfo(str(timezone))
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise self.fail("timezone", f"unknown time zone {timezone!r}") from exc
        vlans = self.vlans(data.get("vlans"))
        access = self.access(data.get("access"))
        visitor = self.table(data, "visitor", {"aua_valid_until", "school_day_ends", "verify"})
        aua_raw = visitor.get("aua_valid_until", "end_of_day")
        aua = aua_raw if isinstance(aua_raw, str) else ""
        if aua != "end_of_day":
            try:
                seconds = parse_duration(aua)
            except ValueError as exc:
                raise self.fail(
                    "visitor.aua_valid_until",
                    f'{aua_raw!r}: use "end_of_day" or e.g. "8h", "7d"',
                ) from exc
            if seconds > MAX_DURATION:
                raise self.fail(
                    "visitor.aua_valid_until", f"{aua_raw!r} is longer than 3650d (ten years)"
                )
            aua = str(seconds)
        day_ends = self.hhmm("visitor.school_day_ends", visitor.get("school_day_ends", "18:00"))
        staff = self.table(data, "staff", {"needs_approval", "needs_byod_statement"})
        session = self.table(data, "session", {"registration_timeout", "max_timeout"})
        registration_timeout = self.session_timeout(
            "session.registration_timeout", session.get("registration_timeout", 300)
        )
        max_timeout = self.session_timeout("session.max_timeout", session.get("max_timeout", 43200))
        explanations = self.table(data, "explanations", {c.value for c in DeviceClass})
        for key, value in explanations.items():
            self.text(f"explanations.{key}", value)
        school_name = self.text("school_name", data.get("school_name", site))
        locations = self.locations(data.get("locations", []))
        names = {loc.name for loc in locations}
        rules = tuple(
            self.rule(i, raw, names, tz) for i, raw in enumerate(self.array(data, "rules"))
        )
        seen: set[str] = set()
        for i, rule in enumerate(rules):
            if rule.name in seen:
                raise self.fail(f"rules[{i}].name", f"duplicate rule name {rule.name!r}")
            seen.add(rule.name)
        return SitePolicy(
            site=site,
            timezone=str(timezone),
            school_name=school_name,
            vlans=vlans,
            access=access,
            locations=locations,
            rules=rules,
            aua_valid_until=aua,
            school_day_ends=day_ends,
            registration_timeout=registration_timeout,
            max_session_timeout=max_timeout,
            staff_needs_approval=self.boolean(staff, "staff.needs_approval", default=True),
            staff_needs_byod_statement=self.boolean(
                staff, "staff.needs_byod_statement", default=True
            ),
            explanations={str(k): v for k, v in explanations.items()},
            when_stale=self.when_stale(data),
            visitor_verify=self.visitor_verify(visitor),
            bypass_alerts=self.boolean(
                self.table(data, "monitor", MONITOR_KEYS), "monitor.bypass_alerts", default=True
            ),
            dns_tunnel_allow=self.dns_tunnel_allow(data),
        )

    # -- sections ---------------------------------------------------------------------------

    def table(self, data: dict[str, Any], key: str, allowed: set[str]) -> dict[str, Any]:
        value = data.get(key, {})
        if not isinstance(value, dict):
            raise self.fail(key, "must be a table")
        unknown = sorted(set(value) - allowed)
        if unknown:
            raise self.fail(
                f"{key}.{unknown[0]}", f"unknown key (known: {', '.join(sorted(allowed))})"
            )
        return value

    def array(self, data: dict[str, Any], key: str) -> list[Any]:
        value = data.get(key, [])
        if not isinstance(value, list):
            raise self.fail(key, "must be an array of tables ([[%s]])" % key)  # noqa: UP031
        return value

    def vlans(self, raw: Any) -> dict[Access, int]:
        if not isinstance(raw, dict):
            raise self.fail("vlans", "required table mapping access levels to VLAN ids")
        out: dict[Access, int] = {}
        for key, value in raw.items():
            if key not in {a.value for a in VLAN_KEYS}:
                raise self.fail(
                    f"vlans.{key}",
                    "unknown access level (use full, segregated, internet, registration; "
                    '"none" is an Access-Reject and has no VLAN)',
                )
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 4094:
                raise self.fail(f"vlans.{key}", f"VLAN id {value!r} is out of range 1-4094")
            out[Access(key)] = value
        missing = [a.value for a in VLAN_KEYS if a not in out]
        if missing:
            raise self.fail("vlans", f"missing VLAN for {', '.join(missing)}")
        return out

    def access(self, raw: Any) -> dict[DeviceClass, Access]:
        if not isinstance(raw, dict):
            raise self.fail("access", "required table mapping device classes to access levels")
        out: dict[DeviceClass, Access] = {}
        for key, value in raw.items():
            try:
                device_class = DeviceClass(key)
            except ValueError as exc:
                known = ", ".join(c.value for c in DeviceClass)
                raise self.fail(f"access.{key}", f"unknown device class (known: {known})") from exc
            out[device_class] = self.level(f"access.{key}", value)
        missing = [c.value for c in DeviceClass if c not in out]
        if missing:
            raise self.fail("access", f"missing device classes: {', '.join(missing)}")
        return out

    def level(self, key: str, value: Any) -> Access:
        if not isinstance(value, str) or value not in {a.value for a in LEVELS}:
            raise self.fail(
                key, f"{value!r} is not an access level (full, segregated, internet, none)"
            )
        return Access(value)

    def locations(self, raw: Any) -> tuple[LocationSpec, ...]:
        if not isinstance(raw, list):
            raise self.fail("locations", "must be an array of tables ([[locations]])")
        out: list[LocationSpec] = []
        for i, item in enumerate(raw):
            key = f"locations[{i}]"
            if not isinstance(item, dict):
                raise self.fail(key, "must be a table")
            unknown = sorted(set(item) - {"name", "match", "description"})
            if unknown:
                raise self.fail(f"{key}.{unknown[0]}", "unknown key (known: name, match)")
            name = item.get("name")
            if not isinstance(name, str) or not name:
                raise self.fail(f"{key}.name", "required")
            if "description" in item:
                self.text(f"{key}.description", item["description"])
            patterns = item.get("match")
            if (
                not isinstance(patterns, list)
                or not patterns
                or not all(isinstance(p, str) and p for p in patterns)
            ):
                raise self.fail(f"{key}.match", "a non-empty list of patterns is required")
            if any(loc.name == name for loc in out):
                raise self.fail(f"{key}.name", f"duplicate location {name!r}")
            out.append(
                LocationSpec(name=name, patterns=tuple(patterns), regex=glob_regex(patterns))
            )
        return tuple(out)

    def rule(self, index: int, raw: Any, locations: set[str], tz: ZoneInfo) -> Rule:
        key = f"rules[{index}]"
        if not isinstance(raw, dict):
            raise self.fail(key, "must be a table")
        unknown = sorted(set(raw) - RULE_KEYS)
        if unknown:
            raise self.fail(
                f"{key}.{unknown[0]}", f"unknown key (known: {', '.join(sorted(RULE_KEYS))})"
            )
        name = raw.get("name")
        if not isinstance(name, str) or not name:
            raise self.fail(f"{key}.name", "required")
        if "description" in raw:
            self.text(f"{key}.description", raw["description"])
        classes_raw = raw.get("classes")
        if not isinstance(classes_raw, list) or not classes_raw:
            raise self.fail(f"{key}.classes", "a non-empty list of device classes is required")
        classes: set[DeviceClass] = set()
        for value in classes_raw:
            try:
                classes.add(DeviceClass(value))
            except ValueError as exc:
                raise self.fail(f"{key}.classes", f"unknown device class {value!r}") from exc
        if "access" not in raw:
            raise self.fail(f"{key}.access", "required")
        access = self.level(f"{key}.access", raw["access"])
        days = self.days(f"{key}.days", raw["days"]) if "days" in raw else None
        window = self.window(f"{key}.between", raw["between"]) if "between" in raw else None
        where = self.location_names(f"{key}.locations", raw.get("locations"), locations)
        except_where = self.location_names(
            f"{key}.except_locations", raw.get("except_locations"), locations
        )
        starts = self.instant(f"{key}.from", raw["from"], tz) if "from" in raw else None
        ends = self.instant(f"{key}.until", raw["until"], tz) if "until" in raw else None
        if starts is not None and ends is not None and starts >= ends:
            raise self.fail(f"{key}.until", "must be after 'from'")
        return Rule(
            name=name,
            classes=frozenset(classes),
            access=access,
            days=days,
            window=window,
            locations=where,
            except_locations=except_where or frozenset(),
            starts=starts,
            ends=ends,
            lifted_by_exceptions=self.lifted_by_exceptions(
                key, raw, located=where is not None, absolute=starts is not None or ends is not None
            ),
        )

    def lifted_by_exceptions(
        self, key: str, raw: dict[str, Any], *, located: bool, absolute: bool
    ) -> bool:
        """`lifted_by_exceptions`: whether a device's access exception raises it above the rule.

        Defaults to false for a rule tied to places (`locations`: a BYOD-free changing room)
        or to an absolute window (`from`/`until`: an exam session), which hold for everyone;
        true for a working-hours window, which an exception is granted to get past."""
        return self.boolean(raw, f"{key}.lifted_by_exceptions", default=not (located or absolute))

    # -- values -----------------------------------------------------------------------------

    def days(self, key: str, value: Any) -> frozenset[int]:
        if isinstance(value, str):
            text = value.strip().lower()
            if "-" in text:
                first, _, last = text.partition("-")
                if first not in DAY_NAMES or last not in DAY_NAMES:
                    raise self.fail(key, f'{value!r}: use e.g. "mon-fri" or ["mon", "tue"]')
                a, b = DAY_NAMES.index(first), DAY_NAMES.index(last)
                span = range(a, b + 1) if a <= b else [*range(a, 7), *range(b + 1)]
                return frozenset(span)
            value = [text]
        if not isinstance(value, list) or not value:
            raise self.fail(key, 'use e.g. "mon-fri" or ["mon", "tue"]')
        out: set[int] = set()
        for item in value:
            name = item.strip().lower() if isinstance(item, str) else None
            if name in DAY_NAMES:
                out.add(DAY_NAMES.index(name))
            elif name in FULL_DAY_NAMES:
                out.add(FULL_DAY_NAMES.index(name))
            else:  # "monkey" once passed as Monday: only its first three letters were read
                raise self.fail(key, f"{item!r} is not a day (mon, tue, ..., sun)")
        return frozenset(out)

    def hhmm(self, key: str, value: Any) -> int:
        try:
            if not isinstance(value, str):
                raise ValueError(value)  # the one message below for every bad value
            return parse_hhmm(value)
        except ValueError as exc:
            raise self.fail(key, f"{value!r} is not a time of day (HH:MM, 00:00-24:00)") from exc

    def window(self, key: str, value: Any) -> tuple[int, int]:
        if not isinstance(value, str) or value.count("-") != 1:
            raise self.fail(key, f'{value!r}: use "HH:MM-HH:MM", e.g. "08:30-15:30"')
        start_text, end_text = value.split("-")
        start = self.hhmm(key, start_text)
        end = self.hhmm(key, end_text)
        if start >= end:
            raise self.fail(key, f"{value!r}: the start must be before the end")
        return start, end

    def location_names(self, key: str, value: Any, known: set[str]) -> frozenset[str] | None:
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(key, "must be a list of location names")
        for name in value:
            if name not in known:
                listed = ", ".join(sorted(known)) or "none defined"
                raise self.fail(key, f"unknown location {name!r} (locations: {listed})")
        return frozenset(value)

    def instant(self, key: str, value: Any, tz: ZoneInfo) -> float:
        if isinstance(value, datetime):
            moment = value
        else:
            try:
                moment = datetime.fromisoformat(str(value))
            except ValueError as exc:
                raise self.fail(key, f"{value!r} is not an ISO 8601 date-time") from exc
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=tz)
        try:
            real = EARLIEST <= moment <= LATEST
        except OverflowError:  # year 1 at a positive offset is before year 1 in UTC
            real = False
        if not real:
            raise self.fail(key, f"{value!r} is not a real date (years 1970-9998)")
        return moment.timestamp()

    def session_timeout(self, key: str, value: Any) -> int:
        """Seconds that fit RADIUS Session-Timeout: 1 to 4294967295."""
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.fail(key, f"{value!r} must be a whole number of seconds")
        if not 1 <= value <= MAX_SESSION_TIMEOUT:
            raise self.fail(
                key,
                f"{value} is out of range 1-{MAX_SESSION_TIMEOUT} seconds "
                "(RADIUS Session-Timeout is 32 bits)",
            )
        return value

    def text(self, key: str, value: Any) -> str:
        """A sentence or name people read: a string, without control characters."""
        if not isinstance(value, str):
            raise self.fail(key, f"{value!r} must be text in quotes")
        char = find_control(value)
        if char is not None:
            raise self.fail(key, f"contains a control character (U+{ord(char):04X})")
        return value

    def boolean(self, data: dict[str, Any], key: str, *, default: bool) -> bool:
        value = data.get(key.rsplit(".", maxsplit=1)[-1], default)
        if not isinstance(value, bool):
            raise self.fail(key, "must be true or false")
        return value

    def when_stale(self, data: dict[str, Any]) -> str:
        """`[radius] when_stale`: what RADIUS answers once its snapshot is older than
        `radius_max_stale_seconds` (the database gone): "registration" (every device as an
        unregistered one, no PAP) or "reject"."""
        radius = self.table(data, "radius", {"when_stale"})
        value = radius.get("when_stale", WHEN_STALE[0])
        if value not in WHEN_STALE:
            choices = " or ".join(f'"{choice}"' for choice in WHEN_STALE)
            raise self.fail("radius.when_stale", f"{value!r}: use {choices}")
        return str(value)

    def dns_tunnel_allow(self, data: dict[str, Any]) -> tuple[str, ...]:
        """`[monitor] dns_tunnel_allow`: domains (and their subdomains) whose lookups never
        count toward a DNS-tunnel alert, e.g. the school's antivirus: registered domains or
        names under one, never a bare suffix such as "net" or "co.uk"."""
        value = self.table(data, "monitor", MONITOR_KEYS).get("dns_tunnel_allow", [])
        if not isinstance(value, list):
            raise self.fail(
                "monitor.dns_tunnel_allow", 'a list of domains, e.g. ["example-av.net"]'
            )
        names = []
        for i, entry in enumerate(value):
            key = f"monitor.dns_tunnel_allow[{i}]"
            if not isinstance(entry, str):
                raise self.fail(key, f"{entry!r} must be a domain name in quotes")
            name = entry.strip().lower().removesuffix(".")
            problem = allow_entry_problem(name)
            if problem is not None:
                raise self.fail(key, problem)
            names.append(name)
        return tuple(names)

    def visitor_verify(self, visitor: dict[str, Any]) -> VisitorVerify:
        """`[visitor] verify`: "self" (the form alone, the default), "code" (a code reception
        issued) or "sponsor" (the member of staff visited approves by email)."""
        value = visitor.get("verify", VisitorVerify.SELF.value)
        choices = [v.value for v in VisitorVerify]
        if value not in choices:
            listed = ", ".join(f'"{choice}"' for choice in choices)
            raise self.fail("visitor.verify", f"{value!r}: use one of {listed}")
        return VisitorVerify(value)
