"""UI sessions and forged posts, as a person (or an attacker) would meet them: real Chromium, real
HTTP, real OpenBao.

The regressions: the session cookie used to be a Flask signed cookie that carried the person's
Vault token readably and opened /settings for 31 days after "Log out"; and with no session, a
cross-site post of `csrf_token=%00` logged the victim's browser in as the attacker (the old check
compared the form's token with the session's, defaulting to "\\0").
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import hvac
import pytest
import requests
from playwright.sync_api import Page, expect
from werkzeug.serving import make_server

from sidecar.config import Settings
from sidecar.devvault import free_port
from sidecar.providers import build as build_provider
from sidecar.store import Store
from sidecar.web import QuietHandler, create_app
from sidecar.web import sessions as web_sessions

from .helpers import LiveSidecar, bao, bao_kv_get, provider_body, provider_client, vault_tree

COOKIE = "oauth_sidecar_session"
LOGIN_COOKIE = "oauth_sidecar_login_csrf"
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


# -- helpers -----------------------------------------------------------------------------------------


def session_records(root: hvac.Client) -> list[str]:
    """The UI sessions in Vault, by their record names (hashes of the cookie's id)."""
    return sorted(path for path in vault_tree(root) if path.startswith("oauth-sidecar/sessions/"))


def record_of(sid: str) -> str:
    return f"oauth-sidecar/sessions/{hashlib.sha256(sid.encode()).hexdigest()}"


def log_in(page: Page, live: LiveSidecar, token: str) -> None:
    page.goto(f"{live.url}/settings")
    expect(page).to_have_url(f"{live.url}/settings/login")
    page.get_by_label("Vault token").fill(token)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="OAuth 2.0 providers")).to_be_visible()


def browser_cookie(page: Page, live: LiveSidecar, name: str = COOKIE) -> dict | None:
    return next((c for c in page.context.cookies(live.url) if c["name"] == name), None)


def http_login(url: str, token: str) -> requests.Session:
    """A non-browser client logging in through the form: GET it (login cookie + its token), POST it."""
    browser = requests.Session()
    form = browser.get(f"{url}/settings/login", timeout=10)
    answer = browser.post(
        f"{url}/settings/login",
        data={"vault_token": token, "csrf_token": CSRF.search(form.text)[1]},
        allow_redirects=False,
        timeout=10,
    )
    assert answer.status_code == 303, answer.text
    assert answer.headers["Location"] == "/settings"
    assert browser.cookies.get(COOKIE)
    return browser


def lands_on(browser: requests.Session, url: str) -> str:
    """Where GET /settings ends up, after its redirects: /settings (the page) or /settings/login."""
    answer = browser.get(f"{url}/settings", timeout=10)
    assert answer.status_code in (200, 401), answer.text
    return urlsplit(answer.url).path


def settings_csrf(browser: requests.Session, url: str) -> str:
    page = browser.get(f"{url}/settings", timeout=10)
    assert urlsplit(page.url).path == "/settings"
    return CSRF.search(page.text)[1]


