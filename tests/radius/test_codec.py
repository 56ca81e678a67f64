"""The wire codec against pyrad (an independent implementation) and the RFC test vectors."""

from __future__ import annotations

import pytest
from pyrad.packet import AcctPacket, AuthPacket, Packet

from radius import codec, vendors
from service.enums import Access, NasVendor

SECRET = b"xyzzy5461"


def test_rfc2865_pap_example():
    # RFC 2865 §7.1: user "nemo", password "arctangent", secret "xyzzy5461".
    authenticator = bytes.fromhex("0f403f9473978057bd83d5cb98f4227a")
    hidden = bytes.fromhex("0d be 70 8d 93 d4 13 ce 31 96 e4 3f 78 2a 0a ee".replace(" ", ""))
    assert codec.encrypt_user_password(b"arctangent", SECRET, authenticator) == hidden
    assert codec.decrypt_user_password(hidden, SECRET, authenticator) == b"arctangent"


def test_pyrad_access_request_decodes_and_verifies():
    dictionary = codec.load_dictionary()
    request = AuthPacket(code=1, id=200, secret=SECRET, dict=dictionary, message_authenticator=True)
    request["User-Name"] = "jsmith"
    request["User-Password"] = request.PwCrypt("a long password, longer than sixteen")
    request["Calling-Station-Id"] = "02-00-00-00-10-01"
    request["Proxy-State"] = b"proxy-1"
    raw = request.RequestPacket()
    packet = codec.decode(raw)
    assert (packet.code, packet.identifier) == (codec.ACCESS_REQUEST, 200)
    assert packet.text(codec.USER_NAME) == "jsmith"
    assert packet.proxy_states == [b"proxy-1"]
    assert codec.verify_message_authenticator(packet, SECRET)
    assert not codec.verify_message_authenticator(packet, b"other")
    assert (
        codec.decrypt_user_password(packet.attrs[codec.USER_PASSWORD], SECRET, packet.authenticator)
        == b"a long password, longer than sixteen"
    )


@pytest.mark.parametrize("vendor", list(NasVendor))
def test_replies_verify_in_pyrad_with_message_authenticator_first(vendor):
    dictionary = codec.load_dictionary()
    request = AuthPacket(code=1, id=9, secret=SECRET, dict=dictionary, message_authenticator=True)
    request["User-Name"] = "020000001001"
    request.RequestPacket()  # sets the Request Authenticator the reply is signed over
    body = vendors.profile_for(vendor).accept_attributes(Access.SEGREGATED, 20)
    body += codec.attr_int(codec.SESSION_TIMEOUT, 3600)
    raw = codec.encode_reply(codec.ACCESS_ACCEPT, 9, request.authenticator, body, SECRET)
    reply = Packet(packet=raw, secret=SECRET, dict=dictionary)
    assert request.VerifyReply(reply, raw, enforce_ma=True)
    assert raw[20] == codec.MESSAGE_AUTHENTICATOR
    assert reply["Tunnel-Private-Group-Id"] == ["20"]
    assert reply["Tunnel-Type"] == ["VLAN"]
    assert reply["Session-Timeout"] == [3600]
    extra = vendors.PROFILES[vendor].extra
    if extra is not vendors.ExtraAttribute.NONE:
        assert reply[extra.value] == ["segregated"]
    assert codec.decode(raw).ma_offset == 20


def test_accounting_request_authenticators_match_pyrad():
    dictionary = codec.load_dictionary()
    raw = codec.encode_request(
        codec.ACCOUNTING_REQUEST,
        3,
        codec.attr_int(codec.ACCT_STATUS_TYPE, 1) + codec.attr_text(codec.ACCT_SESSION_ID, "s"),
        SECRET,
    )
    packet = AcctPacket(packet=raw, secret=SECRET, dict=dictionary)
    assert packet.VerifyAcctRequest()
    assert packet.verify_message_authenticator()
    ours = codec.decode(raw)
    assert codec.verify_request_authenticator(ours, SECRET)
    assert codec.verify_message_authenticator(ours, SECRET, codec.ZERO_AUTH)
    tampered = raw[:-1] + bytes([raw[-1] ^ 1])
    assert not codec.verify_request_authenticator(codec.decode(tampered), SECRET)

    # The Accounting-Response's Message-Authenticator is keyed over zero octets (as pyrad
    # and FreeRADIUS check it).
    reply_raw = codec.encode_reply(
        codec.ACCOUNTING_RESPONSE,
        3,
        ours.authenticator,
        b"",
        SECRET,
        hmac_authenticator=codec.ZERO_AUTH,
    )
    request = AcctPacket(packet=raw, secret=SECRET, dict=dictionary)
    reply = Packet(packet=reply_raw, secret=SECRET, dict=dictionary)
    assert request.VerifyReply(reply, reply_raw)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "too_short"),
        (b"\x01\x01\x00\x14" + bytes(15), "too_short"),
        (b"\x01\x01\x00\x13" + bytes(16), "bad_length"),
        (b"\x01\x01\x10\x01" + bytes(16), "bad_length"),
        (b"\x01\x01\x00\x30" + bytes(16), "truncated"),
        (b"\x01\x01\x00\x17" + bytes(16) + b"\x01\x01\x00", "bad_attribute"),
        (b"\x01\x01\x00\x16" + bytes(16) + b"\x01\x00", "bad_attribute"),
        (b"\x01\x01\x00\x17" + bytes(16) + b"\x01\x05\x00", "bad_attribute"),
        (b"\x01\x01\x00\x15" + bytes(16) + b"\x01", "bad_attribute"),
        (b"\x01\x01\x00\x18" + bytes(16) + b"\x50\x04\x00\x00", "bad_attribute"),
    ],
)
def test_malformed_packets_are_refused_with_a_reason(data, reason):
    with pytest.raises(codec.PacketError) as caught:
        codec.decode(data)
    assert caught.value.reason == reason


def test_octets_beyond_the_length_field_are_padding():
    raw = codec.encode_request(codec.ACCESS_REQUEST, 1, codec.attr_text(1, "x"), SECRET)
    packet = codec.decode(raw + b"\x00padding")
    assert packet.data == raw
    assert codec.verify_message_authenticator(packet, SECRET)


def test_long_reply_messages_are_split():
    text = "x" * 600
    encoded = codec.split_text(codec.REPLY_MESSAGE, text)
    raw = codec.encode_reply(codec.ACCESS_REJECT, 1, bytes(16), encoded, SECRET)
    values = [v for t, v in codec.iter_attributes(raw) if t == codec.REPLY_MESSAGE]
    assert [len(v) for v in values] == [253, 253, 94]
    assert b"".join(values).decode() == text


def test_tagged_text_keeps_a_tag_only_when_needed():
    assert codec.attr_tagged_text(81, 0, "10") == b"\x51\x04" + b"10"
    assert codec.attr_tagged_text(81, 0, "\x05x") == b"\x51\x05\x00\x05x"
    assert codec.attr_tagged_int(64, 0, 13) == b"\x40\x06\x00\x00\x00\x0d"
