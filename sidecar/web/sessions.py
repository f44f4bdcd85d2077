"""Server-side UI sessions: the browser holds only an opaque random id.

The session (the person's Vault token, their CSRF token, who they are) lives in Vault under
`<state prefix>/sessions/<sha256 of the id>`, which only the sidecar's own policy may touch, so
every replica finds it and "Log out" ends it everywhere at once. A session ends after
SIDECAR_SESSION_IDLE seconds without use, after SIDECAR_SESSION_LIFETIME seconds in all, and
when the Vault token itself expires, whichever comes first.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Flask, Request, Response
from flask.sessions import SessionInterface, SessionMixin
from werkzeug.datastructures import CallbackDict

from ..config import Settings
from ..errors import Conflict, Invalid, NotFound, VaultUnavailable
from ..models import Identity, parse_rfc3339, rfc3339
from ..store import Store, Versioned

log = logging.getLogger(__name__)
COOKIE = "oauth_sidecar_session"
# The idle clock is written back at most this often (or every half idle timeout, if that is
# shorter): a page view must not cost a Vault write.
TOUCH_EVERY = timedelta(seconds=60)
# Paths that use the session; anything else (the API, health, metrics) never reads it from Vault.
SESSION_PATHS = ("/settings", "/callback")
# ...but not the stylesheet and script: the login pages load them too, and the "being saved" page must
# render (and reload) at once while Vault is out, not after a session read has waited on Vault.
STATIC_PATH = "/settings/static/"


def cookie_name(settings: Settings, name: str) -> str:
    """`__Host-` on https: the browser then takes it only from this exact origin, path /, Secure."""
    return f"__Host-{name}" if secure(settings) else name


def secure(settings: Settings) -> bool:
    return settings.public_url.startswith("https://")


def record_key(sid: str) -> str:
    """The Vault name of a session: a hash, so the id itself is stored nowhere."""
    return hashlib.sha256(sid.encode()).hexdigest()


class ServerSession(CallbackDict[str, Any], SessionMixin):
    """Flask's session for one request. `sid` is the cookie's id (None: no session in Vault yet)."""

    def __init__(self, data: dict[str, Any] | None = None, sid: str | None = None, stored: Versioned | None = None):
        def changed(_: Any) -> None:
            self.modified = True

        super().__init__(data or {}, changed)
        self.sid = sid
        self.record = dict(stored.data) if stored else {}
        self.version = stored.version if stored else 0
        self.replaced: str | None = None  # the id this session had before a login rotated it
        self.modified = False
        self.unavailable = False  # Vault could not be asked; the UI answers 503 rather than "logged out"

    def begin(self, token: str, identity: Identity, settings: Settings) -> None:
        """Log in: a new id (never the one the browser came with), a new CSRF token, and an end."""
        now = datetime.now(UTC)
        ends = now + timedelta(seconds=settings.session_lifetime)
        if identity.ttl:
            ends = min(ends, now + timedelta(seconds=identity.ttl))
        self.clear()
        self.update(vault_token=token, csrf_token=secrets.token_urlsafe(32), who=identity.public())
        self.record = {"created_at": rfc3339(now, precise=True), "ends_at": rfc3339(ends, precise=True)}
        self.replaced, self.sid = self.sid, None  # a fresh id is issued when saved

    @property
    def who(self) -> Identity | None:
        return Identity.from_public(self.get("who"))


class VaultSessions(SessionInterface):
    def __init__(self, settings: Settings, store: Store) -> None:
        self._settings = settings
        self._store = store  # the sidecar's own: no other policy may read sessions
        self._cookie = cookie_name(settings, COOKIE)

    def open_session(self, app: Flask, request: Request) -> ServerSession:
        sid = request.cookies.get(self._cookie, "")
        if not (sid and request.path.startswith(SESSION_PATHS)) or request.path.startswith(STATIC_PATH):
            return ServerSession()
        try:
            stored = self._store.read("sessions", record_key(sid))
        except (NotFound, Invalid):
            return ServerSession(sid=sid)  # ended elsewhere: saving it drops the browser's cookie
        except VaultUnavailable:
            session = ServerSession()
            session.unavailable = True
            return session
        now = datetime.now(UTC)
        if now >= self._ends(stored.data):
            return ServerSession(sid=sid)  # ended: saving it deletes the record and the cookie
        session = ServerSession(dict(stored.data.get("data") or {}), sid, stored)
        last_seen = parse_rfc3339(stored.data.get("last_seen"))
        touch_every = min(TOUCH_EVERY, timedelta(seconds=self._settings.session_idle) / 2)
        if last_seen is None or now - last_seen >= touch_every:
            session.modified = True  # written back on save, which moves the idle end on
        return session

    def _ends(self, record: dict[str, Any]) -> datetime:
        """The earlier of the absolute end and the idle end; the epoch if the record is unreadable."""
        ends, seen = parse_rfc3339(record.get("ends_at")), parse_rfc3339(record.get("last_seen"))
        if ends is None or seen is None:
            return datetime.fromtimestamp(0, UTC)
        return min(ends, seen + timedelta(seconds=self._settings.session_idle))

    def save_session(self, app: Flask, session: SessionMixin, response: Response) -> None:
        if not isinstance(session, ServerSession):  # only ever one of ours; nothing to save otherwise
            return
        if not session.get("vault_token"):
            if session.sid:  # logged out, or the token died: the record goes, the cookie too
                self._forget(session.sid)
                response.delete_cookie(self._cookie, path="/", secure=secure(self._settings), samesite="Lax")
            return
        if not session.modified and session.sid:
            return
        now = datetime.now(UTC)
        record = {**session.record, "data": dict(session), "last_seen": rfc3339(now, precise=True)}
        record["expires_at"] = rfc3339(self._ends(record), precise=True)  # what the sweep goes by
        if session.sid is None:
            if session.replaced:
                self._forget(session.replaced)
            sid = secrets.token_urlsafe(32)
            self._store.write("sessions", record_key(sid), record, cas=0)
            response.set_cookie(
                self._cookie, sid, path="/", httponly=True, samesite="Lax", secure=secure(self._settings)
            )
        else:
            try:  # at the version read: a session logged out meanwhile (another tab) stays logged out
                self._store.write("sessions", record_key(session.sid), record, cas=session.version)
            except Conflict:
                log.info("a UI session changed or ended while a request used it; its later change is dropped")

    def _forget(self, sid: str) -> None:
        try:
            self._store.delete("sessions", record_key(sid))
        except (NotFound, VaultUnavailable) as exc:  # swept later if it is still there
            log.warning("could not delete an ended UI session: %s", exc.message)
