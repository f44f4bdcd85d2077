"""The only OAuth code: discovery, authorization requests (state, PKCE S256), the code, refresh,
client credentials and device grants, client authentication, revocation.

Every request goes through `egress`: no redirects (client credentials go nowhere but the endpoint
the operator registered), the allow-list, a bounded answer. Failure messages say what kind of
failure it was, never what answered: the detail is logged. Nothing here logs a request or response body.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any, NoReturn
from urllib.parse import quote_plus, urlsplit

import jwt
from oauthlib.common import add_params_to_uri
from oauthlib.oauth2 import WebApplicationClient

from . import egress
from .clock import SYSTEM, Clock
from .errors import Invalid, OAuthPermanent, OAuthTransient, printable
from .inputs import SCOPE_SPLIT_RE, check_url
from .keys import signing_algorithm, signing_key
from .models import Provider, TokenAuthMethod, TokenSet, expiry_from

log = logging.getLogger(__name__)

TIMEOUT = egress.TIMEOUT  # read at each call, so a test may shorten it
REVOKE_ATTEMPTS = 3
ASSERTION_LIFETIME = 60  # seconds a private_key_jwt client assertion is valid
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
DEVICE_DEFAULT_INTERVAL = 5.0  # RFC 8628 section 3.2
DEVICE_NETWORK_BACKOFF_MAX = 60.0
# One text for every issuer that gives no usable metadata, however it fails (nothing listening,
# TLS, 404, HTML, another issuer): discovery must not tell a caller what runs at an address.
NO_METADATA = "discovery: no usable OAuth metadata at the issuer"
# The same for a token, revocation or device endpoint whose answer is not OAuth at all.
NOT_OAUTH = "the provider's answer is not a valid OAuth response"
# Metadata fields (RFC 8414) and the provider fields they fill.
DISCOVERED = {
    "authorization_endpoint": "authorization_url",
    "token_endpoint": "token_url",
    "revocation_endpoint": "revocation_url",
    "device_authorization_endpoint": "device_authorization_url",
}


class Client:
    """Speaks OAuth to providers: over `http` (egress), by `clock`. It also keeps what each issuer's
    metadata said, for `metadata`."""

    def __init__(self, http: egress.Egress, clock: Clock = SYSTEM) -> None:
        self.http, self._clock = http, clock
        self._lock = threading.Lock()
        self._metadata: dict[str, tuple[float, dict[str, Any]]] = {}  # issuer -> (monotonic time read, fields)

    def allowed(self, url: str) -> bool:
        """Whether SIDECAR_EGRESS_ALLOW lets the sidecar call `url` (or send a browser there)."""
        return self.http.allowed(url)

    def discover(self, issuer: str) -> dict[str, Any]:
        """Provider fields from the issuer's RFC 8414 metadata, else its OpenID Connect discovery document.

        A document that names another issuer is refused (RFC 8414 section 3.3): it could send logins elsewhere.
        """
        parts = urlsplit(issuer)
        origin, path = f"{parts.scheme}://{parts.netloc}", parts.path.rstrip("/")
        for url in (
            f"{origin}/.well-known/oauth-authorization-server{path}",
            f"{origin}{path}/.well-known/openid-configuration",
        ):
            try:
                answer = self.http.request(
                    "GET", url, "discovery", headers={"Accept": "application/json"}, timeout=TIMEOUT
                )
            except OAuthTransient:
                raise OAuthTransient(NO_METADATA) from None  # egress logged the detail
            if answer.status in (400, 404, 405, 410):
                continue
            metadata = answer.json()
            if answer.status != 200 or not isinstance(metadata, dict) or metadata.get("issuer") != issuer:
                _no_metadata(issuer, answer.status, metadata)
            fields = _provider_fields(metadata)
            self._remember(issuer, fields)
            return fields
        log.warning("discovery: %s publishes no OAuth or OpenID Connect metadata", parts.netloc)
        raise OAuthPermanent(NO_METADATA)

    def exchange_code(
        self, provider: Provider, code: str, code_verifier: str | None, redirect_uri: str, scopes: tuple[str, ...]
    ) -> TokenSet:
        """Redeem an authorization code at the provider's token endpoint."""
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri}
        if code_verifier:
            form["code_verifier"] = code_verifier
        now = self._clock.now()
        return _token_set(self._post(provider, provider.token_url, form, "token request"), scopes, now, "token request")

    def refresh(self, provider: Provider, refresh_token: str, scopes: tuple[str, ...]) -> TokenSet:
        """Redeem a refresh token. No scope is sent: RFC 6749 section 6 then grants the original scope."""
        form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
        now = self._clock.now()
        return _token_set(self._post(provider, provider.token_url, form, "refresh"), scopes, now, "refresh")

    def client_credentials(self, provider: Provider, scopes: tuple[str, ...]) -> TokenSet:
        """A token for the client itself (RFC 6749 section 4.4): no user, no refresh token needed."""
        form = {"grant_type": "client_credentials"}
        if scopes:
            form["scope"] = provider.scope_separator.join(scopes)
        now = self._clock.now()
        return _token_set(
            self._post(provider, provider.token_url, form, "client credentials"), scopes, now, "client credentials"
        )

    def device_authorization(self, provider: Provider, scopes: tuple[str, ...]) -> DeviceAuthorization:
        """Ask for a user code to show on a device with no browser."""
        if not provider.device_authorization_url:
            raise Invalid(f"provider {provider.name!r} has no device_authorization_url", {"provider": "no device flow"})
        form = {"client_id": provider.client_id, "scope": provider.scope_separator.join(scopes)}
        now = self._clock.now()
        resp = self._post(provider, provider.device_authorization_url, form, "device authorization")
        if resp.status != 200:
            _raise_for(resp, "device authorization", self._clock.now())
        body = _json(resp, "device authorization")
        device_code, user_code = _optional_str(body, "device_code"), printable(body.get("user_code"), 64)
        # Google names it verification_url, as drafts of RFC 8628 did.
        uri = body.get("verification_uri") or body.get("verification_url")
        expires_at = expiry_from(body.get("expires_in"), now)
        if not (device_code and user_code and expires_at):
            _not_oauth("device authorization", "the answer lacks a device code, user code or expiry")
        try:
            uri = check_url(uri, "verification_uri")
            complete = body.get("verification_uri_complete")
            complete = check_url(complete, "verification_uri_complete") if complete else None
        except Invalid as exc:
            _not_oauth("device authorization", exc.message)
        interval = body.get("interval")
        if isinstance(interval, bool) or not isinstance(interval, int | float) or interval <= 0:
            interval = DEVICE_DEFAULT_INTERVAL
        return DeviceAuthorization(device_code, user_code, uri, complete, expires_at, float(interval))

    def device_token(
        self,
        provider: Provider,
        authorization: DeviceAuthorization,
        scopes: tuple[str, ...],
    ) -> TokenSet:
        """Poll until the user approves (RFC 8628 section 3.4-3.5): wait `interval` between requests,
        five seconds more for each slow_down, twice as long after a network failure."""
        interval = authorization.interval
        form = {"grant_type": DEVICE_GRANT, "device_code": authorization.device_code, "client_id": provider.client_id}
        while (left := (authorization.expires_at - self._clock.now()).total_seconds()) > 0:
            self._clock.sleep(min(interval, left))
            now = self._clock.now()
            try:
                return _token_set(
                    self._post(provider, provider.token_url, form, "device login"), scopes, now, "device login"
                )
            except OAuthPermanent as exc:
                if exc.error == "slow_down":
                    interval += 5
                elif exc.error != "authorization_pending":
                    raise
            except OAuthTransient:
                interval = max(interval, min(interval * 2, DEVICE_NETWORK_BACKOFF_MAX))
        raise OAuthPermanent("device login: the code expired before it was approved", error="expired_token")

    def revoke(self, provider: Provider, token: str, hint: str) -> bool:
        """RFC 7009 revocation; False when the provider has no revocation endpoint. A 503 is retried."""
        if not provider.revocation_url:
            return False
        for attempt in range(1, REVOKE_ATTEMPTS + 1):
            resp = self._post(
                provider, provider.revocation_url, {"token": token, "token_type_hint": hint}, "revocation"
            )
            if resp.status == 200:
                return True
            if resp.status == 503 and attempt < REVOKE_ATTEMPTS:
                self._clock.sleep(min(_retry_after(resp, self._clock.now()) or attempt * 0.5, 5.0))
                continue
            _raise_for(resp, "revocation", self._clock.now())
        raise AssertionError("unreachable")

    def _post(self, provider: Provider, url: str, form: dict[str, str], what: str) -> egress.Answer:
        """POST with the provider's client authentication. Refused with the client secret, the previous
        one is tried: a provider refuses the client before it looks at a code or refresh token."""
        resp = self._send(provider, url, form, provider.client_secret, what)
        method = provider.token_auth_method
        if provider.previous_client_secret and method != TokenAuthMethod.PRIVATE_KEY_JWT and _refuses_client(resp):
            resp = self._send(provider, url, form, provider.previous_client_secret, what)
            if not _refuses_client(resp):
                log.warning(
                    "%s: provider %s refused the client secret but accepted the previous one; "
                    "finish the rotation at the provider",
                    what,
                    provider.name,
                )
        return resp

    def _send(self, provider: Provider, url: str, form: dict[str, str], secret: str, what: str) -> egress.Answer:
        """POST with one client authentication, through egress (no redirects, bounded time and size)."""
        auth, method = None, provider.token_auth_method
        if method == TokenAuthMethod.PRIVATE_KEY_JWT:
            form = {**form, "client_id": provider.client_id, "client_assertion_type": JWT_BEARER,
                    "client_assertion": self._assertion(provider, url)}  # fmt: skip
        elif method == TokenAuthMethod.CLIENT_SECRET_POST:
            form = {**form, "client_id": provider.client_id, "client_secret": secret}
        else:
            # RFC 6749 section 2.3.1: form-encode both parts before Basic encoding.
            auth = (quote_plus(provider.client_id), quote_plus(secret))
        return self.http.request(
            "POST", url, what, data=form, auth=auth, headers={"Accept": "application/json"}, timeout=TIMEOUT
        )

    def _assertion(self, provider: Provider, audience: str) -> str:
        """A single-use client assertion (RFC 7523 section 2.2) for one endpoint, signed with the key in Vault."""
        now = int(self._clock.now().timestamp())
        claims = {"iss": provider.client_id, "sub": provider.client_id, "aud": audience,
                  "jti": secrets.token_urlsafe(24), "iat": now, "exp": now + ASSERTION_LIFETIME}  # fmt: skip
        headers = {"kid": provider.key_id} if provider.key_id else None
        key = signing_key(provider.private_key)  # loaded once per key (keys.py), not per assertion
        return jwt.encode(claims, key, algorithm=signing_algorithm(key), headers=headers)

    def metadata(self, issuer: str, max_age: float) -> dict[str, Any]:
        """The issuer's metadata as provider fields, read again once older than `max_age` seconds. A
        failed read keeps what was read before ({} if nothing) until the next try, one per `max_age`."""
        with self._lock:
            read_at, fields = self._metadata.get(issuer, (float("-inf"), {}))
        if self._clock.monotonic() - read_at < max_age:
            return fields
        try:
            return self.discover(issuer)
        except (OAuthPermanent, OAuthTransient) as exc:
            log.warning("re-reading the metadata of %s failed; keeping what was read: %s", urlsplit(issuer).netloc,
                        exc.message)  # fmt: skip
            self._remember(issuer, fields)
            return fields

    def _remember(self, issuer: str, fields: dict[str, Any]) -> None:
        with self._lock:
            self._metadata[issuer] = (self._clock.monotonic(), fields)


