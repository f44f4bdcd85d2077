"""Per-secret reader policies: rendered, loaded by the CLI into a real OpenBao, and enforced by it.

`oauth-reader-<env>` reads every token of an environment; `oauth-reader-<env>-<secret>` reads one."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator

import hvac
import pytest
import requests

from sidecar.config import Settings
from sidecar.errors import Invalid
from sidecar.policies import render, render_reader

from .helpers import OAUTH_SIDECAR, bao_kv_get

POLICY = "oauth-reader-production-sheets"


def oauth_sidecar(vault, token: str, tmp_path, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    """The installed `oauth-sidecar` command, as an operator runs it, with only the variables given here."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_", "SIDECAR_"))},
        "VAULT_ADDR": vault.addr,
        "VAULT_TOKEN": token,
        "HOME": str(tmp_path),
        **extra,
    }
    return subprocess.run([OAUTH_SIDECAR, *args], env=env, capture_output=True, text=True, timeout=60)


@pytest.fixture
def acl(vault) -> Iterator[hvac.Client]:
    """A root client; every policy a test adds is deleted after it, so the shared server keeps its own."""
    client = hvac.Client(url=vault.addr, token=vault.root_token)
    before = set(client.sys.list_acl_policies()["data"]["keys"])
    yield client
    for name in set(client.sys.list_acl_policies()["data"]["keys"]) - before:
        client.sys.delete_acl_policy(name)


def put_view(root: hvac.Client, env: str, name: str) -> str:
    """An environment view as the sidecar writes it; returns its access token."""
    token = f"at-{env}-{name}"
    view = {"access_token": token, "token_type": "Bearer", "expires_at": "", "scope": "s", "provider": "mock"}
    root.secrets.kv.v2.create_or_update_secret(
        path=f"oauth/{env}/{name}", secret={**view, "status": "active"}, mount_point="secret"
    )
    return token


def test_a_per_secret_reader_reads_its_one_secret_and_nothing_else(vault, root, acl, live, tmp_path):
    sheets = put_view(root, "production", "sheets")
    put_view(root, "production", "other")
    put_view(root, "development", "sheets")
    root.secrets.kv.v2.create_or_update_secret(path="oauth-sidecar/grants/sheets", secret={"x": "y"})

    args = ("policies", "write", "reader", "--secret", "sheets", "--environment", "production")
    written = oauth_sidecar(vault, vault.root_token, tmp_path, *args)
    assert written.returncode == 0, written.stderr
    assert written.stderr.strip() == f"wrote policy {POLICY}"
    assert acl.sys.read_acl_policy(POLICY)["data"]["policy"] == render_reader(Settings(), "sheets", "production")[1]

    app = acl.auth.token.create(policies=[POLICY], ttl="10m")["auth"]
    assert sorted(app["policies"]) == ["default", POLICY]
    read = bao_kv_get(vault, app["client_token"], "secret/oauth/production/sheets")
    assert read.returncode == 0, read.stderr
    assert json.loads(read.stdout)["data"]["data"]["access_token"] == sheets
    for path in (
        "secret/oauth/production/other",  # the other tokens of its own environment
        "secret/oauth/development/sheets",
        "secret/oauth-sidecar/grants/sheets",
    ):
        refused = bao_kv_get(vault, app["client_token"], path)
        assert refused.returncode != 0 and "permission denied" in refused.stderr, path

    # The sidecar's token endpoint acts with the caller's token, so the same policy decides there.
    own = {"X-Vault-Token": app["client_token"]}
    mine = requests.get(f"{live.url}/v1/secrets/sheets/token?environment=production", headers=own, timeout=10)
    assert mine.status_code == 200 and mine.json()["access_token"] == sheets
    for path in ("/v1/secrets/other/token?environment=production", "/v1/secrets/sheets/token?environment=development"):
        assert requests.get(f"{live.url}{path}", headers=own, timeout=10).status_code == 403, path


def test_render_reader_prints_that_policy_and_render_alone_is_unchanged(vault, tmp_path):
    custom = {"SIDECAR_KV_MOUNT": "kv", "SIDECAR_PREFIX": "tokens", "SIDECAR_ENVIRONMENTS": "staging,production"}
    one = oauth_sidecar(
        vault, "", tmp_path, "policies", "render", "reader", "--secret", "sheets", "--environment", "staging", **custom
    )  # fmt: skip
    assert one.returncode == 0, one.stderr
    assert one.stdout == render_reader(Settings.from_env(custom), "sheets", "staging")[1]
    assert 'path "kv/data/tokens/staging/sheets" {\n  capabilities = ["read"]\n}\n' in one.stdout
    assert one.stdout.count("path ") == 1

    out = tmp_path / "out"
    to_dir = oauth_sidecar(
        vault, "", tmp_path, "policies", "render", "reader", "--secret", "sheets", "--environment", "production",
        "--dir", str(out),
    )  # fmt: skip
    assert to_dir.returncode == 0, to_dir.stderr
    assert [p.name for p in out.iterdir()] == [f"{POLICY}.hcl"]

    every = oauth_sidecar(vault, "", tmp_path, "policies", "render", **custom)
    assert every.returncode == 0, every.stderr
    assert every.stdout == "".join(f"# ---- {n}\n{hcl}\n" for n, hcl in render(Settings.from_env(custom)).items())


