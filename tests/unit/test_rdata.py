"""The R lazy-load reader on bytes written by hand in R's XDR serialization format."""

from __future__ import annotations

import gzip
import struct
import zlib

import pytest

from trainers.rdata import RDataError, read_lazyload


def xdr(obj_bytes: bytes, version: int = 3) -> bytes:
    head = b"X\n" + struct.pack(">iii", version, 0x40201, 0x30500)
    if version == 3:
        head += struct.pack(">i", 5) + b"UTF-8"
    return head + obj_bytes


def strsxp(values: list[str | None]) -> bytes:
    out = struct.pack(">ii", 16, len(values))
    for v in values:
        out += struct.pack(">ii", 9 | (1 << 15), -1) if v is None else struct.pack(">ii", 9, len(v)) + v.encode()
    return out


def named_list(items: dict[str, bytes]) -> bytes:
    """A VECSXP with a names attribute (pairlist tagged by the symbol 'names')."""
    out = struct.pack(">ii", 19 | (1 << 9), len(items)) + b"".join(items.values())
    names = struct.pack(">i", 1) + struct.pack(">ii", 9, 5) + b"names"  # SYMSXP 'names'
    return out + struct.pack(">i", 2 | (1 << 10)) + names + strsxp(list(items)) + struct.pack(">i", 254)


def test_reads_character_vectors_by_name():
    books = {"emma": ["EMMA", "", None, "Chapter 1"], "persuasion": ["Persuasion"]}
    rdb, index = b"", {}
    for name, lines in books.items():
        raw = xdr(strsxp(lines))
        block = struct.pack(">I", len(raw)) + zlib.compress(raw)
        index[name] = struct.pack(">ii", 13, 2) + struct.pack(">ii", len(rdb), len(block))
        rdb += block
    rdx = gzip.compress(xdr(named_list({"variables": named_list(index)}), version=2))
    assert read_lazyload(rdb, rdx) == books


def test_refuses_what_it_cannot_read():
    with pytest.raises(RDataError, match="'X"):
        read_lazyload(b"", gzip.compress(b"RDA2\n"))
    with pytest.raises(RDataError, match="R type 3 "):  # a closure
        read_lazyload(b"", gzip.compress(xdr(struct.pack(">i", 3))))
