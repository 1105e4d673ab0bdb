"""Shared pieces for kiln-serve's unit tests: signatures, and a fake connection that records answers."""

from __future__ import annotations

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
