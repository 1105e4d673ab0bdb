"""The HTTP/2 connection under gRPC: frames split across reads, header blocks and their cache, flow
control both ways, drain, and malformed input (a connection error closes the connection, never the
server). A fake service echoes calls; the frames are fed to a real GrpcConnection on an event loop."""

from __future__ import annotations

import asyncio
import os
import random
import struct

import pytest

from kiln_runtime.serve.grpc import frames as f
from kiln_runtime.serve.grpc import h2, huffman
from kiln_runtime.serve.grpc.hpack import Decoder, integer, literal

from conftest import Transport

PATH = b"/inference.GRPCInferenceService/ModelInfer"


class Metrics:
    def __init__(self):
        self.seen = []

    def request(self, protocol, status, seconds):
        self.seen.append((protocol, status))


class Host:
    """Echoes each call's message, at once or when `release` is called."""

    def __init__(self, hold=False):
        self.max_payload = 1 << 20
        self.protocol = 3
        self.connections = set()
        self.draining = False
        self.metrics = Metrics()
        self.calls = []
        self.hold = hold
        self.held = []
        self.closed = 0

    def handle(self, conn, stream, path, message):
        self.calls.append((stream.sid, path, bytes(message), stream.client_id))
        if self.hold:
            self.held.append((conn, stream, message))
        else:
            conn.reply(stream, b"echo:" + bytes(message))

    def release(self):
        for conn, stream, message in self.held:
            conn.reply(stream, b"echo:" + bytes(message))
        self.held.clear()

    def connection_closed(self):
        self.closed += 1


def request_block(path=PATH, extra=b"", indexing=True) -> bytes:
    """Like a gRPC client's: :method POST, :scheme http, :path, content-type, te (inserted into the
    dynamic table when `indexing`)."""
    lit = (lambda n, v: b"\x40" + integer(len(n), 7) + n + integer(len(v), 7) + v) if indexing else literal
    hv = huffman.encode(path)
    return (b"\x83\x86" + b"\x04" + integer(len(hv), 7, 0x80) + hv
            + lit(b"content-type", b"application/grpc") + lit(b"te", b"trailers") + extra)


def grpc_message(payload: bytes, compressed=False) -> bytes:
    return bytes((1 if compressed else 0,)) + struct.pack(">I", len(payload)) + payload


def parse(data: bytes):
    out, pos = [], 0
    while len(data) - pos >= 9:
        hi, lo, ftype, flags, sid = f.HEAD.unpack_from(data, pos)
        n = (hi << 16) | lo
        out.append((ftype, flags, sid, bytes(data[pos + 9: pos + 9 + n])))
        pos += 9 + n
    assert pos == len(data), "a partial frame was written"
    return out


class Peer:
    def __init__(self, host=None, settings=None, preface=True):
        self.loop = asyncio.new_event_loop()
        self.host = host or Host()
        self.transport = Transport()
        self.conn = h2.GrpcConnection(self.host, self.loop)
        self.conn.connection_made(self.transport)
        self.decoder = Decoder()
        self.read = 0
        if preface:
            self.feed(f.PREFACE + f.settings(settings or {}))

    def feed(self, data: bytes, chunk: int | None = None):
        if chunk:
            for i in range(0, len(data), chunk):
                self.conn.data_received(data[i: i + chunk])
        else:
            self.conn.data_received(data)
        self.pump()

    def pump(self):
        self.loop.run_until_complete(asyncio.sleep(0))

    def frames(self):
        new = parse(bytes(self.transport.out[self.read:]))
        self.read = len(self.transport.out)
        return new

    def call(self, sid: int, payload: bytes, block=None) -> bytes:
        return (f.frame(f.HEADERS, f.END_HEADERS, sid, block or request_block())
                + f.frame(f.DATA, f.END_STREAM, sid, grpc_message(payload)))

    def answers(self):
        """stream id -> {"headers", "data", "trailers"} from what was written since the last look."""
        out = {}
        for ftype, flags, sid, payload in self.frames():
            if ftype == f.HEADERS:
                fields = dict(self.decoder.decode(payload))
                slot = out.setdefault(sid, {"data": b""})
                slot["trailers" if flags & f.END_STREAM else "headers"] = fields
                if flags & f.END_STREAM and b":status" in fields and "headers" not in slot:
                    slot["headers"] = fields  # trailers-only
            elif ftype == f.DATA:
                out.setdefault(sid, {"data": b""})["data"] += payload
        return out

    def close(self):
        self.loop.close()


