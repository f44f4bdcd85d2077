"""On a real Vault cluster: three OpenBao nodes with Raft storage and OpenBao's defaults (standbys
answer reads themselves), behind a load balancer (tests/cluster.py). Logins cross nodes, the leader
is killed under refresh load, a standby is sealed, a node is cut off: nothing lost, nothing redeemed
twice, no grant revoked."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections import Counter
from datetime import UTC, datetime

import pytest
import requests

from sidecar import providers
from sidecar.config import Settings
from sidecar.devvault import free_port
from sidecar.errors import NotFound, SidecarError
from sidecar.store import Store
from sidecar.web import create_app

from .helpers import (
    OAUTH_SIDECAR,
    callback_url,
    finish_saving,
    provider_client,
    refresher_env,
    seed_grants,
    served_settings,
    serving,
    wait_for,
)

TTL = 20  # seconds each access token lives; refreshed 10 s before it expires
MARGIN = "10"


def node_store(addr: str, token: str, patience: float = 0.0) -> Store:
    return Store(Settings.from_env({"VAULT_ADDR": addr}), token, patience=patience)


def test_what_one_node_wrote_is_read_through_another_at_once(cluster, cluster_tokens):
    """The sidecar's reads reach the active node's latest state: a login written through one node is
    found through another at once, and an update is never read as its older version."""
    stores = [node_store(node.addr, cluster_tokens.sidecar) for node in cluster.nodes]
    stale = []
    for i in range(150):
        writer, reader = stores[i % 3], stores[(i + 1) % 3]
        written = writer.write("pending", f"login-{i % 10}", {"n": i})
        try:
            if reader.read("pending", f"login-{i % 10}").version != written:
                stale.append(i)
        except NotFound:
            stale.append(i)
    assert stale == []


def test_a_login_started_through_one_node_finishes_through_the_others(cluster, cluster_tokens, oauth):
    """Three sidecars, each on its own node: the login is started on one, its link opened on
    another, its callback answered by the third, at once; its token is then read through the first."""
    leader = cluster.leader()
    first, second = (node for node in cluster.nodes if node is not leader)
    public = free_port()

    def settings(addr: str) -> Settings:  # one public URL: the provider knows one redirect URI
        return served_settings(addr, cluster_tokens.sidecar, public)

    admin = {"X-Vault-Token": cluster_tokens.admin}
    with (
        serving(settings(first.addr), public) as a,
        serving(settings(second.addr), free_port()) as b,
        serving(settings(leader.addr), free_port()) as c,
    ):
        assert requests.put(f"{a}/v1/providers/mock", json=oauth.registration(), headers=admin, timeout=30).ok
        started = requests.post(
            f"{a}/v1/secrets", json={"name": "sheets", "provider": "mock"}, headers=admin, timeout=30
        )
        assert started.status_code == 201, started.text
        browser = requests.Session()
        back = callback_url(browser, started.json()["authorization_url"].replace(a, b))
        page = browser.get(back.replace(a, c), timeout=60)
        assert page.status_code == 200 and "Connected" in page.text, page.text
        token = requests.get(f"{a}/v1/secrets/sheets/token?environment=production", headers=admin, timeout=30)
        assert token.status_code == 200, token.text
    assert oauth.accepts(token.json()["access_token"])


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_refreshing_rides_out_killed_leaders_a_sealed_standby_and_a_cut_off_node(
    cluster, cluster_tokens, oauth, tmp_path
):
    """Three refresher replicas and 50 grants whose rotating refresh tokens revoke the whole grant if
    presented twice, all through the load balancer. The leader is killed twice (a login completes
    during the second election), a standby sealed, a node cut off at the balancer."""
    oauth.configure(rotate=True)
    operator = node_store(cluster.addr, cluster_tokens.admin, patience=30)
    operator.put_provider(providers.build("mock", oauth.registration(), provider_client()))
    names = [f"grant-{i:02d}" for i in range(50)]
    seed_grants(operator, oauth, names, ttl=TTL)
    watcher = node_store(cluster.addr, cluster.root_token)
    env = {"SIDECAR_REFRESH_MARGIN": MARGIN, "SIDECAR_RESYNC_INTERVAL": "5", "SIDECAR_CLAIM_TTL": "60"}
    logs = [tmp_path / f"replica-{i}.log" for i in range(3)]
    replicas = [
        subprocess.Popen(
            [OAUTH_SIDECAR, "refresh"],
            env=refresher_env(cluster, cluster_tokens.sidecar, tmp_path, **env),
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
        )
        for log in logs
    ]
    public = free_port()
    web = served_settings(cluster.addr, cluster_tokens.sidecar, public)
    recoveries: list[float] = []
    connected_after = 0.0
    try:
        wait_for(lambda: _last_refresh(watcher) is not None, timeout=60)
        with serving(web, public) as sidecar:
            for round_ in range(2):
                login = _login_in_flight(sidecar, cluster_tokens.admin) if round_ == 1 else None
                leader = cluster.leader()
                killed_at = datetime.now(UTC)
                cluster.kill(leader)
                if login:  # the callback arrives while the cluster has no leader
                    browser, back = login
                    page = finish_saving(browser, sidecar, browser.get(back, timeout=120), timeout=120)
                    assert page.status_code == 200 and "Connected" in page.text, page.text
                    connected_after = round((datetime.now(UTC) - killed_at).total_seconds(), 1)
                recoveries.append(_seconds_to_a_stored_refresh(watcher, killed_at))
                cluster.revive(leader)
                cluster.wait_healthy()
        standby = next(node for node in cluster.nodes if node is not cluster.leader())
        cluster.seal(standby)
        time.sleep(TTL)  # a whole token lifetime with one node sealed behind the balancer
        cluster.unseal(standby)
        cut = cluster.leader()
        cluster.balancer.isolate(cut)
        time.sleep(TTL)
        cluster.balancer.rejoin(cut)
        settled = datetime.now(UTC)
        wait_for(lambda: _all_refreshed_since(watcher, names, settled), timeout=120, every=2)
    finally:
        for replica in replicas:
            replica.send_signal(signal.SIGTERM)
        for replica in replicas:
            replica.wait(timeout=60)
    for name in [*names, "sheets"]:
        grant = watcher.get_grant(name)
        assert grant.status == "active", (name, grant.last_error)
        for environment in grant.environments:
            assert watcher.read_view(environment, name)["access_token"] == grant.tokens.access_token, name
    assert all(oauth.accepts(watcher.get_grant(name).tokens.access_token) for name in names[:10])
    seen = oauth.log()
    assert seen["reuse"] == 0, "a refresh token was presented again after it was spent"
    redeemed = Counter(t["refresh_token"] for t in seen["token"] if t["grant_type"] == "refresh_token")
    assert max(redeemed.values()) == 1, "a refresh token was redeemed twice"
    measured = {
        "seconds_from_kill_to_a_stored_refresh": recoveries,
        "seconds_from_kill_to_the_login_connected": connected_after,
    }
    print(json.dumps({**measured, "refreshes": sum(redeemed.values())}))


def _login_in_flight(sidecar: str, admin: str) -> tuple[requests.Session, str]:
    """A login opened in a browser, the provider's answer in hand, its callback not yet called."""
    started = requests.post(
        f"{sidecar}/v1/secrets",
        json={"name": "sheets", "provider": "mock"},
        headers={"X-Vault-Token": admin},
        timeout=60,
    )
    assert started.status_code == 201, started.text
    browser = requests.Session()
    return browser, callback_url(browser, started.json()["authorization_url"])


