"""The generic backend: array-API standard calls only, for every library without a kernel of ours.

PyTorch, JAX, array_api_strict and the rest compute here, on their own
device, with the same max-shifted numerics as the compiled kernels. Class
indices become dense target rows q, so one formula serves both kinds of
target; that costs an (N, C) temporary, which the compiled backends avoid.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from array_api_compat import device as _device
from array_api_compat import is_writeable_array

from ._typing import Array, Namespace

if TYPE_CHECKING:
    from ._checks import CrossEntropyCall

DTYPES = None  # every real floating dtype the library has
DEFERRED_INDEX_CHECK = False
class_index_summary = None  # the array-API rule of xentcy._reductions


def writable(x: Array) -> bool:
    return is_writeable_array(x)


def overlaps(x: Array, y: Array) -> bool:
    # The gradient is computed whole before it is copied into out, so sharing
    # memory with an input cannot change the result here.
    return False


def _work_dtype(xp: Namespace, dtype: Any) -> Any:
    """float32 for half-precision logits (fp32 accumulation), else their own dtype."""
    return xp.float32 if xp.finfo(dtype).bits < 32 else dtype


def _accumulation_dtype(xp: Namespace, x: Array) -> Any:
    """float64 where the library has it on x's device (JAX without x64 has not)."""
    try:
        supported = xp.__array_namespace_info__().dtypes(kind="real floating", device=_device(x))
    except (AttributeError, TypeError):
        supported = {"float64": getattr(xp, "float64", None)}
    return supported.get("float64") or x.dtype


def _shifted(xp: Namespace, x: Array) -> tuple[Any, Any]:
    """(x - m, m) with m = max over the last axis, or 0 where that max is not finite."""
    m = xp.max(x, axis=-1, keepdims=True)
    m = xp.where(xp.isfinite(m), m, xp.zeros_like(m))
    return x - m, m


def softmax(xp: Namespace, x: Array, axis: int, log_space: bool) -> Any:
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


def logsumexp(xp: Namespace, x: Array, axis: int, keepdims: bool) -> Any:
    dtype = x.dtype
    moved = xp.moveaxis(xp.astype(x, _work_dtype(xp, dtype)), axis, -1)
    if moved.shape[-1] == 0:
        out = xp.full(moved.shape[:-1], -xp.inf, dtype=dtype, device=_device(x))
    else:
        z, m = _shifted(xp, moved)
        out = xp.astype(m[..., 0] + xp.log(xp.sum(xp.exp(z), axis=-1)), dtype)
    return xp.expand_dims(out, axis=axis) if keepdims else out


def _target_rows(call: CrossEntropyCall, work: Any) -> Any:
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


def final_logits(
    xp: Namespace, a: Array, softcap: float | None, temperature: float, want_grad: bool = False
) -> tuple[Array, Array | None]:
    """(the logits the loss is computed on, the soft-cap's derivative or None): a divided by
    the temperature, then soft-capped to cap tanh(x / cap) (a itself where neither is set). The
    derivative, where ``want_grad``: 1 - tanh^2 = 4e / (1 + e)^2, e = exp(-2 |x / cap|), which
    keeps its digits where tanh rounds to 1 (and does not overflow, as 1 / cosh^2 would). Also
    the evaluator's and CrossEntropyLoss.softmax's transform, for any library."""
    if temperature != 1.0:
        a = a / temperature
    if softcap is None:
        return a, None
    u = a / softcap
    derivative = None
    if want_grad:
        e = xp.exp(-2.0 * xp.abs(u))
        derivative = 4.0 * e / ((1.0 + e) * (1.0 + e))
    return softcap * xp.tanh(u), derivative


