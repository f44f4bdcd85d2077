"""The Flask app factory: blueprints, one JSON error format, no stack trace to users."""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass, field
from typing import Any

import requests
from cachetools import TTLCache
from flask import Flask, Response, jsonify
from flask.json.provider import DefaultJSONProvider
from werkzeug.exceptions import HTTPException
from werkzeug.serving import WSGIRequestHandler

from .. import egress, oauth
from ..accesslog import loggable_path
from ..audit import Auditor
from ..config import Settings
from ..devvault import find_bao
from ..errors import SidecarError
from ..index import Mirror
from ..models import Identity
from ..policies import READER
from ..refresher import Refresher
from ..store import Store
from .sessions import VaultSessions

log = logging.getLogger(__name__)
MAX_BODY_BYTES = 64 * 1024
TOKEN_CHECK_TTL = 30.0
MAX_TOKEN_LENGTH = 4096


@dataclass(frozen=True)
class Runtime:
    """What every request shares: settings, a pooled HTTP session to Vault, the sidecar's own store."""

    settings: Settings
    session: requests.Session
    own_store: Store
    oauth: oauth.Client  # every call to a provider, with its HTTP session and the allow-list
    refresher: Refresher
    audit: Auditor
    index: Mirror = field(default_factory=Mirror)  # what lists page through (grants.page)
    # The CLI that the read commands shown to people name: `bao` where the sidecar finds it (the dev
    # extra installs only that), else `vault`. Both take the same arguments.
    vault_cli: str = "vault"
    # sha256 of a caller's token -> who it is, for TOKEN_CHECK_TTL seconds
    live_tokens: TTLCache = field(default_factory=lambda: TTLCache(maxsize=10_000, ttl=TOKEN_CHECK_TTL))
    lock: threading.Lock = field(default_factory=threading.Lock)  # cachetools caches are not thread-safe

    def store_for(self, token: str | None) -> Store:
        return Store(self.settings, token, self.session)

    def read_command(self, environment: str, name: str) -> str:
        """What an app of `environment` runs to read the access token of the secret `name`."""
        path = self.own_store.view_path(environment, name)
        return f"{self.vault_cli} kv get -field=access_token {self.settings.kv_mount}/{path}"

    def authenticated(self, token: str) -> tuple[Store, Identity]:
        """A store acting with the caller's token, which Vault knows (401 otherwise), and who it is.

        A token seen alive in the last TOKEN_CHECK_TTL seconds skips the lookup: it is only the
        check that tells 401 from 403, since Vault still authorises the call itself, and a token
        revoked meanwhile is caught there (the store turns that refusal into 401)."""
        store = self.store_for(token)
        key = hashlib.sha256(token.encode()).hexdigest()
        with self.lock:
            who = self.live_tokens.get(key)
        if who is None:
            who = store.whoami()
            with self.lock:
                self.live_tokens[key] = who
        return store, who


class QuietHandler(WSGIRequestHandler):
    """For werkzeug's server: logs the path without its query string, since /callback carries codes,
    and a login link's id as a short hash (accesslog.loggable_path, as gunicorn's log in `serve`)."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        self.log("info", '"%s %s" %s', self.command, loggable_path(self.path), code)


class OrderedJSON(DefaultJSONProvider):
    """Keys in the order the code builds them (name first), not sorted; `<`, `>` and `&` escaped,
    so an error that quotes hostile input never carries markup, whatever reads it."""

    sort_keys = False

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        text = super().dumps(obj, **kwargs)
        return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def plausible_token(token: str) -> bool:
    """Text that could be a Vault token: checked before it goes into a header to Vault."""
    return 0 < len(token) <= MAX_TOKEN_LENGTH and token.isascii() and token.isprintable() and " " not in token


def runtime(app: Flask) -> Runtime:
    return app.extensions["sidecar"]


def error_body(code: str, message: str, status: int, fields: dict[str, str] | None = None):
    error: dict[str, object] = {"code": code, "message": message}
    if fields:
        error["fields"] = fields
    return jsonify(error=error), status


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or Settings.from_env()
    client = oauth.Client(egress.Egress(settings.egress_allow))
    app = Flask(__name__)
    app.config.update(MAX_CONTENT_LENGTH=MAX_BODY_BYTES)
    app.json = OrderedJSON(app)
    session = requests.Session()
    own_store = Store.own(settings, session)
    # The session cookie is Lax, not Strict: the provider's redirect back to /callback must carry it
    # for the settings page's banner.
    app.session_interface = VaultSessions(settings, own_store)
    refresher = Refresher(settings, own_store, client=client)
    cli = "bao" if find_bao() else "vault"  # once: a lookup on PATH per request would be wasted
    app.extensions["sidecar"] = Runtime(
        settings, session, own_store, client, refresher, Auditor(settings.audit_log), vault_cli=cli
    )

    from . import api, auth, health, ui

    app.register_blueprint(api.bp)
    app.register_blueprint(auth.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(ui.bp)

    app.jinja_env.globals["reader_policy"] = f"{READER}<environment>"  # the note beside the read commands

    @app.after_request
    def _security_headers(response: Response) -> Response:
        """On every answer: no sniffing, no framing, no Referer, and no caching of what may hold a
        secret (a blueprint or a static file may have set its own policy first)."""
        headers = response.headers
        headers.setdefault("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'; base-uri 'none'")
        headers.setdefault("Cache-Control", "no-store")
        headers["X-Content-Type-Options"] = "nosniff"
        headers.setdefault("Referrer-Policy", "no-referrer")
        return response

    @app.errorhandler(SidecarError)
    def _sidecar_error(exc: SidecarError):
        return error_body(exc.code, exc.message, exc.status, getattr(exc, "fields", None))

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        code = (exc.name or "error").lower().replace(" ", "_")
        return error_body(code, exc.description or exc.name, exc.code or 500)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unexpected error")
        return error_body("internal", "internal error; the sidecar's log has the details", 500)

    return app
