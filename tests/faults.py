"""Real faults for the reliability tests: an HTTP proxy that misbehaves on cue, and an OpenBao
with Raft storage on disk that can be sealed, restarted or killed and keeps its data."""

from __future__ import annotations

import http.client
import os
import random
import re
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
from contextlib import suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

from sidecar.devvault import bao_binary, free_port

FAULTS = ("reset", "delay", "hang", "answer", "drop", "truncate")
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}


@dataclass
class Rule:
    """One staged fault: for requests matching `method` and the `path` regex, `times` times (None: always).

    reset     close the connection with a TCP RST instead of answering
    delay     wait `seconds`, then forward as usual
    hang      wait `seconds` without answering, then reset
    answer    answer `status` with `headers` and `body` without forwarding
    drop      forward, let the server act, then reset instead of passing its answer on
    truncate  forward, then pass on only the first half of the answer's body
    """

    fault: str
    method: str | None = None
    path: str | None = None
    times: int | None = 1
    seconds: float = 0.0
    status: int = 503
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method == method) and (
            self.path is None or bool(re.search(self.path, path))
        )


class FaultProxy:
    """An HTTP/1.1 proxy on loopback in front of one upstream. Requests pass through unless a staged
    rule (`add`) or random chaos (`chaos`) picks a fault; `refuse` makes new connections fail."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.rules: list[Rule] = []
        self.seen: list[tuple[str, str, str]] = []  # (method, path, fault or "pass")
        self._chaos: tuple[float, list[Rule], random.Random] | None = None
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self.port = 0
        self._server: ThreadingHTTPServer | None = None
        self._listen()

    @property
    def addr(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add(self, fault: str, **rule: Any) -> Rule:
        assert fault in FAULTS, fault
        staged = Rule(fault, **rule)
        with self._lock:
            self.rules.append(staged)
        return staged

    def chaos(self, rate: float, faults: list[Rule], seed: int = 0) -> None:
        """From now on, each request meets one of `faults` (chosen at random) with probability `rate`."""
        self._chaos = (rate, faults, random.Random(seed))

    def calm(self) -> None:
        """No more faults: staged rules and chaos are cleared."""
        with self._lock:
            self.rules.clear()
            self._chaos = None

    def faults_seen(self, fault: str | None = None) -> list[tuple[str, str, str]]:
        with self._lock:
            return [s for s in self.seen if s[2] != "pass" and (fault is None or s[2] == fault)]

    def refuse(self) -> None:
        """Refuse every new connection and reset the open ones, until `restore`."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self._lock:
            for conn in list(self._connections):
                _reset(conn)
            self._connections.clear()

    def restore(self) -> None:
        if self._server is None:
            self._listen(self.port)

    def close(self) -> None:
        self.refuse()

    # -- inside ----------------------------------------------------------------------------------

    def _listen(self, port: int = 0) -> None:
        proxy = self

        class Handler(_Handler):
            pass

        Handler.proxy = proxy
        server = _QuietServer(("127.0.0.1", port), Handler)
        server.daemon_threads = True
        self._server, self.port = server, server.server_address[1]
        threading.Thread(target=server.serve_forever, daemon=True).start()

    def _pick(self, method: str, path: str) -> Rule | None:
        with self._lock:
            for rule in self.rules:
                if rule.matches(method, path):
                    if rule.times is not None:
                        rule.times -= 1
                        if rule.times <= 0:
                            self.rules.remove(rule)
                    return rule
            if self._chaos is not None:
                rate, faults, rng = self._chaos
                if rng.random() < rate:
                    candidates = [f for f in faults if f.matches(method, path)]
                    return rng.choice(candidates) if candidates else None
        return None


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that dies mid-request (a killed replica) is part of the test, not an error."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    proxy: FaultProxy

    def setup(self) -> None:
        super().setup()
        with self.proxy._lock:
            self.proxy._connections.add(self.connection)

    def finish(self) -> None:
        with suppress(OSError, ValueError):
            super().finish()
        with self.proxy._lock:
            self.proxy._connections.discard(self.connection)

    def log_message(self, *args: Any) -> None:
        pass

    def _handle(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        rule = self.proxy._pick(self.command, self.path)
        with self.proxy._lock:
            self.proxy.seen.append((self.command, self.path, rule.fault if rule else "pass"))
        if rule is None:
            return self._forward(body)
        if rule.fault in ("delay", "hang"):
            time.sleep(rule.seconds)
        if rule.fault == "delay":
            return self._forward(body)
        if rule.fault in ("reset", "hang"):
            return self._reset()
        if rule.fault == "answer":
            return self._answer(rule.status, rule.headers, rule.body)
        status, headers, data = self._upstream(body)
        if rule.fault == "drop":
            return self._reset()
        return self._answer(status, headers, data[: len(data) // 2])  # truncate

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_LIST = do_HEAD = _handle

    def _upstream(self, body: bytes) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection(*self.proxy.upstream, timeout=120)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            kept = {k: v for k, v in resp.getheaders() if k.lower() not in HOP_BY_HOP | {"content-length"}}
            return resp.status, kept, data
        finally:
            conn.close()

    def _forward(self, body: bytes) -> None:
        try:
            status, headers, data = self._upstream(body)
        except OSError:
            return self._reset()  # the upstream is down: the client sees what it would see
        self._answer(status, headers, data)

    def _answer(self, status: int, headers: dict[str, str], data: bytes) -> None:
        self.send_response_only(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        self.wfile.flush()

    def _reset(self) -> None:
        self.close_connection = True
        _reset(self.connection)


def _reset(conn: socket.socket) -> None:
    """Close at once, with an RST where the kernel can, as a crashed peer or a middlebox would.
    (The handler's file objects hold the descriptor open, so shut it down before closing.)"""
    with suppress(OSError):
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with suppress(OSError):
        conn.shutdown(socket.SHUT_RDWR)
    with suppress(OSError):
        conn.close()


# -- OpenBao that keeps its data ------------------------------------------------------------------------


class DurableVault:
    """OpenBao with Raft storage on one node, initialised and unsealed here, so a seal, a restart or a SIGKILL
    keeps every secret and token. Duck-types `DevVault` (`addr`, `root_token`) for `bootstrap`."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="bao-durable-"))
        self.port = free_port()
        (self.dir / "raft").mkdir()
        self.config = self.dir / "bao.hcl"
        # OpenBao keeps no "file" storage; Raft on one node is its durable default.
        self.config.write_text(
            f'storage "raft" {{\n  path = "{self.dir / "raft"}"\n  node_id = "one"\n}}\n'
            f'listener "tcp" {{\n  address = "127.0.0.1:{self.port}"\n  tls_disable = true\n}}\n'
            f'api_addr = "http://127.0.0.1:{self.port}"\ncluster_addr = "http://127.0.0.1:{free_port()}"\n'
        )
        self.log_path = self.dir / "bao.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.root_token = ""
        self._unseal_key = ""

    @property
    def addr(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> DurableVault:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [bao_binary(), "server", f"-config={self.config}"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        self._wait(lambda status: status in (200, 501, 503))
        if not self.root_token:
            self._init()
        self.unseal()
        return self

    def _init(self) -> None:
        answer = self._sys("PUT", "init", {"secret_shares": 1, "secret_threshold": 1}).json()
        self._unseal_key, self.root_token = answer["keys_base64"][0], answer["root_token"]
        self.unseal()
        self._sys("POST", "mounts/secret", {"type": "kv", "options": {"version": "2"}}).raise_for_status()

    def unseal(self) -> None:
        self._sys("PUT", "unseal", {"key": self._unseal_key}).raise_for_status()
        self._wait(lambda status: status == 200)

    def seal(self) -> None:
        self._sys("PUT", "seal").raise_for_status()

    def restart(self, kill: bool = False) -> None:
        """Stop (SIGKILL if `kill`), start again on the same port and storage, unseal."""
        self.stop(kill)
        self.start()

    def stop(self, kill: bool = False) -> None:
        stop_process(self.process, kill)

    def _sys(self, method: str, path: str, body: dict[str, Any] | None = None) -> requests.Response:
        headers = {"X-Vault-Token": self.root_token} if self.root_token else {}
        return requests.request(method, f"{self.addr}/v1/sys/{path}", json=body, headers=headers, timeout=10)

    def _wait(self, ready: Any, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"OpenBao exited; its log: {self.log_path}")
            with suppress(requests.RequestException):
                if ready(requests.get(f"{self.addr}/v1/sys/health", timeout=1).status_code):
                    return
            time.sleep(0.1)
        raise RuntimeError(f"OpenBao did not become ready in {timeout:.0f}s; its log: {self.log_path}")


def stop_process(process: subprocess.Popen | None, kill: bool = False) -> None:
    """SIGTERM (SIGKILL if `kill`) a server process if it runs, and wait for it; SIGKILL after 15 s."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
