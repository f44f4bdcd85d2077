"""Removing what has expired and would otherwise stay in Vault: logins in flight that nobody
finished, and UI sessions nobody logged out of."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from .errors import Invalid, NotFound
from .models import parse_rfc3339
from .store import Store, Tree

log = logging.getLogger(__name__)
SWEPT: tuple[Tree, ...] = ("pending", "sessions")
# Left a little longer than their end, so that a callback redeeming a code at the last moment
# still finds its login.
GRACE = timedelta(minutes=1)


def sweep(store: Store, now: datetime) -> int:
    """Delete every expired record of the swept trees; returns how many went."""
    removed = 0
    for tree in SWEPT:
        for name in store.names(tree):
            try:
                expires_at = parse_rfc3339(store.read(tree, name).data.get("expires_at"))
            except (NotFound, Invalid):
                continue
            except ValueError:  # not a date: nothing the sidecar wrote
                expires_at = None
            if expires_at is None or expires_at + GRACE <= now:
                try:
                    store.delete(tree, name)
                except NotFound:
                    continue
                removed += 1
    if removed:
        log.info("swept %d expired logins in flight and UI sessions", removed)
    return removed
