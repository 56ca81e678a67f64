"""One direction of a TCP connection put back in order, for the few flows whose payload the
monitor parses beyond a single segment: DNS over TCP (every message), the HTTP requests of a
connection, a TLS ClientHello longer than a segment.

Bounded on purpose: the monitor reads names, not files. Segments ahead of the next expected
byte wait (at most HOLD_SEGMENTS segments, HOLD_BYTES bytes a direction); more than that, and
the direction is given up (the caller counts it). A capture that starts mid-connection (no
SYN seen) starts the stream at the first payload segment seen. Sequence numbers are compared
modulo 2**32 (RFC 1982 serial arithmetic), so a stream may wrap around zero.

Only flows that need it get a `Stream`: bulk TCP never reaches this module (engine.py's fast
path calls out only for a flow's first few payload packets or for a flow that has a stream).
"""

from __future__ import annotations

from typing import Final

HOLD_SEGMENTS: Final = 8  # out-of-order segments waiting, per direction
HOLD_BYTES: Final = 8192  # and their bytes
_MASK: Final = 0xFFFFFFFF
_HALF: Final = 0x80000000


def seq_diff(a: int, b: int) -> int:
    """a - b for 32-bit sequence numbers: negative when `a` is before `b` (wrap-around aware)."""
    return ((a - b + _HALF) & _MASK) - _HALF


class Stream:
    """The bytes of one direction in sequence order. `add(seq, payload)` returns what the
    segment made newly contiguous (b"" for a retransmission or a segment that must wait), or
    None once the direction is given up (too much waiting out of order). `pending` is the
    reader's own: bytes already delivered but not yet consumed (a message or a header cut at
    a segment's end)."""

    __slots__ = ("held", "held_bytes", "hosts", "kind", "next", "pending", "skip")

    def __init__(self, kind: int, next_seq: int | None = None) -> None:
        self.kind = kind  # what the reader reads it as (engine.py's _S_DNS, _S_HTTP, _S_TLS)
        self.next = next_seq  # the next byte's sequence number; None until the first segment
        self.held: dict[int, bytes] = {}  # seq -> payload of segments ahead of `next`
        self.held_bytes = 0
        self.pending = b""
        self.skip = 0  # bytes the reader passes over unread (an HTTP request body)
        self.hosts: set[str] | None = None  # HTTP: other hosts already recorded

    def add(self, seq: int, payload: bytes) -> bytes | None:
        expected = self.next
        if expected is None:  # no SYN seen: the stream starts here
            expected = seq
        ahead = seq_diff(seq, expected)
        if ahead > 0:
            if seq in self.held:
                if len(self.held[seq]) >= len(payload):
                    return b""  # a retransmission of a segment already waiting
                self.held_bytes -= len(self.held[seq])
            if len(self.held) >= HOLD_SEGMENTS or self.held_bytes + len(payload) > HOLD_BYTES:
                self.held.clear()
                self.held_bytes = 0
                return None
            self.held[seq] = payload
            self.held_bytes += len(payload)
            return b""
        if ahead < 0:  # a retransmission, or an overlap: only the new bytes count
            if -ahead >= len(payload):
                return b""
            payload = payload[-ahead:]
        expected = (expected + len(payload)) & _MASK
        if not self.held:
            self.next = expected
            return payload
        out = [payload]
        progress = True
        while progress and self.held:
            progress = False
            for at in list(self.held):
                behind = seq_diff(expected, at)
                if behind < 0:
                    continue  # still a hole before it
                piece = self.held.pop(at)
                self.held_bytes -= len(piece)
                if behind < len(piece):
                    out.append(piece[behind:])
                    expected = (expected + len(piece) - behind) & _MASK
                progress = True
        self.next = expected
        return b"".join(out)
