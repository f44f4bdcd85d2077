"""What users send (API, UI, CLI): the name rule every Vault path passes, and the provider and
secret bodies declared as pydantic models, so that every bad field is reported at once.

Our own checks (names, URLs, scopes, keys) run as the models' validators and keep their messages.
Two choices matter for security: errors never echo the input (`hide_input_in_errors`: a client
secret over the length limit would otherwise be quoted back), and URLs stay the strings typed
(pydantic's URL types rewrite them, which breaks the exact issuer match and the private_key_jwt
audience).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonDict
from pydantic_core import PydanticCustomError

from .errors import Invalid
from .keys import MAX_PEM_LENGTH, signing_key
from .models import MAX_EXPIRES_IN, GrantType, Provider, Status, TokenAuthMethod

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# RFC 6749 section 3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
SCOPE_RE = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")
SCOPE_SPLIT_RE = re.compile(r"[\s,]+")
MAX_URL_LENGTH = 2048
MAX_TEXT_LENGTH = 1024
MAX_SCOPES = 100
MAX_REFRESH_MARGIN = 86_400
MAX_REFRESH_TOKEN_LENGTH = 8192
# Parameters the sidecar itself sets on an authorization request; a provider may not override them.
RESERVED_AUTHORIZE_PARAMS = frozenset(
    {"response_type", "client_id", "redirect_uri", "scope", "state", "code_challenge", "code_challenge_method"}
)

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)


# -- the rules ----------------------------------------------------------------------------------


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


def check_environments(value: object, configured: tuple[str, ...], what: str = "environments") -> tuple[str, ...]:
    """A non-empty subset of the configured environments; None means all of them."""
    if value is None:
        return configured
    if not isinstance(value, list | tuple) or not value or not all(isinstance(v, str) for v in value):
        raise Invalid(f"{what} must be a non-empty list of names", {what: "invalid"})
    unknown = [v for v in value if v not in configured]
    if unknown:
        raise Invalid(
            f"unknown environment {unknown[0][:64]!r}; configured: {', '.join(configured)}",
            {what: "unknown environment"},
        )
    return tuple(dict.fromkeys(value))


def _text(value: str, what: str) -> str:
    if len(value) > MAX_TEXT_LENGTH or any(ord(c) < 0x20 or c == "\x7f" for c in value):
        raise Invalid(f"{what} must be at most {MAX_TEXT_LENGTH} printable characters", {what: "invalid"})
    return value


def _required_text(value: str, what: str) -> str:
    if not value.strip():
        raise Invalid(f"{what} is required and must be a non-empty string", {what: "required"})
    return _text(value, what)


def _private_key(value: object, what: str) -> str:
    """A PEM private key for private_key_jwt: RSA (RS256) or EC P-256 (ES256), unencrypted."""
    if value != "":
        try:
            signing_key(value)
        except (TypeError, ValueError):
            raise Invalid(
                f"{what} must be an unencrypted PEM RSA (2048 bits or more) or EC P-256 private key",
                {what: "invalid key"},
            ) from None
    return str(value)


def _authorize_params(value: dict[str, str], what: str) -> dict[str, str]:
    for k, v in value.items():
        if not k or len(k) > 128 or len(v) > MAX_TEXT_LENGTH or any(ord(c) < 0x20 for c in k + v):
            raise Invalid(f"{what}: {k[:80]!r} is not a valid parameter", {what: "invalid parameter"})
        if k.lower() in RESERVED_AUTHORIZE_PARAMS:  # a provider may read names without regard to case
            raise Invalid(f"{what}: {k!r} is set by the sidecar and cannot be overridden", {what: "reserved"})
    return value


def _some_environment(value: list[str], what: str) -> list[str]:
    if not value:
        raise Invalid("tick at least one environment", {what: "required"})
    return value


def _some_scope(value: tuple[str, ...], what: str) -> tuple[str, ...]:
    if not value:
        raise Invalid(f"{what} must name at least one scope", {what: "required"})
    return value


# -- the rules as pydantic validators -----------------------------------------------------------


def _ours(check: Callable[[Any, str], T]) -> AfterValidator:
    """One of our checks as a validator: its `Invalid` becomes an error of the field, message kept."""

    def validate(value: Any, info: ValidationInfo) -> T:
        try:
            return check(value, info.field_name or "body")
        except Invalid as exc:
            raise _error(exc.message, next(iter(exc.fields.values()), "invalid")) from None

    return AfterValidator(validate)


def _error(message: str, short: str, field: str = "") -> PydanticCustomError:
    """An error with our message (`field` for a rule across fields, which pydantic places on none)."""
    # `{message}` as the template: a message is never read as a template of its own.
    return PydanticCustomError("sidecar", "{message}", {"message": message, "short": short, "field": field})


def _absent(empty: object, given: Any) -> BeforeValidator:
    """null reads as not given (`given`: the type a body may send)."""
    return BeforeValidator(lambda value: empty if value is None else value, json_schema_input_type=given | None)


MAX_PAGE = 1000  # secrets a page of `GET /v1/secrets` at most
WRITE_ONLY: JsonDict = {"writeOnly": True}  # credentials: stored in Vault, never answered nor in a repr
Name = Annotated[str, Field(json_schema_extra={"pattern": f"^{NAME_RE.pattern}$"}), _ours(check_name)]
Text = Annotated[str, Field(max_length=MAX_TEXT_LENGTH), _ours(_required_text)]
Blankable = Annotated[str, _absent("", str), Field(max_length=MAX_TEXT_LENGTH), _ours(_text)]
Url = Annotated[str, Field(max_length=MAX_URL_LENGTH, json_schema_extra={"format": "uri"}), _ours(check_url)]
OptionalUrl = Annotated[
    Url | None,
    BeforeValidator(
        lambda value: value or None,
        json_schema_input_type=Annotated[str, Field(json_schema_extra={"format": "uri"})] | None,
    ),
]
Scopes = Annotated[list[str] | str, _ours(parse_scopes)]
SCOPES = "A list, or one string split on newlines, commas or spaces."
ParamMap = dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=MAX_TEXT_LENGTH)]]


class Body(BaseModel):
    """Strict JSON types, no unknown field, and no input quoted back in an error."""

    model_config = ConfigDict(
        extra="forbid", strict=True, hide_input_in_errors=True, frozen=True, validate_default=True
    )


class ProviderDraft(Body):
    """A provider body as sent, before its preset and its issuer's metadata fill it in."""

    name: Name | None = None
    preset: Blankable = Field(
        "",
        description="A well-known provider (GET /v1/presets) that fills in the URLs, default scopes and quirks; "
        "every field given explicitly wins, and extra_authorize_params are merged.",
    )
    preset_params: Annotated[ParamMap, _absent({}, ParamMap)] = Field(
        {}, description="The preset's parameters (such as tenant, domain, host or authorization_server)."
    )
    client_id: Text | None = None
    client_secret: Blankable = Field(
        "",
        description="Required on every PUT unless token_auth_method is private_key_jwt.",
        json_schema_extra=WRITE_ONLY,
        repr=False,
    )
    previous_client_secret: Blankable = Field(
        "",
        description="During a rotation: sent once more when the provider refuses the client secret as "
        "invalid_client (401, or 400 with invalid_client). Not used with private_key_jwt.",
        json_schema_extra=WRITE_ONLY,
        repr=False,
    )
    authorization_url: OptionalUrl = Field(
        None, description="Required unless a preset or the issuer's metadata (discovery) fills it in."
    )
    token_url: OptionalUrl = Field(
        None, description="Required unless a preset or the issuer's metadata (discovery) fills it in."
    )
    scopes: Scopes | None = Field(None, description=f"{SCOPES} Required unless a preset gives them.")
    scope_separator: Literal[" ", ","] = Field(
        " ", description="Joins the scopes in requests to the provider (Slack wants commas)."
    )
    revocation_url: OptionalUrl = None
    device_authorization_url: OptionalUrl = Field(None, description="RFC 8628 endpoint, for the device login.")
    token_auth_method: Annotated[TokenAuthMethod, Strict(False)] = Field(
        TokenAuthMethod.CLIENT_SECRET_BASIC,
        description="private_key_jwt (RFC 7523) needs private_key and makes client_secret optional.",
    )
    # Any type reaches the key check, which names every unusable key alike.
    private_key: Annotated[Any, _absent("", str), _ours(_private_key)] = Field(
        "",
        description="For private_key_jwt: an unencrypted PEM private key, RSA of 2048 bits or more (RS256) or "
        "EC P-256 (ES256). Stored in Vault; the public view shows public_jwk instead.",
        json_schema_extra={**WRITE_ONLY, "maxLength": MAX_PEM_LENGTH},
        repr=False,
    )
    key_id: Blankable = Field("", description="The kid header of private_key_jwt assertions.")
    pkce: bool | None = Field(
        None,
        description="PKCE S256 on logins (default true). Left out, discovery turns it off when the metadata "
        "lists code_challenge_methods_supported without S256.",
    )
    extra_authorize_params: Annotated[ParamMap, _absent({}, ParamMap), _ours(_authorize_params)] = {}
    refresh_margin: Annotated[int | None, Field(ge=0, le=MAX_REFRESH_MARGIN)] = None
    max_token_lifetime: Annotated[int | None, Field(ge=60, le=MAX_EXPIRES_IN)] = None
    issuer: OptionalUrl = Field(
        None,
        description="The issuer URL. Checked against the iss of login answers (RFC 9207). Without "
        "authorization_url or token_url, its RFC 8414 or OpenID Connect metadata fills them in; a document "
        "that names another issuer, or none found, is a 400.",
    )
    authorization_response_iss_parameter_supported: Annotated[bool, _absent(False, bool)] = Field(
        False, description="The provider always sends iss; true needs issuer."
    )
    code_challenge_methods_supported: Annotated[
        list[Annotated[str, Field(max_length=63)]], _absent([], list[str]), AfterValidator(tuple)
    ] = Field([], description="Set by discovery.")
    discovered_at: Blankable = Field(
        "",
        description="Set by discovery: the provider's endpoints are then re-read from its issuer's metadata, in "
        "memory, at most once per SIDECAR_DISCOVERY_INTERVAL in each process.",
    )

    @model_validator(mode="after")
    def _named_as_the_path(self, info: ValidationInfo) -> ProviderDraft:
        path = (info.context or {}).get("name")
        if self.name is not None and path is not None and self.name != path:
            raise _error("name in the body differs from the name in the path", "differs from the path", "name")
        return self


