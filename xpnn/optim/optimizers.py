"""The optimizers: a base class that updates every parameter at once through flat buffers, and
SGD (momentum, Nesterov), Adam, AdamW and RMSprop on top of it (PyTorch's formulations)."""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterable, Mapping, Sequence

from array_api_compat import array_namespace, is_numpy_namespace

from .. import backend
from ..backend import native_device
from ..layers.base import Parameter, zero_grads
from ..validation import check_integer
from .arguments import NON_NEGATIVE, POSITIVE, UNIT, from_spec, number
from .schedules import Schedule, get_schedule

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "RMSprop", "LossScaleOptimizer", "get_optimizer", "OPTIMIZERS"]


@dataclass
class _FlatGroup:
    """Parameters updated together: their values and state arrays are views of these flat buffers."""

    device: backend.Device
    xp: Any
    params: list[Parameter]
    flat: Any
    state: dict[str, Any]
    step: int
    #: each parameter's size as a device array, for per-parameter clipping of the flat gradient (made once)
    sizes: Any = None


def _bounds(params: Sequence[Parameter]) -> list[tuple[int, int]]:
    """Each parameter's ``[lo, hi)`` in a flat buffer holding them in order."""
    bounds, offset = [], 0
    for param in params:
        bounds.append((offset, offset + param.size))
        offset += param.size
    return bounds


def _moved(array: Any, where: backend.Device, dtype: Any) -> Any:
    """``array`` on ``where`` in ``dtype``: itself when it is already there (no trip through the host)."""
    if backend.device_of(array) == where:
        return array if array.dtype == dtype else array_namespace(array).astype(array, dtype)
    return backend.to_device(array, where, dtype=dtype)


def _concat_flat(xp: Any, arrays: Sequence[Any]) -> Any:
    """A new 1-d array holding ``arrays`` one after the other (always a copy, which the buffers need)."""
    return xp.concat([xp.reshape(a, (-1,)) for a in arrays]) if len(arrays) > 1 else \
        xp.asarray(xp.reshape(arrays[0], (-1,)), copy=True)


def _flat_gradient(xp: Any, params: Sequence[Parameter]) -> Any:
    """The gradients of ``params`` one after the other in a 1-d array, copied as little as possible.

    Gradients that already lie one after the other in one buffer (:meth:`Parameter.grad_location`:
    the data-parallel all-reduce leaves each bucket so) are taken as a slice of it; only the runs
    that are not in one buffer are concatenated. With one bucket nothing is copied.
    """
    runs: list[list[Any]] = []  # [buffer, lo, hi] of a run in one buffer, or [None, flat gradient]
    for param in params:
        where = param.grad_location()
        if where is None:
            runs.append([None, xp.reshape(param.grad, (-1,))])
        elif runs and runs[-1][0] is where[0] and runs[-1][2] == where[1]:
            runs[-1][2] += param.size
        else:
            runs.append([where[0], where[1], where[1] + param.size])
    pieces = [run[1] if run[0] is None else run[0][run[1]:run[2]] for run in runs]
    return pieces[0] if len(pieces) == 1 else xp.concat(pieces)


# --------------------------------------------------------------------------- optimizers

CLIPPING = ("clipnorm", "clipvalue", "global_clipnorm")


def _clipping(owner: str, values: Mapping[str, Any]) -> dict[str, float | None]:
    """Keras' gradient clipping arguments checked: each None or a finite number > 0, at most one set."""
    checked = {name: None if value is None else number(owner, name, value, POSITIVE)
               for name, value in values.items()}
    chosen = [name for name, value in checked.items() if value is not None]
    if len(chosen) > 1:
        raise ValueError(f"{owner}: set at most one of clipnorm, clipvalue and global_clipnorm, got {', '.join(chosen)}")
    return checked


