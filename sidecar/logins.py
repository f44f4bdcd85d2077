"""Connecting a secret: start a login, bind it to one browser, finish it at the callback.

Everything about a login in flight lives in Vault (`pending/<id>`), so any replica can
finish a login that another one started.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from . import approvals, oauth
from .config import Settings
from .errors import Conflict, Invalid, NotFound, OAuthPermanent, OAuthTransient, SidecarError
from .grants import connected, may_store, provider_for, wanted_scopes
from .models import Grant, Identity, Provider, check_environments, check_name, parse_rfc3339, rfc3339
from .store import Store, Versioned

log = logging.getLogger(__name__)
LOGIN_TTL = timedelta(minutes=10)
MAX_STATE_LENGTH = 512
MAX_CODE_LENGTH = 4096  # real codes are far shorter; anything longer is not sent on to the provider


class LoginRefused(SidecarError):
    """The callback or login link is refused before any token request; shown as a 400 page."""

    code = "login_refused"
    status = 400


class LoginFailed(SidecarError):
    """The provider did not give us tokens for a valid callback."""

    code = "login_failed"
    status = 502


@dataclass(frozen=True)
class Login:
    id: str
    url: str
    expires_at: datetime


def login_id(state: str) -> str:
    """The pending record's name: derived from the state, which itself never becomes a path."""
    return hashlib.sha256(state.encode()).hexdigest()[:32]


def cookie_name(lid: str) -> str:
    return f"oauth_sidecar_login_{lid}"


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def start(
    caller: Store,
    own: Store,
    settings: Settings,
    name: object,
    provider_name: object,
    environments: object = None,
    scopes: object = None,
    return_to_settings: bool = False,
    started_by: Identity | None = None,
) -> Login:
    """Check that the caller may store this secret exactly as the callback will, validate the rest,
    then record the login in Vault with the sidecar's own token (no other policy may write a login
    in flight) and return the sidecar's link."""
    envs = check_environments(environments, settings.environments)
    name, drops = may_store(caller, name, envs)
    provider = provider_for(caller, settings, provider_name, own)
    wanted = wanted_scopes(provider, scopes)
    request = oauth.authorization_request(provider, settings.redirect_uri, wanted)
    lid, expires_at = login_id(request.state), datetime.now(UTC) + LOGIN_TTL
    own.write(
        "pending",
        lid,
        {
            "name": name,
            "provider": provider.name,
            "environments": list(envs),
            "scopes": list(wanted),
            "state": request.state,
            "code_verifier": request.code_verifier or "",
            "authorization_endpoint": provider.authorization_url,
            "issuer": provider.issuer or "",
            "iss_required": provider.authorization_response_iss_parameter_supported,
            "redirect_to": request.url,
            "binding": "",
            "return_to_settings": return_to_settings,
            "started_by": started_by.public() if started_by else {},
            # What the caller was checked for: the provider as it was, and the views it may drop.
            "provider_pin": approvals.pin(provider),
            "may_drop": list(drops),
            "expires_at": rfc3339(expires_at),
        },
        cas=0,
    )
    return Login(lid, f"{settings.public_url}/login/{lid}", expires_at)


def open_link(store: Store, settings: Settings, lid: str) -> tuple[str, str, int]:
    """Bind the login to the browser that opens the link first: (provider URL, cookie value, seconds left)."""
    try:
        pending = store.read("pending", lid)
    except (NotFound, Invalid):
        raise LoginRefused("This login link is unknown or has expired. Start the connection again.") from None
    _check_record(store, settings, pending.data)
    left = _seconds_left(pending.data)
    if left <= 0 or pending.data.get("consumed_at"):
        raise LoginRefused("This login link has expired or was already used. Start the connection again.")
    if pending.data.get("binding"):
        raise LoginRefused("This login link was already opened in a browser. Start the connection again.")
    cookie = secrets.token_urlsafe(32)
    try:
        store.write("pending", lid, {**pending.data, "binding": _digest(cookie)}, cas=pending.version)
    except Conflict:
        raise LoginRefused("This login link was already opened in a browser. Start the connection again.") from None
    return pending.data["redirect_to"], cookie, left


class LoginState(StrEnum):
    WAITING = "waiting"
    CONNECTED = "connected"
    ENDED = "ended"  # without tokens: refused, failed or expired


def state(store: Store, name: str, lid: str) -> LoginState:
    """How the login `lid` of secret `name` stands, read with the sidecar's own token."""
    try:
        pending: Versioned | None = store.read("pending", lid)
    except (NotFound, Invalid):
        pending = None
    if pending and pending.data.get("name") == name:
        return LoginState.WAITING  # or consumed: its code is being redeemed
    try:
        if store.get_grant(name).login_id == lid:
            return LoginState.CONNECTED
    except NotFound:
        pass
    return LoginState.ENDED


@dataclass(frozen=True)
class Callback:
    """A callback matched to its login in flight, not yet checked further."""

    lid: str
    state: str = field(repr=False)
    pending: Versioned = field(repr=False)

    @property
    def to_settings(self) -> bool:
        """The login was started from the settings page, which wants the outcome as a banner."""
        return bool(self.pending.data.get("return_to_settings"))

    @property
    def started_by(self) -> Identity | None:
        """Who started the login, for the audit trail of its callback."""
        return Identity.from_public(self.pending.data.get("started_by"))


def match(store: Store, args: Mapping[str, str]) -> Callback:
    """Find the login a callback belongs to, by its state."""
    state = args.get("state", "")
    if not state or len(state) > MAX_STATE_LENGTH:
        raise LoginRefused("The provider's answer carries no valid state, so it cannot be matched to a login.")
    lid = login_id(state)
    try:
        return Callback(lid, state, store.read("pending", lid))
    except NotFound:
        raise LoginRefused("This login is unknown, expired or already finished. Start the connection again.") from None


