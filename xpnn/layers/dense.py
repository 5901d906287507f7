"""Linear (dense, fully connected) layer: ``y = x @ W + b`` on (N, in_features) inputs."""
from __future__ import annotations

from typing import Any

from array_api_compat import array_namespace

from .. import precision
from ..errors import ShapeError
from ..init import initialize
from ..validation import check_integer
from .base import Backprop, Layer, Parameter

__all__ = ["Linear"]


class Linear(Layer):
    """Fully connected layer. ``weight`` is stored (in_features, out_features) so the forward pass
    is one matmul without a transpose; the tutorials' ``W`` of shape (out, in) is its transpose.
    """

    param_names = ("weight", "bias")
    input_rank = 2

    def __init__(self, in_features: int, out_features: int, bias: bool = True, init: Any = "he",
                 dtype: str = "float32") -> None:
        in_features = check_integer("Linear", "in_features", in_features)
        out_features = check_integer("Linear", "out_features", out_features)
        self.in_features, self.out_features = in_features, out_features
        self.use_bias, self.init, self.dtype = bias, init, dtype
        self.weight = Parameter(initialize(init, (in_features, out_features), in_features, out_features, dtype),
                                "weight")
        self.bias = Parameter(initialize("zeros", (out_features,), in_features, out_features, dtype), "bias") \
            if bias else None
        if not bias:
            self.param_names = ("weight",)

    def forward(self, x: Any, *, train: bool, input_grad: bool) -> tuple[Any, Backprop]:
        xp = array_namespace(x)
        weight, bias = self.weight, self.bias
        x, w = precision.compute(x), precision.compute(weight.value)
        y = precision.matmul(x, w)
        if bias is not None:
            y = y + precision.compute(bias.value)

        def backprop(dy: Any) -> Any:
            dy = precision.compute(dy)
            if weight.trainable:  # a frozen layer skips its weight-gradient matmul
                weight.accumulate(precision.matmul(xp.matrix_transpose(x), dy))
                if bias is not None:
                    bias.accumulate(xp.sum(dy, axis=0, dtype=bias.value.dtype))
            return precision.matmul(dy, xp.matrix_transpose(w)) if input_grad else None

        return y, backprop

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        self._check_rank(input_shape)
        if input_shape[1] != self.in_features:
            raise ShapeError(
                f"{self.describe()} expects {self.in_features} input features (shape (N, {self.in_features})), "
                f"got {input_shape[1]} (input shape {tuple(input_shape)})"
            )
        return (input_shape[0], self.out_features)

    def expected_input(self) -> str:
        return f"(N, {self.in_features})"

    def config(self) -> dict[str, Any]:
        return {"in_features": self.in_features, "out_features": self.out_features, "bias": self.use_bias,
                "init": self.init if isinstance(self.init, str) else "custom", "dtype": self.dtype}