class Optimizer:
    """Base class: learning rate (float or schedule), weight decay, gradient clipping, per-parameter state.

    Gradient clipping, Keras' arguments, applied to the gradients before the update (and before
    weight decay, as in Keras and PyTorch): ``clipnorm`` scales each parameter's gradient to at
    most that L2 norm (``g * c / max(||g||, c)``); ``clipvalue`` clips each element to ``[-c, c]``;
    ``global_clipnorm`` scales all gradients together by ``min(1, c / (||g|| + 1e-6))``, the norm
    taken over every gradient, which is ``torch.nn.utils.clip_grad_norm_(params, c)`` followed by
    the step. At most one of them. The global norm stays on the device (a few operations on the
    flat gradient, no host read); ``clipnorm`` costs one reduction per parameter.

    Subclasses set ``name``, list their state arrays in ``_state_arrays()`` and implement
    ``_update(w, grad, state, step, lr)``, which must modify ``w`` and the ``state`` arrays in place.
    """

    name: ClassVar[str] = ""
    #: whether the per-parameter state has a step counter (Adam's bias correction)
    _counts_steps: ClassVar[bool] = False

    def __init__(self, lr: "float | Schedule | Mapping[str, Any]", weight_decay: float = 0.0, *,
                 clipnorm: float | None = None, clipvalue: float | None = None,
                 global_clipnorm: float | None = None) -> None:
        owner = type(self).__name__
        self.weight_decay = number(owner, "weight_decay", weight_decay, NON_NEGATIVE)
        clipping = _clipping(owner, {"clipnorm": clipnorm, "clipvalue": clipvalue,
                                     "global_clipnorm": global_clipnorm})
        self.clipnorm, self.clipvalue, self.global_clipnorm = (clipping[name] for name in CLIPPING)
        self._epoch = 0
        self._steps_per_epoch: int | None = None
        self._position = 0
        self.last_lr: float | None = None
        self.lr = lr
        self.state: dict[str, dict[str, Any]] = {}
        self._checked: tuple[int, ...] | None = None
        self._groups: list[_FlatGroup] = []
        self._packed_key: tuple[tuple[int, int], ...] | None = None

    # ---- learning rate ------------------------------------------------------------------

    @property
    def lr(self) -> float:
        """The learning rate of the next update (a Python float): the number or the schedule's value,
        times :attr:`lr_factor`."""
        return self._lr

    @lr.setter
    def lr(self, value: "float | Schedule | Mapping[str, Any]") -> None:
        """A new learning rate (number or schedule); it also resets :attr:`lr_factor` to 1."""
        if isinstance(value, (Schedule, Mapping)):
            schedule: Schedule | None = get_schedule(value)
            base = None
        elif isinstance(value, numbers.Real) or not callable(value):
            schedule, base = None, number(type(self).__name__, "lr", value, NON_NEGATIVE)
        else:
            raise ValueError(f"{type(self).__name__}: lr must be a number or a Schedule (Constant, StepDecay, "
                             f"CosineDecay, ExponentialDecay), got {value!r}")
        self.schedule, self._base_lr, self._lr_factor = schedule, base, 1.0
        self._refresh_lr()

    @property
    def lr_factor(self) -> float:
        """A factor on the learning rate or schedule (1.0; ``ReduceLROnPlateau`` lowers it). Saved in
        :meth:`state_dict`, so a resumed run keeps it."""
        return self._lr_factor

    @lr_factor.setter
    def lr_factor(self, value: float) -> None:
        self._lr_factor = number(type(self).__name__, "lr_factor", value, NON_NEGATIVE)
        self._refresh_lr()

    def _refresh_lr(self) -> None:
        base = self._base_lr if self.schedule is None else \
            self.schedule.at_step(self._position, self._steps_per_epoch or 1)
        self._lr = base * self._lr_factor

    @property
    def epoch(self) -> int:
        return self._epoch

    def set_epoch(self, epoch: int, steps_per_epoch: int | None = None) -> None:
        """Start epoch ``epoch`` (0-based). Given ``steps_per_epoch`` (``fit`` passes its number of
        batches; kept for later calls), a schedule moves at every update; never given, it keeps one
        value per epoch, for loops that call only ``set_epoch``."""
        owner = type(self).__name__
        epoch = check_integer(owner, "epoch", epoch, 0)
        if steps_per_epoch is not None:
            self._steps_per_epoch = check_integer(owner, "steps_per_epoch", steps_per_epoch, 1)
        self._epoch = epoch
        self._position = epoch * (self._steps_per_epoch or 1)
        self._refresh_lr()

    def _advance_schedule(self) -> None:
        """One update made: a schedule evaluated per step moves on (Python arithmetic only)."""
        if self.schedule is not None and self._steps_per_epoch is not None:
            self._position += 1
            self._refresh_lr()

    def _lr_config(self) -> "float | dict[str, Any]":
        if self.schedule is None:
            return self._base_lr
        return {"name": self.schedule.name, **self.schedule.config()}

    # ---- stepping -----------------------------------------------------------------------

    def step(self, params: Sequence[Parameter]) -> None:
        """Update every parameter that has a gradient, in place; those with ``grad is None`` are skipped.

        The parameters are updated together: one flat buffer per (device, dtype, step count) group,
        so a step is a dozen array operations (GPU kernels) whatever the number of parameters
        (the idea of PyTorch's foreach/fused optimizers). On NumPy, where an operation costs no
        launch, each parameter's view of the buffers is updated in turn, which spares copying the
        gradients into one buffer; the arithmetic is the same. Gradients the data-parallel
        all-reduce left in its buckets are used there, not copied again (:func:`_flat_gradient`).
        The first step, and any step after the set of parameters or one of their arrays was
        replaced (``load_state_dict``, ``model.to``, a layer unfrozen), copies them into the buffer
        and makes each ``Parameter.value`` (and each state array in ``self.state``) a view of it;
        an array taken from a parameter before that is no longer the one updated.
        """
        groups = self._groups_to_step(params)
        if groups:
            self._apply(groups, [self._gradients(group) for group in groups])

    def _groups_to_step(self, params: Sequence[Parameter]) -> list["_FlatGroup"]:
        """The flat groups of the parameters that have a gradient (none: nothing to step), their
        names checked against the optimizer state first."""
        if not isinstance(params, (list, tuple)):
            params = list(params)
        if self._stateful():
            self._check_names(params)
        active = [param for param in params if param.grad is not None]
        return self._packed(active) if active else []

    def scale_loss(self, grad: Any) -> Any:
        """The loss gradient the backward pass starts from, ``grad`` itself here (Keras' ``scale_loss``);
        :class:`LossScaleOptimizer` multiplies it by its loss scale."""
        return grad

    def _apply(self, groups: list[_FlatGroup], grads: list[list[Any]]) -> None:
        """Clip ``grads`` (per group, as :meth:`_gradients` gives them) and update each group in place."""
        lr = self._lr
        grads = self._clipped(groups, grads)
        for group, group_grads in zip(groups, grads):
            group.step += 1
            if is_numpy_namespace(group.xp):
                # on the CPU an operation costs no launch, and the flat update would first copy every
                # gradient into one buffer: update each parameter's view of the buffers instead
                for param, grad in zip(group.params, group_grads):
                    self._update(param.value, grad, self.state.get(param.name, {}), group.step, lr)
            else:
                with backend.native_device_context(group.device):
                    self._update(group.flat, group_grads[0], group.state, group.step, lr)
            if self._counts_steps:
                for param in group.params:
                    self.state[param.name]["step"] = group.step
        self.last_lr = lr
        self._advance_schedule()

    @staticmethod
    def _gradients(group: _FlatGroup) -> list[Any]:
        """The group's gradients: one flat array (:func:`_flat_gradient`), or on NumPy each parameter's own."""
        if is_numpy_namespace(group.xp):
            return [param.grad for param in group.params]
        with backend.native_device_context(group.device):
            return [_flat_gradient(group.xp, group.params)]

    def _clipped(self, groups: list[_FlatGroup], grads: list[list[Any]]) -> list[list[Any]]:
        """``grads`` (per group, as :meth:`_gradients` gives them) clipped as configured; the one place
        clipping happens, on the gradients the update is about to use. New arrays: a parameter's own
        ``grad`` is never changed."""
        if self.global_clipnorm is not None:
            return self._clipped_globally(groups, grads)
        if self.clipvalue is None and self.clipnorm is None:
            return grads
        clipped = []
        for group, group_grads in zip(groups, grads):
            xp, c = group.xp, self.clipvalue
            with backend.native_device_context(group.device):
                if c is not None:
                    group_grads = [xp.minimum(xp.maximum(g, -c), c) for g in group_grads]
                elif self.clipnorm is not None:
                    group_grads = self._clipped_per_parameter(group, group_grads)
            clipped.append(group_grads)
        return clipped

    def _clipped_globally(self, groups: list[_FlatGroup], grads: list[list[Any]]) -> list[list[Any]]:
        """``global_clipnorm``: every gradient times ``min(1, c / (||all gradients|| + 1e-6))``, computed on
        the device (the norm is never read back)."""
        if len({group.device for group in groups}) > 1:
            raise ValueError(f"{type(self).__name__}: global_clipnorm needs every parameter on one device, got "
                             f"{sorted({group.device.name for group in groups})}")
        xp = groups[0].xp
        with backend.native_device_context(groups[0].device):
            squares = [xp.vecdot(flat, flat) for gs in grads for flat in (xp.reshape(g, (-1,)) for g in gs)]
            total = squares[0] if len(squares) == 1 else xp.sum(xp.stack([xp.astype(v, xp.float32) for v in squares]))
            coef = xp.minimum(self.global_clipnorm / (xp.sqrt(total) + 1e-6), 1.0)
            return [[g * xp.astype(coef, g.dtype) for g in gs] for gs in grads]

    def _clipped_per_parameter(self, group: _FlatGroup, grads: list[Any]) -> list[Any]:
        """Keras' ``clipnorm``: each parameter's gradient times ``c / max(||g||, c)`` (in the group's device context)."""
        xp, c = group.xp, self.clipnorm
        if is_numpy_namespace(xp):
            return [g * (c / xp.maximum(xp.sqrt(xp.vecdot(xp.reshape(g, (-1,)), xp.reshape(g, (-1,)))), c))
                    for g in grads]
        flat = grads[0]
        if group.sizes is None:
            group.sizes = xp.asarray([param.size for param in group.params], dtype=xp.int64, device=native_device(flat))
        parts = [flat[lo:hi] for lo, hi in _bounds(group.params)]
        norms = xp.sqrt(xp.stack([xp.vecdot(part, part) for part in parts]))
        scale = c / xp.maximum(norms, c)
        return [flat * xp.repeat(scale, group.sizes)]

    def zero_grad(self, params: Iterable[Parameter]) -> None:
        """Drop every gradient, so the next backward pass starts from nothing."""
        zero_grads(params)

    def _update(self, w: Any, grad: Any, state: dict[str, Any], step: int, lr: float) -> None:
        """Update ``w`` (a flat buffer, or any array) in place from ``grad`` and the matching ``state`` arrays."""
        raise NotImplementedError

    def _stateful(self) -> bool:
        return bool(self._state_arrays())

    def _state_arrays(self) -> tuple[str, ...]:
        """Names of the per-parameter state arrays this configuration keeps."""
        return ()

    @property
    def state_slots(self) -> int:
        """How many arrays of each parameter's size this optimizer keeps (momentum: 1, Adam: 2)."""
        return len(self._state_arrays())

    def _packed(self, active: list[Parameter]) -> list["_FlatGroup"]:
        """The flat groups for ``active``, rebuilt when a parameter or one of its arrays changed."""
        key = tuple((id(param), id(param.value)) for param in active)
        if key != self._packed_key:
            self._groups = self._pack(active)
            self._packed_key = tuple((id(param), id(param.value)) for param in active)
        return self._groups

    def _pack(self, active: list[Parameter]) -> list["_FlatGroup"]:
        """Copy parameters (and their state, created as zeros where missing) into flat buffers.

        Parameters are grouped by device, dtype and (Adam) step count, which bias correction needs
        to be one per update. State of parameters not in ``active`` is left as it is.
        """
        by_key: dict[tuple[str, str, int], list[Parameter]] = {}
        for param in active:
            if not self._fits(self.state.get(param.name, {}), param.shape):
                del self.state[param.name]  # a new parameter under an old name (a new head)
            state = self.state.get(param.name, {})
            where = backend.device_of(param.value)
            step = int(state.get("step", 0)) if self._counts_steps else 0
            by_key.setdefault((where.name, backend.dtype_name(param.value.dtype), step), []).append(param)
        groups = []
        for (_, _, step), members in by_key.items():
            where = backend.device_of(members[0].value)
            xp = where.xp
            with backend.native_device_context(where):
                flat = _concat_flat(xp, [param.value for param in members])
                bounds = _bounds(members)
                for param, (lo, hi) in zip(members, bounds):
                    param.value = xp.reshape(flat[lo:hi], param.shape)
                state: dict[str, Any] = {}
                for key in self._state_arrays():
                    parts = []
                    for param in members:
                        old = self.state.get(param.name, {}).get(key)
                        parts.append(xp.zeros_like(param.value) if old is None
                                     else _moved(old, where, param.value.dtype))
                    state[key] = _concat_flat(xp, parts)
                for param, (lo, hi) in zip(members, bounds):
                    entries = {key: xp.reshape(state[key][lo:hi], param.shape) for key in state}
                    if self._counts_steps:
                        entries["step"] = step
                    if entries:
                        self.state[param.name] = entries
            groups.append(_FlatGroup(where, xp, members, flat, state, step))
        return groups

    def _fits(self, entries: Mapping[str, Any], shape: Sequence[int]) -> bool:
        """Whether a parameter's state arrays have its shape. They do not when a new parameter took
        an old one's name (a new head): that state is dropped, never reused."""
        return all(tuple(entries[key].shape) == tuple(shape) for key in self._state_arrays() if key in entries)

    def _check_names(self, params: Sequence[Parameter]) -> None:
        """State is keyed by name, so two parameters with one name would share it: refuse that.

        Checked again only when the list of parameter objects changes.
        """
        key = tuple(map(id, params))
        if key == self._checked:
            return
        seen: set[str] = set()
        repeated: set[str] = set()
        for param in params:
            (repeated if param.name in seen else seen).add(param.name)
        if repeated:
            raise ValueError(
                f"{type(self).__name__}: parameter names must be unique, since they key the optimizer state; "
                f"repeated: {sorted(repeated)}. Give each Parameter its own name (e.g. '0.weight')."
            )
        self._checked = key

    # ---- saving and rebuilding ----------------------------------------------------------

    def config(self) -> dict[str, Any]:
        """Constructor arguments, JSON-serialisable: ``get_optimizer(opt.name, **opt.config())`` rebuilds it.
        Subclasses add their own after ``lr``; the clipping argument, if any, comes last."""
        return {"lr": self._lr_config(), **self._own_config(), "weight_decay": self.weight_decay,
                **{name: getattr(self, name) for name in CLIPPING if getattr(self, name) is not None}}

    def _own_config(self) -> dict[str, Any]:
        """The subclass's own constructor arguments (momentum, betas ...)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """Name, config, epoch, ``lr_factor`` and per-parameter state, as JSON scalars and host NumPy copies."""
        state = {
            pname: {key: value if isinstance(value, int) else backend.to_numpy(value).copy()
                    for key, value in entries.items()}
            for pname, entries in self.state.items()
        }
        return {"name": self.name, "config": self.config(), "epoch": self._epoch, "lr_factor": self._lr_factor,
                "state": state}

    def load_state_dict(self, state: Mapping[str, Any], params: Iterable[Parameter]) -> None:
        """Restore what :meth:`state_dict` saved, each array on its parameter's device and dtype.

        Hyperparameters stay those this optimizer was built with (rebuild it from
        ``state["config"]`` to resume exactly). Also the way to follow a model moved to another
        device: ``opt.load_state_dict(opt.state_dict(), model.parameters())``. State whose shape no
        longer fits its parameter (a head replaced under the same name) is dropped, never reused.
        """
        owner = f"{type(self).__name__}.load_state_dict"
        if state.get("name") != self.name:
            raise ValueError(f"{owner}: the state is from a {state.get('name')!r} optimizer, this one is {self.name!r}")
        by_name = {param.name: param for param in params}
        saved = state.get("state", {})
        unknown = sorted(set(saved) - set(by_name))
        if unknown:
            raise ValueError(f"{owner}: state for parameters {unknown} that are not among the parameters given "
                             f"({sorted(by_name)})")
        arrays = self._state_arrays()
        expected = set(arrays) | ({"step"} if self._counts_steps else set())
        restored: dict[str, dict[str, Any]] = {}
        for pname, entries in saved.items():
            if set(entries) != expected:
                raise ValueError(f"{owner}: parameter {pname!r} has state {sorted(entries)}, expected {sorted(expected)}")
            value = by_name[pname].value
            if not self._fits(entries, value.shape):
                continue
            xp = array_namespace(value)
            where = backend.device_of(value)
            restored[pname] = {"step": int(entries["step"])} if self._counts_steps else {}
            for key in arrays:
                host = entries[key]
                moved = backend.to_device(host, where, dtype=value.dtype)
                # to_device may return a view of the host array on the CPU; the state must own its memory.
                with backend.native_device_context(where):
                    restored[pname][key] = xp.asarray(moved, copy=True)
        lr_factor = number(owner, "lr_factor", state.get("lr_factor", 1.0), NON_NEGATIVE)
        self.state = restored
        self._checked = None
        self._packed_key = None
        self._lr_factor = lr_factor
        self.set_epoch(int(state.get("epoch", 0)))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum and Nesterov momentum (PyTorch's form).

    ``d = g + weight_decay * w`` (L2, like ``paddle.regularizer.L2Decay``); with momentum
    ``v = momentum * v + d`` and the step is ``lr * (d + momentum * v)`` (Nesterov) or ``lr * v``.
    """

    name = "sgd"

    def __init__(self, lr: "float | Schedule | Mapping[str, Any]" = 0.01, momentum: float = 0.0,
                 nesterov: bool = False, weight_decay: float = 0.0, **clipping: float | None) -> None:
        self.momentum = number("SGD", "momentum", momentum, UNIT)
        if not isinstance(nesterov, bool):
            raise ValueError(f"SGD: nesterov must be True or False, got {nesterov!r}")
        if nesterov and self.momentum == 0.0:
            raise ValueError("SGD: nesterov=True needs a momentum > 0")
        self.nesterov = nesterov
        super().__init__(lr, weight_decay, **clipping)

    def _state_arrays(self) -> tuple[str, ...]:
        return ("momentum_buffer",) if self.momentum else ()

    def _update(self, w: Any, grad: Any, state: dict[str, Any], step: int, lr: float) -> None:
        decay, momentum = self.weight_decay, self.momentum
        if not momentum:
            if decay:
                w *= 1.0 - lr * decay  # w - lr * (g + decay * w), without a temporary
            w -= lr * grad
            return
        d = grad + decay * w if decay else grad
        buf = state["momentum_buffer"]
        buf *= momentum
        buf += d
        if self.nesterov:
            update = buf * momentum
            update += d
            update *= lr
            w -= update
        else:
            w -= lr * buf

    def _own_config(self) -> dict[str, Any]:
        return {"momentum": self.momentum, "nesterov": self.nesterov}


