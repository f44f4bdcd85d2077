"""The index (sidecar/index.py): entries written with check-and-set by any number of writers, read
back by change counter; a hint that is never later than its grant, repaired when it is lost."""

from __future__ import annotations

import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
import requests

from sidecar import index
from sidecar.devvault import free_port
from sidecar.index import Entry, Keeper, Mirror
from sidecar.models import Grant, Status, TokenSet, parse_rfc3339
from sidecar.refresher import Refresher
from sidecar.store import Store

from .helpers import (
    OAUTH_SIDECAR,
    CountingSession,
    fast_settings,
    index_entries,
    refresher_env,
    served_settings,
    serving,
    start,
    wait_for,
)

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def grant(name: str, expires_in: float | None = 3600, at: datetime = NOW) -> Grant:
    expires = at + timedelta(seconds=expires_in) if expires_in is not None else None
    tokens = TokenSet("at", "Bearer", expires, ("openid",), "rt")
    return Grant(name, "mock", ("production",), tokens, connected_at=at)


LATER = time.time() + 86_400  # entries due a day from now: no refresher in the run looks at them


def entry(due: float | None = 100.0, version: int = 1, connected: float = 10.0) -> Entry:
    """An entry due `due` seconds after LATER."""
    return Entry(None if due is None else LATER + due, Status.ACTIVE, "mock", ("production",), connected, version)


# -- entries (no server) -----------------------------------------------------------------------------


def test_an_entry_survives_its_line_and_a_shard_is_one_string():
    made = Entry.of(grant("g"), NOW + timedelta(minutes=55), 7)
    assert Entry.from_line(made.to_line("g")) == ("g", made)
    assert made.due_time == NOW + timedelta(minutes=55) and made.version == 7
    unscheduled = Entry.of(grant("n", expires_in=None), None, 1)
    assert Entry.from_line(unscheduled.to_line("n")) == ("n", unscheduled)
    # Vault limits the JSON strings of a request (OpenBao: 1,000): a shard of 400 entries is one.
    text = index.shard_text({f"g-{i}": made for i in range(400)})
    assert isinstance(text, str) and index.parse_shard({"entries": text}) == {f"g-{i}": made for i in range(400)}
    assert index.parse_shard({"entries": "damaged\n" + made.to_line("g")}) == {"g": made}


def test_a_later_version_or_connection_is_newer_and_an_older_one_is_not():
    assert entry(version=2).newer_than(entry(version=1))
    assert not entry(version=1).newer_than(entry(version=2))
    # A new connection (a replace, or a delete and create) restarts KV's versions: it is still newer.
    assert entry(version=1, connected=20.0).newer_than(entry(version=9, connected=10.0))


def test_the_entry_published_ahead_of_a_connection_is_due_now():
    before = time.time()
    ahead = Entry.ahead(grant("g", expires_in=3600))
    assert ahead.due is not None and before <= ahead.due <= time.time() and ahead.version == 0


def test_shards_spread_names_and_never_move_them():
    shards = {index.shard_of(f"grant-{i}") for i in range(2000)}
    assert len(shards) > index.SHARDS * 0.9
    assert index.shard_of("sheets") == index.shard_of("sheets") and 0 <= index.shard_of("sheets") < index.SHARDS


# -- writers and readers (OpenBao) -------------------------------------------------------------------


@pytest.fixture
def sidecar_store(settings, tokens, root) -> Store:  # `root` empties Vault's KV around each test
    return Store(settings, tokens.sidecar)


def test_a_sync_reads_only_what_moved_and_one_record_when_nothing_did(settings, tokens, sidecar_store):
    writer = Keeper(sidecar_store)
    for i in range(30):
        writer.note(f"g-{i:02d}", entry(due=float(i)))
    writer.flush()
    counting = CountingSession()
    reader = Mirror()
    reader_store = Store(settings, tokens.sidecar, counting)
    first = reader.sync(reader_store)
    assert sorted(first) == [f"g-{i:02d}" for i in range(30)] and first["g-07"].due == LATER + 7
    sent = counting.count
    assert reader.sync(reader_store) == {} and counting.count == sent + 1
    writer.note("g-07", entry(due=70.0, version=2))
    writer.note("g-08", None)
    writer.flush()
    sent = counting.count
    assert reader.sync(reader_store) == {"g-07": entry(due=70.0, version=2), "g-08": None}
    # The changes record, and only the two shards written (one if both names share one).
    shards = {index.shard_of("g-07"), index.shard_of("g-08")}
    assert counting.count == sent + 1 + len(shards)


