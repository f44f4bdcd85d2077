"""The resync: how a replica learns what the others did. It lists the grants once per
SIDECAR_RESYNC_INTERVAL and reads at most a budget of them per tick; with each listing, once per
SWEEP_INTERVAL, it sweeps expired logins in flight and UI sessions."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable

from .clock import Clock
from .config import Settings
from .duequeue import DueQueue
from .errors import SidecarError
from .metrics import GRANTS
from .models import Status
from .store import Store
from .sweep import sweep

log = logging.getLogger(__name__)
SWEEP_INTERVAL = 300.0  # seconds between sweeps of expired logins in flight and UI sessions


class Resync:
    def __init__(
        self, store: Store, queue: DueQueue, settings: Settings, clock: Clock,
        learn: Callable[[str], None],
    ) -> None:  # fmt: skip
        self._store, self._queue, self._settings, self._clock = store, queue, settings, clock
        self._learn = learn  # reads one grant and queues it
        self._scan: deque[str] = deque()
        self._next_listing = 0.0
        self._next_sweep = 0.0

    def restart(self) -> None:
        """List again at the next step, whatever the interval says."""
        self._scan.clear()
        self._next_listing = 0.0

    def step(self, budget: int) -> None:
        """List the grants if a listing is due (and sweep with it), then read at most `budget` of them."""
        listing = not self._scan and self._clock.monotonic() >= self._next_listing
        if listing:
            listed = self._store.names("grants")
            self._next_listing = self._clock.monotonic() + self._settings.resync_interval
            self._queue.forget(self._queue.known() - set(listed))
            self._scan.extend(listed)
            self._sweep_when_due()  # with the listing, so an idle tick still sends nothing
        scanned = min(budget, len(self._scan))
        for _ in range(scanned):
            self._learn(self._scan.popleft())
        if listing or scanned:  # an idle tick costs no Vault request, and next to no time either
            counts = self._queue.statuses()
            for status in Status:
                GRANTS.labels(status).set(counts.get(status, 0))

    def _sweep_when_due(self) -> None:
        if self._clock.monotonic() < self._next_sweep:
            return
        self._next_sweep = self._clock.monotonic() + SWEEP_INTERVAL
        try:
            sweep(self._store, self._clock.now())
        except SidecarError as exc:
            log.warning("sweep of expired logins and sessions failed: %s", exc.message)
