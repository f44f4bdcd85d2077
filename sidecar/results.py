"""Writing a refresh's outcome: the grant, then each environment's view, in an order that never puts
older tokens back over newer ones, and without giving up on new tokens while Vault is unavailable."""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from typing import TypeVar

from .clock import Clock
from .errors import Conflict, NotFound, VaultUnavailable
from .models import Grant
from .store import Store

log = logging.getLogger(__name__)
T = TypeVar("T")

RETRY_WRITE_MAX_DELAY = 5.0
# Seconds a failure's status keeps trying to reach its views: the claim is released after them.
BRIEF_PATIENCE = 3.0
SHUTDOWN_GRACE = 25.0  # seconds in-flight result writes keep retrying once a stop was asked


class ResultWriter:
    def __init__(self, store: Store, stopping: Callable[[], float | None], clock: Clock) -> None:
        self._store, self._clock = store, clock
        self._stopping = stopping  # when a stop was asked (time.monotonic), or None

    def store_result(self, refreshed: Grant, version: int) -> int | None:
        """Write the new tokens, then the views; never give up on either while Vault is only
        unavailable. A conflict may be our own earlier write, whose answer was lost: then it is done.
        Returns the grant's new version, or None if another writer got there first."""
        try:
            stored: int | None = self._until_stored(
                partial(self._store.put_grant, refreshed, cas=version), refreshed.name
            )
        except Conflict:
            stored = self._until_stored(partial(self._already_stored, refreshed), refreshed.name)
            if stored is None:
                log.error("grant %s changed while this replica held its claim; its new tokens are dropped",
                          refreshed.name)  # fmt: skip
                return None
        self._write_views(refreshed, patient=True)
        return stored

    def views_while_claimed(self, grant: Grant) -> None:
        """A failure's status into the views, written before the grant write that releases the claim:
        while the claim is ours no newer tokens can be in them, so these cannot overwrite newer ones."""
        try:
            self._write_views(grant)
        except VaultUnavailable as exc:
            log.warning("could not show the status of %s in its views: %s", grant.name, exc.message)

    def _until_stored(self, call: Callable[[], T], name: str) -> T:
        """`call`, retried while Vault is unavailable, until SHUTDOWN_GRACE after a stop was asked."""
        delay = 0.2
        while True:
            try:
                return call()
            except VaultUnavailable:
                stopping = self._stopping()
                if stopping and self._clock.monotonic() - stopping > SHUTDOWN_GRACE:
                    log.error("gave up storing the refreshed tokens of %s: Vault stayed unavailable", name)
                    raise
                log.warning("storing the refreshed tokens of %s: Vault unavailable; retrying", name)
                self._clock.sleep(delay)
                delay = min(delay * 2, RETRY_WRITE_MAX_DELAY)

    def _already_stored(self, refreshed: Grant) -> int | None:
        """The grant's version if Vault holds exactly these new tokens (None otherwise)."""
        try:
            current = self._store.read("grants", refreshed.name)
        except NotFound:
            return None
        stored = Grant.from_record(refreshed.name, current.data)
        same = stored.tokens == refreshed.tokens and stored.last_refreshed_at == refreshed.last_refreshed_at
        return current.version if same else None

    def _write_views(self, grant: Grant, patient: bool = False) -> None:
        """Each environment's view of the grant. Once a write has failed, every later one (a retry, or
        the next environment's) is made only while the grant still holds these tokens: a newer
        refresh may have replaced them meanwhile, its own writer writes the views, and a late write
        of ours would put older tokens back. `patient`: retry as long as Vault is only unavailable
        (new tokens); else for BRIEF_PATIENCE (a failure's status, written under the claim)."""
        store = self._store if patient else self._store.until(self._clock.monotonic() + BRIEF_PATIENCE)
        delayed = False
        for env in grant.environments:
            if not delayed:
                try:
                    store.write_view(env, grant)
                    continue
                except VaultUnavailable:
                    delayed = True
            again = partial(_write_view_if_current, store, env, grant)
            if patient:
                self._until_stored(again, grant.name)
            else:
                again()


def _write_view_if_current(store: Store, env: str, grant: Grant) -> None:
    try:
        current = store.get_grant(grant.name)
    except NotFound:
        return
    if current.tokens == grant.tokens:
        store.write_view(env, grant)
    else:
        log.info("view of %s in %s left to the newer refresh that replaced its tokens", grant.name, env)
