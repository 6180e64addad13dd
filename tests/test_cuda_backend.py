"""The CUDA backend's kernels against a float64 NumPy reference written here.

Each test runs on a GPU through CuPy (skipped, with the reason, unless CuPy
imports and a GPU is usable) and on the CPU through the same kernels
compiled for the host (``cuda_host``: tests/cuda_host). Shapes are chosen to
reach every kernel shape the launcher plans: rows of a few threads, a warp,
a block held in registers, and rows streamed twice.
"""

import math

import numpy as np
import pytest
from backends import to_numpy

import xentcy as xc
from xentcy import _checks, _cuda


class Device:
    """The arrays and the CUDA backend of one run: CuPy on a GPU, or NumPy on the host kernels."""

    def __init__(self, name, xp, backend):
        self.name, self.xp, self.backend = name, xp, backend

    def asarray(self, a, dtype=None):
        return self.xp.asarray(a, dtype)

    def synchronize(self):
        if self.name == "cupy":
            self.xp.cuda.Device().synchronize()  # an illegal access would surface here


@pytest.fixture(params=["cupy", "cuda_host"])
def dev(request):
    if request.param == "cuda_host":
        from conftest import cuda_host_backend

        try:
            import cuda_host

            cuda_host.library()
        except ImportError as exc:
            pytest.skip(f"backend cuda_host unavailable: {exc}")
        with cuda_host_backend() as backend:
            yield Device("cuda_host", np, backend)
        return
    cupy = pytest.importorskip("cupy", reason="CuPy is not installed")
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            pytest.skip("CuPy sees no GPU")
        cupy.asarray([1.0]).sum().get()
    except Exception as exc:  # CUDA runtime errors have no common base
        pytest.skip(f"CuPy imports but no GPU is usable: {exc}")
    yield Device("cupy", cupy, _cuda.cupy_backend())


def gpu_only(dev):
    if dev.name != "cupy":
        pytest.skip("needs a GPU: CuPy's memory and streams")


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
    got = to_numpy(got).astype(np.float64)
    want = np.asarray(want, np.float64)
    if atol_frac is None:
        np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * max(1e-30, float(np.max(np.abs(want)))))
    else:
        np.testing.assert_allclose(got, want, rtol=0, atol=atol_frac * float(np.max(np.abs(want))))


