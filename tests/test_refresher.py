"""The refresher against a real OpenBao and a real OAuth server whose tokens live seconds."""

import glob
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from itertools import pairwise

import pytest
import requests

from sidecar import oauth as oauth_module
from sidecar.models import Grant, parse_rfc3339
from sidecar.refresher import Refresher
from sidecar.store import Store

from .helpers import (
    OAUTH_SIDECAR,
    CountingSession,
    ShiftedClock,
    fast_settings,
    grant_record,
    refresher_env,
    refresher_process,
    running,
    start,
    views,
    wait_for,
)


@pytest.fixture
def refresher(vault, tokens, root) -> Iterator[Refresher]:
    instance = Refresher(
        fast_settings(vault, tokens.sidecar), Store(fast_settings(vault, tokens.sidecar), tokens.sidecar)
    )
    yield instance
    instance.shutdown()


def refreshed_since(root, name: str, after: str):
    def check():
        record = grant_record(root, name)
        return record if record["last_refreshed_at"] != after and record["status"] == "active" else None

    return check


def test_a_token_is_refreshed_before_it_expires(connect, refresher, root, oauth):
    before = connect(ttl=4)
    old_view = views(root)["production"]
    with running(refresher):
        after = wait_for(refreshed_since(root, "sheets", before["last_refreshed_at"]), timeout=15)
    assert parse_rfc3339(after["last_refreshed_at"]) < parse_rfc3339(before["expires_at"])
    current = views(root)
    assert current["production"] == current["development"]
    assert current["production"]["access_token"] == after["access_token"] != old_view["access_token"]
    # The view shows whole seconds (the contract's format); the grant keeps microseconds for due maths.
    assert parse_rfc3339(current["production"]["expires_at"]) == parse_rfc3339(after["expires_at"]).replace(
        microsecond=0
    )
    assert current["production"]["expires_at"] > old_view["expires_at"]
    assert oauth.accepts(after["access_token"])
    # This provider sends no refresh token on refresh: the old one is kept, and it still works.
    assert after["refresh_token"] == before["refresh_token"]
    assert after["claim_owner"] == "" and after["failures"] == 0


def test_only_due_grants_are_refreshed_and_an_idle_tick_costs_one_read(connect, vault, tokens, root, oauth):
    connect(ttl=3600)
    session = CountingSession()
    settings = fast_settings(vault, tokens.sidecar, SIDECAR_RESYNC_INTERVAL="3600")
    refresher = Refresher(settings, Store(settings, tokens.sidecar, session))
    try:
        assert refresher.tick() == []  # learns the grant; it is not due for an hour
        assert refresher.next_due() is not None
        learned = session.count
        for _ in range(50):
            assert refresher.tick() == []
        # Nothing due, no resync due: one read a tick (the index's change counter), whatever the grants.
        assert session.count == learned + 50
        assert oauth.log()["tokenRequests"] == 1  # just the login
        assert refresher.refresh_one("sheets").result == "not_due"
        assert refresher.refresh_one("sheets", force=True).result == "refreshed"
    finally:
        refresher.shutdown()


def test_rotating_refresh_tokens_are_stored_and_used_once(connect, refresher, root, oauth):
    before = connect(ttl=3, rotate=True)
    with running(refresher):
        first = wait_for(refreshed_since(root, "sheets", before["last_refreshed_at"]), timeout=15)
        second = wait_for(refreshed_since(root, "sheets", first["last_refreshed_at"]), timeout=15)
    assert len({before["refresh_token"], first["refresh_token"], second["refresh_token"]}) == 3
    assert oauth.log()["reuse"] == 0 and oauth.accepts(second["access_token"])


@pytest.mark.parametrize(
    "failures",
    [
        [{"status": 500, "body": {"error": "server_error"}}, {"hangUp": True}, {"status": 429, "body": {}}],
        [{"delayMs": 1500}, {"status": 503, "body": {}}],
    ],
    ids=["500-reset-429", "timeout-503"],
)
def test_transient_failures_back_off_then_recover(connect, refresher, root, oauth, monkeypatch, failures):
    monkeypatch.setattr(oauth_module, "TIMEOUT", 0.5)
    before = connect(ttl=4)
    oauth.next(token=failures)
    statuses = set()
    with running(refresher):

        def recovered():
            served = views(root)["production"]["access_token"]  # read first: views follow the grant
            record = grant_record(root, "sheets")
            statuses.add(record["status"])
            if record["status"] == "retrying":
                assert record["last_error"] and before["refresh_token"] not in record["last_error"]
                assert served == before["access_token"]  # the still-valid token is still served
            return (
                record
                if record["status"] == "active" and record["last_refreshed_at"] != before["last_refreshed_at"]
                else None
            )

        after = wait_for(recovered, timeout=30, every=0.05)
    assert "retrying" in statuses
    assert after["failures"] == 0 and after["last_error"] == "" and oauth.accepts(after["access_token"])
    assert oauth.log()["tokenRequests"] >= 1 + len(failures) + 1  # the login, each failure, the success


