"""An instrumented array-API namespace over NumPy: counts operations and host reads, and behaves
like CuPy about devices. What ``benchmarks/count_ops.py`` and the device tests run on.

Every array it makes is an :class:`Array` wrapping a NumPy array and a :class:`FakeDevice`. The
namespace forwards each function to ``array_api_compat.numpy`` and records:

* ``ops``: array operations by name, one per call that would launch a GPU kernel or copy. Views
  (``permute_dims``, basic slicing, a ``reshape`` that needs no copy, ``broadcast_to``, ...),
  ``empty`` (an allocation, no kernel) and no-op ``astype``/``asarray`` are free. ``concat`` counts
  what CuPy launches for it: a copy per array, or one kernel and its tables' transfers.
* ``largest``: by name, the most elements one such operation read or wrote (what its temporaries
  cost in memory).
* ``host_reads``: everything that waits for the device and brings a value back: ``float()``,
  ``int()``, ``bool()``, the explicit copy to NumPy (``get()`` or DLPack: what ``xpnn.to_numpy``
  does), data-dependent shapes (boolean-mask indexing, ``nonzero``, ``unique_*``), which CuPy must
  sync to size, and ``clip``, which array-api-compat implements for CuPy with boolean masks.

Devices work as in CuPy, not as the standard says: creation functions ignore ``device=`` and
allocate on the *current* device (``with device:`` or ``device.use()``, as ``cupy.cuda.Device``),
``asarray`` honours ``device=`` (array-api-compat's CuPy ``asarray`` does), and any operation on
an array that is not on the current device raises, as a CuPy kernel launch does. So code that
forgets to make its device current fails here on the CPU, which array-api-strict's
``Device("device1")`` (it honours ``device=``) cannot show. A ``with device:`` block restores the
device that was current before it at its exit, undoing a ``use()`` inside it, as
``cupy.cuda.Device`` does. And as CuPy, an array refuses implicit conversion to NumPy
(``numpy.asarray(array)`` raises ``TypeError``) and has no ``__index__``.
"""
from __future__ import annotations

import collections
import contextlib
import operator
import threading
from typing import Any, Iterator

import array_api_compat.numpy as _cnp
import numpy as np

__all__ = ["Namespace", "Array", "FakeDevice", "DeviceMismatch", "make"]


class DeviceMismatch(ValueError):
    """An array was used while another device was current (CuPy raises a ValueError too)."""


class FakeDevice:
    """One device of a :class:`Namespace`: a context manager that makes it current, like ``cupy.cuda.Device``."""

    def __init__(self, namespace: "Namespace", index: int) -> None:
        self.namespace, self.id = namespace, index

    @property
    def name(self) -> str:
        return f"dev{self.id}"

    def __enter__(self) -> "FakeDevice":
        """Remember the current device and make this one current (``cupy.cuda.Device.__enter__``)."""
        self.namespace._stack().append(self.namespace.current())
        self.namespace._local.current = self
        return self

    def __exit__(self, *exc: Any) -> None:
        """Make the device remembered at the entry current again, whatever ``use()`` did inside."""
        self.namespace._local.current = self.namespace._stack().pop()

    def use(self) -> None:
        """Make this device current until another is (``cupy.cuda.Device.use``)."""
        self.namespace._local.current = self

    def __repr__(self) -> str:
        return f"FakeDevice({self.id})"


# Functions that return views or metadata: no kernel on a GPU.
_FREE = {"permute_dims", "matrix_transpose", "broadcast_to", "broadcast_arrays", "expand_dims", "squeeze", "flip",
         "moveaxis", "unstack", "empty", "empty_like", "isdtype", "finfo", "iinfo", "result_type", "can_cast",
         "broadcast_shapes"}
# Functions whose output size depends on the data: CuPy syncs to learn it. And ``clip``: for CuPy,
# array-api-compat's generic ``clip`` indexes with boolean masks, each of which syncs.
_SYNCING = {"nonzero", "unique_all", "unique_counts", "unique_inverse", "unique_values", "argwhere", "clip"}
# Creation functions: allocate on the current device whatever ``device=`` says (CuPy under array-api-compat).
_CREATION = {"zeros", "ones", "full", "empty", "arange", "linspace", "eye", "zeros_like", "ones_like", "full_like",
             "empty_like", "tril", "triu"}


