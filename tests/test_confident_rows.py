"""Confident rows keep their digits (api.md, Numerics: an error relative to the loss itself).

A row whose target logit is far above the others has s = sum_c exp(A_c - m) = 1 + delta with
a tiny delta: summed in the working precision, s rounds, and log s (the loss), log_softmax at
the target and its gradient p_y - 1 = 1/s - 1 keep only about ulp(1) / delta of their digits.
These tests compare such rows (target logit 20 to 40 in float32, 40 to 70 in float64, the
others standard normal; two classes at the max; long rows and the few-class kernel; every
instruction set this CPU runs) with mpmath at 50 digits, computed from the exact values of
the inputs, never from the code under test.

The other logits are rounded to a grid (2^-16 in float32, 2^-45 in float64) on which every
A_c - m is exact in the dtype: what is measured is then the kernels' own error, which must
stay under 1e-6 (float32) and 1e-14 (float64). Without the grid, the rounding of A_c - m
itself changes each term exp(A_c - m) by up to |A_c - m| u relative (u = 2^-24, 2^-53: up to
2.6e-6 in float32 at a gap of 44), an error of the inputs' shift that no summation removes;
test_unrounded_logits_are_within_the_rounding_of_their_shift bounds that case.

Run as a script (``python tests/test_confident_rows.py [CORE.so]``) it prints the largest
relative error of each quantity, over the instruction sets, for the core that is imported or
for a saved build of it (the before/after tables of benchmarks/cpu-notes.md).
"""

import functools

import numpy as np
import pytest
from backends import backend_name, kernels, make, to_numpy

import xentcy as xc
from xentcy._cpu import _core

mpmath = pytest.importorskip("mpmath")
mp = mpmath.mp

# The backends whose kernels have the fix (the generic path computes s whole, as torch and
# NumPy do: these digits are the kernels').
FIXED_BACKENDS = ("numpy", "cuda_host", "cupy")
pytestmark = pytest.mark.only_xp_backends(*FIXED_BACKENDS, reason="no confident-row fix on this path")

ISAS = _core.supported_isas()
DTYPES = (np.float32, np.float64)
# the largest relative error allowed, per dtype
RTOL = {np.float32: 1e-6, np.float64: 1e-14}
# the target's logit, per dtype: losses from ~1e-6 down to ~1e-15 (float32), ~1e-12 to ~1e-30 (float64)
BIG = {np.float32: (20.0, 25.0, 40.0), np.float64: (40.0, 55.0, 70.0)}
# long rows (the row kernel, C = 70000 on its one-pass path for rows past L2) and short (few classes)
CLASSES = (3, 10, 1000, 20000, 70000)
ROWS_PER_BIG = 2


def _check_backend(xp, isa):
    name = backend_name(xp)
    if name != "numpy" and isa != ISAS[-1]:
        pytest.skip("the instruction set is the CPU core's")


# the grid of the other logits, on which A_c - m is exact in the dtype (|A_c - m| < 2^6 here)
GRID = {np.float32: 2.0**-16, np.float64: 2.0**-45}
# the unit roundoff
UNIT = {np.float32: 2.0**-24, np.float64: 2.0**-53}


@functools.cache
def rows(dtype, C, tie=False, shift=0.0, exact=True):
    """(A, y): confident rows, the target at the max (and a second class with it where tie);
    exact: the other logits on GRID."""
    gen = np.random.default_rng([C, int(tie), int(shift), np.dtype(dtype).itemsize, int(exact)])
    bigs = np.repeat(BIG[dtype], ROWS_PER_BIG)
    N = bigs.size
    A = gen.standard_normal((N, C))
    if exact:
        A = np.round(A / GRID[dtype]) * GRID[dtype]
    y = gen.integers(0, C, N)
    A[np.arange(N), y] = bigs
    if tie:
        other = (y + 1 + gen.integers(0, C - 1, N)) % C
        A[np.arange(N), other] = bigs
    A = (A + shift).astype(dtype)
    A.flags.writeable = False
    return A, y


def _mp(values):
    return [mp.mpf(float(v)) for v in values]


