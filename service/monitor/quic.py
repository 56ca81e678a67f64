"""QUIC: the server name, ALPN and version from a client's Initial packets.

An HTTP/3 client's TLS ClientHello travels in CRYPTO frames of its Initial packets, encrypted
with keys anyone can derive from the packet's Destination Connection ID and a salt the version
publishes (RFC 9001 5.2 for v1, RFC 9369 3.3 for v2, the drafts' own salts). So the monitor
derives them, removes header protection (AES-ECB mask over a 16-byte sample), decrypts the
payload (AES-128-GCM), collects the CRYPTO frames by offset (a ClientHello with a post-quantum
key share spans two or three packets) and reads the ClientHello with `extract.client_hello`.
Google's older QUIC (versions Q0xx before Q046) sends its CHLO in the clear: its SNI tag is read
as it stands.

Only the first few client packets of a flow get here (engine._udp_payload), and only when the
first bytes name a known version, so the cost stays off ordinary UDP. Everything is bounded: a
16 KB reassembly buffer and eight packets per flow. A packet that does not decrypt is counted
(`QuicFlow.undecryptable`), never raised.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from service.monitor.extract import ClientHello, client_hello

MAX_CRYPTO: Final = 16384  # bytes of CRYPTO stream kept per flow
MAX_PACKETS: Final = 8  # Initial packets looked at per flow before giving up

_SALT_V1: Final = bytes.fromhex("38762cf7f55934b34d179ae6a4c80cadccbb7f0a")
_SALT_V2: Final = bytes.fromhex("0dede3def700a6db819381be6e269dcbf9bd2ed9")
_SALT_D29: Final = bytes.fromhex("afbfec289993d24c9e9786f19c6111e04390a899")
_SALT_D23: Final = bytes.fromhex("c3eef712c72ebb5a11a7d2432bb46365bef9f502")


class Version:
    """One QUIC version's Initial parameters."""

    __slots__ = (
        "hp_label",
        "initial_type",
        "iv_label",
        "key_label",
        "name",
        "retry_type",
        "salt",
        "wire",
    )

    def __init__(
        self, wire: bytes, name: str, salt: bytes, prefix: bytes, initial_type: int
    ) -> None:
        self.wire = wire  # the four version bytes
        self.name = name
        self.salt = salt
        self.key_label = prefix + b"key"
        self.iv_label = prefix + b"iv"
        self.hp_label = prefix + b"hp"
        self.initial_type = initial_type  # long-header packet type bits of an Initial
        # v1 numbers Initial 0, 0-RTT 1, Handshake 2, Retry 3; v2 rotates them (RFC 9369 3.2).
        self.retry_type = (initial_type + 3) & 3


def _versions() -> dict[bytes, Version]:
    known = [
        Version(b"\x00\x00\x00\x01", "quic-v1", _SALT_V1, b"quic ", 0),
        Version(b"\x6b\x33\x43\xcf", "quic-v2", _SALT_V2, b"quicv2 ", 1),
    ]
    for draft in range(23, 35):
        salt = _SALT_D29 if draft >= 29 else _SALT_D23
        known.append(Version(bytes((0xFF, 0, 0, draft)), f"quic-draft{draft}", salt, b"quic ", 0))
    return {version.wire: version for version in known}


# The versions whose Initials we can read, by their four wire bytes. The engine looks the
# bytes after a long-header first byte up here before calling in: one slice and one lookup.
VERSIONS: Final = _versions()


def is_gquic_version(raw: bytes) -> bool:
    """Whether four bytes are a Google QUIC version ("Q025", "Q046", "Q050")."""
    return len(raw) == 4 and raw[0] == 0x51 and raw[1:].isdigit()  # "Q" and three digits


def _expand_label(secret: bytes, label: bytes, length: int) -> bytes:
    """HKDF-Expand-Label (RFC 8446 7.1) with an empty context, for lengths up to 32 (one
    HMAC-SHA256 block)."""
    full = b"tls13 " + label
    info = length.to_bytes(2, "big") + bytes((len(full),)) + full + b"\x00"
    return hmac.digest(secret, info + b"\x01", hashlib.sha256)[:length]


