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

from .helpers import (
    CLIENT_ID,
    CLIENT_SECRET,
    bao_kv_get,
    fast_settings,
    grant_record,
    index_entries,
    narrow_token,
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
    assert index_entries(root)["sheets"].provider == "mock"
    response = api("DELETE", "/v1/secrets/sheets")
    assert response.status_code == 200 and response.json()["revoked"] is True
    (revocation,) = oauth.log()["revoke"]
    assert (revocation["token"], revocation["token_type_hint"], revocation["status"]) == (
        refresh_token,
        "refresh_token",
        200,
    )
    assert list(vault_tree(root)) == ["oauth-sidecar/pins/mock", "oauth-sidecar/providers/mock"]
    assert "sheets" not in index_entries(root)
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
    assert list(vault_tree(root)) == ["oauth-sidecar/pins/mock", "oauth-sidecar/providers/mock"]


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


# -- who may revoke, repoint, refresh and import (security review, findings 4 and 5) ----------------


READ_ONLY = {
    "secret/data/oauth-sidecar/grants/*": ["read"],
    "secret/metadata/oauth-sidecar/grants/*": ["read", "list"],
    "secret/data/oauth-sidecar/providers/*": ["read"],
    "secret/metadata/oauth-sidecar/providers/*": ["read", "list"],
    "secret/data/oauth/*": ["read"],
    "secret/metadata/oauth/*": ["read", "list"],
}


def settings_page(live, headers: dict[str, str]) -> tuple[requests.Session, str]:
    """A browser logged in to the settings UI with the token in `headers`, and its CSRF token."""
    import re

    browser = requests.Session()
    form = browser.get(f"{live.url}/settings/login", timeout=10)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert form.status_code == 200 and csrf, form.text
    token = headers["X-Vault-Token"]
    logged_in = browser.post(
        f"{live.url}/settings/login", data={"vault_token": token, "csrf_token": csrf.group(1)}, timeout=10
    )
    assert logged_in.status_code == 200 and logged_in.url == f"{live.url}/settings", logged_in.text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', logged_in.text)
    assert csrf, logged_in.text
    return browser, csrf.group(1)


def test_a_read_only_token_cannot_revoke_a_secret(api, oauth, root, connected):
    """Finding 4: DELETE revoked at the provider first and asked Vault second, so a token that may
    only read killed the grant's tokens; now it is refused before the provider hears anything."""
    before, grant_before, views_before = vault_tree(root), grant_record(root), views(root)
    reader = narrow_token(root, "test-grants-read-only", READ_ONLY)
    for force in ("", "?force=true"):
        refused = api("DELETE", f"/v1/secrets/sheets{force}", headers=reader)
        assert refused.status_code == 403, refused.text
    assert oauth.log()["revokeRequests"] == 0
    assert vault_tree(root) == before and grant_record(root) == grant_before and views(root) == views_before
    assert oauth.accepts(views(root)["production"]["access_token"])


def test_delete_needs_delete_rights_on_every_view_before_anything_is_revoked(api, oauth, root, connected):
    """Finding 4: delete on the secret and its production view but not its development view: refused,
    nothing revoked; with delete on every view the same call revokes once and deletes everything."""
    grant_and_production = {
        "secret/data/oauth-sidecar/providers/mock": ["read"],
        "secret/data/oauth-sidecar/grants/sheets": ["read", "delete"],
        "secret/metadata/oauth-sidecar/grants/sheets": ["read", "delete"],
        "secret/data/oauth/production/sheets": ["read", "delete"],
        "secret/metadata/oauth/production/sheets": ["read", "delete"],
    }
    before = vault_tree(root)
    partial = narrow_token(root, "test-delete-sheets-production", grant_and_production)
    refused = api("DELETE", "/v1/secrets/sheets", headers=partial)
    assert refused.status_code == 403 and "one of its environments" in refused.json()["error"]["message"]
    assert oauth.log()["revokeRequests"] == 0 and vault_tree(root) == before
    assert list(views(root)) == ["development", "production"]

    everything = narrow_token(
        root,
        "test-delete-sheets-everywhere",
        {
            **grant_and_production,
            "secret/data/oauth/development/sheets": ["read", "delete"],
            "secret/metadata/oauth/development/sheets": ["read", "delete"],
        },
    )
    deleted = api("DELETE", "/v1/secrets/sheets", headers=everything)
    assert deleted.status_code == 200 and deleted.json()["revoked"] is True, deleted.text
    assert oauth.log()["revokeRequests"] == 1
    assert list(vault_tree(root)) == ["oauth-sidecar/pins/mock", "oauth-sidecar/providers/mock"]


def test_a_read_only_token_cannot_revoke_a_secret_from_the_settings_page(api, live, oauth, root, connected):
    """Finding 4, in the UI: the delete form of a person who may only read is refused before the
    provider revokes anything."""
    browser, csrf = settings_page(live, narrow_token(root, "test-ui-read-only", READ_ONLY))
    before = grant_record(root), views(root)
    assert browser.get(f"{live.url}/settings/secrets/sheets/delete", timeout=10).status_code == 200
    refused = browser.post(f"{live.url}/settings/secrets/sheets/delete", data={"csrf_token": csrf}, timeout=10)
    assert refused.status_code == 403 and "permission denied" in refused.text, refused.text
    assert oauth.log()["revokeRequests"] == 0 and (grant_record(root), views(root)) == before


# What a provider writer has: create/update on providers, and nothing on any secret.
PROVIDER_WRITER = {
    "secret/data/oauth-sidecar/providers/*": ["create", "read", "update"],
    "secret/metadata/oauth-sidecar/providers/*": ["read", "list"],
}


def provider_record(root, name: str = "mock") -> dict:
    return root.secrets.kv.v2.read_secret_version(
        path=f"oauth-sidecar/providers/{name}", mount_point="secret", raise_on_deleted_version=True
    )["data"]["data"]


def test_a_provider_writer_cannot_point_secrets_that_are_not_theirs_at_another_token_url(api, oauth, root, connected):
    """Finding 5: create/update on providers/* was enough to change a provider's token_url, and the
    next refresh posted the secret's refresh token there. Harmless edits stay allowed."""
    writer = narrow_token(root, "test-provider-writer", PROVIDER_WRITER)
    before = provider_record(root)
    moved = api("PUT", "/v1/providers/mock", json=oauth.registration(token_url="https://evil.example/token"),
                headers=writer)  # fmt: skip
    assert moved.status_code == 403, moved.text
    assert "1 of 1 are not yours" in moved.json()["error"]["message"]
    assert provider_record(root) == before

    harmless = [("client_secret", "a-rotated-secret", "a-rotated-secret"), ("scopes", "openid", ["openid"])]
    for field, value, stored in harmless:
        saved = api("PUT", "/v1/providers/mock", json=oauth.registration(**{field: value}), headers=writer)
        assert saved.status_code == 200, saved.text
        after = provider_record(root)
        assert after[field] == stored and after["token_url"] == f"{oauth.issuer}/token"


@pytest.mark.parametrize(
    "change",
    [
        {"client_id": "someone-elses-client"},
        {"authorization_url": "https://evil.example/authorize"},
        {"token_url": "https://evil.example/token"},
        {"revocation_url": "https://evil.example/revoke"},
        {"device_authorization_url": "https://evil.example/device"},
        {"issuer": "https://evil.example"},
    ],
    ids=lambda change: next(iter(change)),
)
def test_every_field_that_decides_where_tokens_go_needs_rights_on_the_secrets(api, oauth, root, connected, change):
    """Finding 5: each field that says where a grant's tokens or credentials are sent is guarded."""
    writer = narrow_token(root, "test-provider-writer", PROVIDER_WRITER)
    before = provider_record(root)
    moved = api("PUT", "/v1/providers/mock", json=oauth.registration(**change), headers=writer)
    assert moved.status_code == 403 and "1 of 1 are not yours" in moved.text, moved.text
    assert provider_record(root) == before


def test_only_whoever_may_update_every_secret_of_a_provider_may_repoint_it(api, oauth, root):
    """Finding 5: update rights on one of the provider's two secrets are not enough; on both, they are."""
    for name in ("sheets", "docs"):
        assert requests.Session().get(start(api, name), timeout=30).status_code == 200
    elsewhere = oauth.registration(token_url="https://tokens.example.com/token")
    sheets_only = narrow_token(
        root, "test-provider-and-sheets", {**PROVIDER_WRITER, "secret/data/oauth-sidecar/grants/sheets": ["update"]}
    )
    refused = api("PUT", "/v1/providers/mock", json=elsewhere, headers=sheets_only)
    assert refused.status_code == 403 and "1 of 2 are not yours" in refused.json()["error"]["message"]
    assert provider_record(root)["token_url"] == f"{oauth.issuer}/token"

    both = narrow_token(
        root,
        "test-provider-and-both",
        {**PROVIDER_WRITER, "secret/data/oauth-sidecar/grants/sheets": ["update"],
         "secret/data/oauth-sidecar/grants/docs": ["update"]},
    )  # fmt: skip
    saved = api("PUT", "/v1/providers/mock", json=elsewhere, headers=both)
    assert saved.status_code == 200, saved.text
    assert provider_record(root)["token_url"] == "https://tokens.example.com/token"


def test_after_a_refused_repoint_refresh_tokens_still_go_to_the_real_token_url(
    api, oauth, root, connected, token_thief
):
    """Finding 5, the attack itself: a provider writer points token_url at their own server, then the
    secret is refreshed. The refresh token goes to the provider's real token URL only."""
    refresh_token = grant_record(root)["refresh_token"]
    writer = narrow_token(root, "test-provider-writer", PROVIDER_WRITER)
    thief_url, stolen = token_thief
    moved = api("PUT", "/v1/providers/mock", json=oauth.registration(token_url=thief_url), headers=writer)
    assert moved.status_code == 403, moved.text
    refreshed = api("POST", "/v1/secrets/sheets/refresh")
    assert refreshed.status_code == 200, refreshed.text
    assert stolen == []
    (redeemed,) = token_requests(oauth, "refresh_token")
    assert (redeemed["refresh_token"], redeemed["status"]) == (refresh_token, 200)
    assert oauth.accepts(views(root)["production"]["access_token"])


def test_the_provider_form_cannot_repoint_secrets_that_are_not_yours(api, live, oauth, root, connected):
    """Finding 5, in the UI: the provider's edit form is refused the same way as the API."""
    before = provider_record(root)
    browser, csrf = settings_page(live, narrow_token(root, "test-ui-provider-writer", PROVIDER_WRITER))
    form = {
        "csrf_token": csrf,
        "client_id": CLIENT_ID,
        "client_secret": "",
        "authorization_url": f"{oauth.issuer}/authorize",
        "token_url": "https://evil.example/token",
        "revocation_url": f"{oauth.issuer}/revoke",
        "scopes": "openid\nprofile\nemail",
        "pkce": "on",
    }
    refused = browser.post(f"{live.url}/settings/providers/mock", data=form, timeout=10)
    assert refused.status_code == 403 and "1 of 1 are not yours" in refused.text, refused.text
    assert provider_record(root) == before


def test_refresh_now_with_a_read_only_token_asks_the_provider_nothing(api, oauth, root, connected):
    """Refresh now is checked before the provider is asked: a read-only token gets 403, no token request.
    A guard, not a regression test: this check predates the review's fixes, so it passed before them too."""
    before, asked = grant_record(root), oauth.log()["tokenRequests"]
    refused = api("POST", "/v1/secrets/sheets/refresh", headers=narrow_token(root, "test-read-only", READ_ONLY))
    assert refused.status_code == 403, refused.text
    assert oauth.log()["tokenRequests"] == asked and grant_record(root) == before


def create_as(api, headers: dict[str, str], name="robot", **body) -> requests.Response:
    return api("POST", "/v1/secrets", json={"name": name, "provider": "mock", **body}, headers=headers)


# create/update on the secret `robot` and its production view only.
ROBOT_IN_PRODUCTION = {
    "secret/data/oauth-sidecar/providers/*": ["read"],
    "secret/data/oauth-sidecar/grants/robot": ["create", "read", "update"],
    "secret/metadata/oauth-sidecar/grants/robot": ["create", "update"],
    "secret/data/oauth/production/robot": ["create", "read", "update"],
    "secret/metadata/oauth/production/robot": ["create", "update"],
}


def test_an_import_without_rights_on_every_view_spends_nothing(api, oauth, root):
    """Finding 3's rule for imports: rights on the secret but not on its development view: refused
    before the imported refresh token is redeemed (it stays good); production alone is allowed."""
    oauth.configure(rotate=True)
    imported = refresh_token_from_elsewhere(oauth)
    caller = narrow_token(root, "test-robot-in-production", ROBOT_IN_PRODUCTION)
    before = vault_tree(root)
    refused = create_as(api, caller, grant_type="refresh_token", refresh_token=imported)
    assert refused.status_code == 403, refused.text
    assert token_requests(oauth, "refresh_token") == [] and vault_tree(root) == before
    assert "one of its environments" in refused.json()["error"]["message"]

    allowed = create_as(api, caller, grant_type="refresh_token", refresh_token=imported, environments=["production"])
    assert allowed.status_code == 201, allowed.text
    (redeemed,) = token_requests(oauth, "refresh_token")
    assert (redeemed["refresh_token"], redeemed["status"]) == (imported, 200) and oauth.log()["reuse"] == 0
    assert list(views(root, "robot")) == ["production"]


def test_client_credentials_without_rights_on_every_view_ask_the_provider_nothing(api, oauth, root):
    """Finding 3's rule for client credentials: refused before the provider is asked."""
    caller = narrow_token(root, "test-robot-in-production", ROBOT_IN_PRODUCTION)
    before = vault_tree(root)
    refused = create_as(api, caller, grant_type="client_credentials")
    assert refused.status_code == 403 and token_requests(oauth, "client_credentials") == []
    assert vault_tree(root) == before
    allowed = create_as(api, caller, grant_type="client_credentials", environments=["production"])
    assert allowed.status_code == 201, allowed.text
    assert list(views(root, "robot")) == ["production"]


def test_a_device_login_without_rights_on_every_view_shows_no_code(api, oauth, root, vault, tmp_path):
    """Finding 3's rule for `secrets connect --device`: refused before the provider is asked for a
    user code, so nobody is asked to approve a login that could not be stored."""
    import subprocess

    from .helpers import OAUTH_SIDECAR, refresher_env

    api.register(device_authorization_url=f"{oauth.issuer}/device_authorization")
    oauth.configure(deviceInterval=1, deviceTtl=3)
    token = narrow_token(root, "test-robot-in-production", ROBOT_IN_PRODUCTION)["X-Vault-Token"]
    before = vault_tree(root)
    done = subprocess.run(
        [OAUTH_SIDECAR, "secrets", "connect", "robot", "--provider", "mock", "--device"],
        env=refresher_env(vault, token, tmp_path), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1 and "permission denied" in done.stderr, done.stderr
    assert "enter the code" not in done.stderr
    assert oauth.log()["device"] == [] and oauth.log()["tokenRequests"] == 0
    assert vault_tree(root) == before


def test_a_provider_writer_cannot_repoint_secrets_by_writing_to_vault_directly(
    api, oauth, root, vault, tokens, connected, token_thief
):
    """Finding 5, around the sidecar: a token with create/update on providers/* needs no sidecar to
    change token_url; it writes the record with Vault's own API. The refresher, which reads providers
    with its own token, must still never post the secret's refresh token anywhere new."""
    writer = narrow_token(root, "test-provider-writer", PROVIDER_WRITER)
    thief_url, stolen = token_thief
    written = requests.post(
        f"{vault.addr}/v1/secret/data/oauth-sidecar/providers/mock",
        headers=writer,
        json={"data": {**provider_record(root), "token_url": thief_url}},
        timeout=10,
    )
    assert written.status_code == 200, written.text  # Vault's policy allows it: the sidecar is not asked
    settings = fast_settings(vault, tokens.sidecar)
    Refresher(settings, Store(settings, tokens.sidecar)).refresh_one("sheets", force=True)  # no cached provider
    assert stolen == []
