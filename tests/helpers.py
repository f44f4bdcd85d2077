"""What the tests share besides fixtures: the test OAuth server's client, a live sidecar, waiting,
reading Vault behind the sidecar's back, seeding grants."""

from __future__ import annotations

import html
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import hvac
import pytest
import requests
from werkzeug.serving import make_server

from sidecar.clock import Clock
from sidecar.config import Settings
from sidecar.devvault import DevVault, bao_binary
from sidecar.egress import Egress
from sidecar.index import Entry, Keeper, parse_shard
from sidecar.models import Grant, Status, TokenSet
from sidecar.oauth import Client
from sidecar.refresher import Refresher
from sidecar.store import Store
from sidecar.web import QuietHandler, create_app

CLIENT_SECRET = "cs-7f3a9c1e-never-show-me"


class ShiftedClock(Clock):
    """The system's time with the wall clock `offset` away: a replica whose clock is wrong."""

    def __init__(self, offset: timedelta) -> None:
        self.offset = offset

    def now(self) -> datetime:
        return super().now() + self.offset


class SetClock(Clock):
    """Time that stands still until a test moves it: `step` moves the wall clock alone (an NTP
    correction), `sleep` both clocks (time passing)."""

    def __init__(self, now: datetime = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)) -> None:
        self.wall, self.mono = now, 1000.0

    def now(self) -> datetime:
        return self.wall

    def monotonic(self) -> float:
        return self.mono

    def sleep(self, seconds: float) -> None:
        self.wall += timedelta(seconds=seconds)
        self.mono += seconds

    def step(self, by: timedelta) -> None:
        self.wall += by


def provider_client(*allow: str) -> Client:
    """What a process of the sidecar calls providers with, `allow` its SIDECAR_EGRESS_ALLOW."""
    return Client(Egress(allow))


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


STATE = Settings().state_prefix


def vault_tree(client: hvac.Client, prefix: str = "", index: bool = False) -> dict[str, int]:
    """Every KV v2 path under the `secret` mount, with its current version; the index only if asked
    (its records are hints about the others: `index_entries` reads them)."""
    try:
        keys = client.secrets.kv.v2.list_secrets(path=prefix, mount_point="secret")["data"]["keys"]
    except hvac.exceptions.InvalidPath:
        return {}
    tree: dict[str, int] = {}
    for key in keys:
        if prefix + key == f"{STATE}/index/" and not index:
            continue
        if key.endswith("/"):
            tree.update(vault_tree(client, prefix + key, index))
        else:
            meta = client.secrets.kv.v2.read_secret_metadata(path=prefix + key, mount_point="secret")
            tree[prefix + key] = meta["data"]["current_version"]
    return tree


def index_entries(client: hvac.Client) -> dict[str, Entry]:
    """Every entry of the index in Vault, by grant name."""
    kv = client.secrets.kv.v2
    try:
        keys = kv.list_secrets(path=f"{STATE}/index", mount_point="secret")["data"]["keys"]
    except hvac.exceptions.InvalidPath:
        return {}
    entries = {}
    for key in keys:
        if key.startswith("shard-"):
            data = kv.read_secret_version(
                path=f"{STATE}/index/{key}", mount_point="secret", raise_on_deleted_version=True
            )["data"]["data"]
            entries.update(parse_shard(data))
    return entries


def listed_grants(store: Store, count: int) -> list[str]:
    """`count` grants named s-0000.. for lists, indexed as their writers would (one flush): every third
    of provider `other`, every fourth retrying, the odd ones in production only."""
    keeper, names = Keeper(store), []
    for i in range(count):
        tokens = TokenSet(f"at-{i}", "Bearer", None, ("openid",), f"rt-{i}")
        envs = ("production",) if i % 2 else ("development", "production")
        status = Status.RETRYING if i % 4 == 0 else Status.ACTIVE
        grant = Grant(f"s-{i:04d}", "other" if i % 3 == 0 else "mock", envs, tokens, status=status)
        keeper.note(grant.name, Entry.of(grant, None, store.put_grant(grant)))
        names.append(grant.name)
    keeper.flush()
    return names


def bao_kv_get(vault: DevVault, token: str, path: str) -> subprocess.CompletedProcess[str]:
    """`bao kv get -format=json PATH` with the real CLI, as a user would run it."""
    return bao(vault, token, "kv", "get", "-format=json", path)


