"""Connecting a secret end to end: real OpenBao, a real OAuth server, the sidecar over HTTP, and a
cookie-keeping client that follows redirects the way a browser does."""

import json
import logging
import threading
import time
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from sidecar import logins
from sidecar.config import Settings
from sidecar.store import Store
from sidecar.web import create_app

from .helpers import (
    CLIENT_SECRET,
    bao_kv_get,
    callback_url,
    consumed_login,
    grant_record,
    narrow_token,
    sidecar_log,
    start,
    vault_tree,
    views,
    wait_for,
)


def test_connect_end_to_end(api, live, oauth, root, vault, tokens, caplog):
    caplog.set_level(logging.DEBUG)
    page = requests.Session().get(start(api), timeout=30)
    assert page.status_code == 200 and "Connected" in page.text, page.text
    assert page.headers["Cache-Control"] == "no-store" and page.headers["Referrer-Policy"] == "no-referrer"
    assert "secret/oauth/production/sheets" in page.text

    # What apps read: the bao CLI, both environments, equal, and the provider accepts the token.
    out = bao_kv_get(vault, tokens.reader["production"], "secret/oauth/production/sheets")
    assert out.returncode == 0, out.stderr
    production = json.loads(out.stdout)["data"]["data"]
    assert set(production) == {"access_token", "token_type", "expires_at", "scope", "provider", "status"}
    assert views(root) == {"development": production, "production": production}
    assert oauth.accepts(production["access_token"])
    assert (production["provider"], production["status"], production["scope"]) == (
        "mock",
        "active",
        "openid profile email",
    )
    assert production["expires_at"].endswith("Z")

    # What went over the wire: S256 PKCE, the exact redirect URI, Basic client authentication.
    seen = oauth.log()
    authorize = seen["authorize"][0]
    assert authorize["code_challenge_method"] == "S256" and authorize["redirect_uri"] == f"{live.url}/callback"
    assert seen["tokenRequests"] == 1
    token_request = seen["token"][0]
    assert token_request["code_verifier"] and token_request["auth_method"] == "client_secret_basic"
    assert token_request["redirect_uri"] == f"{live.url}/callback"

    grant = grant_record(root)
    assert grant["refresh_token"] and grant["status"] == "active"
    status = api("GET", "/v1/secrets/sheets").json()
    assert status["environments"] == ["development", "production"] and status["has_refresh_token"] is True
    listed = api("GET", "/v1/secrets").json()["secrets"]
    assert [s["name"] for s in listed] == ["sheets"]
    secrets = [grant["access_token"], grant["refresh_token"], grant["id_token"], token_request["code"], CLIENT_SECRET]
    for text in (page.text, json.dumps(status), json.dumps(listed), sidecar_log(caplog)):
        assert not any(s in text for s in secrets)
    assert not any(k.startswith("oauth-sidecar/pending/") for k in vault_tree(root))


def test_only_the_chosen_environments(api, root):
    requests.Session().get(start(api, environments=["production"]), timeout=30)
    assert list(views(root)) == ["production"]


@pytest.mark.parametrize(
    ("answer", "expect"),
    [
        ({"set": {"scope": "openid"}}, {"scope": "openid", "expires": True, "refresh": True}),
        ({"omit": ["expires_in"]}, {"scope": "openid profile email", "expires": False, "refresh": True}),
        ({"set": {"expires_in": -30}}, {"scope": "openid profile email", "expires": False, "refresh": True}),
        ({"set": {"expires_in": "soon"}}, {"scope": "openid profile email", "expires": False, "refresh": True}),
        # a digit to str.isdigit() that int() refuses: once a 500
        ({"set": {"expires_in": "\u00b2"}}, {"scope": "openid profile email", "expires": False, "refresh": True}),
        ({"set": {"expires_in": 10**13}}, {"scope": "openid profile email", "expires": False, "refresh": True}),
        (
            {"omit": ["refresh_token", "id_token", "scope"]},
            {"scope": "openid profile email", "expires": True, "refresh": False},
        ),
    ],
)  # fmt: skip
def test_token_answers_of_every_shape_are_stored(api, oauth, root, answer, expect):
    oauth.next(token=answer)
    page = requests.Session().get(start(api), timeout=30)
    assert page.status_code == 200, page.text
    view = views(root)["production"]
    assert view["scope"] == expect["scope"]
    assert bool(view["expires_at"]) == expect["expires"]
    assert bool(grant_record(root)["refresh_token"]) == expect["refresh"]
    assert oauth.accepts(view["access_token"])