@pytest.mark.parametrize(
    ("args", "env", "code", "message"),
    [
        (["--secret", "../etc", "--environment", "production"], {}, 1, "secret must be 1 to 64 characters"),
        (["--secret", 'a"b', "--environment", "production"], {}, 1, "secret must be 1 to 64 characters"),
        (["--secret", "sheets", "--environment", "prod*"], {}, 1, "environment must be 1 to 64 characters"),
        (["--secret", "sheets", "--environment", "staging"], {}, 1, "environment 'staging' is not configured"),
        (["--secret", "Sheets", "--environment", "production"], {}, 1, "lower-case names"),
        (["--secret", "s" * 60, "--environment", "production"], {}, 1, "longer than 64 characters"),
        (["--secret", "eu", "--environment", "prod"], {"SIDECAR_ENVIRONMENTS": "prod,prod-eu"}, 1, "ambiguous"),
        (["--secret", "sheets"], {}, 2, "reader needs --secret NAME and --environment ENV"),
    ],
)
@pytest.mark.parametrize("command", ["render", "write"])
def test_bad_names_are_refused_with_a_message(vault, acl, tmp_path, command, args, env, code, message):
    before = acl.sys.list_acl_policies()["data"]["keys"]
    result = oauth_sidecar(vault, vault.root_token, tmp_path, "policies", command, "reader", *args, **env)
    assert result.returncode == code, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr and result.stdout == ""
    assert acl.sys.list_acl_policies()["data"]["keys"] == before


def test_secret_and_environment_need_the_reader_argument(vault, tmp_path):
    result = oauth_sidecar(vault, "", tmp_path, "policies", "render", "--secret", "sheets")
    assert result.returncode == 2 and "go with `reader" in result.stderr and result.stdout == ""


def test_writing_a_reader_policy_needs_a_token_that_may_write_policies(vault, tokens, acl, tmp_path):
    args = ("policies", "write", "reader", "--secret", "sheets", "--environment", "production")
    denied = oauth_sidecar(vault, tokens.admin, tmp_path, *args)
    assert denied.returncode == 1 and "permission denied" in denied.stderr and "Traceback" not in denied.stderr
    assert POLICY not in acl.sys.list_acl_policies()["data"]["keys"]


def test_a_policy_name_names_one_environment_and_one_secret():
    two = Settings(environments=("prod", "prod-eu"))
    assert render_reader(two, "sheets", "prod-eu")[0] == "oauth-reader-prod-eu-sheets"
    assert render_reader(two, "sheets", "prod")[0] == "oauth-reader-prod-sheets"
    for secret in ("eu", "eu-sheets"):  # would be prod-eu's own reader, and prod-eu's "sheets"
        with pytest.raises(Invalid, match="ambiguous: it belongs to the environment 'prod-eu'"):
            render_reader(two, secret, "prod")
    # Vault folds policy names to lower case: "Sheets" would take over the policy of "sheets".
    with pytest.raises(Invalid, match="lower-case"):
        render_reader(Settings(), "Sheets", "production")
    name, hcl = render_reader(Settings(), "a.b_c-9", "production")
    assert name == "oauth-reader-production-a.b_c-9" and 'path "secret/data/oauth/production/a.b_c-9"' in hcl


def test_the_api_renders_a_reader_policy_without_touching_vault(client, admin, tokens, acl, settings):
    before = acl.sys.list_acl_policies()["data"]["keys"]
    for token in (admin, {"X-Vault-Token": tokens.reader["production"]}):  # any valid token: it only renders
        response = client.get("/v1/policies/reader?secret=sheets&environment=production", headers=token)
        assert response.status_code == 200, response.get_data(as_text=True)
        name, hcl = render_reader(settings, "sheets", "production")
        assert response.json == {"name": name, "policy": hcl} and name == POLICY
    assert client.get("/v1/policies/reader?secret=sheets&environment=production").status_code == 401
    assert acl.sys.list_acl_policies()["data"]["keys"] == before
    assert "/v1/policies/reader" in client.get("/openapi.json").json["paths"]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("environment=production", "secret"),
        ("secret=sheets", "environment"),
        ("secret=&environment=production", "secret"),
        ("secret=..%2Fetc&environment=production", "secret"),
        ("secret=%22%7D%20path%20%22*&environment=production", "secret"),
        ("secret=sheets&environment=staging", "environment"),
        ("secret=Sheets&environment=production", "secret"),
        (f"secret={'s' * 60}&environment=production", "secret"),
    ],
)
def test_the_api_refuses_bad_names(client, admin, query, field):
    response = client.get(f"/v1/policies/reader?{query}", headers=admin)
    assert response.status_code == 400, response.get_data(as_text=True)
    error = response.json["error"]
    assert error["code"] == "invalid" and error["message"] and field in error.get("fields", {})
