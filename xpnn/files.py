"""Atomic file writes and strict JSON: what xpnn writes is either whole or absent, and parseable.

A crash or a full disk mid-write leaves the old file (or none), never half a file. JSON text
never holds the bare ``NaN``/``Infinity`` tokens Python's ``json`` emits by default (they are
not JSON): non-finite numbers are written as ``null``.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator

__all__ = ["atomic_write", "json_text", "write_json", "json_safe", "write_png"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_write(path: "str | os.PathLike[str]", mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file for writing; on success it is synced and renamed to ``path``.

    The file gets the usual permissions (0666 less the umask), not ``mkstemp``'s 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def json_safe(data: Any) -> Any:
    """``data`` with every non-finite float (NaN, inf) replaced by ``None``; containers copied."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: json_safe(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [json_safe(v) for v in data]
    return data


def json_text(data: Any, indent: int | None = 1) -> str:
    """Strict JSON for ``data``: non-finite floats become ``null`` (see :func:`json_safe`)."""
    return json.dumps(json_safe(data), indent=indent, allow_nan=False)


def write_json(path: "str | os.PathLike[str]", data: Any) -> None:
    """Write ``data`` as strict JSON (plus a newline) to ``path`` atomically."""
    with atomic_write(path, "w") as f:
        f.write(json_text(data) + "\n")


def write_png(figure: Any, path: "str | os.PathLike[str]") -> None:
    """Save a Matplotlib figure to ``path`` as a PNG, atomically, then close it (also if saving fails)."""
    import matplotlib.pyplot as plt

    try:
        with atomic_write(path) as f:
            figure.savefig(f, format="png")
    finally:
        plt.close(figure)