@pytest.fixture
def peer():
    p = Peer()
    yield p
    p.close()


def test_preface_settings_and_window(peer):
    frames = peer.frames()
    kinds = [(t, fl, sid) for t, fl, sid, _ in frames]
    assert kinds[0] == (f.SETTINGS, 0, 0)
    assert dict(f.parse_settings(frames[0][3]))[f.INITIAL_WINDOW_SIZE] == h2.RECV_STREAM_WINDOW
    assert (f.WINDOW_UPDATE, 0, 0) in kinds
    assert (f.SETTINGS, f.ACK, 0) in kinds  # our acknowledgement of the peer's SETTINGS


@pytest.mark.parametrize("chunk", [None, 1, 7, 100])
def test_a_call_split_anyhow_is_answered(chunk):
    peer = Peer()
    peer.frames()
    peer.feed(peer.call(1, b"hello"), chunk)
    answer = peer.answers()[1]
    assert answer["headers"][b":status"] == b"200"
    assert answer["headers"][b"content-type"] == b"application/grpc"
    assert answer["data"] == grpc_message(b"echo:hello")
    assert answer["trailers"] == {b"grpc-status": b"0"}
    assert peer.host.calls == [(1, PATH, b"hello", None)]
    assert peer.conn.streams == {}
    peer.close()


def test_many_streams_in_one_read_one_write(peer):
    peer.frames()
    data = b"".join(peer.call(sid, b"m%d" % sid) for sid in range(1, 129, 2))
    writes = []
    peer.transport.writelines = lambda chunks: writes.append(b"".join(chunks))
    peer.conn.data_received(data)
    peer.pump()
    assert len(writes) == 1  # 64 answers, one write
    peer.transport.out += writes[0]
    answers = peer.answers()
    assert sorted(answers) == list(range(1, 129, 2))
    assert all(a["data"] == grpc_message(b"echo:m%d" % sid) for sid, a in answers.items())


def test_repeated_header_blocks_hit_the_cache(peer):
    peer.frames()
    peer.feed(peer.call(1, b"a"))  # inserts content-type and te
    indexed_only = request_block()[:-len(request_block()) + 2 + 1 + len(huffman.encode(PATH)) + 1] + b"\xbf\xbe"
    interpret = peer.conn.hpack.interpret
    calls = []
    peer.conn.hpack.interpret = lambda headers: calls.append(headers) or interpret(headers)
    for sid in (3, 5, 7):
        peer.feed(peer.call(sid, b"x", indexed_only))
    assert len(calls) == 1
    assert [c[0] for c in peer.host.calls] == [1, 3, 5, 7]
    assert all(a["trailers"] == {b"grpc-status": b"0"} for a in peer.answers().values())


def test_headers_with_continuation_padding_and_priority(peer):
    peer.frames()
    block = request_block(extra=literal(b"x-request-id", b"abc-1"))
    padded = bytes((3,)) + bytes(5) + block[:10] + b"\0\0\0"
    peer.feed(f.frame(f.HEADERS, f.PADDED | f.PRIORITY_FLAG, 1, padded)
              + f.frame(f.CONTINUATION, 0, 1, block[10:20])
              + f.frame(f.CONTINUATION, f.END_HEADERS, 1, block[20:])
              + f.frame(f.DATA, f.END_STREAM | f.PADDED, 1, b"\x02" + grpc_message(b"p") + b"\0\0"))
    assert peer.host.calls == [(1, PATH, b"p", b"abc-1")]
    assert peer.answers()[1]["trailers"][b"grpc-status"] == b"0"


def test_ping_is_acknowledged(peer):
    peer.frames()
    peer.feed(f.frame(f.PING, 0, 0, b"12345678"))
    assert (f.PING, f.ACK, 0, b"12345678") in peer.frames()


