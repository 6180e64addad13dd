"""The defects of the reliability audit (issue 11), one regression test or more each.

api.md, Errors: never a crash, never a read outside the arrays, never a silent
wrong answer. Tests of inputs that could crash the process are marked
``isolated``: they run in a subprocess of their own (tests/conftest.py).
"""

import itertools

import array_api_compat
import numpy as np
import pytest
import reference as ref
from backends import backend_name, make, to_numpy

import xentcy as xc
from xentcy._cpu import _core

A3 = np.array([[2.0, 1.0, 0.1], [0.1, 2.0, 1.9]])
REDUCTIONS = ["mean", "sum", "none"]


# --- 1. Dask: an out-of-range class index raises at compute time ----------------

def _dask_case(bad):
    da = pytest.importorskip("dask.array")
    a = np.zeros((4000, 3))
    y = np.zeros(4000, np.int64)
    y[-1] = bad
    return da.from_array(a, chunks=(100, 3)), da.from_array(y, chunks=100)


@pytest.mark.isolated
@pytest.mark.parametrize("scheduler", ["sync", "threads"])
def test_dask_out_of_range_index_raises_at_compute_for_every_reduction(scheduler):
    dask = pytest.importorskip("dask")
    for bad in [10**11, 3, -1]:  # far outside, C itself (it read the next row), negative
        logits, target = _dask_case(bad)
        for reduction in REDUCTIONS:
            lazy_loss = xc.cross_entropy(logits, target, reduction=reduction)  # nothing runs yet
            lazy_pair = xc.loss_and_grad(logits, target, reduction=reduction)
            with dask.config.set(scheduler=scheduler):
                with pytest.raises(ValueError, match=rf"target holds the class index {bad}\b"):
                    lazy_loss.compute()
                # the gradient alone too: no task of the graph computes through the bad index
                with pytest.raises(ValueError, match="target"):
                    lazy_pair[1].compute()
                with pytest.raises(ValueError, match="target"):
                    dask.compute(*lazy_pair)


# --- 2. The compiled kernels never index outside [0, C) -----------------------

def _core_call(isa, dtype, n, c, bad_rows, bad_values, want_grad, weighted, smoothing):
    """Run _core.cross_entropy_index directly (no checks above it) with bad indices."""
    rng = np.random.default_rng(c)
    a = rng.standard_normal((n, c)).astype(dtype)
    y = rng.integers(0, c, n).astype(np.intp)
    y[1] = -100  # ignored
    for row, value in zip(bad_rows, bad_values, strict=True):
        y[row] = value
    w = rng.random(c).astype(dtype) + 0.5 if weighted else None
    w_sum = float(np.sum(w, dtype=np.float64)) if weighted else 0.0
    g = np.full((n, c), 7.0, dtype) if want_grad else None
    loss = np.full(n, 7.0)
    previous = _core.set_isa(isa)
    try:
        _core.cross_entropy_index(a, y, w, w_sum, smoothing, -100, 0.5, g, loss)
    finally:
        _core.set_isa(previous)
    return a, y, w, g, loss


BAD_VALUES = [3, 1 << 40, -1, -(1 << 63), (1 << 32) + 1, (1 << 63) - 1]


@pytest.mark.isolated
@pytest.mark.parametrize("isa", _core.supported_isas())
def test_compiled_kernel_gives_nan_rows_for_indices_outside_the_classes(isa):
    # C up to 64 takes the few-class kernel (16 rows a block: n = 40 has both tails), above it
    # the row kernel
    n = 40
    bad_rows = [0, 5, 17, 22, 31, 39]
    for dtype, c, want_grad, (weighted, smoothing) in itertools.product(
        [np.float32, np.float64], [3, 10, 16, 40, 100, 1000], [True, False], [(False, 0.0), (True, 0.1)]
    ):
        values = [v if v >= c or v < 0 else c for v in BAD_VALUES]
        a, y, w, g, loss = _core_call(isa, dtype, n, c, bad_rows, values, want_grad, weighted, smoothing)
        assert np.isnan(loss[bad_rows]).all()
        good = np.setdiff1d(np.arange(n), bad_rows)
        ref_loss, ref_grad = ref.cross_entropy_and_grad(
            a[good], y[good], weight=w, label_smoothing=smoothing, reduction="none"
        )
        tol = 2e-5 if dtype == np.float32 else 1e-12
        np.testing.assert_allclose(loss[good], ref_loss, rtol=tol, atol=tol)
        assert loss[1] == 0.0
        if want_grad:
            assert np.isnan(g[bad_rows]).all()
            np.testing.assert_allclose(g[good], 0.5 * ref_grad, rtol=tol, atol=tol)
            assert (g[1] == 0).all()


