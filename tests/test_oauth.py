import base64
import hashlib
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import ClassVar
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from sidecar import oauth
from sidecar.errors import OAuthPermanent, OAuthTransient
from sidecar.models import Provider

from .conftest import CLIENT_SECRET, provider_body


def provider(**overrides) -> Provider:
    return Provider.from_input("p", provider_body(**overrides))


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
    return oauth.exchange_code(p, "the-code", "v" * 64, "https://s.example/callback", ("openid",))


def test_a_redirect_from_the_token_endpoint_is_not_followed(endpoint):
    Recorder.answers = [(307, {"Location": f"{endpoint}/elsewhere"}, b"")]
    with pytest.raises(OAuthPermanent, match="redirect"):
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
        oauth.exchange_code(p, "c", None, "https://s.example/callback", ("a",))
    with pytest.raises(requests.ConnectionError):  # and the port really is closed
        requests.post("http://127.0.0.1:9/token", timeout=2)
