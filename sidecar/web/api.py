"""The JSON API under /v1. Every call acts on Vault with the caller's own token."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, g, request

from ..errors import Invalid, Unauthorized
from ..models import Provider
from ..store import Store
from . import runtime

bp = Blueprint("api", __name__, url_prefix="/v1")
MAX_TOKEN_LENGTH = 4096


def caller_token() -> str:
    """The Vault token from `X-Vault-Token` or `Authorization: Bearer`."""
    token = request.headers.get("X-Vault-Token", "")
    if not token:
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        token = value.strip() if scheme.lower() == "bearer" else ""
    if not token:
        raise Unauthorized("a Vault token is required in X-Vault-Token or Authorization: Bearer")
    if len(token) > MAX_TOKEN_LENGTH or not token.isascii() or not token.isprintable() or " " in token:
        raise Unauthorized("the Vault token is missing or not valid")
    return token


@bp.before_request
def authenticate() -> None:
    """401 unless the caller's token is live; its own Vault policies then decide (403)."""
    store = runtime(current_app).store_for(caller_token())
    store.check_token()
    g.store = store


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
    provider = Provider.from_input(name, json_object())
    version = store().put_provider(provider)
    return provider.public(), 201 if version == 1 else 200


@bp.delete("/providers/<name>")
def delete_provider(name: str):
    store().delete_provider(name)
    return "", 204
