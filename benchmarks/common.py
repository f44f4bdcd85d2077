"""What the benchmarks share: a fast local token endpoint, an OpenBao (a dev server, or the tests'
three-node Raft cluster), seeded and indexed grants, a Vault session that counts its requests, JSON
output, memory."""

from __future__ import annotations

import itertools
import json
import multiprocessing
import resource
import secrets
import signal
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar
from urllib.parse import urlsplit

import requests
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from sidecar import inputs
from sidecar.config import Settings
from sidecar.devvault import DevVault
from sidecar.index import Entry, Keeper, Mirror
from sidecar.models import Grant, Provider, TokenSet, due_at
from sidecar.store import Store

if TYPE_CHECKING:
    from tests.cluster import Cluster

ENVIRONMENTS = ("development", "production")


class TokenEndpoint(BaseHTTPRequestHandler):
    """Answers every refresh at once with fresh tokens, over keep-alive, so it is never the bottleneck.
    It counts each refresh token it is shown, so a benchmark can prove none was redeemed twice."""

    protocol_version = "HTTP/1.1"
    # Without this, Nagle's algorithm and delayed ACKs hold each keep-alive answer ~40 ms.
    disable_nagle_algorithm = True
    seen: ClassVar[dict[str, int]] = {}
    lock = threading.Lock()

    def do_POST(self) -> None:
        form = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
        token = next((v for k, _, v in (p.partition("=") for p in form.split("&")) if k == "refresh_token"), "")
        with self.lock:
            self.seen[token] = self.seen.get(token, 0) + 1
        body = json.dumps(
            {
                "access_token": secrets.token_urlsafe(32),
                "refresh_token": secrets.token_urlsafe(24),
                "token_type": "Bearer",
                "expires_in": 3600,
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass

    @classmethod
    def redeemed_twice(cls) -> int:
        return sum(1 for count in cls.seen.values() if count > 1)


@contextmanager
def bench_cluster() -> Iterator[Cluster]:
    """The tests' cluster (tests/cluster.py): three OpenBao nodes with Raft storage on disk, behind
    a load balancer in this process. Its nodes are stopped however the run ends."""
    root = str(Path(__file__).resolve().parent.parent)
    if root not in sys.path:
        sys.path.append(root)  # after the installed packages: only `tests` is taken from here
    from tests.cluster import Cluster

    cluster = Cluster()
    try:
        yield cluster.start()
    finally:
        interrupt = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not orphan nodes
        try:
            cluster.stop()
        finally:
            signal.signal(signal.SIGINT, interrupt)


@contextmanager
def bench_vault(
    concurrency: int = 8,
    cluster: bool = False,
    auth: str = "client_secret_basic",
    **extra: str,
) -> Iterator[tuple[DevVault | Cluster, Settings, Store, Provider]]:
    """An OpenBao dev server on its defaults (with `cluster`, the three-node cluster through its
    balancer), a fast token endpoint, and a provider registered for it, authenticating with `auth`
    (with private_key_jwt, a new RSA 2048 key)."""
    endpoint = ThreadingHTTPServer(("127.0.0.1", 0), TokenEndpoint)
    threading.Thread(target=endpoint.serve_forever, daemon=True).start()
    with bench_cluster() if cluster else DevVault() as vault:
        settings = Settings.from_env(
            {
                "VAULT_ADDR": vault.addr,
                "VAULT_TOKEN": vault.root_token,
                "SIDECAR_REFRESH_CONCURRENCY": str(concurrency),
                "SIDECAR_RESYNC_INTERVAL": "86400",
                **extra,
            }
        )
        store = Store(settings, vault.root_token)
        provider = inputs.provider(
            "bench",
            {
                "client_id": "bench",
                "client_secret": "bench-secret",
                "authorization_url": "http://127.0.0.1:9/authorize",
                "token_url": f"http://127.0.0.1:{endpoint.server_port}/token",
                "scopes": "read",
                "token_auth_method": auth,
                **({"private_key": rsa_pem()} if auth == "private_key_jwt" else {}),
            },
        )
        store.put_provider(provider)
        try:
            yield vault, settings, store, provider
        finally:
            endpoint.shutdown()


def rsa_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()).decode()


def seed(
    store: Store, count: int, due: bool = True, prefix: str = "bench", views: bool = True, progress: bool = False
) -> list[str]:
    """`count` grants, each with its own refresh token and (with `views`, as in steady state) its
    environment views: expired a minute ago (due), or good for a day. Each is indexed as a real
    writer indexes it (index.py): one `Keeper` notes every grant's entry (due `SIDECAR_REFRESH_MARGIN`'s
    default 300 s before it expires, as `models.refresh_due` gives for the bench provider), then
    writes them in one flush: one check-and-set write a shard, one write of the changes record.
    `progress`: a line on stderr every 10,000 grants."""
    now = datetime.now(UTC)
    expires = now - timedelta(minutes=1) if due else now + timedelta(days=1)
    issued = expires - timedelta(hours=1)
    names = [f"{prefix}-{i:06d}" for i in range(count)]
    keeper = Keeper(store)
    started = time.monotonic()
    done = itertools.count(1)

    def one(name: str) -> None:
        tokens = TokenSet("old-access", "Bearer", expires, ("read",), refresh_token=f"seed-{secrets.token_hex(8)}")
        grant = Grant(name, "bench", ENVIRONMENTS, tokens, connected_at=issued, last_refreshed_at=issued)
        version = store.put_grant(grant)
        keeper.note(name, Entry.of(grant, due_at(grant, 300), version))
        if views:
            for env in ENVIRONMENTS:
                store.write_view(env, grant)
        finished = next(done)
        if progress and finished % 10000 == 0:
            print(f"seeded {finished} of {count} grants in {time.monotonic() - started:.0f} s", file=sys.stderr)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(one, names))
    keeper.flush()
    written = Mirror()
    written.reload(store)
    unindexed = sum(1 for name in names if written.known(name) is None)
    if unindexed:  # the Keeper logs its failures and keeps them for a next flush that will not come
        raise SystemExit(f"{unindexed} of {count} seeded grants could not be indexed (see the warnings above)")
    if progress:
        print(f"seeded and indexed {count} grants in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return names


class CountingSession(requests.Session):
    """A Vault session that records every request sent through it: (method, path)."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[tuple[str, str]] = []

    def request(self, method, url, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.sent.append((str(method).upper(), urlsplit(str(url)).path))
        return super().request(method, url, *args, **kwargs)


def kind(method: str, path: str, state: str) -> str:
    """What a request is, for the breakdown: the tree it touches under the sidecar's state prefix."""
    tail = path.split(f"/{state}/", 1)[-1] if f"/{state}/" in path else path
    if method == "LIST":
        return f"LIST {tail}"
    if tail.startswith("index/shard-"):
        return "read index shard" if method == "GET" else f"{method} index shard"
    return f"{method} {tail}"


def seed_apart(settings: Settings, count: int, **options: object) -> list[str]:
    """`seed` in a process of its own (spawned), with the settings' token: the benchmark's process
    then holds nothing the seeding allocated, so its growth in resident memory is the replica's."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_seed_with, settings, count, options).result()


def _seed_with(settings: Settings, count: int, options: dict) -> list[str]:  # type: ignore[type-arg]
    return seed(Store(settings, settings.vault_token), count, **options)  # type: ignore[arg-type]


def median_ms(work: Callable[[], object], runs: int) -> float:
    """The median time of `runs` calls of `work`, in milliseconds."""
    spent = []
    for _ in range(runs):
        started = time.perf_counter()
        work()
        spent.append(time.perf_counter() - started)
    return statistics.median(spent) * 1000


def rss_mb() -> float:
    """Resident memory of this process now, in MB (from /proc)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def report(rows: list[tuple[str, str]], result: dict, as_json: bool) -> None:
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    if as_json:
        print(json.dumps(result))