def test_client_secret_post(api, oauth, root):
    api.register(token_auth_method="client_secret_post")
    assert requests.Session().get(start(api), timeout=30).status_code == 200
    assert oauth.log()["token"][0]["auth_method"] == "client_secret_post"


def test_an_existing_name_is_refused_unless_the_login_replaces_it(api, root, oauth):
    requests.Session().get(start(api), timeout=30)
    first = views(root)["production"]["access_token"]
    taken = api("POST", "/v1/secrets", json={"name": "sheets", "provider": "mock", "environments": ["production"]})
    assert taken.status_code == 409 and taken.json()["error"]["code"] == "exists", taken.text
    assert "reconnect" in taken.json()["error"]["message"] and taken.json()["error"]["fields"] == {"name": "exists"}
    assert not [k for k in vault_tree(root) if k.startswith("oauth-sidecar/pending/")]  # no login was started
    assert views(root)["production"]["access_token"] == first

    body = {"name": "sheets", "provider": "mock", "environments": ["production"], "replace": True}
    started = api("POST", "/v1/secrets", json=body)
    assert started.status_code == 201, started.text
    assert "not revoked at mock" in started.json()["replaces"]  # said, not silent
    page = requests.Session().get(started.json()["authorization_url"], timeout=30)
    assert page.status_code == 200
    current = views(root)
    assert list(current) == ["production"] and current["production"]["access_token"] != first
    assert grant_record(root)["environments"] == ["production"]


def test_a_name_taken_while_its_login_is_out_is_refused_before_any_token(api, root, oauth):
    """The check at the start is not the only one: the callback checks again before it redeems the
    code (no token got for nothing), and the write itself creates only."""
    link = start(api)
    api("POST", "/v1/secrets", json={"name": "sheets", "provider": "mock", "grant_type": "client_credentials"})
    taken, redeemed = grant_record(root), oauth.log()["tokenRequests"]
    page = requests.Session().get(link, timeout=30)
    assert page.status_code == 400 and "already exists" in page.text, page.text
    assert grant_record(root) == taken and taken["grant_type"] == "client_credentials"
    assert oauth.log()["tokenRequests"] == redeemed  # the code was never redeemed


def test_a_replacement_holds_to_the_secret_it_was_approved_against(api, root, oauth):
    """A Reconnect replaces the connection it saw, not one made meanwhile, nor one deleted meanwhile."""
    out = start(api, replace=True)  # nothing exists yet: the answer says it replaces nothing
    api("POST", "/v1/secrets", json={"name": "sheets", "provider": "mock", "grant_type": "client_credentials"})
    assert requests.Session().get(out, timeout=30).status_code == 400
    assert grant_record(root)["grant_type"] == "client_credentials"

    reconnect = start(api, replace=True)
    assert api("DELETE", "/v1/secrets/sheets").status_code == 200
    refused = requests.Session().get(reconnect, timeout=30)
    assert refused.status_code == 400 and "replaced, created or deleted since" in refused.text
    assert "oauth-sidecar/grants/sheets" not in vault_tree(root)  # not brought back


def test_a_reconnect_survives_a_refresh_while_it_is_out(api, root, oauth):
    requests.Session().get(start(api), timeout=30)
    link = start(api, replace=True)
    assert api("POST", "/v1/secrets/sheets/refresh").status_code == 200  # the same connection, a new version
    assert requests.Session().get(link, timeout=30).status_code == 200
    assert grant_record(root)["login_id"] == link.rsplit("/", 1)[-1]