def test_invalid_grant_needs_a_new_login_and_stops_attempts(connect, refresher, root, oauth, api):
    connect(ttl=3)
    oauth.next(token={"status": 400, "body": {"error": "invalid_grant", "error_description": "revoked by user"}})
    with running(refresher):
        record = wait_for(lambda: (r := grant_record(root, "sheets"))["status"] == "reauthorization_required" and r)
        calls = oauth.log()["tokenRequests"]
        threading.Event().wait(3)  # well past the next due time
    assert oauth.log()["tokenRequests"] == calls
    assert "invalid_grant" in record["last_error"] and "revoked by user" in record["last_error"]
    assert views(root)["production"]["status"] == "reauthorization_required"
    assert api("GET", "/v1/secrets/sheets").json()["status"] == "reauthorization_required"
    # Reconnecting brings it back.
    assert requests.Session().get(start(api, replace=True), timeout=30).status_code == 200
    assert grant_record(root, "sheets")["status"] == "active"


def test_invalid_client_is_fixed_by_updating_the_provider(connect, refresher, root, oauth, api):
    before = connect(ttl=3)
    assert api("PUT", "/v1/providers/mock", json=oauth.registration(client_secret="rotated-away")).status_code == 200
    with running(refresher):
        failing = wait_for(lambda: (r := grant_record(root, "sheets"))["status"] == "retrying" and r)
        assert "invalid_client" in failing["last_error"] and "fix the provider" in failing["last_error"]
        assert api("PUT", "/v1/providers/mock", json=oauth.registration()).status_code == 200
        after = wait_for(refreshed_since(root, "sheets", before["last_refreshed_at"]), timeout=20)
    assert after["refresh_token"] == before["refresh_token"] and oauth.accepts(after["access_token"])


def test_refresh_now_through_the_api(connect, api, root, tokens, oauth):
    before = connect(ttl=3600)
    response = api("POST", "/v1/secrets/sheets/refresh")
    assert response.status_code == 200, response.text
    assert parse_rfc3339(response.json()["last_refreshed_at"]) >= parse_rfc3339(before["last_refreshed_at"]).replace(
        microsecond=0
    )
    after = grant_record(root, "sheets")
    assert after["access_token"] != before["access_token"] and oauth.accepts(after["access_token"])
    assert "access_token" not in response.text and after["access_token"] not in response.text
    reader = {"X-Vault-Token": tokens.reader["production"]}
    assert api("POST", "/v1/secrets/sheets/refresh", headers=reader).status_code == 403
    assert api("POST", "/v1/secrets/nope/refresh").status_code == 404
    oauth.next(token={"status": 400, "body": {"error": "invalid_grant"}})
    failed = api("POST", "/v1/secrets/sheets/refresh")
    assert failed.status_code == 502 and "invalid_grant" in failed.json()["error"]["message"]
    calls = oauth.log()["tokenRequests"]
    again = api("POST", "/v1/secrets/sheets/refresh")  # a dead refresh token is not sent again
    assert again.status_code == 502 and "connect it again" in again.json()["error"]["message"]
    assert oauth.log()["tokenRequests"] == calls


def metric(live, sample: str) -> float:
    for line in requests.get(f"{live.url}/metrics", timeout=10).text.splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[-1])
    return 0.0


def test_metrics_count_refreshes(connect, api, live):
    connect(ttl=3600)
    refreshed = 'oauth_sidecar_refreshes_total{outcome="refreshed"}'
    before, timed = metric(live, refreshed), metric(live, "oauth_sidecar_refresh_seconds_count")
    assert api("POST", "/v1/secrets/sheets/refresh").status_code == 200
    assert metric(live, refreshed) == before + 1
    assert metric(live, "oauth_sidecar_refresh_seconds_count") == timed + 1


