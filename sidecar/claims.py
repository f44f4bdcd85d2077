"""Claims held by other replicas, as this one has seen them."""

from __future__ import annotations

import threading
from datetime import datetime

from .clock import SYSTEM, Clock
from .models import Grant, rfc3339


class ClaimWatch:
    """How long another replica's claim on a grant is still to be respected.

    A claim is live while its `claim_until` lies ahead by our clock, and in any case for
    `claim_ttl` seconds of our own monotonic time from when we first saw it: our clock may run
    ahead of the holder's, and must not end its claim early. One lock guards what it has seen."""

    def __init__(self, owner: str, claim_ttl: float, clock: Clock = SYSTEM) -> None:
        self._owner, self._ttl, self._clock = owner, claim_ttl, clock
        self._lock = threading.Lock()
        # name -> ((version, owner, until) of a claim elsewhere, monotonic time we first saw it)
        self._seen: dict[str, tuple[tuple[int, str, str], float]] = {}

    def held_elsewhere(self, name: str, version: int, grant: Grant, now: datetime) -> float:
        """Seconds the claim on `grant` (read at `version`) is still another's (0: it is not)."""
        if not grant.claim_owner or grant.claim_owner == self._owner:
            self.forget(name)
            return 0.0
        by_clock = (grant.claim_until - now).total_seconds() if grant.claim_until else 0.0
        # Keyed by more than the version: versions start again at 1 after a delete and re-create.
        claim = (version, grant.claim_owner, rfc3339(grant.claim_until, precise=True))
        with self._lock:
            seen, first_seen = self._seen.get(name, (None, 0.0))
            if seen != claim:
                first_seen = self._clock.monotonic()
                self._seen[name] = (claim, first_seen)
        by_watch = self._ttl - (self._clock.monotonic() - first_seen)
        return max(by_clock, by_watch, 0.0)

    def forget(self, name: str) -> None:
        with self._lock:
            self._seen.pop(name, None)
