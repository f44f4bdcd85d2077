"""The provider misbehaving under the refresher, for real: down for longer than a token lives, rate
limiting with Retry-After, an HTML page instead of tokens, an answer cut short after the provider
acted, odd `expires_in` values, and a refresh that does not move the expiry. The faults come from a
FaultProxy in front of the test OAuth server (or from the server itself); each test checks what a
user would notice: the grant, the views apps read, what the provider saw, and the log."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from itertools import pairwise

import pytest

from sidecar import providers
from sidecar.models import Grant, parse_rfc3339
from sidecar.refresher import Refresher
from sidecar.store import Store

from .faults import FaultProxy
from .helpers import fast_settings, grant_record, provider_client, running, seed_grants, sidecar_log, views, wait_for

TOKEN = r"^/token$"
HTML = b"<!doctype html><html><head><title>Sign in</title></head><body><h1>Sign in</h1></body></html>"


@pytest.fixture
def refresher(vault, tokens, root) -> Iterator[Refresher]:
    settings = fast_settings(vault, tokens.sidecar)
    instance = Refresher(settings, Store(settings, tokens.sidecar))
    yield instance
    instance.shutdown()


@pytest.fixture
def proxy(store, oauth, fault_proxies) -> FaultProxy:
    """The test provider registered as `mock`, its token endpoint behind a FaultProxy."""
    proxy = fault_proxies(oauth.issuer)
    store.put_provider(providers.build("mock", oauth.registration(token_url=f"{proxy.addr}/token"), provider_client()))
    return proxy


@pytest.fixture(autouse=True)
def debug_log(caplog) -> None:
    caplog.set_level(logging.DEBUG)


def redemptions(oauth, refresh_token: str | None = None) -> list[dict]:
    """The refresh requests that reached the provider (of `refresh_token`, if given)."""
    return [
        e
        for e in oauth.log()["token"]
        if e["grant_type"] == "refresh_token" and refresh_token in (None, e["refresh_token"])
    ]


def at(entry: dict) -> datetime:
    return datetime.fromtimestamp(entry["at"] / 1000, UTC)


def refreshed(root, seeded: Grant):
    def check():
        record = grant_record(root)
        return record if record["status"] == "active" and record["access_token"] != seeded.tokens.access_token else None

    return check


def retrying_with_old_token(root, seeded: Grant) -> dict:
    """The grant is `retrying`, and it and both views still hold the seeded tokens."""
    record = grant_record(root)
    assert record["status"] == "retrying" and record["failures"] >= 1
    assert record["access_token"] == seeded.tokens.access_token
    assert record["refresh_token"] == seeded.tokens.refresh_token
    for view in views(root).values():
        assert view["access_token"] == seeded.tokens.access_token and view["status"] == "retrying"
    return record


def assert_served(root, oauth) -> dict:
    """Active, both views serve the grant's access token, and the provider accepts it."""
    record = grant_record(root)
    shown = views(root)
    assert record["status"] == "active" and record["failures"] == 0 and record["last_error"] == ""
    assert set(shown) == {"development", "production"}
    assert all(view["access_token"] == record["access_token"] for view in shown.values())
    assert oauth.accepts(record["access_token"])
    return record


def assert_no_tokens_logged(caplog, oauth, *grants: Grant | dict) -> None:
    values = {e["refresh_token"] for e in oauth.log()["token"] if e.get("refresh_token")}
    for g in grants:
        values |= (
            {g.tokens.access_token, g.tokens.refresh_token}
            if isinstance(g, Grant)
            else {g["access_token"], g["refresh_token"]}
        )
    logged = sidecar_log(caplog)
    for value in filter(None, values):
        assert value not in logged


# -- 1. the provider unreachable for longer than a token lives -------------------------------------


