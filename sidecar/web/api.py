"""The JSON API under /v1. Every call acts on Vault with the caller's own token."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, g, request

from .. import grants, logins, presets, providers
from ..errors import Conflict, Forbidden, Invalid, NotFound, Unauthorized
from ..models import check_name, rfc3339
from ..refresher import RefreshFailed
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
    g.store = runtime(current_app).authenticated(caller_token())


def store() -> Store:
    return g.store


def json_object() -> dict[str, Any]:
    body = request.get_json(force=True, silent=True)
    if not isinstance(body, dict):
        raise Invalid("the request body must be a JSON object")
    return body


@bp.get("/providers")
def list_providers():
    return {"providers": [p.public() for p in store().list_providers()]}


@bp.get("/providers/<name>")
def get_provider(name: str):
    return store().get_provider(name).public()


@bp.put("/providers/<name>")
def put_provider(name: str):
    # Checked first: building may fetch the issuer's metadata, which only an operator may make us do.
    if not store().may("providers", check_name(name, "provider"), "create", "update"):
        raise Forbidden(f"permission denied on provider {name!r}")
    provider = providers.build(name, json_object())
    version = store().put_provider(provider)
    return provider.public(), 201 if version == 1 else 200


@bp.get("/presets")
def list_presets():
    return {"presets": presets.catalogue()}


@bp.delete("/providers/<name>")
def delete_provider(name: str):
    store().delete_provider(name)
    return "", 204


@bp.post("/secrets")
def create_secret():
    body = json_object()
    if body.get("grant_type", "authorization_code") != "authorization_code":
        return grants.create(store(), runtime(current_app).settings, body).public(), 201
    unknown = sorted(set(body) - {"name", "provider", "environments", "scopes", "grant_type"})
    if unknown:
        raise Invalid(f"unknown field(s): {', '.join(unknown)[:200]}", {k: "unknown" for k in unknown})
    login = logins.start(
        store(), runtime(current_app).settings, body.get("name"), body.get("provider"),
        body.get("environments"), body.get("scopes"),
    )  # fmt: skip
    return {"name": body["name"], "authorization_url": login.url, "expires_at": rfc3339(login.expires_at)}, 201


@bp.get("/secrets")
def list_secrets():
    return {"secrets": grants.status_all(store())}


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
    revoked = grants.delete(store(), runtime(current_app).settings, name, force=force)
    return {"name": name, "deleted": True, "revoked": revoked}


@bp.post("/secrets/<name>/refresh")
def refresh_secret(name: str):
    """Refresh now, through the same claim as the refresher; the caller needs `update` on the grant."""
    outcome = runtime(current_app).refresher.refresh_for(store(), name)
    if outcome.result == "refreshed":
        return runtime(current_app).own_store.get_grant(name).public()
    if outcome.result == "missing":
        raise NotFound(f"secret {name!r} not found")
    if outcome.result in ("claimed_elsewhere", "lost_race", "superseded", "claim_too_slow"):
        raise Conflict(f"secret {name!r} is being refreshed by another replica right now; try again shortly")
    raise RefreshFailed(f"refresh of {name!r} failed: {outcome.detail or outcome.result}")
