"""Webhook notifications: a grant needs a new login, has been failing too long, or recovered.

Bodies are signed as Standard Webhooks (https://www.standardwebhooks.com) sign them, so any of
its verifier libraries checks them: `webhook-signature: v1,<base64 HMAC-SHA256 of
"<webhook-id>.<webhook-timestamp>.<body>">`. Delivery is at least once; `webhook-id` is the same
for every delivery of one event, so a receiver can drop repeats.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
from datetime import UTC, datetime
from enum import StrEnum

from . import egress
from .config import Settings, webhook_key
from .errors import OAuthPermanent, OAuthTransient
from .metrics import NOTIFICATIONS
from .models import Grant, Status, rfc3339

log = logging.getLogger(__name__)

TIMEOUT = 3.0
ATTEMPTS = 2  # a refresh worker waits for a failing receiver at most 2 x 3 s + 0.5 s


class Event(StrEnum):
    """What a webhook announces about a grant (its `type` is `grant.<event>`)."""

    REAUTHORIZATION_REQUIRED = "reauthorization_required"
    RETRYING = "retrying"
    RECOVERED = "recovered"


class Notifier:
    def __init__(self, settings: Settings, http: egress.Egress) -> None:
        self.url, self._http = settings.webhook_url, http
        secret = settings.webhook_secret or ""
        self._key = webhook_key(secret)
        self.after = settings.notify_after

    def owed(self, grant: Grant, now: datetime) -> Event | None:
        """The event to announce about this grant now, if any."""
        if not self.url:
            return None
        if grant.status == Status.ACTIVE:
            return Event.RECOVERED if grant.notified else None
        if grant.notified == grant.status:
            return None
        if grant.status == Status.REAUTHORIZATION_REQUIRED:
            return Event.REAUTHORIZATION_REQUIRED  # a person must act: no reason to wait
        since = grant.failing_since
        return Event(grant.status) if since and (now - since).total_seconds() >= self.after else None

    def send(self, event: Event, grant: Grant) -> bool:
        """POST one event; True once the receiver answered 2xx. Never raises."""
        if not self.url:
            return False
        body = json.dumps(
            {
                "type": f"grant.{event}",
                "secret": grant.name,
                "provider": grant.provider,
                "environments": list(grant.environments),
                "status": grant.status,
                "last_error": grant.last_error,
                "failing_since": rfc3339(grant.failing_since),
                "timestamp": rfc3339(datetime.now(UTC)),
            }
        )
        # One id per event of one failure episode: repeats share it, the next episode has its own.
        episode = f"{grant.name}|{event}|{rfc3339(grant.failing_since, precise=True)}"
        event_id = "msg_" + hashlib.sha256(episode.encode()).hexdigest()[:32]
        for attempt in range(ATTEMPTS):
            stamp = str(int(time.time()))
            mac = hmac.new(self._key, f"{event_id}.{stamp}.{body}".encode(), hashlib.sha256).digest()
            headers = {
                "Content-Type": "application/json",
                "webhook-id": event_id,
                "webhook-timestamp": stamp,
                "webhook-signature": "v1," + base64.b64encode(mac).decode(),
            }
            try:
                answer = self._http.request("POST", self.url, "webhook", data=body, headers=headers, timeout=TIMEOUT)
                outcome = f"HTTP {answer.status}"
                if 200 <= answer.status < 300:
                    NOTIFICATIONS.labels(event, "delivered").inc()
                    log.info("announced %s of %s", event, grant.name)
                    return True
            except OAuthTransient as exc:
                outcome = exc.message
            except OAuthPermanent as exc:
                outcome = exc.message
                break  # not allowed, or an answer too large: the same again now would fare no better
            if attempt + 1 < ATTEMPTS:
                time.sleep(0.5 * 2**attempt)
        NOTIFICATIONS.labels(event, "failed").inc()
        log.warning(
            "the webhook for %s of %s was not delivered (%s); it will be tried again", event, grant.name, outcome
        )
        return False
