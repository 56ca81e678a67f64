"""Fuzzing the decoder and the whole packet handler with hypothesis.

The handler runs in-process against a snapshot built in memory (the Westgate policy, one NAS
at 127.0.0.1, a device of each class) and no database: the writer is left out, which is what
`writer=None` is for. Whatever bytes arrive, the handler must neither raise nor answer
anything that is not a verified request from a known NAS.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from radius import codec
from radius.authorizer import Authorizer, PapJob
from radius.counters import Counters
from radius.snapshot import build_state
from service.enums import DeviceClass, DeviceStatus, NasVendor
from service.facts import NasInfo, Snapshot
from service.policy import DeviceFacts, load_policy_text

REPO = Path(__file__).resolve().parents[2]
SECRET = b"testing123"
NAS = ("127.0.0.1", 40000)


def make_authorizer() -> Authorizer:
    policy = load_policy_text(
        (REPO / "deploy" / "policies" / "westgate.toml").read_text(), "westgate.toml"
    )
    devices = {
        mac: DeviceFacts(
            mac=mac, device_class=cls, status=DeviceStatus.ACTIVE, site_code="westgate"
        )
        for mac, cls in (
            ("02:00:00:00:10:01", DeviceClass.SCHOOL_SINGLE),
            ("02:00:00:00:40:01", DeviceClass.LEARNER_OWNED),
        )
    }
    snapshot = Snapshot(
        version=1,
        devices=devices,
        policies={"westgate": policy},
        nas_clients=(
            NasInfo(
                id=1,
                site_code="westgate",
                name="fuzz-nas",
                network=ipaddress.ip_network("127.0.0.1/32"),
                secret=SECRET.decode(),
                vendor=NasVendor.GENERIC,
                coa_port=3799,
                require_message_authenticator=True,
            ),
        ),
    )
    return Authorizer(build_state(snapshot), counters=Counters(), writer=None)


AUTHORIZER = make_authorizer()

attribute = st.tuples(st.integers(0, 255), st.binary(max_size=40)).map(
    lambda t: bytes((t[0], len(t[1]) + 2)) + t[1]
)
header = st.tuples(
    st.sampled_from([1, 2, 3, 4, 5, 11, 12, 40, 43, 0, 255]),
    st.integers(0, 255),
    st.integers(0, 5000),
    st.binary(min_size=16, max_size=16),
)


@st.composite
def plausible_packets(draw: st.DrawFn) -> bytes:
    """Well-framed and broken packets: right or wrong length fields, good and bad attributes."""
    code, identifier, length, auth = draw(header)
    attrs = b"".join(draw(st.lists(attribute | st.binary(max_size=6), max_size=8)))
    if draw(st.booleans()):
        length = 20 + len(attrs)
    return bytes((code, identifier)) + (length & 0xFFFF).to_bytes(2, "big") + auth + attrs


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300) | plausible_packets())
@example(b"\x01\x00\x00\x14" + bytes(16))
@example(b"\x04\x00\x00\x16" + bytes(16) + b"\x50\x00")
def test_decoder_only_ever_raises_packet_error(data: bytes) -> None:
    reason = None
    try:
        packet = codec.decode(data)
    except codec.PacketError as exc:
        reason = exc.reason
    if reason is not None:
        assert reason in {"too_short", "bad_length", "truncated", "bad_attribute"}
        return
    assert 20 <= len(packet.data) <= 4096
    assert packet.data == data[: len(packet.data)]


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300) | plausible_packets())
def test_handler_never_raises_and_never_answers_garbage(data: bytes) -> None:
    assert AUTHORIZER.handle_auth(data, NAS) is None
    assert AUTHORIZER.handle_acct(data, NAS) is None


def valid_request(attrs: bytes) -> bytes:
    return codec.encode_request(codec.ACCESS_REQUEST, 1, attrs, SECRET)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(attribute, max_size=10),
    st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=4),
)
def test_mutated_valid_requests(attrs: list[bytes], flips: list[tuple[int, int]]) -> None:
    """Signed requests with arbitrary attributes get an answer or are dropped; flipping any
    byte of a signed request means it is dropped (the Message-Authenticator no longer fits)."""
    body = b"".join(attrs)[:3000]
    raw = valid_request(body)
    result = AUTHORIZER.handle_auth(raw, ("127.0.0.1", 40001))
    if isinstance(result, bytes):
        reply = codec.decode(result)
        request = codec.decode(raw)
        assert codec.verify_response_authenticator(reply, request.authenticator, SECRET)
        assert reply.ma_offset == 20
    else:
        assert result is None or isinstance(result, PapJob)
    mutated = bytearray(raw)
    changed = False
    for position, value in flips:
        if 20 <= position < len(mutated) and mutated[position] != value:
            mutated[position] = value
            changed = True
    if changed:
        out = AUTHORIZER.handle_auth(bytes(mutated), ("127.0.0.1", 40002))
        # With MA required, a modified request never gets a decision.
        assert out is None


def test_counters_name_every_drop() -> None:
    authorizer = make_authorizer()
    authorizer.handle_auth(b"\x01", NAS)
    authorizer.handle_auth(valid_request(b""), ("10.9.9.9", 1))
    authorizer.handle_auth(b"\x01\x01\x00\x30" + bytes(16), NAS)
    authorizer.handle_acct(codec.encode_request(codec.ACCESS_REQUEST, 1, b"", SECRET), NAS)
    assert dict(authorizer.counters.dropped) == {
        "too_short": 1,
        "unknown_client": 1,
        "truncated": 1,
        "unknown_code": 1,
    }
    assert authorizer.counters.received == 4
    assert authorizer.counters.answered == 0
