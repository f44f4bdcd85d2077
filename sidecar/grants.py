"""Connected secrets: write them to every environment, report on them, revoke and delete them."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, NamedTuple

from . import approvals, index, oauth, providers
from .config import Settings
from .errors import Conflict, Exists, Forbidden, Invalid, NotFound, OAuthPermanent, OAuthTransient, SidecarError
from .inputs import SecretInput, SecretQuery, check_environments, check_name, parse_scopes
from .models import Grant, GrantType, Provider, TokenSet, refresh_due
from .store import Store

log = logging.getLogger(__name__)

STORE_ATTEMPTS = 3  # writes of a new connection that a refresh of the old one may overtake
# What a body may ask for without a browser (the API's and the CLI's `grant_type`).
WITHOUT_BROWSER = (GrantType.CLIENT_CREDENTIALS, GrantType.REFRESH_TOKEN)


class RevocationFailed(SidecarError):
    code = "revocation_failed"
    status = 502


class TokenRefused(SidecarError):
    """The provider gave no token for a secret being created; nothing was stored."""

    code = "token_refused"
    status = 502


def provider_for(store: Store, settings: Settings, client: oauth.Client, name: object, pins: Store) -> Provider:
    """A registered provider, as it stands now (its discovered endpoints re-read when due), once its
    stored endpoints are known to be the ones approved through the sidecar (`pins` reads that)."""
    try:
        provider = store.get_provider(check_name(name, "provider"))
    except NotFound:
        raise Invalid(f"unknown provider {name!r}", {"provider": "unknown provider"}) from None
    try:
        approvals.check(pins, provider)
    except OAuthPermanent as exc:
        raise Conflict(exc.message) from None
    return providers.current(provider, client, settings.discovery_interval)


class Storing(NamedTuple):
    """A secret the caller may store: its checked name, the environments whose views storing it
    drops, and the grant it replaces (None: a new name)."""

    name: str
    drops: tuple[str, ...]
    replaces: Grant | None


def may_store(store: Store, name: object, envs: tuple[str, ...], replace: bool = False) -> Storing:
    """The secret's name, once the caller is known to be allowed to store it, however it is stored
    (a browser login, a device login, client credentials, an import): `create` on what is new (the
    grant, or a view it lacks), `update` on what it replaces, `delete` on the views it drops. Vault
    cannot tell those apart for us: a login's tokens are written with the sidecar's own token.
    Checked before a provider is asked or anything is written, so that no token (least of all a
    spent refresh token) is got for nothing. A name already taken is refused (Exists) unless the
    request says it `replace`s. Storing needs `read` on the grant too, to tell what exists."""
    checked = check_name(name, "name")
    before = _existing(store, checked, replace)
    grant = store.api_path(store.path("grants", checked))
    had = before.environments if before else ()
    views = {env: store.api_path(store.view_path(env, checked)) for env in envs}
    updated = [grant] * bool(before) + [path for env, path in views.items() if env in had]
    created = [grant] * (not before) + [path for env, path in views.items() if env not in had]
    drops = tuple(env for env in had if env not in envs)
    dropped = [store.api_path(store.view_path(env, checked), metadata=True) for env in drops]
    if store.lacking(updated, "update") or store.lacking(created, "create") or store.lacking(dropped, "delete"):
        raise Forbidden(f"permission denied on secret {checked!r} or one of its environments")
    return Storing(checked, drops, before)


def connection_of(grant: Grant | None) -> str:
    """What one connection of a secret is known by ("" for none), to tell at the write whether the
    secret there is still the one the caller was approved to replace (a refresh keeps it)."""
    return grant.connection if grant else ""


def replacing(before: Grant | None) -> str | None:
    """What storing over `before` does to it, said to whoever asked for the replacement."""
    if before is None:
        return None
    return (
        f"replaces secret {before.name!r} (provider {before.provider}, environments "
        f"{', '.join(before.environments)}) once the new tokens are stored; its old tokens are not revoked "
        f"at {before.provider}: revoke them there if they must stop working"
    )


def _existing(store: Store, name: str, replace: bool) -> Grant | None:
    """The grant stored under `name`, if any; Exists when there is one and the request does not replace."""
    try:
        before = store.get_grant(name)
    except NotFound:
        return None
    if not replace:
        raise _exists(name)
    return before


def _exists(name: str) -> Exists:
    return Exists(f"secret {name!r} already exists: reconnect it to replace its tokens, or delete it first")


def changed(name: str, seen: str, now: Grant | None) -> SidecarError | None:
    """The refusal for storing over `now` when the caller was approved against `seen`, if they differ."""
    if connection_of(now) == seen:
        return None
    if now is not None and not seen:
        return _exists(name)
    return Conflict(f"secret {name!r} was replaced, created or deleted since this connection started; start again")


def may_delete(store: Store, settings: Settings, grant: Grant) -> None:
    """Delete removes the grant and every view it may have: the caller needs delete on each, asked
    before the provider revokes anything (a revoked token cannot be brought back)."""
    names = [store.path("grants", grant.name)]
    names += [store.view_path(env, grant.name) for env in dict.fromkeys((*settings.environments, *grant.environments))]
    if store.lacking([store.api_path(n, metadata=True) for n in names], "delete"):
        raise Forbidden(f"permission denied on secret {grant.name!r} or one of its environments")


def wanted_scopes(provider: Provider, scopes: object) -> tuple[str, ...]:
    wanted = provider.scopes if scopes is None else parse_scopes(scopes)
    if not wanted:
        raise Invalid("scopes must name at least one scope", {"scopes": "required"})
    return wanted


class Stored(NamedTuple):
    """A secret just stored, and what that did to the one it replaced (`replacing`)."""

    grant: Grant
    replaced: str | None


def create(store: Store, settings: Settings, client: oauth.Client, secret: SecretInput, own: Store) -> Stored:
    """A secret with no browser: client credentials, or a refresh token obtained elsewhere
    (redeemed at once, to prove it). Everything is checked before the provider is asked. `own`: the
    sidecar's own store (the CLI's is the operator's), which reads pins and writes the index."""
    if secret.grant_type not in WITHOUT_BROWSER:
        raise Invalid("grant_type must be client_credentials or refresh_token here", {"grant_type": "invalid"})
    envs = check_environments(secret.environments, settings.environments)
    name, _, before = may_store(store, secret.name, envs, secret.replace)  # the caller's token drops views
    provider = provider_for(store, settings, client, secret.provider, own)
    scopes = wanted_scopes(provider, secret.scopes)
    try:
        if secret.grant_type == GrantType.CLIENT_CREDENTIALS:
            tokens = client.client_credentials(provider, scopes)
        else:
            imported = (secret.refresh_token or "").strip()
            tokens = client.refresh(provider, imported, scopes)
            tokens = replace(tokens, refresh_token=tokens.refresh_token or imported)
    except (OAuthPermanent, OAuthTransient) as exc:
        raise TokenRefused(f"the provider did not issue a token: {exc.message}") from None
    grant_type = GrantType(secret.grant_type)
    grant = connected(store, settings, name, provider, envs, tokens, grant_type, seen=connection_of(before), own=own)
    return Stored(grant, replacing(before))


