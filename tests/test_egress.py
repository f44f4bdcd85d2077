"""Outbound calls (sidecar/egress.py): the allow-list, the answer size cap, and failure messages that
do not tell a caller what runs at an address. Through real parts: loopback servers that speak HTTP,
TLS-less bytes or nothing at all, the real OAuth server, OpenBao, the sidecar's API and refresher."""

from __future__ import annotations

import gzip
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
from flask.testing import FlaskClient

from sidecar import egress, inputs, providers
from sidecar.config import Settings
from sidecar.devvault import free_port
from sidecar.errors import ConfigError, Invalid, OAuthPermanent, OAuthTransient
from sidecar.models import Grant, TokenSet
from sidecar.notify import Notifier
from sidecar.refresher import Refresher
from sidecar.store import Store
from sidecar.web import create_app

from .helpers import (
    CLIENT_SECRET,
    fast_settings,
    grant_record,
    provider_body,
    provider_client,
    seed_grants,
    vault_tree,
    wait_for,
)

NO_METADATA = "issuer: discovery: no usable OAuth metadata at the issuer"
WEBHOOK_SECRET = "whsec_" + "MDEyMzQ1Njc4OWFiY2RlZg=="  # base64 of 16 bytes
TEN_MB = 10 * 1024 * 1024


# -- loopback servers that answer with raw bytes ------------------------------------------------------


def http(status: str, body: bytes = b"", length: bool = True, content_type: str = "application/json") -> bytes:
    head = f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nConnection: close\r\n"
    if length:
        head += f"Content-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


class RawServer:
    """A TCP listener on loopback that counts connections and answers each with `reply` (bytes, or
    a callable writing to the socket), whatever was asked; `reply=None` closes without a byte."""

    def __init__(self, reply: bytes | Callable[[socket.socket], None] | None) -> None:
        self.reply = reply
        self.connections = 0
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self._closed = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.settimeout(5)
                conn.recv(65536)  # the request, or the start of a TLS handshake; never looked at
                if callable(self.reply):
                    self.reply(conn)
                elif self.reply is not None:
                    conn.sendall(self.reply)
            except OSError:
                pass  # the client hung up first, as it should on an answer too large

    def close(self) -> None:
        self._closed.set()
        self._sock.close()


@pytest.fixture
def serve() -> Iterator[Callable[..., RawServer]]:
    made: list[RawServer] = []

    def make(reply: bytes | Callable[[socket.socket], None] | None) -> RawServer:
        made.append(RawServer(reply))
        return made[-1]

    yield make
    for server in made:
        server.close()


def ten_megabytes(length: bool) -> Callable[[socket.socket], None]:
    """An answer of 10 MB, with its length declared or (read until close) not."""

    def reply(conn: socket.socket) -> None:
        head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
        conn.sendall((head + (f"Content-Length: {TEN_MB}\r\n" if length else "") + "\r\n").encode())
        chunk = b'{"access_token": "' + b"x" * 65536
        for _ in range(TEN_MB // len(chunk)):
            conn.sendall(chunk)

    return reply


# -- a sidecar with an allow-list ---------------------------------------------------------------------


@pytest.fixture
def sidecar_with(vault, tokens, root) -> Callable[[str], FlaskClient]:
    """The web app with SIDECAR_EGRESS_ALLOW set."""

    def make(allow: str) -> FlaskClient:
        settings = Settings.from_env(
            {"VAULT_ADDR": vault.addr, "VAULT_TOKEN": tokens.sidecar, "SIDECAR_EGRESS_ALLOW": allow}
        )
        return create_app(settings).test_client()

    return make


def from_issuer(issuer: str) -> dict[str, str]:
    return {"issuer": issuer, "client_id": "id", "client_secret": CLIENT_SECRET, "scopes": "openid"}


# -- the allow-list ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "allow", "ok"),
    [
        ("https://api.example.com/token", ("api.example.com",), True),
        ("https://API.Example.COM./token", ("api.example.com",), True),
        ("https://login.example.com/token", ("*.example.com",), True),
        ("https://example.com.evil.net/token", ("*.example.com",), False),
        ("https://example.com/token", ("*.example.com",), False),
        ("https://api.example.com:8443/token", ("api.example.com",), True),  # no port: any port
        ("https://api.example.com/token", ("api.example.com:443",), True),  # the scheme's port
        ("https://api.example.com:8443/token", ("api.example.com:443",), False),
        ("http://127.0.0.1:9000/token", ("127.0.0.1:9000",), True),
        ("http://127.0.0.1:9001/token", ("127.0.0.1:9000",), False),
        ("http://[::1]:9000/token", ("[::1]:9000",), True),
        ("http://[::1]:9001/token", ("[::1]:9000",), False),
        # urllib.parse reads the host as api.example.com; requests would connect to evil.example.
        ("http://evil.example\\@api.example.com/token", ("api.example.com",), False),
        ("https://anything.example/token", (), True),
    ],
)
def test_the_allow_list_matches_host_and_port(url, allow, ok):
    assert egress.permits(url, allow) is ok
    assert egress.Egress(allow).allowed(url) is ok


