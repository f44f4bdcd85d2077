import base64
import hashlib
import json
import logging
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import ClassVar
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from sidecar import inputs, keys, oauth, providers
from sidecar.clock import Clock
from sidecar.egress import Egress
from sidecar.errors import Invalid, OAuthPermanent, OAuthTransient
from sidecar.models import Provider, TokenSet
from sidecar.oauth import Client

from .helpers import CLIENT_ID, CLIENT_SECRET, provider_body

CLIENT = Client(Egress())  # what a sidecar process calls providers with


def provider(**overrides) -> Provider:
    return inputs.provider("p", provider_body(**overrides))


def test_authorization_request_carries_state_and_s256_pkce():
    p = provider(
        authorization_url="https://login.example.com/authorize?tenant=acme",
        extra_authorize_params={"access_type": "offline", "prompt": "consent"},
    )
    request = oauth.authorization_request(p, "https://sidecar.example.com/callback", ("openid", "email"))
    url = urlsplit(request.url)
    query = {k: v[0] for k, v in parse_qs(url.query).items()}
    assert (url.netloc, url.path) == ("login.example.com", "/authorize")
    assert query["tenant"] == "acme" and query["access_type"] == "offline" and query["prompt"] == "consent"
    assert (query["response_type"], query["client_id"], query["scope"]) == ("code", p.client_id, "openid email")
    assert query["redirect_uri"] == "https://sidecar.example.com/callback"
    assert query["state"] == request.state and len(request.state) >= 43
    challenge = base64.urlsafe_b64encode(hashlib.sha256(request.code_verifier.encode()).digest()).rstrip(b"=")
    assert query["code_challenge"] == challenge.decode() and query["code_challenge_method"] == "S256"
    assert CLIENT_SECRET not in request.url
    assert request.state not in repr(request) and request.code_verifier not in repr(request)


def test_every_request_gets_a_fresh_state_and_verifier():
    p = provider()
    first, second = (oauth.authorization_request(p, "https://s.example/callback", ("a",)) for _ in range(2))
    assert first.state != second.state and first.code_verifier != second.code_verifier


def test_pkce_can_be_turned_off():
    request = oauth.authorization_request(provider(pkce=False), "https://s.example/callback", ("a",))
    assert request.code_verifier is None and "code_challenge" not in request.url