def _no_metadata(issuer: str, status: int, metadata: object) -> NoReturn:
    """Log why the answer is not usable; raise the one message for all such answers."""
    if status != 200:
        reason = f"answered HTTP {status}"
    elif not isinstance(metadata, dict):
        reason = "answered something that is not a JSON object"
    else:
        reason = "published metadata naming another issuer"  # RFC 8414 section 3.3
    log.warning("discovery: the issuer %s %s", urlsplit(issuer).netloc, reason)
    error = OAuthTransient if status == 429 or status >= 500 else OAuthPermanent
    raise error(NO_METADATA)


def _provider_fields(metadata: Mapping[str, Any]) -> dict[str, Any]:
    fields: dict[str, Any] = {ours: metadata[theirs] for theirs, ours in DISCOVERED.items() if theirs in metadata}
    if metadata.get("authorization_response_iss_parameter_supported") is True:
        # Only ever turned on: an operator's "true" stands against metadata that says nothing.
        fields["authorization_response_iss_parameter_supported"] = True
    methods = metadata.get("code_challenge_methods_supported")
    if isinstance(methods, list):
        fields["code_challenge_methods_supported"] = [m for m in methods if isinstance(m, str)][:16]
    return fields


@dataclass(frozen=True)
class AuthorizationRequest:
    url: str = field(repr=False)
    state: str = field(repr=False)
    code_verifier: str | None = field(repr=False)


