"""The CPU core's row-pair kernel (issue 13, reference logits): KL(softmax(B) || softmax(A))
and whether the argmax agree, per row, against mpmath at 150 digits (the KL of the inputs as
exact reals), on every instruction set this CPU runs, in float32 and float64: close models
(KL down to 1e-12, where a one-pass formula loses every digit), far ones, ties, +-inf, NaN.
"""

import mpmath
import numpy as np
import pytest

from xentcy._cpu import _core

mpmath.mp.dps = 150

# relative error of the KL itself; and the KL below which float32's exp has no more
# digits to give (the classes' q_c underflow: exp(-104) is float32's smallest)
RTOL = {np.float32: 2e-5, np.float64: 5e-14}
FLOOR = {np.float32: 1e-38, np.float64: 1e-300}


def kl_mp(a, b):
    """KL(softmax(b) || softmax(a)) in mpmath; NaN where either softmax is undefined."""
    a, b = [float(x) for x in a], [float(x) for x in b]
    if any(x != x for x in a + b) or np.inf in (max(a), max(b)) or -np.inf in (max(a), max(b)):
        return np.nan
    ea = [mpmath.exp(mpmath.mpf(x)) if x > -np.inf else mpmath.mpf(0) for x in a]
    eb = [mpmath.exp(mpmath.mpf(x)) if x > -np.inf else mpmath.mpf(0) for x in b]
    sa, sb = mpmath.fsum(ea), mpmath.fsum(eb)
    total = mpmath.mpf(0)
    for pa, qb in zip(ea, eb, strict=True):
        if qb == 0:
            continue
        if pa == 0:
            return np.inf
        total += (qb / sb) * mpmath.log((qb / sb) / (pa / sa))
    # (below 1e-140 the sum is mpmath's rounding at 150 digits: the rows are a shift of
    # each other, and the KL is 0)
    return float(total) if abs(total) > 1e-140 else 0.0


@pytest.fixture(params=_core.supported_isas())
def isa(request):
    before = _core.isa()
    _core.set_isa(request.param)
    yield request.param
    _core.set_isa(before)


def compare(A, B):
    kl = np.empty(A.shape[0])
    agree = np.empty(A.shape[0], np.intp)
    _core.compare_rows(A, B, kl, agree)
    return kl, agree


