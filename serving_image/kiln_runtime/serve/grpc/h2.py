"""One HTTP/2 connection carrying unary gRPC calls (RFC 9113; gRPC over HTTP/2), as an asyncio Protocol.

Receiving: frames are parsed as bytes arrive (a frame split across reads waits in `buf`); a stream's
header block is decoded through the HPACK cache and read once into a `Head`, also cached per block,
so a repeated call's headers cost two dict look-ups; its DATA is gathered until END_STREAM, then the
one gRPC message (1-byte compressed flag, 4-byte length) goes to the service. Flow control: we
advertise large windows at the start (SETTINGS_INITIAL_WINDOW_SIZE, a connection WINDOW_UPDATE)
and top them up with one WINDOW_UPDATE per half window consumed, not per DATA frame.

Sending: an answer is three frames (HEADERS, DATA, trailers) whose header blocks are constant bytes.
Frames are gathered and written once per pass of the event loop (`writelines`), so a batch of 64
answers costs one system call rather than 64. The peer's windows and MAX_FRAME_SIZE are respected:
DATA that does not fit waits, with its trailers, for the peer's WINDOW_UPDATE.

The `Stream` doubles as the batching slot (t0, protocol, rid), so the Batcher answers a gRPC call
through `respond`/`fail` exactly as it answers an HTTP request.

Errors: a malformed frame or header block is a connection error (GOAWAY with its code, then close);
a bad call is a gRPC status on its stream. Nothing a peer sends may raise out of data_received.
"""

from __future__ import annotations

import asyncio
import logging
from time import perf_counter

from . import frames as f
from . import status as st
from .frames import H2Error
from .hpack import Decoder, HpackError, indexed, literal

log = logging.getLogger("kiln.serve")

RECV_STREAM_WINDOW = 4 << 20  # what each stream may send before we acknowledge it
RECV_CONN_WINDOW = 64 << 20
MAX_RECV_FRAME = 256 << 10
MAX_STREAMS = 256
MAX_HEADER_LIST = 65536

_HEAD = f.HEAD
_unpack_head = _HEAD.unpack_from
_pack_head = _HEAD.pack
_RESPONSE_BLOCK = indexed(8) + literal(b"content-type", b"application/grpc")  # :status 200
_OK_TRAILERS_BLOCK = literal(b"grpc-status", b"0")
# The two constant frames of every answer, but for their stream id: length, type and flags.
_RESPONSE_HEADERS_5 = f.frame(f.HEADERS, f.END_HEADERS, 0, _RESPONSE_BLOCK)[:5]
_OK_TRAILERS_5 = f.frame(f.HEADERS, f.END_HEADERS | f.END_STREAM, 0, _OK_TRAILERS_BLOCK)[:5]
_EMPTY = b""


class Head:
    """What a call's request headers say, read once per distinct header block."""

    __slots__ = ("path", "error", "compressed_ok", "request_id")

    def __init__(self, path: bytes, error: str | None, compressed_ok: bool, request_id: bytes | None):
        self.path, self.error = path, error
        self.compressed_ok = compressed_ok  # grpc-encoding is not identity: a compressed message may come
        self.request_id = request_id


def read_head(headers: tuple) -> Head:
    path, method, ctype, encoding, rid = b"", None, None, None, None
    for name, value in headers:
        if name == b":path":
            path = value
        elif name == b":method":
            method = value
        elif name == b"content-type":
            ctype = value
        elif name == b"grpc-encoding":
            encoding = value
        elif name == b"x-request-id":
            rid = value
    error = None
    if method != b"POST":
        error = f"gRPC calls are POST requests, not {(method or b'none').decode(errors='replace')}"
    elif ctype is None or not (ctype == b"application/grpc" or ctype.startswith(b"application/grpc+")
                               or ctype.startswith(b"application/grpc;")):
        error = "content-type must be application/grpc"
    return Head(path, error, encoding not in (None, b"identity"), rid)