class Namespace:
    """The instrumented namespace; ``make(devices=2)`` builds one with that many devices."""

    def __init__(self, devices: int = 2, name: str = "instrumented") -> None:
        self.__name__ = name
        self.devices = [FakeDevice(self, i) for i in range(devices)]
        self._local = threading.local()
        self.ops: collections.Counter[str] = collections.Counter()
        self.host_reads: collections.Counter[str] = collections.Counter()
        self.largest: dict[str, int] = {}
        self.recording = True
        for dtype in ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float32",
                      "float64", "complex64", "complex128"):
            setattr(self, dtype, getattr(_cnp, dtype))
        for constant in ("e", "pi", "inf", "nan", "newaxis"):
            setattr(self, constant, getattr(_cnp, constant))

    # ---- devices ----------------------------------------------------------------------

    def _stack(self) -> list[FakeDevice]:
        stack = getattr(self._local, "stack", None)
        if stack is None:
            stack = self._local.stack = []
        return stack

    def current(self) -> FakeDevice:
        """The current device of this thread: set by ``with device:`` and ``use()``, device 0 at first."""
        return getattr(self._local, "current", None) or self.devices[0]

    def __array_namespace_info__(self) -> Any:
        namespace = self

        class Info:
            def devices(self) -> list[FakeDevice]:
                return list(namespace.devices)

            def default_device(self) -> FakeDevice:
                return namespace.current()

        return Info()

    # ---- counting ---------------------------------------------------------------------

    def reset(self) -> None:
        self.ops.clear()
        self.host_reads.clear()
        self.largest.clear()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Do not count inside the block (set-up work around what is measured)."""
        was, self.recording = self.recording, False
        try:
            yield
        finally:
            self.recording = was

    def count(self, name: str, *operands: Any) -> None:
        """One operation ``name`` on ``operands`` (arrays, NumPy data, or lists of them), its result included."""
        if self.recording:
            self.ops[name] += 1
            self.largest[name] = max(self.largest.get(name, 0), _elements(operands))

    def read(self, name: str) -> None:
        if self.recording:
            self.host_reads[name] += 1

    @property
    def total(self) -> int:
        return sum(self.ops.values())

    # ---- wrapping ---------------------------------------------------------------------

    def _check(self, array: "Array", what: str) -> None:
        current = self.current()
        if array._device is not current:
            raise DeviceMismatch(f"{what}: the array is on {array._device} but the current device is {current} "
                                 f"(CuPy would refuse this kernel launch)")

    def unwrap(self, value: Any, what: str) -> Any:
        """NumPy data of ``value`` (recursing into lists and tuples), checking devices on the way."""
        if isinstance(value, Array):
            if value._ns is not self:
                raise TypeError(f"{what}: an array of another instrumented namespace")
            self._check(value, what)
            return value._data
        if isinstance(value, (list, tuple)):
            return type(value)(self.unwrap(v, what) for v in value)
        if isinstance(value, np.ndarray):
            raise TypeError(f"{what}: a NumPy array mixed with instrumented arrays; move it with asarray first")
        return value

    def wrap(self, value: Any, device: FakeDevice | None = None) -> Any:
        if isinstance(value, (np.ndarray, np.generic)) and not isinstance(value, np.dtype):
            return Array(self, np.asarray(value), device or self.current())
        if isinstance(value, tuple):
            return tuple(self.wrap(v, device) for v in value)
        if isinstance(value, list):
            return [self.wrap(v, device) for v in value]
        return value

    def __getattr__(self, name: str) -> Any:
        target = getattr(_cnp, name)
        if not callable(target) or isinstance(target, type):
            return target
        if name in ("linalg", "fft"):
            raise AttributeError(name)

        def call(*args: Any, **kwargs: Any) -> Any:
            kwargs.pop("device", None) if name in _CREATION else None
            data_args = self.unwrap(args, name)
            data_kwargs = {k: self.unwrap(v, name) for k, v in kwargs.items()}
            result = target(*data_args, **data_kwargs)
            if name in _SYNCING:
                self.read(name)
            if isinstance(result, (np.ndarray, np.generic, tuple, list)) and name not in _FREE:
                self.count(name, data_args, data_kwargs, result)
            return self.wrap(result)

        call.__name__ = name
        setattr(self, name, call)
        return call

    # functions whose cost depends on their arguments

    def asarray(self, obj: Any, /, *, dtype: Any = None, device: Any = None, copy: bool | None = None) -> "Array":
        """Host data to ``device`` (default: the current one), honouring ``device=`` as CuPy's compat ``asarray``."""
        if isinstance(obj, Array):
            self._check(obj, "asarray")
            same = dtype is None or obj.dtype == dtype
            if same and not copy:
                return obj
            self.count("astype" if not same else "copy", obj._data)
            return Array(self, np.array(obj._data, dtype=dtype, copy=True), obj._device)
        target = device if isinstance(device, FakeDevice) else self.current()
        data = np.array(obj if isinstance(obj, np.ndarray) else self.unwrap(obj, "asarray"), dtype=dtype, copy=True)
        self.count("to_device", data)
        return Array(self, data, target)

    def concat(self, arrays: "list[Array] | tuple[Array, ...]", /, *, axis: int | None = 0) -> "Array":
        """Counted as CuPy launches it (``cupy/_core/_routines_manipulation.pyx``): one copy kernel per
        array, except for more than 8 arrays of one dtype averaging under 2 MiB: one kernel, after
        copying its table of pointers (and, unless all are contiguous of one shape, of offsets and strides)
        to the device."""
        data = [self.unwrap(a, "concat") for a in arrays]
        result = np.concat(data, axis=axis)
        contiguous_same_shape = all(d.shape == data[0].shape and d.flags.c_contiguous for d in data)
        if (len(data) > 8 and all(d.dtype == result.dtype for d in data)
                and result.nbytes < 2 * 1024 * 1024 * len(data)):
            self.count("concat", result)
            for _ in range(1 if contiguous_same_shape else 3):
                self.count("to_device")
        else:
            for d in data:
                self.count("concat", d)
        return Array(self, result, self.current())

    def astype(self, x: "Array", dtype: Any, /, *, copy: bool = True, device: Any = None) -> "Array":
        self._check(x, "astype")
        if x.dtype == dtype and not copy:
            return x
        self.count("astype", x._data)
        return Array(self, x._data.astype(dtype, copy=True), x._device)

    def reshape(self, x: "Array", /, shape: tuple[int, ...], *, copy: bool | None = None) -> "Array":
        self._check(x, "reshape")
        data = np.reshape(x._data, shape, copy=copy) if copy is not None else np.reshape(x._data, shape)
        if copy or not np.shares_memory(data, x._data):
            self.count("reshape(copy)", data)
        return Array(self, data, x._device)


