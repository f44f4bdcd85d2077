"""The only door to Vault: every path, every call, every Vault error mapped once."""

from __future__ import annotations

import base64
import copy
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

import hvac
import hvac.exceptions as vault_errors
import requests

from .config import Settings
from .errors import Conflict, Exists, Forbidden, NotFound, SidecarError, Unauthorized, VaultUnavailable
from .inputs import check_name, stored_provider
from .metrics import VAULT_ERRORS
from .models import Grant, Identity, Provider

log = logging.getLogger(__name__)
T = TypeVar("T")

Tree = Literal["providers", "pins", "grants", "pending", "sessions", "index"]
_LABEL: dict[Tree, str] = {
    "providers": "provider",
    "pins": "provider pin",
    "grants": "secret",
    "pending": "login",
    "sessions": "session",
    "index": "index record",
}
CAPABILITY_BATCH = 500  # paths asked about in one capabilities-self call
VAULT_TIMEOUT = 10.0
# Seconds a Vault call keeps retrying while Vault is unavailable: longer than an election of a Raft
# cluster (8-15 s measured with OpenBao's defaults), short enough for a person waiting on a page.
PATIENCE = 30.0
RETRY_FIRST, RETRY_MAX = 0.1, 2.0
MAX_VERSIONS = 1
_UNAVAILABLE = (
    vault_errors.VaultDown,
    vault_errors.InternalServerError,
    vault_errors.BadGateway,
    vault_errors.RateLimitExceeded,
    vault_errors.VaultNotInitialized,
    vault_errors.UnexpectedError,
    requests.RequestException,
)


@dataclass(frozen=True)
class Versioned:
    """A KV v2 document and the version it was read at (for check-and-set)."""

    data: dict[str, Any]
    version: int


@contextmanager
def _vault(what: str) -> Iterator[None]:
    """Translate hvac and transport errors into the project's own, once."""
    try:
        yield
    except vault_errors.InvalidPath:
        raise NotFound(f"{what} not found") from None
    except vault_errors.Forbidden:
        VAULT_ERRORS.labels("forbidden").inc()
        raise Forbidden(f"permission denied on {what}") from None
    except vault_errors.Unauthorized:
        raise Unauthorized("the Vault token is missing or not valid") from None
    except vault_errors.InvalidRequest as exc:
        if "check-and-set" in str(exc):
            VAULT_ERRORS.labels("conflict").inc()
            raise Conflict(f"{what} was changed by someone else; read it again and retry") from None
        VAULT_ERRORS.labels("rejected").inc()
        log.error("Vault rejected a request for %s: %s", what, type(exc).__name__)
        raise SidecarError(f"Vault rejected the request for {what}") from None
    except _UNAVAILABLE as exc:
        VAULT_ERRORS.labels("unavailable").inc()
        log.warning("Vault unavailable while accessing %s: %s", what, type(exc).__name__)
        raise VaultUnavailable("Vault is unreachable, sealed or failing; try again shortly") from None


def _client(settings: Settings, token: str | None, session: requests.Session | None = None) -> hvac.Client:
    return hvac.Client(
        url=settings.vault_addr,
        token=token,
        namespace=settings.vault_namespace,
        verify=settings.vault_cacert or not settings.vault_skip_verify,
        timeout=VAULT_TIMEOUT,
        session=session,
    )


_CLUSTERS: dict[str, str] = {}  # Vault address -> the id of the cluster behind it, learnt once per process
UNREACHED_INDEX = str(2**63 - 1)


def follow_active(client: hvac.Client, addr: str) -> None:
    """Make every request of this client see the active node's latest state.

    OpenBao's standbys answer reads from their own copy of the Raft log, which trails the active
    node's: a pending login, a session or a claim written a moment ago through another node may not
    be there yet. OpenBao forwards a request to the active node when the node it reaches has not
    applied the `X-Vault-Index` the request asks for and `X-Vault-Inconsistent` says
    `forward-active-node`. The sidecar reads what other replicas wrote, whose index it cannot know,
    so it asks for an index no node has reached: a standby always forwards, and the active node
    answers from its own, latest state. (A single node, or Vault without read-serving standbys,
    answers every request itself: the headers change nothing there.)"""
    session = client.session
    if "X-Vault-Index" in session.headers:
        return
    cluster = _CLUSTERS.get(addr)
    if cluster is None:
        try:
            with _vault("Vault health"):
                health = client.sys.read_health_status(method="GET", standby_ok=True)
        except SidecarError:
            return  # unreachable now: the next call asks again
        if not isinstance(health, dict) or not health.get("cluster_id"):
            return
        cluster = _CLUSTERS.setdefault(addr, str(health["cluster_id"]))
    index = json.dumps({"cluster": cluster, "value": UNREACHED_INDEX}).encode()
    # In this order: a request sent meanwhile by another thread must not carry the index alone.
    session.headers["X-Vault-Inconsistent"] = "forward-active-node"
    session.headers["X-Vault-Index"] = base64.b64encode(index).decode()


