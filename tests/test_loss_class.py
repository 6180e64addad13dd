"""The CrossEntropyLoss protocol: forward, backward and the spec's attributes."""

import numpy as np
import pytest
import reference as ref
from backends import array_type, make, to_numpy

import xentcy as xc

rng = np.random.default_rng(0)
A = rng.standard_normal((6, 4))
Y = np.array([0, 3, 1, 1, 2, 0])
Q = rng.random((6, 4))
W = [0.5, 1.0, 2.0, 1.5]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_forward_returns_0d_array_of_logits_library_and_dtype(xp, dtype):
    xent = xc.CrossEntropyLoss()
    L = xent.forward(make(xp, A.astype(dtype)), make(xp, Y))
    assert isinstance(L, array_type(xp))
    L = to_numpy(L)
    assert L.shape == () and L.dtype == dtype
    np.testing.assert_allclose(L, ref.cross_entropy(A.astype(dtype), Y),
                               rtol=1e-12 if dtype == np.float64 else 2e-6)


def test_forward_on_numpy_is_an_ndarray_not_a_scalar():
    L = xc.CrossEntropyLoss().forward(A, Y)
    assert type(L) is np.ndarray and L.ndim == 0
    assert L.round(4) == np.round(ref.cross_entropy(A, Y), 4)
    assert L.item() == pytest.approx(ref.cross_entropy(A, Y), rel=1e-12)


@pytest.mark.parametrize("target", [Y, Q], ids=["index", "probability"])
def test_backward_equals_cross_entropy_grad(xp, target):
    kw = dict(weight=W, label_smoothing=0.1)
    xent = xc.CrossEntropyLoss(**kw)
    T = make(xp, target)
    xent.forward(make(xp, A), T)
    G = xent.backward()
    assert isinstance(G, array_type(xp))
    np.testing.assert_allclose(to_numpy(G), to_numpy(xc.cross_entropy_grad(make(xp, A), T, **kw)),
                               rtol=1e-14, atol=1e-17)
    np.testing.assert_allclose(to_numpy(G), ref.cross_entropy_grad(A, target, **kw), rtol=1e-12,
                               atol=1e-16)


def test_attributes_keep_the_spec_names():
    xent = xc.CrossEntropyLoss()
    xent.forward(A, Q)
    np.testing.assert_array_equal(xent.A, A)
    np.testing.assert_array_equal(xent.Y, Q)
    assert (xent.N, xent.C) == (6, 4)
    xent.forward(A[:3, :2], Y[:3] % 2)
    np.testing.assert_array_equal(xent.A, A[:3, :2])
    np.testing.assert_array_equal(xent.Y, Y[:3] % 2)
    assert (xent.N, xent.C) == (3, 2)


def test_class_count_follows_axis():
    xent = xc.CrossEntropyLoss(axis=1)
    xent.forward(rng.standard_normal((2, 5, 3)), np.zeros((2, 3), dtype=np.int64))
    assert xent.C == 5


@pytest.mark.parametrize("target", [Y, Q], ids=["index", "probability"])
def test_softmax_attribute_equals_softmax_of_A(xp, target):
    xent = xc.CrossEntropyLoss(weight=W, label_smoothing=0.2)
    xent.forward(make(xp, A), make(xp, target))
    P = xent.softmax
    assert isinstance(P, array_type(xp))
    np.testing.assert_allclose(to_numpy(P), ref.softmax(A), rtol=1e-12, atol=1e-16)
    np.testing.assert_allclose(to_numpy(xent.softmax), ref.softmax(A), rtol=1e-12, atol=1e-16)


@pytest.mark.parametrize("kwargs, target", [
    pytest.param(dict(), np.array([0, -100, 3, -100, 1, 2]), id="ignored_samples"),
    pytest.param(dict(), np.full(6, -100), id="all_ignored"),
    pytest.param(dict(weight=[0.0, 1.0, 1.0, 1.0]), np.array([0, 0, 3, 0, 1, 0]),
                 id="zero_weight_targets"),
    pytest.param(dict(reduction="none"), np.array([0, 1, 2, 3, 0, -100]), id="none"),
    pytest.param(dict(reduction="sum", label_smoothing=1.0), Y, id="sum_full_smoothing"),
    pytest.param(dict(), np.vstack([Q[:3], np.zeros((3, 4))]), id="zero_probability_rows"),
])
def test_softmax_attribute_is_right_where_the_gradient_is_zero(kwargs, target):
    # Rows with zero gradient (ignored, zero weight, zero target mass) do not
    # determine sigma(A) from the gradient; the attribute must still be right.
    xent = xc.CrossEntropyLoss(**kwargs)
    xent.forward(A, target)
    np.testing.assert_allclose(xent.softmax, ref.softmax(A), rtol=1e-12, atol=1e-16)