@contextmanager
def sidecar(vault, tokens, **env: str) -> Iterator[LiveSidecar]:
    """A sidecar of its own over real HTTP, as the `live` fixture, with other settings."""
    port = free_port()
    settings = Settings.from_env(
        {
            "VAULT_ADDR": vault.addr,
            "VAULT_TOKEN": tokens.sidecar,
            "SIDECAR_PUBLIC_URL": f"http://127.0.0.1:{port}",
            **env,
        }
    )
    server = make_server("127.0.0.1", port, create_app(settings), threaded=True, request_handler=QuietHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield LiveSidecar(settings.public_url, settings)
    finally:
        server.shutdown()
        thread.join(timeout=10)


def decodings(value: str) -> list[bytes]:
    """Everything the cookie's value could be hiding: itself, and each `.`-separated segment (and
    the whole) read as base64 or URL-safe base64, zlib-inflated where it inflates."""
    found = [value.encode()]
    for part in {value, *value.split(".")}:
        for decode in (base64.urlsafe_b64decode, base64.b64decode):
            try:
                raw = decode(part + "=" * (-len(part) % 4))
            except (binascii.Error, ValueError):
                continue
            found.append(raw)
            with suppress(zlib.error):
                found.append(zlib.decompress(raw))
    return found


def provider_exists(root: hvac.Client, name: str) -> bool:
    return f"oauth-sidecar/providers/{name}" in vault_tree(root)


@pytest.fixture
def provider(settings, tokens, root) -> str:
    """A provider `mock` in Vault, put there with the operator's token."""
    Store(settings, tokens.admin).put_provider(build_provider("mock", provider_body(), provider_client()))
    assert provider_exists(root, "mock")
    return "mock"


# -- an attacker's site: another origin on loopback ---------------------------------------------------


class AttackerSite:
    """http://localhost:<port>: another site than the sidecar at http://127.0.0.1:<port>."""

    def __init__(self) -> None:
        self.html = b""
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(site.html)))
                self.end_headers()
                self.wfile.write(site.html)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://localhost:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def auto_post(self, action: str, fields: dict[str, str]) -> str:
        """A page that posts `fields` to `action` as soon as it loads; values are set by script, so
        any character (a NUL too) goes into the form as given."""
        inputs = "".join(f'<input type="hidden" name="{name}">' for name in fields)
        script = "".join(f"f.elements[{json.dumps(k)}].value = {json.dumps(v)};" for k, v in fields.items())
        self.html = (
            f'<!doctype html><title>Win a prize</title><form method="post" action="{action}">{inputs}</form>'
            f"<script>const f = document.forms[0]; {script} f.submit();</script>"
        ).encode()
        return self.url

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def attacker() -> Iterator[AttackerSite]:
    site = AttackerSite()
    yield site
    site.close()


def forged_post(page: Page, site_url: str, target: str):
    """Open the attacker's page; return the sidecar's answer to the post it makes, and the request."""
    with page.expect_response(lambda r: r.url == target and r.request.method == "POST") as answer:
        page.goto(site_url)
    return answer.value


# -- 1. the cookie holds nothing, and "Log out" ends it everywhere ----------------------------------


def test_the_session_cookie_holds_no_token_and_is_httponly_lax(page: Page, live, tokens, root):
    log_in(page, live, tokens.admin)
    cookie = browser_cookie(page, live)
    assert cookie is not None, page.context.cookies()
    value = cookie["value"]
    token = tokens.admin.encode()
    for found in decodings(value):
        assert token not in found, "the Vault token can be read out of the session cookie"
        assert b"vault_token" not in found and b"csrf_token" not in found, found
    # Not a Flask/itsdangerous signed session (payload.timestamp.signature), just an opaque id.
    assert "." not in value
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", value), value
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Lax"
    assert cookie["path"] == "/"
    assert cookie["secure"] is False  # plain http here; see the https test for Secure
    assert all(tokens.admin not in c["value"] for c in page.context.cookies())
    # What the browser holds names the one record in Vault, by its hash only.
    assert session_records(root) == [record_of(value)]


def test_a_replayed_cookie_after_logout_opens_nothing(page: Page, chromium, live, tokens, root):
    log_in(page, live, tokens.admin)
    old = browser_cookie(page, live)
    assert old is not None and session_records(root) == [record_of(old["value"])]

    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url(f"{live.url}/settings/login?notice=logged_out")
    expect(page.get_by_role("status")).to_have_text("You are logged out.")
    assert browser_cookie(page, live) is None  # the browser was told to forget it
    assert session_records(root) == []  # and the record is gone from Vault

    thief = chromium.new_context()
    try:
        thief.add_cookies([{"name": COOKIE, "value": old["value"], "url": live.url}])
        replay = thief.new_page()
        replay.goto(f"{live.url}/settings")
        expect(replay).to_have_url(f"{live.url}/settings/login")
        expect(replay.get_by_role("heading", name="Log in")).to_be_visible()
        expect(replay.get_by_role("heading", name="OAuth 2.0 providers")).to_have_count(0)
    finally:
        thief.close()
    assert session_records(root) == []


