"""The audit trail: one JSON line per change made through the sidecar, naming who made it.

The sidecar writes to Vault with its own identity, so Vault's audit device names the sidecar;
these lines name the person or program whose Vault token asked (entity id, display name and
accessor from `lookup-self`), never the token itself.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from .errors import Conflict, Forbidden, Invalid, NotFound, SidecarError, Unauthorized
from .models import Identity, rfc3339


class Action(StrEnum):
    UI_LOGIN = "ui.login"
    UI_LOGOUT = "ui.logout"
    PROVIDER_PUT = "provider.put"
    PROVIDER_DELETE = "provider.delete"
    LOGIN_STARTED = "secret.login_started"
    CONNECTED = "secret.connected"
    CREATED = "secret.created"  # client credentials, or an imported refresh token
    REFRESHED = "secret.refreshed"  # "Refresh now"; the refresher's own refreshes are not changes by anyone
    DELETED = "secret.deleted"


class Result(StrEnum):
    SUCCESS = "success"
    DENIED = "denied"  # Vault refused the caller (401 or 403)
    REFUSED = "refused"  # bad input, a conflict, or nothing there
    FAILED = "failed"  # anything else: a provider or Vault failure


def _result_of(exc: BaseException) -> Result:
    if isinstance(exc, Forbidden | Unauthorized):
        return Result.DENIED
    if isinstance(exc, Invalid | Conflict | NotFound) or (isinstance(exc, SidecarError) and exc.status < 500):
        return Result.REFUSED
    return Result.FAILED


class Auditor:
    """Writes audit lines to standard output ("-") or appends them to a file."""

    def __init__(self, destination: str) -> None:
        # A logger of its own, outside logging's global tree: the application's log settings
        # (levels, propagation, a test's capture) neither drop these lines nor mix them in.
        self._log = logging.Logger("sidecar.audit", logging.INFO)
        handler = logging.StreamHandler(sys.stdout) if destination == "-" else logging.FileHandler(destination)
        handler.setFormatter(logging.Formatter("%(message)s"))
        self._log.addHandler(handler)

    def record(self, action: Action, target: str, result: Result, who: Identity | None, **detail: Any) -> None:
        line = {
            "time": rfc3339(datetime.now(UTC), precise=True),
            "action": str(action),
            "target": target,
            "outcome": str(result),
            "who": who.public() if who else None,
            **detail,
        }
        self._log.info(json.dumps(line, sort_keys=False))

    @contextmanager
    def audited(self, action: Action, target: str, who: Identity | None, **detail: Any) -> Iterator[None]:
        """Record the block's outcome: success, or how it failed (the error itself goes on up)."""
        try:
            yield
        except Exception as exc:
            self.record(action, target, _result_of(exc), who, **detail)
            raise
        self.record(action, target, Result.SUCCESS, who, **detail)
