"""The service's own routes: the front door, liveness and readiness probes, the API document and
the metrics."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, redirect, url_for
from werkzeug.wrappers import Response as BaseResponse

from ..errors import VaultUnavailable
from ..metrics import exposition
from . import error_body, runtime
from .openapi import document

bp = Blueprint("health", __name__)


@bp.get("/")
def front_door() -> BaseResponse:
    """A person who opens the sidecar's address wants the settings page."""
    return redirect(url_for("ui.settings"), code=302)


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
