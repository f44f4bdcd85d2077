"""The due-queue: which grants a refresher looks at when, and the status it last saw of each.

It waits on monotonic deadlines: a wall clock stepped back (an NTP correction) would otherwise hold
every grant back by the step. Due times stay wall times in Vault, for the siblings. One lock guards
all its state, so any thread may call any method.
"""

from __future__ import annotations

import heapq
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta

from .clock import Clock


class DueQueue:
    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._heap: list[tuple[float, str]] = []
        self._due: dict[str, float] = {}  # the live deadline per name; older heap entries are skipped
        # name -> (the wall due time last scheduled, the earliest deadline found for it), kept after the
        # pop: a resync that finds the same due time after a step back must not move the deadline later.
        self._deadlines: dict[str, tuple[datetime, float]] = {}
        self._tick_skew = self._skew()  # wall minus monotonic seconds, as the last tick read it
        self._status: dict[str, str] = {}

    def _skew(self) -> float:
        return self._clock.now().timestamp() - self._clock.monotonic()

    def tick(self) -> None:
        """Note how the wall clock stands against the monotonic one at this tick (see `schedule`)."""
        skew = self._skew()
        with self._lock:
            self._tick_skew = skew

    def schedule(self, name: str, status: str, at: datetime | None) -> None:
        """Look at `name` at the wall time `at` (None: not on a timer), and remember its status."""
        skew = self._skew()
        with self._lock:
            self._status[name] = status
            if at is None:
                self._due.pop(name, None)
                self._deadlines.pop(name, None)
                return
            # A due time dated before a step and queued after it (a refresh writing to Vault meanwhile)
            # must not move by the step: of this skew and the last tick's, the earlier deadline.
            deadline = at.timestamp() - max(skew, self._tick_skew)
            known = self._deadlines.get(name)
            if known and known[0] == at:  # the earlier: late is an expired token, early one extra refresh
                deadline = min(deadline, known[1])
            self._deadlines[name] = (at, deadline)
            self._push(name, deadline)

    def retry_soon(self, name: str, seconds: float) -> None:
        """Look at `name` again in `seconds`, unless it is queued already."""
        with self._lock:
            if name not in self._due:
                self._push(name, self._clock.monotonic() + seconds)

    def _push(self, name: str, deadline: float) -> None:
        self._due[name] = deadline
        heapq.heappush(self._heap, (deadline, name))

    def is_due(self, name: str, due: datetime, now: datetime) -> bool:
        """Whether a grant due at `due` is due: by the wall clock, or by the deadline it was queued at."""
        if due <= now:
            return True
        with self._lock:
            known = self._deadlines.get(name)
        return known is not None and known[0] == due and self._clock.monotonic() >= known[1]

    def forget(self, names: Iterable[str]) -> None:
        with self._lock:
            for name in names:
                self._due.pop(name, None)
                self._deadlines.pop(name, None)
                self._status.pop(name, None)

    def known(self) -> set[str]:
        with self._lock:
            return set(self._status)

    def pop_due(self, deadline: float, busy: Callable[[str], bool]) -> list[str]:
        """The names due by `deadline` (monotonic) for which `busy` is false. A busy one leaves the
        queue too: the refresh in flight queues it again as it ends (or `retry_soon` does)."""
        names = []
        with self._lock:
            while self._heap and self._heap[0][0] <= deadline:
                at, name = heapq.heappop(self._heap)
                if self._due.get(name) == at:
                    del self._due[name]
                    if not busy(name):
                        names.append(name)
        return names

    def next_due(self) -> datetime | None:
        """When the first queued grant is due, as a wall time by the clock as it reads now."""
        with self._lock:
            first = min(self._due.values(), default=None)
        return None if first is None else self._clock.now() + timedelta(seconds=first - self._clock.monotonic())

    def statuses(self) -> Counter[str]:
        with self._lock:
            return Counter(self._status.values())
