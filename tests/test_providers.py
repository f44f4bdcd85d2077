"""Providers from presets and from discovery metadata, against the real OAuth server and OpenBao."""

import pytest
import requests

from sidecar import providers
from sidecar.errors import Invalid

from .helpers import CLIENT_ID, CLIENT_SECRET, provider_client, start, vault_tree, views


def from_issuer(oauth, **extra) -> dict:
    return {"issuer": oauth.issuer, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "scopes": "openid", **extra}


def test_a_provider_from_its_issuer_alone_completes_a_login(api, oauth, root):
    created = api("PUT", "/v1/providers/mock", json=from_issuer(oauth))
    assert created.status_code == 200, created.text  # `api` registered `mock` by URLs first; this replaces it
    shown = created.json()
    assert (shown["authorization_url"], shown["token_url"], shown["revocation_url"]) == (
        f"{oauth.issuer}/authorize",
        f"{oauth.issuer}/token",
        f"{oauth.issuer}/revoke",
    )
    assert shown["device_authorization_url"] == f"{oauth.issuer}/device_authorization"
    assert shown["discovered_at"].endswith("Z") and "S256" in shown["code_challenge_methods_supported"]
    assert oauth.log()["discovery"][0] == "/.well-known/oauth-authorization-server"

    assert requests.Session().get(start(api), timeout=30).status_code == 200
    token = views(root)["production"]["access_token"]
    assert oauth.accepts(token)
    (authorize,) = oauth.log()["authorize"]
    assert authorize["code_challenge_method"] == "S256"


def test_discovery_remembers_that_the_provider_sends_iss(api, oauth, root):
    oauth.configure(sendIss=True)
    shown = api("PUT", "/v1/providers/mock", json=from_issuer(oauth)).json()
    assert shown["authorization_response_iss_parameter_supported"] is True
    # A forged answer without iss is now refused before any code is redeemed.
    browser = requests.Session()
    to_provider = browser.get(start(api), allow_redirects=False)
    back = browser.get(to_provider.headers["Location"], allow_redirects=False).headers["Location"]
    forged = browser.get(back.replace("&iss=", "&x="), timeout=30)
    assert forged.status_code == 400 and "identifies itself" in forged.text
    assert not [t for t in oauth.log()["token"] if t["grant_type"] == "authorization_code"]


def test_openid_configuration_is_the_fallback(api, oauth):
    oauth.configure(rfc8414=False)
    shown = api("PUT", "/v1/providers/mock", json=from_issuer(oauth)).json()
    assert shown["token_url"] == f"{oauth.issuer}/token"
    assert oauth.log()["discovery"] == ["/.well-known/oauth-authorization-server", "/.well-known/openid-configuration"]


@pytest.mark.parametrize(
    ("metadata", "status", "says"),
    [
        ({"issuer": "https://evil.example"}, 200, "no usable OAuth metadata"),
        ({"token_endpoint": "http://evil.example/token"}, 200, "token_url must use https"),
        ({"token_endpoint": None}, 200, "token_url is required"),
        ({}, 500, "discovery"),
    ],
)
def test_bad_metadata_is_refused_and_nothing_is_written(api, oauth, root, metadata, status, says):
    before = vault_tree(root)
    oauth.configure(discovery=metadata, discoveryStatus=status)
    refused = api("PUT", "/v1/providers/other", json=from_issuer(oauth))
    assert refused.status_code == 400 and says in refused.json()["error"]["message"]
    assert vault_tree(root) == before


def test_explicit_urls_win_over_discovery(api, oauth):
    body = from_issuer(oauth, revocation_url="https://revoke.example/r")
    shown = api("PUT", "/v1/providers/mock", json=body).json()
    assert shown["revocation_url"] == "https://revoke.example/r"
    assert shown["token_url"] == f"{oauth.issuer}/token"
    # What was typed stays typed: the provider does not follow its metadata later.
    assert shown["discovered_at"] == ""
    oauth.configure(discovery={"revocation_endpoint": f"{oauth.issuer}/moved"})
    stored = providers.build("mock", body, provider_client())
    assert providers.current(stored, provider_client(), max_age=0).revocation_url == "https://revoke.example/r"


def test_metadata_is_re_read_when_older_than_the_interval(api, oauth, store):
    api("PUT", "/v1/providers/mock", json=from_issuer(oauth))
    stored = store.get_provider("mock")
    client = provider_client()
    oauth.configure(discovery={"revocation_endpoint": f"{oauth.issuer}/revoke-v2"})
    assert providers.current(stored, client, max_age=3600).revocation_url == f"{oauth.issuer}/revoke-v2"  # unread
    oauth.configure(discovery={"revocation_endpoint": f"{oauth.issuer}/revoke-v3"})
    assert providers.current(stored, client, max_age=3600).revocation_url == f"{oauth.issuer}/revoke-v2"  # read now
    assert providers.current(stored, client, max_age=0).revocation_url == f"{oauth.issuer}/revoke-v3"
    # Metadata that cannot be read, or names a bad endpoint, leaves the stored endpoints in place.
    oauth.configure(discoveryStatus=500)
    assert providers.current(stored, client, max_age=0).token_url == f"{oauth.issuer}/token"
    oauth.configure(discoveryStatus=200, discovery={"token_endpoint": "http://evil.example/token"})
    assert providers.current(stored, client, max_age=0).token_url == f"{oauth.issuer}/token"
    # A provider registered by URLs is never re-read.
    before = len(oauth.log()["discovery"])
    by_urls = providers.build("urls", oauth.registration(), client)
    assert providers.current(by_urls, client, max_age=0) is by_urls and len(oauth.log()["discovery"]) == before


