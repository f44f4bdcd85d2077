"""Reading, revoking and deleting connected secrets, against real OpenBao and OAuth servers."""

import pytest
import requests

from .conftest import grant_record, start, vault_tree, views


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