def test_a_live_claim_elsewhere_is_respected_and_a_lapsed_one_taken_over(connect, vault, tokens, root, oauth):
    connect(ttl=3600)
    settings = fast_settings(vault, tokens.sidecar, SIDECAR_CLAIM_TTL="1")
    refresher = Refresher(settings, Store(settings, tokens.sidecar))
    store = refresher.store
    current = store.read("grants", "sheets")
    grant = Grant.from_record("sheets", current.data)
    now = datetime.now(UTC)
    store.put_grant(
        replace(grant, claim_owner="other:1:dead", claim_until=now.replace(year=now.year + 1)), cas=current.version
    )
    assert refresher.refresh_one("sheets", force=True).result == "claimed_elsewhere"
    current = store.read("grants", "sheets")
    lapsed = replace(Grant.from_record("sheets", current.data), claim_until=now.replace(year=now.year - 1))
    store.put_grant(lapsed, cas=current.version)
    # Lapsed by our clock, but our clock may run ahead of the holder's: respected for one
    # claim lifetime of our own time from when we first see it, then taken over.
    assert refresher.refresh_one("sheets", force=True).result == "claimed_elsewhere"
    time.sleep(1.1)
    assert refresher.refresh_one("sheets", force=True).result == "refreshed"
    assert grant_record(root, "sheets")["claim_owner"] == ""
    refresher.shutdown()


def test_vault_cut_right_after_the_provider_answered(connect, vault, tokens, root, oauth, fault_proxies):
    """The provider has rotated the refresh token; Vault is unreachable; the new one must land."""
    before = connect(ttl=3600, rotate=True)
    proxy = fault_proxies(vault.addr)
    settings = fast_settings(vault, tokens.sidecar, VAULT_ADDR=proxy.addr)
    refresher = Refresher(settings, Store(settings, tokens.sidecar))
    try:
        oauth.next(token={"delayMs": 1500})
        future = refresher.submit("sheets", force=True)
        wait_for(lambda: oauth.log()["tokenRequests"] == 2, every=0.02)  # the refresh is at the provider
        proxy.refuse()
        threading.Event().wait(3)  # the provider answers meanwhile; every write fails
        assert not future.done()
        proxy.restore()
        assert future.result(timeout=30).result == "refreshed"
        after = grant_record(root, "sheets")
        assert after["refresh_token"] != before["refresh_token"] and oauth.accepts(after["access_token"])
        assert views(root)["production"]["access_token"] == after["access_token"]
        # The rotated refresh token that landed is the live one: the next refresh is no reuse.
        assert refresher.refresh_one("sheets", force=True).result == "refreshed"
        assert oauth.log()["reuse"] == 0
    finally:
        refresher.shutdown()


