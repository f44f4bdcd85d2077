"""The demo provider of `oauth-sidecar dev` (sidecar/demo.py), over real HTTP, driven by the sidecar's own
OAuth client as `dev` will drive it, and by plain requests where a browser would be."""

from __future__ import annotations

import html
import logging
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from sidecar import demo, inputs, oauth
from sidecar.demo import DemoProvider
from sidecar.errors import OAuthPermanent
from sidecar.models import Provider, TokenAuthMethod, TokenSet

from .helpers import SetClock, provider_client, sidecar_log

CALLBACK = "http://127.0.0.1:9/callback"  # never called: the tests stop at the redirect
CHALLENGE = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"  # RFC 7636 appendix B
HIDDEN = re.compile(r'<input type="hidden" name="([^"]*)" value="([^"]*)">')


@pytest.fixture
def provider_server() -> Iterator[DemoProvider]:
    with DemoProvider(CALLBACK) as server:
        yield server


@pytest.fixture
def provider(provider_server: DemoProvider) -> Provider:
    return inputs.provider("demo", provider_server.provider_body())


def log_in(provider: Provider, user: str = "ann") -> tuple[str, oauth.AuthorizationRequest]:
    """A person's login, as a browser makes it: the sidecar's authorization request, the login page, its
    form posted back; the code the redirect carries to the callback."""
    request = oauth.authorization_request(provider, CALLBACK, provider.scopes)
    location = submit(requests.get(request.url, timeout=10), user)
    query = parse_qs(urlsplit(location).query)
    assert location.startswith(CALLBACK + "?") and query["state"] == [request.state], location
    return query["code"][0], request


def submit(page: requests.Response, user: str) -> str:
    """Post the login page's form with `user`; the redirect's target."""
    assert page.status_code == 200 and "any user name works" in page.text, page.text
    fields = [(html.unescape(name), html.unescape(value)) for name, value in HIDDEN.findall(page.text)]
    origin = page.url.split("/authorize")[0]
    answer = requests.post(f"{origin}/authorize", data=[*fields, ("user_name", user)], allow_redirects=False)
    assert answer.status_code == 302, answer.text
    return answer.headers["Location"]


def tokens(provider: Provider, client: oauth.Client | None = None) -> TokenSet:
    code, request = log_in(provider)
    return (client or provider_client()).exchange_code(provider, code, request.code_verifier, CALLBACK, provider.scopes)


def refused(call, *args) -> str:
    with pytest.raises(OAuthPermanent) as refusal:
        call(*args)
    return refusal.value.error


def userinfo(provider_server: DemoProvider, access_token: str) -> requests.Response:
    return requests.get(
        f"{provider_server.url}/userinfo", headers={"Authorization": f"Bearer {access_token}"}, timeout=10
    )


def test_a_login_with_pkce_gets_tokens_that_live_the_configured_lifetime(provider: Provider) -> None:
    clock = SetClock()
    got = tokens(provider, oauth.Client(provider_client().http, clock))
    assert got.expires_at == clock.now() + timedelta(seconds=120)  # the default lifetime
    assert got.refresh_token and got.access_token != got.refresh_token
    assert got.scopes == ("profile", "email")
    with DemoProvider(CALLBACK, access_token_lifetime=7) as short:
        shorter = inputs.provider("demo", short.provider_body())
        assert tokens(shorter, oauth.Client(provider_client().http, clock)).expires_at == clock.now() + timedelta(
            seconds=7
        )


def test_the_access_token_names_the_user_who_logged_in(provider_server: DemoProvider, provider: Provider) -> None:
    code, request = log_in(provider, user="Zoë <zoe@example.com>")
    got = provider_client().exchange_code(provider, code, request.code_verifier, CALLBACK, provider.scopes)
    assert userinfo(provider_server, got.access_token).json()["sub"] == "Zoë <zoe@example.com>"
    assert userinfo(provider_server, "not-a-token").status_code == 401


