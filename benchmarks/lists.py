"""List latency: pages of `GET /v1/secrets` at N grants, against a bare floor in the same run.

    python benchmarks/lists.py --grants 10000 --json

Seeds N grants (untimed), then times, through the API (the Flask app in-process, the caller's own
token, as a request would run): the first page (50, with the counts by status), a later page (from
the middle), and a filtered page (`status=retrying`, which none has: every grant is read). The floor
is the least a page can cost in Vault KV: one LIST and the 50 reads of one page's grants (hvac, one
thread). Each figure is the median of `--rounds` runs; the ratio is page / floor.
"""

from __future__ import annotations

import argparse

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
        names = sorted(seed(store, args.grants, due=False))
        client, headers = create_app(settings).test_client(), {"X-Vault-Token": vault.root_token}
        kv = hvac.Client(url=vault.addr, token=vault.root_token).secrets.kv.v2

        def get(**query: object) -> None:
            answer = client.get("/v1/secrets", query_string={"limit": PAGE, **query}, headers=headers)
            assert answer.status_code == 200, answer.json

        def floor() -> None:
            kv.list_secrets(path="oauth-sidecar/grants", mount_point="secret")
            for name in names[:PAGE]:
                path = f"oauth-sidecar/grants/{name}"
                kv.read_secret_version(path=path, mount_point="secret", raise_on_deleted_version=True)

        figures = {
            "floor_ms": median_ms(floor, args.rounds),
            "first_page_ms": median_ms(get, args.rounds),
            "later_page_ms": median_ms(lambda: get(cursor=names[len(names) // 2]), args.rounds),
            "filtered_page_ms": median_ms(lambda: get(status="retrying"), args.rounds),
        }
    result = {"grants": args.grants, **{k: round(v, 1) for k, v in figures.items()}}
    result |= {
        k.replace("_ms", "_ratio"): round(v / figures["floor_ms"], 2) for k, v in figures.items() if k != "floor_ms"
    }
    rows = [("grants", str(args.grants)), ("floor: LIST and 50 reads", f"{figures['floor_ms']:.1f} ms")]
    rows += [
        (k[:-3].replace("_", " "), f"{v:.1f} ms ({v / figures['floor_ms']:.2f} of the floor)")
        for k, v in figures.items()
        if k != "floor_ms"
    ]
    report(rows, result, args.json)


if __name__ == "__main__":
    main()
