"""Vault misbehaving under the refresher and under a login, for real: sealed, restarted, slow,
answers lost after it acted, and the sidecar's own token revoked. Each test checks what a user
would notice: the grant, the views apps read, what the provider saw (no refresh token redeemed
twice), readiness, the pages a browser got, the log."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import hvac
import pytest
import requests
from playwright.sync_api import Page, expect

from sidecar import providers
from sidecar.devvault import free_port
from sidecar.models import parse_rfc3339
from sidecar.refresher import Refresher
from sidecar.store import Store
from sidecar.web import create_app

from .faults import FaultProxy
from .helpers import (
    CLIENT_SECRET,
    callback_url,
    consumed_login,
    fast_settings,
    grant_record,
    provider_client,
    refresh_target,
    refresher_process,
    running,
    seed_grants,
    served_settings,
    serving,
    sidecar_log,
    vault_tree,
    views,
    wait_for,
)

GRANT_PATH = r"^/v1/secret/data/oauth-sidecar/grants/sheets$"  # hvac writes KV v2 with a POST here


def register_provider(store: Store, oauth) -> None:
    store.put_provider(providers.build("mock", oauth.registration(), provider_client()))


def redemptions(oauth, refresh_token: str | None = None) -> list[dict]:
    """The provider's refresh requests (of `refresh_token`, if given)."""
    return [
        e
        for e in oauth.log()["token"]
        if e["grant_type"] == "refresh_token" and refresh_token in (None, e["refresh_token"])
    ]


def served(root: hvac.Client, oauth, name: str = "sheets") -> dict | None:
    """The grant, if it is active and both views serve its access token, which the provider accepts."""
    record = grant_record(root, name)
    shown = views(root, name)
    ok = (
        record["status"] == "active"
        and set(shown) == {"development", "production"}
        and all(view["access_token"] == record["access_token"] for view in shown.values())
        and oauth.accepts(record["access_token"])
    )
    return record if ok else None


def assert_no_secrets(caplog, *values: str) -> None:
    logged = sidecar_log(caplog)
    for value in values:
        assert value not in logged


@contextmanager
def closing(*refreshers: Refresher) -> Iterator[None]:
    try:
        yield
    finally:
        for refresher in refreshers:
            refresher.shutdown()


def durable_root(durable) -> hvac.Client:
    """A fresh root client: one made before a restart holds connections to the dead process."""
    return hvac.Client(url=durable.addr, token=durable.root_token)


# -- 1. sealed while a refresh is in flight --------------------------------------------------------


def test_vault_sealed_during_a_refresh_keeps_the_rotated_tokens(durable, durable_tokens, oauth, caplog):
    settings = fast_settings(durable, durable_tokens.sidecar)
    admin = Store(settings, durable_tokens.admin)
    register_provider(admin, oauth)
    oauth.configure(rotate=True)
    (seeded,) = seed_grants(admin, oauth, ["sheets"], ttl=3600)
    ready = create_app(settings).test_client()
    refresher = Refresher(settings, Store(settings, durable_tokens.sidecar))
    with closing(refresher):
        assert ready.get("/readyz").status_code == 200
        oauth.next(token={"delayMs": 1500})
        future = refresher.submit("sheets", force=True)
        wait_for(lambda: grant_record(durable_root(durable), "sheets")["claim_owner"] == refresher.owner, 5, 0.02)
        durable.seal()  # the claim is in; the provider is still answering
        try:
            sealed = ready.get("/readyz")
            assert sealed.status_code == 503 and "sealed" in sealed.json["error"]["message"]
            wait_for(lambda: redemptions(oauth), timeout=5)  # the provider has issued the new tokens
            time.sleep(2)  # the result write keeps failing against the sealed Vault
            assert not future.done()
        finally:
            durable.unseal()
        assert future.result(timeout=20).result == "refreshed"
        assert ready.get("/readyz").status_code == 200
        root = durable_root(durable)
        record = served(root, oauth)
        assert record is not None
        assert redemptions(oauth)[-1]["refresh_token"] == seeded.tokens.refresh_token
        assert record["refresh_token"] != seeded.tokens.refresh_token  # the rotated one was stored
        # The stored refresh token is the live one: the provider takes it.
        assert refresher.refresh_one("sheets", force=True).result == "refreshed"
        assert [e["status"] for e in redemptions(oauth, record["refresh_token"])] == [200]
        assert served(root, oauth) is not None
    assert oauth.log()["reuse"] == 0
    assert "Vault unavailable" in sidecar_log(caplog)
    assert_no_secrets(caplog, seeded.tokens.refresh_token, record["refresh_token"], record["access_token"])


