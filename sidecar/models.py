"""Data the sidecar keeps, and the validation every piece of input passes through."""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, TypeVar
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from .errors import Invalid

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# RFC 6749 section 3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
SCOPE_RE = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")
SCOPE_SPLIT_RE = re.compile(r"[\s,]+")
MAX_URL_LENGTH = 2048
MAX_TEXT_LENGTH = 1024
MAX_SCOPES = 100
MAX_REFRESH_MARGIN = 86_400
# An expires_in beyond this is treated as "no expiry known" rather than trusted.
MAX_EXPIRES_IN = 10 * 365 * 86_400
TOKEN_AUTH_METHODS = ("client_secret_basic", "client_secret_post", "private_key_jwt")
# Slack wants its scopes joined by commas; everyone else by spaces (RFC 6749 section 3.3).
SCOPE_SEPARATORS = (" ", ",")
MAX_PEM_LENGTH = 16_384
# Parameters the sidecar itself sets on an authorization request; a provider may not override them.
RESERVED_AUTHORIZE_PARAMS = frozenset(
    {"response_type", "client_id", "redirect_uri", "scope", "state", "code_challenge", "code_challenge_method"}
)


def check_name(value: object, what: str = "name") -> str:
    """Return `value` if it obeys the name rule; this is the gate every Vault path segment passes."""
    if not isinstance(value, str) or not NAME_RE.fullmatch(value):
        raise Invalid(
            f"{what} must be 1 to 64 characters of letters, digits, '_', '.' or '-', starting with a letter or digit",
            {what: "invalid name"},
        )
    return value