def test_provider_down_longer_than_a_token_lives_then_back(proxy, store, oauth, refresher, root, caplog):
    oauth.configure(rotate=True)
    (seeded,) = seed_grants(store, oauth, ["sheets"], ttl=3)
    # Renewal._backoff: lifetime 3 s -> lead min(margin, 1.5 s) -> base min(5, max(0.5, lead / 4)) = 0.5 s;
    # attempt n waits base * 2^(n-1) * uniform(0.8, 1.2).
    base = 0.5
    proxy.refuse()
    planned: dict[int, datetime] = {}  # failures -> next_attempt_at
    with running(refresher):
        down_until = time.monotonic() + 8

        def down_long_and_in_a_backoff_gap() -> bool:
            record = grant_record(root)
            if not record["failures"]:
                return False
            planned[record["failures"]] = parse_rfc3339(record["next_attempt_at"])
            # Down ~8 s (the token long expired), then restored inside a backoff gap, so the attempt
            # that must succeed is the one already planned.
            gap = planned[record["failures"]] - datetime.now(UTC)
            return time.monotonic() > down_until and gap > timedelta(seconds=1)

        wait_for(down_long_and_in_a_backoff_gap, timeout=25, every=0.05)
        down = retrying_with_old_token(root, seeded)
        assert "could not be reached" in down["last_error"] and down["failures"] >= 4
        assert not oauth.accepts(seeded.tokens.access_token)  # expired, yet still served: nothing lost
        assert oauth.log()["tokenRequests"] == 0
        for n in range(2, down["failures"] + 1):
            gap = (planned[n] - planned[n - 1]).total_seconds()  # the delay, plus the latency of a tick and a try
            assert 0.8 * base * 2 ** (n - 1) <= gap <= 1.2 * base * 2 ** (n - 1) + 2.0, (n, planned)
        due = planned[down["failures"]]
        proxy.restore()
        wait_for(refreshed(root, seeded), timeout=(due - datetime.now(UTC)).total_seconds() + 3, every=0.05)
    first = redemptions(oauth)[0]
    assert first["refresh_token"] == seeded.tokens.refresh_token and first["status"] == 200
    assert due <= at(first) <= due + timedelta(seconds=1.5)  # at the planned attempt, not later
    after = assert_served(root, oauth)
    assert after["refresh_token"] != seeded.tokens.refresh_token and oauth.log()["reuse"] == 0
    assert_no_tokens_logged(caplog, oauth, seeded, after)


# -- 2. 429 with Retry-After ---------------------------------------------------------------------------


def test_429_retry_after_is_honoured(proxy, store, oauth, refresher, root, caplog):
    oauth.configure(rotate=True)
    (seeded,) = seed_grants(store, oauth, ["sheets"], ttl=3)
    proxy.add("answer", method="POST", path=TOKEN, status=429, body=b'{"error": "rate_limited"}',
              headers={"Retry-After": "3", "Content-Type": "application/json"})  # fmt: skip
    with running(refresher):
        wait_for(lambda: grant_record(root)["status"] == "retrying", timeout=10, every=0.05)
        failed = retrying_with_old_token(root, seeded)
        wait_for(refreshed(root, seeded), timeout=10, every=0.05)
    assert "rate_limited" in failed["last_error"]
    # The failure's own time (failing_since) and its next attempt: Retry-After, not the 0.5 s backoff.
    wait = parse_rfc3339(failed["next_attempt_at"]) - parse_rfc3339(failed["failing_since"])
    assert 2.99 <= wait.total_seconds() <= 3.05
    assert [(m, fault) for m, _, fault in proxy.seen[:2]] == [("POST", "answer"), ("POST", "pass")]
    first = redemptions(oauth)[0]  # the 429 never reached the provider: this is the next request
    assert first["refresh_token"] == seeded.tokens.refresh_token and first["status"] == 200
    assert parse_rfc3339(failed["next_attempt_at"]) <= at(first)
    after = assert_served(root, oauth)
    assert oauth.log()["reuse"] == 0
    assert_no_tokens_logged(caplog, oauth, seeded, after)


# -- 3. an HTML page instead of tokens (the provider never acted) ----------------------------------------