# -- 2. the id changes at login ---------------------------------------------------------------------------


@pytest.mark.parametrize("planted", ["made-up", "attacker's own session"])
def test_a_session_id_planted_before_login_is_not_the_one_logged_in(page: Page, live, tokens, root, planted):
    """Session fixation: whatever id the browser held before logging in, the logged-in session has
    a new one, and the planted id opens nothing (not the victim's session, not even the attacker's)."""
    page.goto(f"{live.url}/settings/login")
    assert browser_cookie(page, live) is None  # no session before login: nothing to fix on
    if planted == "made-up":
        fixed = "attacker-chose-this-id-0123456789abcdefghijk"
        attacker = requests.Session()
        attacker.cookies.set(COOKIE, fixed)
    else:
        attacker = http_login(live.url, tokens.reader["development"])
        fixed = attacker.cookies[COOKIE]
        assert session_records(root) == [record_of(fixed)]
    page.context.add_cookies([{"name": COOKIE, "value": fixed, "url": live.url}])

    page.goto(f"{live.url}/settings/login")
    page.get_by_label("Vault token").fill(tokens.admin)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="OAuth 2.0 providers")).to_be_visible()

    after = browser_cookie(page, live)
    assert after is not None and after["value"] != fixed
    assert session_records(root) == [record_of(after["value"])]  # the planted one's record is gone
    assert lands_on(attacker, live.url) == "/settings/login"


def test_logging_in_again_gives_a_new_id_and_ends_the_old_one(page: Page, live, tokens, root):
    log_in(page, live, tokens.reader["development"])
    first = browser_cookie(page, live)["value"]
    page.goto(f"{live.url}/settings/login")
    page.get_by_label("Vault token").fill(tokens.admin)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="OAuth 2.0 providers")).to_be_visible()
    second = browser_cookie(page, live)["value"]
    assert second != first
    assert session_records(root) == [record_of(second)]


# -- 3. sessions end: idle, absolute lifetime, the Vault token's own TTL ------------------------------


def wait_until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.monotonic()))


def test_an_idle_session_sends_the_browser_back_to_the_login_form(vault, tokens, root):
    """The idle end is measured from the session's last write (login, or a use at most every
    TOUCH_EVERY or half the idle timeout): left alone for SIDECAR_SESSION_IDLE seconds, /settings
    is the login form."""
    with sidecar(vault, tokens, SIDECAR_SESSION_IDLE="2") as own:
        browser = http_login(own.url, tokens.admin)
        logged_in = time.monotonic()
        assert lands_on(browser, own.url) == "/settings"
        assert len(session_records(root)) == 1
        wait_until(logged_in + 2.5)
        assert lands_on(browser, own.url) == "/settings/login"
        assert session_records(root) == []  # the ended session's record is deleted on sight
        assert COOKIE not in browser.cookies  # and the browser is told to drop its cookie


def test_using_the_page_keeps_a_session_past_the_idle_timeout(vault, tokens, root, monkeypatch):
    """Each use moves the idle end on (written back at most every TOUCH_EVERY, here shortened below
    the idle timeout so a test can see it); then the same idle time without use ends it."""
    monkeypatch.setattr(web_sessions, "TOUCH_EVERY", timedelta(seconds=0.5))
    with sidecar(vault, tokens, SIDECAR_SESSION_IDLE="2") as own:
        browser = http_login(own.url, tokens.admin)
        start = time.monotonic()
        while time.monotonic() - start < 5:  # well past the 2 s idle timeout, in use all along
            assert lands_on(browser, own.url) == "/settings"
            time.sleep(0.7)
        last_use = time.monotonic()
        wait_until(last_use + 2.5)
        assert lands_on(browser, own.url) == "/settings/login"
        assert session_records(root) == []


