"""Liveness and readiness probes."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app

from ..errors import VaultUnavailable
from ..metrics import exposition
from . import error_body, runtime
from .openapi import document

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    """The process is alive and serving."""
    return {"status": "ok"}


@bp.get("/readyz")
def readyz():
    """Vault is reachable and unsealed, and the sidecar's own token is valid."""
    try:
        runtime(current_app).own_store.check_ready()
    except VaultUnavailable as exc:
        return error_body(exc.code, exc.message, exc.status)
    return {"status": "ready"}


@bp.get("/openapi.json")
def openapi() -> dict[str, Any]:
    """The JSON API's OpenAPI 3.1 description."""
    return document()


@bp.get("/metrics")
def metrics() -> Response:
    """Prometheus: refreshes by outcome, refresh latency, grants by status, Vault errors."""
    body, content_type = exposition()
    return Response(body, content_type=content_type)
