"""Hostile input at every public door, over real HTTP with raw bytes: the provider's answer at
/callback, the login link /login/<id>, the settings UI and the /v1 API. A raw socket sends what
`requests` would normalise or refuse (CR/LF, 0xff bytes, 10 kB values, repeated parameters).

Whatever comes in, the sidecar answers 4xx (never 5xx), redirects only to itself (or, from a login
link, to the provider's authorization URL of that login), sets no injected header, shows no
stack trace, reflects no raw <script>, redeems no code and writes nothing but what the case's
own setup wrote. test_logins.py and test_security.py already cover `state` twice, an over-long
state, an unknown or missing state and an escaped error_description; they are not repeated here."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote, urljoin, urlsplit

import pytest
import requests

from .helpers import callback_url, start, vault_tree

SCRIPT = b"<script>alert(1)</script>"
# Response splitting: CR LF, a header, an empty line and a body with a script, percent-encoded.
INJECT = b"%0d%0aSet-Cookie:%20x=1%0d%0a%0d%0a%3Cscript%3Ealert(1)%3C/script%3E"
INJECT_TEXT = "\r\nSet-Cookie: x=1\r\n\r\n<script>alert(1)</script>"  # the same, decoded: for JSON and forms
BIG = b"A" * 10_240
BIG_TEXT = BIG.decode()
EVIL = ["https://evil.example", "//evil.example", "/\\evil.example"]
REDIRECT_PARAMS = ("next", "return_to", "redirect_uri", "return")


# -- a raw HTTP client -----------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    lines: list[bytes]  # the header lines as received, split on CR LF
    body: bytes

    @property
    def headers(self) -> list[tuple[str, str]]:
        pairs = []
        for line in self.lines:
            name, sep, value = line.decode("latin-1").partition(":")
            assert sep, f"a header line without a colon: {line!r}"
            pairs.append((name.strip(), value.strip()))
        return pairs

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


def send(live, method: str, target: bytes | str, body: bytes = b"", **headers: str) -> Answer:
    """One request exactly as given (target and body are not encoded or checked), over a new connection."""
    url = urlsplit(live.url)
    target = target.encode("latin-1") if isinstance(target, str) else target
    head = [method.encode() + b" " + target + b" HTTP/1.1", f"Host: {url.netloc}".encode(), b"Connection: close"]
    if body or method in ("POST", "PUT"):
        head.append(f"Content-Length: {len(body)}".encode())
    head += [f"{k.replace('_', '-')}: {v}".encode("latin-1") for k, v in headers.items()]
    with socket.create_connection((url.hostname, url.port), timeout=30) as sock:
        sock.sendall(b"\r\n".join(head) + b"\r\n\r\n" + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    raw_head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *lines = raw_head.split(b"\r\n")
    answer = Answer(int(status_line.split()[1]), lines, rest)
    if (answer.header("Transfer-Encoding") or "").lower() == "chunked":
        answer.body = dechunk(rest)
    return answer


def dechunk(data: bytes) -> bytes:
    out = b""
    while True:
        size, _, data = data.partition(b"\r\n")
        if not int(size.split(b";")[0], 16):
            return out
        out, data = out + data[: int(size, 16)], data[int(size, 16) + 2 :]


# -- what every case asserts -------------------------------------------------------------------------


def assert_safe(answer: Answer, live, *, status: Callable[[int], bool] = lambda s: 400 <= s < 500,
                away: str | None = None) -> None:  # fmt: skip
    """The answer is harmless: expected status, no injected header, redirects stay on the sidecar
    (or go exactly to `away`), no stack trace, no raw <script>."""
    assert status(answer.status), (answer.status, answer.text[:500])
    assert answer.status < 500
    for line in answer.lines:
        assert b"\r" not in line and b"\n" not in line, line
    for name, value in answer.headers:
        assert "Set-Cookie:" not in value and "evil.example" not in value, (name, value)
        if name.lower() == "set-cookie":
            assert not value.startswith("x="), value
        assert name.lower() not in ("refresh", "x"), (name, value)
    location = answer.header("Location")
    if 300 <= answer.status < 400 or location is not None:
        assert location, "a redirect without a Location"
        if location != away:
            assert not location.startswith(("//", "/\\", "\\")), location
            target = urlsplit(urljoin(f"{live.url}/", location))
            assert (target.scheme, target.netloc) == ("http", urlsplit(live.url).netloc), location
    assert b"Traceback" not in answer.body
    assert SCRIPT not in answer.body.lower()


def changed_paths(root, before: dict[str, int]) -> set[str]:
    after = vault_tree(root)
    return {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}


def assert_untouched(root, before: dict[str, int], *allowed: str) -> None:
    """Vault as before, except paths starting with one of `allowed` (the case's own setup)."""
    changed = changed_paths(root, before)
    assert all(allowed and k.startswith(allowed) for k in changed), sorted(changed)


def token_requests(oauth) -> int:
    """Every POST /token the provider received. Not `log()["token"]`: the mock refuses an unknown
    code before it logs the request there, and these tests send no refresh."""
    return oauth.log()["tokenRequests"]


# -- setups: a login in flight, a logged-in settings session --------------------------------------


@dataclass
class InFlight:
    lid: str
    query: list[tuple[bytes, bytes]]  # the provider's answer, percent-encoded as sent
    cookie: str  # the browser binding

    @property
    def pending(self) -> str:
        return f"oauth-sidecar/pending/{self.lid}"

    def value(self, name: bytes) -> bytes:
        return next(v for k, v in self.query if k == name)


def in_flight(api, browser: requests.Session | None = None, link: str | None = None) -> InFlight:
    """A login whose link a browser opened and whose provider answered, its callback not yet called."""
    browser = browser or requests.Session()
    link = link or start(api)
    url = urlsplit(callback_url(browser, link))
    assert url.path == "/callback"
    query = [tuple(p.encode().split(b"=", 1)) for p in url.query.split("&")]
    cookie = "; ".join(f"{k}={v}" for k, v in browser.cookies.get_dict().items())
    return InFlight(link.rsplit("/", 1)[1], query, cookie)  # type: ignore[arg-type]


def encode(query: list[tuple[bytes, bytes]]) -> bytes:
    return b"&".join(k + b"=" + v for k, v in query)


def replace(query: list[tuple[bytes, bytes]], name: bytes, value: bytes) -> list[tuple[bytes, bytes]]:
    return [(k, v) for k, v in query if k != name] + [(name, value)]


CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@dataclass
class Ui:
    browser: requests.Session
    csrf: str

    @property
    def cookie(self) -> str:
        return "; ".join(f"{k}={v}" for k, v in self.browser.cookies.get_dict().items())

    def form(self, fields: dict[str, str] | bytes) -> bytes:
        if isinstance(fields, bytes):
            return f"csrf_token={self.csrf}&".encode() + fields
        return "&".join(f"{k}={quote(v, safe='')}" for k, v in {"csrf_token": self.csrf, **fields}.items()).encode()


def ui(live, token: str | None = None) -> Ui:
    """A settings session: logged in with `token`, or only holding the login form's CSRF token."""
    browser = requests.Session()
    page = browser.get(f"{live.url}/settings/login", timeout=10)
    if token is not None:
        form = {"vault_token": token, "csrf_token": CSRF.search(page.text)[1]}
        assert browser.post(f"{live.url}/settings/login", data=form, timeout=10).status_code == 200
        page = browser.get(f"{live.url}/settings", timeout=10)
    return Ui(browser, CSRF.search(page.text)[1])


FORM = "application/x-www-form-urlencoded"
JSON = "application/json"


# -- the provider's answer at /callback, for a login in flight ----------------------------------------

UTF8 = b"%c3%a9"  # a valid UTF-8 é, percent-encoded: in spec for a URL, out of spec for code and iss


CALLBACK_CASES = {
    # duplicated parameters (`state` twice: test_logins.test_refuses_repeated_parameters)
    "code twice": lambda f: [*f.query, (b"code", b"another-code")],
    "code twice, same value": lambda f: [*f.query, (b"code", f.value(b"code"))],
    "iss twice": lambda f: [*f.query, (b"iss", f.value(b"iss"))],
    # 10 kB values (an over-long state: test_logins.test_refuses_a_missing_or_unknown_state)
    "code 10 kB": lambda f: replace(f.query, b"code", BIG),
    "error 10 kB": lambda f: [*f.query, (b"error", BIG)],
    "error_description 10 kB": lambda f: [*f.query, (b"error", b"access_denied"), (b"error_description", BIG)],
    "iss 10 kB": lambda f: replace(f.query, b"iss", BIG),
    # CR LF, a header and a script in every parameter
    "CRLF in state": lambda f: replace(f.query, b"state", f.value(b"state") + INJECT),
    "CRLF in code": lambda f: replace(f.query, b"code", f.value(b"code") + INJECT),
    "CRLF in error": lambda f: [*f.query, (b"error", b"access_denied" + INJECT)],
    "CRLF and script in error_description": lambda f: (
        [*f.query, (b"error", b"access_denied"), (b"error_description", b"no" + INJECT)]
    ),
    "CRLF in iss": lambda f: replace(f.query, b"iss", f.value(b"iss") + INJECT),
    "NUL in code": lambda f: replace(f.query, b"code", f.value(b"code") + b"%00"),
    "ESC in code": lambda f: replace(f.query, b"code", f.value(b"code") + b"%1b"),
    # bytes that are not UTF-8
    "%ff%fe in state": lambda f: replace(f.query, b"state", f.value(b"state") + b"%ff%fe"),
    "raw 0xff in state": lambda f: replace(f.query, b"state", f.value(b"state") + b"\xff\xfe"),
    "%ff%fe in error": lambda f: [*f.query, (b"error", b"%ff%fe")],
    "raw 0xff in error_description": lambda f: (
        [*f.query, (b"error", b"access_denied"), (b"error_description", b"\xff\xfe")]
    ),
    "%ff%fe in iss": lambda f: replace(f.query, b"iss", f.value(b"iss") + b"%ff%fe"),
    "raw 0xff in iss": lambda f: replace(f.query, b"iss", f.value(b"iss") + b"\xff\xfe"),
    "UTF-8 in iss": lambda f: replace(f.query, b"iss", f.value(b"iss") + UTF8),
    "raw 0xff in code": lambda f: replace(f.query, b"code", b"\xff\xfe"),
    "UTF-8 in code": lambda f: replace(f.query, b"code", f.value(b"code") + UTF8),
}


@pytest.mark.parametrize("edit", list(CALLBACK_CASES.values()), ids=list(CALLBACK_CASES))
def test_callback_of_a_login_in_flight_refuses_hostile_parameters(api, live, oauth, root, edit):
    api.register(issuer=oauth.issuer, authorization_response_iss_parameter_supported=True)
    oauth.configure(sendIss=True)
    before = vault_tree(root)
    login = in_flight(api)
    answer = send(live, "GET", b"/callback?" + encode(edit(login)), Cookie=login.cookie)
    assert_safe(answer, live, status=lambda s: s == 400)
    assert answer.header("Content-Type").startswith("text/html")
    assert token_requests(oauth) == 0
    assert_untouched(root, before, login.pending)


def test_a_refused_answer_cannot_be_retried_into_a_redemption(api, live, oauth, root):
    """A refused callback after consumption (error, bad code) finishes the login: the right
    answer sent afterwards is refused too, so a hostile first try burns the login."""
    before = vault_tree(root)
    login = in_flight(api)
    first = send(live, "GET", b"/callback?" + encode(replace(login.query, b"code", BIG)), Cookie=login.cookie)
    assert_safe(first, live)
    retry = send(live, "GET", b"/callback?" + encode(login.query), Cookie=login.cookie)
    assert_safe(retry, live)
    assert token_requests(oauth) == 0
    assert_untouched(root, before, login.pending)


# -- bad paths: the login link, the callback, the settings UI, the API ----------------------------

SEGMENTS = {
    "CRLF": INJECT,
    "10 kB": BIG,
    "%ff%fe": b"%ff%fe",
    "raw 0xff": b"\xff\xfe",
    "NUL": b"%00",
    "script": b"%3Cscript%3Ealert(1)%3C%2Fscript%3E",
}
PATHS = {
    # (method, path with {} for the hostile segment, who asks)
    "login link": ("GET", b"/login/{lid}{}", None),
    "callback": ("GET", b"/callback{}?state=x", None),
    "UI edit provider": ("GET", b"/settings/providers/{}/edit", "ui"),
    "UI delete provider": ("POST", b"/settings/providers/{}/delete", "ui"),
    "UI update provider": ("POST", b"/settings/providers/{}", "ui"),
    "UI delete secret": ("GET", b"/settings/secrets/{}/delete", "ui"),
    "UI refresh secret": ("POST", b"/settings/secrets/{}/refresh", "ui"),
    "UI reconnect secret": ("POST", b"/settings/secrets/{}/reconnect", "ui"),
    "API get provider": ("GET", b"/v1/providers/{}", "api"),
    "API put provider": ("PUT", b"/v1/providers/{}", "api"),
    "API delete provider": ("DELETE", b"/v1/providers/{}", "api"),
    "API get secret": ("GET", b"/v1/secrets/{}", "api"),
    "API delete secret": ("DELETE", b"/v1/secrets/{}", "api"),
    "API token": ("GET", b"/v1/secrets/{}/token?environment=production", "api"),
    "API refresh": ("POST", b"/v1/secrets/{}/refresh", "api"),
}


@pytest.mark.parametrize("segment", list(SEGMENTS.values()), ids=list(SEGMENTS))
@pytest.mark.parametrize("door", list(PATHS.values()), ids=list(PATHS))
def test_a_hostile_path_segment_is_refused(api, live, oauth, tokens, root, door, segment):
    method, template, who = door
    link = start(api)
    lid = link.rsplit("/", 1)[1]
    target = template.replace(b"{lid}", lid.encode()).replace(b"{}", segment)
    headers, body = {}, b""
    if who == "ui":
        session = ui(live, tokens.admin)
        headers = {"Cookie": session.cookie, "Content_Type": FORM}
        body = session.form({"client_id": "x"}) if method == "POST" else b""
    before = vault_tree(root)  # the UI session, once logged in, is part of the setup
    if who == "api":
        headers = {"X_Vault_Token": tokens.admin, "Content_Type": JSON}
        body = b'{"client_id": "x"}' if method == "PUT" else b""
    answer = send(live, method, target, body, **headers)
    assert_safe(answer, live)
    assert_untouched(root, before)
    pending = root.secrets.kv.v2.read_secret_version(
        path=f"oauth-sidecar/pending/{lid}", mount_point="secret", raise_on_deleted_version=True
    )["data"]["data"]
    assert pending["binding"] == ""  # the link was not opened by the hostile request


# -- bad JSON at the API -------------------------------------------------------------------------------


def secret_body(**fields) -> bytes:
    return json.dumps({"name": "sheets", "provider": "mock", **fields}).encode()


def provider_json(oauth, **fields) -> bytes:
    return json.dumps(oauth.registration(**fields)).encode()


def reflected(case: tuple) -> object:
    return case


API_BODIES = {
    # POST /v1/secrets
    "secret: name 10 kB": ("POST", "/v1/secrets", lambda o: secret_body(name=BIG_TEXT)),
    "secret: provider 10 kB": ("POST", "/v1/secrets", lambda o: secret_body(provider=BIG_TEXT)),
    "secret: name CRLF": ("POST", "/v1/secrets", lambda o: secret_body(name="sheets" + INJECT_TEXT)),
    "secret: provider CRLF": ("POST", "/v1/secrets", lambda o: secret_body(provider="mock" + INJECT_TEXT)),
    "secret: environment CRLF": reflected(
        ("POST", "/v1/secrets", lambda o: secret_body(environments=["production" + INJECT_TEXT])),
    ),
    "secret: environment script": reflected(
        ("POST", "/v1/secrets", lambda o: secret_body(environments=[SCRIPT.decode()])),
    ),
    "secret: unknown field named script": reflected(
        ("POST", "/v1/secrets", lambda o: secret_body(**{SCRIPT.decode(): 1})),
    ),
    "secret: invalid scope with script": reflected(
        ("POST", "/v1/secrets", lambda o: secret_body(scopes=[SCRIPT.decode() + '"'])),
    ),
    "secret: scope 10 kB": ("POST", "/v1/secrets", lambda o: secret_body(scopes=[BIG_TEXT])),
    "secret: scope with NUL": ("POST", "/v1/secrets", lambda o: secret_body(scopes=["openid\x00"])),
    "secret: name script": ("POST", "/v1/secrets", lambda o: secret_body(name=SCRIPT.decode())),
    "secret: invalid UTF-8": ("POST", "/v1/secrets", lambda o: b'{"name": "sh\xff\xfeets", "provider": "mock"}'),
    "secret: Latin-1": ("POST", "/v1/secrets", lambda o: b'{"name": "caf\xe9", "provider": "mock"}'),
    "secret: UTF-8 overlong": ("POST", "/v1/secrets", lambda o: b'{"name": "\xc0\xaf", "provider": "mock"}'),
    # PUT /v1/providers/mock (the registered one stays as it was)
    "provider: client_id 10 kB": ("PUT", "/v1/providers/mock", lambda o: provider_json(o, client_id=BIG_TEXT)),
    "provider: client_secret 10 kB": (
        "PUT", "/v1/providers/mock", lambda o: provider_json(o, client_secret=BIG_TEXT),
    ),
    "provider: token_url 10 kB": (
        "PUT", "/v1/providers/mock", lambda o: provider_json(o, token_url=o.issuer + "/" + BIG_TEXT),
    ),
    "provider: client_id CRLF": (
        "PUT", "/v1/providers/mock", lambda o: provider_json(o, client_id="id" + INJECT_TEXT),
    ),
    "provider: client_secret CRLF": (
        "PUT", "/v1/providers/mock", lambda o: provider_json(o, client_secret="s" + INJECT_TEXT),
    ),
    "provider: authorization_url CRLF": (
        "PUT", "/v1/providers/mock", lambda o: provider_json(o, authorization_url=o.issuer + "/a" + INJECT_TEXT),
    ),
    "provider: invalid scope with script": reflected(
        ("PUT", "/v1/providers/mock", lambda o: provider_json(o, scopes=SCRIPT.decode() + "\\")),
    ),
    "provider: extra param key with script": reflected(
        ("PUT", "/v1/providers/mock", lambda o: provider_json(o, extra_authorize_params={SCRIPT.decode() + "\n": "x"})),
    ),
    "provider: extra param CRLF": (
        "PUT", "/v1/providers/mock", lambda o: provider_json(o, extra_authorize_params={"prompt": INJECT_TEXT}),
    ),
    "provider: invalid UTF-8": (
        "PUT", "/v1/providers/mock", lambda o: provider_json(o, client_id="ID").replace(b'"ID"', b'"\xff\xfe"'),
    ),
    "provider: Latin-1": (
        "PUT", "/v1/providers/mock", lambda o: provider_json(o, client_id="ID").replace(b'"ID"', b'"caf\xe9"'),
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(API_BODIES.values()), ids=list(API_BODIES))
def test_the_api_refuses_hostile_json(api, live, oauth, tokens, root, case):
    method, path, body = case
    before = vault_tree(root)
    answer = send(live, method, path, body(oauth), X_Vault_Token=tokens.admin, Content_Type=JSON)
    assert_safe(answer, live, status=lambda s: s == 400)
    assert answer.header("Content-Type") == "application/json"
    assert_untouched(root, before)


def test_crlf_in_scopes_only_separates_scopes(api, live, oauth, tokens, root):
    """Scopes are one pasted string split on whitespace: CR LF is a separator, so the value is
    accepted as separate RFC 6749 scope-tokens and nothing of it reaches a header raw."""
    crlf = "openid\r\nSet-Cookie: x=1"
    admin = {"X_Vault_Token": tokens.admin, "Content_Type": JSON}
    put = send(live, "PUT", "/v1/providers/mock", provider_json(oauth, scopes=crlf), **admin)
    assert_safe(put, live, status=lambda s: s == 200)
    created = send(live, "POST", "/v1/secrets", secret_body(scopes=crlf), **admin)
    assert_safe(created, live, status=lambda s: s == 201)
    lid = created.text.split("/login/", 1)[1].split('"', 1)[0]
    pending = root.secrets.kv.v2.read_secret_version(
        path=f"oauth-sidecar/pending/{lid}", mount_point="secret", raise_on_deleted_version=True
    )["data"]["data"]
    assert pending["scopes"] == ["openid", "Set-Cookie:", "x=1"]
    opened = send(live, "GET", f"/login/{lid}")
    assert_safe(opened, live, status=lambda s: s == 302, away=pending["redirect_to"])
    assert "scope=openid+Set-Cookie%3A+x%3D1&" in opened.header("Location")


# -- bad forms in the settings UI -----------------------------------------------------------------------


def provider_form(oauth, **fields) -> dict[str, str]:
    return {
        "name": "other",
        "client_id": "id",
        "client_secret": "s",
        "authorization_url": f"{oauth.issuer}/authorize",
        "token_url": f"{oauth.issuer}/token",
        "scopes": "openid",
        **fields,
    }


UI_FORMS = {
    # POST /settings/providers (a new provider), /settings/providers/mock (an update), /settings/secrets
    "add provider: name CRLF": ("/settings/providers", lambda o: provider_form(o, name="other" + INJECT_TEXT)),
    # digits to str.isdigit() that int() refuses (superscript two, circled one): once a 500
    "add provider: refresh margin ²": ("/settings/providers", lambda o: provider_form(o, refresh_margin="\u00b2")),
    "add provider: lifetime ①": ("/settings/providers", lambda o: provider_form(o, max_token_lifetime="\u2460")),
    "add provider: name 10 kB": ("/settings/providers", lambda o: provider_form(o, name=BIG_TEXT)),
    "add provider: name script": ("/settings/providers", lambda o: provider_form(o, name=SCRIPT.decode())),
    "add provider: client_id CRLF": ("/settings/providers", lambda o: provider_form(o, client_id="i" + INJECT_TEXT)),
    "add provider: client_id 10 kB": ("/settings/providers", lambda o: provider_form(o, client_id=BIG_TEXT)),
    "add provider: token_url CRLF": (
        "/settings/providers", lambda o: provider_form(o, token_url=o.issuer + "/t" + INJECT_TEXT),
    ),
    "add provider: invalid scope with script": (
        "/settings/providers", lambda o: provider_form(o, scopes=SCRIPT.decode() + '"'),
    ),
    "add provider: extra param CRLF": (
        "/settings/providers", lambda o: provider_form(o, extra_authorize_params="prompt=" + INJECT_TEXT),
    ),
    "add provider: Latin-1 body": (
        "/settings/providers", lambda o: f"name=caf\xe9&client_id=id&client_secret=s&scopes=openid"
        f"&authorization_url={o.issuer}/authorize&token_url={o.issuer}/token".encode("latin-1"),
    ),
    "update provider: client_id CRLF": (
        "/settings/providers/mock", lambda o: provider_form(o, client_id="i" + INJECT_TEXT),
    ),
    "update provider: Latin-1 client_id": (
        "/settings/providers/mock", lambda o: f"client_id=caf\xe9&client_secret=s&scopes=openid"
        f"&authorization_url={o.issuer}/authorize&token_url={o.issuer}/token".encode("latin-1"),
    ),
    "add secret: name CRLF": ("/settings/secrets", lambda o: {"name": "sheets" + INJECT_TEXT, "provider": "mock",
                                                              "environments": "production"}),
    "add secret: name 10 kB": ("/settings/secrets", lambda o: {"name": BIG_TEXT, "provider": "mock",
                                                               "environments": "production"}),
    "add secret: provider 10 kB": ("/settings/secrets", lambda o: {"name": "sheets", "provider": BIG_TEXT,
                                                                   "environments": "production"}),
    "add secret: environment CRLF": ("/settings/secrets", lambda o: {"name": "sheets", "provider": "mock",
                                                                     "environments": "production" + INJECT_TEXT}),
    "add secret: name script": ("/settings/secrets", lambda o: {"name": SCRIPT.decode(), "provider": "mock",
                                                                "environments": "production"}),
    "add secret: Latin-1 body": ("/settings/secrets", lambda o: b"name=caf\xe9&provider=mock&environments=production"),
    "add secret: %ff%fe": ("/settings/secrets", lambda o: b"name=%ff%fe&provider=mock&environments=production"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(UI_FORMS.values()), ids=list(UI_FORMS))
def test_the_settings_ui_refuses_hostile_forms(api, live, oauth, tokens, root, case):
    path, fields = case
    session = ui(live, tokens.admin)
    before = vault_tree(root)
    body = session.form(fields(oauth))
    answer = send(live, "POST", path, body, Cookie=session.cookie, Content_Type=FORM)
    # werkzeug drops a form body that is not UTF-8 whole: no CSRF token then, so 403
    assert_safe(answer, live, status=lambda s: s == (403 if b"\xe9" in body else 400))
    assert answer.header("Content-Type").startswith("text/html")
    assert_untouched(root, before, "oauth-sidecar/sessions/")  # the session keeps a typed client secret


LOGIN_TOKENS = {
    "CRLF": INJECT,
    "10 kB": BIG,
    "%ff%fe": b"%ff%fe",
    "Latin-1, raw": b"s.caf\xe9",  # werkzeug drops a form body that is not UTF-8: no CSRF token, 403
    "Latin-1, percent-encoded": b"s.caf%e9",
    "token then CRLF": b"{token}" + INJECT,
    "token twice": b"{token}&vault_token={token}",
}


@pytest.mark.parametrize("value", list(LOGIN_TOKENS.values()), ids=list(LOGIN_TOKENS))
def test_the_settings_login_refuses_hostile_tokens(api, live, tokens, root, value):
    session = ui(live)
    before = vault_tree(root)
    body = session.form(b"vault_token=" + value.replace(b"{token}", tokens.admin.encode()))
    answer = send(live, "POST", "/settings/login", body, Cookie=session.cookie, Content_Type=FORM)
    if value == LOGIN_TOKENS["token twice"]:  # the same token twice is still that token: logged in
        assert_safe(answer, live, status=lambda s: s == 303)
        assert answer.header("Location") == "/settings"
        assert [p.split("/")[1] for p in changed_paths(root, before)] == ["sessions"]  # the new session
        return
    elif value == LOGIN_TOKENS["Latin-1, raw"]:
        assert_safe(answer, live, status=lambda s: s == 403)
        assert "did not come from this page" in answer.text
    else:
        assert_safe(answer, live, status=lambda s: s == 401)
    assert_untouched(root, before)


CSRF_CASES = {
    "UTF-8": b"csrf_token=%c3%a9",
    "raw 0xff": b"csrf_token=\xff\xfe",  # werkzeug drops a form body that is not UTF-8 whole
    "forged, then the right one": b"csrf_token=forged&csrf_token={csrf}",
    "CRLF": b"csrf_token={csrf}" + INJECT,
    "10 kB": b"csrf_token=" + BIG,
}
CSRF_DOORS = ["/settings/login", "/settings/logout", "/settings/providers", "/settings/secrets"]


@pytest.mark.parametrize("csrf", list(CSRF_CASES.values()), ids=list(CSRF_CASES))
@pytest.mark.parametrize("path", CSRF_DOORS)
def test_a_hostile_csrf_token_is_refused(api, live, oauth, tokens, root, path, csrf):
    """Every form post checks the CSRF token first: a hostile one is a 403, nothing else happens."""
    session = ui(live, tokens.admin)
    before = vault_tree(root)
    rest = provider_form(oauth, name="sheets") | {"provider": "mock", "vault_token": tokens.admin}
    body = csrf.replace(b"{csrf}", session.csrf.encode()) + b"&" + urlencode_form(rest)
    answer = send(live, "POST", path, body, Cookie=session.cookie, Content_Type=FORM)
    assert_safe(answer, live, status=lambda s: s == 403)
    assert "did not come from this page" in answer.text
    assert_untouched(root, before)


def urlencode_form(fields: dict[str, str]) -> bytes:
    return "&".join(f"{k}={quote(v, safe='')}" for k, v in fields.items()).encode()


def test_an_undecodable_escape_in_code_is_passed_on_as_opaque_text(api, live, oauth, root):
    """werkzeug keeps `%ff%fe` as the literal text `%FF%FE`, a syntactically valid code (VSCHAR):
    it is redeemed once, the provider refuses it, and the sidecar reports that refusal (400, as
    test_logins.test_a_code_the_provider_refuses_is_reported), writing nothing."""
    before = vault_tree(root)
    login = in_flight(api)
    answer = send(live, "GET", b"/callback?" + encode(replace(login.query, b"code", b"%ff%fe")), Cookie=login.cookie)
    assert answer.status == 400 and "Login refused" in answer.text
    assert token_requests(oauth) == 1 and "invalid_request" in answer.text
    assert b"Traceback" not in answer.body and not any(b"x=1" in line for line in answer.lines)
    assert_untouched(root, before, login.pending)


# -- no redirect ever leaves the sidecar ------------------------------------------------------------------


def redirect_params(target: str) -> bytes:
    return b"&".join(f"{p}={quote(target, safe='')}".encode() for p in REDIRECT_PARAMS)


@dataclass
class Door:
    """A request to make with `next`, `return_to`, `redirect_uri` and `return` added (in the query,
    and in the form body of a POST), what it answers, and what it may write."""

    method: str
    path: str
    status: int
    form: Callable[..., dict[str, str]] | None = None
    session: str | None = None  # None, "form" (CSRF only) or "admin" (logged in)
    login: str | None = None  # "api" or "ui": the callback of a login in flight; "link": its login link
    fail: bool = False  # the callback carries the provider's error
    writes: tuple[str, ...] = ()


CONNECTED = ("oauth/development/sheets", "oauth/production/sheets", "oauth-sidecar/grants/sheets")
DOORS = {
    "callback, API login, connected": Door("GET", "/callback", 200, login="api", writes=CONNECTED),
    "callback, API login, refused": Door("GET", "/callback", 400, login="api", fail=True),
    "callback, settings login, connected": Door("GET", "/callback", 303, login="ui", writes=CONNECTED),
    "callback, settings login, refused": Door("GET", "/callback", 303, login="ui", fail=True),
    "callback, no login": Door("GET", "/callback", 400),
    "login link": Door("GET", "/login/<id>", 302, login="link"),
    "login link, unknown": Door("GET", "/login/" + "0" * 32, 400),
    "settings page, logged out": Door("GET", "/settings", 303),
    "settings login form": Door("GET", "/settings/login", 200),
    "settings login": Door("POST", "/settings/login", 303, form=lambda t, o: {"vault_token": t}, session="form"),
    "settings login, bad token": Door("POST", "/settings/login", 401, form=lambda t, o: {"vault_token": "s.bad"},
                                      session="form"),
    "settings logout": Door("POST", "/settings/logout", 303, form=lambda t, o: {}, session="admin"),
    "UI add secret": Door("POST", "/settings/secrets", 303, session="admin", writes=("oauth-sidecar/pending/",),
                          form=lambda t, o: {"name": "sheets", "provider": "mock", "environments": "production"}),
    "UI add provider": Door("POST", "/settings/providers", 303, form=lambda t, o: provider_form(o), session="admin",
                            writes=("oauth-sidecar/providers/other", "oauth-sidecar/pins/other")),
    "UI add provider, refused": Door("POST", "/settings/providers", 400, session="admin",
                                     form=lambda t, o: provider_form(o, token_url="http://x.example/t")),
    "UI refresh, unknown secret": Door("POST", "/settings/secrets/nope/refresh", 303, form=lambda t, o: {},
                                       session="admin"),
}  # fmt: skip


@pytest.mark.parametrize("target", EVIL)
@pytest.mark.parametrize("door", list(DOORS.values()), ids=list(DOORS))
def test_no_redirect_leaves_the_sidecar(api, live, oauth, tokens, root, door, target):
    before = vault_tree(root)
    extra = redirect_params(target)
    headers: dict[str, str] = {}
    path, away = door.path, None
    if door.login == "link":
        link = start(api)
        path = urlsplit(link).path
        away = root.secrets.kv.v2.read_secret_version(
            path=f"oauth-sidecar/pending/{path.rsplit('/', 1)[1]}", mount_point="secret", raise_on_deleted_version=True
        )["data"]["data"]["redirect_to"]
    elif door.login:
        browser = requests.Session()
        if door.login == "ui":  # started from the settings page: the answer is a banner there
            browser = ui(live, tokens.admin).browser
            csrf = CSRF.search(browser.get(f"{live.url}/settings/secrets/new", timeout=10).text)[1]
            form = {"csrf_token": csrf, "name": "sheets", "provider": "mock", "environments": "production"}
            started = browser.post(f"{live.url}/settings/secrets", data=form, allow_redirects=False, timeout=10)
            login = in_flight(api, browser, started.headers["Location"])
        else:
            login = in_flight(api, browser)
        query = login.query + ([(b"error", b"access_denied")] if door.fail else [])
        path = "/callback?" + encode(query).decode()
        headers["Cookie"] = login.cookie
    session = None
    if door.session:
        session = ui(live, tokens.admin if door.session == "admin" else None)
        headers["Cookie"] = session.cookie
    sep = "&" if "?" in path else "?"
    body = b""
    if door.form is not None:
        assert session is not None
        body = session.form(door.form(tokens.admin, oauth)) + b"&" + extra
        headers["Content_Type"] = FORM
    answer = send(live, door.method, path.encode() + sep.encode() + extra, body, **headers)
    assert_safe(answer, live, status=lambda s: s == door.status, away=away)
    if away:  # the login link sends the browser to the provider, to the URL recorded at the start
        assert answer.header("Location") == away and away.startswith(f"{oauth.issuer}/authorize?")
    # UI sessions are the test's own logins (and their idle clocks): bookkeeping, not a change.
    assert_untouched(root, before, *door.writes, "oauth-sidecar/pending/", "oauth-sidecar/sessions/")
    if door.fail or not door.login:
        assert token_requests(oauth) == 0


DEEP_ARRAY = "[" * 60_000  # unclosed: the parser recurses until it gives up
DEEP_OBJECT = '{"a":' * 13_000  # the same as an object, just under the 64 KiB body limit
NESTED = '{"a":' * 40 + "1" + "}" * 40  # valid JSON, parsed, but deeper than any request needs


@pytest.mark.parametrize("body", [DEEP_ARRAY, DEEP_OBJECT, NESTED, '{"a":' * 60_000], ids=lambda b: b[:12])
@pytest.mark.parametrize(("method", "path"), [("POST", "/v1/secrets"), ("PUT", "/v1/providers/x")])
def test_deeply_nested_json_is_a_400_not_a_500(client, admin, root, method, path, body):
    before = vault_tree(root)
    response = client.open(path, method=method, data=body, content_type="application/json", headers=admin)
    # '{"a":' * 60000 is 300 kB: refused for its size before it is parsed.
    assert response.status_code == (413 if len(body) > 64 * 1024 else 400), response.get_data(as_text=True)
    assert response.is_json and set(response.json["error"]) >= {"code", "message"}
    assert "Traceback" not in response.get_data(as_text=True)
    assert vault_tree(root) == before