def test_a_token_that_may_only_create_cannot_replace(api, root, oauth):
    """Vault cannot tell a create from an update for us: the callback writes with the sidecar's token."""
    requests.Session().get(start(api), timeout=30)
    before = grant_record(root)
    caller = narrow_token(
        root,
        "test-create-only",
        {
            **LOGINS_AND_PROVIDERS,
            "secret/data/oauth-sidecar/grants/*": ["create", "read"],
            "secret/data/oauth/+/*": ["create"],
        },
    )
    body = {"name": "sheets", "provider": "mock", "replace": True}
    refused = api("POST", "/v1/secrets", json=body, headers=caller)
    assert refused.status_code == 403, refused.text
    assert grant_record(root) == before
    fresh = api("POST", "/v1/secrets", json={**body, "name": "other", "replace": False}, headers=caller)
    assert fresh.status_code == 201, fresh.text  # a new name it may create


def assert_refused(page: requests.Response, oauth, root, phrase: str, redeemed: int = 0) -> None:
    assert page.status_code == 400, page.text
    assert page.headers["Content-Type"].startswith("text/html") and phrase in page.text
    assert page.headers["Cache-Control"] == "no-store"
    assert oauth.log()["tokenRequests"] == redeemed
    assert not any(k.startswith(("oauth-sidecar/grants/", "oauth/")) for k in vault_tree(root))


@pytest.mark.parametrize(
    ("query", "phrase"),
    [
        ("code=abc", "no valid state"),
        ("code=abc&state=", "no valid state"),
        ("code=abc&state=" + "x" * 600, "no valid state"),
        ("code=abc&state=forged-state", "unknown, expired or already finished"),
    ],
)
def test_refuses_a_missing_or_unknown_state(live, oauth, root, api, query, phrase):
    assert_refused(requests.get(f"{live.url}/callback?{query}", timeout=10), oauth, root, phrase)


def test_refuses_an_expired_login(api, oauth, root):
    link = start(api)
    lid = link.rsplit("/", 1)[1]
    browser = requests.Session()
    url = callback_url(browser, link)
    pending = root.secrets.kv.v2.read_secret_version(
        path=f"oauth-sidecar/pending/{lid}", mount_point="secret", raise_on_deleted_version=True
    )
    data = {**pending["data"]["data"], "expires_at": "2020-01-01T00:00:00Z"}
    root.secrets.kv.v2.create_or_update_secret(path=f"oauth-sidecar/pending/{lid}", secret=data, mount_point="secret")
    assert_refused(browser.get(url, timeout=10), oauth, root, "expired")


def test_refuses_a_replayed_callback(api, oauth, root):
    browser = requests.Session()
    url = callback_url(browser, start(api))
    assert browser.get(url, timeout=30).status_code == 200
    replay = browser.get(url, timeout=30)
    assert replay.status_code == 400 and "unknown, expired or already finished" in replay.text
    assert oauth.log()["tokenRequests"] == 1


