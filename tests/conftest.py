"""Shared fixtures. Integration tests run against a real OpenBao dev server, never a mock:
if the `bao` binary is missing, they fail (they do not skip)."""

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
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import hvac
import pytest
import requests
from flask.testing import FlaskClient
from werkzeug.serving import make_server

from sidecar.config import Settings
from sidecar.devvault import DevTokens, DevVault, bao_binary, bootstrap, free_port
from sidecar.models import Grant, TokenSet
from sidecar.refresher import Refresher
from sidecar.store import Store
from sidecar.web import QuietHandler, create_app

from .cluster import Cluster
from .faults import DurableVault, FaultProxy
from .kubernetes import TokenReviewAPI

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


@pytest.fixture
def kubernetes_api(vault: DevVault, tokens: DevTokens, root: hvac.Client) -> Iterator[TokenReviewAPI]:
    """A TokenReview stand-in (tests/kubernetes.py) behind OpenBao's built-in `kubernetes` auth method,
    enabled and pointed at it, with the sidecar's policies loaded (`tokens`) for its roles to grant.
    If OpenBao lacks the method, enabling it fails the test (never skips it)."""
    with TokenReviewAPI() as api:
        if "kubernetes/" not in root.sys.list_auth_methods():
            root.sys.enable_auth_method("kubernetes")
        # Outside a pod there is no local CA or reviewer JWT to fall back on, so disable_local_ca_jwt; OpenBao
        # then insists on a CA, which plain HTTP never uses (it logs that the placeholder holds no certificate).
        root.write(
            "auth/kubernetes/config", kubernetes_host=api.url, disable_local_ca_jwt=True, kubernetes_ca_cert="unused"
        )
        yield api


# -- the OAuth provider: oauth2-mock-server, made strict (tests/oauth-provider/server.js) -----------

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


