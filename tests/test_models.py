from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import BestAvailableEncryption, Encoding, NoEncryption, PrivateFormat
from hypothesis import given
from hypothesis import strategies as st

from sidecar.errors import Invalid
from sidecar.models import (
    Grant,
    GrantType,
    Provider,
    Status,
    TokenSet,
    check_name,
    check_url,
    due_at,
    expiry_from,
    parse_scopes,
)

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
    provider = Provider.from_input("google", provider_body(extra_authorize_params={"access_type": "offline"}))
    assert provider.scopes == ("openid", "email", "https://www.googleapis.com/auth/spreadsheets")
    assert (provider.token_auth_method, provider.pkce, provider.revocation_url) == ("client_secret_basic", True, None)
    public = provider.public()
    assert public["client_secret_set"] is True
    assert "client_secret" not in public and CLIENT_SECRET not in str(public)
    assert CLIENT_SECRET not in repr(provider)


def test_provider_record_round_trip():
    provider = Provider.from_input("google", provider_body(refresh_margin=120, pkce=False))
    assert Provider.from_record("google", provider.to_record()) == provider


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
        Provider.from_input("google", provider_body(**override))
    assert field in caught.value.fields
    assert CLIENT_SECRET not in caught.value.message


def test_provider_body_must_be_an_object():
    with pytest.raises(Invalid, match="JSON object"):
        Provider.from_input("google", ["client_id"])


NOW = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("expires_in", "expected"),
    [
        (3600, NOW + timedelta(hours=1)),
        ("3600", NOW + timedelta(hours=1)),
        (59.9, NOW + timedelta(seconds=59)),
        (None, None),
        (0, None),
        (-5, None),
        ("soon", None),
        (True, None),
        (10**12, None),
        (float("nan"), None),
    ],
)
def test_expiry_from_tolerates_any_expires_in(expires_in, expected):
    assert expiry_from(expires_in, NOW) == expected


def test_grant_views_carry_exactly_the_contract_fields_and_no_refresh_token():
    tokens = TokenSet("at-secret", "Bearer", NOW, ("openid", "email"), refresh_token="rt-secret", id_token="idt")
    grant = Grant("sheets", "google", ("production",), tokens, connected_at=NOW)
    assert grant.view() == {
        "access_token": "at-secret",
        "token_type": "Bearer",
        "expires_at": "2026-01-01T00:00:00Z",
        "scope": "openid email",
        "provider": "google",
        "status": "active",
    }
    assert Grant.from_record("sheets", grant.to_record()) == grant
    for shown in (repr(grant), repr(tokens), str(grant.public())):
        assert "at-secret" not in shown and "rt-secret" not in shown and "idt" not in shown


def grant_expiring(lifetime: float | None, **changes) -> Grant:
    expires = NOW + timedelta(seconds=lifetime) if lifetime is not None else None
    tokens = TokenSet("at", "Bearer", expires, ("openid",), refresh_token="rt")
    return replace(Grant("sheets", "google", ("production",), tokens, last_refreshed_at=NOW), **changes)


@pytest.mark.parametrize(
    ("lifetime", "margin", "lead"),
    [(3600, 300, 300), (3600, 0, 0), (400, 300, 200), (4, 300, 2)],
)
def test_due_at_is_expiry_less_the_smaller_of_margin_and_half_the_lifetime(lifetime, margin, lead):
    due = due_at(grant_expiring(lifetime), margin)
    latest = NOW + timedelta(seconds=lifetime - lead)
    assert latest - timedelta(seconds=lead * 0.1) <= due <= latest


def test_due_at_jitter_spreads_grants_made_together():
    dues = {due_at(replace(grant_expiring(3600), name=f"g{i}"), 300) for i in range(200)}
    assert len(dues) > 150
    assert min(dues) >= NOW + timedelta(seconds=3600 - 330) and max(dues) <= NOW + timedelta(seconds=3300)


def test_due_at_without_expiry_needs_a_maximum_lifetime():
    assert due_at(grant_expiring(None), 300) is None
    assert due_at(grant_expiring(None), 300, max_token_lifetime=3600) == due_at(grant_expiring(3600), 300)


def test_due_at_never_for_a_dead_grant_or_one_without_refresh_token():
    assert due_at(grant_expiring(3600, status="reauthorization_required"), 300) is None
    no_refresh = grant_expiring(3600)
    assert due_at(replace(no_refresh, tokens=replace(no_refresh.tokens, refresh_token=None)), 300) is None


def test_due_at_waits_for_the_backoff():
    later = NOW + timedelta(hours=2)
    assert due_at(grant_expiring(3600, status="retrying", next_attempt_at=later), 300) == later


# -- credentials: client secrets and private_key_jwt keys -------------------------------------------


