"""RADIUS wire format: a small, strict decoder and encoder, authenticators and PAP.

Shared by the authorizer (`radius/server.py`) and the CoA sender (`radius/coa/`). The decoder
is our own rather than pyrad's `Packet` because it sits on the hot path: it reads the header
and the attribute list once, keeps the first value of each attribute type in a dict and never
builds objects per attribute. pyrad's `Dictionary` (with our vendor dictionaries, see
`load_dictionary`) is what tests, tools and the CoA client use to name attributes.
Guarded by `bench/radius_load.py`.

References: RFC 2865 (packet, User-Password), RFC 2866 (accounting authenticator),
RFC 2868/3580 (tagged tunnel attributes, VLANs), RFC 3579 §3.2 and RFC 2869 §5.14
(Message-Authenticator, HMAC-MD5), RFC 5176 (CoA/Disconnect), RFC 5997 (Status-Server),
and the BlastRADIUS advisory (CVE-2024-3596): Message-Authenticator first in every reply.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from collections.abc import Iterator

    from pyrad.dictionary import Dictionary

try:  # OpenSSL's HMAC object: its copy(), update() and digest() are C calls
    from _hashlib import hmac_new as _openssl_hmac_new
except ImportError:  # pragma: no cover - a Python built without OpenSSL
    _openssl_hmac_new = None  # type: ignore[assignment]

DICTIONARY_DIR = Path(__file__).resolve().parent / "dictionaries"
DICTIONARY_PATH = DICTIONARY_DIR / "dictionary"

HEADER_LENGTH = 20
MIN_PACKET = 20
MAX_PACKET = 4096
AUTH_LENGTH = 16
ZERO_AUTH = bytes(16)
MA_LENGTH = 18  # type, length and 16 octets of HMAC-MD5

# Packet codes (RFC 2865, 2866, 5176, 5997).
ACCESS_REQUEST = 1
ACCESS_ACCEPT = 2
ACCESS_REJECT = 3
ACCOUNTING_REQUEST = 4
ACCOUNTING_RESPONSE = 5
ACCESS_CHALLENGE = 11
STATUS_SERVER = 12
DISCONNECT_REQUEST = 40
DISCONNECT_ACK = 41
DISCONNECT_NAK = 42
COA_REQUEST = 43
COA_ACK = 44
COA_NAK = 45

# Attribute types (RFC 2865 §5 and the RFCs above).
USER_NAME = 1
USER_PASSWORD = 2
CHAP_PASSWORD = 3
NAS_IP_ADDRESS = 4
NAS_PORT = 5
SERVICE_TYPE = 6
FRAMED_IP_ADDRESS = 8
FILTER_ID = 11
REPLY_MESSAGE = 18
STATE = 24
CLASS = 25
VENDOR_SPECIFIC = 26
SESSION_TIMEOUT = 27
TERMINATION_ACTION = 29
CALLED_STATION_ID = 30
CALLING_STATION_ID = 31
NAS_IDENTIFIER = 32
PROXY_STATE = 33
ACCT_STATUS_TYPE = 40
ACCT_DELAY_TIME = 41
ACCT_INPUT_OCTETS = 42
ACCT_OUTPUT_OCTETS = 43
ACCT_SESSION_ID = 44
ACCT_SESSION_TIME = 46
ACCT_TERMINATE_CAUSE = 49
ACCT_INPUT_GIGAWORDS = 52
ACCT_OUTPUT_GIGAWORDS = 53
EVENT_TIMESTAMP = 55
NAS_PORT_TYPE = 61
TUNNEL_TYPE = 64
TUNNEL_MEDIUM_TYPE = 65
EAP_MESSAGE = 79
MESSAGE_AUTHENTICATOR = 80
TUNNEL_PRIVATE_GROUP_ID = 81
NAS_PORT_ID = 87
NAS_IPV6_ADDRESS = 95
ERROR_CAUSE = 101

# Values.
SERVICE_TYPE_FRAMED = 2
SERVICE_TYPE_LOGIN = 1
SERVICE_TYPE_CALL_CHECK = 10  # MAB on Cisco and most switches
NAS_PORT_TYPE_ETHERNET = 15
NAS_PORT_TYPE_WIRELESS = 19
TUNNEL_TYPE_VLAN = 13
TUNNEL_MEDIUM_IEEE_802 = 6
TERMINATION_ACTION_RADIUS_REQUEST = 1
ACCT_START = 1
ACCT_STOP = 2
ACCT_INTERIM = 3
ACCT_ON = 7
ACCT_OFF = 8

# RFC 2866 §5.10 Acct-Terminate-Cause names, for the session record.
TERMINATE_CAUSES = {
    1: "User-Request",
    2: "Lost-Carrier",
    3: "Lost-Service",
    4: "Idle-Timeout",
    5: "Session-Timeout",
    6: "Admin-Reset",
    7: "Admin-Reboot",
    8: "Port-Error",
    9: "NAS-Error",
    10: "NAS-Request",
    11: "NAS-Reboot",
    12: "Port-Unneeded",
    13: "Port-Preempted",
    14: "Port-Suspended",
    15: "Service-Unavailable",
    16: "Callback",
    17: "User-Error",
    18: "Host-Request",
}

_U32 = struct.Struct("!I")
_HEADER = struct.Struct("!BBH")
_MA_HEAD = bytes((MESSAGE_AUTHENTICATOR, MA_LENGTH))
_MA_ZEROED = _MA_HEAD + ZERO_AUTH
_compare_digest = hmac.compare_digest
_md5 = hashlib.md5


class HmacKey(Protocol):
    """An HMAC-MD5 object already keyed with a shared secret (see `hmac_md5_key`)."""

    def copy(self) -> Any: ...


def hmac_md5_key(secret: bytes) -> HmacKey:
    """An HMAC-MD5 object keyed with `secret`, to `.copy()` for each packet: the key schedule
    is computed once per NAS instead of once per Message-Authenticator (half the cost)."""
    if _openssl_hmac_new is not None:
        return _openssl_hmac_new(secret, digestmod="md5")
    return hmac.new(secret, digestmod="md5")  # pragma: no cover


class PacketError(ValueError):
    """A packet we must drop. `reason` is the counter key (`too_short`, `bad_length`...)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(slots=True)