def _last_refresh(store: Store) -> datetime | None:
    """The latest refresh stored in Vault (None while Vault does not answer)."""
    try:
        stamps = [store.get_grant(name).last_refreshed_at for name in store.names("grants")]
    except SidecarError:
        return None
    return max((s for s in stamps if s), default=None)


def _seconds_to_a_stored_refresh(store: Store, since: datetime) -> float:
    def refreshed() -> bool:
        last = _last_refresh(store)
        return last is not None and last > since

    wait_for(refreshed, timeout=120, every=0.5)
    return round((datetime.now(UTC) - since).total_seconds(), 1)


def _all_refreshed_since(store: Store, names: list[str], since: datetime) -> bool:
    try:
        grants = [store.get_grant(name) for name in names]
    except SidecarError:
        return False
    return all(g.status == "active" and g.last_refreshed_at and g.last_refreshed_at > since for g in grants)


def test_readiness_fails_while_no_node_answers_and_recovers_by_itself(cluster, cluster_tokens):
    settings = Settings.from_env({"VAULT_ADDR": cluster.addr, "VAULT_TOKEN": cluster_tokens.sidecar})
    client = create_app(settings).test_client()
    assert client.get("/readyz").status_code == 200
    for node in cluster.nodes:
        cluster.kill(node)
    down = client.get("/readyz")
    assert down.status_code == 503 and down.json["error"]["code"] == "vault_unavailable"
    for node in cluster.nodes:
        node.start()
    for node in cluster.nodes:
        cluster.unseal(node)
    wait_for(lambda: client.get("/readyz").status_code == 200, timeout=120, every=1)