def test_two_concurrent_callbacks_redeem_the_code_once(api, oauth, root):
    browser = requests.Session()
    url = callback_url(browser, start(api))
    cookies = browser.cookies.get_dict()
    barrier, results = threading.Barrier(4), []

    def hit() -> None:
        barrier.wait()
        results.append(requests.get(url, cookies=cookies, timeout=30).status_code)

    threads = [threading.Thread(target=hit) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [200, 400, 400, 400]
    assert oauth.log()["tokenRequests"] == 1


def test_a_callback_that_read_the_login_before_another_consumed_it_is_refused(api, oauth, monkeypatch):
    """The interleaving that concurrency finds only sometimes, forced: callback A has read and checked
    the login, and before its consume is written, callback B runs from start to end. A's consume, a
    check-and-set at the version A read, must fail: one code exchange."""
    browser = requests.Session()
    url = callback_url(browser, start(api))
    cookies = browser.cookies.get_dict()
    real, second = logins._consume, []

    def another_callback_first(*args):
        if not second:  # A, in the live server: B's whole callback now, through the same server
            second.append(0)
            second[0] = requests.get(url, cookies=cookies, timeout=30).status_code
        return real(*args)

    monkeypatch.setattr(logins, "_consume", another_callback_first)
    first = requests.get(url, cookies=cookies, timeout=30)
    assert (first.status_code, second) == (400, [200]), first.text
    assert oauth.log()["tokenRequests"] == 1


def test_a_callback_reloaded_while_its_login_is_saved_says_so(api, oauth, root):
    """A reload or a second tab while the first callback still holds the login: a 400 that says the
    secret is being saved, not "start again", and the code is redeemed once."""
    browser = requests.Session()
    url = callback_url(browser, start(api))
    oauth.next(token={"delayMs": 2000})  # the first callback waits on the provider meanwhile
    first: list[requests.Response] = []
    thread = threading.Thread(target=lambda: first.append(browser.get(url, timeout=30)))
    thread.start()
    wait_for(lambda: consumed_login(root))
    again = browser.get(url, timeout=30)
    thread.join()
    assert again.status_code == 400 and "is being saved" in again.text, again.text
    assert "Start the connection again" not in again.text
    assert first[0].status_code == 200 and oauth.log()["tokenRequests"] == 1


def test_a_retried_consume_never_takes_a_rival_callbacks_for_its_own(vault, tokens, root, fault_proxies, monkeypatch):
    """Two callbacks of one login in the same second: A's first consume is refused by a failing
    Vault, B's lands, and A's retry meets B's version. A must lose (one code exchange), though both
    wrote at the same second: the consumed record carries a nonce for the store to tell them apart."""
    lid, data = "a" * 32, {"name": "sheets"}
    store = Store(Settings.from_env({"VAULT_ADDR": vault.addr}), tokens.sidecar)  # B's, and the sidecar's own token
    version = store.write("pending", lid, data)
    proxy = fault_proxies(vault.addr)
    proxy.add("answer", method="POST", path=f"pending/{lid}$", status=503, body=b'{"errors":["sealed"]}')
    a = Store(Settings.from_env({"VAULT_ADDR": proxy.addr}), tokens.sidecar)
    rival: list[float] = []

    class RivalFirst:  # sidecar.store's clock: while A waits to retry, B consumes the login
        monotonic = staticmethod(time.monotonic)

        @staticmethod
        def sleep(seconds: float) -> None:
            if not rival:
                rival.append(logins._consume(store, lid, version, data))

    monkeypatch.setattr("sidecar.store.time", RivalFirst)
    with pytest.raises(logins.LoginRefused):
        logins._consume(a, lid, version, data)
    assert rival and len(proxy.faults_seen("answer")) == 1


def test_refuses_another_browser(api, oauth, root):
    browser = requests.Session()
    url = callback_url(browser, start(api))
    assert_refused(requests.get(url, timeout=10), oauth, root, "another browser")
    (name,) = browser.cookies.get_dict()
    assert_refused(requests.get(url, cookies={name: "forged"}, timeout=10), oauth, root, "another browser")
    assert browser.get(url, timeout=30).status_code == 200  # the right browser still can


def test_the_link_binds_the_first_browser_only(api, oauth, root):
    link = start(api)
    callback_url(requests.Session(), link)
    assert_refused(requests.Session().get(link, timeout=10), oauth, root, "already opened")


def test_refuses_a_mixed_up_issuer(api, oauth, root):
    api.register(issuer=oauth.issuer, authorization_response_iss_parameter_supported=True)
    oauth.configure(sendIss=True)
    oauth.next(authorize={"iss": "https://attacker.example"})
    browser = requests.Session()
    url = callback_url(browser, start(api))
    assert "iss=https" in url
    assert_refused(browser.get(url, timeout=10), oauth, root, "different issuer")


def test_refuses_a_missing_issuer_when_the_provider_sends_one(api, oauth, root):
    api.register(issuer=oauth.issuer, authorization_response_iss_parameter_supported=True)
    browser = requests.Session()
    assert_refused(browser.get(start(api), timeout=10), oauth, root, "identifies itself")


def test_accepts_the_right_issuer(api, oauth, root):
    api.register(issuer=oauth.issuer, authorization_response_iss_parameter_supported=True)
    oauth.configure(sendIss=True)
    assert requests.Session().get(start(api), timeout=30).status_code == 200


def test_shows_the_providers_error_escaped(api, oauth, root):
    oauth.next(authorize={"error": "access_denied", "error_description": "<script>alert(1)</script> said no"})
    page = requests.Session().get(start(api), timeout=10)
    assert_refused(page, oauth, root, "access_denied")
    assert "<script>" not in page.text and "&lt;script&gt;alert(1)&lt;/script&gt; said no" in page.text


def test_refuses_repeated_parameters(api, oauth, root):
    browser = requests.Session()
    url = callback_url(browser, start(api))
    state = parse_qs(urlsplit(url).query)["state"][0]
    assert_refused(browser.get(f"{url}&state={state}", timeout=10), oauth, root, "more than once")


def test_a_code_the_provider_refuses_is_reported(api, oauth, root):
    oauth.next(token={"status": 400, "body": {"error": "invalid_grant", "error_description": "code expired"}})
    page = requests.Session().get(start(api), timeout=30)
    assert page.status_code == 400 and "invalid_grant" in page.text and "code expired" in page.text
    stored = [k for k in vault_tree(root) if not k.startswith(("oauth-sidecar/providers/", "oauth-sidecar/pins/"))]
    assert stored == []  # no grant, no view, no login left behind


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "../x", "provider": "mock"}, "name"),
        ({"name": "a b", "provider": "mock"}, "name"),
        ({"name": "ok", "provider": "nope"}, "provider"),
        ({"name": "ok", "provider": "../mock"}, "provider"),
        ({"name": "ok", "provider": "mock", "environments": ["staging"]}, "environments"),
        ({"name": "ok", "provider": "mock", "environments": []}, "environments"),
        ({"name": "ok", "provider": "mock", "environments": "production"}, "environments"),
        ({"name": "ok", "provider": "mock", "scopes": 'bad"scope'}, "scopes"),
        ({"name": "ok", "provider": "mock", "surprise": True}, "surprise"),
        ({"provider": "mock"}, "name"),
    ],
)
def test_start_refuses_bad_input_and_writes_nothing(api, root, body, field):
    before = vault_tree(root)
    response = api("POST", "/v1/secrets", json=body)
    assert response.status_code == 400 and field in response.json()["error"]["fields"]
    assert vault_tree(root) == before


