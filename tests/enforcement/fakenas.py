"""A fake NAS Dynamic Authorization Server built on pyrad (the ACK/NAK/timeout branches that
hostapd cannot be made to produce on demand)."""

from __future__ import annotations

import hashlib
import socket
import threading
from dataclasses import dataclass, field
from typing import Any

from pyrad.dictionary import Dictionary
from pyrad.packet import CoAPacket

from radius.codec import DICTIONARY_PATH

DISCONNECT_REQUEST, DISCONNECT_ACK, DISCONNECT_NAK = 40, 41, 42
COA_REQUEST, COA_ACK, COA_NAK = 43, 44, 45


@dataclass
class Received:
    code: int
    attrs: dict[str, list[Any]]
    authenticator_ok: bool
    raw: bytes
    answered: bool = True  # False: it came while the NAS was silent (no answer went back)


@dataclass
class FakeNas:
    """Modes: ack, nak503 (NAK with Error-Cause 503), coa-nak (NAK CoA, ACK Disconnect),
    silent (never answers), wrong-secret (answers signed with another secret)."""

    secret: bytes
    mode: str = "ack"
    received: list[Received] = field(default_factory=list)
    port: int = 0
    host: str = "127.0.0.1"

    def __post_init__(self) -> None:
        self.dictionary = Dictionary(str(DICTIONARY_PATH))
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((self.host, 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self.arrived = threading.Event()

    def __enter__(self) -> FakeNas:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            # RFC 5176 §3.5 Request Authenticator, computed here independently of our codec.
            expected = hashlib.md5(data[:4] + bytes(16) + data[20:] + self.secret).digest()
            mode = self.mode  # once per packet: a test may switch it meanwhile
            request = CoAPacket(packet=data, secret=self.secret, dict=self.dictionary)
            attrs = {key: request[key] for key in request.keys()}  # noqa: SIM118
            self.received.append(
                Received(
                    request.code,
                    attrs,
                    expected == data[4:20],
                    data,
                    answered=mode != "silent",
                )
            )
            self.arrived.set()
            if mode == "silent":
                continue
            code = request.code
            ack = code + 1
            nak = code + 2
            reply = request.CreateReply()
            if self.mode == "nak503" or (self.mode == "coa-nak" and code == COA_REQUEST):
                reply.code = nak
                reply["Error-Cause"] = 503 if self.mode == "nak503" else 405
            else:
                reply.code = ack
            if self.mode == "wrong-secret":
                reply.secret = b"not-the-secret"
            self.sock.sendto(reply.ReplyPacket(), peer)
