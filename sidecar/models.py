"""Data the sidecar keeps: providers, tokens, grants and their state changes; when a grant is due.

Input reaches these only through `inputs.py`, which validates it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, TypeVar

from .keys import public_jwk

# An expires_in beyond this is treated as "no expiry known" rather than trusted.
MAX_EXPIRES_IN = 10 * 365 * 86_400


class TokenAuthMethod(StrEnum):
    """How the sidecar proves to a token endpoint that it is the client (RFC 6749 2.3, RFC 7523)."""

    CLIENT_SECRET_BASIC = "client_secret_basic"  # noqa: S105 - a method name, not a password
    CLIENT_SECRET_POST = "client_secret_post"  # noqa: S105
    PRIVATE_KEY_JWT = "private_key_jwt"


# Fields that hold credentials: stored in Vault, shown by the API only as `<field>_set`.
SECRET_FIELDS = ("client_secret", "previous_client_secret", "private_key")


@dataclass(frozen=True)
class Provider:
    """An OAuth provider registration. Credentials never show in a repr."""

    name: str
    client_id: str
    client_secret: str = field(repr=False)
    authorization_url: str
    token_url: str
    scopes: tuple[str, ...]
    revocation_url: str | None = None
    device_authorization_url: str | None = None
    token_auth_method: TokenAuthMethod = TokenAuthMethod.CLIENT_SECRET_BASIC
    # Used when the provider refuses `client_secret` as invalid_client: a rotation needs no downtime.
    previous_client_secret: str = field(default="", repr=False)
    private_key: str = field(default="", repr=False)
    key_id: str = ""
    pkce: bool = True
    extra_authorize_params: Mapping[str, str] = field(default_factory=dict)
    scope_separator: str = " "
    refresh_margin: int | None = None
    max_token_lifetime: int | None = None
    issuer: str | None = None
    authorization_response_iss_parameter_supported: bool = False
    code_challenge_methods_supported: tuple[str, ...] = ()
    discovered_at: str = ""  # set when the endpoints came from the issuer's metadata, which is then re-read
    preset: str = ""
    preset_params: Mapping[str, str] = field(default_factory=dict)

    def to_record(self) -> dict[str, Any]:
        """The document stored in Vault (credentials included)."""
        record = asdict(self)
        for key in ("scopes", "code_challenge_methods_supported"):
            record[key] = list(record[key])
        return record

    def public(self) -> dict[str, Any]:
        """What the API shows: no credential, only whether each is set (and the public key, if any)."""
        shown = self.to_record()
        for key in SECRET_FIELDS:
            shown[f"{key}_set"] = bool(shown.pop(key))
        if self.private_key:
            shown["public_jwk"] = public_jwk(self.private_key, self.key_id)
        return shown


@dataclass(frozen=True)
class Identity:
    """Who a Vault token belongs to, as `lookup-self` tells: what the audit trail names (never the token)."""

    entity_id: str
    display_name: str
    accessor: str
    ttl: int = 0  # seconds the token has left; 0: it does not expire

    @classmethod
    def from_lookup(cls, data: Mapping[str, Any]) -> Identity:
        return cls(
            entity_id=str(data.get("entity_id") or ""),
            display_name=str(data.get("display_name") or ""),
            accessor=str(data.get("accessor") or ""),
            ttl=int(data.get("ttl") or 0),
        )

    @classmethod
    def from_public(cls, data: object) -> Identity | None:
        """Back from `public()`, as kept in a login in flight or a session; None if there is none."""
        if not isinstance(data, Mapping) or not data:
            return None
        return cls(
            str(data.get("entity_id") or ""), str(data.get("display_name") or ""), str(data.get("accessor") or "")
        )

    def public(self) -> dict[str, str]:
        return {"entity_id": self.entity_id, "display_name": self.display_name, "accessor": self.accessor}


# -- tokens and grants ------------------------------------------------------------------------

E = TypeVar("E", bound=StrEnum)


class Status(StrEnum):
    """A grant's health, as the API, the UI, the views and the webhooks name it."""

    ACTIVE = "active"
    RETRYING = "retrying"  # the last refresh failed and will be tried again
    REAUTHORIZATION_REQUIRED = "reauthorization_required"  # the provider refused it for good


class GrantType(StrEnum):
    """How a secret was obtained, and so how it is renewed."""

    AUTHORIZATION_CODE = "authorization_code"  # a browser login (logins.py)
    CLIENT_CREDENTIALS = "client_credentials"  # asked for again, no refresh token
    REFRESH_TOKEN = "refresh_token"  # noqa: S105 - a name, not a secret: an imported refresh token
    DEVICE_CODE = "device_code"  # RFC 8628


