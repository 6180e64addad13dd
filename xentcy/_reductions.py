"""The reduction rules: D, what the mean divides by (torch's rule, api.md "Semantics"), the
gradient's factor, and the reduction of per-sample losses; written once, with array-API calls
on the caller's namespace, for every backend."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from array_api_compat import device

from ._checks import (
    CrossEntropyCall,
    check_class_index_values,
    class_index_error,
    index_dtype,
    loss_dtype,
    sum_dtype,
)
from ._typing import Array


def denominator(
    call: CrossEntropyCall, summary: Callable[[CrossEntropyCall], tuple[Any, int | None]] | None = None
) -> Any:
    """D, what the mean divides by, after checking that every class index is in range (D
    needs every index anyway).

    Class indices: the sum of the target classes' weights over the samples that
    are not ignored (their count without weights), accumulated in float64 and
    left on the arrays' device as a 0-d array, so that no more than the range
    check's one flag is read back. Probabilities: the number of samples, a float.
    ``summary(call)``, where a backend has one, computes this D and the largest
    out-of-range index (or None) in one pass instead. Inside a JAX trace nothing can be
    read back: there is no check, and the backends give a bad index's row a NaN loss and
    gradient instead of the ValueError (api.md, Errors).
    """
    if not call.class_indices:
        return float(call.num_samples)
    if call.traced:
        return unchecked_denominator(call)[0]
    if summary is not None:
        total, bad = summary(call)
        if bad is not None:
            raise class_index_error(call.num_classes, call.ignore_index, bad)
        return total
    check_class_index_values(call)
    return unchecked_denominator(call)[0]


def unchecked_denominator(call: CrossEntropyCall) -> tuple[Any, Any]:
    """(D over the class indices in range, whether any index is out of range) as 0-d arrays
    where the targets are, with no read-back: :func:`denominator` after its check, and the
    device backends' ``Evaluator.update``, which leaves the check to ``result()``."""
    xp, y = call.xp, call.target
    kept = y != call.ignore_index
    valid = kept & (y >= 0) & (y < call.num_classes)
    bad = xp.any(kept & ~valid)
    if call.weight is None:
        return xp.astype(xp.sum(xp.astype(valid, index_dtype(xp))), sum_dtype(xp)), bad
    safe = xp.where(valid, y, xp.zeros_like(y))
    w_y = xp.take(call.weight, xp.reshape(safe, (-1,)))
    w_y = xp.where(xp.reshape(valid, (-1,)), w_y, xp.zeros_like(w_y))
    return xp.sum(xp.astype(w_y, sum_dtype(xp))), bad


def gradient_scale(call: CrossEntropyCall, denom: Array) -> Any:
    """The factor in front of each sample's gradient: 1/D for the mean, else 1.

    D = 0 gives 0: every sample then has zero weight or is ignored, and the
    gradient is all zeros (a finite choice, where torch gives NaN). An infinite
    D (an infinite weight on a target class) gives NaN, as the mean is NaN then:
    1/D = 0 would pass for the gradient of D = 0. A float D gives a float; a
    0-d array D (on a device, or lazy) a 0-d array, computed where it lies.
    """
    if call.reduction != "mean":
        return 1.0
    if isinstance(denom, float):
        if denom == 0:
            return 0.0
        return 1.0 / denom if not math.isinf(denom) else math.nan
    xp = call.xp
    nonzero = denom != 0
    scale = xp.where(xp.isinf(denom), math.nan, 1.0 / xp.where(nonzero, denom, 1.0))
    return xp.where(nonzero, scale, 0.0)


def reduce_losses(call: CrossEntropyCall, losses: Array, denom: Array) -> Any:
    """Apply ``reduction`` to the per-sample losses (float64, shaped like the batch).

    The result has the loss's dtype (:func:`loss_dtype`): a 0-d array for "mean"
    and "sum"; the mean is NaN where D = 0. ``denom`` is a float or a 0-d array
    (on a device, or lazy).
    """
    xp = call.xp
    dtype = loss_dtype(xp, call.logits.dtype)
    if call.reduction == "none":
        return xp.astype(losses, dtype)
    total = xp.sum(losses)
    if call.reduction == "mean":
        if isinstance(denom, float):
            # D on the host: a division by a float (D = 0: NaN, without a division by zero)
            total = total / denom if denom != 0 else total * math.nan
        else:
            total = xp.asarray(total)
            d = xp.asarray(denom, dtype=total.dtype, device=device(total))
            total = total / xp.where(d != 0, d, math.nan)
    # NumPy's operations on 0-d arrays give scalars; the contract, a 0-d array
    return xp.astype(xp.asarray(total), dtype)
