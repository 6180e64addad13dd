"""linear_cross_entropy and linear_loss_and_grad: a linear layer's loss without the N x V logits.

References: torch's autograd of F.linear + F.cross_entropy in float64 (where torch is
installed) and float64 NumPy written here; never xentcy's other paths. Every backend of
the conformance suite runs through the ``xp`` fixture.
"""

import numpy as np
import pytest
from backends import make, to_numpy

import xentcy as xc


def _problem(n=37, h=6, v=11, dtype=np.float64, seed=0, ignored=(3, 17)):
    rng = np.random.default_rng(seed)
    hidden = rng.standard_normal((n, h)).astype(dtype)
    classifier = (rng.standard_normal((v, h)) / np.sqrt(h)).astype(dtype)
    bias = rng.standard_normal(v).astype(dtype)
    target = rng.integers(0, v, n)
    target[list(ignored)] = -100
    return hidden, classifier, bias, target


def _reference(hidden, classifier, target, bias=None, weight=None, eps=0.0, reduction="mean"):
    """Loss and gradients in float64 NumPy, torch's rules, through the full logits."""
    h, w = hidden.astype(np.float64), classifier.astype(np.float64)
    logits = h @ w.T + (0.0 if bias is None else bias.astype(np.float64))
    n, v = logits.shape
    wt = np.ones(v) if weight is None else np.asarray(weight, np.float64)
    keep = target != -100
    lp = logits - logits.max(1, keepdims=True)
    lp -= np.log(np.exp(lp).sum(1, keepdims=True))
    q = np.zeros((n, v))
    q[keep, target[keep]] = 1.0
    q = np.where(keep[:, None], (1 - eps) * q + eps / v, 0.0)
    rows = -(wt * q * lp).sum(1)
    g = np.exp(lp) * (wt * q).sum(1, keepdims=True) - wt * q
    d = wt[target[keep]].sum()
    if reduction == "mean":
        loss, g = rows.sum() / d, g / d
    elif reduction == "sum":
        loss = rows.sum()
    else:
        loss = rows
    return loss, g @ w, g.T @ h, g.sum(0)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("chunk_size", [None, 1, 5, 37, 64])
def test_numpy_float64_against_the_full_logits(reduction, chunk_size):
    hidden, classifier, bias, target = _problem()
    weight = np.linspace(0.5, 2.0, classifier.shape[0])
    kw = dict(bias=bias, weight=weight, label_smoothing=0.1, reduction=reduction, chunk_size=chunk_size)
    loss, d_h, d_w, d_b = xc.linear_loss_and_grad(hidden, classifier, target, **kw)
    ref = _reference(hidden, classifier, target, bias, weight, eps=0.1, reduction=reduction)
    np.testing.assert_allclose(loss, ref[0], rtol=1e-12)
    np.testing.assert_allclose(d_h, ref[1], rtol=1e-11, atol=1e-15)
    np.testing.assert_allclose(d_w, ref[2], rtol=1e-11, atol=1e-15)
    np.testing.assert_allclose(d_b, ref[3], rtol=1e-11, atol=1e-15)
    assert (d_h[[3, 17]] == 0).all()  # ignored rows: no gradient
    np.testing.assert_allclose(xc.linear_cross_entropy(hidden, classifier, target, **kw), ref[0], rtol=1e-12)


def test_float32_does_not_depend_on_the_chunk_size_beyond_rounding():
    # float32: chunks change the order of d_classifier's sums (BLAS, one gemm a chunk), so
    # the results agree to float32 rounding of those sums, 1e-5 of their scale, not bitwise;
    # the loss and d_hidden are per row and agree exactly
    hidden, classifier, bias, target = _problem(n=300, h=16, v=50, dtype=np.float32, seed=1)
    results = [
        xc.linear_loss_and_grad(hidden, classifier, target, bias=bias, chunk_size=c) for c in (300, 7, 64)
    ]
    ref = _reference(hidden, classifier, target, bias)
    for loss, d_h, d_w, d_b in results:
        assert loss.dtype == np.float32 and d_w.dtype == np.float32 and d_b.dtype == np.float32
        np.testing.assert_allclose(loss, ref[0], rtol=2e-6)
        np.testing.assert_allclose(d_w, ref[2], rtol=1e-4, atol=1e-5 * np.abs(ref[2]).max())
        np.testing.assert_array_equal(d_h, results[0][1])
        np.testing.assert_array_equal(loss, results[0][0])


