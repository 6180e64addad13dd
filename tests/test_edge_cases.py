"""Edge cases the spec decides explicitly (api.md, Semantics and Numerics)."""

import numpy as np
import pytest
import reference as ref
from backends import array_type, make, to_numpy

import xentcy as xc

INF = np.inf


def result(x, xp):
    assert isinstance(x, array_type(xp)), type(x)
    return to_numpy(x)


# --- targets of other integer dtypes -----------------------------------------

@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint8])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_integer_one_hot_target_equals_float_one_hot(xp, dtype, reduction):
    rng = np.random.default_rng(1)
    a = rng.standard_normal((6, 4))
    one_hot = np.eye(4)[rng.integers(0, 4, 6)]
    w = [0.5, 1.0, 2.0, 1.5]
    kw = dict(reduction=reduction, weight=w, label_smoothing=0.1)
    A = make(xp, a)
    L, G = xc.loss_and_grad(A, make(xp, one_hot.astype(dtype)), **kw)
    L_float, G_float = xc.loss_and_grad(A, make(xp, one_hot), **kw)
    ref_L, ref_G = ref.cross_entropy_and_grad(a, one_hot, **kw)
    np.testing.assert_allclose(result(L, xp), ref_L, rtol=1e-12)
    np.testing.assert_allclose(result(G, xp), ref_G, rtol=1e-12, atol=1e-16)
    np.testing.assert_allclose(result(L, xp), result(L_float, xp), rtol=1e-15)
    np.testing.assert_allclose(result(G, xp), result(G_float, xp), rtol=1e-15, atol=1e-17)


@pytest.mark.parametrize("dtype", [np.int32, np.int16, np.uint8])
def test_class_indices_of_any_integer_dtype(xp, dtype):
    rng = np.random.default_rng(2)
    a = rng.standard_normal((7, 5))
    y = rng.integers(0, 5, 7)
    A = make(xp, a)
    L, G = xc.loss_and_grad(A, make(xp, y.astype(dtype)), reduction="sum")
    ref_L, ref_G = ref.cross_entropy_and_grad(a, y, reduction="sum")
    np.testing.assert_allclose(result(L, xp), ref_L, rtol=1e-12)
    np.testing.assert_allclose(result(G, xp), ref_G, rtol=1e-12, atol=1e-16)


# --- D = 0 ---------------------------------------------------------------------

def d_zero_cases():
    a = np.random.default_rng(3).standard_normal((5, 3))
    all_ignored = np.full(5, -100)
    custom_ignored = np.full(5, 2)
    zero_target_weight = np.array([0, 0, 1, 0, 1])
    return [
        pytest.param(a, all_ignored, {}, id="all_ignored"),
        pytest.param(a, custom_ignored, dict(ignore_index=2, label_smoothing=0.2),
                     id="all_ignored_custom_index_smoothing"),
        pytest.param(a, zero_target_weight, dict(weight=[0.0, 0.0, 3.0]),
                     id="all_target_weights_zero"),
        pytest.param(a, zero_target_weight, dict(weight=[0.0, 0.0, 3.0], label_smoothing=0.1),
                     id="all_target_weights_zero_smoothing"),
    ]


@pytest.mark.parametrize("a, y, kwargs", d_zero_cases())
def test_mean_with_zero_denominator_is_nan_with_zero_gradient(xp, a, y, kwargs):
    A, Y = make(xp, a), make(xp, y)
    L, G = xc.loss_and_grad(A, Y, **kwargs)
    assert np.isnan(result(L, xp))
    np.testing.assert_array_equal(result(G, xp), np.zeros_like(a))
    assert np.isnan(result(xc.cross_entropy(A, Y, **kwargs), xp))
    np.testing.assert_array_equal(result(xc.cross_entropy_grad(A, Y, **kwargs), xp), 0.0)