def test_any_replica_can_finish_a_login(api, live, root):
    """Nothing about a login lives in process memory: a second app instance finishes it."""
    browser = requests.Session()
    url = urlsplit(callback_url(browser, start(api)))
    other_replica = create_app(live.settings).test_client()
    for name, value in browser.cookies.get_dict().items():
        other_replica.set_cookie(name, value, path="/callback")
    page = other_replica.get(f"{url.path}?{url.query}")
    assert page.status_code == 200, page.text
    assert list(views(root)) == ["development", "production"]


# -- who may start a login, and what a login in flight may say (security review, findings 3) --------


# What the old operator policy let a token do with logins in flight, and reading providers.
LOGINS_AND_PROVIDERS = {
    "secret/data/oauth-sidecar/pending/*": ["create", "read", "update"],
    "secret/data/oauth-sidecar/providers/*": ["read"],
    "secret/metadata/oauth-sidecar/providers/*": ["list"],
}


def test_a_token_for_logins_and_providers_alone_cannot_replace_a_connected_secret(api, oauth, root):
    """Finding 3: such a token replaced the production view of a secret through a login and got the
    development view deleted; now it is refused before anything is written or anyone is sent anywhere."""
    assert requests.Session().get(start(api), timeout=30).status_code == 200
    before, views_before, grant_before = vault_tree(root), views(root), grant_record(root)
    attacker = narrow_token(root, "test-pending-and-providers-read", LOGINS_AND_PROVIDERS)
    for envs in (["production"], ["development", "production"]):
        body = {"name": "sheets", "provider": "mock", "environments": envs}
        refused = api("POST", "/v1/secrets", json=body, headers=attacker)
        assert refused.status_code == 403, refused.text
        assert "authorization_url" not in refused.json()
    assert vault_tree(root) == before  # no login in flight, no new version of anything
    assert views(root) == views_before and grant_record(root) == grant_before
    assert len(oauth.log()["authorize"]) == 1  # the operator's own login only