@pytest.mark.isolated
@pytest.mark.parametrize("isa", _core.supported_isas())
def test_compiled_kernel_with_every_index_bad_reads_nothing_of_a_tiny_array(isa):
    # one row of one class: any read through a bad index would leave the allocation
    for value in BAD_VALUES:
        a = np.zeros((1, 1))
        g = np.zeros((1, 1))
        loss = np.zeros(1)
        previous = _core.set_isa(isa)
        try:
            y = np.array([value], np.intp)
            _core.cross_entropy_index(a, y, None, 0.0, 0.0, -100, 1.0, g, loss)
        finally:
            _core.set_isa(previous)
        assert np.isnan(loss[0]) and np.isnan(g[0, 0])


def test_compiled_entry_points_refuse_buffers_that_do_not_fit():
    a = np.zeros((4, 3))
    y = np.zeros(4, np.intp)
    w = np.ones(3)
    loss = np.empty(4)
    g = np.empty((4, 3))
    calls = {
        "y": lambda: _core.cross_entropy_index(a, y[:3], w, 3.0, 0.0, -100, 1.0, g, loss),
        "weight": lambda: _core.cross_entropy_index(a, y, w[:2], 3.0, 0.0, -100, 1.0, g, loss),
        "G": lambda: _core.cross_entropy_index(a, y, w, 3.0, 0.0, -100, 1.0, g[:3], loss),
        "loss": lambda: _core.cross_entropy_index(a, y, w, 3.0, 0.0, -100, 1.0, g, loss[:3]),
        "A": lambda: _core.cross_entropy_index(np.zeros((4, 6))[:, ::2], y, w, 3.0, 0.0, -100, 1.0, g, loss),
        "Q": lambda: _core.cross_entropy_prob(a, np.zeros((4, 2)), w, 0.0, 1.0, g, loss),
        "out": lambda: _core.softmax(a, np.empty((4, 2)), False),
        "weight ": lambda: _core.class_index_summary(y, w[:2], -100, 3),
        "out ": lambda: _core.logsumexp(a, np.empty(3)),
    }
    for name, call in calls.items():
        with pytest.raises(ValueError, match=name.strip()):
            call()
    with pytest.raises(ValueError, match="C = 0"):
        _core.cross_entropy_index(np.zeros((4, 0)), y, None, 0.0, 0.0, -100, 1.0, None, loss)


# --- 3. uint64 targets of 2**63 and more ---------------------------------------

@pytest.mark.parametrize("value", [2**64 - 100, 2**63, 2**64 - 1])
def test_uint64_class_index_beyond_int64_is_value_error_with_the_value_as_written(xp, value):
    if not hasattr(xp, "uint64"):
        pytest.skip("no uint64 in this library")
    y = make(xp, np.array([1, value], np.uint64))
    with pytest.raises(ValueError, match=rf"class index {value}\b"):
        to_numpy(xc.cross_entropy(make(xp, A3), y, reduction="none"))


def test_uint64_class_indices_within_range_still_work():
    y = np.array([1, 0], np.uint64)
    np.testing.assert_allclose(xc.cross_entropy(A3, y, reduction="none"), [1.41703002, 2.61998677])


# --- 4. inplace=True and memory shared with the logits ----------------------------

def test_inplace_with_target_sharing_the_logits_memory_is_value_error():
    b = np.abs(np.random.default_rng(0).standard_normal((101, 100)))
    before = b.copy()
    with pytest.raises(ValueError, match="inplace.*target"):
        xc.loss_and_grad(b[1:], b[:-1], inplace=True)
    np.testing.assert_array_equal(b, before)


def test_inplace_with_weight_sharing_the_logits_memory_is_value_error():
    logits = np.abs(np.random.default_rng(1).standard_normal((4, 3)))
    with pytest.raises(ValueError, match="inplace.*weight"):
        xc.loss_and_grad(logits, np.array([0, 1, 2, 0]), weight=logits[2], inplace=True)


def test_inplace_with_separate_target_still_writes_over_the_logits():
    a = np.abs(np.random.default_rng(0).standard_normal((101, 100)))
    logits, target = a[1:].copy(), a[:-1].copy()
    ref_loss, ref_grad = ref.cross_entropy_and_grad(logits, target)
    loss, grad = xc.loss_and_grad(logits, target, inplace=True)
    assert grad is logits
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-12)
    np.testing.assert_allclose(logits, ref_grad, rtol=1e-10, atol=1e-15)


# --- 5. masked arrays and matrices -------------------------------------------------

