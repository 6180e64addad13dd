"""The language-model options (z_loss, softcap, temperature) in the CUDA backend's kernels.

The *_options_* kernels of ``xentcy/_cuda/cross_entropy.cu`` against the float64
reference of ``tests/reference.py``, through the public API and through the backend
directly: on a GPU through CuPy and on the CPU through the same kernels compiled for
the host (``cuda_host``), as in test_cuda_backend.py, whose ``dev`` fixture runs each
test on both. Class counts reach the few-class groups (a row to a few threads), the
rows held in registers and the rows streamed twice; every option instantiation runs.
"""

import contextlib

import numpy as np
import pytest
import reference
import test_cuda_backend
from backends import to_numpy
from test_cuda_backend import TOLERANCE, Recording, _dtype, assert_close, plan_cases

import xentcy as xc
from xentcy import _checks, _cuda

# test_cuda_backend.py's fixture: each test on CuPy (a GPU) and on the host kernels (cuda_host)
dev = test_cuda_backend.dev

OPTIONS = {
    "z_loss": {"z_loss": 1e-2},
    "temperature": {"temperature": 0.7},
    "softcap": {"softcap": 3.0},
    "all": {"z_loss": 1e-3, "softcap": 5.0, "temperature": 1.7},
}
# few-class groups (C = 5: two threads a row; C = 100: a warp, a vector each), a row held
# in registers (C = 1000), a row streamed twice (C = 20000, float32 and float64)
CLASS_COUNTS = (5, 100, 1000, 20000)
RTOL = {"float32": 2e-5, "float64": 1e-11}


@contextlib.contextmanager
def recording(dev):
    """The names of the kernels the backend launches within the block."""
    inner = dev.backend.launcher
    dev.backend.launcher = Recording(inner)
    try:
        yield dev.backend.launcher.names
    finally:
        dev.backend.launcher = inner


def case(rng, n, c, dtype, probabilities, scale=3.0):
    a = (rng.standard_normal((n, c)) * scale).astype(dtype)
    if probabilities:
        t = rng.random((n, c))
        return a, (t / t.sum(axis=1, keepdims=True)).astype(dtype)
    y = rng.integers(0, c, n)
    y[rng.random(n) < 0.2] = -100
    y[0] = 0  # one counted row at least
    return a, y


def test_the_class_counts_reach_every_policy():
    for dtype_name in ("float32", "float64"):
        for kernel in _cuda.OPTION_KERNELS:
            plans = [_cuda.plan(kernel, dtype_name, 1, c) for c in CLASS_COUNTS]
            assert plans[0].group < 32 and "_cached<" in plans[0].name  # few-class groups
            assert any(p.group >= 32 and "_cached<" in p.name for p in plans)  # held in registers
            assert "_streamed<" in plans[-1].name  # streamed


@pytest.mark.parametrize("num_classes", CLASS_COUNTS)
@pytest.mark.parametrize("dtype_name", ["float32", "float64"])
@pytest.mark.parametrize("probabilities", [False, True], ids=["index", "prob"])
@pytest.mark.parametrize("option", list(OPTIONS))
def test_options_match_the_reference(dev, option, probabilities, dtype_name, num_classes):
    rng = np.random.default_rng(num_classes)
    n = 40 if num_classes < 1000 else 3
    a, t = case(rng, n, num_classes, dtype_name, probabilities)
    kwargs = dict(OPTIONS[option])
    if option == "all":  # with class weights, label smoothing and (class indices) ignored rows
        kwargs |= {"weight": rng.random(num_classes) + 0.5, "label_smoothing": 0.1}
    rtol = RTOL[dtype_name]
    for reduction in ("mean", "sum", "none"):
        want_loss, want_grad = reference.cross_entropy_and_grad(a, t, reduction=reduction, **kwargs)
        with recording(dev) as names:
            loss, grad = xc.loss_and_grad(dev.asarray(a), dev.asarray(t), reduction=reduction, **kwargs)
            loss_alone = xc.cross_entropy(dev.asarray(a), dev.asarray(t), reduction=reduction, **kwargs)
        assert names and all("_options_" in name for name in names), names
        assert_close(loss, want_loss, rtol)
        assert_close(loss_alone, want_loss, rtol)
        assert_close(grad, want_grad, rtol)
        if not probabilities:
            ignored = t == -100
            assert np.all(to_numpy(grad)[ignored] == 0.0)
            if reduction == "none":
                assert np.all(to_numpy(loss)[ignored] == 0.0)