class Login:
    """The sidecar's own Vault identity, by SIDECAR_VAULT_AUTH: a token (or a token file that an agent
    keeps fresh), AppRole, or Kubernetes. It renews its token once two thirds of the TTL have passed,
    and logs in again when renewal is refused or Vault no longer accepts the token."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._client = _client(settings, None)
        self._lock = threading.Lock()
        self._token: str | None = None
        self._renew_at: float | None = None
        self.logins = 0

    def __repr__(self) -> str:
        return f"Login(method={self._settings.vault_auth!r}, logins={self.logins})"

    def token(self) -> str:
        with self._lock:
            if self._token is None:
                self._login()
            elif self._renew_at is not None and time.monotonic() >= self._renew_at:
                self._renew()
            return self._current()

    def replace(self, stale: str) -> str:
        """Vault refused `stale`: log in again, unless another thread has already done so."""
        with self._lock:
            if self._token == stale:
                self._login()
            return self._current()

    def _current(self) -> str:
        if self._token is None:  # every successful login sets it
            raise Unauthorized("the sidecar has no Vault token")
        return self._token

    def _login(self) -> None:
        method = self._settings.vault_auth
        follow_active(self._client, self._settings.vault_addr)
        try:
            with _vault(f"the sidecar's {method} login"):
                auth = self._authenticate()
        except Forbidden:
            # Vault answers 403 when it refuses the credential itself (a service-account JWT that Kubernetes
            # rejects, a revoked token): the sidecar is not authenticated; no policy denied it a right.
            raise Unauthorized(f"Vault refused the sidecar's {method} login; check its role and credential") from None
        self._token = auth["client_token"]
        self._schedule(auth["lease_duration"])
        self.logins += 1
        log.info("logged in to Vault by %s (token TTL %ss)", method, auth["lease_duration"] or "unlimited")

    def _authenticate(self) -> dict[str, Any]:
        s = self._settings
        if s.vault_auth == "approle":
            return cast(
                dict[str, Any],
                self._client.auth.approle.login(
                    role_id=_secret(s.approle_role_id, s.approle_role_id_file),
                    secret_id=_secret(s.approle_secret_id, s.approle_secret_id_file),
                    mount_point=s.approle_mount,
                    use_token=False,
                )["auth"],
            )
        if s.vault_auth == "kubernetes":
            return cast(
                dict[str, Any],
                self._client.auth.kubernetes.login(
                    role=s.kubernetes_role,
                    jwt=_secret(None, s.kubernetes_token_file),
                    mount_point=s.kubernetes_mount,
                    use_token=False,
                )["auth"],
            )
        # An explicit token file (kept fresh by an agent) wins over VAULT_TOKEN and ~/.vault-token.
        token = _secret(None, s.vault_token_file) if s.vault_token_file else _secret(s.vault_token, None)
        self._client.token = token
        data = self._client.auth.token.lookup_self()["data"]
        return {"client_token": token, "lease_duration": data.get("ttl") or 0}

    def _schedule(self, ttl: int) -> None:
        """Renew (or, if it cannot be renewed, log in again) after two thirds of the TTL."""
        self._renew_at = time.monotonic() + ttl * 2 / 3 if ttl else None

    def _renew(self) -> None:
        self._client.token = self._token
        try:
            with _vault("the sidecar's token renewal"):
                auth = self._client.auth.token.renew_self()["auth"]
        except SidecarError:
            auth = None
        if auth and auth.get("lease_duration", 0) >= 2:
            self._schedule(auth["lease_duration"])
        else:  # refused, or at its maximum TTL
            self._login()


def provider_exists(name: str) -> Exists:
    return Exists(f"provider {name!r} already exists: edit it instead")


def _secret(value: str | None, path: str | None) -> str:
    """A credential from its variable, else from its file (read anew each time: agents rotate files)."""
    if value:
        return value
    if path:
        try:
            content = Path(path).read_text().strip()
        except OSError as exc:
            raise Unauthorized(f"cannot read the credential file {path}: {exc.strerror}") from None
        if content:
            return content
    raise Unauthorized("the sidecar has no Vault credential for its SIDECAR_VAULT_AUTH method")


class Connection:
    """One token's way to Vault: every call goes through it, retried while Vault is unavailable."""

    def __init__(
        self, settings: Settings, token: str | None, session: requests.Session | None, login: Login | None,
        patience: float,
    ) -> None:  # fmt: skip
        self.client = _client(settings, token, session)
        self._addr, self.login, self._patience = settings.vault_addr, login, patience
        self._deadline: float | None = None  # see `until`

    @property
    def own(self) -> bool:
        """The sidecar's own identity, renewed and replaced by its login (not a caller's token)."""
        return self.login is not None

    def until(self, deadline: float) -> Connection:
        bounded = copy.copy(self)
        bounded._deadline = deadline
        return bounded

    def call(self, what: str, call: Callable[[], T]) -> T:
        """One Vault call, retried with backoff while Vault is unavailable (down, sealed, electing a
        leader) for up to `patience` seconds, or until the deadline; then `VaultUnavailable`."""
        deadline = time.monotonic() + self._patience if self._deadline is None else self._deadline
        delay = RETRY_FIRST
        while True:
            try:
                return self.once(what, call)
            except VaultUnavailable:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise
            time.sleep(min(delay * random.uniform(0.5, 1.0), left))  # noqa: S311 - spreads retries; nothing secret
            delay = min(delay * 2, RETRY_MAX)

    def once(self, what: str, call: Callable[[], T]) -> T:
        """One attempt. With the sidecar's own identity, a token Vault no longer accepts is replaced by
        a new login (a new leader may not know it) and the call made once more."""
        follow_active(self.client, self._addr)
        if self.login is None:
            try:
                with _vault(what):
                    return call()
            except Forbidden:
                # Vault says 403 both for a dead token and for a missing right: tell them apart.
                if self.client.token and not self._token_alive():
                    raise Unauthorized("the Vault token is missing or not valid") from None
                raise
        self.client.token = self.login.token()
        try:
            with _vault(what):
                return call()
        except (Forbidden, Unauthorized):
            stale = self.client.token
            if self._token_alive():
                raise  # a real denial by policy
        self.client.token = self.login.replace(stale)
        with _vault(what):
            return call()

    def _token_alive(self) -> bool:
        try:
            with _vault("the token"):
                self.client.auth.token.lookup_self()
        except (Forbidden, Unauthorized):
            return False
        return True


