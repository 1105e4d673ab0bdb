"""HTTP/1.1 on a raw asyncio protocol with httptools (llhttp): no framework between the socket and
the model, because at tens of thousands of requests per second a framework's per-request objects,
routing and middleware cost more than the model does.

One `Connection` per TCP connection. It parses requests as bytes arrive, hands each complete one to
the app with a response slot, and writes responses in request order (HTTP/1.1 pipelining): a slot
filled early waits for the ones before it. It stops reading while too many requests are pending or
the socket's send buffer is full, so a fast client cannot queue unbounded work.
"""

from __future__ import annotations

import asyncio
from time import perf_counter

import httptools
import orjson

from .errors import PayloadTooLarge

REASONS = {100: "Continue", 200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           409: "Conflict", 410: "Gone", 411: "Length Required", 413: "Payload Too Large",
           415: "Unsupported Media Type", 421: "Misdirected Request", 500: "Internal Server Error",
           502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}
_STATUS_LINES = {code: f"HTTP/1.1 {code} {reason}\r\n".encode() for code, reason in REASONS.items()}
_CLOSE = b"connection: close\r\n"
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
JSON_HEADERS = b"content-type: application/json\r\n"
# A body over the limit is read and thrown away (so the client reads our 413 instead of a reset),
# unless it is this many times over: then the connection is closed at once.
_DISCARD_FACTOR = 8
_MAX_PENDING = 64  # pipelined requests per connection before reading pauses


class Slot:
    """One request's place in its connection's response order."""

    __slots__ = ("data", "keep_alive", "protocol", "t0", "client_id", "rid")

    def __init__(self, keep_alive: bool, protocol: int, t0: float, client_id: bytes | None = None):
        self.data = None
        self.keep_alive = keep_alive
        self.protocol = protocol
        self.t0 = t0
        self.client_id = client_id  # the X-Request-Id header as sent, unchecked
        self.rid = None  # the id the answer carries (inference routes set it)


