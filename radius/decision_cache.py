"""The decision cache (MAB): one engine answer reused for every device with the same facts.

`decide()` says, in its `Decision`, how long its answer holds (`valid_until`) and which facts
it depends on (`facts_key`: the device's facts as the engine reads them, and the place it
matched). The snapshot numbers devices by `service.policy.device_key` (`HotState.profiles`),
so the authorizer caches an answer per NAS (in its `NasEntry`, so a new snapshot starts empty)
by (profile number, NAS-Identifier, Called-Station-Id, NAS-Port-Id), the raw attributes the
place is found from, until the engine's `valid_until` and at most `DECISION_TTL` seconds. A
decision without a `facts_key` (a device with exceptions granted) is served, not cached.

The Session-Timeout of a later packet reusing an answer is the engine's
`session_timeout_at(ts, valid_until, timeout_cap)`, exactly what `decide()` would say then;
this module stores and compares, it never re-derives policy.

Hot path: guarded by `bench/radius_load.py`. An answer is a plain tuple (`Answer`) made once
per decision, unpacked per packet; reply bodies are built once and memoised.
"""

from __future__ import annotations

import math
from typing import Any

from radius import codec
from radius.vendors import VendorProfile
from service.enums import Access
from service.policy import Decision

DECISION_CACHE_LIMIT = 50_000
DECISION_TTL = 60.0  # a backstop: the engine's `valid_until` is what keeps answers right
_REJECT_ATTRS_LIMIT = 1024
_TIMEOUT_ATTRS_LIMIT = 100_000
_INF = math.inf
ACCESS_NONE = Access.NONE
_ACCESS_ACCEPT = codec.ACCESS_ACCEPT
_ACCESS_REJECT = codec.ACCESS_REJECT

# One answer: (valid until, valid from (the clock may step back), the engine's valid_until
# when the Session-Timeout is computed per packet (else None: the body carries it), the
# timeout cap, reply code, reply body, location, access, VLAN, reason, rule, Session-Timeout
# at the decision).
Answer = tuple[
    float,
    float,
    float | None,
    int | None,
    int,
    bytes,
    str | None,
    str,
    int | None,
    str,
    str,
    int | None,
]

# Session-Timeout + Termination-Action=RADIUS-Request, encoded, by timeout.
timeout_attrs: dict[int, bytes] = {}
_reject_attrs: dict[str, bytes] = {}


def session_attrs(timeout: int) -> bytes:
    body = timeout_attrs.get(timeout)
    if body is None:
        if len(timeout_attrs) > _TIMEOUT_ATTRS_LIMIT:
            timeout_attrs.clear()
        body = timeout_attrs[timeout] = codec.attr_int(
            codec.SESSION_TIMEOUT, timeout
        ) + codec.attr_int(codec.TERMINATION_ACTION, codec.TERMINATION_ACTION_RADIUS_REQUEST)
    return body


def reject_body(reason: str) -> bytes:
    """The Reply-Message attributes of a reject, memoised by reason."""
    body = _reject_attrs.get(reason)
    if body is None:
        if len(_reject_attrs) > _REJECT_ATTRS_LIMIT:
            _reject_attrs.clear()
        body = _reject_attrs[reason] = codec.split_text(codec.REPLY_MESSAGE, reason)
    return body


def answer_for(decision: Decision, profile: VendorProfile, decided_at: float) -> Answer:
    """The answer to send (and, when the decision has a `facts_key`, to cache) for a decision
    made at `decided_at`."""
    if decision.access is ACCESS_NONE:
        code = _ACCESS_REJECT
        body = reject_body(decision.reason)
    else:
        code = _ACCESS_ACCEPT
        body = profile.accept_attributes(decision.access, decision.vlan)
    valid_until = decision.valid_until
    cap = decision.timeout_cap
    per_packet = valid_until if cap is not None else None
    if per_packet is None and decision.session_timeout is not None:
        body += session_attrs(decision.session_timeout)  # the same for every packet
    expires = decided_at + DECISION_TTL
    if valid_until is not None and valid_until < expires:
        expires = valid_until
    return (
        expires,
        decided_at,
        per_packet,
        cap,
        code,
        body,
        decision.location,
        decision.access.value,
        decision.vlan,
        decision.reason,
        decision.rule,
        decision.session_timeout,
    )


def refusal(reason: str, rule: str) -> Answer:
    """An Access-Reject the server makes itself (a method it does not answer, a wrong
    password, no policy loaded): never cached."""
    body = reject_body(reason)
    return (
        -_INF,
        _INF,
        None,
        None,
        _ACCESS_REJECT,
        body,
        None,
        ACCESS_NONE.value,
        None,
        reason,
        rule,
        None,
    )


def remember(cache: dict[tuple[Any, ...], Any], key: tuple[Any, ...], answer: Answer) -> None:
    if len(cache) >= DECISION_CACHE_LIMIT:
        cache.clear()
    cache[key] = answer