def test_a_provider_outside_the_allow_list_is_refused_when_saved(sidecar_with, admin, root):
    client = sidecar_with("accounts.example.com,oauth2.example.com")
    before = vault_tree(root)
    refused = client.put("/v1/providers/evil", json=provider_body(token_url="https://evil.example/token"),
                         headers=admin)  # fmt: skip
    assert refused.status_code == 400, refused.text
    error = refused.get_json()["error"]
    assert "token_url" in error["fields"] and "SIDECAR_EGRESS_ALLOW" in error["message"]
    assert vault_tree(root) == before
    assert client.put("/v1/providers/ok", json=provider_body(), headers=admin).status_code == 201


@pytest.mark.parametrize("field", ["authorization_url", "revocation_url", "device_authorization_url", "issuer"])
def test_every_provider_url_is_held_to_the_allow_list(field):
    with pytest.raises(Invalid) as refused:
        allow = ("accounts.example.com", "oauth2.example.com")
        providers.build("p", provider_body(**{field: "https://elsewhere.example/x"}), provider_client(*allow))
    assert field in refused.value.fields


def test_discovery_of_an_issuer_outside_the_allow_list_sends_nothing(sidecar_with, admin, serve, root):
    listener = serve(http("404 Not Found"))
    client = sidecar_with("127.0.0.1:1")
    refused = client.put("/v1/providers/probe", json=from_issuer(listener.url), headers=admin)
    assert refused.status_code == 400 and "issuer" in refused.get_json()["error"]["fields"]
    assert "SIDECAR_EGRESS_ALLOW" in refused.get_json()["error"]["message"]
    assert listener.connections == 0


def test_a_refresh_to_a_host_outside_the_allow_list_sends_nothing(vault, tokens, store, oauth, root, serve):
    """A provider written straight into Vault (never through the API) cannot make the sidecar call out."""
    listener = serve(http("200 OK", b'{"access_token": "at", "token_type": "Bearer"}'))
    stored = providers.build("mock", oauth.registration(token_url=f"{listener.url}/token"), provider_client())
    root.secrets.kv.v2.create_or_update_secret(
        path="oauth-sidecar/providers/mock", secret=stored.to_record(), mount_point="secret"
    )
    (seeded,) = seed_grants(store, oauth, ["sheets"])
    settings = fast_settings(vault, tokens.sidecar, SIDECAR_EGRESS_ALLOW=oauth.issuer.split("//")[1])
    refresher = Refresher(settings, Store(settings, tokens.sidecar))
    try:
        assert refresher.refresh_one("sheets", force=True).result == "retrying"
    finally:
        refresher.shutdown()
    record = grant_record(root)
    assert "SIDECAR_EGRESS_ALLOW" in record["last_error"] and record["failures"] == 1
    assert record["refresh_token"] == seeded.tokens.refresh_token
    assert listener.connections == 0


# -- the answer size cap --------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [True, False], ids=["declared", "until-close"])
def test_a_token_answer_of_ten_megabytes_is_refused(vault, tokens, store, oauth, root, serve, length):
    big = serve(ten_megabytes(length))
    store.put_provider(providers.build("mock", oauth.registration(token_url=f"{big.url}/token"), provider_client()))
    (seeded,) = seed_grants(store, oauth, ["sheets"])
    settings = fast_settings(vault, tokens.sidecar)
    refresher = Refresher(settings, Store(settings, tokens.sidecar))
    try:
        assert refresher.refresh_one("sheets", force=True).result == "retrying"
    finally:
        refresher.shutdown()
    record = grant_record(root)
    assert record["last_error"] == f"refresh: the answer is larger than {egress.MAX_ANSWER_BYTES} bytes"
    assert record["access_token"] == seeded.tokens.access_token and big.connections == 1