@pytest.mark.parametrize("num_classes", [1000, 20000])
def test_the_gradient_written_over_the_logits(dev, num_classes):
    # with a soft-cap the cached kernels read the logits again for the slope, before the
    # gradient is written over them
    rng = np.random.default_rng(3)
    for probabilities in (False, True):
        a, t = case(rng, 4, num_classes, np.float32, probabilities)
        kwargs = {"z_loss": 1e-3, "softcap": 2.0, "temperature": 0.9}
        _, want = reference.cross_entropy_and_grad(a, t, **kwargs)
        logits = dev.asarray(a)
        _, grad = xc.loss_and_grad(logits, dev.asarray(t), inplace=True, **kwargs)
        assert grad is logits
        assert_close(logits, want, 2e-5)


@pytest.mark.parametrize("dtype_name", list(_cuda.C_TYPES))
def test_every_option_instantiation_runs_and_matches_the_reference(dev, dtype_name):
    dtype = _dtype(dtype_name)
    if dtype not in _cuda.DTYPES:
        pytest.skip(f"{dtype_name} is not supported here")
    launcher = Recording(dev.backend.launcher)
    backend = _cuda.CudaBackend(dev.xp, launcher)
    rng = np.random.default_rng(13)
    tol = TOLERANCE[dtype_name]
    options = {"z_loss": 1e-3, "softcap": 4.0, "temperature": 1.3}
    for kernel in _cuda.OPTION_KERNELS:
        for n, c in plan_cases(kernel, dtype_name):
            a, t = case(rng, n, c, np.float32, kernel == "prob_options")
            a = a.astype(dtype)
            t = t.astype(dtype) if kernel == "prob_options" else t
            a64 = a.astype(np.float64)  # the reference sees the logits (and targets) as rounded
            t_ref = t.astype(np.float64) if kernel == "prob_options" else t
            # (float32: the checks cast the weights to the logits' dtype; the reference gets them rounded)
            weight = (rng.random(c) + 0.5).astype(np.float32)
            call = _checks.check_cross_entropy(
                dev.xp, dev.asarray(a), dev.asarray(t), axis=1, weight=dev.asarray(weight), ignore_index=-100,
                label_smoothing=0.1, reduction="sum", dtypes=_cuda.DTYPES, **options,
            )  # fmt: skip
            losses, grad = backend.cross_entropy_rows(call, want_grad=True, out=None, grad_scale=1.0)
            w_ref = weight.astype(dtype).astype(np.float64)
            want_losses, want_grad = reference.cross_entropy_and_grad(
                a64, t_ref, weight=w_ref, label_smoothing=0.1, reduction="none", **options
            )
            assert_close(losses, want_losses, tol)
            assert_close(grad.astype(np.float64), want_grad, None, atol_frac=tol)
    planned = {_cuda.plan(k, dtype_name, n, c).name for k in _cuda.OPTION_KERNELS
               for n, c in plan_cases(k, dtype_name)}  # fmt: skip
    assert planned == set(_cuda.name_expressions((dtype_name,), options=True))  # every one is reached
    assert launcher.names == planned


