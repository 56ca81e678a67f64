"""Staff sign-in with OpenID Connect against a REAL provider: panva's node-oidc-provider, installed
from the npm registry into a temp dir (never committed) and run with node on 127.0.0.1. The
provider serves two issuers that share one signing key (as the tenants of one Entra cloud do);
its development login form accepts any login, which becomes the account's email. The test drives
the provider's login and consent forms with httpx, and the portal with Starlette's TestClient."""

from __future__ import annotations

import base64
import json
import logging
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import SimpleNamespace
from urllib.parse import parse_qs, urljoin, urlparse

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from portal.app import create_app
from portal.oidc import OidcSignIn
from portal.tokens import Signer
from service import registry
from service.config import Settings, load_settings
from service.db import transaction
from service.enums import DeviceClass, DeviceStatus
from service.models import Device
from tests.helpers import free_tcp_port, wait_for_tcp
from tests.portal.conftest import NOW, PORTAL, Connect

OIDC_PROVIDER = "oidc-provider@8.8.1"  # ESM, Node 18/20
CALLBACK = PORTAL + "staff/oidc/callback"
CLIENT_ID, CLIENT_SECRET = "schoolgate-portal", "portal-client-secret"
OTHER_ID, OTHER_SECRET = "another-app", "another-app-secret"
STAFF_EMAIL = "jsmith@westgate.example"
PHONE = "6a:00:00:77:00:02"  # a private Wi-Fi address
OTHER_PHONE = "6a:00:00:77:00:03"

PROVIDER_JS = """\
import { generateKeyPairSync } from 'node:crypto';
import Provider from 'oidc-provider';

const config = JSON.parse(process.argv[2]);
const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const jwk = { ...privateKey.export({ format: 'jwk' }), kid: 'shared-1', use: 'sig', alg: 'RS256' };

for (const port of config.ports) {
  const provider = new Provider(`http://127.0.0.1:${port}`, {
    clients: config.clients,
    jwks: { keys: [jwk] },
    cookies: { keys: ['test-cookie-key'] },
    claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['name'] },
    conformIdTokenClaims: false, // the email in the ID token, as Google and Entra send it
    findAccount: async (ctx, id) => ({
      accountId: id,
      claims: async () => ({ sub: id, email: id, email_verified: true, name: id.split('@')[0] }),
    }),
    features: { devInteractions: { enabled: true } },
    pkce: { methods: ['S256'], required: () => true },
  });
  await new Promise((resolve) => { provider.listen(port, '127.0.0.1', resolve); });
  console.log(`ready ${port}`);
}
"""

Clients = Callable[[str], TestClient]


@dataclass(frozen=True)
class Idp:
    issuer: str  # the school's provider
    other_issuer: str  # another issuer whose tokens carry the same signing key


