"""Propagation: how long a grant stored (or deleted) through the API takes to reach every replica.

    python benchmarks/propagation.py --json

Seeds `--grants` background grants (indexed, none due), then starts three replicas: three
`Refresher`s, each with its own `Store` (its own HTTP session), each running `run(stop)` in a thread
of this process, their first ticks a third of a refresh interval apart (replicas do not tick in
step). Once each has learned the background grants, it stores `--stores` grants one by one, as the
API does (`sidecar.grants.connected`: the index entry published ahead, the grant written with
check-and-set, its entry published, its views written), `--spacing` seconds apart, and times each
from the start of that call to its presence in every replica's due-queue (`queue.known()`, polled
every 20 ms). Then it deletes `--deletes` of them as the API does (`sidecar.grants.delete`, with
`force`: the bench provider has no revocation endpoint) and times their removal from every queue
the same way. A replica learns of a write at its next tick (one read of the index's change counter,
then the shards that moved), so the bound is two refresh intervals; the median and the maximum are
reported against it. Each replica's Vault session counts its requests (common.CountingSession): the
benchmark also reports, for the ticks while the writes went on (each replica's `learn` step, which
`run` calls every refresh interval in a thread of its own), the index requests a tick sent and
how many ticks read every shard (a sync more than `index.LOOKBACK` versions of the change counter
behind reads every shard, as a reload does).
"""

from __future__ import annotations

import argparse
import math
import statistics
import threading
import time
from datetime import UTC, datetime, timedelta

from common import ENVIRONMENTS, CountingSession, bench_vault, kind, report, seed

from sidecar import grants, oauth
from sidecar.egress import Egress
from sidecar.models import GrantType, TokenSet
from sidecar.refresher import Refresher
from sidecar.store import Store

REPLICAS = 3
POLL = 0.02


