"""The public login routes: `/login/<id>` binds a browser, `/callback` finishes the login."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, flash, redirect, render_template, request, url_for
from werkzeug.wrappers import Response as BaseResponse

from .. import logins
from ..audit import Action
from ..errors import SidecarError
from ..models import Grant, rfc3339
from . import runtime
from .sessions import secure

bp = Blueprint("auth", __name__)


def _page(status: int, title: str, message: str, grant: Grant | None = None) -> Response:
    settings = runtime(current_app).settings
    paths = [f"{settings.kv_mount}/{settings.prefix}/{env}/{grant.name}" for env in grant.environments] if grant else []
    html = render_template(
        "login_result.html",
        title=title,
        message=message,
        grant=grant,
        paths=paths,
        expires_at=rfc3339(grant.tokens.expires_at) if grant else "",
    )
    return Response(html, status=status, mimetype="text/html")


@bp.get("/login/<lid>")
def login(lid: str) -> BaseResponse:
    settings = runtime(current_app).settings
    try:
        target, cookie, max_age = logins.open_link(runtime(current_app).own_store, settings, lid)
    except logins.LoginRefused as exc:
        return _page(exc.status, "Login link not valid", exc.message)
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
        return _page(400, "Login refused", "A parameter appears more than once in the provider's answer.")
    args = request.args.to_dict()
    rt = runtime(current_app)
    try:
        matched = logins.match(rt.own_store, args)
    except logins.LoginRefused as exc:
        return _page(exc.status, "Login refused", exc.message)
    try:
        with rt.audit.audited(Action.CONNECTED, str(matched.pending.data.get("name", "")), matched.started_by):
            grant = logins.finish(rt.own_store, rt.settings, matched, args, request.cookies.get)
    except SidecarError as exc:
        if matched.to_settings:
            flash(exc.message, "error")
            return redirect(url_for("ui.settings"), code=303)
        title = "Login refused" if isinstance(exc, logins.LoginRefused) else "Login not completed"
        return _page(exc.status, title, exc.message)
    if matched.to_settings:
        flash(f"{grant.name} is connected to {grant.provider}.", "success")
        response = redirect(url_for("ui.settings"), code=303)
    else:
        response = _page(200, "Connected", f"{grant.name} is connected to {grant.provider}.", grant)
    response.delete_cookie(logins.cookie_name(grant.login_id), path="/callback")
    return response