def test_a_login_needs_rights_on_every_environment_it_writes(api, oauth, root):
    """Finding 3: create/update on the secret and its production view, but not its development view,
    may connect production alone, and never development."""
    caller = narrow_token(
        root,
        "test-sheets-in-production",
        {
            **LOGINS_AND_PROVIDERS,
            "secret/data/oauth-sidecar/grants/sheets": ["create", "read", "update"],
            "secret/data/oauth/production/sheets": ["create", "update"],
        },
    )
    before = vault_tree(root)
    both = {"name": "sheets", "provider": "mock", "environments": ["development", "production"]}
    refused = api("POST", "/v1/secrets", json=both, headers=caller)
    assert refused.status_code == 403 and "one of its environments" in refused.json()["error"]["message"]
    assert vault_tree(root) == before and oauth.log()["authorize"] == []

    started = api("POST", "/v1/secrets", json={**both, "environments": ["production"]}, headers=caller)
    assert started.status_code == 201, started.text
    page = requests.Session().get(started.json()["authorization_url"], timeout=30)
    assert page.status_code == 200 and "Connected" in page.text, page.text
    assert list(views(root)) == ["production"] and grant_record(root)["environments"] == ["production"]


def pending_path(link: str) -> str:
    return f"oauth-sidecar/pending/{link.rsplit('/', 1)[1]}"


def alter_pending(root, link: str, **changes) -> None:
    """Rewrite a login in flight straight in Vault, as a token with write on `pending/*` (root) could."""
    path = pending_path(link)
    data = root.secrets.kv.v2.read_secret_version(path=path, mount_point="secret", raise_on_deleted_version=True)
    root.secrets.kv.v2.create_or_update_secret(
        path=path, secret={**data["data"]["data"], **changes}, mount_point="secret"
    )


@pytest.mark.parametrize(
    "redirect_to",
    [
        "https://evil.example/",
        "https://evil.example/authorize?response_type=code",
        "//evil.example/authorize",
        "{issuer}/elsewhere?response_type=code",
    ],
    ids=["other-host", "other-host-same-path", "scheme-relative", "same-host-other-path"],
)
def test_a_login_link_never_sends_the_browser_anywhere_but_its_provider(api, oauth, root, redirect_to):
    """Finding 3: a login in flight written straight into Vault with redirect_to=https://evil.example/
    made /login/<id> answer a 302 there; the link now refuses it with a page."""
    link = start(api)
    alter_pending(root, link, redirect_to=redirect_to.format(issuer=oauth.issuer))
    page = requests.get(link, allow_redirects=False, timeout=10)
    assert page.status_code == 400 and "Location" not in page.headers
    assert "This login is not valid" in page.text and "evil.example" not in page.text
    assert page.headers["Content-Type"].startswith("text/html")
    assert oauth.log()["authorize"] == []


ALTERED = [
    ({"environments": ["staging"]}, "unknown-environment"),
    ({"environments": []}, "no-environment"),
    ({"name": "../grants/other"}, "name-with-a-path"),
    ({"name": "a b"}, "name-with-a-space"),
    ({"provider": "nope"}, "unknown-provider"),
]


@pytest.mark.parametrize("changes", [c for c, _ in ALTERED], ids=[i for _, i in ALTERED])
def test_an_altered_login_is_refused_when_its_link_is_opened(api, oauth, root, changes):
    """Finding 3: a login in flight is checked again when read back; one that does not hold up is
    never followed to the provider."""
    link = start(api)
    alter_pending(root, link, **changes)
    page = requests.get(link, allow_redirects=False, timeout=10)
    assert page.status_code == 400 and "Location" not in page.headers, page.text
    assert "This login is not valid" in page.text
    assert oauth.log()["authorize"] == []
    assert not any(k.startswith(("oauth-sidecar/grants/", "oauth/")) for k in vault_tree(root))