@pytest.fixture(scope="session")
def oauth_server() -> Iterator[str]:
    """The OAuth server as a process; missing Node.js packages fail the run (they never skip it)."""
    if not (PROVIDER_DIR / "node_modules" / "oauth2-mock-server").is_dir():
        pytest.fail(f"the test OAuth provider is not installed: run `npm ci --prefix {PROVIDER_DIR}`")
    proc = subprocess.Popen(
        ["node", str(PROVIDER_DIR / "server.js")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    first = proc.stdout.readline() if proc.stdout else ""
    try:
        issuer = json.loads(first)["issuer"]
    except (ValueError, KeyError):
        proc.kill()
        pytest.fail(f"the test OAuth provider did not start: {first}")
    yield issuer
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def oauth(oauth_server: str) -> MockProvider:
    provider = MockProvider(oauth_server)
    requests.post(f"{oauth_server}/__control/reset", timeout=5).raise_for_status()
    provider.configure(clients={CLIENT_ID: CLIENT_SECRET})
    return provider


# -- the sidecar over real HTTP, for flows that cross to the provider and back -------------------


@dataclass
class LiveSidecar:
    url: str
    settings: Settings


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


@pytest.fixture(scope="session")
def live(vault: DevVault, tokens: DevTokens) -> Iterator[LiveSidecar]:
    port = free_port()
    settings = Settings.from_env(
        {"VAULT_ADDR": vault.addr, "VAULT_TOKEN": tokens.sidecar, "SIDECAR_PUBLIC_URL": f"http://127.0.0.1:{port}"}
    )
    with serving(settings, port):
        yield LiveSidecar(settings.public_url, settings)


def sidecar_log(caplog: pytest.LogCaptureFixture) -> str:
    """What the sidecar logged, without the test client's own urllib3 lines (it knows the codes)."""
    return "\n".join(
        r.getMessage() for r in caplog.records if not (r.name.startswith("urllib3") and r.threadName == "MainThread")
    )


# -- connecting secrets over HTTP, as an operator and a browser would ---------------------------------


@pytest.fixture
def api(live, tokens, oauth, root):
    """Calls the sidecar's /v1 API as an operator; registers the test provider as `mock`."""

    def call(method: str, path: str, **kwargs) -> requests.Response:
        headers = {"X-Vault-Token": tokens.admin, **kwargs.pop("headers", {})}
        return requests.request(method, f"{live.url}{path}", headers=headers, timeout=30, **kwargs)

    call.register = lambda **overrides: call("PUT", "/v1/providers/mock", json=oauth.registration(**overrides))
    assert call.register().status_code in (200, 201)
    return call


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


@pytest.fixture
def connect(api, oauth, root):
    """Connect `name` through the real login flow with tokens that live `ttl` seconds."""

    def go(name: str = "sheets", ttl: int = 4, **config) -> dict:
        oauth.configure(ttl=ttl, **config)
        assert requests.Session().get(start(api, name), timeout=30).status_code == 200
        return grant_record(root, name)

    return go


# -- refreshing ------------------------------------------------------------------------------------


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


@pytest.fixture(scope="session")
def durable_server() -> Iterator[DurableVault]:
    """OpenBao with Raft storage: sealing, restarting or killing it keeps its data."""
    server = DurableVault().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def durable_tokens(durable_server: DurableVault) -> DevTokens:
    return bootstrap(durable_server, Settings())  # type: ignore[arg-type]


@pytest.fixture
def durable(durable_server: DurableVault, durable_tokens: DevTokens) -> Iterator[DurableVault]:
    """The durable OpenBao, running and unsealed at the start of the test, its KV mount wiped after."""
    if durable_server.process is None or durable_server.process.poll() is not None:
        durable_server.start()
    durable_server.unseal()
    yield durable_server
    if durable_server.process is None or durable_server.process.poll() is not None:
        durable_server.start()
    durable_server.unseal()
    client = hvac.Client(url=durable_server.addr, token=durable_server.root_token)
    for path in vault_tree(client):
        client.secrets.kv.v2.delete_metadata_and_all_versions(path=path, mount_point="secret")


@pytest.fixture(scope="session")
def cluster_server() -> Iterator[Cluster]:
    """Three OpenBao nodes with Raft storage behind a load balancer (tests/cluster.py)."""
    server = Cluster().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def cluster_tokens(cluster_server: Cluster) -> DevTokens:
    return bootstrap(cluster_server, Settings())  # type: ignore[arg-type]


@pytest.fixture
def cluster(cluster_server: Cluster, cluster_tokens: DevTokens) -> Iterator[Cluster]:
    """The cluster, every node running, unsealed and reachable at the start of the test; its KV mount
    wiped after."""
    _heal(cluster_server)
    yield cluster_server
    _heal(cluster_server)
    client = hvac.Client(url=cluster_server.addr, token=cluster_server.root_token)
    for path in vault_tree(client):
        client.secrets.kv.v2.delete_metadata_and_all_versions(path=path, mount_point="secret")


def _heal(cluster: Cluster) -> None:
    for node in cluster.nodes:
        cluster.balancer.rejoin(node)
        if not node.running:
            cluster.revive(node)
        cluster.unseal(node)
    cluster.wait_healthy()


@pytest.fixture
def fault_proxies() -> Iterator[Any]:
    """`make(upstream)` gives a FaultProxy in front of `upstream`; all are closed after the test."""
    made: list[FaultProxy] = []

    def make(upstream: str) -> FaultProxy:
        made.append(FaultProxy(upstream))
        return made[-1]

    yield make
    for proxy in made:
        proxy.close()


def seed_grants(
    store: Store, oauth: MockProvider, names: list[str], provider: str = "mock", ttl: int | None = None
) -> list[Grant]:
    """Grants as if each had just logged in, written with their views: tokens the provider knows,
    minted in one call (`/__control/mint`), so hundreds cost seconds, not a login each."""
    if ttl is not None:
        oauth.configure(ttl=ttl)
    minted = requests.post(
        f"{oauth.issuer}/__control/mint", json={"count": len(names), "scope": "openid"}, timeout=30
    ).json()
    now = datetime.now(UTC)
    seeded = []
    for name, body in zip(names, minted, strict=True):
        tokens = TokenSet(body["access_token"], "Bearer", now + timedelta(seconds=body["expires_in"]), ("openid",),
                          body["refresh_token"])  # fmt: skip
        grant = Grant(name, provider, ("development", "production"), tokens, connected_at=now, last_refreshed_at=now)
        store.put_grant(grant)
        for env in grant.environments:
            store.write_view(env, grant)
        seeded.append(grant)
    return seeded


# -- a real browser: Debian's Chromium driven by Playwright ----------------------------------------


@pytest.fixture
def token_thief() -> Iterator[tuple[str, list[str]]]:
    """A token endpoint on loopback that records every body posted to it and answers with a token:
    (its URL, the bodies it received)."""
    received: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode())
            body = b'{"access_token": "stolen", "token_type": "Bearer", "expires_in": 3600}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/token", received
    finally:
        server.shutdown()
        server.server_close()


CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    """Debian's Chromium; its absence fails the run (CI installs it), never skips it."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        yield browser
        browser.close()


@pytest.fixture
def page(chromium: Any) -> Iterator[Any]:
    context = chromium.new_context(viewport={"width": 1280, "height": 900})
    yield context.new_page()
    context.close()
