"""Every backend against the float64 NumPy reference on random cases.

Each case is a logits shape and class axis, a dtype, a reduction and one
combination of the keywords; the combinations rotate over the cases so that
every shape meets every keyword combination and every dtype/reduction pair
does too, without the full product. float32 results are compared with the
float64 reference computed from the same float32 logits.
"""

import numpy as np
import pytest
import reference as ref
from backends import SLOW_TO_COMPILE, WRITABLE, array_type, backend_name, make, to_numpy

import xentcy as xc

# (id, logits shape, class axis)
SHAPES = [
    ("N1_C5", (1, 5), -1),
    ("N4_C1", (4, 1), -1),
    ("N7_C3", (7, 3), -1),
    ("N64_C257", (64, 257), -1),
    ("N3_C100000", (3, 100_000), -1),
    ("1d_C6", (6,), -1),
    ("3d_axis1", (4, 5, 3), 1),
    ("3d_axis0", (5, 3, 4), 0),
]
DTYPES = [np.float32, np.float64]
REDUCTIONS = ["mean", "sum", "none"]

# Keyword combinations for class-index targets: (id, weight kind, ignore_index,
# whether to mark some samples as ignored, label_smoothing).
INDEX_KEYWORDS = [
    ("defaults", None, None, False, None),
    ("weight_list_ignored", "list", None, True, None),
    ("weight_numpy_custom_ignore_smooth0.1", "numpy", -1, True, 0.1),
    ("weight_xp_ignore_in_range_smooth1", "xp", 1, False, 1.0),
    ("ignored_smooth0.1", None, None, True, 0.1),
    ("weight_xp_ignored_smooth0.1", "xp", -100, True, 0.1),
]
# For probability targets: (id, weight kind, ignore_index (must have no
# effect), label_smoothing).
PROBABILITY_KEYWORDS = [
    ("defaults", None, None, None),
    ("weight_list_smooth0.1", "list", None, 0.1),
    ("weight_numpy_ignore_index_unused", "numpy", 0, None),
    ("weight_xp_smooth1", "xp", None, 1.0),
    ("smooth0.1", None, None, 0.1),
    ("weight_xp", "xp", None, None),
]
PROBABILITY_KINDS = ["soft", "one_hot_float", "one_hot_int"]


def rotated_cases(keywords, extra=None):
    cases = []
    for s, (shape_id, shape, axis) in enumerate(SHAPES):
        for d, dtype in enumerate(DTYPES):
            for r, reduction in enumerate(REDUCTIONS):
                kw = keywords[(s + 3 * d + r) % len(keywords)]
                parts = [shape_id, np.dtype(dtype).name, reduction, kw[0]]
                # Every shape, both dtypes and every reduction stay in the subset.
                in_subset = (s + d + r) % 3 == 0
                args = [shape, axis, dtype, reduction, kw, s * 100 + d * 10 + r, in_subset]
                if extra is not None:
                    kind = extra[(s + d + r) % len(extra)]
                    parts.append(kind)
                    args.append(kind)
                cases.append(pytest.param(*args, id="-".join(parts)))
    return cases


def skip_outside_subset_if_slow(xp, in_subset):
    if not in_subset and backend_name(xp) in SLOW_TO_COMPILE:
        pytest.skip(f"{backend_name(xp)} compiles each new case anew; it runs one case in three")


def tolerance(dtype, C):
    if dtype == np.float64:
        return 1e-12
    # float32 sums of many exp() terms lose a little more.
    return 2e-6 if C <= 1000 else 1e-5


def assert_close(actual, desired, dtype, rtol, xp):
    """actual (a backend array) matches the float64 reference ``desired``."""
    assert isinstance(actual, array_type(xp)), type(actual)
    actual = to_numpy(actual)
    assert actual.dtype == dtype
    assert actual.shape == np.shape(desired)
    desired = np.asarray(desired, dtype=np.float64)
    finite = np.abs(desired[np.isfinite(desired)])
    scale = finite.max() if finite.size else 0.0
    # All-zero references (C = 1, everything ignored) allow rounding-sized residue.
    atol = rtol * scale if scale > 0 else 10 * np.finfo(dtype).eps
    np.testing.assert_allclose(actual.astype(np.float64), desired, rtol=rtol, atol=atol,
                               equal_nan=True)


def random_weight(rng, C):
    # Values exactly representable in float32, so the cast to the logits'
    # dtype does not change them.
    return rng.uniform(0.2, 2.0, C).astype(np.float32).astype(np.float64)


def weight_arguments(xp, kind, w, dtype):
    """(weight passed to xentcy, weight passed to the reference)."""
    if kind is None:
        return None, None
    if kind == "list":
        return w.tolist(), w
    if kind == "numpy":
        return w, w
    return make(xp, w.astype(dtype), axis=0), w


def batch_shape(shape, axis):
    axis %= len(shape)
    return shape[:axis] + shape[axis + 1:]


def random_logits(rng, shape, dtype):
    return (3.0 * rng.standard_normal(shape)).astype(dtype)


