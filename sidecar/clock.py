"""Time, read through one object that is passed in, so that a test can set or step it.

Two clocks, for two jobs: `now` (the wall clock) for what is stored and compared across replicas
(expiries, claims, due times), `monotonic` for waits and deadlines within this process, which a
stepped wall clock (an NTP correction) must neither stall nor hurry.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime


class Clock:
    """The system's clocks. Subclass it to move time in a test."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


SYSTEM = Clock()
