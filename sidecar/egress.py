"""Every outbound HTTP call to a host that is not Vault: discovery, token, revocation and device
requests, webhooks.

An `Egress` holds one session and the allow-list; each process makes one from its settings and
passes it to what calls out. No redirects, bounded time and a bounded answer. A host outside SIDECAR_EGRESS_ALLOW is
refused before any connection. Failures reach callers as one message per kind, so an error text
never tells whether a port is open, closed, speaks TLS or something else; the detail (exception
type, host) goes to the log only. Nothing here logs a URL's path or query, a header or a body.
"""

from __future__ import annotations

import json
import logging
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.structures import CaseInsensitiveDict

from .errors import OAuthPermanent, OAuthTransient

log = logging.getLogger(__name__)

TIMEOUT = 10.0  # seconds for the connection and for each read; the body must also arrive within it
MAX_ANSWER_BYTES = 256 * 1024
NOT_ALLOWED = "the host is not in SIDECAR_EGRESS_ALLOW"
UNREACHABLE = "the server could not be reached"
TOO_LARGE = f"the answer is larger than {MAX_ANSWER_BYTES} bytes"
_CHUNK = 16 * 1024
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class Answer:
    """A server's answer, read in full but never beyond MAX_ANSWER_BYTES. Headers and body may hold
    tokens: kept out of the repr."""

    status: int
    headers: Mapping[str, str] = field(repr=False)
    body: bytes = field(repr=False)

    def json(self) -> Any:
        """The parsed body, or None when it is not JSON."""
        try:
            return json.loads(self.body)
        except (ValueError, RecursionError):  # RecursionError: deeply nested arrays
            return None


class Egress:
    """The way out to hosts that are not Vault: one session, the allow-list (SIDECAR_EGRESS_ALLOW;
    empty: any host)."""

    def __init__(self, allow: tuple[str, ...] = ()) -> None:
        self._allow = tuple(_pattern(p) for p in allow)
        self._session = requests.Session()
        # Answers are small; asking for no compression keeps a server from making us unpack anything.
        self._session.headers["Accept-Encoding"] = "identity"

    def allowed(self, url: str) -> bool:
        """Whether the allow-list lets the sidecar call `url`."""
        return _matches(url, self._allow)

    def request(
        self,
        method: str,
        url: str,
        what: str,
        *,
        data: Any = None,
        auth: tuple[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = TIMEOUT,
    ) -> Answer:
        """Send one request; `what` names it in messages ("refresh", "discovery", "webhook").

        Raises OAuthPermanent (host not allowed, answer too large) or OAuthTransient (any transport
        failure), each with one fixed message per kind. Any HTTP status is an Answer, not an error."""
        try:
            prepared = self._session.prepare_request(
                requests.Request(method, url, data=data, auth=auth, headers=dict(headers or {}))
            )
        except (requests.RequestException, ValueError) as exc:
            log.warning("%s: the URL could not be used (%s)", what, type(exc).__name__)
            raise OAuthTransient(f"{what}: {UNREACHABLE}") from None
        target = prepared.url or ""
        host = _host(target)
        if not self.allowed(target):
            log.warning("%s: a call to %s was refused: the host is not in SIDECAR_EGRESS_ALLOW", what, host)
            raise OAuthPermanent(f"{what}: {NOT_ALLOWED}")
        try:
            # What Session.request does, minus redirects; proxies and CA bundles still come from the environment.
            settings = self._session.merge_environment_settings(target, {}, True, None, None)
            with self._session.send(prepared, timeout=timeout, allow_redirects=False, **settings) as resp:
                body = _read(resp, time.monotonic() + timeout)
                answer = Answer(resp.status_code, CaseInsensitiveDict(resp.headers), body)
        except requests.RequestException as exc:
            log.warning("%s: %s could not be reached (%s)", what, host, type(exc).__name__)
            raise OAuthTransient(f"{what}: {UNREACHABLE}") from None
        except _TooLarge:
            log.warning("%s: the answer from %s was larger than %d bytes; refused", what, host, MAX_ANSWER_BYTES)
            raise OAuthPermanent(f"{what}: {TOO_LARGE}") from None
        return answer


def permits(url: str, allow: tuple[str, ...]) -> bool:
    """Whether `allow` (patterns as in SIDECAR_EGRESS_ALLOW) lets the sidecar call `url`."""
    return _matches(url, tuple(_pattern(p) for p in allow))


def _matches(url: str, patterns: tuple[tuple[str, int | None], ...]) -> bool:
    """The host is taken from the URL as requests will send it, so that no quirk of one URL parser
    can name an allowed host here while another connects elsewhere (`http://a.example\\@b.example/`)."""
    if not patterns:
        return True
    try:
        parts = urlsplit(requests.Request("GET", url).prepare().url or "")
        host, port = parts.hostname, parts.port or _DEFAULT_PORTS.get(parts.scheme)
    except (requests.RequestException, ValueError):
        return False
    if not host:
        return False
    host = host.rstrip(".")  # "example.com." is the same host as "example.com"
    return any(fnmatchcase(host, glob) and want in (None, port) for glob, want in patterns)


class _TooLarge(Exception):
    pass


def _read(resp: requests.Response, deadline: float) -> bytes:
    """At most MAX_ANSWER_BYTES of the body, all of it within the deadline, else _TooLarge or
    Timeout. A declared length over the cap is refused unread; the body is read one receive at a
    time (`read1`), so a server that trickles a byte now and then cannot hold a worker past the
    deadline, and decompressed here within the same cap (we ask for none; a server may send gzip)."""
    declared = resp.headers.get("Content-Length", "")
    if declared.isdecimal() and int(declared) > MAX_ANSWER_BYTES:
        raise _TooLarge
    body = bytearray()
    while chunk := resp.raw.read1(_CHUNK, decode_content=False):
        body += chunk
        if len(body) > MAX_ANSWER_BYTES:
            raise _TooLarge
        if time.monotonic() > deadline:
            raise requests.Timeout("the answer took too long")
    return _decoded(bytes(body), resp.headers.get("Content-Encoding", "").strip().lower())


def _decoded(body: bytes, encoding: str) -> bytes:
    """The body without its gzip or deflate encoding, at most MAX_ANSWER_BYTES of it (a small
    compressed body may unpack to gigabytes). Any other encoding gives an empty, unusable body."""
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "x-gzip", "deflate"):
        return b""
    try:
        inflater = zlib.decompressobj(wbits=47)  # 32 + 15: a gzip or zlib header, whichever it is
        plain = inflater.decompress(body, MAX_ANSWER_BYTES + 1)
    except zlib.error:
        return b""
    if len(plain) > MAX_ANSWER_BYTES or inflater.unconsumed_tail:
        raise _TooLarge
    return plain


def _pattern(raw: str) -> tuple[str, int | None]:
    """`host`, `host:port`, `[v6]` or `[v6]:port` as (lowercase host glob, port or None)."""
    raw = raw.strip().lower()
    if raw.startswith("["):
        host, _, rest = raw[1:].partition("]")
        port = rest.removeprefix(":")
    else:
        host, _, port = raw.partition(":")
    return host, int(port) if port else None


def _host(url: str) -> str:
    """The host and port, for the log: never a path or query, which may carry a secret."""
    try:
        return urlsplit(url).netloc.rpartition("@")[2] or "?"
    except ValueError:
        return "?"
