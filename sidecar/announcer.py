"""Announcing a grant's status by webhook, and recording on the grant what was delivered."""

from __future__ import annotations

import logging
from datetime import datetime

from .clock import Clock
from .errors import Conflict, VaultUnavailable
from .models import Grant
from .notify import Event, Notifier
from .store import Store

log = logging.getLogger(__name__)
# Announcements due whenever they are owed; `retrying` is announced by the failed refresh itself.
ANNOUNCE_NOW = frozenset({Event.REAUTHORIZATION_REQUIRED, Event.RECOVERED})


class Announcer:
    def __init__(self, store: Store, notifier: Notifier, clock: Clock) -> None:
        self._store, self._notifier, self._clock = store, notifier, clock

    def owed_now(self, grant: Grant, now: datetime | None = None) -> bool:
        """An announcement is owed that waits for no refresh (a dead grant, or a recovery)."""
        return self._notifier.owed(grant, now or self._clock.now()) in ANNOUNCE_NOW

    def with_announcement(self, grant: Grant) -> Grant:
        """The grant, marked as announced if a notification was owed and delivered."""
        event = self._notifier.owed(grant, self._clock.now())
        if not (event and self._notifier.send(event, grant)):
            return grant
        return grant.announced()

    def record(self, grant: Grant, version: int) -> Grant:
        """Deliver an owed announcement about the grant stored at `version`, and record it (CAS)."""
        announced = self.with_announcement(grant)
        if announced is not grant:
            try:
                self._store.put_grant(announced, cas=version)
            except (Conflict, VaultUnavailable) as exc:
                log.warning("could not record the announcement about %s: %s", grant.name, exc.message)
        return announced
