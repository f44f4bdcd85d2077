"""Creating secrets with no browser, reading, revoking and deleting them, against real OpenBao and OAuth servers."""

import json
import logging
import threading
import time
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from sidecar.refresher import Refresher
from sidecar.store import Store

from .conftest import (
    CLIENT_ID,
    CLIENT_SECRET,
    bao_kv_get,
    fast_settings,
    grant_record,
    sidecar_log,
    start,
    vault_tree,
    views,
)


@pytest.fixture
def connected(api, oauth):
    assert requests.Session().get(start(api), timeout=30).status_code == 200
    return "sheets"


def test_token_endpoint_serves_the_current_access_token(api, live, tokens, root, connected):
    response = api("GET", "/v1/secrets/sheets/token?environment=production")
    assert response.status_code == 200 and response.headers["Cache-Control"] == "no-store"
    assert response.json()["access_token"] == views(root)["production"]["access_token"]
    reader = {"X-Vault-Token": tokens.reader["production"]}
    assert api("GET", "/v1/secrets/sheets/token?environment=production", headers=reader).status_code == 200
    denied = api("GET", "/v1/secrets/sheets/token?environment=development", headers=reader)
    assert denied.status_code == 403
    assert api("GET", "/v1/secrets/sheets/token").status_code == 400
    assert api("GET", "/v1/secrets/sheets/token?environment=staging").status_code == 400
    assert api("GET", "/v1/secrets/nope/token?environment=production").status_code == 404


def test_delete_revokes_at_the_provider_then_deletes_everything(api, oauth, root, connected):
    refresh_token = grant_record(root)["refresh_token"]
    response = api("DELETE", "/v1/secrets/sheets")
    assert response.status_code == 200 and response.json()["revoked"] is True
    (revocation,) = oauth.log()["revoke"]
    assert (revocation["token"], revocation["token_type_hint"], revocation["status"]) == (
        refresh_token,
        "refresh_token",
        200,
    )
    assert list(vault_tree(root)) == ["oauth-sidecar/providers/mock"]
    assert api("GET", "/v1/secrets/sheets").status_code == 404


def test_a_503_from_the_revocation_endpoint_is_retried(api, oauth, root, connected):
    oauth.next(revoke=[503, 503])
    assert api("DELETE", "/v1/secrets/sheets").status_code == 200
    assert [r["status"] for r in oauth.log()["revoke"]] == [503, 503, 200]


def test_failed_revocation_deletes_nothing_unless_forced(api, oauth, root, connected):
    before = vault_tree(root)
    oauth.next(revoke=[500])
    refused = api("DELETE", "/v1/secrets/sheets")
    assert refused.status_code == 502 and "nothing was deleted" in refused.json()["error"]["message"]
    assert vault_tree(root) == before
    oauth.next(revoke=[500])
    forced = api("DELETE", "/v1/secrets/sheets?force=true")
    assert forced.status_code == 200 and forced.json()["revoked"] is False
    assert list(vault_tree(root)) == ["oauth-sidecar/providers/mock"]


def test_a_provider_in_use_cannot_be_deleted(api, root, connected):
    response = api("DELETE", "/v1/providers/mock")
    assert response.status_code == 409 and "sheets" in response.json()["error"]["message"]
    assert api("DELETE", "/v1/secrets/sheets").status_code == 200
    assert api("DELETE", "/v1/providers/mock").status_code == 204


def test_without_a_revocation_endpoint_delete_just_deletes(api, oauth, root, connected):
    api.register(revocation_url=None)
    response = api("DELETE", "/v1/secrets/sheets")
    assert response.status_code == 200 and response.json()["revoked"] is False
    assert oauth.log()["revokeRequests"] == 0


# -- secrets with no browser: client credentials, and a refresh token obtained elsewhere -----------


def create(api, name="robot", **body) -> requests.Response:
    return api("POST", "/v1/secrets", json={"name": name, "provider": "mock", **body})


def token_requests(oauth, grant_type: str) -> list[dict]:
    return [t for t in oauth.log()["token"] if t["grant_type"] == grant_type]


def production_token(vault, tokens, name="robot") -> str:
    """The access token, read with the real `bao` CLI as `vault kv get` would."""
    shown = bao_kv_get(vault, tokens.reader["production"], f"secret/oauth/production/{name}")
    assert shown.returncode == 0, shown.stderr
    return json.loads(shown.stdout)["data"]["data"]["access_token"]


