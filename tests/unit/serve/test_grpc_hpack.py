"""HPACK decoding against RFC 7541 appendix C (every example, with and without Huffman coding and
with evictions), the Huffman code against appendix B's examples, and the block cache."""

from __future__ import annotations

import os

import pytest

from kiln_runtime.serve.grpc import huffman
from kiln_runtime.serve.grpc.hpack import STATIC, Decoder, HpackError, indexed, integer, literal


def h(text: str) -> bytes:
    return bytes.fromhex("".join(text.split()))


def pairs(*items):
    return tuple((a.encode(), b.encode()) for a, b in items)


def table(dec: Decoder):
    return [(n.decode(), v.decode()) for n, v in reversed(dec.entries)]  # newest first, as the RFC lists


def test_static_table_is_the_rfcs():
    assert len(STATIC) == 61
    assert STATIC[0] == (b":authority", b"")
    assert STATIC[7] == (b":status", b"200")
    assert STATIC[15] == (b"accept-encoding", b"gzip, deflate")
    assert STATIC[30] == (b"content-type", b"")
    assert STATIC[60] == (b"www-authenticate", b"")


def test_c1_integers():
    assert integer(10, 5) == b"\x0a"  # C.1.1
    assert integer(1337, 5) == h("1f9a0a")  # C.1.2
    assert integer(42, 8) == b"\x2a"  # C.1.3


def test_c2_fields_one_by_one():
    dec = Decoder()
    assert dec.decode(h("400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572")) == \
        pairs(("custom-key", "custom-header"))
    assert dec.size == 55
    dec = Decoder()
    assert dec.decode(h("040c 2f73 616d 706c 652f 7061 7468")) == pairs((":path", "/sample/path"))
    assert dec.size == 0
    dec = Decoder()
    assert dec.decode(h("1008 7061 7373 776f 7264 0673 6563 7265 74")) == pairs(("password", "secret"))
    assert dec.size == 0
    assert Decoder().decode(h("82")) == pairs((":method", "GET"))


