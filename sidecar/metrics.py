"""Prometheus metrics. Under `oauth-sidecar serve` the refresher and the web workers are separate
processes, so prometheus-client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR) joins them."""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

REFRESHES = Counter("oauth_sidecar_refreshes_total", "Refresh attempts by outcome.", ["outcome"])
REFRESH_SECONDS = Histogram(
    "oauth_sidecar_refresh_seconds",
    "Time from claim to stored result of one refresh.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
GRANTS = Gauge(
    "oauth_sidecar_grants", "Grants known to the refresher, by status.", ["status"], multiprocess_mode="livemax"
)
NOTIFICATIONS = Counter(
    "oauth_sidecar_notifications_total", "Webhook notifications by event and result.", ["event", "result"]
)
VAULT_ERRORS = Counter("oauth_sidecar_vault_errors_total", "Vault calls that failed, by kind.", ["kind"])


def exposition() -> tuple[bytes, str]:
    """The metrics page: this process's, or every process's in multiprocess mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
