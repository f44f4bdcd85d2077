"""From an operator's input to a provider: a preset fills in, discovery fills in, validation decides.

Endpoints found by discovery are re-read from the issuer's metadata at most once per
SIDECAR_DISCOVERY_INTERVAL in each process, in memory: the sidecar's own Vault policy may only
read providers, so a new endpoint reaches Vault when an operator saves the provider again.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, cast

from . import inputs, oauth, presets
from .errors import Invalid, OAuthPermanent, OAuthTransient
from .inputs import ProviderDraft, check_url
from .models import Provider, rfc3339

log = logging.getLogger(__name__)


def build(name: str, body: object, client: oauth.Client) -> Provider:
    """Validate a provider body, after filling it from its preset and then from its issuer's metadata.
    Its fields are checked one by one first, so that a bad one is reported before any provider is asked."""
    inputs.validated(ProviderDraft, body, name=name)
    data = dict(cast(dict[str, Any], body))  # as given: a preset and discovery fill in only what it leaves blank
    if data.get("preset"):
        data = _with_preset(data)
    if data.get("issuer") and not (data.get("authorization_url") and data.get("token_url")):
        data = _with_discovery(data, client)
    return _allowed(inputs.provider(name, data), client)


# Every URL of a provider that the sidecar calls, or sends a browser to: one rule for all of them.
_EGRESS_FIELDS = ("authorization_url", "token_url", "revocation_url", "device_authorization_url", "issuer")


def _allowed(provider: Provider, client: oauth.Client) -> Provider:
    """Refused at save time, not at the first refresh: an endpoint outside SIDECAR_EGRESS_ALLOW."""
    for name in _EGRESS_FIELDS:
        _check_egress(getattr(provider, name), name, client)
    return provider


def _check_egress(url: str | None, field: str, client: oauth.Client) -> None:
    if url and not client.allowed(url):
        raise Invalid(f"{field}: the host is not in SIDECAR_EGRESS_ALLOW", {field: "host not allowed"})


def _with_preset(body: dict[str, Any]) -> dict[str, Any]:
    """The preset's fields, overridden by whatever the body gives (blank values give nothing)."""
    filled = presets.expand(body["preset"], body.get("preset_params"))
    given = {k: v for k, v in body.items() if v not in (None, "", [], {}) and k not in ("preset", "preset_params")}
    given_extra = given.get("extra_authorize_params", {})
    return {**filled, **given, "extra_authorize_params": {**filled.get("extra_authorize_params", {}), **given_extra}}


def _with_discovery(body: dict[str, Any], client: oauth.Client) -> dict[str, Any]:
    issuer = check_url(body["issuer"], "issuer")
    _check_egress(issuer, "issuer", client)  # before discovery: no request to a host the sidecar may not call
    try:
        found = client.discover(issuer)
    except (OAuthPermanent, OAuthTransient) as exc:
        raise Invalid(f"issuer: {exc.message}", {"issuer": "discovery failed"}) from None
    given = {k: v for k, v in body.items() if v not in (None, "")}
    if "pkce" not in given and found.get("code_challenge_methods_supported"):
        # RFC 8414: the methods listed are all there are; never fall back to "plain".
        given["pkce"] = "S256" in found["code_challenge_methods_supported"]
    # Only a provider given by its issuer alone follows its metadata later; typed URLs stay as typed.
    typed = any(given.get(field) for field in oauth.DISCOVERED.values())
    return {**found, **given, "discovered_at": "" if typed else rfc3339(datetime.now(UTC))}


def current(provider: Provider, client: oauth.Client, max_age: float) -> Provider:
    """The provider with its endpoints re-read from its issuer's metadata if older than `max_age`
    seconds. If the metadata cannot be read, or now names bad endpoints, the stored ones are kept."""
    if not (provider.discovered_at and provider.issuer):
        return provider
    fields = client.metadata(provider.issuer, max_age)
    if not fields:
        return provider
    try:
        updated = _allowed(inputs.provider(provider.name, {**provider.to_record(), **fields}), client)
    except Invalid as exc:
        log.warning("provider %s: its issuer's metadata is not usable; keeping its endpoints: %s", provider.name,
                    exc.message)  # fmt: skip
        return provider
    return replace(updated, discovered_at=provider.discovered_at)
