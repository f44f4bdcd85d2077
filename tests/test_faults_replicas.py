"""Replicas at their worst: one killed with SIGKILL in the middle of a refresh, and two whose clocks
disagree by two minutes. Nothing may be redeemed twice, and nothing may look alive that is dead."""

import logging
import os
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from sidecar import providers
from sidecar.config import Settings
from sidecar.errors import VaultUnavailable
from sidecar.models import Grant
from sidecar.refresher import Refresher
from sidecar.store import Store

from .helpers import (
    ShiftedClock,
    fast_settings,
    grant_record,
    provider_client,
    seed_grants,
    sidecar_log,
    views,
    wait_for,
)

GRANT_WRITES = "^/v1/secret/data/oauth-sidecar/grants/"  # the claim and the result write
SLOW = 0.3  # seconds the proxy holds a grant write, and the provider a refresh
JSON = {"Content-Type": "application/json"}
SEALED = b'{"errors":["Vault is sealed"]}'
# When the replica is killed: seconds after its first claim reached the proxy. Its two grants are
# refreshed one after the other, about 1.6 s each (claim 0.3, provider 0.3, two refused result
# writes and 0.6 s of backoff, the write that lands 0.3), so the instants reach into the second one.
_rng = random.Random(20241129)
INSTANTS = sorted(round(_rng.uniform(0, 3.0), 3) for _ in range(12))
AHEAD = timedelta(minutes=2)


def operator_with_provider(vault, tokens, oauth) -> Store:
    """An operator's store, with the test provider registered as `mock`."""
    operator = Store(Settings.from_env({"VAULT_ADDR": vault.addr}), tokens.admin)
    operator.put_provider(providers.build("mock", oauth.registration(), provider_client()))
    return operator


def replica_env(vault_addr: str, token: str, tmp_path, **extra: str) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_", "SIDECAR_"))},
        "VAULT_ADDR": vault_addr,
        "VAULT_TOKEN": token,
        "HOME": str(tmp_path),
        **extra,
    }


def settle(refresher: Refresher, names: list[str], timeout: float = 15.0) -> dict[str, str]:
    """Force a refresh of each grant until its outcome is final, waiting out the dead replica's claim."""
    final: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    while len(final) < len(names):
        assert time.monotonic() < deadline, f"not settled: {sorted(set(names) - set(final))}"
        for name in sorted(set(names) - set(final)):
            result = refresher.refresh_one(name, force=True).result
            if result in ("refreshed", "reauthorization_required"):
                final[name] = result
            else:  # the dead replica's claim, until it lapses; or its write landing after it died
                assert result in ("claimed_elsewhere", "lost_race"), (name, result)
        time.sleep(0.2)
    return final


def served_tokens(root, name: str) -> dict[str, tuple[str, str]]:
    """What each environment's view serves: (access token, status)."""
    return {env: (view["access_token"], view["status"]) for env, view in views(root, name).items()}


def both_served(record: dict) -> dict[str, tuple[str, str]]:
    return {env: (record["access_token"], record["status"]) for env in ("development", "production")}