# -- 2. restarted (SIGTERM / SIGKILL) while the refresher runs ---------------------------------------


@pytest.mark.parametrize("kill", [False, True], ids=["sigterm", "sigkill"])
def test_vault_restarted_under_a_running_refresher(durable, durable_tokens, oauth, kill):
    settings = fast_settings(durable, durable_tokens.sidecar)
    admin = Store(settings, durable_tokens.admin)
    register_provider(admin, oauth)
    oauth.configure(rotate=True)
    names = ["alpha", "beta", "gamma"]
    seeded = {g.name: g for g in seed_grants(admin, oauth, names, ttl=4)}
    refresher = Refresher(settings, Store(settings, durable_tokens.sidecar))
    with running(refresher):
        wait_for(lambda: redemptions(oauth), timeout=10)  # refreshing is under way
        durable.restart(kill=kill)
        back = datetime.now(UTC)
        root = durable_root(durable)
        listed = root.secrets.kv.v2.list_secrets(path="oauth-sidecar/grants", mount_point="secret")
        assert sorted(listed["data"]["keys"]) == names  # every grant survived

        def all_fresh() -> bool:
            records = {n: served(root, oauth, n) for n in names}
            return all(r and parse_rfc3339(r["last_refreshed_at"]) > back for r in records.values())

        wait_for(all_fresh, timeout=15, every=0.2)
    for name in names:
        assert grant_record(root, name)["refresh_token"] != seeded[name].tokens.refresh_token
    assert oauth.log()["reuse"] == 0


# -- 3. Vault slower than the claim's lifetime ------------------------------------------------------


def test_a_claim_confirmed_too_late_is_not_used_and_a_sibling_takes_over(
    vault, tokens, store, root, oauth, fault_proxies, caplog
):
    register_provider(store, oauth)
    oauth.configure(rotate=True)
    (seeded,) = seed_grants(store, oauth, ["sheets"], ttl=3600)
    proxy = fault_proxies(vault.addr)
    proxy.add("delay", seconds=1.5, times=None)  # every request A sends waits 1.5 s
    slow_settings = fast_settings(vault, tokens.sidecar, VAULT_ADDR=proxy.addr, SIDECAR_CLAIM_TTL="2")
    settings = fast_settings(vault, tokens.sidecar, SIDECAR_CLAIM_TTL="2")
    a = Refresher(slow_settings, Store(slow_settings, tokens.sidecar))
    b = Refresher(settings, Store(settings, tokens.sidecar))
    with closing(a, b):
        slow = a.submit("sheets", force=True)
        wait_for(lambda: grant_record(root, "sheets")["claim_owner"] == a.owner, timeout=10, every=0.02)
        assert b.refresh_one("sheets", force=True).result == "claimed_elsewhere"  # A's claim is respected
        assert slow.result(timeout=10).result == "claim_too_slow"
        assert redemptions(oauth) == []  # A redeemed nothing
        # B takes over once the claim has lapsed by B's own watch (two seconds after it saw it).
        outcomes = []
        wait_for(lambda: outcomes.append(b.refresh_one("sheets", force=True).result) or outcomes[-1] == "refreshed",
                 timeout=10, every=0.3)  # fmt: skip
        assert set(outcomes[:-1]) <= {"claimed_elsewhere"}
    record = served(root, oauth)
    assert record is not None and record["claim_owner"] == ""
    assert [e["status"] for e in redemptions(oauth, seeded.tokens.refresh_token)] == [200]
    assert len(redemptions(oauth)) == 1 and oauth.log()["reuse"] == 0
    assert "claiming sheets took longer than half the claim's lifetime" in sidecar_log(caplog)
    assert_no_secrets(caplog, seeded.tokens.refresh_token, record["refresh_token"], record["access_token"])


