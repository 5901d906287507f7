"""Losses: ``value, backprop = loss(pred, target, sample_weight=None)``; ``backprop()`` returns dL/dpred.

Each loss is the mean over the batch. With ``sample_weight`` (one number per sample, on the
device of ``pred``) each sample's loss is multiplied by its weight and the sum still divided by
the batch size (Keras' ``sum_over_batch_size``). Cross-entropies work from logits (fused,
numerically stable) by default and take ``label_smoothing``. Labels are checked on the host once,
before training, by ``xpnn.validation.check_targets``. Under a mixed dtype policy the loss (and its
softmax) is computed in float32 (:func:`xpnn.precision.variable`), whatever the model's output dtype.
"""
from __future__ import annotations

from typing import Any, Callable

from array_api_compat import array_namespace

from . import precision
from .backend import native_device
from .errors import ShapeError
from .layers.activations import sigmoid
from .optim.arguments import number

__all__ = ["Loss", "BinaryCrossEntropy", "CrossEntropy", "MeanSquaredError", "get_loss"]


class Loss:
    """Base class. ``task`` tells metrics how to read predictions: binary, multiclass or regression."""

    task = "regression"

    def __call__(self, pred: Any, target: Any, sample_weight: Any = None) -> tuple[Any, Callable[[], Any]]:
        raise NotImplementedError

    def predicted_classes(self, pred: Any) -> Any:
        """Class indices (or 0/1) from model outputs, for accuracy."""
        raise NotImplementedError(f"{type(self).__name__} has no classes")

    def config(self) -> dict[str, Any]:
        return {}

    def describe(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"


def _check_batch(name: str, pred: Any, target: Any, sample_weight: Any = None) -> None:
    if pred.shape[0] != target.shape[0]:
        raise ShapeError(f"{name}: predictions have {pred.shape[0]} samples, targets {target.shape[0]}")
    if sample_weight is not None and tuple(sample_weight.shape) != (pred.shape[0],):
        raise ShapeError(f"{name}: sample_weight must have shape ({pred.shape[0]},), one weight per sample, got "
                         f"{tuple(sample_weight.shape)}")


def _weights_like(pred: Any, sample_weight: Any) -> Any:
    """The per-sample weights as ``pred``'s dtype, shaped to broadcast over each sample's outputs."""
    xp = array_namespace(pred)
    return xp.reshape(xp.astype(sample_weight, pred.dtype, copy=False), (pred.shape[0],) + (1,) * (pred.ndim - 1))


def _smoothing(owner: str, value: Any) -> float:
    return number(owner, "label_smoothing", value, ("a number in [0, 1]", lambda v: 0.0 <= v <= 1.0))


class BinaryCrossEntropy(Loss):
    """Two-class cross-entropy. ``from_logits=True``: pred is a logit, the sigmoid is fused (no log(0),
    no overflow at any logit size). Otherwise pred is a probability, clipped to [eps, 1 - eps].
    ``label_smoothing=s`` trains against ``y * (1 - s) + s / 2`` (Keras' ``BinaryCrossentropy``)."""

    task = "binary"

    def __init__(self, from_logits: bool = True, eps: float = 1e-7, label_smoothing: float = 0.0) -> None:
        self.label_smoothing = _smoothing("BinaryCrossEntropy", label_smoothing)
        self.from_logits = bool(from_logits)
        self.eps = float(eps)

    def __call__(self, pred: Any, target: Any, sample_weight: Any = None) -> tuple[Any, Callable[[], Any]]:
        pred = precision.variable(pred)
        xp = array_namespace(pred)
        _check_batch("BinaryCrossEntropy", pred, target, sample_weight)
        y = xp.reshape(xp.astype(target, pred.dtype), tuple(pred.shape))
        if self.label_smoothing:
            y = y * (1.0 - self.label_smoothing) + 0.5 * self.label_smoothing
        n = float(pred.shape[0])
        w = None if sample_weight is None else _weights_like(pred, sample_weight)
        if self.from_logits:
            z = pred
            # max(z, 0) - z*y + log(1 + exp(-|z|)): exact for every z, exp never overflows
            losses = xp.maximum(z, xp.zeros_like(z)) - z * y + xp.log1p(xp.exp(-xp.abs(z)))

            def gradient() -> Any:
                return sigmoid(z) - y
        else:
            # minimum/maximum, not clip: array-api-compat's CuPy clip indexes with boolean masks (syncs)
            p = xp.minimum(xp.maximum(pred, self.eps), 1.0 - self.eps)
            losses = -(y * xp.log(p) + (1.0 - y) * xp.log(1.0 - p))
            inside = (pred > self.eps) & (pred < 1.0 - self.eps)

            def gradient() -> Any:
                grad = (p - y) / (p * (1.0 - p))
                return xp.where(inside, grad, xp.zeros_like(grad))
        value = xp.sum(losses if w is None else losses * w) / n

        def backprop() -> Any:
            grad = gradient()
            return grad * (1.0 / n) if w is None else grad * (w * (1.0 / n))

        return value, backprop

    def predicted_classes(self, pred: Any) -> Any:
        xp = array_namespace(pred)
        threshold = 0.0 if self.from_logits else 0.5
        return xp.astype(pred > threshold, xp.int64)

    def config(self) -> dict[str, Any]:
        return {"from_logits": self.from_logits, **_smoothing_config(self.label_smoothing)}


def _smoothing_config(label_smoothing: float) -> dict[str, Any]:
    """``label_smoothing`` for a loss's config when it is used (older files and reprs stay as they were)."""
    return {"label_smoothing": label_smoothing} if label_smoothing else {}


class CrossEntropy(Loss):
    """Softmax cross-entropy on (N, C) logits; targets are integer labels (N,) or one-hot/soft (N, C).

    The softmax is fused: log-softmax is computed as ``z - max - log(sum(exp(z - max)))``.
    ``label_smoothing=s`` trains against ``y * (1 - s) + s / C`` (``torch.nn.CrossEntropyLoss``'s
    ``label_smoothing``, Keras' ``CategoricalCrossentropy``'s).
    """

    task = "multiclass"

    def __init__(self, label_smoothing: float = 0.0) -> None:
        self.label_smoothing = _smoothing("CrossEntropy", label_smoothing)

    def __call__(self, pred: Any, target: Any, sample_weight: Any = None) -> tuple[Any, Callable[[], Any]]:
        pred = precision.variable(pred)
        xp = array_namespace(pred)
        _check_batch("CrossEntropy", pred, target, sample_weight)
        if pred.ndim != 2:
            raise ShapeError(f"CrossEntropy expects (N, classes) logits, got shape {tuple(pred.shape)}")
        n, classes = pred.shape
        labels = target.ndim == 1
        if labels:
            y = xp.astype(xp.reshape(target, (n, 1)) == xp.arange(classes, device=native_device(pred)), pred.dtype)
        else:
            y = xp.astype(target, pred.dtype, copy=False)
        if self.label_smoothing:
            y = y * (1.0 - self.label_smoothing) + self.label_smoothing / classes
        w = None if sample_weight is None else _weights_like(pred, sample_weight)
        shifted = pred - xp.max(pred, axis=1, keepdims=True)
        exp = xp.exp(shifted)
        total = xp.sum(exp, axis=1, keepdims=True)
        log_probs = shifted - xp.log(total)
        value = xp.sum((y if w is None else y * w) * log_probs) * (-1.0 / float(n))

        def backprop() -> Any:
            probs = exp / total
            # the gradient is probs * sum(y) - y; one-hot rows of labels (smoothed or not) sum to 1
            grad = probs - y if labels else probs * xp.sum(y, axis=1, keepdims=True) - y
            if w is None:
                grad *= 1.0 / float(n)
            else:
                grad *= w * (1.0 / float(n))
            return grad

        return value, backprop

    def predicted_classes(self, pred: Any) -> Any:
        return array_namespace(pred).argmax(pred, axis=1)

    def config(self) -> dict[str, Any]:
        return _smoothing_config(self.label_smoothing)


class MeanSquaredError(Loss):
    """Mean of squared errors over every element."""

    def __call__(self, pred: Any, target: Any, sample_weight: Any = None) -> tuple[Any, Callable[[], Any]]:
        pred = precision.variable(pred)
        xp = array_namespace(pred)
        _check_batch("MeanSquaredError", pred, target, sample_weight)
        size = 1
        for d in pred.shape:
            size *= int(d)
        if target.shape != pred.shape:
            target = xp.reshape(target, tuple(pred.shape))
        diff = pred - xp.astype(target, pred.dtype)
        if sample_weight is None:
            return xp.sum(diff * diff) / float(size), lambda: diff * (2.0 / size)
        w = _weights_like(pred, sample_weight)
        return xp.sum(diff * diff * w) / float(size), lambda: diff * (w * (2.0 / size))


_BY_NAME = {"binary_cross_entropy": BinaryCrossEntropy, "bce": BinaryCrossEntropy,
            "cross_entropy": CrossEntropy, "mse": MeanSquaredError, "mean_squared_error": MeanSquaredError}
_BY_CLASS = {cls.__name__: cls for cls in (BinaryCrossEntropy, CrossEntropy, MeanSquaredError)}


def get_loss(spec: "str | Loss", **kwargs: Any) -> Loss:
    """A Loss from an instance, a short name (``"cross_entropy"``, ``"bce"``, ``"mse"``) or class name."""
    if isinstance(spec, Loss):
        return spec
    cls = _BY_NAME.get(str(spec).lower()) or _BY_CLASS.get(str(spec))
    if cls is None:
        raise ValueError(f"unknown loss {spec!r}; choose one of {', '.join(sorted(_BY_NAME))}")
    return cls(**kwargs)