def test_an_html_token_response_is_retried_with_the_same_refresh_token(proxy, store, oauth, refresher, root, caplog):
    oauth.configure(rotate=True)
    (seeded,) = seed_grants(store, oauth, ["sheets"], ttl=3)
    proxy.add("answer", method="POST", path=TOKEN, status=200, body=HTML,
              headers={"Content-Type": "text/html; charset=utf-8"})  # fmt: skip
    assert refresher.refresh_one("sheets", force=True).result == "retrying"
    failed = retrying_with_old_token(root, seeded)
    assert "not a valid OAuth response" in failed["last_error"] and "<" not in failed["last_error"]
    assert oauth.log()["tokenRequests"] == 0 and oauth.accepts(seeded.tokens.access_token)
    with running(refresher):  # the next, scheduled, attempt
        wait_for(refreshed(root, seeded), timeout=10, every=0.05)
    assert [e["status"] for e in redemptions(oauth, seeded.tokens.refresh_token)] == [200]
    after = assert_served(root, oauth)
    assert oauth.log()["reuse"] == 0
    assert_no_tokens_logged(caplog, oauth, seeded, after)


# -- 4. a truncated answer: the provider DID act --------------------------------------------------------


def test_a_truncated_answer_from_a_non_rotating_provider_is_retried(proxy, store, oauth, refresher, root, caplog):
    (seeded,) = seed_grants(store, oauth, ["sheets"], ttl=3)
    proxy.add("truncate", method="POST", path=TOKEN)
    assert refresher.refresh_one("sheets", force=True).result == "retrying"
    failed = retrying_with_old_token(root, seeded)
    assert "not a valid OAuth response" in failed["last_error"]
    assert [e["status"] for e in redemptions(oauth)] == [200]  # the provider issued a token; it was lost
    with running(refresher):
        wait_for(refreshed(root, seeded), timeout=10, every=0.05)
    assert [e["status"] for e in redemptions(oauth, seeded.tokens.refresh_token)][:2] == [200, 200]
    after = assert_served(root, oauth)
    assert after["refresh_token"] == seeded.tokens.refresh_token  # a non-rotating provider keeps it
    assert_no_tokens_logged(caplog, oauth, seeded, after)


def test_a_truncated_answer_from_a_rotating_provider_needs_a_new_login(proxy, store, oauth, refresher, root, caplog):
    oauth.configure(rotate=True)
    (seeded,) = seed_grants(store, oauth, ["sheets"], ttl=3)
    proxy.add("truncate", method="POST", path=TOKEN)
    assert refresher.refresh_one("sheets", force=True).result == "retrying"
    retrying_with_old_token(root, seeded)  # the provider spent the refresh token; its answer was lost
    statuses = []
    with running(refresher):

        def dead():
            statuses.append(grant_record(root)["status"])
            return statuses[-1] == "reauthorization_required"

        wait_for(dead, timeout=10, every=0.05)
    assert set(statuses) <= {"retrying", "reauthorization_required"}  # never a silent, broken `active`
    # The provider truly revoked it: the spent refresh token was presented again, and it said so.
    assert [e["status"] for e in redemptions(oauth, seeded.tokens.refresh_token)] == [200, 400]
    assert oauth.log()["reuse"] == 1
    record = grant_record(root)
    assert record["status"] == "reauthorization_required" and "invalid_grant" in record["last_error"]
    assert record["refresh_token"] == seeded.tokens.refresh_token and record["next_attempt_at"] == ""
    assert {view["status"] for view in views(root).values()} == {"reauthorization_required"}
    assert not oauth.accepts(seeded.tokens.access_token)  # the whole family is revoked
    assert_no_tokens_logged(caplog, oauth, seeded, record)