def test_a_refresh_rotates_the_refresh_token_and_the_old_one_is_refused(
    provider_server: DemoProvider, provider: Provider
) -> None:
    client = provider_client()
    first = tokens(provider, client)
    second = client.refresh(provider, first.refresh_token, provider.scopes)
    assert second.refresh_token and second.refresh_token != first.refresh_token
    assert second.access_token != first.access_token and second.scopes == ("profile", "email")
    assert userinfo(provider_server, second.access_token).status_code == 200
    assert refused(client.refresh, provider, first.refresh_token, provider.scopes) == "invalid_grant"
    third = client.refresh(provider, second.refresh_token, provider.scopes)  # the newest one goes on working
    assert third.refresh_token not in (first.refresh_token, second.refresh_token)


def test_a_code_is_single_use(provider: Provider) -> None:
    client = provider_client()
    code, request = log_in(provider)
    assert client.exchange_code(provider, code, request.code_verifier, CALLBACK, provider.scopes).access_token
    again = refused(client.exchange_code, provider, code, request.code_verifier, CALLBACK, provider.scopes)
    assert again == "invalid_grant"


def test_a_code_expires_after_its_lifetime(provider: Provider, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo, "CODE_LIFETIME", 0)
    code, request = log_in(provider)
    late = refused(provider_client().exchange_code, provider, code, request.code_verifier, CALLBACK, provider.scopes)
    assert late == "invalid_grant"


def test_a_code_is_bound_to_its_code_verifier_and_redirect_uri(provider: Provider) -> None:
    client = provider_client()
    code, request = log_in(provider)
    wrong = "x" * 64
    assert refused(client.exchange_code, provider, code, wrong, CALLBACK, provider.scopes) == "invalid_grant"
    # Tried once: a wrong verifier used the code up.
    assert refused(client.exchange_code, provider, code, request.code_verifier, CALLBACK, provider.scopes) == (
        "invalid_grant"
    )
    code, request = log_in(provider)
    assert refused(client.exchange_code, provider, code, None, CALLBACK, provider.scopes) == "invalid_request"
    code, request = log_in(provider)
    other = "http://127.0.0.1:9/elsewhere"  # oauthlib names a mismatch invalid_request (RFC 6749 5.2: invalid_grant)
    assert refused(client.exchange_code, provider, code, request.code_verifier, other, provider.scopes) == (
        "invalid_request"
    )


@pytest.mark.parametrize(
    ("pkce", "error"),
    [
        ({}, "Code challenge required."),
        ({"code_challenge": CHALLENGE}, "Transform algorithm not supported."),
        ({"code_challenge": CHALLENGE, "code_challenge_method": "plain"},
         "Transform algorithm not supported."),
    ],
)  # fmt: skip
def test_a_login_without_pkce_s256_is_refused(provider_server: DemoProvider, pkce: dict[str, str], error: str) -> None:
    params = {"response_type": "code", "client_id": "demo-client", "redirect_uri": CALLBACK, "state": "s1", **pkce}
    answer = requests.get(f"{provider_server.url}/authorize", params=params, allow_redirects=False, timeout=10)
    assert answer.status_code == 302
    query = parse_qs(urlsplit(answer.headers["Location"]).query)
    assert query == {"error": ["invalid_request"], "error_description": [error], "state": ["s1"]}


def test_a_posted_login_without_pkce_is_told_to_the_client_not_a_500(provider_server: DemoProvider) -> None:
    form = {"response_type": "code", "client_id": "demo-client", "redirect_uri": CALLBACK, "state": "s1"}
    for user_name in ("", "ada"):  # a bad user name too: the request's own error comes first
        answer = requests.post(
            f"{provider_server.url}/authorize", data={**form, "user_name": user_name}, allow_redirects=False, timeout=10
        )
        assert answer.status_code == 302, answer.text
        assert parse_qs(urlsplit(answer.headers["Location"]).query)["error"] == ["invalid_request"]


def test_scopes_any_subset_of_the_offered_ones_else_invalid_scope(
    provider_server: DemoProvider, provider: Provider
) -> None:
    client = provider_client()
    email_only = inputs.provider("demo", {**provider_server.provider_body(), "scopes": "email"})
    code, request = log_in(email_only)
    assert client.exchange_code(email_only, code, request.code_verifier, CALLBACK, ("email",)).scopes == ("email",)
    admin = inputs.provider("demo", {**provider_server.provider_body(), "scopes": "email admin"})
    request = oauth.authorization_request(admin, CALLBACK, admin.scopes)
    answer = requests.get(request.url, allow_redirects=False, timeout=10)
    assert answer.status_code == 302 and parse_qs(urlsplit(answer.headers["Location"]).query)["error"] == [
        "invalid_scope"
    ]