@functools.cache
def _lse(dtype, C, tie=False, shift=0.0, exact=True):
    """log sum_c exp(A_c) of each row, and the rows as mpf, at 50 digits."""
    A, _ = rows(dtype, C, tie, shift, exact)
    with mp.workdps(50):
        out = []
        for row in A:
            a = _mp(row)
            m = max(a)
            out.append((m + mp.log(mp.fsum(mp.exp(v - m) for v in a)), a))
    return out


def weights(dtype, C):
    return (0.5 + np.random.default_rng(C).random(C) * 1.5).astype(dtype)


@functools.cache
def reference(dtype, C, tie, shift, exact, weighted, eps):
    """Per row: (loss, gradient at the target, log_softmax at the target), of the sum."""
    _, y = rows(dtype, C, tie, shift, exact)
    w = weights(dtype, C) if weighted else None
    out = []
    with mp.workdps(50):
        ww = _mp(w) if w is not None else [mp.mpf(1)] * C
        eps = mp.mpf(float(eps))
        w_sum = mp.fsum(ww)
        for (lse, a), t in zip(_lse(dtype, C, tie, shift, exact), y, strict=True):
            # q_c = (1 - eps) [c = y] + eps / C; loss = sum_c w_c q_c (lse - A_c)
            smooth = eps / C
            loss = (1 - eps) * ww[t] * (lse - a[t])
            if eps:
                loss += smooth * mp.fsum(wc * (lse - ac) for wc, ac in zip(ww, a, strict=True))
            total = (1 - eps) * ww[t] + smooth * w_sum
            p_y = mp.exp(a[t] - lse)
            grad = p_y * total - ww[t] * (1 - eps + smooth)
            out.append((loss, grad, a[t] - lse))
    return out


def rel_err(got, want):
    return max(float(abs(mp.mpf(float(g)) - v) / abs(v)) for g, v in zip(got, want, strict=True))


def errors(xp, dtype, C, *, tie=False, shift=0.0, exact=True, weighted=False, eps=0.0, probability=False):
    """Largest relative errors (loss, target gradient, log_softmax at the target) of the rows."""
    A, y = rows(dtype, C, tie, shift, exact)
    w = weights(dtype, C) if weighted else None
    want = reference(dtype, C, tie, shift, exact, weighted, eps)
    target = y
    if probability:
        target = np.zeros(A.shape, dtype)
        target[np.arange(len(y)), y] = 1
    kw = dict(reduction="none", label_smoothing=eps)
    if weighted:
        kw["weight"] = make(xp, w)
    loss, grad = xc.loss_and_grad(make(xp, A), make(xp, target), **kw)
    loss, grad = to_numpy(loss), to_numpy(grad)
    loss_only = to_numpy(xc.cross_entropy(make(xp, A), make(xp, target), **kw))
    lsm = to_numpy(xc.log_softmax(make(xp, A)))
    idx = np.arange(len(y))
    return {
        "loss": max(rel_err(loss, [v[0] for v in want]), rel_err(loss_only, [v[0] for v in want])),
        "grad": rel_err(grad[idx, y], [v[1] for v in want]),
        "log_softmax": rel_err(lsm[idx, y], [v[2] for v in want]),
    }


def assert_within(errs, dtype):
    bad = {k: v for k, v in errs.items() if not v <= RTOL[dtype]}
    assert not bad, f"relative errors above {RTOL[dtype]:g}: {bad}"


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("C", CLASSES)
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize(("weighted", "eps"), [(False, 0.0), (True, 0.0), (False, 0.1), (True, 0.1)],
                         ids=["plain", "weight", "smoothing", "weight+smoothing"])