def check(A, B, kl, agree, dtype):
    for i in range(A.shape[0]):
        want = kl_mp(A[i], B[i])
        undefined = np.isnan(want)
        assert agree[i] == (0 if undefined else int(np.argmax(A[i]) == np.argmax(B[i]))), i
        if undefined:
            assert np.isnan(kl[i]), (i, kl[i])
        elif np.isinf(want) or want < FLOOR[dtype]:
            assert kl[i] == want or (want < FLOOR[dtype] and 0 <= kl[i] < 2 * FLOOR[dtype]), (i, kl[i], want)
        else:
            assert abs(kl[i] - want) <= RTOL[dtype] * want, (i, kl[i], want, abs(kl[i] - want) / want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("C", [1, 3, 17, 64, 1000])
@pytest.mark.parametrize("noise", [1e-5, 1e-3, 0.1, 1.0, 10.0])
def test_kl_against_mpmath(isa, dtype, C, noise):
    rng = np.random.default_rng([C, int(noise * 1e5)])
    A = (3 * rng.standard_normal((4, C))).astype(dtype)
    B = (A + noise * rng.standard_normal((4, C))).astype(dtype)
    kl, agree = compare(A, B)
    check(A, B, kl, agree, dtype)


def _edge_rows(dtype, seed):
    rng = np.random.default_rng(seed)
    for _ in range(40):
        C = int(rng.integers(1, 80))
        A = (rng.standard_normal((3, C)) * rng.choice([0.5, 3, 30])).astype(dtype)
        noise = rng.choice([1e-4, 1e-2, 1, 10]) * rng.standard_normal((3, C))
        B = (A + noise + rng.choice([0, 100])).astype(dtype)
        if rng.random() < 0.3:
            A, B = np.round(A), np.round(B)
        for M in (A, B):
            for _ in range(int(rng.integers(0, 3))):
                M[rng.integers(3), rng.integers(C)] = rng.choice([-np.inf, -np.inf, np.inf, np.nan])
        yield A, B


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_edges_against_mpmath(isa, dtype):
    """Ties, -inf (zero mass on either side), +inf and NaN (undefined), offsets, large
    logits, random row lengths."""
    for A, B in _edge_rows(dtype, 7):
        kl, agree = compare(A, B)
        check(A, B, kl, agree, dtype)


def test_zero_mass_where_the_reference_has_mass_is_infinite(isa):
    """p_c = 0 (A_c = -inf) where q_c > 0, even a q_c that float32 cannot hold (exp(-140)):
    KL is +inf, not the finite sum over the other classes."""
    A = np.array([[0.0, 0.0, -np.inf]], np.float32)
    B = np.array([[0.0, 0.0, -140.0]], np.float32)
    kl, agree = compare(A, B)
    assert kl[0] == np.inf and agree[0] == 1
    kl, _ = compare(B, A)  # the other way: q_c = 0 where p_c > 0 adds nothing
    assert 0 <= kl[0] < 1e-38


def test_identical_rows_have_zero_kl(isa):
    # (multiples of 2^-10 below 2^10: A + 64 is exact, a shift, which leaves the softmax)
    A = np.round(np.random.default_rng(1).standard_normal((5, 333)) * 2**10).astype(np.float32) / 2**10
    kl, agree = compare(A, A.copy())
    assert (kl == 0).all() and (agree == 1).all()
    kl, agree = compare(A, A + np.float32(64))
    assert (kl == 0).all() and (agree == 1).all()


def test_strided_rows_and_threads(isa):
    """Rows at any stride; the result independent of the thread count."""
    rng = np.random.default_rng(2)
    A = rng.standard_normal((300, 2000)).astype(np.float32)[::3, 5:1505]
    B = (A + 0.05 * rng.standard_normal(A.shape)).astype(np.float32)
    before = _core.max_threads()
    try:
        _core.set_max_threads(1)
        one = compare(A, B)
        _core.set_max_threads(2)
        two = compare(A, B)
    finally:
        _core.set_max_threads(before)
    assert np.array_equal(one[0], two[0]) and np.array_equal(one[1], two[1])
    check(A[:3], B[:3], one[0][:3], one[1][:3], np.float32)


def test_bad_buffers_are_errors():
    A = np.zeros((4, 5), np.float32)
    with pytest.raises(ValueError, match="B must have shape"):
        _core.compare_rows(A, np.zeros((4, 6), np.float32), np.empty(4), np.empty(4, np.intp))
    with pytest.raises(ValueError, match="agree"):
        _core.compare_rows(A, A, np.empty(4), np.empty(3, np.intp))
    with pytest.raises(ValueError, match="loss"):
        _core.compare_rows(A, A, np.empty(3), np.empty(4, np.intp))


@pytest.mark.parametrize("library", ["numpy", "torch"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_generic_path_against_mpmath(library, dtype):
    """The array-API path (CuPy, torch, JAX, Dask chunks take it) computes the same KL to
    the same digits, in float64, without a warning."""
    import warnings

    from array_api_compat import array_namespace

    from xentcy._generic import compare_rows as generic_compare_rows

    if library == "torch":
        torch = pytest.importorskip("torch")
        wrap = torch.from_numpy
    else:
        wrap = np.asarray
    for A, B in _edge_rows(dtype, 11):
        a, b = wrap(A), wrap(B)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            kl, agree = generic_compare_rows(array_namespace(a), a, b, 1)
        kl, agree = np.asarray(kl, np.float64), np.asarray(agree).astype(np.intp)
        check(A, B, kl, agree, np.float64)
