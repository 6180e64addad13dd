"""The SIMD CPU core: its vector exp, each instruction-set path, threads, accuracy.

Every path this CPU runs (AVX-512, AVX2 + FMA, the baseline) is forced in
turn and checked against float64 NumPy references written here.
"""

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

import xentcy as xc
from xentcy._cpu import _core

ISAS = _core.supported_isas()


@pytest.fixture(params=ISAS)
def isa(request):
    previous = _core.set_isa(request.param)
    yield request.param
    _core.set_isa(previous)


def test_import_picks_the_best_instruction_set_this_cpu_runs():
    assert _core.isa() == ISAS[-1]
    assert ISAS[0] == "baseline"


def test_an_instruction_set_the_cpu_lacks_or_an_unknown_name_is_refused():
    with pytest.raises(ValueError, match="unknown"):
        _core.set_isa("sse9")


def float32_ulp_error(x: np.ndarray, got: np.ndarray) -> np.ndarray:
    """|got - exp(x)| in units of the float32 spacing at exp(x) (subnormal spacing below)."""
    exact = np.exp(x.astype(np.float64))
    spacing = np.spacing(np.abs(exact).astype(np.float32)).astype(np.float64)
    spacing = np.maximum(spacing, 2.0**-149)
    finite = np.isfinite(exact) & (exact < np.finfo(np.float32).max)
    err = np.zeros_like(exact)
    err[finite] = np.abs(got[finite].astype(np.float64) - exact[finite]) / spacing[finite]
    return err


def test_vector_exp_float32_is_within_2_ulp_over_its_input_range(isa):
    # every 61st float32 bit pattern from -104 to 89 (where exp is neither 0 nor inf)
    neg = np.arange(0x80000000, 0xC2D00001, 61, dtype=np.uint32).view(np.float32)
    pos = np.arange(0, 0x42B20001, 61, dtype=np.uint32).view(np.float32)
    x = np.concatenate([neg, pos])
    got = np.empty_like(x)
    _core.vector_exp(x, got)
    err = float32_ulp_error(x, got)
    assert err.max() <= 2.0, (isa, x[err.argmax()], err.max())


def test_vector_exp_float32_edges(isa):
    x = np.array([-np.inf, np.inf, np.nan, 0.0, -0.0, -1e30, 1e30, -103.97, -103.9, -87.4,
                  88.72, 88.73, 1e-30, -1e-30], np.float32)
    got = np.empty_like(x)
    _core.vector_exp(x, got)
    exact = np.exp(x.astype(np.float64)).astype(np.float32)
    np.testing.assert_array_equal(got[:7], [0, np.inf, np.nan, 1, 1, 0, np.inf])
    assert float32_ulp_error(x[7:], got[7:]).max() <= 2.0
    assert got[10] == exact[10] or abs(got[10] - exact[10]) <= np.spacing(exact[10]) * 2
    assert np.isinf(got[11])


def test_vector_exp_float64_is_within_4_ulp(isa):
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(-745, 709, 200_000), rng.uniform(-30, 0, 200_000)])
    got = np.empty_like(x)
    _core.vector_exp(x, got)
    exact = np.exp(x)
    err = np.abs(got - exact) / np.spacing(exact)
    assert err.max() <= 4, (isa, x[err.argmax()], err.max())
    edges = np.array([-np.inf, np.inf, np.nan, -800.0, 800.0, 0.0])
    got = np.empty_like(edges)
    _core.vector_exp(edges, got)
    np.testing.assert_array_equal(got, [0, np.inf, np.nan, 0, np.inf, 1])



def test_vector_exp_float64_is_within_1_5_ulp_on_a_dense_sample_and_the_edges(isa):
    # measured: 0.90 ulp on AVX2 / AVX-512 (FMA Horner), 1.17 on the baseline (no FMA)
    rng = np.random.default_rng(5)
    ln2 = np.log(2)
    k = np.arange(-1074, 1024, dtype=np.float64)
    edges = (k + 0.5) * ln2  # where the reduction's |r| is largest, n switching
    x = np.concatenate([
        rng.uniform(-745.1, 709.7, 1_000_000),
        rng.uniform(-0.35, 0.35, 300_000),   # n = 0: the polynomial alone
        rng.uniform(-745.1, -708.4, 100_000),  # subnormal results
        edges, np.nextafter(edges, np.inf), np.nextafter(edges, -np.inf),
    ])
    x = x[(x > -745.13) & (x < 709.78)]
    got = np.empty_like(x)
    _core.vector_exp(x, got)
    if np.finfo(np.longdouble).eps < np.finfo(np.float64).eps:
        exact, bound = np.exp(x.astype(np.longdouble)), 1.5
    else:  # no wider type: libm's exp (< 1 ulp) is the reference
        exact, bound = np.exp(x), 2.0
    err = np.abs(got.astype(exact.dtype) - exact) / np.spacing(np.exp(x)).astype(exact.dtype)
    assert float(err.max()) <= bound, (isa, x[err.argmax()], float(err.max()))