def test_class_index_rows_keep_their_digits(xp, isa, dtype, C, weighted, eps):
    _check_backend(xp, isa)
    with kernels(isa):
        assert_within(errors(xp, dtype, C, weighted=weighted, eps=eps), dtype)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("C", CLASSES)
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("weighted", [False, True], ids=["plain", "weight"])
def test_one_hot_probability_rows_keep_their_digits(xp, isa, dtype, C, weighted):
    _check_backend(xp, isa)
    with kernels(isa):
        assert_within(errors(xp, dtype, C, weighted=weighted, probability=True), dtype)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("C", CLASSES)
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("probability", [False, True], ids=["index", "probability"])
def test_two_classes_at_the_max(xp, isa, dtype, C, probability):
    _check_backend(xp, isa)
    with kernels(isa):
        assert_within(errors(xp, dtype, C, tie=True, weighted=True, probability=probability), dtype)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("C", (10, 1000, 70000))
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_offset_confident_rows_keep_their_digits(xp, isa, dtype, C):
    # all logits offset by 1000: m - A_c is still exact, and so is the loss's relative error
    _check_backend(xp, isa)
    with kernels(isa):
        assert_within(errors(xp, dtype, C, shift=1000.0, eps=0.1, weighted=True), dtype)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("C", CLASSES)
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("probability", [False, True], ids=["index", "probability"])
def test_unrounded_logits_are_within_the_rounding_of_their_shift(xp, isa, dtype, C, probability):
    # standard normal logits off the grid: A_c - m rounds in the dtype, by up to
    # |A_c - m| u, and so may each term exp(A_c - m) and the loss (~1e-6 in float32 here)
    _check_backend(xp, isa)
    A, _ = rows(dtype, C, exact=False)
    A = A.astype(np.float64)
    shift_rounding = UNIT[dtype] * float(np.max(A.max(axis=1, keepdims=True) - A))
    with kernels(isa):
        errs = errors(xp, dtype, C, exact=False, probability=probability)
    bad = {k: v for k, v in errs.items() if not v <= RTOL[dtype] + shift_rounding}
    assert not bad, f"relative errors above {RTOL[dtype] + shift_rounding:g}: {bad}"


@functools.cache
def rows_at_zero(dtype, C):
    """The confident rows shifted to a max of 0 (exactly: on GRID), and their logsumexp."""
    A = rows(dtype, C)[0].astype(np.float64)
    A = (A - A.max(axis=1, keepdims=True)).astype(dtype)
    with mp.workdps(50):
        want = [mp.log(mp.fsum(mp.exp(v) for v in _mp(row))) for row in A]
    assert max(float(v) for v in want) < 1e-3  # the rows are confident
    return A, want


def logsumexp_error(xp, dtype, C):
    """Largest relative error of logsumexp over the confident rows shifted to a max of 0."""
    A, want = rows_at_zero(dtype, C)
    return rel_err(to_numpy(xc.logsumexp(make(xp, A))), want)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("C", CLASSES)
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_logsumexp_of_a_confident_row_whose_max_is_zero(xp, isa, dtype, C):
    # max 0: logsumexp = log s is tiny, and its error relative to itself is that of log s
    _check_backend(xp, isa)
    with kernels(isa):
        err = logsumexp_error(xp, dtype, C)
    assert err <= RTOL[dtype], err


def error_table():
    """The largest relative error of each case, over the instruction sets (for cpu-notes.md)."""
    print("| case | dtype | C | loss | target gradient | log_softmax at the target |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    cases = [("index", {}), ("index, weight + smoothing", dict(weighted=True, eps=0.1)),
             ("one-hot probabilities", dict(probability=True)),
             ("one-hot probabilities, weight", dict(probability=True, weighted=True)),
             ("index, two at the max", dict(tie=True, weighted=True)),
             ("index, logits off the grid", dict(exact=False))]
    for name, kw in cases:
        for dtype in DTYPES:
            for C in CLASSES:
                worst = {}
                for isa in ISAS:
                    with kernels(isa):
                        for k, v in errors(np, dtype, C, **kw).items():
                            worst[k] = max(worst.get(k, 0.0), v)
                print(f"| {name} | {np.dtype(dtype).name} | {C} | {worst['loss']:.1e} | "
                      f"{worst['grad']:.1e} | {worst['log_softmax']:.1e} |")
    print()
    print("| logsumexp, max 0 | dtype | C | relative error |")
    print("| --- | --- | ---: | ---: |")
    for dtype in DTYPES:
        for C in CLASSES:
            worst = 0.0
            for isa in ISAS:
                with kernels(isa):
                    worst = max(worst, logsumexp_error(np, dtype, C))
            print(f"| | {np.dtype(dtype).name} | {C} | {worst:.1e} |")


if __name__ == "__main__":
    import importlib.util
    import sys

    import xentcy._cpu

    if len(sys.argv) > 1:  # a saved build of the core, in place of the imported one
        spec = importlib.util.spec_from_file_location("xentcy._cpu._core", sys.argv[1])
        _core = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(_core)
        xentcy._cpu._core = _core
    print(f"core: {xentcy._cpu._core.__file__}\n")
    error_table()
