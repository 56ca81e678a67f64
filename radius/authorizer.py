"""The hot path: one datagram in, one reply (or nothing) out, from the in-memory state.

    decode → NAS by source address → Message-Authenticator / Request Authenticator →
    duplicate cache → MAC from Calling-Station-Id / User-Name → decide() → encode reply

No database, no logging above debug, no per-attribute objects. Guarded by
`bench/radius_load.py` (target: at least half FreeRADIUS's flat-file MAB throughput, p99 under
5 ms at 2,000 requests/s with 30,000 devices).

The decision cache (MAB): `decide()` reads only a few facts of a device (class, status, owner
still here, signature expiries, grants), so devices with the same facts ("profile", numbered in
`HotState.profiles`) get the same answer at the same NAS, place and time. A decision is cached
per NAS (in its `NasEntry`, so a new snapshot starts empty) by (profile, NAS-Identifier,
Called-Station-Id, NAS-Port-Id) until the first instant it could change (the engine's next rule
boundary for that class and place, or the signature expiry its gate reads), and at most
`_DECISION_TTL` seconds. A cached answer is the one `decide()` would give: the Session-Timeout
is recomputed for each packet from that instant, exactly as the engine does. Devices with
exceptions granted are not cached (their start and end move the answer and the timeout).

MAB or PAP: Service-Type Call-Check (10), or a User-Name that is the device's MAC (as sent by
every controller doing MAC authentication), is MAB: the MAC decides. Otherwise a User-Password
is a person's own PAP credential: checked with argon2 (in a worker thread, see `radius/pap.py`);
then the device in Calling-Station-Id decides. When that device is unknown but the person is
active staff, it is decided as that person's staff-owned device still pending approval (so it
lands in registration, where it can be registered, instead of being refused); for anyone else
an unknown device is an unknown device (registration). A wrong password is an Access-Reject.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from radius import codec
from radius.accounting import parse_accounting
from radius.codec import PacketError, RawPacket
from radius.counters import Counters
from radius.pap import PapVerifier
from radius.snapshot import UNCACHED, UNKNOWN_DEVICE, HotState, NasEntry
from radius.writer import AcctTicket, DecisionRow, LogWriter
from service.enums import Access, DeviceClass, DeviceStatus, Role
from service.facts import Credential
from service.mac import try_normalize_mac
from service.policy import AccessRequest, Decision, DeviceFacts, decide
from service.policy.engine import PERSONAL, change_horizon
from service.policy.model import SitePolicy

log = logging.getLogger("schoolgate.radius")

_NOW = datetime.now
_decode = codec.decode
_verify_ma = codec.verify_request_message_authenticator
_encode_reply = codec.encode_reply_fast
_from_ts = datetime.fromtimestamp
_time = time.time
_perf = time.perf_counter_ns
_monotonic = time.monotonic
_REJECT_ATTRS_CACHE_LIMIT = 1024
_DEDUP_LIMIT = 200_000
_MAC_MEMO_LIMIT = 100_000
_DECISION_CACHE_LIMIT = 50_000
_DECISION_TTL = 60.0  # a backstop: the horizon below is what keeps cached answers right
_TIMEOUT_ATTRS_LIMIT = 100_000
_INF = math.inf
_MISSING: Any = object()

ACCESS_NONE = Access.NONE
STAFF_ROLE = Role.STAFF

# Attribute numbers and values, as constants the hot path reads without a module lookup.
_CALL_CHECK = codec.SERVICE_TYPE_CALL_CHECK.to_bytes(4, "big")
_ACCESS_REQUEST = codec.ACCESS_REQUEST
_ACCESS_ACCEPT = codec.ACCESS_ACCEPT
_ACCESS_REJECT = codec.ACCESS_REJECT

# The two spellings NAS clients send nearly always (AA-BB-CC-DD-EE-FF or aa:bb:..., and bare
# aabbccddeeff), parsed without `service.mac.normalize_mac`'s general rules: same result.
_HEX2 = rb"[0-9A-Fa-f]{2}"
_GROUPED_MAC = re.compile(_HEX2 + rb"([:-])" + rb"\1".join([_HEX2] * 5))
_BARE_MAC = re.compile(rb"[0-9A-Fa-f]{12}")


def _parse_mac(raw: bytes) -> str | None:
    """The canonical MAC in an attribute value, or None when it is not one."""
    match = _GROUPED_MAC.fullmatch(raw)
    if match is not None:
        return raw.replace(match[1], b":").decode().lower()
    if _BARE_MAC.fullmatch(raw) is not None:
        text = raw.decode().lower()
        return f"{text[0:2]}:{text[2:4]}:{text[4:6]}:{text[6:8]}:{text[8:10]}:{text[10:12]}"
    return try_normalize_mac(raw.decode("latin-1"))


# How a cached decision's Session-Timeout is found for each packet.
_NO_TIMEOUT = 0  # a reject
_FIXED_TIMEOUT = 1  # the same for every packet (or an answer that is not cached)
_HORIZON_TIMEOUT = 2  # up to the next change, capped by the policy's maximum (and a cap)

# Session-Timeout + Termination-Action=RADIUS-Request, encoded, by timeout.
_timeout_attrs: dict[int, bytes] = {}


def _session_attrs(timeout: int) -> bytes:
    body = _timeout_attrs.get(timeout)
    if body is None:
        if len(_timeout_attrs) > _TIMEOUT_ATTRS_LIMIT:
            _timeout_attrs.clear()
        body = _timeout_attrs[timeout] = codec.attr_int(
            codec.SESSION_TIMEOUT, timeout
        ) + codec.attr_int(codec.TERMINATION_ACTION, codec.TERMINATION_ACTION_RADIUS_REQUEST)
    return body


def decision_horizon(
    policy: SitePolicy, device: DeviceFacts | None, location: str | None, ts: float
) -> float:
    """The first instant after `ts` at which `decide()` could answer differently for this
    device at this place (the engine's own horizon, which its Session-Timeout stops at);
    `math.inf` for answers nothing in the policy moves (unknown, blocked, owner left)."""
    if device is None or device.status.is_blocked:
        return _INF
    if device.device_class in PERSONAL and not device.owner_active:
        return _INF
    return change_horizon(policy, device, location, ts)


# (time, MAC, user, location, access, VLAN, reason, rule, session timeout) of one answer.
_Answered = tuple[float, str | None, str | None, str | None, str, int | None, str, str, int | None]


class _Seen:
    """The duplicate cache: (address, identifier, authenticator) -> (expires, reply, or None
    while a PAP check is pending). Two generations, swapped once a window, so forgetting is
    O(1) on the loop; the generation before that is freed a slice at a time by `purge()`
    (freeing 100,000 entries at once would stall the loop for milliseconds)."""

    __slots__ = ("current", "dying", "previous", "rotated", "slice", "window")

    def __init__(self, window: float) -> None:
        self.window = window
        self.current: dict[tuple[Any, ...], tuple[float, bytes | None]] = {}
        self.previous: dict[tuple[Any, ...], tuple[float, bytes | None]] = {}
        self.dying: dict[tuple[Any, ...], tuple[float, bytes | None]] = {}
        self.rotated = _monotonic()
        self.slice = 256

    def get(self, key: tuple[Any, ...]) -> tuple[float, bytes | None] | None:
        found = self.current.get(key)
        return self.previous.get(key) if found is None else found

    def __setitem__(self, key: tuple[Any, ...], value: tuple[float, bytes | None]) -> None:
        self.current[key] = value

    def pop(self, key: tuple[Any, ...], default: Any = None) -> Any:
        found = self.current.pop(key, default)
        older = self.previous.pop(key, default)
        return older if found is default else found

    def __len__(self) -> int:
        return len(self.current) + len(self.previous)

    def purge(self, now: float) -> None:
        """Free a slice of the expired generation; swap generations once a window (every
        entry of `previous` has then expired: it was added at least a window ago)."""
        dying = self.dying
        if dying:
            popitem = dying.popitem
            for _ in range(min(len(dying), self.slice)):
                popitem()
        if now - self.rotated >= self.window or len(self.current) > _DEDUP_LIMIT:
            dying.clear()  # only left over when the loop fell far behind
            self.dying = self.previous
            self.previous = self.current
            self.current = {}
            self.rotated = now
            self.slice = max(256, len(self.dying) // 20 + 1)


@dataclass(slots=True)
class PapJob:
    """A PAP request waiting for its argon2 check (run in a thread, then `finish_pap`)."""

    packet: RawPacket
    nas: NasEntry
    address: tuple[str, int]
    credential: Credential | None
    password: bytes
    mac: str | None
    username: str
    started_ns: int
    dedup_key: tuple[Any, ...]


class Authorizer:
    def __init__(
        self,
        state: HotState,
        *,
        counters: Counters,
        writer: LogWriter | None,
        log_decision: Callable[[DecisionRow], None] | None = None,
        duplicate_window: float = 5.0,
        pap: PapVerifier | None = None,
    ) -> None:
        self.state = state
        self.counters = counters
        self.writer = writer  # accounting (and the decision log when no `log_decision`)
        if log_decision is None and writer is not None:
            log_decision = writer.log_decision
        self.log_decision = log_decision
        self.window = duplicate_window
        self.pap = pap or PapVerifier()
        # (address, port, identifier, authenticator) -> (expires, reply or None while pending)
        self.auth_seen = _Seen(duplicate_window)
        self.acct_seen = _Seen(duplicate_window)
        self._reject_attrs: dict[str, bytes] = {}
        self._mac_memo: dict[bytes, str | None] = {}
        self._mac_memo_old: dict[bytes, str | None] = {}

    # --- shared steps ---------------------------------------------------------------------

    def _drop(self, reason: str, address: tuple[str, int], detail: str = "") -> None:
        self.counters.dropped[reason] += 1
        if log.isEnabledFor(logging.DEBUG):
            log.debug("dropped from %s:%s: %s %s", address[0], address[1], reason, detail)

    def _nas(self, address: tuple[str, int]) -> NasEntry | None:
        nas = self.state.nas_for(address[0])
        if nas is None:
            self._drop("unknown_client", address)
        return nas

    def _status_reply(self, packet: RawPacket, nas: NasEntry, code: int) -> bytes | None:
        """RFC 5997: Status-Server must carry a valid Message-Authenticator."""
        if not codec.verify_message_authenticator(packet, nas.secret, key=nas.hmac_key):
            self._drop("bad_message_authenticator", ("status", 0))
            return None
        self.counters.status_server += 1
        self.counters.answered += 1
        return codec.encode_reply(
            code, packet.identifier, packet.authenticator, b"", nas.secret, key=nas.hmac_key
        )

    def purge(self) -> None:
        """Forget expired duplicate-cache entries, a slice at a time (called by the loop
        every few tens of milliseconds; cheap when there is nothing to do)."""
        now = _monotonic()
        self.auth_seen.purge(now)
        self.acct_seen.purge(now)

    def _mac(self, raw: bytes) -> str | None:
        """The canonical MAC in a Calling-Station-Id or User-Name, memoised by the raw value
        (a device asks again and again; parsing costs more than the lookup). Two generations:
        a full memo becomes the old one, whose entries move back when asked for."""
        memo = self._mac_memo
        mac = memo.get(raw, _MISSING)
        if mac is not _MISSING:
            return mac  # type: ignore[no-any-return]
        mac = self._mac_memo_old.get(raw, _MISSING)
        if mac is _MISSING:
            mac = _parse_mac(raw)
        if len(memo) >= _MAC_MEMO_LIMIT:
            self._mac_memo_old = memo
            memo = self._mac_memo = {}
        memo[raw] = mac
        return mac  # type: ignore[no-any-return]

    # --- authentication -------------------------------------------------------------------

    def handle_auth(self, data: bytes, address: tuple[str, int]) -> bytes | PapJob | None:
        started = _perf()
        counters = self.counters
        counters.received += 1
        try:
            packet = _decode(data)
        except PacketError as exc:
            self._drop(exc.reason, address, str(exc))
            return None
        state = self.state
        nas = state.exact.get(address[0])
        if nas is None:
            nas = self._nas(address)
            if nas is None:
                return None
        code = packet.code
        if code != _ACCESS_REQUEST:
            if code == codec.STATUS_SERVER:
                return self._status_reply(packet, nas, codec.ACCESS_ACCEPT)
            self._drop("unknown_code", address, f"code {code} on the auth port")
            return None
        attrs = packet.attrs
        if packet.ma_offset >= 0:
            if not _verify_ma(packet.data, packet.ma_offset, nas.hmac_key):
                self._drop("bad_message_authenticator", address, nas.info.name)
                return None
        elif nas.info.require_message_authenticator or codec.EAP_MESSAGE in attrs:
            self._drop("missing_message_authenticator", address, nas.info.name)
            return None

        key = (address, packet.identifier, packet.authenticator)
        auth_seen = self.auth_seen
        seen = auth_seen.current.get(key)
        if seen is None:
            seen = auth_seen.previous.get(key)
        if seen is not None and seen[0] > _monotonic():
            counters.duplicates += 1
            if seen[1] is None:
                return None  # still being decided (a PAP check): the first answer will go out
            counters.answered += 1
            return seen[1]

        raw_user = attrs.get(1)  # User-Name
        username = raw_user.decode("utf-8", "replace") if raw_user is not None else None
        calling = attrs.get(31)  # Calling-Station-Id
        calling_mac = None
        if calling:
            calling_mac = self._mac_memo.get(calling, _MISSING)
            if calling_mac is _MISSING:
                calling_mac = self._mac(calling)
        if calling_mac is not None and attrs.get(6) == _CALL_CHECK:  # Service-Type Call-Check
            mab = True
            mac: str | None = calling_mac
        else:
            user_mac = self._mac(raw_user) if raw_user else None
            mab = (
                attrs.get(6) == _CALL_CHECK
                or (user_mac is not None and (calling_mac is None or calling_mac == user_mac))
                or codec.USER_PASSWORD not in attrs
            )
            mac = calling_mac or user_mac

        if mab:
            if codec.CHAP_PASSWORD in attrs or codec.EAP_MESSAGE in attrs:
                return self._refuse(packet, nas, address, started, calling_mac, username)
            if mac is None:
                self._drop("no_mac", address, "MAB request without a MAC address")
                return None
            profile = state.profiles.get(mac, UNKNOWN_DEVICE)
            policy = nas.policy
            if profile == UNCACHED or policy is None:
                reply = self._decide_and_reply(
                    packet, nas, address, mac, username, state.snapshot.devices.get(mac), started
                )
            else:
                # The decision cache (see the module docstring).
                cache_key = (profile, attrs.get(32), attrs.get(30), attrs.get(87))
                entry = nas.decisions.get(cache_key)
                ts = _time()
                if entry is None or not entry[1] <= ts < entry[0]:  # (the clock may step back)
                    entry = self._decision_entry(
                        nas, policy, cache_key, mac, state.snapshot.devices.get(mac), ts
                    )
                (
                    _,
                    _,
                    horizon,
                    max_timeout,
                    mode,
                    reply_code,
                    body,
                    location,
                    access,
                    vlan,
                    reason,
                    rule,
                    timeout,
                ) = entry
                if mode == _HORIZON_TIMEOUT:
                    # As the engine computes it (`_session_timeout`), then capped (gates).
                    timeout = min(timeout, max(1, math.floor(min(ts + max_timeout, horizon) - ts)))
                    attrs_tail = _timeout_attrs.get(timeout)
                    body += attrs_tail if attrs_tail is not None else _session_attrs(timeout)
                if reply_code == _ACCESS_ACCEPT:
                    counters.accepted += 1
                else:
                    counters.rejected += 1
                reply = self._answer(
                    packet,
                    nas,
                    address,
                    reply_code,
                    body,
                    (ts, mac, username, location, access, vlan, reason, rule, timeout),
                    started,
                )
                if reply is None:
                    return None
                auth_seen.current[key] = (_monotonic() + self.window, reply)
                return reply
        else:
            try:
                password = codec.decrypt_user_password(
                    attrs[codec.USER_PASSWORD], nas.secret, packet.authenticator
                )
            except PacketError as exc:
                self._drop(exc.reason, address, str(exc))
                return None
            credential = state.snapshot.credentials.get((username or "").lower())
            job = PapJob(
                packet,
                nas,
                address,
                credential,
                password,
                calling_mac,
                username or "",
                started,
                key,
            )
            if credential is not None and self.pap.cached(credential, password):
                reply = self.finish_pap(job, verified=True)
            else:
                auth_seen[key] = (_monotonic() + self.window, None)
                return job
        if reply is not None:
            auth_seen[key] = (_monotonic() + self.window, reply)
        return reply

    def _decision_entry(
        self,
        nas: NasEntry,
        policy: SitePolicy,
        cache_key: tuple[Any, ...],
        mac: str,
        device: DeviceFacts | None,
        ts: float,
    ) -> tuple[Any, ...]:
        """Decide now and return the decision-cache entry of this answer, stored unless the
        answer cannot be cached:

        (valid until, valid from, horizon, policy's maximum timeout, timeout mode, reply code,
        reply body (without the Session-Timeout when it is computed per packet), location,
        access, VLAN, reason, rule, Session-Timeout (the cap on the computed one in
        `_HORIZON_TIMEOUT`))

        The Session-Timeout of a later packet follows the law that gives the engine's timeout
        now: up to the horizon, capped by the policy's maximum (an Accept); the same, capped by
        the registration timeout (a gate); constant (an unknown device). An answer that fits
        none of these is served as it is and not cached.
        """
        _, nas_identifier, called, port_id = cache_key
        request = AccessRequest(
            mac,
            nas_identifier.decode("utf-8", "replace") if nas_identifier is not None else None,
            called.decode("utf-8", "replace") if called is not None else None,
            port_id.decode("utf-8", "replace") if port_id is not None else None,
        )
        now = _from_ts(ts, UTC)
        decision = decide(request, device, policy, now)
        decided_at = now.timestamp()
        horizon = decision_horizon(policy, device, decision.location, decided_at)
        timeout: float | None = decision.session_timeout
        max_timeout = policy.max_session_timeout
        valid_until = min(horizon, decided_at + _DECISION_TTL)
        if decision.access is ACCESS_NONE:
            code = _ACCESS_REJECT
            body = self._reject_body(decision.reason)
        else:
            code = _ACCESS_ACCEPT
            body = nas.profile.accept_attributes(decision.access, decision.vlan)
        if timeout is None:
            mode = _NO_TIMEOUT
        else:
            valid_until = min(valid_until, decided_at + timeout)  # the engine's own word
            until_horizon = max(1, math.floor(min(decided_at + max_timeout, horizon) - decided_at))
            mode = _HORIZON_TIMEOUT
            if timeout == until_horizon:
                timeout = _INF
            elif timeout != min(policy.registration_timeout, until_horizon):
                mode = _FIXED_TIMEOUT
                body += _session_attrs(decision.session_timeout)  # type: ignore[arg-type]
                if device is not None or timeout != policy.registration_timeout:
                    valid_until = -_INF  # not a law this cache knows: answer it, uncached
            else:
                timeout = policy.registration_timeout
        entry = (
            valid_until,
            decided_at,
            horizon,
            max_timeout,
            mode,
            code,
            body,
            decision.location,
            decision.access.value,
            decision.vlan,
            decision.reason,
            decision.rule,
            timeout,
        )
        if valid_until > ts:
            cache = nas.decisions
            if len(cache) >= _DECISION_CACHE_LIMIT:
                cache.clear()
            cache[cache_key] = entry
        return entry

    def check_pap(self, job: PapJob) -> bool:
        """The slow part of PAP (argon2), for a worker thread."""
        credential = job.credential
        if credential is None or not credential.active:
            return False
        return self.pap.verify(credential, job.password)

    def finish_pap(self, job: PapJob, *, verified: bool) -> bytes | None:
        """Decide and answer a PAP request once its password check is done (on the loop)."""
        credential = job.credential
        if not verified or credential is None:
            reply = self._reject(
                job.packet,
                job.nas,
                job.address,
                job.started_ns,
                job.mac,
                job.username,
                "Wrong username or password.",
                "pap.failed",
            )
        else:
            device = self.state.snapshot.devices.get(job.mac) if job.mac else None
            if device is None and job.mac is not None and credential.role is STAFF_ROLE:
                device = DeviceFacts(
                    mac=job.mac,
                    device_class=DeviceClass.STAFF_OWNED,
                    status=DeviceStatus.PENDING,
                    site_code=credential.site_code,
                    owner_name=credential.name,
                    owner_role=credential.role,
                    owner_active=credential.active,
                )
            reply = self._decide_and_reply(
                job.packet, job.nas, job.address, job.mac, job.username, device, job.started_ns
            )
        if reply is None:
            self.auth_seen.pop(job.dedup_key, None)
        else:
            self.auth_seen[job.dedup_key] = (_monotonic() + self.window, reply)
        return reply

    def _refuse(
        self,
        packet: RawPacket,
        nas: NasEntry,
        address: tuple[str, int],
        started: int,
        mac: str | None,
        username: str | None,
    ) -> bytes | None:
        return self._reject(
            packet,
            nas,
            address,
            started,
            mac,
            username,
            "schoolgate answers MAB and PAP only: send EAP and CHAP to the 802.1X front end.",
            "unsupported-method",
        )

    def _decide_and_reply(
        self,
        packet: RawPacket,
        nas: NasEntry,
        address: tuple[str, int],
        mac: str | None,
        username: str | None,
        device: DeviceFacts | None,
        started: int,
    ) -> bytes | None:
        policy = nas.policy
        if policy is None:
            return self._reject(
                packet,
                nas,
                address,
                started,
                mac,
                username,
                f"Site {nas.info.site_code} has no policy loaded.",
                "no-policy",
            )
        attrs = packet.attrs
        nas_identifier = attrs.get(codec.NAS_IDENTIFIER)
        called = attrs.get(codec.CALLED_STATION_ID)
        port_id = attrs.get(codec.NAS_PORT_ID)
        request = AccessRequest(
            mac,
            nas_identifier.decode("utf-8", "replace") if nas_identifier is not None else None,
            called.decode("utf-8", "replace") if called is not None else None,
            port_id.decode("utf-8", "replace") if port_id is not None else None,
            username,
        )
        ts = _time()
        now = _from_ts(ts, UTC)
        decision = decide(request, device, policy, now)
        if decision.access is ACCESS_NONE:
            body = self._reject_body(decision.reason)
            code = codec.ACCESS_REJECT
            self.counters.rejected += 1
        else:
            body = nas.profile.accept_attributes(decision.access, decision.vlan)
            timeout = decision.session_timeout
            if timeout is not None:
                body += codec.attr_int(codec.SESSION_TIMEOUT, timeout) + codec.attr_int(
                    codec.TERMINATION_ACTION, codec.TERMINATION_ACTION_RADIUS_REQUEST
                )
            code = codec.ACCESS_ACCEPT
            self.counters.accepted += 1
        return self._send(packet, nas, address, code, body, ts, mac, username, decision, started)

    def _reject(
        self,
        packet: RawPacket,
        nas: NasEntry,
        address: tuple[str, int],
        started: int,
        mac: str | None,
        username: str | None,
        reason: str,
        rule: str,
    ) -> bytes | None:
        self.counters.rejected += 1
        decision = Decision(ACCESS_NONE, None, reason, rule, None, None)
        return self._send(
            packet,
            nas,
            address,
            codec.ACCESS_REJECT,
            self._reject_body(reason),
            _time(),
            mac,
            username,
            decision,
            started,
        )

    def _reject_body(self, reason: str) -> bytes:
        body = self._reject_attrs.get(reason)
        if body is None:
            if len(self._reject_attrs) > _REJECT_ATTRS_CACHE_LIMIT:
                self._reject_attrs.clear()
            body = self._reject_attrs[reason] = codec.split_text(codec.REPLY_MESSAGE, reason)
        return body

    def _send(
        self,
        packet: RawPacket,
        nas: NasEntry,
        address: tuple[str, int],
        code: int,
        body: bytes,
        ts: float,
        mac: str | None,
        username: str | None,
        decision: Decision,
        started: int,
    ) -> bytes | None:
        return self._answer(
            packet,
            nas,
            address,
            code,
            body,
            (
                ts,
                mac,
                username,
                decision.location,
                decision.access.value,
                decision.vlan,
                decision.reason,
                decision.rule,
                decision.session_timeout,
            ),
            started,
        )

    def _answer(
        self,
        packet: RawPacket,
        nas: NasEntry,
        address: tuple[str, int],
        code: int,
        body: bytes,
        what: tuple[
            float, str | None, str | None, str | None, str, int | None, str, str, int | None
        ],
        started: int,
    ) -> bytes | None:
        """Encode the reply (Proxy-State echoed), count it and log the decision: `what` is
        (time, MAC, user, location, access, VLAN, reason, rule, session timeout)."""
        if packet.proxy_states:
            body += b"".join(codec.attr(codec.PROXY_STATE, s) for s in packet.proxy_states)
        try:
            reply = _encode_reply(
                code, packet.identifier, packet.authenticator, body, nas.secret, nas.hmac_key
            )
        except PacketError as exc:
            self._drop(exc.reason, ("reply", 0), str(exc))
            return None
        self.counters.answered += 1
        log_decision = self.log_decision
        if log_decision is not None:
            info = nas.info
            ts, mac, username, location, access, vlan, reason, rule, timeout = what
            log_decision(
                (
                    ts,
                    info.site_code,
                    info.name,
                    address[0],
                    mac,
                    username,
                    location,
                    access,
                    vlan,
                    reason,
                    rule,
                    timeout,
                    (_perf() - started) // 1000,
                )
            )
        return reply

    # --- accounting -----------------------------------------------------------------------

    def handle_acct(self, data: bytes, address: tuple[str, int]) -> bytes | None:
        """An answer to send now (Status-Server, a duplicate), or None: dropped, or queued
        for the writer, which answers once the record is stored."""
        self.counters.received += 1
        try:
            packet = codec.decode(data)
        except PacketError as exc:
            self._drop(exc.reason, address, str(exc))
            return None
        nas = self._nas(address)
        if nas is None:
            return None
        code = packet.code
        if code == codec.STATUS_SERVER:
            return self._status_reply(packet, nas, codec.ACCOUNTING_RESPONSE)
        if code != codec.ACCOUNTING_REQUEST:
            self._drop("unknown_code", address, f"code {code} on the accounting port")
            return None
        if not codec.verify_request_authenticator(packet, nas.secret):
            self._drop("bad_authenticator", address, nas.info.name)
            return None
        if packet.ma_offset >= 0 and not codec.verify_message_authenticator(
            packet, nas.secret, codec.ZERO_AUTH
        ):
            self._drop("bad_message_authenticator", address, nas.info.name)
            return None
        key = (address, packet.identifier, packet.authenticator)
        seen = self.acct_seen.get(key)
        if seen is not None and seen[0] > _monotonic():
            self.counters.duplicates += 1
            if seen[1] is None:
                return None  # being written: the answer goes out when it is stored
            self.counters.answered += 1
            return seen[1]
        try:
            record = parse_accounting(
                packet,
                nas_id=nas.info.id,
                nas_ip=address[0],
                site_code=nas.info.site_code,
                policy=nas.policy,
                now=_NOW(UTC),
            )
        except PacketError as exc:
            self._drop(exc.reason, address, str(exc))
            return None
        body = b""
        if packet.proxy_states:
            body = b"".join(codec.attr(codec.PROXY_STATE, s) for s in packet.proxy_states)
        reply = codec.encode_reply(
            codec.ACCOUNTING_RESPONSE,
            packet.identifier,
            packet.authenticator,
            body,
            nas.secret,
            hmac_authenticator=codec.ZERO_AUTH,
        )
        self.counters.accounting += 1
        if self.writer is None:  # no database (unit use): answer at once
            self.counters.answered += 1
            return reply
        self.acct_seen[key] = (_monotonic() + self.window, None)
        self.writer.submit_accounting(AcctTicket(record, reply, address, key))
        return None

    def accounting_stored(self, ticket: AcctTicket) -> bytes:
        """The writer stored this record: remember and return its answer (on the loop)."""
        self.acct_seen[ticket.dedup_key] = (_monotonic() + self.window, ticket.reply)
        self.counters.answered += 1
        return ticket.reply

    def accounting_failed(self, ticket: AcctTicket) -> None:
        self.acct_seen.pop(ticket.dedup_key, None)
        self.counters.dropped["accounting_not_stored"] += 1
