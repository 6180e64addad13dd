"""Dask arrays: lazily, chunk by chunk, each chunk through the backend that fits its type.

The dispatcher hands this module the chunk backend (the Cython core for NumPy
chunks, the CUDA kernels for CuPy chunks) and the per-chunk denominator rule,
so it imports neither. The class axis is rechunked to a single chunk; the
batch axes keep their chunks. The mean divides the sum over all chunks by D
summed over all chunks, exactly as for one array.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import dask
import dask.array as da
import numpy as np

from ._backend import Backend
from ._layout import without
from ._typing import Array, Namespace

if TYPE_CHECKING:
    from ._checks import CrossEntropyCall


def _assemble(blocks: np.ndarray) -> Any:
    """One dask array from an object array of dask blocks laid out like the chunk grid."""
    return blocks[()] if blocks.ndim == 0 else da.block(blocks.tolist())


def _chunk_call(template: CrossEntropyCall, logits: Array, target: Array, weights: Any) -> Any:
    """The call ``template`` (options only) completed with one chunk's concrete arrays;
    ``weights``: None, or the computed (weight, weight_sum)."""
    batch_shape = tuple(target.shape) if logits is None else without(tuple(logits.shape), template.axis)
    weight, weight_sum = weights if weights is not None else (None, None)
    return dataclasses.replace(
        template, logits=logits, target=target, weight=weight, weight_sum=weight_sum, batch_shape=batch_shape
    )


class DaskBackend:
    """The backend interface (``xentcy._backend.Backend``) over the chunks of Dask arrays."""

    DEFERRED_INDEX_CHECK = False  # each chunk's indices are checked where it is computed
    compare_rows = None  # the array-API algorithm, on the Dask arrays, lazily

    def __init__(
        self, chunk_xp: Namespace, chunk_backend: Backend, denominator: Callable[[Any], Any]
    ) -> None:
        self.chunk_xp = chunk_xp
        self.chunk_backend = chunk_backend
        self.chunk_denominator = denominator
        self.DTYPES = chunk_backend.DTYPES

    @staticmethod
    def writable(x: Array) -> bool:
        return False  # Dask arrays are immutable: out= and inplace= are refused

    @staticmethod
    def overlaps(x: Array, y: Array) -> bool:
        return False

    def softmax(self, xp: Namespace, x: Array, axis: int, log_space: bool) -> Any:
        x = x.rechunk({axis: -1})
        chunk_xp, chunk_softmax = self.chunk_xp, self.chunk_backend.softmax
        return x.map_blocks(
            lambda block: chunk_softmax(chunk_xp, block, axis, log_space), dtype=x.dtype, meta=x._meta
        )

    def logsumexp(self, xp: Namespace, x: Array, axis: int, keepdims: bool) -> Any:
        x = x.rechunk({axis: -1})
        chunk_xp, chunk_logsumexp = self.chunk_xp, self.chunk_backend.logsumexp
        reduced = x.map_blocks(
            lambda block: chunk_logsumexp(chunk_xp, block, axis, False),
            drop_axis=axis,
            dtype=x.dtype,
            meta=self.chunk_xp.empty((0,) * (x.ndim - 1), dtype=x.dtype),
        )
        return da.expand_dims(reduced, axis) if keepdims else reduced

    def _template(self, call: CrossEntropyCall) -> Any:
        """``call`` without its Dask arrays, so that tasks do not carry the graph along."""
        return dataclasses.replace(
            call, xp=self.chunk_xp, logits=None, target=None, weight=None, weight_sum=None
        )

    def _rechunked(self, call: CrossEntropyCall) -> tuple[Any, Any, Any]:
        """Logits with one chunk along the class axis, target chunked alike, and the weights
        as one Delayed of (weight, weight_sum), or None."""
        logits = call.logits.rechunk({call.axis: -1})
        chunks = without(logits.chunks, call.axis) if call.class_indices else logits.chunks
        target = call.target.rechunk(chunks)
        if call.weight is None:
            return logits, target, None
        weight = call.weight.rechunk(-1).to_delayed().ravel()[0]
        weight_sum = None if call.weight_sum is None else call.weight_sum.to_delayed().ravel()[0]
        return logits, target, dask.delayed(tuple, pure=True)([weight, weight_sum])

    def class_index_summary(self, call: CrossEntropyCall) -> tuple[Any, None]:
        """(D as a lazy 0-d float64 array, None): the chunk rule, summed over the target's
        chunks; it checks each chunk's class indices when computed."""
        _, target, weight = self._rechunked(call)
        template, rule = self._template(call), self.chunk_denominator

        def chunk_denominator(block: Array, w: Array) -> float:
            return rule(_chunk_call(template, None, block, w))

        parts = [dask.delayed(chunk_denominator, pure=True)(b, weight) for b in target.to_delayed().ravel()]
        return da.from_delayed(dask.delayed(math.fsum)(parts), shape=(), dtype=np.float64), None

    def cross_entropy_rows(
        self, call: CrossEntropyCall, *, want_grad: bool, out: Array | None, grad_scale: Array
    ) -> tuple[Array, Array | None]:
        """Lazy per-sample losses (float64) and gradient; one task per chunk computes both."""
        logits, target, weight = self._rechunked(call)
        if isinstance(grad_scale, da.Array):
            grad_scale = grad_scale.to_delayed().ravel()[0]
        template, chunk_rows = self._template(call), self.chunk_backend.cross_entropy_rows
        check_indices = self.chunk_denominator if call.class_indices else None

        def compute_chunk(block: Array, target_block: Array, w: Array, scale: Array) -> tuple[Any, Any]:
            chunk = _chunk_call(template, block, target_block, w)
            if check_indices is not None:
                # the chunk's class indices are checked where they are used: no task computes
                # through one out of range, whichever task the scheduler runs first
                check_indices(chunk)
            return chunk_rows(chunk, want_grad=want_grad, out=None, grad_scale=float(scale))

        axis = call.axis
        loss_meta = self.chunk_xp.empty((0,) * (logits.ndim - 1), dtype=np.float64)
        logits_blocks, target_blocks = logits.to_delayed(), target.to_delayed()
        losses = np.empty(without(logits.numblocks, axis), dtype=object)
        grads = np.empty(logits.numblocks, dtype=object)
        for index in np.ndindex(*logits.numblocks):
            batch_index = without(index, axis)
            shape = tuple(chunks[i] for chunks, i in zip(logits.chunks, index, strict=True))
            loss, grad = dask.delayed(compute_chunk, nout=2, pure=True)(
                logits_blocks[index],
                target_blocks[batch_index if call.class_indices else index],
                weight,
                grad_scale,
            )
            batch_shape = without(shape, axis)
            losses[batch_index] = da.from_delayed(loss, batch_shape, dtype=np.float64, meta=loss_meta)
            if want_grad:
                grads[index] = da.from_delayed(grad, shape, dtype=logits.dtype, meta=logits._meta)
        return _assemble(losses), (_assemble(grads) if want_grad else None)

    def evaluate_rows(self, call: CrossEntropyCall) -> tuple[Any, Any, Any]:
        """Lazy per-sample (losses, ranks, entropies): one task per chunk, through the chunk
        backend's evaluation rows."""
        logits, target, weight = self._rechunked(call)
        template, chunk_backend = self._template(call), self.chunk_backend
        check_indices = self.chunk_denominator if call.class_indices else None

        def compute_chunk(block: Array, target_block: Array, w: Array) -> tuple[Any, Any, Any]:
            chunk = _chunk_call(template, block, target_block, w)
            if check_indices is not None:
                check_indices(chunk)  # as in cross_entropy_rows: checked where used
            return chunk_backend.evaluate_rows(chunk)

        axis = call.axis
        logits_blocks, target_blocks = logits.to_delayed(), target.to_delayed()
        out = [np.empty(without(logits.numblocks, axis), dtype=object) for _ in range(3)]
        dtypes = (np.float64, np.int64, np.float64)
        metas = [self.chunk_xp.empty((0,) * (logits.ndim - 1), dtype=d) for d in dtypes]
        for index in np.ndindex(*logits.numblocks):
            batch_index = without(index, axis)
            shape = without(tuple(chunks[i] for chunks, i in zip(logits.chunks, index, strict=True)), axis)
            parts = dask.delayed(compute_chunk, nout=3, pure=True)(
                logits_blocks[index], target_blocks[batch_index if call.class_indices else index], weight
            )
            for k in range(3):
                out[k][batch_index] = da.from_delayed(parts[k], shape, dtype=dtypes[k], meta=metas[k])
        losses, ranks, entropies = (_assemble(o) for o in out)
        return losses, ranks, entropies
