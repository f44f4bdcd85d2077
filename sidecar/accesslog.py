"""What an access log may show of a request path, for werkzeug's server (`dev`) and gunicorn (`serve`).

A login link `/login/<id>` is a bearer secret while it is valid: whoever opens it first binds the
login to their browser. The log shows `/login/#<first 8 hex of sha256(id)>` instead, enough to
follow one login through the log, not enough to open it. The query string is never shown either:
`/callback` carries authorization codes.
"""

from __future__ import annotations

import hashlib
import re
from urllib.parse import unquote

# The path after an optional scheme and authority (an absolute-form request target), then /login/.
_LOGIN = re.compile(r"((?:[A-Za-z][A-Za-z0-9+.-]*://[^/]*)?/+login/+)(.*)", re.S)


def login_hash(lid: str) -> str:
    """The short hash that stands for a login id in logs."""
    return hashlib.sha256(lid.encode("utf-8", "surrogatepass")).hexdigest()[:8]


def loggable_path(target: str) -> str:
    """A request target as an access log may show it: without its query string, a login id hashed."""
    path = target.partition("?")[0]
    # Routing decodes %XX first, so /%6Cogin/<id> opens the same login: match on the decoded path.
    found = _LOGIN.fullmatch(unquote(path))
    shown = f"{found[1]}#{login_hash(found[2])}" if found else path
    # A decoded %0A would start a line of its own: one that could pass for an audit line.
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in shown)
