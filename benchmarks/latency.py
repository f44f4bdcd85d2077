"""Latency: the token endpoint against a direct Vault read, and the callback's own overhead.

    python benchmarks/latency.py --requests 2000 --logins 100 --json

The sidecar runs as in production: `oauth-sidecar serve` (gunicorn, SIDECAR_WORKERS workers).
- `GET /v1/secrets/<name>/token` through the sidecar against the bare floor: the same Vault read
  of the view with hvac, same concurrency, same run.
- `/callback`: logins driven over HTTP (the fast local endpoint plays the provider), timed from the
  callback request to its answer, against a bare floor that makes the same Vault calls and the same
  token request without the sidecar.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import hvac
import requests
from common import bench_vault, report, seed

from sidecar.config import Settings
from sidecar.devvault import DevVault, bootstrap, free_port


def rate(call, count: int, concurrency: int) -> float:
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(lambda _: call(), range(count)))
    return count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--logins", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2, help="SIDECAR_WORKERS of the sidecar under test")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    with bench_vault() as (vault, _, store, provider):
        tokens = bootstrap(vault, Settings())
        port = free_port()
        sidecar_url = f"http://127.0.0.1:{port}"
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_", "SIDECAR_"))},
            "VAULT_ADDR": vault.addr,
            "VAULT_TOKEN": tokens.sidecar,
            "SIDECAR_BIND": f"127.0.0.1:{port}",
            "SIDECAR_PUBLIC_URL": sidecar_url,
            "SIDECAR_WORKERS": str(args.workers),
        }
        server = subprocess.Popen(  # noqa: S603 - fixed argv: this venv's own oauth-sidecar
            [str(Path(sys.executable).parent / "oauth-sidecar"), "serve"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        while True:
            try:
                if requests.get(f"{sidecar_url}/readyz", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(0.2)

        # The token endpoint against a direct read of the same view.
        seed(store, 1, due=False, prefix="token")
        store.write_view("production", store.get_grant("token-000000"))
        local = threading.local()

        def session() -> requests.Session:
            if not hasattr(local, "s"):
                local.s = requests.Session()
            return local.s

        reader = {"X-Vault-Token": tokens.reader["production"]}
        url = f"{sidecar_url}/v1/secrets/token-000000/token?environment=production"
        through_sidecar = rate(
            lambda: session().get(url, headers=reader).raise_for_status(), args.requests, args.concurrency
        )
        kv = hvac.Client(url=vault.addr, token=tokens.reader["production"], session=requests.Session()).secrets.kv.v2
        direct = rate(
            lambda: kv.read_secret_version(
                path="oauth/production/token-000000", mount_point="secret", raise_on_deleted_version=True
            ),
            args.requests,
            args.concurrency,
        )

        # The callback: the sidecar's time against the same work done bare.
        admin = {"X-Vault-Token": tokens.admin}
        callback_ms = []
        for i in range(args.logins):
            browser = requests.Session()
            link = browser.post(
                f"{sidecar_url}/v1/secrets", json={"name": f"login-{i}", "provider": "bench"}, headers=admin
            )
            to_provider = browser.get(link.json()["authorization_url"], allow_redirects=False).headers["Location"]
            state = parse_qs(urlsplit(to_provider).query)["state"][0]
            started = time.perf_counter()
            done = browser.get(f"{sidecar_url}/callback?code=c-{i}&state={state}")
            callback_ms.append((time.perf_counter() - started) * 1000)
            assert done.status_code == 200, done.text
        floor_ms = [bare_callback(vault, provider, i) for i in range(args.logins)]
        server.terminate()
        server.wait()

    sidecar_ms, bare_ms = statistics.median(callback_ms), statistics.median(floor_ms)
    result = {
        "token_endpoint_per_s": round(through_sidecar, 1),
        "direct_vault_read_per_s": round(direct, 1),
        "token_ratio": round(through_sidecar / direct, 3),
        "callback_ms_median": round(sidecar_ms, 2),
        "callback_floor_ms_median": round(bare_ms, 2),
        "callback_overhead_ms": round(sidecar_ms - bare_ms, 2),
    }
    report(
        [
            ("GET …/token through the sidecar", f"{through_sidecar:.0f}/s"),
            ("the same read straight from Vault", f"{direct:.0f}/s (ratio {result['token_ratio']:.2f})"),
            ("/callback, median", f"{sidecar_ms:.1f} ms"),
            ("the same Vault and provider calls, bare", f"{bare_ms:.1f} ms"),
            ("the sidecar's own share of a callback", f"{result['callback_overhead_ms']:.1f} ms"),
        ],
        result,
        args.json,
    )


def bare_callback(vault: DevVault, provider, i: int) -> float:
    """What a callback must do at the least: read and consume the login, get the provider,
    redeem the code, write the grant and two views, delete the login; timed without the sidecar."""
    session = requests.Session()
    kv = hvac.Client(url=vault.addr, token=vault.root_token, session=session).secrets.kv.v2
    pending = f"oauth-sidecar/pending/bare-{i}"
    kv.create_or_update_secret(path=pending, secret={"state": "s", "code_verifier": "v"}, mount_point="secret")
    started = time.perf_counter()
    version = kv.read_secret_version(path=pending, mount_point="secret", raise_on_deleted_version=True)["data"][
        "metadata"
    ]["version"]
    kv.create_or_update_secret(path=pending, secret={"consumed_at": "now"}, cas=version, mount_point="secret")
    kv.read_secret_version(path="oauth-sidecar/providers/bench", mount_point="secret", raise_on_deleted_version=True)
    answer = session.post(
        provider.token_url, data={"grant_type": "authorization_code", "code": "c"}, auth=("bench", "x")
    ).json()
    kv.create_or_update_secret(path=f"oauth-sidecar/grants/bare-{i}", secret=answer, mount_point="secret")
    for env in ("development", "production"):
        kv.create_or_update_secret(
            path=f"oauth/{env}/bare-{i}", secret={"access_token": answer["access_token"]}, mount_point="secret"
        )
    kv.delete_metadata_and_all_versions(path=pending, mount_point="secret")
    return (time.perf_counter() - started) * 1000


if __name__ == "__main__":
    main()
