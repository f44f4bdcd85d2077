"""Least-privilege Vault ACL policies, rendered for the configured mount and prefixes."""

from __future__ import annotations

from .config import Settings

_CRUD = '["create", "read", "update", "delete"]'


def _rule(path: str, capabilities: str) -> str:
    return f'path "{path}" {{\n  capabilities = {capabilities}\n}}\n'


def render(settings: Settings) -> dict[str, str]:
    """Policy name -> HCL text: the sidecar's own, the operators', one reader per environment."""
    m, state, views = settings.kv_mount, settings.state_prefix, settings.prefix
    data, meta = f"{m}/data", f"{m}/metadata"
    sidecar = "".join(
        [
            "# The sidecar itself: read providers, keep grants, pending logins and environment views.\n",
            _rule(f"{data}/{state}/providers/*", '["read"]'),
            _rule(f"{data}/{state}/grants/*", '["create", "read", "update"]'),
            # list for the resync; create/update only to cap a new grant's version history.
            _rule(f"{meta}/{state}/grants/*", '["list", "create", "update"]'),
            _rule(f"{data}/{state}/pending/*", '["create", "read", "update"]'),
            _rule(f"{meta}/{state}/pending/*", '["delete"]'),
            *(_rule(f"{data}/{views}/{env}/*", '["create", "read", "update"]') for env in settings.environments),
            # delete for a dropped environment; create/update only to cap a new view's version history.
            *(_rule(f"{meta}/{views}/{env}/*", '["create", "update", "delete"]') for env in settings.environments),
        ]
    )
    admin = "".join(
        [
            "# Operators: manage providers and secrets through the sidecar's API.\n",
            _rule(f"{data}/{state}/providers/*", _CRUD),
            _rule(f"{meta}/{state}/providers/*", '["read", "list", "create", "update", "delete"]'),
            _rule(f"{data}/{state}/grants/*", _CRUD),
            # create/update on metadata only to cap a new record's version history.
            _rule(f"{meta}/{state}/grants/*", '["read", "list", "create", "update", "delete"]'),
            _rule(f"{data}/{state}/pending/*", '["create", "read", "update"]'),
            # Writing views lets the CLI store a device login or client credentials itself; it grants
            # nothing new: whoever manages providers and grants decides what the views hold anyway.
            _rule(f"{data}/{views}/*", _CRUD),
            _rule(f"{meta}/{views}/*", '["read", "list", "create", "update", "delete"]'),
        ]
    )
    policies = {"oauth-sidecar": sidecar, "oauth-admin": admin}
    for env in settings.environments:
        policies[f"oauth-reader-{env}"] = (
            f"# Apps of the {env} environment: read their access tokens, nothing else.\n"
            + _rule(f"{data}/{views}/{env}/*", '["read"]')
        )
    return policies
