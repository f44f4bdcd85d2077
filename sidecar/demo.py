"""The built-in demo OAuth 2.0 provider of `oauth-sidecar dev`: an authorization server on loopback, so a
new user can connect a secret with no account anywhere and watch its short-lived token refresh.

oauthlib's server side speaks the protocol (code with PKCE S256, refresh with rotation, RFC 7009
revocation); this module answers its questions from memory and draws the login page, where any user
name logs in. It is the one user of oauthlib besides `oauth.py`, and only as a server: fit for a demo
on one machine, never for real accounts.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import threading
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast
from urllib.parse import unquote_plus, urlencode

from flask import Blueprint, Flask, Response, current_app, jsonify, redirect, render_template, request
from oauthlib.oauth2 import FatalClientError, OAuth2Error, RequestValidator, WebApplicationServer
from oauthlib.oauth2.rfc6749.errors import UnsupportedCodeChallengeMethodError
from werkzeug.datastructures import Authorization, MultiDict
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from .accesslog import loggable_path
from .inputs import check_url
from .models import TokenAuthMethod

CLIENT_ID = "demo-client"
SCOPES = ("profile", "email")
CODE_LIFETIME = 60  # seconds
MAX_USER_NAME = 64
WEB = Path(__file__).parent / "web"
# oauthlib's server side logs codes and tokens at debug level: kept at info while a demo provider runs.
CHATTY_LOGGERS = ("oauthlib.oauth2.rfc6749.grant_types", "oauthlib.oauth2.rfc6749.endpoints")


@dataclass(frozen=True)
class _Issued:
    """What a code, access token or refresh token stands for. `grant` is one login's id, shared by every
    token it leads to, so revoking a refresh token ends its access tokens too (RFC 7009 section 2.1)."""

    user: str
    scopes: list[str]
    grant: str
    expires: float  # time.monotonic()
    redirect_uri: str = ""  # codes only
    challenge: str = ""  # codes only: PKCE S256


class _Validator(RequestValidator):
    """oauthlib's questions, answered for one confidential client from dicts under one lock (the server is
    threaded). A code or refresh token is taken out of its dict by the check that accepts it, so two
    requests racing with it cannot both win; the rest of that request reads it from `request.issued`.
    oauthlib passes arguments by position; those a method does not use are `*_`."""

    def __init__(self, client_secret: str, redirect_uri: str) -> None:
        self._secret, self._redirect_uri = client_secret, redirect_uri
        self._lock = threading.Lock()
        self._codes: dict[str, _Issued] = {}
        self._access: dict[str, _Issued] = {}
        self._refresh: dict[str, _Issued] = {}

    # -- the authorization request -------------------------------------------------------------------

    def validate_client_id(self, client_id: str, *_: Any) -> bool:
        return client_id == CLIENT_ID

    def validate_redirect_uri(self, client_id: str, redirect_uri: str, *_: Any) -> bool:
        return redirect_uri == self._redirect_uri

    def get_default_redirect_uri(self, *_: Any) -> str:
        return self._redirect_uri

    def validate_response_type(self, client_id: str, response_type: str, *_: Any) -> bool:
        return response_type == "code"

    def is_pkce_required(self, *_: Any) -> bool:
        return True

    def get_default_scopes(self, *_: Any) -> list[str]:
        return list(SCOPES)

    def validate_scopes(self, client_id: str, scopes: list[str], *_: Any) -> bool:
        return set(scopes) <= set(SCOPES)

    def save_authorization_code(self, client_id: str, code: dict[str, str], request: Any, *_: Any) -> None:
        now = time.monotonic()
        issued = _Issued(request.user, request.scopes, secrets.token_hex(8), now + CODE_LIFETIME,
                         request.redirect_uri, request.code_challenge)  # fmt: skip
        with self._lock:
            self._codes = {c: i for c, i in self._codes.items() if i.expires > now}
            self._codes[code["code"]] = issued

    # -- the token, revocation and userinfo requests -------------------------------------------------

    def client_authentication_required(self, *_: Any) -> bool:
        return True

    def authenticate_client(self, request: Any, *_: Any) -> bool:
        """client_secret_basic (form-encoded parts, RFC 6749 section 2.3.1), else client_secret_post."""
        basic = Authorization.from_header(request.headers.get("Authorization"))
        if basic is not None and basic.type == "basic":
            client_id, secret = unquote_plus(basic.username or ""), unquote_plus(basic.password or "")
        else:
            client_id, secret = request.client_id or "", request.client_secret or ""
        if not hmac.compare_digest(f"{client_id}:{secret}".encode(), f"{CLIENT_ID}:{self._secret}".encode()):
            return False
        request.client = SimpleNamespace(client_id=CLIENT_ID)
        return True

    def validate_grant_type(self, client_id: str, grant_type: str, *_: Any) -> bool:
        return grant_type in ("authorization_code", "refresh_token")

    def validate_code(self, client_id: str, code: str, client: Any, request: Any, *_: Any) -> bool:
        # Taken even when a later check fails (a wrong code_verifier): a code is tried once.
        with self._lock:
            issued = self._codes.pop(code, None)
        if issued is None or issued.expires <= time.monotonic() or client_id != CLIENT_ID:
            return False
        request.issued, request.user, request.scopes = issued, issued.user, issued.scopes
        return True

    def get_code_challenge(self, code: str, request: Any) -> str:
        return str(request.issued.challenge)

    def get_code_challenge_method(self, *_: Any) -> str:
        return "S256"  # the only one `_s256_only` lets through

    def confirm_redirect_uri(self, client_id: str, code: str, redirect_uri: str, client: Any, request: Any) -> bool:
        return bool(redirect_uri == request.issued.redirect_uri)

    def invalidate_authorization_code(self, *_: Any) -> None:
        pass  # validate_code took it already

    def validate_refresh_token(self, refresh_token: str, client: Any, request: Any, *_: Any) -> bool:
        with self._lock:
            issued = self._refresh.pop(refresh_token, None)
        if issued is None:
            return False
        request.issued, request.user = issued, issued.user
        return True

    def get_original_scopes(self, refresh_token: str, request: Any, *_: Any) -> list[str]:
        return list(request.issued.scopes)

    def rotate_refresh_token(self, *_: Any) -> bool:
        return True  # a new refresh token at each refresh: the sidecar must keep the newest, as with real providers

    def save_bearer_token(self, token: dict[str, Any], request: Any, *_: Any) -> None:
        now, issued = time.monotonic(), request.issued
        access = _Issued(request.user, request.scopes, issued.grant, now + token["expires_in"])
        with self._lock:
            self._access = {t: i for t, i in self._access.items() if i.expires > now}
            self._access[token["access_token"]] = access
            if "refresh_token" in token:
                self._refresh[token["refresh_token"]] = _Issued(request.user, issued.scopes, issued.grant, float("inf"))

    def revoke_token(self, token: str, *_: Any) -> None:
        with self._lock:
            if (refresh := self._refresh.pop(token, None)) is not None:
                self._access = {t: i for t, i in self._access.items() if i.grant != refresh.grant}
            self._access.pop(token, None)

    def validate_bearer_token(self, token: str | None, scopes: list[str], request: Any) -> bool:
        with self._lock:
            issued = self._access.get(token or "")
        if issued is None or issued.expires <= time.monotonic():
            return False
        request.user = issued.user
        return True


def _s256_only(request: Any) -> dict[str, Any]:
    """oauthlib also takes "plain" (and a missing method for it); this provider takes S256 alone."""
    if request.code_challenge_method != "S256":
        raise UnsupportedCodeChallengeMethodError(request=request)
    return {}


class _QuietHandler(WSGIRequestHandler):
    """Logs a request's path alone: the query of /authorize carries the state and the PKCE challenge."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        self.log("info", '"%s %s" %s (demo provider)', self.command, loggable_path(self.path), code)


