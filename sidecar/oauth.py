"""The only OAuth code: authorization requests (state, PKCE S256), code exchange, revocation.

Requests to providers never follow redirects, so client credentials go nowhere but the
endpoint the operator registered. Nothing here logs a request or response body.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote_plus

import requests
from oauthlib.common import add_params_to_uri
from oauthlib.oauth2 import WebApplicationClient

from .errors import OAuthPermanent, OAuthTransient
from .models import SCOPE_SPLIT_RE, Provider, TokenSet, expiry_from

TIMEOUT = 10.0
REVOKE_ATTEMPTS = 3
_http = requests.Session()


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
        ("scope", " ".join(scopes)),
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


def exchange_code(
    provider: Provider, code: str, code_verifier: str | None, redirect_uri: str, scopes: tuple[str, ...]
) -> TokenSet:
    """Redeem an authorization code at the provider's token endpoint."""
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri}
    if code_verifier:
        form["code_verifier"] = code_verifier
    now = datetime.now(UTC)
    return _token_set(_post(provider, provider.token_url, form, "token request"), scopes, now, "token request")


def refresh(provider: Provider, refresh_token: str, scopes: tuple[str, ...]) -> TokenSet:
    """Redeem a refresh token. No scope is sent: RFC 6749 section 6 then grants the original scope."""
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
    now = datetime.now(UTC)
    return _token_set(_post(provider, provider.token_url, form, "refresh"), scopes, now, "refresh")


def revoke(provider: Provider, token: str, hint: str) -> bool:
    """RFC 7009 revocation; False when the provider has no revocation endpoint. A 503 is retried."""
    if not provider.revocation_url:
        return False
    for attempt in range(1, REVOKE_ATTEMPTS + 1):
        resp = _post(provider, provider.revocation_url, {"token": token, "token_type_hint": hint}, "revocation")
        if resp.status_code == 200:
            return True
        if resp.status_code == 503 and attempt < REVOKE_ATTEMPTS:
            time.sleep(min(_retry_after(resp) or attempt * 0.5, 5.0))
            continue
        _raise_for(resp, "revocation")
    raise AssertionError("unreachable")


def _post(provider: Provider, url: str, form: dict[str, str], what: str) -> requests.Response:
    """POST with the provider's client authentication; no redirects, bounded time."""
    auth = None
    if provider.token_auth_method == "client_secret_post":
        form = {**form, "client_id": provider.client_id, "client_secret": provider.client_secret}
    else:
        # RFC 6749 section 2.3.1: form-encode both parts before Basic encoding.
        auth = (quote_plus(provider.client_id), quote_plus(provider.client_secret))
    try:
        return _http.post(
            url, data=form, auth=auth, headers={"Accept": "application/json"}, timeout=TIMEOUT, allow_redirects=False
        )
    except requests.RequestException as exc:
        raise OAuthTransient(f"{what}: the provider could not be reached ({type(exc).__name__})") from None


def _token_set(resp: requests.Response, requested: tuple[str, ...], now: datetime, what: str) -> TokenSet:
    if resp.status_code != 200:
        _raise_for(resp, what)
    body = _json(resp)
    if "error" in body:
        _raise_for(resp, what)
    access_token, token_type = body.get("access_token"), body.get("token_type") or "Bearer"
    if not isinstance(access_token, str) or not access_token or not isinstance(token_type, str):
        raise OAuthPermanent(f"{what}: the provider's answer has no access token")
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


def _raise_for(resp: requests.Response, what: str) -> None:
    """Classify a failed answer: transient (retry later) or permanent."""
    status = resp.status_code
    if 300 <= status < 400:
        raise OAuthPermanent(f"{what}: the provider answered with a redirect, which is not followed")
    body = _json(resp, strict=False)
    error = _clean(body.get("error")) or f"HTTP {status}"
    description = _clean(body.get("error_description"))
    message = f"{what}: {error}" + (f" ({description})" if description else "")
    if status == 429 or status >= 500:
        raise OAuthTransient(message, retry_after=_retry_after(resp))
    raise OAuthPermanent(message, error=_clean(body.get("error")))


def _json(resp: requests.Response, strict: bool = True) -> Mapping[str, Any]:
    try:
        body = resp.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        return body
    if strict:
        raise OAuthPermanent(f"the provider's answer (HTTP {resp.status_code}) is not a JSON object")
    return {}


def _optional_str(body: Mapping[str, Any], key: str) -> str | None:
    value = body.get(key)
    return value if isinstance(value, str) and value else None


def _clean(value: object, limit: int = 200) -> str:
    """Provider text fit for a message: printable, bounded."""
    if not isinstance(value, str):
        return ""
    return "".join(c for c in value if c.isprintable())[:limit]


def _retry_after(resp: requests.Response) -> float | None:
    value = resp.headers.get("Retry-After", "").strip()
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds())
    except (TypeError, ValueError):
        return None
