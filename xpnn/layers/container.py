"""Containers are layers: ``Sequential`` (children in order) and ``Residual`` (body plus shortcut, added).

A container's forward calls its children's forwards and its backprop calls their backprops in
reverse, summing where a value was used twice (into a new array, never in place on one a branch
still holds). That is all a ResNet needs: no graph, no tape. Parameters are named by their
dotted path from the root container (``"3.body.0.weight"``): the keys of ``state_dict``, of
optimizer state and of model files. The same layer object placed twice is refused (see
:meth:`Layer._name_tree`): xpnn does not share weights between places.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterable, Sequence

from array_api_compat import array_namespace

from .. import backend
from ..errors import ShapeError
from . import activations as _activations
from .base import (Backprop, Layer, backprop_ran_twice, is_recomputing, join_path, layer_from_spec, layer_spec,
                   recomputing)
from .dense import Linear
from .memory import memory_estimate
from .pool import MaxPool2D

__all__ = ["Sequential", "Residual", "checkpointed"]


def _shape_text(shape: Sequence[int]) -> str:
    return "(N, " + ", ".join(map(str, shape[1:])) + ")" if len(shape) > 1 else "(N,)"


class Sequential(Layer):
    """Layers applied in order. ``y, backprop = model(x, train=True)``; ``dx = backprop(dy)``.

    A Sequential is itself a Layer, so it nests inside another Sequential or a :class:`Residual`.
    Its parameters are named by dotted path (``"0.weight"``, ``"3.body.0.weight"``), the keys of
    :meth:`state_dict` and of optimizer state. ``checkpoint=True`` trades compute for memory: in
    training it keeps only its input for backward and runs again inside it (:func:`checkpointed`).
    It holds its children and nothing else: the network you train, with ``fit`` and the
    training session (loss, optimizer, history), is :class:`xpnn.Sequential`, built on this one.
    """

    def __init__(self, layers: Iterable[Layer], checkpoint: bool = False) -> None:
        if isinstance(layers, Layer):
            raise TypeError(f"Sequential takes a list of layers, got a single {type(layers).__name__}; "
                            f"write Sequential([layer])")
        self.layers: list[Layer] = list(layers)
        if not self.layers:
            raise ValueError("Sequential needs at least one layer")
        for index, layer in enumerate(self.layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"Sequential: item {index} is a {type(layer).__name__}, not an xpnn Layer")
        self.checkpoint = _flag(checkpoint, "Sequential")
        self._order = _execution_order(self.layers)
        self._name_tree()

    def children(self) -> list[tuple[str, Layer]]:
        return [(str(index), layer) for index, layer in enumerate(self.layers)]

    # ---- forward / backward ---------------------------------------------------------------

    def __call__(self, x: Any, train: bool = False, input_grad: bool = True) -> tuple[Any, Backprop]:
        """Run every layer. With ``input_grad=False`` the backward pass stops at the first layer
        with trainable parameters and returns None (what training needs: no dL/dx for the data)."""
        device = self._check_input(x)
        with backend.native_device_context(device):
            y, backprop = self.forward(x, train=train, input_grad=input_grad)

        def backprop_on_device(dy: Any) -> Any:
            with backend.native_device_context(device):
                return backprop(dy)

        return y, backprop_on_device

    def apply(self, x: Any, *, train: bool, input_grad: bool) -> tuple[Any, Backprop]:
        return self.forward(x, train=train, input_grad=input_grad)

    def forward(self, x: Any, *, train: bool, input_grad: bool) -> tuple[Any, Backprop]:
        return _maybe_checkpointed(self, x, train=train, input_grad=input_grad)

    def _run(self, x: Any, *, train: bool, input_grad: bool) -> tuple[Any, Backprop]:
        first = 0 if input_grad else self.first_trainable()
        backprops = []
        for index in self._order:
            x, backprop = self.layers[index].apply(x, train=train, input_grad=input_grad or index > first)
            if index >= first:
                backprops.append(backprop)

        return x, release_as_it_goes(backprops, self)

    def first_trainable(self) -> int:
        """The index of the first child holding a trainable parameter (``len(layers)`` if none):
        the backward pass of a training step stops there."""
        for index, layer in enumerate(self.layers):
            if layer.parameters(trainable=True):
                return index
        return len(self.layers)

    def _check_input(self, x: Any) -> backend.Device:
        """The device ``x`` is on, checked to be the model's (the one made current for the work)."""
        try:
            xp = array_namespace(x)
        except TypeError:
            raise TypeError(f"Sequential input must be an array on the model's device ({self.device}), got "
                            f"{type(x).__name__}; use xpnn.to_device(x, model.device)") from None
        params = self.parameters()
        where = backend.device_of(x)
        if not params:
            return where
        if where != self.device:
            raise backend.DeviceError(
                f"Sequential input is on {where} but the model is on {self.device}: move the input with "
                f"xpnn.to_device(x, model.device), or the model with model.to({where.name!r})")
        if not xp.isdtype(x.dtype, "real floating"):
            raise TypeError(f"Sequential input must be floating point ({self.dtype}), got {x.dtype}; scale images "
                            f"with x / 255 or train with fit(..., scale='unit')")
        if x.dtype != params[0].value.dtype:
            raise TypeError(f"Sequential input has dtype {x.dtype} but the model's parameters are {self.dtype}; "
                            f"cast the input or call model.to(dtype=...)")
        return where

    # ---- shapes ---------------------------------------------------------------------------

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        shape = tuple(input_shape)
        for layer in self.layers:
            shape = layer.output_shape(shape)
        return shape

    def child_inputs(self, input_shape: tuple[int, ...]) -> list[tuple[str, Layer, tuple[int, ...]]]:
        out, shape = [], tuple(input_shape)
        for name, layer in self.children():
            out.append((name, layer, shape))
            shape = layer.output_shape(shape)
        return out

    @property
    def input_shape(self) -> tuple[int, ...] | None:
        """One sample's shape (no batch axis) where the layers fix it (:meth:`_fixed_input_shape`),
        else None. A composition remembers nothing; :class:`xpnn.Sequential` records a shape."""
        return self._fixed_input_shape()

    def output_shapes(self, sample_shape: Sequence[int] | None = None) -> list[tuple[int, ...]]:
        """The output shape of each child, for a batch of one sample of ``sample_shape``."""
        sample_shape = sample_shape or self._known_input_shape()
        shape, shapes = (1, *sample_shape), []
        for layer in self.layers:
            shape = layer.output_shape(shape)
            shapes.append(shape)
        return shapes

    def _fixed_input_shape(self) -> tuple[int, ...] | None:
        """The sample shape the layers themselves fix, else None: ``(in_features,)`` when the first
        layer with parameters is a Linear and every layer before it keeps its input's shape (a Conv2D
        fixes only the channels; after a Flatten any shape with that many values fits)."""
        for _, layer in self.walk():
            if layer.children():
                continue
            if layer.param_names:
                return (layer.in_features,) if isinstance(layer, Linear) else None
            if type(layer).output_shape is not Layer.output_shape:
                return None
        return None

    def _known_input_shape(self) -> tuple[int, ...]:
        if self.input_shape is None:
            raise ShapeError("the input shape of this model is unknown: pass summary(input_shape=(C, H, W)), "
                             "or build an xpnn.Sequential first (model.build(sample_shape))")
        return self.input_shape

    # ---- device and description -------------------------------------------------------------

    @property
    def device(self) -> backend.Device:
        params = self.parameters()
        return backend.device_of(params[0].value) if params else backend.current_device()

    @property
    def dtype(self) -> str:
        params = self.parameters()
        return backend.dtype_name(params[0].value.dtype) if params else "float32"

    def count_params(self, trainable: bool | None = None) -> int:
        """The number of parameter values (``trainable=True``/``False``: only unfrozen/frozen ones)."""
        return sum(p.size for p in self.parameters(trainable))

    def config(self) -> dict[str, Any]:
        """The architecture as JSON-able data: each child's type and constructor arguments, nested."""
        return {"layers": [layer_spec(layer) for layer in self.layers],
                **({"checkpoint": True} if self.checkpoint else {})}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "Sequential":
        items = config.get("layers") if isinstance(config, dict) else None
        if not isinstance(items, list):
            raise ValueError(f"a Sequential entry needs a list of layers, got {str(config)[:80]}")
        return cls([layer_from_spec(item) for item in items], checkpoint=config.get("checkpoint", False))

    def _title(self) -> str:
        return f"Sequential({len(self.layers)} layers{', checkpointed' if self.checkpoint else ''})"

    def summary(self, input_shape: Sequence[int] | None = None, print_fn: Any = print, batch_size: int | None = None,
                optimizer: Any = None) -> str:
        """A tree of layers (by path), output shapes (batch axis as N) and parameter counts, with
        trainable and frozen totals; printed and returned. With ``batch_size``, also the training
        memory of a step of that size (:func:`xpnn.layers.memory_estimate`, for ``optimizer``'s state)."""
        sample = tuple(input_shape or self._known_input_shape())
        rows = [("Path", "Layer", "Output shape", "Params")]

        def visit(layer: Layer, path: str, shape: tuple[int, ...], depth: int) -> None:
            params = layer.parameters()
            frozen = " (frozen)" if params and not layer.trainable else ""
            rows.append((path, "  " * depth + layer._title() + frozen, _shape_text(layer.output_shape(shape)),
                         f"{sum(p.size for p in params):,}"))
            for name, child, child_shape in layer.child_inputs(shape):
                visit(child, join_path(path, name), child_shape, depth + 1)

        for name, child, child_shape in self.child_inputs((1, *sample)):
            visit(child, name, child_shape, 0)
        widths = [max(len(r[c]) for r in rows) for c in range(4)]
        line = "-" * (sum(widths) + 6)
        text = [line]
        for k, row in enumerate(rows):
            text.append("  ".join(cell.ljust(w) if c < 3 else cell.rjust(w) for c, (cell, w) in
                                  enumerate(zip(row, widths))).rstrip())
            if k == 0:
                text.append(line)
        text += [line, f"Total parameters: {self.count_params():,}  on {self.device}, {self.dtype}",
                 f"Trainable parameters: {self.count_params(True):,}  frozen: {self.count_params(False):,}"]
        if batch_size is not None:
            text.append(memory_estimate(self, batch_size, sample, optimizer).describe())
        out = "\n".join(text)
        if print_fn is not None:
            print_fn(out)
        return out

    def __repr__(self) -> str:
        inner = ",\n  ".join(repr(layer).replace("\n", "\n  ") for layer in self.layers)
        return f"Sequential([\n  {inner}\n])"