def cross_entropy_rows(
    call: CrossEntropyCall, *, want_grad: bool, out: Array | None, grad_scale: Array
) -> tuple[Array, Array | None]:
    """Per-sample losses (float64 where the library has it) and, where ``want_grad``, the gradient."""
    xp, logits = call.xp, call.logits
    work = _work_dtype(xp, logits.dtype)
    moved = xp.moveaxis(xp.astype(logits, work), call.axis, -1)
    a, d_logits = final_logits(xp, moved, call.softcap, call.temperature, want_grad)
    wq = _target_rows(call, work)
    z, m = _shifted(xp, a)
    s = xp.sum(xp.exp(z), axis=-1, keepdims=True)
    mass = xp.sum(wq, axis=-1, keepdims=True)  # sum_c w_c q_c
    # sum_c w_c q_c ((m - A_c) + log s); zero-mass classes add nothing, even at A_c = -inf
    t = xp.sum(wq * xp.where(wq != 0, -z, xp.zeros_like(z)), axis=-1, keepdims=True)
    loss = t + xp.where(mass != 0, mass * xp.log(s), xp.zeros_like(mass))
    zz = None
    if call.z_loss != 0.0:
        # the z-loss z lse^2 of each counted sample, and its gradient's 2 z lse p_c
        lse = m + xp.log(s)
        counted = xp.ones_like(lse) if not call.class_indices else xp.astype(
            (call.target != call.ignore_index)[..., None], work
        )
        loss = loss + xp.where(counted != 0, call.z_loss * lse * lse, xp.zeros_like(lse))
        zz = xp.where(counted != 0, 2.0 * call.z_loss * lse, xp.zeros_like(lse))
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
    grad = scale * (xp.exp(z) / s * (mass if zz is None else mass + zz) - wq)
    if d_logits is not None:
        grad = grad * d_logits
    if call.temperature != 1.0:
        grad = grad / call.temperature
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


def evaluate_rows(call: CrossEntropyCall) -> tuple[Array, Array, Array]:
    """(losses, ranks, entropies) per sample, batch-shaped: the losses of
    :func:`cross_entropy_rows`, the rank of the target (of a probability row's argmax) with
    ties broken by the lower index (int64; -1 where ignored, C for a NaN row), the entropy of
    the row's softmax (0 where ignored, NaN where the softmax is undefined)."""
    losses, _ = cross_entropy_rows(call, want_grad=False, out=None, grad_scale=0.0)
    ranks, entropies = _ranks_and_entropies(call, _effective_target(call))
    return losses, ranks, entropies


def _ranks_and_entropies(call: CrossEntropyCall, effective_y: Array) -> tuple[Array, Array]:
    """(ranks, entropies) of the rows. ``effective_y``: the class whose rank is wanted, per
    row (int64, batch-shaped; ignore_index where the row does not count)."""
    xp = call.xp
    a = xp.moveaxis(xp.astype(call.logits, _work_dtype(xp, call.logits.dtype)), call.axis, -1)
    num_classes = call.num_classes
    kept = effective_y != call.ignore_index
    y = xp.where(kept, effective_y, xp.zeros_like(effective_y))
    classes = xp.arange(num_classes, device=_device(a))
    is_y = classes == y[..., None]
    a_y = xp.sum(xp.where(is_y, a, xp.zeros_like(a)), axis=-1, keepdims=True)
    beats = (a > a_y) | ((a == a_y) & (classes < y[..., None]))
    rank = xp.sum(xp.astype(beats, xp.int64), axis=-1)
    nan_row = xp.any(xp.isnan(a), axis=-1)
    rank = xp.where(nan_row, xp.full_like(rank, num_classes), rank)
    rank = xp.where(kept, rank, xp.full_like(rank, -1))
    z, _ = _shifted(xp, a)
    e = xp.exp(z)
    s = xp.sum(e, axis=-1)
    t = xp.sum(xp.where(e != 0, -e * z, xp.zeros_like(e)), axis=-1)
    entropy = xp.log(s) + t / s
    # a +inf logit (s = inf) or a row of only -inf (s = 0): the softmax, and its entropy,
    # undefined (as in the kernels)
    entropy = xp.where((s > 0) & (s < math.inf), entropy, xp.full_like(entropy, math.nan))
    entropy = xp.where(kept, entropy, xp.zeros_like(entropy))
    return rank, entropy


def _argmax_first(xp: Namespace, x: Array) -> Any:
    """The first index of the max along the last axis (NumPy's rule), int64."""
    return xp.astype(xp.argmax(x, axis=-1), xp.int64)


def _effective_target(call: CrossEntropyCall) -> Array:
    """The class whose rank is measured: the index itself, or the probability row's argmax."""
    if call.class_indices:
        return call.target
    xp = call.xp
    return _argmax_first(xp, xp.moveaxis(call.target, call.axis, -1))




