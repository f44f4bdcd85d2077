import json
import logging

import pytest

from sidecar.web import MAX_BODY_BYTES

from .helpers import CLIENT_SECRET, bao_kv_get, listed_grants, provider_body, vault_tree


def test_provider_lifecycle(client, admin, root):
    created = client.put("/v1/providers/google", json=provider_body(), headers=admin)
    assert created.status_code == 201
    assert created.json["scopes"] == ["openid", "email", "https://www.googleapis.com/auth/spreadsheets"]
    assert created.json["client_secret_set"] is True

    got = client.get("/v1/providers/google", headers=admin)
    assert got.status_code == 200 and got.json == created.json

    replaced = client.put(
        "/v1/providers/google", json=provider_body(client_id="new-id", scopes=["openid"]), headers=admin
    )
    assert replaced.status_code == 200
    assert client.get("/v1/providers/google", headers=admin).json["client_id"] == "new-id"

    client.put("/v1/providers/slack", json=provider_body(), headers=admin)
    listed = client.get("/v1/providers", headers=admin).json["providers"]
    assert [p["name"] for p in listed] == ["google", "slack"]

    assert client.delete("/v1/providers/google", headers=admin).status_code == 204
    gone = client.get("/v1/providers/google", headers=admin)
    assert gone.status_code == 404 and gone.json["error"]["code"] == "not_found"
    assert client.delete("/v1/providers/google", headers=admin).status_code == 404
    assert list(vault_tree(root)) == ["oauth-sidecar/pins/slack", "oauth-sidecar/providers/slack"]


def test_stored_where_the_contract_says(client, admin, vault, tokens):
    client.put("/v1/providers/google", json=provider_body(pkce=False), headers=admin)
    out = bao_kv_get(vault, tokens.admin, "secret/oauth-sidecar/providers/google")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)["data"]["data"]
    assert data["client_secret"] == CLIENT_SECRET
    assert data["token_url"] == "https://oauth2.example.com/token"
    assert data["pkce"] is False
    # An app's reader token cannot see the provider tree at all.
    denied = bao_kv_get(vault, tokens.reader["production"], "secret/oauth-sidecar/providers/google")
    assert denied.returncode != 0 and "permission denied" in denied.stderr


def test_client_secret_never_leaves(client, admin, caplog):
    caplog.set_level(logging.DEBUG)
    bodies = [
        client.put("/v1/providers/google", json=provider_body(), headers=admin),
        client.put("/v1/providers/google", json=provider_body(), headers=admin),
        client.get("/v1/providers/google", headers=admin),
        client.get("/v1/providers", headers=admin),
        client.put("/v1/providers/google", json=provider_body(token_url="http://evil.example"), headers=admin),
        client.put("/v1/providers/google", json=provider_body(scopes='"'), headers=admin),
    ]
    for response in bodies:
        assert CLIENT_SECRET not in response.get_data(as_text=True)
    assert CLIENT_SECRET not in caplog.text


BAD_REQUESTS = [
    # (path, body as sent, expected status)
    ("/v1/providers/..%2Fx", provider_body(), 404),
    ("/v1/providers/../x", provider_body(), 404),
    ("/v1/providers/a/b", provider_body(), 404),
    ("/v1/providers/a%20b", provider_body(), 400),
    ("/v1/providers/.hidden", provider_body(), 400),
    ("/v1/providers/" + "a" * 65, provider_body(), 400),
    ("/v1/providers/", provider_body(), 404),
    ("/v1/providers/google", provider_body(client_id=None), 400),
    ("/v1/providers/google", provider_body(client_secret=None), 400),
    ("/v1/providers/google", provider_body(authorization_url=None), 400),
    ("/v1/providers/google", provider_body(token_url=None), 400),
    ("/v1/providers/google", provider_body(scopes=None), 400),
    ("/v1/providers/google", provider_body(token_url="http://oauth2.example.com/token"), 400),
    ("/v1/providers/google", provider_body(authorization_url="http://203.0.113.9/auth"), 400),
    ("/v1/providers/google", provider_body(token_url="https//missing-colon"), 400),
    ("/v1/providers/google", provider_body(token_url="https://exa mple.com"), 400),
    ("/v1/providers/google", provider_body(scopes='openid "email"'), 400),
    ("/v1/providers/google", provider_body(scopes=["openid", "back\\slash"]), 400),
    ("/v1/providers/google", provider_body(extra="field"), 400),
    ("/v1/providers/google", "not json at all", 400),
    ("/v1/providers/google", "[1, 2, 3]", 400),
    ("/v1/providers/google", '"a string"', 400),
    ("/v1/providers/google", "null", 400),
    ("/v1/providers/google", "", 400),
    ("/v1/providers/google", b"\xff\xfe", 400),
    ("/v1/providers/google", json.dumps(provider_body(client_id="x" * MAX_BODY_BYTES)), 413),
]


