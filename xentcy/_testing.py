"""Test-only hooks: not part of the public API.

:func:`numpy_arrays_on` makes the dispatch send NumPy arrays to another
backend than the CPU core, so that the whole public API (checks, dispatch,
reductions) runs over it: the test suite uses it to run NumPy arrays through
the CUDA backend and its host-compiled kernels (``tests/cuda_host``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from . import _dispatch, _stream


@contextlib.contextmanager
def numpy_arrays_on(backend: Any) -> Iterator[Any]:
    """Within the block, NumPy arrays are computed by ``backend`` (a backend object or module).

    Examples
    --------
    >>> import numpy as np
    >>> import xentcy as xc
    >>> from xentcy import _cpu, _testing
    >>> with _testing.numpy_arrays_on(_cpu):
    ...     xc.logsumexp(np.zeros(2)).round(4)
    np.float64(0.6931)
    """
    previous = _dispatch.numpy_backend_override
    _dispatch.numpy_backend_override = backend
    try:
        yield backend
    finally:
        _dispatch.numpy_backend_override = previous


@contextlib.contextmanager
def cuda_lane(factory: Any) -> Iterator[Any]:
    """Within the block, ``evaluate(..., device="cuda")`` drives its batches through the lane
    ``factory()`` makes (``xentcy._stream.RecordingLane`` on the CPU) instead of the GPU's."""
    previous = _stream.cuda_lane_override
    _stream.cuda_lane_override = factory
    try:
        yield factory
    finally:
        _stream.cuda_lane_override = previous
