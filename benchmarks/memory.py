"""Memory: the resident size of one refresher that manages N grants, its index mirror included.

    python benchmarks/memory.py --grants 100000 --json

A replica keeps, per grant, its index entry (`Keeper.mirror`: one `index.Entry` a grant, and the
names each shard held) and its due-queue entry and status; the grant itself stays in Vault. This
fills a Refresher's mirror exactly as a start-up does, through `Mirror.reload`, from a stand-in for
the store that serves each of the 256 shards as Vault would (the JSON of `{"entries":
index.shard_text(...)}`, one string of a line an entry, parsed anew for each read, as hvac parses
Vault's answers), then queues every entry as the resync does (`Resync._apply`), and reports the
process's resident memory before, after the mirror, and after the queue. Entries are realistic:
status active, provider "bench", two environments, due times spread over an hour. Vault is not
involved: seeding 100,000 grants into a dev server takes minutes (idle.py makes the same
measurement through a real start-up).
"""

from __future__ import annotations

import argparse
import gc
import json
import time

from common import ENVIRONMENTS, report, rss_mb

from sidecar.config import Settings
from sidecar.index import CHANGES, SHARD, SHARDS, Entry, shard_name, shard_of, shard_text
from sidecar.models import Status
from sidecar.refresher import Refresher
from sidecar.store import Store, Versioned


class Shards:
    """Answers what `Mirror.reload` asks of a store (the changes record, the list of shards, each
    shard), building each shard's record when it is read, so that only the mirror keeps entries."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.buckets: list[list[int]] = [[] for _ in range(SHARDS)]
        for i in range(count):
            self.buckets[shard_of(self.name(i))].append(i)
        self.now = time.time()

    @staticmethod
    def name(i: int) -> str:
        return f"grant-{i:06d}"

    def names(self, tree: str) -> list[str]:
        assert tree == "index"
        return [shard_name(shard) for shard in range(SHARDS) if self.buckets[shard]]

    def read(self, tree: str, name: str) -> Versioned:
        assert tree == "index"
        if name == CHANGES:
            return Versioned({"shards": []}, 1)
        entries: dict[str, Entry] = {}
        for i in self.buckets[int(name[len(SHARD) :])]:
            connected = self.now - i % 3600  # connected within the last hour, good for an hour
            due = connected + 3600 - 300  # SIDECAR_REFRESH_MARGIN's default before it expires
            entry = Entry(due, Status.ACTIVE, "bench", ENVIRONMENTS, connected, 3)
            entries[self.name(i)] = entry
        return Versioned(json.loads(json.dumps({"entries": shard_text(entries)})), 1)  # new objects, as from Vault


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grants", type=int, default=100000)
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args()

    settings = Settings()
    refresher = Refresher(settings, Store(settings, "unused"))
    shards = Shards(args.grants)  # before the baseline: its buckets are the benchmark's, not the replica's
    gc.collect()
    baseline = rss_mb()
    changes = refresher.index.mirror.reload(shards)  # type: ignore[arg-type]
    assert len(changes) == args.grants
    del changes
    gc.collect()
    mirrored = rss_mb()
    refresher.resync._apply(dict(refresher.index.mirror.entries))
    gc.collect()
    total = rss_mb()
    assert len(refresher.queue.known()) == args.grants

    def per_grant(mb: float) -> int:
        return round(mb * 1024 * 1024 / args.grants)

    result = {
        "grants": args.grants,
        "baseline_mb": round(baseline, 1),
        "mirror_mb": round(mirrored, 1),
        "rss_mb": round(total, 1),
        "mirror_bytes_per_grant": per_grant(mirrored - baseline),
        "queue_bytes_per_grant": per_grant(total - mirrored),
        "bytes_per_grant": per_grant(total - baseline),
    }
    report(
        [
            ("grants", str(args.grants)),
            ("resident memory, process with the sidecar loaded", f"{baseline:.1f} MB"),
            ("resident memory, with the index mirror", f"{mirrored:.1f} MB"),
            ("resident memory, with the mirror and the due-queue", f"{total:.1f} MB"),
            (
                "growth a grant",
                f"{result['bytes_per_grant']} bytes (mirror {result['mirror_bytes_per_grant']}, "
                f"queue {result['queue_bytes_per_grant']})",
            ),
        ],
        result,
        args.json,
    )


if __name__ == "__main__":
    main()
