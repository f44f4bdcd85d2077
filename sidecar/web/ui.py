"""The settings UI: "OAuth 2.0 providers" and "Secrets", server-rendered.

Every action runs with the logged-in person's own Vault token, kept server-side in the session
(see sessions.py; the browser holds only an opaque id), so Vault policies decide what they may
see and do. Every form post must come from this site and carry the session's CSRF token; the
login form, before there is a session, carries the token of a login cookie (double submit).
"""

from __future__ import annotations

import hmac
import json
import secrets
from contextlib import AbstractContextManager, suppress
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    abort,
    current_app,
    flash,
    make_response,
    redirect,
    render_template,
    request,
    session,
    url_for,
)  # fmt: skip
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response as BaseResponse

from .. import approvals, grants, inputs, logins, presets
from ..audit import Action, Result
from ..errors import Exists, Forbidden, Invalid, SidecarError, Unauthorized, VaultUnavailable
from ..inputs import key_values
from ..models import Provider, Status, TokenAuthMethod
from ..providers import build as build_provider
from ..renewal import RefreshResult
from ..store import Store
from . import plausible_token, runtime
from .sessions import ServerSession, cookie_name, secure

bp = Blueprint("ui", __name__, url_prefix="/settings", template_folder="templates", static_folder="static")
PUBLIC = {"ui.login", "ui.static"}
# Provider fields behind the "Advanced" disclosure, which opens by itself when one of them is wrong.
ADVANCED_FIELDS = frozenset(
    {
        "revocation_url",
        "token_auth_method",
        "extra_authorize_params",
        "refresh_margin",
        "max_token_lifetime",
        "authorization_response_iss_parameter_supported",
    }
)


UI_PAGE = 50  # secrets a page of the settings page
FILTERS = ("cursor", "status", "provider", "environment", "q")  # GET /settings's own query: a page of secrets
LOGIN_CSRF_COOKIE = "oauth_sidecar_login_csrf"
# Why the login form is shown, when the sidecar sent the browser there (no session to flash into).
LOGIN_NOTICES = {
    "logged_out": ("You are logged out.", "success"),
    "expired": ("Your session ended or your Vault token is no longer valid. Log in again.", "error"),
}


def user_store() -> Store:
    return runtime(current_app).store_for(session.get("vault_token"))


def server_session() -> ServerSession:
    return cast(ServerSession, session)  # the app's session interface makes only these


def audited(action: Action, target: str) -> AbstractContextManager[None]:
    """The audit line of a change, naming the logged-in person."""
    return runtime(current_app).audit.audited(action, target, server_session().who)


@bp.before_request
def require_login() -> BaseResponse | None:
    """Every post must come from this site and carry its CSRF token; a logged-out browser goes to
    the login form."""
    if request.method == "POST":
        refuse_forged_post()
    if request.endpoint in PUBLIC:
        return None
    if server_session().unavailable:
        raise VaultUnavailable("Vault is unreachable, sealed or failing; try again shortly")
    if not session.get("vault_token"):
        return redirect(url_for("ui.login"), code=303)
    try:
        runtime(current_app).authenticated(session["vault_token"])
    except Unauthorized:
        session.clear()  # and the server-side record with it
        return redirect(url_for("ui.login", notice="expired"), code=303)
    return None


def refuse_forged_post() -> None:
    """403 for a post from another site (by Origin or Sec-Fetch-Site, which browsers set and pages
    cannot forge) or without the CSRF token bound to this browser: the session's, or on the login
    form the login cookie's."""
    site, origin = request.headers.get("Sec-Fetch-Site"), request.headers.get("Origin")
    own = {_origin(runtime(current_app).settings.public_url), _origin(request.host_url)}
    if (site is not None and site not in ("same-origin", "none")) or (origin is not None and origin not in own):
        abort(403, "Posts from other sites are refused.")
    login_cookie = cookie_name(runtime(current_app).settings, LOGIN_CSRF_COOKIE)
    expected = request.cookies.get(login_cookie) if request.endpoint == "ui.login" else session.get("csrf_token")
    given = request.form.get("csrf_token", "")
    if not (expected and given and hmac.compare_digest(given.encode(), expected.encode())):
        abort(403, "The form has expired or did not come from this page. Reload the page and try again.")


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