@pytest.mark.parametrize("dtype_name", ["float16", "bfloat16"])
@pytest.mark.parametrize("num_classes", [5, 1000, 32000])
def test_half_types_through_the_public_api(dev, dtype_name, num_classes):
    dtype = _dtype(dtype_name)
    if dtype not in _cuda.DTYPES:
        pytest.skip(f"{dtype_name} is not supported here")
    rng = np.random.default_rng(num_classes)
    tol = TOLERANCE[dtype_name]
    for probabilities in (False, True):
        a, t = case(rng, 6, num_classes, np.float32, probabilities)
        a = a.astype(dtype)
        t = t.astype(dtype) if probabilities else t
        kwargs = {"z_loss": 1e-3, "softcap": 5.0, "temperature": 1.7, "label_smoothing": 0.05}
        for reduction in ("mean", "none"):
            t_ref = t.astype(np.float64) if probabilities else t
            want_loss, want_grad = reference.cross_entropy_and_grad(
                a.astype(np.float64), t_ref, reduction=reduction, **kwargs
            )
            loss, grad = xc.loss_and_grad(dev.asarray(a), dev.asarray(t), reduction=reduction, **kwargs)
            assert grad.dtype == dtype
            # the losses are float64 sums of float accumulations; the gradient is rounded to the dtype
            assert_close(to_numpy(loss).astype(np.float64), want_loss, 1e-4)
            assert_close(to_numpy(grad).astype(np.float64), want_grad, None, atol_frac=tol)


@pytest.mark.parametrize("num_classes", [5, 1000, 20000])
def test_nan_logits_with_a_softcap(dev, num_classes):
    rng = np.random.default_rng(5)
    a = rng.standard_normal((4, num_classes)) * 3
    a[0, 1] = np.nan  # a counted row
    a[1, 2] = np.nan  # an ignored row: loss 0 and gradient exactly 0 all the same
    a[3, 0] = np.nan  # a counted row, NaN at its target
    y = np.array([0, -100, 2, 0])
    kwargs = {"softcap": 3.0, "z_loss": 1e-3, "temperature": 0.8}
    for dtype in (np.float32, np.float64):
        losses, grad = (to_numpy(v) for v in xc.loss_and_grad(
            dev.asarray(a.astype(dtype)), dev.asarray(y), reduction="none", **kwargs))  # fmt: skip
        assert np.isnan(losses[[0, 3]]).all() and np.isnan(grad[[0, 3]]).all()
        assert losses[1] == 0.0 and np.all(grad[1] == 0.0)
        want_loss, want_grad = reference.cross_entropy_and_grad(
            a[2:3].astype(dtype), y[2:3], reduction="none", **kwargs
        )
        assert_close(losses[2:3], want_loss, RTOL[np.dtype(dtype).name])
        assert_close(grad[2:3], want_grad, RTOL[np.dtype(dtype).name])
        # probabilities: every row counts
        q = rng.random((4, num_classes)).astype(dtype)
        losses, grad = (to_numpy(v) for v in xc.loss_and_grad(
            dev.asarray(a.astype(dtype)), dev.asarray(q), reduction="none", **kwargs))  # fmt: skip
        assert np.isnan(losses[[0, 1, 3]]).all() and np.isnan(grad[[0, 1, 3]]).all()
        assert np.isfinite(losses[2]) and np.isfinite(grad[2]).all()


@pytest.mark.parametrize("num_classes", [5, 1000, 20000])
def test_infinite_logits_with_a_softcap_give_finite_results(dev, num_classes):
    # tanh(+-inf) = +-1: an infinite logit becomes +-cap, and its slope is 0
    rng = np.random.default_rng(6)
    a = rng.standard_normal((4, num_classes)) * 3
    a[0, 1] = np.inf
    a[1, :] = -np.inf  # every class masked: a uniform softmax of -cap
    a[2, 0] = -np.inf  # the target class masked
    a[3, [1, 3]] = [np.inf, -np.inf]
    y = np.array([1, 0, 0, 2])
    kwargs = {"softcap": 4.0, "z_loss": 1e-2, "temperature": 1.5}
    for dtype in (np.float32, np.float64):
        rtol = RTOL[np.dtype(dtype).name]
        for reduction in ("none", "mean"):
            want_loss, want_grad = reference.cross_entropy_and_grad(a.astype(dtype), y, reduction=reduction,
                                                                    **kwargs)  # fmt: skip
            loss, grad = (to_numpy(v) for v in xc.loss_and_grad(
                dev.asarray(a.astype(dtype)), dev.asarray(y), reduction=reduction, **kwargs))  # fmt: skip
            assert np.isfinite(loss).all() and np.isfinite(grad).all()
            assert_close(loss, want_loss, rtol)
            assert_close(grad, want_grad, rtol)
            assert grad[0, 1] == 0.0 and grad[2, 0] == 0.0 and np.all(grad[1] == 0.0)


