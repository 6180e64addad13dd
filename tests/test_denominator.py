"""denominator=: a caller's D for the mean (gradient accumulation over micro-batches and
data-parallel ranks divides by the global count of target tokens). References: float64
NumPy written here (tests/reference.py), on every backend of the conformance suite."""

import numpy as np
import pytest
import reference as ref
from backends import make, to_numpy

import xentcy as xc


def _data(n=24, c=7, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, c)) * 2
    y = rng.integers(0, c, n)
    y[::5] = -100
    return a, y


def test_micro_batches_with_the_global_count_add_up_to_the_whole_mean(xp):
    a, y = _data()
    w = np.linspace(0.5, 2.0, 7)
    whole_loss, whole_grad = ref.cross_entropy_and_grad(a, y, weight=w, label_smoothing=0.1)
    total = w[y[y != -100]].sum()  # the global D: every micro-batch's target weight
    losses, grads = [], []
    for part in (slice(0, 10), slice(10, 24)):
        loss, grad = xc.loss_and_grad(
            make(xp, a[part]), make(xp, y[part]), weight=make(xp, w), label_smoothing=0.1, denominator=total
        )
        losses.append(float(to_numpy(loss)))
        grads.append(to_numpy(grad))
    np.testing.assert_allclose(sum(losses), whole_loss, rtol=1e-12)
    np.testing.assert_allclose(np.concatenate(grads), whole_grad, rtol=1e-11, atol=1e-15)
    one = xc.cross_entropy(make(xp, a[:10]), make(xp, y[:10]), weight=make(xp, w), label_smoothing=0.1,
                           denominator=total)  # fmt: skip
    np.testing.assert_allclose(to_numpy(one), losses[0], rtol=1e-12)


def test_every_entry_point_takes_it():
    a, y = _data()
    d = 123.0
    sum_loss, sum_grad = ref.cross_entropy_and_grad(a, y, reduction="sum")
    np.testing.assert_allclose(xc.cross_entropy_grad(a, y, denominator=d), sum_grad / d, rtol=1e-12)
    layer = xc.CrossEntropyLoss()
    np.testing.assert_allclose(layer.forward(a, y, denominator=d), sum_loss / d, rtol=1e-12)
    np.testing.assert_allclose(layer.backward(), sum_grad / d, rtol=1e-12)
    rng = np.random.default_rng(1)
    h, w = rng.standard_normal((24, 3)), rng.standard_normal((7, 3))
    full = ref.cross_entropy_and_grad(h @ w.T, y, reduction="sum")
    loss, d_h, d_w, _ = xc.linear_loss_and_grad(h, w, y, denominator=d, chunk_size=5)
    np.testing.assert_allclose(loss, full[0] / d, rtol=1e-12)
    np.testing.assert_allclose(d_w, full[1].T @ h / d, rtol=1e-11)
    np.testing.assert_allclose(xc.linear_cross_entropy(h, w, y, denominator=d), full[0] / d, rtol=1e-12)


@pytest.mark.parametrize(
    "value, reduction, error, match",
    [
        (10.0, "sum", ValueError, "denominator applies to reduction='mean' only, got reduction='sum'"),
        (0.0, "mean", ValueError, "denominator must be a positive finite number, got 0.0"),
        (-3, "mean", ValueError, "denominator must be a positive finite number, got -3.0"),
        (float("nan"), "mean", ValueError, "denominator must be a positive finite number, got nan"),
        (True, "mean", TypeError, "denominator must be a positive number, got bool"),
        ("8", "mean", TypeError, "denominator must be a positive number, got str"),
    ],
)
def test_bad_denominators_are_clear_errors(value, reduction, error, match):
    a, y = _data()
    with pytest.raises(error, match=match):
        xc.cross_entropy(a, y, reduction=reduction, denominator=value)


def test_the_class_index_check_still_runs():
    a, y = _data()
    y[3] = 7
    with pytest.raises(ValueError, match="class index 7"):
        xc.cross_entropy(a, y, denominator=10.0)