def test_no_scope_asked_gets_the_default_scopes(provider_server: DemoProvider, provider: Provider) -> None:
    request = oauth.authorization_request(provider, CALLBACK, ())
    assert "scope=&" in request.url
    code = parse_qs(urlsplit(submit(requests.get(request.url, timeout=10), "ann")).query)["code"][0]
    got = provider_client().exchange_code(provider, code, request.code_verifier, CALLBACK, ())
    assert got.scopes == ("profile", "email")


@pytest.mark.parametrize(
    ("client_id", "redirect_uri", "message"),
    [
        ("demo-client", "http://127.0.0.1:9/elsewhere", "Mismatching redirect URI."),
        ("demo-client", "https://attacker.example/callback", "Mismatching redirect URI."),
        ("someone-else", CALLBACK, "Invalid client_id parameter value."),
    ],
)
def test_a_bad_client_or_redirect_uri_gets_an_error_page_and_no_redirect(
    provider_server: DemoProvider, client_id: str, redirect_uri: str, message: str
) -> None:
    params = {"response_type": "code", "client_id": client_id, "redirect_uri": redirect_uri, "state": "s1",
              "code_challenge": CHALLENGE, "code_challenge_method": "S256"}  # fmt: skip
    url = f"{provider_server.url}/authorize"
    for answer in (
        requests.get(url, params=params, allow_redirects=False, timeout=10),
        requests.post(url, data={**params, "user_name": "ann"}, allow_redirects=False, timeout=10),
    ):
        assert answer.status_code in (400, 401) and "Location" not in answer.headers
        assert message in answer.text and "<form" not in answer.text


def test_a_wrong_client_secret_is_refused(provider_server: DemoProvider, provider: Provider) -> None:
    code, request = log_in(provider)
    wrong = inputs.provider("demo", {**provider_server.provider_body(), "client_secret": "guessed"})
    client = provider_client()
    assert refused(client.exchange_code, wrong, code, request.code_verifier, CALLBACK, wrong.scopes) == "invalid_client"
    got = client.exchange_code(provider, code, request.code_verifier, CALLBACK, provider.scopes)  # not used up
    assert refused(client.refresh, wrong, got.refresh_token, wrong.scopes) == "invalid_client"
    assert refused(client.revoke, wrong, got.refresh_token, "refresh_token") == "invalid_client"
    assert client.refresh(provider, got.refresh_token, provider.scopes).access_token


def test_client_secret_post_is_accepted_too(provider_server: DemoProvider) -> None:
    body = {**provider_server.provider_body(), "token_auth_method": "client_secret_post"}
    posting = inputs.provider("demo", body)
    assert posting.token_auth_method == TokenAuthMethod.CLIENT_SECRET_POST
    got = tokens(posting)
    assert provider_client().refresh(posting, got.refresh_token, posting.scopes).refresh_token


def test_revoking_the_refresh_token_ends_it_and_its_access_tokens(
    provider_server: DemoProvider, provider: Provider
) -> None:
    client = provider_client()
    got, other = tokens(provider, client), tokens(provider, client)
    assert client.revoke(provider, got.refresh_token, "refresh_token") is True
    assert refused(client.refresh, provider, got.refresh_token, provider.scopes) == "invalid_grant"
    assert userinfo(provider_server, got.access_token).status_code == 401
    assert userinfo(provider_server, other.access_token).status_code == 200  # another login's grant stays


def test_revoking_an_access_token_ends_it_alone(provider_server: DemoProvider, provider: Provider) -> None:
    client = provider_client()
    got = tokens(provider, client)
    assert userinfo(provider_server, got.access_token).status_code == 200
    assert client.revoke(provider, got.access_token, "access_token") is True
    assert userinfo(provider_server, got.access_token).status_code == 401
    assert client.refresh(provider, got.refresh_token, provider.scopes).access_token