@pytest.mark.parametrize("num_classes", [1000, 20000])
@pytest.mark.parametrize("dtype_name", ["float32", "float64"])
def test_saturated_classes_keep_the_digits_of_their_gradient(dev, dtype_name, num_classes):
    # |A / cap| up to 20: tanh rounds to 1 and 1 - tanh^2 (down to 1e-17) would be 0 from it;
    # each element of the gradient against the reference, relative to itself
    rng = np.random.default_rng(7)
    a = rng.uniform(-100, 100, (3, num_classes)).astype(dtype_name)
    y = np.array([0, 5, 17])
    kwargs = {"softcap": 5.0, "z_loss": 1e-3}
    _, want = reference.cross_entropy_and_grad(a, y, reduction="sum", **kwargs)
    _, grad = xc.loss_and_grad(dev.asarray(a), dev.asarray(y), reduction="sum", **kwargs)
    assert np.min(np.abs(want)) < 1e-12  # the case reaches deep saturation
    np.testing.assert_allclose(to_numpy(grad), want, rtol=2e-4 if dtype_name == "float32" else 1e-10, atol=0)


def test_the_z_loss_skips_ignored_rows_and_is_unweighted(dev):
    rng = np.random.default_rng(8)
    a = rng.standard_normal((6, 50)) * 4
    y = np.array([3, -100, 7, -100, 0, 49])
    w = rng.random(50) + 0.5
    for z in (0.0, 1e-2):
        want_loss, want_grad = reference.cross_entropy_and_grad(a, y, weight=w, reduction="none", z_loss=z)
        loss, grad = xc.loss_and_grad(dev.asarray(a), dev.asarray(y), weight=dev.asarray(w), reduction="none",
                                      z_loss=z)  # fmt: skip
        assert_close(loss, want_loss, 1e-12)
        assert_close(grad, want_grad, 1e-12)
    plain = reference.cross_entropy(a, y, weight=w, reduction="none")
    lse = reference.logsumexp(a)
    want_z = np.where(y != -100, 1e-2 * lse**2, 0.0)
    np.testing.assert_allclose(to_numpy(loss) - plain, want_z, rtol=1e-9, atol=0)


def test_scale_by_pointer_and_zero_scale_with_options(dev):
    rng = np.random.default_rng(9)
    for c in (10, 1000, 20000):
        for probabilities in (False, True):
            a, t = case(rng, 5, c, np.float64, probabilities)
            call = _checks.check_cross_entropy(
                dev.xp, dev.asarray(a), dev.asarray(t), axis=1, weight=None, ignore_index=-100,
                label_smoothing=0.0, reduction="mean", dtypes=_cuda.DTYPES, z_loss=1e-2, softcap=3.0,
                temperature=0.9,
            )  # fmt: skip
            by_value = dev.backend.cross_entropy_rows(call, want_grad=True, out=None, grad_scale=0.25)
            by_pointer = dev.backend.cross_entropy_rows(call, want_grad=True, out=None,
                                                        grad_scale=dev.asarray(np.asarray(0.25)))  # fmt: skip
            zero = dev.backend.cross_entropy_rows(call, want_grad=True, out=None, grad_scale=0.0)
            for got, want in zip(by_pointer, by_value, strict=True):
                np.testing.assert_array_equal(to_numpy(got), to_numpy(want))
            _, want_grad = reference.cross_entropy_and_grad(a, t, reduction="sum", z_loss=1e-2, softcap=3.0,
                                                            temperature=0.9)  # fmt: skip
            assert_close(by_value[1], 0.25 * want_grad, 1e-11)
            assert not np.any(to_numpy(zero[1]))