def test_batch_axes_and_no_bias():
    hidden, classifier, _, target = _problem(n=24)
    h3, y3 = hidden.reshape(4, 6, -1), target.reshape(4, 6)
    loss, d_h, d_w, d_b = xc.linear_loss_and_grad(h3, classifier, y3, reduction="none", chunk_size=5)
    ref = _reference(hidden, classifier, target, reduction="none")
    assert d_b is None and d_h.shape == h3.shape and loss.shape == (4, 6)
    np.testing.assert_allclose(loss.reshape(-1), ref[0], rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(d_h.reshape(24, -1), ref[1], rtol=1e-11, atol=1e-15)


def test_against_torch_autograd():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    hidden, classifier, bias, target = _problem(n=29, h=5, v=13, seed=3)
    weight = np.random.default_rng(4).uniform(0.5, 2, 13)
    ht, wt, bt = (torch.tensor(x, requires_grad=True) for x in (hidden, classifier, bias))
    loss_t = F.cross_entropy(F.linear(ht, wt, bt), torch.tensor(target), weight=torch.tensor(weight),
                             label_smoothing=0.2)  # fmt: skip
    loss_t.backward()
    loss, d_h, d_w, d_b = xc.linear_loss_and_grad(
        hidden, classifier, target, bias=bias, weight=weight, label_smoothing=0.2, chunk_size=4
    )
    np.testing.assert_allclose(loss, loss_t.item(), rtol=1e-12)
    for got, want in ((d_h, ht.grad), (d_w, wt.grad), (d_b, bt.grad)):
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-10, atol=1e-14)


def _torch_lm_loss(torch, logits, target, weight, eps, z, cap, temperature, reduction):
    """The language-model options written out in torch: logits / T, cap tanh(. / cap), then
    F.cross_entropy plus z lse^2 per counted row (unweighted), reduced with it."""
    F = torch.nn.functional
    x = logits / temperature
    x = cap * torch.tanh(x / cap)
    per_row = F.cross_entropy(x, target, weight=weight, label_smoothing=eps, reduction="none")
    keep = target != -100
    per_row = per_row + torch.where(keep, z * torch.logsumexp(x, 1) ** 2, 0.0)
    if reduction == "none":
        return per_row
    if reduction == "sum":
        return per_row.sum()
    return per_row.sum() / weight[target[keep]].sum()


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_language_model_options_against_torch_autograd(reduction):
    # z_loss, softcap and temperature with every other keyword, in float64, against torch's
    # autograd of the formulas; chunk sizes that do and do not divide N give the same results
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    hidden, classifier, bias, target = _problem(n=29, h=5, v=13, seed=7)
    hidden *= 3  # logits out to the soft-cap's bend
    weight = np.random.default_rng(8).uniform(0.5, 2, 13)
    options = {"z_loss": 1e-2, "softcap": 4.0, "temperature": 0.8}
    ht, wt, bt = (torch.tensor(x, requires_grad=True) for x in (hidden, classifier, bias))
    loss_t = _torch_lm_loss(torch, F.linear(ht, wt, bt), torch.tensor(target), torch.tensor(weight),
                            0.1, options["z_loss"], options["softcap"], options["temperature"],
                            reduction)  # fmt: skip
    loss_t.sum().backward()
    for chunk_size in (4, 29, None):
        loss, d_h, d_w, d_b = xc.linear_loss_and_grad(
            hidden, classifier, target, bias=bias, weight=weight, label_smoothing=0.1, reduction=reduction,
            chunk_size=chunk_size, **options,
        )
        np.testing.assert_allclose(loss, loss_t.detach().numpy(), rtol=1e-12)
        if reduction == "none":
            continue  # (linear_loss_and_grad's gradients are of the sum there)
        for got, want in ((d_h, ht.grad), (d_w, wt.grad), (d_b, bt.grad)):
            np.testing.assert_allclose(got, want.numpy(), rtol=1e-10, atol=1e-14)


