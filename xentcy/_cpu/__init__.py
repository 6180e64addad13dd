"""The NumPy backend: lays arrays out as (N, C) rows and runs the Cython core.

No copy is made when the class axis is last with unit stride (rows may have
any stride); other layouts are copied to contiguous rows first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from .. import _layout
from .._typing import Array, Namespace
from . import _core

if TYPE_CHECKING:
    from .._checks import CrossEntropyCall

DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
DEFERRED_INDEX_CHECK = False  # the range check is one compiled pass (class_index_summary)


def writable(x: Array) -> bool:
    return isinstance(x, np.ndarray) and x.flags.writeable


def overlaps(x: Array, y: Array) -> bool:
    """Whether writing x could change y (x being y itself excluded by the caller)."""
    return np.may_share_memory(x, y)


# XLA's CPU client takes a DLPack buffer without a copy only where it is 64-byte aligned
# (measured, JAX 0.10: jnp.from_dlpack of a 262 MB NumPy array 0.4 ms aligned, 740 ms
# copied), and NumPy aligns to 16 bytes. So the arrays the kernels fill are aligned here.
ALIGNMENT = 64


def empty_like(x: np.ndarray) -> np.ndarray:
    """``np.empty_like(x)``, ALIGNMENT-byte aligned where x is C-contiguous."""
    if not x.flags.c_contiguous or x.nbytes == 0:
        return np.empty_like(x)
    raw = np.empty(x.nbytes + ALIGNMENT, np.uint8)
    start = -raw.ctypes.data % ALIGNMENT
    return raw[start : start + x.nbytes].view(x.dtype).reshape(x.shape)


def _rows(x: np.ndarray, axis: int) -> np.ndarray:
    """An (N, C) view of x (class axis last, unit stride; rows of any stride), or a copy."""
    return _layout.as_rows(np, x, axis, dense=False)


def _rows_out(dest: np.ndarray, axis: int) -> _layout.RowsOut:
    return _layout.RowsOut(np, dest, axis, dense=False)


def softmax(xp: Namespace, x: np.ndarray, axis: int, log_space: bool) -> np.ndarray:
    out = _rows_out(empty_like(x), axis)
    _core.softmax(_rows(x, axis), out.rows, log_space)
    return out.finish()


def logsumexp(xp: Namespace, x: np.ndarray, axis: int, keepdims: bool) -> np.ndarray:
    rows = _rows(x, axis)
    out = np.empty(rows.shape[0], x.dtype)
    _core.logsumexp(rows, out)
    out = out.reshape(_layout.without(x.shape, axis))
    return np.expand_dims(out, axis) if keepdims else out


def _class_indices(call: CrossEntropyCall) -> np.ndarray:
    return np.ascontiguousarray(call.target, dtype=np.intp).reshape(-1)


def _weight(call: CrossEntropyCall, dtype: Any = None) -> np.ndarray | None:
    """The class weights, contiguous (of ``dtype``: the logits' where None), or None."""
    return None if call.weight is None else np.ascontiguousarray(call.weight, dtype=dtype)


def class_index_summary(call: CrossEntropyCall) -> tuple[float, int | None]:
    """(D, an out-of-range class index or None) in one pass over the targets."""
    weight = _weight(call, np.float64)
    return _core.class_index_summary(_class_indices(call), weight, call.ignore_index, call.num_classes)


def cross_entropy_rows(
    call: CrossEntropyCall, *, want_grad: bool, out: np.ndarray | None, grad_scale: float
) -> tuple[np.ndarray, np.ndarray | None]:
    """Per-sample losses (float64, batch-shaped) and, where ``want_grad``, the gradient.

    The gradient, times ``grad_scale``, goes into ``out`` (which may be the
    logits themselves) or, where ``out`` is None, into a new array.
    """
    logits, axis = call.logits, call.axis
    a = _rows(logits, axis)
    n_rows = a.shape[0]
    loss = np.empty(n_rows, np.float64)
    grad = _rows_out(empty_like(logits) if out is None else out, axis) if want_grad else None
    g = grad.rows if grad is not None else None
    weight, eps = _weight(call), call.label_smoothing
    # the language-model options (0 for no soft-cap)
    options = (call.z_loss, call.temperature, call.softcap or 0.0)
    if call.class_indices:
        # sum_c w_c: the smoothing term's, where there is smoothing (xentcy._checks)
        weight_sum = float(call.weight_sum) if call.weight_sum is not None else 0.0
        y = _class_indices(call)
        _core.cross_entropy_index(
            a, y, weight, weight_sum, eps, call.ignore_index, grad_scale, g, loss, *options
        )
    else:
        q = _rows(call.target, axis)
        _core.cross_entropy_prob(a, q, weight, eps, grad_scale, g, loss, *options)
    return loss.reshape(call.batch_shape), (grad.finish() if grad is not None else None)


def evaluate_rows(call: CrossEntropyCall) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(losses, ranks, entropies) per sample, batch-shaped, in one pass over each row (the
    loss from the cross-entropy rows instead where there is smoothing or probability targets,
    which the evaluation kernel leaves out)."""
    logits, axis = call.logits, call.axis
    a = _rows(logits, axis)
    n_rows = a.shape[0]
    loss = np.empty(n_rows, np.float64)
    rank = np.empty(n_rows, np.intp)
    entropy = np.empty(n_rows, np.float64)
    if call.class_indices:
        weight, y, ignore_index = _weight(call), _class_indices(call), call.ignore_index
    else:
        # the rank of each row's most probable class (first on ties); every row counts
        weight, ignore_index = None, -1
        y = np.argmax(_rows(call.target, axis), axis=1).astype(np.intp)
    _core.evaluate_index(a, y, weight, ignore_index, loss, rank, entropy)
    shape = call.batch_shape
    if not call.class_indices or call.label_smoothing != 0.0:
        loss, _ = cross_entropy_rows(call, want_grad=False, out=None, grad_scale=0.0)
    return loss.reshape(shape), rank.astype(np.int64, copy=False).reshape(shape), entropy.reshape(shape)


def compare_rows(
    xp: Namespace, logits: np.ndarray, reference: np.ndarray, axis: int
) -> tuple[np.ndarray, np.ndarray]:
    """(KL(softmax(reference) || softmax(logits)), whether their argmax agree) per sample,
    batch-shaped, in one pass over each pair of rows (xent_eval.h: exact to a few ulp of the
    KL itself, however small)."""
    dtype = np.result_type(logits.dtype, reference.dtype)
    if dtype not in DTYPES:  # (float16 and the like: in float32)
        dtype = np.dtype(np.float64 if dtype.itemsize > 4 else np.float32)
    a = _rows(logits.astype(dtype, copy=False), axis)
    b = _rows(reference.astype(dtype, copy=False), axis)
    kl = np.empty(a.shape[0], np.float64)
    agree = np.empty(a.shape[0], np.intp)
    if a.shape[1] == 0:
        kl.fill(np.nan)
        agree.fill(0)
    else:
        _core.compare_rows(a, b, kl, agree)
    shape = _layout.without(logits.shape, axis)
    return kl.reshape(shape), agree.astype(bool).reshape(shape)
