"""The one place that knows which array library and device xpnn runs on.

A :class:`Device` pairs an array-API namespace (NumPy, CuPy, array-api-strict, PyTorch, ...)
with that library's native device object. Layer math never asks here which device is active: it
takes its namespace and its native device from its inputs (:func:`native_device`, named here
once). This module is used for what must be decided from the outside: where new parameters and
batches go (``set_device``), moving host arrays there and back (``to_device``, ``to_numpy``), and
randomness.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import re
import threading
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
from array_api_compat import array_namespace
from array_api_compat import device as _compat_device
from array_api_compat import is_cupy_namespace, is_numpy_namespace, is_torch_namespace

__all__ = [
    "Device", "DeviceError", "set_device", "get_device", "current_device", "use_device", "native_device_context",
    "device_context",
    "devices", "device_of", "native_device", "to_device", "to_numpy", "seed", "host_rng", "rng_state", "set_rng_state",
    "random_uniform", "random_snapshot", "replayed_random", "memory_info", "ARRAY_LIBRARIES",
    "register_array_library",
]

#: ``native_device(x)``: the device object of ``x``'s own library, what its ``device=`` takes (``"cpu"``
#: for NumPy, a ``cupy.cuda.Device``), for making arrays beside ``x``; array-api-compat's ``device``.
#: Not an xpnn :class:`Device`: that is :func:`device_of`.
native_device = _compat_device

GPU_INSTALL_HINT = ('pip install "xpnn[gpu]" (CuPy for CUDA 12 with the CUDA libraries it needs, cupy-cuda12x[ctk]; '
                    'with a CUDA 13 driver install "cupy-cuda13x[ctk]" instead)')


class DeviceError(RuntimeError):
    """A device was asked for that this machine cannot provide, or arrays sit on the wrong one."""


@dataclass(frozen=True, eq=False)
class Device:
    """An array namespace plus one of its devices, named canonically (``"cpu"``, ``"gpu:0"``)."""

    name: str
    xp: Any = field(repr=False)
    native: Any = field(repr=False, default=None)

    @classmethod
    def from_namespace(cls, xp: Any, native: Any = None) -> "Device":
        """Wrap any array-API namespace and one of its devices (the default one if ``None``)."""
        xp = array_namespace(xp.asarray(0))
        if native is None:
            native = native_device(xp.asarray(0))
        return cls(_canonical_name(xp, native), xp, native)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, str):
            return self.name == other
        return isinstance(other, Device) and self.name == other.name

    def __hash__(self) -> int:
        return hash(self.name)

    def __str__(self) -> str:
        return self.name

    def asarray(self, host: Any, dtype: Any = None) -> Any:
        """A copy of ``host`` (NumPy or anything ``numpy.asarray`` takes) on this device."""
        return to_device(host, self, dtype=dtype)


def _canonical_name(xp: Any, native: Any) -> str:
    if is_numpy_namespace(xp):
        return "cpu"
    if is_cupy_namespace(xp):
        return f"gpu:{native.id}"
    if is_torch_namespace(xp):
        return f"torch:{native}"
    module = getattr(xp, "__name__", type(xp).__name__).split(".")[-1]
    return f"{module}:{_device_label(native)}"


def _device_label(native: Any) -> str:
    """``device1`` for ``array_api_strict.Device('device1')``; ``str(native)`` otherwise."""
    text = getattr(native, "name", None) or str(native)
    if text.endswith("')") and "('" in text:
        return text[text.index("('") + 2:-2]
    return text


# --------------------------------------------------------------------------- construction

def _numpy_device() -> Device:
    return Device("cpu", array_namespace(np.asarray(0)), "cpu")


def _import_cupy(spec: str) -> Any:
    try:
        return importlib.import_module("cupy")
    except Exception as exc:  # ImportError, or a broken CUDA library underneath it
        raise DeviceError(
            f"device {spec!r} needs CuPy, which could not be imported ({type(exc).__name__}: {exc}). "
            f"Install it with {GPU_INSTALL_HINT}, or use set_device('cpu')."
        ) from exc


def _gpu_count(cupy: Any, spec: str) -> int:
    try:
        return int(cupy.cuda.runtime.getDeviceCount())
    except Exception as exc:  # CUDARuntimeError: no driver, no device
        raise DeviceError(
            f"device {spec!r}: CuPy is installed but found no usable CUDA device "
            f"({type(exc).__name__}: {exc}). Check the NVIDIA driver with `nvidia-smi`, "
            f"or use set_device('cpu')."
        ) from exc


def _gpu_device(spec: str, index: int) -> Device:
    cupy = _import_cupy(spec)
    count = _gpu_count(cupy, spec)
    if count == 0:
        raise DeviceError(
            f"device {spec!r}: CuPy is installed but no CUDA device is visible "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')!r}). "
            f"Use set_device('cpu')."
        )
    if not 0 <= index < count:
        raise DeviceError(
            f"device {spec!r}: GPU index {index} is out of range; this machine has {count} "
            f"GPU(s): {', '.join(f'gpu:{i}' for i in range(count))}."
        )
    native = cupy.cuda.Device(index)
    _probe_gpu(cupy, spec, native)
    return Device(f"gpu:{index}", _cupy_namespace(), native)


def _cupy_namespace() -> Any:
    """array-api-compat's CuPy namespace, taken without creating an array: an array would be
    allocated on the current GPU and so create a CUDA context there, whichever GPU was asked for."""
    return importlib.import_module("array_api_compat.cupy")


_working_gpus: set[int] = set()

#: (text in the error, the library it means, what needs it)
_CUDA_LIBRARIES = (
    ("nvrtc", "NVRTC (libnvrtc), the CUDA runtime compiler", "every element-wise kernel is compiled by it"),
    ("cublas", "cuBLAS (libcublas)", "matrix products need it"),
    ("curand", "cuRAND (libcurand)", "random numbers on the GPU need it"),
    ("cudart", "the CUDA runtime (libcudart)", "CuPy needs it"),
    ("libcuda", "the NVIDIA driver library (libcuda)", "CUDA needs it"),
)


def _missing_library(exc: BaseException) -> str:
    text = f"{type(exc).__name__} {exc}".lower()
    for key, library, why in _CUDA_LIBRARIES:
        if key in text:
            return f"{library} is missing or unusable ({why})"
    return "a CUDA library or the driver is missing or unusable"


def _probe_gpu(cupy: Any, spec: str, native: Any) -> None:
    """Run a tiny element-wise kernel, a matmul and a random draw on GPU ``native.id`` (once per process).

    Importing CuPy and counting GPUs needs only the driver; the first kernel needs NVRTC, the
    first matmul cuBLAS, and dropout and augmentation draw from CuPy's generator (as
    :func:`random_uniform` does). Trying all three here turns a missing library into a
    :class:`DeviceError` naming it and the fix (so ``auto`` falls back to the CPU), not a crash at
    the first layer or in the middle of an epoch.

    Nothing touches another GPU: since CUDA 12 making a GPU current creates its context. In a
    thread with no CUDA context yet (a fresh process, where GPU 0 is current without a context),
    this GPU is made current for good, as ``set_device`` would: a ``with`` block would switch back
    to GPU 0 at its exit and create a context there (one per rank on GPU 0 under ``mpirun``, and
    a failure on GPUs in exclusive-process mode). Otherwise the probe runs inside ``with native``
    and leaves the current GPU as it was.
    """
    index = native.id
    if index in _working_gpus:
        return
    try:
        if cupy.cuda.driver.ctxGetCurrent() == 0:
            native.use()
            scope: Any = contextlib.nullcontext()
        else:
            scope = native
        with scope:
            a = cupy.arange(4, dtype=cupy.float32).reshape(2, 2)
            b = a * 2.0 + 1.0
            noise = cupy.random.default_rng(0).random((2, 2), dtype=cupy.float32)
            float((b @ b + noise).sum())
    except Exception as exc:  # CompileException, CUDARuntimeError, ImportError of a library, ...
        raise DeviceError(
            f"device {spec!r}: CuPy found gpu:{index} but cannot compute on it: {_missing_library(exc)} "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). Fix: {GPU_INSTALL_HINT}, or "
            f"install the CUDA Toolkit and put its libraries on LD_LIBRARY_PATH; or use set_device('cpu')."
        ) from exc
    _working_gpus.add(index)


_auto_warned = False


def _auto_device() -> Device:
    global _auto_warned
    try:
        return _gpu_device("auto", 0)
    except DeviceError as exc:
        if not _auto_warned:
            _auto_warned = True
            warnings.warn(f"set_device('auto') found no GPU and uses the CPU: {exc}", stacklevel=4)
        return _numpy_device()


#: array-API libraries a device string may name (``"torch:cpu"``); others via register_array_library
ARRAY_LIBRARIES: set[str] = {"array_api_strict", "torch", "jax.numpy", "dask.array", "ndonnx", "sparse"}


def register_array_library(module_name: str) -> None:
    """Allow device strings ``"<module_name>:<device>"`` for an array-API library not in
    :data:`ARRAY_LIBRARIES`. A device string imports its module, so only modules named here
    (in Python, never from a command line or environment variable) can be imported by one."""
    if not isinstance(module_name, str) or not all(part.isidentifier() for part in module_name.split(".")):
        raise ValueError(f"register_array_library: expected a module name such as 'mylib.array_api', "
                         f"got {module_name!r}")
    ARRAY_LIBRARIES.add(module_name)


def _library_device(spec: str) -> Device:
    """``"module:device"`` for any other array-API library, e.g. ``array_api_strict:device1``.

    Only modules in :data:`ARRAY_LIBRARIES` are imported: a device string comes from the
    command line or the environment, and importing a module runs its code.
    """
    module_name, _, label = spec.partition(":")
    if module_name not in ARRAY_LIBRARIES:
        raise DeviceError(f"unknown device {spec!r}: {module_name!r} is not a known array library; use 'cpu', "
                          f"'gpu:N', 'auto' or one of {', '.join(sorted(ARRAY_LIBRARIES))} (another array-API "
                          f"library: call xpnn.backend.register_array_library({module_name!r}) first, in Python)")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise DeviceError(f"device {spec!r}: cannot import array library {module_name!r}: {exc}") from exc
    if module_name == "torch":
        return Device.from_namespace(module, module.device(label or "cpu"))
    info = module.__array_namespace_info__()
    for native in info.devices():
        if not label or _device_label(native) == label:
            return Device.from_namespace(module, native)
    names = [_device_label(d) for d in info.devices()]
    raise DeviceError(f"device {spec!r}: {module_name} has no device {label!r}; it has {names}")


def _parse(spec: "str | Device") -> Device:
    if isinstance(spec, Device):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"device must be a string like 'cpu' or 'gpu:0', or a Device; got {type(spec).__name__}")
    text = spec.strip().lower()
    if text in ("cpu", "numpy"):
        return _numpy_device()
    if text == "auto":
        return _auto_device()
    kind, _, index = text.partition(":")
    if kind in ("gpu", "cuda", "cupy"):
        if index and not index.isdigit():
            raise ValueError(f"device {spec!r}: the GPU index must be a number, as in 'gpu:0'")
        return _gpu_device(spec, int(index or 0))
    if ":" in spec or "." in spec or spec.isidentifier():
        if ":" in spec or kind not in ("tpu", "mps", "xla"):
            return _library_device(spec.strip())
    raise ValueError(f"unknown device {spec!r}: use 'cpu', 'gpu', 'gpu:N', 'cuda:N' or 'auto'")


# --------------------------------------------------------------------------- the active device

_state = threading.local()
_default: Device | None = None


def current_device() -> Device:
    """The active :class:`Device` (``XPNN_DEVICE`` or ``"cpu"`` until ``set_device`` is called)."""
    global _default
    stack = getattr(_state, "stack", None)
    if stack:
        return stack[-1]
    if _default is None:
        _default = _made_current(_parse(os.environ.get("XPNN_DEVICE", "cpu")))
    return _default


def set_device(spec: "str | Device") -> Device:
    """Make ``spec`` the device for new parameters and batches; returns it.

    ``"cpu"``, ``"gpu"``, ``"gpu:N"``, ``"cuda:N"``, ``"auto"`` (GPU if there is one, else CPU
    with a warning), ``"array_api_strict:device1"``, ``"torch:cpu"``, or a :class:`Device`.
    An explicit GPU request never falls back: it raises :class:`DeviceError` saying why.
    """
    global _default
    _default = _made_current(_parse(spec))
    return _default


def _made_current(device: Device) -> Device:
    """``device`` made its library's current device for this thread (CuPy: new arrays go to this GPU)."""
    use = getattr(device.native, "use", None)
    if use is not None and _needs_context(device):
        use()
    return device


