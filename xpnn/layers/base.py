"""Layer and Parameter: a layer holds parameters and maps an input to (output, backprop).

``y, backprop = layer(x, train=True)``; ``dx = backprop(dy)`` adds into each ``Parameter.grad``
and returns dL/dx. The closure keeps what the backward pass needs, so nothing is cached on the
layer and inference (``y, _ = layer(x)``) keeps nothing alive once the result is dropped.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable, Iterator

from array_api_compat import array_namespace

from .. import backend
from ..errors import DataError, ShapeError

Backprop = Callable[[Any], Any]

__all__ = ["Layer", "Parameter", "Backprop", "LoadReport", "layer_class", "layer_spec", "layer_from_spec",
           "recomputing", "is_recomputing", "backprop_ran_twice", "zero_grads", "join_path"]

_recomputing = [False]


@contextlib.contextmanager
def recomputing() -> Iterator[None]:
    """Inside: forward passes are a checkpointed block's second run, made only to rebuild what its
    backward pass needs. Layers with side effects skip them (BatchNorm's running statistics are
    updated once, by the first run)."""
    before = _recomputing[0]
    _recomputing[0] = True
    try:
        yield
    finally:
        _recomputing[0] = before


def backprop_ran_twice(layer: "Layer") -> RuntimeError:
    """The error of a backprop called a second time, where its first run released (or reused) what
    the forward pass kept for it: the price of freeing saved arrays as early as possible."""
    return RuntimeError(f"{layer.describe()}: this forward pass's backprop already ran, and released what the "
                        f"forward kept; run the forward pass again for another backward pass")


def is_recomputing() -> bool:
    """Whether the forward pass now running is a checkpointed block's second run (:func:`recomputing`)."""
    return _recomputing[0]


class Parameter:
    """A trainable array (``value``) and the gradient accumulated for it (``grad``, or None).

    ``name`` is the dotted path from the model's root (``"3.body.0.weight"``). A frozen
    parameter (``trainable`` False, set through :attr:`Layer.trainable`) ignores gradients, so
    no optimizer ever moves it.
    """

    __slots__ = ("name", "value", "_grad", "trainable", "_grad_in")

    def __init__(self, value: Any, name: str = "") -> None:
        self.name = name
        self.value = value
        self._grad: Any = None
        self._grad_in: tuple[Any, int] | None = None
        self.trainable = True

    @property
    def grad(self) -> Any:
        """The gradient accumulated for ``value`` since it was last set to None."""
        return self._grad

    @grad.setter
    def grad(self, value: Any) -> None:
        if value is not self._grad:  # a new gradient (``p.grad *= s`` keeps the old one)
            self._grad_in = None  # where the old one lay no longer matters, nor stays alive
        self._grad = value

    def set_grad_in(self, buffer: Any, lo: int) -> None:
        """Make ``grad`` the view ``buffer[lo:lo + size]`` of a flat 1-d buffer (the data-parallel
        all-reduce leaves the gradients so), remembering where it lies: see :meth:`grad_location`."""
        self.grad = array_namespace(buffer).reshape(buffer[lo:lo + self.size], self.shape)
        self._grad_in = (buffer, lo)

    def grad_location(self) -> tuple[Any, int] | None:
        """``(buffer, lo)`` while ``grad`` is the view :meth:`set_grad_in` made, else None.

        An optimizer takes gradients that lie one after the other in one buffer as a slice of it,
        instead of copying them into its own flat gradient.
        """
        return self._grad_in

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.value.shape)

    @property
    def size(self) -> int:
        size = 1
        for n in self.value.shape:
            size *= int(n)
        return size

    def accumulate(self, grad: Any) -> None:
        """Add ``grad`` to ``self.grad`` (the first contribution is stored without a copy);
        a frozen parameter keeps no gradient. A gradient computed in a 16-bit compute dtype (a mixed
        dtype policy) is cast to the parameter's dtype first: gradients are variables, float32."""
        if self.trainable:
            if grad.dtype != self.value.dtype:
                grad = array_namespace(grad).astype(grad, self.value.dtype)
            self.grad = grad if self.grad is None else self.grad + grad

    def zero_grad(self) -> None:
        """Drop the gradient (``grad`` becomes None, PyTorch's ``set_to_none``): the next backward
        pass starts from nothing and no array is kept alive or filled with zeros."""
        self.grad = None

    def __repr__(self) -> str:
        return f"Parameter({self.name!r}, shape={self.shape})"