def test_answers_respect_the_peers_windows_and_frame_size():
    peer = Peer(settings={f.INITIAL_WINDOW_SIZE: 10})
    peer.frames()
    peer.feed(peer.call(1, b"0123456789abcdef"))  # the answer's message is 5 + 21 bytes
    frames = peer.frames()
    data = [p for t, _, _, p in frames if t == f.DATA]
    assert [len(d) for d in data] == [10]
    assert not any(t == f.HEADERS and fl & f.END_STREAM for t, fl, _, _ in frames)  # trailers wait
    peer.feed(f.window_update(1, 10))
    assert [len(p) for t, _, _, p in peer.frames() if t == f.DATA] == [10]
    peer.feed(f.settings({f.INITIAL_WINDOW_SIZE: 100}))  # raises the open stream's window by 90
    rest = peer.frames()
    assert [len(p) for t, _, _, p in rest if t == f.DATA] == [6]
    assert rest[-1][0] == f.HEADERS and rest[-1][1] & f.END_STREAM
    assert peer.conn.streams == {}
    peer.close()


def test_connection_window_blocks_every_stream_until_updated():
    peer = Peer(settings={f.INITIAL_WINDOW_SIZE: 1 << 20})
    peer.frames()
    peer.conn.send_window = 30
    peer.feed(peer.call(1, b"x" * 20) + peer.call(3, b"y" * 20))  # two answers of 30 bytes
    got = peer.frames()
    assert sum(len(p) for t, _, _, p in got if t == f.DATA) == 30
    peer.feed(f.window_update(0, 1000))
    answers = peer.answers()
    assert sum(len(a["data"]) for a in answers.values()) == 30
    assert peer.conn.streams == {}
    peer.close()


def test_large_answer_is_split_at_the_peers_max_frame_size():
    host = Host()
    peer = Peer(host, settings={f.INITIAL_WINDOW_SIZE: 1 << 20})
    peer.conn.send_window = 1 << 20
    peer.frames()
    peer.feed(peer.call(1, b"z" * 40000))
    sizes = [len(p) for t, _, _, p in peer.frames() if t == f.DATA]
    assert max(sizes) <= f.DEFAULT_MAX_FRAME and sum(sizes) == 40000 + 5 + 5
    peer.close()


def test_window_updates_are_sent_for_received_data(monkeypatch):
    monkeypatch.setattr(h2, "RECV_STREAM_WINDOW", 1000)
    monkeypatch.setattr(h2, "RECV_CONN_WINDOW", 70000)
    peer = Peer()
    peer.frames()
    size = 600 * 60 - 5
    peer.feed(f.frame(f.HEADERS, f.END_HEADERS, 1, request_block())
              + f.frame(f.DATA, 0, 1, b"\0" + struct.pack(">I", size) + b"a" * 595))
    ups = [(sid, f.u32(p)) for t, _, sid, p in peer.frames() if t == f.WINDOW_UPDATE]
    assert ups == [(1, 600)]  # the stream's half window was used: topped up, in one update
    for _ in range(58):
        peer.feed(f.frame(f.DATA, 0, 1, b"b" * 600))
    ups = [(sid, f.u32(p)) for t, _, sid, p in peer.frames() if t == f.WINDOW_UPDATE]
    assert ups and all(sid == 1 for sid, _ in ups)  # the connection's credit waits: it is all buffered
    peer.feed(f.frame(f.DATA, f.END_STREAM, 1, b"c" * 600))
    ups = [(sid, f.u32(p)) for t, _, sid, p in peer.frames() if t == f.WINDOW_UPDATE]
    assert ups == [(0, 36000)]  # the request ended: the connection's window is given back at once
    assert peer.host.calls[0][2] == b"a" * 595 + b"b" * 600 * 58 + b"c" * 600
    peer.close()


def test_client_reset_drops_the_late_answer():
    host = Host(hold=True)
    peer = Peer(host)
    peer.frames()
    peer.feed(peer.call(1, b"a") + peer.call(3, b"b"))
    peer.feed(f.rst_stream(1, f.CANCEL))
    host.release()
    peer.pump()
    assert sorted(peer.answers()) == [3]
    assert host.metrics.seen == [(3, 200), (3, 200)]  # both counted, as over HTTP
    peer.close()


def test_drain_sends_goaway_answers_in_flight_refuses_new_and_closes():
    host = Host(hold=True)
    peer = Peer(host)
    peer.frames()
    peer.feed(peer.call(1, b"a"))
    peer.conn.drain()
    peer.pump()
    frames = peer.frames()
    assert frames[-1][0] == f.GOAWAY and struct.unpack(">II", frames[-1][3]) == (1, f.NO_ERROR)
    peer.feed(peer.call(3, b"late"))
    assert [(t, sid, f.u32(p)) for t, _, sid, p in peer.frames()] == [(f.RST_STREAM, 3, f.REFUSED_STREAM)]
    assert not peer.transport.closed
    host.release()
    peer.pump()
    assert peer.answers()[1]["trailers"] == {b"grpc-status": b"0"}
    assert peer.transport.closed
    peer.close()