def get_device() -> str:
    """The canonical name of the active device: ``"cpu"``, ``"gpu:0"``, ..."""
    return current_device().name


@contextlib.contextmanager
def use_device(spec: "str | Device") -> Iterator[Device]:
    """Make ``spec`` xpnn's active device for a block (per thread): what :func:`get_device` and
    :func:`current_device` return, where new parameters and batches go. Its library's current device
    follows (:func:`native_device_context`); both are restored afterwards."""
    device = _parse(spec)
    stack = getattr(_state, "stack", None)
    if stack is None:
        stack = _state.stack = []
    stack.append(device)
    try:
        with native_device_context(device):
            yield device
    finally:
        stack.pop()


_NO_CONTEXT = contextlib.nullcontext()


def _needs_context(device: Device) -> bool:
    native = device.native
    return hasattr(native, "__enter__") and not isinstance(native, str) and not is_torch_namespace(device.xp)


def native_device_context(device: "Device | None") -> Any:
    """A context manager that makes ``device`` its array library's *current* device for the block
    (``device.native`` entered), and only that: xpnn's active device (:func:`use_device`) stays.

    CuPy allocates on the current CUDA device whatever ``device=`` says (array-api-compat passes
    ``device=`` on only in ``asarray``), and refuses to run kernels on arrays of another GPU. So
    the work on a model (``model(x)`` and its backward pass, ``fit``, ``evaluate``, ``predict``,
    optimizer steps, distributed reductions) runs inside this context of the model's device:
    the one place that decides it, never the layers. A native device that is a context manager
    (``cupy.cuda.Device``, the test stand-in in :mod:`xpnn.instrumented`) is entered; for
    NumPy, array-api-strict and PyTorch, which honour ``device=``, it does nothing. Re-entrant.
    """
    if device is None or not _needs_context(device):
        return _NO_CONTEXT
    return device.native