def test_sum_over_only_ignored_samples_is_zero(xp):
    a = np.random.default_rng(4).standard_normal((5, 3))
    A, Y = make(xp, a), make(xp, np.full(5, -100))
    L, G = xc.loss_and_grad(A, Y, reduction="sum")
    assert result(L, xp) == 0.0
    np.testing.assert_array_equal(result(G, xp), 0.0)
    none = result(xc.cross_entropy(A, Y, reduction="none"), xp)
    np.testing.assert_array_equal(none, np.zeros(5))


def test_sum_with_all_target_weights_zero_is_zero(xp):
    a = np.random.default_rng(5).standard_normal((4, 3))
    L = xc.cross_entropy(make(xp, a), make(xp, np.array([1, 1, 2, 1])), weight=[1.0, 0.0, 0.0],
                         reduction="sum")
    assert result(L, xp) == 0.0


def test_ignored_samples_have_zero_loss_and_gradient(xp):
    rng = np.random.default_rng(6)
    a = rng.standard_normal((6, 4))
    y = np.array([0, -100, 3, -100, 1, 2])
    L, G = xc.loss_and_grad(make(xp, a), make(xp, y), reduction="none", label_smoothing=0.3)
    L, G = result(L, xp), result(G, xp)
    assert L[1] == 0.0 and L[3] == 0.0
    np.testing.assert_array_equal(G[[1, 3]], 0.0)
    ref_L, ref_G = ref.cross_entropy_and_grad(a, y, reduction="none", label_smoothing=0.3)
    np.testing.assert_allclose(L, ref_L, rtol=1e-12)
    np.testing.assert_allclose(G, ref_G, rtol=1e-12, atol=1e-16)


def test_zero_weight_class_drops_out_of_mean_denominator(xp):
    rng = np.random.default_rng(7)
    a = rng.standard_normal((6, 3))
    y = np.array([0, 1, 2, 0, 1, 2])
    w = [0.0, 1.0, 3.0]
    L = result(xc.cross_entropy(make(xp, a), make(xp, y), weight=w), xp)
    per_sample = -ref.log_softmax(a)[np.arange(6), y] * np.take(w, y)
    np.testing.assert_allclose(L, per_sample.sum() / 8.0, rtol=1e-12)  # D = 0+1+3+0+1+3


# --- -inf logits and zero-mass classes -------------------------------------------

MASKED = np.array([[-INF, 1.0, 2.0, 0.5],
                   [0.3, -INF, -INF, 1.2],
                   [0.0, 0.1, 0.2, -INF]])


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_masked_class_with_zero_mass_is_finite_with_zero_gradient_index(xp, reduction):
    y = np.array([2, 3, 1])
    L, G = xc.loss_and_grad(make(xp, MASKED), make(xp, y), reduction=reduction)
    L, G = result(L, xp), result(G, xp)
    assert np.all(np.isfinite(L)) and np.all(np.isfinite(G))
    assert np.all(G[np.isinf(MASKED)] == 0.0)
    ref_L, ref_G = ref.cross_entropy_and_grad(MASKED, y, reduction=reduction)
    np.testing.assert_allclose(L, ref_L, rtol=1e-12)
    np.testing.assert_allclose(G, ref_G, rtol=1e-12, atol=1e-16)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_masked_class_with_zero_mass_is_finite_with_zero_gradient_probability(xp, reduction):
    q = np.array([[0.0, 0.3, 0.6, 0.1],
                  [0.5, 0.0, 0.0, 0.5],
                  [0.2, 0.2, 0.6, 0.0]])
    w = [1.0, 2.0, 0.5, 1.5]
    L, G = xc.loss_and_grad(make(xp, MASKED), make(xp, q), weight=make(xp, np.array(w)),
                            reduction=reduction)
    L, G = result(L, xp), result(G, xp)
    assert np.all(np.isfinite(L)) and np.all(np.isfinite(G))
    assert np.all(G[np.isinf(MASKED)] == 0.0)
    ref_L, ref_G = ref.cross_entropy_and_grad(MASKED, q, weight=w, reduction=reduction)
    np.testing.assert_allclose(L, ref_L, rtol=1e-12)
    np.testing.assert_allclose(G, ref_G, rtol=1e-12, atol=1e-16)


