"""Shared pieces for kiln-serve's unit tests: signatures, a fake connection that records answers, and
an in-memory transport for feeding raw HTTP into a real Connection on an event loop."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from kiln_runtime.serve import signature


def numeric_signature(width: int = 20, integer: tuple[int, ...] = (), nullable: tuple[int, ...] = ()):
    return signature.parse({
        "inputs": [{"name": f"f{i}", "type": "integer" if i in integer else "number",
                    "nullable": i in nullable} for i in range(width)],
        "output": {"type": "label", "classes": ["0", "1"]}})


MIXED = {"inputs": [{"name": "age", "type": "integer"}, {"name": "income", "type": "number", "nullable": True},
                    {"name": "colour", "type": "category"}, {"name": "member", "type": "boolean"}],
         "output": {"type": "label", "classes": ["no", "yes"]}}


class FakeConn:
    """Stands in for http.Connection: records (slot, status, decoded body)."""

    def __init__(self):
        self.answers = []

    def respond(self, slot, status, body, headers=b""):
        self.answers.append((slot, status, body, headers))

    def fail(self, slot, status, message, headers=b""):
        self.answers.append((slot, status, orjson.dumps({"error": message}), headers))


@pytest.fixture
def sig20():
    return numeric_signature()


@pytest.fixture
def loop():
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    yield loop
    loop.close()


class Transport:
    """What asyncio hands a Connection: collects what it writes."""

    def __init__(self):
        self.out = bytearray()
        self.closed = False

    def write(self, data):
        self.out += data

    def writelines(self, chunks):
        for chunk in chunks:
            self.out += chunk

    def close(self):
        self.closed = True

    def pause_reading(self):
        pass

    def resume_reading(self):
        pass


def parse_answers(data: bytes) -> list[tuple[int, dict, bytes]]:
    """Raw HTTP/1.1 answers -> (status, lower-cased headers, body) each."""
    answers = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        headers = dict(line.lower().split(b": ", 1) for line in lines[1:])
        size = int(headers[b"content-length"])
        answers.append((int(lines[0].split()[1]), headers, rest[:size]))
        data = rest[size:]
    return answers


def http_request(method: str, path: str, body: bytes = b"", *headers: str) -> bytes:
    extra = "".join(h + "\r\n" for h in headers)
    return (f"{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-length: {len(body)}\r\n{extra}\r\n").encode() + body