#: another name for :func:`native_device_context`, public (``xpnn.backend.device_context``), so scripts keep it
device_context = native_device_context


def memory_info(device: "Device | str | None" = None) -> tuple[int, int] | None:
    """``(free, total)`` bytes of ``device``'s memory, or None where that is not known.

    On a GPU the free memory counts the blocks CuPy's memory pool holds but does not use (it hands
    them out again before asking CUDA); on the CPU it is the kernel's ``MemAvailable``.
    """
    where = resolve(device)
    if is_cupy_namespace(where.xp):
        import cupy

        with where.native:
            free, total = cupy.cuda.runtime.memGetInfo()
            return int(free) + int(cupy.get_default_memory_pool().free_bytes()), int(total)
    if where.name != "cpu":
        return None
    try:
        with open("/proc/meminfo") as f:
            fields = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f if line.count(":") == 1}
        return fields["MemAvailable"], fields["MemTotal"]
    except (OSError, KeyError, ValueError, IndexError):
        return None


def release_cached_memory(device: Device) -> None:
    """Give the blocks CuPy's memory pool keeps for reuse back to CUDA (after running out of memory)."""
    if is_cupy_namespace(device.xp):
        import cupy

        with device.native:
            cupy.get_default_memory_pool().free_all_blocks()


def devices() -> list[str]:
    """Names of the devices usable here: ``"cpu"`` and one ``"gpu:N"`` per visible CUDA GPU."""
    names = ["cpu"]
    try:
        cupy = importlib.import_module("cupy")
        names += [f"gpu:{i}" for i in range(int(cupy.cuda.runtime.getDeviceCount()))]
    except Exception:
        pass
    return names