def bao(vault: DevVault, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The real `bao` CLI against `vault` with `token`, as a user would run it."""
    return subprocess.run(
        [bao_binary(), *args],
        env={**os.environ, "VAULT_ADDR": vault.addr, "VAULT_TOKEN": token},
        capture_output=True,
        text=True,
        timeout=30,
    )


PROVIDER_DIR = Path(__file__).parent / "oauth-provider"
CLIENT_ID = "sidecar-test-client"


class MockProvider:
    """Drives and inspects the real OAuth server over HTTP."""

    def __init__(self, issuer: str) -> None:
        self.issuer = issuer

    def configure(self, **config: Any) -> None:
        requests.post(f"{self.issuer}/__control/config", json=config, timeout=5).raise_for_status()

    def next(self, **overrides: Any) -> None:
        """One-shot behaviours: token={status, body, omit, set}, revoke=[status...], authorize={error}."""
        requests.post(f"{self.issuer}/__control/next", json=overrides, timeout=5).raise_for_status()

    def log(self) -> dict[str, Any]:
        return requests.get(f"{self.issuer}/__control/log", timeout=5).json()

    def accepts(self, access_token: str) -> bool:
        resp = requests.get(
            f"{self.issuer}/api/resource", headers={"Authorization": f"Bearer {access_token}"}, timeout=5
        )
        return resp.status_code == 200

    def registration(self, **overrides: Any) -> dict[str, Any]:
        """A PUT /v1/providers body for this server."""
        mine = {
            "client_id": CLIENT_ID,
            "authorization_url": f"{self.issuer}/authorize",
            "token_url": f"{self.issuer}/token",
            "revocation_url": f"{self.issuer}/revoke",
            "scopes": "openid\nprofile\nemail",
        }
        return provider_body(**{**mine, **overrides})


@dataclass
class LiveSidecar:
    url: str
    settings: Settings


def served_settings(vault_addr: str, token: str, port: int, **extra: str) -> Settings:
    """The settings of a sidecar that `serving` runs on loopback `port`, over this Vault and token."""
    base = {"VAULT_ADDR": vault_addr, "VAULT_TOKEN": token, "SIDECAR_PUBLIC_URL": f"http://127.0.0.1:{port}"}
    return Settings.from_env({**base, **extra})


@contextmanager
def serving(settings: Settings, port: int) -> Iterator[str]:
    """The sidecar's web app on a loopback port for the duration of the block; yields its URL."""
    server = make_server("127.0.0.1", port, create_app(settings), threaded=True, request_handler=QuietHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.shutdown()


def sidecar_log(caplog: pytest.LogCaptureFixture) -> str:
    """What the sidecar logged, without the test client's own urllib3 lines (it knows the codes)."""
    return "\n".join(
        r.getMessage() for r in caplog.records if not (r.name.startswith("urllib3") and r.threadName == "MainThread")
    )


# -- connecting secrets over HTTP, as an operator and a browser would ---------------------------------


def start(api, name="sheets", **body) -> str:
    response = api("POST", "/v1/secrets", json={"name": name, "provider": "mock", **body})
    assert response.status_code == 201, response.text
    assert response.json()["expires_at"].endswith("Z")
    return response.json()["authorization_url"]


def callback_url(browser: requests.Session, link: str) -> str:
    """Open the link and let the provider answer, but stop before the callback is called."""
    to_provider = browser.get(link, allow_redirects=False)
    assert to_provider.status_code == 302, to_provider.text
    back = browser.get(to_provider.headers["Location"], allow_redirects=False)
    assert back.status_code == 302
    return back.headers["Location"]


def consumed_login(client: hvac.Client) -> str | None:
    """The id of a login in flight whose callback has consumed it (its code is then at the provider)."""
    try:
        keys = client.secrets.kv.v2.list_secrets(path="oauth-sidecar/pending", mount_point="secret")["data"]["keys"]
    except hvac.exceptions.InvalidPath:
        return None
    for key in keys:
        try:
            record = client.secrets.kv.v2.read_secret_version(
                path=f"oauth-sidecar/pending/{key}", mount_point="secret", raise_on_deleted_version=True
            )
        except hvac.exceptions.InvalidPath:
            continue
        if record["data"]["data"].get("consumed_at"):
            return key
    return None


def refresh_target(page: str) -> str:
    """Where a page's meta refresh leads (the "being saved" page of a login)."""
    found = re.search(r'<meta http-equiv="refresh" content="\d+; url=([^"]+)">', page)
    assert found, page
    return html.unescape(found[1])


def finish_saving(browser: requests.Session, base: str, page: requests.Response, timeout: float) -> requests.Response:
    """Follow a login's "being saved" page (202) as a browser would, until it answers otherwise."""
    deadline = time.monotonic() + timeout
    while page.status_code == 202 and time.monotonic() < deadline:
        time.sleep(2)
        page = browser.get(base + refresh_target(page.text), timeout=60)
    return page


def narrow_token(root, policy: str, rules: dict[str, list[str]]) -> dict[str, str]:
    """Headers with a fresh token that holds only `policy`, made of `rules` ({path: capabilities})."""
    hcl = "".join(f'path "{path}" {{\n  capabilities = {json.dumps(caps)}\n}}\n' for path, caps in rules.items())
    root.sys.create_or_update_policy(name=policy, policy=hcl)
    return {"X-Vault-Token": root.auth.token.create(policies=[policy], ttl="10m")["auth"]["client_token"]}


def grant_record(root, name="sheets") -> dict:
    return root.secrets.kv.v2.read_secret_version(
        path=f"oauth-sidecar/grants/{name}", mount_point="secret", raise_on_deleted_version=True
    )["data"]["data"]


def views(root, name="sheets") -> dict[str, dict]:
    tree = vault_tree(root)
    return {
        env: root.secrets.kv.v2.read_secret_version(
            path=f"oauth/{env}/{name}", mount_point="secret", raise_on_deleted_version=True
        )["data"]["data"]
        for env in ("development", "production")
        if f"oauth/{env}/{name}" in tree
    }


FAST_REFRESH = {"SIDECAR_REFRESH_INTERVAL": "0.2", "SIDECAR_RESYNC_INTERVAL": "1"}


def fast_settings(vault: DevVault, token: str, **extra: str) -> Settings:
    """Settings for a refresher that ticks often enough for tokens that live seconds."""
    return Settings.from_env(
        {
            "VAULT_ADDR": extra.pop("VAULT_ADDR", vault.addr),
            "VAULT_TOKEN": token,
            **FAST_REFRESH,
            **extra,
        }
    )


class CountingSession(requests.Session):
    """Counts the HTTP requests a Store sends to Vault."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def request(self, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        self.count += 1
        return super().request(*args, **kwargs)


def wait_for(condition: Any, timeout: float = 20.0, every: float = 0.1) -> Any:
    """Poll until `condition()` is truthy; return its value, or fail the test on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    pytest.fail(f"timed out after {timeout}s waiting for {getattr(condition, '__name__', 'a condition')}")


@contextmanager
def running(refresher: Refresher) -> Iterator[None]:
    """The refresher's loop in a thread for the duration of the block."""
    stop = threading.Event()
    loop = threading.Thread(target=refresher.run, args=(stop,))
    loop.start()
    try:
        yield
    finally:
        stop.set()
        loop.join(timeout=60)


def refresher_env(vault, token: str, tmp_path, **extra: str) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_", "SIDECAR_"))},
        "VAULT_ADDR": vault.addr,
        "VAULT_TOKEN": token,
        "HOME": str(tmp_path),
        **FAST_REFRESH,
        **extra,
    }


OAUTH_SIDECAR = str(Path(sys.executable).parent / "oauth-sidecar")


def refresher_process(vault, token: str, tmp_path, **extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [OAUTH_SIDECAR, "refresh"], env=refresher_env(vault, token, tmp_path, **extra),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


# -- faults: OpenBao on disk, a misbehaving proxy, many grants at once ---------------------------------


def seed_grants(
    store: Store, oauth: MockProvider, names: list[str], provider: str = "mock", ttl: int | None = None
) -> list[Grant]:
    """Grants as if each had just logged in, written with their views and indexed (an entry due now,
    as a login writes ahead): tokens the provider knows, minted in one call (`/__control/mint`), so
    hundreds cost seconds, not a login each."""
    if ttl is not None:
        oauth.configure(ttl=ttl)
    minted = requests.post(
        f"{oauth.issuer}/__control/mint", json={"count": len(names), "scope": "openid"}, timeout=30
    ).json()
    now = datetime.now(UTC)
    seeded, keeper = [], Keeper(store)
    for name, body in zip(names, minted, strict=True):
        tokens = TokenSet(body["access_token"], "Bearer", now + timedelta(seconds=body["expires_in"]), ("openid",),
                          body["refresh_token"])  # fmt: skip
        grant = Grant(name, provider, ("development", "production"), tokens, connected_at=now, last_refreshed_at=now)
        store.put_grant(grant)
        keeper.note(name, Entry.ahead(grant))
        for env in grant.environments:
            store.write_view(env, grant)
        seeded.append(grant)
    keeper.flush()
    return seeded


# -- a real browser: Debian's Chromium driven by Playwright ----------------------------------------


CHROMIUM = "/usr/bin/chromium"