def test_softmax_attribute_follows_class_axis():
    a = rng.standard_normal((2, 5, 3))
    xent = xc.CrossEntropyLoss(axis=1)
    xent.forward(a, rng.integers(0, 5, (2, 3)))
    np.testing.assert_allclose(xent.softmax, ref.softmax(a, axis=1), rtol=1e-12, atol=1e-16)


def test_reading_softmax_does_not_change_backward():
    xent = xc.CrossEntropyLoss(weight=W, label_smoothing=0.1)
    xent.forward(A, Y)
    before = np.array(xent.backward(), copy=True)
    xent.softmax  # noqa: B018 (computed on first read)
    np.testing.assert_array_equal(xent.backward(), before)
    np.testing.assert_allclose(before, ref.cross_entropy_grad(A, Y, weight=W, label_smoothing=0.1),
                               rtol=1e-12, atol=1e-16)


def test_second_forward_replaces_loss_gradient_and_softmax():
    xent = xc.CrossEntropyLoss()
    xent.forward(A, Y)
    xent.softmax  # noqa: B018 (cache the first softmax)
    xent.backward()
    A2 = rng.standard_normal((3, 5))
    Y2 = np.array([4, 0, 2])
    L2 = xent.forward(A2, Y2)
    np.testing.assert_allclose(L2, ref.cross_entropy(A2, Y2), rtol=1e-12)
    np.testing.assert_allclose(xent.softmax, ref.softmax(A2), rtol=1e-12, atol=1e-16)
    np.testing.assert_allclose(xent.backward(), ref.cross_entropy_grad(A2, Y2), rtol=1e-12,
                               atol=1e-16)
    assert (xent.N, xent.C) == (3, 5)


def test_call_is_forward():
    xent = xc.CrossEntropyLoss(reduction="sum")
    L = xent(A, Y)
    np.testing.assert_allclose(L, ref.cross_entropy(A, Y, reduction="sum"), rtol=1e-12)
    np.testing.assert_allclose(xent.backward(), ref.cross_entropy_grad(A, Y, reduction="sum"),
                               rtol=1e-12, atol=1e-16)


@pytest.mark.parametrize("kwargs", [
    dict(reduction="sum"),
    dict(reduction="none"),
    dict(weight=np.array(W), label_smoothing=0.3),
    dict(ignore_index=1, reduction="mean"),
    dict(ignore_index=3, weight=W, label_smoothing=1.0, reduction="sum"),
], ids=["sum", "none", "weight_smoothing", "ignore_in_range", "all_keywords"])
def test_keywords_pass_through_to_forward_and_backward(kwargs):
    xent = xc.CrossEntropyLoss(**kwargs)
    L = xent.forward(A, Y)
    ref_L, ref_G = ref.cross_entropy_and_grad(A, Y, **kwargs)
    np.testing.assert_allclose(L, ref_L, rtol=1e-12)
    np.testing.assert_allclose(xent.backward(), ref_G, rtol=1e-12, atol=1e-16)


def test_axis_keyword_passes_through():
    a = rng.standard_normal((2, 4, 3))
    y = rng.integers(0, 4, (2, 3))
    xent = xc.CrossEntropyLoss(axis=1, weight=W)
    L = xent.forward(a, y)
    ref_L, ref_G = ref.cross_entropy_and_grad(a, y, axis=1, weight=W)
    np.testing.assert_allclose(L, ref_L, rtol=1e-12)
    np.testing.assert_allclose(xent.backward(), ref_G, rtol=1e-12, atol=1e-16)


def test_forward_does_not_modify_its_inputs():
    a, q = A.copy(), Q.copy()
    xent = xc.CrossEntropyLoss(weight=W)
    xent.forward(a, q)
    xent.backward()
    xent.softmax  # noqa: B018
    np.testing.assert_array_equal(a, A)
    np.testing.assert_array_equal(q, Q)


def test_backward_before_forward_raises_runtime_error():
    with pytest.raises(RuntimeError, match="forward"):
        xc.CrossEntropyLoss().backward()
