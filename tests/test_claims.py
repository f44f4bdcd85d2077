"""Claims held elsewhere, as one replica sees them: no server, on a clock the test moves."""

from datetime import timedelta

from sidecar.claims import ClaimWatch
from sidecar.models import Grant, TokenSet

from .helpers import SetClock


def claimed_by(clock: SetClock, owner: str, until: timedelta) -> Grant:
    tokens = TokenSet("at", "Bearer", clock.now() + timedelta(hours=1), (), "rt")
    return Grant("sheets", "mock", ("production",), tokens).claimed(owner, clock.now() + until)


def test_our_own_claim_and_no_claim_are_not_held_elsewhere():
    clock = SetClock()
    watch = ClaimWatch("me", claim_ttl=120, clock=clock)
    assert watch.held_elsewhere("sheets", 3, claimed_by(clock, "me", timedelta(minutes=2)), clock.now()) == 0.0
    unclaimed = Grant("sheets", "mock", ("production",), TokenSet("at", "Bearer", None, (), "rt"))
    assert watch.held_elsewhere("sheets", 3, unclaimed, clock.now()) == 0.0


def test_a_claim_elsewhere_is_respected_by_its_clock_and_for_its_lifetime_of_our_own_time():
    clock = SetClock()
    watch = ClaimWatch("me", claim_ttl=120, clock=clock)
    later = claimed_by(clock, "sibling", timedelta(minutes=5))
    assert watch.held_elsewhere("sheets", 3, later, clock.now()) == 300  # by the holder's claim_until
    # Our clock two minutes ahead of the holder's: its claim_until looks past, yet it is fresh to us.
    ahead = claimed_by(clock, "sibling", timedelta(minutes=1))
    clock.step(timedelta(minutes=3))
    assert watch.held_elsewhere("sheets", 4, ahead, clock.now()) == 120
    # Seen again unchanged: the watch runs on from the first sighting, it does not start over.
    clock.sleep(30)
    assert watch.held_elsewhere("sheets", 4, ahead, clock.now()) == 90
    clock.sleep(90)
    assert watch.held_elsewhere("sheets", 4, ahead, clock.now()) == 0.0  # lapsed: it may be taken over
    watch.forget("sheets")
    assert watch.held_elsewhere("sheets", 4, ahead, clock.now()) == 120
