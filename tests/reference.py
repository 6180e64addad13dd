"""Independent float64 NumPy reference for the tests.

Written from the formulas in ``spec/cross-entropy.md`` and ``spec/api.md``;
it never imports xentcy. Everything is computed in float64 in the
max-shifted form: with m = max_c A_c and s = sum_c exp(A_c - m),
log p_c = (A_c - m) - log s. Classes whose weighted target mass w_c q_c is
0 contribute nothing to the loss, even where A_c is -inf.

Per sample (q the smoothed target distribution, w the class weights):

    loss_i = -sum_c w_c q_c log p_c
    grad_i = (p * sum_c w_c q_c - w * q) / D

where D is the mean's denominator (1 for "sum" and "none"). The loss options
of the language-model losses, in the order the issue defines: the logits are
divided by ``temperature``, then soft-capped (cap * tanh(x / cap)), and the
z-loss z * lse^2 of those final logits is added, unweighted, to every counted
sample's loss; the gradient is chained back through the cap and the
temperature (d/dx cap tanh(x / cap) = 1 / cosh(x / cap)^2).
"""

import numpy as np


def _shift_and_log_sum(x, axis):
    """(m, log s), both keepdims: m = max (0 where not finite), s = sum exp(x - m)."""
    m = np.max(x, axis=axis, keepdims=True)
    # An all -inf (or +inf) row has no finite shift; 0 keeps exp() exact there.
    m = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):
        return m, np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True))


def logsumexp(x, axis=-1, keepdims=False):
    x = np.asarray(x, dtype=np.float64)
    m, log_s = _shift_and_log_sum(x, axis)
    out = m + log_s
    return out if keepdims else np.squeeze(out, axis=axis)


def log_softmax(x, axis=-1):
    # (x - m) - log s, not x - (m + log s): the second loses log s where |m| is large
    # (two logits of 1e30 have log p = -log 2, and 1e30 + log 2 rounds to 1e30)
    x = np.asarray(x, dtype=np.float64)
    m, log_s = _shift_and_log_sum(x, axis)
    return (x - m) - log_s


def softmax(x, axis=-1):
    x = np.asarray(x, dtype=np.float64)
    m = np.max(x, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    e = np.exp(x - m)
    return e / np.sum(e, axis=axis, keepdims=True)


def _flatten(logits, target, axis, ignore_index, label_smoothing):
    """Move the class axis last and flatten the batch axes.

    Returns A (M, C) float64 logits, q (M, C) the smoothed target
    distribution (zero on ignored samples), y (M,) the class indices or None
    for probability targets, valid (M,) False on ignored samples, and the
    batch shape.
    """
    A = np.moveaxis(logits, axis, -1)
    batch_shape = A.shape[:-1]
    C = A.shape[-1]
    A = A.reshape(-1, C)
    target = np.asarray(target)
    if target.ndim == logits.ndim - 1:
        y = target.reshape(-1).astype(np.int64)
        valid = y != ignore_index
        q = np.zeros_like(A)
        rows = np.nonzero(valid)[0]
        q[rows, y[rows]] = 1.0
    else:
        y = None
        q = np.moveaxis(target.astype(np.float64), axis, -1).reshape(-1, C)
        valid = np.ones(A.shape[0], dtype=bool)
    if label_smoothing:
        q = (1.0 - label_smoothing) * q + label_smoothing / C
        q[~valid] = 0.0
    return A, q, y, valid, batch_shape


def cross_entropy_and_grad(logits, target, axis=-1, weight=None, ignore_index=-100,
                           label_smoothing=0.0, reduction="mean", z_loss=0.0, softcap=None,
                           temperature=1.0, denominator=None):
    """Return (loss, grad) in float64; grad has the logits' shape."""
    logits = np.asarray(logits, dtype=np.float64)
    axis = axis % logits.ndim
    A, q, y, valid, batch_shape = _flatten(
        logits, target, axis, ignore_index, label_smoothing)
    M, C = A.shape
    A = A / temperature
    dA = np.full_like(A, 1.0 / temperature)  # d(final logits) / d(logits)
    if softcap is not None:
        with np.errstate(over="ignore"):
            dA = dA / np.cosh(A / softcap) ** 2
        A = softcap * np.tanh(A / softcap)
    w = np.ones(C) if weight is None else np.asarray(weight, dtype=np.float64)

    m = np.max(A, axis=-1, keepdims=True) if C else np.zeros((M, 1))
    m = np.where(np.isfinite(m), m, 0.0)
    e = np.exp(A - m)
    s = np.sum(e, axis=-1, keepdims=True)
    p = e / s
    with np.errstate(invalid="ignore"):
        wq = w * q
    if y is not None:
        # class indices: a class of zero target mass adds nothing, whatever its weight
        # (NaN or inf included), as in torch, whose loss reads w at the target only
        wq = np.where(q != 0.0, wq, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        # (m - A_c) + log s: the loss term without cancellation.
        neg_log_p = (m - A) + np.log(s)
        terms = np.where(wq != 0.0, wq * neg_log_p, 0.0)
    per_sample = np.sum(terms, axis=-1)
    with np.errstate(divide="ignore", over="ignore"):
        lse = (m + np.log(s))[:, 0]
    if z_loss != 0.0:  # (0 * lse^2 would be NaN where lse is infinite: no z-loss adds nothing)
        per_sample = per_sample + np.where(valid, z_loss * lse**2, 0.0)
    # A NaN logit poisons its sample even where its target mass is 0, unless the sample
    # is ignored (ignored samples have loss 0, as in torch).
    per_sample = np.where(np.isnan(A).any(axis=-1) & valid, np.nan, per_sample)

    if reduction != "mean":
        D = 1.0
    elif y is not None:
        D = float(np.sum(w[y[valid]]))
    else:
        D = float(M)
    if denominator is not None:
        D = float(denominator)
    if reduction == "none":
        loss = per_sample.reshape(batch_shape)
    elif reduction == "sum":
        loss = np.float64(np.sum(per_sample))
    else:
        loss = np.float64(np.nan) if D == 0 else np.float64(np.sum(per_sample) / D)

    with np.errstate(invalid="ignore"):
        mass = np.sum(wq, axis=-1, keepdims=True)
        g = p * (mass + 2 * z_loss * lse[:, None] if z_loss != 0.0 else mass) - wq
        if softcap is not None or temperature != 1.0:
            g = g * dA
    if D == 0:
        g = np.zeros_like(g)
    elif np.isinf(D):
        # an infinite D (an infinite weight on a target class): the mean is NaN and so is
        # its gradient (api.md, Semantics)
        g = np.full_like(g, np.nan)
    else:
        g = g / D
    g[~valid] = 0.0  # ignored samples have gradient 0, whatever D is (api.md, Semantics)
    grad = np.moveaxis(g.reshape(batch_shape + (C,)), -1, axis)
    return loss, grad


def cross_entropy(logits, target, **kwargs):
    return cross_entropy_and_grad(logits, target, **kwargs)[0]


def cross_entropy_grad(logits, target, **kwargs):
    return cross_entropy_and_grad(logits, target, **kwargs)[1]