class Stream:
    """One call: its request as it arrives, then its place in the Batcher (the slot)."""

    __slots__ = ("sid", "head", "body", "size", "recv_window", "send_window", "pending", "trailers",
                 "t0", "protocol", "rid", "client_id", "ended", "answered")

    def __init__(self, sid: int, head: Head, send_window: int, protocol: int):
        self.sid, self.head = sid, head
        self.body: list[bytes] = []
        self.size = 0
        self.recv_window = RECV_STREAM_WINDOW
        self.send_window = send_window
        self.pending = None  # DATA waiting for a window (a memoryview)
        self.trailers = None  # the trailers frame sent after `pending`
        self.t0 = perf_counter()
        self.protocol = protocol  # the metrics' protocol (the service adds the model's base once known)
        self.rid = None
        self.client_id = head.request_id
        self.ended = False  # the client's END_STREAM arrived
        self.answered = False


class GrpcConnection(asyncio.Protocol):
    """`host` is the service (service.GrpcService): handle(conn, stream, path, message), connections,
    draining, metrics, protocol (the metrics' number for gRPC), max_payload, connection_closed()."""

    def __init__(self, host, loop=None):
        self.host = host
        self.loop = loop or asyncio.get_event_loop()
        self.transport = None
        self.buf = _EMPTY
        self.preface = False
        self.closed = False
        self.streams: dict[int, Stream] = {}
        self.last_sid = 0
        self.hpack = Decoder(4096, MAX_HEADER_LIST, read_head)
        self.continuing = None  # (sid, flags, [fragments], size) while CONTINUATION frames are owed
        self.send_window = f.DEFAULT_WINDOW
        self.peer_initial_window = f.DEFAULT_WINDOW
        self.peer_max_frame = f.DEFAULT_MAX_FRAME
        self.recv_window = RECV_CONN_WINDOW
        self.unacked = 0  # connection-level bytes received and not yet acknowledged
        self.buffered = 0  # bytes held in streams whose request has not ended
        self.blocked: dict[int, Stream] = {}  # streams with DATA waiting for a window
        self.out: list[bytes] = []
        self.flush_scheduled = False
        self.goaway_sent = False
        self.close_when_idle = False
        self.paused = False
        self.max_payload = host.max_payload + 5

    # --- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport):
        self.transport = transport
        self.host.connections.add(self)
        self._write(f.settings({f.MAX_CONCURRENT_STREAMS: MAX_STREAMS, f.INITIAL_WINDOW_SIZE: RECV_STREAM_WINDOW,
                                f.MAX_FRAME_SIZE: MAX_RECV_FRAME, f.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST,
                                f.ENABLE_PUSH: 0}))
        self.recv_window = RECV_CONN_WINDOW
        if RECV_CONN_WINDOW > f.DEFAULT_WINDOW:  # the connection's window is raised by an update only
            self._write(f.window_update(0, RECV_CONN_WINDOW - f.DEFAULT_WINDOW))
        if self.host.draining:
            self.drain()

    def connection_lost(self, exc):
        self.transport = None
        self.closed = True
        self.streams.clear()
        self.blocked.clear()
        self.out.clear()
        self.host.connections.discard(self)
        self.host.connection_closed()

    def pause_writing(self):
        if not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def resume_writing(self):
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()

    def data_received(self, data):
        if self.closed:
            return
        buf = self.buf + data if self.buf else data
        try:
            if not self.preface:
                if len(buf) < 24:
                    if not f.PREFACE.startswith(buf):
                        raise H2Error(f.PROTOCOL_ERROR, "not an HTTP/2 connection preface (gRPC needs HTTP/2)")
                    self.buf = buf
                    return
                if buf[:24] != f.PREFACE:
                    raise H2Error(f.PROTOCOL_ERROR, "not an HTTP/2 connection preface (gRPC needs HTTP/2)")
                self.preface = True
                buf = buf[24:]
            pos = self._frames(buf)
            self.buf = buf[pos:] if pos < len(buf) else _EMPTY
        except H2Error as exc:
            self._connection_error(exc.code, str(exc))
        except Exception:  # a bug: the peer gets INTERNAL_ERROR, the server goes on
            log.exception("gRPC connection failed")
            self._connection_error(f.INTERNAL_ERROR, "internal error")

    # --- frames in ------------------------------------------------------------------------------

    def _frames(self, buf: bytes) -> int:
        pos, n = 0, len(buf)
        while n - pos >= 9:
            hi, lo, ftype, flags, sid = _unpack_head(buf, pos)
            length = (hi << 16) | lo
            if length > MAX_RECV_FRAME:
                raise H2Error(f.FRAME_SIZE_ERROR, f"frame of {length} bytes exceeds SETTINGS_MAX_FRAME_SIZE")
            end = pos + 9 + length
            if end > n:
                break
            payload = buf[pos + 9:end]
            pos = end
            sid &= 0x7FFFFFFF
            if self.continuing is not None and ftype != f.CONTINUATION:
                raise H2Error(f.PROTOCOL_ERROR, "a header block was interrupted by another frame")
            if ftype == f.DATA:
                self._data(sid, flags, payload)
            elif ftype == f.HEADERS:
                self._headers(sid, flags, payload)
            elif ftype == f.CONTINUATION:
                self._continuation(sid, flags, payload)
            elif ftype == f.WINDOW_UPDATE:
                self._window_update(sid, payload)
            elif ftype == f.SETTINGS:
                self._settings(sid, flags, payload)
            elif ftype == f.PING:
                if sid != 0:
                    raise H2Error(f.PROTOCOL_ERROR, "PING on a stream")
                if length != 8:
                    raise H2Error(f.FRAME_SIZE_ERROR, "PING payload is not 8 bytes")
                if not flags & f.ACK:
                    self._write(f.frame(f.PING, f.ACK, 0, payload))
            elif ftype == f.RST_STREAM:
                self._rst_stream(sid, payload)
            elif ftype == f.GOAWAY:
                if sid != 0:
                    raise H2Error(f.PROTOCOL_ERROR, "GOAWAY on a stream")
                self.close_when_idle = True  # the peer starts no new stream; answer what it sent
                self._close_if_done()
            elif ftype == f.PRIORITY:
                if sid == 0:
                    raise H2Error(f.PROTOCOL_ERROR, "PRIORITY on stream 0")
                if length != 5:
                    raise H2Error(f.FRAME_SIZE_ERROR, "PRIORITY payload is not 5 bytes")
            elif ftype == f.PUSH_PROMISE:
                raise H2Error(f.PROTOCOL_ERROR, "a client cannot push")
            # Unknown frame types are ignored (RFC 9113 4.1).
            if self.closed:
                break
        return pos

    def _headers(self, sid: int, flags: int, payload: bytes) -> None:
        if sid == 0 or not sid & 1:
            raise H2Error(f.PROTOCOL_ERROR, f"HEADERS on stream {sid}: client streams are odd")
        if flags & f.PADDED:
            payload = _unpad(payload)
        if flags & f.PRIORITY_FLAG:
            if len(payload) < 5:
                raise H2Error(f.FRAME_SIZE_ERROR, "HEADERS too short for its priority fields")
            payload = payload[5:]
        if not flags & f.END_HEADERS:
            self.continuing = (sid, flags, [payload], len(payload))
            return
        self._header_block(sid, flags, payload)

    def _continuation(self, sid: int, flags: int, payload: bytes) -> None:
        cont = self.continuing
        if cont is None or cont[0] != sid:
            raise H2Error(f.PROTOCOL_ERROR, "CONTINUATION without a header block in progress on its stream")
        size = cont[3] + len(payload)
        if size > 2 * MAX_HEADER_LIST:
            raise H2Error(f.ENHANCE_YOUR_CALM, "header block too large")
        cont[2].append(payload)
        if flags & f.END_HEADERS:
            self.continuing = None
            self._header_block(sid, cont[1], b"".join(cont[2]))
        else:
            self.continuing = (sid, cont[1], cont[2], size)

    def _header_block(self, sid: int, flags: int, block: bytes) -> None:
        try:
            head = self.hpack.decode(block)  # always decoded: the table must follow the peer's
        except HpackError as exc:
            raise H2Error(f.COMPRESSION_ERROR, f"header block: {exc}") from None
        stream = self.streams.get(sid)
        if stream is not None:  # trailers from the client: they end its request
            if stream.ended or not flags & f.END_STREAM:
                self._reset(stream, f.PROTOCOL_ERROR)
                return
            self._end_request(stream)
            return
        if sid <= self.last_sid:
            raise H2Error(f.STREAM_CLOSED, f"HEADERS on closed stream {sid}")
        self.last_sid = sid
        if self.goaway_sent or self.close_when_idle:
            self._write(f.rst_stream(sid, f.REFUSED_STREAM))
            return
        if len(self.streams) >= MAX_STREAMS:
            self._write(f.rst_stream(sid, f.REFUSED_STREAM))
            return
        stream = Stream(sid, head, self.peer_initial_window, self.host.protocol)
        self.streams[sid] = stream
        if flags & f.END_STREAM:
            self._end_request(stream)

    def _data(self, sid: int, flags: int, payload: bytes) -> None:
        if sid == 0:
            raise H2Error(f.PROTOCOL_ERROR, "DATA on stream 0")
        length = len(payload)
        self.recv_window -= length
        if self.recv_window < 0:
            raise H2Error(f.FLOW_CONTROL_ERROR, "DATA beyond the connection's flow-control window")
        self.unacked += length
        stream = self.streams.get(sid)
        if stream is None or stream.ended:
            if sid > self.last_sid:
                raise H2Error(f.PROTOCOL_ERROR, f"DATA on idle stream {sid}")
            self._ack_connection()  # a stream we reset may still be sending: ignore it, but credit it
            return
        stream.recv_window -= length
        if stream.recv_window < 0:
            self._reset(stream, f.FLOW_CONTROL_ERROR)
            self._ack_connection()
            return
        if flags & f.PADDED:
            payload = _unpad(payload)
        if stream.answered:  # refused early (too large): the rest is read and dropped
            pass
        elif stream.size + len(payload) > self.max_payload:
            self.buffered -= stream.size
            stream.body = []
            stream.size = self.max_payload + 1
            self.fail(stream, 413, f"request message is over the limit of {self.max_payload - 5} bytes "
                                   "(KILN_MAX_PAYLOAD_BYTES)")
        elif payload:
            stream.body.append(payload)
            stream.size += len(payload)
            self.buffered += len(payload)
        if flags & f.END_STREAM:
            self._end_request(stream)
        elif not stream.answered and stream.recv_window <= RECV_STREAM_WINDOW // 2:
            self._write(f.window_update(sid, RECV_STREAM_WINDOW - stream.recv_window))
            stream.recv_window = RECV_STREAM_WINDOW
        self._ack_connection()

    def _ack_connection(self) -> None:
        # Credit is given back once half the window is used, unless most of it is held in requests
        # still arriving: then the peer waits until they end, which bounds what a connection buffers.
        if self.unacked >= RECV_CONN_WINDOW // 2 and self.buffered < RECV_CONN_WINDOW // 2:
            self._write(f.window_update(0, self.unacked))
            self.recv_window += self.unacked
            self.unacked = 0

    def _end_request(self, stream: Stream) -> None:
        stream.ended = True
        if stream.answered:
            self._finish(stream)
            return
        body = stream.body
        self.buffered -= stream.size
        stream.body = None
        message = body[0] if len(body) == 1 else b"".join(body)
        head = stream.head
        if head.error is not None:
            self.fail(stream, 400, head.error)
            return
        if len(message) < 5:
            self.fail(stream, 400, "the request has no gRPC message (5-byte prefix and a message)")
            return
        size = int.from_bytes(message[1:5], "big")
        if size != len(message) - 5:
            self.fail(stream, 400, f"the request's gRPC framing says {size} bytes, {len(message) - 5} "
                                   "followed (a unary call sends exactly one message)")
            return
        if message[0]:
            self.fail_code(stream, st.UNIMPLEMENTED, "compressed messages are not supported: send them "
                                                     "uncompressed (grpc-encoding identity)")
            return
        self.host.handle(self, stream, head.path, message[5:])

    def _window_update(self, sid: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise H2Error(f.FRAME_SIZE_ERROR, "WINDOW_UPDATE payload is not 4 bytes")
        inc = f.u32(payload) & 0x7FFFFFFF
        if sid == 0:
            if inc == 0:
                raise H2Error(f.PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            self.send_window += inc
            if self.send_window > f.MAX_WINDOW:
                raise H2Error(f.FLOW_CONTROL_ERROR, "connection window above 2^31-1")
            if self.blocked:
                for stream in list(self.blocked.values()):
                    self._push(stream)
            return
        stream = self.streams.get(sid)
        if stream is None:
            if sid > self.last_sid:
                raise H2Error(f.PROTOCOL_ERROR, f"WINDOW_UPDATE on idle stream {sid}")
            return
        if inc == 0:
            self._reset(stream, f.PROTOCOL_ERROR)
            return
        stream.send_window += inc
        if stream.send_window > f.MAX_WINDOW:
            self._reset(stream, f.FLOW_CONTROL_ERROR)
            return
        if stream.pending is not None:
            self._push(stream)

    def _settings(self, sid: int, flags: int, payload: bytes) -> None:
        if sid != 0:
            raise H2Error(f.PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & f.ACK:
            if payload:
                raise H2Error(f.FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            return
        for key, value in f.parse_settings(payload):
            if key == f.INITIAL_WINDOW_SIZE:
                if value > f.MAX_WINDOW:
                    raise H2Error(f.FLOW_CONTROL_ERROR, "SETTINGS_INITIAL_WINDOW_SIZE above 2^31-1")
                delta = value - self.peer_initial_window
                self.peer_initial_window = value
                for stream in self.streams.values():
                    stream.send_window += delta
            elif key == f.MAX_FRAME_SIZE:
                if not f.DEFAULT_MAX_FRAME <= value <= (1 << 24) - 1:
                    raise H2Error(f.PROTOCOL_ERROR, "SETTINGS_MAX_FRAME_SIZE out of range")
                self.peer_max_frame = value
            elif key == f.ENABLE_PUSH and value > 1:
                raise H2Error(f.PROTOCOL_ERROR, "SETTINGS_ENABLE_PUSH is not 0 or 1")
            # HEADER_TABLE_SIZE: our blocks never use the dynamic table. The rest does not concern a
            # server that never pushes and answers small messages.
        self._write(f.SETTINGS_ACK)
        for stream in list(self.blocked.values()):
            self._push(stream)

    def _rst_stream(self, sid: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise H2Error(f.FRAME_SIZE_ERROR, "RST_STREAM payload is not 4 bytes")
        if sid == 0 or sid > self.last_sid:
            raise H2Error(f.PROTOCOL_ERROR, f"RST_STREAM on idle stream {sid}")
        stream = self.streams.pop(sid, None)
        if stream is not None:  # cancelled: an answer still to come is dropped (respond checks)
            if stream.body:
                self.buffered -= stream.size
            stream.body = None
            stream.ended = stream.answered = True
            self.blocked.pop(sid, None)
            self._close_if_done()

    # --- answers (the Batcher's and the service's side) ---------------------------------------------

    def respond(self, stream: Stream, status: int, body: bytes, headers=None) -> None:
        """A successful call's response message (serialized); `status` is 200 (kept for the slot
        interface the Batcher shares with HTTP)."""
        self.host.metrics.request(stream.protocol, status, perf_counter() - stream.t0)
        if stream.answered or self.streams.get(stream.sid) is not stream:
            return  # reset by the client, or the connection is gone
        stream.answered = True
        sid = stream.sid
        n = len(body) + 5
        prefix = b"\x00" + (n - 5).to_bytes(4, "big")
        sid4 = sid.to_bytes(4, "big")
        head = _RESPONSE_HEADERS_5 + sid4 + _RESPONSE_BLOCK
        trailers = _OK_TRAILERS_5 + sid4 + _OK_TRAILERS_BLOCK
        if n <= stream.send_window and n <= self.send_window and n <= self.peer_max_frame:
            stream.send_window -= n
            self.send_window -= n
            self._write(b"".join((head, _pack_head(n >> 16, n & 0xFFFF, f.DATA, 0, sid), prefix, body, trailers)))
            self._finish(stream)
            return
        self._write(head)
        stream.pending = memoryview(prefix + body)
        stream.trailers = trailers
        self._push(stream)

    def fail(self, stream: Stream, status: int, message: str, headers=None) -> None:
        """An error answer from shared code, as an HTTP status: mapped to its gRPC code."""
        self._trailers_only(stream, status, st.code_of(status), message)

    def fail_code(self, stream: Stream, code: int, message: str) -> None:
        self._trailers_only(stream, st.TO_HTTP.get(code, 500), code, message)

    def reply(self, stream: Stream, message: bytes) -> None:
        """A non-batched call's answer (health, metadata)."""
        self.respond(stream, 200, message)

    def _trailers_only(self, stream: Stream, http_status: int, code: int, message: str) -> None:
        self.host.metrics.request(stream.protocol, http_status, perf_counter() - stream.t0)
        if stream.answered or self.streams.get(stream.sid) is not stream:
            return
        stream.answered = True
        block = b"".join((_RESPONSE_BLOCK, literal(b"grpc-status", str(code).encode()),
                          literal(b"grpc-message", st.encode_message(message))))
        self._write(f.frame(f.HEADERS, f.END_HEADERS | f.END_STREAM, stream.sid, block))
        if not stream.ended:
            # The client is still sending (a message over the limit): tell it to stop (RFC 9113 8.1).
            self._write(f.rst_stream(stream.sid, f.NO_ERROR))
            self.streams.pop(stream.sid, None)
            self._close_if_done()
            return
        self._finish(stream)

    def _push(self, stream: Stream) -> None:
        """Sends as much of a stream's waiting DATA as the windows allow, then its trailers."""
        data, sid = stream.pending, stream.sid
        while data:
            chunk = min(len(data), stream.send_window, self.send_window, self.peer_max_frame)
            if chunk <= 0:
                self.blocked[sid] = stream
                stream.pending = data
                return
            self._write(f.header(f.DATA, 0, sid, chunk) + bytes(data[:chunk]))
            stream.send_window -= chunk
            self.send_window -= chunk
            data = data[chunk:]
        stream.pending = None
        self.blocked.pop(sid, None)
        self._write(stream.trailers)
        self._finish(stream)

    def _finish(self, stream: Stream) -> None:
        if stream.ended:
            self.streams.pop(stream.sid, None)
            self._close_if_done()
        # else: answered before the request ended (never, for a unary call the service reads whole)

    def _reset(self, stream: Stream, code: int) -> None:
        self._write(f.rst_stream(stream.sid, code))
        if stream.body:
            self.buffered -= stream.size
        stream.body = None
        stream.answered = stream.ended = True
        self.streams.pop(stream.sid, None)
        self.blocked.pop(stream.sid, None)
        self._close_if_done()

    # --- writing and closing --------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        self.out.append(data)
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self.flush_scheduled = False
        out, self.out = self.out, []
        transport = self.transport
        if transport is None or not out:
            return
        transport.writelines(out)
        if self.closed:
            transport.close()

    def _connection_error(self, code: int, message: str) -> None:
        log.info("gRPC connection error %d: %s", code, message)
        self._write(f.goaway(self.last_sid, code, message.encode(errors="replace")))
        self._close()

    def _close(self) -> None:
        self.closed = True
        self.streams.clear()
        self.blocked.clear()
        if not self.flush_scheduled and self.transport is not None:
            self.transport.close()

    def _close_if_done(self) -> None:
        if (self.goaway_sent or self.close_when_idle) and not self.streams and not self.closed:
            self._close()

    def idle(self) -> bool:
        return not self.streams

    def drain(self) -> None:
        """Shutdown: GOAWAY (no new streams past the last one seen), answer what was received, close."""
        if self.closed or self.transport is None:
            return
        if not self.goaway_sent:
            self.goaway_sent = True
            self._write(f.goaway(self.last_sid, f.NO_ERROR))
        self._close_if_done()


def _unpad(payload: bytes) -> bytes:
    if not payload:
        raise H2Error(f.PROTOCOL_ERROR, "PADDED frame without a pad length")
    pad = payload[0]
    if pad >= len(payload):
        raise H2Error(f.PROTOCOL_ERROR, "padding longer than the frame")
    return payload[1:len(payload) - pad]
