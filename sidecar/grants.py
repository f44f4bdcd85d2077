"""Connected secrets: write them to every environment, report on them, revoke and delete them."""

from __future__ import annotations

from functools import partial
from typing import Any

from . import oauth
from .config import Settings
from .errors import Invalid, NotFound, OAuthPermanent, OAuthTransient, SidecarError
from .models import Grant, check_name
from .store import Store, retrying


class RevocationFailed(SidecarError):
    code = "revocation_failed"
    status = 502


def save_connected(store: Store, grant: Grant) -> None:
    """Write the grant, then its views; environments it no longer has lose theirs."""
    try:
        before = store.get_grant(grant.name).environments
    except NotFound:
        before = ()
    retrying(partial(store.put_grant, grant))
    for env in grant.environments:
        retrying(partial(store.write_view, env, grant))
    for env in before:
        if env not in grant.environments:
            store.delete_view(env, grant.name)


def status_all(store: Store) -> list[dict[str, Any]]:
    found = []
    for name in store.names("grants"):
        try:
            found.append(store.get_grant(name).public())
        except NotFound:  # deleted between the list and the read
            continue
    return found


def access_token(store: Store, settings: Settings, name: str, environment: str | None) -> dict[str, Any]:
    """The current access token of one environment, read with the caller's own token."""
    env = environment or (settings.environments[0] if len(settings.environments) == 1 else "")
    if env not in settings.environments:
        raise Invalid(
            f"environment must be one of: {', '.join(settings.environments)}", {"environment": "unknown environment"}
        )
    view = store.read_view(env, check_name(name, "secret"))
    return {"name": name, "environment": env, **view}


def delete(store: Store, settings: Settings, name: str, force: bool = False) -> bool:
    """Revoke at the provider where it can (unless `force` and that fails), then delete everything.

    Returns whether the provider confirmed a revocation.
    """
    grant = store.get_grant(name)
    revoked = False
    try:
        provider = store.get_provider(grant.provider)
        token, hint = (
            (grant.tokens.refresh_token, "refresh_token")
            if grant.tokens.refresh_token
            else (grant.tokens.access_token, "access_token")
        )
        revoked = oauth.revoke(provider, token, hint)
    except (OAuthPermanent, OAuthTransient, NotFound) as exc:
        if not force:
            raise RevocationFailed(
                f"revocation failed, so nothing was deleted: {exc.message}; delete with force to skip revocation"
            ) from None
    for env in set(settings.environments) | set(grant.environments):
        store.delete_view(env, name)
    store.delete("grants", name)
    return revoked
