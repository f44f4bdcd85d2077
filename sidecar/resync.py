"""The resync: how a replica learns what the others did. Each tick it reads the index's change
counter and the shards that moved (index.py); once per SIDECAR_RESYNC_INTERVAL it reads every shard
and lists the grants, forgets names no longer stored and reads, at most a budget a tick, the grants
the index lacks. Once per SWEEP_INTERVAL it sweeps expired logins in flight and UI sessions."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable

from .clock import Clock
from .config import Settings
from .duequeue import DueQueue
from .errors import SidecarError
from .index import Changes, Keeper
from .metrics import GRANTS
from .models import Status
from .store import Store
from .sweep import sweep

log = logging.getLogger(__name__)
SWEEP_INTERVAL = 300.0  # seconds between sweeps of expired logins in flight and UI sessions


class Resync:
    def __init__(
        self, store: Store, queue: DueQueue, settings: Settings, clock: Clock, index: Keeper,
        learn: Callable[[str], None], forget: Callable[[str], None],
    ) -> None:  # fmt: skip
        self._store, self._queue, self._settings, self._clock = store, queue, settings, clock
        self._index = index
        self._learn = learn  # reads one grant, queues it and notes its entry (or forgets it, gone)
        self._forget = forget
        self._scan: deque[str] = deque()
        self._next_listing = 0.0
        self._next_sweep = 0.0
        self._full = False

    def restart(self, full: bool = False) -> None:
        """List again at the next step, whatever the interval says; `full`: and read every grant."""
        self._scan.clear()
        self._next_listing = 0.0
        self._full = full

    def step(self, budget: int) -> None:
        """Apply what the index says changed; list and reload when due; read at most `budget` grants."""
        listing = not self._scan and self._clock.monotonic() >= self._next_listing
        mirror = self._index.mirror
        changed = self._apply(mirror.reload(self._store) if listing else mirror.sync(self._store))
        if listing:
            self._list()
        self._sweep_when_due()
        scanned = min(budget, len(self._scan))
        for _ in range(scanned):
            self._learn(self._scan.popleft())
        if changed or listing or scanned:  # an idle tick computes nothing
            counts = self._queue.statuses()
            for status in Status:
                GRANTS.labels(status).set(counts.get(status, 0))

    def _apply(self, changes: Changes) -> bool:
        for name, entry in changes.items():
            if entry is None:
                self._forget(name)
            else:
                self._queue.schedule(name, entry.status, entry.due_time)
        return bool(changes)

    def _list(self) -> None:
        """Queue for reading the grants the index lacks and the names it has that the listing does not
        (or, in a full pass, every grant). Each is read before it is dropped: one listing is not enough
        to empty the queue and the index."""
        listed = self._store.names("grants")
        self._next_listing = self._clock.monotonic() + self._settings.resync_interval
        full, self._full = self._full, False
        unlisted = (self._queue.known() | self._index.mirror.names()) - set(listed)
        self._scan.extend(name for name in listed if full or self._index.mirror.known(name) is None)
        self._scan.extend(sorted(unlisted))

    def _sweep_when_due(self) -> None:
        if self._clock.monotonic() < self._next_sweep:
            return
        self._next_sweep = self._clock.monotonic() + SWEEP_INTERVAL
        try:
            sweep(self._store, self._clock.now())
        except SidecarError as exc:
            log.warning("sweep of expired logins and sessions failed: %s", exc.message)
