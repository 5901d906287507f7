"""MNIST-format IDX files: read with every header field checked, and written back.

An IDX file is two zero bytes, a data-type code, the number of dimensions, one big-endian
uint32 per dimension, then the values, big-endian, in C order. Files may be gzip-compressed;
compression is recognised from the content, not the file name.
"""
from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from ..files import atomic_write

__all__ = ["load_idx", "save_idx", "IDX_DTYPES"]

# type code -> big-endian dtype of the values
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


def _codes() -> str:
    return ", ".join(f"0x{code:02X} ({dtype.name})" for code, dtype in IDX_DTYPES.items())


#: the most a deflate stream can expand (zlib's documented bound is 1032:1), plus room for headers
_DEFLATE_MAX_RATIO = 1032
_GZIP_SLACK = 4096


class _Source:
    """The bytes of an IDX file read on demand, from disk a chunk at a time: as is, or gunzipped
    no further than asked.

    Reading gzip this way bounds decompression by what the IDX header declares, so a small
    file that expands to gigabytes is refused after the declared size, not after expanding, and
    the data is inflated straight into the array that is returned, never copied.
    """

    CHUNK = 2**20

    def __init__(self, path: Path) -> None:
        self.path = path
        if path.exists() and not path.is_file():  # a FIFO would block, /dev/zero never end
            raise DataError(f"{path} is not a regular file, so not an IDX file")
        self.file = path.open("rb")
        self.size = os.fstat(self.file.fileno()).st_size
        self.compressed = self.file.read(2) == _GZIP_MAGIC
        self.file.seek(0)
        self.where = f"{path} (after gunzip)" if self.compressed else str(path)
        self.offset = 0
        self.pending = b""
        self.inflater = zlib.decompressobj(wbits=31) if self.compressed else None

    def __enter__(self) -> "_Source":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.file.close()

    def read(self, n: int) -> bytes:
        """Up to ``n`` more bytes (fewer only at the end of the data)."""
        buffer = bytearray(n)
        return bytes(buffer[:self.readinto(memoryview(buffer))])

    def readinto(self, view: memoryview) -> int:
        """Fill ``view`` with the next bytes; returns how many there were (fewer only at the end)."""
        filled = 0
        while filled < len(view):
            if self.compressed:
                chunk = self._inflate(min(len(view) - filled, self.CHUNK))
                view[filled:filled + len(chunk)] = chunk
                count = len(chunk)
            else:
                count = self.file.readinto(view[filled:])
            if not count:
                break
            filled += count
        self.offset += filled
        return filled

    def _inflate(self, limit: int) -> bytes:
        """Up to ``limit`` decompressed bytes (b"" at the end of the data)."""
        try:
            while True:
                if self.inflater.eof and not self._next_member():
                    return b""
                if not self.pending:
                    self.pending = self.file.read(self.CHUNK)
                    exhausted = not self.pending
                chunk = self.inflater.decompress(self.pending, limit)
                self.pending = self.inflater.unconsumed_tail
                if chunk:
                    return chunk
                if not self.pending and not self.inflater.eof and exhausted:
                    raise EOFError("the compressed stream ends before its end marker")
        except (EOFError, zlib.error) as exc:
            raise DataError(f"{self.path}: the gzip stream is corrupt or truncated ({exc}); "
                            f"the compressed file is {self.size} bytes") from exc

    def _next_member(self) -> bool:
        """After a gzip member's end: start the next member, if any (zero padding is no member)."""
        rest = self.inflater.unused_data
        while not rest.strip(b"\0"):
            rest = self.file.read(self.CHUNK)
            if not rest:
                return False
        self.pending = rest
        self.inflater = zlib.decompressobj(wbits=31)
        return True

    def can_hold(self, size: int) -> bool:
        """Whether the file could hold ``size`` more bytes of data at all."""
        return not self.compressed or size <= self.size * _DEFLATE_MAX_RATIO + _GZIP_SLACK

    def remaining(self) -> int | None:
        """Bytes left in a raw file (None for gzip, whose length is not known without expanding it)."""
        return None if self.compressed else self.size - self.offset


