"""Every setting, read once from the environment and validated at start-up."""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from . import egress
from .errors import ConfigError, Invalid
from .inputs import check_name, check_url

T = TypeVar("T")
VAULT_AUTH_METHODS = ("token", "approle", "kubernetes")
KUBERNETES_TOKEN_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/token"  # noqa: S105 - a path, not a token
# Go's strconv.ParseBool, which the Vault CLI uses for VAULT_SKIP_VERIFY.
_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}
_HOST_PATTERN_RE = re.compile(r"([a-z0-9*.-]+|\[[0-9a-f:.]+\])(:[0-9]{1,5})?")


@dataclass(frozen=True)
class Settings:
    vault_addr: str = "https://127.0.0.1:8200"
    vault_token: str | None = field(default=None, repr=False)
    vault_namespace: str | None = None
    vault_cacert: str | None = None
    vault_skip_verify: bool = False
    vault_auth: str = "token"
    public_url: str = "http://127.0.0.1:8080"
    bind: str = "127.0.0.1:8080"
    kv_mount: str = "secret"
    prefix: str = "oauth"
    state_prefix: str = "oauth-sidecar"
    environments: tuple[str, ...] = ("development", "production")
    refresh_interval: float = 10.0
    refresh_margin: int = 300
    refresh_concurrency: int = 8
    resync_interval: float = 3600.0
    resync_rate: float = 200.0
    claim_ttl: int = 120
    workers: int = 2
    session_idle: int = 1800
    session_lifetime: int = 28_800
    # Host patterns (fnmatch, optionally with :port) the sidecar may call; empty: any host.
    egress_allow: tuple[str, ...] = ()
    audit_log: str = "-"  # "-" for standard output, else a file the audit lines are appended to
    vault_token_file: str | None = None
    approle_role_id: str | None = field(default=None, repr=False)
    approle_role_id_file: str | None = None
    approle_secret_id: str | None = field(default=None, repr=False)
    approle_secret_id_file: str | None = None
    approle_mount: str = "approle"
    kubernetes_role: str | None = None
    kubernetes_token_file: str = KUBERNETES_TOKEN_FILE
    kubernetes_mount: str = "kubernetes"
    discovery_interval: float = 86_400.0
    webhook_url: str | None = None
    webhook_secret: str | None = field(default=None, repr=False)
    notify_after: int = 900

    @property
    def redirect_uri(self) -> str:
        return f"{self.public_url}/callback"

    @property
    def bind_host_port(self) -> tuple[str, int]:
        host, _, port = self.bind.rpartition(":")
        return host.strip("[]"), int(port)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read and validate; raises `ConfigError` naming the first bad variable."""
        get = partial(_variable, os.environ if env is None else env)
        bind = get("SIDECAR_BIND", _bind, cls.bind)
        return cls(
            vault_addr=get("VAULT_ADDR", _vault_addr, cls.vault_addr, "BAO_ADDR"),
            vault_token=get("VAULT_TOKEN", str, None, "BAO_TOKEN") or _token_helper_file(),
            vault_namespace=get("VAULT_NAMESPACE", str, None, "BAO_NAMESPACE"),
            vault_cacert=get("VAULT_CACERT", _existing_file, None, "BAO_CACERT"),
            vault_skip_verify=get("VAULT_SKIP_VERIFY", _go_bool, False, "BAO_SKIP_VERIFY"),
            vault_auth=get("SIDECAR_VAULT_AUTH", _one_of(VAULT_AUTH_METHODS), cls.vault_auth),
            public_url=get("SIDECAR_PUBLIC_URL", _public_url, None) or _public_url_of(bind),
            bind=bind,
            kv_mount=get("SIDECAR_KV_MOUNT", _path, cls.kv_mount),
            prefix=get("SIDECAR_PREFIX", _path, cls.prefix),
            state_prefix=get("SIDECAR_STATE_PREFIX", _path, cls.state_prefix),
            environments=get("SIDECAR_ENVIRONMENTS", _environments, cls.environments),
            refresh_interval=get("SIDECAR_REFRESH_INTERVAL", _positive_float, cls.refresh_interval),
            refresh_margin=get("SIDECAR_REFRESH_MARGIN", _non_negative_int, cls.refresh_margin),
            refresh_concurrency=get("SIDECAR_REFRESH_CONCURRENCY", _positive_int, cls.refresh_concurrency),
            resync_interval=get("SIDECAR_RESYNC_INTERVAL", _positive_float, cls.resync_interval),
            resync_rate=get("SIDECAR_RESYNC_RATE", _positive_float, cls.resync_rate),
            claim_ttl=get("SIDECAR_CLAIM_TTL", _positive_int, cls.claim_ttl),
            workers=get("SIDECAR_WORKERS", _positive_int, cls.workers),
            session_idle=get("SIDECAR_SESSION_IDLE", _positive_int, cls.session_idle),
            session_lifetime=get("SIDECAR_SESSION_LIFETIME", _positive_int, cls.session_lifetime),
            egress_allow=get("SIDECAR_EGRESS_ALLOW", _host_patterns, cls.egress_allow),
            audit_log=get("SIDECAR_AUDIT_LOG", str, cls.audit_log),
            vault_token_file=get("VAULT_TOKEN_FILE", str, None),
            approle_role_id=get("SIDECAR_APPROLE_ROLE_ID", str, None),
            approle_role_id_file=get("SIDECAR_APPROLE_ROLE_ID_FILE", str, None),
            approle_secret_id=get("SIDECAR_APPROLE_SECRET_ID", str, None),
            approle_secret_id_file=get("SIDECAR_APPROLE_SECRET_ID_FILE", str, None),
            approle_mount=get("SIDECAR_APPROLE_MOUNT", _path, cls.approle_mount),
            kubernetes_role=get("SIDECAR_KUBERNETES_ROLE", str, None),
            kubernetes_token_file=get("SIDECAR_KUBERNETES_TOKEN_FILE", str, cls.kubernetes_token_file),
            kubernetes_mount=get("SIDECAR_KUBERNETES_MOUNT", _path, cls.kubernetes_mount),
            discovery_interval=get("SIDECAR_DISCOVERY_INTERVAL", _positive_float, cls.discovery_interval),
            webhook_url=get("SIDECAR_WEBHOOK_URL", partial(check_url, what="URL"), None),
            webhook_secret=get("SIDECAR_WEBHOOK_SECRET", _webhook_secret, None)
            or get("SIDECAR_WEBHOOK_SECRET_FILE", lambda path: _webhook_secret(_read_file(path)), None),
            notify_after=get("SIDECAR_NOTIFY_AFTER", _non_negative_int, cls.notify_after),
        )._checked()

    def _checked(self) -> Settings:
        """The credentials the chosen Vault login method needs are all there."""
        if self.vault_auth == "approle" and not (
            (self.approle_role_id or self.approle_role_id_file)
            and (self.approle_secret_id or self.approle_secret_id_file)
        ):
            raise ConfigError(
                "SIDECAR_VAULT_AUTH: approle needs SIDECAR_APPROLE_ROLE_ID and SIDECAR_APPROLE_SECRET_ID "
                "(or their _FILE variants)"
            )
        if self.webhook_url and not self.webhook_secret:
            raise ConfigError("SIDECAR_WEBHOOK_URL: notifications are signed; set SIDECAR_WEBHOOK_SECRET (or _FILE)")
        if self.webhook_url and not egress.permits(self.webhook_url, self.egress_allow):
            raise ConfigError("SIDECAR_WEBHOOK_URL: its host is not in SIDECAR_EGRESS_ALLOW")
        if self.vault_auth == "kubernetes" and not self.kubernetes_role:
            raise ConfigError("SIDECAR_VAULT_AUTH: kubernetes needs SIDECAR_KUBERNETES_ROLE")
        return self


def _variable(env: Mapping[str, str], name: str, parse: Callable[[str], T], default: T, *fallbacks: str) -> T:
    """The first of `name` and its `fallbacks` that is set, parsed; else `default`."""
    for key in (name, *fallbacks):
        raw = env.get(key, "").strip()
        if raw:
            try:
                return parse(raw)
            except (ValueError, Invalid) as exc:
                reason = exc.message if isinstance(exc, Invalid) else str(exc)
                raise ConfigError(f"{key}: {reason}") from None
    return default


def _token_helper_file() -> str | None:
    """The Vault CLI's fallback when VAULT_TOKEN is unset: the token in ~/.vault-token."""
    try:
        return (Path.home() / ".vault-token").read_text().strip() or None
    except OSError:
        return None