def _member(kind: type[E], value: object, default: E) -> E:
    """`value` as a member of `kind`; a record's missing or unknown value reads as `default`."""
    return kind(value) if isinstance(value, str) and value in kind._value2member_map_ else default


def rfc3339(moment: datetime | None, precise: bool = False) -> str:
    """RFC 3339 UTC with a Z, or "" for unknown. Whole seconds (the consumer views' format) unless
    `precise`: the grant record keeps microseconds, since due times are computed from it."""
    if moment is None:
        return ""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ" if precise else "%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)


def expiry_from(expires_in: object, now: datetime) -> datetime | None:
    """`now + expires_in`, or None when it is missing, not a number, not positive, or absurd."""
    if isinstance(expires_in, str) and expires_in.strip().isdecimal():
        expires_in = int(expires_in)
    if isinstance(expires_in, bool) or not isinstance(expires_in, int | float):
        return None
    if not 0 < expires_in <= MAX_EXPIRES_IN:
        return None
    return now + timedelta(seconds=int(expires_in))


@dataclass(frozen=True)
class TokenSet:
    """What a token endpoint granted. Token values never show in a repr."""

    access_token: str = field(repr=False)
    token_type: str
    expires_at: datetime | None
    scopes: tuple[str, ...]
    refresh_token: str | None = field(default=None, repr=False)
    id_token: str | None = field(default=None, repr=False)

    def to_record(self) -> dict[str, Any]:
        return {
            "access_token": self.access_token,
            "token_type": self.token_type,
            "expires_at": rfc3339(self.expires_at, precise=True),
            "scopes": list(self.scopes),
            "refresh_token": self.refresh_token or "",
            "id_token": self.id_token or "",
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> TokenSet:
        return cls(
            access_token=record["access_token"],
            token_type=record.get("token_type") or "Bearer",
            expires_at=parse_rfc3339(record.get("expires_at")),
            scopes=tuple(record.get("scopes") or ()),
            refresh_token=record.get("refresh_token") or None,
            id_token=record.get("id_token") or None,
        )


@dataclass(frozen=True)
class Grant:
    """The canonical record of a connected secret: its tokens, where they go, and its health."""

    name: str
    provider: str
    environments: tuple[str, ...]
    tokens: TokenSet
    status: Status = Status.ACTIVE
    login_id: str = ""
    connected_at: datetime | None = None
    last_refreshed_at: datetime | None = None
    last_error: str = ""
    failures: int = 0
    next_attempt_at: datetime | None = None
    claim_owner: str = ""
    claim_until: datetime | None = None
    grant_type: GrantType = GrantType.AUTHORIZATION_CODE
    failing_since: datetime | None = None  # when it last left `active`
    notified: str = ""  # the status the webhook last announced, until the grant recovers

    # -- state changes: every one that ends a refresh releases the claim ---------------------------

    def claimed(self, owner: str, until: datetime) -> Grant:
        return replace(self, claim_owner=owner, claim_until=until)

    def refreshed(self, tokens: TokenSet, at: datetime, next_attempt_at: datetime | None) -> Grant:
        """Renewed: active again, its failures forgotten. A provider that sends no new refresh token
        keeps the old one valid. `failing_since` stays until the recovery is announced."""
        kept = replace(tokens, refresh_token=tokens.refresh_token or self.tokens.refresh_token)
        return replace(
            self, tokens=kept, status=Status.ACTIVE, last_refreshed_at=at,
            last_error="", failures=0, next_attempt_at=next_attempt_at, claim_owner="", claim_until=None,
            failing_since=self.failing_since if self.notified else None,
        )  # fmt: skip

    def failed(self, message: str, next_attempt_at: datetime, now: datetime) -> Grant:
        """The refresh failed for now: `retrying`, one failure more, the current token kept."""
        return replace(
            self, status=Status.RETRYING, failures=self.failures + 1, last_error=message,
            next_attempt_at=next_attempt_at, claim_owner="", claim_until=None, failing_since=self.failing_since or now,
        )  # fmt: skip

    def needs_login(self, message: str, now: datetime) -> Grant:
        """The provider refused the grant for good: nothing more to try until a person logs in."""
        return replace(
            self, status=Status.REAUTHORIZATION_REQUIRED, last_error=message, next_attempt_at=None,
            claim_owner="", claim_until=None, failing_since=self.failing_since or now,
        )  # fmt: skip

    def announced(self) -> Grant:
        """Its status delivered by webhook. A recovery (active again) ends the failure episode."""
        if self.status == Status.ACTIVE:
            return replace(self, notified="", failing_since=None)
        return replace(self, notified=self.status)

    @property
    def renewable(self) -> bool:
        """A refresh token to redeem, or client credentials to ask again with."""
        return bool(self.tokens.refresh_token) or self.grant_type == GrantType.CLIENT_CREDENTIALS

    def to_record(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "provider": self.provider,
            "environments": list(self.environments),
            **self.tokens.to_record(),
            "status": self.status,
            "login_id": self.login_id,
            "connected_at": rfc3339(self.connected_at, precise=True),
            "last_refreshed_at": rfc3339(self.last_refreshed_at, precise=True),
            "last_error": self.last_error,
            "failures": self.failures,
            "next_attempt_at": rfc3339(self.next_attempt_at, precise=True),
            "claim_owner": self.claim_owner,
            "claim_until": rfc3339(self.claim_until, precise=True),
            "grant_type": self.grant_type,
            "failing_since": rfc3339(self.failing_since, precise=True),
            "notified": self.notified,
        }

    @classmethod
    def from_record(cls, name: str, record: Mapping[str, Any]) -> Grant:
        return cls(
            name=name,
            provider=record["provider"],
            environments=tuple(record.get("environments") or ()),
            tokens=TokenSet.from_record(record),
            status=_member(Status, record.get("status"), Status.ACTIVE),
            login_id=record.get("login_id") or "",
            connected_at=parse_rfc3339(record.get("connected_at")),
            last_refreshed_at=parse_rfc3339(record.get("last_refreshed_at")),
            last_error=record.get("last_error") or "",
            failures=int(record.get("failures") or 0),
            next_attempt_at=parse_rfc3339(record.get("next_attempt_at")),
            claim_owner=record.get("claim_owner") or "",
            claim_until=parse_rfc3339(record.get("claim_until")),
            grant_type=_member(GrantType, record.get("grant_type"), GrantType.AUTHORIZATION_CODE),
            failing_since=parse_rfc3339(record.get("failing_since")),
            notified=record.get("notified") or "",
        )

    @property
    def connection(self) -> str:
        """What this connection of the secret is known by: a refresh keeps it, a new login changes it."""
        return f"{self.provider} {self.grant_type} {rfc3339(self.connected_at, precise=True)}"

    def public(self) -> dict[str, Any]:
        """Status and health for the API: never a token value."""
        return {
            "name": self.name,
            "provider": self.provider,
            "grant_type": self.grant_type,
            "environments": list(self.environments),
            "status": self.status,
            "scopes": list(self.tokens.scopes),
            "expires_at": rfc3339(self.tokens.expires_at),
            "has_refresh_token": bool(self.tokens.refresh_token),
            "renewable": self.renewable,
            "connected_at": rfc3339(self.connected_at),
            "last_refreshed_at": rfc3339(self.last_refreshed_at),
            "last_error": self.last_error,
            "failures": self.failures,
            "next_attempt_at": rfc3339(self.next_attempt_at),
            "failing_since": rfc3339(self.failing_since),
        }

    def view(self) -> dict[str, str]:
        """Exactly the contract's fields of `<prefix>/<environment>/<name>`: never a refresh token."""
        return {
            "access_token": self.tokens.access_token,
            "token_type": self.tokens.token_type,
            "expires_at": rfc3339(self.tokens.expires_at),
            "scope": " ".join(self.tokens.scopes),
            "provider": self.provider,
            "status": self.status,
        }


def refresh_due(grant: Grant, provider: Provider, default_margin: int) -> datetime | None:
    """`due_at` with the provider's refresh margin (else `default_margin`, SIDECAR_REFRESH_MARGIN)."""
    margin = provider.refresh_margin if provider.refresh_margin is not None else default_margin
    return due_at(grant, margin, provider.max_token_lifetime)


def due_at(grant: Grant, margin: int, max_token_lifetime: int | None = None) -> datetime | None:
    """When to refresh: `expires_at - min(margin, lifetime / 2)`, a little earlier by a jitter
    of up to a tenth of that lead, and not before a backoff allows. None: never on a timer."""
    if grant.status == Status.REAUTHORIZATION_REQUIRED or not grant.renewable:
        return None
    issued = grant.last_refreshed_at or grant.connected_at
    expires = grant.tokens.expires_at
    if expires is None:
        if not (max_token_lifetime and issued):
            return None
        expires = issued + timedelta(seconds=max_token_lifetime)
    lifetime = (expires - issued).total_seconds() if issued else 0.0
    if lifetime <= 0:  # unknown, or written by a replica whose clock runs far ahead: assume the margin fits
        lifetime = 2.0 * margin
    lead = min(float(margin), lifetime / 2)
    # Deterministic, so every replica and every resync agree on the same moment.
    seed = hashlib.sha256(f"{grant.name}|{rfc3339(expires)}".encode()).digest()
    jitter = lead * 0.1 * int.from_bytes(seed[:8], "big") / 2**64
    due = expires - timedelta(seconds=lead + jitter)
    return max(due, grant.next_attempt_at) if grant.next_attempt_at else due
