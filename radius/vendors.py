"""Per-vendor profiles: what a NAS of each `NasVendor` gets in an Access-Accept, how it spells
MAC addresses in Calling-Station-Id, and how it takes a Change of Authorization.

Every Accept carries the RFC 3580 VLAN attributes (Tunnel-Type=VLAN, Tunnel-Medium-Type=IEEE-802,
Tunnel-Private-Group-Id=<vlan>, tag 0) and Session-Timeout; the vendor adds a name for the
access level, which the controller maps to its own role/policy/interface of that name:

- generic: Filter-Id = the access level (`full`, `segregated`, `internet`, `registration`).
- aruba: Aruba-User-Role (VSA 14823/1) = the access level; define user roles of those names.
- cisco (WLC): Airespace-Interface-Name (VSA 14179/5) = the access level, so name the dynamic
  interfaces `full`, `internet`...; the VLAN attributes also work for IOS switches (MAB).
- meraki: Filter-Id = the access level, read by Meraki as the group-policy name when the SSID's
  "RADIUS attribute specifying group policy name" is Filter-Id; VLAN tagging from the tunnel
  attributes when "RADIUS override" is on.
- ruckus: Ruckus-User-Groups (VSA 25053/1) = the access level, matched to a user role of that
  group name; the tunnel attributes give the VLAN (dynamic VLAN on the WLAN).
- unifi: only the RFC 3580 attributes (UniFi's "RADIUS assigned VLAN").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from radius import codec
from service.enums import Access, NasVendor

VENDOR_CISCO = 9
VENDOR_AIRESPACE = 14179
VENDOR_ARUBA = 14823
VENDOR_RUCKUS = 25053

AIRESPACE_INTERFACE_NAME = 5
ARUBA_USER_ROLE = 1
RUCKUS_USER_GROUPS = 1
CISCO_AVPAIR = 1


class CoaStyle(StrEnum):
    """How a NAS applies a changed decision (RFC 5176)."""

    DISCONNECT = "disconnect"  # Disconnect-Request; the device re-joins and is asked again
    REAUTHENTICATE = "reauthenticate"  # CoA-Request asking the NAS to re-authenticate now


class ExtraAttribute(StrEnum):
    """The per-vendor attribute carrying the access level's name."""

    NONE = "none"
    FILTER_ID = "Filter-Id"
    ARUBA_USER_ROLE = "Aruba-User-Role"
    AIRESPACE_INTERFACE_NAME = "Airespace-Interface-Name"
    RUCKUS_USER_GROUPS = "Ruckus-User-Groups"


@dataclass(frozen=True, slots=True)
class VendorProfile:
    vendor: NasVendor
    mac_style: str  # a `service.mac.format_mac` style for Calling-Station-Id / User-Name
    coa_style: CoaStyle
    extra: ExtraAttribute
    # Attributes a CoA-Request needs to ask for re-authentication (pyrad names -> values).
    reauthenticate_attributes: tuple[tuple[str, str], ...] = ()
    _cache: dict[tuple[Access, int | None], bytes] = field(
        default_factory=dict, compare=False, repr=False
    )

    def accept_attributes(self, access: Access, vlan: int | None) -> bytes:
        """The encoded attributes of an Accept for this level and VLAN (without
        Message-Authenticator and Session-Timeout, which vary per packet). Cached."""
        key = (access, vlan)
        cached = self._cache.get(key)
        if cached is None:
            cached = self._cache[key] = self._build(access, vlan)
        return cached

    def _build(self, access: Access, vlan: int | None) -> bytes:
        parts: list[bytes] = []
        if vlan is not None:
            parts.append(codec.attr_tagged_int(codec.TUNNEL_TYPE, 0, codec.TUNNEL_TYPE_VLAN))
            parts.append(
                codec.attr_tagged_int(codec.TUNNEL_MEDIUM_TYPE, 0, codec.TUNNEL_MEDIUM_IEEE_802)
            )
            parts.append(codec.attr_tagged_text(codec.TUNNEL_PRIVATE_GROUP_ID, 0, str(vlan)))
        name = access.value.encode()
        extra = self.extra
        if extra is ExtraAttribute.FILTER_ID:
            parts.append(codec.attr(codec.FILTER_ID, name))
        elif extra is ExtraAttribute.ARUBA_USER_ROLE:
            parts.append(codec.vsa(VENDOR_ARUBA, ARUBA_USER_ROLE, name))
        elif extra is ExtraAttribute.AIRESPACE_INTERFACE_NAME:
            parts.append(codec.vsa(VENDOR_AIRESPACE, AIRESPACE_INTERFACE_NAME, name))
        elif extra is ExtraAttribute.RUCKUS_USER_GROUPS:
            parts.append(codec.vsa(VENDOR_RUCKUS, RUCKUS_USER_GROUPS, name))
        return b"".join(parts)


PROFILES: dict[NasVendor, VendorProfile] = {
    NasVendor.GENERIC: VendorProfile(
        NasVendor.GENERIC, "hyphen-upper", CoaStyle.DISCONNECT, ExtraAttribute.FILTER_ID
    ),
    NasVendor.CISCO: VendorProfile(
        NasVendor.CISCO,
        "colon",
        CoaStyle.REAUTHENTICATE,
        ExtraAttribute.AIRESPACE_INTERFACE_NAME,
        (("Cisco-AVPair", "subscriber:command=reauthenticate"),),
    ),
    NasVendor.ARUBA: VendorProfile(
        NasVendor.ARUBA, "bare", CoaStyle.DISCONNECT, ExtraAttribute.ARUBA_USER_ROLE
    ),
    NasVendor.UNIFI: VendorProfile(
        NasVendor.UNIFI, "hyphen-upper", CoaStyle.DISCONNECT, ExtraAttribute.NONE
    ),
    NasVendor.MERAKI: VendorProfile(
        NasVendor.MERAKI, "hyphen-upper", CoaStyle.DISCONNECT, ExtraAttribute.FILTER_ID
    ),
    NasVendor.RUCKUS: VendorProfile(
        NasVendor.RUCKUS, "hyphen-upper", CoaStyle.DISCONNECT, ExtraAttribute.RUCKUS_USER_GROUPS
    ),
}


def profile_for(vendor: NasVendor | str) -> VendorProfile:
    """The profile of a vendor; unknown names fall back to generic."""
    try:
        return PROFILES[NasVendor(vendor)]
    except ValueError:
        return PROFILES[NasVendor.GENERIC]
