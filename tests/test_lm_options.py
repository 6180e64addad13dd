"""The language-model options z_loss, softcap and temperature, on every backend of the
conformance suite and every entry point. References: float64 NumPy written in
tests/reference.py (the formulas, independently), mpmath at the extremes, the plain loss
of logits transformed here by hand, and torch autograd of the formulas written in torch."""

import math

import mpmath
import numpy as np
import pytest
import reference as ref
from backends import HALF_PRECISION, backend_name, make, to_numpy

import xentcy as xc

OPTIONS = [
    {"z_loss": 1e-2},
    {"temperature": 0.7},
    {"temperature": 2.5},
    {"softcap": 3.0},
    {"z_loss": 1e-3, "softcap": 5.0, "temperature": 1.3},
]
OPTION_IDS = ["z_loss", "T0.7", "T2.5", "softcap", "all"]


def _data(n=23, c=11, seed=0, scale=4.0):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, c)) * scale
    y = rng.integers(0, c, n)
    y[::6] = -100
    q = rng.dirichlet(np.ones(c), n)
    return a, y, q


def _check(xp, a, target, kwargs, rtol=1e-10, atol=1e-13, **extra):
    loss, grad = xc.loss_and_grad(make(xp, a), make(xp, target), **kwargs, **extra)
    want_loss, want_grad = ref.cross_entropy_and_grad(a, target, **kwargs, **{
        k: (to_numpy(v) if hasattr(v, "shape") else v) for k, v in extra.items()})  # fmt: skip
    np.testing.assert_allclose(to_numpy(loss), want_loss, rtol=rtol, atol=atol)
    np.testing.assert_allclose(to_numpy(grad), want_grad, rtol=rtol, atol=atol)