@bp.context_processor
def _template_helpers() -> dict[str, Any]:
    return {
        "csrf_token": session.get("csrf_token", ""),
        "logged_in": bool(session.get("vault_token")),
        "Status": Status,
    }


@bp.after_request
def _csp(response: BaseResponse) -> BaseResponse:
    """Our own stylesheet and script, nothing inline, nothing from elsewhere (the app adds the rest)."""
    response.headers["Content-Security-Policy"] = (
        "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    )
    # same-origin, not no-referrer: with no-referrer a browser sends `Origin: null` on the UI's own
    # form posts, which could then not be told from a forged post. No other site learns a thing.
    response.headers["Referrer-Policy"] = "same-origin"
    return response


# -- logging in and out ------------------------------------------------------------------------


@bp.route("/login", methods=["GET", "POST"])
def login() -> BaseResponse:
    rt, error = runtime(current_app), ""
    if request.method == "POST":
        token = request.form.get("vault_token", "").strip()
        try:
            if not plausible_token(token):
                raise Unauthorized("the Vault token is missing or not valid")
            who = rt.store_for(token).whoami()
        except Unauthorized:
            error = "That Vault token is not valid."
            rt.audit.record(Action.UI_LOGIN, "settings", Result.DENIED, None)
        else:
            server_session().begin(token, who, rt.settings)  # a new session id, never the old one
            rt.audit.record(Action.UI_LOGIN, "settings", Result.SUCCESS, who)
            return redirect(url_for("ui.settings"), code=303)
    csrf = secrets.token_urlsafe(32)
    notice = LOGIN_NOTICES.get(request.args.get("notice", ""))
    page = render_template("ui/login.html", error=error, notice=notice, csrf_token=csrf)
    response = make_response(page, 401 if error else 200)
    response.set_cookie(
        cookie_name(rt.settings, LOGIN_CSRF_COOKIE), csrf, path="/", httponly=True, samesite="Strict",
        secure=secure(rt.settings),
    )  # fmt: skip
    return response


@bp.post("/logout")
def logout() -> BaseResponse:
    who = server_session().who
    session.clear()  # the server-side record goes: the old cookie is dead everywhere at once
    runtime(current_app).audit.record(Action.UI_LOGOUT, "settings", Result.SUCCESS, who)
    return redirect(url_for("ui.login", notice="logged_out"), code=303)


# -- the page ----------------------------------------------------------------------------------


@bp.get("")
def settings() -> str:
    """Each section says what the token may do there: a list it may not read is said to be hidden
    (never shown as empty), and an Add button appears only where it may add."""
    rt, store = runtime(current_app), user_store()
    providers: list[dict[str, Any]] | None = None  # None: the token may not list them
    with suppress(Forbidden):
        providers = [p.public() for p in store.list_providers()]
    query = inputs.secret_query({"limit": str(UI_PAGE), **{k: request.args.get(k, "") for k in FILTERS}})
    page: grants.Page | None = None  # None: the token may not list secrets
    with suppress(Forbidden):
        page = grants.page(store, rt.settings, query, rt.index)
    for secret in page.secrets if page else ():
        secret["commands"] = [(env, rt.read_command(env, secret["name"])) for env in secret["environments"]]
    may = may_add(store, rt.settings.environments)
    filters = {k: v for k in FILTERS if k != "cursor" and (v := request.args.get(k))}

    def link(**changes: str) -> str:
        """This page of secrets with `changes` to its filters."""
        return url_for("ui.settings", _anchor="secrets", **cast(dict[str, Any], {**filters, **changes}))

    return render_template(
        "ui/settings.html", providers=providers, secrets=page.secrets if page else None, page=page, query=query,
        filters=filters, link=link, may=may,
    )  # fmt: skip


@dataclass(frozen=True)
class MayAdd:
    """Whether the token may add a provider, and a secret, under a name not yet chosen."""

    providers: bool
    secrets: bool


def may_add(store: Store, environments: tuple[str, ...]) -> MayAdd:
    """Before any name is typed, what approvals.may_write and grants.may_store will ask of it: create
    on a provider; create on a grant and on the view of at least one environment. One question to
    Vault for the page. A policy that grants only named objects hides the button, not the form."""
    provider, grant = store.any_name("providers"), store.any_name("grants")
    views = [store.any_view(env) for env in environments]
    try:
        missing = set(store.lacking([provider, grant, *views], "create"))
    except Forbidden:  # a token without Vault's default policy may not even ask
        return MayAdd(providers=False, secrets=False)
    return MayAdd(provider not in missing, grant not in missing and any(view not in missing for view in views))


# -- providers ---------------------------------------------------------------------------------


# The session key of a client secret typed into a provider form that came back with errors: kept
# server-side (never sent back into the page) for the next submission of that form, going to the
# same place (`_form_key`), and dropped by any other outcome.
KEPT_SECRET = "kept_client_secret"  # noqa: S105 - the name of a session key


def _client_secret(editing: Provider | None) -> str:
    """The client secret this submission carries: typed now, else kept from this form's last try."""
    kept = session.pop(KEPT_SECRET, None) or {}
    typed = request.form.get("client_secret", "")
    return typed or (str(kept.get("value", "")) if kept.get("form") == _form_key(editing) else "")


def _keep(secret: str, editing: Provider | None) -> None:
    if secret:
        session[KEPT_SECRET] = {"form": _form_key(editing), "value": secret}


def _form_key(editing: Provider | None) -> str:
    """The form and whose secret it is: a kept secret serves the provider and client it was typed
    for (mending a URL keeps it), never another name or client ID."""
    name = f"edit:{editing.name}" if editing else f"new:{request.form.get('name', '').strip()}"
    return json.dumps([name, request.form.get("client_id", "").strip()])


def provider_from_form(name: str, keep_secret_of: Provider | None, secret: str) -> Provider:
    """Form fields to a validated provider. An empty client secret on edit keeps the stored one."""
    form = request.form
    if not secret and keep_secret_of is not None:
        secret = keep_secret_of.client_secret
    body: dict[str, Any] = {
        "preset": form.get("preset", ""),
        "preset_params": key_values(form.get("preset_params", "").splitlines(), "preset_params"),
        "client_id": form.get("client_id", ""),
        "client_secret": secret,
        "authorization_url": form.get("authorization_url", "").strip(),
        "token_url": form.get("token_url", "").strip(),
        "scopes": form.get("scopes", ""),
        "revocation_url": form.get("revocation_url", "").strip() or None,
        "token_auth_method": form.get("token_auth_method") or None,
        "pkce": form.get("pkce") == "on",
        "extra_authorize_params": key_values(
            form.get("extra_authorize_params", "").splitlines(), "extra_authorize_params"
        ),
        "issuer": form.get("issuer", "").strip() or None,
        "authorization_response_iss_parameter_supported": form.get("iss_supported") == "on",
    }
    if keep_secret_of is not None:  # what the form does not show: kept as it is
        body.update(previous_client_secret=keep_secret_of.previous_client_secret,
                    private_key=keep_secret_of.private_key, key_id=keep_secret_of.key_id,
                    device_authorization_url=keep_secret_of.device_authorization_url,
                    scope_separator=keep_secret_of.scope_separator)  # fmt: skip
        if keep_secret_of.issuer == body["issuer"]:
            body["discovered_at"] = keep_secret_of.discovered_at
        elif body["issuer"]:  # a new issuer: its own metadata, not the old issuer's URLs still in the form
            for url in ("authorization_url", "token_url", "revocation_url", "device_authorization_url"):
                if body.get(url) == getattr(keep_secret_of, url):
                    body[url] = None
    for key in ("refresh_margin", "max_token_lifetime"):
        raw = form.get(key, "").strip()
        if raw and not raw.isdecimal():
            raise Invalid(f"{key} must be a whole number of seconds", {key: "a whole number of seconds"})
        body[key] = int(raw) if raw else None
    return build_provider(name, {k: v for k, v in body.items() if v is not None}, runtime(current_app).oauth)


def provider_form(editing: Provider | None = None, errors: dict[str, str] | None = None, status: int = 200):
    """The add/edit form: typed values kept on error, the client secret never sent back (kept
    server-side instead, see KEPT_SECRET)."""
    values: dict[str, Any]
    if request.method == "POST":
        values = {k: v for k, v in request.form.items() if k not in ("client_secret", "csrf_token")}
        values["pkce"] = request.form.get("pkce") == "on"
        values["iss_supported"] = request.form.get("iss_supported") == "on"
    elif editing is not None:
        shown = editing.public()
        values = {
            **{k: v if v is not None else "" for k, v in shown.items()},
            "scopes": "\n".join(editing.scopes),
            "extra_authorize_params": "\n".join(f"{k}={v}" for k, v in editing.extra_authorize_params.items()),
            "preset_params": "\n".join(f"{k}={v}" for k, v in editing.preset_params.items()),
            "iss_supported": editing.authorization_response_iss_parameter_supported,
        }
    else:
        values = {"pkce": True}
    return (
        render_template(
            "ui/provider_form.html",
            editing=editing,
            values=values,
            errors=errors or {},
            advanced_open=bool(set(errors or {}) & ADVANCED_FIELDS),
            methods=list(TokenAuthMethod),
            presets=presets.catalogue(),
            secret_kept=(session.get(KEPT_SECRET) or {}).get("form") == _form_key(editing),
            redirect_uri=runtime(current_app).settings.redirect_uri,
        ),
        status,
    )


def field_errors(exc: Invalid) -> dict[str, str]:
    """Each message under its field, without the field's API name in front ("token_url must ...")."""
    shown = {}
    for field in exc.fields:
        message = exc.details.get(field, exc.message).removeprefix(f"{field} ").removeprefix(f"{field}: ")
        shown[field] = message[:1].upper() + message[1:]
    return shown or {"_form": exc.message}


@bp.get("/providers/new")
def new_provider():
    session.pop(KEPT_SECRET, None)  # a new form starts empty
    return provider_form()


@bp.post("/providers")
def create_provider():
    name, secret = request.form.get("name", ""), _client_secret(None)
    try:
        with audited(Action.PROVIDER_PUT, name[:64]):
            approvals.may_write(user_store(), name)
            provider = provider_from_form(name, None, secret)
            approvals.save(user_store(), runtime(current_app).own_store, provider, create=True)
    except Exists:
        _keep(secret, None)
        return provider_form(errors={"name": "Already exists: edit it instead."}, status=409)
    except Invalid as exc:
        _keep(secret, None)
        errors = field_errors(exc)
        if "provider" in errors:
            errors["name"] = errors.pop("provider")
        return provider_form(errors=errors, status=400)
    flash(f"Provider {provider.name} saved.", "success")
    return redirect(url_for("ui.settings", _anchor="providers"), code=303)


@bp.get("/providers/<name>/edit")
def edit_provider(name: str):
    session.pop(KEPT_SECRET, None)
    return provider_form(editing=user_store().get_provider(name))


@bp.post("/providers/<name>")
def update_provider(name: str):
    store = user_store()
    current = store.get_provider(name)
    secret = _client_secret(current)
    approvals.may_write(store, name)
    try:
        with audited(Action.PROVIDER_PUT, name):
            provider = provider_from_form(name, current, secret)
            approvals.save(store, runtime(current_app).own_store, provider)
    except Invalid as exc:
        _keep(secret, current)
        return provider_form(editing=current, errors=field_errors(exc), status=400)
    flash(f"Provider {name} saved.", "success")
    return redirect(url_for("ui.settings", _anchor="providers"), code=303)


@bp.route("/providers/<name>/delete", methods=["GET", "POST"])
def delete_provider(name: str):
    store = user_store()
    store.get_provider(name)  # 404 before asking
    if request.method == "GET":
        return render_template("ui/confirm.html", kind="provider", name=name, revocable=False)
    with audited(Action.PROVIDER_DELETE, name):
        approvals.delete(store, runtime(current_app).own_store, name)
    flash(f"Provider {name} deleted.", "success")
    return redirect(url_for("ui.settings", _anchor="providers"), code=303)


# -- secrets -----------------------------------------------------------------------------------


def secret_form(errors: dict[str, str] | None = None, status: int = 200):
    providers = [p.name for p in user_store().list_providers()]
    environments = runtime(current_app).settings.environments
    if request.method == "POST":
        values = {"name": request.form.get("name", ""), "provider": request.form.get("provider", "")}
        chosen = request.form.getlist("environments")
    else:
        values, chosen = {}, list(environments)
    return (
        render_template(
            "ui/secret_form.html",
            providers=providers,
            environments=environments,
            chosen=chosen,
            values=values,
            errors=errors or {},
        ),
        status,
    )


@bp.get("/secrets/new")
def new_secret():
    return secret_form()


@bp.post("/secrets")
def create_secret():
    form = request.form
    try:
        body = {"name": form.get("name", ""), "provider": form.get("provider", ""),
                "environments": form.getlist("environments")}  # fmt: skip
        secret = inputs.secret(body, runtime(current_app).settings.environments)
        with audited(Action.LOGIN_STARTED, secret.name):
            login = start_login(secret.name, secret.provider, list(secret.environments or ()))
    except Exists:
        return secret_form(errors={"name": "Already exists: reconnect it from its row instead."}, status=409)
    except Invalid as exc:
        return secret_form(errors=field_errors(exc), status=400)
    return redirect(login.url, code=303)


@bp.post("/secrets/<name>/reconnect")
def reconnect_secret(name: str):
    grant = user_store().get_grant(name)
    with audited(Action.LOGIN_STARTED, name):
        login = start_login(name, grant.provider, list(grant.environments), replace=True)
    if login.replaces:  # shown when the login brings the browser back
        flash(f"Reconnecting {name}: this {login.replaces}.", "info")
    return redirect(login.url, code=303)


def start_login(name: str, provider: str, environments: list[str], replace: bool = False) -> logins.LoginLink:
    rt = runtime(current_app)
    return logins.start(
        user_store(), rt.own_store, rt.settings, rt.oauth, name, provider, environments,
        return_to_settings=True, started_by=server_session().who, replace=replace,
    )  # fmt: skip


@bp.post("/secrets/<name>/refresh")
def refresh_secret(name: str):
    with audited(Action.REFRESHED, name):
        outcome = runtime(current_app).refresher.refresh_for(user_store(), name)
    if outcome.result == RefreshResult.REFRESHED:
        flash(f"{name} refreshed.", "success")
    elif outcome.result == RefreshResult.REAUTHORIZATION_REQUIRED:
        # No refresh can bring it back (the detail says "connect it again", the CLI's words): say what does here.
        flash(f"{name} was not refreshed: the provider refused it for good. Reconnect to log in again.", "error")
    else:
        flash(f"{name} was not refreshed: {outcome.detail or outcome.result.replace('_', ' ')}", "error")
    return redirect(url_for("ui.settings", _anchor="secrets"), code=303)


@bp.route("/secrets/<name>/delete", methods=["GET", "POST"])
def delete_secret(name: str):
    store = user_store()
    store.get_grant(name)  # 404 before asking
    if request.method == "GET":
        return render_template("ui/confirm.html", kind="secret", name=name, revocable=True)
    try:
        with audited(Action.DELETED, name):
            rt, force = runtime(current_app), request.form.get("force") == "on"
            revoked = grants.delete(store, rt.settings, rt.oauth, name, rt.own_store, force=force)
    except grants.RevocationFailed as exc:
        flash(exc.message, "error")
        return redirect(url_for("ui.delete_secret", name=name), code=303)
    flash(f"{name} deleted" + (" and revoked at the provider." if revoked else "."), "success")
    return redirect(url_for("ui.settings", _anchor="secrets"), code=303)


@bp.errorhandler(SidecarError)
@bp.errorhandler(HTTPException)
def _error(exc: SidecarError | HTTPException):
    """Errors inside the UI are shown as a page of the UI, not as JSON."""
    if isinstance(exc, SidecarError):
        return render_template("ui/error.html", message=exc.message), exc.status
    return render_template("ui/error.html", message=exc.description or exc.name), exc.code or 500


@bp.app_template_filter("when")
def _when(value: str) -> str:
    return value.replace("T", " ").replace("Z", " UTC") if value else "—"