class RawPacket:
    """A decoded packet: the header, the first value of each attribute type, and where the
    Message-Authenticator sits (offset of its type octet, -1 when absent)."""

    code: int
    identifier: int
    authenticator: bytes
    attrs: dict[int, bytes]
    data: bytes  # the packet up to its Length field (RFC 2865 §3: octets beyond are padding)
    ma_offset: int = -1
    proxy_states: list[bytes] | None = None

    def text(self, attr_type: int) -> str | None:
        """An attribute as text (invalid UTF-8 replaced), or None when absent."""
        value = self.attrs.get(attr_type)
        return None if value is None else value.decode("utf-8", "replace")

    def integer(self, attr_type: int) -> int | None:
        value = self.attrs.get(attr_type)
        if value is None or len(value) != 4:
            return None
        return int(_U32.unpack(value)[0])


def decode(data: bytes) -> RawPacket:
    """Parse a datagram, or raise `PacketError` for anything malformed.

    Checks: at least 20 octets; a Length field between 20 and 4096 and not beyond the
    datagram; every attribute with length >= 2 ending inside the packet; a
    Message-Authenticator of exactly 18 octets, at most once.
    """
    size = len(data)
    if size < MIN_PACKET:
        raise PacketError("too_short", f"{size} octets")
    code, identifier, length = _HEADER.unpack_from(data)
    if length < MIN_PACKET or length > MAX_PACKET:
        raise PacketError("bad_length", f"length field {length}")
    if length > size:
        raise PacketError("truncated", f"length field {length} > {size} octets received")
    if length < size:
        data = data[:length]
    attrs: dict[int, bytes] = {}
    ma_offset = -1
    proxy_states: list[bytes] | None = None
    i = HEADER_LENGTH
    while i < length:
        if i + 2 > length:
            raise PacketError("bad_attribute", f"attribute header cut at offset {i}")
        attr_type = data[i]
        attr_len = data[i + 1]
        if attr_len < 2:
            raise PacketError("bad_attribute", f"attribute {attr_type} length {attr_len}")
        end = i + attr_len
        if end > length:
            raise PacketError("bad_attribute", f"attribute {attr_type} overruns the packet")
        if attr_type in attrs:
            if attr_type == 80:  # MESSAGE_AUTHENTICATOR, a second time
                raise PacketError("bad_attribute", "malformed Message-Authenticator")
            if attr_type == 33:  # PROXY_STATE: every one, in order
                proxy_states.append(data[i + 2 : end])  # type: ignore[union-attr]
        else:
            attrs[attr_type] = data[i + 2 : end]
            if attr_type == 80:  # MESSAGE_AUTHENTICATOR
                if attr_len != 18:
                    raise PacketError("bad_attribute", "malformed Message-Authenticator")
                ma_offset = i
            elif attr_type == 33:  # PROXY_STATE
                proxy_states = [data[i + 2 : end]]
        i = end
    return RawPacket(code, identifier, data[4:20], attrs, data, ma_offset, proxy_states)


