"""NumPy-only: memory layouts, out= and inplace=, threads and allocations.

The compiled core takes strided, Fortran-ordered, read-only and memory-mapped
inputs; writes only where asked (out=, inplace=True); gives bitwise the same
results for any number of OpenMP threads; and allocates no N x C array it
does not return.
"""

import tracemalloc

import numpy as np
import pytest
import reference as ref

import xentcy as xc

# NumPy arrays on the CPU core, and on the CUDA backend through its host-compiled kernels
pytestmark = pytest.mark.usefixtures("numpy_backend")

DTYPES = pytest.mark.parametrize("dtype", [np.float32, np.float64],
                                 ids=["float32", "float64"])


def rtol_for(dtype):
    return 1e-6 if dtype == np.float32 else 1e-13


def all_results(logits, target, weight, axis=-1):
    """Every public computation on one input, as a flat list of NumPy arrays."""
    kw = dict(axis=axis, weight=weight, label_smoothing=0.1)
    out = [xc.softmax(logits, axis=axis), xc.log_softmax(logits, axis=axis),
           xc.logsumexp(logits, axis=axis)]
    for reduction in ("mean", "sum", "none"):
        out.append(xc.cross_entropy(logits, target, reduction=reduction, **kw))
        out.append(xc.cross_entropy_grad(logits, target, reduction=reduction, **kw))
        out.extend(xc.loss_and_grad(logits, target, reduction=reduction, **kw))
    xent = xc.CrossEntropyLoss(**kw)
    out.append(xent.forward(logits, target))
    out.append(xent.backward())
    out.append(xent.softmax)
    return [np.asarray(x) for x in out]


def assert_same_results(actual, expected, dtype):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected, strict=True):
        assert a.shape == e.shape and a.dtype == e.dtype
        scale = np.abs(e).max() if e.size else 0.0
        np.testing.assert_allclose(a, e, rtol=rtol_for(dtype), atol=rtol_for(dtype) * scale)


rng = np.random.default_rng(0)
BIG = rng.standard_normal((16, 10))
Y_BIG = rng.integers(0, 10, 16)
Q_BIG = rng.random((16, 10))
W10 = rng.uniform(0.5, 2.0, 10)


def strided_cases():
    """(id, make logits from a base of the test's dtype, target, weight, axis)."""
    return [
        ("rows_step2", lambda b: b[::2], Y_BIG[::2], W10, -1),
        ("rows_reversed", lambda b: b[::-1], Y_BIG[::-1], W10, -1),
        ("columns_step2", lambda b: b[:, ::2], Y_BIG % 5, W10[::2], -1),
        ("rows_step3_columns_step2", lambda b: b[1::3, 1::2], Y_BIG[1::3] % 5, W10[:5], -1),
        ("columns_step2_probability", lambda b: b[:, ::2], Q_BIG[:, ::2], W10[::2], -1),
        ("fortran", np.asfortranarray, Y_BIG, W10, -1),
        ("fortran_probability", np.asfortranarray, np.asfortranarray(Q_BIG), W10, -1),
        ("transposed_axis0", lambda b: b.T, Y_BIG, W10, 0),
        ("transposed_axis0_probability", lambda b: b.T, Q_BIG.T, W10, 0),
        ("strided_target", lambda b: b[:8], Y_BIG[::2], W10, -1),
        ("strided_weight", lambda b: b[:, :5], Y_BIG % 5, W10[::2], -1),
    ]


@DTYPES
@pytest.mark.parametrize("view, target, weight, axis",
                         [pytest.param(*c[1:], id=c[0]) for c in strided_cases()])
def test_non_contiguous_inputs_match_contiguous_copies(view, target, weight, axis, dtype):
    logits = view(BIG.astype(dtype))
    expected = all_results(np.ascontiguousarray(logits), np.ascontiguousarray(target),
                           np.ascontiguousarray(weight), axis=axis)
    assert_same_results(all_results(logits, target, weight, axis=axis), expected, dtype)


@DTYPES
def test_3d_layout_with_class_axis_1_on_strided_input(dtype):
    big = rng.standard_normal((6, 4, 10)).astype(dtype)
    view = big[::2, :, ::3]  # (3, 4, 4)
    y = rng.integers(0, 4, (3, 4))
    expected = all_results(view.copy(), y, W10[:4], axis=1)
    assert_same_results(all_results(view, y, W10[:4], axis=1), expected, dtype)


