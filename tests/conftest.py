"""Shared fixtures. Integration tests run against a real OpenBao dev server, never a mock:
if the `bao` binary is missing, they fail (they do not skip)."""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import hvac
import pytest
import requests
from flask.testing import FlaskClient

from sidecar.config import Settings
from sidecar.devvault import DevTokens, DevVault, bootstrap, free_port
from sidecar.store import Store
from sidecar.web import create_app

from .cluster import Cluster
from .faults import DurableVault, FaultProxy
from .helpers import (
    CHROMIUM,
    CLIENT_ID,
    CLIENT_SECRET,
    PROVIDER_DIR,
    LiveSidecar,
    MockProvider,
    grant_record,
    served_settings,
    serving,
    start,
    vault_tree,
)
from .kubernetes import TokenReviewAPI

# A test that asks for none of these needs no server: it is marked `unit`, the fast layer
# (`pytest -m unit`; see the README's contributing notes).
SERVER_FIXTURES = frozenset(
    {"vault", "oauth_server", "live", "chromium", "durable_server", "cluster_server", "kubernetes_api", "fault_proxies"}
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if not SERVER_FIXTURES & set(getattr(item, "fixturenames", ())) and not item.get_closest_marker("process"):
            item.add_marker(pytest.mark.unit)


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
    for path in vault_tree(client, index=True):
        client.secrets.kv.v2.delete_metadata_and_all_versions(path=path, mount_point="secret")


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


@pytest.fixture(scope="session")
def live(vault: DevVault, tokens: DevTokens) -> Iterator[LiveSidecar]:
    port = free_port()
    settings = served_settings(vault.addr, tokens.sidecar, port)
    with serving(settings, port):
        yield LiveSidecar(settings.public_url, settings)


@pytest.fixture
def api(live, tokens, oauth, root):
    """Calls the sidecar's /v1 API as an operator; registers the test provider as `mock`."""

    def call(method: str, path: str, **kwargs) -> requests.Response:
        headers = {"X-Vault-Token": tokens.admin, **kwargs.pop("headers", {})}
        return requests.request(method, f"{live.url}{path}", headers=headers, timeout=30, **kwargs)

    call.register = lambda **overrides: call("PUT", "/v1/providers/mock", json=oauth.registration(**overrides))
    assert call.register().status_code in (200, 201)
    return call


@pytest.fixture
def connect(api, oauth, root):
    """Connect `name` through the real login flow with tokens that live `ttl` seconds (again: a
    reconnect, which replaces it)."""

    def go(name: str = "sheets", ttl: int = 4, **config) -> dict:
        oauth.configure(ttl=ttl, **config)
        assert requests.Session().get(start(api, name, replace=True), timeout=30).status_code == 200
        return grant_record(root, name)

    return go


# -- refreshing ------------------------------------------------------------------------------------


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
    for path in vault_tree(client, index=True):
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
    cluster_server.heal()
    yield cluster_server
    cluster_server.heal()
    client = hvac.Client(url=cluster_server.addr, token=cluster_server.root_token)
    for path in vault_tree(client, index=True):
        client.secrets.kv.v2.delete_metadata_and_all_versions(path=path, mount_point="secret")


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
