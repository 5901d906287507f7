"""IDX files: round trips for every stored dtype, and each kind of bad file with its message."""
from __future__ import annotations

import gzip

import numpy as np
import pytest

from xpnn.data.idx import IDX_DTYPES, load_idx, save_idx
from xpnn.errors import DataError


@pytest.mark.parametrize("dtype", ["uint8", "int8", "int16", "int32", "float32", "float64"])
@pytest.mark.parametrize("name", ["a-idx3-ubyte", "a-idx3-ubyte.gz"])
def test_round_trip(tmp_path, dtype, name):
    a = (np.arange(2 * 3 * 5) - 7).reshape(2, 3, 5).astype(dtype)
    back = load_idx(save_idx(tmp_path / name, a))
    assert back.dtype == np.dtype(dtype) and back.dtype.isnative
    np.testing.assert_array_equal(back, a)


def test_layout_is_the_mnist_one(tmp_path):
    save_idx(tmp_path / "l", np.array([[1, 2, 3]], dtype=">i2"))
    raw = (tmp_path / "l").read_bytes()
    assert raw == bytes([0, 0, 0x0B, 2, 0, 0, 0, 1, 0, 0, 0, 3, 0, 1, 0, 2, 0, 3])
    assert set(IDX_DTYPES) == {0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E}


def test_gzip_is_detected_by_content(tmp_path):
    save_idx(tmp_path / "x.gz", np.arange(4, dtype=np.uint8))
    (tmp_path / "x.gz").rename(tmp_path / "plain-name")
    np.testing.assert_array_equal(load_idx(tmp_path / "plain-name"), np.arange(4))


def test_unsupported_dtype_and_rank(tmp_path):
    with pytest.raises(TypeError, match="cannot store dtype uint16"):
        save_idx(tmp_path / "u", np.zeros(3, np.uint16))
    with pytest.raises(ValueError, match="0-d"):
        save_idx(tmp_path / "u", np.uint8(3))


def _write(tmp_path, payload: bytes, gz=False):
    path = tmp_path / ("bad.gz" if gz else "bad")
    path.write_bytes(gzip.compress(payload) if gz else payload)
    return path


HEADER_3D = bytes([0, 0, 0x08, 3]) + np.array([2, 4, 4], ">u4").tobytes()


@pytest.mark.parametrize("payload, message", [
    (b"\x00\x00", r"bad: 2 bytes is too short for the 4-byte IDX magic number"),
    (b"PK\x03\x04rest", r"bad IDX magic number 0x504B0304: expected two zero bytes, found 0x504B"),
    (bytes([0, 0, 0x07, 1, 0, 0, 0, 1, 9]), r"unknown IDX data type code 0x07; expected one of 0x08 \(uint8\)"),
    (bytes([0, 0, 0x08, 0]), r"declares 0 dimensions"),
    (bytes([0, 0, 0x08, 3, 0, 0, 0, 2]),
     r"declares 3 dimensions, which needs 16 header bytes, but the file has only 8"),
    (HEADER_3D + bytes(20), r"truncated: the header says 2x4x4 uint8 values = 32 bytes after the 16-byte header, "
                            r"found 20 bytes"),
    (HEADER_3D + bytes(33), r"longer than its header says: .* = 32 bytes .* found 33 bytes"),
    (bytes([0, 0, 0x0C, 1, 0, 0, 0, 3]) + bytes(8),
     r"header says 3 int32 values = 12 bytes after the 8-byte header, found 8 bytes"),
])
def test_bad_headers_say_what_is_wrong(tmp_path, payload, message):
    with pytest.raises(DataError, match=message) as err:
        load_idx(_write(tmp_path, payload))
    assert str(tmp_path / "bad") in str(err.value)


def test_bad_header_inside_gzip_says_so(tmp_path):
    with pytest.raises(DataError, match=r"bad\.gz \(after gunzip\): data is truncated"):
        load_idx(_write(tmp_path, HEADER_3D + bytes(5), gz=True))


def test_truncated_gzip(tmp_path):
    whole = gzip.compress(HEADER_3D + bytes(32))
    path = tmp_path / "cut.gz"
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError, match=r"cut\.gz: the gzip stream is corrupt or truncated"):
        load_idx(path)
