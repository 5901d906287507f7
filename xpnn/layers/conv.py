"""Conv2D on NCHW images: one im2col gather (a strided slice per kernel offset) and one matmul.

Inside the layer the batch is handled channel-major, as ``(C, N, H, W)``: the gathered columns
are ``(C*kh*kw + 1, N*Ho*Wo)``, the output ``W @ cols`` comes out as ``(O, N, Ho, Wo)`` and is
returned as a transposed NCHW *view* of that memory, so no layout copy is made on the way out,
and the next convolution's channel-major view of it is free. The extra row of ones in ``cols``
folds the bias into the matmul (its gradient comes out as the last column of ``dW``). The input
gradient is ``W.T @ dy`` added back offset by offset (col2im), a few images at a time.

Why this shape (on NumPy; ``benchmarks/bench_cnn.py`` times it): channel-major im2col and col2im
copy faster than NHWC ones; one large matmul over all kernel offsets keeps BLAS near its large-matrix
rate, which a matmul per offset, accumulated, does not; and col2im costs less than computing dx as a
convolution of the padded dy. The matmuls are most of the time, im2col and col2im (single-threaded
copies) the rest.
"""
from __future__ import annotations

from typing import Any

from array_api_compat import array_namespace

from .. import precision
from ..backend import native_device
from ..errors import ShapeError
from ..init import initialize
from ..validation import check_integer
from .base import Backprop, Layer, Parameter
from .windows import Pair, add_into, as_config, as_pair, pad_hw, spatial_output_shape, window_slices
from .workspace import batch_chunk

__all__ = ["Conv2D"]