class Store:
    """Vault KV v2 access with one token: the caller's, or the sidecar's own (`Store.own`)."""

    def __init__(
        self,
        settings: Settings,
        token: str | None,
        session: requests.Session | None = None,
        login: Login | None = None,
        patience: float = PATIENCE,
    ) -> None:
        self._settings = settings
        self._vault = Connection(settings, token, session, login, patience)
        self._client = self._vault.client
        self._kv = self._client.secrets.kv.v2

    @classmethod
    def own(cls, settings: Settings, session: requests.Session | None = None) -> Store:
        """The sidecar's own store: its token comes from SIDECAR_VAULT_AUTH and is kept alive."""
        return cls(settings, None, session, Login(settings))

    def until(self, deadline: float) -> Store:
        """This store (same connection and identity), retrying through unavailability until
        `deadline` (time.monotonic) rather than for `patience` a call: for a group of calls that
        must end by then (a login's save, a failure's views written under a claim)."""
        bounded = copy.copy(self)
        bounded._vault = self._vault.until(deadline)
        return bounded

    def __repr__(self) -> str:
        return f"Store(vault_addr={self._settings.vault_addr!r})"

    def whoami(self) -> Identity:
        """Who this store's (caller's) token belongs to, for the audit trail; `Unauthorized` if Vault
        does not know it. Never the token itself."""
        if not self._client.token:
            raise Unauthorized("a Vault token is required")
        try:
            with _vault("the token"):
                data = self._client.auth.token.lookup_self()["data"]
        except Forbidden:
            raise Unauthorized("the Vault token is missing or not valid") from None
        return Identity.from_lookup(data)

    def path(self, tree: Tree, name: str) -> str:
        """The KV path of a named object in the private tree; the name rule is enforced here."""
        return f"{self._settings.state_prefix}/{tree}/{check_name(name, _LABEL[tree])}"

    def view_path(self, environment: str, name: str) -> str:
        """`<prefix>/<environment>/<name>`, what apps read; the name rule is enforced here."""
        return f"{self._settings.prefix}/{check_name(environment, 'environment')}/{check_name(name, 'secret')}"

    def api_path(self, path: str, metadata: bool = False) -> str:
        """A KV path as Vault's policies name it: `<mount>/data/<path>` (or `/metadata/`)."""
        return f"{self._settings.kv_mount}/{'metadata' if metadata else 'data'}/{path}"

    # -- check-and-set KV primitives -------------------------------------------------------

    def read(self, tree: Tree, name: str) -> Versioned:
        return self._read(self.path(tree, name), f"{_LABEL[tree]} {name!r}")

    def write(self, tree: Tree, name: str, data: dict[str, Any], cas: int | None = None) -> int:
        """Write a new version; with `cas`, only if the current version is `cas` (0: only if absent)."""
        return self._write(self.path(tree, name), f"{_LABEL[tree]} {name!r}", data, cas)

    def read_version(self, tree: Tree, name: str, version: int) -> Versioned:
        """An earlier version, while Vault keeps it (NotFound once it does not)."""
        path, what = self.path(tree, name), f"{_LABEL[tree]} {name!r}"
        resp = self._vault.call(
            what,
            lambda: self._kv.read_secret_version(
                path=path, version=version, mount_point=self._settings.kv_mount, raise_on_deleted_version=True
            ),
        )
        return Versioned(data=resp["data"]["data"] or {}, version=resp["data"]["metadata"]["version"])

    def write_index(self, name: str, data: dict[str, Any], cas: int | None = None, history: int = MAX_VERSIONS) -> int:
        """An index record (index.py), its history capped to `history` versions when it is created."""
        return self._write(self.path("index", name), f"index record {name!r}", data, cas, capped=history)

    def delete(self, tree: Tree, name: str) -> None:
        """Remove every version, so no old secret lingers in the history."""
        self._delete(self.path(tree, name), f"{_LABEL[tree]} {name!r}")

    def names(self, tree: Tree) -> list[str]:
        try:
            resp = self._vault.call(
                tree,
                lambda: self._kv.list_secrets(
                    path=f"{self._settings.state_prefix}/{tree}", mount_point=self._settings.kv_mount
                ),
            )
        except NotFound:
            return []
        return sorted(k for k in resp["data"]["keys"] if not k.endswith("/"))

    def _read(self, path: str, what: str) -> Versioned:
        resp = self._vault.call(
            what,
            lambda: self._kv.read_secret_version(
                path=path, mount_point=self._settings.kv_mount, raise_on_deleted_version=True
            ),
        )
        return Versioned(data=resp["data"]["data"] or {}, version=resp["data"]["metadata"]["version"])

    def _write(self, path: str, what: str, data: dict[str, Any], cas: int | None, capped: int = 0) -> int:
        """Write `data`; `capped`: a record whose history is cut to that many versions when it is created."""
        attempts = 0

        def send() -> dict[str, Any]:
            nonlocal attempts
            attempts += 1
            answer = self._kv.create_or_update_secret(
                path=path, secret=data, cas=cas, mount_point=self._settings.kv_mount
            )
            return cast(dict[str, Any], answer)

        try:
            version = int(self._vault.call(what, send)["data"]["version"])
        except Conflict:
            # A retry after a lost answer meets the version its own first attempt wrote: that is ours.
            # Sound where a record holds something only this writer writes (a claim's owner, new
            # tokens, a login's `consumed_by`); two writers of identical records both "succeed".
            mine = self._holding(path, what, data) if attempts > 1 else None
            if mine is None:
                raise
            version = mine
        if capped and (version == 1 or (attempts > 1 and version == 2)):
            self._cap_history(path, capped)
        return version

    def _holding(self, path: str, what: str, data: dict[str, Any]) -> int | None:
        """The version at `path` if it holds exactly `data` (as JSON sees it), else None."""
        try:
            current = self._read(path, what)
        except NotFound:
            return None
        return current.version if current.data == json.loads(json.dumps(data)) else None

    def _delete(self, path: str, what: str) -> None:
        self._vault.call(
            what, lambda: self._kv.delete_metadata_and_all_versions(path=path, mount_point=self._settings.kv_mount)
        )

    # -- environment views -----------------------------------------------------------------

    def read_view(self, environment: str, name: str) -> dict[str, Any]:
        return self._read(self.view_path(environment, name), f"secret {name!r} in {environment!r}").data

    def write_view(self, environment: str, grant: Grant) -> None:
        self._write(self.view_path(environment, grant.name), f"secret {grant.name!r} in {environment!r}",
                    grant.view(), None, capped=MAX_VERSIONS)  # fmt: skip

    def delete_view(self, environment: str, name: str) -> None:
        self._delete(self.view_path(environment, name), f"secret {name!r} in {environment!r}")

    # -- grants ----------------------------------------------------------------------------

    def get_grant(self, name: str) -> Grant:
        return Grant.from_record(name, self.read("grants", name).data)

    def put_grant(self, grant: Grant, cas: int | None = None) -> int:
        return self._write(
            self.path("grants", grant.name), f"secret {grant.name!r}", grant.to_record(), cas, capped=MAX_VERSIONS
        )

    def _cap_history(self, path: str, versions: int) -> None:
        """Keep `versions` versions (one for a record holding secrets: an old refresh token, access token
        or client secret must not linger in KV history). Set once, when the record is created (`path`
        has passed the name rule)."""
        self._vault.call(
            path,
            lambda: self._kv.update_metadata(path=path, max_versions=versions, mount_point=self._settings.kv_mount),
        )

    # -- providers -------------------------------------------------------------------------

    def get_provider(self, name: str) -> Provider:
        return stored_provider(name, self.read("providers", name).data)

    def list_providers(self) -> list[Provider]:
        providers = []
        for name in self.names("providers"):
            try:
                providers.append(self.get_provider(name))
            except NotFound:  # deleted between the list and the read
                continue
        return providers

    def put_provider(self, provider: Provider, create: bool = False) -> int:
        """Replace, or with `create` only create (Exists if the name is taken); returns the new
        version (1 when created)."""
        path = self.path("providers", provider.name)
        try:
            return self._write(
                path, f"provider {provider.name!r}", provider.to_record(), 0 if create else None, MAX_VERSIONS
            )
        except Conflict:
            if not create:
                raise
            raise provider_exists(provider.name) from None

    def may(self, tree: Tree, name: str, *capabilities: str) -> bool:
        """Whether this store's token has any of `capabilities` on the object (Vault's capabilities-self)."""
        return not self.lacking([self.api_path(self.path(tree, name))], *capabilities)

    def any_name(self, tree: Tree) -> str:
        """`api_path` of a `tree` object whose name is not yet chosen, for a capability check before
        one is (may this token add any?): the tree's folder with its trailing slash, which a policy
        pattern granting every name there (`*`, `+`) matches and one naming single objects does not."""
        return self.api_path(f"{self._settings.state_prefix}/{tree}/")

    def any_view(self, environment: str) -> str:
        """`api_path` of a view of `environment` whose name is not yet chosen (as `any_name`)."""
        return self.api_path(f"{self._settings.prefix}/{check_name(environment, 'environment')}/")

    def lacking(self, paths: list[str], *capabilities: str) -> list[str]:
        """Those of `paths` (as `api_path` names them) on which this token has none of `capabilities`."""
        missing = []
        for start in range(0, len(paths), CAPABILITY_BATCH):
            batch = paths[start : start + CAPABILITY_BATCH]
            resp = self._vault.call("the token's capabilities", partial(self._client.sys.get_capabilities, paths=batch))
            for path in batch:
                granted = resp.get(path) or (resp.get("capabilities") if len(batch) == 1 else None) or []
                if not ("root" in granted or any(c in granted for c in capabilities)):
                    missing.append(path)
        return missing

    # -- tokens and health -----------------------------------------------------------------

    def check_token(self) -> None:
        """Raise `Unauthorized` unless this store's token is a live Vault token."""
        if not self._vault.own:  # a caller's token: one lookup tells
            self.whoami()
            return
        try:  # the sidecar's own: `Connection.once` logs in again if Vault no longer accepts it
            self._vault.once("the token", self._client.auth.token.lookup_self)
        except Forbidden:
            raise Unauthorized("the Vault token is missing or not valid") from None

    def check_ready(self) -> None:
        """Raise `VaultUnavailable` unless Vault is reachable, initialised, unsealed, and our token valid."""
        with _vault("Vault health"):
            health = self._client.sys.read_health_status(method="GET", standby_ok=True)
        if not isinstance(health, dict):
            reasons = {501: "Vault is not initialised", 503: "Vault is sealed"}
            raise VaultUnavailable(reasons.get(health.status_code, f"Vault health is {health.status_code}"))
        try:
            self.check_token()
        except Unauthorized:
            raise VaultUnavailable("the sidecar's own Vault token is missing or not valid") from None

    # -- administration (dev mode and `policies write`) -----------------------------------------

    def write_policy(self, name: str, hcl: str) -> None:
        self._vault.call(
            f"policy {name!r}",
            lambda: self._client.sys.create_or_update_policy(name=check_name(name, "policy"), policy=hcl),
        )

    def create_token(self, policies: list[str], ttl: str, display_name: str) -> str:
        """A child token with exactly these policies (plus Vault's `default`)."""
        resp = self._vault.call(
            "a new token",
            lambda: self._client.auth.token.create(policies=policies, ttl=ttl, display_name=display_name),
        )
        return str(resp["auth"]["client_token"])