def device_login(
    store: Store,
    settings: Settings,
    client: oauth.Client,
    name: object,
    provider_name: object,
    environments: object,
    scopes: object,
    show: Callable[[oauth.DeviceAuthorization], None],
    own: Store,
    replace: bool = False,
) -> Stored:
    """RFC 8628: get a user code, `show` it, poll until the user approves, store the tokens (`own`:
    as `create`'s)."""
    envs = check_environments(environments, settings.environments)
    name, _, before = may_store(store, name, envs, replace)
    provider = provider_for(store, settings, client, provider_name, own)
    wanted = wanted_scopes(provider, scopes)
    try:
        authorization = client.device_authorization(provider, wanted)
        show(authorization)
        tokens = client.device_token(provider, authorization, wanted)
    except (OAuthPermanent, OAuthTransient) as exc:
        raise TokenRefused(f"the provider did not issue a token: {exc.message}") from None
    grant = connected(
        store, settings, name, provider, envs, tokens, GrantType.DEVICE_CODE, seen=connection_of(before), own=own
    )
    return Stored(grant, replacing(before))


def connected(
    store: Store,
    settings: Settings,
    name: str,
    provider: Provider,
    envs: tuple[str, ...],
    tokens: TokenSet,
    grant_type: GrantType,
    login_id: str = "",
    seen: str | None = "",
    own: Store | None = None,
) -> Grant:
    """Store tokens just obtained as a fresh, active grant, over the connection the caller was
    approved against (`seen`, `connection_of`; "": none, a create), written with check-and-set so
    that nothing else is overwritten; None skips the check (a login recorded before it was kept).
    If it replaces a grant whose failure was announced, the refresher announces the recovery (a
    callback never waits for a webhook). Each Vault call rides out unavailability as the store
    allows (`Store.until`). The index entry is written with `own` (the sidecar's own store; None:
    `store`): a caller may store some secrets without rights on the whole index."""
    own = own or store
    for _ in range(STORE_ATTEMPTS):
        before, version = _current(store, name)
        if seen is not None and (refusal := changed(name, seen, before)):
            raise refusal
        announced = before.notified if before else ""
        now = datetime.now(UTC)
        grant = Grant(
            name=name,
            provider=provider.name,
            environments=envs,
            tokens=tokens,
            login_id=login_id,
            connected_at=now,
            last_refreshed_at=now,
            grant_type=grant_type,
            notified=announced,
            failing_since=before.failing_since if before and announced else None,
        )
        try:
            index.publish(own, name, index.Entry.ahead(grant))  # never later than the grant: see index.py
            stored = store.put_grant(grant, cas=None if seen is None else version)
            break
        except Conflict:  # a refresh of the same connection wrote meanwhile: look again
            continue
    else:
        raise Conflict(f"secret {name!r} kept changing while it was being stored; start again")
    due = now if announced else refresh_due(grant, provider, settings.refresh_margin)  # a recovery to announce
    _publish(own, name, index.Entry.of(grant, due, stored))
    for env in grant.environments:
        store.write_view(env, grant)
    for env in before.environments if before else ():
        if env not in grant.environments:
            store.delete_view(env, grant.name)
    return grant


