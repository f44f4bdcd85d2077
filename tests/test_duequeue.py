"""The due-queue alone, on a clock the test moves: no server, no sleeping."""

import time
from datetime import UTC, datetime, timedelta

from sidecar.duequeue import DueQueue


class Clock:
    """A wall clock the test sets; `time.monotonic` runs on as it does."""

    def __init__(self) -> None:
        self.now = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def test_grants_come_out_once_in_due_order_and_not_while_busy():
    clock = Clock()
    queue = DueQueue(clock)
    queue.schedule("late", "active", clock.now + timedelta(seconds=2))
    queue.schedule("early", "active", clock.now - timedelta(seconds=1))
    queue.schedule("busy", "active", clock.now - timedelta(seconds=5))
    assert queue.pop_due(time.monotonic(), busy=lambda name: name == "busy") == ["early"]
    assert queue.pop_due(time.monotonic() + 3, busy=lambda name: False) == ["late"]
    assert queue.pop_due(time.monotonic() + 3, busy=lambda name: False) == []  # each popped once


def test_a_later_schedule_replaces_the_earlier_one_and_retry_soon_never_adds_a_second():
    clock = Clock()
    queue = DueQueue(clock)
    queue.schedule("sheets", "active", clock.now - timedelta(seconds=1))
    queue.schedule("sheets", "retrying", clock.now + timedelta(hours=1))
    queue.retry_soon("sheets", 0)  # queued already: no second entry
    assert queue.pop_due(time.monotonic(), busy=lambda name: False) == []
    assert queue.statuses() == {"retrying": 1}
    queue.forget(["sheets"])
    assert queue.next_due() is None and queue.known() == set()


def test_a_wall_clock_stepped_back_does_not_hold_a_grant_back():
    clock = Clock()
    queue = DueQueue(clock)
    due = clock.now + timedelta(seconds=0.2)
    queue.schedule("sheets", "active", due)
    clock.now -= timedelta(hours=1)  # an NTP step back, after it was queued
    queue.tick()
    queue.schedule("sheets", "active", due)  # a resync finds the same due time: it keeps its deadline
    time.sleep(0.3)
    # By the wall clock it is still an hour away; by the deadline it was queued at, it is due.
    assert queue.is_due("sheets", due, clock.now)
    assert queue.pop_due(time.monotonic(), busy=lambda name: False) == ["sheets"]
    assert not queue.is_due("sheets", due + timedelta(seconds=30), clock.now)  # another due time: the wall decides
