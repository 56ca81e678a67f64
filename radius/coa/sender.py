"""The UDP `CoaSender` (RFC 5176 over the wire), and the choice of sender from settings.

Transport only: encode one request (`packets.build`), send it, wait for its verified answer
(`exchange`) and report it as a `CoaReply`. What the answer means for the request (retry,
fallback, give up) is the domain's (`service.enforcement.dispatcher`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
from dataclasses import dataclass

from radius import codec
from radius.coa.packets import PACKET_NAMES, REQUEST_CODES, build, cause_text, uses_coa_request
from service.config import Settings
from service.enforcement import CoaAnswer, CoaReply, CoaSender, CoaTarget, NullCoaSender
from service.enums import CoaKind, NasVendor

ACK_CODES = (codec.DISCONNECT_ACK, codec.COA_ACK)
NAK_CODES = (codec.DISCONNECT_NAK, codec.COA_NAK)


@dataclass(frozen=True, slots=True)
class _Reply:
    code: int | None  # None: no answer in time
    error_cause: int | None = None
    problem: str | None = None  # a reply we could not trust, or a socket error


class _Client(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.replies: asyncio.Queue[bytes] = asyncio.Queue()
        self.error: OSError | None = None

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:  # noqa: ARG002
        self.replies.put_nowait(data)

    def error_received(self, exc: Exception) -> None:
        if isinstance(exc, OSError):
            self.error = exc


async def exchange(packet: bytes, address: str, port: int, secret: bytes, wait: float) -> _Reply:
    """Send one request and wait up to `wait` seconds for its verified answer."""
    loop = asyncio.get_running_loop()
    family = 6 if ipaddress.ip_address(address).version == 6 else 4

    try:
        transport, proto = await loop.create_datagram_endpoint(
            _Client,
            remote_addr=(address, port),
            family=socket.AF_INET6 if family == 6 else socket.AF_INET,
        )
    except OSError as exc:
        return _Reply(None, problem=f"cannot send: {exc.strerror or exc}")
    request_auth = packet[4:20]
    identifier = packet[1]
    try:
        transport.sendto(packet)
        deadline = loop.time() + wait
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                detail = None
                if proto.error is not None:
                    detail = f"no answer ({proto.error.strerror or proto.error})"
                return _Reply(None, problem=detail)
            try:
                data = await asyncio.wait_for(proto.replies.get(), remaining)
            except TimeoutError:
                continue
            try:
                reply = codec.decode(data)
            except codec.PacketError as exc:
                return _Reply(None, problem=f"malformed answer ({exc.reason})")
            if reply.identifier != identifier:
                continue  # a late answer to an earlier attempt
            if not codec.verify_response_authenticator(reply, request_auth, secret):
                return _Reply(
                    reply.code,
                    problem="bad Response Authenticator in the answer (wrong shared secret?)",
                )
            if reply.ma_offset >= 0 and not codec.verify_message_authenticator(
                reply, secret, request_auth
            ):
                return _Reply(reply.code, problem="bad Message-Authenticator in the answer")
            return _Reply(reply.code, error_cause=reply.integer(codec.ERROR_CAUSE))
    finally:
        transport.close()


def _as_coa_reply(reply: _Reply) -> CoaReply:
    """The wire's answer in the domain's words."""
    if reply.code is None:
        return CoaReply(None, problem=reply.problem)
    packet = PACKET_NAMES.get(reply.code, f"code {reply.code}")
    if reply.problem is not None:
        return CoaReply(CoaAnswer.UNTRUSTED, packet=packet, problem=reply.problem)
    if reply.code in ACK_CODES:
        answer = CoaAnswer.ACK
    elif reply.code in NAK_CODES:
        answer = CoaAnswer.NAK
    else:
        return CoaReply(CoaAnswer.UNEXPECTED, packet=packet)
    cause = None if reply.error_cause is None else cause_text(reply.error_cause)
    return CoaReply(answer, packet=packet, error_cause=reply.error_cause, cause=cause)


class UdpCoaSender:
    """Sends each request from its own socket (a fresh random identifier per attempt)."""

    sends = True

    def takes_coa_request(self, vendor: NasVendor) -> bool:
        return uses_coa_request(vendor)

    async def send(self, target: CoaTarget, kind: CoaKind, wait: float) -> CoaReply:
        identifier = int.from_bytes(os.urandom(1), "big")
        packet = build(REQUEST_CODES[kind], identifier, target)
        reply = await exchange(packet, target.address, target.port, target.secret, wait)
        return _as_coa_reply(reply)


def sender_for(settings: Settings) -> CoaSender:
    """The UDP sender when CoA is enabled, else the null one: chosen once per process."""
    return UdpCoaSender() if settings.coa_enabled else NullCoaSender()
