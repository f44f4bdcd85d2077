"""The sidecar's processes: `dev` (OpenBao and the sidecar in one), `serve` (gunicorn and one
refresher, supervised together) and `refresh` (the refresher loop, or one pass)."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from typing import NoReturn

import click

from .config import Settings
from .errors import ConfigError, VaultUnavailable
from .store import Store


def dev() -> None:
    """A throwaway OpenBao dev server, the web app and the refresher in one process."""
    from werkzeug.serving import make_server

    from .devvault import DevVault, bootstrap
    from .refresher import Refresher
    from .web import QuietHandler, create_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    base = Settings.from_env({k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))})
    with DevVault() as vault:
        tokens = bootstrap(vault, base)
        settings = Settings.from_env(
            {
                **{k: v for k, v in os.environ.items() if k.startswith("SIDECAR_")},
                "VAULT_ADDR": vault.addr,
                "VAULT_TOKEN": tokens.sidecar,
            }
        )
        host, port = settings.bind_host_port
        try:
            server = make_server(host, port, create_app(settings), threaded=True, request_handler=QuietHandler)
        except OSError as exc:
            raise ConfigError(f"SIDECAR_BIND: cannot listen on {settings.bind}: {exc.strerror}") from None
        reader_env = "production" if "production" in tokens.reader else next(iter(tokens.reader))
        click.echo(
            f"\nOpenBao dev server  {vault.addr}  (in memory: everything is gone when you stop)\n"
            f"Sidecar             {settings.public_url}\n"
            f"Login token         {tokens.admin}  (policy oauth-admin)\n"
            f"Reader token        {tokens.reader[reader_env]}  (policy oauth-reader-{reader_env})\n\n"
            "Try it:\n"
            f"  export VAULT_ADDR={vault.addr} VAULT_TOKEN={tokens.admin}\n"
            f'  curl -H "X-Vault-Token: $VAULT_TOKEN" {settings.public_url}/v1/providers\n\n'
            "Press Ctrl-C to stop.\n"
        )
        stop = threading.Event()
        loop = threading.Thread(target=Refresher(settings, Store.own(settings)).run, args=(stop,))
        loop.start()
        signal.signal(signal.SIGTERM, _interrupt)
        try:
            server.serve_forever()  # returns on Ctrl-C; leaving the `with` stops OpenBao
        finally:
            stop.set()
            loop.join()
    click.echo("stopped", err=True)


def _interrupt(signum: int, frame: object) -> NoReturn:
    raise KeyboardInterrupt


def serve() -> NoReturn:
    """gunicorn and one refresher process, supervised together (`oauth-sidecar serve --help`)."""
    Settings.from_env()  # refuse bad settings before starting anything
    metrics_dir = tempfile.mkdtemp(prefix="oauth-sidecar-metrics-")
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": metrics_dir}
    gunicorn = [
        sys.executable,
        "-m",
        "gunicorn",
        "--config",
        "python:sidecar.gunicorn_conf",
        "sidecar.web:create_app()",
    ]
    children = [
        subprocess.Popen(gunicorn, env=env),  # noqa: S603 - fixed argv: this interpreter running gunicorn
        subprocess.Popen([sys.executable, "-m", "sidecar", "refresh"], env=env),
    ]
    stopping = threading.Event()

    def forward(signum: int, frame: object) -> None:
        stopping.set()
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    try:
        while not stopping.is_set() and all(c.poll() is None for c in children):
            stopping.wait(0.5)
        failed = not stopping.is_set()
        if failed:
            click.echo("error: a sidecar process exited; stopping the replica", err=True)
            forward(signal.SIGTERM, None)
        for child in children:
            child.wait()
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
    sys.exit(1 if failed else 0)


def refresh(once: bool) -> None:
    """The refresher loop until SIGTERM, or with `once` one pass whose failures set the exit code."""
    from .refresher import Refresher

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings.from_env()
    store = Store.own(settings)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    if once:
        store.check_token()
    else:
        _wait_for_vault(store, stop)
    refresher = Refresher(settings, store)
    if once:
        outcomes = refresher.refresh_due()
        refresher.shutdown()
        for outcome in outcomes:
            click.echo(f"{outcome.name}: {outcome.result}" + (f" ({outcome.detail})" if outcome.detail else ""))
        failed = [o for o in outcomes if o.failed]
        click.echo(
            f"{len(outcomes)} due, {len(outcomes) - len(failed)} refreshed or settled, {len(failed)} failed", err=True
        )
        sys.exit(1 if failed else 0)
    refresher.run(stop)


def _wait_for_vault(store: Store, stop: threading.Event) -> None:
    """A sidecar may start before Vault is reachable or unsealed: wait for it. A token Vault
    refuses still fails at once: waiting would not mend it."""
    delay = 0.5
    while not stop.is_set():
        try:
            store.check_token()
            return
        except VaultUnavailable as exc:
            logging.getLogger("sidecar").warning("waiting for Vault: %s", exc.message)
            stop.wait(delay)
            delay = min(delay * 2, 10.0)
    sys.exit(0)