def initial_secrets(version: Version, dcid: bytes) -> tuple[bytes, bytes, bytes]:
    """The client's Initial (key, iv, hp key) for a Destination Connection ID (RFC 9001 5.2)."""
    initial = hmac.digest(version.salt, dcid, hashlib.sha256)  # HKDF-Extract
    client = _expand_label(initial, b"client in", 32)
    return (
        _expand_label(client, version.key_label, 16),
        _expand_label(client, version.iv_label, 12),
        _expand_label(client, version.hp_label, 16),
    )


class InitialKeys:
    """The client's Initial keys for one Destination Connection ID."""

    __slots__ = ("aead", "hp", "iv")

    def __init__(self, version: Version, dcid: bytes) -> None:
        key, self.iv, hp = initial_secrets(version, dcid)
        self.aead = AESGCM(key)
        # RFC 9001 5.4.3: header protection is AES-ECB over one 16-byte sample. ECB keeps no
        # state between blocks, so one encryptor serves every packet (no context per packet).
        self.hp = Cipher(algorithms.AES(hp), modes.ECB()).encryptor()  # noqa: S305

    def mask(self, sample: bytes) -> bytes:
        return self.hp.update(sample)


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    """A QUIC variable-length integer (RFC 9000 16) at data[pos]: (value, position after)."""
    first = data[pos]
    size = 1 << (first >> 6)
    if pos + size > len(data):
        raise ValueError("varint runs past the packet")
    value = first & 0x3F
    for at in range(pos + 1, pos + size):
        value = (value << 8) | data[at]
    return value, pos + size


def decrypt_initial(
    packet: bytes, pos: int, header_end: int, packet_end: int, keys: InitialKeys
) -> bytes:
    """The plaintext payload of a protected Initial at packet[pos:packet_end] whose packet
    number starts at `header_end`. Raises InvalidTag (wrong keys, damaged packet) or
    ValueError (too short to carry a sample)."""
    if header_end + 20 > packet_end:
        raise ValueError("Initial packet too short for a header-protection sample")
    mask = keys.mask(packet[header_end + 4 : header_end + 20])
    first = packet[pos] ^ (mask[0] & 0x0F)
    pn_len = (first & 0x03) + 1
    pn = bytes(
        b ^ m for b, m in zip(packet[header_end : header_end + pn_len], mask[1:], strict=False)
    )
    header = bytes((first,)) + packet[pos + 1 : header_end] + pn
    nonce = bytearray(keys.iv)
    for index, byte in enumerate(pn):
        nonce[12 - pn_len + index] ^= byte
    return keys.aead.decrypt(bytes(nonce), packet[header_end + pn_len : packet_end], header)


def crypto_frames(payload: bytes) -> list[tuple[int, bytes]]:
    """The CRYPTO frames of a decrypted Initial payload as (offset, data). PADDING, PING and
    ACK are stepped over; any other frame (CONNECTION_CLOSE, or one an Initial may not carry)
    ends the walk with what was found so far."""
    out = []
    pos, end = 0, len(payload)
    while pos < end:
        kind = payload[pos]
        if kind == 0x00:  # PADDING: runs of zeros
            pos += 1
            while pos < end and payload[pos] == 0:
                pos += 1
        elif kind == 0x01:  # PING
            pos += 1
        elif kind == 0x06:  # CRYPTO: offset, length, data
            offset, pos = _varint(payload, pos + 1)
            length, pos = _varint(payload, pos)
            if pos + length > end:
                break
            out.append((offset, payload[pos : pos + length]))
            pos += length
        elif kind in (0x02, 0x03):  # ACK: largest, delay, range count, first range, ranges
            _, pos = _varint(payload, pos + 1)
            _, pos = _varint(payload, pos)
            count, pos = _varint(payload, pos)
            _, pos = _varint(payload, pos)
            for _ in range(2 * count + (3 if kind == 0x03 else 0)):
                _, pos = _varint(payload, pos)
        else:
            break
    return out


