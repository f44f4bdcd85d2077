"""Refresh throughput: the sidecar's refresher against a bare loop doing the same work.

Both sides run in the same process, against the same OpenBao dev server and the same fast local
token endpoint, at the same concurrency, on the same number of due grants, taking turns:

- floor: per grant, read it, write a claim (check-and-set), POST the refresh, write the result
  (check-and-set), write each environment view: hvac and requests, nothing else;
- sidecar: `Refresher.tick()` over a due-queue that a resync filled beforehand (untimed).

    python benchmarks/refresh.py --grants 1000 --json

prints a table, and with --json one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import hvac
import requests

from sidecar.config import Settings
from sidecar.devvault import DevVault
from sidecar.models import Grant, Provider, TokenSet, rfc3339
from sidecar.refresher import Refresher
from sidecar.store import Store

CLIENT_SECRET = "bench-secret"
ENVIRONMENTS = ("development", "production")


class TokenEndpoint(BaseHTTPRequestHandler):
    """Answers every refresh at once with fresh tokens; keep-alive, so it is never the bottleneck."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = json.dumps(
            {"access_token": secrets.token_urlsafe(32), "token_type": "Bearer", "expires_in": 3600}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def seed(store: Store, count: int) -> list[str]:
    """`count` grants that expired a minute ago, so every one of them is due."""
    past = datetime.now(UTC) - timedelta(minutes=1)
    names = [f"bench-{i:06d}" for i in range(count)]
    tokens = TokenSet("old-access", "Bearer", past, ("read",), refresh_token="old-refresh")
    with ThreadPoolExecutor(16) as pool:
        list(
            pool.map(
                lambda n: store.put_grant(
                    Grant(n, "bench", ENVIRONMENTS, tokens, connected_at=past - timedelta(hours=1),
                          last_refreshed_at=past - timedelta(hours=1))
                ),
                names,
            )
        )  # fmt: skip
    return names


def floor(vault: DevVault, token: str, provider: Provider, names: list[str], concurrency: int) -> float:
    """The same Vault and provider calls, with nothing of the sidecar around them."""
    session = requests.Session()
    client = hvac.Client(url=vault.addr, token=token, session=session)
    kv = client.secrets.kv.v2

    def one(name: str) -> None:
        path = f"oauth-sidecar/grants/{name}"
        read = kv.read_secret_version(path=path, mount_point="secret", raise_on_deleted_version=True)
        record, version = read["data"]["data"], read["data"]["metadata"]["version"]
        claimed = {**record, "claim_owner": "floor", "claim_until": rfc3339(datetime.now(UTC), precise=True)}
        version = kv.create_or_update_secret(path=path, secret=claimed, cas=version, mount_point="secret")["data"][
            "version"
        ]
        answer = session.post(
            provider.token_url,
            data={"grant_type": "refresh_token", "refresh_token": record["refresh_token"]},
            auth=(provider.client_id, provider.client_secret),
            timeout=10,
            allow_redirects=False,
        ).json()
        done = {**record, "access_token": answer["access_token"], "claim_owner": "", "claim_until": ""}
        kv.create_or_update_secret(path=path, secret=done, cas=version, mount_point="secret")
        for env in ENVIRONMENTS:
            kv.create_or_update_secret(
                path=f"oauth/{env}/{name}", secret={"access_token": answer["access_token"]}, mount_point="secret"
            )

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for future in [pool.submit(one, n) for n in names]:
            future.result()
    return len(names) / (time.perf_counter() - started)


def sidecar(settings: Settings, token: str, names: list[str]) -> float:
    refresher = Refresher(settings, Store(settings, token))
    refresher.resync_step(budget=len(names) + 1)  # learn the queue first, untimed
    started = time.perf_counter()
    futures = refresher.tick()
    wait(futures)
    elapsed = time.perf_counter() - started
    refresher.shutdown()
    results = [f.result().result for f in futures]
    if len(results) != len(names) or set(results) != {"refreshed"}:
        sys.exit(f"the sidecar did not refresh every grant: {sorted(set(results))} of {len(results)}")
    return len(names) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grants", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3, help="turns each side takes; the median is reported")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args()

    endpoint = ThreadingHTTPServer(("127.0.0.1", 0), TokenEndpoint)
    threading.Thread(target=endpoint.serve_forever, daemon=True).start()
    with DevVault() as vault:
        settings = Settings.from_env(
            {
                "VAULT_ADDR": vault.addr,
                "VAULT_TOKEN": vault.root_token,
                "SIDECAR_REFRESH_CONCURRENCY": str(args.concurrency),
                "SIDECAR_RESYNC_INTERVAL": "86400",
            }
        )
        store = Store(settings, vault.root_token)
        provider = Provider.from_input(
            "bench",
            {
                "client_id": "bench",
                "client_secret": CLIENT_SECRET,
                "authorization_url": "http://127.0.0.1:9/authorize",
                "token_url": f"http://127.0.0.1:{endpoint.server_port}/token",
                "scopes": "read",
            },
        )
        store.put_provider(provider)
        rates: dict[str, list[float]] = {"floor": [], "sidecar": []}
        for _ in range(args.rounds):
            rates["floor"].append(floor(vault, vault.root_token, provider, seed(store, args.grants), args.concurrency))
            rates["sidecar"].append(sidecar(settings, vault.root_token, seed(store, args.grants)))
    endpoint.shutdown()

    floor_rate, sidecar_rate = statistics.median(rates["floor"]), statistics.median(rates["sidecar"])
    result = {
        "grants": args.grants,
        "concurrency": args.concurrency,
        "rounds": args.rounds,
        "sidecar_per_s": round(sidecar_rate, 1),
        "floor_per_s": round(floor_rate, 1),
        "ratio": round(sidecar_rate / floor_rate, 3),
    }
    print(f"{'side':<10}{'refreshes/s (median)':>22}{'each round':>40}")
    for side, values in rates.items():
        print(f"{side:<10}{statistics.median(values):>22.1f}{', '.join(f'{v:.1f}' for v in values):>40}")
    print(f"ratio sidecar/floor: {result['ratio']:.3f} ({args.grants} grants, concurrency {args.concurrency})")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