# -- 4 and 5. Vault acted, but its answer was lost ------------------------------------------------------


def test_a_lost_answer_to_the_claim_is_recognised_as_our_own(vault, tokens, store, root, oauth, fault_proxies):
    register_provider(store, oauth)
    oauth.configure(rotate=True)
    (seeded,) = seed_grants(store, oauth, ["sheets"], ttl=3600)
    proxy = fault_proxies(vault.addr)
    proxy.add("drop", method="POST", path=GRANT_PATH)  # the claim write: applied, its answer lost
    settings = fast_settings(vault, tokens.sidecar, VAULT_ADDR=proxy.addr)
    refresher = Refresher(settings, Store(settings, tokens.sidecar))
    with closing(refresher):
        # The store sends the claim again, meets the version its first attempt wrote, reads it
        # back, finds its own claim, and the refresh goes ahead: one redemption, no wait.
        assert refresher.submit("sheets", force=True).result(timeout=30).result == "refreshed"
    assert proxy.faults_seen() == [("POST", "/v1/secret/data/oauth-sidecar/grants/sheets", "drop")]
    record = served(root, oauth)
    assert record is not None and record["claim_owner"] == ""
    assert [e["status"] for e in redemptions(oauth)] == [200]
    assert redemptions(oauth)[0]["refresh_token"] == seeded.tokens.refresh_token
    assert oauth.log()["reuse"] == 0


def test_a_lost_answer_to_the_result_write_is_recognised_as_our_own(
    vault, tokens, store, root, oauth, fault_proxies, caplog
):
    register_provider(store, oauth)
    oauth.configure(rotate=True)
    (seeded,) = seed_grants(store, oauth, ["sheets"], ttl=3600)
    proxy = fault_proxies(vault.addr)
    proxy.add("delay", method="POST", path=GRANT_PATH, seconds=0)  # the claim passes
    proxy.add("drop", method="POST", path=GRANT_PATH)  # the result: applied, its answer lost
    settings = fast_settings(vault, tokens.sidecar, VAULT_ADDR=proxy.addr)
    refresher = Refresher(settings, Store(settings, tokens.sidecar))
    with closing(refresher):
        assert refresher.refresh_one("sheets", force=True).result == "refreshed"
    assert proxy.faults_seen("drop") == [("POST", "/v1/secret/data/oauth-sidecar/grants/sheets", "drop")]
    record = served(root, oauth)
    assert record is not None and record["claim_owner"] == ""
    assert record["refresh_token"] != seeded.tokens.refresh_token
    assert [e["refresh_token"] for e in redemptions(oauth)] == [seeded.tokens.refresh_token]
    assert oauth.log()["reuse"] == 0
    assert "new tokens are dropped" not in sidecar_log(caplog)


# -- 6. the sidecar's own Vault token revoked ------------------------------------------------------------


def test_a_revoked_sidecar_token_stops_refreshing_until_a_new_one_is_in_its_file(
    vault, store, root, oauth, tmp_path, caplog
):
    register_provider(store, oauth)
    (seeded,) = seed_grants(store, oauth, ["sheets"], ttl=3600)
    token_file = tmp_path / "vault-token"
    make = lambda: root.auth.token.create(policies=["oauth-sidecar"], ttl="1h")["auth"]["client_token"]  # noqa: E731
    first = make()
    token_file.write_text(first)
    settings = fast_settings(vault, "", VAULT_TOKEN_FILE=str(token_file))
    ready = create_app(settings).test_client()
    refresher = Refresher(settings, Store.own(settings))
    with closing(refresher):
        assert refresher.refresh_one("sheets", force=True).result == "refreshed"
        assert ready.get("/readyz").status_code == 200
        refreshed_at = grant_record(root, "sheets")["last_refreshed_at"]
        root.auth.token.revoke(first)
        assert refresher.submit("sheets", force=True).result(timeout=30).result == "error"
        assert len(redemptions(oauth)) == 1  # only the first refresh reached the provider
        assert grant_record(root, "sheets")["last_refreshed_at"] == refreshed_at
        unready = ready.get("/readyz")
        assert unready.status_code == 503 and "token" in unready.json["error"]["message"]
        second = make()
        token_file.write_text(second)  # as an agent would
        assert refresher.refresh_one("sheets", force=True).result == "refreshed"
        assert ready.get("/readyz").status_code == 200
    record = served(root, oauth)
    assert record is not None and record["last_refreshed_at"] != refreshed_at
    assert len(redemptions(oauth)) == 2
    assert_no_secrets(caplog, first, second, seeded.tokens.refresh_token, record["access_token"])


