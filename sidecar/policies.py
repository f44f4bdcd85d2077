"""Least-privilege Vault ACL policies, rendered for the configured mount and prefixes."""

from __future__ import annotations

from .config import Settings
from .errors import Invalid
from .inputs import check_name

_CRUD = '["create", "read", "update", "delete"]'


def _rule(path: str, capabilities: str) -> str:
    return f'path "{path}" {{\n  capabilities = {capabilities}\n}}\n'


def render(settings: Settings) -> dict[str, str]:
    """Policy name -> HCL text: the sidecar's own, the operators', one reader per environment."""
    m, state, views = settings.kv_mount, settings.state_prefix, settings.prefix
    data, meta = f"{m}/data", f"{m}/metadata"
    sidecar = "".join(
        [
            "# The sidecar itself: read providers; keep grants, logins in flight, UI sessions and views.\n",
            _rule(f"{data}/{state}/providers/*", '["read"]'),
            # Where each provider may send tokens, as approved through the sidecar (approvals.py).
            _rule(f"{data}/{state}/pins/*", '["create", "read", "update"]'),
            _rule(f"{meta}/{state}/pins/*", '["delete"]'),
            _rule(f"{data}/{state}/grants/*", '["create", "read", "update"]'),
            # list for the resync; create/update only to cap a new grant's version history.
            _rule(f"{meta}/{state}/grants/*", '["list", "create", "update"]'),
            # The index (index.py): entries beside each grant write; create/update on metadata only to cap histories.
            _rule(f"{data}/{state}/index/*", '["create", "read", "update"]'),
            _rule(f"{meta}/{state}/index/*", '["list", "create", "update"]'),
            # Logins in flight and UI sessions are the sidecar's alone: no other policy names them.
            # list and delete for the sweep of expired ones.
            *(_rule(f"{data}/{state}/{tree}/*", '["create", "read", "update"]') for tree in ("pending", "sessions")),
            *(_rule(f"{meta}/{state}/{tree}/*", '["list", "delete"]') for tree in ("pending", "sessions")),
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
            # read: the CLI checks a provider's pin before it sends a token; only the sidecar writes pins.
            _rule(f"{data}/{state}/pins/*", '["read"]'),
            _rule(f"{data}/{state}/grants/*", _CRUD),
            # create/update on metadata only to cap a new record's version history.
            _rule(f"{meta}/{state}/grants/*", '["read", "list", "create", "update", "delete"]'),
            # The index: lists read it; whoever writes a grant writes its entry (index.py).
            _rule(f"{data}/{state}/index/*", '["create", "read", "update"]'),
            _rule(f"{meta}/{state}/index/*", '["list", "create", "update"]'),
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


READER = "oauth-reader-"


def render_reader(settings: Settings, secret: object, environment: object) -> tuple[str, str]:
    """Name and HCL of the policy that reads ONE secret's view in ONE environment and nothing else:
    `oauth-reader-<env>-<secret>`, for an app that needs one token rather than a whole environment's."""
    secret, environment = check_name(secret, "secret"), check_name(environment, "environment")
    if environment not in settings.environments:
        raise Invalid(
            f"environment {environment!r} is not configured (SIDECAR_ENVIRONMENTS: {', '.join(settings.environments)})",
            {"environment": "not configured"},
        )
    # Vault folds policy names to lower case, so "Sheets" and "sheets" would share (and overwrite) one policy.
    if secret != secret.lower() or environment != environment.lower():
        raise Invalid(
            "a reader policy needs lower-case names: Vault ignores case in policy names, so another secret "
            "could share its policy",
            {"secret" if secret != secret.lower() else "environment": "must be lower case for a reader policy"},
        )
    name = f"{READER}{environment}-{secret}"
    if len(name) > 64:
        raise Invalid(f"the policy name {name!r} would be longer than 64 characters", {"secret": "too long"})
    # A name must stand for one environment and secret only, or writing one policy would replace another:
    # with the environments "a" and "a-b", a's "b-c" and a-b's "c" are both oauth-reader-a-b-c, and a's "b"
    # is a-b's own oauth-reader-a-b. Such a name belongs to the longer environment.
    for other in (e.lower() for e in settings.environments if len(e) > len(environment)):
        if name == f"{READER}{other}" or name.startswith(f"{READER}{other}-"):
            raise Invalid(
                f"the policy name {name!r} is ambiguous: it belongs to the environment {other!r}",
                {"secret": "ambiguous policy name"},
            )
    hcl = (
        f"# Apps that use the secret {secret} in the {environment} environment: read that one token, nothing else.\n"
        + _rule(f"{settings.kv_mount}/data/{settings.prefix}/{environment}/{secret}", '["read"]')
    )
    return name, hcl