def test_a_reader_that_missed_many_changes_reads_every_shard(sidecar_store):
    reader = Mirror()
    reader.sync(sidecar_store)
    for i in range(index.LOOKBACK + 3):  # more change versions than a sync reads one by one
        index.publish(sidecar_store, f"g-{i:02d}", entry(due=float(i)))
    changes = reader.sync(sidecar_store)
    assert sorted(changes) == [f"g-{i:02d}" for i in range(index.LOOKBACK + 3)]


def test_writers_of_one_shard_at_once_lose_nothing(sidecar_store):
    """Names that share a shard, written by eight writers at once: check-and-set retries keep all."""
    names = [f"g-{i}" for i in range(400)]
    shard = index.shard_of(names[0])
    same = [n for n in names if index.shard_of(n) == shard][:1] + [
        n for n in (f"x-{i}" for i in range(20000)) if index.shard_of(n) == shard
    ][:15]
    barrier = threading.Barrier(8)

    def write(pair: list[str]) -> None:
        keeper = Keeper(sidecar_store)
        for name in pair:
            keeper.note(name, entry(due=1.0))
        barrier.wait()
        keeper.flush()

    threads = [threading.Thread(target=write, args=(same[i * 2 : i * 2 + 2],)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    mirror = Mirror()
    mirror.sync(sidecar_store)
    assert sorted(mirror.names()) == sorted(same)


def test_an_older_note_never_replaces_a_newer_entry(sidecar_store, root):
    index.publish(sidecar_store, "g", entry(due=500.0, version=5))
    index.publish(sidecar_store, "g", entry(due=100.0, version=4))  # a late note of an older version
    assert index_entries(root)["g"].due == LATER + 500
    index.publish(sidecar_store, "g", entry(due=100.0, version=1, connected=20.0))  # a new connection
    assert index_entries(root)["g"].due == LATER + 100


# -- repairs (OpenBao, a real refresher) ---------------------------------------------------------------


def test_a_lost_index_update_is_repaired(vault, tokens, root, connect, oauth):
    """Three losses a crash can leave: the entry written ahead of a new connection but not the one
    after (due now: the grant is read and the entry corrected), no entry at all (the resync's
    listing finds the grant), and an entry of a grant since deleted (the listing drops it)."""
    connect("sheets", ttl=3600)
    settings = fast_settings(vault, tokens.sidecar)
    store = Store(settings, tokens.sidecar)
    stored = store.read("grants", "sheets")
    sheets = Grant.from_record("sheets", stored.data)
    index.publish(store, "sheets", Entry.ahead(sheets))  # as if the writer stopped after its grant write
    unindexed = grant("orphan", expires_in=3600, at=datetime.now(UTC))
    store.put_grant(unindexed)  # as if the writer stopped before any index write
    index.publish(store, "gone", entry(due=1.0))  # a grant deleted, its entry left behind
    refresher = Refresher(settings, store)
    try:
        wait_for(lambda: _ticked(refresher) and index_entries(root)["sheets"].version == stored.version, 10)
        wait_for(
            lambda: _ticked(refresher) and "orphan" in index_entries(root) and "gone" not in index_entries(root), 10
        )
    finally:
        refresher.shutdown()
    repaired = index_entries(root)["sheets"]
    expires = parse_rfc3339(stored.data["expires_at"])
    assert repaired.due is not None and expires.timestamp() - 330 <= repaired.due <= expires.timestamp() - 300
    assert refresher.queue.known() >= {"sheets", "orphan"} and "gone" not in refresher.queue.known()
    assert oauth.log()["tokenRequests"] == 1  # repairing refreshed nothing: only the login redeemed a code


def _ticked(refresher: Refresher) -> bool:
    refresher.tick()
    return True


# -- three replicas, tokens of 20 s -------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_three_replicas_keep_20_second_tokens_valid_at_every_read(vault, tokens, root, oauth, tmp_path):
    """Three refresher processes that list the grants only at their start (SIDECAR_RESYNC_INTERVAL of
    an hour): grants connected afterwards through one replica's web app reach them by the index
    alone. Apps read every view twice a second over four lifetimes of the token: each read is a token
    the provider accepts, and no refresh token is redeemed twice (rotation would revoke the grant)."""
    oauth.configure(rotate=True, ttl=20)
    env = {"SIDECAR_REFRESH_INTERVAL": "2", "SIDECAR_RESYNC_INTERVAL": "3600", "SIDECAR_REFRESH_MARGIN": "300"}
    replicas = [
        subprocess.Popen(
            [OAUTH_SIDECAR, "refresh"],
            env=refresher_env(vault, tokens.sidecar, tmp_path, **env),
            stdout=(tmp_path / f"replica-{i}.log").open("ab"),
            stderr=subprocess.STDOUT,
        )
        for i in range(3)
    ]
    port = free_port()
    names = ["alpha", "beta", "gamma"]
    admin = {"X-Vault-Token": tokens.admin}
    reader = Store(fast_settings(vault, tokens.reader["production"]), tokens.reader["production"])
    try:
        time.sleep(3)  # the replicas have started and listed (nothing yet)
        with serving(served_settings(vault.addr, tokens.sidecar, port, **env), port) as web:
            assert requests.put(f"{web}/v1/providers/mock", json=oauth.registration(), headers=admin, timeout=30).ok

            def api(method: str, path: str, **kwargs):
                return requests.request(method, web + path, headers=admin, timeout=30, **kwargs)

            for name in names:
                assert requests.Session().get(start(api, name), timeout=30).status_code == 200
        seen: dict[str, set[str]] = {name: set() for name in names}
        refused = []
        until = time.monotonic() + 80  # four lifetimes
        while time.monotonic() < until:
            for name in names:
                view = reader.read_view("production", name)
                seen[name].add(view["access_token"])
                if not (oauth.accepts(view["access_token"]) and parse_rfc3339(view["expires_at"]) > datetime.now(UTC)):
                    refused.append((name, round(until - time.monotonic(), 1)))
            time.sleep(0.5)
    finally:
        for replica in replicas:
            replica.terminate()
        for replica in replicas:
            replica.wait(30)
    logs = "".join((tmp_path / f"replica-{i}.log").read_text() for i in range(3))
    assert refused == [], logs[-3000:]
    assert all(len(tokens_seen) >= 4 for tokens_seen in seen.values()), {n: len(t) for n, t in seen.items()}
    assert oauth.log()["reuse"] == 0, "a refresh token was presented again after it was spent"


def test_a_shard_of_a_thousand_entries_is_taken_by_openbao(sidecar_store):
    """OpenBao refuses a request of more than 1,000 JSON strings by default; a shard is one."""
    crowded = [name for name in (f"n-{i}" for i in range(400_000)) if index.shard_of(name) == 0][:1000]
    keeper = Keeper(sidecar_store)
    for name in crowded:
        keeper.note(name, entry())
    keeper.flush()
    assert keeper.pending() == {}
    mirror = Mirror()
    assert sorted(mirror.sync(sidecar_store)) == sorted(crowded)


def test_a_writer_does_not_read_back_the_shards_it_wrote(settings, tokens, sidecar_store):
    counting = CountingSession()
    writer = Keeper(Store(settings, tokens.sidecar, counting))
    writer.mirror.sync(writer.store)
    for i in range(40):
        writer.note(f"g-{i:02d}", entry(due=float(i)))
    writer.flush()
    sent = counting.count
    assert writer.mirror.sync(writer.store) == {} and counting.count == sent + 1  # the counter alone
    index.publish(sidecar_store, "g-00", entry(due=99.0, version=2))  # a sibling's write is read
    assert writer.mirror.sync(writer.store) == {"g-00": entry(due=99.0, version=2)}
    assert writer.mirror.counts() == {"active": 40}
