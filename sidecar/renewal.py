"""One grant's refresh under a claim: re-read it, claim it, redeem its refresh token, store the
result; or record the failure, back off, and mark a dead grant for a new login.

Replicas coordinate only through KV check-and-set: the claim `{owner, until}` is written at the
version just read, and only its holder sends the refresh token. Every write that ends a refresh
releases the claim (the `Grant` state changes do that).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from . import approvals, oauth
from .announcer import Announcer
from .claims import ClaimWatch
from .clock import Clock
from .config import Settings
from .duequeue import DueQueue
from .errors import Conflict, NotFound, OAuthPermanent, OAuthTransient, SidecarError, VaultUnavailable
from .index import Entry, Keeper
from .models import Grant, GrantType, Provider, Status, TokenSet, refresh_due, rfc3339
from .notify import Notifier
from .provider_cache import ProviderCache
from .results import ResultWriter
from .store import Store

log = logging.getLogger(__name__)

BACKOFF_MAX = 600.0
ERROR_RETRY = 10.0  # seconds before a grant whose refresh hit an error (Vault down, say) is looked at again
NOT_EXTENDED_WAIT = 30.0  # seconds between refreshes that keep answering an expiry already past
# Answers that mean the refresh token itself is dead: a person must log in again.
DEAD_GRANT = frozenset({"invalid_grant", "unauthorized_client"})


class RefreshResult(StrEnum):
    """What one refresh attempt came to: the `outcome` label of oauth_sidecar_refreshes_total."""

    REFRESHED = "refreshed"
    NOT_DUE = "not_due"
    CLAIMED_ELSEWHERE = "claimed_elsewhere"  # a sibling's claim is live
    LOST_RACE = "lost_race"  # a sibling claimed or wrote it between our read and our claim
    CLAIM_TOO_SLOW = "claim_too_slow"
    SUPERSEDED = "superseded"  # the grant changed while its refresh was in flight
    RETRYING = "retrying"
    REAUTHORIZATION_REQUIRED = "reauthorization_required"
    NO_REFRESH_TOKEN = "no_refresh_token"  # noqa: S105 - a name, not a secret
    MISSING = "missing"
    ERROR = "error"
    ANNOUNCED = "announced"
    ANNOUNCEMENT_FAILED = "announcement_failed"


FAILED = frozenset(
    {
        RefreshResult.RETRYING,
        RefreshResult.REAUTHORIZATION_REQUIRED,
        RefreshResult.ERROR,
        RefreshResult.ANNOUNCEMENT_FAILED,
    }
)
# Another replica has the grant in hand: try again shortly (the API answers 409).
ELSEWHERE = frozenset(
    {RefreshResult.CLAIMED_ELSEWHERE, RefreshResult.LOST_RACE, RefreshResult.SUPERSEDED, RefreshResult.CLAIM_TOO_SLOW}
)


class RefreshFailed(SidecarError):
    code = "refresh_failed"
    status = 502


@dataclass(frozen=True)
class Outcome:
    name: str
    result: RefreshResult
    detail: str = ""

    @property
    def failed(self) -> bool:
        return self.result in FAILED


def _not_extended(before: TokenSet, after: TokenSet, now: datetime) -> datetime | None:
    """When to try again if a refresh gave back the same access token without moving its expiry on
    (None: it did not). Computing the next refresh from an expiry that does not move would refresh
    ever more often as it nears; instead wait for the token to expire, when the provider must issue
    a new one, and after that no sooner than NOT_EXTENDED_WAIT."""
    if after.access_token != before.access_token or before.expires_at is None or after.expires_at is None:
        return None
    if after.expires_at > before.expires_at:
        return None
    return (
        after.expires_at if (after.expires_at - now).total_seconds() > 1 else now + timedelta(seconds=NOT_EXTENDED_WAIT)
    )


class Renewal:
    """Refreshes one grant at a time; any number of threads may each refresh another grant at once."""

    def __init__(
        self, settings: Settings, store: Store, client: oauth.Client, owner: str, queue: DueQueue, index: Keeper,
        clock: Clock, stopping: Callable[[], float | None],
    ) -> None:  # fmt: skip
        self.settings, self.store, self.client, self.owner, self.queue = settings, store, client, owner, queue
        self.index = index
        self._clock = clock
        self.announcer = Announcer(store, Notifier(settings, client.http), clock)
        self.providers = ProviderCache(store, client, settings.discovery_interval, clock)
        self.claims = ClaimWatch(owner, settings.claim_ttl, clock)
        self.results = ResultWriter(store, stopping, clock)

    def schedule(self, grant: Grant, at: datetime | None) -> None:
        self.queue.schedule(grant.name, grant.status, at)

    def settle(self, grant: Grant, version: int, provider: Provider) -> datetime | None:
        """Queue the grant as stored at `version` (by us, or read so), and note its index entry if the
        index says otherwise: siblings learn it at their next tick. Returns its due time."""
        due = self.due_time(grant, provider)
        self.schedule(grant, due)
        self.index.note(grant.name, Entry.of(grant, due, version))
        return due

    def forget(self, name: str) -> None:
        self.queue.forget([name])
        self.claims.forget(name)

    def _margin(self, provider: Provider) -> int:
        """The provider's refresh margin, else SIDECAR_REFRESH_MARGIN."""
        return provider.refresh_margin if provider.refresh_margin is not None else self.settings.refresh_margin

    def _refresh_time(self, grant: Grant, provider: Provider) -> datetime | None:
        """When to refresh (None: never on a timer)."""
        due = refresh_due(grant, provider, self.settings.refresh_margin)
        if due and grant.claim_until and grant.claim_owner != self.owner:
            due = max(due, grant.claim_until)  # a live claim elsewhere: look again once it lapses
        return due

    def due_time(self, grant: Grant, provider: Provider) -> datetime | None:
        """When to look at the grant next: when it is to be refreshed, or now if an announcement is owed."""
        if self.announcer.owed_now(grant):
            return self._clock.now()
        return self._refresh_time(grant, provider)

    def refresh_one(self, name: str, force: bool = False) -> Outcome:
        """Claim the grant if it is due (or `force`), redeem its refresh token, store the result."""
        now = self._clock.now()
        try:
            current = self.store.read("grants", name)
        except NotFound:
            self.forget(name)
            self.index.note(name, None)
            return Outcome(name, RefreshResult.MISSING)
        grant = Grant.from_record(name, current.data)
        provider = self.providers.get(grant.provider)
        due = self._refresh_time(grant, provider)
        held = self.claims.held_elsewhere(name, current.version, grant, now)
        if held:
            self.schedule(grant, max(due or now, now + timedelta(seconds=held)))
            return Outcome(name, RefreshResult.CLAIMED_ELSEWHERE)
        refresh_now = force or (due is not None and self.queue.is_due(name, due, now))
        if not refresh_now and self.announcer.owed_now(grant, now):  # a refresh announces on success
            return self._announce(grant, current.version, provider)
        if grant.status == Status.REAUTHORIZATION_REQUIRED:
            self.settle(grant, current.version, provider)
            return Outcome(name, RefreshResult.REAUTHORIZATION_REQUIRED, f"{grant.last_error}; connect it again")
        if not grant.renewable:
            self.settle(grant, current.version, provider)
            return Outcome(name, RefreshResult.NO_REFRESH_TOKEN, "this grant has no refresh token; connect it again")
        if not refresh_now:
            self.settle(grant, current.version, provider)  # repairs an index entry that said it was due
            return Outcome(name, RefreshResult.NOT_DUE)
        return self._claim_and_renew(grant, current.version, provider, due)

    def _claim_and_renew(self, grant: Grant, read_at: int, provider: Provider, due: datetime | None) -> Outcome:
        """Claim the grant at the version read, then (only then) redeem, and store the result."""
        name = grant.name
        claimed = grant.claimed(self.owner, self._clock.now() + timedelta(seconds=self.settings.claim_ttl))
        sent = self._clock.monotonic()
        try:
            version = self.store.put_grant(claimed, cas=read_at)
        except Conflict:
            return Outcome(name, RefreshResult.LOST_RACE)  # a sibling claimed or wrote it first; it is theirs
        self.claims.forget(name)
        if self._clock.monotonic() - sent > self.settings.claim_ttl / 2:
            # Too little of the claim is left to redeem and store safely: a sibling may take it
            # over meanwhile. Nothing was redeemed; the claim stays ours until it lapses.
            log.warning("claiming %s took longer than half the claim's lifetime; not refreshing now", name)
            return Outcome(name, RefreshResult.CLAIM_TOO_SLOW)
        # From here on, only this replica may use the refresh token.
        try:
            tokens = self._renew(grant, provider)
        except (OAuthTransient, OAuthPermanent) as exc:
            return self._not_renewed(claimed, version, provider, exc)
        done = self._clock.now()
        refreshed = grant.refreshed(tokens, done, _not_extended(grant.tokens, tokens, done))
        stored = self.results.store_result(refreshed, version)
        if stored is None:
            return Outcome(name, RefreshResult.SUPERSEDED, "the grant changed while its refresh was in flight")
        refreshed = self.announcer.record(refreshed, stored)  # only once the new tokens are safe
        next_due = self.settle(refreshed, stored, provider)
        log.info("refreshed %s (was due %s); expires %s, next due %s",
                 name, rfc3339(due), rfc3339(tokens.expires_at), rfc3339(next_due))  # fmt: skip
        return Outcome(name, RefreshResult.REFRESHED)

    def _not_renewed(
        self, claimed: Grant, version: int, provider: Provider, exc: OAuthTransient | OAuthPermanent
    ) -> Outcome:
        """The provider did not renew: a dead refresh token needs a login; anything else is retried."""
        if isinstance(exc, OAuthTransient):
            return self._failed(claimed, version, provider, exc.message, exc.retry_after)
        if exc.error in DEAD_GRANT and claimed.grant_type != GrantType.CLIENT_CREDENTIALS:  # a refresh token died
            return self._dead(claimed.name, version, exc.message, provider)
        if exc.error == "invalid_client":
            self.providers.drop(provider.name)  # pick up a fixed client secret at the next try
            message = f"{exc.message}: the provider's client credentials are refused; fix the provider"
            return self._failed(claimed, version, provider, message, None)
        return self._failed(claimed, version, provider, exc.message, None)

    def _renew(self, grant: Grant, provider: Provider) -> TokenSet:
        """New tokens: with the client's own credentials, else by redeeming the refresh token."""
        refusal = self.providers.get_with_refusal(provider.name)[1]
        if refusal:  # the provider was changed outside the sidecar: send it nothing
            raise OAuthPermanent(refusal, error=approvals.CHANGED)
        if grant.grant_type == GrantType.CLIENT_CREDENTIALS:
            return self.client.client_credentials(provider, grant.tokens.scopes)
        if not grant.tokens.refresh_token:  # `renewable` says there is one; never send an empty one
            raise OAuthPermanent("this grant has no refresh token; connect it again")
        return self.client.refresh(provider, grant.tokens.refresh_token, grant.tokens.scopes)

    def _announce(self, grant: Grant, version: int, provider: Provider) -> Outcome:
        """Deliver an announcement owed outside a refresh (a grant died, or a new login fixed it);
        tried again until delivered."""
        announced = self.announcer.record(grant, version)
        if announced is grant:  # tried again later, but never later than the grant's refresh
            retry = self._clock.now() + timedelta(seconds=max(ERROR_RETRY, self.settings.refresh_interval))
            due = self._refresh_time(grant, provider)
            self.schedule(grant, min(due, retry) if due else retry)
            return Outcome(grant.name, RefreshResult.ANNOUNCEMENT_FAILED)
        self.schedule(announced, self.due_time(announced, provider))
        return Outcome(grant.name, RefreshResult.ANNOUNCED)

    def _failed(
        self, claimed: Grant, version: int, provider: Provider, message: str, retry_after: float | None
    ) -> Outcome:
        """Keep the current token, record the failure, back off; the claim is released."""
        failures = claimed.failures + 1
        delay = self._backoff(claimed, provider, failures, retry_after)
        now = self._clock.now()
        failed = claimed.failed(message, now + timedelta(seconds=delay), now)
        failed = self.announcer.with_announcement(failed)
        self.results.views_while_claimed(failed)
        try:
            self.settle(failed, self.store.put_grant(failed, cas=version), provider)  # releases the claim
        except (Conflict, VaultUnavailable) as exc:
            log.warning("could not record the failed refresh of %s: %s", claimed.name, exc.message)
            self.schedule(failed, self.due_time(failed, provider))
        log.warning("refresh of %s failed (attempt %d), next in %.0fs: %s", claimed.name, failures, delay, message)
        return Outcome(claimed.name, RefreshResult.RETRYING, message)

    def _backoff(self, grant: Grant, provider: Provider, failures: int, retry_after: float | None) -> float:
        """Exponential with jitter, from a base that suits the token's lifetime; Retry-After honoured."""
        margin = self._margin(provider)
        issued = grant.last_refreshed_at or grant.connected_at
        lifetime = (grant.tokens.expires_at - issued).total_seconds() if grant.tokens.expires_at and issued else 0
        lead = min(margin, lifetime / 2) if lifetime > 0 else margin
        base = min(5.0, max(0.5, lead / 4))
        jitter = random.uniform(0.8, 1.2)  # noqa: S311 - spreads retries out; nothing secret depends on it
        delay = min(base * 2 ** (failures - 1) * jitter, BACKOFF_MAX)
        return float(max(delay, retry_after or 0.0))

    def _dead(self, name: str, version: int, message: str, provider: Provider) -> Outcome:
        """The refresh token is refused for good. Re-read first: a sibling may have refreshed it."""
        latest = self.store.read("grants", name)
        if latest.version != version:
            return Outcome(name, RefreshResult.SUPERSEDED, "another replica changed the grant meanwhile")
        before = Grant.from_record(name, latest.data)
        marked = before.needs_login(message, self._clock.now())
        marked = self.announcer.with_announcement(marked)
        self.results.views_while_claimed(marked)
        try:
            version = self.store.put_grant(marked, cas=latest.version)  # releases the claim
        except Conflict:
            return Outcome(name, RefreshResult.SUPERSEDED, "another replica changed the grant meanwhile")
        self.settle(marked, version, provider)
        log.warning("grant %s needs a new login: %s", name, message)
        return Outcome(name, RefreshResult.REAUTHORIZATION_REQUIRED, message)