def gpu_identity(device: Device) -> str:
    """What tells two processes' GPUs apart on one machine: the PCI bus id (else the UUID, else the name).

    Names do not: with one GPU per process (``CUDA_VISIBLE_DEVICES``) every process has a ``gpu:0``.
    """
    native = device.native
    for attribute in ("pci_bus_id", "uuid"):
        try:
            value = getattr(native, attribute, None)
        except Exception:  # a CUDA call that failed: fall back to the next
            value = None
        if value:
            return value.hex() if isinstance(value, bytes) else str(value)
    if is_cupy_namespace(device.xp) and hasattr(native, "id"):
        try:
            import cupy

            uuid = cupy.cuda.runtime.getDeviceProperties(native.id).get("uuid")
            if uuid:
                return uuid.hex() if isinstance(uuid, bytes) else str(uuid)
        except Exception:
            pass
    return device.name


def device_of(array: Any) -> Device:
    """The :class:`Device` an array lives on."""
    xp = array_namespace(array)
    native = native_device(array)
    if is_numpy_namespace(xp):
        return _numpy_device()
    return Device(_canonical_name(xp, native), xp, native)


def resolve(device: "str | Device | None") -> Device:
    """``None`` means the active device; strings are parsed as in :func:`set_device`."""
    return current_device() if device is None else _parse(device)