def run_once(vault, token: str, tmp_path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [OAUTH_SIDECAR, "refresh", "--once"], env=refresher_env(vault, token, tmp_path),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_three_replicas_fifty_grants_no_refresh_token_redeemed_twice(api, oauth, root, vault, tokens, tmp_path):
    oauth.configure(ttl=4, rotate=True)
    names = [f"grant-{i:02d}" for i in range(50)]
    for name in names:
        assert requests.Session().get(start(api, name), timeout=30).status_code == 200
    replicas = [refresher_process(vault, tokens.sidecar, tmp_path, SIDECAR_REFRESH_CONCURRENCY="4") for _ in range(3)]
    threading.Event().wait(12)  # about six refresh cycles of every grant
    for replica in replicas:
        replica.send_signal(signal.SIGTERM)
    outputs = [replica.communicate(timeout=60)[0] for replica in replicas]
    assert [r.returncode for r in replicas] == [0, 0, 0], outputs
    log = oauth.log()
    assert log["reuse"] == 0
    refreshes = [t for t in log["token"] if t["grant_type"] == "refresh_token"]
    assert all(t["status"] == 200 for t in refreshes)
    assert len({t["refresh_token"] for t in refreshes}) == len(refreshes)  # each one redeemed once
    per_grant: dict[str, list[int]] = {}
    for t in refreshes:
        per_grant.setdefault(t["family"], []).append(t["at"])
    assert len(per_grant) == 50
    # A 4 s lifetime is refreshed at about half of it: every grant in every cycle, and once per
    # cycle (two refreshes of one grant never closer than a second, whichever replicas did them).
    assert min(len(times) for times in per_grant.values()) >= 4
    gaps = [b - a for times in per_grant.values() for a, b in pairwise(times)]
    assert min(gaps) >= 1000, (sorted(gaps)[:5], outputs)
    for name in names:
        record = grant_record(root, name)
        assert record["status"] == "active" and record["claim_owner"] == ""
        assert oauth.accepts(record["access_token"]), name


def test_a_killed_claim_holder_is_taken_over_after_the_claim_lapses(connect, oauth, root, vault, tokens, tmp_path):
    before = connect(ttl=4)
    oauth.next(token={"delayMs": 6000})
    first = refresher_process(vault, tokens.sidecar, tmp_path, SIDECAR_CLAIM_TTL="3")
    wait_for(lambda: oauth.log()["tokenRequests"] == 2, every=0.02)  # it claimed and sent the refresh
    first.kill()
    first.wait()
    claimed = grant_record(root, "sheets")
    assert claimed["claim_owner"] and parse_rfc3339(claimed["claim_until"]) > datetime.now(UTC)
    second = refresher_process(vault, tokens.sidecar, tmp_path, SIDECAR_CLAIM_TTL="3")
    try:
        after = wait_for(refreshed_since(root, "sheets", before["last_refreshed_at"]), timeout=20)
    finally:
        second.send_signal(signal.SIGTERM)
        second.communicate(timeout=30)
    assert after["claim_owner"] == "" and parse_rfc3339(after["last_refreshed_at"]) >= parse_rfc3339(
        claimed["claim_until"]
    )
    assert oauth.accepts(after["access_token"])


def test_refresh_once_exits_non_zero_when_a_grant_failed(connect, oauth, root, vault, tokens, tmp_path):
    connect("steady", ttl=3600)
    quiet = run_once(vault, tokens.sidecar, tmp_path)
    assert quiet.returncode == 0 and "0 due" in quiet.stderr
    connect("doomed", ttl=2)
    threading.Event().wait(1.2)  # past its due time
    oauth.next(token={"status": 400, "body": {"error": "invalid_grant"}})
    failed = run_once(vault, tokens.sidecar, tmp_path)
    assert failed.returncode == 1 and "doomed: reauthorization_required" in failed.stdout
    assert grant_record(root, "doomed")["status"] == "reauthorization_required"
    assert grant_record(root, "steady")["status"] == "active"


def test_sigterm_waits_for_the_refresh_in_flight(connect, oauth, root, vault, tokens, tmp_path):
    before = connect(ttl=4, rotate=True)
    oauth.next(token={"delayMs": 2000})
    replica = refresher_process(vault, tokens.sidecar, tmp_path)
    wait_for(lambda: oauth.log()["tokenRequests"] == 2, every=0.02)  # the refresh is at the provider
    replica.send_signal(signal.SIGTERM)
    output, _ = replica.communicate(timeout=30)
    assert replica.returncode == 0, output
    after = grant_record(root, "sheets")
    # The rotated refresh token the provider issued during shutdown was stored, not dropped.
    assert after["refresh_token"] != before["refresh_token"] and after["claim_owner"] == ""
    assert oauth.accepts(after["access_token"])


def test_a_grant_whose_provider_vanished_is_kept_and_reported(connect, refresher, root):
    connect(ttl=3600)
    root.secrets.kv.v2.delete_metadata_and_all_versions(path="oauth-sidecar/providers/mock", mount_point="secret")
    refresher.resync_step(budget=10)
    assert refresher.submit("sheets", force=True).result().result == "error"
    assert grant_record(root, "sheets")["status"] == "active"  # nothing lost; an operator can restore the provider


def test_an_approle_sidecar_keeps_refreshing_across_its_token_ttls(connect, vault, root, oauth):
    if "approle/" not in root.sys.list_auth_methods():
        root.sys.enable_auth_method("approle")
    root.write("auth/approle/role/sidecar", token_policies="oauth-sidecar", token_ttl="2s", token_max_ttl="4s")
    env = {
        "SIDECAR_VAULT_AUTH": "approle",
        "SIDECAR_APPROLE_ROLE_ID": root.read("auth/approle/role/sidecar/role-id")["data"]["role_id"],
        "SIDECAR_APPROLE_SECRET_ID": root.write("auth/approle/role/sidecar/secret-id")["data"]["secret_id"],
    }
    settings = fast_settings(vault, "", **env)
    store = Store.own(settings)
    refresher = Refresher(settings, store)
    before = connect(ttl=3)
    seen = [before["last_refreshed_at"]]
    with running(refresher):
        for _ in range(4):  # four refreshes: about six seconds, several of the sidecar's token TTLs
            seen.append(wait_for(refreshed_since(root, "sheets", seen[-1]), timeout=15)["last_refreshed_at"])
    refresher.shutdown()
    assert store._vault.login.logins >= 2
    assert oauth.accepts(grant_record(root, "sheets")["access_token"])


def libfaketime() -> str:
    """Debian's libfaketime; its absence fails the run (CI installs it), never skips it."""
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))
    if not found:
        pytest.fail("libfaketime is missing: apt-get install faketime")
    return found[0]