def test_a_session_in_use_outlives_a_short_idle_timeout(vault, tokens, root):
    with sidecar(vault, tokens, SIDECAR_SESSION_IDLE="2") as own:
        browser = http_login(own.url, tokens.admin)
        start = time.monotonic()
        while time.monotonic() - start < 5:
            assert lands_on(browser, own.url) == "/settings"
            time.sleep(0.5)


def test_a_session_ends_at_its_lifetime_however_much_it_is_used(vault, tokens, root, monkeypatch):
    """SIDECAR_SESSION_LIFETIME is absolute: a use writes the idle clock back (every request here)
    but never moves the end of the session's lifetime."""
    monkeypatch.setattr(web_sessions, "TOUCH_EVERY", timedelta(0))
    with sidecar(vault, tokens, SIDECAR_SESSION_LIFETIME="4") as own:
        browser = http_login(own.url, tokens.admin)
        logged_in = time.monotonic()
        # The last use starts 1.5 s before the end, so a request slowed by a loaded machine still lands inside.
        while time.monotonic() - logged_in < 2.5:
            assert lands_on(browser, own.url) == "/settings"
            time.sleep(0.3)
        wait_until(logged_in + 4.5)
        assert lands_on(browser, own.url) == "/settings/login"
        assert session_records(root) == []


def test_a_vault_token_that_expires_ends_the_session(vault, live, tokens, root):
    """A token living 3 s, far less than the idle (1800 s) and lifetime (28800 s) defaults."""
    short = hvac.Client(url=vault.addr, token=vault.root_token).auth.token.create(policies=["oauth-admin"], ttl="3s")[
        "auth"
    ]["client_token"]
    browser = http_login(live.url, short)
    logged_in = time.monotonic()
    assert lands_on(browser, live.url) == "/settings"
    wait_until(logged_in + 3.5)
    assert lands_on(browser, live.url) == "/settings/login"
    assert session_records(root) == []


# -- 4. https: a __Host- cookie, Secure ---------------------------------------------------------------


def set_cookies(answer) -> dict[str, str]:
    return {header.split("=", 1)[0]: header for header in answer.headers.getlist("Set-Cookie")}


def test_on_https_the_cookies_are_host_prefixed_and_secure(vault, tokens, root):
    public = "https://sidecar.example"
    settings = Settings.from_env(
        {"VAULT_ADDR": vault.addr, "VAULT_TOKEN": tokens.sidecar, "SIDECAR_PUBLIC_URL": public}
    )
    client = create_app(settings).test_client()
    form = client.get("/settings/login", base_url=public)
    login_cookie = set_cookies(form)[f"__Host-{LOGIN_COOKIE}"]
    assert "Secure" in login_cookie and "Path=/" in login_cookie and "Domain" not in login_cookie

    answer = client.post(
        "/settings/login",
        base_url=public,
        data={"vault_token": tokens.admin, "csrf_token": CSRF.search(form.get_data(as_text=True))[1]},
        headers={"Origin": public, "Sec-Fetch-Site": "same-origin"},
    )
    assert answer.status_code == 303, answer.get_data(as_text=True)
    cookies = set_cookies(answer)
    assert COOKIE not in cookies  # never the unprefixed name, which a sibling host could plant
    session = cookies[f"__Host-{COOKIE}"]
    attributes = {a.strip().split("=")[0].lower() for a in session.split(";")[1:]}
    assert {"secure", "httponly", "path", "samesite"} <= attributes
    assert "domain" not in attributes
    assert "Path=/" in session and "SameSite=Lax" in session
    assert len(session_records(root)) == 1

    page = client.get("/settings", base_url=public)
    assert page.status_code == 200
    out = client.post(
        "/settings/logout",
        base_url=public,
        data={"csrf_token": CSRF.search(page.get_data(as_text=True))[1]},
        headers={"Origin": public},
    )
    assert out.status_code == 303
    gone = set_cookies(out)[f"__Host-{COOKIE}"]
    assert "Secure" in gone and "Expires=Thu, 01 Jan 1970" in gone  # a __Host- cookie is only deleted Secure
    assert session_records(root) == []