def test_errors_are_trailers_only_with_a_percent_encoded_message(peer):
    peer.frames()
    peer.conn.fail_code(h2.Stream(1, h2.read_head(()), 100, 3), 3, "x")  # not a stream of this connection: ignored
    peer.host.handle = lambda conn, stream, path, message: conn.fail(stream, 400, "inputs[0] (x): 50% bad\né")
    peer.feed(peer.call(1, b"m"))
    answer = peer.answers()[1]
    assert answer["headers"][b":status"] == b"200"
    assert answer["headers"][b"grpc-status"] == b"3"
    assert answer["headers"][b"grpc-message"] == b"inputs[0] (x): 50%25 bad%0A%C3%A9"
    assert answer["data"] == b""


def test_compressed_messages_are_refused(peer):
    peer.frames()
    peer.feed(f.frame(f.HEADERS, f.END_HEADERS, 1, request_block())
              + f.frame(f.DATA, f.END_STREAM, 1, grpc_message(b"gz", compressed=True)))
    assert peer.answers()[1]["headers"][b"grpc-status"] == b"12"
    assert peer.host.calls == []


@pytest.mark.parametrize("body,code", [
    (b"\0\0\0", b"3"),  # shorter than the 5-byte prefix
    (b"\0\0\0\0\x09abc", b"3"),  # the prefix says more than came
    (grpc_message(b"a") + grpc_message(b"b"), b"3"),  # two messages on a unary call
])
def test_bad_grpc_framing_is_invalid_argument(peer, body, code):
    peer.frames()
    peer.feed(f.frame(f.HEADERS, f.END_HEADERS, 1, request_block()) + f.frame(f.DATA, f.END_STREAM, 1, body))
    assert peer.answers()[1]["headers"][b"grpc-status"] == code


def test_wrong_method_or_content_type(peer):
    peer.frames()
    peer.feed(f.frame(f.HEADERS, f.END_HEADERS | f.END_STREAM, 1,
                      b"\x82\x86" + literal(b":path", PATH) + literal(b"content-type", b"application/grpc")))
    peer.feed(f.frame(f.HEADERS, f.END_HEADERS | f.END_STREAM, 3,
                      b"\x83\x86" + literal(b":path", PATH) + literal(b"content-type", b"application/json")))
    answers = peer.answers()
    assert answers[1]["headers"][b"grpc-status"] == answers[3]["headers"][b"grpc-status"] == b"3"
    assert b"POST" in answers[1]["headers"][b"grpc-message"]


def test_message_over_the_limit_is_resource_exhausted_and_the_rest_ignored():
    host = Host()
    host.max_payload = 100
    peer = Peer(host)
    peer.frames()
    peer.feed(f.frame(f.HEADERS, f.END_HEADERS, 1, request_block()) + f.frame(f.DATA, 0, 1, b"\0\0\0\x01\x00" + b"a" * 150))
    frames = peer.frames()
    assert frames[-1][0] == f.RST_STREAM and f.u32(frames[-1][3]) == f.NO_ERROR
    assert dict(peer.decoder.decode(frames[0][3]))[b"grpc-status"] == b"8"
    peer.feed(f.frame(f.DATA, f.END_STREAM, 1, b"a" * 106))  # still in flight: dropped quietly
    assert peer.frames() == [] and host.calls == []
    peer.feed(peer.call(3, b"ok"))
    assert peer.answers()[3]["trailers"] == {b"grpc-status": b"0"}
    peer.close()


def test_too_many_streams_are_refused():
    host = Host(hold=True)
    peer = Peer(host)
    peer.frames()
    peer.feed(b"".join(peer.call(sid, b"x") for sid in range(1, 2 * h2.MAX_STREAMS + 3, 2)))
    refused = [sid for t, _, sid, p in peer.frames() if t == f.RST_STREAM and f.u32(p) == f.REFUSED_STREAM]
    assert refused == [2 * h2.MAX_STREAMS + 1]
    peer.close()