@pytest.mark.parametrize("kwargs", OPTIONS, ids=OPTION_IDS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_class_indices_against_the_reference(xp, kwargs, reduction):
    a, y, _ = _data()
    _check(xp, a, y, {**kwargs, "reduction": reduction})


@pytest.mark.parametrize("kwargs", OPTIONS, ids=OPTION_IDS)
def test_probabilities_against_the_reference(xp, kwargs):
    a, _, q = _data()
    _check(xp, a, q, {**kwargs, "label_smoothing": 0.1})


@pytest.mark.parametrize("num_classes", [2, 16, 70, 1000])
def test_with_weights_smoothing_and_ignored_rows(xp, num_classes):
    # the few-class blocks (C <= 64) and the row kernel; weights that leave some rows at zero mass
    a, y, _ = _data(n=37, c=num_classes, seed=num_classes)
    w = np.linspace(0.0, 2.0, num_classes)
    kwargs = {"z_loss": 1e-3, "softcap": 4.0, "temperature": 0.8, "label_smoothing": 0.05}
    _check(xp, a, y, kwargs, weight=make(xp, w))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_long_rows(dtype):
    # rows past the kernel's L2 size (float64: the one-pass path), and confident rows
    a, y, _ = _data(n=5, c=40000, seed=3)
    a[1, y[1]] = a[1].max() + 40
    kwargs = {"z_loss": 1e-4, "softcap": 30.0, "temperature": 1.1}
    rtol = 2e-5 if dtype == np.float32 else 1e-10
    loss, grad = xc.loss_and_grad(a.astype(dtype), y, reduction="none", **kwargs)
    want_loss, want_grad = ref.cross_entropy_and_grad(a.astype(dtype), y, reduction="none", **kwargs)
    np.testing.assert_allclose(loss, want_loss, rtol=rtol)
    np.testing.assert_allclose(grad, want_grad, rtol=rtol, atol=rtol * np.abs(want_grad).max())


def test_the_order_is_temperature_then_softcap_then_the_loss(xp):
    # against the plain loss of logits transformed by hand: A / T first, then cap tanh(. / cap)
    a, y, _ = _data()
    t, cap = 0.6, 2.0
    final = cap * np.tanh((a / t) / cap)
    got = xc.cross_entropy(make(xp, a), make(xp, y), temperature=t, softcap=cap, reduction="none")
    np.testing.assert_allclose(to_numpy(got), ref.cross_entropy(final, y, reduction="none"), rtol=1e-12)
    other = cap * np.tanh(a / cap) / t  # the other order differs: the test can tell them apart
    assert not np.allclose(ref.cross_entropy(other, y, reduction="none"), to_numpy(got), rtol=1e-3)


def test_the_z_loss_is_unweighted_and_divided_by_the_same_denominator(xp):
    a, y, _ = _data()
    w = np.linspace(0.5, 3.0, 11)
    z = 0.05
    plain = ref.cross_entropy(a, y, weight=w)
    lse = ref.logsumexp(a)[y != -100]
    d = w[y[y != -100]].sum()  # the mean's D: the target classes' weights
    got = xc.cross_entropy(make(xp, a), make(xp, y), weight=make(xp, w), z_loss=z)
    np.testing.assert_allclose(to_numpy(got), plain + z * np.sum(lse**2) / d, rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_saturated_softcap_gradient_keeps_its_digits(dtype):
    # logits far past the cap: 1 - tanh^2 is about 4 exp(-2|x|/cap), far below the ulp of 1;
    # the gradient there is checked relative to itself, against mpmath
    cap = 2.0
    a = np.array([[0.0, 30.0, -30.0, 60.0, 1.0]])
    y = np.array([0])
    grad = xc.cross_entropy_grad(a.astype(dtype), y, softcap=cap, reduction="sum")
    mpmath.mp.dps = 50
    z = [cap * mpmath.tanh(mpmath.mpf(v) / cap) for v in a[0]]
    s = sum(mpmath.exp(v) for v in z)
    for c, v in enumerate(a[0]):
        p = mpmath.exp(z[c]) / s
        want = (p - (1 if c == 0 else 0)) / mpmath.cosh(mpmath.mpf(v) / cap) ** 2
        tol = 2e-5 if dtype == np.float32 else 1e-12
        if abs(want) < np.finfo(dtype).tiny * 2**10:
            continue  # below the dtype's normal range
        assert abs(float(grad[0, c]) - float(want)) <= tol * abs(float(want)), (c, grad[0, c], want)


def test_non_finite_logits_with_a_softcap(xp):
    name = backend_name(xp)
    a, y, _ = _data(n=6, c=5)
    y[:] = [1, 2, -100, 3, 0, 4]
    a[0, 3] = np.inf   # tanh(inf) = 1: a finite logit of the cap, a zero gradient there
    a[1, 0] = -np.inf
    a[2, 1] = np.nan   # ignored: loss 0, gradient exactly 0
    a[3, 2] = np.nan   # counted: NaN
    loss, grad = xc.loss_and_grad(make(xp, a), make(xp, y), softcap=3.0, reduction="none")
    loss, grad = to_numpy(loss), to_numpy(grad)
    want = ref.cross_entropy(np.where(np.isnan(a), 0.0, a), y, softcap=3.0, reduction="none")
    np.testing.assert_allclose(loss[[0, 1, 4, 5]], want[[0, 1, 4, 5]], rtol=1e-12)
    assert loss[2] == 0 and np.all(grad[2] == 0), name
    assert np.isnan(loss[3])
    assert grad[0, 3] == 0 and grad[1, 0] == 0
    assert np.all(np.isfinite(grad[[0, 1, 4, 5]]))


@pytest.mark.parametrize("inplace", [False, True])
def test_out_and_inplace(inplace):
    a, y, _ = _data()
    kwargs = {"z_loss": 1e-2, "softcap": 3.0, "temperature": 0.9}
    want = ref.cross_entropy_grad(a, y, **kwargs)
    logits = a.copy()
    out = None if inplace else np.empty_like(a)
    _, grad = xc.loss_and_grad(logits, y, out=out, inplace=inplace, **kwargs)
    assert grad is (logits if inplace else out)
    np.testing.assert_allclose(grad, want, rtol=1e-11, atol=1e-15)


def test_independent_of_threads_and_batch_split():
    from xentcy._cpu import _core

    rng = np.random.default_rng(5)
    for c in (7, 300, 20000):  # chunks of many rows (few classes, a multiple of 16) and of one row
        a = rng.standard_normal((2051, c)).astype(np.float32) * 5
        y = rng.integers(0, c, 2051)
        kwargs = {"z_loss": 1e-3, "softcap": 4.0, "temperature": 1.2, "reduction": "none"}
        previous = _core.set_max_threads(1)
        try:
            one = xc.loss_and_grad(a, y, **kwargs)
        finally:
            _core.set_max_threads(previous)
        two = xc.loss_and_grad(a, y, **kwargs)
        part = xc.loss_and_grad(a[37:], y[37:], **kwargs)
        for x, w in ((two, one), (part, (one[0][37:], one[1][37:]))):
            np.testing.assert_array_equal(x[0], w[0])
            np.testing.assert_array_equal(x[1], w[1])


@pytest.mark.only_xp_backends(*HALF_PRECISION, reason="half-precision logits run on xentcy's GPU kernels")
def test_half_precision(xp):
    import ml_dtypes

    a, y, _ = _data()
    kwargs = {"z_loss": 1e-3, "softcap": 5.0, "temperature": 1.3}
    for dtype in (np.float16, ml_dtypes.bfloat16):
        h = a.astype(dtype)
        loss, grad = xc.loss_and_grad(make(xp, h), make(xp, y), **kwargs)
        want_loss, want_grad = ref.cross_entropy_and_grad(h.astype(np.float64), y, **kwargs)
        assert to_numpy(loss).dtype == np.float32
        np.testing.assert_allclose(to_numpy(loss), want_loss, rtol=1e-5)
        got = to_numpy(grad).astype(np.float64)
        np.testing.assert_allclose(got, want_grad, rtol=0, atol=2e-2 * np.abs(want_grad).max())


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"z_loss": -1e-4}, ValueError, "z_loss must be a finite number >= 0, got -0.0001"),
        ({"z_loss": math.nan}, ValueError, "z_loss must be a finite number >= 0, got nan"),
        ({"z_loss": math.inf}, ValueError, "z_loss must be a finite number >= 0, got inf"),
        ({"z_loss": "0.1"}, TypeError, "z_loss must be a finite number >= 0, got str"),
        ({"softcap": 0.0}, ValueError, "softcap must be None or a positive finite number, got 0.0"),
        ({"softcap": -30.0}, ValueError, "softcap must be None or a positive finite number, got -30.0"),
        ({"softcap": math.nan}, ValueError, "softcap must be None or a positive finite number, got nan"),
        ({"softcap": True}, TypeError, "softcap must be None or a positive finite number, got bool"),
        ({"temperature": 0}, ValueError, "temperature must be a positive finite number, got 0.0"),
        ({"temperature": math.inf}, ValueError, "temperature must be a positive finite number, got inf"),
        ({"temperature": None}, TypeError, "temperature must be a positive finite number, got NoneType"),
        # (the kernels multiply by 1 / T and 1 / (T cap): float32 could not hold 1e39)
        ({"temperature": 1e-20}, ValueError, r"temperature must be in \[1e-15, 1e\+15\], got 1e-20"),
        ({"softcap": 1e16}, ValueError, r"softcap must be in \[1e-15, 1e\+15\], got 1e\+16"),
    ],
)
def test_bad_options_are_clear_errors(xp, kwargs, error, match):
    a, y, _ = _data()
    for fn in (xc.cross_entropy, xc.loss_and_grad, xc.cross_entropy_grad):
        with pytest.raises(error, match=match):
            fn(make(xp, a), make(xp, y), **kwargs)