FUNCTIONS = {
    "softmax": lambda x: xc.softmax(x),
    "log_softmax": lambda x: xc.log_softmax(x),
    "logsumexp": lambda x: xc.logsumexp(x),
    "cross_entropy": lambda x: xc.cross_entropy(x, np.array([1, 0])),
    "loss_and_grad": lambda x: xc.loss_and_grad(x, np.array([1, 0])),
    "CrossEntropyLoss": lambda x: xc.CrossEntropyLoss()(x, np.array([1, 0])),
}


@pytest.mark.parametrize("fn", FUNCTIONS.values(), ids=FUNCTIONS.keys())
def test_masked_logits_are_type_error_that_says_how_to_fill_them(fn):
    masked = np.ma.masked_array(A3, mask=[[0, 0, 1], [0, 0, 0]])
    with pytest.raises(TypeError, match=r"masked array.*filled\(.*-np\.inf.*\.data"):
        fn(masked)


@pytest.mark.parametrize("name", ["target", "weight", "out"])
def test_masked_target_weight_and_out_are_type_errors_naming_them(name):
    kwargs = dict(
        target=np.array([1, 0]), weight=None, out=None,
    )
    kwargs[name] = {
        "target": np.ma.masked_array([1, 0], mask=[0, 1]),
        "weight": np.ma.masked_array([1.0, 2.0, 3.0], mask=[0, 1, 0]),
        "out": np.ma.masked_array(np.zeros((2, 3))),
    }[name]
    with pytest.raises(TypeError, match=rf"{name} is a masked array"):
        xc.loss_and_grad(A3, kwargs["target"], weight=kwargs["weight"], out=kwargs["out"])


@pytest.mark.parametrize("fn", FUNCTIONS.values(), ids=FUNCTIONS.keys())
def test_matrix_logits_are_type_error_that_says_to_use_asarray(fn):
    with pytest.raises(TypeError, match=r"numpy\.matrix.*np\.asarray"):
        fn(np.matrix(A3))


def test_other_ndarray_subclasses_still_work(tmp_path):
    memmap = np.lib.format.open_memmap(tmp_path / "a.npy", mode="w+", dtype=np.float64, shape=A3.shape)
    memmap[...] = A3
    assert float(xc.cross_entropy(memmap, np.array([1, 0]))) == pytest.approx(2.01850839, rel=1e-8)


# --- 6. a NaN or infinite weight on a class no row targets -------------------------

