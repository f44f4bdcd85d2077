"""The JSON API under /v1. Every call acts on Vault with the caller's own token."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

from flask import Blueprint, current_app, g, request

from .. import approvals, grants, inputs, logins, presets, providers
from ..audit import Action
from ..errors import Conflict, Forbidden, Invalid, NotFound, Unauthorized
from ..inputs import check_name
from ..models import GrantType, Provider, rfc3339
from ..policies import render_reader
from ..renewal import ELSEWHERE, Outcome, RefreshFailed, RefreshResult
from ..store import Store
from . import plausible_token, runtime

bp = Blueprint("api", __name__, url_prefix="/v1")


def caller_token() -> str:
    """The Vault token from `X-Vault-Token` or `Authorization: Bearer`."""
    token = request.headers.get("X-Vault-Token", "")
    if not token:
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        token = value.strip() if scheme.lower() == "bearer" else ""
    if not token:
        raise Unauthorized("a Vault token is required in X-Vault-Token or Authorization: Bearer")
    if not plausible_token(token):
        raise Unauthorized("the Vault token is missing or not valid")
    return token


@bp.before_request
def authenticate() -> None:
    """401 unless the caller's token is live; its own Vault policies then decide (403)."""
    g.store, g.who = runtime(current_app).authenticated(caller_token())


def store() -> Store:
    return g.store


def audited(action: Action, target: str) -> AbstractContextManager[None]:
    """The audit line of a change, naming the caller."""
    return runtime(current_app).audit.audited(action, target, g.who)


# No request body nests deeper than a few levels; deeper ones are refused before anything recurses on them.
MAX_JSON_DEPTH = 32


def json_object() -> dict[str, Any]:
    try:
        body = request.get_json(force=True, silent=True)
    except RecursionError:  # deeper than the parser's own stack allows
        body = None
    if not isinstance(body, dict):
        raise Invalid("the request body must be a JSON object")
    if _depth(body) > MAX_JSON_DEPTH:
        raise Invalid(f"the request body is nested more than {MAX_JSON_DEPTH} levels deep")
    return body


def _depth(value: Any) -> int:
    """How deeply lists and objects nest in a parsed JSON value, found without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            if depth > MAX_JSON_DEPTH:
                break
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


@bp.get("/providers")
def list_providers():
    return {"providers": [_shown(p) for p in store().list_providers()]}


@bp.get("/providers/<name>")
def get_provider(name: str):
    return _shown(store().get_provider(name))


@bp.put("/providers/<name>")
def put_provider(name: str):
    """Create or replace, as PUT means; `POST /v1/providers` only creates."""
    return _save_provider(name, json_object(), create=False)


@bp.post("/providers")
def create_provider():
    body = json_object()
    return _save_provider(check_name(body.pop("name", None), "name"), body, create=True)


def _save_provider(name: str, body: dict[str, Any], create: bool):
    with audited(Action.PROVIDER_PUT, name[:64]):
        approvals.may_write(store(), name)
        provider = providers.build(name, body, runtime(current_app).oauth)
        version = approvals.save(store(), runtime(current_app).own_store, provider, create)
    return _shown(provider), 201 if version == 1 else 200


def _shown(provider: Provider) -> dict[str, Any]:
    """A provider as the API shows it, with the redirect URI to register at it."""
    return {**provider.public(), "redirect_uri": runtime(current_app).settings.redirect_uri}


@bp.get("/presets")
def list_presets():
    return {"presets": presets.catalogue()}


@bp.delete("/providers/<name>")
def delete_provider(name: str):
    with audited(Action.PROVIDER_DELETE, name):
        approvals.delete(store(), runtime(current_app).own_store, name)
    return "", 204


@bp.post("/secrets")
def create_secret():
    rt = runtime(current_app)
    secret = inputs.secret(json_object(), rt.settings.environments)
    if secret.grant_type != GrantType.AUTHORIZATION_CODE:
        with audited(Action.CREATED, secret.name):
            grant, replaced = grants.create(store(), rt.settings, rt.oauth, secret, rt.own_store)
        return _with_replaced(grant.public(), replaced), 201
    with audited(Action.LOGIN_STARTED, secret.name):
        login = logins.start(
            store(), rt.own_store, rt.settings, rt.oauth, secret.name, secret.provider, secret.environments,
            secret.scopes, started_by=g.who, replace=secret.replace,
        )  # fmt: skip
    started = {"name": secret.name, "authorization_url": login.url, "expires_at": rfc3339(login.expires_at)}
    return _with_replaced(started, login.replaces), 201


def _with_replaced(answer: dict[str, Any], replaced: str | None) -> dict[str, Any]:
    """Say what a replacement does to the old secret (nothing is replaced silently)."""
    return {**answer, "replaces": replaced} if replaced else answer


@bp.get("/secrets")
def list_secrets():
    rt = runtime(current_app)
    found = grants.page(store(), rt.settings, inputs.secret_query(request.args.to_dict()), rt.index)
    return {"secrets": found.secrets, "next": found.next, "counts": found.counts}


@bp.get("/secrets/<name>")
def get_secret(name: str):
    return store().get_grant(name).public()


@bp.get("/secrets/<name>/token")
def get_token(name: str):
    token = grants.access_token(store(), runtime(current_app).settings, name, request.args.get("environment"))
    return token, 200, {"Cache-Control": "no-store"}


@bp.delete("/secrets/<name>")
def delete_secret(name: str):
    force = request.args.get("force", "").lower() in ("1", "true", "yes")
    with audited(Action.DELETED, name):
        rt = runtime(current_app)
        revoked = grants.delete(store(), rt.settings, rt.oauth, name, rt.own_store, force=force)
    return {"name": name, "deleted": True, "revoked": revoked}


@bp.post("/secrets/<name>/refresh")
def refresh_secret(name: str):
    """Refresh now, through the same claim as the refresher; the caller needs `update` on the grant."""
    with audited(Action.REFRESHED, name):
        _raise_unless_refreshed(name, runtime(current_app).refresher.refresh_for(store(), name))
    return runtime(current_app).own_store.get_grant(name).public()


def _raise_unless_refreshed(name: str, outcome: Outcome) -> None:
    if outcome.result == RefreshResult.REFRESHED:
        return
    if outcome.result == RefreshResult.MISSING:
        raise NotFound(f"secret {name!r} not found")
    if outcome.result in ELSEWHERE:
        raise Conflict(f"secret {name!r} is being refreshed by another replica right now; try again shortly")
    raise RefreshFailed(f"refresh of {name!r} failed: {outcome.detail or outcome.result}")


@bp.get("/secrets/<name>/logins/<lid>")
def login_state(name: str, lid: str):
    """How a browser login started by `POST /v1/secrets` stands: waiting, connected or ended.
    For `secrets connect`, whose token may not read logins in flight (only the sidecar's may)."""
    if not store().may("grants", check_name(name, "secret"), "read"):
        raise Forbidden(f"permission denied on secret {name!r}")
    return {"state": logins.state(runtime(current_app).own_store, name, lid)}


@bp.get("/policies/reader")
def reader_policy():
    """The Vault policy that reads one secret in one environment, to load with `vault policy write`.
    Rendered only: no Vault call, so any valid token may ask."""
    args = request.args
    name, hcl = render_reader(runtime(current_app).settings, args.get("secret"), args.get("environment"))
    return {"name": name, "policy": hcl}