def _flag(value: Any, owner: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{owner}: checkpoint must be True or False, got {value!r}")
    return value


def _maybe_checkpointed(block: Any, x: Any, *, train: bool, input_grad: bool) -> tuple[Any, Backprop]:
    """A container's forward: its ``_run``, checkpointed in training when ``block.checkpoint`` is set
    (and not already inside a checkpointed block's second run, which runs its inner blocks plainly)."""
    if train and block.checkpoint and not is_recomputing():
        return checkpointed(lambda x: block._run(x, train=True, input_grad=input_grad), x, block)
    return block._run(x, train=train, input_grad=input_grad)


def checkpointed(run: Callable[[Any], tuple[Any, Backprop]], x: Any, block: Layer) -> tuple[Any, Backprop]:
    """``run(x)`` (a block's training forward pass) keeping only ``x`` for backward: PyTorch's
    ``torch.utils.checkpoint``, Keras' ``remat``. The backward pass runs ``run(x)`` again, then its
    backprop. The second run draws the same random numbers (dropout masks; augmentation happened
    before the model, in ``x``) and updates no running statistics (:func:`recomputing`), so the
    gradients are those of the plain block. Costs one more forward pass of the block."""
    where = backend.device_of(x)
    snapshot = backend.random_snapshot(where) if any(layer.draws_random for _, layer in block.walk()) else None
    y, _ = run(x)

    def backprop(dy: Any) -> Any:
        replay = contextlib.nullcontext() if snapshot is None else backend.replayed_random(snapshot, where)
        with recomputing(), replay:
            _, rerun_backprop = run(x)
        return rerun_backprop(dy)

    return y, backprop


def release_as_it_goes(backprops: list[Backprop], owner: Layer) -> Backprop:
    """The backward pass of layers run in order: their backprops in reverse, each dropped once it
    has run, so what a layer kept for backward is freed as soon as its gradient is out (as PyTorch
    frees a node's saved tensors), not when the whole backward pass ends. It runs once."""
    pending: list[Backprop] | None = backprops

    def backprop_all(dy: Any) -> Any:
        nonlocal pending
        if pending is None:
            raise backprop_ran_twice(owner)
        todo, pending = pending, None
        if not todo:
            return None
        while todo:
            dy = todo.pop()(dy)
        return dy

    return backprop_all


def _as_sequential(part: Any, role: str) -> Sequential:
    if isinstance(part, Sequential):
        return part
    if isinstance(part, Layer):
        return Sequential([part])
    if isinstance(part, (list, tuple)):
        return Sequential(part)
    raise TypeError(f"Residual: {role} must be a list of layers or a Sequential, got {type(part).__name__}")


class Residual(Layer):
    """``y = activation(body(x) + shortcut(x))``: a skip connection, the block of a ResNet.

    ``body`` and ``shortcut`` are lists of layers or Sequentials (kept as ``.body``/``.shortcut``);
    ``shortcut=None`` is the identity. Backward sums the two branches' input gradients into a
    new array. The branches must give the same shape, else a ShapeError names both and the
    block's path. ``train`` and ``input_grad`` pass through to the children. ``checkpoint=True``:
    in training the block keeps only its input and runs again inside backward (:func:`checkpointed`).
    """

    def __init__(self, body: Any, shortcut: Any = None, activation: Layer | None = None,
                 checkpoint: bool = False) -> None:
        self.body = _as_sequential(body, "body")
        self.shortcut = None if shortcut is None else _as_sequential(shortcut, "shortcut")
        if activation is not None and not isinstance(activation, Layer):
            raise TypeError(f"Residual: activation must be an xpnn Layer or None, got {type(activation).__name__}")
        self.activation = activation
        self.checkpoint = _flag(checkpoint, "Residual")
        self._name_tree()

    def children(self) -> list[tuple[str, Layer]]:
        out: list[tuple[str, Layer]] = [("body", self.body)]
        if self.shortcut is not None:
            out.append(("shortcut", self.shortcut))
        if self.activation is not None:
            out.append(("activation", self.activation))
        return out

    def child_inputs(self, input_shape: tuple[int, ...]) -> list[tuple[str, Layer, tuple[int, ...]]]:
        shape = tuple(input_shape)
        out: list[tuple[str, Layer, tuple[int, ...]]] = [("body", self.body, shape)]
        if self.shortcut is not None:
            out.append(("shortcut", self.shortcut, shape))
        if self.activation is not None:
            out.append(("activation", self.activation, self.body.output_shape(shape)))
        return out

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        main = self.body.output_shape(tuple(input_shape))
        side = tuple(input_shape) if self.shortcut is None else self.shortcut.output_shape(tuple(input_shape))
        self._check_branches(main, side)
        return main if self.activation is None else self.activation.output_shape(main)

    def _check_branches(self, main: tuple[int, ...], side: tuple[int, ...]) -> None:
        if tuple(main) != tuple(side):
            kind = "identity shortcut" if self.shortcut is None else "shortcut"
            raise ShapeError(
                f"{self.describe()}: the body gives shape {tuple(main)} but the {kind} gives {tuple(side)}; "
                f"they must match to be added (a block that changes the width or stride needs a projection "
                f"shortcut, e.g. a 1x1 Conv2D with the body's stride and output channels)")

    def apply(self, x: Any, *, train: bool, input_grad: bool) -> tuple[Any, Backprop]:
        return self.forward(x, train=train, input_grad=input_grad)

    def forward(self, x: Any, *, train: bool, input_grad: bool) -> tuple[Any, Backprop]:
        return _maybe_checkpointed(self, x, train=train, input_grad=input_grad)

    def _run(self, x: Any, *, train: bool, input_grad: bool) -> tuple[Any, Backprop]:
        main, body_backprop = self.body.apply(x, train=train, input_grad=input_grad)
        if self.shortcut is None:
            side, shortcut_backprop = x, None
        else:
            side, shortcut_backprop = self.shortcut.apply(x, train=train, input_grad=input_grad)
        self._check_branches(tuple(main.shape), tuple(side.shape))
        y = main + side
        activation_backprop = None
        if self.activation is not None:
            y, activation_backprop = self.activation.apply(y, train=train, input_grad=True)

        def backprop(dy: Any) -> Any:
            if activation_backprop is not None:
                dy = activation_backprop(dy)
            dx_main = body_backprop(dy)
            dx_side = dy if shortcut_backprop is None else shortcut_backprop(dy)
            return dx_main + dx_side if input_grad else None

        return y, backprop

    def config(self) -> dict[str, Any]:
        return {"body": layer_spec(self.body),
                "shortcut": None if self.shortcut is None else layer_spec(self.shortcut),
                "activation": None if self.activation is None else layer_spec(self.activation),
                **({"checkpoint": True} if self.checkpoint else {})}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "Residual":
        if not isinstance(config, dict) or "body" not in config:
            raise ValueError(f"a Residual entry needs a body, got {str(config)[:80]}")
        shortcut, activation = config.get("shortcut"), config.get("activation")
        return cls(layer_from_spec(config["body"]), None if shortcut is None else layer_from_spec(shortcut),
                   None if activation is None else layer_from_spec(activation),
                   checkpoint=config.get("checkpoint", False))

    def _title(self) -> str:
        kind = "identity" if self.shortcut is None else "projection"
        after = "" if self.activation is None else f", then {self.activation._title()}"
        return f"Residual({kind} shortcut{after}{', checkpointed' if self.checkpoint else ''})"

    def __repr__(self) -> str:
        parts = [f"body={self.body!r}"]
        if self.shortcut is not None:
            parts.append(f"shortcut={self.shortcut!r}")
        if self.activation is not None:
            parts.append(f"activation={self.activation!r}")
        if self.checkpoint:
            parts.append("checkpoint=True")
        inner = ",\n  ".join(part.replace("\n", "\n  ") for part in parts)
        return f"Residual(\n  {inner}\n)"


def _execution_order(layers: list[Layer]) -> list[int]:
    """Layer indices in the order to run them: each ReLU directly followed by a MaxPool2D runs
    after it instead. The two commute (max-pooling picks the same element before or after a
    monotonic ReLU, ties included), and ReLU then touches a quarter of the data."""
    order = list(range(len(layers)))
    i = 0
    while i < len(layers) - 1:
        if type(layers[i]) is _activations.ReLU and type(layers[i + 1]) is MaxPool2D:
            order[i], order[i + 1] = i + 1, i
            i += 2
        else:
            i += 1
    return order
