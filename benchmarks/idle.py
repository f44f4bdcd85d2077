"""Idle cost: Vault requests per scheduler tick when nothing is due, and what a resync costs.

    python benchmarks/idle.py --grants 10000 --ticks 200 --json

Seeds grants that are good for a day, lets one refresher learn them (one full resync, counted and
timed), then runs ticks and counts the Vault requests they send (the aim is zero). Also reports the
resident memory the learned queue added, per grant.
"""

from __future__ import annotations

import argparse
import gc
import time

import requests
from common import bench_vault, report, rss_mb, seed

from sidecar.refresher import Refresher
from sidecar.store import Store


class CountingSession(requests.Session):
    count = 0

    def request(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        CountingSession.count += 1
        return super().request(*args, **kwargs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grants", type=int, default=10000)
    parser.add_argument("--ticks", type=int, default=200)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    with bench_vault() as (_vault, settings, store, _provider):
        seed(store, args.grants, due=False)
        refresher = Refresher(settings, Store(settings, settings.vault_token, CountingSession()))
        gc.collect()
        before_mb = rss_mb()
        started, sent = time.perf_counter(), CountingSession.count
        refresher.resync_step(budget=args.grants + 1)
        resync_s, resync_requests = time.perf_counter() - started, CountingSession.count - sent
        gc.collect()
        learned_mb = rss_mb() - before_mb
        sent, started = CountingSession.count, time.perf_counter()
        for _ in range(args.ticks):
            assert refresher.tick() == []
        tick_us = (time.perf_counter() - started) / args.ticks * 1e6
        idle_requests = CountingSession.count - sent
        refresher.shutdown()

    result = {
        "grants": args.grants,
        "ticks": args.ticks,
        "vault_requests_per_idle_tick": idle_requests / args.ticks,
        "idle_tick_us": round(tick_us, 1),
        "resync_requests": resync_requests,
        "resync_seconds_unthrottled": round(resync_s, 2),
        "resync_seconds_at_default_rate": round(args.grants / settings.resync_rate, 1),
        "queue_mb": round(learned_mb, 2),
        "bytes_per_grant": round(learned_mb * 1024 * 1024 / args.grants),
    }
    report(
        [
            ("grants", str(args.grants)),
            ("Vault requests per idle tick", f"{result['vault_requests_per_idle_tick']:g} over {args.ticks} ticks"),
            ("one idle tick", f"{tick_us:.1f} µs"),
            ("full resync", f"{resync_requests} requests (1 LIST + 1 read a grant), {resync_s:.1f} s unthrottled"),
            (
                "full resync at SIDECAR_RESYNC_RATE",
                f"{result['resync_seconds_at_default_rate']} s at {settings.resync_rate:g}/s",
            ),
            ("memory of the learned queue", f"{learned_mb:.1f} MB, {result['bytes_per_grant']} bytes a grant"),
        ],
        result,
        args.json,
    )


if __name__ == "__main__":
    main()