class Recorder(BaseHTTPRequestHandler):
    """A tiny HTTP endpoint whose answers the test sets, and which records what reached it."""

    answers: ClassVar[list[tuple[int, dict[str, str], bytes]]] = []
    seen: ClassVar[list[tuple[str, str, bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.seen.append((self.path, self.headers.get("Authorization", ""), body))
        status, headers, payload = self.answers.pop(0)
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def endpoint():
    Recorder.answers, Recorder.seen = [], []
    server = HTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def exchange(endpoint: str, **overrides):
    p = provider(token_url=f"{endpoint}/token", **overrides)
    return CLIENT.exchange_code(p, "the-code", "v" * 64, "https://s.example/callback", ("openid",))


def test_a_redirect_from_the_token_endpoint_is_not_followed(endpoint):
    Recorder.answers = [(307, {"Location": f"{endpoint}/elsewhere"}, b"")]
    with pytest.raises(OAuthPermanent, match="not a valid OAuth response"):
        exchange(endpoint)
    assert [path for path, _, _ in Recorder.seen] == ["/token"]


def test_client_secret_basic_form_encodes_both_parts(endpoint):
    Recorder.answers = [(200, {"Content-Type": "application/json"}, b'{"access_token": "at", "token_type": "Bearer"}')]
    exchange(endpoint, client_id="id:with space", client_secret="s+cr/t:x")
    _, authorization, body = Recorder.seen[0]
    assert base64.b64decode(authorization.removeprefix("Basic ")).decode() == "id%3Awith+space:s%2Bcr%2Ft%3Ax"
    assert b"client_secret" not in body
    form = parse_qs(body.decode())
    assert form["grant_type"] == ["authorization_code"] and form["code_verifier"] == ["v" * 64]


@pytest.mark.parametrize(
    ("status", "headers", "body", "error", "retry_after"),
    [
        (400, {}, b'{"error": "invalid_grant", "error_description": "expired\\u0007"}', OAuthPermanent, None),
        (401, {}, b'{"error": "invalid_client"}', OAuthPermanent, None),
        (200, {}, b'{"error": "unauthorized_client"}', OAuthPermanent, None),
        (200, {}, b'{"token_type": "Bearer"}', OAuthPermanent, None),
        (200, {}, b"<html>not json</html>", OAuthPermanent, None),
        (503, {"Retry-After": "7"}, b"", OAuthTransient, 7.0),
        (429, {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, b"{}", OAuthTransient, 0.0),
        (500, {}, b'{"error": "server_error"}', OAuthTransient, None),
    ],
)
def test_failures_are_classified(endpoint, status, headers, body, error, retry_after):
    Recorder.answers = [(status, headers, body)]
    with pytest.raises(error) as caught:
        exchange(endpoint)
    assert "\x07" not in caught.value.message and CLIENT_SECRET not in caught.value.message
    if error is OAuthTransient:
        assert caught.value.retry_after == retry_after


def test_an_unreachable_provider_is_transient():
    p = provider(token_url="http://127.0.0.1:9/token")
    with pytest.raises(OAuthTransient, match="could not be reached"):
        CLIENT.exchange_code(p, "c", None, "https://s.example/callback", ("a",))
    with pytest.raises(requests.ConnectionError):  # and the port really is closed
        requests.post("http://127.0.0.1:9/token", timeout=2)


# -- against the real OAuth server (tests/oauth-provider) --------------------------------------------

NEW_SECRET = "cs-new-4b1d-never-show-me-either"
REDIRECT = "http://127.0.0.1:9/callback"


@pytest.fixture
def server(oauth):
    """The `oauth` fixture under another name: here `oauth` is the module under test."""
    return oauth


def registered(server, **overrides) -> Provider:
    return providers.build("mock", server.registration(**overrides), CLIENT)


def login(p: Provider) -> TokenSet:
    """The authorization-code flow against the real server, following its redirect as a browser would."""
    request = oauth.authorization_request(p, REDIRECT, p.scopes)
    back = requests.get(request.url, allow_redirects=False, timeout=5)
    assert back.status_code == 302, back.text
    code = parse_qs(urlsplit(back.headers["Location"]).query)["code"][0]
    return CLIENT.exchange_code(p, code, request.code_verifier, REDIRECT, p.scopes)


def attempts(server, kind: str = "token", since: int = 0) -> list[tuple[int, str | None]]:
    """(status, auth_error) of each request the server saw at /token or /revoke."""
    return [(e["status"], e.get("auth_error")) for e in server.log()[kind][since:]]


# -- client secret rotation: the previous secret is tried once when the provider refuses the client

ROTATED = {"client_secret": NEW_SECRET, "previous_client_secret": CLIENT_SECRET}


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
def test_a_refresh_falls_back_to_the_previous_secret(server, caplog, method):
    caplog.set_level(logging.DEBUG)
    server.configure(rotate=True)
    tokens = login(registered(server, token_auth_method=method))
    rotated = registered(server, token_auth_method=method, **ROTATED)
    before = len(server.log()["token"])
    fresh = CLIENT.refresh(rotated, tokens.refresh_token, rotated.scopes)
    assert server.accepts(fresh.access_token)
    assert attempts(server, since=before) == [(401, "bad secret"), (200, None)]
    assert server.log()["reuse"] == 0  # the refresh token was redeemed once, by the second attempt
    assert server.accepts(CLIENT.refresh(rotated, fresh.refresh_token, rotated.scopes).access_token)
    warning = [r.getMessage() for r in caplog.records if r.name == "sidecar.oauth" and r.levelno == logging.WARNING]
    assert len(warning) == 2 and "provider mock" in warning[0] and "previous one" in warning[0]
    assert CLIENT_SECRET not in caplog.text and NEW_SECRET not in caplog.text


@pytest.mark.parametrize(
    ("accepted", "expected"),
    [(NEW_SECRET, [(200, None)]), ([CLIENT_SECRET, NEW_SECRET], [(200, None)])],
    ids=["only-new", "both"],
)
def test_a_provider_that_accepts_the_new_secret_gets_one_request(server, caplog, accepted, expected):
    server.configure(clients={CLIENT_ID: [CLIENT_SECRET, NEW_SECRET]}, rotate=True)
    tokens = login(registered(server))
    server.configure(clients={CLIENT_ID: accepted})
    before = len(server.log()["token"])
    rotated = registered(server, **ROTATED)
    assert server.accepts(CLIENT.refresh(rotated, tokens.refresh_token, rotated.scopes).access_token)
    assert attempts(server, since=before) == expected
    assert "previous one" not in caplog.text


def test_a_provider_that_accepts_neither_secret_refuses_after_two_attempts(server):
    server.configure(rotate=True)
    tokens = login(registered(server))
    server.configure(clients={CLIENT_ID: "cs-someone-else"})
    before = len(server.log()["token"])
    rotated = registered(server, **ROTATED)
    with pytest.raises(OAuthPermanent) as caught:
        CLIENT.refresh(rotated, tokens.refresh_token, rotated.scopes)
    assert caught.value.error == "invalid_client"
    assert attempts(server, since=before) == [(401, "bad secret"), (401, "bad secret")]
    server.configure(clients={CLIENT_ID: CLIENT_SECRET})  # the refresh token was not spent
    assert server.accepts(CLIENT.refresh(registered(server), tokens.refresh_token, rotated.scopes).access_token)


def test_a_refusal_of_the_token_not_the_client_is_not_sent_again(server):
    """A 401 that names another error than invalid_client says nothing about the secret: no second try."""
    tokens = login(registered(server))
    server.configure(clients={CLIENT_ID: [NEW_SECRET, CLIENT_SECRET]})
    before = len(server.log()["token"])
    server.next(token={"status": 401, "body": {"error": "invalid_grant"}})
    rotated = registered(server, **ROTATED)
    with pytest.raises(OAuthPermanent) as caught:
        CLIENT.refresh(rotated, tokens.refresh_token, rotated.scopes)
    assert caught.value.error == "invalid_grant" and len(server.log()["token"]) == before + 1


def test_client_credentials_and_revocation_fall_back_too(server, caplog):
    rotated = registered(server, **ROTATED)
    tokens = CLIENT.client_credentials(rotated, ("api",))
    assert server.accepts(tokens.access_token)
    assert attempts(server) == [(401, "bad secret"), (200, None)]
    assert CLIENT.revoke(rotated, tokens.access_token, "access_token") is True
    assert attempts(server, "revoke") == [(401, "bad secret"), (200, None)]
    assert not server.accepts(tokens.access_token)
    assert "client credentials: provider mock" in caplog.text and "revocation: provider mock" in caplog.text
    assert CLIENT_SECRET not in caplog.text and NEW_SECRET not in caplog.text


# -- private_key_jwt (RFC 7523): the server checks each assertion against the JWK we registered there


def pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()).decode()


NEW_KEY = {
    "RS256": lambda: pem(rsa.generate_private_key(public_exponent=65537, key_size=2048)),
    "ES256": lambda: pem(ec.generate_private_key(ec.SECP256R1())),
}


@pytest.fixture(params=sorted(NEW_KEY))
def alg(request) -> str:
    return request.param


def jwt_client(server, private_key: str, key_id: str = "") -> Provider:
    method = {"token_auth_method": "private_key_jwt", "client_secret": None}
    return registered(server, private_key=private_key, key_id=key_id, **method)


def test_private_key_jwt_for_every_grant_and_revocation(server, alg):
    p = jwt_client(server, NEW_KEY[alg](), key_id="k-2026")
    assert p.client_secret == ""
    server.configure(clients={}, rotate=True, jwks={CLIENT_ID: p.public()["public_jwk"]})
    assert server.accepts(CLIENT.client_credentials(p, ("api",)).access_token)
    tokens = login(p)
    fresh = CLIENT.refresh(p, tokens.refresh_token, p.scopes)
    assert server.accepts(fresh.access_token)
    assert CLIENT.revoke(p, fresh.access_token, "access_token") is True
    assert not server.accepts(fresh.access_token)
    seen = server.log()["token"] + server.log()["revoke"]
    assert len(seen) == 4  # one request each, every assertion's jti new (else "replayed jti")
    assert {(e["auth_method"], e["status"], e.get("auth_error")) for e in seen} == {("private_key_jwt", 200, None)}


def test_a_key_is_loaded_once_however_often_it_signs(server, monkeypatch):
    """Loading an RSA key costs tens of milliseconds: not once per provider read and assertion."""
    loads = []
    load = keys.serialization.load_pem_private_key
    monkeypatch.setattr(keys.serialization, "load_pem_private_key", lambda *a, **k: loads.append(1) or load(*a, **k))
    keys._loaded.cache_clear()
    p = jwt_client(server, NEW_KEY["RS256"](), key_id="k-2026")
    server.configure(clients={}, rotate=True, jwks={CLIENT_ID: p.public()["public_jwk"]})
    tokens = login(p)
    for _ in range(3):
        tokens = CLIENT.refresh(inputs.stored_provider(p.name, p.to_record()), tokens.refresh_token, p.scopes)
    assert server.accepts(tokens.access_token)
    assert len(loads) == 1


def test_private_key_jwt_with_another_key_than_registered_is_refused(server, alg):
    registered_key = jwt_client(server, NEW_KEY[alg]())
    server.configure(clients={}, jwks={CLIENT_ID: registered_key.public()["public_jwk"]})
    with pytest.raises(OAuthPermanent) as caught:
        CLIENT.client_credentials(jwt_client(server, NEW_KEY[alg]()), ("api",))
    assert caught.value.error == "invalid_client"
    assert attempts(server) == [(401, "bad signature")]


def test_a_client_assertion_is_single_use_and_bound_to_its_endpoint(server, alg):
    p = jwt_client(server, NEW_KEY[alg](), key_id="k-2026")
    url = f"{server.issuer}/token"
    first, second = CLIENT._assertion(p, url), CLIENT._assertion(p, f"{server.issuer}/revoke")
    assert jwt.get_unverified_header(first) == {"alg": alg, "kid": "k-2026", "typ": "JWT"}
    key = jwt.PyJWK(p.public()["public_jwk"])
    claims = jwt.decode(first, key, algorithms=[alg], audience=url)
    assert claims["iss"] == claims["sub"] == CLIENT_ID
    assert claims["exp"] - claims["iat"] == 60 and abs(claims["iat"] - time.time()) < 5
    again = jwt.decode(second, key, algorithms=[alg], audience=f"{server.issuer}/revoke")
    assert len(claims["jti"]) >= 32 and again["jti"] != claims["jti"]
    assert "kid" not in jwt.get_unverified_header(CLIENT._assertion(jwt_client(server, p.private_key), url))


# -- the device flow (RFC 8628) ---------------------------------------------------------------------


class Sleeps(Clock):
    """A clock whose sleep records what was asked, and sleeps at most `cap` seconds for real."""

    def __init__(self, cap: float = 1.0) -> None:
        self.asked: list[float] = []
        self.cap = cap

    def sleep(self, seconds: float) -> None:
        self.asked.append(seconds)
        time.sleep(min(seconds, self.cap))


def device_client(server, **config) -> Provider:
    server.configure(deviceInterval=1, **config)
    return registered(server, device_authorization_url=f"{server.issuer}/device_authorization")


def decide(server, user_code: str, action: str = "approve", after: float = 0.0) -> threading.Thread:
    def go() -> None:
        time.sleep(after)
        body = {"user_code": user_code, "action": action}
        requests.post(f"{server.issuer}/__control/device", json=body, timeout=5).raise_for_status()

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    return thread


def test_a_device_login_approved_while_polling(server):
    p = device_client(server)
    authorization = CLIENT.device_authorization(p, p.scopes)
    assert re.fullmatch(r"[B-Z]{4}-[B-Z]{4}", authorization.user_code)
    assert authorization.verification_uri == f"{server.issuer}/device" and authorization.interval == 1.0
    assert authorization.device_code not in repr(authorization) and authorization.user_code in repr(authorization)
    pending = requests.get(f"{server.issuer}/__control/device", timeout=5).json()
    assert pending == [{"user_code": authorization.user_code, "scope": "openid profile email", "status": "pending"}]
    decide(server, authorization.user_code, after=1.5)
    sleeps = Sleeps()
    tokens = Client(Egress(), sleeps).device_token(p, authorization, p.scopes)
    assert server.accepts(tokens.access_token) and tokens.refresh_token
    assert len(sleeps.asked) >= 2 and set(sleeps.asked) == {1.0}
    polls = [e for e in server.log()["token"] if e["grant_type"] == oauth.DEVICE_GRANT]
    assert [e["status"] for e in polls][-1] == 200 and {e["error"] for e in polls[:-1]} == {"authorization_pending"}


def test_slow_down_adds_five_seconds_to_the_interval(server):
    p = device_client(server, deviceEnforceInterval=False)
    authorization = CLIENT.device_authorization(p, p.scopes)
    decide(server, authorization.user_code).join()  # approved already: the second poll gets the tokens
    server.next(token={"status": 400, "body": {"error": "slow_down"}})
    sleeps = Sleeps()
    assert server.accepts(Client(Egress(), sleeps).device_token(p, authorization, p.scopes).access_token)
    assert sleeps.asked == [1.0, 6.0]


def test_a_denied_device_login_is_refused(server):
    p = device_client(server)
    authorization = CLIENT.device_authorization(p, p.scopes)
    decide(server, authorization.user_code, "deny").join()
    with pytest.raises(OAuthPermanent) as caught:
        Client(Egress(), Sleeps()).device_token(p, authorization, p.scopes)
    assert caught.value.error == "access_denied"


def test_a_device_code_never_approved_expires(server):
    p = device_client(server, deviceTtl=2, deviceEnforceInterval=False)
    authorization = CLIENT.device_authorization(p, p.scopes)
    started = time.monotonic()
    with pytest.raises(OAuthPermanent) as caught:
        Client(Egress(), Sleeps()).device_token(p, authorization, p.scopes)
    assert caught.value.error == "expired_token"
    assert time.monotonic() - started < 5


def test_a_provider_without_a_device_endpoint_has_no_device_flow(server):
    p = registered(server)
    with pytest.raises(Invalid) as caught:
        CLIENT.device_authorization(p, p.scopes)
    assert "provider" in caught.value.fields
    assert server.log()["device"] == []


def device_answer(endpoint: str, **body) -> oauth.DeviceAuthorization:
    answer = {"device_code": "dc-secret", "user_code": "BCDF-GHJK", "expires_in": 600, **body}
    Recorder.answers = [(200, {"Content-Type": "application/json"}, json.dumps(answer).encode())]
    p = provider(token_url=f"{endpoint}/token", device_authorization_url=f"{endpoint}/device")
    return CLIENT.device_authorization(p, ("a",))


@pytest.mark.parametrize(
    "body",
    [
        {"verification_uri": "http://evil.example/device"},
        {"verification_uri": "https://ok.example/device", "verification_uri_complete": "javascript:alert(1)"},
        {"verification_uri": "https://ok.example/device", "device_code": None},
        {},
    ],
)
def test_a_device_answer_with_a_bad_or_missing_field_is_refused(endpoint, body):
    with pytest.raises(OAuthPermanent, match="device authorization"):
        device_answer(endpoint, **body)


def test_a_device_answer_in_googles_spelling_with_no_interval(endpoint):
    authorization = device_answer(endpoint, verification_url="https://www.google.com/device")
    assert authorization.verification_uri == "https://www.google.com/device" and authorization.interval == 5.0


@pytest.mark.parametrize(("given", "used"), [(120, 120.0), (2.5, 2.5), (True, 5.0), (0, 5.0), ("7", 5.0)])
def test_the_provider_sets_the_polling_interval(endpoint, given, used):
    """RFC 8628 section 3.5: never poll sooner than the provider asks, however long that is."""
    answer = device_answer(endpoint, interval=given, verification_uri="https://example.com/device")
    assert answer.interval == used