def read_only(a):
    a = a.copy()
    a.setflags(write=False)
    return a


@DTYPES
@pytest.mark.parametrize("target", [Y_BIG, Q_BIG], ids=["index", "probability"])
def test_read_only_inputs_work(target, dtype):
    logits = BIG.astype(dtype)
    expected = all_results(logits.copy(), target.copy(), W10.copy())
    actual = all_results(read_only(logits), read_only(target), read_only(W10))
    assert_same_results(actual, expected, dtype)


@DTYPES
@pytest.mark.parametrize("target", [Y_BIG, Q_BIG], ids=["index", "probability"])
def test_read_only_memmap_inputs_work(tmp_path, target, dtype):
    def memmap(a, name):
        path = tmp_path / name
        a.tofile(path)
        return np.memmap(path, dtype=a.dtype, mode="r", shape=a.shape)

    logits = BIG.astype(dtype)
    expected = all_results(logits.copy(), target.copy(), W10.copy())
    actual = all_results(memmap(logits, "A.bin"), memmap(target, "Y.bin"),
                         memmap(W10, "w.bin"))
    assert_same_results(actual, expected, dtype)


# --- out= and inplace= ---------------------------------------------------------

def out_buffers(shape, dtype):
    N, C = shape
    return [
        ("c_contiguous", np.full(shape, np.nan, dtype=dtype)),
        ("fortran", np.asfortranarray(np.full(shape, np.nan, dtype=dtype))),
        ("column_step2", np.full((N, 2 * C), np.nan, dtype=dtype)[:, ::2]),
        ("rows_reversed", np.full(shape, np.nan, dtype=dtype)[::-1]),
    ]


@DTYPES
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("which", ["c_contiguous", "fortran", "column_step2", "rows_reversed"])
def test_out_buffer_receives_the_gradient(which, reduction, dtype):
    logits = BIG.astype(dtype)
    kw = dict(weight=W10, label_smoothing=0.1, reduction=reduction)
    out = dict(out_buffers(logits.shape, dtype))[which]
    loss, grad = xc.loss_and_grad(logits, Y_BIG, out=out, **kw)
    assert grad is out
    ref_loss, ref_grad = ref.cross_entropy_and_grad(logits, Y_BIG, **kw)
    rtol = rtol_for(dtype)
    np.testing.assert_allclose(loss, ref_loss, rtol=rtol)
    np.testing.assert_allclose(out, ref_grad, rtol=rtol, atol=rtol * np.abs(ref_grad).max())
    np.testing.assert_array_equal(logits, BIG.astype(dtype))


def test_out_buffer_view_leaves_the_rest_of_its_base_alone():
    base = np.full((16, 20), 7.0)
    out = base[:, ::2]
    xc.loss_and_grad(BIG, Y_BIG, out=out)
    np.testing.assert_array_equal(base[:, 1::2], 7.0)


def test_out_that_is_the_logits_themselves_acts_in_place():
    logits = BIG.copy()
    loss, grad = xc.loss_and_grad(logits, Y_BIG, out=logits)
    assert grad is logits
    ref_loss, ref_grad = ref.cross_entropy_and_grad(BIG, Y_BIG)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-13)
    np.testing.assert_allclose(logits, ref_grad, rtol=1e-13, atol=1e-17)