@pytest.mark.parametrize("length", [True, False], ids=["declared", "until-close"])
def test_discovery_metadata_of_ten_megabytes_is_refused(client, admin, serve, length):
    big = serve(ten_megabytes(length))
    refused = client.put("/v1/providers/big", json=from_issuer(big.url), headers=admin)
    assert refused.status_code == 400
    message = refused.get_json()["error"]["message"]
    assert message == f"issuer: discovery: the answer is larger than {egress.MAX_ANSWER_BYTES} bytes"


# -- one message per kind of failure ----------------------------------------------------------------------

HTML = b"<!doctype html><title>Intranet</title><h1>Welcome</h1>"


def closed(_serve: object) -> str:
    return f"http://127.0.0.1:{free_port()}"  # bound, then released: nothing listens there


DISCOVERY_ANSWERS = {
    "closed port": closed,
    "plain HTTP 404": lambda serve: serve(http("404 Not Found", b"no", content_type="text/plain")).url,
    "an HTML page": lambda serve: serve(http("200 OK", HTML, content_type="text/html")).url,
    "a server error": lambda serve: serve(http("500 Internal Server Error", b"{}")).url,
    "another issuer": lambda serve: serve(http("200 OK", b'{"issuer": "https://elsewhere.example"}')).url,
    "non-HTTP bytes": lambda serve: serve(b"SSH-2.0-OpenSSH_9.6\r\n").url,
    "TLS to a plain port": lambda serve: serve(http("404 Not Found")).url.replace("http:", "https:"),
    "hangs up at once": lambda serve: serve(None).url,
}


@pytest.mark.parametrize("kind", sorted(DISCOVERY_ANSWERS))
def test_discovery_failures_all_read_the_same(client, admin, serve, root, caplog, kind):
    """Whatever runs at the issuer's address (nothing, TLS-less HTTP, SSH, a web page), a caller
    learns only that there is no usable metadata there; the log has the detail."""
    caplog.set_level(logging.WARNING)
    issuer = DISCOVERY_ANSWERS[kind](serve)
    before = vault_tree(root)
    refused = client.put("/v1/providers/probe", json=from_issuer(issuer), headers=admin)
    assert refused.status_code == 400
    assert refused.get_json()["error"]["message"] == NO_METADATA
    assert vault_tree(root) == before
    assert issuer.split("//")[1] in caplog.text  # the operator can still find out what went wrong


def exchange(token_url: str) -> TokenSet:
    p = inputs.provider("p", provider_body(token_url=token_url))
    return provider_client().exchange_code(p, "the-code", None, "https://s.example/callback", ("openid",))


TOKEN_TRANSPORT_FAILURES = {
    "closed port": closed,
    "non-HTTP bytes": lambda serve: serve(b"\x00\x01garbage\r\n\r\n").url,
    "TLS to a plain port": lambda serve: serve(http("404 Not Found")).url.replace("http:", "https:"),
    "hangs up at once": lambda serve: serve(None).url,
}


@pytest.mark.parametrize("kind", sorted(TOKEN_TRANSPORT_FAILURES))
def test_token_endpoint_transport_failures_all_read_the_same(serve, kind):
    with pytest.raises(OAuthTransient) as caught:
        exchange(TOKEN_TRANSPORT_FAILURES[kind](serve) + "/token")
    assert caught.value.message == "token request: the server could not be reached"


NOT_OAUTH_ANSWERS = {
    "404 HTML": (http("404 Not Found", HTML, content_type="text/html"), OAuthPermanent),
    "200 HTML": (http("200 OK", HTML, content_type="text/html"), OAuthPermanent),
    "200 JSON without a token": (http("200 OK", b'{"hello": "world"}'), OAuthPermanent),
    "302 redirect": (
        b"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:1/\r\nContent-Length: 0\r\n\r\n",
        OAuthPermanent,
    ),
    "503 HTML": (http("503 Service Unavailable", HTML, content_type="text/html"), OAuthTransient),
}


@pytest.mark.parametrize("kind", sorted(NOT_OAUTH_ANSWERS))
def test_an_answer_that_is_not_oauth_reveals_neither_status_nor_shape(serve, kind):
    reply, error = NOT_OAUTH_ANSWERS[kind]
    with pytest.raises(error) as caught:
        exchange(serve(reply).url + "/token")
    assert caught.value.message == "token request: the provider's answer is not a valid OAuth response"


