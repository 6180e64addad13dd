"""Which backend computes a call: chosen once from the array namespace of its arguments.

array-api-compat's ``is_*_namespace`` helpers look only at modules already
imported, so xentcy never imports CuPy, torch, JAX or Dask itself.
"""

from __future__ import annotations

import functools
import numbers
from typing import Any

import array_api_compat
import numpy as np
from array_api_compat import array_namespace

from ._checks import check_array_subclass, library_name


@functools.cache
def _numpy_namespace() -> Any:
    """array_namespace of a plain NumPy array, looked up once (each lookup costs ~3 us)."""
    return array_namespace(np.empty(0))


def namespace(**arrays: Any) -> Any:
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
numpy_backend_override: Any = None


def backend(xp: Any, x: Any) -> Any:
    """The backend that computes for array ``x`` of namespace ``xp``."""
    if array_api_compat.is_numpy_namespace(xp):
        if numpy_backend_override is not None:
            return numpy_backend_override
        from . import _cpu

        return _cpu
    if array_api_compat.is_cupy_namespace(xp):
        from . import _cuda

        return _cuda.cupy_backend()
    if array_api_compat.is_dask_namespace(xp):
        from . import _dask
        from ._checks import denominator

        chunk_xp = array_namespace(x._meta)
        chunk_backend = backend(chunk_xp, x._meta)
        summary = getattr(chunk_backend, "class_index_summary", None)
        return _dask.DaskBackend(chunk_xp, chunk_backend, functools.partial(denominator, summary=summary))
    from . import _generic

    return _generic