class Conv2D(Layer):
    """2-D convolution (cross-correlation, as PyTorch) of NCHW input; weight is (out, in, kh, kw).

    ``padding`` is an int, a pair (rows, cols), ``"valid"`` (none) or ``"same"`` (stride 1 only;
    an odd total puts the extra row/column at the bottom/right, as PyTorch).
    """

    param_names = ("weight", "bias")
    input_rank = 4

    def __init__(self, in_channels: int, out_channels: int, kernel_size: "int | Pair", stride: "int | Pair" = 1,
                 padding: "int | Pair | str" = 0, dilation: "int | Pair" = 1, bias: bool = True, init: Any = "he",
                 dtype: str = "float32") -> None:
        in_channels = check_integer("Conv2D", "in_channels", in_channels)
        out_channels = check_integer("Conv2D", "out_channels", out_channels)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = as_pair(kernel_size, "kernel_size", "Conv2D")
        self.stride = as_pair(stride, "stride", "Conv2D")
        self.dilation = as_pair(dilation, "dilation", "Conv2D")
        self.arguments = {"kernel_size": kernel_size, "stride": stride, "padding": padding, "dilation": dilation}
        self.pads = self._resolve_padding(padding)
        self.use_bias, self.init, self.dtype = bool(bias), init, dtype
        kh, kw = self.kernel_size
        fan_in, fan_out = in_channels * kh * kw, out_channels * kh * kw
        self.weight = Parameter(initialize(init, (out_channels, in_channels, kh, kw), fan_in, fan_out, dtype),
                                "weight")
        self.bias = Parameter(initialize("zeros", (out_channels,), fan_in, fan_out, dtype), "bias") \
            if bias else None
        if not bias:
            self.param_names = ("weight",)

    def _resolve_padding(self, padding: Any) -> tuple[Pair, Pair]:
        if padding == "valid":
            return (0, 0), (0, 0)
        if padding == "same":
            if self.stride != (1, 1):
                raise ValueError(f"Conv2D: padding='same' needs stride 1, got stride {self.stride}")
            totals = [d * (k - 1) for d, k in zip(self.dilation, self.kernel_size)]
            return (totals[0] // 2, totals[0] - totals[0] // 2), (totals[1] // 2, totals[1] - totals[1] // 2)
        if isinstance(padding, str):
            raise ValueError(f"Conv2D: padding must be an int, a pair, 'valid' or 'same', got {padding!r}")
        rows, cols = as_pair(padding, "padding", "Conv2D", minimum=0)
        return (rows, rows), (cols, cols)

    def forward(self, x: Any, *, train: bool, input_grad: bool) -> tuple[Any, Backprop]:
        xp = array_namespace(x)
        x = precision.compute(x)
        n, c, h, w = (int(d) for d in x.shape)
        out_hw = spatial_output_shape(self, tuple(x.shape), self.kernel_size, self.stride, self.pads, self.dilation)
        out_c, taps = self.out_channels, self.kernel_size[0] * self.kernel_size[1]
        weight, bias = self.weight, self.bias
        rows = taps * c
        pixels = out_hw[0] * out_hw[1]
        # (O, C, kh, kw) -> (O, kh*kw*C): the row order of the columns is (offset, channel)
        w_mat = xp.reshape(xp.permute_dims(weight.value, (0, 2, 3, 1)), (out_c, rows))
        if bias is not None:
            w_mat = xp.concat([w_mat, xp.reshape(bias.value, (out_c, 1))], axis=1)
        w_mat = precision.compute(w_mat)
        images = xp.permute_dims(x, (1, 0, 2, 3))
        windows = list(window_slices(self.kernel_size, self.stride, out_hw, self.dilation))
        chunk = batch_chunk(n, self.column_bytes(tuple(x.shape), precision.itemsize(x.dtype)), xp)
        pads = self.pads
        ones = None if bias is None else xp.ones((1, 1, 1, 1), dtype=x.dtype, device=native_device(x))

        def columns(start: int, stop: int) -> Any:
            """The im2col matrix of images ``start:stop``: one gather of every kernel offset's strided
            window, plus a row of ones for the bias; ``(rows [+ 1], images * pixels)``."""
            padded = pad_hw(images[:, start:stop, :, :], pads)
            parts = [padded[:, :, hs, ws] for hs, ws in windows]
            if ones is not None:
                parts.append(xp.broadcast_to(ones, (1, stop - start, *out_hw)))
            return xp.reshape(xp.concat(parts, axis=0), (rows + (bias is not None), (stop - start) * pixels))

        if chunk >= n:
            y = precision.matmul(w_mat, columns(0, n))
        else:
            y = xp.empty((out_c, n * pixels), dtype=x.dtype, device=native_device(x))
            for start in range(0, n, chunk):
                stop = min(start + chunk, n)
                y[:, start * pixels:stop * pixels] = precision.matmul(w_mat, columns(start, stop))
        y = xp.permute_dims(xp.reshape(y, (out_c, n, *out_hw)), (1, 0, 2, 3))

        def backprop(dy: Any) -> Any:
            """Rebuilds the columns chunk by chunk (the forward kept only its input) for the weight
            gradient, and adds the column gradient ``W.T @ dy`` back into dx offset by offset (col2im)."""
            dy_mat = xp.reshape(xp.permute_dims(precision.compute(dy), (1, 0, 2, 3)), (out_c, -1))
            weight_grad = weight.trainable  # a frozen layer skips its weight-gradient matmuls
            if not weight_grad and not input_grad:
                return None
            if input_grad:
                w_t = xp.matrix_transpose(w_mat[:, :rows])
                dx = xp.zeros((c, n, h + sum(pads[0]), w + sum(pads[1])), dtype=x.dtype, device=native_device(dy))
            dw_mat = None
            for start in range(0, n, chunk):
                stop = min(start + chunk, n)
                dy_part = dy_mat[:, start * pixels:stop * pixels]
                if weight_grad:
                    # computed transposed, (rows, O) = cols @ dy.T: OpenBLAS runs that orientation faster
                    # on convolution shapes, and the result is small; summed over the chunks in the
                    # variable dtype
                    part = precision.variable(precision.matmul(columns(start, stop), xp.matrix_transpose(dy_part)))
                    if dw_mat is None:
                        dw_mat = part
                    else:
                        dw_mat += part
                if input_grad:
                    dcols = xp.reshape(precision.matmul(w_t, dy_part), (taps, c, stop - start, *out_hw))
                    for k, (hs, ws) in enumerate(windows):
                        add_into(dx, (slice(None), slice(start, stop), hs, ws), dcols[k, ...])
            if weight_grad:
                dw_mat = xp.matrix_transpose(dw_mat)
                dw = xp.reshape(dw_mat[:, :rows], (out_c, *self.kernel_size, c))
                weight.accumulate(xp.permute_dims(dw, (0, 3, 1, 2)))
                if bias is not None:
                    bias.accumulate(dw_mat[:, rows])
            if not input_grad:
                return None
            (top, _), (left, _) = pads
            return xp.permute_dims(dx[:, :, top:top + h, left:left + w], (1, 0, 2, 3))

        return y, backprop

    def column_bytes(self, input_shape: tuple[int, ...], itemsize: int = 4) -> int:
        """Bytes of one sample's im2col columns for an input of ``input_shape``: what the workspace
        limit bounds (:mod:`.workspace`)."""
        out_hw = self.output_shape(tuple(input_shape))[2:]
        taps = self.kernel_size[0] * self.kernel_size[1]
        return (taps * self.in_channels + 1) * out_hw[0] * out_hw[1] * itemsize

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        self._check_rank(input_shape)
        if input_shape[1] != self.in_channels:
            raise ShapeError(
                f"{self.describe()} expects {self.in_channels} input channels (input shape "
                f"{self.expected_input()}), got {input_shape[1]} (input shape {tuple(input_shape)})"
            )
        out_hw = spatial_output_shape(self, input_shape, self.kernel_size, self.stride, self.pads, self.dilation)
        return (input_shape[0], self.out_channels, *out_hw)

    def expected_input(self) -> str:
        return f"(N, {self.in_channels}, H, W)"

    def config(self) -> dict[str, Any]:
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                **{name: as_config(value) for name, value in self.arguments.items()}, "bias": self.use_bias,
                "init": self.init if isinstance(self.init, str) else "custom", "dtype": self.dtype}
