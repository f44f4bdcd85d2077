"""The input rules and the provider body: names, URLs, scopes, keys, every bad field named."""

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import BestAvailableEncryption, Encoding, NoEncryption, PrivateFormat
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from sidecar import inputs
from sidecar.errors import Invalid
from sidecar.inputs import check_name, check_url, parse_scopes
from sidecar.models import GrantType, Provider

from .helpers import CLIENT_SECRET, provider_body

BAD_NAMES = ["../x", "a/b", "a b", "", "a" * 65, ".hidden", "-x", "_x", "a\n", "a\x00", "é", "a%2Fb", None, 7]


@pytest.mark.parametrize("name", ["google", "G00gle", "a", "a" * 64, "slack-prod_2.v1", "0"])
def test_name_rule_accepts(name):
    assert check_name(name) == name


@pytest.mark.parametrize("name", BAD_NAMES)
def test_name_rule_rejects(name):
    with pytest.raises(Invalid, match="1 to 64 characters"):
        check_name(name)


@given(st.text(max_size=80))
def test_every_accepted_name_is_a_safe_path_segment(name):
    try:
        check_name(name)
    except Invalid:
        return
    assert 1 <= len(name) <= 64
    assert "/" not in name and name not in (".", "..") and name.isascii() and name.isprintable()
    assert name[0].isalnum()


@pytest.mark.parametrize(
    "url",
    [
        "https://accounts.google.com/o/oauth2/v2/auth",
        "https://login.example.com:8443/token?tenant=x",
        "http://127.0.0.1:8080/token",
        "http://127.5.6.7/token",
        "http://localhost:9000/token",
        "http://[::1]:9000/token",
    ],
)
def test_url_accepts(url):
    assert check_url(url, "token_url") == url


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://example.com/token", "https"),
        ("http://10.0.0.1/token", "https"),
        ("ftp://example.com/token", "absolute https"),
        ("example.com/token", "absolute https"),
        ("https://", "absolute https"),
        ("not a url", "not a valid URL"),
        ("https://exa mple.com/", "not a valid URL"),
        ("https://example.com:99999/", "not a valid URL"),
        ("https://user:pw@example.com/", "credentials"),
        ("https://example.com/token#frag", "fragment"),
        ("https://example.com/\x00", "not a valid URL"),
        ("", "required"),
        (42, "required"),
    ],
)
def test_url_rejects(url, reason):
    with pytest.raises(Invalid, match=reason):
        check_url(url, "token_url")


def test_scopes_from_a_pasted_newline_list():
    pasted = "openid\r\nemail\n\n  https://www.googleapis.com/auth/spreadsheets  \nemail\n"
    assert parse_scopes(pasted) == ("openid", "email", "https://www.googleapis.com/auth/spreadsheets")


def test_scopes_split_on_commas_and_spaces_and_keep_order():
    assert parse_scopes("b, a c,b") == ("b", "a", "c")
    assert parse_scopes(["b a", "", "c", "a"]) == ("b", "a", "c")


@pytest.mark.parametrize("bad", ['say"hi"', "back\\slash", "tab\x01", ["ok", 3], {"a": 1}, 5])
def test_scopes_reject_bad_tokens_and_types(bad):
    with pytest.raises(Invalid):
        parse_scopes(bad)


@given(st.lists(st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E)), max_size=20))
def test_scopes_are_valid_rfc6749_tokens_or_refused(items):
    try:
        scopes = parse_scopes(items)
    except Invalid:
        assert any('"' in i or "\\" in i for i in items)
        return
    assert len(set(scopes)) == len(scopes)
    assert all(s and '"' not in s and "\\" not in s and "," not in s for s in scopes)


def test_provider_defaults_and_public_view():
    provider = inputs.provider("google", provider_body(extra_authorize_params={"access_type": "offline"}))
    assert provider.scopes == ("openid", "email", "https://www.googleapis.com/auth/spreadsheets")
    assert (provider.token_auth_method, provider.pkce, provider.revocation_url) == ("client_secret_basic", True, None)
    public = provider.public()
    assert public["client_secret_set"] is True
    assert "client_secret" not in public and CLIENT_SECRET not in str(public)
    assert CLIENT_SECRET not in repr(provider)