# -- 5. odd expires_in values -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "lifetime"),
    [
        pytest.param({"omit": ["expires_in"]}, None, id="missing"),
        pytest.param({"set": {"expires_in": 0}}, None, id="zero"),
        pytest.param({"set": {"expires_in": -60}}, None, id="negative"),
        pytest.param({"set": {"expires_in": 10**12}}, None, id="huge"),
        pytest.param({"set": {"expires_in": "3"}}, 3, id="numeric-string"),
        pytest.param({"set": {"expires_in": "soon"}}, None, id="non-numeric-string"),
    ],
)
def test_odd_expires_in_values(store, oauth, refresher, root, caplog, answer, lifetime):
    store.put_provider(providers.build("mock", oauth.registration(), provider_client()))  # no max_token_lifetime
    (seeded,) = seed_grants(store, oauth, ["sheets"], ttl=3)
    oauth.next(token=[answer] * 8)  # every refresh gets this answer
    started = datetime.now(UTC)
    assert refresher.refresh_one("sheets", force=True).result == "refreshed"
    record = assert_served(root, oauth)
    if lifetime is None:  # no expiry known
        assert record["expires_at"] == "" and {v["expires_at"] for v in views(root).values()} == {""}
    else:
        expires = parse_rfc3339(record["expires_at"])
        assert started + timedelta(seconds=lifetime) <= expires <= datetime.now(UTC) + timedelta(seconds=lifetime)
    with running(refresher):
        time.sleep(3.2)
    times = [at(e) for e in redemptions(oauth)]
    if lifetime is None:
        assert len(times) == 1  # only the forced one: no refresh storm, and none on a timer
        assert refresher.next_due() is None
    else:
        assert 2 <= len(times) <= 3  # about every 1.5 s (half the lifetime), not in a burst
        assert all(b - a >= timedelta(seconds=1) for a, b in pairwise(times)), times
    assert_served(root, oauth)
    assert_no_tokens_logged(caplog, oauth, seeded, grant_record(root))


def test_a_new_token_shorter_lived_than_the_old_one_is_refreshed_before_it_expires(
    store, oauth, refresher, root, caplog
):
    store.put_provider(providers.build("mock", oauth.registration(), provider_client()))
    (seeded,) = seed_grants(store, oauth, ["sheets"], ttl=3600)  # e.g. "Refresh now" on an hour-long token
    oauth.configure(ttl=3)  # the provider now issues tokens that live 3 s
    assert refresher.refresh_one("sheets", force=True).result == "refreshed"
    record = grant_record(root)
    assert record["access_token"] != seeded.tokens.access_token  # a new token, not the same one again
    with running(refresher):
        time.sleep(3.5)
    assert len(redemptions(oauth)) >= 2  # refreshed again before the 3 s token expired
    assert_served(root, oauth)
    assert_no_tokens_logged(caplog, oauth, seeded, grant_record(root))


# -- 6. the same token and the same expiry again ----------------------------------------------------------


def test_a_refresh_that_does_not_move_the_expiry_causes_no_storm(store, oauth, refresher, root, caplog):
    store.put_provider(providers.build("mock", oauth.registration(), provider_client()))
    (seeded,) = seed_grants(store, oauth, ["sheets"], ttl=5)
    current = grant_record(root)
    expires = parse_rfc3339(current["expires_at"])
    remaining = int((expires - datetime.now(UTC)).total_seconds())
    same = {"set": {"access_token": current["access_token"], "expires_in": remaining}}
    oauth.next(token=[same] * 10)  # the server registers the token it answers: the same token, live on
    assert refresher.refresh_one("sheets", force=True).result == "refreshed"
    record = grant_record(root)
    assert record["access_token"] == seeded.tokens.access_token and record["status"] == "active"
    stated = parse_rfc3339(record["expires_at"])
    assert stated <= expires  # the expiry did not move on
    # _not_extended: the next attempt once the current token expires, not sooner and sooner.
    assert stated <= parse_rfc3339(record["next_attempt_at"]) <= expires
    with running(refresher):
        # Until 1 s past the expiry, measured from it: a fixed 6 s could also take in the next, normal
        # refresh, since the provider's answer at the expiry moves the expiry on (by `remaining`).
        time.sleep((stated - datetime.now(UTC)).total_seconds() + 1.0)
    times = [at(e) for e in redemptions(oauth)]
    assert len(times) <= 2, times  # the forced one, and at most one at the expiry
    assert all(t >= stated for t in times[1:])
    assert_no_tokens_logged(caplog, oauth, seeded)