# --------------------------------------------------------------------------- host <-> device

def dtype_of(xp: Any, name: "str | Any") -> Any:
    """The namespace's dtype object for a name like ``"float32"`` (or a dtype, passed through)."""
    return getattr(xp, name) if isinstance(name, str) else name


def dtype_name(dtype: Any) -> str:
    """``"float32"`` for any library's float32 dtype object (and so on for the standard's dtypes, and
    ``"bfloat16"`` for ml_dtypes')."""
    found = re.findall(r"bool|u?int(?:8|16|32|64)|b?float(?:16|32|64)", str(dtype))
    if not found:
        raise TypeError(f"unsupported dtype {dtype!r}")
    return found[-1]


def to_device(host: Any, device: "str | Device | None" = None, dtype: "str | Any | None" = None,
              copy: bool = False) -> Any:
    """Put a host array (NumPy, list, scalar) on ``device`` (default: the active one).

    ``dtype`` is a name (``"float32"``) or a dtype of the target namespace. Arrays that are
    already on a device are first brought to the host, so any array can be moved anywhere.
    On the CPU the result may share memory with ``host``; ``copy=True`` guarantees it does
    not (what loading weights needs, so training never writes into the caller's arrays).
    """
    target = resolve(device)
    if not isinstance(host, np.ndarray):
        host = to_numpy(host) if is_array(host) else np.asarray(host)
    xp = target.xp
    on_gpu = is_cupy_namespace(xp)
    with native_device_context(target):
        if is_numpy_namespace(xp) or on_gpu:
            moved = xp.asarray(host, copy=True) if copy else xp.asarray(host)
        else:
            moved = xp.asarray(host, device=target.native, copy=True if copy else None)
        if dtype is not None and moved.dtype != dtype_of(xp, dtype):
            moved = xp.astype(moved, dtype_of(xp, dtype))
    return moved


def is_array(obj: Any) -> bool:
    """Whether ``obj`` is an array of some array-API library (NumPy included), not a list or a scalar."""
    try:
        array_namespace(obj)
    except TypeError:
        return False
    return not isinstance(obj, (list, tuple, int, float))