class Array:
    """A NumPy array on a :class:`FakeDevice` of a :class:`Namespace`; operators are counted."""

    __slots__ = ("_ns", "_data", "_device")
    __array_ufunc__ = None  # NumPy defers to our reflected operators, which refuse the mix

    def __init__(self, namespace: Namespace, data: np.ndarray, device: FakeDevice) -> None:
        self._ns, self._data, self._device = namespace, data, device

    def __array_namespace__(self, api_version: str | None = None) -> Namespace:
        return self._ns

    # ---- attributes (no device work) ----------------------------------------------------

    @property
    def shape(self) -> tuple[int, ...]:
        return self._data.shape

    @property
    def dtype(self) -> Any:
        return self._data.dtype

    @property
    def ndim(self) -> int:
        return self._data.ndim

    @property
    def size(self) -> int:
        return self._data.size

    @property
    def device(self) -> FakeDevice:
        return self._device

    @property
    def T(self) -> "Array":
        return Array(self._ns, self._data.T, self._device)

    @property
    def mT(self) -> "Array":
        return Array(self._ns, np.swapaxes(self._data, -1, -2), self._device)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"Array({self._data!r}, device={self._device})"

    # ---- host reads -------------------------------------------------------------------

    def _read(self, kind: str) -> np.ndarray:
        self._ns.read(kind)
        return self._data

    def __float__(self) -> float:
        return float(self._read("float"))

    def __int__(self) -> int:
        return int(self._read("int"))

    def __bool__(self) -> bool:
        return bool(self._read("bool"))

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        raise TypeError("Implicit conversion to a NumPy array is not allowed. Please use `.get()` to construct a "
                        "NumPy array explicitly.")

    def get(self) -> np.ndarray:
        """A NumPy copy, the explicit transfer (``cupy.ndarray.get``)."""
        return np.array(self._read("to_numpy"), copy=True)

    def __dlpack__(self, **kwargs: Any) -> Any:
        """The data through DLPack (what ``numpy.from_dlpack`` and so ``xpnn.to_numpy`` use): a host read."""
        return self._read("to_numpy").__dlpack__(**kwargs)

    def __dlpack_device__(self) -> tuple[int, int]:
        return self._data.__dlpack_device__()

    # ---- indexing ---------------------------------------------------------------------

    def _key(self, key: Any) -> tuple[Any, bool]:
        """NumPy key, and whether it is advanced (arrays in it: a gather/scatter kernel)."""
        ns = self._ns
        parts = key if isinstance(key, tuple) else (key,)
        advanced = False
        for part in parts:
            if isinstance(part, Array):
                advanced = True
                if part.dtype == np.bool_:
                    ns.read("boolean mask")
        return ns.unwrap(key, "indexing"), advanced

    def __getitem__(self, key: Any) -> "Array":
        self._ns._check(self, "__getitem__")
        data_key, advanced = self._key(key)
        result = self._data[data_key]
        if advanced:
            self._ns.count("gather", result)
        return Array(self._ns, np.asarray(result), self._device)

    def __setitem__(self, key: Any, value: Any) -> None:
        self._ns._check(self, "__setitem__")
        data_key, _ = self._key(key)
        self._data[data_key] = self._ns.unwrap(value, "__setitem__")
        self._ns.count("setitem", self._data[data_key])