@pytest.mark.parametrize("bad_weight", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("c", [3, 100])  # the few-class and the row kernels
def test_nonfinite_weight_of_an_untargeted_class_changes_nothing(xp, bad_weight, c):
    rng = np.random.default_rng(c)
    a = rng.standard_normal((5, c))
    y = np.array([1, 1, 2, 1, 2])
    w = np.ones(c)
    w[0] = bad_weight
    loss, grad = xc.loss_and_grad(make(xp, a), make(xp, y), weight=make(xp, w))
    finite_w = w.copy()
    finite_w[0] = 1.0  # class 0 is no row's target: its weight must not matter
    ref_loss, ref_grad = ref.cross_entropy_and_grad(a, y, weight=finite_w)
    np.testing.assert_allclose(to_numpy(loss), ref_loss, rtol=1e-12)
    np.testing.assert_allclose(to_numpy(grad), ref_grad, rtol=1e-10, atol=1e-15)


def test_nonfinite_weight_of_an_untargeted_class_matches_torch():
    torch = pytest.importorskip("torch")
    a = np.random.default_rng(0).standard_normal((2, 3))
    w = [np.nan, 1.0, 1.0]
    loss, grad = xc.loss_and_grad(a, np.array([1, 1]), weight=w)
    ta = torch.tensor(a, requires_grad=True)
    tw = torch.tensor(w, dtype=torch.float64)
    tl = torch.nn.functional.cross_entropy(ta, torch.tensor([1, 1]), weight=tw)
    tl.backward()
    np.testing.assert_allclose(loss, tl.item(), rtol=1e-12)
    np.testing.assert_allclose(grad, ta.grad.numpy(), rtol=1e-10, atol=1e-15)


def test_infinite_weight_on_a_target_class_gives_nan_mean_and_nan_gradient(xp):
    a = np.random.default_rng(0).standard_normal((3, 4))
    loss, grad = xc.loss_and_grad(make(xp, a), make(xp, np.array([0, 1, 2])), weight=make(xp, np.array(
        [np.inf, 1.0, 1.0, 1.0])))
    assert np.isnan(to_numpy(loss))
    assert np.isnan(to_numpy(grad)).all()


# --- 7. ignore_index outside int64 ------------------------------------------------

@pytest.mark.parametrize("ignore_index", [2**63, 2**70, -(2**63) - 1])
def test_ignore_index_outside_int64_is_value_error_naming_it(xp, ignore_index):
    with pytest.raises(ValueError, match=rf"ignore_index.*{ignore_index}"):
        xc.cross_entropy(make(xp, A3), make(xp, np.array([1, 0])), ignore_index=ignore_index)


@pytest.mark.parametrize("ignore_index", [2**63 - 1, -(2**63)])
def test_ignore_index_at_the_ends_of_int64_works(xp, ignore_index):
    y = np.array([1, 0])
    loss = xc.cross_entropy(make(xp, A3), make(xp, y), ignore_index=ignore_index, reduction="none")
    np.testing.assert_allclose(to_numpy(loss), ref.cross_entropy(A3, y, reduction="none"), rtol=1e-12)


# --- 8. logsumexp (and softmax) of no classes --------------------------------------

@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("shape, axis", [((3, 0), -1), ((0, 2, 4), 0), ((2, 0, 5), 1)])
def test_logsumexp_of_zero_classes_is_minus_inf(xp, shape, axis, keepdims):
    out = to_numpy(xc.logsumexp(make(xp, np.zeros(shape)), axis=axis, keepdims=keepdims))
    expected = np.full(np.delete(shape, axis), -np.inf)
    if keepdims:
        expected = np.expand_dims(expected, axis)
    assert out.shape == expected.shape
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("fn", [xc.softmax, xc.log_softmax])
def test_softmax_of_zero_classes_is_empty(xp, fn):
    out = to_numpy(fn(make(xp, np.zeros((3, 0)))))
    assert out.shape == (3, 0)


# --- 9. half-precision losses are float32 --------------------------------------------

@pytest.mark.parametrize("dtype_name", ["float16", "bfloat16"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_half_precision_logits_give_float32_losses_and_gradients_of_their_dtype(xp, dtype_name, reduction):
    if backend_name(xp) in ("numpy", "dask"):
        pytest.skip("the CPU core takes float32 and float64 logits (api.md, Arguments)")
    dtype = getattr(xp, dtype_name, None)
    if dtype is None:
        pytest.skip(f"no {dtype_name} in this library")
    a = np.random.default_rng(0).standard_normal((6, 5)) * 4 + 30  # a loss of ~36 needs float32's steps
    y = np.array([0, 1, 2, 3, 4, 0])
    xpc = array_api_compat.array_namespace(make(xp, a))
    logits = xpc.astype(make(xp, a), dtype)
    loss, grad = xc.loss_and_grad(logits, make(xp, y), reduction=reduction)
    assert loss.dtype == xpc.float32
    assert grad.dtype == dtype
    assert xc.cross_entropy(logits, make(xp, y), reduction=reduction).dtype == xpc.float32
    a_half = to_numpy(xpc.astype(logits, xpc.float64))
    np.testing.assert_allclose(to_numpy(loss), ref.cross_entropy(a_half, y, reduction=reduction), rtol=1e-5)


# --- 10. clear messages -------------------------------------------------------------

def test_dask_arrays_of_unknown_chunk_sizes_are_value_error_that_says_what_to_do():
    da = pytest.importorskip("dask.array")
    a = da.from_array(np.vstack([A3, A3]), chunks=(2, 3))
    selected = a[a[:, 0] > 0]  # unknown number of rows
    y = da.from_array(np.array([1, 0]), chunks=1)
    with pytest.raises(ValueError, match=r"logits.*unknown|logits must have known.*compute_chunk_sizes"):
        xc.cross_entropy(selected, y)
    with pytest.raises(ValueError, match=r"\bx\b must have known.*compute_chunk_sizes"):
        xc.softmax(selected)
    with pytest.raises(ValueError, match=r"target must have known.*compute_chunk_sizes"):
        xc.cross_entropy(a[:2], y[y >= 0])


@pytest.mark.parametrize("value", [2**70, -(2**70)])
def test_python_int_target_outside_int64_is_value_error_with_its_value(value):
    with pytest.raises(ValueError, match=rf"target holds the class index {value}\b"):
        xc.cross_entropy(A3[0], value)


def test_numpy_bool_is_accepted_for_inplace():
    logits = A3.copy()
    loss, grad = xc.loss_and_grad(logits, np.array([1, 0]), inplace=np.True_)
    assert grad is logits
    loss, grad = xc.loss_and_grad(A3, np.array([1, 0]), inplace=np.False_)
    assert grad is not A3


@pytest.mark.parametrize("value", ["no", 1, None, np.array([True])])
def test_keepdims_and_inplace_that_are_not_bools_are_type_errors(value):
    with pytest.raises(TypeError, match="keepdims must be True or False"):
        xc.logsumexp(A3, keepdims=value)
    with pytest.raises(TypeError, match="inplace must be True or False"):
        xc.loss_and_grad(A3.copy(), np.array([1, 0]), inplace=value)