@pytest.mark.parametrize("instant", INSTANTS, ids=lambda s: f"kill-after-{s:.3f}s")
def test_a_replica_killed_mid_refresh_leaves_a_live_grant_or_an_honest_dead_one(
    instant, vault, tokens, root, oauth, fault_proxies, tmp_path, caplog
):
    caplog.set_level(logging.INFO)
    oauth.configure(rotate=True)
    operator = operator_with_provider(vault, tokens, oauth)
    names = ["kill-a", "kill-b"]
    seeded = {g.name: g for g in seed_grants(operator, oauth, names, ttl=1)}  # due half a second later
    oauth.configure(ttl=3600)  # refreshed tokens live long: only forced refreshes from here on
    oauth.next(token=[{"delayMs": int(SLOW * 1000)}] * len(names))
    proxy = fault_proxies(vault.addr)
    for name in names:
        # A held request is forwarded even after its sender died, so a delay alone never loses a
        # write: the replica must be holding the new tokens, unsaved, when it is killed. Vault
        # refuses its first two result writes, and it backs off in between, tokens in hand.
        path = f"{GRANT_WRITES}{name}$"
        proxy.add("delay", method="POST", path=path, times=1, seconds=SLOW)  # the claim
        proxy.add("answer", method="POST", path=path, times=2, status=503, headers=JSON, body=SEALED)
        proxy.add("delay", method="POST", path=path, times=None, seconds=SLOW)  # the result, at last
    time.sleep(0.6)  # both are due
    output = tmp_path / "killed-replica.log"
    with output.open("wb") as sink:
        replica = subprocess.Popen(
            [sys.executable, "-m", "sidecar", "refresh", "--once"],
            env=replica_env(
                proxy.addr, tokens.sidecar, tmp_path,
                SIDECAR_CLAIM_TTL="1", SIDECAR_REFRESH_INTERVAL="0.2", SIDECAR_REFRESH_CONCURRENCY="1",
            ),
            stdout=sink, stderr=sink,
        )  # fmt: skip
    try:
        wait_for(lambda: any(m == "POST" and "/grants/" in p for m, p, _ in proxy.seen), timeout=15, every=0.005)
        time.sleep(instant)
    finally:
        replica.kill()
        replica.wait(timeout=10)

    settings = fast_settings(vault, tokens.sidecar, SIDECAR_CLAIM_TTL="1")
    survivor = Refresher(settings, Store(settings, tokens.sidecar))
    try:
        final = settle(survivor, names)
        seen = oauth.log()
        refreshes = [t for t in seen["token"] if t["grant_type"] == "refresh_token"]
        how: dict[str, str] = {}
        for name in names:
            record = grant_record(root, name)
            first = seeded[name].tokens.refresh_token
            uses = [t["status"] for t in refreshes if t["refresh_token"] == first]
            assert served_tokens(root, name) == both_served(record)
            assert record["claim_owner"] == ""
            assert record["status"] == ("active" if final[name] == "refreshed" else final[name])
            if final[name] == "reauthorization_required":
                # The killed replica redeemed the refresh token and died before the new one was
                # stored; the survivor presented the spent one, and the provider revoked the family.
                assert uses == [200, 400], (name, uses)
                assert record["refresh_token"] == first and "invalid_grant" in record["last_error"]
                assert not oauth.accepts(record["access_token"])
                how[name] = "lost"
                continue
            assert uses == [200], (name, uses)  # redeemed once, by whichever replica
            family = next(t["family"] for t in refreshes if t["refresh_token"] == first)
            stored_by_killed = sum(1 for t in refreshes if t.get("family") == family) == 2
            how[name] = "stored-by-killed" if stored_by_killed else "untouched"
            assert oauth.accepts(record["access_token"])
            # The refresh token stored is the live one: one more refresh works, without reuse.
            assert survivor.refresh_one(name, force=True).result == "refreshed"
            again = grant_record(root, name)
            assert again["refresh_token"] != record["refresh_token"] and oauth.accepts(again["access_token"])
            assert served_tokens(root, name) == both_served(again) and again["status"] == "active"
    finally:
        survivor.shutdown()
    seen = oauth.log()
    assert seen["reuse"] == sum(1 for h in how.values() if h == "lost")
    every_token = {t["refresh_token"] for t in seen["token"] if t.get("refresh_token")}
    every_token |= {grant_record(root, n)[k] for n in names for k in ("access_token", "refresh_token")}
    logged = output.read_text(errors="replace") + sidecar_log(caplog)
    assert not [t for t in every_token if t in logged], "a token value reached the log"
    print(f"instant {instant:.3f}s: {how}")


