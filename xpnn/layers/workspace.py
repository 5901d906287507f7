"""The workspace limit: how much scratch memory a layer may build at once (im2col columns, max-pool routing).

A convolution's column matrix is kh*kw times the size of its input, so it is built and used a few
images at a time, never for the whole batch at once unless it fits: the idea of cuDNN's workspace
limit. ``xpnn.set_workspace_limit(bytes)`` sets it (default 256 MiB); :func:`batch_chunk` turns it
into a number of images. On NumPy the chunks are also kept cache-sized (:data:`CPU_CHUNK_BYTES`):
a block of columns still in the CPU's cache when the matmul reads it, or when its gradient is added
back, reuses memory instead of faulting in fresh pages. On a GPU each chunk costs a few kernel
launches, so there the whole batch is one chunk whenever the limit allows.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

from array_api_compat import is_numpy_namespace

from ..validation import check_integer

__all__ = ["set_workspace_limit", "workspace_limit", "workspace", "images_at_a_time", "batch_chunk",
           "DEFAULT_WORKSPACE_BYTES", "CPU_CHUNK_BYTES"]

DEFAULT_WORKSPACE_BYTES = 256 * 2 ** 20
#: On NumPy, the size of one block of columns (a few images' worth): it stays in the CPU's cache.
CPU_CHUNK_BYTES = 4 * 2 ** 20

_limit = [DEFAULT_WORKSPACE_BYTES]
_images: list[int | None] = [None]


def set_workspace_limit(nbytes: int) -> None:
    """Let a layer build at most ``nbytes`` of scratch (im2col columns) at a time; at least one
    image's worth is always built. Lower it when a large batch runs out of GPU memory."""
    _limit[0] = check_integer("set_workspace_limit", "nbytes (the workspace limit in bytes)", nbytes)


def workspace_limit() -> int:
    """The current workspace limit in bytes (:func:`set_workspace_limit`)."""
    return _limit[0]


@contextlib.contextmanager
def workspace(nbytes: int) -> Iterator[None]:
    """``with workspace(nbytes):`` the limit set for the block, then restored."""
    previous = _limit[0]
    set_workspace_limit(nbytes)
    try:
        yield
    finally:
        _limit[0] = previous


@contextlib.contextmanager
def images_at_a_time(images: int) -> Iterator[None]:
    """``with images_at_a_time(n):`` every layer that chunks its batch takes ``n`` samples at a time,
    whatever their size: the memory estimate's dry run, whose batches must be whole numbers of
    every layer's chunks for its peaks to grow linearly with the batch."""
    previous = _images[0]
    _images[0] = max(1, int(images))
    try:
        yield
    finally:
        _images[0] = previous


def batch_chunk(batch: int, bytes_per_sample: int, xp: Any) -> int:
    """How many of ``batch`` samples to process at once when each needs ``bytes_per_sample`` of
    scratch: as many as the workspace limit allows (cache-sized blocks on NumPy), at least one."""
    if _images[0] is not None:
        return min(batch, _images[0])
    budget = _limit[0]
    if is_numpy_namespace(xp):
        budget = min(budget, CPU_CHUNK_BYTES)
    return max(1, min(batch, budget // max(1, bytes_per_sample)))