def join_path(path: str, name: "str | int") -> str:
    """``name`` under the dotted ``path`` (``"3.body"``, ``0`` -> ``"3.body.0"``), ``name`` alone at the
    root (``path`` ""): how every parameter, buffer and layer inside a model is named."""
    return f"{path}.{name}" if path else str(name)


def zero_grads(params: Iterable[Parameter]) -> None:
    """:meth:`Parameter.zero_grad` for each of ``params``: what layers, optimizers and the training
    step call to clear gradients."""
    for param in params:
        param.zero_grad()


_REGISTRY: dict[str, type["Layer"]] = {}


def layer_class(name: str) -> type["Layer"]:
    """The Layer subclass saved under ``name`` in a model file."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown layer type {name!r}; known: {', '.join(sorted(_REGISTRY))}") from None


def layer_spec(layer: "Layer") -> dict[str, Any]:
    """The JSON-able architecture of ``layer`` (containers include their children): type and config."""
    return {"type": type(layer).__name__, "config": layer.config()}


def layer_from_spec(spec: Any) -> "Layer":
    """Rebuild a layer (and everything inside it) from :func:`layer_spec`'s output."""
    if not isinstance(spec, dict) or not isinstance(spec.get("type"), str) or not isinstance(spec.get("config"), dict):
        raise ValueError(f"a layer entry must be {{'type': name, 'config': {{...}}}}, got {str(spec)[:80]}")
    return layer_class(spec["type"]).from_config(spec["config"])


