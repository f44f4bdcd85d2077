"""Refresh throughput: the sidecar's refresher against a bare loop doing the same work.

Both sides run against the same OpenBao dev server (with `--cluster`, the tests' three-node Raft
cluster, storage on disk, through its load balancer) and the same fast local token endpoint, at the
same concurrency, on the same number of due grants, taking turns:

- floor: per grant, read it, write a claim (check-and-set), POST the refresh, write the result
  (check-and-set), write each environment view: hvac and requests, nothing else; its Vault requests
  carry the headers the sidecar's do (`X-Vault-Index`, `X-Vault-Inconsistent: forward-active-node`,
  set by the sidecar's own `follow_active`), so on a cluster both make standbys forward to the
  active node and measure the same Vault work;
- sidecar: `Refresher.tick()` (its `learn`, then `dispatch`: what `run` does each refresh interval)
  over a due-queue that a resync step filled beforehand (untimed), then `refresher.index.flush()`:
  each refresh notes its grant's new index entry, and the clock stops once they are written (the
  sidecar writes them at its next tick; the floor writes no index); with `--replicas N`, N refresher
  processes share the same due grants through their claims. The flush's own time is reported
  (`index_flush_s`). Afterwards every refreshed grant's entry must be in the index, due again
  later (untimed).

Each side runs in a process of its own (spawned), apart from the token endpoint's.

    python benchmarks/refresh.py --grants 1000 --json
    python benchmarks/refresh.py --grants 1000 --replicas 3 --json
    python benchmarks/refresh.py --cluster --grants 300 --rounds 3 --json
    python benchmarks/refresh.py --grants 1000 --auth private_key_jwt --json

With `--auth private_key_jwt` each refresh carries a client assertion signed with an RSA 2048 key;
the floor loads the key once, as the sidecar should.

prints a table, and with --json one JSON object as its last line. The token endpoint counts every
refresh token it is shown: `redeemed_twice` must be 0.
"""

from __future__ import annotations

import argparse
import multiprocessing
import secrets
import signal
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor, wait
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import hvac
import jwt
import requests
from common import ENVIRONMENTS, TokenEndpoint, bench_vault, report, seed
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from sidecar.config import Settings
from sidecar.devvault import DevVault
from sidecar.index import Mirror
from sidecar.models import Provider, rfc3339
from sidecar.oauth import JWT_BEARER
from sidecar.refresher import Refresher
from sidecar.store import Store, follow_active

if TYPE_CHECKING:
    from tests.cluster import Cluster


def floor(vault_addr: str, token: str, provider: Provider, names: list[str], concurrency: int, out) -> None:
    """The same Vault and provider calls, with nothing of the sidecar around them."""
    session = requests.Session()  # the provider's; Vault's client has its own, as the sidecar's has
    key = load_pem_private_key(provider.private_key.encode(), None) if provider.private_key else None  # once
    client = hvac.Client(url=vault_addr, token=token, session=requests.Session())
    follow_active(client, vault_addr)
    kv = client.secrets.kv.v2

    def one(name: str) -> None:
        path = f"oauth-sidecar/grants/{name}"
        read = kv.read_secret_version(path=path, mount_point="secret", raise_on_deleted_version=True)
        record, version = read["data"]["data"], read["data"]["metadata"]["version"]
        claimed = {**record, "claim_owner": "floor", "claim_until": rfc3339(datetime.now(UTC), precise=True)}
        version = kv.create_or_update_secret(path=path, secret=claimed, cas=version, mount_point="secret")
        form = {"grant_type": "refresh_token", "refresh_token": record["refresh_token"]}
        auth: tuple[str, str] | None = (provider.client_id, provider.client_secret)
        if key is not None:  # private_key_jwt: a signed single-use assertion instead of the secret
            now = int(time.time())
            claims = {"iss": provider.client_id, "sub": provider.client_id, "aud": provider.token_url,
                      "jti": secrets.token_urlsafe(24), "iat": now, "exp": now + 60}  # fmt: skip
            form |= {"client_id": provider.client_id, "client_assertion_type": JWT_BEARER,
                     "client_assertion": jwt.encode(claims, key, algorithm="RS256")}  # fmt: skip
            auth = None
        answer = session.post(provider.token_url, data=form, auth=auth, timeout=10, allow_redirects=False).json()
        done = {**record, "access_token": answer["access_token"], "refresh_token": answer["refresh_token"]}
        done |= {"claim_owner": "", "claim_until": ""}
        kv.create_or_update_secret(path=path, secret=done, cas=version["data"]["version"], mount_point="secret")
        for env in ENVIRONMENTS:
            view = {"access_token": answer["access_token"]}
            kv.create_or_update_secret(path=f"oauth/{env}/{name}", secret=view, mount_point="secret")

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for future in [pool.submit(one, n) for n in names]:
            future.result()
    out.put(len(names) / (time.perf_counter() - started))