def test_a_preset_fills_in_the_provider(api, root):
    body = {"preset": "microsoft", "preset_params": {"tenant": "contoso.onmicrosoft.com"},
            "client_id": "app-id", "client_secret": CLIENT_SECRET, "scopes": "offline_access User.Read"}  # fmt: skip
    created = api("PUT", "/v1/providers/entra", json=body)
    assert created.status_code == 201, created.text
    shown = created.json()
    assert (
        shown["authorization_url"] == "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/authorize"
    )
    assert shown["token_url"] == "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
    assert (shown["preset"], shown["preset_params"], shown["scopes"]) == (
        "microsoft",
        {"tenant": "contoso.onmicrosoft.com"},
        ["offline_access", "User.Read"],
    )
    stored = root.secrets.kv.v2.read_secret_version(
        path="oauth-sidecar/providers/entra", mount_point="secret", raise_on_deleted_version=True
    )
    assert stored["data"]["data"]["token_url"] == shown["token_url"]


def test_a_preset_keeps_its_quirks_unless_overridden():
    google = providers.build("google", {"preset": "google", "client_id": "i", "client_secret": "s",
                                        "extra_authorize_params": {"login_hint": "a@example.com"}},
                             provider_client())  # fmt: skip
    assert dict(google.extra_authorize_params) == {"access_type": "offline", "prompt": "consent",
                                                  "login_hint": "a@example.com"}  # fmt: skip
    assert google.scopes == ("openid", "email")
    mine = providers.build("google", {"preset": "google", "client_id": "i", "client_secret": "s",
                                      "token_url": "https://proxy.example/token", "scopes": ["openid"]},
                           provider_client())  # fmt: skip
    assert (mine.token_url, mine.scopes) == ("https://proxy.example/token", ("openid",))


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"preset": "myspace"}, "preset"),
        ({"preset": "okta"}, "preset_params"),
        ({"preset": "okta", "preset_params": {"domain": "evil.example/x"}}, "preset_params"),
        ({"preset": "google", "preset_params": {"tenant": "x"}}, "preset_params"),
    ],
)
def test_bad_presets_are_refused_by_field(body, field):
    with pytest.raises(Invalid) as refused:
        providers.build("p", {"client_id": "i", "client_secret": "s", **body}, provider_client())
    assert field in refused.value.fields


def test_presets_are_listed(api):
    listed = api("GET", "/v1/presets").json()["presets"]
    names = [p["name"] for p in listed]
    assert {"google", "microsoft", "github", "gitlab", "slack", "salesforce", "atlassian", "hubspot",
            "dropbox", "zoom", "okta", "auth0"} <= set(names)  # fmt: skip
    okta = next(p for p in listed if p["name"] == "okta")
    assert okta["params"]["domain"] == {"required": True, "default": None}


def test_only_an_operator_can_make_the_sidecar_fetch_metadata(api, tokens, oauth, root):
    """Discovery is an outgoing request: a caller who may not write the provider cannot cause it."""
    before = vault_tree(root)
    reader = {"X-Vault-Token": tokens.reader["production"]}
    refused = api("PUT", "/v1/providers/probe", json=from_issuer(oauth), headers=reader)
    assert refused.status_code == 403
    assert oauth.log()["discovery"] == [] and vault_tree(root) == before


def test_metadata_larger_than_the_limit_is_refused(api, oauth, root):
    oauth.configure(discovery={"padding": "x" * 300_000})
    refused = api("PUT", "/v1/providers/big", json=from_issuer(oauth))
    assert refused.status_code == 400 and "larger than" in refused.json()["error"]["message"]


def test_a_re_read_never_turns_off_a_required_iss(api, oauth, store):
    api("PUT", "/v1/providers/mock", json=from_issuer(oauth, authorization_response_iss_parameter_supported=True))
    stored = store.get_provider("mock")
    assert stored.authorization_response_iss_parameter_supported  # the metadata did not say so; the operator did
    assert providers.current(stored, provider_client(), max_age=0).authorization_response_iss_parameter_supported


def test_a_preset_with_extra_parameters_that_are_not_an_object_is_a_400(api):
    body = {"preset": "google", "client_id": "i", "client_secret": "s", "extra_authorize_params": "prompt=none"}
    refused = api("PUT", "/v1/providers/g", json=body)
    assert refused.status_code == 400 and "extra_authorize_params" in refused.json()["error"]["fields"]
