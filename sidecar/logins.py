"""Connecting a secret: start a login, bind it to one browser, finish it at the callback.

Everything about a login in flight lives in Vault (`pending/<id>`), so any replica can
finish a login that another one started. Only a login's tokens, once redeemed, live in the
memory of the replica that redeemed them, until they are stored (`save_meanwhile`).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from concurrent import futures
from concurrent.futures import Future
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from functools import partial
from typing import Any
from urllib.parse import urlsplit

from . import approvals, oauth
from .config import Settings
from .errors import Conflict, Invalid, NotFound, OAuthPermanent, OAuthTransient, SidecarError, printable
from .grants import changed, connected, connection_of, may_store, provider_for, replacing, wanted_scopes
from .inputs import check_environments, check_name
from .models import Grant, GrantType, Identity, Provider, TokenSet, parse_rfc3339, rfc3339
from .store import Store, Versioned

log = logging.getLogger(__name__)
LOGIN_TTL = timedelta(minutes=10)
MAX_STATE_LENGTH = 512
MAX_CODE_LENGTH = 4096  # real codes are far shorter; anything longer is not sent on to the provider
# Redeemed tokens cannot be got again: from the callback's consumption of the login, they are kept
# (in memory) and their save retried through Vault unavailability this long, longer than an election.
LOGIN_KEEP = 120.0
LOGIN_WAIT = 5.0  # seconds the callback waits for the save before it answers "being saved"
# The consumed record says "being saved" this much longer than the save tries: its last call may
# outlast the deadline by a request timeout, and other replicas read the expiry by their own clocks.
SAVE_GRACE = 30.0
FORGET_PATIENCE = 2.0  # seconds a login that ends without tokens tries to delete its record
_LOGIN_ID = re.compile(r"[0-9a-f]{32}")  # what `login_id` makes
Audited = Callable[[], AbstractContextManager[None]]  # a block whose outcome goes to the audit trail


class LoginRefused(SidecarError):
    """The callback or login link is refused before any token request; shown as a 400 page."""

    code = "login_refused"
    status = 400


class LoginFailed(SidecarError):
    """The provider did not give us tokens for a valid callback."""

    code = "login_failed"
    status = 502


@dataclass(frozen=True)
class LoginLink:
    """A login just started: its id, the single-use link a person opens, and when it expires."""

    id: str
    url: str
    expires_at: datetime
    replaces: str | None = None  # what storing this login does to the secret it replaces (grants.replacing)


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
    client: oauth.Client,
    name: object,
    provider_name: object,
    environments: object = None,
    scopes: object = None,
    return_to_settings: bool = False,
    started_by: Identity | None = None,
    replace: bool = False,
) -> LoginLink:
    """Check that the caller may store this secret exactly as the callback will, validate the rest,
    then record the login in Vault with the sidecar's own token (no other policy may write a login
    in flight) and return the sidecar's link."""
    envs = check_environments(environments, settings.environments)
    name, drops, replaces = may_store(caller, name, envs, replace)
    provider = provider_for(caller, settings, client, provider_name, own)
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
            "seen": connection_of(replaces),  # what the starter may replace: `grants.connected` holds to it
            "expires_at": rfc3339(expires_at),
        },
        cas=0,
    )
    return LoginLink(lid, f"{settings.public_url}/login/{lid}", expires_at, replacing(replaces))


def open_link(store: Store, settings: Settings, client: oauth.Client, lid: str) -> tuple[str, str, int]:
    """Bind the login to the browser that opens the link first: (provider URL, cookie value, seconds left)."""
    try:
        pending = store.read("pending", lid)
    except (NotFound, Invalid):
        raise LoginRefused("This login link is unknown or has expired. Start the connection again.") from None
    _check_record(store, settings, client, pending.data)
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
    """How the login `lid` of secret `name` stands, read with the sidecar's own token. A login whose
    tokens are being stored is still WAITING: `secrets connect` takes any other state for an end."""
    pending = _pending(store, lid)
    if pending and pending.data.get("name") == name and not pending.data.get("consumed_at"):
        return LoginState.WAITING  # for its callback
    if _being_saved(pending, name):
        return LoginState.WAITING  # its code is being redeemed, or its tokens stored
    return LoginState.CONNECTED if _stored(store, name, lid) else LoginState.ENDED


def saving(store: Store, name: str, lid: str) -> Grant | None:
    """How the save of login `lid` for `name` stands, for the page that waits on it: None while its
    consumed record is there (the save is still going on), then the grant, once stored with this
    login's tokens. `NotFound` if neither: unknown, or ended without storing them. It reads only
    Vault, so any replica can answer; `VaultUnavailable` when Vault cannot tell now."""
    try:
        check_name(name, "name")  # the page shows it: only a real name, never arbitrary text
    except Invalid:
        raise NotFound("unknown login") from None
    if not _LOGIN_ID.fullmatch(lid):
        raise NotFound("unknown login")
    if _being_saved(_pending(store, lid), name):
        return None
    grant = _stored(store, name, lid)
    if grant is None:
        raise NotFound("unknown login")
    return grant