@pytest.fixture(scope="session")
def idp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Idp]:
    if shutil.which("npm") is None or shutil.which("node") is None:
        pytest.skip("npm and node are needed to run oidc-provider")
    where = tmp_path_factory.mktemp("oidc-provider")
    subprocess.run(
        [
            "npm",
            "install",
            "--silent",
            "--no-audit",
            "--no-fund",
            "--prefix",
            str(where),
            OIDC_PROVIDER,
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (where / "provider.mjs").write_text(PROVIDER_JS)
    ports = [free_tcp_port()]
    while len(ports) < 2:
        port = free_tcp_port()
        if port not in ports:
            ports.append(port)
    client = {"redirect_uris": [CALLBACK], "grant_types": ["authorization_code"]}
    config = {
        "ports": ports,
        "clients": [
            {**client, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET},
            {**client, "client_id": OTHER_ID, "client_secret": OTHER_SECRET},
        ],
    }
    log_path = where / "provider.log"
    with log_path.open("w") as log_file:
        proc = subprocess.Popen(
            ["node", str(where / "provider.mjs"), json.dumps(config)],
            cwd=where,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        for port in ports:
            try:
                wait_for_tcp(port, timeout=20)
            except TimeoutError:
                pytest.fail(f"oidc-provider did not start:\n{log_path.read_text()}")
        yield Idp(f"http://127.0.0.1:{ports[0]}", f"http://127.0.0.1:{ports[1]}")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def oidc_settings(westgate: SimpleNamespace, issuer: str, **over: object) -> Settings:
    values: dict[str, object] = {
        "database_url": westgate.db_url,
        "portal_url": PORTAL,
        "secret_key": "portal-test-secret",
        "portal_rate_limit_per_minute": 1000,
        "coa_enabled": False,
        "portal_oidc_issuer": issuer,
        "portal_oidc_client_id": CLIENT_ID,
        "portal_oidc_client_secret": CLIENT_SECRET,
        "portal_oidc_allowed_domains": ["westgate.example"],
        "portal_oidc_name": "Westgate IdP",
    }
    values.update(over)
    return load_settings(**values)


@pytest.fixture
def portal_app(
    westgate: SimpleNamespace, session_factory: sessionmaker[Session], idp: Idp
) -> FastAPI:
    """The portal with OIDC configured (overrides conftest's, so `client_at` uses it)."""
    return create_app(
        oidc_settings(westgate, idp.issuer), session_factory=session_factory, clock=lambda: NOW
    )


@pytest.fixture
def refusals(caplog: pytest.LogCaptureFixture) -> Callable[[], list[str]]:
    caplog.set_level(logging.INFO, logger="schoolgate.portal")
    return lambda: [
        r.getMessage() for r in caplog.records if "OIDC sign-in refused" in r.getMessage()
    ]


def at_provider(authorize_url: str, email: str, *, cancel: bool = False) -> str:
    """A person at the provider (a fresh browser session): sign in as `email` and consent.
    The provider's redirect back to the portal's callback (not followed)."""
    with httpx.Client(timeout=10) as browser:
        response = browser.get(authorize_url)
        for _ in range(10):
            if response.is_redirect:
                target = urljoin(str(response.url), response.headers["location"])
                if target.startswith(CALLBACK):
                    return target
                response = browser.get(target)
                continue
            assert response.status_code == 200, response.text
            page = response.text
            if cancel:
                abort = re.search(r'href="([^"]*/abort)"', page)
                assert abort, page
                response = browser.get(urljoin(str(response.url), abort.group(1)))
                continue
            action = re.search(r'<form[^>]*action="([^"]+)"', page)
            prompt = re.search(r'name="prompt" value="([^"]+)"', page)
            assert action, page
            assert prompt, page
            form = {"prompt": prompt.group(1)}
            if form["prompt"] == "login":
                form.update(login=email, password="anything")
            response = browser.post(urljoin(str(response.url), action.group(1)), data=form)
    raise AssertionError("the provider never redirected back to the portal")


def start(client: TestClient) -> str:
    response = client.get("/staff/oidc")
    assert response.status_code == 302, response.text
    return response.headers["location"]


def field(html: str, name: str) -> str:
    match = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert match, f"no {name} field in page"
    return match.group(1)


def state_payload(callback: str) -> dict[str, object]:
    state = parse_qs(urlparse(callback).query)["state"][0]
    body = state.split(".")[0]
    return dict(json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))))


