"""A stand-in for the one Kubernetes API call that OpenBao's `kubernetes` auth method makes: the
TokenReview (POST /apis/authentication.k8s.io/v1/tokenreviews), served over plain HTTP on loopback.

It also mints service-account JWTs shaped like the kubelet's projected tokens. They are not really
signed: with no `pem_keys` configured, OpenBao reads their claims without checking the signature and
leaves the verdict to the review. The stand-in accepts only the JWTs it was told are valid, answers
`authenticated: false` for any other (or a revoked) one, and records every review by fingerprint,
never by the JWT itself, so a failing assertion prints no credential.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

AUDIENCE = "vault"  # the audience a projected token for Vault is minted for, and the role demands


@dataclass(frozen=True)
class ServiceAccount:
    namespace: str
    name: str
    uid: str = field(default_factory=lambda: str(uuid.uuid4()))

    @property
    def username(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.name}"


@dataclass(frozen=True)
class Review:
    """One TokenReview the stand-in answered."""

    token: str  # fingerprint(jwt)
    audiences: tuple[str, ...]  # those OpenBao asked about (spec.audiences)
    authenticated: bool


def fingerprint(jwt: str) -> str:
    return hashlib.sha256(jwt.encode()).hexdigest()[:16]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def service_account_jwt(account: ServiceAccount, audience: str = AUDIENCE, ttl: int = 3600) -> str:
    """A JWT with the claims of a projected service-account token. OpenBao checks the algorithm is
    an asymmetric one (RS256...) and matches name, namespace and uid against the review's answer."""
    now = int(time.time())
    claims = {
        "iss": "https://kubernetes.default.svc.cluster.local",
        "sub": account.username,
        "aud": [audience],
        "iat": now,
        "nbf": now,
        "exp": now + ttl,
        "jti": str(uuid.uuid4()),  # two tokens minted in the same second still differ
        "kubernetes.io": {
            "namespace": account.namespace,
            "pod": {"name": f"{account.name}-0", "uid": str(uuid.uuid4())},
            "serviceaccount": {"name": account.name, "uid": account.uid},
        },
    }
    header = {"alg": "RS256", "kid": "stand-in", "typ": "JWT"}
    parts = (json.dumps(header).encode(), json.dumps(claims).encode(), secrets.token_bytes(256))
    return ".".join(_b64(part) for part in parts)


class TokenReviewAPI:
    """The TokenReview endpoint in a thread; use as a context manager, point `kubernetes_host` at `url`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._valid: dict[str, ServiceAccount] = {}
        self.reviews: list[Review] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_port}"

    def issue(self, account: ServiceAccount, audience: str = AUDIENCE) -> str:
        """A new JWT for `account` that the stand-in accepts, as the kubelet would project one."""
        jwt = service_account_jwt(account, audience)
        with self._lock:
            self._valid[jwt] = account
        return jwt

    def revoke(self, jwt: str) -> None:
        with self._lock:
            self._valid.pop(jwt, None)

    def _review(self, spec: dict[str, Any]) -> dict[str, Any]:
        jwt = str(spec.get("token", ""))
        wanted = [str(a) for a in spec.get("audiences") or []]
        with self._lock:
            account = self._valid.get(jwt)
            # The audiences the token is good for, of those asked about (all of its own if none were).
            audiences = [a for a in _audiences(jwt) if not wanted or a in wanted] if account else []
            ok = account is not None and bool(audiences)
            self.reviews.append(Review(fingerprint(jwt), tuple(wanted), ok))
        if account is None or not ok:
            return {"authenticated": False, "error": "invalid bearer token"}
        user = {"username": account.username, "uid": account.uid, "groups": ["system:serviceaccounts"]}
        return {"authenticated": True, "user": user, "audiences": audiences}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                if self.path != "/apis/authentication.k8s.io/v1/tokenreviews":
                    return self._send(404, {"kind": "Status", "status": "Failure", "code": 404})
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                status = api._review(body.get("spec") or {})
                self._send(201, {"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1", "status": status})

            def _send(self, code: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass  # the default prints every request to stderr

        return Handler

    def __enter__(self) -> TokenReviewAPI:
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()  # quick to stop
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def _audiences(jwt: str) -> list[str]:
    payload = jwt.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    aud = claims.get("aud") or []
    return [aud] if isinstance(aud, str) else list(aud)
