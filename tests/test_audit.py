"""The audit trail names who did what through the sidecar: real OpenBao, the real OAuth server,
a sidecar over real HTTP writing its audit lines to a file."""

import json
import re
from collections.abc import Iterator
from pathlib import Path

import hvac
import pytest
import requests

from sidecar.devvault import free_port

from .helpers import CLIENT_SECRET, grant_record, served_settings, serving


@pytest.fixture
def audited(vault, tokens, oauth, root, tmp_path) -> Iterator[tuple[str, Path]]:
    """A sidecar whose audit lines go to a file; returns (its URL, the file)."""
    port, trail = free_port(), tmp_path / "audit.jsonl"
    with serving(served_settings(vault.addr, tokens.sidecar, port, SIDECAR_AUDIT_LOG=str(trail)), port) as url:
        yield url, trail


def lines(trail: Path) -> list[dict]:
    return [json.loads(line) for line in trail.read_text().splitlines()]


def identity(vault, token: str) -> dict:
    data = hvac.Client(url=vault.addr, token=token).auth.token.lookup_self()["data"]
    return {"entity_id": data["entity_id"] or "", "display_name": data["display_name"], "accessor": data["accessor"]}


def test_every_change_names_the_caller_never_the_token(audited, vault, tokens, oauth, root):
    url, trail = audited
    admin = {"X-Vault-Token": tokens.admin}
    assert requests.put(f"{url}/v1/providers/mock", json=oauth.registration(), headers=admin, timeout=30).ok
    started = requests.post(f"{url}/v1/secrets", json={"name": "sheets", "provider": "mock"}, headers=admin, timeout=30)
    assert requests.Session().get(started.json()["authorization_url"], timeout=30).status_code == 200
    assert requests.post(f"{url}/v1/secrets/sheets/refresh", headers=admin, timeout=30).ok
    grant = grant_record(root)
    assert requests.delete(f"{url}/v1/secrets/sheets", headers=admin, timeout=30).ok

    trail_lines = lines(trail)
    assert [(line["action"], line["target"], line["outcome"]) for line in trail_lines] == [
        ("provider.put", "mock", "success"),
        ("secret.login_started", "sheets", "success"),
        ("secret.connected", "sheets", "success"),  # by the browser, on behalf of whoever started it
        ("secret.refreshed", "sheets", "success"),
        ("secret.deleted", "sheets", "success"),
    ]
    operator = identity(vault, tokens.admin)
    assert operator["accessor"] and all(line["who"] == operator for line in trail_lines)
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", line["time"]) for line in trail_lines)
    text = trail.read_text()
    for secret in (tokens.admin, CLIENT_SECRET, grant["access_token"], grant["refresh_token"]):
        assert secret not in text


def test_a_refused_change_is_recorded_as_denied(audited, vault, tokens, oauth, root):
    url, trail = audited
    reader = tokens.reader["production"]
    answer = requests.put(
        f"{url}/v1/providers/mock", json=oauth.registration(), headers={"X-Vault-Token": reader}, timeout=30
    )
    assert answer.status_code == 403
    [line] = lines(trail)
    assert (line["action"], line["target"], line["outcome"]) == ("provider.put", "mock", "denied")
    assert line["who"] == identity(vault, reader) and reader not in trail.read_text()


def test_settings_logins_and_logouts_are_recorded(audited, vault, tokens):
    url, trail = audited
    browser = requests.Session()
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', browser.get(f"{url}/settings/login", timeout=10).text)[1]
    refused = browser.post(f"{url}/settings/login", data={"csrf_token": csrf, "vault_token": "s.nope"}, timeout=10)
    assert refused.status_code == 401
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', refused.text)[1]
    page = browser.post(f"{url}/settings/login", data={"csrf_token": csrf, "vault_token": tokens.admin}, timeout=10)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text)[1]
    assert browser.post(f"{url}/settings/logout", data={"csrf_token": csrf}, timeout=10).ok

    operator = identity(vault, tokens.admin)
    assert [(line["action"], line["outcome"], line["who"]) for line in lines(trail)] == [
        ("ui.login", "denied", None),
        ("ui.login", "success", operator),
        ("ui.logout", "success", operator),
    ]
    assert tokens.admin not in trail.read_text() and "s.nope" not in trail.read_text()