REQUESTS = [
    (pairs((":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "www.example.com")),
     [(":authority", "www.example.com")], 57),
    (pairs((":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "www.example.com"),
           ("cache-control", "no-cache")),
     [("cache-control", "no-cache"), (":authority", "www.example.com")], 110),
    (pairs((":method", "GET"), (":scheme", "https"), (":path", "/index.html"), (":authority", "www.example.com"),
           ("custom-key", "custom-value")),
     [("custom-key", "custom-value"), ("cache-control", "no-cache"), (":authority", "www.example.com")], 164),
]


@pytest.mark.parametrize("blocks", [
    ["8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d", "8286 84be 5808 6e6f 2d63 6163 6865",
     "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65"],  # C.3
    ["8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff", "8286 84be 5886 a8eb 1064 9cbf",
     "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf"],  # C.4 (Huffman)
], ids=["C.3", "C.4"])
def test_c3_c4_requests_share_a_table(blocks):
    dec = Decoder()
    for block, (headers, entries, size) in zip(blocks, REQUESTS):
        assert dec.decode(h(block)) == headers
        assert table(dec) == entries
        assert dec.size == size


DATE1, DATE2 = "Mon, 21 Oct 2013 20:13:21 GMT", "Mon, 21 Oct 2013 20:13:22 GMT"
LOC = "https://www.example.com"
COOKIE = "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1"
RESPONSES = [
    (pairs((":status", "302"), ("cache-control", "private"), ("date", DATE1), ("location", LOC)),
     [("location", LOC), ("date", DATE1), ("cache-control", "private"), (":status", "302")], 222),
    (pairs((":status", "307"), ("cache-control", "private"), ("date", DATE1), ("location", LOC)),
     [(":status", "307"), ("location", LOC), ("date", DATE1), ("cache-control", "private")], 222),
    (pairs((":status", "200"), ("cache-control", "private"), ("date", DATE2), ("location", LOC),
           ("content-encoding", "gzip"), ("set-cookie", COOKIE)),
     [("set-cookie", COOKIE), ("content-encoding", "gzip"), ("date", DATE2)], 215),
]


@pytest.mark.parametrize("blocks", [
    ["""4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32
        3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70 6c65 2e63 6f6d""",
     "4803 3330 37c1 c0bf",
     """88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d 54c0 5a04 677a 6970
        7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049 5541 5851 5745 4f49 553b 206d 6178 2d61
        6765 3d33 3630 303b 2076 6572 7369 6f6e 3d31"""],  # C.5
    ["""4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6 2d1b ff6e 919d 29ad
        1718 63c7 8f0b 97c8 e9ae 82ae 43d3""",
     "4883 640e ffc1 c0bf",
     """88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab 77ad 94e7 821d d7f2
        e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f 9587 3160 65c0 03ed 4ee5 b106 3d50 07"""],  # C.6
], ids=["C.5", "C.6"])
def test_c5_c6_responses_with_evictions(blocks):
    dec = Decoder(max_size=256)
    for block, (headers, entries, size) in zip(blocks, RESPONSES):
        assert dec.decode(h(block)) == headers
        assert table(dec) == entries
        assert dec.size == size


def test_huffman_round_trip_and_rfc_strings():
    assert huffman.decode(h("f1e3 c2e5 f23a 6ba0 ab90 f4ff")) == b"www.example.com"
    assert huffman.encode(b"no-cache") == h("a8eb 1064 9cbf")
    assert huffman.encode(COOKIE.encode()) == h(
        "94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f 9587 3160 65c0 03ed 4ee5 b106 3d50 07")
    for size in range(0, 300, 7):
        data = os.urandom(size)
        assert huffman.decode(huffman.encode(data)) == data


@pytest.mark.parametrize("bad", [
    b"\xff\xff\xff\xff",  # EOS inside the string (30 ones)
    b"\x00",  # padding of zeros, not EOS's ones
    huffman.encode(b"a") + b"\xff",  # padding longer than 7 bits
])
def test_huffman_rejects_bad_strings(bad):
    with pytest.raises(huffman.HuffmanError):
        huffman.decode(bad)


def test_cache_is_used_while_the_table_is_unchanged_and_dropped_when_it_changes():
    seen = []
    dec = Decoder(interpret=lambda headers: seen.append(headers) or dict(headers))
    first = h("8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d")  # inserts :authority
    again = h("8286 84be")  # the same request, now by index only
    assert dec.decode(first)[b":authority"] == b"www.example.com"
    assert first not in dec.cache  # it changed the table
    assert dec.decode(again)[b":authority"] == b"www.example.com"
    assert dec.decode(again)[b":authority"] == b"www.example.com"
    assert len(seen) == 2  # the third decode was the cache's
    dec.decode(h("4001 6101 62"))  # a new insertion: index 62 now means a: b
    assert not dec.cache
    # The same bytes mean another header list now: index 62 is the newest entry.
    assert dec.decode(again) == {b":method": b"GET", b":scheme": b"http", b":path": b"/", b"a": b"b"}


@pytest.mark.parametrize("block", [
    "80",  # index 0
    "bf",  # index 63: beyond an empty dynamic table
    "41",  # truncated literal
    "410a 6162",  # string longer than the block
    "82 3fe1 1f",  # table size update after a field
    "3fe2 1f",  # table size update above what we advertised (4096)
    "1f ffff ffff ff7f",  # integer too large
    "4082 ffff 0161",  # Huffman string with EOS
])
def test_malformed_blocks_raise_hpack_error(block):
    with pytest.raises(HpackError):
        Decoder().decode(h(block))


def test_header_list_size_is_bounded():
    dec = Decoder(max_list_size=100)
    with pytest.raises(HpackError):
        dec.decode(literal(b"x", b"y" * 200))


def test_our_constant_blocks_decode_and_leave_the_table_alone():
    dec = Decoder()
    block = indexed(8) + literal(b"content-type", b"application/grpc") + literal(b"grpc-status", b"0")
    assert dec.decode(block) == pairs((":status", "200"), ("content-type", "application/grpc"), ("grpc-status", "0"))
    assert dec.size == 0 and not dec.entries
    assert literal(b"k", b"v" * 200)[:4] == b"\x00\x01k\x7f"  # long lengths use continuation bytes