def iter_attributes(data: bytes) -> Iterator[tuple[int, bytes]]:
    """Every (type, value) of an already-decoded packet, in order (for tools and CoA)."""
    length = _HEADER.unpack_from(data)[2]
    i = HEADER_LENGTH
    while i + 2 <= length:
        attr_len = data[i + 1]
        if attr_len < 2:
            return
        yield data[i], data[i + 2 : i + attr_len]
        i += attr_len


# --- authenticators -------------------------------------------------------------------------


def _hmac_md5(secret: bytes, data: bytes) -> bytes:
    return hmac.digest(secret, data, "md5")


def message_authenticator(
    data: bytes, ma_offset: int, secret: bytes, authenticator: bytes
) -> bytes:
    """HMAC-MD5 over `data` with the authenticator field replaced by `authenticator` and the
    Message-Authenticator value zeroed (RFC 3579 §3.2)."""
    signed = b"".join(
        (
            data[:4],
            authenticator,
            data[20 : ma_offset + 2],
            ZERO_AUTH,
            data[ma_offset + MA_LENGTH :],
        )
    )
    return _hmac_md5(secret, signed)


def verify_message_authenticator(
    packet: RawPacket,
    secret: bytes,
    authenticator: bytes | None = None,
    *,
    key: HmacKey | None = None,
) -> bool:
    """Check a packet's Message-Authenticator.

    `authenticator` is what the HMAC was computed with: the packet's own Request Authenticator
    for an Access-Request or Status-Server (the default), 16 zero octets for Accounting,
    CoA and Disconnect requests and for an Accounting-Response to an Accounting-Request, the
    request's authenticator for any other reply.
    """
    offset = packet.ma_offset
    if offset < 0:
        return False
    if key is not None and authenticator is None:
        return verify_request_message_authenticator(packet.data, offset, key)
    expected = message_authenticator(
        packet.data,
        offset,
        secret,
        packet.authenticator if authenticator is None else authenticator,
    )
    return hmac.compare_digest(expected, packet.data[offset + 2 : offset + MA_LENGTH])


def verify_request_message_authenticator(data: bytes, offset: int, key: HmacKey) -> bool:
    """The Message-Authenticator check of an Access-Request or Status-Server (the HMAC over the
    packet's own Request Authenticator), with a keyed `hmac_md5_key` object; `data` is the
    packet up to its Length field, `offset` where the attribute starts."""
    h = key.copy()
    h.update(data[: offset + 2])
    h.update(ZERO_AUTH)
    h.update(data[offset + MA_LENGTH :])
    return _compare_digest(h.digest(), data[offset + 2 : offset + MA_LENGTH])


def request_authenticator(data: bytes, secret: bytes) -> bytes:
    """The Request Authenticator of an Accounting, CoA or Disconnect request (RFC 2866 §3):
    MD5(Code + Identifier + Length + 16 zero octets + Attributes + Secret)."""
    return hashlib.md5(data[:4] + ZERO_AUTH + data[20:] + secret).digest()  # noqa: S324 - RFC 2866


def verify_request_authenticator(packet: RawPacket, secret: bytes) -> bool:
    return hmac.compare_digest(request_authenticator(packet.data, secret), packet.authenticator)