def is_loopback_host(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(value: object, what: str) -> str:
    """An endpoint URL: https, or http to a loopback host; no credentials, no fragment."""
    if not isinstance(value, str) or not value:
        raise Invalid(f"{what} is required and must be a string", {what: "required"})
    if len(value) > MAX_URL_LENGTH or any(c.isspace() or ord(c) < 0x20 or c == "\x7f" for c in value):
        raise Invalid(f"{what} is not a valid URL", {what: "not a valid URL"})
    try:
        parts = urlsplit(value)
        host = parts.hostname or ""
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        raise Invalid(f"{what} is not a valid URL", {what: "not a valid URL"}) from None
    if parts.scheme not in ("https", "http") or not host:
        raise Invalid(f"{what} must be an absolute https URL", {what: "must be an absolute https URL"})
    if parts.scheme == "http" and not is_loopback_host(host):
        raise Invalid(
            f"{what} must use https (http is allowed only for a loopback host)",
            {what: "must use https"},
        )
    if parts.username is not None or parts.password is not None:
        raise Invalid(f"{what} must not contain credentials", {what: "must not contain credentials"})
    if parts.fragment or value.endswith("#"):
        raise Invalid(f"{what} must not contain a fragment", {what: "must not contain a fragment"})
    return value


def parse_scopes(value: object, what: str = "scopes") -> tuple[str, ...]:
    """Scopes from a list, or from one pasted string split on newlines, commas or spaces.

    Blanks are dropped, duplicates removed, order kept; each scope must be an RFC 6749 scope-token.
    """
    if isinstance(value, str):
        items: Iterable[object] = SCOPE_SPLIT_RE.split(value)
    elif isinstance(value, list | tuple):
        items = value
    else:
        raise Invalid(f"{what} must be a list of strings or one string", {what: "must be a list or a string"})
    scopes: dict[str, None] = {}
    for item in items:
        if not isinstance(item, str):
            raise Invalid(f"{what} must contain only strings", {what: "must contain only strings"})
        for scope in SCOPE_SPLIT_RE.split(item):
            if not scope:
                continue
            if not SCOPE_RE.fullmatch(scope) or len(scope) > MAX_TEXT_LENGTH:
                raise Invalid(
                    f"{what}: {scope[:80]!r} is not a valid scope (no quotes, backslashes or control characters)",
                    {what: "invalid scope"},
                )
            scopes[scope] = None
    if len(scopes) > MAX_SCOPES:
        raise Invalid(f"{what}: at most {MAX_SCOPES} scopes", {what: "too many scopes"})
    return tuple(scopes)


def _text(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value.strip():
        raise Invalid(f"{key} is required and must be a non-empty string", {key: "required"})
    if len(value) > MAX_TEXT_LENGTH or any(ord(c) < 0x20 or c == "\x7f" for c in value):
        raise Invalid(f"{key} must be at most {MAX_TEXT_LENGTH} printable characters", {key: "invalid"})
    return value


def _bool(data: Mapping[str, Any], key: str, default: bool) -> bool:
    value = data.get(key, default)
    if not isinstance(value, bool):
        raise Invalid(f"{key} must be true or false", {key: "must be a boolean"})
    return value


def _seconds(data: Mapping[str, Any], key: str, low: int, high: int) -> int | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise Invalid(f"{key} must be a whole number of seconds from {low} to {high}", {key: "invalid"})
    return value


def _authorize_params(data: Mapping[str, Any]) -> dict[str, str]:
    value = data.get("extra_authorize_params") or {}
    key = "extra_authorize_params"
    if not isinstance(value, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise Invalid(f"{key} must be an object of string values", {key: "must map strings to strings"})
    for k, v in value.items():
        if not k or len(k) > 128 or len(v) > MAX_TEXT_LENGTH or any(ord(c) < 0x20 for c in k + v):
            raise Invalid(f"{key}: {k[:80]!r} is not a valid parameter", {key: "invalid parameter"})
        if k.lower() in RESERVED_AUTHORIZE_PARAMS:  # a provider may read names without regard to case
            raise Invalid(f"{key}: {k!r} is set by the sidecar and cannot be overridden", {key: "reserved"})
    return dict(value)


def key_values(items: Iterable[str], what: str) -> dict[str, str]:
    """KEY=VALUE items, as a repeated CLI option or a form's lines give them; blank ones are skipped."""
    pairs: dict[str, str] = {}
    for item in items:
        if item.strip():
            key, sep, value = item.strip().partition("=")
            if not sep:
                raise Invalid(f"{what}: write KEY=VALUE, one a line", {what: "one KEY=VALUE a line"})
            pairs[key.strip()] = value.strip()
    return pairs


def _optional_url(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    return None if value in (None, "") else check_url(value, key)


def _optional_text(data: Mapping[str, Any], key: str) -> str:
    return "" if data.get(key) in (None, "") else _text(data, key)


def _private_key(data: Mapping[str, Any]) -> str:
    """A PEM private key for private_key_jwt: RSA (RS256) or EC P-256 (ES256), unencrypted."""
    value = data.get("private_key")
    if value in (None, ""):
        return ""
    try:
        _signing_key(value)
    except (TypeError, ValueError):
        raise Invalid(
            "private_key must be an unencrypted PEM RSA (2048 bits or more) or EC P-256 private key",
            {"private_key": "invalid key"},
        ) from None
    return str(value)


def _signing_key(pem: object) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
    """The PEM private key, if RSA of 2048 bits or more or EC P-256; else ValueError."""
    if not isinstance(pem, str) or len(pem) > MAX_PEM_LENGTH:
        raise ValueError("not a PEM string")
    key = serialization.load_pem_private_key(pem.encode(), password=None)
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size >= 2048:
        return key
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
        return key
    raise ValueError("unsupported key type")


def signing_algorithm(pem: str) -> str:
    """The JWS algorithm for a private_key_jwt key."""
    return "RS256" if isinstance(_signing_key(pem), rsa.RSAPrivateKey) else "ES256"


def public_jwk(pem: str, key_id: str = "") -> dict[str, Any]:
    """The JWK to register at the provider for private_key_jwt."""
    key = _signing_key(pem)
    if isinstance(key, rsa.RSAPrivateKey):
        jwk, alg = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True), "RS256"
    else:
        jwk, alg = ECAlgorithm.to_jwk(key.public_key(), as_dict=True), "ES256"
    return {**jwk, "alg": alg, "use": "sig", **({"kid": key_id} if key_id else {})}


def _choice(data: Mapping[str, Any], key: str, choices: tuple[str, ...]) -> str:
    value = data.get(key, choices[0])
    if value not in choices:
        raise Invalid(f"{key} must be one of {', '.join(map(repr, choices))}", {key: "invalid"})
    return str(value)


def _pkce_methods(data: Mapping[str, Any]) -> tuple[str, ...]:
    value = data.get("code_challenge_methods_supported") or ()
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) and len(v) < 64 for v in value):
        raise Invalid(
            "code_challenge_methods_supported must be a list of names", {"code_challenge_methods_supported": "invalid"}
        )
    return tuple(value)


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
    token_auth_method: str = "client_secret_basic"  # noqa: S105 - a method name, not a password
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

    FIELDS = frozenset(
        {
            "client_id",
            "client_secret",
            "authorization_url",
            "token_url",
            "scopes",
            "revocation_url",
            "device_authorization_url",
            "token_auth_method",
            "previous_client_secret",
            "private_key",
            "key_id",
            "pkce",
            "extra_authorize_params",
            "scope_separator",
            "refresh_margin",
            "max_token_lifetime",
            "issuer",
            "authorization_response_iss_parameter_supported",
            "code_challenge_methods_supported",
            "discovered_at",
            "preset",
            "preset_params",
        }
    )

    @classmethod
    def from_input(cls, name: str, data: object) -> Provider:
        """Validate user input; raises `Invalid` naming the first bad field."""
        check_name(name, "provider")
        if not isinstance(data, Mapping):
            raise Invalid("the provider must be a JSON object")
        check_fields(data, cls.FIELDS | {"name"})
        if data.get("name", name) != name:
            raise Invalid("name in the body differs from the name in the path", {"name": "differs from the path"})
        if "scopes" not in data:
            raise Invalid("scopes is required", {"scopes": "required"})
        scopes = parse_scopes(data["scopes"])
        if not scopes:
            raise Invalid("scopes must name at least one scope", {"scopes": "required"})
        method = _choice(data, "token_auth_method", TOKEN_AUTH_METHODS)
        private_key = _private_key(data)
        if method == "private_key_jwt" and not private_key:
            raise Invalid("private_key_jwt needs private_key (PEM)", {"private_key": "required"})
        issuer = data.get("issuer")
        if data.get("authorization_response_iss_parameter_supported") and not issuer:
            raise Invalid(
                "authorization_response_iss_parameter_supported needs the provider's issuer",
                {"issuer": "required when the provider sends iss"},
            )
        return cls(
            name=name,
            client_id=_text(data, "client_id"),
            client_secret=_optional_text(data, "client_secret")
            if method == "private_key_jwt"
            else _text(data, "client_secret"),
            authorization_url=check_url(data.get("authorization_url"), "authorization_url"),
            token_url=check_url(data.get("token_url"), "token_url"),
            scopes=scopes,
            revocation_url=_optional_url(data, "revocation_url"),
            device_authorization_url=_optional_url(data, "device_authorization_url"),
            token_auth_method=method,
            previous_client_secret=_optional_text(data, "previous_client_secret"),
            private_key=private_key,
            key_id=_optional_text(data, "key_id"),
            pkce=_bool(data, "pkce", True),
            extra_authorize_params=_authorize_params(data),
            scope_separator=_choice(data, "scope_separator", SCOPE_SEPARATORS),
            refresh_margin=_seconds(data, "refresh_margin", 0, MAX_REFRESH_MARGIN),
            max_token_lifetime=_seconds(data, "max_token_lifetime", 60, MAX_EXPIRES_IN),
            issuer=_optional_url(data, "issuer"),
            authorization_response_iss_parameter_supported=_bool(
                data, "authorization_response_iss_parameter_supported", False
            ),
            code_challenge_methods_supported=_pkce_methods(data),
            discovered_at=_optional_text(data, "discovered_at"),
            preset=_optional_text(data, "preset"),
            preset_params=_string_map(data, "preset_params"),
        )

    def to_record(self) -> dict[str, Any]:
        """The document stored in Vault (credentials included)."""
        record = asdict(self)
        for key in ("scopes", "code_challenge_methods_supported"):
            record[key] = list(record[key])
        return record

    @classmethod
    def from_record(cls, name: str, record: Mapping[str, Any]) -> Provider:
        """Rebuild from Vault; re-validated, since the record may have been edited by hand."""
        return cls.from_input(name, {k: v for k, v in record.items() if k in cls.FIELDS})

    def public(self) -> dict[str, Any]:
        """What the API shows: no credential, only whether each is set (and the public key, if any)."""
        shown = self.to_record()
        for key in SECRET_FIELDS:
            shown[f"{key}_set"] = bool(shown.pop(key))
        if self.private_key:
            shown["public_jwk"] = public_jwk(self.private_key, self.key_id)
        return shown


def _string_map(data: Mapping[str, Any], key: str) -> dict[str, str]:
    value = data.get(key) or {}
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) and len(k) <= 64 and len(v) <= MAX_TEXT_LENGTH
        for k, v in value.items()
    ):
        raise Invalid(f"{key} must be an object of short string values", {key: "must map strings to strings"})
    return dict(value)


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


def check_fields(data: Mapping[str, Any], allowed: set[str] | frozenset[str]) -> None:
    """Refuse, naming them all, the fields of a body that are not `allowed`."""
    unknown = sorted(map(str, set(data) - allowed))
    if unknown:
        raise Invalid(f"unknown field(s): {', '.join(unknown)[:200]}", {k: "unknown" for k in unknown})


def check_environments(value: object, configured: tuple[str, ...]) -> tuple[str, ...]:
    """A non-empty subset of the configured environments; None means all of them."""
    if value is None:
        return configured
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise Invalid("environments must be a non-empty list of names", {"environments": "invalid"})
    unknown = [v for v in value if v not in configured]
    if unknown:
        raise Invalid(
            f"unknown environment {unknown[0][:64]!r}; configured: {', '.join(configured)}",
            {"environments": "unknown environment"},
        )
    return tuple(dict.fromkeys(value))


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
