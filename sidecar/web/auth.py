"""The public login routes: `/login/<id>` binds a browser, `/callback` finishes the login, and
`/callback/saved` is where the "being saved" page refreshes to while a login's tokens are stored."""

from __future__ import annotations

import time
from collections.abc import Mapping
from functools import partial

from flask import Blueprint, Response, current_app, flash, redirect, render_template, request, url_for
from werkzeug.wrappers import Response as BaseResponse

from .. import logins
from ..audit import Action
from ..errors import NotFound, SidecarError, VaultUnavailable
from ..models import Grant, rfc3339
from . import runtime
from .sessions import secure

bp = Blueprint("auth", __name__)
SAVING_REFRESH = 2  # seconds between two looks of the "being saved" page
SAVED_PATIENCE = 1.0  # seconds /callback/saved waits for Vault before it answers "still saving"


# The next step after a login that did not end in stored tokens. Conditional, since one refusal is
# a second look at a login whose tokens are being saved.
START_AGAIN = (
    "If the secret does not show as connected on the settings page, start the connection again there "
    "(Reconnect, or Add OAuth 2.0 provider secret), or ask whoever sent you the login link for a new one."
)


@bp.after_request
def _csp(response: BaseResponse) -> BaseResponse:
    """These pages use the settings UI's stylesheet and nothing else: no script, nothing inline."""
    response.headers["Content-Security-Policy"] = (
        "default-src 'none'; style-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    )
    return response


def _page(
    status: int, title: str, message: str, next_step: str, grant: Grant | None = None, refresh: str = ""
) -> Response:
    """A login page: what happened, what to do next, and the way to the settings. With `refresh`,
    one that reloads itself at that URL every SAVING_REFRESH seconds."""
    rt = runtime(current_app)
    html = render_template(
        "login_result.html",
        title=title,
        message=message,
        next_step=next_step,
        tone="success" if status == 200 else "info" if status < 400 else "error",
        grant=grant,
        commands=[rt.read_command(env, grant.name) for env in grant.environments] if grant else [],
        expires_at=rfc3339(grant.tokens.expires_at) if grant else "",
        refresh=refresh,
        every=SAVING_REFRESH,
    )
    return Response(html, status=status, mimetype="text/html")


@bp.get("/login/<lid>")
def login(lid: str) -> BaseResponse:
    settings = runtime(current_app).settings
    try:
        target, cookie, max_age = logins.open_link(
            runtime(current_app).own_store, settings, runtime(current_app).oauth, lid
        )
    except logins.LoginRefused as exc:
        return _page(exc.status, "Login link not valid", exc.message, START_AGAIN)
    response = redirect(target, code=302)
    response.set_cookie(
        logins.cookie_name(lid),
        cookie,
        max_age=max_age,
        path="/callback",
        httponly=True,
        samesite="Lax",
        secure=secure(settings),
    )
    return response


@bp.get("/callback")
def callback() -> BaseResponse:
    if any(len(values) > 1 for values in request.args.listvalues()):
        return _page(400, "Login refused", "A parameter appears more than once in the provider's answer.", START_AGAIN)
    args = request.args.to_dict()
    rt = runtime(current_app)
    try:
        matched = logins.match(rt.own_store, args)
    except logins.LoginRefused as exc:
        return _page(exc.status, "Login refused", exc.message, START_AGAIN)
    name = str(matched.pending.data.get("name", ""))
    audited = partial(rt.audit.audited, Action.CONNECTED, name, matched.started_by)
    try:
        grant = _finish(matched, args, audited)
    except SidecarError as exc:
        if matched.to_settings:
            flash(exc.message, "error")
            return redirect(url_for("ui.settings"), code=303)
        title = "Login refused" if isinstance(exc, logins.LoginRefused) else "Login not completed"
        return _page(exc.status, title, exc.message, START_AGAIN)
    # The login is used up and its tokens are in hand: the binding cookie has served its purpose.
    response = _connected(grant, matched.to_settings) if grant else _saving(name, matched.lid, matched.to_settings)
    response.delete_cookie(logins.cookie_name(matched.lid), path="/callback")
    return response


def _finish(matched: logins.Callback, args: Mapping[str, str], audited: logins.Audited) -> Grant | None:
    """Redeem the code, then store the tokens: the grant if stored within LOGIN_WAIT, None while
    that goes on. A login that ends without tokens is audited here; one with tokens, by the save,
    when its save ends (so a save that outlives this request is recorded once, with its outcome)."""
    rt = runtime(current_app)
    try:
        redeemed = logins.finish(rt.own_store, rt.settings, rt.oauth, matched, args, request.cookies.get)
    except Exception:
        with audited():
            raise  # recorded as the login's outcome, and on to the page
    return logins.save_meanwhile(rt.own_store, rt.settings, redeemed, logins.LOGIN_WAIT, audited)


@bp.get("/callback/saved")
def saved() -> BaseResponse:
    """Where the "being saved" page refreshes to. It reads only Vault, so any replica answers. Under
    /callback so that a login started in the settings UI ends there with its banner (the UI session
    is read for /callback paths); its id and name ride in the query string, which no log shows."""
    lid, name = request.args.get("login", ""), request.args.get("name", "")
    to_settings = request.args.get("settings") == "1"
    try:
        # A short wait on Vault: this page reloads itself, and must not hold a worker for 30 s each time.
        grant = logins.saving(runtime(current_app).own_store.until(time.monotonic() + SAVED_PATIENCE), name, lid)
    except VaultUnavailable:
        grant = None  # Vault cannot tell now; the save, if any, goes on meanwhile
    except NotFound:
        message = "This login is unknown, or it ended without storing its tokens. Start the connection again."
        if to_settings:
            flash(message, "error")
            return redirect(url_for("ui.settings"), code=303)
        return _page(404, "Login not found", message, START_AGAIN)
    return _connected(grant, to_settings) if grant else _saving(name, lid, to_settings)


def _connected(grant: Grant, to_settings: bool) -> BaseResponse:
    if to_settings:
        flash(f"{grant.name} is connected to {grant.provider}.", "success")
        return redirect(url_for("ui.settings"), code=303)
    done = "Apps of each environment read its access token with the command below. You can close this window."
    return _page(200, "Connected", f"{grant.name} is connected to {grant.provider}.", done, grant)


def _saving(name: str, lid: str, to_settings: bool) -> Response:
    """202: the tokens are in hand and being stored (Vault may be unavailable for a while)."""
    again = url_for("auth.saved", login=lid, name=name, settings="1" if to_settings else None)  # None: left out
    message = (
        f"The provider has issued the tokens of {name}; the secret is being saved to Vault and will "
        "appear shortly. This page refreshes until it has."
    )
    meanwhile = "You can close this window: the saving goes on without it."
    return _page(202, f"Saving {name}…", message, meanwhile, refresh=again)
