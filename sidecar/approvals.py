"""Where a provider may send its secrets' tokens, and how its logins are protected, as approved
through the sidecar.

Changing a provider's client id, issuer or endpoint URLs redirects every grant that uses it:
the sidecar posts their refresh tokens (and the client secret) there with its own rights; turning
off PKCE or the `iss` check weakens every login. So such a change needs `update` on every grant of
the provider (`may_repoint`), and once a save through the sidecar passes that check, the sidecar
records a digest of those fields in `pins/<provider>`, a tree only its own token writes. A
provider record changed any other way (written into Vault directly, deleted and made again) no
longer matches its pin: no token is sent for it until it is saved again through the sidecar,
and that save is measured against the pin, not against the record as it now stands.
"""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import UTC, datetime
from typing import NoReturn

from . import index
from .errors import Conflict, Forbidden, Invalid, NotFound, OAuthPermanent
from .inputs import check_name
from .models import Provider, rfc3339
from .store import Store, provider_exists

log = logging.getLogger(__name__)

# Provider fields that decide where a grant's tokens and the client's credentials are sent, and
# how logins are protected; `discovered_at` counts only as whether the endpoints follow the issuer.
PINNED_FIELDS = (
    "client_id",
    "authorization_url",
    "token_url",
    "revocation_url",
    "device_authorization_url",
    "issuer",
    "pkce",
    "authorization_response_iss_parameter_supported",
)
CHANGED = "provider_changed"  # the OAuth-style error code of a provider that no longer matches its pin


def pin(provider: Provider) -> str:
    """A digest of the pinned fields, as stored (before discovery fills in)."""
    record = provider.to_record()
    pinned = [record.get(f) or None for f in PINNED_FIELDS] + [bool(record.get("discovered_at"))]
    return hashlib.sha256(json.dumps(pinned).encode()).hexdigest()


def may_write(caller: Store, name: str) -> None:
    """Asked before a provider is even built: building may fetch its issuer's metadata, which only
    whoever may write the provider may make the sidecar do."""
    if not caller.may("providers", check_name(name, "provider"), "create", "update"):
        raise Forbidden(f"permission denied on provider {name!r}")


def may_repoint(caller: Store, own: Store, provider: Provider) -> None:
    """Before a provider is saved: a change of the pinned fields needs update on each of its grants.
    Measured against the approved pin (else, for a provider never pinned, the stored record)."""
    approved = _approved(own, provider.name)
    unchanged = pin(provider) == approved if approved is not None else _same_as_stored(own, provider)
    if unchanged:
        return
    users = index.users_of(own, provider.name)
    denied = caller.lacking([caller.api_path(caller.path("grants", g)) for g in users], "update")
    if denied:
        raise Forbidden(
            f"changing where provider {provider.name!r} sends tokens, or how it protects logins, needs update "
            f"rights on every secret that uses it; {len(denied)} of {len(users)} are not yours"
        )


def save(caller: Store, own: Store, provider: Provider, create: bool = False) -> int:
    """Save a provider through the sidecar: the repoint check, the caller's own write, then the pin.
    With `create`, only a new name is saved (Exists otherwise, said before any other refusal).
    Returns the provider's new version (1: created)."""
    if create and _stored(own, provider.name):
        raise provider_exists(provider.name)
    may_repoint(caller, own, provider)
    version = caller.put_provider(provider, create)
    approve(own, provider)
    return version


def delete(caller: Store, own: Store, name: str) -> None:
    """Delete a provider (the caller's write; 409 while secrets use it), then its pin."""
    caller.read("providers", name)  # 404 for a provider that does not exist
    users = index.users_of(own, name)
    if users:
        raise Conflict(f"provider {name!r} is used by secret(s) {', '.join(users[:10])}; delete them first")
    caller.delete("providers", name)
    own.delete("pins", name)


def approve(own: Store, provider: Provider) -> None:
    """Record, with the sidecar's own token, where this provider may send tokens."""
    own.write("pins", provider.name, {"pin": pin(provider), "approved_at": rfc3339(datetime.now(UTC))})


def check(pins: Store, provider: Provider) -> None:
    """Refuse (OAuthPermanent `provider_changed`) a stored provider that no longer matches its pin.
    One never saved through the sidecar has no pin yet and passes; the refresher pins it when it
    first loads it (`check_or_approve`)."""
    approved = _approved(pins, provider.name)
    if approved is not None and approved != pin(provider):
        _refuse(provider)


def check_or_approve(own: Store, provider: Provider) -> None:
    """`check`, pinning a provider that has no pin yet (one from before pins, or made by hand)."""
    approved = _approved(own, provider.name)
    if approved is None:
        approve(own, provider)
    elif approved != pin(provider):
        _refuse(provider)


def _stored(own: Store, name: str) -> bool:
    try:
        own.read("providers", name)
    except NotFound:
        return False
    return True


def _same_as_stored(own: Store, provider: Provider) -> bool:
    """No pinned field differs from the stored record (True for a provider not stored yet)."""
    try:
        before = own.get_provider(provider.name)
    except NotFound:
        return True
    except Invalid:  # a record that no longer validates: treat any save as a change
        return False
    return pin(before) == pin(provider)


def _approved(pins: Store, name: str) -> str | None:
    try:
        return str(pins.read("pins", name).data.get("pin") or "")
    except NotFound:
        return None


def _refuse(provider: Provider) -> NoReturn:
    log.warning("provider %s was changed outside the sidecar; no token is sent for it", provider.name)
    raise OAuthPermanent(
        f"provider {provider.name!r} was changed outside the sidecar (its client id, issuer or an endpoint "
        "URL); no token is sent for it until it is saved again through the sidecar",
        error=CHANGED,
    )
