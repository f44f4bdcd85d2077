"""Expired logins in flight and UI sessions are swept from Vault by the refresher: real OpenBao."""

from datetime import UTC, datetime, timedelta

from sidecar.models import rfc3339
from sidecar.refresher import Refresher
from sidecar.store import Store
from sidecar.sweep import GRACE, sweep

from .helpers import CountingSession, vault_tree


def put(root, path: str, expires_at: datetime | None) -> None:
    record = {"name": "sheets"} | ({"expires_at": rfc3339(expires_at)} if expires_at else {})
    root.secrets.kv.v2.create_or_update_secret(path=path, secret=record, mount_point="secret")


def test_expired_logins_and_sessions_go_and_live_ones_stay(settings, root):
    now = datetime.now(UTC)
    put(root, "oauth-sidecar/pending/expired", now - GRACE - timedelta(seconds=5))
    put(root, "oauth-sidecar/pending/finishing", now - GRACE + timedelta(seconds=20))  # a callback may still need it
    put(root, "oauth-sidecar/pending/open", now + timedelta(minutes=5))
    put(root, "oauth-sidecar/pending/no-expiry", None)  # nothing the sidecar writes
    put(root, "oauth-sidecar/sessions/idle", now - timedelta(hours=1))
    put(root, "oauth-sidecar/sessions/live", now + timedelta(minutes=30))
    put(root, "oauth-sidecar/grants/sheets", None)  # never swept, whatever it holds

    assert sweep(Store.own(settings), now) == 3
    assert sorted(vault_tree(root)) == [
        "oauth-sidecar/grants/sheets",
        "oauth-sidecar/pending/finishing",
        "oauth-sidecar/pending/open",
        "oauth-sidecar/sessions/live",
    ]


def test_the_refresher_sweeps_on_its_first_tick_then_once_per_interval(settings, root):
    put(root, "oauth-sidecar/pending/expired", datetime.now(UTC) - timedelta(hours=1))
    counting = CountingSession()
    refresher = Refresher(settings, Store.own(settings, counting))
    try:
        refresher.tick()
        assert "oauth-sidecar/pending/expired" not in vault_tree(root)
        put(root, "oauth-sidecar/pending/later", datetime.now(UTC) - timedelta(hours=1))
        before = counting.count
        refresher.tick()  # within SWEEP_INTERVAL: no sweep, one request (the index's change counter)
        assert counting.count == before + 1
        assert "oauth-sidecar/pending/later" in vault_tree(root)
    finally:
        refresher.shutdown()