def _stored(store: Store, name: str, lid: str) -> Grant | None:
    """The grant `name`, if it holds the tokens of login `lid`."""
    try:
        grant = store.get_grant(name)
    except NotFound:
        return None
    return grant if grant.login_id == lid else None


def _pending(store: Store, lid: str) -> Versioned | None:
    try:
        return store.read("pending", lid)
    except (NotFound, Invalid):
        return None


def _being_saved(pending: Versioned | None, name: str) -> bool:
    """The login was consumed and its tokens may still be being stored: the record stays until the
    save ends, and expires LOGIN_KEEP + SAVE_GRACE after the consumption (a replica may die saving)."""
    if pending is None or pending.data.get("name") != name or not pending.data.get("consumed_at"):
        return False
    return _seconds_left(pending.data) > 0


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


@dataclass(frozen=True)
class Redeemed:
    """A login whose code the provider has redeemed: its tokens, in memory only (never in a repr, a
    log or a page) until `save` stores them, trying until `keep_until` (time.monotonic)."""

    lid: str
    name: str
    environments: tuple[str, ...]
    provider: Provider = field(repr=False)
    tokens: TokenSet = field(repr=False)
    keep_until: float
    seen: str | None  # the connection the starter was approved to replace (grants.connection_of)


def finish(
    store: Store,
    settings: Settings,
    client: oauth.Client,
    callback: Callback,
    args: Mapping[str, str],
    cookie_for: Callable[[str], str | None],
) -> Redeemed:
    """The callback: refuse anything doubtful before a token request, redeem the code once. The
    tokens are stored by `save` (see `save_meanwhile`), which deletes the login in flight after."""
    lid, state, pending = callback.lid, callback.state, callback.pending
    data = pending.data
    if _being_saved(pending, str(data.get("name", ""))):  # a reload, or a second tab, while it saves
        raise LoginRefused("This login was already received: its secret is being saved and will appear shortly.")
    if data.get("consumed_at") or not _same(str(data.get("state", "")), state):
        raise LoginRefused("This login was already finished. Start the connection again.")
    if _seconds_left(data) <= 0:
        raise LoginRefused("This login has expired. Start the connection again.")
    cookie = cookie_for(cookie_name(lid)) or ""
    if not data.get("binding") or not _same(_digest(cookie), str(data["binding"])):
        raise LoginRefused("This login was started in another browser. Finish it in the browser that opened the link.")
    provider = _check_record(store, settings, client, data)
    _check_issuer(data, args.get("iss"))
    keep_until = _consume(store, lid, pending.version, data)
    try:
        tokens = _redeem(settings, client, provider, data, args)
    except BaseException:
        # No tokens: the login ends here, and its page should not wait long on Vault.
        _forget(store.until(time.monotonic() + FORGET_PATIENCE), lid)
        raise
    envs = tuple(data["environments"])
    # A login recorded before `seen` was kept replaces whatever is there, as every login then did.
    seen = str(data["seen"]) if "seen" in data else None
    return Redeemed(lid, str(data["name"]), envs, provider, tokens, keep_until, seen)


def save(store: Store, settings: Settings, redeemed: Redeemed) -> Grant:
    """Store a redeemed login's grant and views, retrying while Vault is only unavailable, until
    `keep_until`; any other error (a denial, a conflict) ends it at once. Then the login in flight
    is deleted: while it is there, the waiting page says "being saved"."""
    patient = store.until(redeemed.keep_until)
    try:
        return connected(
            patient, settings, redeemed.name, redeemed.provider, redeemed.environments, redeemed.tokens,
            GrantType.AUTHORIZATION_CODE, login_id=redeemed.lid, seen=redeemed.seen,
        )  # fmt: skip
    finally:
        _forget(patient, redeemed.lid)


def _forget(store: Store, lid: str) -> None:
    """Delete a finished login in flight. One Vault will not delete now is left to the sweep: it
    expires after the save's deadline, and an error here must not hide the login's outcome."""
    try:
        store.delete("pending", lid)
    except SidecarError as exc:
        log.warning("a finished login in flight was left for the sweep to delete: %s", exc.message)


def save_meanwhile(store: Store, settings: Settings, redeemed: Redeemed, wait: float, audited: Audited) -> Grant | None:
    """`save` in a daemon thread of its own, so that a callback need not hold the browser through a
    Vault outage: the grant if stored within `wait` seconds (its error, if it failed by then), else
    None while the save goes on. The save runs inside `audited`, so its outcome is recorded once,
    when it ends. The tokens are only in that thread's memory: a process that stops loses them."""
    done: Future[Grant] = Future()

    def run() -> None:
        try:
            with audited():
                grant = save(store, settings, redeemed)
        except Exception as exc:  # to the waiting callback, or to `_report` once it has answered
            done.set_exception(exc)
        else:
            done.set_result(grant)

    threading.Thread(target=run, name="login-save", daemon=True).start()
    if not futures.wait([done], timeout=wait).done:
        done.add_done_callback(partial(_report, redeemed.name))
        return None
    return done.result()


