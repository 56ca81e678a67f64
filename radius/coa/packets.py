"""Building RFC 5176 Disconnect / CoA requests for one session, per NAS vendor profile."""

from __future__ import annotations

import ipaddress
import time

from radius import codec
from radius.vendors import VENDOR_CISCO, CoaStyle, profile_for
from service.enforcement import CoaTarget
from service.enums import CoaKind, NasVendor
from service.mac import format_mac

CISCO_AVPAIR = 1

REQUEST_CODES = {CoaKind.COA: codec.COA_REQUEST, CoaKind.DISCONNECT: codec.DISCONNECT_REQUEST}


def uses_coa_request(vendor: NasVendor | str) -> bool:
    """True when the vendor applies a changed decision by CoA-Request (re-authenticate)."""
    return profile_for(vendor).coa_style is CoaStyle.REAUTHENTICATE


def identity_attributes(target: CoaTarget) -> bytes:
    """Calling-Station-Id in the NAS's MAC format, User-Name, Acct-Session-Id, NAS-IP-Address
    and Event-Timestamp (RFC 5176 §3 session identification; §3.1 replay protection)."""
    profile = profile_for(target.vendor)
    parts: list[bytes] = []
    if target.username:
        parts.append(codec.attr_text(codec.USER_NAME, target.username))
    if target.mac:
        parts.append(
            codec.attr_text(codec.CALLING_STATION_ID, format_mac(target.mac, profile.mac_style))
        )
    if target.acct_session_id:
        parts.append(codec.attr_text(codec.ACCT_SESSION_ID, target.acct_session_id))
    if target.nas_ip:
        try:
            if ipaddress.ip_address(target.nas_ip).version == 4:
                parts.append(codec.attr_ipv4(codec.NAS_IP_ADDRESS, target.nas_ip))
        except ValueError:
            pass
    parts.append(codec.attr_int(codec.EVENT_TIMESTAMP, int(time.time())))
    return b"".join(parts)


def build(code: int, identifier: int, target: CoaTarget) -> bytes:
    """A complete signed request (Message-Authenticator first, then the MD5 authenticator)."""
    attributes = identity_attributes(target)
    if code == codec.COA_REQUEST and target.vendor is NasVendor.CISCO:
        attributes += codec.vsa(VENDOR_CISCO, CISCO_AVPAIR, b"subscriber:command=reauthenticate")
    return codec.encode_request(code, identifier, attributes, target.secret)


PACKET_NAMES = {
    codec.DISCONNECT_REQUEST: "Disconnect-Request",
    codec.DISCONNECT_ACK: "Disconnect-ACK",
    codec.DISCONNECT_NAK: "Disconnect-NAK",
    codec.COA_REQUEST: "CoA-Request",
    codec.COA_ACK: "CoA-ACK",
    codec.COA_NAK: "CoA-NAK",
}

ERROR_CAUSES = {
    201: "Residual-Session-Context-Removed",
    202: "Invalid-EAP-Packet",
    401: "Unsupported-Attribute",
    402: "Missing-Attribute",
    403: "NAS-Identification-Mismatch",
    404: "Invalid-Request",
    405: "Unsupported-Service",
    406: "Unsupported-Extension",
    407: "Invalid-Attribute-Value",
    501: "Administratively-Prohibited",
    502: "Request-Not-Routable",
    503: "Session-Context-Not-Found",
    504: "Session-Context-Not-Removable",
    505: "Other-Proxy-Processing-Error",
    506: "Resources-Unavailable",
    507: "Request-Initiated",
    508: "Multiple-Session-Selection-Unsupported",
}


def cause_text(cause: int) -> str:
    """An Error-Cause in words, e.g. "Error-Cause 503 Session-Context-Not-Found"."""
    return f"Error-Cause {cause} {ERROR_CAUSES.get(cause, 'unknown')}"
