"""Read an R lazy-load database (`Rdata.rdb` + `Rdata.rdx`, as R packages ship their data sets) without R.

Each object in the .rdb is a 4-byte big-endian length and a zlib stream of R's XDR serialization; the .rdx index
(names → offsets) is a gzip-compressed RDS file. Only the types
that data packages of character vectors need are read: vectors (logical, integer, double, character, list),
pairlists for attributes, symbols and references. Anything else raises, naming the type.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from typing import Any

NILVALUE, SYMSXP, LISTSXP, CHARSXP, LGLSXP, INTSXP, REALSXP, STRSXP, VECSXP = 254, 1, 2, 9, 10, 13, 14, 16, 19
REFSXP, NA_INT = 255, -(2**31)


class RDataError(ValueError):
    pass


class _Reader:
    def __init__(self, raw: bytes) -> None:
        if raw[:2] != b"X\n":
            raise RDataError("not R's XDR serialization (expected the 'X\\n' header)")
        self.raw, self.pos, self.refs = raw, 2, []
        version = self.int()
        self.int(), self.int()  # R version that wrote it, oldest version that can read it
        if version == 3:
            self.take(self.int())  # native encoding name
        elif version != 2:
            raise RDataError(f"R serialization version {version} is not supported")

    def int(self) -> int:
        (v,) = struct.unpack_from(">i", self.raw, self.pos)
        self.pos += 4
        return v

    def take(self, n: int) -> bytes:
        out = self.raw[self.pos : self.pos + n]
        self.pos += n
        return out

    def object(self) -> Any:
        flags = self.int()
        kind, has_attr, has_tag = flags & 0xFF, bool(flags & (1 << 9)), bool(flags & (1 << 10))
        if kind == NILVALUE:
            return None
        if kind == REFSXP:
            return self.refs[(flags >> 8) - 1]
        if kind == SYMSXP:
            name = self.object()
            self.refs.append(name)
            return name
        if kind == LISTSXP:  # a pairlist: attributes, tag, value, rest
            items: dict[Any, Any] = {}
            while kind == LISTSXP:
                if has_attr:
                    self.object()
                tag = self.object() if has_tag else len(items)
                items[tag] = self.object()
                flags = self.int()
                kind, has_attr, has_tag = flags & 0xFF, bool(flags & (1 << 9)), bool(flags & (1 << 10))
            if kind != NILVALUE:
                raise RDataError(f"a pairlist ends in R type {kind}")
            return items
        if kind == CHARSXP:
            n = self.int()
            return None if n == -1 else self.take(n).decode("utf-8", errors="replace")
        if kind in (LGLSXP, INTSXP):
            n = self.int()
            value: Any = [None if v == NA_INT else v for v in struct.unpack_from(f">{n}i", self.take(4 * n))]
        elif kind == REALSXP:
            n = self.int()
            value = list(struct.unpack_from(f">{n}d", self.take(8 * n)))
        elif kind in (STRSXP, VECSXP):
            value = [self.object() for _ in range(self.int())]
        else:
            raise RDataError(f"R type {kind} is not supported")
        if has_attr:
            attrs = self.object()
            if isinstance(attrs, dict) and "names" in attrs and kind == VECSXP:
                return dict(zip(attrs["names"], value, strict=True))
        return value


def unserialize_block(block: bytes) -> Any:
    """One stored object: 4-byte big-endian uncompressed length, then zlib data."""
    (length,) = struct.unpack_from(">I", block, 0)
    raw = zlib.decompress(block[4:])
    if len(raw) != length:
        raise RDataError(f"a block decompressed to {len(raw)} bytes, its header says {length}")
    return _Reader(raw).object()


def read_lazyload(rdb: bytes, rdx: bytes) -> dict[str, Any]:
    """Every variable of an R lazy-load database, by name (the .rdx index is a gzip-compressed RDS file)."""
    index = _Reader(gzip.decompress(rdx)).object()
    if not isinstance(index, dict) or "variables" not in index:
        raise RDataError("the .rdx index has no 'variables'")
    out = {}
    for name, (offset, length) in index["variables"].items():
        out[name] = unserialize_block(rdb[offset : offset + length])
    return out