# -- 7. Vault unavailable between the grant write and the view writes -----------------------------------


def test_views_catch_up_with_a_grant_stored_just_before_vault_became_unavailable(
    vault, tokens, store, root, oauth, fault_proxies
):
    register_provider(store, oauth)
    oauth.configure(rotate=True)
    (seeded,) = seed_grants(store, oauth, ["sheets"], ttl=6)  # the token apps read lives 6 s
    oauth.configure(ttl=30)  # refreshed tokens live 30 s: next due in 28 s with a 2 s margin
    proxy = fault_proxies(vault.addr)
    sealed = {"status": 503, "headers": {"Content-Type": "application/json"}, "body": b'{"errors":["Vault is sealed"]}'}
    proxy.add("answer", path=r"^/v1/secret/data/oauth/(development|production)/sheets$", times=None, **sealed)
    settings = fast_settings(vault, tokens.sidecar, VAULT_ADDR=proxy.addr, SIDECAR_REFRESH_MARGIN="2")
    refresher = Refresher(settings, Store(settings, tokens.sidecar))
    with closing(refresher):
        future = refresher.submit("sheets", force=True)
        wait_for(lambda: grant_record(root, "sheets")["refresh_token"] != seeded.tokens.refresh_token, timeout=10)
        time.sleep(4)  # the grant is stored; Vault now refuses the views for 4 s
        proxy.calm()  # and is back, before the old token expires
        future.result(timeout=30)
        with running(refresher):
            wait_for(lambda: served(root, oauth), timeout=12)  # past the old token's expiry
    assert views(root)["production"]["access_token"] != seeded.tokens.access_token


# -- 8. Vault unreachable when the refresher starts ------------------------------------------------------


def test_the_refresher_waits_for_vault_at_start_up(vault, tokens, store, root, oauth, fault_proxies, tmp_path):
    """A sidecar may start before Vault does: it waits (and says so) instead of exiting."""
    register_provider(store, oauth)
    oauth.configure(ttl=6, rotate=True)
    seed_grants(store, oauth, ["sheets"])
    proxy = fault_proxies(vault.addr)
    proxy.refuse()
    process = refresher_process(vault, tokens.sidecar, tmp_path, VAULT_ADDR=proxy.addr)
    try:
        time.sleep(2.5)
        assert process.poll() is None, process.stdout.read() if process.stdout else ""
        proxy.restore()
        wait_for(lambda: redemptions(oauth), timeout=20)  # refreshing once Vault is there
    finally:
        process.terminate()  # finishes the refresh in flight, views included
        output = process.communicate(timeout=30)[0]
    assert served(root, oauth) and oauth.log()["reuse"] == 0
    assert "waiting for Vault" in output and tokens.sidecar not in output


# -- 9. a view write retried after a newer refresh ------------------------------------------------------


def test_a_late_retry_never_puts_older_tokens_back_into_a_view(vault, tokens, store, root, oauth, fault_proxies):
    """A's refresh fails and Vault refuses A's view writes for a while; B refreshes as soon as A has
    released the grant. Nothing of A's, neither a retry nor a late first write, may put A's older
    tokens back over B's newer ones: A writes a failure's views while it still holds the claim."""
    register_provider(store, oauth)
    (seeded,) = seed_grants(store, oauth, ["sheets"], ttl=3600)
    proxy = fault_proxies(vault.addr)
    sealed = {"status": 503, "headers": {"Content-Type": "application/json"}, "body": b'{"errors":["sealed"]}'}
    proxy.add("answer", method="POST", path=r"^/v1/secret/data/oauth/development/sheets$", times=None, **sealed)
    slow_settings = fast_settings(vault, tokens.sidecar, VAULT_ADDR=proxy.addr)
    settings = fast_settings(vault, tokens.sidecar)
    a = Refresher(slow_settings, Store(slow_settings, tokens.sidecar))
    b = Refresher(settings, Store(settings, tokens.sidecar))
    with closing(a, b):
        oauth.next(token={"status": 503, "body": {"error": "temporarily_unavailable"}})
        failing = a.submit("sheets", force=True)
        wait_for(lambda: grant_record(root)["status"] == "retrying", timeout=10, every=0.02)
        assert b.refresh_one("sheets", force=True).result == "refreshed"  # B's newer tokens, B's views
        proxy.calm()
        assert failing.result(timeout=15).result == "retrying"
    record = served(root, oauth)
    assert record is not None and record["access_token"] != seeded.tokens.access_token


