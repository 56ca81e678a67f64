"""Enumerations shared by the model, the policy engine and the adapters.

They are `StrEnum`s so the stored value, the CLI value and the JSON value are one string.
"""

from __future__ import annotations

from enum import StrEnum


class DeviceClass(StrEnum):
    SCHOOL_SINGLE = "school_single"
    SCHOOL_SHARED = "school_shared"
    AUTHORISED = "authorised"
    STAFF_OWNED = "staff_owned"
    LEARNER_OWNED = "learner_owned"
    VISITOR_OWNED = "visitor_owned"

    @property
    def is_personal(self) -> bool:
        return self in PERSONAL_CLASSES

    @property
    def is_school(self) -> bool:
        return self in (DeviceClass.SCHOOL_SINGLE, DeviceClass.SCHOOL_SHARED)


PERSONAL_CLASSES = frozenset(
    {DeviceClass.STAFF_OWNED, DeviceClass.LEARNER_OWNED, DeviceClass.VISITOR_OWNED}
)


class Access(StrEnum):
    """What a decision grants. `registration` is not a level: it is the walled garden."""

    FULL = "full"
    SEGREGATED = "segregated"
    INTERNET = "internet"
    NONE = "none"
    REGISTRATION = "registration"

    @property
    def rank(self) -> int:
        return ACCESS_RANK[self]


# full > segregated > internet > none; registration sits with none for ordering purposes
# because it grants nothing beyond the portal.
ACCESS_RANK: dict[Access, int] = {
    Access.FULL: 3,
    Access.SEGREGATED: 2,
    Access.INTERNET: 1,
    Access.NONE: 0,
    Access.REGISTRATION: 0,
}
LEVELS: tuple[Access, ...] = (Access.FULL, Access.SEGREGATED, Access.INTERNET, Access.NONE)


class Role(StrEnum):
    STAFF = "staff"
    LEARNER = "learner"
    VISITOR = "visitor"
    CONTRACTOR = "contractor"
    GOVERNOR = "governor"
    VOLUNTEER = "volunteer"


class DeviceStatus(StrEnum):
    PENDING = "pending"
    ACTIVE = "active"
    REVOKED = "revoked"
    LOST = "lost"
    EXITED = "exited"

    @property
    def is_blocked(self) -> bool:
        return self in (DeviceStatus.REVOKED, DeviceStatus.LOST, DeviceStatus.EXITED)


class AgreementKind(StrEnum):
    VISITOR_AUA = "visitor_aua"
    STAFF_BYOD = "staff_byod"


class IncidentKind(StrEnum):
    LOST = "lost"
    STOLEN = "stolen"
    COMPROMISED = "compromised"


RFC5176_COA_PORT = 3799  # the Dynamic Authorization port of RFC 5176 §2.3


class NasVendor(StrEnum):
    GENERIC = "generic"
    CISCO = "cisco"
    ARUBA = "aruba"
    UNIFI = "unifi"
    MERAKI = "meraki"
    RUCKUS = "ruckus"

    @property
    def default_coa_port(self) -> int:
        """The UDP port this vendor's NAS listens on for Disconnect/CoA out of the box: RFC 5176's
        3799, except Cisco (IOS-XE / AireOS) and Meraki MR APs, which listen on 1700 (the sources
        are listed under the controller table in deploy/README.md)."""
        return 1700 if self in (NasVendor.CISCO, NasVendor.MERAKI) else RFC5176_COA_PORT


class CoaKind(StrEnum):
    """What a queued request asks of the NAS (RFC 5176). `coa` means "apply the new decision":
    sent as a CoA-Request where the vendor re-authenticates on one, else as a Disconnect."""

    COA = "coa"
    DISCONNECT = "disconnect"


class CoaState(StrEnum):
    """Where a CoA / Disconnect request is: queued -> sent -> ack | nak | timeout | failed;
    `fallback` when a CoA-Request was NAKed and a Disconnect-Request is queued in its place."""

    QUEUED = "queued"
    SENT = "sent"
    FALLBACK = "fallback"
    ACK = "ack"
    NAK = "nak"
    TIMEOUT = "timeout"
    FAILED = "failed"

    @property
    def is_final(self) -> bool:
        return self in FINAL_COA_STATES


PENDING_COA_STATES = (CoaState.QUEUED, CoaState.SENT, CoaState.FALLBACK)
FINAL_COA_STATES = (CoaState.ACK, CoaState.NAK, CoaState.TIMEOUT, CoaState.FAILED)


class SignatureSource(StrEnum):
    PORTAL = "portal"
    PAPER = "paper"
    API = "api"


class AuditTag(StrEnum):
    """Audit events, shaped "source:subject:action" as in warehouse's events/tags.py."""

    SITE_CREATE = "admin:site:create"
    POLICY_LOAD = "admin:policy:load"
    NAS_CREATE = "admin:nas:create"
    NAS_REMOVE = "admin:nas:remove"
    PERSON_CREATE = "admin:person:create"
    PERSON_LEAVE = "admin:person:leave"
    PERSON_PASSWORD = "admin:person:set-password"
    DEVICE_CREATE = "admin:device:create"
    DEVICE_IMPORT = "admin:device:import"
    DEVICE_APPROVE = "admin:device:approve"
    DEVICE_REVOKE = "admin:device:revoke"
    DEVICE_LOST = "admin:device:lost"
    DEVICE_EXIT = "admin:device:exit"
    DEVICE_DISCONNECT = "admin:device:disconnect"
    DEVICE_REGISTER = "portal:device:register"
    AGREEMENT_PUBLISH = "admin:agreement:publish"
    SIGNATURE_RECORD = "admin:signature:record"
    SIGNATURE_PORTAL = "portal:signature:sign"
    EXCEPTION_GRANT = "admin:exception:grant"
    EXCEPTION_REVOKE = "admin:exception:revoke"
    INCIDENT_RECORD = "admin:incident:record"
    INCIDENT_UPDATE = "admin:incident:update"
    DEVICE_UPDATE = "admin:device:update"
    PERSON_UPDATE = "admin:person:update"
    TOKEN_CREATE = "admin:token:create"
    TOKEN_REVOKE = "admin:token:revoke"
    VISITOR_CODE_ISSUE = "admin:visitor-code:issue"
    VISITOR_SPONSOR_APPROVE = "portal:visitor-sponsor:approve"
    RETENTION_PURGE = "system:retention:purge"


class VisitorVerify(StrEnum):
    """`[visitor] verify`: how a visitor shows they are one (seed 000: a slip at reception)."""

    SELF = "self"  # they say so on the form
    CODE = "code"  # they type a code reception issued (`schoolgate visitor code`)
    SPONSOR = "sponsor"  # the member of staff they visit approves them from an email