def _vault_addr(raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http or https URL, like https://vault.example.com:8200")
    return raw.rstrip("/")


def _public_url(raw: str) -> str:
    url = check_url(raw, "the public URL")
    if urlsplit(url).query:
        raise ValueError("must not contain a query string")
    return url.rstrip("/")


def _public_url_of(bind: str) -> str:
    """SIDECAR_PUBLIC_URL's default: the address the sidecar listens on (loopback for a wildcard bind,
    which a browser on this machine reaches that way)."""
    host, _, port = bind.rpartition(":")
    host = "127.0.0.1" if host.strip("[]") in ("0.0.0.0", "::", "") else host  # noqa: S104 - compared, not bound
    try:
        return _public_url(f"http://{host}:{port}")
    except (ValueError, Invalid):
        raise ConfigError(
            f"SIDECAR_PUBLIC_URL: unset, and http://{host}:{port} (from SIDECAR_BIND) is not loopback; "
            "set it to the https URL that browsers and providers reach the sidecar at"
        ) from None


def _bind(raw: str) -> str:
    host, sep, port = raw.rpartition(":")
    if not sep or not host or not port.isdecimal() or not 0 < int(port) < 65536:
        raise ValueError("must be HOST:PORT, like 127.0.0.1:8080 or [::1]:8080")
    return raw


def _path(raw: str) -> str:
    """A mount or prefix: name-rule segments joined by '/'."""
    for segment in raw.strip("/").split("/"):
        check_name(segment, "path segment")
    return raw.strip("/")


def _environments(raw: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(n.strip() for n in raw.split(",") if n.strip()))
    if not names:
        raise ValueError("must name at least one environment")
    for name in names:
        check_name(name, "environment")
    return names


def _host_patterns(raw: str) -> tuple[str, ...]:
    """Comma-separated host patterns: `api.example.com`, `*.example.com`, `127.0.0.1:9000`, `[::1]:9000`."""
    patterns = tuple(dict.fromkeys(p.strip().lower() for p in raw.split(",") if p.strip()))
    for pattern in patterns:
        if not _HOST_PATTERN_RE.fullmatch(pattern):
            raise ValueError(f"{pattern[:80]!r} is not a host pattern like api.example.com, *.example.com or host:port")
    return patterns


def _go_bool(raw: str) -> bool:
    if raw in _TRUE or raw in _FALSE:
        return raw in _TRUE
    raise ValueError("must be true or false")


def _one_of(choices: tuple[str, ...]) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if raw not in choices:
            raise ValueError(f"{raw!r} is not supported; use one of: {', '.join(choices)}")
        return raw

    return parse


def webhook_key(secret: str) -> bytes:
    """The HMAC key of a Standard Webhooks secret: base64, after an optional "whsec_" prefix,
    padded or not, as its verifier libraries read it."""
    encoded = secret.removeprefix("whsec_")
    return base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)  # binascii.Error is a ValueError


def _webhook_secret(raw: str) -> str:
    try:
        key = webhook_key(raw)
    except ValueError:
        key = b""
    if len(key) < 16:
        raise ValueError("a webhook secret is base64 of at least 16 bytes, optionally after whsec_") from None
    return raw


def _read_file(raw: str) -> str:
    try:
        with open(raw) as source:
            value = source.read().strip()
    except OSError as exc:
        raise ValueError(f"cannot read {raw}: {exc.strerror}") from None
    if not value:
        raise ValueError(f"{raw} is empty")
    return value


def _existing_file(raw: str) -> str:
    if not Path(raw).is_file():
        raise ValueError(f"no such file: {raw}")
    return raw


def _positive_float(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise ValueError("must be a positive number of seconds")
    return value


def _non_negative_int(raw: str) -> int:
    if not raw.isdecimal():
        raise ValueError("must be a whole number of seconds, 0 or more")
    return int(raw)


def _positive_int(raw: str) -> int:
    if not raw.isdecimal() or int(raw) < 1:
        raise ValueError("must be a whole number, 1 or more")
    return int(raw)