# -- 5. login CSRF and forged posts from another site, in a real browser -------------------------------


@pytest.mark.parametrize("kind", ["NUL", "attacker's own form token"])
def test_another_site_cannot_log_the_browser_in_as_the_attacker(page: Page, live, tokens, root, attacker, kind):
    """The old code compared the posted token with the session's, "\\0" when there was none:
    `csrf_token=%00` logged the victim in as the attacker."""
    # Or the attacker fetched the login form themself: its token matches their cookie, not the victim's.
    own = CSRF.search(requests.get(f"{live.url}/settings/login", timeout=10).text)[1]
    csrf = "\0" if kind == "NUL" else own
    target = f"{live.url}/settings/login"
    site = attacker.auto_post(target, {"vault_token": tokens.reader["development"], "csrf_token": csrf})
    assert urlsplit(site).netloc != urlsplit(live.url).netloc  # another origin, another site

    answer = forged_post(page, site, target)
    assert answer.request.header_value("origin") == site.rstrip("/")  # the browser says where it came from
    assert answer.request.header_value("sec-fetch-site") == "cross-site"
    sent = answer.request.post_data or ""
    assert ("csrf_token=%00" in sent) if kind == "NUL" else (f"csrf_token={csrf}" in sent), sent
    assert answer.status == 403
    assert not [c for c in answer.headers_array() if c["name"].lower() == "set-cookie"]
    assert browser_cookie(page, live) is None
    assert session_records(root) == []

    page.goto(f"{live.url}/settings")
    expect(page).to_have_url(f"{live.url}/settings/login")
    expect(page.get_by_role("heading", name="Log in")).to_be_visible()
    assert session_records(root) == []


def test_another_site_cannot_delete_a_provider_through_a_logged_in_browser(
    page: Page, live, tokens, root, attacker, provider
):
    log_in(page, live, tokens.admin)
    target = f"{live.url}/settings/providers/{provider}/delete"
    site = attacker.auto_post(target, {"csrf_token": "\0"})
    answer = forged_post(page, site, target)
    assert answer.request.header_value("origin") == site.rstrip("/")
    assert answer.status == 403
    assert provider_exists(root, provider)
    page.goto(f"{live.url}/settings")  # and the victim is still logged in, the provider listed
    expect(page.get_by_role("row", name=provider)).to_be_visible()


# -- 6. the same over raw HTTP: Origin and Sec-Fetch-Site decide, even with the right token -------------

FOREIGN = {
    "Origin evil.example": {"Origin": "http://evil.example"},
    "Origin null": {"Origin": "null"},
    "Origin another port": {"Origin": "http://127.0.0.1:1"},
    "Sec-Fetch-Site cross-site": {"Sec-Fetch-Site": "cross-site"},
    "Sec-Fetch-Site same-site": {"Sec-Fetch-Site": "same-site"},
}


@pytest.mark.parametrize("headers", list(FOREIGN.values()), ids=list(FOREIGN))
def test_a_post_from_another_site_is_refused_even_with_the_right_token(live, tokens, root, provider, headers):
    browser = http_login(live.url, tokens.admin)
    csrf = settings_csrf(browser, live.url)
    target = f"{live.url}/settings/providers/{provider}/delete"
    answer = browser.post(target, data={"csrf_token": csrf}, headers=headers, allow_redirects=False, timeout=10)
    assert answer.status_code == 403, answer.text
    assert "other sites" in answer.text
    assert provider_exists(root, provider)

    # The same post as a client that sends neither header (curl, a script), or as the UI itself does.
    own = {"Origin": live.url, "Sec-Fetch-Site": "same-origin"} if "Origin" in headers else {}
    answer = browser.post(target, data={"csrf_token": csrf}, headers=own, allow_redirects=False, timeout=10)
    assert answer.status_code == 303, answer.text
    assert not provider_exists(root, provider)