def test_provider_record_round_trip():
    provider = inputs.provider("google", provider_body(refresh_margin=120, pkce=False))
    assert inputs.stored_provider("google", provider.to_record()) == provider


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"client_id": None}, "client_id"),
        ({"client_secret": ""}, "client_secret"),
        ({"client_secret": "   "}, "client_secret"),
        ({"client_id": 123}, "client_id"),
        ({"scopes": None}, "scopes"),
        ({"scopes": " \n , "}, "scopes"),
        ({"pkce": "yes"}, "pkce"),
        ({"refresh_margin": -1}, "refresh_margin"),
        ({"refresh_margin": True}, "refresh_margin"),
        ({"refresh_margin": 1.5}, "refresh_margin"),
        ({"token_auth_method": "tls_client_auth"}, "token_auth_method"),
        ({"token_auth_method": "private_key_jwt"}, "private_key"),
        ({"private_key": "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"}, "private_key"),
        ({"scope_separator": ";"}, "scope_separator"),
        ({"device_authorization_url": "http://evil.example/device"}, "device_authorization_url"),
        ({"extra_authorize_params": {"redirect_uri": "https://evil.example"}}, "extra_authorize_params"),
        ({"extra_authorize_params": {"Redirect_Uri": "https://evil.example"}}, "extra_authorize_params"),
        ({"extra_authorize_params": {"prompt": 1}}, "extra_authorize_params"),
        ({"extra_authorize_params": ["a"]}, "extra_authorize_params"),
        ({"revocation_url": "http://example.com/revoke"}, "revocation_url"),
        ({"surprise": 1}, "surprise"),
        ({"name": "other"}, "name"),
    ],
)
def test_provider_rejects_bad_fields_by_name(override, field):
    with pytest.raises(Invalid) as caught:
        inputs.provider("google", provider_body(**override))
    assert field in caught.value.fields
    assert CLIENT_SECRET not in caught.value.message


def test_provider_body_must_be_an_object():
    with pytest.raises(Invalid, match="JSON object"):
        inputs.provider("google", ["client_id"])


def pem(key, encryption=None) -> str:
    return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, encryption or NoEncryption()).decode()


RSA_PEM = pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))
EC_PEM = pem(ec.generate_private_key(ec.SECP256R1()))
PREVIOUS_SECRET = "cs-previous-0e5d-never-show-me"


def jwt_provider(private_key: str = EC_PEM, **overrides) -> Provider:
    body = {"token_auth_method": "private_key_jwt", "client_secret": None, "private_key": private_key, **overrides}
    return inputs.provider("p", provider_body(**body))


def test_no_credential_shows_in_a_repr_or_the_public_view():
    provider = jwt_provider(client_secret=CLIENT_SECRET, previous_client_secret=PREVIOUS_SECRET, key_id="k1")
    public = provider.public()
    assert {public[f"{k}_set"] for k in ("client_secret", "previous_client_secret", "private_key")} == {True}
    for shown in (repr(provider), str(public)):
        assert CLIENT_SECRET not in shown and PREVIOUS_SECRET not in shown
        assert "PRIVATE KEY" not in shown and EC_PEM.splitlines()[1] not in shown
    assert not {"client_secret", "previous_client_secret", "private_key"} & set(public)


def test_the_public_view_says_which_credentials_are_unset():
    public = inputs.provider("p", provider_body()).public()
    shown = {k: public[f"{k}_set"] for k in ("client_secret", "previous_client_secret", "private_key")}
    assert shown == {"client_secret": True, "previous_client_secret": False, "private_key": False}
    assert "public_jwk" not in public


PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi"}


def test_the_public_jwk_of_an_rsa_key():
    jwk = jwt_provider(RSA_PEM, key_id="rsa-1").public()["public_jwk"]
    assert (jwk["kty"], jwk["alg"], jwk["use"], jwk["kid"], jwk["e"]) == ("RSA", "RS256", "sig", "rsa-1", "AQAB")
    assert jwk["n"] and not PRIVATE_MEMBERS & set(jwk)


def test_the_public_jwk_of_an_ec_key():
    jwk = jwt_provider(EC_PEM).public()["public_jwk"]
    assert (jwk["kty"], jwk["crv"], jwk["alg"], jwk["use"]) == ("EC", "P-256", "ES256", "sig")
    assert jwk["x"] and jwk["y"] and "kid" not in jwk and not PRIVATE_MEMBERS & set(jwk)


@pytest.mark.parametrize(
    "key",
    [
        pem(rsa.generate_private_key(public_exponent=65537, key_size=1024)),
        pem(ec.generate_private_key(ec.SECP384R1())),
        pem(ec.generate_private_key(ec.SECP256R1()), BestAvailableEncryption(b"passphrase")),
        "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n",
        EC_PEM + "A" * 20_000,
        EC_PEM.replace("PRIVATE KEY", "PUBLIC KEY"),
        42,
    ],
    ids=["rsa-1024", "ec-p384", "encrypted", "garbage", "20kB", "public", "number"],
)
def test_unusable_keys_are_refused_by_name(key):
    with pytest.raises(Invalid) as caught:
        jwt_provider(key)
    assert caught.value.fields == {"private_key": "invalid key"}
    assert "PRIVATE KEY" not in caught.value.message


def test_private_key_jwt_needs_a_key_but_no_secret():
    with pytest.raises(Invalid) as caught:
        jwt_provider("")
    assert caught.value.fields == {"private_key": "required"}
    for secret in (None, ""):
        provider = jwt_provider(client_secret=secret)
        assert provider.client_secret == "" and provider.public()["client_secret_set"] is False
    assert inputs.stored_provider("p", provider.to_record()) == provider


def test_a_secret_based_method_still_needs_the_client_secret():
    with pytest.raises(Invalid) as caught:
        inputs.provider("p", provider_body(client_secret=None, private_key=EC_PEM))
    assert "client_secret" in caught.value.fields


