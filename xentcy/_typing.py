"""Type aliases of xentcy's Python code (as array-api-extra's ``_lib/_typing.py``)."""

from __future__ import annotations

from types import ModuleType
from typing import Any, TypeAlias

# An array of any array-API library (NumPy, CuPy, PyTorch, JAX, Dask, ...): the libraries
# share no base class that a type checker could name.
Array: TypeAlias = Any
# An array-API namespace: array_api_compat's wrapped module of a library, or the library's
# own module where a backend works through it (numpy, cupy).
Namespace: TypeAlias = ModuleType
