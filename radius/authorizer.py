"""The hot path: one datagram in, one reply (or nothing) out, from the in-memory state.

    decode → NAS by source address → Message-Authenticator / Request Authenticator →
    duplicate cache → MAC from Calling-Station-Id / User-Name → decide() → encode reply

No database, no logging above debug, no per-attribute objects. Guarded by
`bench/radius_load.py` (target: at least half FreeRADIUS's flat-file MAB throughput, p99 under
5 ms at 2,000 requests/s with 30,000 devices).

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
from radius.snapshot import HotState, NasEntry
from radius.writer import AcctTicket, DecisionRow, LogWriter
from service.enums import Access, DeviceClass, DeviceStatus, Role
from service.facts import Credential
from service.mac import try_normalize_mac
from service.policy import AccessRequest, Decision, DeviceFacts, decide

log = logging.getLogger("schoolgate.radius")

_NOW = datetime.now
_from_ts = datetime.fromtimestamp
_time = time.time
_perf = time.perf_counter_ns
_monotonic = time.monotonic
_REJECT_ATTRS_CACHE_LIMIT = 1024
_DEDUP_LIMIT = 200_000
_MAC_MEMO_LIMIT = 100_000

ACCESS_NONE = Access.NONE
STAFF_ROLE = Role.STAFF


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
        self.auth_seen: dict[tuple[Any, ...], tuple[float, bytes | None]] = {}
        self.acct_seen: dict[tuple[Any, ...], tuple[float, bytes | None]] = {}
        self._reject_attrs: dict[str, bytes] = {}
        self._mac_memo: dict[bytes, str | None] = {}

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
        if not codec.verify_message_authenticator(packet, nas.secret):
            self._drop("bad_message_authenticator", ("status", 0))
            return None
        self.counters.status_server += 1
        self.counters.answered += 1
        return codec.encode_reply(code, packet.identifier, packet.authenticator, b"", nas.secret)

    def purge(self) -> None:
        """Forget duplicate-cache entries older than the window (called every second)."""
        now = _monotonic()
        for cache in (self.auth_seen, self.acct_seen):
            expired = [
                key
                for key, (expires, reply) in cache.items()
                if expires <= now and (reply is not None or expires + 60 <= now)
            ]
            for key in expired:
                del cache[key]
            if len(cache) > _DEDUP_LIMIT:
                cache.clear()

    def _mac(self, raw: bytes) -> str | None:
        """The canonical MAC in a Calling-Station-Id or User-Name, memoised by the raw value
        (a device asks again and again; parsing costs more than the lookup)."""
        memo = self._mac_memo
        found = memo.get(raw, memo)
        if found is not memo:
            return found  # type: ignore[return-value]
        mac = try_normalize_mac(raw.decode("latin-1"))
        if len(memo) > _MAC_MEMO_LIMIT:
            memo.clear()
        memo[raw] = mac
        return mac

    # --- authentication -------------------------------------------------------------------

    def handle_auth(self, data: bytes, address: tuple[str, int]) -> bytes | PapJob | None:
        started = _perf()
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
            return self._status_reply(packet, nas, codec.ACCESS_ACCEPT)
        if code != codec.ACCESS_REQUEST:
            self._drop("unknown_code", address, f"code {code} on the auth port")
            return None
        if packet.ma_offset >= 0:
            if not codec.verify_message_authenticator(packet, nas.secret):
                self._drop("bad_message_authenticator", address, nas.info.name)
                return None
        elif nas.info.require_message_authenticator or codec.EAP_MESSAGE in packet.attrs:
            self._drop("missing_message_authenticator", address, nas.info.name)
            return None

        key = (address, packet.identifier, packet.authenticator)
        seen = self.auth_seen.get(key)
        if seen is not None and seen[0] > _monotonic():
            self.counters.duplicates += 1
            if seen[1] is None:
                return None  # still being decided (a PAP check): the first answer will go out
            self.counters.answered += 1
            return seen[1]

        attrs = packet.attrs
        raw_user = attrs.get(codec.USER_NAME)
        username = raw_user.decode("utf-8", "replace") if raw_user is not None else None
        calling = attrs.get(codec.CALLING_STATION_ID)
        calling_mac = self._mac(calling) if calling else None
        user_mac = self._mac(raw_user) if raw_user else None
        service_type = packet.integer(codec.SERVICE_TYPE)

        if (
            service_type == codec.SERVICE_TYPE_CALL_CHECK
            or (user_mac is not None and (calling_mac is None or calling_mac == user_mac))
            or codec.USER_PASSWORD not in attrs
        ):
            if codec.CHAP_PASSWORD in attrs or codec.EAP_MESSAGE in attrs:
                return self._refuse(packet, nas, address, started, calling_mac, username)
            mac = calling_mac or user_mac
            if mac is None:
                self._drop("no_mac", address, "MAB request without a MAC address")
                return None
            reply = self._decide_and_reply(
                packet, nas, address, mac, username, self.state.snapshot.devices.get(mac), started
            )
        else:
            try:
                password = codec.decrypt_user_password(
                    attrs[codec.USER_PASSWORD], nas.secret, packet.authenticator
                )
            except PacketError as exc:
                self._drop(exc.reason, address, str(exc))
                return None
            credential = self.state.snapshot.credentials.get((username or "").lower())
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
                self.auth_seen[key] = (_monotonic() + self.window, None)
                return job
        if reply is not None:
            self.auth_seen[key] = (_monotonic() + self.window, reply)
        return reply

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
        if packet.proxy_states:
            body += b"".join(codec.attr(codec.PROXY_STATE, s) for s in packet.proxy_states)
        try:
            reply = codec.encode_reply(
                code, packet.identifier, packet.authenticator, body, nas.secret
            )
        except PacketError as exc:
            self._drop(exc.reason, ("reply", 0), str(exc))
            return None
        self.counters.answered += 1
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
                    decision.location,
                    decision.access.value,
                    decision.vlan,
                    decision.reason,
                    decision.rule,
                    decision.session_timeout,
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
