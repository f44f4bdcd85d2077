"""Where a provider may send its secrets' tokens, as approved through the sidecar.

Changing a provider's client id, issuer or endpoint URLs redirects every grant that uses it:
the sidecar posts their refresh tokens (and the client secret) there with its own rights. So
such a change needs `update` on every grant of the provider (`may_repoint`), and once a save
through the sidecar passes that check, the sidecar records a digest of those fields in
`pins/<provider>`, a tree only its own token writes. A provider record changed any other way
(written into Vault directly) no longer matches its pin, and no token is sent for it until it
is saved again through the sidecar.
"""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import UTC, datetime
from typing import NoReturn

from .errors import Forbidden, NotFound, OAuthPermanent
from .models import Provider, rfc3339
from .store import Store

log = logging.getLogger(__name__)

# Provider fields that decide where a grant's tokens and the client's credentials are sent.
REPOINTING_FIELDS = (
    "client_id",
    "authorization_url",
    "token_url",
    "revocation_url",
    "device_authorization_url",
    "issuer",
)
CHANGED = "provider_changed"  # the OAuth-style error code of a provider that no longer matches its pin


def pin(provider: Provider) -> str:
    """A digest of the fields that decide where tokens go, as stored (before discovery fills in)."""
    record = provider.to_record()
    return hashlib.sha256(json.dumps([record.get(f) or None for f in REPOINTING_FIELDS]).encode()).hexdigest()


def may_repoint(caller: Store, own: Store, provider: Provider) -> None:
    """Before a provider is saved: a change of where it sends tokens needs update on each of its grants."""
    try:
        before = own.read("providers", provider.name).data
    except NotFound:
        return
    after = provider.to_record()
    if all((before.get(f) or None) == (after.get(f) or None) for f in REPOINTING_FIELDS):
        return
    users = own.grants_of(provider.name)
    denied = caller.lacking([caller.api_path(caller.path("grants", g)) for g in users], "update")
    if denied:
        raise Forbidden(
            f"changing where provider {provider.name!r} sends tokens needs update rights on every secret that "
            f"uses it; {len(denied)} of {len(users)} are not yours"
        )


def save(caller: Store, own: Store, provider: Provider) -> int:
    """Save a provider through the sidecar: the repoint check, the caller's own write, then the pin.
    Returns the provider's new version (1: created)."""
    may_repoint(caller, own, provider)
    version = caller.put_provider(provider)
    approve(own, provider)
    return version


def delete(caller: Store, own: Store, name: str) -> None:
    """Delete a provider (the caller's write; 409 while secrets use it), then its pin."""
    caller.delete_provider(name)
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
