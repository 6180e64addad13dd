"""The CuPy backend's kernels against a float64 NumPy reference written here.

Skipped, with the reason, unless CuPy imports and a GPU is usable. Shapes are
chosen to reach every kernel shape the launcher plans: rows of a few threads,
a warp, a block held in registers, and rows streamed twice.
"""

import math

import numpy as np
import pytest

import xentcy as xc

cupy = pytest.importorskip("cupy", reason="CuPy is not installed")
try:
    if cupy.cuda.runtime.getDeviceCount() < 1:
        pytest.skip("CuPy sees no GPU", allow_module_level=True)
    cupy.asarray([1.0]).sum().get()
except Exception as exc:  # CUDA runtime errors have no common base
    pytest.skip(f"CuPy imports but no GPU is usable: {exc}", allow_module_level=True)

from xentcy import _checks, _cuda  # noqa: E402

# (N, C): a few threads, a warp, a block of registers (fp32 and half), streamed
SHAPES = [(7, 1), (33, 10), (64, 1000), (5, 3000), (3, 16384), (2, 40000)]


def reference(a, target, *, weight=None, eps=0.0, ignore_index=-100, reduction="mean"):
    """Loss and gradient in float64 NumPy, class axis last: torch's definitions."""
    a = a.astype(np.float64)
    n, c = a.shape
    w = np.ones(c) if weight is None else np.asarray(weight, np.float64)
    if target.ndim == a.ndim - 1:
        kept = target != ignore_index
        q = np.zeros_like(a)
        q[np.arange(n)[kept], target[kept]] = 1.0
        q = (1.0 - eps) * q + eps / c
        q[~kept] = 0.0
        denom = float(np.sum(w[np.where(kept, target, 0)] * kept))
    else:
        q = (1.0 - eps) * target.astype(np.float64) + eps / c
        denom = float(n)
    wq = w * q
    m = a.max(axis=1, keepdims=True)
    log_p = (a - m) - np.log(np.exp(a - m).sum(axis=1, keepdims=True))
    losses = -np.sum(np.where(wq != 0, wq * log_p, 0.0), axis=1)
    grad = np.exp(log_p) * wq.sum(axis=1, keepdims=True) - wq
    if reduction == "mean":
        scale = 0.0 if denom == 0 else 1.0 / denom
        return losses.sum() / denom, grad * scale
    if reduction == "sum":
        return losses.sum(), grad
    return losses, grad


def random_case(rng, n, c, dtype, *, probabilities=False, ignore_index=-100):
    a = (rng.standard_normal((n, c)) * 3).astype(dtype)
    if probabilities:
        t = rng.random((n, c))
        return a, (t / t.sum(axis=1, keepdims=True)).astype(dtype)
    y = rng.integers(0, c, n)
    y[rng.random(n) < 0.2] = ignore_index
    return a, y


def assert_close(got, want, rtol, atol_frac=None):
    got = cupy.asnumpy(got).astype(np.float64)
    want = np.asarray(want, np.float64)
    if atol_frac is None:
        np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * max(1e-30, float(np.max(np.abs(want)))))
    else:
        np.testing.assert_allclose(got, want, rtol=0, atol=atol_frac * float(np.max(np.abs(want))))


