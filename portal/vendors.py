"""Controller redirect parameters, one adapter per vendor.

What they give is a claim: the portal checks the MAC against the accounting session for the
client's IP (see `service.clients.client_for_ip`) and never trusts it alone.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlencode, urlparse

from service.mac import try_normalize_mac


@dataclass(frozen=True)
class RedirectInfo:
    vendor: str
    mac: str | None = None
    ap: str | None = None
    ssid: str | None = None
    continue_url: str | None = None
    grant_url: str | None = None  # Meraki/Cisco/openNDS: where to send the client once done
    raw_mac: str | None = None


def safe_url(value: str | None) -> str | None:
    """Only plain http(s) URLs are echoed back (no javascript: or data: links)."""
    if not value:
        return None
    parsed = urlparse(value)
    if parsed.scheme in ("http", "https") and parsed.netloc and len(value) <= 2048:
        return value
    return None


def _mac(value: str | None) -> tuple[str | None, str | None]:
    return (try_normalize_mac(value) if value else None), value


def unifi(q: Mapping[str, str]) -> RedirectInfo:
    mac, raw = _mac(q.get("id"))
    return RedirectInfo("unifi", mac, q.get("ap"), q.get("ssid"), safe_url(q.get("url")), None, raw)


def meraki(q: Mapping[str, str]) -> RedirectInfo:
    mac, raw = _mac(q.get("client_mac"))
    return RedirectInfo(
        "meraki",
        mac,
        q.get("node_mac") or q.get("ap_mac"),
        q.get("ssid"),
        safe_url(q.get("user_continue_url") or q.get("continue_url")),
        safe_url(q.get("base_grant_url")),
        raw,
    )


def cisco(q: Mapping[str, str]) -> RedirectInfo:
    mac, raw = _mac(q.get("client_mac"))
    return RedirectInfo(
        "cisco",
        mac,
        q.get("ap_mac"),
        q.get("wlan"),
        safe_url(q.get("redirect") or q.get("redirect_url")),
        safe_url(q.get("switch_url")),
        raw,
    )


def aruba(q: Mapping[str, str]) -> RedirectInfo:
    mac, raw = _mac(q.get("mac"))
    return RedirectInfo(
        "aruba", mac, q.get("apname"), q.get("essid"), safe_url(q.get("url")), None, raw
    )


def ruckus(q: Mapping[str, str]) -> RedirectInfo:
    mac, raw = _mac(q.get("client_mac"))
    return RedirectInfo(
        "ruckus",
        mac,
        q.get("mac"),  # Ruckus sends the AP's MAC as `mac`
        q.get("ssid"),
        safe_url(q.get("url")),
        None,
        raw,
    )


def opennds(q: Mapping[str, str]) -> RedirectInfo:
    mac, raw = _mac(q.get("clientmac"))
    grant = None
    gateway = q.get("gatewayaddress")
    if gateway and q.get("tok"):
        grant = safe_url(
            f"http://{gateway}/opennds_auth/?"
            + urlencode({"tok": q["tok"], "redir": q.get("redir", "")})
        )
    return RedirectInfo(
        "opennds", mac, q.get("gatewayname"), None, safe_url(q.get("redir")), grant, raw
    )


# Order matters: the most specific parameter sets first.
ADAPTERS: tuple[
    tuple[Callable[[Mapping[str, str]], bool], Callable[[Mapping[str, str]], RedirectInfo]], ...
] = (
    (lambda q: "base_grant_url" in q, meraki),
    (lambda q: "switch_url" in q or ("client_mac" in q and "wlan" in q), cisco),
    (lambda q: "clientmac" in q, opennds),
    (lambda q: "client_mac" in q and ("sip" in q or "nbiIP" in q or "uip" in q), ruckus),
    (lambda q: "essid" in q or "apname" in q or "switchip" in q, aruba),
    (lambda q: "id" in q and "ap" in q, unifi),
    (lambda q: "client_mac" in q, meraki),
    (lambda q: "mac" in q, aruba),
)


def parse_redirect(query: Mapping[str, str]) -> RedirectInfo:
    """The vendor's parameters, or an empty claim when none are present."""
    for matches, adapter in ADAPTERS:
        if matches(query):
            return adapter(query)
    return RedirectInfo("none", continue_url=safe_url(query.get("url")))