def response_authenticator(data: bytes, request_auth: bytes, secret: bytes) -> bytes:
    """MD5(Code + Identifier + Length + Request Authenticator + Attributes + Secret)."""
    return hashlib.md5(data[:4] + request_auth + data[20:] + secret).digest()  # noqa: S324 - RFC 2865


def verify_response_authenticator(reply: RawPacket, request_auth: bytes, secret: bytes) -> bool:
    """Check a reply (Access-Accept, CoA-ACK...) against the request we sent."""
    expected = response_authenticator(reply.data, request_auth, secret)
    return hmac.compare_digest(expected, reply.authenticator)


def encode_reply(
    code: int,
    identifier: int,
    request_auth: bytes,
    attributes: bytes,
    secret: bytes,
    *,
    with_message_authenticator: bool = True,
    hmac_authenticator: bytes | None = None,
    key: HmacKey | None = None,
) -> bytes:
    """A complete reply: Message-Authenticator first (BlastRADIUS), then `attributes`, then
    the Response Authenticator.

    The HMAC is keyed over the request's authenticator, except an Accounting-Response to an
    Accounting-Request, where it is 16 zero octets (pass `hmac_authenticator=ZERO_AUTH`; as
    FreeRADIUS and pyrad do; RFC 5997 §3 keeps the request's for a Status-Server).
    `key` is `hmac_md5_key(secret)`, precomputed (the hot path keeps one per NAS).
    """
    if with_message_authenticator:
        length = HEADER_LENGTH + MA_LENGTH + len(attributes)
        if length > MAX_PACKET:
            raise PacketError("too_long", f"reply of {length} octets")
        head = _HEADER.pack(code, identifier, length)
        vector = request_auth if hmac_authenticator is None else hmac_authenticator
        signed = b"".join((head, vector, _MA_ZEROED, attributes))
        if key is None:
            ma = _hmac_md5(secret, signed)
        else:
            h = key.copy()
            h.update(signed)
            ma = h.digest()
        body = _MA_HEAD + ma + attributes
    else:
        length = HEADER_LENGTH + len(attributes)
        if length > MAX_PACKET:
            raise PacketError("too_long", f"reply of {length} octets")
        head = _HEADER.pack(code, identifier, length)
        body = attributes
    auth = _md5(b"".join((head, request_auth, body, secret))).digest()
    return head + auth + body


def encode_reply_fast(
    code: int, identifier: int, request_auth: bytes, attributes: bytes, secret: bytes, key: HmacKey
) -> bytes:
    """`encode_reply` of the hot path: Message-Authenticator first, over the request's
    authenticator, with the NAS's keyed HMAC. Raises `PacketError` when too long."""
    length = 38 + len(attributes)  # header, Message-Authenticator, attributes
    if length > MAX_PACKET:
        raise PacketError("too_long", f"reply of {length} octets")
    head = _HEADER.pack(code, identifier, length)
    h = key.copy()
    h.update(b"".join((head, request_auth, _MA_ZEROED, attributes)))
    body = b"".join((_MA_HEAD, h.digest(), attributes))
    return b"".join((head, _md5(b"".join((head, request_auth, body, secret))).digest(), body))


def encode_request(
    code: int,
    identifier: int,
    attributes: bytes,
    secret: bytes,
    *,
    with_message_authenticator: bool = True,
    authenticator: bytes | None = None,
) -> bytes:
    """A request with Message-Authenticator first.

    Access-Request and Status-Server get a random Request Authenticator (or `authenticator`)
    and the HMAC over it; Accounting, CoA and Disconnect requests get the HMAC over a zero
    authenticator and then the MD5 Request Authenticator of RFC 2866/5176.
    """
    random_auth = code in (ACCESS_REQUEST, STATUS_SERVER)
    ma_len = MA_LENGTH if with_message_authenticator else 0
    length = HEADER_LENGTH + ma_len + len(attributes)
    if length > MAX_PACKET:
        raise PacketError("too_long", f"request of {length} octets")
    head = _HEADER.pack(code, identifier, length)
    auth = (authenticator or os.urandom(16)) if random_auth else ZERO_AUTH
    body = attributes
    if with_message_authenticator:
        ma = _hmac_md5(secret, b"".join((head, auth, b"\x50\x12", ZERO_AUTH, attributes)))
        body = b"\x50\x12" + ma + attributes
    if not random_auth:
        auth = hashlib.md5(b"".join((head, ZERO_AUTH, body, secret))).digest()  # noqa: S324
    return head + auth + body


