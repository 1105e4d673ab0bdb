"""What both apps (one model: app.py; a model set: multi_app.py) do with a request before and after
their own routes: the path it names, the method a route takes, and an error turned into its answer."""

from __future__ import annotations

import logging
from urllib.parse import unquote_to_bytes

from .errors import ClientError, MethodNotAllowed
from .http import JSON_HEADERS

log = logging.getLogger("kiln.serve")

TEXT_METRICS = b"content-type: text/plain; version=0.0.4; charset=utf-8\r\n"


def request_path(url: bytes) -> bytes:
    """The URL's path: no query string, percent-decoded, no trailing slash."""
    path = url.split(b"?", 1)[0]
    if b"%" in path:
        path = unquote_to_bytes(path)
    if len(path) > 1 and path.endswith(b"/"):
        path = path[:-1]
    return path


def require_post(method: bytes, path: bytes) -> None:
    if method != b"POST":
        raise MethodNotAllowed(f"{path.decode()} takes POST", "POST")


def require_get(method: bytes) -> None:
    if method != b"GET":
        raise MethodNotAllowed(f"this endpoint takes GET, not {method.decode(errors='replace')}")


def fail(conn, slot, exc: Exception, what: str) -> None:
    """Answers `exc`: a client's mistake with its status (405 with Allow), anything else as a 500 whose
    cause is logged, naming `what` was being done."""
    if isinstance(exc, ClientError):
        headers = JSON_HEADERS
        if isinstance(exc, MethodNotAllowed):
            headers += b"allow: " + exc.allow.encode() + b"\r\n"
        conn.fail(slot, exc.status, str(exc), headers)
    else:
        log.error("unexpected error on %s", what, exc_info=exc)
        conn.fail(slot, 500, "internal error")
