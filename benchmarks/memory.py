"""Memory: the resident size of one refresher that manages N grants.

    python benchmarks/memory.py --grants 100000 --json

A replica keeps, per grant, only its due-queue entry and status; the grant itself stays in Vault.
This builds N realistic grant records (as a resync reads them), learns each into a Refresher's
queue exactly as `_learn` does, and reports the process's resident memory before and after.
Vault is not involved: seeding 100,000 grants into a dev server would take most of the run (see
idle.py for the same measurement through a real resync at 10,000 grants).
"""

from __future__ import annotations

import argparse
import gc
import secrets
from datetime import UTC, datetime, timedelta

from common import ENVIRONMENTS, report, rss_mb

from sidecar import inputs
from sidecar.config import Settings
from sidecar.models import Grant, TokenSet
from sidecar.refresher import Refresher
from sidecar.store import Store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grants", type=int, default=100000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    settings = Settings()
    refresher = Refresher(settings, Store(settings, "unused"))
    provider = inputs.provider(
        "bench",
        {
            "client_id": "bench",
            "client_secret": "x",
            "authorization_url": "https://a.example/authorize",
            "token_url": "https://a.example/token",
            "scopes": "read",
        },
    )
    gc.collect()
    baseline = rss_mb()
    now = datetime.now(UTC)
    for i in range(args.grants):
        issued = now - timedelta(seconds=i % 3600)
        record = Grant(
            f"grant-{i:06d}",
            "bench",
            ENVIRONMENTS,
            TokenSet(
                secrets.token_urlsafe(40), "Bearer", issued + timedelta(hours=1), ("read",), secrets.token_urlsafe(30)
            ),
            connected_at=issued,
            last_refreshed_at=issued,
        ).to_record()
        grant = Grant.from_record(f"grant-{i:06d}", record)
        refresher.renewal.schedule(grant, refresher.renewal.due_time(grant, provider))
    gc.collect()
    total = rss_mb()
    result = {
        "grants": args.grants,
        "baseline_mb": round(baseline, 1),
        "rss_mb": round(total, 1),
        "bytes_per_grant": round((total - baseline) * 1024 * 1024 / args.grants),
    }
    report(
        [
            ("grants", str(args.grants)),
            ("resident memory, process with the sidecar loaded", f"{baseline:.1f} MB"),
            ("resident memory, managing the grants", f"{total:.1f} MB"),
            ("growth a grant", f"{result['bytes_per_grant']} bytes"),
        ],
        result,
        args.json,
    )


if __name__ == "__main__":
    main()