class Connection(asyncio.Protocol):
    __slots__ = ("app", "transport", "parser", "url", "body", "size", "header_len", "expect",
                 "discard", "pending", "paused", "closing", "t0", "max_payload", "reading", "request_id")

    def __init__(self, app):
        self.app = app
        self.transport = None
        self.parser = httptools.HttpRequestParser(self)
        self.pending: list[Slot] = []
        self.paused = False
        self.closing = False
        self.reading = False  # between a request's first byte and its last
        self.max_payload = app.max_payload
        self._reset()

    def _reset(self):
        self.url = b""
        self.body = []
        self.size = 0
        self.header_len = None
        self.request_id = None
        self.expect = False
        self.discard = False

    # --- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport):
        self.transport = transport
        self.app.connections.add(self)

    def connection_lost(self, exc):
        self.transport = None
        self.pending.clear()
        self.app.connections.discard(self)
        self.app.connection_closed()

    def data_received(self, data):
        if self.closing:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._reply_and_close(400, "protocol upgrades are not supported")
        except httptools.HttpParserError as exc:
            self._reply_and_close(400, f"malformed HTTP request: {exc}")

    def pause_writing(self):
        self._pause()

    def resume_writing(self):
        self._resume()

    # --- httptools callbacks ----------------------------------------------------------------------

    def on_message_begin(self):
        self.t0 = perf_counter()
        self.reading = True

    def on_url(self, url):
        self.url += url

    def on_header(self, name, value):
        n = len(name)
        if n == 14:
            if name.lower() == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    return  # llhttp rejects it itself
                if length > self.max_payload:
                    self.discard = True
                    if length > self.max_payload * _DISCARD_FACTOR:
                        self._too_large(close=True)
        elif n == 6:
            if name.lower() == b"expect" and value.lower() == b"100-continue":
                self.expect = True
        elif n == 12 and name.lower() == b"x-request-id":
            self.request_id = value
        elif n == 31 and name.lower() == b"inference-header-content-length":
            self.header_len = value

    def on_headers_complete(self):
        if self.expect and not self.closing:
            if self.discard:
                # The client waits for our go-ahead: refuse now, and it sends nothing.
                self._too_large(close=True)
            else:
                self.transport.write(_CONTINUE)

    def on_body(self, chunk):
        if self.discard or self.closing:
            if not self.closing:
                self.size += len(chunk)
                if self.size > self.max_payload * _DISCARD_FACTOR:
                    self._too_large(close=True)
            return
        self.size += len(chunk)
        if self.size > self.max_payload:
            self.discard = True
            self.body = []
            return
        self.body.append(chunk)

    def on_message_complete(self):
        self.reading = False
        if self.closing:
            return
        parser = self.parser
        slot = Slot(parser.should_keep_alive(), 2, self.t0, self.request_id)
        self.pending.append(slot)
        if len(self.pending) > _MAX_PENDING:
            self._pause()
        if self.discard:
            self._reset()
            self.fail(slot, PayloadTooLarge.status,
                      f"request body is over the limit of {self.max_payload} bytes (KILN_MAX_PAYLOAD_BYTES)")
            return
        body = self.body
        body = body[0] if len(body) == 1 else b"".join(body)
        url, header_len = self.url, self.header_len
        self._reset()
        if self.app.draining:
            self._pause()  # read no request after this one: it is the last this connection gets
        self.app.handle(self, slot, parser.get_method(), url, body, header_len)

    # --- answering ------------------------------------------------------------------------------

    def respond(self, slot: Slot, status: int, body: bytes, headers: bytes = JSON_HEADERS) -> None:
        app = self.app
        app.metrics.request(slot.protocol, status, perf_counter() - slot.t0)
        if self.transport is None:
            return
        # Draining: answer every request already read, closing after the last of them.
        keep = slot.keep_alive and not (app.draining and self.pending and self.pending[-1] is slot)
        rid = slot.rid
        slot.data = b"".join((_STATUS_LINES.get(status) or f"HTTP/1.1 {status} Error\r\n".encode(),
                              headers, b"x-request-id: " + rid + b"\r\n" if rid is not None else b"",
                              b"content-length: ", str(len(body)).encode(), b"\r\n",
                              b"\r\n" if keep else _CLOSE + b"\r\n", body))
        slot.keep_alive = keep
        pending = self.pending
        if not pending or pending[0] is not slot:
            return  # an earlier request is still being answered; its turn writes this one too
        transport = self.transport
        while pending and pending[0].data is not None:
            done = pending.pop(0)
            transport.write(done.data)
            if not done.keep_alive:
                self.closing = True
                pending.clear()
                transport.close()
                return
        if self.paused and len(pending) < _MAX_PENDING // 4 and not app.draining:
            self._resume()

    def fail(self, slot: Slot, status: int, message: str, headers: bytes = JSON_HEADERS) -> None:
        self.respond(slot, status, orjson.dumps({"error": message}), headers)

    def idle(self) -> bool:
        return not self.pending and not self.reading

    def drain(self) -> None:
        """Shutdown: close now if idle, else stop reading and close after the answers owed."""
        if not self.reading:
            self._pause()
        self.close_if_idle()

    def close_if_idle(self) -> None:
        if not self.pending and not self.reading and self.transport is not None:
            self.closing = True
            self.transport.close()

    def _too_large(self, close: bool):
        slot = Slot(False, 2, self.t0)
        self.pending.append(slot)
        self.fail(slot, PayloadTooLarge.status,
                  f"request body is over the limit of {self.max_payload} bytes (KILN_MAX_PAYLOAD_BYTES)")
        self.closing = True

    def _reply_and_close(self, status: int, message: str):
        slot = Slot(False, 2, perf_counter())
        self.pending.append(slot)
        self.fail(slot, status, message)
        self.closing = True

    def _pause(self):
        if not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def _resume(self):
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