def refresh_token_from_elsewhere(oauth) -> str:
    """A refresh token got by a login done without the sidecar (as another tool would)."""
    redirect_uri = "http://127.0.0.1:1/callback"
    authorize = requests.get(
        f"{oauth.issuer}/authorize",
        params={"response_type": "code", "client_id": CLIENT_ID, "redirect_uri": redirect_uri,
                "scope": "openid", "state": "x"},
        allow_redirects=False,
        timeout=10,
    )  # fmt: skip
    assert authorize.status_code == 302, authorize.text
    code = parse_qs(urlsplit(authorize.headers["Location"]).query)["code"][0]
    answer = requests.post(
        f"{oauth.issuer}/token",
        data={"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri},
        auth=(CLIENT_ID, CLIENT_SECRET),
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    return answer.json()["refresh_token"]


def test_client_credentials_get_a_token_with_no_browser(api, oauth, root, vault, tokens, caplog):
    caplog.set_level(logging.DEBUG)
    response = create(api, grant_type="client_credentials", scopes="openid email")
    assert response.status_code == 201, response.text
    shown = response.json()
    assert (shown["name"], shown["grant_type"], shown["status"]) == ("robot", "client_credentials", "active")
    assert shown["has_refresh_token"] is False and "access_token" not in shown
    access_token = production_token(vault, tokens)
    assert oauth.accepts(access_token)
    (request,) = token_requests(oauth, "client_credentials")
    assert request["scope"] == "openid email" and request["status"] == 200
    assert not grant_record(root, "robot")["refresh_token"]
    assert access_token not in response.text + sidecar_log(caplog)


def test_a_client_credentials_secret_stays_valid_across_several_token_lifetimes(api, oauth, root, vault, tokens):
    """Renewed with the client credentials before each token expires: a reader never sees a dead one."""
    # Tokens live 3 s, renewed 1.5 s ahead. The provider's expiry is in whole seconds, so a token
    # may live just over 2 s: a lead of 1 s on a 2 s token would leave gaps of a few ms at times.
    oauth.configure(ttl=3)
    assert create(api, grant_type="client_credentials").status_code == 201
    settings = fast_settings(vault, tokens.sidecar, SIDECAR_REFRESH_MARGIN="2")
    refresher = Refresher(settings, Store(settings, tokens.sidecar))
    stop = threading.Event()
    loop = threading.Thread(target=refresher.run, args=(stop,))
    loop.start()
    sampled, dead = set(), []
    try:
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            token = views(root, "robot")["production"]["access_token"]
            sampled.add(token)
            if not oauth.accepts(token):
                dead.append(time.monotonic())
            time.sleep(0.25)
    finally:
        stop.set()
        loop.join(timeout=60)
    assert not loop.is_alive()
    assert dead == [], f"{len(dead)} samples saw a token the provider refused"
    assert len(token_requests(oauth, "client_credentials")) >= 4 and len(sampled) >= 4
    assert oauth.accepts(production_token(vault, tokens))
    record = grant_record(root, "robot")
    assert (record["status"], record["failures"], record["refresh_token"]) == ("active", 0, "")


@pytest.mark.parametrize("rotate", [False, True], ids=["kept", "rotated"])
def test_an_imported_refresh_token_is_redeemed_at_once(api, oauth, root, vault, tokens, caplog, rotate):
    caplog.set_level(logging.DEBUG)
    oauth.configure(rotate=rotate)
    imported = refresh_token_from_elsewhere(oauth)
    response = create(api, grant_type="refresh_token", refresh_token=imported)
    assert response.status_code == 201, response.text
    assert response.json()["grant_type"] == "refresh_token" and response.json()["has_refresh_token"] is True
    (redeemed,) = token_requests(oauth, "refresh_token")
    assert (redeemed["refresh_token"], redeemed["status"]) == (imported, 200)
    access_token = production_token(vault, tokens)
    assert oauth.accepts(access_token)
    stored = grant_record(root, "robot")["refresh_token"]
    for secret in (imported, stored, access_token):
        assert secret not in response.text + sidecar_log(caplog)
    if not rotate:
        assert stored == imported
        return
    assert stored != imported
    # The imported token is spent: presenting it again is reuse, and the provider kills the family.
    again = requests.post(
        f"{oauth.issuer}/token",
        data={"grant_type": "refresh_token", "refresh_token": imported},
        auth=(CLIENT_ID, CLIENT_SECRET),
        timeout=10,
    )
    assert again.status_code == 400 and oauth.log()["reuse"] == 1


def test_a_refused_import_writes_nothing(api, oauth, root):
    before = vault_tree(root)
    response = create(api, grant_type="refresh_token", refresh_token="not-a-refresh-token")
    assert response.status_code == 502 and response.json()["error"]["code"] == "token_refused"
    assert "invalid_grant" in response.json()["error"]["message"]
    assert "not-a-refresh-token" not in response.text
    assert vault_tree(root) == before


@pytest.mark.parametrize("refusal", ["401", "unknown client"])
def test_refused_client_credentials_write_nothing(api, oauth, root, refusal):
    if refusal == "401":
        oauth.next(token={"status": 401, "body": {"error": "invalid_client"}})
    else:
        oauth.configure(clients={"someone-else": "x"})
    before = vault_tree(root)
    response = create(api, grant_type="client_credentials")
    assert response.status_code == 502 and response.json()["error"]["code"] == "token_refused"
    assert "invalid_client" in response.json()["error"]["message"]
    assert CLIENT_SECRET not in response.text
    assert vault_tree(root) == before


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"grant_type": "client_credentials", "extra": "x"}, "extra"),
        ({"grant_type": "client_credentials", "refresh_token": "r"}, "refresh_token"),
        ({"grant_type": "refresh_token"}, "refresh_token"),
        ({"grant_type": "refresh_token", "refresh_token": "  "}, "refresh_token"),
        ({"grant_type": "client_credentials", "name": "../x"}, "name"),
        ({"grant_type": "password"}, "grant_type"),
        ({"grant_type": "client_credentials", "provider": "nope"}, "provider"),
    ],
)
def test_bad_bodies_are_refused_before_the_provider_is_asked(api, oauth, root, body, field):
    before = vault_tree(root)
    response = api("POST", "/v1/secrets", json={"name": "robot", "provider": "mock", **body})
    assert response.status_code == 400, response.text
    assert field in response.json()["error"]["fields"]
    assert oauth.log()["tokenRequests"] == 0
    assert vault_tree(root) == before


def test_no_token_is_got_for_a_caller_who_may_not_store_it(api, tokens, oauth, root):
    """Checked before the provider is asked: an imported rotating refresh token is not spent for nothing."""
    before = vault_tree(root)
    reader = {"X-Vault-Token": tokens.reader["production"]}
    body = {"name": "nope", "provider": "mock", "grant_type": "refresh_token", "refresh_token": "rt-from-elsewhere"}
    assert api("POST", "/v1/secrets", json=body, headers=reader).status_code == 403
    assert oauth.log()["tokenRequests"] == 0 and vault_tree(root) == before