def test_worked_example():
    A = cupy.asarray([[2.0, 1.0, 0.1], [0.1, 2.0, 1.9]])
    Y = cupy.asarray([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    loss, grad = xc.loss_and_grad(A, Y)
    assert isinstance(loss, cupy.ndarray) and isinstance(grad, cupy.ndarray)
    assert abs(float(loss) - 2.019) < 1e-3
    np.testing.assert_allclose(
        cupy.asnumpy(grad), [[0.330, -0.379, 0.049], [-0.464, 0.243, 0.220]], atol=1e-3
    )
    np.testing.assert_allclose(
        cupy.asnumpy(xc.cross_entropy(A, cupy.asarray([1, 0]), reduction="none")), [1.417, 2.620], atol=1e-3
    )


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("probabilities", [False, True])
def test_loss_and_grad_match_float64_reference(shape, dtype, probabilities):
    rng = np.random.default_rng(sum(shape))
    a, t = random_case(rng, *shape, dtype, probabilities=probabilities)
    weight = rng.random(shape[1]) + 0.5
    for kwargs in ({}, {"label_smoothing": 0.1}, {"weight": weight, "label_smoothing": 0.2}):
        for reduction in ("mean", "sum", "none"):
            want_loss, want_grad = reference(
                a, t, weight=kwargs.get("weight"), eps=kwargs.get("label_smoothing", 0.0), reduction=reduction
            )
            loss, grad = xc.loss_and_grad(cupy.asarray(a), cupy.asarray(t), reduction=reduction, **kwargs)
            rtol = 1e-5 if dtype == np.float32 else 1e-11
            assert_close(loss, want_loss, rtol)
            assert_close(grad, want_grad, rtol)
            assert_close(
                xc.cross_entropy(cupy.asarray(a), cupy.asarray(t), reduction=reduction, **kwargs),
                want_loss,
                rtol,
            )


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype_name", ["float16", "bfloat16"])
def test_half_types_within_tolerance(shape, dtype_name):
    if dtype_name == "bfloat16":
        ml_dtypes = pytest.importorskip("ml_dtypes", reason="bfloat16 needs ml_dtypes")
        dtype = np.dtype(ml_dtypes.bfloat16)
    else:
        dtype = np.dtype(np.float16)
    if dtype not in _cuda.DTYPES:
        pytest.skip(f"{dtype_name} is not supported by this CuPy")
    rng = np.random.default_rng(shape[0])
    a32, y = random_case(rng, *shape, np.float32)
    a = a32.astype(dtype)
    a_gpu = cupy.asarray(a)
    want_losses, want_grad = reference(a.astype(np.float64), y, reduction="none")
    # the backend directly: the kernels, whatever the checks above them accept
    call = _checks.CrossEntropyCall(
        xp=cupy, logits=a_gpu, target=cupy.asarray(y), class_indices=True, axis=1, num_classes=shape[1],
        batch_shape=(shape[0],), weight=None, ignore_index=-100, label_smoothing=0.0, reduction="none",
    )  # fmt: skip
    losses, grad = _cuda.cross_entropy_rows(call, want_grad=True, out=None, grad_scale=1.0)
    assert grad.dtype == dtype
    kept = y != -100
    got = cupy.asnumpy(losses)
    assert np.all(got[~kept] == 0)
    assert np.all(np.abs(got[kept] - want_losses[kept]) <= 1e-2 * np.abs(want_losses[kept]) + 1e-6)
    assert_close(grad.astype(cupy.float32), want_grad, None, atol_frac=1e-2)
    # and through the public API
    loss, grad = xc.loss_and_grad(a_gpu, cupy.asarray(y), reduction="sum")
    assert abs(float(loss.astype(cupy.float64)) - want_losses.sum()) <= 1e-2 * abs(want_losses.sum())


@pytest.mark.parametrize("shape", SHAPES)
def test_softmax_log_softmax_logsumexp(shape):
    rng = np.random.default_rng(1)
    a = rng.standard_normal(shape) * 4
    a[0, 0] = -np.inf
    m = a.max(axis=1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(a - m).sum(axis=1))
    for dtype, rtol in ((np.float32, 1e-5), (np.float64, 1e-12)):
        x = cupy.asarray(a.astype(dtype))
        assert_close(xc.softmax(x), np.exp(a - lse[:, None]), rtol)
        got = cupy.asnumpy(xc.log_softmax(x)).astype(np.float64)
        want = a - lse[:, None]
        finite = np.isfinite(want)
        np.testing.assert_allclose(
            got[finite], want[finite], rtol=rtol, atol=rtol * np.abs(want[finite]).max()
        )
        assert np.all(got[~finite] == -np.inf)
        assert_close(xc.logsumexp(x), lse, rtol)
        assert xc.logsumexp(x, keepdims=True).shape == (shape[0], 1)


def test_out_and_inplace_write_the_gradient_where_asked():
    rng = np.random.default_rng(2)
    a, y = random_case(rng, 50, 1000, np.float32)
    _, want = reference(a, y)
    out = cupy.full(a.shape, cupy.nan, cupy.float32)
    _, grad = xc.loss_and_grad(cupy.asarray(a), cupy.asarray(y), out=out)
    assert grad is out
    assert_close(out, want, 1e-5)
    for c in (1000, 40000):  # registers and streamed
        a, y = random_case(rng, 4, c, np.float32)
        _, want = reference(a, y)
        logits = cupy.asarray(a)
        loss, grad = xc.loss_and_grad(logits, cupy.asarray(y), inplace=True)
        assert grad is logits
        assert_close(logits, want, 1e-5)


def test_class_axis_not_last_and_non_contiguous_inputs():
    rng = np.random.default_rng(3)
    a = rng.standard_normal((4, 7, 5))  # (N, C, d): axis=1
    y = rng.integers(0, 7, (4, 5))
    moved = np.moveaxis(a, 1, -1).reshape(-1, 7)
    want_loss, want_grad = reference(moved, y.reshape(-1), reduction="none")
    loss, grad = xc.loss_and_grad(cupy.asarray(a), cupy.asarray(y), axis=1, reduction="none")
    assert_close(loss, want_loss.reshape(4, 5), 1e-12)
    assert_close(grad, np.moveaxis(want_grad.reshape(4, 5, 7), -1, 1), 1e-12)
    out = cupy.zeros((4, 7, 5))
    xc.loss_and_grad(cupy.asarray(a), cupy.asarray(y), axis=1, reduction="none", out=out)
    assert_close(out, np.moveaxis(want_grad.reshape(4, 5, 7), -1, 1), 1e-12)
    big = cupy.asarray(rng.standard_normal((6, 200)))
    strided = big[::2, ::3]  # neither rows nor classes contiguous
    t = cupy.asarray(rng.integers(0, strided.shape[1], 3))
    want_loss, want_grad = reference(cupy.asnumpy(strided), cupy.asnumpy(t))
    loss, grad = xc.loss_and_grad(strided, t)
    assert_close(loss, want_loss, 1e-12)
    assert_close(grad, want_grad, 1e-12)
    unaligned = cupy.asarray(rng.standard_normal(1 + 64 * 100).astype(np.float32))[1:].reshape(64, 100)
    assert_close(xc.softmax(unaligned), np.exp(cupy.asnumpy(xc.log_softmax(unaligned))), 1e-5)


def test_more_than_2_to_the_31_elements():
    free, _ = cupy.cuda.runtime.memGetInfo()
    n, c = 2**15 + 3, 2**16  # N * C > 2^31 elements, fp16: 4 GiB + 4 GiB
    if free < 3 * n * c * 2:
        pytest.skip("not enough GPU memory for N * C > 2^31")
    a = cupy.zeros((n, c), cupy.float16)
    a[-1, 5] = 4.0
    y = cupy.full(n, -100, cupy.int64)
    y[-1] = 5
    loss, grad = xc.loss_and_grad(a, y, reduction="sum")
    e4 = math.exp(4.0)
    want = -(4.0 - math.log(e4 + c - 1))
    assert abs(float(loss.astype(cupy.float64)) - want) <= 1e-2 * abs(want)
    assert float(grad[-1, 5]) == pytest.approx(e4 / (e4 + c - 1) - 1, rel=1e-2)
    assert float(cupy.abs(grad[:-1]).max()) == 0.0
    del a, grad


def test_bad_index_raises_and_the_next_call_works():
    a = cupy.asarray(np.random.default_rng(4).standard_normal((8, 10)))
    with pytest.raises(ValueError, match="class index 10"):
        xc.cross_entropy(a, cupy.asarray([0, 1, 2, 3, 4, 5, 6, 10]))
    y = cupy.asarray([0, 1, 2, 3, 4, 5, 6, 7])
    want, _ = reference(cupy.asnumpy(a), cupy.asnumpy(y))
    assert_close(xc.cross_entropy(a, y), want, 1e-12)


def test_the_kernel_never_reads_through_a_bad_index():
    # the checks would raise first; the backend alone must still not read out of bounds
    a = cupy.asarray(np.random.default_rng(5).standard_normal((3, 10)).astype(np.float32))
    y = cupy.asarray([1, 10**9, -(10**9)], cupy.int64)
    call = _checks.CrossEntropyCall(
        xp=cupy, logits=a, target=y, class_indices=True, axis=1, num_classes=10, batch_shape=(3,),
        weight=None, ignore_index=-100, label_smoothing=0.0, reduction="none",
    )  # fmt: skip
    losses, grad = _cuda.cross_entropy_rows(call, want_grad=True, out=None, grad_scale=1.0)
    got = cupy.asnumpy(losses)
    assert np.isfinite(got[0]) and np.isnan(got[1:]).all()
    cupy.cuda.Device().synchronize()  # an illegal access would surface here
    assert float(xc.cross_entropy(a, cupy.asarray([1, 2, 3]))) > 0


def test_ignored_rows_and_zero_denominator_give_zero_gradient():
    a = cupy.asarray(np.random.default_rng(6).standard_normal((4, 5)))
    loss, grad = xc.loss_and_grad(a, cupy.asarray([-100, -100, -100, -100]))
    assert math.isnan(float(loss))
    assert float(cupy.abs(grad).max()) == 0.0


def test_masked_logits_and_nan():
    a = np.array([[0.0, -np.inf, 1.0], [0.0, np.nan, 1.0]])
    losses = cupy.asnumpy(xc.cross_entropy(cupy.asarray(a), cupy.asarray([0, 0]), reduction="none"))
    assert np.isfinite(losses[0]) and np.isnan(losses[1])
    _, grad = xc.loss_and_grad(cupy.asarray(a[:1]), cupy.asarray([2]))
    assert float(grad[0, 1]) == 0.0


def test_two_streams_give_the_same_results():
    rng = np.random.default_rng(7)
    a, y = random_case(rng, 256, 3000, np.float32)
    results = []
    for stream in (cupy.cuda.Stream(non_blocking=True), cupy.cuda.Stream(non_blocking=True)):
        with stream:
            loss, grad = xc.loss_and_grad(cupy.asarray(a), cupy.asarray(y))
            results.append((loss, grad))
        stream.synchronize()
    (l0, g0), (l1, g1) = results
    assert float(l0) == float(l1)  # deterministic: bit for bit
    assert bool(cupy.all(g0 == g1))
    _, want = reference(a, y)
    assert_close(g0, want, 1e-5)