def finish(
    store: Store,
    settings: Settings,
    callback: Callback,
    args: Mapping[str, str],
    cookie_for: Callable[[str], str | None],
) -> Grant:
    """The callback: refuse anything doubtful before a token request, redeem the code once, store the tokens."""
    lid, state, pending = callback.lid, callback.state, callback.pending
    data = pending.data
    if data.get("consumed_at") or not _same(str(data.get("state", "")), state):
        raise LoginRefused("This login was already finished. Start the connection again.")
    if _seconds_left(data) <= 0:
        raise LoginRefused("This login has expired. Start the connection again.")
    cookie = cookie_for(cookie_name(lid)) or ""
    if not data.get("binding") or not _same(_digest(cookie), str(data["binding"])):
        raise LoginRefused("This login was started in another browser. Finish it in the browser that opened the link.")
    provider = _check_record(store, settings, data)
    _check_issuer(data, args.get("iss"))
    _consume(store, lid, pending.version, data)
    try:
        return _redeem(store, settings, provider, data, args, lid)
    finally:
        store.delete("pending", lid)


def _check_record(store: Store, settings: Settings, data: Mapping[str, Any]) -> Provider:
    """What was written in Vault is checked again before it is acted on: only the sidecar may write
    logins in flight, but a record that does not hold up is refused, never followed. Returns the
    login's provider, as it stands now."""
    try:
        name = check_name(data.get("name"), "name")
        envs = check_environments(data.get("environments"), settings.environments)
        provider = provider_for(store, settings, data.get("provider"), store)
    except Invalid:
        raise LoginRefused("This login is not valid. Start the connection again.") from None
    except Conflict as exc:  # the provider was changed outside the sidecar: nothing goes there
        raise LoginRefused(exc.message) from None
    target, endpoint = urlsplit(str(data.get("redirect_to", ""))), urlsplit(provider.authorization_url)
    if (target.scheme, target.netloc, target.path) != (endpoint.scheme, endpoint.netloc, endpoint.path):
        log.warning("a login in flight would send the browser somewhere other than its provider; refused")
        raise LoginRefused("This login is not valid. Start the connection again.")
    # What the starter was checked for must still be what happens: the same provider, and no view
    # dropped that they were not allowed to drop (the secret may have been reconnected meanwhile).
    if data.get("provider_pin") != approvals.pin(provider):
        raise LoginRefused("The provider was changed since this login started. Start the connection again.")
    if any(env not in envs and env not in data.get("may_drop", ()) for env in _environments_now(store, name)):
        raise LoginRefused("The secret was changed since this login started. Start the connection again.")
    return provider


def _environments_now(store: Store, name: str) -> tuple[str, ...]:
    try:
        return store.get_grant(name).environments
    except NotFound:
        return ()


def _check_issuer(data: Mapping[str, Any], iss: str | None) -> None:
    """RFC 9207: the answer must come from the issuer the browser was sent to."""
    if iss is not None and data.get("issuer") and not _same(iss, str(data["issuer"])):
        raise LoginRefused("The answer came from a different issuer than the login was sent to.")
    if iss is None and data.get("iss_required"):
        raise LoginRefused("The provider always identifies itself (iss), but this answer does not.")


def _consume(store: Store, lid: str, version: int, data: Mapping[str, Any]) -> None:
    """Single use: of any number of concurrent callbacks, exactly one wins this check-and-set.
    The name and expiry stay, for `state` and the sweep."""
    kept = {"consumed_at": rfc3339(datetime.now(UTC)), "name": data["name"], "expires_at": data["expires_at"]}
    try:
        store.write("pending", lid, kept, cas=version)
    except Conflict:
        raise LoginRefused("This login was already finished. Start the connection again.") from None


def _redeem(
    store: Store, settings: Settings, provider: Provider, data: Mapping[str, Any], args: Mapping[str, str], lid: str
) -> Grant:
    if "error" in args:
        detail = _printable(args.get("error_description", ""))
        error = _printable(args["error"]) or "an error"
        raise LoginRefused(f"The provider refused the login: {error}" + (f" ({detail})" if detail else ""))
    code = args.get("code")
    if not code or len(code) > MAX_CODE_LENGTH or not (code.isascii() and code.isprintable()):
        raise LoginRefused("The provider's answer carries no valid authorization code.")
    try:
        tokens = oauth.exchange_code(
            provider, code, str(data["code_verifier"]) or None, settings.redirect_uri, tuple(data["scopes"])
        )
    except OAuthPermanent as exc:  # the code (the browser's input) is refused: a 400, like other bad input
        raise LoginRefused(f"The provider did not issue tokens: {exc.message}") from None
    except OAuthTransient as exc:
        raise LoginFailed(f"The provider did not issue tokens: {exc.message}") from None
    envs = tuple(data["environments"])
    return connected(store, settings, str(data["name"]), provider, envs, tokens, "authorization_code", login_id=lid)


def _same(a: str, b: str) -> bool:
    """Constant-time equality for any text (hmac.compare_digest refuses non-ASCII str)."""
    return hmac.compare_digest(a.encode(), b.encode())


def _printable(text: str, limit: int = 200) -> str:
    """Provider text fit for a page: printable characters only, bounded."""
    return "".join(c for c in text if c.isprintable())[:limit]


def _seconds_left(data: Mapping[str, Any]) -> int:
    expires_at = parse_rfc3339(data.get("expires_at"))
    return int((expires_at - datetime.now(UTC)).total_seconds()) if expires_at else 0
