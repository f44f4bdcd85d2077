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
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import click

from .config import Settings
from .devvault import DevTokens, DevVault, bao_binary, bootstrap
from .errors import ConfigError, VaultUnavailable
from .store import Store

if TYPE_CHECKING:
    from .demo import DemoProvider

DEMO = "demo"  # the demo provider's name in dev


def dev(verbose: bool = False, demo: bool = True) -> None:
    """A throwaway OpenBao dev server, the web app, the refresher and (unless not `demo`) the demo
    provider in one process."""
    from werkzeug.serving import make_server

    from .refresher import Refresher
    from .web import QuietHandler, create_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not verbose:  # the tokens printed at the start should not scroll away under request lines
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
    base = Settings.from_env({k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))})
    with DevVault() as vault, ExitStack() as stack:
        tokens = bootstrap(vault, base)
        settings = Settings.from_env(
            {
                **{k: v for k, v in os.environ.items() if k.startswith("SIDECAR_")},
                "VAULT_ADDR": vault.addr,
                "VAULT_TOKEN": tokens.sidecar,
            }
        )
        host, port = settings.bind_host_port
        app = create_app(settings)
        try:
            server = make_server(host, port, app, threaded=True, request_handler=QuietHandler)
        except OSError as exc:
            raise ConfigError(f"SIDECAR_BIND: cannot listen on {settings.bind}: {exc.strerror}") from None
        provider = stack.enter_context(_demo_provider(settings, tokens.admin)) if demo else None
        click.echo(_banner(vault.addr, settings, tokens, provider))
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


@contextmanager
def _demo_provider(settings: Settings, admin_token: str) -> Iterator[DemoProvider]:
    """The demo provider, registered as `demo` with the operator's token, as a user would."""
    from . import approvals, egress, oauth, providers
    from .demo import DemoProvider

    with DemoProvider(settings.redirect_uri).start() as demo:
        client = oauth.Client(egress.Egress(settings.egress_allow))
        provider = providers.build(DEMO, demo.provider_body(), client)
        approvals.save(Store(settings, admin_token), Store.own(settings), provider)
        yield demo


def _banner(vault_addr: str, settings: Settings, tokens: DevTokens, demo: DemoProvider | None) -> str:
    env = "production" if "production" in tokens.reader else next(iter(tokens.reader))
    reader = tokens.reader[env]
    read = f"VAULT_ADDR={vault_addr} VAULT_TOKEN={reader} {_bao()} kv get -field=access_token"
    path = f"{settings.kv_mount}/{settings.prefix}/{env}"
    lines = [
        "",
        f"OpenBao dev server  {vault_addr}  (in memory: everything is gone when you stop)",
        f"Sidecar             {settings.public_url}",
        *([f"Demo provider       {demo.url}  (registered as provider {DEMO!r})"] if demo else []),
        f"Login token         {tokens.admin}  (policy oauth-admin)",
        f"Reader token        {reader}  (policy oauth-reader-{env})",
        "",
        "Connect a first secret:",
        f"  1. Open {settings.public_url}/settings",
        "  2. Log in with the login token above",
        '  3. Click "Add OAuth 2.0 provider secret", name it "first"'
        + (f", pick provider {DEMO} and log in there with any user name" if demo else " and pick a provider"),
        "Read its access token with the reader token:",
        f"  {read} {path}/first",
        "",
        "Or, as the operator (CLI and API):",
        f"  export VAULT_ADDR={vault_addr} VAULT_TOKEN={tokens.admin}",
        f'  curl -H "X-Vault-Token: $VAULT_TOKEN" {settings.public_url}/v1/secrets',
        "",
        "Press Ctrl-C to stop.",
        "",
    ]
    return "\n".join(lines)


def _bao() -> str:
    """The `bao` command as this shell can run it: by name if on PATH, else beside this Python."""
    if shutil.which("bao"):
        return "bao"
    beside = Path(sys.executable).parent / "bao"
    return str(beside) if beside.exists() else bao_binary()


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
