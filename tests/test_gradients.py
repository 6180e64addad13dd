"""The gradient is the derivative of the reduced loss: central differences.

Finite differences of xentcy's own float64 loss, one logit at a time, are
an independent check of cross_entropy_grad, loss_and_grad and
CrossEntropyLoss.backward. For reduction="none" the gradient is that of the
sum of the per-sample losses.
"""

import numpy as np
import pytest

import xentcy as xc

# NumPy arrays on the CPU core, and on the CUDA backend through its host-compiled kernels
pytestmark = pytest.mark.usefixtures("numpy_backend")

H = 1e-5  # central differences: truncation ~H**2, rounding ~1e-16 / H


def numerical_gradient(logits, target, kwargs):
    def f(a):
        return float(np.sum(xc.cross_entropy(a, target, **kwargs)))

    grad = np.zeros_like(logits)
    for index in np.ndindex(logits.shape):
        step = np.zeros_like(logits)
        step[index] = H
        grad[index] = (f(logits + step) - f(logits - step)) / (2 * H)
    return grad


def index_target(rng, batch, C, ignored=()):
    y = rng.integers(0, C, batch)
    y.reshape(-1)[list(ignored)] = -100
    return y


def soft_target(rng, shape, axis):
    q = rng.random(shape)
    return q / q.sum(axis=axis, keepdims=True)


rng = np.random.default_rng(2024)
W4 = rng.uniform(0.3, 2.0, 4)
CASES = [
    ("index_plain", (5, 4), -1, index_target(rng, (5,), 4), {}),
    ("index_weights_smoothing_ignored", (6, 4), -1, index_target(rng, (6,), 4, [1, 4]),
     dict(weight=W4, label_smoothing=0.15)),
    ("index_custom_ignore_in_range", (6, 4), -1, np.array([0, 2, 2, 1, 3, 2]),
     dict(ignore_index=2, weight=W4)),
    ("index_full_smoothing", (4, 4), -1, index_target(rng, (4,), 4),
     dict(label_smoothing=1.0, weight=W4)),
    ("probability_soft_weights", (5, 4), -1, soft_target(rng, (5, 4), -1),
     dict(weight=W4)),
    ("probability_soft_smoothing", (5, 4), -1, soft_target(rng, (5, 4), -1),
     dict(label_smoothing=0.2)),
    ("index_3d_axis1_weights_smoothing", (3, 4, 2), 1,
     index_target(rng, (3, 2), 4, [2]), dict(weight=W4, label_smoothing=0.1)),
    ("probability_3d_axis0", (4, 3, 2), 0, soft_target(rng, (4, 3, 2), 0),
     dict(weight=W4)),
    ("1d_int_target_weights", (4,), -1, 2, dict(weight=W4, label_smoothing=0.3)),
]


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("shape, axis, target, kwargs",
                         [pytest.param(*case[1:], id=case[0]) for case in CASES])
def test_gradient_matches_central_differences(shape, axis, target, kwargs, reduction):
    logits = 2.0 * np.random.default_rng(len(shape) + shape[0]).standard_normal(shape)
    kwargs = dict(kwargs, axis=axis, reduction=reduction)
    expected = numerical_gradient(logits, target, kwargs)
    scale = np.abs(expected).max()
    assert scale > 1e-3  # the case has a gradient worth checking

    def check(grad):
        np.testing.assert_allclose(grad, expected, rtol=1e-7, atol=1e-8 * scale)

    check(xc.cross_entropy_grad(logits, target, **kwargs))
    check(xc.loss_and_grad(logits, target, **kwargs)[1])
    xent = xc.CrossEntropyLoss(**kwargs)
    xent.forward(logits, target)
    check(xent.backward())


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_gradient_of_float32_logits_matches_float64_differences(reduction):
    # float32 logits: the gradient's error is float32-sized, not an artefact.
    rng = np.random.default_rng(8)
    logits = rng.standard_normal((6, 5)).astype(np.float32)
    target = index_target(rng, (6,), 5, [3])
    kwargs = dict(weight=W4.tolist() + [1.0], label_smoothing=0.1, reduction=reduction)
    expected = numerical_gradient(logits.astype(np.float64), target, kwargs)
    grad = xc.cross_entropy_grad(logits, target, **kwargs)
    assert grad.dtype == np.float32
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())