def test_every_bad_field_of_a_provider_is_named_at_once():
    body = provider_body(client_id=7, token_url="http://evil.example/token", scopes="bad\\scope", surprise=1)
    with pytest.raises(Invalid) as caught:
        inputs.provider("google", body)
    assert caught.value.fields == {
        "client_id": "invalid",
        "token_url": "must use https",
        "scopes": "invalid scope",
        "surprise": "unknown",
    }
    assert "token_url must use https" in caught.value.message and "unknown field surprise" in caught.value.message


def test_no_error_quotes_a_credential_back():
    """pydantic quotes the input in its own error text unless told not to: a client secret over the
    length limit would stand in the message, and in any log that prints it."""
    too_long = CLIENT_SECRET * 100
    with pytest.raises(ValidationError) as caught:
        inputs.ProviderDraft.model_validate({"client_secret": too_long})
    assert CLIENT_SECRET not in str(caught.value)
    with pytest.raises(Invalid) as invalid:
        inputs.provider("google", provider_body(client_secret=too_long))
    assert invalid.value.fields == {"client_secret": "invalid"} and CLIENT_SECRET not in invalid.value.message


def test_urls_stay_exactly_as_typed():
    """The issuer is matched exactly (RFC 9207) and the token URL is the private_key_jwt audience: a
    URL type that adds a slash or lowers the host would break both."""
    issuer, token_url = "https://Login.Example.com", "https://Login.Example.com:443/oauth2/token?x=1"
    provider = inputs.provider("p", provider_body(issuer=issuer, token_url=token_url))
    assert (provider.issuer, provider.token_url) == (issuer, token_url)


def test_json_lists_fill_the_tuple_fields_and_null_reads_as_not_given():
    provider = inputs.provider(
        "p", provider_body(code_challenge_methods_supported=["S256"], pkce=None, key_id=None, revocation_url="")
    )
    assert provider.code_challenge_methods_supported == ("S256",)
    assert (provider.pkce, provider.key_id, provider.revocation_url) == (True, "", None)


def test_a_draft_is_checked_field_by_field_before_presets_and_discovery_fill_it_in():
    draft = inputs.validated(inputs.ProviderDraft, {"issuer": "https://idp.example", "client_id": "id"}, name="p")
    assert draft.token_url is None
    with pytest.raises(Invalid) as caught:
        inputs.validated(inputs.ProviderDraft, {"issuer": "http://idp.example", "name": "q", "pkce": 1}, name="p")
    assert set(caught.value.fields) == {"issuer", "pkce"}  # the name's rule waits until the fields pass


ENVIRONMENTS = ("development", "production")


def test_every_bad_field_of_a_secret_is_named_at_once():
    body = {"name": "../x", "environments": ["staging"], "grant_type": "password", "refresh_token": ""}
    with pytest.raises(Invalid) as caught:
        inputs.secret(body, ENVIRONMENTS)
    assert set(caught.value.fields) == {"name", "provider", "environments", "grant_type", "refresh_token"}


@pytest.mark.parametrize(
    ("body", "field", "short"),
    [
        ({"environments": ["staging"]}, "environments", "unknown environment"),
        ({"environments": []}, "environments", "required"),
        ({"grant_type": "refresh_token"}, "refresh_token", "required"),
        ({"grant_type": "refresh_token", "refresh_token": "   "}, "refresh_token", "required"),
        ({"refresh_token": "rt"}, "refresh_token", "unknown"),
        ({"grant_type": "device_code"}, "grant_type", "invalid"),
    ],
)
def test_a_secret_body_breaking_a_rule_across_fields_is_refused_by_name(body, field, short):
    with pytest.raises(Invalid) as caught:
        inputs.secret({"name": "sheets", "provider": "google", **body}, ENVIRONMENTS)
    assert caught.value.fields == {field: short}


def test_a_secret_body_keeps_what_it_was_given():
    secret = inputs.secret(
        {"name": "sheets", "provider": "google", "scopes": "a\nb", "grant_type": "client_credentials"}, ENVIRONMENTS
    )
    assert (secret.name, secret.environments, secret.scopes, secret.grant_type) == (
        "sheets",
        None,
        ("a", "b"),
        GrantType.CLIENT_CREDENTIALS,
    )


def test_no_credential_shows_in_the_repr_of_a_validated_body():
    key = pem(ec.generate_private_key(ec.SECP256R1()))
    body = provider_body(previous_client_secret="cs-previous-never-show", private_key=key)
    shown = repr(inputs.validated(inputs.ProviderInput, body)) + repr(inputs.validated(inputs.ProviderDraft, body))
    assert CLIENT_SECRET not in shown and "cs-previous-never-show" not in shown and "PRIVATE KEY" not in shown
    imported = {"name": "sheets", "provider": "google", "grant_type": "refresh_token", "refresh_token": "rt-never-show"}
    assert "rt-never-show" not in repr(inputs.secret(imported, ENVIRONMENTS))