def test_every_entry_point_takes_them():
    a, y, _ = _data()
    kwargs = {"z_loss": 1e-2, "softcap": 3.0, "temperature": 0.8}
    want_loss, want_grad = ref.cross_entropy_and_grad(a, y, **kwargs)
    np.testing.assert_allclose(xc.cross_entropy(a, y, **kwargs), want_loss, rtol=1e-12)
    np.testing.assert_allclose(xc.cross_entropy_grad(a, y, **kwargs), want_grad, rtol=1e-11, atol=1e-16)
    layer = xc.CrossEntropyLoss(**kwargs)
    np.testing.assert_allclose(layer.forward(a, y), want_loss, rtol=1e-12)
    np.testing.assert_allclose(layer.backward(), want_grad, rtol=1e-11, atol=1e-16)
    # the layer's softmax: the model's distribution, of the final logits
    np.testing.assert_allclose(layer.softmax, ref.softmax(3.0 * np.tanh(a / 0.8 / 3.0)), rtol=1e-12)
    assert "softcap=3.0" in repr(layer) and "z_loss=0.01" in repr(layer)


def test_the_evaluator_measures_the_final_logits():
    a, y, _ = _data(n=60, c=9, seed=4)
    final = 2.0 * np.tanh((a / 1.5) / 2.0)
    got = xc.evaluate(a, y, softcap=2.0, temperature=1.5, top_k=(1, 2), batch_size=7)
    want = xc.evaluate(final, y, top_k=(1, 2))
    np.testing.assert_allclose(got.loss, ref.cross_entropy(final, y), rtol=1e-12)
    np.testing.assert_allclose(got.entropy, want.entropy, rtol=1e-12)
    assert got.accuracy == want.accuracy and got.count == want.count
    with pytest.raises(ValueError, match="different settings"):
        xc.Evaluator(softcap=2.0).merge(xc.Evaluator())
    with pytest.raises(ValueError, match="softcap must be None or a positive finite number"):
        xc.Evaluator(softcap=-1.0)