def _expm1_minus_x(xp: Namespace, x: Array) -> Any:
    """e^x - 1 - x for |x| <= 1/2, from its Taylor series (to x^15: below float64's ulp)."""
    p = xp.full_like(x, 1.0 / math.factorial(15))
    for n in range(14, 1, -1):
        p = p * x + 1.0 / math.factorial(n)
    return p * x * x


def compare_rows(xp: Namespace, logits: Array, reference: Array, axis: int) -> tuple[Array, Array]:
    """(KL(q || p), whether the argmax agree) per row, q = softmax(reference), p =
    softmax(logits), batch-shaped, through the array API, in float64 where the library has
    it: the CPU core's algorithm (xent_eval.h), KL = E_q[d] + log(Sp / Sq) where that is at
    least 4, else log1p(E_q[g(mu - d)]), g(x) = e^x - 1 - x, which keeps the digits of a
    small KL; +inf where p is 0 and q is not; NaN, and no agreement, for a row where either
    softmax is undefined (a NaN, a +inf, no finite logit)."""
    acc = _accumulation_dtype(xp, logits)
    a = xp.moveaxis(xp.astype(logits, acc), axis, -1)
    b = xp.moveaxis(xp.astype(reference, acc), axis, -1)
    ma, mb = xp.max(a, axis=-1, keepdims=True), xp.max(b, axis=-1, keepdims=True)
    undefined = ~(xp.isfinite(ma) & xp.isfinite(mb))  # (a NaN makes the max NaN)
    no_p = xp.any((a == -xp.inf) & (b != -xp.inf), axis=-1)
    # every value below finite or -inf, so that no operation warns: the undefined rows as 0
    # (their NaN is put back at the end), the shifts 0 there
    a, b = xp.where(undefined, xp.zeros_like(a), a), xp.where(undefined, xp.zeros_like(b), b)
    zero = xp.zeros_like(ma)
    ma, mb = xp.where(undefined, zero, ma), xp.where(undefined, zero, mb)
    eu, ev = xp.exp(b - mb), xp.exp(a - ma)
    q_zero = b == -xp.inf
    zeros = xp.zeros_like(eu)
    # d = (b - a) - (mb - ma), b - a's rounding recovered exactly (TwoSum), as the core does;
    # 0 where either logit is -inf (q_zero, or no_p's row)
    finite = (a != -xp.inf) & (b != -xp.inf)
    af, bf = xp.where(finite, a, zeros), xp.where(finite, b, zeros)
    diff = bf - af
    bx = diff - bf
    d = (diff - (mb - ma)) + ((bf - (diff - bx)) - (af + bx))
    d = xp.where(finite, d, zeros)
    sq, sp = xp.sum(eu, axis=-1, keepdims=True), xp.sum(ev, axis=-1, keepdims=True)
    mu = xp.sum(eu * d, axis=-1, keepdims=True) / sq
    first = mu + xp.log(sp / sq)
    exact_rows = first < 4.0
    mu = xp.where(exact_rows, mu, zero)  # (the other rows keep the first form: no overflow)
    x = mu - d
    # q_c e^x as exp(v + mu) where e^x would overflow or q_c is 0 (p's mass there)
    far = (x > 700.0) | q_zero
    near = (x <= 0.5) & (x >= -0.5) & ~far
    g = eu * (xp.expm1(xp.where(far | near, zeros, x)) - x)
    g = xp.where(far, xp.exp((a - ma) + mu) - eu * (1 + x), g)
    g = xp.where(near, eu * _expm1_minus_x(xp, xp.where(near, x, zeros)), g)
    undefined = undefined[..., 0]
    exact = xp.log1p(xp.sum(g, axis=-1, keepdims=True) / sq)
    kl = xp.where(exact_rows, exact, first)[..., 0]
    kl = xp.where(no_p, xp.full_like(kl, xp.inf), kl)
    kl = xp.where(undefined, xp.full_like(kl, xp.nan), kl)
    agree = (_argmax_first(xp, a) == _argmax_first(xp, b)) & ~undefined
    return kl, agree
