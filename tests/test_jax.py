"""JAX on xentcy's kernels: zero-copy routing of eager arrays, and xentcy.jax under jit, grad
and vmap (the XLA custom call on the CPU, and the pure_callback path it falls back to).

References are optax's losses, jax.nn.log_softmax and float64 NumPy written here, and finite
differences; never xentcy's other paths.
"""

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402

import xentcy as xc  # noqa: E402
from xentcy import _dispatch  # noqa: E402
from xentcy._cpu import empty_like  # noqa: E402

xj = pytest.importorskip("xentcy.jax")


def _x64(on):
    old = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", on)
    yield jax
    jax.config.update("jax_enable_x64", old)


@pytest.fixture()
def jax_x64_off():
    """JAX's default: 32-bit types only."""
    yield from _x64(False)


@pytest.fixture()
def jax_x64_on():
    yield from _x64(True)


def _jax_ref(jax, a, y):
    keep = y != -100
    lp = jax.nn.log_softmax(a, axis=-1)
    picked = jnp.take_along_axis(lp, jnp.where(keep, y, 0)[:, None], axis=1)[:, 0]
    return -jnp.sum(jnp.where(keep, picked, 0.0)) / jnp.sum(keep)


def test_jax_grad_jit_vmap_against_jax_nn_and_finite_differences(jax_x64_off):
    import warnings

    rng = np.random.default_rng(0)
    A = jnp.asarray(rng.standard_normal((12, 9)).astype(np.float32))
    y = jnp.asarray(rng.integers(0, 9, 12).astype(np.int32)).at[3].set(-100)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # x64 off: no UserWarning on any call
        loss = jax.jit(xj.cross_entropy)(A, y)
        grad = jax.jit(jax.grad(xj.cross_entropy))(A, y)
        batched = jax.vmap(xj.cross_entropy)(jnp.stack([A, A + 1.0]), jnp.stack([y, y]))
        plain_jit = jax.jit(xc.cross_entropy)(A, y)
    ref = _jax_ref(jax, A, y)
    np.testing.assert_allclose(loss, ref, rtol=2e-6)
    np.testing.assert_allclose(plain_jit, ref, rtol=2e-6)
    np.testing.assert_allclose(grad, jax.grad(lambda a: _jax_ref(jax, a, y))(A), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(batched, [ref, _jax_ref(jax, A + 1.0, y)], rtol=2e-6)
    # finite differences in float64, on the host
    A64 = np.asarray(A, dtype=np.float64)
    y64 = np.asarray(y)
    h, i, j = 1e-5, 5, 2

    def f(a):
        a = np.array(a)
        keep = y64 != -100
        z = a - a.max(1, keepdims=True)
        lp = z - np.log(np.exp(z).sum(1, keepdims=True))
        return -lp[keep, y64[keep]].mean()

    up, dn = A64.copy(), A64.copy()
    up[i, j] += h
    dn[i, j] -= h
    np.testing.assert_allclose(grad[i, j], (f(up) - f(dn)) / (2 * h), rtol=1e-3)


def test_jax_bad_index_is_nan_in_a_trace_and_an_error_eagerly(jax_x64_off):
    A = jnp.asarray(np.random.default_rng(1).standard_normal((4, 5)).astype(np.float32))
    y = jnp.asarray([1, 9, 3, -100], dtype=jnp.int32)
    for fn in (xj.cross_entropy, xc.cross_entropy):
        losses = jax.jit(lambda a, t, fn=fn: fn(a, t, reduction="none"))(A, y)
        assert np.isnan(losses[1]) and np.isfinite(losses[0]) and losses[3] == 0
        g = jax.jit(jax.grad(lambda a, t, fn=fn: fn(a, t, reduction="sum")))(A, y)
        assert np.isnan(g[1]).all() and np.isfinite(g[0]).all() and (g[3] == 0).all()
        with pytest.raises(ValueError, match="class index 9"):
            fn(A, y)


def test_jax_eager_arrays_run_on_the_core_and_come_back_as_jax(jax_x64_off):
    A = jnp.asarray(np.random.default_rng(2).standard_normal((8, 6)).astype(np.float32))
    y = jnp.asarray(np.arange(8) % 6, dtype=jnp.int32)
    loss, grad = xc.loss_and_grad(A, y)
    assert isinstance(loss, jax.Array) and isinstance(grad, jax.Array)
    np.testing.assert_allclose(loss, _jax_ref(jax, A, y), rtol=2e-6)
    with pytest.raises(ValueError, match="inplace=True needs writable logits, got a read-only"):
        xc.loss_and_grad(A, y, inplace=True)


# -- zero copies


def test_eager_jax_results_share_the_cores_aligned_buffers():
    # the core allocates 64-byte aligned outputs, and XLA takes those without a copy
    a = empty_like(np.zeros((33, 7), np.float32))
    assert a.ctypes.data % 64 == 0 and a.flags.c_contiguous and a.shape == (33, 7)
    a[...] = np.arange(a.size, dtype=np.float32).reshape(a.shape)
    j = _dispatch._to_jax(a)
    assert j.unsafe_buffer_pointer() == a.ctypes.data
    del a  # the JAX array keeps the memory alive
    np.testing.assert_array_equal(j, np.arange(33 * 7, dtype=np.float32).reshape(33, 7))
    # a buffer XLA would not take as it is (misaligned) is copied, not shared
    raw = np.zeros(65, np.float32)
    b = raw[1:] if raw.ctypes.data % 64 == 0 else raw[:64]
    if b.ctypes.data % 64:
        assert _dispatch._to_jax(b).unsafe_buffer_pointer() != b.ctypes.data


# -- xentcy.jax against optax, on both paths


@pytest.fixture(params=["ffi", "callback"])
def path(request, monkeypatch):
    """xentcy.jax through the XLA custom call, and through pure_callback (its fallback)."""
    if request.param == "callback":
        monkeypatch.setattr(xj, "_ffi_registered", lambda: False)
    elif not xj._ffi_registered():
        pytest.skip("this jaxlib does not take xentcy's XLA FFI handler")
    jax.clear_caches()
    yield request.param
    jax.clear_caches()


def _ref_loss(a, target, *, weight=None, ignore_index=-100, label_smoothing=0.0, reduction="mean"):
    """torch's rules, in jnp: float64 where x64 is on."""
    n_classes = a.shape[-1]
    lp = jax.nn.log_softmax(a, axis=-1)
    w = jnp.ones(n_classes, a.dtype) if weight is None else weight
    if target.ndim == a.ndim:
        q = (1 - label_smoothing) * target + label_smoothing / n_classes
        rows = -jnp.sum(w * q * lp, axis=-1)
        denom = rows.size
    else:
        keep = target != ignore_index
        safe = jnp.where(keep, target, 0)
        picked = jnp.take_along_axis(lp, safe[..., None], axis=-1)[..., 0]
        smooth = -jnp.sum(w * lp, axis=-1) / n_classes
        rows = jnp.where(keep, w[safe] * (-(1 - label_smoothing) * picked) + label_smoothing * smooth, 0.0)
        denom = jnp.sum(jnp.where(keep, w[safe], 0.0))
    if reduction == "none":
        return rows
    return jnp.sum(rows) / denom if reduction == "mean" else jnp.sum(rows)


def test_optax_integer_labels_under_jit_and_grad(path, jax_x64_off):
    optax = pytest.importorskip("optax")
    rng = np.random.default_rng(3)
    A = jnp.asarray(rng.standard_normal((40, 300)).astype(np.float32) * 3)
    y = jnp.asarray(rng.integers(0, 300, 40).astype(np.int32))

    def theirs(a):
        return optax.softmax_cross_entropy_with_integer_labels(a, y).mean()

    ours = jax.jit(jax.value_and_grad(lambda a: xj.cross_entropy(a, y)))(A)
    ref = jax.jit(jax.value_and_grad(theirs))(A)
    np.testing.assert_allclose(ours[0], ref[0], rtol=2e-6)
    np.testing.assert_allclose(ours[1], ref[1], rtol=1e-4, atol=1e-8)
    # the cotangent scales the gradient (here 3, not the 1 of jax.grad)
    g3 = jax.jit(jax.grad(lambda a: 3.0 * xj.cross_entropy(a, y)))(A)
    np.testing.assert_allclose(g3, 3 * ref[1], rtol=1e-4, atol=1e-8)


def test_optax_probability_targets_per_sample(path, jax_x64_off):
    optax = pytest.importorskip("optax")
    rng = np.random.default_rng(4)
    A = jnp.asarray(rng.standard_normal((16, 9)).astype(np.float32))
    P = jax.nn.softmax(jnp.asarray(rng.standard_normal((16, 9)).astype(np.float32)))
    ct = jnp.asarray(rng.uniform(0.5, 2, 16).astype(np.float32))  # a cotangent per sample
    ours = jax.jit(jax.vjp, static_argnums=0)(lambda a: xj.cross_entropy(a, P, reduction="none"), A)
    theirs = jax.vjp(lambda a: optax.softmax_cross_entropy(a, P), A)
    np.testing.assert_allclose(ours[0], theirs[0], rtol=2e-6)
    np.testing.assert_allclose(ours[1](ct)[0], theirs[1](ct)[0], rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize(
    "kw",
    [
        {"reduction": "sum", "label_smoothing": 0.2},
        {"weight": True, "ignore_index": 1},
        {"weight": True, "label_smoothing": 0.1, "reduction": "none"},
    ],
    ids=["sum-smoothing", "weight-ignore", "weight-smoothing-none"],
)
def test_float64_keywords_against_jnp_and_finite_differences(path, kw, jax_x64_on):
    rng = np.random.default_rng(5)
    A = jnp.asarray(rng.standard_normal((3, 6, 4)))  # (N, C, d1): torch's layout, axis 1
    y = jnp.asarray(rng.integers(0, 6, (3, 4)))
    kw = dict(kw)
    if kw.pop("weight", False):
        kw["weight"] = jnp.asarray(rng.uniform(0.5, 2, 6))
    f = jax.jit(lambda a: jnp.sum(xj.cross_entropy(a, y, axis=1, **kw)))
    ref = lambda a: jnp.sum(_ref_loss(jnp.moveaxis(a, 1, -1), y, **kw))  # noqa: E731
    np.testing.assert_allclose(f(A), ref(A), rtol=1e-13)
    grad = jax.jit(jax.grad(f))(A)
    np.testing.assert_allclose(grad, jax.grad(ref)(A), rtol=1e-11, atol=1e-15)
    h, idx = 1e-6, (1, 2, 3)
    step = jnp.zeros_like(A).at[idx].set(h)
    fd = (float(ref(A + step)) - float(ref(A - step))) / (2 * h)
    np.testing.assert_allclose(grad[idx], fd, rtol=1e-6)


def test_half_precision_logits_have_a_float32_loss(path, jax_x64_off):
    rng = np.random.default_rng(6)
    A32 = rng.standard_normal((8, 50)).astype(np.float32)
    A = jnp.asarray(A32, dtype=jnp.bfloat16)
    y = jnp.asarray(rng.integers(0, 50, 8).astype(np.int32))
    loss, grad = jax.jit(jax.value_and_grad(xj.cross_entropy))(A, y)
    assert loss.dtype == jnp.float32 and grad.dtype == jnp.bfloat16
    exact = _ref_loss(jnp.asarray(A, dtype=jnp.float32), y)  # of the bfloat16 values, in float32
    np.testing.assert_allclose(loss, exact, rtol=2e-6)
    ref_grad = jax.grad(lambda a: _ref_loss(a, y))(jnp.asarray(A, dtype=jnp.float32))
    np.testing.assert_allclose(np.asarray(grad, np.float32), ref_grad, rtol=1e-2, atol=1e-4)


def test_vmap_runs_one_problem_each(path, jax_x64_off):
    rng = np.random.default_rng(7)
    A = jnp.asarray(rng.standard_normal((3, 10, 5)).astype(np.float32))
    y = jnp.asarray(rng.integers(0, 5, (3, 10)).astype(np.int32)).at[1, 4].set(-100)
    grads = jax.jit(jax.vmap(jax.grad(xj.cross_entropy)))(A, y)
    for i in range(3):  # each problem its own mean
        np.testing.assert_allclose(grads[i], jax.grad(_ref_loss)(A[i], y[i]), rtol=1e-5, atol=1e-8)


def test_all_ignored_mean_is_nan_with_a_zero_gradient(path, jax_x64_off):
    A = jnp.ones((4, 3), jnp.float32)
    y = jnp.full(4, -100, jnp.int32)
    loss, grad = jax.jit(jax.value_and_grad(xj.cross_entropy))(A, y)
    assert np.isnan(loss) and np.all(np.asarray(grad) == 0)


# -- the custom call itself: whatever reaches it, an error and not a read outside a buffer


def _raw_call(results, *args, **attrs):
    attrs = {
        "ignore_index": np.int64(-100),
        "label_smoothing": np.float64(0),
        "reduction": np.int32(0),
        **attrs,
    }
    return jax.ffi.ffi_call(xj._FFI_TARGET, results)(*args, **attrs)


@pytest.mark.parametrize(
    "case",
    [
        "short target",
        "bfloat16 target",
        "weight size",
        "gradient shape",
        "reduction 7",
        "no attributes",
        "3-D",
    ],
)
def test_custom_call_refuses_what_does_not_fit(case, jax_x64_off):
    if not xj._ffi_registered():
        pytest.skip("this jaxlib does not take xentcy's XLA FFI handler")
    f32 = jnp.float32
    A = jnp.ones((5, 4), f32)
    y = jnp.zeros(5, jnp.int32)
    w = jnp.zeros((0,), f32)
    loss = jax.ShapeDtypeStruct((), f32)
    grad = jax.ShapeDtypeStruct((5, 4), f32)
    calls = {
        "short target": lambda: _raw_call((loss, grad), A, y[:3], w),
        "bfloat16 target": lambda: _raw_call((loss, grad), A, jnp.ones((5, 4), jnp.bfloat16), w),
        "weight size": lambda: _raw_call((loss, grad), A, y, jnp.ones(3, f32)),
        "gradient shape": lambda: _raw_call((loss, jax.ShapeDtypeStruct((4, 5), f32)), A, y, w),
        "reduction 7": lambda: _raw_call((loss, grad), A, y, w, reduction=np.int32(7)),
        "no attributes": lambda: jax.ffi.ffi_call(xj._FFI_TARGET, (loss, grad))(A, y, w),
        "3-D": lambda: _raw_call((loss,), jnp.ones((2, 5, 4), f32), y, w),
    }
    with pytest.raises(jax.errors.JaxRuntimeError, match="xentcy_cross_entropy"):
        jax.block_until_ready(calls[case]())


def test_language_model_options_and_denominator(path, jax_x64_on):
    # z_loss, softcap, temperature and denominator through the custom call's attributes (and
    # the callback), against the formulas written out in jnp, and jax.grad of them
    rng = np.random.default_rng(11)
    A = jnp.asarray(rng.standard_normal((10, 7)) * 5)
    y = jnp.asarray(rng.integers(0, 7, 10)).at[3].set(-100)
    z, cap, t, d = 1e-2, 3.0, 0.7, 25.0

    def ref(a):
        x = cap * jnp.tanh((a / t) / cap)
        keep = y != -100
        lse = jax.nn.logsumexp(x, axis=-1)
        picked = jnp.take_along_axis(x, jnp.where(keep, y, 0)[:, None], axis=1)[:, 0]
        return jnp.sum(jnp.where(keep, lse - picked + z * lse**2, 0.0)) / d

    f = jax.jit(lambda a: xj.cross_entropy(a, y, z_loss=z, softcap=cap, temperature=t, denominator=d))
    np.testing.assert_allclose(f(A), ref(A), rtol=1e-13)
    np.testing.assert_allclose(jax.jit(jax.grad(f))(A), jax.grad(ref)(A), rtol=1e-11, atol=1e-15)
    with pytest.raises(ValueError, match="softcap must be None or a positive finite number"):
        xj.cross_entropy(A, y, softcap=0.0)
