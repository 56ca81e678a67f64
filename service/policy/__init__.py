"""The policy engine: a pure function from (request, facts, site policy, time) to a decision."""

from service.policy.engine import decide, device_key, locate, session_timeout_at
from service.policy.loader import load_policy_text, parse_duration
from service.policy.model import (
    NO_EXPIRY,
    AccessRequest,
    Decision,
    DeviceFacts,
    Grant,
    LocationSpec,
    Rule,
    SitePolicy,
)

__all__ = [
    "NO_EXPIRY",
    "AccessRequest",
    "Decision",
    "DeviceFacts",
    "Grant",
    "LocationSpec",
    "Rule",
    "SitePolicy",
    "decide",
    "device_key",
    "load_policy_text",
    "locate",
    "parse_duration",
    "session_timeout_at",
]
