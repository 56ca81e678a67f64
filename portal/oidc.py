"""Staff sign-in with an OpenID Connect provider (Google Workspace, Microsoft Entra).

The authorization code flow with PKCE (S256), `state` and `nonce`, and no cookies: everything the
callback needs travels in `state`, a short-lived value HMAC-signed by the portal's `Signer` and
bound to the device's MAC. The PKCE verifier is not in it: it is derived from the state's nonce
with the portal's secret (`Signer.derive`), so it never reaches the browser or the provider's
redirect, and a stolen `code` cannot be redeemed by whoever watches the redirect.

The ID token comes straight from the token endpoint; it is still checked in full: signature
against the provider's JWKS (asymmetric algorithms only), issuer, audience, `azp`, expiry and the
nonce. The person is the schoolgate person with the token's verified `email`, who must be
active staff (`service.signin.staff_by_email`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import secrets
import threading
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlencode, urlparse

import httpx
import jwt

from portal.tokens import Signer
from service.config import Settings
from service.db import Session
from service.errors import Invalid, SchoolgateError
from service.signin import SignInRefused, StaffMember, staff_by_email

STATE_MAX_AGE = 600  # seconds from "Sign in with ..." to the callback
DISCOVERY_TTL = 3600.0
JWKS_REFETCH_AFTER = 60.0  # an unknown `kid` refetches the keys at most this often
HTTP_TIMEOUT = 10.0
LEEWAY = 60  # seconds of clock skew allowed on exp/iat
# Asymmetric only: never "none", never HS* (the client secret must not be a signing key here).
ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
KNOWN_NAMES = {"accounts.google.com": "Google", "login.microsoftonline.com": "Microsoft"}
# Google documents both spellings of its `iss` in ID tokens.
ISSUER_ALIASES = {
    "https://accounts.google.com": ["https://accounts.google.com", "accounts.google.com"]
}


__all__ = ["OidcSignIn", "ProviderUnavailable", "SignInRefused"]


class ProviderUnavailable(SchoolgateError):
    """The provider did not answer, or answered with something that is not OIDC."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _is_loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_url(url: str, what: str) -> str:
    """HTTPS only (plain HTTP to a loopback provider is allowed, for tests and development)."""
    parts = urlparse(url)
    if parts.scheme == "https" or (parts.scheme == "http" and _is_loopback(parts.hostname)):
        return url
    raise Invalid(f"the OIDC {what} must be an https:// URL, not {url!r}")


def _truthy(value: object) -> bool | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value.strip().lower() == "true"
    return value is True


