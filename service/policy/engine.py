"""The policy engine: `decide()` is a pure function of (request, device facts, policy, time).

Order of questions (DESIGN.md): unknown device → registration; revoked, lost, exited → none;
the class's level from the site's matrix; narrowing rules (time windows, BYOD-free places,
exam sessions) which only lower it; exceptions, which only raise it (a headteacher's decision
for one device is not undone by the timetable); then the gates a level needs (visitor AUA,
staff approval and BYOD statement) which send the device to the registration portal.

Each `Decision` also says how long it holds (`valid_until`: the next rule boundary, grant edge
or signature expiry that could change it; `timeout_cap`) and which facts it rests on
(`facts_key`), so the RADIUS decision cache can reuse it without re-deriving the policy.

Hot path: the RADIUS server calls this for every Access-Request. It works on POSIX seconds,
keeps per-policy memo tables (location per NAS identifiers, local clock per minute, rule
boundaries per day) and allocates little. Guarded by `bench/policy.py` (target 100,000/s).
"""

from __future__ import annotations

import math
from bisect import bisect_right
from datetime import UTC, date, datetime, timedelta
from typing import Any

from service.enums import Access, DeviceClass, DeviceStatus, Role
from service.policy.model import (
    AccessRequest,
    Decision,
    DeviceFacts,
    Grant,
    Rule,
    SitePolicy,
)

NONE = Access.NONE
REGISTRATION = Access.REGISTRATION
VISITOR = DeviceClass.VISITOR_OWNED
STAFF = DeviceClass.STAFF_OWNED
PERSONAL = frozenset(
    {DeviceClass.STAFF_OWNED, DeviceClass.LEARNER_OWNED, DeviceClass.VISITOR_OWNED}
)
STAFF_ROLE = Role.STAFF
_LOCATION_MEMO_LIMIT = 50_000
_INF = math.inf
_TOP_RANK = max(level.rank for level in Access) + 1

UNKNOWN_KEY: tuple[Any, ...] = ()  # the device facts key of a device the school does not know
UNKNOWN_REASON = (
    "This device is not registered with the school, so it only reaches the registration "
    "portal, where a visitor signs the acceptable use agreement or staff register it."
)

CLASS_LABEL = {
    DeviceClass.SCHOOL_SINGLE: "A school-owned device allocated to one person",
    DeviceClass.SCHOOL_SHARED: "A school-owned device shared by several users",
    DeviceClass.AUTHORISED: "An authorised device",
    DeviceClass.STAFF_OWNED: "A member of staff's own device",
    DeviceClass.LEARNER_OWNED: "A pupil's own device",
    DeviceClass.VISITOR_OWNED: "A visitor's own device",
}
LEVEL_TEXT = {
    Access.FULL: "full network access",
    Access.SEGREGATED: (
        "the segregated network for personal devices (kept apart from school systems)"
    ),
    Access.INTERNET: "internet-only access",
    Access.NONE: "no network access",
}
# How a PAP login by staff from an unknown device is decided: as their own device, pending.
_STAFF_UNKNOWN = DeviceFacts(
    mac="", device_class=STAFF, status=DeviceStatus.PENDING, owner_role=STAFF_ROLE
)
_STAFF_UNKNOWN_LEFT = DeviceFacts(
    mac="",
    device_class=STAFF,
    status=DeviceStatus.PENDING,
    owner_role=STAFF_ROLE,
    owner_active=False,
)
STATUS_REASON = {
    DeviceStatus.REVOKED: "The school revoked this device's access",
    DeviceStatus.LOST: "This device was reported lost or stolen, so its access is revoked",
    DeviceStatus.EXITED: "This device went through the exit process and is no longer used here",
}


