"""The due-queue alone, on a clock the test moves: no server, no sleeping."""

from datetime import timedelta

from sidecar.duequeue import DueQueue

from .helpers import SetClock


def test_grants_come_out_once_in_due_order_and_not_while_busy():
    clock = SetClock()
    queue = DueQueue(clock)
    queue.schedule("late", "active", clock.now() + timedelta(seconds=2))
    queue.schedule("early", "active", clock.now() - timedelta(seconds=1))
    queue.schedule("busy", "active", clock.now() - timedelta(seconds=5))
    assert queue.pop_due(clock.monotonic(), busy=lambda name: name == "busy") == ["early"]
    assert queue.next_due() == clock.now() + timedelta(seconds=2)  # the busy one left the queue too
    queue.retry_soon("busy", 1)  # as its refresh in flight ends in an error: queued again
    assert queue.pop_due(clock.monotonic() + 1, busy=lambda name: False) == ["busy"]
    clock.sleep(2)
    assert queue.pop_due(clock.monotonic(), busy=lambda name: False) == ["late"]
    assert queue.pop_due(clock.monotonic() + 3, busy=lambda name: False) == []  # each popped once


def test_a_later_schedule_replaces_the_earlier_one_and_retry_soon_never_adds_a_second():
    clock = SetClock()
    queue = DueQueue(clock)
    queue.schedule("sheets", "active", clock.now() - timedelta(seconds=1))
    queue.schedule("sheets", "retrying", clock.now() + timedelta(hours=1))
    queue.retry_soon("sheets", 0)  # queued already: no second entry
    assert queue.pop_due(clock.monotonic(), busy=lambda name: False) == []
    assert queue.statuses() == {"retrying": 1}
    queue.forget(["sheets"])
    assert queue.next_due() is None and queue.known() == set()


def test_a_wall_clock_stepped_back_does_not_hold_a_grant_back():
    clock = SetClock()
    queue = DueQueue(clock)
    due = clock.now() + timedelta(seconds=0.2)
    queue.schedule("sheets", "active", due)
    clock.step(-timedelta(hours=1))  # an NTP step back, after it was queued
    queue.tick()
    queue.schedule("sheets", "active", due)  # a resync finds the same due time: it keeps its deadline
    clock.sleep(0.3)
    # By the wall clock it is still an hour away; by the deadline it was queued at, it is due.
    assert queue.is_due("sheets", due, clock.now())
    assert queue.pop_due(clock.monotonic(), busy=lambda name: False) == ["sheets"]
    assert not queue.is_due("sheets", due + timedelta(seconds=30), clock.now())  # another due time: the wall decides


def test_a_queued_deadline_holds_through_a_wall_clock_step_forward():
    clock = SetClock()
    queue = DueQueue(clock)
    queue.schedule("sheets", "active", clock.now() + timedelta(hours=2))
    clock.step(timedelta(hours=1))
    queue.tick()
    assert queue.pop_due(clock.monotonic(), busy=lambda name: False) == []  # no storm at the step
    clock.sleep(7199)
    assert queue.pop_due(clock.monotonic(), busy=lambda name: False) == []
    clock.sleep(1)
    assert queue.pop_due(clock.monotonic(), busy=lambda name: False) == ["sheets"]
