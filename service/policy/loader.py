"""Site policy files: TOML in, a validated `SitePolicy` out, or a `PolicyError` naming the key.

The keys are the contract of DESIGN.md; unknown keys are refused so a typo never silently
weakens a school's policy.
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from datetime import datetime, time
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from service.enums import LEVELS, Access, DeviceClass
from service.errors import PolicyError
from service.policy.model import WHEN_STALE, LocationSpec, Rule, SitePolicy

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
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
}
RULE_KEYS = {
    "name",
    "classes",
    "days",
    "between",
    "locations",
    "except_locations",
    "from",
    "until",
    "access",
    "description",
}
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
    """ "08:30" → minutes after midnight; "24:00" allowed as the end of the day."""
    if value.strip() == "24:00":
        return 24 * 60
    parsed = time.fromisoformat(value.strip())
    return parsed.hour * 60 + parsed.minute


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
        try:
            tz = ZoneInfo(str(timezone))
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise self.fail("timezone", f"unknown time zone {timezone!r}") from exc
        vlans = self.vlans(data.get("vlans"))
        access = self.access(data.get("access"))
        visitor = self.table(data, "visitor", {"aua_valid_until", "school_day_ends"})
        aua = str(visitor.get("aua_valid_until", "end_of_day"))
        if aua != "end_of_day":
            try:
                aua = str(parse_duration(aua))
            except ValueError as exc:
                raise self.fail(
                    "visitor.aua_valid_until", f'{aua!r}: use "end_of_day" or e.g. "8h", "7d"'
                ) from exc
        day_ends = self.hhmm("visitor.school_day_ends", visitor.get("school_day_ends", "18:00"))
        staff = self.table(data, "staff", {"needs_approval", "needs_byod_statement"})
        session = self.table(data, "session", {"registration_timeout", "max_timeout"})
        registration_timeout = self.positive_int(
            "session.registration_timeout", session.get("registration_timeout", 300)
        )
        max_timeout = self.positive_int("session.max_timeout", session.get("max_timeout", 43200))
        explanations = self.table(data, "explanations", {c.value for c in DeviceClass})
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
            school_name=str(data.get("school_name", site)),
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
            explanations={str(k): str(v) for k, v in explanations.items()},
            when_stale=self.when_stale(data),
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
        if value not in {a.value for a in LEVELS}:
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
        )

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
            if not isinstance(item, str) or item.strip().lower()[:3] not in DAY_NAMES:
                raise self.fail(key, f"{item!r} is not a day (mon, tue, ..., sun)")
            out.add(DAY_NAMES.index(item.strip().lower()[:3]))
        return frozenset(out)

    def hhmm(self, key: str, value: Any) -> int:
        try:
            return parse_hhmm(str(value))
        except ValueError as exc:
            raise self.fail(key, f"{value!r} is not a time of day (HH:MM)") from exc

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
        return moment.timestamp()

    def positive_int(self, key: str, value: Any) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise self.fail(key, f"{value!r} must be a positive number of seconds")
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