def test_worked_example(dev):
    A = dev.asarray([[2.0, 1.0, 0.1], [0.1, 2.0, 1.9]])
    Y = dev.asarray([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    loss, grad = xc.loss_and_grad(A, Y)
    assert isinstance(loss, dev.xp.ndarray) and isinstance(grad, dev.xp.ndarray)
    assert abs(float(loss) - 2.019) < 1e-3
    np.testing.assert_allclose(
        to_numpy(grad), [[0.330, -0.379, 0.049], [-0.464, 0.243, 0.220]], atol=1e-3
    )
    np.testing.assert_allclose(
        to_numpy(xc.cross_entropy(A, dev.asarray([1, 0]), reduction="none")), [1.417, 2.620], atol=1e-3
    )


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("probabilities", [False, True])
def test_loss_and_grad_match_float64_reference(dev, shape, dtype, probabilities):
    rng = np.random.default_rng(sum(shape))
    a, t = random_case(rng, *shape, dtype, probabilities=probabilities)
    weight = rng.random(shape[1]) + 0.5
    for kwargs in ({}, {"label_smoothing": 0.1}, {"weight": weight, "label_smoothing": 0.2}):
        for reduction in ("mean", "sum", "none"):
            want_loss, want_grad = reference(
                a, t, weight=kwargs.get("weight"), eps=kwargs.get("label_smoothing", 0.0), reduction=reduction
            )
            loss, grad = xc.loss_and_grad(dev.asarray(a), dev.asarray(t), reduction=reduction, **kwargs)
            rtol = 1e-5 if dtype == np.float32 else 1e-11
            assert_close(loss, want_loss, rtol)
            assert_close(grad, want_grad, rtol)
            assert_close(
                xc.cross_entropy(dev.asarray(a), dev.asarray(t), reduction=reduction, **kwargs),
                want_loss,
                rtol,
            )


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype_name", ["float16", "bfloat16"])
def test_half_types_within_tolerance(dev, shape, dtype_name):
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
    a_gpu = dev.asarray(a)
    want_losses, want_grad = reference(a.astype(np.float64), y, reduction="none")
    # the backend directly: the kernels, whatever the checks above them accept
    call = _checks.CrossEntropyCall(
        xp=dev.xp, logits=a_gpu, target=dev.asarray(y), class_indices=True, axis=1, num_classes=shape[1],
        batch_shape=(shape[0],), weight=None, ignore_index=-100, label_smoothing=0.0, reduction="none",
    )  # fmt: skip
    losses, grad = dev.backend.cross_entropy_rows(call, want_grad=True, out=None, grad_scale=1.0)
    assert grad.dtype == dtype
    kept = y != -100
    got = to_numpy(losses)
    assert np.all(got[~kept] == 0)
    assert np.all(np.abs(got[kept] - want_losses[kept]) <= 1e-2 * np.abs(want_losses[kept]) + 1e-6)
    assert_close(grad.astype(dev.xp.float32), want_grad, None, atol_frac=1e-2)
    # and through the public API
    loss, grad = xc.loss_and_grad(a_gpu, dev.asarray(y), reduction="sum")
    assert abs(float(loss.astype(dev.xp.float64)) - want_losses.sum()) <= 1e-2 * abs(want_losses.sum())


@pytest.mark.parametrize("shape", SHAPES)
def test_softmax_log_softmax_logsumexp(dev, shape):
    rng = np.random.default_rng(1)
    a = rng.standard_normal(shape) * 4
    a[0, 0] = -np.inf
    m = a.max(axis=1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)  # a row of only -inf: lse = -inf (api.md)
    with np.errstate(divide="ignore"):
        lse = m[:, 0] + np.log(np.exp(a - m).sum(axis=1))
    for dtype, rtol in ((np.float32, 1e-5), (np.float64, 1e-12)):
        x = dev.asarray(a.astype(dtype))
        assert_close(xc.softmax(x), np.exp(a - lse[:, None]), rtol)
        got = to_numpy(xc.log_softmax(x)).astype(np.float64)
        want = a - lse[:, None]
        finite = np.isfinite(want)
        np.testing.assert_allclose(
            got[finite], want[finite], rtol=rtol, atol=rtol * np.abs(want[finite]).max()
        )
        # -inf where the row has a finite max; NaN for a row of only -inf (as the CPU core and torch)
        np.testing.assert_array_equal(got[~finite], want[~finite])
        assert_close(xc.logsumexp(x), lse, rtol)
        assert xc.logsumexp(x, keepdims=True).shape == (shape[0], 1)


def test_out_and_inplace_write_the_gradient_where_asked(dev):
    rng = np.random.default_rng(2)
    a, y = random_case(rng, 50, 1000, np.float32)
    _, want = reference(a, y)
    out = dev.xp.full(a.shape, dev.xp.nan, dev.xp.float32)
    _, grad = xc.loss_and_grad(dev.asarray(a), dev.asarray(y), out=out)
    assert grad is out
    assert_close(out, want, 1e-5)
    for c in (1000, 40000):  # registers and streamed
        a, y = random_case(rng, 4, c, np.float32)
        _, want = reference(a, y)
        logits = dev.asarray(a)
        loss, grad = xc.loss_and_grad(logits, dev.asarray(y), inplace=True)
        assert grad is logits
        assert_close(logits, want, 1e-5)


def test_class_axis_not_last_and_non_contiguous_inputs(dev):
    rng = np.random.default_rng(3)
    a = rng.standard_normal((4, 7, 5))  # (N, C, d): axis=1
    y = rng.integers(0, 7, (4, 5))
    moved = np.moveaxis(a, 1, -1).reshape(-1, 7)
    want_loss, want_grad = reference(moved, y.reshape(-1), reduction="none")
    loss, grad = xc.loss_and_grad(dev.asarray(a), dev.asarray(y), axis=1, reduction="none")
    assert_close(loss, want_loss.reshape(4, 5), 1e-12)
    assert_close(grad, np.moveaxis(want_grad.reshape(4, 5, 7), -1, 1), 1e-12)
    out = dev.xp.zeros((4, 7, 5))
    xc.loss_and_grad(dev.asarray(a), dev.asarray(y), axis=1, reduction="none", out=out)
    assert_close(out, np.moveaxis(want_grad.reshape(4, 5, 7), -1, 1), 1e-12)
    big = dev.asarray(rng.standard_normal((6, 200)))
    strided = big[::2, ::3]  # neither rows nor classes contiguous
    t = dev.asarray(rng.integers(0, strided.shape[1], 3))
    want_loss, want_grad = reference(to_numpy(strided), to_numpy(t))
    loss, grad = xc.loss_and_grad(strided, t)
    assert_close(loss, want_loss, 1e-12)
    assert_close(grad, want_grad, 1e-12)
    unaligned = dev.asarray(rng.standard_normal(1 + 64 * 100).astype(np.float32))[1:].reshape(64, 100)
    assert_close(xc.softmax(unaligned), np.exp(to_numpy(xc.log_softmax(unaligned))), 1e-5)


def test_more_than_2_to_the_31_elements(dev):
    gpu_only(dev)
    free, _ = dev.xp.cuda.runtime.memGetInfo()
    n, c = 2**15 + 3, 2**16  # N * C > 2^31 elements, fp16: 4 GiB + 4 GiB
    if free < 3 * n * c * 2:
        pytest.skip("not enough GPU memory for N * C > 2^31")
    a = dev.xp.zeros((n, c), dev.xp.float16)
    a[-1, 5] = 4.0
    y = dev.xp.full(n, -100, dev.xp.int64)
    y[-1] = 5
    loss, grad = xc.loss_and_grad(a, y, reduction="sum")
    e4 = math.exp(4.0)
    want = -(4.0 - math.log(e4 + c - 1))
    assert abs(float(loss.astype(dev.xp.float64)) - want) <= 1e-2 * abs(want)
    assert float(grad[-1, 5]) == pytest.approx(e4 / (e4 + c - 1) - 1, rel=1e-2)
    assert float(dev.xp.abs(grad[:-1]).max()) == 0.0
    del a, grad


def test_bad_index_raises_and_the_next_call_works(dev):
    a = dev.asarray(np.random.default_rng(4).standard_normal((8, 10)))
    with pytest.raises(ValueError, match="class index 10"):
        xc.cross_entropy(a, dev.asarray([0, 1, 2, 3, 4, 5, 6, 10]))
    y = dev.asarray([0, 1, 2, 3, 4, 5, 6, 7])
    want, _ = reference(to_numpy(a), to_numpy(y))
    assert_close(xc.cross_entropy(a, y), want, 1e-12)


def test_the_kernel_never_reads_through_a_bad_index(dev):
    # the checks would raise first; the backend alone must still not read out of bounds
    a = dev.asarray(np.random.default_rng(5).standard_normal((3, 10)).astype(np.float32))
    y = dev.asarray([1, 10**9, -(10**9)], dev.xp.int64)
    call = _checks.CrossEntropyCall(
        xp=dev.xp, logits=a, target=y, class_indices=True, axis=1, num_classes=10, batch_shape=(3,),
        weight=None, ignore_index=-100, label_smoothing=0.0, reduction="none",
    )  # fmt: skip
    losses, grad = dev.backend.cross_entropy_rows(call, want_grad=True, out=None, grad_scale=1.0)
    got = to_numpy(losses)
    assert np.isfinite(got[0]) and np.isnan(got[1:]).all()
    dev.synchronize()
    assert float(xc.cross_entropy(a, dev.asarray([1, 2, 3]))) > 0


def test_ignored_rows_and_zero_denominator_give_zero_gradient(dev):
    a = dev.asarray(np.random.default_rng(6).standard_normal((4, 5)))
    loss, grad = xc.loss_and_grad(a, dev.asarray([-100, -100, -100, -100]))
    assert math.isnan(float(loss))
    assert float(dev.xp.abs(grad).max()) == 0.0


def test_masked_logits_and_nan(dev):
    a = np.array([[0.0, -np.inf, 1.0], [0.0, np.nan, 1.0]])
    losses = to_numpy(xc.cross_entropy(dev.asarray(a), dev.asarray([0, 0]), reduction="none"))
    assert np.isfinite(losses[0]) and np.isnan(losses[1])
    _, grad = xc.loss_and_grad(dev.asarray(a[:1]), dev.asarray([2]))
    assert float(grad[0, 1]) == 0.0


def test_two_streams_give_the_same_results(dev):
    gpu_only(dev)
    rng = np.random.default_rng(7)
    a, y = random_case(rng, 256, 3000, np.float32)
    results = []
    for stream in (dev.xp.cuda.Stream(non_blocking=True), dev.xp.cuda.Stream(non_blocking=True)):
        with stream:
            loss, grad = xc.loss_and_grad(dev.asarray(a), dev.asarray(y))
            results.append((loss, grad))
        stream.synchronize()
    (l0, g0), (l1, g1) = results
    assert float(l0) == float(l1)  # deterministic: bit for bit
    assert bool(dev.xp.all(g0 == g1))
    _, want = reference(a, y)
    assert_close(g0, want, 1e-5)


# --- every branch of the launch plan, every instantiation -------------------------------------

class Recording:
    """A launcher that notes what it launches, and launches it."""

    def __init__(self, inner):
        self.inner, self.names = inner, set()

    def device(self, x):
        return self.inner.device(x)

    def address(self, x):
        return self.inner.address(x)

    def launch(self, dtype_name, name, grid, block, args):
        self.names.add(name)
        self.inner.launch(dtype_name, name, grid, block, args)


def _dtype(name):
    if name == "bfloat16":
        return np.dtype(pytest.importorskip("ml_dtypes", reason="bfloat16 needs ml_dtypes").bfloat16)
    return np.dtype(name)


def plan_cases(kernel, dtype_name):
    """(N, C) that reach each instantiation the plan picks, and each group size from 1 to 1024:
    the smallest C of each, N one row past a full block (a partly empty last block), plus the
    streamed shapes of the issue and one C that is not a multiple of the vector width."""
    seen = {}
    for c in [*range(1, 70), *range(70, 17000, 7)]:
        p = _cuda.plan(kernel, dtype_name, 1, c)
        seen.setdefault((p.name, p.group), c)
    cases = {(p_block // p_group + 1 if p_group <= 32 else 2, c)
             for (name, p_group), c in seen.items()
             for p_block in [_cuda.plan(kernel, dtype_name, 1, c).block]}
    if dtype_name == "float32":
        cases |= {(2, 20000), (1, 70000)}
    elif dtype_name in ("float16", "bfloat16"):
        cases.add((2, 32000))
    return sorted(cases | {(3, 1001)})


TOLERANCE = {"float64": 1e-11, "float32": 2e-5, "float16": 2e-3, "bfloat16": 1.6e-2}


@pytest.mark.parametrize("dtype_name", list(_cuda.C_TYPES))
def test_every_instantiation_runs_and_matches_the_reference(dev, dtype_name):
    dtype = _dtype(dtype_name)
    if dtype not in _cuda.DTYPES:
        pytest.skip(f"{dtype_name} is not supported here")
    launcher = Recording(dev.backend.launcher)
    backend = _cuda.CudaBackend(dev.xp, launcher)
    rng = np.random.default_rng(11)
    tol = TOLERANCE[dtype_name]
    for kernel in ("index", "prob", "softmax", "logsumexp"):
        for n, c in plan_cases(kernel, dtype_name):
            a = (rng.standard_normal((n, c)) * 3).astype(dtype)
            a64 = a.astype(np.float64)  # the reference sees the logits as rounded
            m = a64.max(axis=1, keepdims=True)
            lse = m[:, 0] + np.log(np.exp(a64 - m).sum(axis=1))
            x = dev.asarray(a)
            if kernel == "softmax":
                p = backend.softmax(dev.xp, x, 1, False).astype(np.float64)
                assert_close(p, np.exp(a64 - lse[:, None]), None, atol_frac=tol)
                assert_close(backend.softmax(dev.xp, x, 1, True).astype(np.float64), a64 - lse[:, None], tol)
                continue
            if kernel == "logsumexp":
                assert_close(backend.logsumexp(dev.xp, x, 1, False).astype(np.float64), lse, tol)
                continue
            if kernel == "index":
                t = rng.integers(0, c, n)
                t[rng.random(n) < 0.2] = -100
                t[0] = 0
            else:
                t = rng.random((n, c))
                t = (t / t.sum(axis=1, keepdims=True)).astype(dtype)
            call = _checks.check_cross_entropy(
                dev.xp, x, dev.asarray(t), axis=1, weight=None, ignore_index=-100, label_smoothing=0.1,
                reduction="sum", dtypes=_cuda.DTYPES,
            )  # fmt: skip
            losses, grad = backend.cross_entropy_rows(call, want_grad=True, out=None, grad_scale=1.0)
            want_losses, want_grad = reference(a64, t.astype(np.float64) if kernel == "prob" else t, eps=0.1,
                                               reduction="none")  # fmt: skip
            assert_close(losses, want_losses, tol)
            assert_close(grad.astype(np.float64), want_grad, None, atol_frac=tol)
    # the evaluation kernel (issue 13): loss, the target's rank and the softmax's entropy
    for n, c in plan_cases("eval", dtype_name):
        a = np.round(rng.standard_normal((n, c)) * 3).astype(dtype)  # rounded: ties
        a64 = a.astype(np.float64)
        y = rng.integers(0, c, n)
        y[0] = -100
        call = _checks.check_cross_entropy(
            dev.xp, dev.asarray(a), dev.asarray(y), axis=1, weight=None, ignore_index=-100,
            label_smoothing=0.0, reduction="sum", dtypes=_cuda.DTYPES,
        )  # fmt: skip
        losses, ranks, entropies = (to_numpy(v) for v in backend.evaluate_rows(call))
        m = a64.max(axis=1, keepdims=True)
        e = np.exp(a64 - m)
        s_ = e.sum(axis=1)
        p_ = e / s_[:, None]
        want_h = np.log(s_) + (e * (m - a64)).sum(axis=1) / s_
        for i in range(n):
            if y[i] == -100:
                assert (losses[i], ranks[i], entropies[i]) == (0.0, -1, 0.0)
                continue
            order = np.argsort(-a64[i], kind="stable")
            assert ranks[i] == int(np.nonzero(order == y[i])[0][0]), (dtype_name, n, c, i)
            assert_close(losses[i : i + 1], -np.log(p_[i, y[i] : y[i] + 1]), tol)
            assert_close(entropies[i : i + 1], want_h[i : i + 1], tol)
    planned = {_cuda.plan(k, dtype_name, n, c).name for k in ("index", "prob", "softmax", "logsumexp", "eval")
               for n, c in plan_cases(k, dtype_name)}  # fmt: skip
    # the cases reach every plain instantiation (those of the language-model options: test_cuda_options.py)
    assert planned == set(_cuda.name_expressions((dtype_name,), options=False))
    assert launcher.names == planned


@pytest.mark.parametrize("dtype_name", ["float32", "float64"])
def test_scale_by_pointer_equals_scale_by_value(dev, dtype_name):
    rng = np.random.default_rng(12)
    for c in (10, 1000, 20000):
        a, y = random_case(rng, 6, c, dtype_name)
        q = rng.random((6, c)).astype(dtype_name)
        for t in (y, q):
            call = _checks.check_cross_entropy(
                dev.xp, dev.asarray(a), dev.asarray(t), axis=1, weight=None, ignore_index=-100,
                label_smoothing=0.0, reduction="mean", dtypes=_cuda.DTYPES,
            )  # fmt: skip
            by_value = dev.backend.cross_entropy_rows(call, want_grad=True, out=None, grad_scale=0.25)
            by_pointer = dev.backend.cross_entropy_rows(call, want_grad=True, out=None,
                                                        grad_scale=dev.asarray(np.asarray(0.25)))  # fmt: skip
            zero = dev.backend.cross_entropy_rows(call, want_grad=True, out=None,
                                                  grad_scale=dev.asarray(np.asarray(0.0)))  # fmt: skip
            for got, want in zip(by_pointer, by_value, strict=True):
                np.testing.assert_array_equal(to_numpy(got), to_numpy(want))
            _, want_grad = reference(a, t, reduction="sum")
            assert_close(by_value[1], 0.25 * want_grad, 1e-5 if dtype_name == "float32" else 1e-12)
            assert not np.any(to_numpy(zero[1]))


def test_nonfinite_logits_in_every_kernel_shape(dev):
    for c in (3, 100, 1000, 3000, 20000):
        a = np.random.default_rng(c).standard_normal((5, c)).astype(np.float32)
        a[0, 1] = np.inf
        a[1, :] = -np.inf
        a[2, 2] = np.nan
        a[3, 0] = -np.inf  # a class masked out; row 3's target is 1
        y = np.array([0, 0, 0, 1, 2])
        losses = to_numpy(xc.cross_entropy(dev.asarray(a), dev.asarray(y), reduction="none"))
        assert np.isnan(losses[0]) or np.isinf(losses[0])  # +inf logit: inf or NaN (docs/math.md)
        assert np.isinf(losses[1]) or np.isnan(losses[1])
        assert np.isnan(losses[2])
        want, _ = reference(a[3:].astype(np.float64), y[3:], reduction="none")
        assert_close(losses[3:], want, 1e-5)
        _, grad = xc.loss_and_grad(dev.asarray(a[3:]), dev.asarray(y[3:]))
        assert float(to_numpy(grad)[0, 0]) == 0.0  # a masked class has no gradient
        assert np.isfinite(to_numpy(grad)).all()
