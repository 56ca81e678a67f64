"""HMAC-signed form fields: CSRF tokens and the staff sign-in ticket.

Captive browsers drop cookies between visits, so nothing here relies on them. A token binds
its purpose, the device's MAC and the time it was issued; a token minted for one device is
refused for another, and one older than `max_age` is stale.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from typing import Any

from service.errors import Invalid

CSRF_MAX_AGE = 3600
TICKET_MAX_AGE = 1800


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Signer:
    def __init__(self, secret: str) -> None:
        self._key = hashlib.sha256(("schoolgate-portal:" + secret).encode()).digest()

    def _mac(self, payload: bytes) -> str:
        return _b64(hmac.new(self._key, payload, hashlib.sha256).digest())

    def sign(self, data: dict[str, Any]) -> str:
        payload = json.dumps(data, separators=(",", ":"), sort_keys=True).encode()
        return f"{_b64(payload)}.{self._mac(payload)}"

    def verify(self, token: str, *, max_age: int, now: float | None = None) -> dict[str, Any]:
        try:
            body, sig = token.split(".", 1)
            payload = _unb64(body)
        except (ValueError, TypeError) as exc:
            raise Invalid("the form's security token is malformed") from exc
        # Bytes, not str: compare_digest refuses a str with non-ASCII characters (TypeError,
        # once a 500); "replace" keeps lone surrogates from raising too.
        if not hmac.compare_digest(
            sig.encode("utf-8", "replace"), self._mac(payload).encode("ascii")
        ):
            raise Invalid("the form's security token is not valid")
        data: dict[str, Any] = json.loads(payload)
        issued = float(data.get("iat", 0))
        if (now if now is not None else time.time()) - issued > max_age:
            raise Invalid("the form has expired: please start again")
        return data

    def derive(self, purpose: str, value: str) -> str:
        """A secret only this server can compute from a public `value` (43 URL-safe characters):
        the OIDC PKCE verifier is derived from the `state`, so it never reaches the browser."""
        return self._mac(f"derive:{purpose}:{value}".encode())

    def csrf(self, purpose: str, mac: str, *, now: float | None = None) -> str:
        return self.sign(
            {
                "p": purpose,
                "m": mac,
                "iat": int(now if now is not None else time.time()),
                "n": secrets.token_hex(4),
            }
        )

    def check_csrf(self, token: str | None, purpose: str, mac: str) -> None:
        if not token:
            raise Invalid("the form's security token is missing: please reload the page")
        data = self.verify(token, max_age=CSRF_MAX_AGE)
        if data.get("p") != purpose or data.get("m") != mac:
            raise Invalid("this form was issued for another device or page: please start again")

    def ticket(self, person_id: int, mac: str) -> str:
        """A staff sign-in ticket; a fresh random session id each sign-in."""
        return self.sign(
            {
                "p": "staff",
                "u": person_id,
                "m": mac,
                "sid": secrets.token_urlsafe(16),
                "iat": int(time.time()),
            }
        )

    def check_ticket(self, token: str | None, mac: str) -> int:
        if not token:
            raise Invalid("please sign in first")
        data = self.verify(token, max_age=TICKET_MAX_AGE)
        if data.get("p") != "staff" or data.get("m") != mac:
            raise Invalid("this sign-in was for another device: please sign in again")
        return int(data["u"])
