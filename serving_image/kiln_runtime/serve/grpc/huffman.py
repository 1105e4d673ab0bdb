"""HPACK's Huffman code (RFC 7541 appendix B), for the header strings gRPC clients compress.

The code is canonical: codes of one length are consecutive and ordered by symbol, and each length's
first code follows the previous length's last. So the table below is the RFC's code lengths alone,
one per symbol 0-255 then EOS (256); the codes themselves are derived (`CODES`), which a unit test
checks against the RFC's examples.

Decoding walks the code's binary tree four bits at a time through a transition table built at
import (256 internal nodes x 16 nibbles): two list look-ups per input byte instead of eight branch
steps. Header blocks repeat on a connection and are cached decoded (hpack.py), so this runs mostly
on a connection's first requests.
"""

from __future__ import annotations

# RFC 7541 appendix B, the "len in bits" column, symbols 0..256 (256 = EOS).
LENGTHS = (
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28,
    28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28,
    6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6,
    5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10,
    13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6,
    15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5,
    6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28,
    20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23,
    24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24,
    22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23,
    21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23,
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25,
    19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27,
    20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23,
    26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26,
    30,
)
EOS = 256


class HuffmanError(ValueError):
    """A string that is not a valid Huffman encoding (EOS inside, or bad padding)."""


def _canonical(lengths) -> list[int]:
    order = sorted(range(len(lengths)), key=lambda s: (lengths[s], s))
    codes = [0] * len(lengths)
    code, prev = 0, lengths[order[0]]
    for i, sym in enumerate(order):
        if i:
            code = (code + 1) << (lengths[sym] - prev)
        prev = lengths[sym]
        codes[sym] = code
    return codes


CODES = _canonical(LENGTHS)


def _build():
    """The tree as child arrays, then the nibble transition table.

    Internal nodes are numbered from 0 (the root); a child entry >= 0 is a node, < 0 is the leaf
    of symbol -1 - child."""
    children = [[None, None]]
    for sym, (code, length) in enumerate(zip(CODES, LENGTHS)):
        node = 0
        for i in range(length - 1, -1, -1):
            bit = (code >> i) & 1
            if i == 0:
                children[node][bit] = ~sym
            else:
                nxt = children[node][bit]
                if nxt is None:
                    children.append([None, None])
                    nxt = len(children) - 1
                    children[node][bit] = nxt
                node = nxt
    count = len(children)
    # Per node: bits since the last symbol, and whether they are all ones (a prefix of EOS: the only
    # padding allowed at the end of a string).
    depth, ones = [0] * count, [True] * count
    stack = [0]
    while stack:
        node = stack.pop()
        for bit in (0, 1):
            child = children[node][bit]
            if child is not None and child >= 0:
                depth[child] = depth[node] + 1
                ones[child] = ones[node] and bit == 1
                stack.append(child)
    table = []
    for node in range(count):
        for nibble in range(16):
            state, emit, bad = node, -1, False
            for i in (3, 2, 1, 0):
                child = children[state][(nibble >> i) & 1]
                if child >= 0:
                    state = child
                    continue
                sym = ~child
                if sym == EOS:
                    bad = True
                    break
                emit = sym  # codes are at least 5 bits: one symbol per nibble at most
                state = 0
            table.append(None if bad else (state, emit))
    accepting = [node == 0 or (ones[node] and depth[node] < 8) for node in range(count)]
    return table, accepting


_TABLE, _ACCEPTING = _build()


def decode(data: bytes) -> bytes:
    table, state, out = _TABLE, 0, bytearray()
    append = out.append
    for byte in data:
        step = table[(state << 4) | (byte >> 4)]
        if step is None:
            raise HuffmanError("EOS inside a Huffman-coded string")
        state, emit = step
        if emit >= 0:
            append(emit)
        step = table[(state << 4) | (byte & 15)]
        if step is None:
            raise HuffmanError("EOS inside a Huffman-coded string")
        state, emit = step
        if emit >= 0:
            append(emit)
    if not _ACCEPTING[state]:
        raise HuffmanError("invalid padding at the end of a Huffman-coded string")
    return bytes(out)


def encode(data: bytes) -> bytes:
    """Used by tests and tools only: the server never Huffman-codes what it sends."""
    acc, bits = 0, 0
    for byte in data:
        acc = (acc << LENGTHS[byte]) | CODES[byte]
        bits += LENGTHS[byte]
    pad = -bits % 8
    acc = (acc << pad) | ((1 << pad) - 1)
    return (acc).to_bytes((bits + pad) // 8, "big") if bits else b""
