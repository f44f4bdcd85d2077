"""Claims held elsewhere, as one replica sees them: no server."""

from datetime import UTC, datetime, timedelta

from sidecar.claims import ClaimWatch
from sidecar.models import Grant, TokenSet

T0 = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def claimed_by(owner: str, until: datetime) -> Grant:
    tokens = TokenSet("at", "Bearer", T0 + timedelta(hours=1), (), "rt")
    return Grant("sheets", "mock", ("production",), tokens).claimed(owner, until)


def test_our_own_claim_and_no_claim_are_not_held_elsewhere():
    watch = ClaimWatch("me", claim_ttl=120)
    assert watch.held_elsewhere("sheets", 3, claimed_by("me", T0 + timedelta(minutes=2)), T0) == 0.0
    unclaimed = Grant("sheets", "mock", ("production",), TokenSet("at", "Bearer", None, (), "rt"))
    assert watch.held_elsewhere("sheets", 3, unclaimed, T0) == 0.0


def test_a_claim_elsewhere_is_respected_by_its_clock_and_for_its_lifetime_of_our_own_time():
    watch = ClaimWatch("me", claim_ttl=120)
    later = claimed_by("sibling", T0 + timedelta(minutes=5))
    assert 299 <= watch.held_elsewhere("sheets", 3, later, T0) <= 300  # by the holder's claim_until
    # Our clock two minutes ahead of the holder's: its claim_until looks past, yet it is fresh to us.
    ahead = claimed_by("sibling", T0 + timedelta(minutes=1))
    assert 119 <= watch.held_elsewhere("sheets", 4, ahead, T0 + timedelta(minutes=3)) <= 120
    # Seen again unchanged: the watch runs on from the first sighting, it does not start over.
    assert watch.held_elsewhere("sheets", 4, ahead, T0 + timedelta(minutes=3)) <= 120
    watch.forget("sheets")
    assert 119 <= watch.held_elsewhere("sheets", 4, ahead, T0 + timedelta(minutes=3)) <= 120
