"""Array backends the tests run over, and conversions to and from NumPy.

The ``xp`` fixture in ``conftest.py`` hands a test one of the namespaces
loaded here; ``make`` turns a NumPy array into that backend's array and
``to_numpy`` brings any result back for comparison with the reference.
"""

import contextlib
import importlib
import types

import numpy as np

# "cuda_host": NumPy arrays through xentcy's CUDA backend, its launcher and its kernels
# compiled for the CPU (tests/cuda_host); the xp fixture turns the dispatch hook on.
BACKEND_NAMES = ("numpy", "cuda_host", "array_api_strict", "torch", "jax", "dask", "cupy")

# Backends whose arrays can be written to, so out= and inplace=True apply.
WRITABLE = ("numpy", "cuda_host", "array_api_strict", "torch", "cupy")

# Backends that take float16 and bfloat16 logits on xentcy's own kernels.
HALF_PRECISION = ("cuda_host", "cupy")


class _CudaHostNamespace(types.ModuleType):
    """NumPy, under the name of the backend whose kernels compute for it."""

    def __getattr__(self, name):
        if name == "bfloat16":  # the CUDA backend's bfloat16 arrays: NumPy arrays of ml_dtypes' type
            ml_dtypes = importlib.import_module("ml_dtypes")
            return np.dtype(ml_dtypes.bfloat16)
        return getattr(np, name)


CUDA_HOST = _CudaHostNamespace("cuda_host")

# Eager JAX compiles every operation again for each new shape, dtype and
# keyword set (about 2 s per case on 2 cores), so the large rotated grids run
# a fixed third of their cases on it; the generic path those cases exercise
# runs in full on array_api_strict and torch.
SLOW_TO_COMPILE = ("jax",)


def load(name):
    """Return the array namespace for ``name``; raise ImportError if unusable."""
    if name == "numpy":
        return np
    if name == "cuda_host":
        import cuda_host

        cuda_host.library()  # builds it, or raises cuda_host.Unavailable (an ImportError)
        return CUDA_HOST
    if name == "array_api_strict":
        return importlib.import_module("array_api_strict")
    if name == "torch":
        return importlib.import_module("torch")
    if name == "jax":
        jax = importlib.import_module("jax")
        jax.config.update("jax_enable_x64", True)
        return importlib.import_module("jax.numpy")
    if name == "dask":
        return importlib.import_module("dask.array")
    if name == "cupy":
        cupy = importlib.import_module("cupy")
        try:
            if cupy.cuda.runtime.getDeviceCount() < 1:
                raise ImportError("cupy imports but sees no GPU")
            cupy.asarray([1.0]).sum().get()
        except Exception as exc:  # CUDA runtime errors have no common base
            raise ImportError(f"cupy imports but no GPU is usable: {exc}") from exc
        return cupy
    raise ValueError(f"unknown backend {name!r}")


def backend_name(xp):
    """The id ("numpy", "torch", ...) of a namespace returned by ``load``."""
    module = xp.__name__
    if module == "jax.numpy":
        return "jax"
    if module == "dask.array":
        return "dask"
    return module.split(".")[0]


def make(xp, a, axis=None):
    """Convert the NumPy array (or Python scalar) ``a`` into backend ``xp``.

    ``axis`` is the class axis of ``a`` if it has one. For Dask the first
    batch axis (the first axis other than ``axis``) is split into two
    chunks, so that logits and targets are chunked alike along the batch.
    Python scalars pass through unchanged.
    """
    if not isinstance(a, np.ndarray):
        return a
    name = backend_name(xp)
    if name in ("numpy", "cuda_host"):
        return a.copy()
    if name == "torch":
        return xp.asarray(a.copy())
    if name == "dask":
        class_axis = None if axis is None else axis % a.ndim
        chunks = list(a.shape)
        batch_axes = [i for i in range(a.ndim) if i != class_axis]
        if batch_axes:
            first = batch_axes[0]
            chunks[first] = max(1, -(-a.shape[first] // 2))
        return xp.from_array(a.copy(), chunks=tuple(chunks))
    if name == "array_api_strict":
        return xp.asarray(a, copy=True)
    return xp.asarray(a)


def to_numpy(x):
    """Return any backend's array (or a Python/NumPy scalar) as a NumPy array."""
    module = type(x).__module__.split(".")[0]
    if module == "torch":
        return x.detach().cpu().numpy()
    if module == "dask":
        return np.asarray(x.compute())
    if module == "cupy":
        return x.get()
    if module == "array_api_strict":
        return np.from_dlpack(x)
    return np.asarray(x)


def array_type(xp):
    """The array class of backend ``xp`` (for "results stay in the caller's library")."""
    return type(make(xp, np.zeros(2)))


@contextlib.contextmanager
def kernels(isa):
    """Within the block, the CPU core runs the kernels of instruction set ``isa``."""
    from xentcy._cpu import _core

    previous = _core.set_isa(isa)
    try:
        yield
    finally:
        _core.set_isa(previous)