def gquic_hello(payload: bytes) -> str | None:
    """The SNI tag of a Google QUIC CHLO sent in the clear (Q0xx before Q046): "CHLO", tag
    count (2, little-endian), 2 bytes padding, then (tag, end offset) pairs and the values."""
    at = payload.find(b"CHLO", 0, 256)
    if at < 0 or at + 8 > len(payload):
        return None
    count = int.from_bytes(payload[at + 4 : at + 6], "little")
    values = at + 8 + 8 * count
    start = 0
    for index in range(min(count, 64)):
        entry = at + 8 + 8 * index
        if entry + 8 > len(payload):
            return None
        end = int.from_bytes(payload[entry + 4 : entry + 8], "little")
        if payload[entry : entry + 4] == b"SNI\x00":
            name = payload[values + start : values + end]
            if 0 < len(name) == end - start:
                return name.decode("ascii", "replace").lower()
            return None
        start = end
    return None


class QuicFlow:
    """One flow's QUIC state while its client hello is not yet read: the keys of the client's
    first Initial, the CRYPTO bytes collected by offset, and how many packets were looked at.
    The engine keeps it on the flow and drops it once the name is found or the packets run out."""

    __slots__ = ("chunks", "hello", "keys", "packets", "undecryptable", "version")

    def __init__(self) -> None:
        self.keys: InitialKeys | None = None
        self.version: str | None = None
        self.chunks: dict[int, bytes] = {}
        self.packets = 0
        self.undecryptable = 0  # packets that failed to decrypt (counted by the engine)
        self.hello: ClientHello | None = None

    @property
    def exhausted(self) -> bool:
        return self.packets >= MAX_PACKETS

    def datagram(self, data: bytes) -> ClientHello | None:
        """One UDP payload from the client. Returns the ClientHello once it is complete
        (then, and on later calls, `self.hello`), else None."""
        if self.hello is not None:
            return self.hello
        self.packets += 1
        pos, end = 0, len(data)
        while pos + 7 <= end:
            first = data[pos]
            if not first & 0x80:
                if pos == 0 and first & 0x09 == 0x09 and is_gquic_version(data[9:13]):
                    self._gquic(data)
                break  # a short-header packet (or padding) ends the datagram
            version = VERSIONS.get(data[pos + 1 : pos + 5])
            if version is None:
                if pos == 0 and is_gquic_version(data[1:5]):
                    self._gquic(data)  # Q046 and on: long header, CHLO in the clear up to Q048
                break  # Version Negotiation (version 0) or one we cannot read
            ptype = (first >> 4) & 0x03
            if ptype == version.retry_type:
                break  # a Retry fills the datagram and carries no CRYPTO data
            at = pos + 5
            dcid_len = data[at]
            dcid = data[at + 1 : at + 1 + dcid_len]
            at += 1 + dcid_len
            if at >= end:
                break
            at += 1 + data[at]  # source connection ID
            try:
                if ptype == version.initial_type:
                    token_len, at = _varint(data, at)
                    at += token_len
                length, at = _varint(data, at)
            except (ValueError, IndexError):
                self.undecryptable += 1
                break
            packet_end = at + length
            if packet_end > end:
                self.undecryptable += 1
                break
            if ptype == version.initial_type:
                self._initial(data, pos, at, packet_end, version, dcid)
                if self.hello is not None:
                    return self.hello
            pos = packet_end  # 0-RTT and Handshake packets are skipped; coalesced ones follow
        return self.hello

    def _initial(
        self, data: bytes, pos: int, header_end: int, packet_end: int, version: Version, dcid: bytes
    ) -> None:
        # The client keeps the keys of its first Initial's DCID even after it switches to the
        # server's connection ID (RFC 9001 5.2), so those are tried first.
        keys = self.keys
        plain = None
        if keys is not None and self.version == version.name:
            try:
                plain = decrypt_initial(data, pos, header_end, packet_end, keys)
            except (InvalidTag, ValueError):
                plain = None
        if plain is None:
            keys = _keys(version, dcid)
            try:
                plain = decrypt_initial(data, pos, header_end, packet_end, keys)
            except (InvalidTag, ValueError):
                self.undecryptable += 1
                return
            if self.keys is None or not self.chunks:
                self.keys, self.version = keys, version.name
        if self.version is None:
            self.version = version.name
        try:
            frames = crypto_frames(plain)
        except (ValueError, IndexError):
            frames = []  # a frame cut short: keep what earlier packets gave
        chunks = self.chunks
        for offset, piece in frames:
            if piece and offset + len(piece) <= MAX_CRYPTO and len(chunks) < 256:
                chunks[offset] = piece
        self._assemble()

    def _assemble(self) -> None:
        """The ClientHello, once the CRYPTO stream is contiguous from 0 up to its length."""
        chunks = self.chunks
        if 0 not in chunks:
            return
        stream = bytearray(chunks[0])
        grew = True
        while grew:
            # Pieces may arrive in any order, be retransmitted or re-split and so overlap:
            # take any piece that starts inside what we have and reaches beyond it.
            grew = False
            for offset, piece in chunks.items():
                if offset <= len(stream) < offset + len(piece):
                    stream += piece[len(stream) - offset :]
                    grew = True
        if len(stream) < 4:
            return
        need = 4 + int.from_bytes(stream[1:4], "big")
        if len(stream) >= need:
            self.hello = client_hello(bytes(stream), 0, need) or ClientHello(None, None, None)

    def _gquic(self, data: bytes) -> None:
        name = gquic_hello(data)
        version_bytes = data[9:13] if not data[0] & 0x80 else data[1:5]
        self.version = "gquic-" + version_bytes.decode("ascii", "replace")
        if name is not None:
            self.hello = ClientHello(name, None, None)


