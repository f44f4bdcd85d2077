from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from sidecar.models import (
    Grant,
    GrantType,
    Status,
    TokenSet,
    due_at,
    expiry_from,
)

NOW = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("expires_in", "expected"),
    [
        (3600, NOW + timedelta(hours=1)),
        ("3600", NOW + timedelta(hours=1)),
        (59.9, NOW + timedelta(seconds=59)),
        (None, None),
        (0, None),
        (-5, None),
        ("soon", None),
        (True, None),
        (10**12, None),
        (float("nan"), None),
    ],
)
def test_expiry_from_tolerates_any_expires_in(expires_in, expected):
    assert expiry_from(expires_in, NOW) == expected


def test_grant_views_carry_exactly_the_contract_fields_and_no_refresh_token():
    tokens = TokenSet("at-secret", "Bearer", NOW, ("openid", "email"), refresh_token="rt-secret", id_token="idt")
    grant = Grant("sheets", "google", ("production",), tokens, connected_at=NOW)
    assert grant.view() == {
        "access_token": "at-secret",
        "token_type": "Bearer",
        "expires_at": "2026-01-01T00:00:00Z",
        "scope": "openid email",
        "provider": "google",
        "status": "active",
    }
    assert Grant.from_record("sheets", grant.to_record()) == grant
    for shown in (repr(grant), repr(tokens), str(grant.public())):
        assert "at-secret" not in shown and "rt-secret" not in shown and "idt" not in shown


def grant_expiring(lifetime: float | None, **changes) -> Grant:
    expires = NOW + timedelta(seconds=lifetime) if lifetime is not None else None
    tokens = TokenSet("at", "Bearer", expires, ("openid",), refresh_token="rt")
    return replace(Grant("sheets", "google", ("production",), tokens, last_refreshed_at=NOW), **changes)


@pytest.mark.parametrize(
    ("lifetime", "margin", "lead"),
    [(3600, 300, 300), (3600, 0, 0), (400, 300, 200), (4, 300, 2)],
)
def test_due_at_is_expiry_less_the_smaller_of_margin_and_half_the_lifetime(lifetime, margin, lead):
    due = due_at(grant_expiring(lifetime), margin)
    latest = NOW + timedelta(seconds=lifetime - lead)
    assert latest - timedelta(seconds=lead * 0.1) <= due <= latest


def test_due_at_jitter_spreads_grants_made_together():
    dues = {due_at(replace(grant_expiring(3600), name=f"g{i}"), 300) for i in range(200)}
    assert len(dues) > 150
    assert min(dues) >= NOW + timedelta(seconds=3600 - 330) and max(dues) <= NOW + timedelta(seconds=3300)


def test_due_at_without_expiry_needs_a_maximum_lifetime():
    assert due_at(grant_expiring(None), 300) is None
    assert due_at(grant_expiring(None), 300, max_token_lifetime=3600) == due_at(grant_expiring(3600), 300)


def test_due_at_never_for_a_dead_grant_or_one_without_refresh_token():
    assert due_at(grant_expiring(3600, status="reauthorization_required"), 300) is None
    no_refresh = grant_expiring(3600)
    assert due_at(replace(no_refresh, tokens=replace(no_refresh.tokens, refresh_token=None)), 300) is None


def test_due_at_waits_for_the_backoff():
    later = NOW + timedelta(hours=2)
    assert due_at(grant_expiring(3600, status="retrying", next_attempt_at=later), 300) == later


# -- credentials: client secrets and private_key_jwt keys -------------------------------------------


def test_a_grant_record_reads_its_vocabularies_and_an_unknown_value_as_the_default():
    record = {"provider": "mock", "access_token": "at", "status": "retrying", "grant_type": "device_code"}
    grant = Grant.from_record("sheets", record)
    assert (grant.status, grant.grant_type) == (Status.RETRYING, GrantType.DEVICE_CODE)
    odd = Grant.from_record("sheets", {**record, "status": "bogus", "grant_type": ["a list"]})
    assert (odd.status, odd.grant_type) == (Status.ACTIVE, GrantType.AUTHORIZATION_CODE)
    assert odd.to_record()["status"] == "active"  # a plain string in Vault, as before


# -- a grant's state changes, without Vault ----------------------------------------------------------

T0 = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def claimed_grant(**fields) -> Grant:
    tokens = TokenSet("at-1", "Bearer", T0 + timedelta(hours=1), ("openid",), "rt-1")
    return Grant("sheets", "mock", ("production",), tokens, **fields).claimed("replica-a", T0 + timedelta(minutes=2))


def test_every_state_change_that_ends_a_refresh_releases_the_claim():
    grant = claimed_grant()
    assert (grant.claim_owner, grant.claim_until) == ("replica-a", T0 + timedelta(minutes=2))
    new = TokenSet("at-2", "Bearer", T0 + timedelta(hours=2), ("openid",), "rt-2")
    for ended in (grant.refreshed(new, T0, None), grant.failed("down", T0, T0), grant.needs_login("dead", T0)):
        assert (ended.claim_owner, ended.claim_until) == ("", None)


def test_a_refresh_keeps_the_old_refresh_token_when_the_provider_sends_none():
    renewed = claimed_grant().refreshed(TokenSet("at-2", "Bearer", None, ("openid",)), T0, None)
    assert (renewed.tokens.access_token, renewed.tokens.refresh_token) == ("at-2", "rt-1")


def test_failures_count_up_and_a_refresh_forgets_them():
    once = claimed_grant().failed("provider down", T0 + timedelta(seconds=5), T0)
    twice = once.failed("still down", T0 + timedelta(seconds=15), T0 + timedelta(seconds=5))
    assert (twice.status, twice.failures, twice.last_error) == (Status.RETRYING, 2, "still down")
    assert twice.failing_since == T0  # since the first failure, not the latest
    back = twice.refreshed(twice.tokens, T0 + timedelta(seconds=20), None)
    assert (back.status, back.failures, back.last_error, back.failing_since) == (Status.ACTIVE, 0, "", None)


def test_failing_since_stays_until_the_recovery_is_announced():
    dead = claimed_grant().needs_login("invalid_grant", T0).announced()
    assert (dead.status, dead.notified, dead.next_attempt_at) == (
        Status.REAUTHORIZATION_REQUIRED,
        "reauthorization_required",
        None,
    )
    back = dead.refreshed(dead.tokens, T0 + timedelta(minutes=5), None)
    assert back.status == Status.ACTIVE and back.failing_since == T0  # the recovery is still to be announced
    recovered = back.announced()
    assert (recovered.notified, recovered.failing_since) == ("", None)