@pytest.mark.parametrize("changes", [c for c, _ in ALTERED], ids=[i for _, i in ALTERED])
def test_an_altered_login_is_refused_at_the_callback_before_the_code_is_redeemed(api, oauth, root, changes):
    """Finding 3: a login changed in Vault after its link was opened: the callback refuses it before
    any token request, and nothing is stored."""
    browser = requests.Session()
    link = start(api)
    url = callback_url(browser, link)
    alter_pending(root, link, **changes)
    assert_refused(browser.get(url, timeout=10), oauth, root, "This login is not valid")


def test_operators_cannot_touch_logins_in_flight_yet_still_connect_secrets(api, oauth, root, vault, tokens):
    """Finding 3: logins in flight are written by the sidecar's own token only; the operator policy
    (oauth-admin) no longer names `pending`, and a browser login works as before."""
    link = start(api)
    path = pending_path(link)
    shown = bao_kv_get(vault, tokens.admin, f"secret/{path}")
    assert shown.returncode != 0 and "permission denied" in shown.stderr, shown.stdout + shown.stderr
    written = requests.post(
        f"{vault.addr}/v1/secret/data/{path}",
        headers={"X-Vault-Token": tokens.admin},
        json={"data": {"redirect_to": "https://evil.example/"}},
        timeout=10,
    )
    assert written.status_code == 403 and "permission denied" in written.text
    record = root.secrets.kv.v2.read_secret_version(path=path, mount_point="secret", raise_on_deleted_version=True)
    assert record["data"]["data"]["redirect_to"].startswith(f"{oauth.issuer}/authorize?")

    page = requests.Session().get(link, timeout=30)
    assert page.status_code == 200 and "Connected" in page.text, page.text
    assert list(views(root)) == ["development", "production"]
    assert oauth.accepts(views(root)["production"]["access_token"])
    assert not any(k.startswith("oauth-sidecar/pending/") for k in vault_tree(root))


def test_a_login_cannot_delete_a_view_its_starter_has_no_rights_on(api, oauth, root):
    """Finding 3's symptom, with rights on the secret: reconnecting it for production alone deleted
    its development view, on which the caller has no rights at all (deleting needs delete, finding 4)."""
    assert requests.Session().get(start(api), timeout=30).status_code == 200
    development = views(root)["development"]
    caller = narrow_token(
        root,
        "test-sheets-in-production",
        {
            **LOGINS_AND_PROVIDERS,
            "secret/data/oauth-sidecar/grants/sheets": ["create", "read", "update"],
            "secret/data/oauth/production/sheets": ["create", "update"],
        },
    )
    body = {"name": "sheets", "provider": "mock", "environments": ["production"], "replace": True}
    started = api("POST", "/v1/secrets", json=body, headers=caller)
    assert started.status_code == 403 and "one of its environments" in started.json()["error"]["message"]
    assert views(root).get("development") == development


def test_a_login_cannot_drop_a_view_added_after_it_started(api, oauth, root):
    """Its starter was checked against the environments the secret had at the start: if an operator
    reconnects it for more meanwhile, finishing the older login would drop those new views."""
    assert requests.Session().get(start(api, environments=["development"]), timeout=30).status_code == 200
    caller = narrow_token(
        root,
        "test-sheets-in-development",
        {
            **LOGINS_AND_PROVIDERS,
            "secret/data/oauth-sidecar/grants/sheets": ["create", "read", "update"],
            "secret/data/oauth/development/sheets": ["create", "update"],
        },
    )
    body = {"name": "sheets", "provider": "mock", "environments": ["development"], "replace": True}
    started = api("POST", "/v1/secrets", json=body, headers=caller)
    assert started.status_code == 201, started.text
    browser = requests.Session()
    back = callback_url(browser, started.json()["authorization_url"])
    assert requests.Session().get(start(api, replace=True), timeout=30).status_code == 200  # the operator: both
    page = browser.get(back, timeout=30)
    assert page.status_code == 400 and "secret was changed since this login started" in page.text
    assert sorted(views(root)) == ["development", "production"]