@DTYPES
@pytest.mark.parametrize("target", [Y_BIG, Q_BIG], ids=["index", "probability"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_inplace_writes_the_gradient_over_the_logits(reduction, target, dtype):
    logits = BIG.astype(dtype)
    original = logits.copy()
    kw = dict(weight=W10, label_smoothing=0.1, reduction=reduction)
    target_copy = target.copy()
    loss, grad = xc.loss_and_grad(logits, target, inplace=True, **kw)
    assert grad is logits
    ref_loss, ref_grad = ref.cross_entropy_and_grad(original, target, **kw)
    rtol = rtol_for(dtype)
    np.testing.assert_allclose(loss, ref_loss, rtol=rtol)
    np.testing.assert_allclose(logits, ref_grad, rtol=rtol, atol=rtol * np.abs(ref_grad).max())
    np.testing.assert_array_equal(target, target_copy)


@DTYPES
def test_inplace_with_class_axis_1_in_3d(dtype):
    logits = rng.standard_normal((3, 5, 4)).astype(dtype)
    original = logits.copy()
    y = np.array([[0, 4, 2, -100], [1, 1, 3, 0], [4, 2, 2, 2]])
    kw = dict(axis=1, weight=W10[:5], label_smoothing=0.2)
    loss, grad = xc.loss_and_grad(logits, y, inplace=True, **kw)
    assert grad is logits
    ref_loss, ref_grad = ref.cross_entropy_and_grad(original, y, **kw)
    rtol = rtol_for(dtype)
    np.testing.assert_allclose(loss, ref_loss, rtol=rtol)
    np.testing.assert_allclose(logits, ref_grad, rtol=rtol, atol=rtol * np.abs(ref_grad).max())


def test_inplace_on_a_strided_view_writes_only_the_view():
    base = BIG.copy()
    view = base[::2, ::2]
    expected = ref.cross_entropy_grad(BIG[::2, ::2], Y_BIG[::2] % 5)
    _, grad = xc.loss_and_grad(view, Y_BIG[::2] % 5, inplace=True)
    assert grad is view
    np.testing.assert_allclose(base[::2, ::2], expected, rtol=1e-13, atol=1e-17)
    untouched = np.ones(base.shape, dtype=bool)
    untouched[::2, ::2] = False
    np.testing.assert_array_equal(base[untouched], BIG[untouched])


@pytest.mark.parametrize("target", [Y_BIG, Q_BIG], ids=["index", "probability"])
def test_no_other_call_modifies_its_inputs(target):
    logits, tgt, weight = BIG.copy(), target.copy(), W10.copy()
    all_results(logits, tgt, weight)
    xc.loss_and_grad(logits, tgt, weight=weight, out=np.empty_like(logits))
    xc.logsumexp(logits, keepdims=True)
    np.testing.assert_array_equal(logits, BIG)
    np.testing.assert_array_equal(tgt, target)
    np.testing.assert_array_equal(weight, W10)


# --- threads ---------------------------------------------------------------------

@DTYPES
@pytest.mark.cpu_core_only  # OpenMP threads: the CPU core's
@pytest.mark.parametrize("shape", [(4099, 33), (3, 50_001)], ids=["tall", "wide"])
def test_results_are_bitwise_identical_for_any_thread_count(shape, dtype):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    r = np.random.default_rng(1)
    logits = (4 * r.standard_normal(shape)).astype(dtype)
    target = r.integers(0, shape[1], shape[0])
    target[::7] = -100
    weight = r.uniform(0.5, 2.0, shape[1])
    results = {}
    for threads in (1, 2, 3):
        with threadpoolctl.threadpool_limits(threads, user_api="openmp"):
            results[threads] = all_results(logits, target, weight)
    for threads in (2, 3):
        for one, many in zip(results[1], results[threads], strict=True):
            assert one.tobytes() == many.tobytes(), f"{threads} threads differ from 1"


# --- allocations -------------------------------------------------------------------

def peak_bytes(fn):
    fn()  # warm up: lazy imports, caches, thread pools
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


MEM_A = np.random.default_rng(2).standard_normal((2048, 1000)).astype(np.float32)
MEM_Y = np.random.default_rng(3).integers(0, 1000, 2048)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_allocates_no_n_by_c_array(reduction):
    peak = peak_bytes(lambda: xc.cross_entropy(MEM_A, MEM_Y, reduction=reduction,
                                               label_smoothing=0.1))
    assert peak < MEM_A.nbytes / 4


def test_loss_and_grad_with_out_allocates_no_n_by_c_array():
    out = np.empty_like(MEM_A)
    peak = peak_bytes(lambda: xc.loss_and_grad(MEM_A, MEM_Y, out=out))
    assert peak < MEM_A.nbytes / 4


def test_loss_and_grad_inplace_allocates_no_n_by_c_array():
    logits = MEM_A.copy()
    peak = peak_bytes(lambda: xc.loss_and_grad(logits, MEM_Y, inplace=True))
    assert peak < MEM_A.nbytes / 4


def test_loss_and_grad_allocates_only_the_gradient():
    peak = peak_bytes(lambda: xc.loss_and_grad(MEM_A, MEM_Y))
    assert peak < 1.5 * MEM_A.nbytes


def test_loss_object_forward_allocates_only_the_gradient():
    xent = xc.CrossEntropyLoss()
    peak = peak_bytes(lambda: xent.forward(MEM_A, MEM_Y))
    assert peak < 1.5 * MEM_A.nbytes
