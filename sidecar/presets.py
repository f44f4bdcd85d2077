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
    token_auth_method: str = "client_secret_basic"  # noqa: S105 - a method name, not a password
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
    "microsoft": Preset(
        title="Microsoft Entra ID",
        docs="https://learn.microsoft.com/en-us/entra/identity-platform/v2-oauth2-auth-code-flow",
        authorization_url="https://login.microsoftonline.com/{tenant}/oauth2/v2.0/authorize",
        token_url="https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token",
        device_authorization_url="https://login.microsoftonline.com/{tenant}/oauth2/v2.0/devicecode",
        # No issuer: it names the user's tenant (…/{tid}/v2.0), which "common" or a domain name does not.
        scopes=("openid", "offline_access", "User.Read"),
        params={"tenant": "common"},
        notes="A refresh token only with offline_access; each refresh returns a new one; no revocation endpoint.",
    ),
    "github": Preset(
        title="GitHub",
        docs="https://docs.github.com/en/apps/oauth-apps/building-oauth-apps/authorizing-oauth-apps",
        authorization_url="https://github.com/login/oauth/authorize",
        token_url="https://github.com/login/oauth/access_token",
        device_authorization_url="https://github.com/login/device/code",
        # No revocation_url: GitHub revokes with DELETE /applications/{client_id}/token, not RFC 7009.
        scopes=("read:user",),
        token_auth_method="client_secret_post",
        notes="OAuth app tokens need no refresh (no expiry, no refresh token); GitHub App user tokens expire "
        "in 8 h with a 6-month refresh token that rotates on use; no RFC 7009 revocation.",
    ),
    "gitlab": Preset(
        title="GitLab",
        docs="https://docs.gitlab.com/api/oauth2/",
        authorization_url="https://{host}/oauth/authorize",
        token_url="https://{host}/oauth/token",
        revocation_url="https://{host}/oauth/revoke",
        device_authorization_url="https://{host}/oauth/authorize_device",
        # No issuer: a self-managed instance's is its configured external URL, which need not be https://{host}.
        scopes=("read_user",),
        token_auth_method="client_secret_post",
        params={"host": "gitlab.com"},
        notes="host is gitlab.com or a self-managed instance; access tokens last 2 h and each refresh "
        "returns a new refresh token.",
    ),
    "slack": Preset(
        title="Slack",
        docs="https://docs.slack.dev/authentication/installing-with-oauth",
        authorization_url="https://slack.com/oauth/v2/authorize",
        token_url="https://slack.com/api/oauth.v2.access",
        # No revocation_url: auth.revoke takes the token as its own bearer credential, not RFC 7009.
        scopes=("chat:write",),
        scope_separator=",",
        notes="Scopes are comma-separated bot scopes; tokens expire (12 h, with a refresh token) only when "
        "the app has token rotation turned on.",
    ),
    "salesforce": Preset(
        title="Salesforce",
        docs="https://help.salesforce.com/s/articleView?id=xcloud.remoteaccess_oauth_endpoints.htm&type=5",
        authorization_url="https://{domain}/services/oauth2/authorize",
        token_url="https://{domain}/services/oauth2/token",
        revocation_url="https://{domain}/services/oauth2/revoke",
        # No issuer: it follows the host the login went to (login, test, or a My Domain).
        scopes=("api", "refresh_token"),
        token_auth_method="client_secret_post",
        # No expires_in: the access token is a session that ends after the org's or the app's inactivity
        # timeout, 15 minutes at the shortest. Assuming 10 minutes refreshes it before then whatever the
        # refresh margin (with the default 300 s, every 5 minutes).
        max_token_lifetime=600,
        params={"domain": "login.salesforce.com"},
        notes="domain: login.salesforce.com, test.salesforce.com for sandboxes, or a My Domain host; the token "
        "response has no expires_in, so it is refreshed as if it lasted 10 min, inside the shortest (15 min) "
        "session timeout.",
    ),
    "atlassian": Preset(
        title="Atlassian",
        docs="https://developer.atlassian.com/cloud/jira/platform/oauth-2-3lo-apps/",
        authorization_url="https://auth.atlassian.com/authorize",
        token_url="https://auth.atlassian.com/oauth/token",
        scopes=("read:me", "offline_access"),
        extra_authorize_params={"audience": "api.atlassian.com", "prompt": "consent"},
        token_auth_method="client_secret_post",
        notes="audience=api.atlassian.com is required; a refresh token only with offline_access, and it "
        "rotates: each refresh returns a new one; no revocation endpoint.",
    ),
    "hubspot": Preset(
        title="HubSpot",
        docs="https://developers.hubspot.com/docs/api-reference/latest/authentication/manage-oauth-tokens",
        authorization_url="https://app.hubspot.com/oauth/authorize",
        # The date-versioned OAuth API; /oauth/v1/token is deprecated (sunset 16 February 2027).
        token_url="https://api.hubapi.com/oauth/2026-03/token",
        revocation_url="https://api.hubapi.com/oauth/2026-03/token/revoke",
        scopes=("oauth",),
        token_auth_method="client_secret_post",
        notes="Client credentials go in the form body; access tokens last 30 min and a refresh token is always issued.",
    ),
    "dropbox": Preset(
        title="Dropbox",
        docs="https://developers.dropbox.com/oauth-guide",
        authorization_url="https://www.dropbox.com/oauth2/authorize",
        token_url="https://api.dropboxapi.com/oauth2/token",
        # No revocation_url: /2/auth/token/revoke takes the token as its own bearer credential.
        scopes=("account_info.read",),
        extra_authorize_params={"token_access_type": "offline"},
        notes="A refresh token only with token_access_type=offline; access tokens last about 4 h.",
    ),
    "zoom": Preset(
        title="Zoom",
        docs="https://developers.zoom.us/docs/integrations/oauth/",
        authorization_url="https://zoom.us/oauth/authorize",
        token_url="https://zoom.us/oauth/token",
        revocation_url="https://zoom.us/oauth/revoke",
        scopes=("user:read:user",),
        notes="Client credentials by HTTP Basic; access tokens last 1 h and each refresh returns a new refresh token.",
    ),
    "okta": Preset(
        title="Okta",
        docs="https://developer.okta.com/docs/api/openapi/okta-oauth/oauth/tag/CustomAS/",
        authorization_url="https://{domain}/oauth2/{authorization_server}/v1/authorize",
        token_url="https://{domain}/oauth2/{authorization_server}/v1/token",
        revocation_url="https://{domain}/oauth2/{authorization_server}/v1/revoke",
        device_authorization_url="https://{domain}/oauth2/{authorization_server}/v1/device/authorize",
        issuer="https://{domain}/oauth2/{authorization_server}",
        scopes=("openid", "offline_access"),
        params={"domain": None, "authorization_server": "default"},
        notes="domain is your Okta domain (or custom URL domain, as the issuer names it); a refresh token "
        "only with offline_access and the Refresh Token grant enabled for the app.",
    ),
    "auth0": Preset(
        title="Auth0",
        docs="https://auth0.com/docs/api/authentication",
        authorization_url="https://{domain}/authorize",
        token_url="https://{domain}/oauth/token",
        revocation_url="https://{domain}/oauth/revoke",
        device_authorization_url="https://{domain}/oauth/device/code",
        issuer="https://{domain}/",
        scopes=("openid", "offline_access"),
        token_auth_method="client_secret_post",
        params={"domain": None},
        notes="domain is your tenant (or custom) domain; a refresh token only with offline_access, and for an "
        "API audience only if it allows offline access.",
    ),
}


def _params(preset_name: str, preset: Preset, given: object) -> dict[str, str]:
    if given is None:
        given = {}
    if not isinstance(given, Mapping):
        raise Invalid("preset_params must be an object", {"preset_params": "must be an object"})
    unknown = sorted(str(k) for k in given if k not in preset.params)
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