class ProviderInput(ProviderDraft):
    """A provider once filled in: complete and consistent."""

    client_id: Text
    authorization_url: Url
    token_url: Url
    scopes: Annotated[Scopes, _ours(_some_scope)] = Field(description=SCOPES)
    pkce: bool = True

    @model_validator(mode="after")
    def _consistent(self) -> ProviderInput:
        if self.token_auth_method == TokenAuthMethod.PRIVATE_KEY_JWT and not self.private_key:
            raise _error("private_key_jwt needs private_key (PEM)", "required", "private_key")
        if self.token_auth_method != TokenAuthMethod.PRIVATE_KEY_JWT and not self.client_secret.strip():
            raise _error("client_secret is required and must be a non-empty string", "required", "client_secret")
        if self.authorization_response_iss_parameter_supported and not self.issuer:
            raise _error(
                "authorization_response_iss_parameter_supported needs the provider's issuer",
                "required when the provider sends iss",
                "issuer",
            )
        return self


class SecretInput(Body):
    """A secret to connect (`POST /v1/secrets`); environments are checked against the configured ones
    when the validation context names them."""

    name: Name
    provider: Name
    environments: Annotated[list[Name], _ours(_some_environment)] | None = Field(
        None, description="Where its views are written; default: every configured environment."
    )
    scopes: Scopes | None = Field(None, description=f"{SCOPES} Default: the provider's.")
    # device_code grants are made by the CLI only, so a body asks for one of the others.
    grant_type: Literal[GrantType.AUTHORIZATION_CODE, GrantType.CLIENT_CREDENTIALS, GrantType.REFRESH_TOKEN] = Field(
        GrantType.AUTHORIZATION_CODE,
        description="authorization_code answers a login link for a person to open; client_credentials gets a "
        "token for the client itself; refresh_token imports a refresh token obtained elsewhere. The last two are "
        "stored at once and answered with the secret's status.",
    )
    refresh_token: Annotated[str, Field(min_length=1, max_length=MAX_REFRESH_TOKEN_LENGTH)] | None = Field(
        None,
        description="Required with grant_type refresh_token, refused otherwise. Redeemed at once to prove it; if "
        "the provider refuses it, the answer is 502 token_refused and nothing is written.",
        json_schema_extra=WRITE_ONLY,
        repr=False,
    )
    replace: bool = Field(
        False,
        description="Store over a secret of this name that exists (its old tokens are not revoked); without it, "
        "an existing name is 409 exists.",
    )

    @field_validator("environments")
    @classmethod
    def _configured(cls, value: list[str] | None, info: ValidationInfo) -> list[str] | None:
        configured = (info.context or {}).get("environments")
        if configured is not None and value is not None:
            try:
                check_environments(value, configured)
            except Invalid as exc:
                raise _error(exc.message, "unknown environment") from None
        return value

    @model_validator(mode="after")
    def _consistent(self) -> SecretInput:
        importing = self.grant_type == GrantType.REFRESH_TOKEN
        if importing and not (self.refresh_token or "").strip():
            raise _error("refresh_token is required with grant_type refresh_token", "required", "refresh_token")
        if not importing and self.refresh_token is not None:
            raise _error("refresh_token is only for grant_type refresh_token", "unknown", "refresh_token")
        return self