def test_an_oauth_error_answer_keeps_its_error_code(serve):
    body = b'{"error": "invalid_grant", "error_description": "the code was used"}'
    with pytest.raises(OAuthPermanent) as caught:
        exchange(serve(http("400 Bad Request", body)).url + "/token")
    assert caught.value.error == "invalid_grant"
    assert caught.value.message == "token request: invalid_grant (the code was used)"


def test_an_answer_keeps_its_body_out_of_its_repr():
    answer = egress.Answer(200, {"Set-Cookie": "s=secret-cookie"}, b'{"access_token": "secret-at"}')
    assert "secret" not in repr(answer) and answer.json() == {"access_token": "secret-at"}
    assert egress.Answer(200, {}, b"[" * 100_000).json() is None  # too deep to parse: not JSON, no crash


# -- webhooks -------------------------------------------------------------------------------------------------


def announced_grant() -> Grant:
    now = datetime.now(UTC)
    tokens = TokenSet("at-secret", "Bearer", now + timedelta(hours=1), ("openid",), "rt-secret")
    return Grant("sheets", "mock", ("production",), tokens, status="reauthorization_required")


def test_the_webhook_is_held_to_the_allow_list(serve):
    receiver = serve(http("204 No Content"))
    url = f"{receiver.url}/hooks"
    settings = Settings.from_env(
        {"VAULT_ADDR": "http://127.0.0.1:8200", "SIDECAR_WEBHOOK_URL": url, "SIDECAR_WEBHOOK_SECRET": WEBHOOK_SECRET}
    )
    refused = Notifier(settings, egress.Egress(("hooks.example.com",)))
    assert refused.send("reauthorization_required", announced_grant()) is False
    assert receiver.connections == 0
    allowed = Notifier(settings, egress.Egress((f"127.0.0.1:{receiver.port}",)))
    assert allowed.send("reauthorization_required", announced_grant()) is True
    assert receiver.connections == 1


def test_a_webhook_url_outside_the_allow_list_is_a_config_error():
    env = {"VAULT_ADDR": "http://127.0.0.1:8200", "SIDECAR_WEBHOOK_SECRET": WEBHOOK_SECRET,
           "SIDECAR_EGRESS_ALLOW": "*.example.com"}  # fmt: skip
    with pytest.raises(ConfigError, match=r"SIDECAR_WEBHOOK_URL.*SIDECAR_EGRESS_ALLOW"):
        Settings.from_env({**env, "SIDECAR_WEBHOOK_URL": "https://hooks.example.net/x"})
    assert Settings.from_env({**env, "SIDECAR_WEBHOOK_URL": "https://hooks.example.com/x"}).webhook_url


def test_an_answer_trickled_a_byte_at_a_time_is_given_up_at_the_deadline(serve):
    """Each byte arrives well within the read timeout, so only a deadline for the whole body frees
    the worker; the server sees the connection closed long before it has sent its answer."""
    sent: list[int] = []

    def trickle(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n")
        for count in range(1000):
            try:
                conn.sendall(b" ")
            except OSError:
                break
            sent.append(count)
            time.sleep(0.1)

    slow = serve(trickle)
    with pytest.raises(OAuthTransient) as refused:
        egress.Egress().request("POST", f"{slow.url}/token", "refresh", timeout=1.0)
    assert refused.value.message == f"refresh: {egress.UNREACHABLE}"
    wait_for(lambda: sent and len(sent) < 100 and slow.connections == 1)  # given up after ~10 of 1000 bytes


def gzipped(payload: bytes) -> bytes:
    head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\nConnection: close\r\n"
    body = gzip.compress(payload)
    return f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body


def test_a_gzipped_answer_is_read_and_a_gzip_bomb_refused(serve):
    small = serve(gzipped(b'{"access_token": "a", "token_type": "Bearer"}'))
    assert egress.Egress().request("POST", f"{small.url}/token", "refresh").json() == {
        "access_token": "a",
        "token_type": "Bearer",
    }
    bomb = serve(gzipped(b"0" * TEN_MB))  # about 10 kB on the wire
    with pytest.raises(OAuthPermanent) as refused:
        egress.Egress().request("POST", f"{bomb.url}/token", "refresh")
    assert refused.value.message == f"refresh: {egress.TOO_LARGE}"