def test_two_replicas_two_minutes_apart_never_redeem_a_refresh_token_twice(vault, tokens, root, oauth):
    oauth.configure(rotate=True)
    operator = operator_with_provider(vault, tokens, oauth)
    names = [f"skew-{i:02d}" for i in range(20)]
    seed_grants(operator, oauth, names, ttl=4)
    settings = fast_settings(vault, tokens.sidecar, SIDECAR_CLAIM_TTL="5")
    on_time = Refresher(settings, Store(settings, tokens.sidecar))
    ahead = Refresher(settings, Store(settings, tokens.sidecar), clock=ShiftedClock(AHEAD))
    outcomes: dict[str, Counter[str]] = {"on_time": Counter(), "ahead": Counter()}
    for label, refresher in (("on_time", on_time), ("ahead", ahead)):
        original = refresher.refresh_one

        def counted(name, force=False, original=original, counter=outcomes[label]):
            outcome = original(name, force)
            counter[outcome.result] += 1
            return outcome

        refresher.refresh_one = counted  # type: ignore[method-assign]
    stop = threading.Event()
    loops = [threading.Thread(target=r.run, args=(stop,)) for r in (on_time, ahead)]
    for loop in loops:
        loop.start()
    try:
        # "Refresh now" through the on-time replica, now and then: its claims meet the other's.
        rng = random.Random(4)
        deadline = time.monotonic() + 12
        while time.monotonic() < deadline:
            on_time.submit(rng.choice(names), force=True)
            time.sleep(0.1)
    finally:
        stop.set()
        for loop in loops:
            loop.join(timeout=60)
    # Tokens live 4 s: look at them all first, before they expire with nobody left to refresh them.
    records = {name: grant_record(root, name) for name in names}
    assert [n for n, r in records.items() if not oauth.accepts(r["access_token"])] == []
    seen = oauth.log()
    assert seen["reuse"] == 0
    redeemed = Counter(
        t["refresh_token"] for t in seen["token"] if t["grant_type"] == "refresh_token" and t["status"] == 200
    )
    assert redeemed and max(redeemed.values()) == 1, "a refresh token was redeemed twice"
    for name, record in records.items():
        assert record["status"] == "active" and record["claim_owner"] == "", name
        assert served_tokens(root, name) == both_served(record), name
    assert outcomes["on_time"]["refreshed"] and outcomes["ahead"]["refreshed"], outcomes
    print(f"refreshes: {sum(redeemed.values())}; outcomes: {outcomes}")


def test_a_replica_two_minutes_ahead_respects_a_fresh_claim_for_its_lifetime(vault, tokens, root, oauth):
    oauth.configure(rotate=True)
    operator = operator_with_provider(vault, tokens, oauth)
    (seeded,) = seed_grants(operator, oauth, ["held"])
    settings = fast_settings(vault, tokens.sidecar, SIDECAR_CLAIM_TTL="2")
    holder = Refresher(settings, Store(settings, tokens.sidecar))
    ahead = Refresher(settings, Store(settings, tokens.sidecar), clock=ShiftedClock(AHEAD))
    try:
        # The holder claims it, as its refresh_one would, and is now at the provider.
        current = operator.read("grants", "held")
        claimed = replace(
            Grant.from_record("held", current.data),
            claim_owner=holder.owner,
            claim_until=datetime.now(UTC) + timedelta(seconds=settings.claim_ttl),
        )
        operator.put_grant(claimed, cas=current.version)
        first_look = time.monotonic()
        # By the ahead replica's clock the claim lapsed two minutes ago: it must not take it early.
        assert ahead.refresh_one("held", force=True).result == "claimed_elsewhere"
        time.sleep(settings.claim_ttl - 0.5)
        assert ahead.refresh_one("held", force=True).result == "claimed_elsewhere"
        assert oauth.log()["tokenRequests"] == 0
        assert grant_record(root, "held")["claim_owner"] == holder.owner
        # A claim lifetime of real time later it may: the holder, had it lived, would be done.
        time.sleep(max(0.0, first_look + settings.claim_ttl + 0.05 - time.monotonic()))
        assert ahead.refresh_one("held", force=True).result == "refreshed"
    finally:
        holder.shutdown()
        ahead.shutdown()
    record = grant_record(root, "held")
    assert record["status"] == "active" and record["claim_owner"] == ""
    assert record["refresh_token"] != seeded.tokens.refresh_token and oauth.accepts(record["access_token"])
    assert served_tokens(root, "held") == both_served(record)
    assert oauth.log()["reuse"] == 0


