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


def _read_bytes(path: Path) -> tuple[bytes, bool]:
    """The file's bytes, gunzipped if they are gzip, and whether they were."""
    raw = path.read_bytes()
    if not raw.startswith(_GZIP_MAGIC):
        return raw, False
    try:
        return gzip.decompress(raw), True
    except (EOFError, OSError, zlib.error) as exc:
        raise DataError(f"{path}: the gzip stream is corrupt or truncated ({exc}); "
                        f"the compressed file is {len(raw)} bytes") from exc


def load_idx(path: "str | os.PathLike[str]") -> np.ndarray:
    """The array stored in an IDX file (raw or gzip), in native byte order.

    Raises :class:`~xpnn.errors.DataError` naming the file and what was expected and found
    when the magic number, type code, dimensions or data length do not agree with each other.
    """
    path = Path(path)
    data, compressed = _read_bytes(path)
    where = f"{path} (after gunzip)" if compressed else str(path)
    if len(data) < 4:
        raise DataError(f"{where}: {len(data)} bytes is too short for the 4-byte IDX magic number")
    zero, code, ndim = data[:2], data[2], data[3]
    if zero != b"\x00\x00":
        raise DataError(f"{where}: bad IDX magic number 0x{data[:4].hex().upper()}: expected two zero bytes, "
                        f"found 0x{zero.hex().upper()}; this is not an IDX file")
    if code not in IDX_DTYPES:
        raise DataError(f"{where}: unknown IDX data type code 0x{code:02X}; expected one of {_codes()}")
    if ndim == 0:
        raise DataError(f"{where}: the header declares 0 dimensions; expected at least 1")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{where}: the header declares {ndim} dimensions, which needs {header} header bytes, "
                        f"but the file has only {len(data)} bytes")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = IDX_DTYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    found = len(data) - header
    if found != expected:
        dims = "x".join(map(str, shape))
        what = "truncated" if found < expected else "longer than its header says"
        raise DataError(f"{where}: data is {what}: the header says {dims} {dtype.name} values = {expected} bytes "
                        f"after the {header}-byte header, found {found} bytes")
    values = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
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
