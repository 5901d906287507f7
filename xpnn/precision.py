"""Precision in one place: the dtype policy (what layer math computes in) and the TF32 switch.

``set_dtype_policy("mixed_bfloat16")`` (Keras 3's names: ``"float32"``, ``"mixed_bfloat16"``,
``"mixed_float16"``) makes the matmul layers compute in a 16-bit type while every variable stays
float32: parameters and their gradients (the optimizer's flat buffers are the master weights),
optimizer state, BatchNorm's statistics and its normalization arithmetic, softmax and the loss,
the metric sums, the loss scale. What is 16-bit: a matmul layer's input (cast once, by the first
such layer), the weights as the matmul uses them (each layer casts its own, once per forward
pass), im2col columns, matmul outputs, ReLU and pooling (they run in what they are given), and so
what backward keeps. The layers ask this module for each cast (:func:`compute`,
:func:`variable`, :func:`matmul`), so the policy decides, not each layer.

Backends: NumPy and CuPy have ``float16``; ``bfloat16`` comes from ``ml_dtypes`` (NumPy, and CuPy
14 experimentally; CuPy 13 has none). array-api-strict has no 16-bit float type. NumPy has no
16-bit BLAS (its float16 matmul is a naive loop): there :func:`matmul` does what the GPU does
numerically, upcasting to float32, one BLAS matmul, rounding the result to the 16-bit type. So
NumPy runs the mixed policies faithfully (same numerics as a GPU's float32-accumulating GemmEx)
but no faster than float32: they are for testing a model's numerics on the CPU before a GPU run.
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
from typing import Any

from array_api_compat import array_namespace, is_array_api_strict_namespace, is_cupy_namespace, is_numpy_namespace

from . import backend
from .errors import PrecisionUnavailableError

__all__ = ["DTypePolicy", "POLICIES", "set_dtype_policy", "dtype_policy", "compute", "variable", "matmul",
           "compute_dtype", "check_available", "finfo", "itemsize", "set_float32_matmul_precision",
           "get_float32_matmul_precision", "MATMUL_PRECISIONS", "PrecisionUnavailableError"]

VARIABLE_DTYPE = "float32"
POLICIES = ("float32", "mixed_bfloat16", "mixed_float16")
MATMUL_PRECISIONS = ("highest", "high")


class DTypePolicy:
    """A named policy: ``compute_dtype`` (what layer math runs in) and ``variable_dtype`` (float32)."""

    def __init__(self, name: str) -> None:
        if name not in POLICIES:
            raise ValueError(f"unknown dtype policy {name!r}; choose one of {', '.join(POLICIES)}")
        self.name = name
        self.variable_dtype = VARIABLE_DTYPE
        self.compute_dtype = name.replace("mixed_", "")

    @property
    def mixed(self) -> bool:
        """Whether layer math computes in a 16-bit type."""
        return self.compute_dtype != self.variable_dtype

    @property
    def loss_scaling(self) -> bool:
        """Whether training needs dynamic loss scaling (float16's narrow range; bfloat16 needs none)."""
        return self.compute_dtype == "float16"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DTypePolicy) and other.name == self.name

    def __hash__(self) -> int:
        return hash(self.name)

    def __repr__(self) -> str:
        return f"DTypePolicy({self.name!r})"


_policy = [DTypePolicy("float32")]


class _PolicySetting:
    """What :func:`set_dtype_policy` returns: the policy is already set; used as a context manager,
    the previous one comes back at the block's end (like ``torch.set_grad_enabled``)."""

    def __init__(self, previous: DTypePolicy) -> None:
        self.previous = previous

    def __enter__(self) -> DTypePolicy:
        return _policy[0]

    def __exit__(self, *exc: Any) -> None:
        _policy[0] = self.previous


def set_dtype_policy(policy: "str | DTypePolicy") -> _PolicySetting:
    """Set the global dtype policy: ``"float32"`` (the default), ``"mixed_bfloat16"`` or
    ``"mixed_float16"``. Also a context manager: ``with xpnn.set_dtype_policy("mixed_bfloat16"):``
    restores the previous policy at the block's end. A policy that cannot run here (bfloat16
    without ``ml_dtypes``) raises :class:`~xpnn.errors.PrecisionUnavailableError`, naming what to
    install, and leaves the policy as it was; ``fit`` checks the model's device the same way."""
    chosen = policy if isinstance(policy, DTypePolicy) else DTypePolicy(str(policy))
    if chosen.compute_dtype == "bfloat16":
        _ml_dtypes()
    setting = _PolicySetting(_policy[0])
    _policy[0] = chosen
    return setting


def dtype_policy() -> DTypePolicy:
    """The global dtype policy (:func:`set_dtype_policy`)."""
    return _policy[0]


def _ml_dtypes() -> Any:
    try:
        import ml_dtypes
    except ImportError:
        raise PrecisionUnavailableError(
            "bfloat16 needs the ml_dtypes package: pip install ml_dtypes (or xpnn[bfloat16])") from None
    return ml_dtypes


def _dtype(xp: Any, name: str) -> Any:
    """The dtype object called ``name`` in namespace ``xp``; bfloat16 is ``ml_dtypes.bfloat16``."""
    if name == "bfloat16":
        return _ml_dtypes().bfloat16
    return getattr(xp, name)


