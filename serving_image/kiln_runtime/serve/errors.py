"""The error hierarchy: one exception type per HTTP status, mapped once in the protocol layer.

Codecs and validation raise `ClientError` subclasses whose message names the problem (the field, the
feature, the expected type); anything else reaching the protocol layer is a server fault (500). The
fuzz tests hold the line between the two: no client input may produce a 5xx.
"""

from __future__ import annotations


class ClientError(Exception):
    status = 400


class BadRequest(ClientError):
    status = 400


class NotFound(ClientError):
    status = 404


class MethodNotAllowed(ClientError):
    status = 405

    def __init__(self, message: str, allow: str = "GET"):
        super().__init__(message)
        self.allow = allow


class PayloadTooLarge(ClientError):
    status = 413


class UnsupportedMediaType(ClientError):
    status = 415


class Unavailable(Exception):
    """Not ready (draining on shutdown): 503, which clients and load balancers retry elsewhere."""

    status = 503


class LoadError(Exception):
    """The model could not be loaded or verified; kiln-serve logs the message and exits non-zero."""