class DemoProvider:
    """The demo authorization server, one confidential client whose secret is new at each run. Its
    state lives in memory: a restart forgets every token, and the sidecar then asks for a new login."""

    def __init__(self, redirect_uri: str, host: str = "127.0.0.1", port: int = 0,
                 access_token_lifetime: int = 120) -> None:  # fmt: skip
        """`redirect_uri` is the sidecar's `<public URL>/callback`, the only one accepted. A short
        `access_token_lifetime` (seconds) makes the refresh visible."""
        check_url(redirect_uri, "redirect_uri")
        if access_token_lifetime < 1:
            raise ValueError("access_token_lifetime must be at least 1 second")
        self.redirect_uri, self.host, self.port = redirect_uri, host, port
        self.client_id, self.client_secret = CLIENT_ID, secrets.token_urlsafe(32)
        self.access_token_lifetime = access_token_lifetime
        self._oauth = WebApplicationServer(
            _Validator(self.client_secret, redirect_uri), token_expires_in=access_token_lifetime
        )
        self._oauth.auth_grant.custom_validators.post_auth.append(_s256_only)
        self._http: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        where = self.url if self._http else "not started"
        return f"DemoProvider({where}, client_id={self.client_id!r})"

    @property
    def url(self) -> str:
        """The issuer URL, known once started (the OS picks the port)."""
        if self._http is None:
            raise RuntimeError("the demo provider is not started")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self._http.server_port}"

    def start(self) -> DemoProvider:
        """Serve in a daemon thread, so the provider never keeps `dev` from exiting."""
        for name in CHATTY_LOGGERS:
            chatty = logging.getLogger(name)
            chatty.setLevel(max(chatty.level, logging.INFO))
        self._http = make_server(self.host, self.port, self._app(), threaded=True, request_handler=_QuietHandler)
        # A short poll interval: stop() waits for one, and tests start and stop a provider each.
        serve = partial(self._http.serve_forever, poll_interval=0.05)
        self._thread = threading.Thread(target=serve, name="demo-provider", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._http is not None and self._thread is not None:
            self._http.shutdown()
            self._http.server_close()
            self._thread.join(timeout=10)
        self._http = self._thread = None

    def __enter__(self) -> DemoProvider:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def provider_body(self) -> dict[str, Any]:
        """The body of the sidecar's `PUT /v1/providers/demo` for this run (its secret is new each run)."""
        return {
            "client_id": self.client_id,
            "client_secret": self.client_secret,
            "authorization_url": f"{self.url}/authorize",
            "token_url": f"{self.url}/token",
            "revocation_url": f"{self.url}/revoke",
            "scopes": " ".join(SCOPES),
            "pkce": True,
            "token_auth_method": TokenAuthMethod.CLIENT_SECRET_BASIC.value,
        }

    def _app(self) -> Flask:
        app = Flask(__name__, template_folder=WEB / "templates", static_folder=WEB / "static")
        app.config["MAX_CONTENT_LENGTH"] = 64 * 1024
        app.extensions["demo"] = self
        app.register_blueprint(bp)
        return app


bp = Blueprint("demo", __name__)


def _server() -> WebApplicationServer:
    return cast(DemoProvider, current_app.extensions["demo"])._oauth


def _login_page(fields: list[tuple[str, str]], scopes: list[str], user_name: str = "", error: str = "") -> str:
    return render_template("demo.html", fields=fields, scopes=scopes, user_name=user_name, error=error)


def _error_page(exc: OAuth2Error) -> tuple[str, int]:
    return render_template("demo.html", message=exc.description), exc.status_code


@bp.get("/authorize")
def authorize_page() -> Any:
    try:
        scopes, _ = _server().validate_authorization_request(_uri(), "GET", None, dict(request.headers))
    except FatalClientError as exc:  # a bad client or redirect_uri: never redirect there
        return _error_page(exc)
    except OAuth2Error as exc:
        return redirect(exc.in_uri(exc.redirect_uri))
    return _login_page(_params(request.args), scopes)


# A forged POST (CSRF) gets nowhere: oauthlib checks the re-posted request again, its code goes only
# to the sidecar's callback, and that callback takes only a state it issued itself.
@bp.post("/authorize")
def authorize() -> Any:
    fields = [(k, v) for k, v in _params(request.form) if k != "user_name"]
    uri, body = _uri(), urlencode(fields)
    user_name, headers = request.form.get("user_name", "").strip(), dict(request.headers)
    try:
        if not 0 < len(user_name) <= MAX_USER_NAME or not user_name.isprintable():
            scopes, _ = _server().validate_authorization_request(uri, "POST", body, headers)
            error = f"Type a user name of at most {MAX_USER_NAME} characters."
            return _login_page(fields, scopes, user_name, error), 400
        answer, _, _ = _server().create_authorization_response(
            uri, "POST", body, headers, credentials={"user": user_name}
        )
    except FatalClientError as exc:
        return _error_page(exc)
    except OAuth2Error as exc:  # e.g. no PKCE: told to the client, as on GET
        return redirect(exc.in_uri(exc.redirect_uri))
    return redirect(answer["Location"])


@bp.post("/token")
def token() -> Response:
    return _answer(*_server().create_token_response(_uri(), "POST", *_body_and_headers()))


@bp.post("/revoke")
def revoke() -> Response:
    return _answer(*_server().create_revocation_response(_uri(), "POST", *_body_and_headers()))


@bp.get("/userinfo")
def userinfo() -> Any:
    valid, checked = _server().verify_request(_uri(), "GET", None, dict(request.headers), scopes=[])
    if not valid:
        return jsonify(error="invalid_token"), 401, {"WWW-Authenticate": 'Bearer error="invalid_token"'}
    return jsonify(sub=checked.user, preferred_username=checked.user)


@bp.get("/.well-known/oauth-authorization-server")
def metadata() -> Any:
    url = cast(DemoProvider, current_app.extensions["demo"]).url
    return jsonify(
        issuer=url,
        authorization_endpoint=f"{url}/authorize",
        token_endpoint=f"{url}/token",
        revocation_endpoint=f"{url}/revoke",
        userinfo_endpoint=f"{url}/userinfo",
        scopes_supported=list(SCOPES),
        response_types_supported=["code"],
        grant_types_supported=["authorization_code", "refresh_token"],
        code_challenge_methods_supported=["S256"],
        token_endpoint_auth_methods_supported=["client_secret_basic", "client_secret_post"],
    )


@bp.after_app_request
def guarded(response: Response) -> Response:
    # No framing (a click in a frame would log in), no Referer with the query, nothing cached.
    response.headers.update({"X-Frame-Options": "DENY", "Content-Security-Policy": "frame-ancestors 'none'",
                             "Referrer-Policy": "no-referrer", "Cache-Control": "no-store"})  # fmt: skip
    return response


# oauthlib reads the query and the form again from text, and a character that form encoding would have
# escaped makes it raise with that text (codes, secrets) in the message: it gets werkzeug's parse, re-encoded.
def _params(given: MultiDict[str, str]) -> list[tuple[str, str]]:
    """Without empty values, which RFC 6749 section 3.1 treats as omitted (oauthlib reads `scope=` as one
    scope named "", not as the default)."""
    return [(name, value) for name, value in given.items(multi=True) if value]


def _uri() -> str:
    query = urlencode(_params(request.args))
    return f"{request.base_url}?{query}" if query else request.base_url


def _body_and_headers() -> tuple[str, dict[str, str]]:
    return urlencode(_params(request.form)), dict(request.headers)


def _answer(headers: dict[str, str], body: str, status: int) -> Response:
    """oauthlib's (headers, body, status) as Flask's response."""
    return Response(body, status, headers)