class TokenSwap(httpx.BaseTransport):
    """The portal's real HTTP to the provider, except that the token endpoint's ID token can be
    swapped for another (real or forged) one: what a mix-up or a tampered path would deliver."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.replacement: str | None = None
        self.seen: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if request.url.path != "/token":
            return response
        response.read()
        body = json.loads(response.content)
        if "id_token" in body:
            self.seen.append(body["id_token"])
            if self.replacement is not None:
                body["id_token"] = self.replacement
        return httpx.Response(response.status_code, json=body)

    def close(self) -> None:
        self.inner.close()


def real_id_token(issuer: str, client_id: str, secret: str) -> str:
    """A genuine ID token from `issuer` for `client_id`, through the whole flow."""
    swap = TokenSwap()
    with httpx.Client(transport=swap, timeout=10) as http:
        rp = OidcSignIn(
            issuer=issuer,
            client_id=client_id,
            client_secret=secret,
            redirect_uri=CALLBACK,
            signer=Signer("another relying party"),
            http=http,
        )
        callback = at_provider(rp.start(PHONE), STAFF_EMAIL)
        params = {k: v[0] for k, v in parse_qs(urlparse(callback).query).items()}
        claims = rp.finish(params, PHONE)
    assert claims["aud"] == client_id
    assert claims["iss"] == issuer
    return swap.seen[-1]


# ---------------------------------------------------------------- the happy path
def test_staff_signs_in_with_oidc_and_registers_the_device_pending(
    client_at: Clients,
    connect: Connect,
    session_factory: sessionmaker[Session],
    idp: Idp,
    caplog: pytest.LogCaptureFixture,
    st_andrews: str,
) -> None:
    # At St Andrew's: Westgate refuses staff registration before any form (issue 12).
    caplog.set_level(logging.INFO, logger="schoolgate.portal")
    connect(PHONE, "10.99.0.40", site=st_andrews)
    client = client_at("10.99.0.40")
    page = client.get("/staff")
    assert page.status_code == 200
    assert '<a class="button" href="/staff/oidc">Sign in with Westgate IdP</a>' in page.text
    assert 'name="password"' in page.text  # local accounts still offered

    authorize = start(client)
    assert authorize.startswith(idp.issuer + "/auth?")
    query = parse_qs(urlparse(authorize).query)
    assert query["code_challenge_method"] == ["S256"]
    assert query["client_id"] == [CLIENT_ID]
    assert query["redirect_uri"] == [CALLBACK]
    # the email's case does not matter: Person.email is stored lower-case
    callback = at_provider(authorize, "JSmith@Westgate.example")
    # state carries the purpose, the device, the nonce and the time; never the PKCE verifier
    assert set(state_payload(callback)) == {"p", "m", "n", "iat"}
    assert state_payload(callback)["m"] == PHONE

    byod = client.get(callback)
    assert byod.status_code == 200, byod.text
    assert "Register your device, Jo Smith" in byod.text
    assert any("signed in with Westgate IdP" in r.getMessage() for r in caplog.records)
    r = client.post(
        "/staff/register",
        data={
            "ticket": field(byod.text, "ticket"),
            "csrf": field(byod.text, "csrf"),
            "device_name": "Jo's phone",
            "agree": "yes",
            "typed_name": "Jo Smith",
        },
    )
    assert r.status_code == 303
    assert "waiting for approval" in client.get("/done").text
    with session_factory() as session:
        device = session.scalar(select(Device).where(Device.mac == PHONE))
        assert device is not None
        assert device.status is DeviceStatus.PENDING
        assert device.device_class is DeviceClass.STAFF_OWNED
        assert device.owner is not None
        assert device.owner.username == "jsmith"

    # the provider's code is single-use: replaying the callback gets nowhere
    again = client.get(callback)
    assert again.status_code == 400
    assert "could not be completed" in again.text
    assert "Register your device" not in again.text


# ---------------------------------------------------------------- who may sign in
@pytest.mark.parametrize(
    ("email", "message"),
    [
        ("nobody@westgate.example", "no staff member with the email nobody@westgate.example"),
        ("pupil2@westgate.example", "only staff register their own devices here"),
        ("sam@visitor.example", "sign in with your school account (westgate.example)"),
    ],
    ids=["unknown", "not-staff", "other-domain"],
)
def test_only_active_staff_of_the_school_domain_get_in(
    client_at: Clients,
    connect: Connect,
    session_factory: sessionmaker[Session],
    refusals: Callable[[], list[str]],
    email: str,
    message: str,
) -> None:
    with transaction(session_factory) as session:
        registry.add_person(
            session,
            site_code="westgate",
            role="learner",
            name="Pupil Two",
            email="pupil2@westgate.example",
            actor="test",
        )
    connect(PHONE, "10.99.0.41")
    client = client_at("10.99.0.41")
    page = client.get(at_provider(start(client), email))
    assert page.status_code == 400
    assert message in page.text.replace("&#39;", "'")
    assert "Register your device" not in page.text
    assert "Sign in with Westgate IdP" in page.text  # back on the sign-in page, to try again
    assert len(refusals()) == 1
    assert email.lower() in refusals()[0]


def test_cancelling_at_the_provider_is_a_clear_page(
    client_at: Clients, connect: Connect, refusals: Callable[[], list[str]]
) -> None:
    connect(PHONE, "10.99.0.42")
    client = client_at("10.99.0.42")
    page = client.get(at_provider(start(client), STAFF_EMAIL, cancel=True))
    assert page.status_code == 400
    assert "Westgate IdP did not sign you in (access_denied)" in page.text
    assert "access_denied" in refusals()[0]


# ---------------------------------------------------------------- state
def test_tampered_or_foreign_state_is_refused(
    client_at: Clients, connect: Connect, refusals: Callable[[], list[str]], st_andrews: str
) -> None:
    # At St Andrew's: Westgate refuses staff registration before any form (issue 12).
    connect(PHONE, "10.99.0.43", site=st_andrews)
    connect(OTHER_PHONE, "10.99.0.44", site=st_andrews)
    client = client_at("10.99.0.43")
    callback = at_provider(start(client), STAFF_EMAIL)
    base, query = callback.split("?", 1)
    params = {k: v[0] for k, v in parse_qs(query).items()}

    # the device inside the state rewritten (the signature no longer matches)
    payload = state_payload(callback) | {"m": OTHER_PHONE}
    body = base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode()
    forged = body + "." + params["state"].split(".")[1]
    r = client.get(base, params=params | {"state": forged})
    assert r.status_code == 400
    assert "not valid or has expired" in r.text
    # no state at all
    r = client.get(base, params={"code": params["code"]})
    assert r.status_code == 400
    assert "not valid or has expired" in r.text
    # a genuine state, but the callback arrives from another device
    r = client_at("10.99.0.44").get(callback)
    assert r.status_code == 400
    assert "started on another device" in r.text
    assert len(refusals()) == 3
    assert f"issued to {PHONE}, callback from {OTHER_PHONE}" in refusals()[2]
    # the refusals came before the code was redeemed: the real callback still works
    assert "Register your device, Jo Smith" in client.get(callback).text


def test_expired_state_is_refused(
    client_at: Clients,
    connect: Connect,
    refusals: Callable[[], list[str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    connect(PHONE, "10.99.0.45")
    client = client_at("10.99.0.45")
    callback = at_provider(start(client), STAFF_EMAIL)
    monkeypatch.setattr("portal.oidc.STATE_MAX_AGE", -1)  # as if ten minutes had passed
    r = client.get(callback)
    assert r.status_code == 400
    assert "expired" in r.text
    assert "state:" in refusals()[0]


# ---------------------------------------------------------------- the ID token
def forged_token(issuer: str) -> str:
    """Claims the portal would accept, signed with a key the provider never published."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = int(time.time())
    claims = {"iss": issuer, "aud": CLIENT_ID, "sub": STAFF_EMAIL, "email": STAFF_EMAIL}
    claims |= {"email_verified": True, "iat": now, "exp": now + 600, "nonce": "x"}
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": "shared-1"})


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("audience", "Audience doesn't match"),  # a real token from our provider, for another app
        ("issuer", "Invalid issuer"),  # a real token, same signing key, from another issuer
        ("forged", "Signature verification failed"),
    ],
)
def test_an_id_token_not_meant_for_the_portal_is_refused(
    westgate: SimpleNamespace,
    session_factory: sessionmaker[Session],
    connect: Connect,
    idp: Idp,
    refusals: Callable[[], list[str]],
    case: str,
    reason: str,
) -> None:
    replacement = {
        "audience": lambda: real_id_token(idp.issuer, OTHER_ID, OTHER_SECRET),
        "issuer": lambda: real_id_token(idp.other_issuer, CLIENT_ID, CLIENT_SECRET),
        "forged": lambda: forged_token(idp.issuer),
    }[case]()
    settings = oidc_settings(westgate, idp.issuer)
    swap = TokenSwap()
    oidc = OidcSignIn(
        issuer=idp.issuer,
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        redirect_uri=CALLBACK,
        signer=Signer(settings.secret_key.get_secret_value()),
        name="Westgate IdP",
        http=httpx.Client(transport=swap, timeout=10),
    )
    app = create_app(settings, session_factory=session_factory, clock=lambda: NOW, oidc=oidc)
    connect(PHONE, "10.99.0.46")
    with TestClient(
        app, base_url=PORTAL.rstrip("/"), client=("10.99.0.46", 40000), follow_redirects=False
    ) as client:
        callback = at_provider(start(client), STAFF_EMAIL)
        swap.replacement = replacement
        page = client.get(callback)
    assert page.status_code == 400
    assert "the Westgate IdP sign-in could not be verified" in page.text
    assert "Register your device" not in page.text
    assert len(swap.seen) == 1  # the provider did issue a genuine token, which was swapped
    assert reason in refusals()[-1], refusals()