def check_available(xp: Any, policy: "DTypePolicy | None" = None) -> None:
    """Raise :class:`PrecisionUnavailableError` if ``policy`` (default: the global one) cannot run
    on namespace ``xp``, naming what to install or use instead."""
    policy = policy or _policy[0]
    if not policy.mixed:
        return
    if is_array_api_strict_namespace(xp):
        raise PrecisionUnavailableError(
            f"the {policy.name} policy needs 16-bit floats, which array-api-strict does not have; run it on "
            f"NumPy or CuPy")
    if policy.compute_dtype == "bfloat16":
        _ml_dtypes()
        if is_cupy_namespace(xp):
            import numpy as np
            cupy_major = int(str(getattr(sys.modules.get("cupy"), "__version__", "0")).split(".")[0])
            if cupy_major < 14 or _version(np.__version__) < (2, 1, 2):
                raise PrecisionUnavailableError(
                    f"mixed_bfloat16 on a GPU needs CuPy >= 14 with NumPy >= 2.1.2 (CuPy's bfloat16 arrays), this "
                    f"is CuPy {cupy_major} with NumPy {np.__version__}: pip install 'cupy-cuda12x>=14.1' "
                    f"'numpy>=2.1.2', or use mixed_float16")


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def compute_dtype(xp: Any) -> Any:
    """The dtype object layer math computes in on namespace ``xp`` under the global policy."""
    return _dtype(xp, _policy[0].compute_dtype)


def _cast(x: Any, name: str) -> Any:
    xp = array_namespace(x)
    dtype = _dtype(xp, name)
    return x if x.dtype == dtype else xp.astype(x, dtype)


def compute(x: Any) -> Any:
    """``x`` in the policy's compute dtype: itself under float32 or when it already is (no copy)."""
    if not _policy[0].mixed:
        return x
    return _cast(x, _policy[0].compute_dtype)


def variable(x: Any) -> Any:
    """``x`` in the variable dtype (float32), where the policy keeps float32 arithmetic (BatchNorm's
    normalization, softmax, the loss): itself when it already is."""
    if not _policy[0].mixed:
        return x
    return _cast(x, VARIABLE_DTYPE)


def matmul(a: Any, b: Any) -> Any:
    """``a @ b`` (2-d operands) in their dtype. 16-bit operands on NumPy are multiplied as the GPU does:
    upcast to float32, one BLAS matmul, the result rounded to the 16-bit type (NumPy's own float16
    matmul is a naive loop). On CuPy a 2-d 16-bit matmul is cuBLAS GemmEx with float32 accumulation."""
    xp = array_namespace(a)
    if is_numpy_namespace(xp) and a.dtype.itemsize == 2:
        return xp.astype(xp.matmul(xp.astype(a, xp.float32), xp.astype(b, xp.float32)), a.dtype)
    return xp.matmul(a, b)


def finfo(dtype: Any) -> Any:
    """Machine limits of a float dtype of any library, bfloat16 included (``xp.finfo`` does not know it)."""
    name = backend.dtype_name(dtype)
    if name == "bfloat16":
        return _ml_dtypes().finfo(_ml_dtypes().bfloat16)
    import numpy as np
    return np.finfo(name)


def itemsize(dtype: Any) -> int:
    """Bytes per element of a float dtype (any library's, bfloat16 included)."""
    return finfo(dtype).bits // 8


# --------------------------------------------------------------------------- TF32

_matmul_precision = ["highest"]


def set_float32_matmul_precision(precision: str) -> None:
    """PyTorch's switch for float32 matmuls: ``"highest"`` (the default: full float32) or ``"high"``
    (CuPy may use TF32 tensor cores: inputs rounded to a 10-bit mantissa, float32 accumulation, so
    float32 results change in about the 4th significant digit; a speed-up on A100/H100-class GPUs).

    On CuPy it sets CuPy's compute type for float32 matmuls, which takes effect at the next
    matmul, and ``CUPY_TF32`` for a CuPy not yet imported (CuPy reads it at its first float32
    matmul). CuPy refuses TF32 on GPUs older than compute capability 8.0: there "high" is a no-op.
    On NumPy it changes nothing: CPUs have no TF32.
    """
    if precision not in MATMUL_PRECISIONS:
        raise ValueError(f"float32 matmul precision must be one of {', '.join(MATMUL_PRECISIONS)}, got {precision!r}")
    _matmul_precision[0] = precision
    os.environ["CUPY_TF32"] = "1" if precision == "high" else "0"
    linalg = sys.modules.get("cupy._core._routines_linalg")
    if linalg is not None:
        import numpy as np
        kind = linalg.COMPUTE_TYPE_TF32 if precision == "high" else linalg.COMPUTE_TYPE_DEFAULT
        with contextlib.suppress(Exception):  # below compute capability 8.0 CuPy refuses TF32
            linalg.set_compute_type(np.float32, kind)


def get_float32_matmul_precision() -> str:
    """The float32 matmul precision (:func:`set_float32_matmul_precision`)."""
    return _matmul_precision[0]