def test_language_model_options_by_finite_differences():
    hidden, classifier, bias, target = _problem(n=9, h=3, v=5, seed=9, ignored=(2,))
    options = {"z_loss": 0.05, "softcap": 2.0, "temperature": 1.7}
    _, d_h, d_w, d_b = xc.linear_loss_and_grad(hidden, classifier, target, bias=bias, **options)
    step = 1e-6

    def loss_of(which, x):
        arrays = {"h": hidden, "w": classifier, "b": bias, which: x}
        return float(xc.linear_cross_entropy(arrays["h"], arrays["w"], target, bias=arrays["b"], **options))

    for which, array, grad in (("h", hidden, d_h), ("w", classifier, d_w), ("b", bias, d_b)):
        for index in [(0,) * array.ndim, tuple(n - 1 for n in array.shape)]:
            up, down = array.copy(), array.copy()
            up[index] += step
            down[index] -= step
            numeric = (loss_of(which, up) - loss_of(which, down)) / (2 * step)
            assert abs(grad[index] - numeric) <= 1e-7 * max(1.0, abs(numeric)), (index, grad[index], numeric)


def test_every_backend(xp):
    hidden, classifier, bias, target = _problem(n=20, h=4, v=7, seed=5, ignored=(2,))
    args = [make(xp, hidden), make(xp, classifier), make(xp, target)]
    loss, d_h, d_w, d_b = xc.linear_loss_and_grad(*args, bias=make(xp, bias), chunk_size=6)
    assert type(d_w) is type(args[1])
    ref = _reference(hidden, classifier, target, bias)
    np.testing.assert_allclose(to_numpy(loss), ref[0], rtol=1e-12)
    np.testing.assert_allclose(to_numpy(d_h), ref[1], rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(to_numpy(d_w), ref[2], rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(to_numpy(d_b), ref[3], rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(to_numpy(xc.linear_cross_entropy(*args, chunk_size=6)),
                               _reference(hidden, classifier, target)[0], rtol=1e-12)  # fmt: skip


def test_any_memory_layout():
    # column-major and strided inputs: the results of the C-ordered ones
    hidden, classifier, bias, target = _problem(n=21, h=5, v=9, seed=6)
    ref = _reference(hidden, classifier, target, bias)
    for h, w in (
        (np.asfortranarray(hidden), np.asfortranarray(classifier)),
        (np.repeat(hidden, 2, axis=1)[:, ::2], np.repeat(classifier, 3, axis=0)[::3]),
    ):
        loss, d_h, d_w, d_b = xc.linear_loss_and_grad(h, w, target, bias=bias, chunk_size=4)
        np.testing.assert_allclose(loss, ref[0], rtol=1e-12)
        np.testing.assert_allclose(d_h, ref[1], rtol=1e-11, atol=1e-15)
        np.testing.assert_allclose(d_w, ref[2], rtol=1e-11, atol=1e-15)


def test_everything_ignored_gives_a_nan_mean_and_zero_gradients():
    hidden, classifier, _, target = _problem(n=5, ignored=())
    target[:] = -100
    loss, d_h, d_w, _ = xc.linear_loss_and_grad(hidden, classifier, target)
    assert np.isnan(loss) and not d_h.any() and not d_w.any()


@pytest.mark.parametrize(
    "case, error, match",
    [
        ("H differs", ValueError, r"classifier must have shape \(V, 6\)"),
        ("dtypes differ", TypeError, "classifier must have hidden's dtype float64, got float32"),
        ("bias shape", ValueError, r"bias must have shape \(11,\)"),
        ("bias dtype", TypeError, "bias must have hidden's dtype float64, got float32"),
        ("probabilities", ValueError, "class-index targets only"),
        ("chunk_size 0", ValueError, "chunk_size must be a positive int or None, got 0"),
        ("index out of range", ValueError, "class index 11, outside"),
        ("target shape", ValueError, "target of class indices must have the logits' shape"),
        ("integer hidden", TypeError, "hidden must be a real floating array"),
    ],
)
def test_bad_inputs_are_clear_errors(case, error, match):
    hidden, classifier, bias, target = _problem()
    kw = {}
    if case == "H differs":
        classifier = classifier[:, :5]
    elif case == "dtypes differ":
        classifier = classifier.astype(np.float32)
    elif case == "bias shape":
        kw["bias"] = bias[:4]
    elif case == "bias dtype":
        kw["bias"] = bias.astype(np.float32)
    elif case == "probabilities":
        target = np.full((37, 11), 1 / 11)
    elif case == "chunk_size 0":
        kw["chunk_size"] = 0
    elif case == "index out of range":
        target[5] = 11
    elif case == "target shape":
        target = target[:30]
    elif case == "integer hidden":
        hidden = hidden.astype(np.int64)
    with pytest.raises(error, match=match):
        xc.linear_loss_and_grad(hidden, classifier, target, **kw)


@pytest.mark.only_xp_backends("cuda_host", "cupy", reason="half-precision inputs run on the GPU backend")
def test_half_precision_accumulates_d_classifier_in_float32(xp):
    # float16 hidden states and classifier, one row a chunk: 512 chunks' d_classifier parts summed
    # in float16 would be off by hundreds of its ulps; in float32 and rounded once they are
    # within a few of the float64 reference of the same (float16) inputs
    rng = np.random.default_rng(12)
    hidden = (rng.standard_normal((512, 8)) + 1.0).astype(np.float16)
    classifier = (rng.standard_normal((5, 8)) / 3).astype(np.float16)
    bias = rng.standard_normal(5).astype(np.float16)
    target = rng.integers(0, 5, 512)
    loss, d_h, d_w, d_b = xc.linear_loss_and_grad(
        make(xp, hidden), make(xp, classifier), make(xp, target), bias=make(xp, bias), reduction="sum",
        chunk_size=1,
    )
    want = _reference(hidden, classifier, target, bias, reduction="sum")
    assert to_numpy(d_w).dtype == np.float16 and to_numpy(loss).dtype == np.float32
    np.testing.assert_allclose(to_numpy(loss), want[0], rtol=2e-3)
    for got, ref_value in ((d_w, want[2]), (d_b, want[3])):
        got = to_numpy(got).astype(np.float64)
        np.testing.assert_allclose(got, ref_value, rtol=3e-3, atol=3e-3 * np.abs(ref_value).max())


def test_language_model_options_on_every_backend(xp):
    import reference as ref

    hidden, classifier, bias, target = _problem(n=20, h=4, v=7, seed=13, ignored=(2,))
    options = {"z_loss": 1e-2, "softcap": 2.0, "temperature": 0.9}
    loss, d_h, d_w, d_b = xc.linear_loss_and_grad(
        make(xp, hidden), make(xp, classifier), make(xp, target), bias=make(xp, bias), chunk_size=6, **options
    )
    want_loss, g = ref.cross_entropy_and_grad(hidden @ classifier.T + bias, target, **options)
    np.testing.assert_allclose(to_numpy(loss), want_loss, rtol=1e-12)
    np.testing.assert_allclose(to_numpy(d_h), g @ classifier, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(to_numpy(d_w), g.T @ hidden, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(to_numpy(d_b), g.sum(0), rtol=1e-10, atol=1e-14)
