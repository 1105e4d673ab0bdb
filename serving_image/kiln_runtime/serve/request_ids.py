"""Request ids: the key that ties an answer to its feedback, its logged payload and its log lines.

A client's own id (the `X-Request-Id` header, or a V2 body's `id`) is kept when it is a sane token,
so ids issued by a gateway or an application survive the hop. Otherwise the server issues
`{token}-{counter in hex}`: the token is 8 hex characters derived from the host name (the pod's
name), the start time, the process id and the worker slot, so ids never repeat across restarts or
workers, and the monitor can tell an id issued by another replica (another token) from an unknown
one. A counter, not uuid4: it costs one integer increment and one format per request.
"""

from __future__ import annotations

import re
from itertools import count

from kiln_runtime.handoff import issuer_token, process_token

__all__ = ["RequestIds", "issuer_token", "sane", "server_token"]

# 1-128 characters that need no quoting in a header, a JSON string, a log line or a file name.
_SANE = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
server_token = process_token


def sane(value) -> bool:
    """Whether a client-sent id (bytes or str) is kept as is."""
    if isinstance(value, str):
        try:
            value = value.encode("ascii")
        except UnicodeEncodeError:
            return False
    return isinstance(value, bytes) and _SANE.fullmatch(value) is not None


class RequestIds:
    def __init__(self, token: str | None = None):
        self.token = token or server_token()
        self._prefix = self.token.encode() + b"-"
        self._next = count(1).__next__

    def issue(self) -> bytes:
        return self._prefix + b"%x" % self._next()

    def choose(self, header: bytes | None, body_id=None) -> bytes:
        """The header's id if sane, else the body's if sane, else a new one."""
        if header is not None and sane(header):
            return header
        if type(body_id) is str and sane(body_id):
            return body_id.encode()
        return self.issue()