# ---------------------------------------------------------------- configuration
def test_provider_down_is_a_clear_page(
    westgate: SimpleNamespace,
    session_factory: sessionmaker[Session],
    connect: Connect,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="schoolgate.portal")
    nothing = f"http://127.0.0.1:{free_tcp_port()}"
    app = create_app(
        oidc_settings(westgate, nothing), session_factory=session_factory, clock=lambda: NOW
    )
    connect(PHONE, "10.99.0.47")
    with TestClient(
        app, base_url=PORTAL.rstrip("/"), client=("10.99.0.47", 40000), follow_redirects=False
    ) as client:
        r = client.get("/staff/oidc")
    assert r.status_code == 503
    assert "We cannot reach Westgate IdP just now" in r.text
    assert 'name="password"' in r.text  # local sign-in still there
    assert any("discovery" in rec.getMessage() for rec in caplog.records)


def test_without_oidc_settings_there_is_no_button_and_no_route(
    westgate: SimpleNamespace, session_factory: sessionmaker[Session], connect: Connect
) -> None:
    settings = load_settings(
        database_url=westgate.db_url, portal_url=PORTAL, portal_rate_limit_per_minute=1000
    )
    app = create_app(settings, session_factory=session_factory, clock=lambda: NOW)
    connect(PHONE, "10.99.0.48")
    with TestClient(
        app, base_url=PORTAL.rstrip("/"), client=("10.99.0.48", 40000), follow_redirects=False
    ) as client:
        assert "/staff/oidc" not in client.get("/staff").text
        assert client.get("/staff/oidc").status_code == 404
        assert client.get("/staff/oidc/callback?code=x&state=y").status_code == 404


def test_a_plain_http_issuer_is_refused_unless_loopback() -> None:
    from service.errors import Invalid

    with pytest.raises(Invalid, match="https"):
        OidcSignIn(
            issuer="http://accounts.google.com",
            client_id="x",
            redirect_uri=CALLBACK,
            signer=Signer("s"),
        )
    assert (
        OidcSignIn(
            issuer="https://login.microsoftonline.com/tenant-id/v2.0",
            client_id="x",
            redirect_uri=CALLBACK,
            signer=Signer("s"),
        ).name
        == "Microsoft"
    )


def test_state_is_not_reusable_as_another_token(idp: Idp) -> None:
    """A CSRF token or staff ticket signed by the same key is not a sign-in state."""
    signer = Signer("portal-test-secret")
    rp = OidcSignIn(issuer=idp.issuer, client_id=CLIENT_ID, redirect_uri=CALLBACK, signer=signer)
    from portal.oidc import SignInRefused

    with pytest.raises(SignInRefused, match="not valid"):
        rp.finish({"state": signer.csrf("staff-signin", PHONE), "code": "x"}, PHONE)
    with pytest.raises(SignInRefused, match="not valid"):
        rp.finish({"state": signer.ticket(1, PHONE), "code": "x"}, PHONE)
