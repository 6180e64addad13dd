"""The generic backend: array-API standard calls only, for every library without a kernel of ours.

PyTorch, JAX, array_api_strict and the rest compute here, on their own
device, with the same max-shifted numerics as the compiled kernels. Class
indices become dense target rows q, so one formula serves both kinds of
target; that costs an (N, C) temporary, which the compiled backends avoid.
"""

from __future__ import annotations

import math
from typing import Any

from array_api_compat import device as _device
from array_api_compat import is_writeable_array

DTYPES = None  # every real floating dtype the library has


def writable(x: Any) -> bool:
    return is_writeable_array(x)


def overlaps(x: Any, y: Any) -> bool:
    # The gradient is computed whole before it is copied into out, so sharing
    # memory with an input cannot change the result here.
    return False


def _work_dtype(xp: Any, dtype: Any) -> Any:
    """float32 for half-precision logits (fp32 accumulation), else their own dtype."""
    return xp.float32 if xp.finfo(dtype).bits < 32 else dtype


def _accumulation_dtype(xp: Any, x: Any) -> Any:
    """float64 where the library has it on x's device (JAX without x64 has not)."""
    try:
        supported = xp.__array_namespace_info__().dtypes(kind="real floating", device=_device(x))
    except (AttributeError, TypeError):
        supported = {"float64": getattr(xp, "float64", None)}
    return supported.get("float64") or x.dtype


def _shifted(xp: Any, x: Any) -> tuple[Any, Any]:
    """(x - m, m) with m = max over the last axis, or 0 where that max is not finite."""
    m = xp.max(x, axis=-1, keepdims=True)
    m = xp.where(xp.isfinite(m), m, xp.zeros_like(m))
    return x - m, m


def softmax(xp: Any, x: Any, axis: int, log_space: bool) -> Any:
    dtype = x.dtype
    moved = xp.moveaxis(xp.astype(x, _work_dtype(xp, dtype)), axis, -1)
    if moved.shape[-1] == 0:
        return xp.asarray(x, copy=True)
    z, _ = _shifted(xp, moved)
    if log_space:
        out = z - xp.log(xp.sum(xp.exp(z), axis=-1, keepdims=True))
    else:
        e = xp.exp(z)
        out = e / xp.sum(e, axis=-1, keepdims=True)
    return xp.astype(xp.moveaxis(out, -1, axis), dtype)


def logsumexp(xp: Any, x: Any, axis: int, keepdims: bool) -> Any:
    dtype = x.dtype
    moved = xp.moveaxis(xp.astype(x, _work_dtype(xp, dtype)), axis, -1)
    if moved.shape[-1] == 0:
        out = xp.full(moved.shape[:-1], -xp.inf, dtype=dtype, device=_device(x))
    else:
        z, m = _shifted(xp, moved)
        out = xp.astype(m[..., 0] + xp.log(xp.sum(xp.exp(z), axis=-1)), dtype)
    return xp.expand_dims(out, axis=axis) if keepdims else out


def _target_rows(call: Any, work: Any) -> Any:
    """w ∘ q: the weighted, smoothed target distribution, class axis last."""
    xp, eps, num_classes = call.xp, call.label_smoothing, call.num_classes
    if call.class_indices:
        y = call.target
        classes = xp.arange(num_classes, device=_device(y))
        onehot = xp.astype(y[..., None] == classes, work)
        q = (1.0 - eps) * onehot + eps / num_classes
        kept = xp.astype(y != call.ignore_index, work)[..., None]
        q = q * kept
    else:
        q = xp.moveaxis(xp.astype(call.target, work), call.axis, -1)
        if eps != 0.0:
            q = (1.0 - eps) * q + eps / num_classes
    if call.weight is not None:
        wq = q * xp.astype(call.weight, work)
        # class indices: a class of zero mass adds nothing, whatever its weight (0 * NaN is NaN)
        q = xp.where(q != 0, wq, xp.zeros_like(q)) if call.class_indices else wq
    return q


def cross_entropy_rows(call: Any, *, want_grad: bool, out: Any, grad_scale: Any) -> tuple[Any, Any]:
    """Per-sample losses (float64 where the library has it) and, where ``want_grad``, the gradient."""
    xp, logits = call.xp, call.logits
    work = _work_dtype(xp, logits.dtype)
    a = xp.moveaxis(xp.astype(logits, work), call.axis, -1)
    wq = _target_rows(call, work)
    z, _ = _shifted(xp, a)
    s = xp.sum(xp.exp(z), axis=-1, keepdims=True)
    mass = xp.sum(wq, axis=-1, keepdims=True)  # sum_c w_c q_c
    # sum_c w_c q_c ((m - A_c) + log s); zero-mass classes add nothing, even at A_c = -inf
    t = xp.sum(wq * xp.where(wq != 0, -z, xp.zeros_like(z)), axis=-1, keepdims=True)
    loss = t + xp.where(mass != 0, mass * xp.log(s), xp.zeros_like(mass))
    # a NaN logit gives its sample NaN, even at zero target mass (ignored samples stay 0)
    nan_sample = xp.isnan(s)
    if call.class_indices:
        nan_sample = nan_sample & (call.target != call.ignore_index)[..., None]
    loss = xp.where(nan_sample, s, loss)
    if call.traced and call.class_indices:
        # no range check could run (a JAX trace): a bad class index makes its row's loss NaN,
        # and its gradient too, also where the trace differentiates this (NaN times the row)
        y = call.target[..., None]
        bad = (y != call.ignore_index) & ((y < 0) | (y >= call.num_classes))
        # (a NaN factor only on bad rows: jax.grad of a where() multiplies the other branch by 0)
        factor = xp.where(bad, xp.asarray(math.nan, dtype=work), xp.asarray(0.0, dtype=work))
        finite = xp.where(xp.isfinite(a), a, xp.zeros_like(a))
        loss = loss + factor * xp.sum(finite, axis=-1, keepdims=True)
    loss = xp.astype(loss[..., 0], _accumulation_dtype(xp, logits))
    if not want_grad:
        return loss, None
    # dL/dA_c = scale (p_c sum_k w_k q_k - w_c q_c); zeros where scale is 0 and for ignored samples
    scale = xp.asarray(grad_scale, dtype=work, device=_device(logits))
    grad = scale * (xp.exp(z) / s * mass - wq)
    nonzero = scale != 0
    if call.class_indices:
        nonzero = nonzero & (call.target != call.ignore_index)[..., None]
    grad = xp.where(nonzero, grad, xp.zeros_like(grad))
    if call.traced and call.class_indices:
        grad = xp.where(bad, xp.asarray(math.nan, dtype=grad.dtype), grad)
    grad = xp.astype(xp.moveaxis(grad, -1, call.axis), logits.dtype)
    if out is None:
        return loss, grad
    out[...] = grad
    return loss, out