def decide(
    request: AccessRequest,
    device: DeviceFacts | None,
    policy: SitePolicy,
    now: datetime,
) -> Decision:
    """Answer one access question, and say how long the answer holds (`Decision`). No I/O;
    `now` must be timezone-aware."""
    ts = now.timestamp()
    location = locate(policy, request)
    if device is None:
        if request.user_role is not STAFF_ROLE or request.mac is None:
            timeout = policy.registration_timeout
            return Decision(
                REGISTRATION,
                policy.vlans[REGISTRATION],
                UNKNOWN_REASON,
                "unknown-device",
                timeout,
                location,
                None,
                timeout,
                (UNKNOWN_KEY, location),
            )
        # A member of staff signed in with their own password (PAP) from a device the school
        # does not know: it is their own device, not yet approved (so it lands in
        # registration, where they can register it, instead of being refused).
        device = _STAFF_UNKNOWN if request.user_active else _STAFF_UNKNOWN_LEFT
    key = device_key(device)
    facts_key = None if key is None else (key, location)
    status = device.status
    if status.is_blocked:
        reason = STATUS_REASON[status]
        if device.status_reason:
            reason += f" ({device.status_reason})"
        rule_name = f"status.{status.value}"
        return Decision(NONE, None, reason + ".", rule_name, None, location, None, None, facts_key)
    device_class = device.device_class
    if device_class in PERSONAL and not device.owner_active:
        return Decision(
            NONE,
            None,
            "The owner of this personal device has left the school, so it no longer has access.",
            "owner-left",
            None,
            location,
            None,
            None,
            facts_key,
        )

    base = policy.access[device_class]
    level = base
    # Narrowing rules come in two kinds (`Rule.lifted_by_exceptions`): those an exception
    # lifts (working hours) lower the level before the exception is applied; those it does
    # not lift (safeguarding areas, exam sessions) cap whatever the exception gave.
    narrowing: Rule | None = None  # the lowest rule an exception may lift
    held: Rule | None = None  # the lowest rule no exception lifts
    # The highest level an exception could give: below it a held rule matters.
    ceiling = _TOP_RANK if device.grants else base.rank
    _, weekday, minute, _ = _clock(policy, ts)
    for rule in policy.rules:
        if device_class in rule.classes:
            if rule.lifted_by_exceptions:
                if rule.access.rank < level.rank and _rule_applies(
                    rule, location, ts, weekday, minute
                ):
                    level = rule.access
                    narrowing = rule
            elif rule.access.rank < (ceiling if held is None else held.access.rank) and (
                _rule_applies(rule, location, ts, weekday, minute)
            ):
                held = rule
    narrowed = level

    grant = _best_grant(device.grants, ts) if device.grants else None
    widened = grant is not None and grant.access.rank > level.rank
    if grant is not None and widened:
        level = grant.access
    capped: Rule | None = None  # the rule no exception lifts, when it lowers the level
    if held is not None and held.access.rank < level.rank:
        level = held.access
        capped = held
    held_rule = (
        capped.name
        if capped is not None and grant is not None and grant.access.rank > capped.access.rank
        else None
    )
    lifted_rule = narrowing.name if narrowing is not None and widened else None
    horizon = change_horizon(policy, device, location, ts)
    valid_until = None if horizon == _INF else horizon

    label = CLASS_LABEL[device_class]
    where = f" in {location}" if location else ""
    if level is NONE:
        in_force = capped if capped is not None else (None if widened else narrowing)
        if in_force is not None:
            reason = (
                f'{label}: the rule "{in_force.name}" applies{where} at this time, '
                "so it has no network access."
            )
            if held_rule is not None and grant is not None:
                reason += (
                    f" An exception approved by {grant.approved_by} ({grant.reason}) does not "
                    "lift this rule: it holds for exceptions too."
                )
            rule_name = f"rule:{in_force.name}"
        else:
            reason = f"{label}: {policy.school_name}'s policy gives it no network access."
            extra = policy.explanations.get(device_class.value)
            if extra:
                reason += f" {extra}"
            rule_name = f"access.{device_class.value}"
        return Decision(
            NONE,
            None,
            reason,
            rule_name,
            None,
            location,
            valid_until,
            None,
            facts_key,
            lifted_rule,
            held_rule,
        )

    # The gates: what the level needs before it is granted.
    gate: str | None = None
    if device_class is VISITOR:
        until = device.aua_valid_until
        if until is None or until <= ts:
            gate = "gate.visitor-aua"
            reason = (
                "A visitor's own device gets internet access once the visitor acceptable use "
                "agreement is signed at the portal."
                if until is None
                else "The visitor's signed acceptable use agreement has expired; signing it again "
                "at the portal restores access."
            )
    elif device_class is STAFF:
        until = device.byod_valid_until
        if policy.staff_needs_approval and status is DeviceStatus.PENDING:
            gate = "gate.staff-approval"
            reason = (
                "A member of staff's own device needs the school's permission first: it is "
                "waiting for IT to approve it."
            )
        elif policy.staff_needs_byod_statement and (until is None or until <= ts):
            gate = "gate.staff-byod"
            reason = (
                "A member of staff's own device needs the signed BYOD statement; it can be "
                "signed at the portal."
            )
    elif status is DeviceStatus.PENDING:
        gate = "gate.pending"
        reason = f"{label} is waiting for IT to approve it."
    if gate is not None:
        # Behind a gate the level still follows rules and grants: when one of those ends the
        # answer may change (to no access, say), so the timeout does not outlive it.
        cap = min(policy.registration_timeout, policy.max_session_timeout)
        return Decision(
            REGISTRATION,
            policy.vlans[REGISTRATION],
            reason,
            gate,
            session_timeout_at(ts, valid_until, cap),
            location,
            valid_until,
            cap,
            facts_key,
        )

    reason = f"{label} gets {LEVEL_TEXT[base]} under {policy.school_name}'s policy"
    rule_name = f"access.{device_class.value}"
    if narrowing is not None:
        reason += f'; the rule "{narrowing.name}" limits it{where} now to {LEVEL_TEXT[narrowed]}'
        rule_name = f"rule:{narrowing.name}"
    if grant is not None and widened:
        reason += (
            f"; an exception approved by {grant.approved_by} ({grant.reason}) gives "
            f"{LEVEL_TEXT[grant.access]}"
        )
        if grant.valid_until != math.inf:
            reason += f" until {_local_text(policy, grant.valid_until)}"
        if lifted_rule is not None:
            reason += f', lifting the rule "{lifted_rule}"'
        rule_name = "exception"
    if capped is not None:
        reason += f'; the rule "{capped.name}" limits it{where} now to {LEVEL_TEXT[level]}'
        if held_rule is not None:
            reason += ", which exceptions do not lift"
        rule_name = f"rule:{capped.name}"
    cap = policy.max_session_timeout
    return Decision(
        level,
        policy.vlans[level],
        reason + ".",
        rule_name,
        session_timeout_at(ts, valid_until, cap),
        location,
        valid_until,
        cap,
        facts_key,
        lifted_rule,
        held_rule,
    )