def pem(key, encryption=None) -> str:
    return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, encryption or NoEncryption()).decode()


RSA_PEM = pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))
EC_PEM = pem(ec.generate_private_key(ec.SECP256R1()))
PREVIOUS_SECRET = "cs-previous-0e5d-never-show-me"


def jwt_provider(private_key: str = EC_PEM, **overrides) -> Provider:
    body = {"token_auth_method": "private_key_jwt", "client_secret": None, "private_key": private_key, **overrides}
    return Provider.from_input("p", provider_body(**body))


def test_no_credential_shows_in_a_repr_or_the_public_view():
    provider = jwt_provider(client_secret=CLIENT_SECRET, previous_client_secret=PREVIOUS_SECRET, key_id="k1")
    public = provider.public()
    assert {public[f"{k}_set"] for k in ("client_secret", "previous_client_secret", "private_key")} == {True}
    for shown in (repr(provider), str(public)):
        assert CLIENT_SECRET not in shown and PREVIOUS_SECRET not in shown
        assert "PRIVATE KEY" not in shown and EC_PEM.splitlines()[1] not in shown
    assert not {"client_secret", "previous_client_secret", "private_key"} & set(public)


def test_the_public_view_says_which_credentials_are_unset():
    public = Provider.from_input("p", provider_body()).public()
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
    assert Provider.from_record("p", provider.to_record()) == provider


def test_a_secret_based_method_still_needs_the_client_secret():
    with pytest.raises(Invalid) as caught:
        Provider.from_input("p", provider_body(client_secret=None, private_key=EC_PEM))
    assert "client_secret" in caught.value.fields


def test_a_grant_record_reads_its_vocabularies_and_an_unknown_value_as_the_default():
    record = {"provider": "mock", "access_token": "at", "status": "retrying", "grant_type": "device_code"}
    grant = Grant.from_record("sheets", record)
    assert (grant.status, grant.grant_type) == (Status.RETRYING, GrantType.DEVICE_CODE)
    odd = Grant.from_record("sheets", {**record, "status": "bogus", "grant_type": ["a list"]})
    assert (odd.status, odd.grant_type) == (Status.ACTIVE, GrantType.AUTHORIZATION_CODE)
    assert odd.to_record()["status"] == "active"  # a plain string in Vault, as before


# -- a grant's state changes, without Vault ----------------------------------------------------------

T0 = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def claimed_grant(**fields) -> Grant:
    tokens = TokenSet("at-1", "Bearer", T0 + timedelta(hours=1), ("openid",), "rt-1")
    return Grant("sheets", "mock", ("production",), tokens, **fields).claimed("replica-a", T0 + timedelta(minutes=2))


def test_every_state_change_that_ends_a_refresh_releases_the_claim():
    grant = claimed_grant()
    assert (grant.claim_owner, grant.claim_until) == ("replica-a", T0 + timedelta(minutes=2))
    new = TokenSet("at-2", "Bearer", T0 + timedelta(hours=2), ("openid",), "rt-2")
    for ended in (grant.refreshed(new, T0, None), grant.failed("down", T0, T0), grant.needs_login("dead", T0)):
        assert (ended.claim_owner, ended.claim_until) == ("", None)


def test_a_refresh_keeps_the_old_refresh_token_when_the_provider_sends_none():
    renewed = claimed_grant().refreshed(TokenSet("at-2", "Bearer", None, ("openid",)), T0, None)
    assert (renewed.tokens.access_token, renewed.tokens.refresh_token) == ("at-2", "rt-1")


def test_failures_count_up_and_a_refresh_forgets_them():
    once = claimed_grant().failed("provider down", T0 + timedelta(seconds=5), T0)
    twice = once.failed("still down", T0 + timedelta(seconds=15), T0 + timedelta(seconds=5))
    assert (twice.status, twice.failures, twice.last_error) == (Status.RETRYING, 2, "still down")
    assert twice.failing_since == T0  # since the first failure, not the latest
    back = twice.refreshed(twice.tokens, T0 + timedelta(seconds=20), None)
    assert (back.status, back.failures, back.last_error, back.failing_since) == (Status.ACTIVE, 0, "", None)


def test_failing_since_stays_until_the_recovery_is_announced():
    dead = claimed_grant().needs_login("invalid_grant", T0).announced()
    assert (dead.status, dead.notified, dead.next_attempt_at) == (
        Status.REAUTHORIZATION_REQUIRED,
        "reauthorization_required",
        None,
    )
    back = dead.refreshed(dead.tokens, T0 + timedelta(minutes=5), None)
    assert back.status == Status.ACTIVE and back.failing_since == T0  # the recovery is still to be announced
    recovered = back.announced()
    assert (recovered.notified, recovered.failing_since) == ("", None)