@pytest.mark.parametrize("target", [np.array([2, 3, 1]), np.eye(4)[[2, 3, 1]]],
                         ids=["index", "probability"])
def test_masked_class_with_smoothing_gives_infinite_loss(xp, target):
    T = make(xp, target)
    none = result(xc.cross_entropy(make(xp, MASKED), T, label_smoothing=0.1, reduction="none"),
                  xp)
    np.testing.assert_array_equal(none, [INF, INF, INF])
    mean = result(xc.cross_entropy(make(xp, MASKED), T, label_smoothing=0.1), xp)
    assert mean == INF


def test_target_class_at_minus_inf_gives_infinite_loss(xp):
    none = result(xc.cross_entropy(make(xp, MASKED), make(xp, np.array([0, 1, 1])),
                                   reduction="none"), xp)
    np.testing.assert_array_equal(none, [INF, INF, ref.cross_entropy(MASKED[2], 1)])


def test_masked_row_softmax_is_exactly_zero_there(xp):
    P = result(xc.softmax(make(xp, MASKED)), xp)
    assert np.all(P[np.isinf(MASKED)] == 0.0)
    np.testing.assert_allclose(P, ref.softmax(MASKED), rtol=1e-14)
    logP = result(xc.log_softmax(make(xp, MASKED)), xp)
    assert np.all(logP[np.isinf(MASKED)] == -INF)
    np.testing.assert_allclose(logP, ref.log_softmax(MASKED), rtol=1e-14)


def test_logsumexp_of_minus_inf_rows(xp):
    x = np.array([[-INF, 0.0, 1.0],
                  [-INF, -INF, -INF],
                  [-INF, -INF, 3.0]])
    out = result(xc.logsumexp(make(xp, x)), xp)
    np.testing.assert_allclose(out, [np.log1p(np.e), -INF, 3.0], rtol=1e-15)
    assert out[1] == -INF
    kept = result(xc.logsumexp(make(xp, x), keepdims=True), xp)
    assert kept.shape == (3, 1) and kept[1, 0] == -INF


# --- large logits -----------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_large_logits_do_not_overflow(xp, dtype):
    # exp(100) overflows float32 and exp(1000) float64: only the shifted form survives.
    big = 100.0 if dtype == np.float32 else 1000.0
    a = np.array([[big, 0.0, -big], [0.0, big, big]], dtype=dtype)
    y = np.array([1, 0])
    A = make(xp, a)
    none = result(xc.cross_entropy(A, make(xp, y), reduction="none"), xp)
    np.testing.assert_allclose(none, [big, big + np.log(2.0)], rtol=1e-6)
    G = result(xc.cross_entropy_grad(A, make(xp, y), reduction="sum"), xp)
    np.testing.assert_allclose(G, [[1, -1, 0], [-1, 0.5, 0.5]], atol=1e-6)
    np.testing.assert_allclose(result(xc.logsumexp(A), xp), [big, big + np.log(2.0)],
                               rtol=1e-6)
    np.testing.assert_allclose(result(xc.softmax(A), xp), [[1, 0, 0], [0, 0.5, 0.5]],
                               atol=1e-6)


def test_float32_offset_logits_keep_the_loss_digits(xp):
    # (m - A_c) + log s keeps the digits of the loss; (m + log s) - A_c loses
    # about ulp(1e4) ~ 1e-3 of it (api.md, Numerics).
    rng = np.random.default_rng(10)
    a = (1e4 + rng.standard_normal((256, 10))).astype(np.float32)
    y = rng.integers(0, 10, 256)
    A, Y = make(xp, a), make(xp, y)
    expected = ref.cross_entropy(a, y, reduction="none")  # float64 from the same values
    none = result(xc.cross_entropy(A, Y, reduction="none"), xp)
    assert none.dtype == np.float32
    assert np.max(np.abs(none - expected) / expected) < 1e-6
    mean = result(xc.cross_entropy(A, Y), xp)
    assert abs(mean - expected.mean()) / expected.mean() < 2e-7
    loss, _ = xc.loss_and_grad(A, Y)
    assert abs(result(loss, xp) - expected.mean()) / expected.mean() < 2e-7


