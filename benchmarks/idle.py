"""Idle cost: the Vault requests per second of one replica at rest (no grant due), with the index.

    python benchmarks/idle.py --grants 10000 --json
    python benchmarks/idle.py --grants 100000 --json

Seeds grants that are good for a day, indexed as a real writer indexes them (common.seed, in a
process of its own so that this one's memory is the replica's; without their environment views,
which a refresher never reads). Then one replica (a `Refresher` whose
`Store` sends every request through a counting `requests.Session`: every HTTP request it sends to
Vault is counted and classified by method and path) starts: its first tick, untimed in the window,
reads every index shard, lists the grants and sweeps (the start-up; its requests, time and the
resident memory it added are reported). Then `Refresher.run(stop)` runs in a thread for
`--duration` seconds (by default two resync intervals and three ticks, so that the window holds
two full resyncs), and the benchmark reports:

- the measured rate: every request sent in the window, over the window;
- requests per idle tick (the index's change counter: one read when nothing changed), counted
  around `Refresher.learn`, the step of each tick that reads and writes the index (`run` calls it
  every refresh interval in a thread of its own, beside `dispatch`, which sends nothing when
  nothing is due);
- requests per full resync (`Mirror.reload`: the change counter, a LIST of the shards and a read of
  each; and a LIST of the grants), the idle tick's own read not included;
- the rate these imply at the defaults: `tick / SIDECAR_REFRESH_INTERVAL + resync /
  SIDECAR_RESYNC_INTERVAL + sweep / 300 s` (the sweep of logins in flight and UI sessions, 2 LISTs
  when there are none), at the interval in sidecar/config.py and at 60 s, and the resync interval
  that keeps it at 1 request a second.

The aim is at most 1 request a second per replica at 100,000 grants.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import threading
import time
from collections import Counter
from datetime import UTC, datetime

from common import CountingSession, bench_vault, kind, report, rss_mb, seed_apart

from sidecar.config import Settings
from sidecar.refresher import Refresher
from sidecar.resync import SWEEP_INTERVAL
from sidecar.store import Store


def sweep_request(method: str, path: str, state: str) -> bool:
    return method == "LIST" and path.rstrip("/").endswith((f"{state}/pending", f"{state}/sessions"))


def resync_request(method: str, path: str, state: str) -> bool:
    return method == "LIST" and path.rstrip("/").endswith(f"{state}/grants")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grants", type=int, default=10000)
    parser.add_argument("--refresh-interval", type=float, default=10.0, help="SIDECAR_REFRESH_INTERVAL of the run")
    parser.add_argument("--resync-interval", type=float, default=120.0, help="SIDECAR_RESYNC_INTERVAL of the run")
    parser.add_argument("--duration", type=float, help="seconds of the window (default: 2 resyncs and 3 ticks)")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args()
    duration = args.duration or 2 * args.resync_interval + 3 * args.refresh_interval
    defaults = Settings()

    extra = {
        "SIDECAR_REFRESH_INTERVAL": str(args.refresh_interval),
        "SIDECAR_RESYNC_INTERVAL": str(args.resync_interval),
    }
    with bench_vault(**extra) as (_vault, settings, _store, _provider):
        seed_apart(settings, args.grants, due=False, views=False, progress=args.grants >= 50000)
        session = CountingSession()
        refresher = Refresher(settings, Store(settings, settings.vault_token, session))
        state = settings.state_prefix

        gc.collect()
        before_mb = rss_mb()
        started = time.perf_counter()
        assert refresher.tick() == []  # the start-up: every shard read, the grants listed, a sweep
        startup_s, startup = time.perf_counter() - started, list(session.sent)
        gc.collect()
        learned_mb = rss_mb() - before_mb
        if len(refresher.queue.known()) != args.grants:
            raise SystemExit(f"the replica learned {len(refresher.queue.known())} of {args.grants} grants")

        ticks: list[tuple[float, list[tuple[str, str]]]] = []  # (seconds, requests) of each tick in the window
        learn = refresher.learn  # a tick's Vault work (run() calls it in a thread of its own)

        def counted() -> None:
            sent, began = len(session.sent), time.perf_counter()
            learn()
            ticks.append((time.perf_counter() - began, session.sent[sent:]))

        refresher.learn = counted  # type: ignore[method-assign]
        stop = threading.Event()
        runner = threading.Thread(target=refresher.run, args=(stop,))
        sent, window_started = len(session.sent), time.perf_counter()
        runner.start()
        time.sleep(duration)
        stop.set()
        runner.join()
        window_s, window = time.perf_counter() - window_started, session.sent[sent:]
        if refresher.queue.next_due() is not None and refresher.queue.next_due() <= datetime.now(UTC):
            raise SystemExit("a grant fell due during the window")

    idle = [
        (s, r) for s, r in ticks if not any(resync_request(m, p, state) or sweep_request(m, p, state) for m, p in r)
    ]
    resyncs = [(s, r) for s, r in ticks if any(resync_request(m, p, state) for m, p in r)]
    if len(resyncs) < 2:
        print(f"warning: the window held {len(resyncs)} resyncs, not 2: lengthen --duration")
    tick_requests = statistics.median(len(r) for _, r in idle)
    resync_requests = (
        statistics.median(len([q for q in r if not sweep_request(*q, state)]) for _, r in resyncs) - tick_requests
        if resyncs
        else float("nan")
    )
    sweep_requests = sum(1 for m, p in startup if sweep_request(m, p, state))
    breakdown = Counter(kind(m, p, state) for m, p in (resyncs[0][1] if resyncs else []))

    def implied(resync_interval: float) -> float:
        return (
            tick_requests / defaults.refresh_interval
            + resync_requests / resync_interval
            + sweep_requests / SWEEP_INTERVAL
        )

    result = {
        "grants": args.grants,
        "refresh_interval": args.refresh_interval,
        "resync_interval": args.resync_interval,
        "window_seconds": round(window_s, 1),
        "window_requests": len(window),
        "requests_per_second": round(len(window) / window_s, 3),
        "ticks": len(ticks),
        "idle_ticks": len(idle),
        "requests_per_idle_tick": tick_requests,
        "max_requests_per_idle_tick": max(len(r) for _, r in idle),
        "idle_tick_ms": round(statistics.median(s for s, _ in idle) * 1000, 2),
        "resyncs": len(resyncs),
        "requests_per_resync": resync_requests,
        "resync_breakdown": dict(breakdown),
        "resync_tick_seconds": round(statistics.median(s for s, _ in resyncs), 2) if resyncs else None,
        "sweep_requests": sweep_requests,
        "default_refresh_interval": defaults.refresh_interval,
        "default_resync_interval": defaults.resync_interval,
        "implied_per_second_at_defaults": round(implied(defaults.resync_interval), 3),
        "implied_per_second_at_resync_60": round(implied(60.0), 3),
        "resync_interval_for_1_per_second": round(
            resync_requests / (1 - tick_requests / defaults.refresh_interval - sweep_requests / SWEEP_INTERVAL)
        ),
        "startup_requests": len(startup),
        "startup_seconds": round(startup_s, 2),
        "startup_breakdown": dict(Counter(kind(m, p, state) for m, p in startup)),
        "memory_mb": round(learned_mb, 1),
        "bytes_per_grant": round(learned_mb * 1024 * 1024 / args.grants),
    }
    report(
        [
            ("grants", f"{args.grants} (none due)"),
            ("intervals of the run", f"refresh {args.refresh_interval:g} s, resync {args.resync_interval:g} s"),
            (
                "measured",
                f"{len(window)} requests in {window_s:.0f} s: {result['requests_per_second']:.3f}/s "
                f"({len(ticks)} ticks, {len(resyncs)} resyncs)",
            ),
            (
                "idle tick",
                f"{tick_requests:g} requests (at most {result['max_requests_per_idle_tick']}), "
                f"{result['idle_tick_ms']} ms",
            ),
            (
                "full resync (reload + LIST)",
                f"{resync_requests:g} requests beyond the tick's, {result['resync_tick_seconds']} s a resync tick: "
                + ", ".join(f"{v} {k}" for k, v in sorted(breakdown.items())),
            ),
            ("sweep (every 300 s)", f"{sweep_requests} requests"),
            (
                f"implied at refresh {defaults.refresh_interval:g} s, resync {defaults.resync_interval:g} s",
                f"{result['implied_per_second_at_defaults']:.3f} requests/s",
            ),
            ("implied at resync 60 s", f"{result['implied_per_second_at_resync_60']:.3f} requests/s"),
            ("resync interval for 1 request/s", f"{result['resync_interval_for_1_per_second']} s or more"),
            ("start-up", f"{len(startup)} requests, {startup_s:.1f} s"),
            ("memory of the mirror and queue", f"{learned_mb:.1f} MB, {result['bytes_per_grant']} bytes a grant"),
        ],
        result,
        args.json,
    )


if __name__ == "__main__":
    main()
