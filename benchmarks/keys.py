"""What a private_key_jwt key costs the sidecar: a client assertion, a provider read (the record is
validated on every read) and the public view, each against a bare load of the PEM in the same run.

    python benchmarks/keys.py --json

prints a table, and with --json one JSON object as its last line. An RSA 2048 key takes tens of
milliseconds to load; each figure should be a small fraction of one load.
"""

from __future__ import annotations

import argparse

from common import median_ms, report, rsa_pem
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from sidecar import egress, inputs, oauth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args()
    pem = rsa_pem()
    urls = {"authorization_url": "https://login.example.com/authorize", "token_url": "https://login.example.com/token"}
    body = {"client_id": "app", "scopes": "api", "token_auth_method": "private_key_jwt", "private_key": pem, **urls}
    provider = inputs.provider("corp", body)
    client = oauth.Client(egress.Egress(()))
    load = median_ms(lambda: load_pem_private_key(pem.encode(), None), args.runs)
    figures = {
        "assertion_ms": median_ms(lambda: client._assertion(provider, provider.token_url), args.runs),
        "provider_read_ms": median_ms(lambda: inputs.stored_provider("corp", provider.to_record()), args.runs),
        "public_view_ms": median_ms(provider.public, args.runs),
    }
    result = {"pem_load_ms": round(load, 3), **{k: round(v, 3) for k, v in figures.items()}}
    result |= {k.replace("_ms", "_per_load"): round(v / load, 4) for k, v in figures.items()}
    rows = [("bare PEM load (baseline)", f"{load:.2f} ms")]
    rows += [
        (k.removesuffix("_ms").replace("_", " "), f"{v:.3f} ms ({v / load:.4f} of a load)") for k, v in figures.items()
    ]
    report(rows, result, args.json)


if __name__ == "__main__":
    main()