def to_numpy(array: Any) -> np.ndarray:
    """A NumPy copy (or view, on the CPU) of any array-API array."""
    if isinstance(array, np.ndarray):
        return array
    if isinstance(array, (int, float, bool, list, tuple, np.generic)):
        return np.asarray(array)
    xp = array_namespace(array)
    if is_cupy_namespace(xp):
        return array.get()
    if is_torch_namespace(xp):
        return array.detach().cpu().numpy()
    try:
        return np.asarray(array)
    except (TypeError, RuntimeError, ValueError):
        return np.from_dlpack(array)


# --------------------------------------------------------------------------- randomness

_host_rng = np.random.default_rng()


def seed(value: int) -> None:
    """Seed every generator xpnn draws from: the host one (weights, shuffling) and CuPy's."""
    global _host_rng
    _host_rng = np.random.default_rng(value)
    _device_rngs.clear()
    _device_seed[0] = value


def host_rng() -> np.random.Generator:
    """The host generator initial weights and shuffles are drawn from."""
    return _host_rng


def rng_state() -> dict[str, Any]:
    """The host generator's state as JSON-able data (for checkpoints; see :func:`set_rng_state`)."""
    return _host_rng.bit_generator.state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore a state from :func:`rng_state`, so draws continue exactly where they left off.

    CuPy's device generators (dropout/augmentation on a GPU) have no such state to restore.
    """
    _host_rng.bit_generator.state = state


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Leave the host generator's state as it was (e.g. while rebuilding a model from a file)."""
    state = _host_rng.bit_generator.state
    try:
        yield
    finally:
        _host_rng.bit_generator.state = state


_device_rngs: dict[str, Any] = {}
_device_seed: list[int | None] = [None]


def _device_generator(where: Device, seed: int | None) -> Any:
    import cupy

    with where.native:
        return cupy.random.default_rng(seed)


def random_uniform(shape: tuple[int, ...], like: Any) -> Any:
    """Uniform [0, 1) numbers in ``like``'s namespace, device and dtype (dropout, augmentation).

    On CuPy they are drawn on the GPU by its own generator so nothing crosses the bus per batch;
    elsewhere they are drawn on the host and moved.
    """
    where = device_of(like)
    if is_cupy_namespace(where.xp):
        import cupy

        gen = _device_rngs.get(where.name)
        if gen is None:
            base = _device_seed[0]
            gen = _device_generator(where, None if base is None else base + where.native.id)
            _device_rngs[where.name] = gen
        with where.native:
            return gen.random(shape, dtype=cupy.float32 if like.dtype == cupy.float32 else cupy.float64)
    host = _host_rng.random(shape, dtype=np.float64)
    return to_device(host, where, dtype=like.dtype)


def random_snapshot(where: Device) -> tuple[str, Any]:
    """A mark in the stream :func:`random_uniform` draws from on ``where``, to draw the same numbers
    again later with :func:`replayed_random` (a checkpointed block's second forward pass).

    On the host generator the mark is its state. A GPU generator's state is not read: it is
    replaced by a new one seeded from the host generator, and the seed is the mark.
    """
    if is_cupy_namespace(where.xp):
        seed = int(_host_rng.integers(2 ** 62))
        _device_rngs[where.name] = _device_generator(where, seed)
        return where.name, seed
    return "host", _host_rng.bit_generator.state


@contextlib.contextmanager
def replayed_random(snapshot: tuple[str, Any], where: Device) -> Iterator[None]:
    """Inside the block, :func:`random_uniform` on ``where`` draws again what it drew after
    :func:`random_snapshot` gave ``snapshot``; after it, the streams are where they were before."""
    kind, mark = snapshot
    if kind == "host":
        now = _host_rng.bit_generator.state
        _host_rng.bit_generator.state = mark
        try:
            yield
        finally:
            _host_rng.bit_generator.state = now
        return
    now = _device_rngs.get(kind)
    _device_rngs[kind] = _device_generator(where, mark)
    try:
        yield
    finally:
        if now is None:
            _device_rngs.pop(kind, None)
        else:
            _device_rngs[kind] = now