@pytest.mark.parametrize("headers", list(FOREIGN.values()), ids=list(FOREIGN))
def test_a_login_from_another_site_is_refused_even_with_the_right_token(live, tokens, root, headers):
    browser = requests.Session()
    csrf = CSRF.search(browser.get(f"{live.url}/settings/login", timeout=10).text)[1]
    form = {"vault_token": tokens.admin, "csrf_token": csrf}
    answer = browser.post(f"{live.url}/settings/login", data=form, headers=headers, allow_redirects=False, timeout=10)
    assert answer.status_code == 403, answer.text
    assert COOKIE not in answer.cookies
    assert session_records(root) == []

    answer = browser.post(f"{live.url}/settings/login", data=form, allow_redirects=False, timeout=10)
    assert answer.status_code == 303, answer.text
    assert COOKIE in answer.cookies
    assert len(session_records(root)) == 1


@pytest.mark.parametrize("cookie", ["none", "the victim's own"])
def test_a_login_needs_the_token_of_the_browser_s_own_login_cookie(live, tokens, root, cookie):
    """Double submit: the posted token must equal this browser's login cookie, not any valid one."""
    attackers = CSRF.search(requests.get(f"{live.url}/settings/login", timeout=10).text)[1]
    victim = requests.Session()
    if cookie != "none":
        victim.get(f"{live.url}/settings/login", timeout=10)
        assert victim.cookies[LOGIN_COOKIE] != attackers
    answer = victim.post(
        f"{live.url}/settings/login",
        data={"vault_token": tokens.admin, "csrf_token": attackers},
        allow_redirects=False,
        timeout=10,
    )
    assert answer.status_code == 403, answer.text
    assert COOKIE not in victim.cookies
    assert session_records(root) == []


# -- 7. only the sidecar may read sessions --------------------------------------------------------------


def test_sessions_are_readable_by_the_sidecar_alone(vault, live, tokens, root):
    browser = http_login(live.url, tokens.admin)
    sid = browser.cookies[COOKIE]
    (record,) = session_records(root)
    assert record == record_of(sid)
    stored = root.secrets.kv.v2.read_secret_version(path=record, mount_point="secret", raise_on_deleted_version=True)[
        "data"
    ]["data"]
    assert sid not in json.dumps(stored)  # the id the browser holds is stored nowhere, only its hash

    path = f"secret/{record}"
    assert bao_kv_get(vault, tokens.sidecar, path).returncode == 0  # the sidecar's own policy: yes
    for who, token in [("operator", tokens.admin), *((f"reader {e}", t) for e, t in tokens.reader.items())]:
        result = bao_kv_get(vault, token, path)
        assert result.returncode != 0, f"{who} could read a session"
        assert "permission denied" in result.stderr, (who, result.stderr)
        assert sid not in result.stdout and tokens.admin not in result.stdout
        listing = bao(vault, token, "kv", "list", "-format=json", "secret/oauth-sidecar/sessions")
        assert listing.returncode != 0 and "permission denied" in listing.stderr, (who, listing.stderr)


def test_the_stylesheet_loads_at_once_while_vault_is_out(vault, tokens):
    """The login pages (the "being saved" page above all, which exists for Vault outages and reloads
    itself) use the settings stylesheet. A browser with a UI session cookie gets it without the
    session being read from Vault, which would hold it up to the store's patience of 30 s."""
    with sidecar(vault, tokens, VAULT_ADDR=f"http://127.0.0.1:{free_port()}") as cut_off:  # nothing listens
        started = time.monotonic()
        sheet = requests.get(f"{cut_off.url}/settings/static/settings.css", cookies={COOKIE: "a-session"}, timeout=10)
        assert sheet.status_code == 200 and ".banner" in sheet.text
        assert time.monotonic() - started < 3