@pytest.mark.parametrize("step", [-3600, 3600], ids=["back-1h", "forward-1h"])
def test_a_wall_clock_step_neither_stalls_nor_storms_the_refreshes(step, connect, oauth, root, vault, tokens, tmp_path):
    """A refresher process whose wall clock libfaketime steps by an hour mid-run, its monotonic clock
    untouched (an NTP step). Back: a loop or queue that waits on wall time lets the 3 s tokens expire.
    Forward: old due times all look past at once; at most one extra refresh, never a storm."""
    offset = tmp_path / "faketime"  # read at every clock call (FAKETIME_NO_CACHE), so rewriting it steps the clock
    offset.write_text("+0\n")
    before = connect(ttl=3)
    replica = refresher_process(
        vault, tokens.sidecar, tmp_path, LD_PRELOAD=libfaketime(), FAKETIME_TIMESTAMP_FILE=str(offset),
        FAKETIME_NO_CACHE="1", FAKETIME_DONT_FAKE_MONOTONIC="1",
    )  # fmt: skip
    window = 9.0  # three token lifetimes
    try:
        first = wait_for(refreshed_since(root, "sheets", before["last_refreshed_at"]), timeout=15)
        wait_for(lambda: views(root)["production"]["access_token"] == first["access_token"])
        time.sleep(0.3)  # step between refreshes (~1.5 s apart), not amid one: that one is rescheduled by now
        offset.write_text(f"{step:+d}\n")
        stepped_ms, served = time.time() * 1000, set()
        deadline = time.monotonic() + window
        while time.monotonic() < deadline:
            token = views(root)["production"]["access_token"]
            assert grant_record(root, "sheets")["status"] == "active"
            assert oauth.accepts(token), f"an expired token is served {len(served)} tokens after the step"
            served.add(token)
            time.sleep(0.2)
    finally:
        replica.send_signal(signal.SIGTERM)
        output = replica.communicate(timeout=30)[0]
    assert replica.returncode == 0 and "Traceback" not in output, output
    record, current = grant_record(root, "sheets"), views(root)
    # The step took: what the replica wrote last it dated by the stepped clock.
    skew = (parse_rfc3339(record["last_refreshed_at"]) - datetime.now(UTC)).total_seconds()
    assert abs(skew - step) < 60, skew
    assert current["production"]["access_token"] == current["development"]["access_token"] == record["access_token"]
    assert oauth.accepts(record["access_token"])
    refreshes = [t["at"] for t in oauth.log()["token"] if t["grant_type"] == "refresh_token"]
    assert len(served) >= window / 3 and sum(t > stepped_ms for t in refreshes) >= window / 3  # each lifetime
    # Refreshed at about half the lifetime: gaps of ~1.5 s; only the forward step may add one early refresh.
    assert sum(b - a < 1000 for a, b in pairwise(refreshes)) <= (1 if step > 0 else 0), refreshes


def test_a_due_time_dated_before_a_step_back_and_queued_after_it_is_not_held_back(vault, tokens, root):
    """A refresh dates its new tokens, the wall clock steps back an hour while it writes them to Vault,
    then it queues their due time: that waits two seconds, not an hour and two. Past the next tick,
    due times are read by the stepped clock alone (not an hour early: no storm)."""
    settings = fast_settings(vault, tokens.sidecar)
    clock = ShiftedClock(timedelta(0))
    refresher = Refresher(settings, Store(settings, tokens.sidecar), clock=clock)
    try:
        dated = clock.now() + timedelta(seconds=2)
        clock.offset = timedelta(hours=-1)
        refresher.queue.schedule("sheets", "active", dated)
        waits = refresher.next_due() - clock.now()
        assert timedelta(seconds=1) < waits <= timedelta(seconds=2)
        refresher.tick()
        refresher.queue.schedule("sheets", "active", clock.now() + timedelta(seconds=60))
        waits = refresher.next_due() - clock.now()
        assert timedelta(seconds=59) < waits <= timedelta(seconds=60)
    finally:
        refresher.shutdown()
