"""The backend interface: what every backend provides, declared once.

A backend computes; it never checks arguments (``xentcy._checks`` has, once, before it is
called) and never dispatches. The backends are ``xentcy._cpu`` (NumPy arrays: the Cython
core), ``xentcy._cuda.CudaBackend`` (CuPy arrays: xentcy's CUDA kernels),
``xentcy._generic`` (every other array-API library) and ``xentcy._dask.DaskBackend``
(Dask arrays: chunk by chunk, each chunk through one of the others). A new backend is one
module that provides this interface, and one line in ``xentcy._dispatch.backend``.

A module satisfies the protocol as well as an object does (``xentcy._cpu`` and
``xentcy._generic`` are modules). Optional parts are attributes set to ``None``, never
missing ones.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ._checks import CrossEntropyCall
    from ._typing import Array, Namespace

ClassIndexSummary = Callable[["CrossEntropyCall"], tuple[Any, "int | None"]]
# (KL divergence, whether the argmax agree) per row pair of (logits, reference) along axis
CompareRows = Callable[["Namespace", "Array", "Array", int], tuple["Array", "Array"]]


class Backend(Protocol):
    """What ``xentcy._api`` and ``xentcy._eval`` call; every array argument is of the
    backend's library, every call checked and normalised already."""

    # (read-only properties here, so that module constants and class attributes satisfy them)

    @property
    def DTYPES(self) -> tuple[Any, ...] | None:
        """The logits' dtypes the backend computes; None: every real floating dtype of the
        library."""
        ...

    @property
    def DEFERRED_INDEX_CHECK(self) -> bool:
        """Whether ``Evaluator.update`` leaves the class-index range check to ``result()`` (a
        device backend: no read-back per batch; its kernels give a bad row NaN, never reading
        through its index)."""
        ...

    @property
    def class_index_summary(self) -> ClassIndexSummary | None:
        """(D, bad) of a call's class indices in one pass: D, what the mean divides by (the
        rule of ``xentcy._reductions.denominator``: a float, or a 0-d array left where the
        arrays are), and bad, an index out of range (the largest at or above C, else the
        smallest negative) or None. A lazy backend (Dask) gives bad None and checks each
        chunk's indices where it computes them. None: the array-API rule of
        ``xentcy._reductions``."""
        ...

    @property
    def compare_rows(self) -> CompareRows | None:
        """(KL(softmax(reference) || softmax(logits)), argmax agreement) per row in one fused
        pass, batch-shaped; None: the array-API algorithm of ``xentcy._generic``."""
        ...

    def writable(self, x: Array) -> bool:
        """Whether the backend can write into x (``out=``, ``inplace=True``)."""
        ...

    def overlaps(self, x: Array, y: Array) -> bool:
        """Whether writing x could change y (x being y itself excluded by the caller)."""
        ...

    def softmax(self, xp: Namespace, x: Array, axis: int, log_space: bool) -> Array:
        """softmax (log_softmax where ``log_space``) of x along ``axis``, a new array."""
        ...

    def logsumexp(self, xp: Namespace, x: Array, axis: int, keepdims: bool) -> Array:
        """log sum exp of x along ``axis`` (-inf for a slice of no class)."""
        ...

    def cross_entropy_rows(
        self, call: CrossEntropyCall, *, want_grad: bool, out: Array | None, grad_scale: Any
    ) -> tuple[Array, Array | None]:
        """Per-sample losses (float64 where the library has it, batch-shaped) and, where
        ``want_grad``, the gradient times ``grad_scale`` (a float or a 0-d array), written
        into ``out`` (which may be the logits themselves) or a new array."""
        ...

    def evaluate_rows(self, call: CrossEntropyCall) -> tuple[Array, Array, Array]:
        """(losses, ranks, entropies) per sample, batch-shaped: losses as
        ``cross_entropy_rows`` gives them, the target's rank (int64; -1 where ignored), the
        entropy of the row's softmax (0 where ignored)."""
        ...
