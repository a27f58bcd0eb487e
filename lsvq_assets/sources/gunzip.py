"""The decompressed bytes of a (multi-member) gzip stream, read in bounded steps (plain Python)."""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING

from lsvq_assets.net.stream import CHUNK_SIZE

if TYPE_CHECKING:
    from _typeshed import SupportsRead

__all__ = ["CorruptArchive", "Gunzip"]

_GZIP_WBITS = 16 + zlib.MAX_WBITS  # gzip header and trailer, checked by zlib


class CorruptArchive(Exception):
    """The archive's bytes are not a whole, valid .tar.gz."""


class Gunzip:
    """A read-only file object over the decompressed bytes of ``raw``.

    zlib checks each member's header, CRC-32 and length; zero padding after a member is allowed
    (as gzip(1) and Python's gzip do). A stream that ends early or holds anything else raises
    :class:`CorruptArchive`. At most ``out_max`` decompressed bytes are held at once (no gzip bomb).
    """

    def __init__(self, raw: SupportsRead[bytes], in_chunk: int = CHUNK_SIZE, out_max: int = CHUNK_SIZE) -> None:
        self._raw, self._in, self._out_max = raw, in_chunk, out_max
        self._d = zlib.decompressobj(_GZIP_WBITS)
        self._buf = b""
        self._pos = 0
        self._done = False

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            raise ValueError("Gunzip.read needs a size")
        while self._pos >= len(self._buf):
            if self._done:
                return b""
            self._buf, self._pos = self._next(), 0
        out = self._buf[self._pos : self._pos + n]
        self._pos += len(out)
        return out

    def drain(self) -> None:
        """Read to the end of the gzip stream (verifying every trailer)."""
        while self._next():
            pass
        self._buf, self._pos = b"", 0

    def _next(self) -> bytes:
        try:
            while not self._done:
                d = self._d
                if d.unconsumed_tail:
                    out = d.decompress(d.unconsumed_tail, self._out_max)
                elif d.eof:  # a gzip member ended (trailer verified): padding, another member or the end
                    rest = d.unused_data.lstrip(b"\0")
                    while not rest:
                        data = self._raw.read(self._in)
                        if not data:
                            self._done = True
                            return b""
                        rest = data.lstrip(b"\0")
                    self._d = d = zlib.decompressobj(_GZIP_WBITS)
                    out = d.decompress(rest, self._out_max)
                else:
                    data = self._raw.read(self._in)
                    if not data:
                        raise CorruptArchive("truncated gzip stream")
                    out = d.decompress(data, self._out_max)
                if out:
                    return out
            return b""
        except zlib.error as exc:
            raise CorruptArchive(f"bad gzip data: {exc}") from None