def _elements(value: Any) -> int:
    """The most elements of one array in ``value`` (an array, NumPy data, or nested lists, tuples and dicts of them)."""
    if isinstance(value, Array):
        return value.size
    if isinstance(value, (np.ndarray, np.generic)):
        return int(np.size(value))
    if isinstance(value, dict):
        value = tuple(value.values())
    if isinstance(value, (list, tuple)):
        return max((_elements(v) for v in value), default=0)
    return 0


def _binary(name: str, function: Any, reflected: bool = False) -> Any:
    def method(self: Array, other: Any) -> Any:
        ns = self._ns
        if not isinstance(other, (Array, int, float, bool, complex)):
            return NotImplemented
        ns._check(self, name)
        data = ns.unwrap(other, name)
        result = function(data, self._data) if reflected else function(self._data, data)
        ns.count(name.strip("_"), self._data, data, result)
        return Array(ns, np.asarray(result), self._device)
    method.__name__ = name
    return method


def _inplace(name: str, function: Any) -> Any:
    def method(self: Array, other: Any) -> Array:
        ns = self._ns
        ns._check(self, name)
        function(self._data, ns.unwrap(other, name))
        ns.count(name.strip("_"), self._data)
        return self
    method.__name__ = name
    return method


def _unary(name: str, function: Any) -> Any:
    def method(self: Array) -> Array:
        self._ns._check(self, name)
        self._ns.count(name.strip("_"), self._data)
        return Array(self._ns, np.asarray(function(self._data)), self._device)
    method.__name__ = name
    return method


for _name, _function in (("add", operator.add), ("sub", operator.sub), ("mul", operator.mul),
                         ("truediv", operator.truediv), ("floordiv", operator.floordiv), ("mod", operator.mod),
                         ("pow", operator.pow), ("matmul", operator.matmul), ("and", operator.and_),
                         ("or", operator.or_), ("xor", operator.xor), ("lshift", operator.lshift),
                         ("rshift", operator.rshift)):
    setattr(Array, f"__{_name}__", _binary(f"__{_name}__", _function))
    setattr(Array, f"__r{_name}__", _binary(f"__r{_name}__", _function, reflected=True))
    setattr(Array, f"__i{_name}__", _inplace(f"__i{_name}__", getattr(operator, f"i{_name}")))
for _name, _function in (("lt", operator.lt), ("le", operator.le), ("gt", operator.gt), ("ge", operator.ge),
                         ("eq", operator.eq), ("ne", operator.ne)):
    setattr(Array, f"__{_name}__", _binary(f"__{_name}__", _function))
for _name, _function in (("neg", operator.neg), ("pos", operator.pos), ("abs", operator.abs),
                         ("invert", operator.invert)):
    setattr(Array, f"__{_name}__", _unary(f"__{_name}__", _function))
Array.__hash__ = None  # type: ignore[assignment]


def make(devices: int = 2, name: str = "instrumented") -> Namespace:
    """A fresh namespace with ``devices`` devices (``dev0`` current until another is made current)."""
    return Namespace(devices, name)
