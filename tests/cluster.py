"""A real OpenBao cluster for the tests: three `bao server` processes with Raft storage on loopback,
initialised, unsealed and joined, behind a TCP load balancer of our own that sends each new
connection to a live node, as a load balancer or a Kubernetes Service would."""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import threading
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

import requests

from sidecar.devvault import bao_binary, free_port

from .faults import _reset, stop_process


class Node:
    """One `bao server` with Raft storage; `kill` and `start` keep its data."""

    def __init__(self, index: int, root: Path, peers: list[int]) -> None:
        self.id = f"node{index}"
        self.dir = root / self.id
        (self.dir / "raft").mkdir(parents=True)
        self.port, cluster_port = peers[index], free_port()
        joins = "".join(
            f'  retry_join {{\n    leader_api_addr = "http://127.0.0.1:{p}"\n  }}\n' for p in peers if p != self.port
        )
        # OpenBao's defaults otherwise: standbys answer reads from their own copy of the Raft log.
        self.config = self.dir / "bao.hcl"
        self.config.write_text(
            f'storage "raft" {{\n  path = "{self.dir / "raft"}"\n  node_id = "{self.id}"\n{joins}}}\n'
            f'listener "tcp" {{\n  address = "127.0.0.1:{self.port}"\n'
            f'  cluster_address = "127.0.0.1:{cluster_port}"\n  tls_disable = true\n}}\n'
            f'api_addr = "http://127.0.0.1:{self.port}"\ncluster_addr = "https://127.0.0.1:{cluster_port}"\n'
        )
        self.log_path = self.dir / "bao.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def addr(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [bao_binary(), "server", f"-config={self.config}"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            )  # fmt: skip
        self.wait(lambda health: health is not None)

    def stop(self, kill: bool = False) -> None:
        stop_process(self.process, kill)

    def health(self) -> dict[str, Any] | None:
        """`sys/health` as the node sees itself (None: not answering)."""
        with suppress(requests.RequestException, ValueError):
            return requests.get(f"{self.addr}/v1/sys/health?standbyok=true&sealedcode=200&uninitcode=200",
                                timeout=1).json()  # fmt: skip
        return None

    def sys(self, method: str, path: str, token: str = "", body: dict[str, Any] | None = None) -> requests.Response:
        headers = {"X-Vault-Token": token} if token else {}
        return requests.request(method, f"{self.addr}/v1/sys/{path}", json=body, headers=headers, timeout=10)

    def wait(self, ready: Any, timeout: float = 60.0) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"OpenBao {self.id} exited; its log: {self.log_path}")
            health = self.health()
            if ready(health):
                return health
            time.sleep(0.1)
        raise RuntimeError(f"OpenBao {self.id} not ready in {timeout:.0f}s; its log: {self.log_path}")


class Balancer:
    """A TCP load balancer on loopback: each new connection goes to the next node (round robin) that
    accepts one. `isolate` stops a node's traffic (open connections reset), `rejoin` lets it back."""

    def __init__(self, nodes: list[Node]) -> None:
        self.nodes = nodes
        self.isolated: set[str] = set()
        self._next = 0
        self._lock = threading.Lock()
        self._pairs: list[tuple[str, socket.socket, socket.socket]] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def addr(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def isolate(self, node: Node) -> None:
        with self._lock:
            self.isolated.add(node.id)
            cut = [p for p in self._pairs if p[0] == node.id]
        for _, client, upstream in cut:
            _reset(client)
            _reset(upstream)

    def rejoin(self, node: Node) -> None:
        with self._lock:
            self.isolated.discard(node.id)

    def close(self) -> None:
        with suppress(OSError):
            self._listener.close()
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for _, client, upstream in pairs:
            _reset(client)
            _reset(upstream)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _connect(self) -> tuple[str, socket.socket] | None:
        for _ in range(len(self.nodes)):
            with self._lock:
                node = self.nodes[self._next % len(self.nodes)]
                self._next += 1
            if node.id in self.isolated:
                continue
            with suppress(OSError):
                return node.id, socket.create_connection(("127.0.0.1", node.port), timeout=1)
        return None

    def _serve(self, client: socket.socket) -> None:
        picked = self._connect()
        if picked is None:  # no node takes connections: the client sees its connection dropped
            _reset(client)
            return
        node_id, upstream = picked
        upstream.settimeout(None)
        pair = (node_id, client, upstream)
        with self._lock:
            self._pairs.append(pair)
        threading.Thread(target=_pump, args=(upstream, client), daemon=True).start()
        _pump(client, upstream)
        with self._lock:
            if pair in self._pairs:
                self._pairs.remove(pair)


def _pump(source: socket.socket, sink: socket.socket) -> None:
    with suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)
    for sock in (source, sink):
        with suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        with suppress(OSError):
            sock.close()