def reference(A, target, weight=None, eps=0.0, ignore_index=-100):
    """Per-sample losses and the gradient of their sum, in float64 written from the definition."""
    A = A.astype(np.float64)
    N, C = A.shape
    w = np.ones(C) if weight is None else weight.astype(np.float64)
    if target.ndim == 1:
        kept = target != ignore_index
        Q = np.zeros((N, C))
        Q[np.flatnonzero(kept), target[kept]] = 1
        Q = (1 - eps) * Q + eps / C
        Q[~kept] = 0
    else:
        Q = (1 - eps) * target.astype(np.float64) + eps / C
    m = A.max(axis=1, keepdims=True)
    log_s = np.log(np.exp(A - m).sum(axis=1, keepdims=True))
    wq = w * Q
    loss = (wq * ((m - A) + log_s)).sum(axis=1)
    grad = np.exp(A - m - log_s) * wq.sum(axis=1, keepdims=True) - wq
    return loss, grad


CASES = [
    # (N, C, kind): C spans the few-classes path (<= 64) and the row path
    (37, 1, "index"), (53, 3, "index"), (100, 10, "index"), (70, 64, "index"), (33, 65, "index"),
    (21, 1000, "index"), (5, 5003, "index"), (45, 10, "prob"), (20, 777, "prob"),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("keywords", ["plain", "weight_smoothing_ignore"])
@pytest.mark.parametrize("N, C, kind", CASES)
def test_each_path_matches_a_float64_reference(isa, N, C, kind, keywords, dtype):
    rng = np.random.default_rng(N * C)
    A = (rng.standard_normal((N, C)) * 3).astype(dtype)
    kwargs, weight, eps = {}, None, 0.0
    if kind == "index":
        target = rng.integers(0, C, N)
    else:
        target = rng.dirichlet(np.ones(C), N).astype(dtype)
    if keywords != "plain":
        weight = rng.uniform(0.5, 2, C).astype(dtype)
        eps = 0.1
        kwargs = {"weight": weight, "label_smoothing": eps}
        if kind == "index":
            target[rng.random(N) < 0.3] = -100
    loss, grad = xc.loss_and_grad(A, target, reduction="none", **kwargs)
    ref_loss, ref_grad = reference(A, target, weight, eps)
    rtol = 2e-6 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(loss, ref_loss, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(grad, ref_grad, rtol=rtol * 10, atol=rtol)
    np.testing.assert_allclose(xc.cross_entropy(A, target, reduction="none", **kwargs), loss, rtol=rtol)


def test_float32_loss_at_131072_classes_is_within_2e_6_of_float64(isa):
    rng = np.random.default_rng(0)
    N, C = 16, 131072
    A = (rng.standard_normal((N, C)) * 2).astype(np.float32)
    y = rng.integers(0, C, N)
    A64 = A.astype(np.float64)
    m = A64.max(axis=1)
    ref = (m + np.log(np.exp(A64 - m[:, None]).sum(axis=1))) - A64[np.arange(N), y]
    loss = xc.cross_entropy(A, y, reduction="none").astype(np.float64)
    assert np.max(np.abs(loss - ref) / ref) <= 2e-6
    lse = xc.logsumexp(A, axis=1).astype(np.float64)
    assert np.max(np.abs(lse - (ref + A64[np.arange(N), y])) / np.abs(lse)) <= 2e-6


@pytest.mark.parametrize("N, C", [(1001, 10), (257, 3000), (64, 40)])
def test_results_are_bitwise_equal_for_one_and_two_threads(isa, N, C):
    rng = np.random.default_rng(1)
    A = (rng.standard_normal((N, C)) * 3).astype(np.float32)
    y = rng.integers(0, C, N)
    with threadpool_limits(1):
        one = xc.loss_and_grad(A, y, reduction="none")
    with threadpool_limits(2):
        two = xc.loss_and_grad(A, y, reduction="none")
    np.testing.assert_array_equal(one[0], two[0])
    np.testing.assert_array_equal(one[1], two[1])


@pytest.mark.parametrize("C", [6, 300])
def test_nan_and_infinite_logits_keep_their_meaning_on_each_path(isa, C):
    A = np.zeros((5, C), np.float32)
    A[0, 1] = np.nan            # a NaN logit: NaN loss and gradient for its sample
    A[1, 2:] = -np.inf          # masked classes: finite
    A[2, :] = -np.inf           # all -inf: NaN
    A[3, 3] = np.inf            # +inf elsewhere than the target: loss +inf
    y = np.array([0, 1, 0, 0, 0])
    loss, grad = xc.loss_and_grad(A, y, reduction="none")
    assert np.isnan(loss[0]) and np.isnan(grad[0]).all()
    np.testing.assert_allclose(loss[1], np.log(2), rtol=1e-6)
    np.testing.assert_allclose(grad[1, :2], [0.5, -0.5], rtol=1e-6)
    np.testing.assert_array_equal(grad[1, 2:], 0)
    assert np.isnan(loss[2])
    assert loss[3] == np.inf
    np.testing.assert_allclose(loss[4], np.log(C), rtol=1e-6)
    # zero target mass where the logit is -inf contributes nothing
    Q = np.zeros((1, C), np.float32)
    Q[0, 0] = 1
    B = np.zeros((1, C), np.float32)
    B[0, 1] = -np.inf
    assert np.isfinite(xc.cross_entropy(B, Q, reduction="none")).all()


@pytest.mark.parametrize("C", [7, 200])
def test_strided_rows_and_inplace_agree_with_contiguous(isa, C):
    rng = np.random.default_rng(2)
    wide = (rng.standard_normal((40, C + 9)) * 3).astype(np.float32)
    A = wide[:, :C]
    y = rng.integers(0, C, 40)
    loss, grad = xc.loss_and_grad(np.ascontiguousarray(A), y)
    loss2, grad2 = xc.loss_and_grad(A, y)
    np.testing.assert_array_equal(loss, loss2)
    np.testing.assert_array_equal(grad, grad2)
    B = np.ascontiguousarray(A)
    loss3, grad3 = xc.loss_and_grad(B, y, inplace=True)
    assert grad3 is B
    np.testing.assert_array_equal(grad, B)


@pytest.mark.parametrize("C", [5, 100, 3000])
def test_softmax_log_softmax_logsumexp_on_each_path(isa, C):
    rng = np.random.default_rng(3)
    A = (rng.standard_normal((30, C)) * 3).astype(np.float32)
    A64 = A.astype(np.float64)
    lse = np.log(np.exp(A64 - A64.max(1, keepdims=True)).sum(1)) + A64.max(1)
    np.testing.assert_allclose(xc.logsumexp(A, axis=1), lse, rtol=1e-6)
    np.testing.assert_allclose(xc.log_softmax(A), A64 - lse[:, None], rtol=2e-6, atol=2e-6)
    np.testing.assert_allclose(xc.softmax(A), np.exp(A64 - lse[:, None]), rtol=2e-6, atol=1e-9)


@pytest.mark.parametrize("C", [1, 2, 3, 5, 10, 15, 16, 17])
def test_in_register_transposes_of_few_classes_match_the_scalar_path(isa, C):
    # contiguous rows take the in-register transposes (AVX-512, C <= 16), strided rows the
    # scalar ones: the results must be bitwise equal, ignored rows, weights, NaN and -inf included
    rng = np.random.default_rng(C)
    N = 83
    wide = (rng.standard_normal((N, C + 3)) * 3).astype(np.float32)
    wide[rng.random(wide.shape) < 0.02] = np.nan
    wide[rng.random(wide.shape) < 0.03] = -np.inf
    A = wide[:, :C]
    y = rng.integers(0, C, N)
    y[rng.random(N) < 0.2] = -100
    weight = rng.uniform(0.5, 2, C).astype(np.float32)
    Q = rng.dirichlet(np.ones(C), N).astype(np.float32)
    for target, kwargs in ((y, {}), (y, {"weight": weight, "label_smoothing": 0.1}), (Q, {})):
        strided = xc.loss_and_grad(A, target, reduction="none", **kwargs)
        contiguous = xc.loss_and_grad(np.ascontiguousarray(A), target, reduction="none", **kwargs)
        np.testing.assert_array_equal(strided[0], contiguous[0])
        np.testing.assert_array_equal(strided[1], contiguous[1])


@pytest.mark.parametrize("n", [1, 7, 8, 9, 31, 1001])
def test_mean_denominator_and_index_range_check_on_each_instruction_set(isa, n):
    # D (the count of samples not ignored) and the range check run in one vectorized
    # pass over the indices; its tails and every position of a bad index must count.
    gen = np.random.default_rng(n)
    C = 5
    A = gen.standard_normal((n, C))
    y = gen.integers(0, C, n)
    y[gen.random(n) < 0.3] = -100
    kept = int(np.sum(y != -100))
    per_sample = xc.cross_entropy(A, y, reduction="none")
    expected = per_sample.sum() / kept if kept else np.nan
    np.testing.assert_allclose(xc.cross_entropy(A, y), expected, rtol=1e-12)
    for position in sorted({0, n // 2, n - 1}):
        for bad in (C, -1, 2**62, -(2**62)):
            y_bad = y.copy()
            y_bad[position] = bad
            with pytest.raises(ValueError, match=f"target.*{bad}"):
                xc.cross_entropy(A, y_bad)
