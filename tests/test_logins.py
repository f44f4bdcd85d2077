"""Connecting a secret end to end: real OpenBao, a real OAuth server, the sidecar over HTTP, and a
cookie-keeping client that follows redirects the way a browser does."""

import json
import logging
import threading
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from sidecar.web import create_app

from .conftest import CLIENT_SECRET, bao_kv_get, callback_url, grant_record, sidecar_log, start, vault_tree, views


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


def test_reconnect_replaces_tokens_and_drops_environments(api, root, oauth):
    requests.Session().get(start(api), timeout=30)
    first = views(root)["production"]["access_token"]
    page = requests.Session().get(start(api, environments=["production"]), timeout=30)
    assert page.status_code == 200
    current = views(root)
    assert list(current) == ["production"] and current["production"]["access_token"] != first
    assert grant_record(root)["environments"] == ["production"]


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
    assert not any(k.startswith(("oauth-sidecar/", "oauth/")) for k in vault_tree(root) if "providers" not in k)


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