def check_all_entry_points(xp, logits, target, target_axis, axis, dtype, reduction,
                           kwargs, ref_kwargs):
    """cross_entropy, cross_entropy_grad and loss_and_grad against the reference."""
    C = logits.shape[axis]
    rtol = tolerance(dtype, C)
    ref_loss, ref_grad = ref.cross_entropy_and_grad(
        logits, target, axis=axis, reduction=reduction, **ref_kwargs)
    if axis != -1:
        kwargs = dict(kwargs, axis=axis)
    kwargs = dict(kwargs, reduction=reduction)
    A = make(xp, logits, axis=axis)
    T = make(xp, target, axis=target_axis)

    assert_close(xc.cross_entropy(A, T, **kwargs), ref_loss, dtype, rtol, xp)
    assert_close(xc.cross_entropy_grad(A, T, **kwargs), ref_grad, dtype, rtol, xp)
    loss, grad = xc.loss_and_grad(A, T, **kwargs)
    assert_close(loss, ref_loss, dtype, rtol, xp)
    assert_close(grad, ref_grad, dtype, rtol, xp)


def keyword_arguments(xp, rng, C, weight_kind, ignore_index, smoothing, dtype):
    """(xentcy's keywords, the reference's keywords) for one case; draws the weights from rng."""
    weight, ref_weight = weight_arguments(xp, weight_kind, random_weight(rng, C), dtype)
    kwargs, ref_kwargs = {}, {}
    if weight is not None:
        kwargs["weight"], ref_kwargs["weight"] = weight, ref_weight
    if ignore_index is not None:
        kwargs["ignore_index"] = ref_kwargs["ignore_index"] = ignore_index
    if smoothing is not None:
        kwargs["label_smoothing"] = ref_kwargs["label_smoothing"] = smoothing
    return kwargs, ref_kwargs


@pytest.mark.parametrize("shape, axis, dtype, reduction, keywords, seed, in_subset",
                         rotated_cases(INDEX_KEYWORDS))
def test_index_target_loss_and_grad_match_reference(xp, shape, axis, dtype, reduction,
                                                    keywords, seed, in_subset):
    skip_outside_subset_if_slow(xp, in_subset)
    _, weight_kind, ignore_index, mark_ignored, smoothing = keywords
    rng = np.random.default_rng(seed)
    C = shape[axis]
    logits = random_logits(rng, shape, dtype)
    bshape = batch_shape(shape, axis)
    if bshape:
        target = rng.integers(0, C, bshape)
        if mark_ignored:
            flat = target.reshape(-1)
            ignored = rng.random(flat.size) < 0.3
            ignored[0] = False  # keep D > 0
            flat[ignored] = -100 if ignore_index is None else ignore_index
    else:
        target = int(rng.integers(0, C))  # 1-D logits take a Python int

    kwargs, ref_kwargs = keyword_arguments(xp, rng, C, weight_kind, ignore_index, smoothing, dtype)
    check_all_entry_points(xp, logits, target, None, axis, dtype, reduction, kwargs,
                           ref_kwargs)


@pytest.mark.parametrize("shape, axis, dtype, reduction, keywords, seed, in_subset, kind",
                         rotated_cases(PROBABILITY_KEYWORDS, PROBABILITY_KINDS))
def test_probability_target_loss_and_grad_match_reference(xp, shape, axis, dtype, reduction,
                                                          keywords, seed, in_subset, kind):
    skip_outside_subset_if_slow(xp, in_subset)
    _, weight_kind, ignore_index, smoothing = keywords
    rng = np.random.default_rng(seed)
    C = shape[axis]
    logits = random_logits(rng, shape, dtype)
    if kind == "soft":
        target = rng.random(shape)
        target = (target / target.sum(axis=axis, keepdims=True)).astype(dtype)
    else:
        classes = np.expand_dims(rng.integers(0, C, batch_shape(shape, axis)), axis)
        one_hot = np.arange(C).reshape([-1 if i == axis % len(shape) else 1
                                        for i in range(len(shape))]) == classes
        target = one_hot.astype(np.float64 if kind == "one_hot_float" else np.int64)

    kwargs, ref_kwargs = keyword_arguments(xp, rng, C, weight_kind, ignore_index, smoothing, dtype)
    check_all_entry_points(xp, logits, target, axis, axis, dtype, reduction, kwargs,
                           ref_kwargs)


SHAPE_PARAMS = [pytest.param(shape, axis, id=name) for name, shape, axis in SHAPES]
DTYPE_PARAMS = [pytest.param(d, id=np.dtype(d).name) for d in DTYPES]


def axis_kwargs(axis):
    # Leave the default axis=-1 implicit, so the default is exercised too.
    return {} if axis == -1 else {"axis": axis}


@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("shape, axis", SHAPE_PARAMS)
def test_softmax_log_softmax_logsumexp_match_reference(xp, shape, axis, dtype):
    rng = np.random.default_rng(7)
    x = random_logits(rng, shape, dtype)
    rtol = tolerance(dtype, shape[axis])
    X = make(xp, x, axis=axis)
    kw = axis_kwargs(axis)
    assert_close(xc.softmax(X, **kw), ref.softmax(x, axis), dtype, rtol, xp)
    assert_close(xc.log_softmax(X, **kw), ref.log_softmax(x, axis), dtype, rtol, xp)
    assert_close(xc.logsumexp(X, **kw), ref.logsumexp(x, axis), dtype, rtol, xp)
    assert_close(xc.logsumexp(X, keepdims=True, **kw), ref.logsumexp(x, axis, keepdims=True),
                 dtype, rtol, xp)