def authorization_request(provider: Provider, redirect_uri: str, scopes: tuple[str, ...]) -> AuthorizationRequest:
    """The provider's authorization URL with a fresh state and, unless disabled, a PKCE S256 challenge."""
    state = secrets.token_urlsafe(32)
    params = [
        ("response_type", "code"),
        ("client_id", provider.client_id),
        ("redirect_uri", redirect_uri),
        ("scope", provider.scope_separator.join(scopes)),
        ("state", state),
    ]
    verifier = None
    if provider.pkce:
        client = WebApplicationClient(provider.client_id)
        verifier = client.create_code_verifier(64)
        params += [
            ("code_challenge", client.create_code_challenge(verifier, "S256")),
            ("code_challenge_method", "S256"),
        ]
    params += list(provider.extra_authorize_params.items())
    return AuthorizationRequest(add_params_to_uri(provider.authorization_url, params), state, verifier)


@dataclass(frozen=True)
class DeviceAuthorization:
    """What the user is shown (RFC 8628 section 3.2); the device code stays out of reprs."""

    device_code: str = field(repr=False)
    user_code: str
    verification_uri: str
    verification_uri_complete: str | None
    expires_at: datetime
    interval: float


def _refuses_client(resp: egress.Answer) -> bool:
    """The client itself is refused: invalid_client, or a 401 that names no other error."""
    if resp.status not in (400, 401):
        return False
    error = _object(resp).get("error")
    return error == "invalid_client" or (resp.status == 401 and error is None)