# -- validating ---------------------------------------------------------------------------------


def _search(value: str, what: str) -> str:
    if not value.isprintable():
        raise Invalid(f"{what} must be printable text", {what: "invalid"})
    return value


class SecretQuery(BaseModel):
    """A page of `GET /v1/secrets` (query parameters: text, so numbers are read from it)."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True, frozen=True)

    limit: int = Field(100, ge=1, le=MAX_PAGE, description=f"Secrets a page, 1 to {MAX_PAGE}.")
    cursor: Name | None = Field(None, description="The `next` of the page before: this page starts after it.")
    status: Status | None = None
    provider: Name | None = None
    environment: Name | None = Field(None, description="Only secrets with a view in this environment.")
    q: Annotated[str, Field(max_length=64), _ours(_search)] | None = Field(
        None, description="Only secrets whose name contains this text."
    )


def validated(model: type[M], data: object, **context: Any) -> M:
    """`data` as `model`, or `Invalid` naming every bad field with what is wrong with it."""
    if not isinstance(data, dict):
        raise Invalid("the body must be a JSON object")
    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        raise _invalid(exc) from None


def _invalid(exc: ValidationError) -> Invalid:
    fields: dict[str, str] = {}
    messages: dict[str, str] = {}
    for error in exc.errors(include_url=False, include_input=False):
        ctx = error.get("ctx") or {}
        field = ctx.get("field") or (str(error["loc"][0]) if error["loc"] else "body")
        if field in fields:
            continue  # one message a field: a union's every branch would otherwise complain
        if error["type"] == "sidecar":
            fields[field], message = ctx["short"], ctx["message"]
        elif error["type"] == "missing":
            fields[field], message = "required", f"{field} is required"
        elif error["type"] == "extra_forbidden":
            fields[field], message = "unknown", f"unknown field {field[:64]}"
        else:
            fields[field], message = "invalid", f"{field}: {error['msg'][:1].lower()}{error['msg'][1:]}"
        messages[field] = message
    return Invalid("; ".join(messages.values()), fields, messages)


def secret_query(args: dict[str, str]) -> SecretQuery:
    """The query of a page of secrets (empty parameters count as not given)."""
    return validated(SecretQuery, {k: v for k, v in args.items() if v != ""})


def secret(body: object, environments: tuple[str, ...]) -> SecretInput:
    """A secret body, its environments among the configured ones."""
    return validated(SecretInput, body, environments=environments)


def provider(name: str, data: object) -> Provider:
    """A provider from a complete body (presets and discovery already applied)."""
    check_name(name, "provider")
    given = validated(ProviderInput, data, name=name)
    return Provider(**{**dict(given), "name": name})


def stored_provider(name: str, record: dict[str, Any]) -> Provider:
    """Rebuilt from Vault; validated again, since the record may have been edited by hand."""
    return provider(name, {k: v for k, v in record.items() if k in ProviderInput.model_fields})