def device_key(device: DeviceFacts) -> tuple[Any, ...] | None:
    """What `decide()` reads of a device (its facts key), or None when it has exceptions
    granted (their start and end make its answer its own).

    Devices with equal keys get equal decisions at the same place and time: the MAC, owner
    name and site do not enter a decision. The RADIUS server numbers devices by this key and
    reuses one answer for all devices of a number (a handful cover thousands of devices).
    """
    if device.grants:
        return None
    return (
        device.device_class,
        device.status,
        device.status_reason,
        device.owner_active,
        device.aua_valid_until,
        device.byod_valid_until,
    )


def session_timeout_at(ts: float, valid_until: float | None, cap: int) -> int:
    """The Session-Timeout of an answer at `ts` (before its `valid_until`): the seconds until
    it could change, at most `cap`. `decide()` gives it for `now`; the RADIUS decision cache
    asks again for each later packet that reuses the answer."""
    if valid_until is None:
        return cap
    return max(1, math.floor(min(ts + cap, valid_until) - ts))


def locate(policy: SitePolicy, request: AccessRequest) -> str | None:
    """The first `[[locations]]` entry whose patterns match NAS-Identifier, Called-Station-Id
    (whole, AP MAC part or SSID part) or NAS-Port-Id; None when nothing matches."""
    if not policy.locations:
        return None
    key = (request.nas_identifier, request.called_station_id, request.nas_port_id)
    memo = policy._memo.setdefault("locate", {})
    found = memo.get(key, memo)
    if found is not memo:
        return found  # type: ignore[no-any-return]
    candidates = [v for v in key if v]
    called = request.called_station_id
    if called and ":" in called.replace("-", ":")[17:]:
        # "AA-BB-CC-DD-EE-FF:SSID" → also try the AP MAC and the SSID alone.
        candidates.extend((called[:17], called[18:]))
    result: str | None = None
    for spec in policy.locations:
        if any(spec.regex.match(value) for value in candidates):
            result = spec.name
            break
    if len(memo) > _LOCATION_MEMO_LIMIT:
        memo.clear()
    memo[key] = result
    return result


def _best_grant(grants: tuple[Grant, ...], ts: float) -> Grant | None:
    best: Grant | None = None
    for grant in grants:
        if grant.valid_from <= ts < grant.valid_until and (
            best is None or grant.access.rank > best.access.rank
        ):
            best = grant
    return best


def _rule_applies(rule: Rule, location: str | None, ts: float, weekday: int, minute: int) -> bool:
    if rule.locations is not None and location not in rule.locations:
        return False
    if location in rule.except_locations:
        return False
    if rule.starts is not None and ts < rule.starts:
        return False
    if rule.ends is not None and ts >= rule.ends:
        return False
    if rule.days is not None and weekday not in rule.days:
        return False
    if rule.window is not None:
        start, end = rule.window
        return start <= minute < end
    return True


