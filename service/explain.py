"""A decision in plain words, for the people it is about (the portal's landing and done pages).

`policy explain` prints the engine's `Decision.reason`; this module keeps that reason as it is
(one wording of each reason, the engine's) and adds what a visitor or a member of staff asks
next: what they can use now, where that holds, and when it changes ("Internet in the staff
room now; everywhere from 15:15"). It asks the engine again for the same device at the same
place, at no particular place, and at the instant the answer could change (`valid_until`), so
the sentence cannot say anything the policy does not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from sqlalchemy.orm import Session

from service.enums import Access, DeviceClass
from service.errors import NotFound
from service.facts import load_device_facts, load_policy
from service.mac import normalize_mac
from service.policy import decide
from service.policy.model import AccessRequest, Decision, DeviceFacts, SitePolicy

# What each level means to the person holding the device, as the start of a sentence.
ACCESS_WORDS = {
    Access.FULL: "Full access to the school network",
    Access.SEGREGATED: "Internet, on the network kept for personal devices",
    Access.INTERNET: "Internet",
    Access.NONE: "No network access",
    Access.REGISTRATION: "Only this sign-in page",
}


class Tone(StrEnum):
    """How a page shows the answer: only a device that can use the network is a success."""

    CONNECTED = "ok"
    WAITING = "wait"
    REFUSED = "refused"


@dataclass(frozen=True, slots=True)
class PlainDecision:
    """What a page says about a decision: `summary` (access, where, when it changes), the
    engine's own `reason` (as `policy explain` prints it), and the `tone` to show it in."""

    access: Access
    summary: str
    reason: str
    tone: Tone
    changes_at: datetime | None  # the instant the answer could change (UTC), if any
    changes_at_text: str | None  # the same, in the site's zone ("18:00", "08:50 on Tuesday")

    @property
    def connected(self) -> bool:
        return self.tone is Tone.CONNECTED


def place_words(location: str | None) -> str:
    """A `[[locations]]` name as words: "staff-room" → "the staff room"."""
    if not location:
        return "here"
    return "the " + location.replace("-", " ").replace("_", " ")


def local_time_text(policy: SitePolicy, moment: datetime, now: datetime) -> str:
    """A time in the site's zone, to the nearest minute (an expiry at 17:59:59.9 is 18:00):
    "18:00" today, "08:50 on Tuesday" within a week, else with the date."""
    ts = math.floor(moment.timestamp() / 60 + 0.5) * 60
    local = datetime.fromtimestamp(ts, UTC).astimezone(policy.tz)
    today = now.astimezone(policy.tz).date()
    text = f"{local.hour:02d}:{local.minute:02d}"
    days = (local.date() - today).days
    if days == 0:
        return text
    if days == 1:
        return f"{text} tomorrow"
    if 1 < days < 7:
        return f"{text} on {local.strftime('%A')}"
    return f"{text} on {local.day} {local.strftime('%B %Y')}"


def _tone(access: Access) -> Tone:
    if access is Access.NONE:
        return Tone.REFUSED
    if access is Access.REGISTRATION:
        return Tone.WAITING
    return Tone.CONNECTED


def plain_decision(
    decision: Decision,
    *,
    policy: SitePolicy,
    now: datetime,
    request: AccessRequest | None = None,
    facts: DeviceFacts | None = None,
) -> PlainDecision:
    """`decision` (for `request` and the device `facts`, at `now`) in plain words.

    With the request and facts, it also says where the answer holds (the same device asked
    at no named place) and what it becomes when it changes; without, only when.
    """
    access = decision.access
    words = ACCESS_WORDS[access]
    here = place_words(decision.location)
    changes_at = (
        None if decision.valid_until is None else datetime.fromtimestamp(decision.valid_until, UTC)
    )
    when = None if changes_at is None else local_time_text(policy, changes_at, now)
    # The same device asked at no named place: where the answer holds beyond this one.
    nowhere = AccessRequest(
        mac=None if request is None else request.mac,
        user_role=None if request is None else request.user_role,
    )
    anywhere_now = None if request is None else decide(nowhere, facts, policy, now)

    only_here = (
        decision.location is not None
        and anywhere_now is not None
        and anywhere_now.access is not access
    )
    summary = f"{words} in {here} now" if only_here else f"{words} now"
    if only_here and anywhere_now is not None and anywhere_now.valid_until is not None:
        # Elsewhere the answer changes first (a rule this place is exempt from ends).
        spreads_at = datetime.fromtimestamp(anywhere_now.valid_until, UTC)
        if changes_at is None or spreads_at < changes_at:
            later_anywhere = decide(nowhere, facts, policy, spreads_at)
            if later_anywhere.access is access:
                summary += f"; everywhere from {local_time_text(policy, spreads_at, now)}"
    if when is not None and changes_at is not None and request is not None:
        later_here = decide(request, facts, policy, changes_at)
        if later_here.access is Access.REGISTRATION and access is not Access.REGISTRATION:
            summary += f" until {when}; then this device must sign in again"
        elif later_here.access is not access:
            later_anywhere = decide(nowhere, facts, policy, changes_at)
            then = ACCESS_WORDS[later_here.access]
            then = then[0].lower() + then[1:]
            where = "" if later_anywhere.access is later_here.access else f" in {here}"
            summary += f"; {then}{where} from {when}"
    elif when is not None and access not in (Access.NONE, Access.REGISTRATION):
        summary += f" until {when}"
    summary += "."
    return PlainDecision(
        access=access,
        summary=summary,
        reason=decision.reason,
        tone=_tone(access),
        changes_at=changes_at,
        changes_at_text=when,
    )


def explain_for_mac(
    *,
    session: Session,
    mac: str,
    site_code: str,
    now: datetime,
    nas_identifier: str | None = None,
    called_station_id: str | None = None,
    nas_port_id: str | None = None,
) -> PlainDecision:
    """Decide for one device where the network saw it, and say it in plain words (the
    decision is the one `policy explain` prints for the same place and time)."""
    canonical = normalize_mac(mac)
    facts = load_device_facts(session, [canonical]).get(canonical)
    policy = load_policy(session, site_code)
    request = AccessRequest(
        mac=canonical,
        nas_identifier=nas_identifier,
        called_station_id=called_station_id,
        nas_port_id=nas_port_id,
    )
    decision = decide(request, facts, policy, now)
    return plain_decision(decision, policy=policy, now=now, request=request, facts=facts)


def class_refusal(*, session: Session, site_code: str, device_class: DeviceClass) -> str | None:
    """The school's own explanation when its policy gives every device of this class no
    network access (so registering or approving one can never let it on), else None."""
    try:
        policy = load_policy(session, site_code)
    except NotFound:
        return None
    if policy.access.get(device_class) is not Access.NONE:
        return None
    return policy.explanations.get(device_class.value) or (
        f"{policy.school_name or site_code}'s policy gives "
        f"{device_class.value.replace('_', '-')} devices no network access."
    )
