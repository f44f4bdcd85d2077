"""Webhook notifications against a real receiver, a real OpenBao and the real test OAuth server."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests
from prometheus_client import REGISTRY
from standardwebhooks.webhooks import Webhook
from werkzeug.serving import make_server

from sidecar.config import Settings
from sidecar.devvault import free_port
from sidecar.egress import Egress
from sidecar.errors import ConfigError
from sidecar.models import Grant, TokenSet
from sidecar.notify import Notifier
from sidecar.refresher import Refresher
from sidecar.store import Store
from sidecar.web import QuietHandler, create_app

from .helpers import CLIENT_SECRET, fast_settings, grant_record, running, sidecar_log, start, views, wait_for

SECRET_KEY = b"plain-webhook-secret-0123456789"
SECRET = base64.b64encode(SECRET_KEY).decode().rstrip("=")  # no prefix, no padding: still Standard Webhooks
WHSEC_KEY = bytes(range(24))
WHSEC = "whsec_" + base64.b64encode(WHSEC_KEY).decode()
INVALID_GRANT = {"status": 400, "body": {"error": "invalid_grant", "error_description": "revoked by user"}}
UNAVAILABLE = {"status": 503, "body": {}}


# -- the receiver ----------------------------------------------------------------------------------


@dataclass
class Delivery:
    headers: dict[str, str]
    body: bytes
    answered: int

    @property
    def event(self) -> dict[str, Any]:
        return json.loads(self.body)

    @property
    def id(self) -> str:
        return self.headers["webhook-id"]


class Receiver:
    """A webhook endpoint on loopback: records every request, answers `status`; can be stopped
    (connections refused) and started again on the same port."""

    def __init__(self) -> None:
        self.status = 200
        self.requests: list[Delivery] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self.port = 0
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/sidecar"

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver._lock:
                    status = receiver.status
                    receiver.requests.append(Delivery({k.lower(): v for k, v in self.headers.items()}, body, status))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def delivered(self, kind: str | None = None) -> list[Delivery]:
        """Requests answered 2xx, optionally only those of one event type (like "grant.recovered")."""
        with self._lock:
            done = [r for r in self.requests if 200 <= r.answered < 300]
        return [r for r in done if kind is None or r.event["type"] == kind]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.stop()


def verify(delivery: Delivery, key: bytes) -> bool:
    """Standard Webhooks verification, by hand: any `v1,` signature over "id.timestamp.body"."""
    h = delivery.headers
    signed = f"{h['webhook-id']}.{h['webhook-timestamp']}.".encode() + delivery.body
    expected = "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    fresh = abs(time.time() - int(h["webhook-timestamp"])) < 300
    return fresh and any(hmac.compare_digest(expected, s) for s in h["webhook-signature"].split())


def notified_metric(event: str, result: str) -> float:
    return REGISTRY.get_sample_value("oauth_sidecar_notifications_total", {"event": event, "result": result}) or 0.0


# -- refreshers and a web side that notify -----------------------------------------------------------


@pytest.fixture
def make_refresher(vault, tokens, root, receiver) -> Iterator[Any]:
    made: list[Refresher] = []

    def build(secret: str | None = SECRET, **extra: str) -> Refresher:
        webhook = {"SIDECAR_WEBHOOK_URL": receiver.url, "SIDECAR_WEBHOOK_SECRET": secret} if secret else {}
        settings = fast_settings(vault, tokens.sidecar, **webhook, **extra)
        made.append(Refresher(settings, Store(settings, tokens.sidecar)))
        return made[-1]

    yield build
    for refresher in made:
        refresher.shutdown()


@pytest.fixture
def notifying_web(vault, tokens, api, receiver) -> Iterator[Any]:
    """The web app over HTTP with the webhook configured; returns an `api`-like caller for it.
    (The shared `live` sidecar has no webhook.) `api` registers the test provider."""
    port = free_port()
    settings = Settings.from_env(
        {
            "VAULT_ADDR": vault.addr,
            "VAULT_TOKEN": tokens.sidecar,
            "SIDECAR_PUBLIC_URL": f"http://127.0.0.1:{port}",
            "SIDECAR_WEBHOOK_URL": receiver.url,
            "SIDECAR_WEBHOOK_SECRET": SECRET,
        }
    )
    server = make_server("127.0.0.1", port, create_app(settings), threaded=True, request_handler=QuietHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    def call(method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = {"X-Vault-Token": tokens.admin, **kwargs.pop("headers", {})}
        return requests.request(method, f"{settings.public_url}{path}", headers=headers, timeout=30, **kwargs)

    yield call
    server.shutdown()


def login(web: Any, name: str = "sheets") -> None:
    """A browser login for `name`, new or (a person reconnecting) replacing it."""
    assert requests.Session().get(start(web, name, replace=True), timeout=30).status_code == 200


# -- a grant that needs a new login --------------------------------------------------------------------


@pytest.mark.parametrize(("secret", "key"), [(SECRET, SECRET_KEY), (WHSEC, WHSEC_KEY)], ids=["plain", "whsec"])
def test_a_dead_grant_is_announced_once_signed_and_without_tokens(
    connect, make_refresher, receiver, root, oauth, secret, key
):
    before = connect(ttl=3600)
    refresher = make_refresher(secret)
    oauth.next(token=INVALID_GRANT)
    assert refresher.refresh_one("sheets", force=True).result == "reauthorization_required"

    [hook] = receiver.requests
    assert hook.answered == 200 and hook.headers["content-type"] == "application/json"
    assert hook.id.startswith("msg_")
    assert verify(hook, key)
    # A receiver's off-the-shelf verifier accepts it too (it raises otherwise).
    assert Webhook(secret).verify(hook.body, dict(hook.headers))["type"] == "grant.reauthorization_required"
    event = hook.event
    assert event["type"] == "grant.reauthorization_required"
    assert (event["secret"], event["provider"], event["status"]) == ("sheets", "mock", "reauthorization_required")
    assert event["environments"] == ["development", "production"]
    assert "invalid_grant" in event["last_error"] and event["failing_since"].endswith("Z")
    wire = hook.body.decode() + json.dumps(hook.headers)
    for secret_value in (before["access_token"], before["refresh_token"], CLIENT_SECRET, secret, SECRET):
        assert secret_value not in wire
    assert grant_record(root)["notified"] == "reauthorization_required"

    calls = oauth.log()["tokenRequests"]
    assert [o.result for o in refresher.refresh_due()] == []  # not due, and nothing owed
    assert refresher.refresh_one("sheets").result == "reauthorization_required"
    assert len(receiver.requests) == 1 and oauth.log()["tokenRequests"] == calls


# -- failing for a while, then recovering -----------------------------------------------------------


def test_retrying_is_announced_after_notify_after_then_recovered(connect, make_refresher, receiver, root, oauth):
    connect(ttl=3600)
    refresher = make_refresher(SIDECAR_NOTIFY_AFTER="1")
    oauth.next(token=[UNAVAILABLE, UNAVAILABLE])

    assert refresher.refresh_one("sheets", force=True).result == "retrying"
    first = grant_record(root)
    assert first["status"] == "retrying" and first["failing_since"] and first["notified"] == ""
    assert receiver.requests == []  # failing for less than a second

    time.sleep(1.1)
    assert refresher.refresh_one("sheets", force=True).result == "retrying"
    [retrying] = receiver.requests
    assert verify(retrying, SECRET_KEY)
    assert retrying.event["type"] == "grant.retrying" and retrying.event["status"] == "retrying"
    assert retrying.event["failing_since"] and retrying.event["last_error"]
    second = grant_record(root)
    assert second["notified"] == "retrying" and second["failing_since"] == first["failing_since"]

    assert refresher.refresh_one("sheets", force=True).result == "refreshed"
    assert [r.event["type"] for r in receiver.requests] == ["grant.retrying", "grant.recovered"]
    recovered = receiver.requests[1]
    assert verify(recovered, SECRET_KEY) and recovered.id != retrying.id
    assert recovered.event["status"] == "active" and recovered.event["secret"] == "sheets"
    after = grant_record(root)
    assert (after["status"], after["notified"], after["failing_since"]) == ("active", "", "")
    assert refresher.refresh_one("sheets", force=True).result == "refreshed"
    assert len(receiver.requests) == 2  # a healthy refresh announces nothing


def test_each_recovery_has_its_own_webhook_id(connect, make_refresher, receiver, root, oauth):
    connect(ttl=3600)
    refresher = make_refresher(SIDECAR_NOTIFY_AFTER="1")
    for _ in range(2):
        oauth.next(token=[UNAVAILABLE, UNAVAILABLE])
        refresher.refresh_one("sheets", force=True)
        time.sleep(1.1)
        refresher.refresh_one("sheets", force=True)
        assert refresher.refresh_one("sheets", force=True).result == "refreshed"
    recoveries = receiver.delivered("grant.recovered")
    assert len(recoveries) == 2
    assert recoveries[0].id != recoveries[1].id


# -- the receiver is down ------------------------------------------------------------------------


@pytest.mark.parametrize("outage", ["http-500", "refused"])
def test_an_undelivered_announcement_is_retried_until_delivered(
    connect, make_refresher, receiver, root, oauth, caplog, outage
):
    caplog.set_level(logging.INFO, logger="sidecar")
    connect(ttl=3600)
    refresher = make_refresher()
    if outage == "refused":
        receiver.stop()
    else:
        receiver.status = 500
    failed = notified_metric("reauthorization_required", "failed")
    delivered = notified_metric("reauthorization_required", "delivered")

    oauth.next(token=INVALID_GRANT)
    assert refresher.refresh_one("sheets", force=True).result == "reauthorization_required"  # no crash
    record = grant_record(root)
    assert (record["status"], record["notified"]) == ("reauthorization_required", "")
    assert notified_metric("reauthorization_required", "failed") == failed + 1
    assert "was not delivered" in sidecar_log(caplog)
    if outage == "http-500":
        assert [r.answered for r in receiver.requests] == [500, 500]  # two attempts, one event id

    with running(refresher):
        if outage == "http-500":  # the loop keeps trying while the receiver still fails
            wait_for(lambda: len(receiver.requests) > 3, timeout=10)
            receiver.status = 200
        else:
            receiver.start()
        wait_for(lambda: grant_record(root)["notified"] == "reauthorization_required", timeout=15)
        time.sleep(1.5)  # a few more ticks and resyncs: nothing more is sent
    assert notified_metric("reauthorization_required", "delivered") == delivered + 1
    assert len({r.id for r in receiver.requests}) == 1  # every attempt was the same event
    [hook] = receiver.delivered()
    assert hook.event["type"] == "grant.reauthorization_required" and verify(hook, SECRET_KEY)


# -- a new login fixes a dead grant --------------------------------------------------------------------


def test_a_new_login_leaves_the_recovery_to_the_refresher(connect, make_refresher, api, receiver, root, oauth):
    """The callback never waits for a webhook: the new grant owes the announcement, and the refresher
    delivers it, retrying while the receiver is down."""
    connect(ttl=3600)
    refresher = make_refresher()
    oauth.next(token=INVALID_GRANT)
    assert refresher.refresh_one("sheets", force=True).result == "reauthorization_required"
    receiver.status = 500
    login(api)
    record = grant_record(root)
    assert (record["status"], record["notified"]) == ("active", "reauthorization_required")
    assert len(receiver.requests) == 1  # the web side sent nothing

    assert refresher.refresh_one("sheets").result == "announcement_failed"
    receiver.status = 200
    assert refresher.refresh_one("sheets").result == "announced"
    [dead, recovered] = receiver.delivered()
    assert (dead.event["type"], recovered.event["type"]) == ("grant.reauthorization_required", "grant.recovered")
    assert verify(recovered, SECRET_KEY) and recovered.event["status"] == "active"
    assert len({r.id for r in receiver.requests if r.event["type"] == "grant.recovered"}) == 1
    record = grant_record(root)
    assert (record["status"], record["notified"], record["failing_since"]) == ("active", "", "")
    assert record["access_token"] not in recovered.body.decode()

    login(api)  # connecting a healthy grant again announces nothing
    assert refresher.refresh_one("sheets").result == "not_due"
    assert len(receiver.delivered()) == 2


# -- no webhook ------------------------------------------------------------------------------------


def grant(status: str = "active", notified: str = "", failing_for: float | None = None) -> Grant:
    now = datetime.now(UTC)
    return Grant(
        name="sheets",
        provider="mock",
        environments=("production",),
        tokens=TokenSet("at-secret", "Bearer", now + timedelta(hours=1), ("openid",), "rt-secret"),
        status=status,
        failing_since=None if failing_for is None else now - timedelta(seconds=failing_for),
        notified=notified,
    )


def test_without_a_webhook_nothing_is_owed_or_sent(make_refresher, connect, receiver, root, oauth):
    quiet = Notifier(Settings(), Egress())
    now = datetime.now(UTC)
    for g in (
        grant("reauthorization_required", failing_for=5),
        grant("retrying", failing_for=10**6),
        grant("active", notified="retrying"),
    ):
        assert quiet.owed(g, now) is None
        assert quiet.send("retrying", g) is False

    connect(ttl=3600)
    oauth.next(token=INVALID_GRANT)
    refresher = make_refresher(secret=None)
    assert refresher.refresh_one("sheets", force=True).result == "reauthorization_required"
    assert refresher.refresh_due() == []
    assert receiver.requests == []
    record = grant_record(root)
    assert (record["status"], record["notified"]) == ("reauthorization_required", "")


def test_what_is_owed_when():
    notifier = Notifier(Settings(webhook_url="http://127.0.0.1:9/x", webhook_secret=SECRET, notify_after=60), Egress())
    now = datetime.now(UTC)
    assert notifier.owed(grant(), now) is None
    assert notifier.owed(grant("active", notified="retrying"), now) == "recovered"
    assert notifier.owed(grant("retrying", failing_for=30), now) is None
    assert notifier.owed(grant("retrying", failing_for=61), now) == "retrying"
    assert notifier.owed(grant("retrying", notified="retrying", failing_for=600), now) is None
    assert notifier.owed(grant("reauthorization_required", failing_for=0), now) == "reauthorization_required"
    assert notifier.owed(grant("reauthorization_required", notified="retrying", failing_for=0), now) == (
        "reauthorization_required"
    )
    assert notifier.owed(grant("reauthorization_required", notified="reauthorization_required"), now) is None


# -- configuration ---------------------------------------------------------------------------------


BASE = {"VAULT_ADDR": "http://127.0.0.1:8200", "VAULT_TOKEN": "hvs.x"}


def test_a_webhook_url_needs_a_secret():
    with pytest.raises(ConfigError, match=r"SIDECAR_WEBHOOK_URL.*SIDECAR_WEBHOOK_SECRET"):
        Settings.from_env({**BASE, "SIDECAR_WEBHOOK_URL": "https://hooks.example.com/x"})


def test_a_webhook_url_must_be_https_unless_loopback():
    with pytest.raises(ConfigError, match=r"SIDECAR_WEBHOOK_URL.*https"):
        Settings.from_env(
            {**BASE, "SIDECAR_WEBHOOK_URL": "http://hooks.example.com/x", "SIDECAR_WEBHOOK_SECRET": SECRET}
        )
    local = Settings.from_env(
        {**BASE, "SIDECAR_WEBHOOK_URL": "http://127.0.0.1:9000/x", "SIDECAR_WEBHOOK_SECRET": SECRET}
    )
    assert local.webhook_url == "http://127.0.0.1:9000/x" and local.notify_after == 900


def test_the_webhook_secret_is_read_from_a_file(tmp_path):
    path = tmp_path / "webhook-secret"
    path.write_text(WHSEC + "\n")
    settings = Settings.from_env(
        {
            **BASE,
            "SIDECAR_WEBHOOK_URL": "https://hooks.example.com/x",
            "SIDECAR_WEBHOOK_SECRET_FILE": str(path),
            "SIDECAR_NOTIFY_AFTER": "60",
        }
    )
    assert settings.webhook_secret == WHSEC and settings.notify_after == 60
    assert WHSEC not in repr(settings)
    with pytest.raises(ConfigError, match="SIDECAR_WEBHOOK_SECRET_FILE"):
        Settings.from_env({**BASE, "SIDECAR_WEBHOOK_SECRET_FILE": str(tmp_path / "missing")})


@pytest.mark.parametrize("secret", ["whsec_!!!", "not base64 at all", "whsec_c2hvcnQ=", ""])
def test_a_webhook_secret_that_is_not_base64_of_16_bytes_is_a_config_error(secret):
    with pytest.raises(ConfigError, match="SIDECAR_WEBHOOK_SECRET"):
        Settings.from_env(
            {**BASE, "SIDECAR_WEBHOOK_URL": "https://hooks.example.com/x", "SIDECAR_WEBHOOK_SECRET": secret or " x"}
        )


def test_a_failing_receiver_never_holds_up_a_refresh(connect, make_refresher, receiver, root, oauth):
    """A recovery owed while the receiver is down waits; the token is refreshed on time regardless."""
    connect(ttl=3600)
    refresher = make_refresher()
    oauth.next(token=INVALID_GRANT)
    assert refresher.refresh_one("sheets", force=True).result == "reauthorization_required"
    receiver.status = 500
    first = connect(ttl=4)  # a new login with tokens that live 4 s; the recovery is owed
    with running(refresher):
        wait_for(lambda: grant_record(root)["access_token"] != first["access_token"], timeout=10)
    record = grant_record(root)
    assert record["status"] == "active" and record["notified"] == "reauthorization_required"  # still owed
    assert views(root)["production"]["access_token"] == record["access_token"]
    assert not receiver.delivered("grant.recovered")