def load_idx(path: "str | os.PathLike[str]") -> np.ndarray:
    """The array stored in an IDX file (raw or gzip), in native byte order.

    Raises :class:`~xpnn.errors.DataError` naming the file and what was expected and found
    when the magic number, type code, dimensions or data length do not agree with each other,
    or when the memory for the data it declares cannot be had. A gzip file is decompressed only
    as far as its header declares (plus one byte to tell a longer file), straight into the
    returned array, so memory is bounded by the declared size and held once.
    """
    path = Path(path)
    with _Source(path) as source:
        return _read(source)


def _read(source: _Source) -> np.ndarray:
    where = source.where
    magic = source.read(4)
    if len(magic) < 4:
        raise DataError(f"{where}: {len(magic)} bytes is too short for the 4-byte IDX magic number")
    zero, code, ndim = magic[:2], magic[2], magic[3]
    if zero != b"\x00\x00":
        raise DataError(f"{where}: bad IDX magic number 0x{magic.hex().upper()}: expected two zero bytes, "
                        f"found 0x{zero.hex().upper()}; this is not an IDX file")
    if code not in IDX_DTYPES:
        raise DataError(f"{where}: unknown IDX data type code 0x{code:02X}; expected one of {_codes()}")
    if ndim == 0:
        raise DataError(f"{where}: the header declares 0 dimensions; expected at least 1")
    header = 4 + 4 * ndim
    dims = source.read(4 * ndim)
    if len(dims) < 4 * ndim:
        raise DataError(f"{where}: the header declares {ndim} dimensions, which needs {header} header bytes, "
                        f"but the file has only {4 + len(dims)} bytes")
    shape = tuple(int(d) for d in np.frombuffer(dims, dtype=">u4"))
    dtype = IDX_DTYPES[code]
    expected = dtype.itemsize
    for d in shape:
        expected *= d  # Python integers: no overflow, however large the dimensions
    dims_text = "x".join(map(str, shape))
    declared = f"the header says {dims_text} {dtype.name} values = {expected:,} bytes"
    if not source.can_hold(expected):
        raise DataError(f"{where}: {declared}, more than this {source.size:,}-byte file can hold; the file is "
                        f"damaged")
    left = source.remaining()
    if left is None or left == expected:
        try:
            data = np.empty(expected, dtype=np.uint8)
        except MemoryError:
            raise DataError(f"{where}: {declared}, more memory than is free; load it on a machine with more memory, "
                            f"or split the file") from None
        found = source.readinto(memoryview(data))
        if found == expected and source.read(1):
            found = -1
    else:
        found = left
    if found != expected:
        what = "truncated" if 0 <= found < expected else "longer than its header says"
        amount = f"{found} bytes" if found >= 0 else "more"
        raise DataError(f"{where}: data is {what}: the header says {dims_text} {dtype.name} values = {expected} "
                        f"bytes after the {header}-byte header, found {amount}")
    values = data.view(dtype).reshape(shape)
    if not dtype.isnative:
        values = values.byteswap(inplace=True).view(dtype.newbyteorder("="))
    return values


def save_idx(path: "str | os.PathLike[str]", array: Any) -> Path:
    """Write ``array`` as an IDX file (gzip-compressed if ``path`` ends in ``.gz``); returns the path.

    The file is written to a temporary name and renamed, so a crash never leaves half a file.
    """
    path = Path(path)
    array = np.asarray(array)
    code = next((c for c, dt in IDX_DTYPES.items() if dt.kind == array.dtype.kind
                 and dt.itemsize == array.dtype.itemsize), None)
    if code is None:
        raise TypeError(f"save_idx({path}): IDX cannot store dtype {array.dtype}; it stores {_codes()}")
    if not 1 <= array.ndim <= 255:
        raise ValueError(f"save_idx({path}): IDX stores 1 to 255 dimensions, got a {array.ndim}-d array")
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    payload = header + np.ascontiguousarray(array, dtype=IDX_DTYPES[code]).tobytes()
    if path.suffix == ".gz":
        payload = gzip.compress(payload, mtime=0)
    with atomic_write(path) as out:
        out.write(payload)
    return path