def floor_rate(vault: DevVault | Cluster, provider: Provider, names: list[str], concurrency: int) -> float:
    """The floor in a process of its own, as the sidecar's refreshers are (the token endpoint
    is a thread server in this process, so neither side shares its interpreter with it)."""
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    args = (vault.addr, vault.root_token, provider, names, concurrency, out)
    proc = ctx.Process(target=floor, args=args, daemon=True)  # daemons: ended if this process exits early
    proc.start()
    result = out.get()
    proc.join()
    return result


def replica(
    settings: Settings, budget: int, start: multiprocessing.synchronize.Barrier, out: multiprocessing.Queue
) -> None:
    """One refresher process: learn the queue (untimed), then one tick over everything due and the
    flush of the index entries its refreshes noted."""
    refresher = Refresher(settings, Store(settings, settings.vault_token))
    refresher.resync_step(budget=budget)
    start.wait()
    started = time.time()
    futures = refresher.tick()
    wait(futures)
    flushing = time.time()
    refresher.index.flush()  # the notes of this tick's refreshes, which `run` writes at its next tick
    ended = time.time()
    unwritten = len(refresher.index.pending())  # notes Vault refused (logged): kept for a next flush
    refresher.shutdown()
    out.put((started, ended, [f.result().result for f in futures], unwritten, ended - flushing))


def sidecar(settings: Settings, names: list[str], replicas: int) -> tuple[float, float]:
    """Refreshes per second of `replicas` refresher processes over the same due grants, and the
    seconds the slowest replica's index flush took (within the timed span)."""
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Barrier(replicas), ctx.Queue()
    args = (settings, len(names) + 1, start, out)
    procs = [ctx.Process(target=replica, args=args, daemon=True) for _ in range(replicas)]
    for p in procs:
        p.start()
    results = [out.get() for _ in procs]
    for p in procs:
        p.join()
    refreshed = sum(r.count("refreshed") for _, _, r, *_ in results)
    if refreshed != len(names):
        sys.exit(f"{refreshed} of {len(names)} grants were refreshed")
    if any(unwritten for *_, unwritten, _ in results):
        sys.exit(f"{sum(u for *_, u, _ in results)} index notes were not written")
    mirror = Mirror()
    mirror.reload(Store(settings, settings.vault_token))
    stale = [n for n in names if (e := mirror.known(n)) is None or e.due is None or e.due <= time.time()]
    if stale:
        sys.exit(f"{len(stale)} of {len(names)} refreshed grants are not indexed as due later (e.g. {stale[0]})")
    span = max(end for _, end, *_ in results) - min(begin for begin, *_ in results)
    return len(names) / span, max(flush for *_, flush in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grants", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--replicas", type=int, default=1, help="refresher processes sharing the work")
    parser.add_argument("--rounds", type=int, default=3, help="turns each side takes; the median is reported")
    parser.add_argument("--cluster", action="store_true", help="the three-node Raft cluster, not the dev server")
    parser.add_argument("--auth", choices=["client_secret_basic", "private_key_jwt"], default="client_secret_basic")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwinds, so the servers are stopped

    rates: dict[str, list[float]] = {"floor": [], "sidecar": []}
    flushes: list[float] = []
    with bench_vault(args.concurrency, cluster=args.cluster, auth=args.auth) as (vault, settings, store, provider):
        for _ in range(args.rounds):
            rates["floor"].append(floor_rate(vault, provider, seed(store, args.grants), args.concurrency))
            rate, flush = sidecar(settings, seed(store, args.grants), args.replicas)
            rates["sidecar"].append(rate)
            flushes.append(flush)
    floor_median, sidecar_median = statistics.median(rates["floor"]), statistics.median(rates["sidecar"])
    result = {
        "vault": "cluster" if args.cluster else "dev",
        "grants": args.grants,
        "concurrency": args.concurrency,
        "replicas": args.replicas,
        "auth": args.auth,
        "rounds": args.rounds,
        "sidecar_per_s": round(sidecar_median, 1),
        "floor_per_s": round(floor_median, 1),
        "ratio": round(sidecar_median / floor_median, 3),
        "index_flush_s": round(statistics.median(flushes), 2),
        "redeemed_twice": TokenEndpoint.redeemed_twice(),
    }
    report(
        [
            ("vault", "3-node Raft cluster" if args.cluster else "dev server"),
            ("grants, concurrency, replicas", f"{args.grants}, {args.concurrency}, {args.replicas}"),
            ("client authentication", args.auth),
            ("floor refreshes/s (rounds)", f"{floor_median:.1f} ({', '.join(f'{v:.1f}' for v in rates['floor'])})"),
            (
                "sidecar refreshes/s (rounds)",
                f"{sidecar_median:.1f} ({', '.join(f'{v:.1f}' for v in rates['sidecar'])})",
            ),
            ("ratio sidecar/floor", f"{result['ratio']:.3f}"),
            ("index flush after the tick (in the sidecar's time)", f"{result['index_flush_s']:.2f} s"),
            ("refresh tokens redeemed twice", str(result["redeemed_twice"])),
        ],
        result,
        args.json,
    )


if __name__ == "__main__":
    main()
