"""HPACK (RFC 7541): header block decoding with the dynamic table, and the constant blocks we send.

Why a decoder of our own, cached: a gRPC client sends nearly the same header block on every call
of a connection. After the first call its headers sit in the dynamic table, and each later block is
a few index bytes that change nothing in it. So a decoded block is kept, keyed by its bytes, for as
long as the table is unchanged: a repeat costs one dict look-up. Any block that changes the table
(an insertion, an eviction, a size update) empties the cache, since indexes now mean other fields.

What we send never touches our own encoder state: every field is either a static-table index or a
literal without indexing, so our blocks are constant bytes built once (`literal`, `indexed`), and the
peer's SETTINGS_HEADER_TABLE_SIZE never matters to us.
"""

from __future__ import annotations

from . import huffman

STATIC = (
    (b":authority", b""), (b":method", b"GET"), (b":method", b"POST"), (b":path", b"/"),
    (b":path", b"/index.html"), (b":scheme", b"http"), (b":scheme", b"https"), (b":status", b"200"),
    (b":status", b"204"), (b":status", b"206"), (b":status", b"304"), (b":status", b"400"),
    (b":status", b"404"), (b":status", b"500"), (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"), (b"accept-language", b""), (b"accept-ranges", b""),
    (b"accept", b""), (b"access-control-allow-origin", b""), (b"age", b""), (b"allow", b""),
    (b"authorization", b""), (b"cache-control", b""), (b"content-disposition", b""),
    (b"content-encoding", b""), (b"content-language", b""), (b"content-length", b""),
    (b"content-location", b""), (b"content-range", b""), (b"content-type", b""), (b"cookie", b""),
    (b"date", b""), (b"etag", b""), (b"expect", b""), (b"expires", b""), (b"from", b""), (b"host", b""),
    (b"if-match", b""), (b"if-modified-since", b""), (b"if-none-match", b""), (b"if-range", b""),
    (b"if-unmodified-since", b""), (b"last-modified", b""), (b"link", b""), (b"location", b""),
    (b"max-forwards", b""), (b"proxy-authenticate", b""), (b"proxy-authorization", b""), (b"range", b""),
    (b"referer", b""), (b"refresh", b""), (b"retry-after", b""), (b"server", b""), (b"set-cookie", b""),
    (b"strict-transport-security", b""), (b"transfer-encoding", b""), (b"user-agent", b""), (b"vary", b""),
    (b"via", b""), (b"www-authenticate", b""),
)
_NSTATIC = len(STATIC)
_ENTRY_OVERHEAD = 32  # RFC 7541 4.1
_CACHE_LIMIT = 128


class HpackError(ValueError):
    """A header block that cannot be decoded: a connection error (COMPRESSION_ERROR)."""


class Decoder:
    __slots__ = ("max_size", "size", "entries", "cache", "max_list_size", "interpret")

    def __init__(self, max_size: int = 4096, max_list_size: int = 65536, interpret=None):
        self.max_size = max_size  # what we advertised as SETTINGS_HEADER_TABLE_SIZE: the ceiling
        self.size = 0
        self.entries: list[tuple[bytes, bytes]] = []  # oldest first: index 62 is entries[-1]
        self.cache: dict[bytes, object] = {}
        self.max_list_size = max_list_size
        # headers -> what the caller keeps of them; cached with the block, so a repeated block is
        # neither decoded nor read again.
        self.interpret = interpret

    def decode(self, block: bytes):
        """-> interpret(((name, value), ...)) in block order (the tuple itself without `interpret`).
        Raises HpackError."""
        cached = self.cache.get(block)
        if cached is not None:
            return cached
        headers, changed = self._decode(block)
        result = headers if self.interpret is None else self.interpret(headers)
        if changed:
            self.cache.clear()
        else:
            if len(self.cache) >= _CACHE_LIMIT:
                self.cache.clear()
            self.cache[block] = result
        return result

    def _decode(self, block: bytes):
        out, pos, end, changed, total = [], 0, len(block), False, 0
        while pos < end:
            b = block[pos]
            if b & 0x80:  # indexed field
                index, pos = _integer(block, pos, 7)
                field = self._field(index)
            elif b & 0x40:  # literal with incremental indexing
                field, pos = self._literal(block, pos, 6)
                self._insert(field)
                changed = True
            elif b & 0x20:  # dynamic table size update: only before the first field
                if out:
                    raise HpackError("dynamic table size update after a header field")
                size, pos = _integer(block, pos, 5)
                if size > self.max_size:
                    raise HpackError(f"dynamic table size update to {size} exceeds {self.max_size}")
                self._evict(size)
                changed = True
                continue
            else:  # literal without indexing (0000) or never indexed (0001)
                field, pos = self._literal(block, pos, 4)
            total += len(field[0]) + len(field[1]) + _ENTRY_OVERHEAD
            if total > self.max_list_size:
                raise HpackError("header list too large")
            out.append(field)
        return tuple(out), changed

    def _field(self, index: int) -> tuple[bytes, bytes]:
        if index <= 0:
            raise HpackError("header index 0")
        if index <= _NSTATIC:
            return STATIC[index - 1]
        dyn = index - _NSTATIC
        if dyn > len(self.entries):
            raise HpackError(f"header index {index} is beyond the dynamic table")
        return self.entries[-dyn]

    def _literal(self, block: bytes, pos: int, prefix: int):
        index, pos = _integer(block, pos, prefix)
        if index:
            name = self._field(index)[0]
        else:
            name, pos = _string(block, pos)
        value, pos = _string(block, pos)
        return (name, value), pos

    def _insert(self, field: tuple[bytes, bytes]) -> None:
        size = len(field[0]) + len(field[1]) + _ENTRY_OVERHEAD
        if size > self.max_size:  # RFC 7541 4.4: an entry larger than the table empties it
            self.entries.clear()
            self.size = 0
            return
        self._evict(self.max_size - size)
        self.entries.append(field)
        self.size += size

    def _evict(self, limit: int) -> None:
        entries = self.entries
        while self.size > limit:
            name, value = entries.pop(0)
            self.size -= len(name) + len(value) + _ENTRY_OVERHEAD


def _integer(block: bytes, pos: int, prefix: int) -> tuple[int, int]:
    mask = (1 << prefix) - 1
    if pos >= len(block):
        raise HpackError("truncated integer")
    value = block[pos] & mask
    pos += 1
    if value < mask:
        return value, pos
    shift = 0
    while True:
        if pos >= len(block):
            raise HpackError("truncated integer")
        b = block[pos]
        pos += 1
        value += (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, pos
        if shift > 28:  # no length or index we accept needs more than 4 continuation bytes
            raise HpackError("integer too large")


def _string(block: bytes, pos: int) -> tuple[bytes, int]:
    if pos >= len(block):
        raise HpackError("truncated string")
    coded = block[pos] & 0x80
    length, pos = _integer(block, pos, 7)
    end = pos + length
    if end > len(block):
        raise HpackError("string longer than the header block")
    raw = block[pos:end]
    if coded:
        try:
            raw = huffman.decode(raw)
        except huffman.HuffmanError as exc:
            raise HpackError(str(exc)) from None
    return raw, end


# --- what we send: constant blocks -----------------------------------------------------------------

def integer(value: int, prefix: int, flags: int = 0) -> bytes:
    mask = (1 << prefix) - 1
    if value < mask:
        return bytes((flags | value,))
    out = [flags | mask]
    value -= mask
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def indexed(index: int) -> bytes:
    """A field of the static table, by its index (RFC 7541 6.1)."""
    return integer(index, 7, 0x80)


def literal(name: bytes, value: bytes) -> bytes:
    """A literal field without indexing, name and value as raw octets (RFC 7541 6.2.2)."""
    return b"\x00" + integer(len(name), 7) + name + integer(len(value), 7) + value
