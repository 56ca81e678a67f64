"""What the domain asks of whatever sends CoA / Disconnect packets: the `CoaSender` Protocol.

The dispatcher (`service.enforcement.dispatcher`) decides what to send, when, and what an
answer means for the request; a sender only puts one packet on the wire and reports what came
back. The UDP sender lives in the RADIUS adapter (`radius.coa.sender`), which also chooses the
sender for a process (`sender_for(settings)`); `NullCoaSender` sends nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from service.enums import CoaKind, NasVendor


@dataclass(frozen=True, slots=True)
class CoaTarget:
    """Who to send to and how to name the session there (RFC 5176 §3)."""

    address: str
    port: int
    secret: bytes
    vendor: NasVendor
    mac: str | None
    acct_session_id: str | None
    username: str | None
    nas_ip: str | None


class CoaAnswer(StrEnum):
    """What kind of answer came back to one request."""

    ACK = "ack"
    NAK = "nak"
    UNEXPECTED = "unexpected"  # a verified answer of a code that does not answer the request
    UNTRUSTED = "untrusted"  # an answer that failed verification (wrong shared secret?)


@dataclass(frozen=True, slots=True)
class CoaReply:
    """One request's outcome. `answer` None: nothing came back in time (`problem` may say why,
    e.g. a socket error or a malformed packet); the dispatcher may try again."""

    answer: CoaAnswer | None
    packet: str | None = None  # the answer's name for the history, e.g. "Disconnect-ACK"
    error_cause: int | None = None
    cause: str | None = None  # the Error-Cause in words, e.g. "Error-Cause 503 Session-..."
    problem: str | None = None


class CoaSender(Protocol):
    """Sends one CoA-Request or Disconnect-Request and waits for its answer.

    Implementations: `radius.coa.sender.UdpCoaSender` (RFC 5176 over UDP) and `NullCoaSender`.
    """

    @property
    def sends(self) -> bool:
        """False for a sender that sends nothing: the dispatcher then leaves rows queued."""
        ...

    def takes_coa_request(self, vendor: NasVendor) -> bool:
        """Whether a NAS of `vendor` applies a changed decision on a CoA-Request; if not, a
        request of kind `coa` is sent as a Disconnect-Request (the client reconnects)."""
        ...

    async def send(self, target: CoaTarget, kind: CoaKind, wait: float) -> CoaReply:
        """Send one request of `kind` to `target` and wait up to `wait` seconds for it."""
        ...


class NullCoaSender:
    """Sends nothing (CoA disabled, or a process that leaves sending to another).

    The dispatcher claims no row for it: every request stays `queued`, durably, until a
    dispatcher with a real sender runs (the RADIUS server's, or `schoolgate coa run`).
    """

    sends = False

    def takes_coa_request(self, vendor: NasVendor) -> bool:  # noqa: ARG002
        return False

    async def send(self, target: CoaTarget, kind: CoaKind, wait: float) -> CoaReply:  # noqa: ARG002
        return CoaReply(None, problem="CoA is disabled: nothing was sent")
