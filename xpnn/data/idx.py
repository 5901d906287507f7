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
    """The bytes of an IDX file read on demand: as is, or gunzipped no further than asked.

    Reading gzip this way bounds decompression by what the IDX header declares, so a small
    file that expands to gigabytes is refused after the declared size, not after expanding.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        if path.exists() and not path.is_file():  # a FIFO would block, /dev/zero never end
            raise DataError(f"{path} is not a regular file, so not an IDX file")
        self.raw = path.read_bytes()
        self.compressed = self.raw.startswith(_GZIP_MAGIC)
        self.where = f"{path} (after gunzip)" if self.compressed else str(path)
        self.offset = 0
        self.pending = self.raw
        self.inflater = zlib.decompressobj(wbits=31) if self.compressed else None

    def read(self, n: int) -> bytes:
        """Up to ``n`` more bytes (fewer only at the end of the data)."""
        if not self.compressed:
            chunk = self.raw[self.offset:self.offset + n]
            self.offset += len(chunk)
            return chunk
        out = bytearray()
        try:
            while len(out) < n:
                if self.inflater.eof:
                    if not self.inflater.unused_data.strip(b"\0"):
                        break
                    self.pending = self.inflater.unused_data  # a further gzip member
                    self.inflater = zlib.decompressobj(wbits=31)
                chunk = self.inflater.decompress(self.pending, n - len(out))
                self.pending = self.inflater.unconsumed_tail
                out += chunk
                if not chunk and not self.pending and not self.inflater.eof:
                    raise EOFError("the compressed stream ends before its end marker")
        except (EOFError, zlib.error) as exc:
            raise DataError(f"{self.path}: the gzip stream is corrupt or truncated ({exc}); "
                            f"the compressed file is {len(self.raw)} bytes") from exc
        return bytes(out)

    def can_hold(self, size: int) -> bool:
        """Whether the file could hold ``size`` more bytes of data at all."""
        return not self.compressed or size <= len(self.raw) * _DEFLATE_MAX_RATIO + _GZIP_SLACK

    def remaining(self) -> int | None:
        """Bytes left in a raw file (None for gzip, whose length is not known without expanding it)."""
        return None if self.compressed else len(self.raw) - self.offset


def load_idx(path: "str | os.PathLike[str]") -> np.ndarray:
    """The array stored in an IDX file (raw or gzip), in native byte order.

    Raises :class:`~xpnn.errors.DataError` naming the file and what was expected and found
    when the magic number, type code, dimensions or data length do not agree with each other.
    A gzip file is decompressed only as far as its header declares (plus one byte to tell a
    longer file), so memory is bounded by the declared size.
    """
    path = Path(path)
    source = _Source(path)
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
    if not source.can_hold(expected):
        raise DataError(f"{where}: the header says {dims_text} {dtype.name} values = {expected:,} bytes, more than "
                        f"this {len(source.raw):,}-byte file can hold; the file is damaged")
    left = source.remaining()
    data = source.read(expected + 1)
    found = len(data) if left is None else left
    if found != expected:
        what = "truncated" if found < expected else "longer than its header says"
        amount = f"{found} bytes" if left is not None or found <= expected else "more"
        raise DataError(f"{where}: data is {what}: the header says {dims_text} {dtype.name} values = {expected} "
                        f"bytes after the {header}-byte header, found {amount}")
    values = np.frombuffer(data, dtype=dtype).reshape(shape)
    return values.astype(dtype.newbyteorder("="))


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