def goaway_code(peer):
    frames = peer.frames()
    assert frames and frames[-1][0] == f.GOAWAY, frames
    assert peer.transport.closed
    return struct.unpack(">II", frames[-1][3][:8])[1]


@pytest.mark.parametrize("data,code", [
    (f.frame(f.DATA, 0, 0, b"x"), f.PROTOCOL_ERROR),
    (f.frame(f.HEADERS, f.END_HEADERS, 2, request_block()), f.PROTOCOL_ERROR),
    (f.frame(f.HEADERS, f.END_HEADERS, 1, b"\x80"), f.COMPRESSION_ERROR),
    (f.frame(f.HEADERS, 0, 1, b"\x83") + f.frame(f.PING, 0, 0, bytes(8)), f.PROTOCOL_ERROR),
    (f.frame(f.CONTINUATION, f.END_HEADERS, 1, b"\x83"), f.PROTOCOL_ERROR),
    (f.HEAD.pack(0x10, 0, f.DATA, 0, 1), f.FRAME_SIZE_ERROR),  # 1 MiB frame announced
    (f.frame(f.PING, 0, 0, b"short"), f.FRAME_SIZE_ERROR),
    (f.frame(f.SETTINGS, 0, 0, b"12345"), f.FRAME_SIZE_ERROR),
    (f.frame(f.SETTINGS, 0, 0, struct.pack(">HI", f.INITIAL_WINDOW_SIZE, 1 << 31)), f.FLOW_CONTROL_ERROR),
    (f.frame(f.SETTINGS, 0, 0, struct.pack(">HI", f.MAX_FRAME_SIZE, 100)), f.PROTOCOL_ERROR),
    (f.window_update(0, 0), f.PROTOCOL_ERROR),
    (f.window_update(0, f.MAX_WINDOW), f.FLOW_CONTROL_ERROR),
    (f.rst_stream(9, 0), f.PROTOCOL_ERROR),
    (f.frame(f.PUSH_PROMISE, f.END_HEADERS, 1, bytes(4)), f.PROTOCOL_ERROR),
    (f.frame(f.DATA, f.END_STREAM, 5, b"x"), f.PROTOCOL_ERROR),  # idle stream
])
def test_malformed_frames_are_connection_errors(data, code):
    peer = Peer()
    peer.frames()
    peer.feed(data)
    assert goaway_code(peer) == code
    peer.close()


def test_a_closed_streams_headers_and_a_bad_preface():
    peer = Peer()
    peer.feed(peer.call(1, b"a"))
    peer.frames()
    peer.feed(f.frame(f.HEADERS, f.END_HEADERS, 1, request_block()))
    assert goaway_code(peer) == f.STREAM_CLOSED
    peer.close()
    peer = Peer(preface=False)
    peer.feed(b"POST /v2/models/m/infer HTTP/1.1\r\n\r\n")
    assert goaway_code(peer) == f.PROTOCOL_ERROR
    peer.close()


def test_random_bytes_never_escape_the_connection(caplog):
    """Whatever arrives is a connection or stream error, never a bug (an INTERNAL_ERROR, logged)."""
    rng = random.Random(7)
    for i in range(300):
        peer = Peer()
        junk = bytearray(os.urandom(rng.randrange(1, 200)))
        if i % 2:  # mostly valid frame headers with random types, flags and payloads
            junk = b"".join(f.frame(rng.randrange(12), rng.randrange(256), rng.randrange(6),
                                    os.urandom(rng.randrange(0, 40))) for _ in range(rng.randrange(1, 6)))
        peer.feed(peer.call(1, b"ok") + bytes(junk), chunk=rng.choice([None, 1, 13]))
        peer.close()
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


def test_client_goaway_closes_after_the_last_answer():
    host = Host(hold=True)
    peer = Peer(host)
    peer.feed(peer.call(1, b"a") + f.goaway(1, f.NO_ERROR))
    assert not peer.transport.closed
    host.release()
    peer.pump()
    assert peer.transport.closed
    peer.close()


def test_client_trailers_end_the_request(peer):
    peer.frames()
    peer.feed(f.frame(f.HEADERS, f.END_HEADERS, 1, request_block()) + f.frame(f.DATA, 0, 1, grpc_message(b"t"))
              + f.frame(f.HEADERS, f.END_HEADERS | f.END_STREAM, 1, literal(b"x-trailer", b"1")))
    assert peer.host.calls == [(1, PATH, b"t", None)]