@pytest.mark.parametrize(("path", "body", "status"), BAD_REQUESTS)
def test_bad_input_is_refused_and_writes_nothing(client, admin, root, path, body, status):
    data = body if isinstance(body, str | bytes) else json.dumps(body)
    response = client.put(path, data=data, headers={**admin, "Content-Type": "application/json"})
    assert response.status_code == status
    error = response.json["error"]
    assert error["code"] and error["message"]
    assert "Traceback" not in response.get_data(as_text=True)
    assert vault_tree(root) == {}


def test_a_refused_replace_keeps_the_old_provider(client, admin, root):
    client.put("/v1/providers/google", json=provider_body(), headers=admin)
    before = vault_tree(root)
    response = client.put("/v1/providers/google", json=provider_body(scopes="bad\\scope"), headers=admin)
    assert response.status_code == 400 and response.json["error"]["fields"] == {"scopes": "invalid scope"}
    assert vault_tree(root) == before


def test_post_creates_a_provider_and_never_replaces_one(client, admin, root, settings):
    created = client.post("/v1/providers", json={"name": "google", **provider_body()}, headers=admin)
    assert created.status_code == 201, created.json
    assert created.json["redirect_uri"] == f"{settings.public_url}/callback"
    before = vault_tree(root)
    again = client.post(
        "/v1/providers", json={"name": "google", **provider_body(client_id="someone-else")}, headers=admin
    )
    assert again.status_code == 409 and again.json["error"]["code"] == "exists"
    assert again.json["error"]["fields"] == {"name": "exists"} and "edit it instead" in again.json["error"]["message"]
    assert vault_tree(root) == before  # the client ID typed by mistake replaced nothing
    assert client.put("/v1/providers/google", json=provider_body(client_id="b"), headers=admin).status_code == 200


def test_post_without_a_valid_name_is_refused(client, admin, root):
    for body in ({**provider_body()}, {"name": "../x", **provider_body()}, {"name": 3, **provider_body()}):
        response = client.post("/v1/providers", json=body, headers=admin)
        assert response.status_code == 400 and "name" in response.json["error"]["fields"], body
    assert vault_tree(root) == {}


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-Vault-Token": "s.not-a-real-token"},
        {"Authorization": "Bearer s.not-a-real-token"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"X-Vault-Token": "bad token\x7f"},
    ],
)
def test_missing_or_invalid_token_is_401(client, root, headers):
    for method, path in [("get", "/v1/providers"), ("put", "/v1/providers/google"), ("delete", "/v1/providers/x")]:
        response = getattr(client, method)(path, json=provider_body(), headers=headers)
        assert response.status_code == 401, (method, path)
        assert response.json["error"]["code"] == "unauthorized"
    assert vault_tree(root) == {}


def test_bearer_token_works_and_vault_policy_decides(client, tokens, root):
    bearer = {"Authorization": f"Bearer {tokens.admin}"}
    assert client.put("/v1/providers/google", json=provider_body(), headers=bearer).status_code == 201
    reader = {"X-Vault-Token": tokens.reader["production"]}
    for response in (
        client.get("/v1/providers", headers=reader),
        client.get("/v1/providers/google", headers=reader),
        client.put("/v1/providers/google", json=provider_body(client_id="hijack"), headers=reader),
        client.delete("/v1/providers/google", headers=reader),
    ):
        assert response.status_code == 403 and response.json["error"]["code"] == "forbidden"
    assert client.get("/v1/providers/google", headers=bearer).json["client_id"] == "1234.apps.example.com"


