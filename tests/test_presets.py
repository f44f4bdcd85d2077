"""Presets are tested as data: every one expands into a valid provider, with the URLs its provider documents."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar import inputs
from sidecar.errors import Invalid
from sidecar.models import Grant, Provider, TokenSet, due_at
from sidecar.presets import PRESETS, catalogue, expand

# Values for the parameters a preset requires (no default).
REQUIRED = {"okta": {"domain": "example.okta.com"}, "auth0": {"domain": "example.us.auth0.com"}}

URL_FIELDS = ("authorization_url", "token_url", "revocation_url", "device_authorization_url", "issuer")

# What each provider's documentation gives, written out by hand: None where the provider has no such
# endpoint (or none this sidecar can use, i.e. no RFC 7009 revocation), or no fixed issuer.
DOCUMENTED = [
    (
        "google",
        {},
        {
            "authorization_url": "https://accounts.google.com/o/oauth2/v2/auth",
            "token_url": "https://oauth2.googleapis.com/token",
            "revocation_url": "https://oauth2.googleapis.com/revoke",
            "device_authorization_url": "https://oauth2.googleapis.com/device/code",
            "issuer": "https://accounts.google.com",
        },
    ),
    (
        "microsoft",
        {},
        {
            "authorization_url": "https://login.microsoftonline.com/common/oauth2/v2.0/authorize",
            "token_url": "https://login.microsoftonline.com/common/oauth2/v2.0/token",
            "revocation_url": None,
            "device_authorization_url": "https://login.microsoftonline.com/common/oauth2/v2.0/devicecode",
            "issuer": None,
        },
    ),
    (
        "microsoft",
        {"tenant": "contoso.onmicrosoft.com"},
        {
            "authorization_url": "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/authorize",
            "token_url": "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token",
            "revocation_url": None,
            "device_authorization_url": "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/devicecode",
            "issuer": None,
        },
    ),
    (
        "microsoft",
        {"tenant": "72f988bf-86f1-41af-91ab-2d7cd011db47"},
        {
            "authorization_url": "https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47/oauth2/v2.0/authorize",
            "token_url": "https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47/oauth2/v2.0/token",
            "revocation_url": None,
            "device_authorization_url": "https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47/oauth2/v2.0/devicecode",
            "issuer": None,
        },
    ),
    (
        "github",
        {},
        {
            "authorization_url": "https://github.com/login/oauth/authorize",
            "token_url": "https://github.com/login/oauth/access_token",
            "revocation_url": None,
            "device_authorization_url": "https://github.com/login/device/code",
            "issuer": None,
        },
    ),
    (
        "gitlab",
        {},
        {
            "authorization_url": "https://gitlab.com/oauth/authorize",
            "token_url": "https://gitlab.com/oauth/token",
            "revocation_url": "https://gitlab.com/oauth/revoke",
            "device_authorization_url": "https://gitlab.com/oauth/authorize_device",
            "issuer": None,
        },
    ),
    (
        "gitlab",
        {"host": "gitlab.example.com"},
        {
            "authorization_url": "https://gitlab.example.com/oauth/authorize",
            "token_url": "https://gitlab.example.com/oauth/token",
            "revocation_url": "https://gitlab.example.com/oauth/revoke",
            "device_authorization_url": "https://gitlab.example.com/oauth/authorize_device",
            "issuer": None,
        },
    ),
    (
        "slack",
        {},
        {
            "authorization_url": "https://slack.com/oauth/v2/authorize",
            "token_url": "https://slack.com/api/oauth.v2.access",
            "revocation_url": None,
            "device_authorization_url": None,
            "issuer": None,
        },
    ),
    (
        "salesforce",
        {},
        {
            "authorization_url": "https://login.salesforce.com/services/oauth2/authorize",
            "token_url": "https://login.salesforce.com/services/oauth2/token",
            "revocation_url": "https://login.salesforce.com/services/oauth2/revoke",
            "device_authorization_url": None,
            "issuer": None,
        },
    ),
    (
        "salesforce",
        {"domain": "test.salesforce.com"},
        {
            "authorization_url": "https://test.salesforce.com/services/oauth2/authorize",
            "token_url": "https://test.salesforce.com/services/oauth2/token",
            "revocation_url": "https://test.salesforce.com/services/oauth2/revoke",
            "device_authorization_url": None,
            "issuer": None,
        },
    ),
    (
        "salesforce",
        {"domain": "MyDomainName--SandboxName.sandbox.my.salesforce.com"},
        {
            "authorization_url": "https://MyDomainName--SandboxName.sandbox.my.salesforce.com/services/oauth2/authorize",
            "token_url": "https://MyDomainName--SandboxName.sandbox.my.salesforce.com/services/oauth2/token",
            "revocation_url": "https://MyDomainName--SandboxName.sandbox.my.salesforce.com/services/oauth2/revoke",
            "device_authorization_url": None,
            "issuer": None,
        },
    ),
    (
        "atlassian",
        {},
        {
            "authorization_url": "https://auth.atlassian.com/authorize",
            "token_url": "https://auth.atlassian.com/oauth/token",
            "revocation_url": None,
            "device_authorization_url": None,
            "issuer": None,
        },
    ),
    (
        "hubspot",
        {},
        {
            "authorization_url": "https://app.hubspot.com/oauth/authorize",
            "token_url": "https://api.hubapi.com/oauth/2026-03/token",
            "revocation_url": "https://api.hubapi.com/oauth/2026-03/token/revoke",
            "device_authorization_url": None,
            "issuer": None,
        },
    ),
    (
        "dropbox",
        {},
        {
            "authorization_url": "https://www.dropbox.com/oauth2/authorize",
            "token_url": "https://api.dropboxapi.com/oauth2/token",
            "revocation_url": None,
            "device_authorization_url": None,
            "issuer": None,
        },
    ),
    (
        "zoom",
        {},
        {
            "authorization_url": "https://zoom.us/oauth/authorize",
            "token_url": "https://zoom.us/oauth/token",
            "revocation_url": "https://zoom.us/oauth/revoke",
            "device_authorization_url": None,
            "issuer": None,
        },
    ),
    (
        "okta",
        {"domain": "example.okta.com"},
        {
            "authorization_url": "https://example.okta.com/oauth2/default/v1/authorize",
            "token_url": "https://example.okta.com/oauth2/default/v1/token",
            "revocation_url": "https://example.okta.com/oauth2/default/v1/revoke",
            "device_authorization_url": "https://example.okta.com/oauth2/default/v1/device/authorize",
            "issuer": "https://example.okta.com/oauth2/default",
        },
    ),
    (
        "okta",
        {"domain": "login.example.com", "authorization_server": "aus1a2b3c4d5e6f7g8h9"},
        {
            "authorization_url": "https://login.example.com/oauth2/aus1a2b3c4d5e6f7g8h9/v1/authorize",
            "token_url": "https://login.example.com/oauth2/aus1a2b3c4d5e6f7g8h9/v1/token",
            "revocation_url": "https://login.example.com/oauth2/aus1a2b3c4d5e6f7g8h9/v1/revoke",
            "device_authorization_url": "https://login.example.com/oauth2/aus1a2b3c4d5e6f7g8h9/v1/device/authorize",
            "issuer": "https://login.example.com/oauth2/aus1a2b3c4d5e6f7g8h9",
        },
    ),
    (
        "auth0",
        {"domain": "example.us.auth0.com"},
        {
            "authorization_url": "https://example.us.auth0.com/authorize",
            "token_url": "https://example.us.auth0.com/oauth/token",
            "revocation_url": "https://example.us.auth0.com/oauth/revoke",
            "device_authorization_url": "https://example.us.auth0.com/oauth/device/code",
            "issuer": "https://example.us.auth0.com/",
        },
    ),
]


def provider_from(name: str, params: dict[str, object] | None = None) -> Provider:
    body = expand(name, REQUIRED.get(name, {}) if params is None else params)
    return inputs.provider(name, {**body, "client_id": "id", "client_secret": "secret"})


def invalid_field(call) -> dict[str, str]:
    with pytest.raises(Invalid) as caught:
        call()
    return caught.value.fields


# -- every preset is a valid provider ------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_expands_into_a_valid_provider(name):
    provider = provider_from(name)
    assert provider.preset == name
    assert provider.scopes
    for field in URL_FIELDS:
        value = getattr(provider, field)
        assert value is None or value.startswith("https://")


def test_the_table_covers_every_preset():
    assert {name for name, _, _ in DOCUMENTED} == set(PRESETS)


@pytest.mark.parametrize(("name", "params", "urls"), DOCUMENTED, ids=lambda v: v if isinstance(v, str) else "")
def test_urls_are_those_the_provider_documents(name, params, urls):
    body = expand(name, params)
    for field, expected in urls.items():
        assert body.get(field) == expected, field
    provider = provider_from(name, params)
    for field, expected in urls.items():
        assert getattr(provider, field) == expected, field


def test_defaults_are_filled_into_the_preset_params():
    assert expand("gitlab")["preset_params"] == {"host": "gitlab.com"}
    assert expand("microsoft")["preset_params"] == {"tenant": "common"}
    assert expand("salesforce")["preset_params"] == {"domain": "login.salesforce.com"}
    assert expand("okta", {"domain": "example.okta.com"})["preset_params"] == {
        "domain": "example.okta.com",
        "authorization_server": "default",
    }
    assert expand("google")["preset_params"] == {}


# -- quirks ----------------------------------------------------------------------------------------


def test_google_asks_for_offline_access_and_consent():
    assert provider_from("google").extra_authorize_params == {"access_type": "offline", "prompt": "consent"}


def test_microsoft_atlassian_okta_auth0_ask_for_offline_access():
    for name in ("microsoft", "atlassian", "okta", "auth0"):
        assert "offline_access" in provider_from(name).scopes, name


def test_slack_joins_scopes_with_commas():
    assert provider_from("slack").scope_separator == ","
    assert all(provider_from(name).scope_separator == " " for name in PRESETS if name != "slack")


def test_salesforce_refreshes_before_its_shortest_session_timeout():
    provider = provider_from("salesforce")
    assert provider.scopes == ("api", "refresh_token")
    shortest_session_timeout = timedelta(minutes=15)  # Salesforce's smallest inactivity timeout
    assert provider.max_token_lifetime is not None
    assert timedelta(seconds=provider.max_token_lifetime) < shortest_session_timeout
    # The token response has no expires_in: the refresher goes by max_token_lifetime alone.
    connected = datetime(2026, 1, 1, tzinfo=UTC)
    tokens = TokenSet(access_token="a", token_type="Bearer", expires_at=None, scopes=(), refresh_token="r")
    grant = Grant(name="crm", provider="salesforce", environments=("prod",), tokens=tokens, connected_at=connected)
    for margin in (0, 60, 300, 3600, 86_400):
        due = due_at(grant, margin, provider.max_token_lifetime)
        assert due is not None and connected < due < connected + shortest_session_timeout, margin


def test_dropbox_asks_for_offline_tokens():
    assert provider_from("dropbox").extra_authorize_params == {"token_access_type": "offline"}


def test_atlassian_names_its_api_audience_and_asks_for_consent():
    assert provider_from("atlassian").extra_authorize_params == {"audience": "api.atlassian.com", "prompt": "consent"}


def test_hubspot_sends_client_credentials_in_the_body():
    assert provider_from("hubspot").token_auth_method == "client_secret_post"


def test_zoom_sends_client_credentials_by_http_basic():
    assert provider_from("zoom").token_auth_method == "client_secret_basic"


def test_github_has_no_rfc7009_revocation():
    assert provider_from("github").revocation_url is None


def test_no_issuer_where_it_varies():
    # Entra's issuer names the user's tenant, which "common" does not; the others send no fixed one.
    for name in ("microsoft", "github", "gitlab", "slack", "salesforce", "atlassian", "hubspot", "dropbox", "zoom"):
        assert provider_from(name).issuer is None, name


# -- parameters are refused unless they are plain host names or identifiers ------------------------

PARAMETERISED = [
    ("microsoft", "tenant"),
    ("gitlab", "host"),
    ("salesforce", "domain"),
    ("okta", "domain"),
    ("okta", "authorization_server"),
    ("auth0", "domain"),
]

HOSTILE = [
    "evil.com/x",
    "evil.com\\x",
    "a@b",
    "x?y=1",
    "x#y",
    "host:443",
    "..",
    ".evil.com",
    "evil.com.",
    "-evil",
    "a b",
    "evil.com\n",
    "\u0435vil.com",  # a Cyrillic "e"
    "{domain}",
    "%2e%2e",
    "",
    "a" * 300,
    443,
    True,
    ["evil.com"],
    {"host": "evil.com"},
]


@pytest.mark.parametrize(("name", "param"), PARAMETERISED)
@pytest.mark.parametrize("value", HOSTILE, ids=repr)
def test_hostile_parameter_values_are_refused(name, param, value):
    params = {**REQUIRED.get(name, {}), param: value}
    assert "preset_params" in invalid_field(lambda: expand(name, params))


@pytest.mark.parametrize("name", ["okta", "auth0"])
def test_a_required_parameter_must_be_given(name):
    assert invalid_field(lambda: expand(name)) == {"preset_params": "domain is required"}
    assert invalid_field(lambda: expand(name, {})) == {"preset_params": "domain is required"}
    assert invalid_field(lambda: expand(name, {"domain": None})) == {"preset_params": "domain is required"}


def test_an_unknown_parameter_is_refused():
    assert "preset_params" in invalid_field(lambda: expand("google", {"tenant": "common"}))
    assert "preset_params" in invalid_field(lambda: expand("gitlab", {"hots": "gitlab.example.com"}))
    assert "preset_params" in invalid_field(lambda: expand("okta", {"domain": "a.okta.com", "issuer": "x"}))
    assert "preset_params" in invalid_field(lambda: expand("gitlab", {1: "x", "a": "y"}))


@pytest.mark.parametrize("given", ["host=gitlab.com", ["gitlab.com"], 5])
def test_preset_params_must_be_an_object(given):
    assert "preset_params" in invalid_field(lambda: expand("gitlab", given))


@pytest.mark.parametrize("name", ["nope", "", "Google", " google", None, 5, ["google"]])
def test_an_unknown_preset_is_refused(name):
    assert invalid_field(lambda: expand(name)) == {"preset": "unknown preset"}


# -- the catalogue ---------------------------------------------------------------------------------


def test_the_catalogue_lists_every_preset_with_its_params():
    listed = {entry["name"]: entry for entry in catalogue()}
    assert set(listed) == set(PRESETS)
    for name, entry in listed.items():
        preset = PRESETS[name]
        assert entry["title"] == preset.title
        assert entry["docs"].startswith("https://")
        assert entry["scopes"] == list(preset.scopes)
        assert entry["notes"] and "\n" not in entry["notes"]
        assert set(entry["params"]) == set(preset.params)
    assert listed["okta"]["params"] == {
        "domain": {"required": True, "default": None},
        "authorization_server": {"required": False, "default": "default"},
    }
    assert listed["auth0"]["params"] == {"domain": {"required": True, "default": None}}
    assert listed["gitlab"]["params"] == {"host": {"required": False, "default": "gitlab.com"}}
    assert listed["microsoft"]["params"] == {"tenant": {"required": False, "default": "common"}}
    assert listed["salesforce"]["params"] == {"domain": {"required": False, "default": "login.salesforce.com"}}
    assert listed["google"]["params"] == {}


# -- no parameter can move a URL to another host ---------------------------------------------------

# The host every URL must have, given the parameters: fixed, or exactly the host name the operator gave.
EXPECTED_HOST = {
    "microsoft": lambda p: "login.microsoftonline.com",
    "gitlab": lambda p: p["host"].lower(),
    "salesforce": lambda p: p["domain"].lower(),
    "okta": lambda p: p["domain"].lower(),
    "auth0": lambda p: p["domain"].lower(),
}

anything = st.one_of(
    st.text(),
    st.text(alphabet="aZ09.-_/\\@:?#%[]{} \t\n\u0435\u3002", max_size=40),
    st.from_regex(r"[a-z0-9][a-z0-9.-]{0,30}[a-z0-9]", fullmatch=True),
)


@settings(max_examples=300, deadline=None)
@given(case=st.sampled_from(PARAMETERISED), value=anything)
def test_no_parameter_moves_a_url_to_another_host(case, value):
    name, param = case
    params = {**REQUIRED.get(name, {}), param: value}
    try:
        body = expand(name, params)
    except Invalid as exc:
        assert "preset_params" in exc.fields
        return
    expected = EXPECTED_HOST[name](body["preset_params"])
    for field in URL_FIELDS:
        if field not in body:
            continue
        parts = urlsplit(body[field])
        assert parts.scheme == "https"
        assert parts.hostname == expected
        assert parts.port is None and parts.username is None and parts.password is None
        assert not parts.query and not parts.fragment
    provider_from(name, params)  # and the result is a valid provider