class Watch:
    """Polls every replica's due-queue and notes when each awaited name is in all (or in none)."""

    def __init__(self, replicas: list[Refresher]) -> None:
        self.replicas = replicas
        self.lock = threading.Lock()
        self.awaited: dict[str, tuple[float, bool]] = {}  # name -> (started, whether it should be present)
        self.took: dict[str, float] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.poll, daemon=True)
        self.thread.start()

    def expect(self, name: str, started: float, present: bool) -> None:
        with self.lock:
            self.awaited[name] = (started, present)

    def poll(self) -> None:
        while not self.stop.wait(POLL):
            with self.lock:
                awaited = dict(self.awaited)
            if not awaited:
                continue
            queues = [r.queue.known() for r in self.replicas]
            now = time.perf_counter()
            for name, (started, present) in awaited.items():
                if all((name in known) == present for known in queues):
                    with self.lock:
                        self.awaited.pop(name, None)
                        self.took[name] = now - started

    def wait(self, names: list[str], timeout: float) -> dict[str, float]:
        """The seconds each of `names` took (those that did not arrive within `timeout` are left out)."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            with self.lock:
                if not any(name in self.awaited for name in names):
                    break
            time.sleep(POLL)
        with self.lock:
            for name in names:
                self.awaited.pop(name, None)
            return {name: self.took.pop(name) for name in names if name in self.took}


def watch_ticks(
    replica: Refresher,
    session: CountingSession,
    state: str,
    writing: threading.Event,
    ticks: list[tuple[float, int, bool, int]],
) -> threading.Event:
    """Note, for each tick of `replica` while `writing`, its seconds, its requests to the index (the
    refreshes its worker threads run meanwhile left out), whether it read every shard, and how many
    of those requests were writes (its flush of the notes it made). Returns an event set once its
    first tick (the start-up: every shard read, the grants listed) is over."""
    learn, ticked = replica.learn, threading.Event()  # a tick's index work (run() calls it in a thread)

    def counted() -> None:
        sent, began, counting = len(session.sent), time.perf_counter(), writing.is_set()
        learn()
        ticked.set()
        if counting:
            index = [kind(m, p, state) for m, p in session.sent[sent:] if "/index" in p]
            writes = sum(1 for k in index if k.startswith(("POST", "PUT")))  # a flush: shard and changes
            ticks.append((time.perf_counter() - began, len(index), "LIST index" in index, writes))

    replica.learn = counted  # type: ignore[method-assign]
    return ticked


def summary(took: dict[str, float], wanted: int, bound: float) -> dict[str, object]:
    values = sorted(took.values())
    return {
        "count": wanted,
        "arrived": len(values),
        "median_s": round(statistics.median(values), 2) if values else None,
        "p90_s": round(values[math.ceil(0.9 * len(values)) - 1], 2) if values else None,  # nearest rank
        "max_s": round(values[-1], 2) if values else None,
        "over_bound": sum(1 for v in values if v > bound) + wanted - len(values),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grants", type=int, default=1000, help="background grants, seeded and indexed")
    parser.add_argument("--stores", type=int, default=100, help="grants stored one by one and timed")
    parser.add_argument("--deletes", type=int, default=20, help="of those, deleted one by one and timed")
    parser.add_argument("--spacing", type=float, default=0.2, help="seconds between two stores (or deletes)")
    parser.add_argument("--refresh-interval", type=float, default=10.0, help="SIDECAR_REFRESH_INTERVAL")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args()
    interval = args.refresh_interval
    bound = 2 * interval

    with bench_vault(SIDECAR_REFRESH_INTERVAL=str(interval)) as (_vault, settings, store, provider):
        seed(store, args.grants, due=False, views=False)
        sessions = [CountingSession() for _ in range(REPLICAS)]
        replicas = [Refresher(settings, Store(settings, settings.vault_token, session)) for session in sessions]
        writing = threading.Event()
        ticks: list[
            tuple[float, int, bool, int]
        ] = []  # while writing: seconds, index requests, all shards read, writes
        started_up = [
            watch_ticks(replica, session, settings.state_prefix, writing, ticks)
            for replica, session in zip(replicas, sessions, strict=True)
        ]
        stop = threading.Event()
        threads = [threading.Thread(target=r.run, args=(stop,)) for r in replicas]
        for i, thread in enumerate(threads):
            if i:
                time.sleep(interval / REPLICAS)
            thread.start()
        watch = Watch(replicas)
        client = oauth.Client(Egress(settings.egress_allow))
        names = [f"new-{i:04d}" for i in range(args.stores)]
        expires = datetime.now(UTC) + timedelta(days=1)
        calls = []
        try:
            deadline = time.perf_counter() + 60 + args.grants / 100
            while not all(ticked.is_set() for ticked in started_up) or any(
                len(r.queue.known()) < args.grants for r in replicas
            ):
                if time.perf_counter() > deadline:
                    raise SystemExit("the replicas did not learn the background grants")
                time.sleep(0.1)
            writing.set()
            for name in names:
                tokens = TokenSet("access", "Bearer", expires, ("read",), refresh_token=f"refresh-{name}")
                started = time.perf_counter()
                grants.connected(store, settings, name, provider, ENVIRONMENTS, tokens, GrantType.REFRESH_TOKEN)
                calls.append(time.perf_counter() - started)
                watch.expect(name, started, present=True)
                time.sleep(args.spacing)
            stored = watch.wait(names, 4 * interval)
            removed_names = names[: args.deletes]
            for name in removed_names:
                started = time.perf_counter()
                grants.delete(store, settings, client, name, own=store, force=True)
                watch.expect(name, started, present=False)
                time.sleep(args.spacing)
            removed = watch.wait(removed_names, 4 * interval)
            writing.clear()
        finally:
            watch.stop.set()
            stop.set()
            for thread in threads:
                thread.join()

    result = {
        "replicas": REPLICAS,
        "background_grants": args.grants,
        "refresh_interval": interval,
        "bound_s": bound,
        "connected_call_ms": round(statistics.median(calls) * 1000, 1),
        "stored": summary(stored, len(names), bound),
        "deleted": summary(removed, len(removed_names), bound),
        "ticks_while_writing": len(ticks),
        "ticks_reading_every_shard": sum(1 for _, _, every, _ in ticks if every),
        "index_requests_per_tick_median": statistics.median(n for _, n, _, _ in ticks),
        "index_requests_per_tick_max": max(n for _, n, _, _ in ticks),
        "index_writes_by_replicas": sum(w for _, _, _, w in ticks),
        "tick_seconds_median": round(statistics.median(s for s, _, _, _ in ticks), 2),
        "tick_seconds_max": round(max(s for s, _, _, _ in ticks), 2),
    }

    def row(figures: dict[str, object]) -> str:
        return (
            f"median {figures['median_s']} s, p90 {figures['p90_s']} s, max {figures['max_s']} s "
            f"({figures['arrived']} of {figures['count']} arrived; {figures['over_bound']} over the bound)"
        )

    report(
        [
            ("replicas", f"{REPLICAS} (threads, each its own Store), refresh interval {interval:g} s"),
            ("background grants", str(args.grants)),
            ("bound", f"{bound:g} s (two refresh intervals)"),
            ("a store (grants.connected)", f"{result['connected_call_ms']} ms median"),
            (f"{len(names)} stored, in every queue after", row(result["stored"])),  # type: ignore[arg-type]
            (f"{len(removed_names)} deleted, out of every queue after", row(result["deleted"])),  # type: ignore[arg-type]
            (
                "replica ticks while writing",
                f"{len(ticks)}, {result['ticks_reading_every_shard']} of them reading every shard; index requests "
                f"a tick: median {result['index_requests_per_tick_median']:g}, max "
                f"{result['index_requests_per_tick_max']} ({result['index_writes_by_replicas']} writes in all); "
                f"a tick took median {result['tick_seconds_median']} s, max {result['tick_seconds_max']} s",
            ),
        ],
        result,
        args.json,
    )


if __name__ == "__main__":
    main()