# -- interleavings forced, not hoped for ------------------------------------------------------------


class Interleaved(Store):
    """A replica's store that runs `meanwhile` once, at a chosen point of its refresh: before its
    claim is sent (`at="claim"`), or in place of its first view write, which then fails as if Vault
    were unavailable (`at="view"`)."""

    def __init__(self, settings: Settings, token: str, at: str, meanwhile) -> None:
        super().__init__(settings, token)
        self._at, self._meanwhile = at, meanwhile

    def _once_at(self, point: str) -> bool:
        if self._at != point or self._meanwhile is None:
            return False
        meanwhile, self._meanwhile = self._meanwhile, None
        meanwhile()
        return True

    def put_grant(self, grant: Grant, cas: int | None = None) -> int:
        if grant.claim_owner:
            self._once_at("claim")
        return super().put_grant(grant, cas=cas)

    def write_view(self, environment: str, grant: Grant) -> None:
        if self._once_at("view"):
            raise VaultUnavailable("staged: the view write did not reach Vault")
        super().write_view(environment, grant)


@contextmanager
def sibling_at(vault, tokens, oauth, at: str) -> Iterator[tuple[Refresher, list[str]]]:
    """Replica A over one seeded grant (rotating refresh tokens), whose store lets replica B refresh
    that grant once, at `at` (see `Interleaved`); and B's outcomes."""
    operator_with_provider(vault, tokens, oauth)
    oauth.configure(rotate=True)
    seed_grants(Store(Settings.from_env({"VAULT_ADDR": vault.addr}), tokens.sidecar), oauth, ["sheets"], ttl=3600)
    settings = fast_settings(vault, tokens.sidecar)
    b = Refresher(settings, Store(settings, tokens.sidecar))
    outcomes: list[str] = []
    store = Interleaved(
        settings, tokens.sidecar, at, lambda: outcomes.append(b.refresh_one("sheets", force=True).result)
    )
    a = Refresher(settings, store)
    try:
        yield a, outcomes
    finally:
        a.shutdown()
        b.shutdown()


def test_a_claim_sent_after_a_sibling_refreshed_loses_the_race(vault, tokens, root, oauth):
    """A reads the grant; before its claim is sent, B claims, refreshes and stores. A's claim, a
    check-and-set at the version A read, must fail (`lost_race`): else A would present the refresh
    token B has just spent, and the rotating provider would revoke the grant."""
    with sibling_at(vault, tokens, oauth, "claim") as (a, outcomes):
        assert a.refresh_one("sheets", force=True).result == "lost_race"
    assert outcomes == ["refreshed"]
    seen = oauth.log()
    assert seen["reuse"] == 0 and len([t for t in seen["token"] if t["grant_type"] == "refresh_token"]) == 1
    record = grant_record(root)
    assert record["status"] == "active" and views(root)["production"]["access_token"] == record["access_token"]


def test_a_view_write_retried_after_a_siblings_refresh_keeps_the_newer_tokens(vault, tokens, root, oauth):
    """A refreshes and stores its grant; its first view write fails, and meanwhile B refreshes again
    and writes the views with newer tokens. A's retry must see that the grant no longer holds its
    tokens and leave the views to B: else apps would read A's older token, which B's refresh
    replaced (and a rotating provider may already refuse)."""
    with sibling_at(vault, tokens, oauth, "view") as (a, outcomes):
        assert a.refresh_one("sheets", force=True).result == "refreshed"
    assert outcomes == ["refreshed"]  # B's refresh came after A's grant write
    record = grant_record(root)
    assert set(views(root)) == {"development", "production"}
    assert all(view["access_token"] == record["access_token"] for view in views(root).values())
    assert oauth.accepts(record["access_token"]) and oauth.log()["reuse"] == 0