# --- attributes -----------------------------------------------------------------------------


def attr(attr_type: int, value: bytes) -> bytes:
    """One attribute; values longer than 253 octets raise (split them yourself)."""
    if len(value) > 253:
        raise PacketError("too_long", f"attribute {attr_type} value of {len(value)} octets")
    return bytes((attr_type, len(value) + 2)) + value


def attr_text(attr_type: int, value: str) -> bytes:
    return attr(attr_type, value.encode())


def attr_int(attr_type: int, value: int) -> bytes:
    return bytes((attr_type, 6)) + _U32.pack(value & 0xFFFFFFFF)


def attr_ipv4(attr_type: int, value: str) -> bytes:
    import ipaddress

    return attr(attr_type, ipaddress.IPv4Address(value).packed)


def attr_tagged_int(attr_type: int, tag: int, value: int) -> bytes:
    """RFC 2868 §3: the tag replaces the first octet of the 4-octet integer."""
    return bytes((attr_type, 6, tag)) + _U32.pack(value)[1:]


def attr_tagged_text(attr_type: int, tag: int, value: str) -> bytes:
    """RFC 2868 §3: a tag octet before the string; tag 0 is omitted unless the string's first
    octet could be read as a tag (<= 0x1F)."""
    raw = value.encode()
    if tag or (raw and raw[0] <= 0x1F):
        raw = bytes((tag,)) + raw
    return attr(attr_type, raw)


def vsa(vendor_id: int, vendor_type: int, value: bytes) -> bytes:
    """Vendor-Specific (26) with one RFC 2865 §5.26 sub-attribute."""
    inner = bytes((vendor_type, len(value) + 2)) + value
    return attr(VENDOR_SPECIFIC, _U32.pack(vendor_id) + inner)


def split_text(attr_type: int, value: str) -> bytes:
    """A long text (a Reply-Message) as several attributes of at most 253 octets each."""
    raw = value.encode()
    return b"".join(attr(attr_type, raw[i : i + 253]) for i in range(0, len(raw), 253)) or attr(
        attr_type, b""
    )


# --- PAP (RFC 2865 §5.2) --------------------------------------------------------------------


def decrypt_user_password(ciphertext: bytes, secret: bytes, request_auth: bytes) -> bytes:
    """The clear User-Password, trailing NUL padding removed. Raises `PacketError` when the
    ciphertext is not a positive multiple of 16 octets (at most 128)."""
    if not ciphertext or len(ciphertext) % 16 or len(ciphertext) > 128:
        raise PacketError("bad_attribute", "User-Password is not a multiple of 16 octets")
    out = bytearray()
    previous = request_auth
    for i in range(0, len(ciphertext), 16):
        block = ciphertext[i : i + 16]
        key = hashlib.md5(secret + previous).digest()  # noqa: S324 - RFC 2865 §5.2
        out += bytes(a ^ b for a, b in zip(block, key, strict=True))
        previous = block
    return bytes(out).rstrip(b"\x00")


def encrypt_user_password(password: bytes, secret: bytes, request_auth: bytes) -> bytes:
    """The RFC 2865 §5.2 hiding of a password (for tests and the benchmark's client)."""
    padded = password + b"\x00" * (-len(password) % 16 or (16 if not password else 0))
    out = bytearray()
    previous = request_auth
    for i in range(0, len(padded), 16):
        key = hashlib.md5(secret + previous).digest()  # noqa: S324 - RFC 2865 §5.2
        block = bytes(a ^ b for a, b in zip(padded[i : i + 16], key, strict=True))
        out += block
        previous = block
    return bytes(out)


# --- dictionary -----------------------------------------------------------------------------


@cache
def load_dictionary() -> Dictionary:
    """pyrad's Dictionary with the RFC attributes and our vendor dictionaries
    (Cisco, Airespace, Aruba, Ruckus) shipped in `radius/dictionaries/`."""
    from pyrad.dictionary import Dictionary

    return Dictionary(str(DICTIONARY_PATH))