def test_unknown_routes_and_methods_answer_json(client, admin):
    assert client.get("/v1/nothing", headers=admin).json["error"]["code"] == "not_found"
    response = client.post("/v1/providers/google", json={}, headers=admin)
    assert response.status_code == 405 and response.json["error"]["code"] == "method_not_allowed"


def test_a_token_revoked_after_its_first_use_gets_401(client, vault, root):
    token = root.auth.token.create(policies=["oauth-admin"], ttl="10m")["auth"]["client_token"]
    assert client.get("/v1/providers", headers={"X-Vault-Token": token}).status_code == 200
    root.auth.token.revoke(token)
    response = client.get("/v1/providers", headers={"X-Vault-Token": token})
    assert response.status_code == 401 and response.json["error"]["code"] == "unauthorized"


def test_every_bad_field_of_a_provider_is_answered_at_once(client, admin, root):
    body = provider_body(client_id=7, token_url="http://evil.example/token", surprise=1)
    response = client.put("/v1/providers/google", json=body, headers=admin)
    assert response.status_code == 400
    assert response.json["error"]["fields"] == {
        "client_id": "invalid",
        "token_url": "must use https",
        "surprise": "unknown",
    }
    assert CLIENT_SECRET not in response.get_data(as_text=True)
    assert vault_tree(root) == {}


def test_every_bad_field_of_a_secret_is_answered_at_once(client, admin, root):
    client.put("/v1/providers/google", json=provider_body(), headers=admin)
    before = vault_tree(root)
    body = {"name": "../x", "provider": "google", "environments": ["staging"], "surprise": 1}
    response = client.post("/v1/secrets", json=body, headers=admin)
    assert response.status_code == 400
    assert response.json["error"]["fields"] == {
        "name": "invalid name",
        "environments": "unknown environment",
        "surprise": "unknown",
    }
    assert vault_tree(root) == before


def test_secrets_come_in_pages_filtered_with_counts(client, admin, store):
    names = listed_grants(store, 10)
    seen, cursor, pages = [], None, []
    while True:
        answer = client.get("/v1/secrets", query_string={"limit": 4, **({"cursor": cursor} if cursor else {})},
                            headers=admin).json  # fmt: skip
        pages.append(answer)
        seen += [s["name"] for s in answer["secrets"]]
        cursor = answer["next"]
        if cursor is None:
            break
    assert seen == names and [len(p["secrets"]) for p in pages] == [4, 4, 2]
    assert pages[0]["counts"] == {"retrying": 3, "active": 7} and pages[1]["counts"] is None

    def names_of(**query) -> list[str]:
        return [s["name"] for s in client.get("/v1/secrets", query_string=query, headers=admin).json["secrets"]]

    assert names_of(status="retrying") == [names[i] for i in (0, 4, 8)]
    assert names_of(provider="other") == [names[i] for i in (0, 3, 6, 9)]
    assert names_of(environment="development") == [names[i] for i in (0, 2, 4, 6, 8)]
    assert names_of(q="S-000") == names[:10] and names_of(q="7") == [names[7]]
    counted = client.get("/v1/secrets", query_string={"provider": "other", "status": "active"}, headers=admin).json
    assert counted["counts"] == {"retrying": 1, "active": 3}  # counts keep to every filter but status


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "1001"}, "limit"),
        ({"limit": "many"}, "limit"),
        ({"status": "fine"}, "status"),
        ({"cursor": "../x"}, "cursor"),
        ({"provider": "a/b"}, "provider"),
        ({"environment": "staging"}, "environment"),
        ({"q": "x" * 65}, "q"),
        ({"q": "a\nb"}, "q"),
        ({"sort": "name"}, "sort"),
    ],
)
def test_a_bad_page_query_is_refused_by_name(client, admin, store, query, field):
    listed_grants(store, 1)
    answer = client.get("/v1/secrets", query_string=query, headers=admin)
    assert answer.status_code == 400 and field in answer.json["error"]["fields"], answer.json