# -- 10. Vault unavailable while a login's tokens are being stored ------------------------------------

SEALED = {"status": 503, "headers": {"Content-Type": "application/json"}, "body": b'{"errors":["Vault is sealed"]}'}
EXCHANGE_MS = 2000  # the provider holds its answer to the code exchange this long: the outage begins meanwhile


@dataclass
class ProxiedSidecar:
    url: str
    proxy: FaultProxy
    trail: Path  # its audit lines


@pytest.fixture
def proxied(vault, tokens, api, fault_proxies, tmp_path) -> Iterator[ProxiedSidecar]:
    """A sidecar over HTTP whose Vault is behind a FaultProxy; the test provider is registered (`api`)."""
    proxy = fault_proxies(vault.addr)
    port, trail = free_port(), tmp_path / "audit.jsonl"
    with serving(served_settings(proxy.addr, tokens.sidecar, port, SIDECAR_AUDIT_LOG=str(trail)), port) as url:
        yield ProxiedSidecar(url, proxy, trail)


def seal_when_consumed(vault, proxy: FaultProxy) -> float:
    """Vault behind `proxy` answers 503 "sealed" to everything from the moment a login is consumed:
    after every check of the callback, while the provider redeems the code (EXCHANGE_MS), before the
    grant is written. Returns when (time.monotonic)."""
    client = hvac.Client(url=vault.addr, token=vault.root_token)  # a thread's own, not the fixture's
    wait_for(lambda: consumed_login(client), timeout=60, every=0.02)
    proxy.add("answer", times=None, **SEALED)
    return time.monotonic()