def _current(store: Store, name: str) -> tuple[Grant | None, int]:
    """The grant stored under `name` and its version (None, 0: none)."""
    try:
        stored = store.read("grants", name)
    except NotFound:
        return None, 0
    return Grant.from_record(name, stored.data), stored.version


class Page(NamedTuple):
    """A page of secrets and the cursor of the next (None: the last page). On the first page,
    `counts`: how many secrets each status has among all that the filters other than `status` match."""

    secrets: list[dict[str, Any]]
    next: str | None
    counts: dict[str, int] | None


def page(store: Store, settings: Settings, query: SecretQuery, mirror: index.Mirror) -> Page:
    """The secrets after `query.cursor` in name order that match its filters, at most `query.limit`.
    The index (`mirror`, brought up to date with the caller's token: one read when it has not moved)
    picks the names and counts them; each secret shown is read, with the caller's token, as it is."""
    if query.environment is not None and query.environment not in settings.environments:
        raise Invalid(
            f"environment must be one of: {', '.join(settings.environments)}", {"environment": "unknown environment"}
        )
    mirror.sync(store)
    first = query.cursor is None
    filtered = bool(query.q or query.provider or query.environment)
    counting = first and filtered  # unfiltered counts the mirror keeps as it goes
    counts: Counter[str] = Counter()
    names: list[str] = []
    more = False
    needle = query.q.lower() if query.q else None
    for name, entry in mirror.items(after=query.cursor):
        if (needle and needle not in name.lower()) or query.provider not in (None, entry.provider):
            continue
        if query.environment is not None and query.environment not in entry.environments:
            continue
        counts[entry.status] += 1
        if query.status not in (None, entry.status):
            continue
        if len(names) < query.limit:
            names.append(name)
            continue
        more = True
        if not counting:
            break
    shown = []
    for name in names:
        try:
            shown.append(store.get_grant(name).public())
        except NotFound:  # deleted since the index was read
            continue
    return Page(shown, names[-1] if more else None, (dict(counts) if filtered else mirror.counts()) if first else None)


def access_token(store: Store, settings: Settings, name: str, environment: str | None) -> dict[str, Any]:
    """The current access token of one environment, read with the caller's own token."""
    env = environment or (settings.environments[0] if len(settings.environments) == 1 else "")
    if env not in settings.environments:
        raise Invalid(
            f"environment must be one of: {', '.join(settings.environments)}", {"environment": "unknown environment"}
        )
    view = store.read_view(env, check_name(name, "secret"))
    return {"name": name, "environment": env, **view}


def delete(store: Store, settings: Settings, client: oauth.Client, name: str, own: Store, force: bool = False) -> bool:
    """Revoke at the provider where it can (unless `force` and that fails), then delete everything
    (`own`: as `create`'s).

    Returns whether the provider confirmed a revocation.
    """
    grant = store.get_grant(name)
    may_delete(store, settings, grant)
    revoked = False
    try:
        stored = store.get_provider(grant.provider)
        approvals.check(own, stored)
        provider = providers.current(stored, client, settings.discovery_interval)
        token, hint = (
            (grant.tokens.refresh_token, "refresh_token")
            if grant.tokens.refresh_token
            else (grant.tokens.access_token, "access_token")
        )
        revoked = client.revoke(provider, token, hint)
    except (OAuthPermanent, OAuthTransient, NotFound) as exc:
        if not force:
            raise RevocationFailed(
                f"revocation failed, so nothing was deleted: {exc.message}; delete with force to skip revocation"
            ) from None
    for env in set(settings.environments) | set(grant.environments):
        store.delete_view(env, name)
    store.delete("grants", name)
    _publish(own, name, None)
    return revoked


def _publish(store: Store, name: str, entry: index.Entry | None) -> None:
    """The index entry once the grant is written. If it is lost, the entry published ahead (or a
    replica that finds the grant gone) makes the replicas read the grant and repair it."""
    try:
        index.publish(store, name, entry)
    except SidecarError as exc:
        log.warning("could not write the index entry of %s: %s; the replicas repair it", name, exc.message)
