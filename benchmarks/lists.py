"""List latency: pages of `GET /v1/secrets` at N grants, against a bare floor in the same run.

    python benchmarks/lists.py --grants 10000 --json
    python benchmarks/lists.py --grants 100000 --json

Seeds N grants (untimed; indexed as a real writer indexes them, common.seed, without their
environment views, which a list never reads), then times, through the API (the Flask app
in-process, the caller's own token, as a request would run):

- the cold first page: the app's first list, which reads every index shard into its mirror
  (measured once);
- the first page (50, with the counts by status over every grant), a later page (from the middle),
  a filtered page (`status=retrying`, which none has: every index entry is looked at and none
  shown) and a `q=` page (the middle name without its last two digits, `q=bench-0050` at 10,000
  grants: 100 names match, 50 are shown). Each reads the index's change
  counter (one Vault read when nothing changed), picks the names from the mirror and reads the
  grants it shows.

The floor is the least a page can cost in Vault KV without an index: one LIST and the 50 reads of
one page's grants (hvac, one thread). Each figure is the median of `--rounds` runs; the ratio is
page / floor. The aim: a first page under 200 ms at 100,000 grants.
"""

from __future__ import annotations

import argparse
import time

import hvac
from common import bench_vault, median_ms, report, seed

from sidecar.web import create_app

PAGE = 50


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grants", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args()
    with bench_vault() as (vault, settings, store, _):
        names = sorted(seed(store, args.grants, due=False, views=False, progress=args.grants >= 50000))
        client, headers = create_app(settings).test_client(), {"X-Vault-Token": vault.root_token}
        kv = hvac.Client(url=vault.addr, token=vault.root_token).secrets.kv.v2

        def get(**query: object) -> dict:  # type: ignore[type-arg]
            answer = client.get("/v1/secrets", query_string={"limit": PAGE, **query}, headers=headers)
            assert answer.status_code == 200, answer.json
            return answer.json  # type: ignore[return-value]

        def floor() -> None:
            kv.list_secrets(path="oauth-sidecar/grants", mount_point="secret")
            for name in names[:PAGE]:
                path = f"oauth-sidecar/grants/{name}"
                kv.read_secret_version(path=path, mount_point="secret", raise_on_deleted_version=True)

        started = time.perf_counter()
        cold = get()
        cold_ms = (time.perf_counter() - started) * 1000
        assert cold["counts"] == {"active": args.grants}, cold["counts"]
        assert len(cold["secrets"]) == PAGE
        needle = names[len(names) // 2][:-2]
        matching = sum(1 for name in names if needle in name)
        assert len(get(q=needle)["secrets"]) == min(PAGE, matching)
        figures = {
            "floor_ms": median_ms(floor, args.rounds),
            "first_page_ms": median_ms(get, args.rounds),
            "later_page_ms": median_ms(lambda: get(cursor=names[len(names) // 2]), args.rounds),
            "filtered_page_ms": median_ms(lambda: get(status="retrying"), args.rounds),
            "q_page_ms": median_ms(lambda: get(q=needle), args.rounds),
        }
    result = {
        "grants": args.grants,
        "q": needle,
        "q_matching": matching,
        "cold_first_page_ms": round(cold_ms, 1),
    }
    result |= {k: round(v, 1) for k, v in figures.items()}
    result |= {
        k.replace("_ms", "_ratio"): round(v / figures["floor_ms"], 2) for k, v in figures.items() if k != "floor_ms"
    }
    labels = {
        "first_page_ms": "first page (with the counts)",
        "later_page_ms": "later page",
        "filtered_page_ms": "filtered page (status=retrying, none)",
        "q_page_ms": f"q={needle} page ({matching} match)",
    }
    rows = [
        ("grants", str(args.grants)),
        ("floor: LIST and 50 reads", f"{figures['floor_ms']:.1f} ms"),
        ("cold first page (every shard read)", f"{cold_ms:.1f} ms ({cold_ms / figures['floor_ms']:.2f} of the floor)"),
    ]
    rows += [
        (labels[k], f"{v:.1f} ms ({v / figures['floor_ms']:.2f} of the floor)")
        for k, v in figures.items()
        if k != "floor_ms"
    ]
    report(rows, result, args.json)


if __name__ == "__main__":
    main()