def audit_lines(trail: Path, action: str) -> list[dict]:
    return [line for line in map(json.loads, trail.read_text().splitlines()) if line["action"] == action]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_login_keeps_its_tokens_through_a_minute_of_vault_unavailability(
    proxied, api, tokens, oauth, root, vault, caplog
):
    """An election or a seal right after the provider redeemed the code: Vault is out for 65 s (503
    "sealed", then no connection at all). The browser is answered within seconds with a page saying
    the secret is being saved, which it keeps saying while Vault is out and which then shows the
    secret connected: the provider's tokens, stored with their views, the code redeemed once."""
    caplog.set_level(logging.DEBUG)
    body, admin = {"name": "sheets", "provider": "mock"}, {"X-Vault-Token": tokens.admin}
    started = requests.post(f"{proxied.url}/v1/secrets", json=body, headers=admin, timeout=30)
    assert started.status_code == 201, started.text
    link = started.json()["authorization_url"]
    lid = link.rsplit("/", 1)[1]
    browser = requests.Session()
    back = callback_url(browser, link)
    oauth.next(token={"delayMs": EXCHANGE_MS})
    with ThreadPoolExecutor(1) as pool:
        sealing = pool.submit(seal_when_consumed, vault, proxied.proxy)
        asked = time.monotonic()
        answer = browser.get(back, timeout=60)
        answered_in = time.monotonic() - asked
        out_since = sealing.result(timeout=10)
    pages = [answer.text]
    assert answer.status_code == 202, answer.text
    assert "Saving sheets" in answer.text and "is being saved" in answer.text
    assert answered_in < 20  # a few seconds past the exchange, not the outage
    again = refresh_target(answer.text)
    assert again.startswith("/callback/saved?") and lid in again

    while time.monotonic() - out_since < 60:  # every poll ends before Vault is back
        if time.monotonic() - out_since > 30:
            proxied.proxy.refuse()  # the second half: no connection at all, as while no node leads
        asked = time.monotonic()
        waiting = browser.get(proxied.url + again, timeout=60)
        assert time.monotonic() - asked < 5  # the page does not wait out Vault's outage
        pages.append(waiting.text)
        assert waiting.status_code == 202 and "is being saved" in waiting.text, waiting.text
        assert api("GET", f"/v1/secrets/sheets/logins/{lid}").json() == {"state": "waiting"}  # another replica
        time.sleep(2)
    time.sleep(max(0.0, out_since + 65 - time.monotonic()))
    assert "oauth-sidecar/grants/sheets" not in vault_tree(root)  # the outage covered the grant write
    proxied.proxy.calm()
    proxied.proxy.restore()
    back_at = datetime.now(UTC)

    def connected_page() -> requests.Response | None:
        page = browser.get(proxied.url + again, timeout=60)
        pages.append(page.text)
        assert page.status_code in (200, 202), page.text
        return page if page.status_code == 200 else None

    done = wait_for(connected_page, timeout=60, every=2)
    assert "sheets is connected to mock" in done.text and "secret/oauth/production/sheets" in done.text
    record = grant_record(root)
    assert record["login_id"] == lid and record["status"] == "active" and record["refresh_token"]
    shown = views(root)
    assert set(shown) == {"development", "production"}
    assert all(view["access_token"] == record["access_token"] for view in shown.values())
    assert oauth.accepts(record["access_token"])
    seen = oauth.log()
    assert seen["tokenRequests"] == 1
    assert api("GET", f"/v1/secrets/sheets/logins/{lid}").json() == {"state": "connected"}
    assert not any(k.startswith("oauth-sidecar/pending/") for k in vault_tree(root))
    # One audit line, a success, written when the save ended, after Vault came back.
    (line,) = audit_lines(proxied.trail, "secret.connected")
    assert (line["target"], line["outcome"]) == ("sheets", "success")
    assert parse_rfc3339(line["time"]) >= back_at
    assert not any("Start the connection again" in page or "log in again" in page for page in pages)
    code = seen["token"][0]["code"]
    secrets = [record["access_token"], record["refresh_token"], record["id_token"], code, CLIENT_SECRET]
    for text in (*pages, sidecar_log(caplog), proxied.trail.read_text()):
        assert not any(secret in text for secret in secrets)


def test_a_login_from_the_settings_page_waits_on_the_saving_page_and_ends_with_its_banner(
    proxied, tokens, oauth, root, vault, page: Page
):
    """The settings UI's "Continue", in a real browser, with Vault out for 10 s from just after the
    code exchange: the saving page, which refreshes itself, then the settings page with its banner."""
    statuses: list[int] = []
    page.on("response", lambda response: statuses.append(response.status) if "/callback" in response.url else None)
    page.goto(f"{proxied.url}/settings")
    page.get_by_label("Vault token").fill(tokens.admin)
    page.get_by_role("button", name="Log in").click()
    page.get_by_role("link", name="Add OAuth 2.0 provider secret").click()
    page.get_by_label("Provider").select_option("mock")
    page.get_by_label("Name").fill("sheets")
    oauth.next(token={"delayMs": EXCHANGE_MS})
    with ThreadPoolExecutor(1) as pool:
        sealing = pool.submit(seal_when_consumed, vault, proxied.proxy)
        page.get_by_role("button", name="Continue").click()
        saving = page.get_by_role("heading", name="Saving sheets…")
        expect(saving).to_be_visible(timeout=30_000)
        out_since = sealing.result(timeout=30)
    time.sleep(max(0.0, out_since + 10 - time.monotonic()))
    assert "oauth-sidecar/grants/sheets" not in vault_tree(root)
    proxied.proxy.calm()
    expect(page).to_have_url(f"{proxied.url}/settings", timeout=60_000)
    expect(page.get_by_role("status")).to_have_text("sheets is connected to mock.")
    assert statuses[0] == 202 and 303 in statuses  # the saving page, then the way back to the settings
    record = grant_record(root)
    assert oauth.accepts(record["access_token"]) and oauth.log()["tokenRequests"] == 1
    assert views(root)["production"]["access_token"] == record["access_token"]