def seal_initial(
    version: Version,
    dcid: bytes,
    pn: int,
    payload: bytes,
    *,
    scid: bytes = b"",
    packet_type: int | None = None,
    key_dcid: bytes | None = None,
) -> bytes:
    """A client's protected long-header packet (RFC 9001 5.3-5.4, 4-byte packet number): what
    a QUIC client sends, for tests and bench/monitor_live.py. `packet_type` defaults to the
    version's Initial (no token); `key_dcid` is the DCID whose keys protect it (a client keeps
    its first Initial's keys after switching to the server's connection ID)."""
    key, iv, hp = initial_secrets(version, key_dcid or dcid)
    ptype = version.initial_type if packet_type is None else packet_type
    header = (
        bytes((0xC0 | (ptype << 4) | 0x03,))
        + version.wire
        + bytes((len(dcid),))
        + dcid
        + bytes((len(scid),))
        + scid
        + (b"\x00" if ptype == version.initial_type else b"")
        + (0x4000 | (4 + len(payload) + 16)).to_bytes(2, "big")
    )
    pn_bytes = pn.to_bytes(4, "big")
    nonce = (int.from_bytes(iv, "big") ^ pn).to_bytes(12, "big")
    sealed = AESGCM(key).encrypt(nonce, payload, header + pn_bytes)
    encryptor = Cipher(algorithms.AES(hp), modes.ECB()).encryptor()  # noqa: S305
    mask = encryptor.update(sealed[:16]) + encryptor.finalize()
    masked_pn = bytes(b ^ m for b, m in zip(pn_bytes, mask[1:5], strict=True))
    return bytes((header[0] ^ (mask[0] & 0x0F),)) + header[1:] + masked_pn + sealed


_KEYS: dict[tuple[str, bytes], InitialKeys] = {}


def _keys(version: Version, dcid: bytes) -> InitialKeys:
    """Initial keys, cached: a client's Initials and their retransmissions share a DCID."""
    key = (version.name, dcid)
    keys = _KEYS.get(key)
    if keys is None:
        if len(_KEYS) >= 4096:
            _KEYS.clear()
        keys = _KEYS[key] = InitialKeys(version, dcid)
    return keys
