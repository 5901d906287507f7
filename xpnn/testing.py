"""Checks for layers and losses, usable for your own layers too.

Numerical gradient checks: central differences in float64 on the host compare with the analytic
backward pass run on the device under test; the check also asserts every gradient comes back on
that device. :func:`retained_bytes`: what a backprop closure keeps alive.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from . import backend

__all__ = ["check_layer_gradients", "check_loss_gradients", "retained_bytes"]


def _sample_indices(shape: tuple[int, ...], count: int, rng: np.random.Generator) -> list[tuple[int, ...]]:
    size = int(np.prod(shape))
    flat = np.arange(size) if size <= count else rng.choice(size, count, replace=False)
    return [tuple(int(i) for i in np.unravel_index(f, shape)) for f in flat]


def _numeric(objective: Callable[[np.ndarray], float], host: np.ndarray, index: tuple[int, ...], eps: float) -> float:
    plus, minus = host.copy(), host.copy()
    plus[index] += eps
    minus[index] -= eps
    return (objective(plus) - objective(minus)) / (2 * eps)


def _assert_on(device: backend.Device, array: Any, what: str) -> None:
    where = backend.device_of(array)
    assert where == device, f"{what} is on {where}, expected {device}"


def _compare(analytic: np.ndarray, numeric: dict, what: str, rtol: float, atol: float) -> None:
    for index, value in numeric.items():
        got = analytic[index]
        if not np.isclose(got, value, rtol=rtol, atol=atol):
            raise AssertionError(f"{what}{list(index)}: backprop gives {got!r}, finite differences {value!r}")


def check_layer_gradients(layer: Any, x: np.ndarray, device: "backend.Device | str | None" = None, *,
                          train: bool = False, eps: float = 1e-6, rtol: float = 1e-5, atol: float = 1e-7,
                          max_checks: int = 40, seed: int = 0) -> None:
    """Check ``layer``'s dx and every parameter gradient against central differences.

    The layer is moved to ``device`` in float64. Up to ``max_checks`` entries of x and of each
    parameter are perturbed. Raises AssertionError naming the first entry that disagrees.
    """
    device = backend.resolve(device)
    rng = np.random.default_rng(seed)
    layer.to(device, dtype="float64")
    x_host = np.asarray(x, dtype=np.float64)
    x_dev = backend.to_device(x_host, device)
    y, backprop = layer(x_dev, train=train)
    _assert_on(device, y, "output")
    dy_host = rng.standard_normal(tuple(y.shape))
    dy = backend.to_device(dy_host, device)
    layer.zero_grad()
    dx = backprop(dy)
    _assert_on(device, dx, "dx")

    def objective_x(host: np.ndarray) -> float:
        out, _ = layer(backend.to_device(host, device), train=train)
        return float(np.sum(backend.to_numpy(out) * dy_host))

    numeric = {i: _numeric(objective_x, x_host, i, eps) for i in _sample_indices(x_host.shape, max_checks, rng)}
    _compare(backend.to_numpy(dx), numeric, "dx", rtol, atol)

    for p in layer.parameters():
        assert p.grad is not None, f"{p.name}: backprop left no gradient"
        _assert_on(device, p.grad, f"{p.name}.grad")
        original = p.value
        p_host = backend.to_numpy(original).astype(np.float64)

        def objective_p(host: np.ndarray, p: Any = p) -> float:
            p.value = backend.to_device(host, device)
            out, _ = layer(x_dev, train=train)
            return float(np.sum(backend.to_numpy(out) * dy_host))

        numeric = {i: _numeric(objective_p, p_host, i, eps) for i in _sample_indices(p_host.shape, max_checks, rng)}
        p.value = original
        _compare(backend.to_numpy(p.grad), numeric, f"{p.name}.grad", rtol, atol)


def check_loss_gradients(loss: Any, pred: np.ndarray, target: np.ndarray,
                         device: "backend.Device | str | None" = None, *, eps: float = 1e-6,
                         rtol: float = 1e-5, atol: float = 1e-8, max_checks: int = 60, seed: int = 0) -> None:
    """Check a loss's gradient with respect to its predictions against central differences."""
    device = backend.resolve(device)
    rng = np.random.default_rng(seed)
    pred_host = np.asarray(pred, dtype=np.float64)
    target_dev = backend.to_device(target, device)
    value, backprop = loss(backend.to_device(pred_host, device), target_dev)
    _assert_on(device, value, "loss")
    grad = backprop()
    _assert_on(device, grad, "dloss/dpred")

    def objective(host: np.ndarray) -> float:
        out, _ = loss(backend.to_device(host, device), target_dev)
        return float(backend.to_numpy(out))

    numeric = {i: _numeric(objective, pred_host, i, eps) for i in _sample_indices(pred_host.shape, max_checks, rng)}
    _compare(backend.to_numpy(grad), numeric, "dloss/dpred", rtol, atol)


def retained_bytes(backprop: Any, model: Any = None) -> int:
    """Bytes of the NumPy arrays a backprop closure keeps alive for the backward pass.

    Follows closures, bound methods' functions, lists, tuples and dicts, not other objects (layers,
    parameters); a view counts its whole base (the memory it keeps alive), once. The arrays owned by
    ``model`` (parameters and buffers) are not counted: they are the model's, not the step's.
    """
    owned = set()
    if model is not None:
        owned = {id(_root(value)) for value in model.named_state().values() if isinstance(value, np.ndarray)}
    seen: set[int] = set()
    counted: set[int] = set()
    total = 0
    stack = [backprop]
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, np.ndarray):
            root = _root(obj)
            if id(root) not in counted and id(root) not in owned:
                counted.add(id(root))
                total += root.nbytes
        elif hasattr(obj, "__func__"):
            stack.append(obj.__func__)
        elif hasattr(obj, "__closure__"):
            stack += [cell.cell_contents for cell in obj.__closure__ or () if _filled(cell)]
        elif isinstance(obj, (list, tuple)):
            stack += list(obj)
        elif isinstance(obj, dict):
            stack += list(obj.values())
    return total


def _root(array: np.ndarray) -> np.ndarray:
    while isinstance(array.base, np.ndarray):
        array = array.base
    return array


def _filled(cell: Any) -> bool:
    try:
        cell.cell_contents
    except ValueError:
        return False
    return True