def test_vector_tanh_against_numpy_and_mpmath():
    # the kernels' tanh and 1 - tanh^2: every ISA this CPU runs; float32 on a dense strided
    # sample of its inputs against float64 NumPy, float64 on a sample against mpmath
    from backends import kernels

    from xentcy._cpu import _core

    bits = np.arange(0, 0x41A00000, 997, dtype=np.uint32)  # [0, 20] by bit pattern
    x32 = np.concatenate([bits.view(np.float32), -bits.view(np.float32)[::7]])
    rng = np.random.default_rng(0)
    x64 = np.concatenate(
        [rng.uniform(-1, 1, 3000), rng.uniform(-25, 25, 3000), np.geomspace(1e-300, 0.55, 300)]
    )
    mpmath.mp.dps = 40
    t_ref = np.array([float(mpmath.tanh(v)) for v in x64])
    d_ref = np.array([float(1 / mpmath.cosh(v) ** 2) for v in x64])
    for isa in _core.supported_isas():
        with kernels(isa):
            t, d = np.empty_like(x32), np.empty_like(x32)
            _core.vector_tanh(x32, t, d)
            want = np.tanh(x32.astype(np.float64))
            ulp = np.abs(t - want) / np.spacing(np.abs(want).astype(np.float32)).astype(np.float64)
            assert ulp.max() <= 2.0, (isa, x32[np.argmax(ulp)], ulp.max())
            d_want = 1 / np.cosh(x32.astype(np.float64)) ** 2
            ok = d_want > np.finfo(np.float32).tiny
            rel = np.abs(d[ok] - d_want[ok]) / d_want[ok]
            assert rel.max() <= 5 * 2.0**-24, (isa, rel.max())  # (every input: 4.77, results/tanh_ulp.txt)
            t, d = np.empty_like(x64), np.empty_like(x64)
            _core.vector_tanh(x64, t, d)
            ulp = np.abs(t - t_ref) / np.spacing(np.abs(t_ref))
            assert ulp.max() <= 2.0, (isa, x64[np.argmax(ulp)], ulp.max())
            rel = np.abs(d - d_ref) / d_ref
            assert rel.max() <= 5 * 2.0**-53, (isa, rel.max())
            special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan])
            t, d = np.empty_like(special), np.empty_like(special)
            _core.vector_tanh(special, t, d)
            np.testing.assert_array_equal(t, [0.0, -0.0, 1.0, -1.0, np.nan])
            assert np.signbit(t[1]) and np.array_equal(d[:4], [1.0, 1.0, 0.0, 0.0])


def test_random_shapes_layouts_and_specials():
    # the transformed path's chunks over random shapes (few classes, rows of every size), memory
    # layouts (strided rows, column-major: copies or views), targets, non-finite logits and
    # options; run under AddressSanitizer by scripts/sanitize.sh. Finite rows against the
    # reference, relative to the size of the quantities (float32: 1e-4 of it).
    rng = np.random.default_rng(21)
    for case in range(60):
        dtype = (np.float32, np.float64)[case % 2]
        n = int(rng.integers(0, 40))
        c = int(rng.choice([1, 2, 3, 15, 16, 17, 63, 64, 65, 100, 1000, 1500]))
        a = rng.standard_normal((n, c)) * rng.choice([1.0, 10.0, 100.0])
        if n and rng.random() < 0.5:
            a[rng.integers(0, n), rng.integers(0, c)] = rng.choice([np.inf, -np.inf, np.nan])
        layout = rng.choice(["c", "f", "strided"])
        logits = a.astype(dtype)
        if layout == "f":
            logits = np.asfortranarray(logits)
        elif layout == "strided":
            logits = np.repeat(logits, 2, axis=0)[::2]
        if rng.random() < 0.5:
            target = rng.integers(0, c, n)
            target[rng.random(n) < 0.2] = -100
        else:
            target = rng.dirichlet(np.ones(c), n).astype(dtype) if n else np.zeros((0, c), dtype)
        kwargs = {
            "z_loss": float(rng.choice([0.0, 1e-4, 0.1])),
            "softcap": rng.choice([None, 0.5, 30.0]),
            "temperature": float(rng.choice([1.0, 0.3, 4.0])),
            "reduction": rng.choice(["sum", "none"]),
            "label_smoothing": float(rng.choice([0.0, 0.1])),
        }
        kwargs["softcap"] = None if kwargs["softcap"] is None else float(kwargs["softcap"])
        loss, grad = xc.loss_and_grad(logits, target, **kwargs)
        want_loss, want_grad = ref.cross_entropy_and_grad(logits.astype(np.float64), target, **kwargs)
        rtol = 1e-4 if dtype == np.float32 else 1e-10
        finite = np.isfinite(a).all(axis=1)
        if kwargs["reduction"] == "none":
            size = np.abs(want_loss[finite]) + 1
            assert np.all(np.abs(loss[finite] - want_loss[finite]) <= rtol * size * 10), case
        elif finite.all():
            assert abs(loss - want_loss) <= rtol * 10 * (abs(want_loss) + n), case
        np.testing.assert_allclose(grad[finite], want_grad[finite], rtol=0, atol=rtol * 10, err_msg=str(case))
