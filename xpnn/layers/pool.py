"""Pooling on NCHW images: a loop over the kh*kw window offsets (strided slices), never over pixels.

The layers work channel-major inside, like Conv2D: a (C, N, H, W) view of the input, results
returned as NCHW views. MaxPool2D sends each window's gradient to the first maximum in row-major
order (PyTorch's rule), also on ties, by routing it down a pairwise tournament with 0/1 masks
(multiplications: NumPy's ``where`` with an unpredictable mask is about ten times slower).

Non-overlapping windows without padding (the usual ``MaxPool2D(2)``) are pooled separably: first
along each row (kw strided column slices), then down the columns of that result (kh row
slices), so the second half works on 1/kw of the data, and backward rebuilds the input gradient
with two interleaving stacks instead of kh*kw strided writes. Row first, then column, keeps the
row-major first maximum: the earliest row holding the window's maximum wins, and within it the
earliest column.
"""
from __future__ import annotations

import math
from typing import Any

import array_api_extra as xpx
from array_api_compat import array_namespace

from .. import precision
from ..backend import native_device
from .base import Backprop, Layer
from .windows import Pair, add_into, as_config, as_pair, pad_hw, spatial_output_shape, window_slices
from .workspace import batch_chunk

__all__ = ["MaxPool2D", "AvgPool2D", "GlobalAvgPool2D"]


