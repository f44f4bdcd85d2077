"""Vault policies decide everything; nothing secret leaks; no input breaks the API. Real OpenBao,
the policies loaded, a real OAuth server."""

import json
import logging

import hvac
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .helpers import CLIENT_SECRET, bao_kv_get, grant_record, sidecar_log, start, vault_tree


def connected(api, name: str = "sheets") -> dict:
    assert requests.Session().get(start(api, name), timeout=30).status_code == 200
    return api


def test_a_production_reader_reads_production_and_nothing_else(api, vault, tokens, root):
    connected(api)
    reader = tokens.reader["production"]
    out = bao_kv_get(vault, reader, "secret/oauth/production/sheets")
    assert out.returncode == 0 and json.loads(out.stdout)["data"]["data"]["access_token"]
    own = {"X-Vault-Token": reader}
    assert api("GET", "/v1/secrets/sheets/token?environment=production", headers=own).status_code == 200
    lid = next(iter(vault_tree(root)), "")  # any path will do for the pending tree: all are refused
    for path in (
        "secret/oauth/development/sheets",
        "secret/oauth-sidecar/grants/sheets",
        "secret/oauth-sidecar/providers/mock",
        f"secret/oauth-sidecar/pending/{lid.rsplit('/', 1)[-1]}",
    ):
        refused = bao_kv_get(vault, reader, path)
        assert refused.returncode != 0 and "permission denied" in refused.stderr, path
    for method, path in (
        ("GET", "/v1/secrets/sheets/token?environment=development"),
        ("GET", "/v1/secrets/sheets"),
        ("GET", "/v1/secrets"),
        ("GET", "/v1/providers"),
        ("GET", "/v1/providers/mock"),
        ("POST", "/v1/secrets/sheets/refresh"),
        ("DELETE", "/v1/secrets/sheets"),
    ):
        assert api(method, path, headers=own).status_code == 403, (method, path)
    assert grant_record(root, "sheets")["status"] == "active"


def test_the_sidecar_token_has_its_own_policy_only(api, vault, tokens, root, live):
    connected(api)  # the login was finished with the sidecar's own token
    policies = hvac.Client(url=vault.addr, token=tokens.sidecar).auth.token.lookup_self()["data"]["policies"]
    assert sorted(policies) == ["default", "oauth-sidecar"] and live.settings.vault_token == tokens.sidecar
    root.secrets.kv.v2.create_or_update_secret(path="unrelated", secret={"x": "y"}, mount_point="secret")
    refused = bao_kv_get(vault, tokens.sidecar, "secret/unrelated")
    assert refused.returncode != 0 and "permission denied" in refused.stderr
    sidecar_kv = hvac.Client(url=vault.addr, token=tokens.sidecar).secrets.kv.v2
    with pytest.raises(hvac.exceptions.Forbidden):
        sidecar_kv.create_or_update_secret(path="oauth-sidecar/providers/evil", secret={}, mount_point="secret")


def test_a_token_with_only_the_default_policy_gets_403_everywhere(api, vault, root, oauth):
    connected(api)
    plain = hvac.Client(url=vault.addr, token=vault.root_token).auth.token.create(policies=["default"], ttl="10m")
    headers = {"X-Vault-Token": plain["auth"]["client_token"]}
    calls = [
        ("GET", "/v1/providers", None),
        ("GET", "/v1/providers/mock", None),
        ("PUT", "/v1/providers/mock", oauth.registration()),
        ("DELETE", "/v1/providers/mock", None),
        ("GET", "/v1/secrets", None),
        ("POST", "/v1/secrets", {"name": "other", "provider": "mock"}),
        ("GET", "/v1/secrets/sheets", None),
        ("GET", "/v1/secrets/sheets/token?environment=production", None),
        ("POST", "/v1/secrets/sheets/refresh", None),
        ("DELETE", "/v1/secrets/sheets", None),
    ]
    before = vault_tree(root)
    for method, path, body in calls:
        response = api(method, path, headers=headers, json=body)
        assert response.status_code == 403, (method, path, response.text)
        assert response.json()["error"]["code"] == "forbidden"
    assert vault_tree(root) == before


