"""The refresher's view of providers: each as it stands now, cached briefly, with its approval."""

from __future__ import annotations

import threading

from . import approvals, oauth, providers
from .clock import Clock
from .errors import OAuthPermanent
from .models import Provider
from .store import Store

PROVIDER_TTL = 30.0  # seconds a provider's settings are cached; a changed client secret applies after this


class ProviderCache:
    def __init__(self, store: Store, client: oauth.Client, discovery_interval: float, clock: Clock) -> None:
        self._store, self._client, self._discovery_interval, self._clock = store, client, discovery_interval, clock
        self._lock = threading.Lock()
        # name -> (monotonic time read, the provider now), for providers whose endpoints are approved
        self._cached: dict[str, tuple[float, Provider]] = {}

    def get(self, name: str) -> Provider:
        return self.get_with_refusal(name)[0]

    def get_with_refusal(self, name: str) -> tuple[Provider, str]:
        """The provider as it stands now, and why no token may be sent for it, if so: it no longer
        matches where it was approved to send tokens (checked on the stored record, before discovery
        fills it in). A refused provider is not cached: a save through the sidecar mends it at once."""
        with self._lock:
            cached = self._cached.get(name)
        if cached and self._clock.monotonic() - cached[0] < PROVIDER_TTL:
            return cached[1], ""
        stored = self._store.get_provider(name)
        provider = providers.current(stored, self._client, self._discovery_interval)
        try:
            approvals.check_or_approve(self._store, stored)
        except OAuthPermanent as exc:
            return provider, exc.message
        with self._lock:
            self._cached[name] = (self._clock.monotonic(), provider)
        return provider, ""

    def drop(self, name: str) -> None:
        """Read it again next time (a refused client secret may have been fixed meanwhile)."""
        with self._lock:
            self._cached.pop(name, None)