class Cluster:
    """Three Raft nodes, joined and unsealed, behind a `Balancer`. Duck-types `DevVault` (`addr`,
    `root_token`) for `bootstrap`; `addr` is the balancer's."""

    def __init__(self, size: int = 3) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="bao-cluster-"))
        ports = [free_port() for _ in range(size)]
        self.nodes = [Node(i, self.dir, ports) for i in range(size)]
        self.balancer = Balancer(self.nodes)
        self.root_token = ""
        self._unseal_key = ""

    @property
    def addr(self) -> str:
        return self.balancer.addr

    def start(self) -> Cluster:
        for node in self.nodes:
            node.start()
        first = self.nodes[0]
        answer = first.sys("PUT", "init", body={"secret_shares": 1, "secret_threshold": 1})
        answer.raise_for_status()
        self._unseal_key, self.root_token = answer.json()["keys_base64"][0], answer.json()["root_token"]
        self.unseal(first)
        first.wait(lambda h: h and h.get("initialized") and not h.get("sealed") and not h.get("standby"))
        for node in self.nodes[1:]:  # with retry_join, an unseal key makes a new node join and unseal
            self.unseal(node)
        first.sys("POST", "mounts/secret", self.root_token, {"type": "kv", "options": {"version": "2"}})
        self.wait_healthy()
        self._wait_kv()
        return self

    def _wait_kv(self, timeout: float = 30.0) -> None:
        """A new KV v2 mount answers 400 on every node until its upgrade has gone round the cluster."""
        deadline = time.monotonic() + timeout
        while True:
            probes = [
                requests.get(f"{n.addr}/v1/secret/config", headers={"X-Vault-Token": self.root_token}, timeout=5)
                for n in self.nodes
            ]
            if all(p.ok for p in probes):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the KV mount did not come up: {[p.status_code for p in probes]}")
            time.sleep(0.2)

    def unseal(self, node: Node) -> None:
        node.wait(lambda h: h is not None)
        deadline = time.monotonic() + 60
        while (node.health() or {}).get("sealed", True):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{node.id} did not unseal; its log: {node.log_path}")
            with suppress(requests.RequestException):
                node.sys("PUT", "unseal", body={"key": self._unseal_key})
            time.sleep(0.5)

    def seal(self, node: Node) -> None:
        node.sys("PUT", "seal", self.root_token).raise_for_status()

    def leader(self) -> Node:
        for node in self.nodes:
            health = node.health()
            if health and health.get("initialized") and not health.get("sealed") and not health.get("standby"):
                return node
        raise LookupError("no active node")

    def kill(self, node: Node) -> None:
        node.stop(kill=True)

    def revive(self, node: Node) -> None:
        """Start a stopped node again on its storage and unseal it; it rejoins as a standby."""
        node.start()
        self.unseal(node)

    def heal(self) -> None:
        """Every node back behind the balancer, running, unsealed, and the cluster healthy."""
        for node in self.nodes:
            self.balancer.rejoin(node)
            if not node.running:
                self.revive(node)
            self.unseal(node)
        self.wait_healthy()

    def wait_healthy(self, timeout: float = 90.0) -> Node:
        """Until one node is active and every running node is an unsealed voter following it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with suppress(LookupError):
                leader = self.leader()
                peers = self._peers(leader)
                live = [n for n in self.nodes if n.running]
                if all(not (n.health() or {}).get("sealed", True) for n in live) and peers >= len(live) and live:
                    return leader
            time.sleep(0.2)
        raise RuntimeError(f"the cluster did not settle in {timeout:.0f}s; logs under {self.dir}")

    def _peers(self, leader: Node) -> int:
        answer = leader.sys("GET", "storage/raft/configuration", self.root_token)
        if not answer.ok:
            return 0
        # Autopilot promotes a joined node to voter only once it has been stable a while (10 s):
        # until then, killing the leader would leave no quorum.
        return sum(1 for server in answer.json()["data"]["config"]["servers"] if server["voter"])

    def stop(self) -> None:
        self.balancer.close()
        for node in self.nodes:
            node.stop()
