"""Well-known providers as data: their endpoints, default scopes and quirks.

A preset fills in a provider body; whatever the operator gives explicitly wins. Parameters
(an Entra tenant, an Okta domain) are substituted into the URLs only after passing `PARAM_RE`,
so no parameter can change a URL's scheme, host boundary, path or query.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import Invalid

# A DNS name, a tenant GUID, or a word such as "common": never "/", "@", "?", "#" or ":".
PARAM_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")


@dataclass(frozen=True)
class Preset:
    title: str
    docs: str  # the provider's own OAuth documentation
    authorization_url: str
    token_url: str
    scopes: tuple[str, ...]
    revocation_url: str | None = None
    device_authorization_url: str | None = None
    issuer: str | None = None
    extra_authorize_params: Mapping[str, str] = field(default_factory=dict)
    token_auth_method: str = "client_secret_basic"
    scope_separator: str = " "
    max_token_lifetime: int | None = None
    params: Mapping[str, str | None] = field(default_factory=dict)  # name -> default (None: required)
    notes: str = ""  # the quirks, in one line


PRESETS: dict[str, Preset] = {
    "google": Preset(
        title="Google",
        docs="https://developers.google.com/identity/protocols/oauth2/web-server",
        authorization_url="https://accounts.google.com/o/oauth2/v2/auth",
        token_url="https://oauth2.googleapis.com/token",
        revocation_url="https://oauth2.googleapis.com/revoke",
        device_authorization_url="https://oauth2.googleapis.com/device/code",
        issuer="https://accounts.google.com",
        scopes=("openid", "email"),
        extra_authorize_params={"access_type": "offline", "prompt": "consent"},
        notes="A refresh token is issued only with access_type=offline, and again only with prompt=consent.",
    ),
}


def _params(preset_name: str, preset: Preset, given: object) -> dict[str, str]:
    if given is None:
        given = {}
    if not isinstance(given, Mapping):
        raise Invalid("preset_params must be an object", {"preset_params": "must be an object"})
    unknown = sorted(set(given) - set(preset.params))
    if unknown:
        raise Invalid(
            f"preset {preset_name!r} takes no parameter {str(unknown[0])[:64]!r}"
            + (f"; it takes: {', '.join(preset.params)}" if preset.params else ""),
            {"preset_params": "unknown parameter"},
        )
    values: dict[str, str] = {}
    for key, default in preset.params.items():
        value = given.get(key, default)
        if value in (None, ""):
            raise Invalid(f"preset {preset_name!r} needs preset_params.{key}", {"preset_params": f"{key} is required"})
        if not isinstance(value, str) or not PARAM_RE.fullmatch(value):
            raise Invalid(
                f"preset_params.{key} must be a host name or identifier (letters, digits, '.', '-')",
                {"preset_params": f"{key} is invalid"},
            )
        values[key] = value
    return values


def expand(name: object, given: object = None) -> dict[str, Any]:
    """The provider fields a preset stands for, with its parameters substituted."""
    preset = PRESETS.get(name) if isinstance(name, str) else None
    if preset is None:
        raise Invalid(f"unknown preset; known: {', '.join(PRESETS)}", {"preset": "unknown preset"})
    values = _params(str(name), preset, given)

    def fill(url: str | None) -> str | None:
        return url.format(**values) if url else None

    body: dict[str, Any] = {
        "preset": name,
        "preset_params": values,
        "authorization_url": fill(preset.authorization_url),
        "token_url": fill(preset.token_url),
        "revocation_url": fill(preset.revocation_url),
        "device_authorization_url": fill(preset.device_authorization_url),
        "issuer": fill(preset.issuer),
        "scopes": list(preset.scopes),
        "extra_authorize_params": dict(preset.extra_authorize_params),
        "token_auth_method": preset.token_auth_method,
        "scope_separator": preset.scope_separator,
        "max_token_lifetime": preset.max_token_lifetime,
    }
    return {k: v for k, v in body.items() if v is not None}


def catalogue() -> list[dict[str, Any]]:
    """Every preset as the API, the CLI and the UI list them."""
    return [
        {
            "name": name,
            "title": p.title,
            "docs": p.docs,
            "params": {k: {"required": v is None, "default": v} for k, v in p.params.items()},
            "scopes": list(p.scopes),
            "notes": p.notes,
        }
        for name, p in PRESETS.items()
    ]