@dataclass
class LoadReport:
    """What :meth:`Layer.load_state_dict` did: the names it loaded, the model's names the state
    lacks (``missing``), the state's names the model lacks (``unexpected``) and the names whose
    shapes differ (``mismatched``: name, saved shape, model shape), each left as it was."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)

    def describe(self) -> str:
        """One line: counts, then the names that were not loaded."""
        parts = [f"loaded {len(self.loaded)} arrays"]
        if self.missing:
            parts.append(f"missing from the state: {', '.join(self.missing)}")
        if self.unexpected:
            parts.append(f"not in the model: {', '.join(self.unexpected)}")
        if self.mismatched:
            parts.append("different shapes: " + ", ".join(f"{name} (saved {saved}, model {mine})"
                                                         for name, saved, mine in self.mismatched))
        return "; ".join(parts)


def _check_real_array(key: str, value: Any) -> None:
    """TypeError naming ``key`` unless ``value`` is an array of real numbers (not bool, complex, objects)."""
    try:
        real = backend.is_array(value) and backend.dtype_name(value.dtype) != "bool"
    except TypeError:  # a dtype that is not a real number type
        real = False
    if not real:
        kind = str(value.dtype) if backend.is_array(value) else type(value).__name__
        raise TypeError(f"{key} must be an array of real numbers, got {kind}")


def _check_fits_dtype(key: str, value: Any, dtype: Any) -> None:
    """DataError naming ``key`` if ``value`` holds finite values that ``dtype`` cannot hold: the
    cast would silently turn them into inf."""
    xp = array_namespace(value)
    source, target = backend.dtype_name(value.dtype), backend.dtype_name(dtype)
    if not (source.startswith("float") and target.startswith("float")):
        return
    largest = xp.finfo(getattr(xp, target)).max
    if largest < xp.finfo(value.dtype).max and bool(xp.any(xp.isfinite(value) & (xp.abs(value) > largest))):
        raise DataError(f"{key} holds values too large for {target} (beyond {largest:.3g}, they would become inf)")


class Layer:
    """Base class. Subclasses implement ``forward`` and, if they change the shape, ``output_shape``.

    Subclasses that hold parameters list their attribute names in ``param_names`` (and running
    statistics in ``buffer_names``) and return their constructor arguments from ``config``.
    """

    param_names: ClassVar[tuple[str, ...]] = ()
    buffer_names: ClassVar[tuple[str, ...]] = ()
    #: the input rank the layer accepts (None: any rank >= 1)
    input_rank: ClassVar[int | None] = None
    #: whether forward draws random numbers in training (a checkpointed block then replays them)
    draws_random: ClassVar[bool] = False
    #: the dotted path from the model's root, set by the container that holds the layer ("" at the root)
    path: str = ""
    _trainable: bool = True

    def __init_subclass__(cls, register: bool = True, **kwargs: Any) -> None:
        """Make the subclass loadable from model files under its name; ``register=False`` for a
        subclass that is saved as its base (``xpnn.Sequential`` is a ``layers.Sequential`` on disk)."""
        super().__init_subclass__(**kwargs)
        if register:
            _REGISTRY[cls.__name__] = cls

    def __call__(self, x: Any, train: bool = False, input_grad: bool = True) -> tuple[Any, Backprop]:
        """Check ``x``'s shape, then run ``forward``. ``input_grad=False`` lets backprop skip dx."""
        return self.apply(x, train=train, input_grad=input_grad)

    def apply(self, x: Any, *, train: bool, input_grad: bool) -> tuple[Any, Backprop]:
        """How a container runs this layer: the shape check, then ``forward``. Containers skip the
        check of their whole subtree, since each layer inside checks its own input."""
        self.output_shape(tuple(x.shape))
        return self.forward(x, train=train, input_grad=input_grad)

    def forward(self, x: Any, *, train: bool, input_grad: bool) -> tuple[Any, Backprop]:
        raise NotImplementedError

    # ---- shapes -------------------------------------------------------------------------

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The output shape for ``input_shape`` (batch first); raises ShapeError if it does not fit."""
        self._check_rank(input_shape)
        return tuple(input_shape)

    def _check_rank(self, input_shape: tuple[int, ...]) -> None:
        rank = self.input_rank
        if rank is not None and len(input_shape) != rank:
            raise ShapeError(
                f"{self.describe()} expects a rank-{rank} input {self.expected_input()}, "
                f"got shape {tuple(input_shape)} (rank {len(input_shape)})"
            )
        if len(input_shape) == 0:
            raise ShapeError(f"{self.describe()} expects a batch, got a scalar (shape ())")

    def expected_input(self) -> str:
        """A short picture of the expected input shape for error messages, like ``(N, 784)``."""
        return ""

    # ---- the tree of layers -------------------------------------------------------------

    def children(self) -> list[tuple[str, "Layer"]]:
        """The layers directly inside this one, with their names in the path (containers only)."""
        return []

    def child_inputs(self, input_shape: tuple[int, ...]) -> list[tuple[str, "Layer", tuple[int, ...]]]:
        """Each child with the input shape it sees when this layer gets ``input_shape`` (for summaries)."""
        return []

    def walk(self, prefix: str = "") -> Iterator[tuple[str, "Layer"]]:
        """``(path, layer)`` for this layer and every layer inside it, parents before children."""
        yield prefix, self
        for name, child in self.children():
            yield from child.walk(join_path(prefix, name))

    def _name_tree(self) -> None:
        """Give every layer inside its path and every parameter its dotted name, relative to this
        layer. A layer object placed twice is refused: its parameters would need one name per
        place in ``state_dict``, optimizer state and model files, and be saved twice."""
        seen: dict[int, str] = {}
        for path, layer in self.walk():
            if id(layer) in seen:
                raise ValueError(
                    f"{type(self).__name__}: the same {type(layer).__name__} object is placed twice, at "
                    f"{seen[id(layer)] or 'the root'} and {path}; xpnn does not share layers between places: "
                    f"build a new layer for each")
            seen[id(layer)] = path
            layer.path = path
            for name in layer.param_names:
                getattr(layer, name).name = join_path(path, name)

    @property
    def trainable(self) -> bool:
        """Whether training updates this layer (for a container: anything inside it). Setting it
        on a container sets it on every layer inside. A frozen layer's parameters get no
        gradient, and a frozen BatchNorm normalizes with its running statistics, in training too."""
        leaves = [layer for _, layer in self.walk() if not layer.children()]
        return any(layer._trainable for layer in leaves) if leaves else self._trainable

    @trainable.setter
    def trainable(self, value: bool) -> None:
        if not isinstance(value, bool):
            raise TypeError(f"{self.describe()}: trainable must be True or False, got {value!r}")
        for _, layer in self.walk():
            layer._trainable = value
            for name in layer.param_names:
                getattr(layer, name).trainable = value

    # ---- parameters and state -------------------------------------------------------------

    def parameters(self, trainable: bool | None = None) -> list[Parameter]:
        """Every parameter of this layer and the layers inside it, in path order; ``trainable=True``
        (what an optimizer gets) or ``False`` keeps only the unfrozen or the frozen ones."""
        return [param for _, layer in self.walk() for param in (getattr(layer, name) for name in layer.param_names)
                if trainable is None or param.trainable == trainable]

    def trainable_parameters(self) -> list[Parameter]:
        """The parameters training updates: ``parameters(trainable=True)``."""
        return self.parameters(trainable=True)

    def zero_grad(self) -> None:
        """Drop the gradient of every parameter of this layer and the layers inside it."""
        zero_grads(self.parameters())

    def named_state(self) -> dict[str, Any]:
        """Every array (parameters and buffers) of this layer and the layers inside it, on its
        device, keyed by dotted path (``"3.body.0.weight"``)."""
        return {join_path(path, name): value
                for path, layer in self.walk() for name, value in layer.state().items()}

    def state_dict(self) -> dict[str, Any]:
        """Host (NumPy) copies of every parameter and buffer, keyed by dotted path."""
        return {key: backend.to_numpy(value).copy() for key, value in self.named_state().items()}

    def load_state_dict(self, arrays: dict[str, Any], strict: bool = True) -> LoadReport:
        """Load host arrays (as from :meth:`state_dict`) onto the layers' device; returns a :class:`LoadReport`.

        ``strict=True`` requires exactly the model's names and shapes. ``strict=False`` loads every
        entry whose name and shape match and leaves the rest; it raises if nothing matched. Every
        array is checked and moved before any is assigned, so a refused load changes nothing: a
        value the model names that is not an array of real numbers raises TypeError, one holding
        finite values its dtype cannot hold (float64 beyond float32's range) raises
        :class:`~xpnn.errors.DataError` instead of loading them as inf.
        """
        mine = self.named_state()
        report = LoadReport()
        for key, value in mine.items():
            if key not in arrays:
                report.missing.append(key)
                continue
            _check_real_array(key, arrays[key])
            if tuple(arrays[key].shape) != tuple(value.shape):
                report.mismatched.append((key, tuple(int(d) for d in arrays[key].shape), tuple(value.shape)))
            else:
                _check_fits_dtype(key, arrays[key], value.dtype)
                report.loaded.append(key)
        report.unexpected = [key for key in arrays if key not in mine]
        if strict and (report.missing or report.unexpected or report.mismatched):
            error = ShapeError if report.mismatched else ValueError
            raise error(f"state does not match the model: {report.describe()}")
        if mine and not report.loaded:
            raise ValueError(f"nothing in the state matches the model: {report.describe()}")
        owners = {join_path(path, name): (layer, name)
                  for path, layer in self.walk() for name in layer.state()}
        moved = {key: backend.to_device(arrays[key], backend.device_of(mine[key]), dtype=mine[key].dtype, copy=True)
                 for key in report.loaded}
        for key, value in moved.items():
            layer, name = owners[key]
            layer._set_array(name, value)
        return report

    def buffers(self) -> dict[str, Any]:
        """Non-trained state saved with the model (batch-norm running statistics)."""
        return {name: getattr(self, name) for name in self.buffer_names}

    def state(self) -> dict[str, Any]:
        """Every array the layer owns, by name: parameters and buffers."""
        out = {name: getattr(self, name).value for name in self.param_names}
        out.update(self.buffers())
        return out

    def _set_array(self, name: str, value: Any) -> None:
        if name in self.param_names:
            param = getattr(self, name)
            param.value = value
            param.zero_grad()
        else:
            setattr(self, name, value)

    def to(self, device: "backend.Device | str | None" = None, dtype: str | None = None) -> "Layer":
        """Move (and optionally cast, e.g. ``dtype="float64"``) every array of the layer and the
        layers inside it; returns self."""
        target = backend.resolve(device)
        for _, layer in self.walk():
            for name, value in layer.state().items():
                layer._set_array(name, backend.to_device(value, target, dtype=dtype))
            if dtype is not None and "dtype" in vars(layer):
                layer.dtype = dtype
        return self

    def config(self) -> dict[str, Any]:
        """Constructor arguments, JSON-serialisable, so ``type(self)(**config)`` rebuilds the layer."""
        return {}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "Layer":
        """The layer :meth:`config` describes (containers rebuild their children too)."""
        return cls(**config)

    def describe(self) -> str:
        """How errors name this layer: ``Linear(in_features=784, ...)`` plus its path in a model."""
        return self._title() + self._where()

    def _title(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k not in ("init", "dtype"))
        return f"{type(self).__name__}({args})"

    def _where(self) -> str:
        return f" (layer {self.path})" if self.path else ""

    def __repr__(self) -> str:
        return self.describe()