@pytest.mark.parametrize("axis", [0, 1, -1, -2])
def test_softmax_rows_sum_to_one_along_each_axis(xp, axis):
    x = np.random.default_rng(3).standard_normal((5, 6)) * 4
    P = to_numpy(xc.softmax(make(xp, x), axis=axis))
    np.testing.assert_allclose(P.sum(axis=axis), 1.0, rtol=1e-13)
    np.testing.assert_allclose(P, ref.softmax(x, axis), rtol=1e-12)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_class_axis_moves_with_axis_keyword(xp, reduction):
    # The (N, C, d1) layout with axis=1 equals the (N, d1, C) layout with axis=-1,
    # and axis=-2 names the same axis as axis=1.
    rng = np.random.default_rng(5)
    a = rng.standard_normal((3, 4, 5))
    y = rng.integers(0, 4, (3, 5))
    w = random_weight(rng, 4)
    kw = dict(weight=w, label_smoothing=0.1, reduction=reduction)
    L1, G1 = xc.loss_and_grad(make(xp, a, axis=1), make(xp, y), axis=1, **kw)
    moved = np.ascontiguousarray(np.moveaxis(a, 1, -1))
    L2, G2 = xc.loss_and_grad(make(xp, moved, axis=-1), make(xp, y), **kw)
    np.testing.assert_allclose(to_numpy(L1), to_numpy(L2), rtol=1e-13)
    np.testing.assert_allclose(np.moveaxis(to_numpy(G1), 1, -1), to_numpy(G2), rtol=1e-13,
                               atol=1e-16)
    L3, G3 = xc.loss_and_grad(make(xp, a, axis=1), make(xp, y), axis=-2, **kw)
    np.testing.assert_array_equal(to_numpy(L3), to_numpy(L1))
    np.testing.assert_array_equal(to_numpy(G3), to_numpy(G1))


@pytest.mark.skip_xp_backends(*WRITABLE, reason="its arrays can be written to")
def test_out_and_inplace_are_refused_for_arrays_that_cannot_be_written(xp):
    rng = np.random.default_rng(9)
    A, Y = make(xp, rng.standard_normal((6, 4))), make(xp, rng.integers(0, 4, 6))
    with pytest.raises(ValueError, match="out must be writable, got a read-only"):
        xc.loss_and_grad(A, Y, out=make(xp, np.zeros((6, 4))))
    with pytest.raises(ValueError, match="inplace=True needs writable logits, got a read-only"):
        xc.loss_and_grad(A, Y, inplace=True)


@pytest.mark.only_xp_backends(*WRITABLE, reason="its arrays cannot be written to")
def test_out_and_inplace_write_the_given_buffer(xp):
    rng = np.random.default_rng(9)
    a = rng.standard_normal((6, 4))
    y = rng.integers(0, 4, 6)
    ref_loss, ref_grad = ref.cross_entropy_and_grad(a, y)
    A, Y = make(xp, a), make(xp, y)
    out = make(xp, np.zeros_like(a))
    loss, grad = xc.loss_and_grad(A, Y, out=out)
    assert grad is out
    np.testing.assert_allclose(to_numpy(loss), ref_loss, rtol=1e-12)
    np.testing.assert_allclose(to_numpy(out), ref_grad, rtol=1e-12, atol=1e-16)
    np.testing.assert_array_equal(to_numpy(A), a)

    loss, grad = xc.loss_and_grad(A, Y, inplace=True)
    assert grad is A
    np.testing.assert_allclose(to_numpy(loss), ref_loss, rtol=1e-12)
    np.testing.assert_allclose(to_numpy(A), ref_grad, rtol=1e-12, atol=1e-16)


def test_inputs_are_not_modified(xp):
    rng = np.random.default_rng(13)
    a = rng.standard_normal((5, 3, 4))
    q = rng.random((5, 3, 4))
    w = random_weight(rng, 3)
    A, Q, W = make(xp, a, axis=1), make(xp, q, axis=1), make(xp, w, axis=0)
    kw = dict(axis=1, weight=W, label_smoothing=0.2)
    xc.cross_entropy(A, Q, **kw)
    xc.cross_entropy_grad(A, Q, **kw)
    xc.loss_and_grad(A, Q, **kw)
    xc.softmax(A, axis=1)
    xc.log_softmax(A, axis=1)
    xc.logsumexp(A, axis=1)
    xent = xc.CrossEntropyLoss(**kw)
    xent.forward(A, Q)
    xent.backward()
    xent.softmax  # noqa: B018 (computed on first read)
    np.testing.assert_array_equal(to_numpy(A), a)
    np.testing.assert_array_equal(to_numpy(Q), q)
    np.testing.assert_array_equal(to_numpy(W), w)