class Adam(Optimizer):
    """Adam with bias correction; ``weight_decay`` is L2 added to the gradient (``torch.optim.Adam``)."""

    name = "adam"
    _counts_steps = True
    #: AdamW shrinks the weights directly instead of adding ``weight_decay * w`` to the gradient
    _decoupled: ClassVar[bool] = False

    def __init__(self, lr: "float | Schedule | Mapping[str, Any]" = 1e-3, betas: Sequence[float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, **clipping: float | None) -> None:
        owner = type(self).__name__
        if isinstance(betas, (str, bytes)) or not isinstance(betas, Sequence) or len(betas) != 2:
            raise ValueError(f"{owner}: betas must be a pair (beta1, beta2), got {betas!r}")
        self.betas = (number(owner, "betas[0]", betas[0], UNIT), number(owner, "betas[1]", betas[1], UNIT))
        self.eps = number(owner, "eps", eps, NON_NEGATIVE)
        super().__init__(lr, weight_decay, **clipping)

    def _state_arrays(self) -> tuple[str, ...]:
        return ("exp_avg", "exp_avg_sq")

    def _update(self, w: Any, grad: Any, state: dict[str, Any], step: int, lr: float) -> None:
        xp = array_namespace(w)
        beta1, beta2 = self.betas
        decay = self.weight_decay
        if decay:
            if self._decoupled:
                w *= 1.0 - lr * decay
            else:
                grad = grad + decay * w
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m *= beta1
        m += (1.0 - beta1) * grad
        tmp = grad * grad
        tmp *= 1.0 - beta2
        v *= beta2
        v += tmp
        tmp = xp.sqrt(v)
        tmp /= math.sqrt(1.0 - beta2 ** step)
        tmp += self.eps
        tmp = m / tmp
        tmp *= lr / (1.0 - beta1 ** step)
        w -= tmp

    def _own_config(self) -> dict[str, Any]:
        return {"betas": list(self.betas), "eps": self.eps}


class AdamW(Adam):
    """Adam with decoupled weight decay: ``w -= lr * weight_decay * w`` before the Adam step
    (Loshchilov & Hutter; ``torch.optim.AdamW``), so decay does not pass through the moments.
    """

    name = "adamw"
    _decoupled = True

    def __init__(self, lr: "float | Schedule | Mapping[str, Any]" = 1e-3, betas: Sequence[float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.01, **clipping: float | None) -> None:
        super().__init__(lr, betas, eps, weight_decay, **clipping)


class RMSprop(Optimizer):
    """RMSprop as in ``torch.optim.RMSprop`` (not centered): ``s = alpha * s + (1 - alpha) * g**2``,
    step ``lr * g / (sqrt(s) + eps)``, or with momentum ``b = momentum * b + g / (sqrt(s) + eps)``
    and step ``lr * b``. ``weight_decay`` is L2 added to the gradient.
    """

    name = "rmsprop"

    def __init__(self, lr: "float | Schedule | Mapping[str, Any]" = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
                 momentum: float = 0.0, weight_decay: float = 0.0, **clipping: float | None) -> None:
        self.alpha = number("RMSprop", "alpha", alpha, UNIT)
        self.eps = number("RMSprop", "eps", eps, NON_NEGATIVE)
        self.momentum = number("RMSprop", "momentum", momentum, UNIT)
        super().__init__(lr, weight_decay, **clipping)

    def _state_arrays(self) -> tuple[str, ...]:
        return ("square_avg", "momentum_buffer") if self.momentum else ("square_avg",)

    def _update(self, w: Any, grad: Any, state: dict[str, Any], step: int, lr: float) -> None:
        xp = array_namespace(w)
        alpha = self.alpha
        if self.weight_decay:
            grad = grad + self.weight_decay * w
        square_avg = state["square_avg"]
        square_avg *= alpha
        tmp = grad * grad
        tmp *= 1.0 - alpha
        square_avg += tmp
        tmp = xp.sqrt(square_avg)
        tmp += self.eps
        tmp = grad / tmp
        if self.momentum:
            buf = state["momentum_buffer"]
            buf *= self.momentum
            buf += tmp
            w -= lr * buf
        else:
            tmp *= lr
            w -= tmp

    def _own_config(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "eps": self.eps, "momentum": self.momentum}


# --------------------------------------------------------------------------- loss scaling

class LossScaleOptimizer(Optimizer):
    """Dynamic loss scaling around another optimizer, for float16 training (``mixed_float16``).

    The backward pass starts from the loss gradient times ``scale`` (:meth:`scale_loss`), so small
    float16 gradients do not flush to zero; :meth:`step` divides the gradients by ``scale`` before
    the wrapped optimizer clips and applies them. A step whose gradients hold inf or NaN is
    skipped: the weights and the optimizer's state arrays keep their values, ``scale`` is multiplied
    by ``backoff_factor`` and the count of good steps restarts; after ``growth_interval`` good steps
    in a row ``scale`` is multiplied by ``growth_factor``. PyTorch's ``GradScaler`` constants and
    rules. All of it is decided on the device: a step reads nothing back. So the wrapped
    optimizer's step count (Adam's bias correction, a host-side number) still counts a skipped
    step; its arrays do not change. To put them back, a step holds a copy of the flat weight and
    state buffers while it runs (transient memory: ``1 + state_slots`` times the parameters).
    ``fit`` wraps the optimizer in one under ``mixed_float16`` (bfloat16 has float32's range and
    needs none). The scale and the count are saved in :meth:`state_dict`, so a resumed run goes on
    exactly.
    """

    name = "loss_scale"

    def __init__(self, optimizer: "Optimizer | str | Mapping[str, Any]", initial_scale: float = 2.0 ** 16,
                 growth_factor: float = 2.0, backoff_factor: float = 0.5, growth_interval: int = 2000) -> None:
        owner = "LossScaleOptimizer"
        inner = get_optimizer(optimizer)
        if isinstance(inner, LossScaleOptimizer):
            raise ValueError(f"{owner}: the optimizer is already a LossScaleOptimizer; wrap the optimizer itself")
        self.initial_scale = number(owner, "initial_scale", initial_scale, POSITIVE)
        self.growth_factor = number(owner, "growth_factor", growth_factor, ("a number >= 1", lambda v: v >= 1.0))
        self.backoff_factor = number(owner, "backoff_factor", backoff_factor, ("a number in (0, 1)",
                                                                               lambda v: 0.0 < v < 1.0))
        self.growth_interval = check_integer(owner, "growth_interval", growth_interval, 1)
        self.inner = inner
        #: the scale and the count of good steps in a row: host numbers until the first step, then device arrays
        self._scale: Any = self.initial_scale
        self._good_steps: Any = 0

    # ---- what the loop and the callbacks use, from the wrapped optimizer

    @property
    def lr(self) -> float:
        return self.inner.lr

    @lr.setter
    def lr(self, value: Any) -> None:
        self.inner.lr = value

    @property
    def lr_factor(self) -> float:
        return self.inner.lr_factor

    @lr_factor.setter
    def lr_factor(self, value: float) -> None:
        self.inner.lr_factor = value

    def __getattr__(self, name: str) -> Any:
        """Everything else (``schedule``, ``last_lr``, ``epoch``, ``state``, hyperparameters) is the
        wrapped optimizer's."""
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def set_epoch(self, epoch: int, steps_per_epoch: int | None = None) -> None:
        self.inner.set_epoch(epoch, steps_per_epoch)

    def zero_grad(self, params: Iterable[Parameter]) -> None:
        self.inner.zero_grad(params)

    def _state_arrays(self) -> tuple[str, ...]:
        return self.inner._state_arrays()

    # ---- scaling

    @property
    def scale(self) -> float:
        """The current loss scale (read from the device: for logs and tests, not inside a step)."""
        return float(self._scale)

    @property
    def good_steps(self) -> int:
        """Good steps in a row since the scale last changed (GradScaler's growth tracker)."""
        return int(self._good_steps)

    def _on_device(self, like: Any) -> tuple[Any, Any]:
        """The scale (float32) and the good-step count (int32) as arrays on ``like``'s device."""
        xp = array_namespace(like)
        if not backend.is_array(self._scale):
            self._scale = xp.asarray(self._scale, dtype=xp.float32, device=native_device(like))
            self._good_steps = xp.asarray(self._good_steps, dtype=xp.int32, device=native_device(like))
        return self._scale, self._good_steps

    def scale_loss(self, grad: Any) -> Any:
        """``grad`` (the loss gradient) times the loss scale, on the device."""
        scale, _ = self._on_device(grad)
        return grad * array_namespace(grad).astype(scale, grad.dtype)

    def step(self, params: Sequence[Parameter]) -> None:
        """Unscale the gradients, apply them with the wrapped optimizer unless one is inf/NaN, and
        update the scale: everything on the device, nothing read back."""
        inner = self.inner
        groups = inner._groups_to_step(params)
        if not groups:
            return
        if len({group.device for group in groups}) > 1:
            raise ValueError(f"LossScaleOptimizer needs every parameter on one device, got "
                             f"{sorted({group.device.name for group in groups})}")
        xp = groups[0].xp
        with backend.native_device_context(groups[0].device):
            scale, good_steps = self._on_device(groups[0].flat)
            inverse = 1.0 / scale
            grads = [[g * xp.astype(inverse, g.dtype) for g in inner._gradients(group)] for group in groups]
            finite = xp.all(xp.stack([xp.all(xp.isfinite(g)) for gs in grads for g in gs]))
            buffers = [buffer for group in groups for buffer in (group.flat, *group.state.values())]
            before = [xp.asarray(buffer, copy=True) for buffer in buffers]
            inner._apply(groups, grads)
            for buffer, old in zip(buffers, before):
                buffer[...] = xp.where(finite, buffer, old)
            self._update_scale(xp, finite, scale, good_steps)

    def _update_scale(self, xp: Any, finite: Any, scale: Any, good_steps: Any) -> None:
        """GradScaler's rule: inf/NaN halves the scale and restarts the count; ``growth_interval``
        good steps in a row double it and restart the count."""
        counted = xp.where(finite, good_steps + 1, xp.zeros_like(good_steps))
        grow = counted >= self.growth_interval
        self._scale = xp.where(finite, xp.where(grow, scale * self.growth_factor, scale), scale * self.backoff_factor)
        self._good_steps = xp.where(grow, xp.zeros_like(counted), counted)

    # ---- saving and rebuilding

    def config(self) -> dict[str, Any]:
        return {"optimizer": {"name": self.inner.name, **self.inner.config()}, "initial_scale": self.initial_scale,
                "growth_factor": self.growth_factor, "backoff_factor": self.backoff_factor,
                "growth_interval": self.growth_interval}

    def state_dict(self) -> dict[str, Any]:
        """The wrapped optimizer's state with this one's name and config, plus the scale and count."""
        return {**self.inner.state_dict(), "name": self.name, "config": self.config(),
                "loss_scale": {"scale": self.scale, "good_steps": self.good_steps}}

    def load_state_dict(self, state: Mapping[str, Any], params: Iterable[Parameter]) -> None:
        owner = "LossScaleOptimizer.load_state_dict"
        if state.get("name") != self.name:
            raise ValueError(f"{owner}: the state is from a {state.get('name')!r} optimizer, this one is {self.name!r}")
        saved = state.get("loss_scale")
        if not isinstance(saved, Mapping):
            raise ValueError(f"{owner}: the state has no loss_scale record")
        scale = number(owner, "loss_scale.scale", saved.get("scale"), POSITIVE)
        good_steps = check_integer(owner, "loss_scale.good_steps", saved.get("good_steps"), 0)
        self.inner.load_state_dict({**state, "name": self.inner.name}, params)
        self._scale, self._good_steps = scale, good_steps

    def __repr__(self) -> str:
        return (f"LossScaleOptimizer({self.inner!r}, scale={self.scale:g}, growth_factor={self.growth_factor}, "
                f"backoff_factor={self.backoff_factor}, growth_interval={self.growth_interval})")


# --------------------------------------------------------------------------- factory

def _momentum_sgd(lr: Any = 0.01, momentum: float = 0.9, nesterov: bool = False, weight_decay: float = 0.0,
                  **clipping: float | None) -> SGD:
    """``"momentum"``: SGD whose momentum defaults to 0.9."""
    return SGD(lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay, **clipping)


#: the optimizers by name: what :func:`get_optimizer` builds and ``xpnn train --optimizer`` offers
OPTIMIZERS: dict[str, Callable[..., Optimizer]] = {
    "sgd": SGD, "momentum": _momentum_sgd, "adam": Adam, "adamw": AdamW, "rmsprop": RMSprop,
}
#: wrappers, rebuilt from a record (a model file records the class name) but not offered as a choice
_WRAPPERS: dict[str, Callable[..., Optimizer]] = {"loss_scale": LossScaleOptimizer,
                                                  "lossscaleoptimizer": LossScaleOptimizer}


def get_optimizer(spec: "Optimizer | str | Mapping[str, Any]", **kwargs: Any) -> Optimizer:
    """An optimizer from an instance (returned as is), a name (a key of :data:`OPTIMIZERS`: ``"sgd"``,
    ``"momentum"``, ``"adam"``, ``"adamw"``, ``"rmsprop"``, any case) with constructor arguments, or a record
    ``{"name": opt.name, **opt.config()}``.
    """
    name = spec.get("name") if isinstance(spec, Mapping) else spec
    if isinstance(name, str) and name.strip().lower() in _WRAPPERS:
        return from_spec("optimizer", Optimizer, _WRAPPERS, spec, kwargs)
    return from_spec("optimizer", Optimizer, OPTIMIZERS, spec, kwargs)
