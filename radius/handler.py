"""The server's packet handler: the steps both ports share, and the accounting port.

The authentication port (the hot path) is `radius/authorizer.py`'s `Authorizer`, which extends
`PacketHandler`; the server holds one per worker and swaps its `state` whole when a new
snapshot is loaded.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime

from radius import codec
from radius.accounting import parse_accounting
from radius.codec import PacketError, RawPacket
from radius.counters import Counters
from radius.duplicates import DuplicateCache
from radius.snapshot import HotState, NasEntry
from radius.writer import AcctTicket, LogWriter

log = logging.getLogger("schoolgate.radius")

_NOW = datetime.now
_monotonic = time.monotonic


class PacketHandler:
    def __init__(
        self,
        state: HotState,
        *,
        counters: Counters,
        writer: LogWriter | None,
        duplicate_window: float = 5.0,
    ) -> None:
        self.state = state
        self.counters = counters
        self.writer = writer  # accounting (and the decision log when no `log_decision`)
        self.window = duplicate_window
        self.auth_seen = DuplicateCache(duplicate_window)
        self.acct_seen = DuplicateCache(duplicate_window)
        # The Reply-Message of Status-Server answers: readiness, set by the server
        # ("ready: ..." while the database answers, "not ready: ..." when it does not).
        self.status_message = b""

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
        """RFC 5997: Status-Server must carry a valid Message-Authenticator. The answer says
        the server is alive; its Reply-Message whether it is ready (`status_message`)."""
        if not codec.verify_message_authenticator(packet, nas.secret, key=nas.hmac_key):
            self._drop("bad_message_authenticator", ("status", 0))
            return None
        self.counters.status_server += 1
        self.counters.answered += 1
        message = self.status_message
        body = codec.attr(codec.REPLY_MESSAGE, message[:253]) if message else b""
        return codec.encode_reply(
            code, packet.identifier, packet.authenticator, body, nas.secret, key=nas.hmac_key
        )

    def purge(self) -> None:
        """Forget expired duplicate-cache entries, a slice at a time (called by the loop
        every few tens of milliseconds; cheap when there is nothing to do)."""
        now = _monotonic()
        self.auth_seen.purge(now)
        self.acct_seen.purge(now)

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
        requests = self.counters.requests  # by NAS and code, for /metrics
        counted = (nas.info.name, code)
        requests[counted] = requests.get(counted, 0) + 1
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