def _token_set(resp: egress.Answer, requested: tuple[str, ...], now: datetime, what: str) -> TokenSet:
    if resp.status != 200:
        _raise_for(resp, what, now)
    body = _json(resp, what)
    if "error" in body:
        _raise_for(resp, what, now)
    access_token, token_type = body.get("access_token"), body.get("token_type") or "Bearer"
    if not isinstance(access_token, str) or not access_token or not isinstance(token_type, str):
        _not_oauth(what, "the answer has no access token")
    granted = body.get("scope")
    # RFC 6749 section 5.1: no scope in the answer means the requested scope was granted.
    scopes = tuple(s for s in SCOPE_SPLIT_RE.split(granted) if s) if isinstance(granted, str) else requested
    return TokenSet(
        access_token=access_token,
        token_type=token_type,
        expires_at=expiry_from(body.get("expires_in"), now),
        scopes=scopes,
        refresh_token=_optional_str(body, "refresh_token"),
        id_token=_optional_str(body, "id_token"),
    )


def _raise_for(resp: egress.Answer, what: str, now: datetime) -> NoReturn:
    """Classify a failed answer: transient (retry later) or permanent. An OAuth error answer keeps its
    `error` and `error_description` (operators need invalid_grant); any other answer gets one message
    that says nothing of its status or shape."""
    status = resp.status
    if 300 <= status < 400:
        _not_oauth(what, f"the provider answered HTTP {status}, a redirect, which is not followed")
    body = _object(resp)
    error, description = printable(body.get("error")), printable(body.get("error_description"))
    transient = status == 429 or status >= 500
    if not error:
        log.warning("%s: the provider answered HTTP %d without an OAuth error", what, status)
        if transient:
            raise OAuthTransient(f"{what}: {NOT_OAUTH}", retry_after=_retry_after(resp, now))
        raise OAuthPermanent(f"{what}: {NOT_OAUTH}")
    message = f"{what}: {error}" + (f" ({description})" if description else "")
    if transient:
        raise OAuthTransient(message, retry_after=_retry_after(resp, now))
    raise OAuthPermanent(message, error=error)


def _not_oauth(what: str, detail: str) -> NoReturn:
    """The one caller-facing message for an answer that is not OAuth; the detail only in the log."""
    log.warning("%s: %s", what, detail)
    raise OAuthPermanent(f"{what}: {NOT_OAUTH}")


def _json(resp: egress.Answer, what: str) -> Mapping[str, Any]:
    """The answer's JSON object; anything else is not an OAuth answer."""
    body = resp.json()
    if not isinstance(body, dict):
        _not_oauth(what, f"the provider answered HTTP {resp.status} with something that is not a JSON object")
    return body


def _object(resp: egress.Answer) -> Mapping[str, Any]:
    """The answer's JSON object, or an empty one."""
    body = resp.json()
    return body if isinstance(body, dict) else {}


def _optional_str(body: Mapping[str, Any], key: str) -> str | None:
    value = body.get(key)
    return value if isinstance(value, str) and value else None


def _retry_after(resp: egress.Answer, now: datetime) -> float | None:
    value = resp.headers.get("Retry-After", "").strip()
    if value.isdecimal():
        return float(value)
    try:
        return max(0.0, (parsedate_to_datetime(value) - now).total_seconds())
    except (TypeError, ValueError):
        return None