def _report(name: str, done: Future[Grant]) -> None:
    """How a save that outlived its callback ended: nobody else is there to say so."""
    exc = done.exception()
    if exc is None:
        log.info("stored the tokens of a login for %s after its callback had answered", name)
    elif isinstance(exc, SidecarError):
        log.error("the tokens of a login for %s were not stored: %s", name, exc.message)
    else:
        log.error("the tokens of a login for %s were not stored", name, exc_info=exc)


def _check_record(store: Store, settings: Settings, client: oauth.Client, data: Mapping[str, Any]) -> Provider:
    """What was written in Vault is checked again before it is acted on: only the sidecar may write
    logins in flight, but a record that does not hold up is refused, never followed. Returns the
    login's provider, as it stands now."""
    try:
        name = check_name(data.get("name"), "name")
        envs = check_environments(data.get("environments"), settings.environments)
        provider = provider_for(store, settings, client, data.get("provider"), store)
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
    now = _grant_now(store, name)
    if any(env not in envs and env not in data.get("may_drop", ()) for env in (now.environments if now else ())):
        raise LoginRefused("The secret was changed since this login started. Start the connection again.")
    # Checked before the code is redeemed, so that no token is got only to be refused at the save.
    if "seen" in data and (refusal := changed(name, str(data["seen"]), now)):
        raise LoginRefused(f"This login cannot be stored: {refusal.message}.")
    return provider


def _grant_now(store: Store, name: str) -> Grant | None:
    try:
        return store.get_grant(name)
    except NotFound:
        return None


def _check_issuer(data: Mapping[str, Any], iss: str | None) -> None:
    """RFC 9207: the answer must come from the issuer the browser was sent to."""
    if iss is not None and data.get("issuer") and not _same(iss, str(data["issuer"])):
        raise LoginRefused("The answer came from a different issuer than the login was sent to.")
    if iss is None and data.get("iss_required"):
        raise LoginRefused("The provider always identifies itself (iss), but this answer does not.")


def _consume(store: Store, lid: str, version: int, data: Mapping[str, Any]) -> float:
    """Single use: of any number of concurrent callbacks, exactly one wins this check-and-set.
    The name stays, for `state` and `saving`, and a new expiry for the sweep: the record marks a
    save in progress until then. Returns when the save must end (time.monotonic), LOGIN_KEEP on."""
    now, keep_until = datetime.now(UTC), time.monotonic() + LOGIN_KEEP
    expires_at = rfc3339(now + timedelta(seconds=LOGIN_KEEP + SAVE_GRACE))
    kept = {
        "consumed_at": rfc3339(now),
        "consumed_by": secrets.token_hex(8),  # so that a retried write knows its own (`Store._write`)
        "name": data["name"],
        "expires_at": expires_at,
    }
    try:
        store.write("pending", lid, kept, cas=version)
    except Conflict:
        raise LoginRefused("This login was already finished. Start the connection again.") from None
    return keep_until


def _redeem(
    settings: Settings, client: oauth.Client, provider: Provider, data: Mapping[str, Any], args: Mapping[str, str]
) -> TokenSet:
    if "error" in args:
        detail = printable(args.get("error_description", ""))
        error = printable(args["error"]) or "an error"
        raise LoginRefused(f"The provider refused the login: {error}" + (f" ({detail})" if detail else ""))
    code = args.get("code")
    if not code or len(code) > MAX_CODE_LENGTH or not (code.isascii() and code.isprintable()):
        raise LoginRefused("The provider's answer carries no valid authorization code.")
    try:
        return client.exchange_code(
            provider, code, str(data["code_verifier"]) or None, settings.redirect_uri, tuple(data["scopes"])
        )
    except OAuthPermanent as exc:  # the code (the browser's input) is refused: a 400, like other bad input
        raise LoginRefused(f"The provider did not issue tokens: {exc.message}") from None
    except OAuthTransient as exc:
        raise LoginFailed(f"The provider did not issue tokens: {exc.message}") from None


def _same(a: str, b: str) -> bool:
    """Constant-time equality for any text (hmac.compare_digest refuses non-ASCII str)."""
    return hmac.compare_digest(a.encode(), b.encode())


def _seconds_left(data: Mapping[str, Any]) -> int:
    expires_at = parse_rfc3339(data.get("expires_at"))
    return int((expires_at - datetime.now(UTC)).total_seconds()) if expires_at else 0