def test_bad_indices_give_nan_in_the_option_kernels(dev):
    # the checks would raise first; the backend alone must give NaN and never read through them
    for c in (10, 1000, 20000):
        a = dev.asarray(np.random.default_rng(c).standard_normal((4, c)).astype(np.float32))
        y = dev.asarray([1, c, -(10**9), -100], dev.xp.int64)
        call = _checks.CrossEntropyCall(
            xp=dev.xp, logits=a, target=y, class_indices=True, axis=1, num_classes=c, batch_shape=(4,),
            weight=None, ignore_index=-100, label_smoothing=0.0, reduction="none", z_loss=1e-2, softcap=3.0,
            temperature=2.0,
        )  # fmt: skip
        losses, grad = (to_numpy(v) for v in dev.backend.cross_entropy_rows(call, want_grad=True, out=None,
                                                                             grad_scale=1.0))  # fmt: skip
        assert np.isfinite(losses[0]) and np.isfinite(grad[0]).all()
        assert np.isnan(losses[1:3]).all() and np.isnan(grad[1:3]).all()
        assert losses[3] == 0.0 and np.all(grad[3] == 0.0)


# --- plain calls are unchanged ------------------------------------------------------------------


@pytest.mark.parametrize("probabilities", [False, True], ids=["index", "prob"])
def test_neutral_options_take_the_plain_kernels(dev, probabilities):
    rng = np.random.default_rng(10)
    for c in CLASS_COUNTS:
        a, t = case(rng, 4, c, np.float32, probabilities)
        loss, grad = xc.loss_and_grad(dev.asarray(a), dev.asarray(t))
        with recording(dev) as names:
            loss_n, grad_n = xc.loss_and_grad(dev.asarray(a), dev.asarray(t), z_loss=0.0, softcap=None,
                                              temperature=1.0)  # fmt: skip
        assert names and not any("_options_" in name for name in names), names
        np.testing.assert_array_equal(to_numpy(loss_n), to_numpy(loss))
        np.testing.assert_array_equal(to_numpy(grad_n), to_numpy(grad))


class AsOptions:
    """A launcher that runs the plain cross-entropy kernel ``plain`` as the option kernel
    ``options`` instead, with neutral options (z_loss 0, no soft-cap, temperature 1)."""

    def __init__(self, inner, plain, options):
        self.inner, self.plain, self.options, self.names = inner, plain, options, set()

    def device(self, x):
        return self.inner.device(x)

    def address(self, x):
        return self.inner.address(x)

    def launch(self, dtype_name, name, grid, block, args):
        if name == self.plain:
            name, args = self.options, (*args, np.float64(0.0), np.float64(0.0), np.float64(1.0))
        self.names.add(name)
        self.inner.launch(dtype_name, name, grid, block, args)


def layout(plan):
    """What decides a launch's reductions: its group, its block and its policy."""
    return plan.group, plan.block, "_cached<" in plan.name


@pytest.mark.parametrize("dtype_name", ["float32", "float64"])
def test_the_option_kernels_with_neutral_options_equal_the_plain_ones(dev, dtype_name):
    # bit for bit, where the option kernel takes the plain one's policy, group and block: the
    # same elements in each thread and the same reductions (a larger NV adds only padding)
    rng = np.random.default_rng(11)
    compared = 0
    for c in (*CLASS_COUNTS, 3000, 9000):
        for probabilities in (False, True):
            kernel = "prob" if probabilities else "index"
            plain, opt = (_cuda.plan(k, dtype_name, 4, c) for k in (kernel, kernel + "_options"))
            if layout(plain) != layout(opt):
                continue
            a, t = case(rng, 4, c, dtype_name, probabilities)
            kwargs = {"weight": rng.random(c) + 0.5, "label_smoothing": 0.1}
            want = [to_numpy(v) for v in xc.loss_and_grad(dev.asarray(a), dev.asarray(t), reduction="none",
                                                          **kwargs)]  # fmt: skip
            inner = dev.backend.launcher
            dev.backend.launcher = AsOptions(inner, plain.name, opt.name)
            try:
                got = [to_numpy(v) for v in xc.loss_and_grad(dev.asarray(a), dev.asarray(t), reduction="none",
                                                             **kwargs)]  # fmt: skip
                assert opt.name in dev.backend.launcher.names
            finally:
                dev.backend.launcher = inner
            for g, w in zip(got, want, strict=True):
                np.testing.assert_array_equal(g, w)
            compared += 1
    assert compared >= 6  # (float64: its streamed option kernel has a group of 512, not 1024)