class OidcSignIn:
    """One configured provider: builds the authorization URL and finishes the callback."""

    def __init__(
        self,
        *,
        issuer: str,
        client_id: str,
        redirect_uri: str,
        signer: Signer,
        client_secret: str | None = None,
        scopes: str = "openid email profile",
        allowed_domains: list[str] | None = None,
        name: str | None = None,
        http: httpx.Client | None = None,
    ) -> None:
        self.issuer = _check_url(issuer.rstrip("/"), "issuer")
        self.client_id = client_id
        self.client_secret = client_secret
        self.redirect_uri = redirect_uri
        scope_list = scopes.split()
        self.scopes = " ".join(scope_list if "openid" in scope_list else ["openid", *scope_list])
        self.allowed_domains = sorted(
            {d.strip().lower().lstrip("@") for d in allowed_domains or [] if d.strip()}
        )
        host = urlparse(self.issuer).hostname or self.issuer
        self.name = name or KNOWN_NAMES.get(host, host)
        self.signer = signer
        self._http = http or httpx.Client(timeout=HTTP_TIMEOUT, follow_redirects=False)
        self._lock = threading.Lock()
        self._meta: dict[str, Any] | None = None
        self._meta_at = 0.0
        self._jwks: dict[str, Any] | None = None
        self._jwks_at = 0.0

    @classmethod
    def from_settings(
        cls, settings: Settings, signer: Signer, redirect_uri: str
    ) -> OidcSignIn | None:
        """None unless both the issuer and the client id are set."""
        if not settings.portal_oidc_issuer or not settings.portal_oidc_client_id:
            return None
        secret = settings.portal_oidc_client_secret
        return cls(
            issuer=settings.portal_oidc_issuer,
            client_id=settings.portal_oidc_client_id,
            client_secret=secret.get_secret_value() if secret else None,
            scopes=settings.portal_oidc_scopes,
            allowed_domains=settings.portal_oidc_allowed_domains,
            name=settings.portal_oidc_name,
            redirect_uri=redirect_uri,
            signer=signer,
        )

    # ------------------------------------------------------------ provider documents
    def _get_json(self, url: str, what: str) -> dict[str, Any]:
        try:
            response = self._http.get(url, headers={"Accept": "application/json"})
        except httpx.HTTPError as exc:
            raise ProviderUnavailable(f"{what} {url}: {exc.__class__.__name__}: {exc}") from exc
        if response.status_code != 200:
            raise ProviderUnavailable(f"{what} {url}: HTTP {response.status_code}")
        try:
            data = response.json()
        except ValueError as exc:
            raise ProviderUnavailable(f"{what} {url}: not JSON") from exc
        if not isinstance(data, dict):
            raise ProviderUnavailable(f"{what} {url}: not a JSON object")
        return data

    def metadata(self) -> dict[str, Any]:
        """The discovery document, cached for an hour and checked against the issuer."""
        with self._lock:
            if self._meta is not None and time.monotonic() - self._meta_at < DISCOVERY_TTL:
                return self._meta
        url = f"{self.issuer}/.well-known/openid-configuration"
        meta = self._get_json(url, "discovery")
        if str(meta.get("issuer", "")).rstrip("/") != self.issuer:
            raise ProviderUnavailable(
                f"discovery {url}: issuer is {meta.get('issuer')!r}, not {self.issuer!r}"
            )
        for key in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            value = meta.get(key)
            if not isinstance(value, str):
                raise ProviderUnavailable(f"discovery {url}: no {key}")
            try:
                _check_url(value, key)
            except Invalid as exc:
                raise ProviderUnavailable(f"discovery {url}: {exc}") from exc
        with self._lock:
            self._meta, self._meta_at = meta, time.monotonic()
        return meta

    def _keys(self, *, refresh: bool = False) -> dict[str, Any]:
        with self._lock:
            fresh = time.monotonic() - self._jwks_at < JWKS_REFETCH_AFTER
            if self._jwks is not None and (not refresh or fresh):
                return self._jwks
        jwks = self._get_json(str(self.metadata()["jwks_uri"]), "JWKS")
        if not isinstance(jwks.get("keys"), list):
            raise ProviderUnavailable("JWKS: no keys")
        with self._lock:
            self._jwks, self._jwks_at = jwks, time.monotonic()
        return jwks

    # ------------------------------------------------------------ the flow
    def _verifier(self, nonce: str) -> str:
        return self.signer.derive("oidc-pkce", nonce)

    def start(self, mac: str) -> str:
        """The provider's authorization URL for this device (302 there)."""
        meta = self.metadata()
        nonce = secrets.token_urlsafe(24)
        state = self.signer.sign({"p": "oidc", "m": mac, "n": nonce, "iat": int(time.time())})
        challenge = _b64(hashlib.sha256(self._verifier(nonce).encode("ascii")).digest())
        params = {
            "response_type": "code",
            "client_id": self.client_id,
            "redirect_uri": self.redirect_uri,
            "scope": self.scopes,
            "state": state,
            "nonce": nonce,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
        if len(self.allowed_domains) == 1 and self.name == "Google":
            params["hd"] = self.allowed_domains[0]  # a hint for Google's account chooser only
        endpoint = str(meta["authorization_endpoint"])
        return endpoint + ("&" if "?" in endpoint else "?") + urlencode(params)

    def finish(self, params: Mapping[str, str], mac: str) -> dict[str, Any]:
        """The callback's query: the ID token's verified claims, or SignInRefused."""
        again = "please start the sign-in again"
        try:
            state = self.signer.verify(params.get("state") or "", max_age=STATE_MAX_AGE)
        except Invalid as exc:
            raise SignInRefused(
                f"this sign-in link is not valid or has expired: {again}", f"state: {exc}"
            ) from exc
        nonce = state.get("n")
        if state.get("p") != "oidc" or not isinstance(nonce, str):
            raise SignInRefused(f"this sign-in link is not valid: {again}", "state: wrong purpose")
        if state.get("m") != mac:
            raise SignInRefused(
                f"this sign-in was started on another device: {again} on this one",
                f"state was issued to {state.get('m')}, callback from {mac}",
            )
        if params.get("error"):
            detail = f"{params['error']}: {params.get('error_description', '')}".strip(": ")
            raise SignInRefused(
                f"{self.name} did not sign you in ({params['error']}): you can try again",
                f"provider error {detail}",
            )
        meta = self.metadata()
        iss = params.get("iss")
        if iss is not None and iss.rstrip("/") != self.issuer:  # RFC 9207: mix-up defence
            raise SignInRefused(
                f"the answer came from the wrong sign-in provider: {again}",
                f"callback iss {iss!r} is not {self.issuer!r}",
            )
        code = params.get("code")
        if not code:
            raise SignInRefused(f"the sign-in answer has no code: {again}", "callback: no code")
        token = self.exchange(code, self._verifier(nonce), meta)
        return self.verify_id_token(token, nonce)

    def exchange(self, code: str, verifier: str, meta: Mapping[str, Any] | None = None) -> str:
        """Redeem the code at the token endpoint; the raw ID token."""
        meta = meta or self.metadata()
        data = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": self.redirect_uri,
            "code_verifier": verifier,
        }
        headers = {"Accept": "application/json"}
        methods = meta.get("token_endpoint_auth_methods_supported") or ["client_secret_basic"]
        if self.client_secret is None:
            data["client_id"] = self.client_id
        elif "client_secret_basic" in methods:
            # RFC 6749 2.3.1: form-encode both before Basic.
            pair = f"{quote(self.client_id, safe='')}:{quote(self.client_secret, safe='')}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
        else:
            data["client_id"] = self.client_id
            data["client_secret"] = self.client_secret
        url = str(meta["token_endpoint"])
        try:
            response = self._http.post(url, data=data, headers=headers)
        except httpx.HTTPError as exc:
            raise ProviderUnavailable(f"token {url}: {exc.__class__.__name__}: {exc}") from exc
        if response.status_code >= 500:
            raise ProviderUnavailable(f"token {url}: HTTP {response.status_code}")
        try:
            body = response.json()
        except ValueError:
            body = {}
        if not isinstance(body, dict):
            body = {}
        if response.status_code != 200:
            error = f"{body.get('error', '')} {body.get('error_description', '')}".strip()
            raise SignInRefused(
                "the sign-in could not be completed: please start it again",
                f"token endpoint HTTP {response.status_code}: {error or response.text[:200]}",
            )
        id_token = body.get("id_token")
        if not isinstance(id_token, str):
            raise SignInRefused(
                "the sign-in could not be completed: please start it again",
                "token endpoint: no id_token in the answer",
            )
        return id_token

    def verify_id_token(self, token: str, nonce: str) -> dict[str, Any]:
        """Signature (JWKS), iss, aud, azp, exp, iat and nonce; the claims."""
        refused = f"the {self.name} sign-in could not be verified: please start it again"
        meta = self.metadata()
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise SignInRefused(refused, f"ID token: {exc}") from exc
        alg = header.get("alg")
        offered = meta.get("id_token_signing_alg_values_supported") or ["RS256"]
        if alg not in ALGORITHMS or alg not in offered:
            raise SignInRefused(refused, f"ID token: algorithm {alg!r} is not accepted")
        key = self._key_for(header.get("kid"), str(alg))
        if key is None:
            raise SignInRefused(refused, f"ID token: no signing key {header.get('kid')!r}")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[str(alg)],
                audience=self.client_id,
                issuer=ISSUER_ALIASES.get(str(meta["issuer"]), [str(meta["issuer"])]),
                leeway=LEEWAY,
                options={"require": ["iss", "aud", "exp", "iat", "sub"]},
            )
        except jwt.PyJWTError as exc:
            raise SignInRefused(refused, f"ID token: {exc}") from exc
        aud = claims["aud"]
        azp = claims.get("azp")
        if (isinstance(aud, list) and len(aud) > 1 and azp is None) or (
            azp is not None and azp != self.client_id
        ):
            raise SignInRefused(refused, f"ID token: azp {azp!r} is not {self.client_id!r}")
        if not hmac.compare_digest(str(claims.get("nonce", "")), nonce):
            raise SignInRefused(refused, "ID token: nonce does not match the state")
        return claims

    def _key_for(self, kid: object, alg: str) -> Any:
        for refresh in (False, True):
            keys = [
                k
                for k in self._keys(refresh=refresh)["keys"]
                if isinstance(k, dict)
                and k.get("use", "sig") == "sig"
                and k.get("alg", alg) == alg
                and (kid is None or k.get("kid") == kid)
            ]
            if kid is None and len(keys) > 1:
                return None  # no kid and a choice of keys: refuse rather than guess
            if keys:
                try:
                    return jwt.PyJWK(keys[0], algorithm=alg).key
                except jwt.PyJWTError:
                    return None
        return None

    # ------------------------------------------------------------ who is it
    def person_for(self, session: Session, claims: Mapping[str, Any]) -> StaffMember:
        """The active staff member with the token's verified email."""
        email = str(claims.get("email") or "").strip().lower()
        if "@" not in email:
            raise SignInRefused(
                f"{self.name} did not tell us your email address: ask the IT office",
                f"no email claim (sub {claims.get('sub')!r})",
            )
        verified = _truthy(claims.get("email_verified", claims.get("xms_edov")))
        domain = email.rsplit("@", 1)[1]
        if self.allowed_domains and domain not in self.allowed_domains:
            raise SignInRefused(
                f"sign in with your school account ({', '.join(self.allowed_domains)}): "
                f"{email} is not one",
                f"{email}: domain not allowed",
            )
        # No email_verified claim at all (Entra): trusted only for the school's own domains,
        # which the tenant-specific issuer vouches for.
        if verified is False or (verified is None and not self.allowed_domains):
            raise SignInRefused(
                f"{self.name} has not verified the email address {email}: ask the IT office",
                f"{email}: email not verified",
            )
        return staff_by_email(session=session, email=email)