def test_no_secret_reaches_a_log_an_error_or_a_page(api, live, vault, tokens, root, oauth, caplog):
    caplog.set_level(logging.DEBUG)
    bodies: list[str] = []

    def call(method: str, path: str, **kwargs) -> requests.Response:
        response = api(method, path, **kwargs)
        bodies.append(response.text)
        return response

    link = call("POST", "/v1/secrets", json={"name": "sheets", "provider": "mock"}).json()["authorization_url"]
    pending = next(p for p in vault_tree(root) if "/pending/" in p)
    verifier = root.secrets.kv.v2.read_secret_version(
        path=pending, mount_point="secret", raise_on_deleted_version=True
    )["data"]["data"]["code_verifier"]
    browser = requests.Session()
    page = browser.get(link, timeout=30)
    bodies.append(page.text)
    replay = browser.get(page.url, timeout=30)  # the callback again: refused
    bodies.append(replay.text)
    first = grant_record(root, "sheets")
    call("GET", "/v1/secrets/sheets")
    call("GET", "/v1/secrets")
    call("GET", "/v1/providers/mock")
    call("POST", "/v1/secrets/sheets/refresh")
    oauth.next(token={"status": 400, "body": {"error": "invalid_grant"}})
    call("POST", "/v1/secrets/sheets/refresh")  # an error body
    call("PUT", "/v1/providers/mock", json=oauth.registration(token_url="http://evil.example/token"))
    call("GET", "/v1/secrets/sheets/token?environment=nowhere")
    served = api("GET", "/v1/secrets/sheets/token?environment=production")  # the one place a token may be
    second = grant_record(root, "sheets")
    assert served.json()["access_token"] == second["access_token"]
    oauth.next(revoke=[500])
    call("DELETE", "/v1/secrets/sheets")
    call("DELETE", "/v1/secrets/sheets?force=true")

    code = oauth.log()["token"][0]["code"]
    sentinels = {
        "client secret": CLIENT_SECRET,
        "authorization code": code,
        "PKCE verifier": verifier,
        "access token": first["access_token"],
        "refreshed access token": second["access_token"],
        "refresh token": first["refresh_token"],
        "id token": first["id_token"],
        "admin Vault token": tokens.admin,
        "sidecar Vault token": tokens.sidecar,
        "root Vault token": vault.root_token,
    }
    log = sidecar_log(caplog)
    assert "refreshed sheets" in log  # the log was captured, at DEBUG
    for what, value in sentinels.items():
        assert value and value not in log, f"the {what} is in the log"
        for body in bodies:
            assert value not in body, f"the {what} is in an answer"


NAMES = st.one_of(st.text(max_size=80), st.sampled_from(["..", ".", "a/b", "%2e%2e", "a\x00", "mock", "ok-1"]))
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=20), inner, max_size=5),
    max_leaves=12,
)
FIELDS = st.fixed_dictionaries(
    {},
    optional={
        "client_id": JSON,
        "client_secret": JSON,
        "authorization_url": st.one_of(JSON, st.sampled_from(["https://a.example/x", "http://127.0.0.1:1/x"])),
        "token_url": st.one_of(JSON, st.just("https://a.example/token")),
        "scopes": JSON,
        "pkce": JSON,
        "extra_authorize_params": JSON,
        "refresh_margin": JSON,
        "name": JSON,
        "provider": JSON,
        "environments": JSON,
    },
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    method=st.sampled_from(["GET", "PUT", "POST", "DELETE"]),
    route=st.sampled_from(["/v1/providers/{}", "/v1/secrets/{}", "/v1/secrets/{}/token", "/v1/secrets/{}/refresh"]),
    name=NAMES,
    body=st.one_of(FIELDS, JSON),
)
def test_no_input_breaks_the_api(client, admin, method, route, name, body):
    response = client.open(route.format(name), method=method, json=body, headers=admin)
    text = response.get_data(as_text=True)
    assert response.status_code < 500, (response.status_code, text)
    assert "Traceback" not in text
    if response.status_code >= 400:
        assert set(response.json["error"]) >= {"code", "message"}


def test_every_html_page_carries_strict_headers(live, api):
    link = start(api)
    pages = [
        requests.get(f"{live.url}/settings/login", timeout=10),
        requests.get(f"{live.url}/callback?state=nope", timeout=10),
        requests.Session().get(link, timeout=30),
        requests.get(f"{live.url}/login/{'0' * 32}", timeout=10),
    ]
    for page in pages:
        assert page.headers["Content-Type"].startswith("text/html")
        csp = page.headers["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp and "default-src 'none'" in csp
        assert page.headers["X-Content-Type-Options"] == "nosniff"
        # The settings pages say same-origin, so that their own form posts carry a real Origin.
        referrer = "same-origin" if "/settings" in page.url else "no-referrer"
        assert page.headers["Referrer-Policy"] == referrer and page.headers["Cache-Control"] == "no-store"
    spec = requests.get(f"{live.url}/openapi.json", timeout=10).json()
    assert spec["openapi"].startswith("3.1") and "/v1/secrets/{secret}/token" in spec["paths"]


def test_no_old_secret_lingers_in_version_history(api, root):
    connected(api)
    api("POST", "/v1/secrets/sheets/refresh")
    api.register(client_id="changed")
    for path in ("oauth-sidecar/providers/mock", "oauth-sidecar/grants/sheets", "oauth/production/sheets"):
        meta = root.secrets.kv.v2.read_secret_metadata(path=path, mount_point="secret")["data"]
        assert meta["max_versions"] == 1, path
        assert meta["current_version"] >= 2 and list(meta["versions"]) == [str(meta["current_version"])], path