class _Pool2D(Layer):
    input_rank = 4

    def __init__(self, kernel_size: "int | Pair", stride: "int | Pair | None" = None,
                 padding: "int | Pair" = 0) -> None:
        name = type(self).__name__
        self.arguments = {"kernel_size": kernel_size, "stride": stride, "padding": padding}
        self.kernel_size = as_pair(kernel_size, "kernel_size", name)
        self.stride = self.kernel_size if stride is None else as_pair(stride, "stride", name)
        self.padding = as_pair(padding, "padding", name, minimum=0)
        if any(p > k // 2 for p, k in zip(self.padding, self.kernel_size)):
            raise ValueError(f"{name}: padding {self.padding} must be at most half the kernel size {self.kernel_size}")
        self.pads = ((self.padding[0],) * 2, (self.padding[1],) * 2)

    def _windows(self, x: Any) -> tuple[Pair, list[tuple[slice, slice]]]:
        out_hw = spatial_output_shape(self, tuple(x.shape), self.kernel_size, self.stride, self.pads)
        return out_hw, list(window_slices(self.kernel_size, self.stride, out_hw))

    def _scatter(self, parts: Any, windows: list[tuple[slice, slice]], out_hw: Pair,
                 padded_shape: tuple[int, ...], like: Any) -> Any:
        """The (C, N, H, W) input gradient: each window offset's part put back where that offset
        read from (added up where windows overlap), the padding cropped off."""
        xp = array_namespace(like)
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        overlapping = sh < kh or sw < kw
        covered = (sh, sw) == (kh, kw) and (out_hw[0] * kh, out_hw[1] * kw) == padded_shape[2:]
        dx = (xp.empty if covered else xp.zeros)(padded_shape, dtype=like.dtype, device=native_device(like))
        for part, (hs, ws) in zip(parts, windows):
            key = (slice(None), slice(None), hs, ws)
            if overlapping:
                add_into(dx, key, part)
            else:
                dx = xpx.at(dx, key).set(part)
        (top, _), (left, _) = self.pads
        height, width = padded_shape[2] - 2 * top, padded_shape[3] - 2 * left
        return dx[:, :, top:top + height, left:left + width]

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        out_hw = spatial_output_shape(self, input_shape, self.kernel_size, self.stride, self.pads)
        return (input_shape[0], input_shape[1], *out_hw)

    def expected_input(self) -> str:
        return "(N, C, H, W)"

    def config(self) -> dict[str, Any]:
        return {name: as_config(value) for name, value in self.arguments.items()}


def _tournament(views: list[Any]) -> tuple[Any, Any]:
    """Element-wise max over ``views`` and the decisions that route a gradient to the first max.

    A pairwise tree: at each node the right half wins only if strictly greater, so ties go to the
    earlier (row-major) offset. The decisions are (right_wins mask, left subtree, right subtree).
    """
    if len(views) == 1:
        return views[0], None
    xp = array_namespace(views[0])
    half = (len(views) + 1) // 2
    left, left_tree = _tournament(views[:half])
    right, right_tree = _tournament(views[half:])
    return xp.maximum(left, right), (right > left, left_tree, right_tree)


def _route(grad: Any, tree: Any) -> list[Any]:
    """Split ``grad`` over the views of a :func:`_tournament`, in view order."""
    if tree is None:
        return [grad]
    right_wins, left_tree, right_tree = tree
    to_right = array_namespace(grad).astype(right_wins, grad.dtype)
    to_right *= grad
    return _route(grad - to_right, left_tree) + _route(to_right, right_tree)


def _tree_slice(tree: Any, images: slice) -> Any:
    """The decisions of a :func:`_tournament` over (C, N, ...) views, for the images ``images``."""
    if tree is None:
        return None
    right_wins, left_tree, right_tree = tree
    return right_wins[:, images, ...], _tree_slice(left_tree, images), _tree_slice(right_tree, images)


def _max(views: list[Any]) -> Any:
    xp = array_namespace(views[0])
    best = views[0]
    for view in views[1:]:
        best = xp.maximum(best, view)
    return best


class MaxPool2D(_Pool2D):
    """Max over each window; ``stride`` defaults to ``kernel_size``; padding counts as -inf."""

    def forward(self, x: Any, *, train: bool, input_grad: bool) -> tuple[Any, Backprop]:
        if self.stride == self.kernel_size and self.padding == (0, 0):
            return self._separable_forward(x, train)
        xp = array_namespace(x)
        out_hw, windows = self._windows(x)
        padded = pad_hw(xp.permute_dims(x, (1, 0, 2, 3)), self.pads, -math.inf)
        padded_shape = tuple(padded.shape)
        views = [padded[:, :, hs, ws] for hs, ws in windows]
        if self.stride[1] > 1:
            # one copy into a contiguous array: NumPy's element-wise loops run several times slower on
            # views with a non-unit inner stride, which costs more than the copy
            gathered = xp.stack(views)
            views = [gathered[k, ...] for k in range(len(windows))]
        if train:
            y, tree = _tournament(views)
            views = None  # the decisions are all backprop needs
        else:
            y, tree = _max(views), None

        def backprop(dy: Any) -> Any:
            parts = _route(xp.permute_dims(dy, (1, 0, 2, 3)), tree if views is None else _tournament(views)[1])
            return xp.permute_dims(self._scatter(parts, windows, out_hw, padded_shape, dy), (1, 0, 2, 3))

        return xp.permute_dims(y, (1, 0, 2, 3)), backprop

    def _separable_forward(self, x: Any, train: bool) -> tuple[Any, Backprop]:
        """Non-overlapping windows, no padding: the max along rows, then down columns."""
        xp = array_namespace(x)
        (kh, kw) = self.kernel_size
        out_h, out_w = spatial_output_shape(self, tuple(x.shape), self.kernel_size, self.stride, self.pads)
        batch, channels, height, width = (int(d) for d in x.shape)
        rows, cols = out_h * kh, out_w * kw  # what the windows cover; a remainder gets no gradient
        images = xp.permute_dims(x, (1, 0, 2, 3))
        along_rows = [images[:, :, :rows, j:cols:kw] for j in range(kw)]

        def down_columns(row_max: Any) -> list[Any]:
            return [row_max[:, :, i::kh, :] for i in range(kh)]

        if train:
            row_max, row_tree = _tournament(along_rows)
            y, column_tree = _tournament(down_columns(row_max))
            along_rows = row_max = None  # the decisions are all backprop needs
        else:
            row_max = _max(along_rows)
            y = _max(down_columns(row_max))
            row_tree = column_tree = None  # eval keeps the views; backprop decides if it is called

        def routed(dy: Any, trees: tuple[Any, Any], images: int) -> Any:
            """The (C, images, rows, cols) gradient of ``dy``'s images: down the column decisions, then
            along the rows; each intermediate dropped as soon as the next is made."""
            per_row = _route(dy, trees[1])
            row_grad = xp.reshape(xp.stack(per_row, axis=3), (channels, images, rows, out_w))
            del per_row
            per_column = _route(row_grad, trees[0])
            del row_grad
            return xp.reshape(xp.stack(per_column, axis=-1), (channels, images, rows, cols))

        def backprop(dy: Any) -> Any:
            trees = (row_tree, column_tree) if train else \
                (_tournament(along_rows)[1], _tournament(down_columns(row_max))[1])
            dy = xp.permute_dims(dy, (1, 0, 2, 3))
            # a chunk's scratch: the two halves routed along the rows and their interleaving, twice its dx
            chunk = batch_chunk(batch, 2 * channels * height * width * precision.itemsize(dy.dtype), xp)
            if chunk >= batch:
                dx = routed(dy, trees, batch)
                if (rows, cols) != (height, width):
                    dx = xpx.pad(dx, ((0, 0), (0, 0), (0, height - rows), (0, width - cols)))
                return xp.permute_dims(dx, (1, 0, 2, 3))
            # a few images at a time under the workspace limit: the routing's temporaries are a
            # chunk's, and only dx is input-sized
            covered = (rows, cols) == (height, width)
            dx = (xp.empty if covered else xp.zeros)((channels, batch, height, width), dtype=dy.dtype,
                                                     device=native_device(dy))
            for start in range(0, batch, chunk):
                images = slice(start, min(start + chunk, batch))
                part = routed(dy[:, images, ...], tuple(_tree_slice(tree, images) for tree in trees),
                              images.stop - start)
                dx[:, images, :rows, :cols] = part
            return xp.permute_dims(dx, (1, 0, 2, 3))

        return xp.permute_dims(y, (1, 0, 2, 3)), backprop


class AvgPool2D(_Pool2D):
    """Mean over each window; zero padding counts in the mean (PyTorch's ``count_include_pad=True``)."""

    def forward(self, x: Any, *, train: bool, input_grad: bool) -> tuple[Any, Backprop]:
        xp = array_namespace(x)
        out_hw, windows = self._windows(x)
        padded = pad_hw(xp.permute_dims(x, (1, 0, 2, 3)), self.pads)
        scale = 1.0 / len(windows)
        total = padded[:, :, windows[0][0], windows[0][1]]
        for hs, ws in windows[1:]:
            total = total + padded[:, :, hs, ws]
        padded_shape = tuple(padded.shape)

        def backprop(dy: Any) -> Any:
            part = xp.permute_dims(dy, (1, 0, 2, 3)) * scale
            return xp.permute_dims(self._scatter([part] * len(windows), windows, out_hw, padded_shape, dy), (1, 0, 2, 3))

        return xp.permute_dims(total * scale, (1, 0, 2, 3)), backprop


class GlobalAvgPool2D(Layer):
    """Mean over all pixels: (N, C, H, W) -> (N, C)."""

    input_rank = 4

    def forward(self, x: Any, *, train: bool, input_grad: bool) -> tuple[Any, Backprop]:
        xp = array_namespace(x)
        shape = tuple(x.shape)
        scale = 1.0 / (shape[2] * shape[3])

        def backprop(dy: Any) -> Any:
            spread = xp.broadcast_to(xp.reshape(dy * scale, (shape[0], shape[1], 1, 1)), shape)
            return xp.asarray(spread, copy=True)

        return xp.mean(x, axis=(2, 3)), backprop

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        self._check_rank(input_shape)
        return (input_shape[0], input_shape[1])

    def expected_input(self) -> str:
        return "(N, C, H, W)"