def test_the_login_page_escapes_hostile_parameters_and_user_names(provider: Provider) -> None:
    hostile = '"><script>alert(1)</script>'
    request = oauth.authorization_request(provider, CALLBACK, provider.scopes)
    url = request.url.replace(f"state={request.state}", "state=%22%3E%3Cscript%3Ealert(1)%3C%2Fscript%3E")
    page = requests.get(url + "&x%22%3E%3Cb%3E=%3Cimg%3E", timeout=10)
    assert page.status_code == 200 and not {"<script>", "<img>", "<b>"} & set(re.findall(r"<\w+>", page.text))
    assert "&#34;&gt;&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    # The escaped state goes back unchanged through the form, to the callback.
    assert parse_qs(urlsplit(submit(page, "ann")).query)["state"] == [hostile]
    fields = [(html.unescape(n), html.unescape(v)) for n, v in HIDDEN.findall(page.text)]
    too_long = requests.post(page.url.split("?")[0], data=[*fields, ("user_name", hostile * 3)], timeout=10)
    assert too_long.status_code == 400 and "at most 64 characters" in too_long.text
    assert "<script>" not in too_long.text and "&lt;script&gt;" in too_long.text
    assert too_long.headers["X-Frame-Options"] == "DENY" and too_long.headers["Referrer-Policy"] == "no-referrer"


def test_the_metadata_is_what_the_sidecar_discovers(provider_server: DemoProvider) -> None:
    found = provider_client().discover(provider_server.url)
    body = provider_server.provider_body()
    assert found == {
        "authorization_url": body["authorization_url"],
        "token_url": body["token_url"],
        "revocation_url": body["revocation_url"],
        "code_challenge_methods_supported": ["S256"],
    }


def test_the_provider_body_is_a_valid_sidecar_provider(provider_server: DemoProvider, provider: Provider) -> None:
    assert provider.client_id == "demo-client" and provider.client_secret == provider_server.client_secret
    assert provider.pkce and provider.scopes == ("profile", "email")
    assert provider.token_auth_method == TokenAuthMethod.CLIENT_SECRET_BASIC
    assert provider.token_url == f"{provider_server.url}/token" and provider_server.url.startswith("http://127.0.0.1:")
    with DemoProvider(CALLBACK) as other:  # a new secret per run
        assert other.client_secret != provider_server.client_secret and other.url != provider_server.url


def test_the_client_secret_stays_out_of_the_repr(provider_server: DemoProvider) -> None:
    shown = repr(provider_server)
    assert provider_server.url in shown and "demo-client" in shown
    assert provider_server.client_secret not in shown and provider_server.client_secret not in str(provider_server)


def test_nothing_secret_reaches_the_log(provider: Provider, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    client = provider_client()
    code, request = log_in(provider)
    got = client.exchange_code(provider, code, request.code_verifier, CALLBACK, provider.scopes)
    newer = client.refresh(provider, got.refresh_token, provider.scopes)
    client.revoke(provider, newer.refresh_token, "refresh_token")
    logged = sidecar_log(caplog)  # all but this test's own requests, whose URLs urllib3 logs
    assert '"POST /token" 200' in logged and '"GET /authorize" 200' in logged
    for secret in (code, request.state, request.code_verifier, provider.client_secret, got.access_token,
                   got.refresh_token, newer.refresh_token):  # fmt: skip
        assert secret not in logged


def test_a_stopped_provider_answers_no_more(provider_server: DemoProvider) -> None:
    url = provider_server.url
    provider_server.stop()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/.well-known/oauth-authorization-server", timeout=5)
    with pytest.raises(RuntimeError):
        provider_server.url  # noqa: B018


def test_refreshes_racing_with_one_refresh_token_make_one_winner(provider: Provider) -> None:
    client = provider_client()
    got = tokens(provider, client)
    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(lambda _: _attempt(client, provider, got.refresh_token), range(8)))
    assert outcomes.count("ok") == 1 and outcomes.count("invalid_grant") == 7


def _attempt(client: oauth.Client, provider: Provider, refresh_token: str) -> str:
    try:
        client.refresh(provider, refresh_token, provider.scopes)
    except OAuthPermanent as exc:
        return exc.error
    return "ok"