# --- NaN ------------------------------------------------------------------------

@pytest.mark.parametrize("target", [np.array([0, 2, 1, 2]),
                                    np.eye(3)[[0, 2, 1, 2]]],
                         ids=["index", "probability"])
def test_nan_logit_poisons_only_its_sample(xp, target):
    a = np.random.default_rng(11).standard_normal((4, 3))
    a[1, 0] = np.nan  # not the target class of sample 1
    L, G = xc.loss_and_grad(make(xp, a), make(xp, target), reduction="none")
    L, G = result(L, xp), result(G, xp)
    assert np.isnan(L[1])
    keep = [0, 2, 3]
    ref_L, ref_G = ref.cross_entropy_and_grad(a[keep], target[keep], reduction="none")
    np.testing.assert_allclose(L[keep], ref_L, rtol=1e-12)
    np.testing.assert_allclose(G[keep], ref_G, rtol=1e-12, atol=1e-16)
    assert np.isnan(result(xc.cross_entropy(make(xp, a), make(xp, target)), xp))


def test_nan_logit_gives_nan_softmax_row_only(xp):
    a = np.random.default_rng(12).standard_normal((3, 4))
    a[2, 3] = np.nan
    P = result(xc.softmax(make(xp, a)), xp)
    assert np.all(np.isnan(P[2]))
    np.testing.assert_allclose(P[:2], ref.softmax(a[:2]), rtol=1e-14)
    lse = result(xc.logsumexp(make(xp, a)), xp)
    assert np.isnan(lse[2]) and np.all(np.isfinite(lse[:2]))


# --- empty batch -------------------------------------------------------------------

@pytest.mark.parametrize("target", [np.zeros(0, dtype=np.int64), np.zeros((0, 4))],
                         ids=["index", "probability"])
def test_empty_batch(xp, target):
    A, T = make(xp, np.zeros((0, 4))), make(xp, target)
    L, G = xc.loss_and_grad(A, T, reduction="sum")
    assert result(L, xp) == 0.0 and result(L, xp).shape == ()
    assert result(G, xp).shape == (0, 4)
    L, G = xc.loss_and_grad(A, T)
    assert np.isnan(result(L, xp))
    assert result(G, xp).shape == (0, 4)
    none = result(xc.cross_entropy(A, T, reduction="none"), xp)
    assert none.shape == (0,) and none.dtype == np.float64
    assert result(xc.softmax(A), xp).shape == (0, 4)
    assert result(xc.logsumexp(A), xp).shape == (0,)


# --- degenerate targets --------------------------------------------------------------

def test_probability_row_of_zeros_contributes_nothing(xp):
    rng = np.random.default_rng(13)
    a = rng.standard_normal((3, 4))
    q = rng.random((3, 4))
    q[1] = 0.0
    L, G = xc.loss_and_grad(make(xp, a), make(xp, q), reduction="none")
    L, G = result(L, xp), result(G, xp)
    assert L[1] == 0.0
    np.testing.assert_array_equal(G[1], 0.0)
    mean = result(xc.cross_entropy(make(xp, a), make(xp, q)), xp)
    np.testing.assert_allclose(mean, L.sum() / 3, rtol=1e-14)  # still divided by N = 3


def test_full_smoothing_makes_the_class_index_irrelevant(xp):
    a = np.random.default_rng(14).standard_normal((5, 4))
    A = make(xp, a)
    L1 = result(xc.cross_entropy(A, make(xp, np.array([0, 1, 2, 3, 0])), label_smoothing=1.0,
                                 reduction="none"), xp)
    L2 = result(xc.cross_entropy(A, make(xp, np.array([3, 3, 1, 0, 2])), label_smoothing=1.0,
                                 reduction="none"), xp)
    np.testing.assert_allclose(L1, L2, rtol=1e-14)
    np.testing.assert_allclose(L1, -ref.log_softmax(a).mean(axis=1), rtol=1e-12)
