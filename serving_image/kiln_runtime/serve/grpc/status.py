"""gRPC status codes, and the HTTP status each of kiln-serve's errors already carries mapped to one.

The shared code (codecs, Batcher, repository) raises and answers with HTTP statuses; a gRPC stream
turns them into the gRPC code a client expects, so validation is written once. The metrics keep the
HTTP-equivalent code as their `code` label on the `grpc` protocol, one label set for every protocol.
"""

from __future__ import annotations

OK, CANCELLED, UNKNOWN, INVALID_ARGUMENT, DEADLINE_EXCEEDED, NOT_FOUND = 0, 1, 2, 3, 4, 5
FAILED_PRECONDITION, RESOURCE_EXHAUSTED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE = 9, 8, 12, 13, 14

FROM_HTTP = {200: OK, 400: INVALID_ARGUMENT, 404: NOT_FOUND, 405: UNIMPLEMENTED, 409: FAILED_PRECONDITION,
             410: NOT_FOUND, 413: RESOURCE_EXHAUSTED, 415: INVALID_ARGUMENT, 421: INVALID_ARGUMENT,
             500: INTERNAL, 502: UNAVAILABLE, 503: UNAVAILABLE, 504: DEADLINE_EXCEEDED}
# The other way, for the metrics of an error raised as a gRPC code.
TO_HTTP = {OK: 200, INVALID_ARGUMENT: 400, NOT_FOUND: 404, UNIMPLEMENTED: 405, RESOURCE_EXHAUSTED: 413,
           INTERNAL: 500, UNAVAILABLE: 503, DEADLINE_EXCEEDED: 504, FAILED_PRECONDITION: 409}

_MAX_MESSAGE = 2048  # bytes of grpc-message: a header, not a document


def code_of(http_status: int) -> int:
    return FROM_HTTP.get(http_status, UNKNOWN)


def encode_message(message: str) -> bytes:
    """grpc-message's form: UTF-8, then percent-encoding of every byte outside printable ASCII
    and of '%' itself (the gRPC over HTTP/2 spec)."""
    raw = message.encode("utf-8", errors="replace")[:_MAX_MESSAGE]
    if all(0x20 <= b <= 0x7E and b != 0x25 for b in raw):
        return raw
    return b"".join(bytes((b,)) if 0x20 <= b <= 0x7E and b != 0x25 else b"%%%02X" % b for b in raw)
