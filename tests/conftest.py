"""Shared fixtures. Integration tests run against a real OpenBao dev server, never a mock:
if the `bao` binary is missing, they fail (they do not skip)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from typing import Any

import hvac
import pytest
from flask.testing import FlaskClient

from sidecar.config import Settings
from sidecar.devvault import DevTokens, DevVault, bao_binary, bootstrap
from sidecar.store import Store
from sidecar.web import create_app

CLIENT_SECRET = "cs-7f3a9c1e-never-show-me"


def provider_body(**overrides: Any) -> dict[str, Any]:
    """A valid PUT /v1/providers body, as a Google registration would look."""
    body: dict[str, Any] = {
        "client_id": "1234.apps.example.com",
        "client_secret": CLIENT_SECRET,
        "authorization_url": "https://accounts.example.com/o/oauth2/v2/auth",
        "token_url": "https://oauth2.example.com/token",
        "scopes": "openid\nemail\nhttps://www.googleapis.com/auth/spreadsheets\n",
    }
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not None}


@pytest.fixture(scope="session")
def vault() -> Iterator[DevVault]:
    with DevVault() as server:
        yield server


@pytest.fixture(scope="session")
def tokens(vault: DevVault) -> DevTokens:
    return bootstrap(vault, Settings())


@pytest.fixture(scope="session")
def settings(vault: DevVault, tokens: DevTokens) -> Settings:
    return Settings.from_env({"VAULT_ADDR": vault.addr, "VAULT_TOKEN": tokens.sidecar})


@pytest.fixture
def root(vault: DevVault) -> Iterator[hvac.Client]:
    """A root hvac client for looking behind the sidecar's back; wipes the mount after each test."""
    client = hvac.Client(url=vault.addr, token=vault.root_token)
    yield client
    for path in vault_tree(client):
        client.secrets.kv.v2.delete_metadata_and_all_versions(path=path, mount_point="secret")


def vault_tree(client: hvac.Client, prefix: str = "") -> dict[str, int]:
    """Every KV v2 path under the `secret` mount, with its current version."""
    try:
        keys = client.secrets.kv.v2.list_secrets(path=prefix, mount_point="secret")["data"]["keys"]
    except hvac.exceptions.InvalidPath:
        return {}
    tree: dict[str, int] = {}
    for key in keys:
        if key.endswith("/"):
            tree.update(vault_tree(client, prefix + key))
        else:
            meta = client.secrets.kv.v2.read_secret_metadata(path=prefix + key, mount_point="secret")
            tree[prefix + key] = meta["data"]["current_version"]
    return tree


@pytest.fixture
def store(settings: Settings, tokens: DevTokens, root: hvac.Client) -> Store:
    """A store with the operator (oauth-admin) token, as the API would build for an operator."""
    return Store(settings, tokens.admin)


@pytest.fixture
def client(settings: Settings, root: hvac.Client) -> FlaskClient:
    return create_app(settings).test_client()


@pytest.fixture
def admin(tokens: DevTokens) -> dict[str, str]:
    return {"X-Vault-Token": tokens.admin}


def bao_kv_get(vault: DevVault, token: str, path: str) -> subprocess.CompletedProcess[str]:
    """`bao kv get -format=json PATH` with the real CLI, as a user would run it."""
    return subprocess.run(
        [bao_binary(), "kv", "get", "-format=json", path],
        env={**os.environ, "VAULT_ADDR": vault.addr, "VAULT_TOKEN": token},
        capture_output=True,
        text=True,
        timeout=30,
    )
