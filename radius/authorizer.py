"""The hot path: one datagram in, one reply (or nothing) out, from the in-memory state.

    decode → NAS by source address → Message-Authenticator / Request Authenticator →
    duplicate cache → MAC from Calling-Station-Id / User-Name → decision cache or decide() →
    encode reply

No database, no logging above debug, no per-attribute objects. Guarded by
`bench/radius_load.py` (target: at least half FreeRADIUS's flat-file MAB throughput, p99 under
5 ms at 2,000 requests/s with 30,000 devices). Its parts: `radius/duplicates.py` (retransmits),
`radius/macs.py` (MAC parsing), `radius/decision_cache.py` (one engine answer reused for the
devices with the same facts, for as long as the engine says it holds).

MAB or PAP: Service-Type Call-Check (10), or a User-Name that is the device's MAC (as sent by
every controller doing MAC authentication), is MAB: the MAC decides. Otherwise a User-Password
is a person's own PAP credential: checked with argon2 (in a worker thread, see `radius/pap.py`);
then the device in Calling-Station-Id decides, with the person's role in the request (the
engine decides an unknown device of active staff as their own device pending approval). A
wrong password is an Access-Reject.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable
from datetime import UTC, datetime

from radius import codec
from radius.codec import PacketError, RawPacket
from radius.counters import LATENCY_BOUNDS_NS, Counters
from radius.decision_cache import (
    Answer,
    answer_for,
    refusal,
    remember,
    session_attrs,
    timeout_attrs,
)
from radius.handler import PacketHandler
from radius.macs import MISSING, MacReader
from radius.pap import PapJob, PapVerifier
from radius.snapshot import UNKNOWN_DEVICE, HotState, NasEntry
from radius.writer import DecisionRow, LogWriter
from service.enums import Role
from service.policy import AccessRequest, DeviceFacts, decide, session_timeout_at

__all__ = ["Authorizer", "PapJob"]

_decode = codec.decode
_verify_ma = codec.verify_request_message_authenticator
_encode_reply = codec.encode_reply_fast
_from_ts = datetime.fromtimestamp
_time = time.time
_perf = time.perf_counter_ns
_monotonic = time.monotonic
_timeout_at = session_timeout_at
_bisect = bisect_left
_LATENCY_BOUNDS_NS = LATENCY_BOUNDS_NS

# Attribute numbers and values, as constants the hot path reads without a module lookup.
_CALL_CHECK = codec.SERVICE_TYPE_CALL_CHECK.to_bytes(4, "big")
_ACCESS_REQUEST = codec.ACCESS_REQUEST
_ACCESS_ACCEPT = codec.ACCESS_ACCEPT

_UNSUPPORTED = refusal(
    "schoolgate answers MAB and PAP only: send EAP and CHAP to the 802.1X front end.",
    "unsupported-method",
)
_PAP_FAILED = refusal("Wrong username or password.", "pap.failed")
_PAP_THROTTLED = refusal(
    "Too many failed sign-ins from this device or for this account: try again later.",
    "pap.throttled",
)
_STALE = refusal(
    "The access database cannot be reached: no access until it is back.", "database-unreachable"
)


class Authorizer(PacketHandler):
    """The packet handler of both ports; this class is the authentication half."""

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
        super().__init__(state, counters=counters, writer=writer, duplicate_window=duplicate_window)
        if log_decision is None and writer is not None:
            log_decision = writer.log_decision
        self.log_decision = log_decision
        self.pap = pap or PapVerifier()
        self.macs = MacReader()

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
        requests = counters.requests  # by NAS and code, for /metrics
        counted = (nas.info.name, code)
        requests[counted] = requests.get(counted, 0) + 1
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
        macs = self.macs
        if calling:
            calling_mac = macs.memo.get(calling, MISSING)
            if calling_mac is MISSING:
                calling_mac = macs.read(calling)
        if calling_mac is not None and attrs.get(6) == _CALL_CHECK:  # Service-Type Call-Check
            mab = True
            mac: str | None = calling_mac
        else:
            user_mac = macs.read(raw_user) if raw_user else None
            mab = (
                attrs.get(6) == _CALL_CHECK
                or (user_mac is not None and (calling_mac is None or calling_mac == user_mac))
                or codec.USER_PASSWORD not in attrs
            )
            mac = calling_mac or user_mac

        if mab:
            if codec.CHAP_PASSWORD in attrs or codec.EAP_MESSAGE in attrs:
                reply = self._answer(
                    packet, nas, address, started, calling_mac, username, _time(), _UNSUPPORTED
                )
            elif mac is None:
                self._drop("no_mac", address, "MAB request without a MAC address")
                return None
            else:
                # The decision cache (`radius/decision_cache.py`). A device with exceptions
                # (`UNCACHED`) is never stored, so it always misses.
                cache_key = (
                    state.profiles.get(mac, UNKNOWN_DEVICE),
                    attrs.get(32),
                    attrs.get(30),
                    attrs.get(87),
                )
                answer = nas.decisions.get(cache_key)
                ts = _time()
                if answer is None or not answer[1] <= ts < answer[0]:  # (the clock may step back)
                    answer = self._decide(
                        packet, nas, mac, username, state.snapshot.devices.get(mac), ts, cache_key
                    )
                reply = self._answer(packet, nas, address, started, mac, username, ts, answer)
        else:
            try:
                password = codec.decrypt_user_password(
                    attrs[codec.USER_PASSWORD], nas.secret, packet.authenticator
                )
            except PacketError as exc:
                self._drop(exc.reason, address, str(exc))
                return None
            # The throttle (`service/throttle.py`) before any password check: while this
            # source or account must wait, Access-Reject without argon2 or the success cache.
            source = (
                f"{nas.info.name}|{calling_mac or (calling or b'-').decode('utf-8', 'replace')}"
            )
            throttle = self.pap.throttle
            if throttle.begin(sources=(source,), account=username or "", now=_monotonic()) > 0:
                reply = self._answer(
                    packet, nas, address, started, calling_mac, username, _time(), _PAP_THROTTLED
                )
                if reply is not None:
                    auth_seen.current[key] = (_monotonic() + self.window, reply)
                return reply
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
                source,
                arrived=_time(),
            )
            if credential is None or not self.pap.cached(credential, password):
                auth_seen[key] = (_monotonic() + self.window, None)
                return job
            reply = self.finish_pap(job, verified=True)
        if reply is not None:
            auth_seen.current[key] = (_monotonic() + self.window, reply)
        return reply

    def check_pap(self, job: PapJob) -> bool:
        """The slow part of PAP (argon2), for a worker thread: the same work for an unknown
        or inactive account as for a wrong password. First the shared throttle (the database,
        failures through every node): while it says wait, no argon2 (`job.throttled`)."""
        shared = self.pap.shared
        if shared is not None:
            sources = (job.source,)
            if shared.begin(sources=sources, account=job.username, now=job.arrived) > 0:
                job.throttled = True
                return False
        verified = self.pap.verify(job.credential, job.password)
        if verified and shared is not None:
            shared.succeeded(sources=(job.source,), account=job.username)
        return verified

    def finish_pap(self, job: PapJob, *, verified: bool) -> bytes | None:
        """Decide and answer a PAP request once its password check is done (on the loop)."""
        credential = job.credential
        ts = _time()
        if job.throttled:
            self.counters.pap_shared_throttled += 1
            answer = _PAP_THROTTLED
        elif not verified or credential is None:
            answer = _PAP_FAILED  # the throttle counted it as a failure in `handle_auth`
        else:
            self.pap.throttle.succeeded(sources=(job.source,), account=job.username)
            device = self.state.snapshot.devices.get(job.mac) if job.mac else None
            answer = self._decide(
                job.packet,
                job.nas,
                job.mac,
                job.username,
                device,
                ts,
                None,
                credential.role,
                credential.active,
            )
        reply = self._answer(
            job.packet, job.nas, job.address, job.started_ns, job.mac, job.username, ts, answer
        )
        if reply is None:
            self.auth_seen.pop(job.dedup_key, None)
        else:
            self.auth_seen[job.dedup_key] = (_monotonic() + self.window, reply)
        return reply

    def _decide(
        self,
        packet: RawPacket,
        nas: NasEntry,
        mac: str | None,
        username: str | None,
        device: DeviceFacts | None,
        ts: float,
        cache_key: tuple[object, ...] | None,
        user_role: Role | None = None,
        user_active: bool = True,
    ) -> Answer:
        """The one place the authorizer asks the engine. With a `cache_key` (MAB), the answer
        is remembered when the engine says other devices share it (a `facts_key`)."""
        policy = nas.policy
        if policy is None:
            if nas.stale:  # `[radius] when_stale = "reject"` (radius/snapshot.py)
                return _STALE
            return refusal(f"Site {nas.info.site_code} has no policy loaded.", "no-policy")
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
            user_role,
            user_active,
        )
        now = _from_ts(ts, UTC)
        decision = decide(request, device, policy, now)
        answer = answer_for(decision, nas.profile, now.timestamp())
        # Stored only if the MAC still has the number looked up: a snapshot patched meanwhile
        # (radius/snapshot.py) may have given `device` facts of another number.
        if (
            cache_key is not None
            and decision.facts_key is not None
            and self.state.profiles.get(mac or "", UNKNOWN_DEVICE) == cache_key[0]
        ):
            remember(nas.decisions, cache_key, answer)
        return answer

    def _answer(
        self,
        packet: RawPacket,
        nas: NasEntry,
        address: tuple[str, int],
        started: int,
        mac: str | None,
        username: str | None,
        ts: float,
        answer: Answer,
    ) -> bytes | None:
        """The one way an Access-Request is answered: the Session-Timeout for now (when it is
        computed per packet), Proxy-State echoed, encoded, counted and logged."""
        (
            _,
            _,
            valid_until,
            cap,
            reply_code,
            body,
            location,
            access,
            vlan,
            reason,
            rule,
            timeout,
        ) = answer
        if valid_until is not None:
            timeout = _timeout_at(ts, valid_until, cap)  # type: ignore[arg-type]
            attrs_tail = timeout_attrs.get(timeout)
            body += attrs_tail if attrs_tail is not None else session_attrs(timeout)
        counters = self.counters
        if reply_code == _ACCESS_ACCEPT:
            counters.accepted += 1
        else:
            counters.rejected += 1
        if packet.proxy_states:
            body += b"".join(codec.attr(codec.PROXY_STATE, s) for s in packet.proxy_states)
        try:
            reply = _encode_reply(
                reply_code, packet.identifier, packet.authenticator, body, nas.secret, nas.hmac_key
            )
        except PacketError as exc:
            self._drop(exc.reason, ("reply", 0), str(exc))
            return None
        counters.answered += 1
        # Decisions by access level and the latency histogram, one dict update
        # (bench/radius_load.py guards its cost).
        elapsed = _perf() - started
        answers = counters.answers
        counted = (access, _bisect(_LATENCY_BOUNDS_NS, elapsed))
        answers[counted] = answers.get(counted, 0) + 1
        log_decision = self.log_decision
        if log_decision is not None:
            info = nas.info
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
                    elapsed // 1000,
                )
            )
        return reply
