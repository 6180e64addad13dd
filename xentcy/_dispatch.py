"""Which backend computes a call: chosen once from the array namespace of its arguments.

array-api-compat's ``is_*_namespace`` helpers look only at modules already
imported, so xentcy never imports torch, JAX or Dask itself, and CuPy only for a
torch CUDA tensor (:func:`route`).
"""

from __future__ import annotations

import functools
import importlib.util
import numbers
import sys
from typing import Any

import array_api_compat
import numpy as np
from array_api_compat import array_namespace

from . import _cpu, _cuda, _generic, _reductions
from ._backend import Backend
from ._checks import check_array_subclass, library_name
from ._typing import Array, Namespace


@functools.cache
def _numpy_namespace() -> Namespace:
    """array_namespace of a plain NumPy array, looked up once (each lookup costs ~3 us)."""
    return array_namespace(np.empty(0))


def namespace(**arrays: Array) -> Namespace:
    """The one array-API namespace of the named arguments.

    The first must be an array; the others may also be None, a Python
    scalar or a list (a class index, a weight), which take no part here.
    Arrays of two different libraries raise a TypeError that names both.
    """
    seen: dict[Any, tuple[str, Any]] = {}
    for position, (name, x) in enumerate(arrays.items()):
        if position > 0 and (x is None or isinstance(x, (numbers.Number, list, tuple))):
            continue
        if type(x) is np.ndarray:
            xp = _numpy_namespace()
        else:
            if isinstance(x, np.ndarray):
                check_array_subclass(x, name)  # masked arrays and matrices; other subclasses pass
            if isinstance(x, numbers.Number) or not array_api_compat.is_array_api_obj(x):
                raise TypeError(
                    f"{name} must be an array of an array-API library (NumPy, CuPy, PyTorch, JAX, ...), "
                    f"got {type(x).__name__}"
                )
            xp = array_namespace(x)
        if seen and xp not in seen:
            ((first_name, first),) = seen.values()
            raise TypeError(
                f"{first_name} and {name} come from different array libraries: {first_name} is a "
                f"{library_name(first)} array and {name} is a {library_name(x)} array; "
                "convert one to the other's library"
            )
        seen.setdefault(xp, (name, x))
    return next(iter(seen))


# The backend of NumPy arrays where it is not the CPU core: set by xentcy._testing only
# (the tests run NumPy arrays through the CUDA backend and its host-compiled kernels).
numpy_backend_override: Backend | None = None


def backend(xp: Namespace, x: Array) -> Backend:
    """The backend that computes for array ``x`` of namespace ``xp``: one line a backend."""
    if array_api_compat.is_numpy_namespace(xp):
        return numpy_backend_override or _cpu
    if array_api_compat.is_cupy_namespace(xp):
        return _cuda.cupy_backend()
    if array_api_compat.is_dask_namespace(xp):
        from . import _dask  # (imports Dask: only for Dask arrays)

        chunk_xp = array_namespace(x._meta)
        chunk_backend = backend(chunk_xp, x._meta)
        # (the chunks' D and range check, handed over: the Dask module imports no rules)
        rule = functools.partial(_reductions.denominator, summary=chunk_backend.class_index_summary)
        return _dask.DaskBackend(chunk_xp, chunk_backend, rule)
    return _generic


# -- routing by DLPack: CPU arrays of torch and JAX onto the CPU core, torch CUDA tensors onto
# CuPy and xentcy's CUDA kernels, without a copy. Only this module knows of torch and JAX.


class Route:
    """A call's arrays as the backend that computes them sees them (``arrays``), and
    :meth:`back`, which returns a result in the caller's library.

    Use it as a context manager: a torch CUDA call runs inside torch's current stream.
    """

    __slots__ = ("arrays", "_back", "_originals", "_stream")

    def __init__(
        self, arrays: dict[str, Array], back: Any = None, originals: Any = None, stream: Any = None
    ) -> None:
        self.arrays = arrays
        self._back = back
        self._originals = originals or {}
        self._stream = stream

    def __enter__(self) -> Route:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._stream is not None:
            self._stream.__exit__(*exc)

    def back(self, result: Array) -> Array:
        """``result`` (an array of the computing library, or a tuple of them) in the caller's library;
        a view of one of the caller's own arrays (``out=``, ``inplace=True``) is that array."""
        if self._back is None or result is None:
            return result
        if isinstance(result, tuple):
            return tuple(self.back(r) for r in result)
        original = self._originals.get(id(result))
        return original if original is not None else self._back(result)


def _plain(x: Array) -> bool:
    return x is None or type(x) is np.ndarray or isinstance(x, (numbers.Number, list, tuple))


def _passes(name: str, x: Array) -> bool:
    """Whether a routed call takes argument x as it is: None, a scalar, a list, or a NumPy
    weight (the checks convert it); a NumPy target beside torch or JAX logits is not (an error)."""
    return _plain(x) and (name == "weight" or type(x) is not np.ndarray)


