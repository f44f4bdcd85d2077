"""A bounded soak: hundreds of short-lived grants, two refresher processes, faults at random on the
way to Vault and to the provider, for a few minutes. Nothing may be lost or redeemed twice."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from sidecar import providers
from sidecar.config import Settings
from sidecar.store import Store

from .faults import Rule
from .helpers import grant_record, provider_client, seed_grants, vault_tree, wait_for

GRANTS = int(os.environ.get("SOAK_GRANTS", "300"))
SECONDS = float(os.environ.get("SOAK_SECONDS", "120"))
TTL = 30  # each grant is refreshed about every 20 s: some 15 refreshes a second in all
JSON = {"Content-Type": "application/json"}

# The sidecar's side of the faults: Vault refusing, resetting, slow, failing, or acting without
# answering; the provider refusing, resetting before it acts, slow, failing or rate-limiting.
VAULT_FAULTS = [
    Rule("answer", status=503, headers=JSON, body=b'{"errors":["Vault is sealed"]}'),
    Rule("answer", status=500, headers=JSON, body=b'{"errors":["internal error"]}'),
    Rule("reset"),
    Rule("delay", seconds=0.5),
    Rule("drop"),
]
PROVIDER_FAULTS = [
    Rule("answer", path="^/token", status=503, headers=JSON, body=b'{"error":"temporarily_unavailable"}'),
    Rule("answer", path="^/token", status=429, headers={**JSON, "Retry-After": "1"}, body=b'{"error":"slow_down"}'),
    Rule("reset", path="^/token"),
    Rule("delay", path="^/token", seconds=1.0),
]


def replica(vault_addr: str, token: str, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_", "SIDECAR_"))},
        "VAULT_ADDR": vault_addr,
        "VAULT_TOKEN": token,
        "SIDECAR_REFRESH_INTERVAL": "0.5",
        "SIDECAR_REFRESH_MARGIN": "10",
        "SIDECAR_RESYNC_INTERVAL": "10",
        "SIDECAR_CLAIM_TTL": "30",
    }
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "sidecar", "refresh"], env=env, stdout=out, stderr=out)


@pytest.mark.slow
@pytest.mark.timeout(SECONDS + 300)
def test_soak(vault, tokens, root, oauth, fault_proxies, tmp_path):
    oauth.configure(rotate=True)
    to_vault, to_provider = fault_proxies(vault.addr), fault_proxies(oauth.issuer)
    operator = Store(Settings.from_env({"VAULT_ADDR": vault.addr}), tokens.admin)
    operator.put_provider(
        providers.build("mock", oauth.registration(token_url=f"{to_provider.addr}/token"), provider_client())
    )
    names = [f"soak-{i:03d}" for i in range(GRANTS)]
    seed_grants(operator, oauth, names, ttl=TTL)
    logs = [tmp_path / "replica-a.log", tmp_path / "replica-b.log"]
    replicas = [replica(to_vault.addr, tokens.sidecar, log) for log in logs]
    try:
        to_vault.chaos(0.03, VAULT_FAULTS, seed=random.randrange(2**32))
        to_provider.chaos(0.05, PROVIDER_FAULTS, seed=random.randrange(2**32))
        time.sleep(SECONDS)
        to_vault.calm()
        to_provider.calm()
        for r, path in zip(replicas, logs, strict=True):
            assert r.poll() is None, f"a replica died under faults: {path.read_text()[-3000:]}"
        # Faults over: every grant comes back within a refresh cycle or two.
        wait_for(lambda: _statuses(root, names) == {"active": GRANTS}, timeout=90, every=2)
    finally:
        for r in replicas:
            r.send_signal(signal.SIGTERM)
        for r in replicas:
            r.wait(timeout=60)

    tokens_seen = set()
    for name in names:
        grant = grant_record(root, name)
        for env in ("development", "production"):
            view = root.secrets.kv.v2.read_secret_version(
                path=f"oauth/{env}/{name}", mount_point="secret", raise_on_deleted_version=True
            )["data"]["data"]
            assert view["access_token"] == grant["access_token"], _diagnosis(name, env, grant, view, oauth, logs)
        tokens_seen |= {grant["access_token"], grant["refresh_token"]}
    sample = random.sample(names, 30)
    assert all(oauth.accepts(grant_record(root, name)["access_token"]) for name in sample)

    seen = oauth.log()
    assert seen["reuse"] == 0, "a refresh token was presented again after it was spent"
    redeemed = Counter(
        t["refresh_token"] for t in seen["token"] if t["grant_type"] == "refresh_token" and t["status"] == 200
    )
    assert redeemed and max(redeemed.values()) == 1, "a refresh token was redeemed twice"
    tokens_seen |= set(redeemed)
    text = "\n".join(path.read_text(errors="replace") for path in logs)
    assert not [t for t in tokens_seen if t in text], "a token value reached the log"
    summary = {
        "grants": GRANTS,
        "seconds": SECONDS,
        "refreshes": sum(redeemed.values()),
        "vault_faults": Counter(f for _, _, f in to_vault.faults_seen()),
        "provider_faults": Counter(f for _, _, f in to_provider.faults_seen()),
    }
    print(json.dumps(summary, default=dict))
    assert summary["refreshes"] >= GRANTS * SECONDS / TTL  # every grant refreshed through the faults
    assert len(vault_tree(root)) == 2 + 3 * GRANTS  # the provider and its pin; each grant and its 2 views


def _statuses(root, names) -> dict[str, int]:
    return dict(Counter(grant_record(root, name)["status"] for name in names))


def _diagnosis(name: str, env: str, grant: dict, view: dict, oauth, logs: list[Path]) -> str:
    """What a failure needs to be understood: the grant's state, which token the provider knows, the log."""
    lines = [line for path in logs for line in path.read_text(errors="replace").splitlines() if name in line]
    state = {k: grant[k] for k in ("status", "last_refreshed_at", "claim_owner", "expires_at")}
    accepted = (oauth.accepts(grant["access_token"]), oauth.accepts(view["access_token"]))
    return (
        f"{name} in {env}: grant {state}, view expires {view['expires_at']}; "
        f"the provider accepts (grant's, view's) {accepted}\n" + "\n".join(lines[-20:])
    )