def _clock(policy: SitePolicy, ts: float) -> tuple[int, int, int, int]:
    """(UTC minute, weekday, minute of the local day, local date's ordinal) for `ts`,
    memoised per UTC minute (converting to the site's zone is the engine's dearest step)."""
    bucket = int(ts // 60)
    memo: tuple[int, int, int, int] | None = policy._memo.get("clock")
    if memo is not None and memo[0] == bucket:
        return memo
    local = datetime.fromtimestamp(ts, policy.tz)
    memo = (bucket, local.weekday(), local.hour * 60 + local.minute, local.toordinal())
    policy._memo["clock"] = memo
    return memo


def change_horizon(
    policy: SitePolicy, device: DeviceFacts, location: str | None, ts: float
) -> float:
    """The first instant after `ts` at which the answer for this (active) device at this place
    could change: the next rule boundary for its class and place, a grant starting or ending,
    or the expiry of the signature its gate reads; `math.inf` when nothing moves it. The
    RADIUS server caches answers until then."""
    device_class = device.device_class
    boundaries = _boundaries(policy, device_class, location, ts)
    index = bisect_right(boundaries, ts)
    horizon = boundaries[index] if index < len(boundaries) else math.inf
    for grant in device.grants:
        if ts < grant.valid_from < horizon:
            horizon = grant.valid_from
        if ts < grant.valid_until < horizon:
            horizon = grant.valid_until
    if device_class is VISITOR:
        expiry = device.aua_valid_until
    elif device_class is STAFF and policy.staff_needs_byod_statement:
        expiry = device.byod_valid_until
    else:
        expiry = None
    if expiry is not None and ts < expiry < horizon:
        horizon = expiry
    return horizon


def _boundaries(
    policy: SitePolicy, device_class: DeviceClass, location: str | None, ts: float
) -> tuple[float, ...]:
    """Sorted instants around `ts` at which a rule relevant to this class and place may start or
    stop applying (window edges, day changes, absolute from/until, clock changes)."""
    ordinal = _clock(policy, ts)[3]
    key = ("bounds", ordinal, device_class, location)
    cached = policy._memo.get(key)
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    day = date.fromordinal(ordinal)
    rules = [
        r
        for r in policy.rules
        if device_class in r.classes
        and (r.locations is None or location in r.locations)
        and location not in r.except_locations
    ]
    points: set[float] = set()
    span = math.ceil(policy.max_session_timeout / 86400) + 1
    days = [day + timedelta(days=offset) for offset in range(-1, span + 1)]
    timed = [r for r in rules if r.window is not None or r.days is not None]
    for rule in rules:
        if rule.starts is not None:
            points.add(rule.starts)
        if rule.ends is not None:
            points.add(rule.ends)
    for current in days:
        weekday = current.weekday()
        for rule in timed:
            if rule.days is not None and rule.days != frozenset(range(7)):
                points.add(_local_instant(policy, current, 0))  # the day itself changes
            if rule.window is not None and (rule.days is None or weekday in rule.days):
                points.add(_local_instant(policy, current, rule.window[0]))
                points.add(_local_instant(policy, current, rule.window[1]))
        if timed:
            transition = _offset_change(policy, current)
            if transition is not None:
                points.add(transition)
    result = tuple(sorted(points))
    if len(policy._memo) > _LOCATION_MEMO_LIMIT:
        policy._memo.clear()
    policy._memo[key] = result
    return result


def _local_instant(policy: SitePolicy, day: date, minute: int) -> float:
    base = datetime(day.year, day.month, day.day, tzinfo=policy.tz)
    if minute >= 24 * 60:
        nxt = day + timedelta(days=1)
        return datetime(nxt.year, nxt.month, nxt.day, tzinfo=policy.tz).timestamp()
    return base.replace(hour=minute // 60, minute=minute % 60).timestamp()


def _offset_change(policy: SitePolicy, day: date) -> float | None:
    """The instant the UTC offset changes on `day` (a clock change), to the minute, or None."""
    start = datetime(day.year, day.month, day.day, tzinfo=policy.tz).timestamp()
    end = start + 86400 + 7200
    tz = policy.tz

    def offset(t: float) -> timedelta | None:
        return datetime.fromtimestamp(t, tz).utcoffset()

    if offset(start) == offset(end):
        return None
    low, high = start, end
    while high - low > 60:
        mid = (low + high) / 2
        if offset(mid) == offset(start):
            low = mid
        else:
            high = mid
    return math.floor(high / 60) * 60.0


def _local_text(policy: SitePolicy, ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).astimezone(policy.tz).strftime("%d %b %Y %H:%M")