_FLOATS = ("float32", "float64")


def _torch_route(arrays: dict[str, Array], logits: Array) -> Route | None:
    torch = sys.modules["torch"]
    views: dict[str, Array] = {}
    device = logits.device
    for name, x in arrays.items():
        if _passes(name, x):
            views[name] = x
            continue
        if not isinstance(x, torch.Tensor) or x.device != device:
            return None  # another library, or another device: the checks say so
        if x.requires_grad or x.is_conj() or x.is_neg() or x.layout != torch.strided:
            return None  # autograd, lazy conjugation or negation, sparse: the generic path
        if device.type == "cpu" and x.dtype.is_floating_point and str(x.dtype)[6:] not in _FLOATS:
            return None  # half precision on the CPU: the core takes float32 and float64
        if x.dtype.is_complex:
            return None
        views[name] = x
    if device.type == "cpu":
        try:
            converted = {n: np.from_dlpack(x) if isinstance(x, torch.Tensor) else x for n, x in views.items()}
        except (BufferError, TypeError, ValueError, RuntimeError):
            return None
        back = torch.from_dlpack
        stream = None
    elif device.type == "cuda" and _have_cupy():
        import cupy

        stream = cupy.cuda.ExternalStream(torch.cuda.current_stream(device).cuda_stream, device.index)
        stream.__enter__()  # (left by Route.__exit__) the views are taken on torch's stream
        try:
            converted = {
                n: cupy.from_dlpack(x) if isinstance(x, torch.Tensor) else x for n, x in views.items()
            }
        except Exception:
            stream.__exit__(None, None, None)
            return None
        back = torch.from_dlpack
    else:
        return None  # MPS, XLA, meta; CUDA without CuPy: the generic path on the device
    originals = {id(converted[n]): arrays[n] for n in converted if isinstance(arrays[n], torch.Tensor)}
    return Route(converted, back, originals, stream)


def _jax_route(arrays: dict[str, Array], writes: tuple[str, ...]) -> Route | None:
    jax = sys.modules["jax"]
    if writes:
        return None  # JAX arrays are immutable: the checks refuse out= and inplace=
    converted: dict[str, Array] = {}
    for name, x in arrays.items():
        if _passes(name, x):
            converted[name] = x
            continue
        if not isinstance(x, jax.Array) or isinstance(x, jax.core.Tracer):
            return None  # a trace: nothing can be read; the generic path, traced
        if any(d.platform != "cpu" for d in x.devices()):
            return None
        if x.dtype.kind == "f" and x.dtype.name not in _FLOATS or x.dtype.kind == "c":
            return None
        try:
            converted[name] = np.from_dlpack(x)  # read-only, no copy
        except (BufferError, TypeError, ValueError, RuntimeError):
            return None
    return Route(converted, _to_jax)


def _to_jax(result: Array) -> Any:
    """A JAX array of a NumPy result: the same memory where XLA takes it as it is (64-byte
    aligned, as the CPU core allocates its outputs, and of a dtype JAX keeps), else a copy."""
    jax = sys.modules["jax"]
    if (
        isinstance(result, np.ndarray)
        and result.ctypes.data % 64 == 0
        and result.flags.writeable
        and jax.dtypes.canonicalize_dtype(result.dtype) == result.dtype
    ):
        try:
            return jax.numpy.from_dlpack(result)  # owns a reference to result: nothing else does
        except (BufferError, TypeError, ValueError, RuntimeError):
            pass
    return jax.numpy.asarray(result)


@functools.cache
def _have_cupy() -> bool:
    return importlib.util.find_spec("cupy") is not None


def route(arrays: dict[str, Array], writes: tuple[str, ...] = ()) -> Route:
    """The route of a call's arrays (the logits first; ``writes``: the names of the arrays the
    call writes into). PyTorch tensors on the CPU and JAX arrays on the CPU are viewed as NumPy
    arrays (DLPack, no copy) and computed by the CPU core; torch CUDA tensors, where CuPy is
    installed, are viewed as CuPy arrays and computed by xentcy's CUDA kernels on torch's
    current stream. Every other array, and tensors that require grad, are conjugated or
    negated lazily, of half precision on the CPU, or traced, keep their own library (the
    generic path, differentiable by their library where it tracks gradients)."""
    logits = next(iter(arrays.values()))
    if _plain(logits):
        return Route(arrays)
    module = type(logits).__module__.partition(".")[0]
    found = None
    if module == "torch" and "torch" in sys.modules:
        found = _torch_route(arrays, logits)
    elif module in ("jax", "jaxlib") and "jax" in sys.modules:
        found = _jax_route(arrays, writes)
    return found if found is not None else Route(arrays)
