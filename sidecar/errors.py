"""The project's own errors: one class per meaning, each with its HTTP status.

Messages are shown to users as they are, so they never carry a secret.
"""

from __future__ import annotations


def printable(value: object, limit: int = 200) -> str:
    """A provider's or browser's text fit for a message or a page: printable characters only,
    bounded ("" for what is not text)."""
    if not isinstance(value, str):
        return ""
    return "".join(c for c in value if c.isprintable())[:limit]


class SidecarError(Exception):
    """Base class; `code` and `status` become the JSON error body and HTTP status."""

    code = "internal"
    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Invalid(SidecarError):
    """Bad input. `fields` maps a field name to what is wrong with it, in a word (the API's answer);
    `details`, when there are several, to its own whole message (shown next to each form field)."""

    code = "invalid"
    status = 400

    def __init__(self, message: str, fields: dict[str, str] | None = None, details: dict[str, str] | None = None):
        super().__init__(message)
        self.fields = dict(fields or {})
        self.details = dict(details or {})


class Unauthorized(SidecarError):
    code = "unauthorized"
    status = 401


class Forbidden(SidecarError):
    code = "forbidden"
    status = 403


class NotFound(SidecarError):
    code = "not_found"
    status = 404


class Conflict(SidecarError):
    """A check-and-set lost, or the object is in use."""

    code = "conflict"
    status = 409


class Exists(Conflict):
    """A create met a name already taken: nothing is replaced unless the request says it replaces."""

    code = "exists"

    def __init__(self, message: str, fields: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.fields = dict(fields or {"name": "exists"})


class VaultUnavailable(SidecarError):
    """Vault is unreachable, sealed, or answered with a server error."""

    code = "vault_unavailable"
    status = 503


class OAuthPermanent(SidecarError):
    """The provider refused (invalid_grant, invalid_client, ...); `error` is its OAuth error code."""

    code = "oauth_refused"
    status = 502

    def __init__(self, message: str, error: str = "") -> None:
        super().__init__(message)
        self.error = error


class OAuthTransient(SidecarError):
    """The provider could not answer now (network, timeout, 5xx, 429); retrying later may work."""

    code = "oauth_unavailable"
    status = 502

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ConfigError(Exception):
    """A setting is missing or malformed; the message names the variable."""
