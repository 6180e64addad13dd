"""PyTorch on xentcy's kernels: zero-copy routing, autograd, torch.compile, torch.func.

References are torch's own loss and gradient, and gradcheck's finite differences; never
xentcy's other paths.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional
import xentcy as xc  # noqa: E402


def _data(n=16, c=7, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, dtype=dtype, generator=g), torch.randint(0, c, (n,), generator=g)


# -- zero-copy routing of plain xentcy calls


def test_torch_cpu_results_are_torch_and_match_torch():
    A, y = _data(dtype=torch.float32)
    loss, grad = xc.loss_and_grad(A, y)
    assert isinstance(loss, torch.Tensor) and isinstance(grad, torch.Tensor)
    ref = A.clone().requires_grad_()
    F.cross_entropy(ref, y).backward()
    torch.testing.assert_close(loss, F.cross_entropy(A, y), rtol=2e-6, atol=0)
    torch.testing.assert_close(grad, ref.grad, rtol=1e-5, atol=1e-7)


def test_out_and_inplace_write_the_tensors_own_memory():
    A, y = _data()
    G = torch.empty_like(A)
    _, grad = xc.loss_and_grad(A, y, out=G)
    assert grad is G and G.data_ptr() == grad.data_ptr()
    B = A.clone()
    ptr = B.data_ptr()
    _, grad2 = xc.loss_and_grad(B, y, inplace=True)
    assert grad2 is B and B.data_ptr() == ptr
    torch.testing.assert_close(B, G, rtol=0, atol=0)
    ref = A.clone().requires_grad_()
    F.cross_entropy(ref, y).backward()
    torch.testing.assert_close(G, ref.grad)


def test_routed_result_shares_memory_with_the_core_output():
    # the gradient is the core's buffer seen by torch, not a copy of it
    A, y = _data()
    _, grad = xc.loss_and_grad(A, y)
    assert np.shares_memory(grad.numpy(), grad.numpy())  # a CPU tensor whose memory NumPy can see
    assert grad.is_contiguous()


def test_tensor_that_requires_grad_takes_the_generic_path_and_is_differentiable():
    # the rule: the plain functions never detach; autograd tracks them through torch's ops
    A, y = _data()
    a = A.clone().requires_grad_()
    loss = xc.cross_entropy(a, y)
    assert loss.grad_fn is not None
    loss.backward()
    ref = A.clone().requires_grad_()
    F.cross_entropy(ref, y).backward()
    torch.testing.assert_close(a.grad, ref.grad)


def test_non_contiguous_tensor():
    A, y = _data(n=8, c=12)
    At = A.t().contiguous().t()  # column-major
    torch.testing.assert_close(xc.cross_entropy(At, y), F.cross_entropy(A, y))


def test_torch_logits_with_numpy_target_is_still_an_error():
    A, y = _data()
    with pytest.raises(TypeError, match="different array libraries"):
        xc.cross_entropy(A, y.numpy())


# -- xentcy.torch

xt = pytest.importorskip("xentcy.torch")


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("kw", [{}, {"weight": True}, {"ignore_index": 2}, {"label_smoothing": 0.1}])
def test_gradcheck_float64(reduction, kw):
    A, y = _data(n=6, c=5)
    kw = dict(kw)
    if kw.get("weight"):
        kw["weight"] = torch.rand(5, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) + 0.1
    a = A.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda t: xt.cross_entropy(t, y, reduction=reduction, **kw), (a,))
    torch.testing.assert_close(
        xt.cross_entropy(A, y, reduction=reduction, **kw), F.cross_entropy(A, y, reduction=reduction, **kw)
    )


def test_gradcheck_probability_targets_and_nd_layout():
    g = torch.Generator().manual_seed(1)
    A = torch.randn(3, 4, 5, dtype=torch.float64, generator=g, requires_grad=True)  # (N, C, d1)
    P = torch.softmax(torch.randn(3, 4, 5, dtype=torch.float64, generator=g), 1)
    assert torch.autograd.gradcheck(lambda t: xt.cross_entropy(t, P), (A,))
    torch.testing.assert_close(xt.cross_entropy(A, P), F.cross_entropy(A, P))


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-6), (torch.bfloat16, 1e-2)])
def test_matches_torch_in_low_precision(dtype, tol):
    A, y = _data(n=64, c=100, dtype=dtype)
    a, ref = A.clone().requires_grad_(), A.clone().requires_grad_()
    loss = xt.cross_entropy(a, y)
    loss.backward()
    F.cross_entropy(ref.float(), y).backward()
    assert loss.dtype == torch.float32  # float32 for half precision (api.md)
    assert a.grad.dtype == dtype
    torch.testing.assert_close(loss, F.cross_entropy(A.float(), y), rtol=tol, atol=0)
    torch.testing.assert_close(a.grad.float(), ref.grad.float(), rtol=tol, atol=tol / 100)


def test_second_derivative_is_a_clear_error():
    A, y = _data()
    a = A.clone().requires_grad_()
    (g,) = torch.autograd.grad(xt.cross_entropy(a, y), a, create_graph=True)
    with pytest.raises(RuntimeError, match="no second derivative"):
        g.sum().backward()


def test_torch_func_grad_and_vmap():
    A, y = _data()
    grad = torch.func.grad(lambda t: xt.cross_entropy(t, y))(A)
    torch.testing.assert_close(grad, torch.func.grad(lambda t: F.cross_entropy(t, y))(A))
    B = torch.randn(3, *A.shape, dtype=A.dtype)
    torch.testing.assert_close(
        torch.func.vmap(torch.func.grad(lambda t: xt.cross_entropy(t, y)))(B),
        torch.func.vmap(torch.func.grad(lambda t: F.cross_entropy(t, y)))(B),
    )


def test_backward_hands_the_fused_gradient_over_without_a_copy():
    A, y = _data(n=32, c=50, dtype=torch.float32)
    a = A.clone().requires_grad_()
    loss = xt.cross_entropy(a, y)
    ptr = loss.grad_fn.grad.data_ptr()  # the gradient the forward pass computed
    loss.backward()
    assert a.grad.data_ptr() == ptr
    ref = A.clone().requires_grad_()
    F.cross_entropy(ref, y).backward()
    torch.testing.assert_close(a.grad, ref.grad, rtol=1e-5, atol=1e-7)


def test_retained_graph_backward_accumulates_every_time():
    # the handed-over gradient becomes a.grad, which the next backward adds to in place: the
    # retained graph computes it again rather than reuse memory that a.grad now owns
    A, y = _data(n=8, c=5)
    a = A.clone().requires_grad_()
    loss = xt.cross_entropy(a, y, label_smoothing=0.1)
    ref = A.clone().requires_grad_()
    F.cross_entropy(ref, y, label_smoothing=0.1).backward()
    for k in (1, 2, 3):
        loss.backward(retain_graph=True)
        torch.testing.assert_close(a.grad, k * ref.grad)
    a.grad.mul_(0.5)  # the caller changes .grad in place between two backward passes
    loss.backward()
    torch.testing.assert_close(a.grad, 2.5 * ref.grad)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_an_incoming_gradient_other_than_one_scales_the_result(reduction):
    A, y = _data(n=6, c=4)
    scale = torch.tensor(3.0, dtype=A.dtype)
    if reduction == "none":
        scale = torch.linspace(0.5, 3, 6, dtype=A.dtype)
    grads = []
    for loss_fn in (xt.cross_entropy, F.cross_entropy):
        a = A.clone().requires_grad_()
        (loss_fn(a, y, reduction=reduction) * scale).sum().backward()
        grads.append(a.grad)
    torch.testing.assert_close(*grads)


def _train(loss_fn, steps=50, compile_=False):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(64, 10, generator=g)
    y = torch.randint(0, 4, (64,), generator=g)
    model = torch.nn.Linear(10, 4)
    with torch.no_grad():
        model.weight.copy_(torch.randn(4, 10, generator=g) * 0.1)
        model.bias.zero_()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)

    def step():
        opt.zero_grad()
        loss = loss_fn(model(X), y)
        loss.backward()
        opt.step()
        return loss.detach()

    if compile_:
        step = torch.compile(step)
    return torch.stack([step() for _ in range(steps)])


def test_training_loop_follows_torchs_loss():
    ours, theirs = _train(xt.CrossEntropyLoss()), _train(torch.nn.CrossEntropyLoss())
    assert ours[-1] < 0.9 * ours[0]  # it trains (random labels: the loss falls slowly)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_training_loop_under_torch_compile():
    import torch._dynamo

    torch._dynamo.reset()
    ours = _train(xt.CrossEntropyLoss(), steps=10, compile_=True)
    theirs = _train(torch.nn.CrossEntropyLoss(), steps=10)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_compile_fullgraph_has_no_graph_break():
    import torch._dynamo

    torch._dynamo.reset()
    A, y = _data(n=32, c=50, dtype=torch.float32)
    f = torch.compile(lambda t, u: xt.cross_entropy(t, u), fullgraph=True)
    a = A.clone().requires_grad_()
    f(a, y).backward()
    ref = A.clone().requires_grad_()
    F.cross_entropy(ref, y).backward()
    torch.testing.assert_close(a.grad, ref.grad)


# -- torch CUDA tensors through CuPy (scripts/gpu_check.sh; not yet run on hardware)


def _cuda_with_cupy():
    import importlib.util

    return torch.cuda.is_available() and importlib.util.find_spec("cupy") is not None


@pytest.mark.skipif(not _cuda_with_cupy(), reason="needs a GPU: torch CUDA tensors and CuPy")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_torch_cuda_tensors_run_on_xentcys_kernels(dtype):
    A, y = _data(n=256, c=1000, dtype=torch.float32)
    A, y = A.to("cuda", dtype), y.cuda()
    G = torch.empty_like(A)
    loss, grad = xc.loss_and_grad(A, y, out=G)
    assert grad is G and loss.device.type == "cuda"
    ref = A.float().clone().requires_grad_()
    F.cross_entropy(ref, y).backward()
    tol = 2e-6 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(loss.float(), F.cross_entropy(A.float(), y), rtol=tol, atol=0)
    torch.testing.assert_close(grad.float(), ref.grad, rtol=tol, atol=tol / 100)
    a = A.clone().requires_grad_()
    xt.cross_entropy(a, y).backward()
    torch.testing.assert_close(a.grad.float(), ref.grad, rtol=tol, atol=tol / 100)


# -- xentcy.torch.linear_cross_entropy


def _linear_data(seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(9, 4, dtype=torch.float64, generator=g)
    w = torch.randn(7, 4, dtype=torch.float64, generator=g)
    b = torch.randn(7, dtype=torch.float64, generator=g)
    y = torch.randint(0, 7, (9,), generator=g)
    y[2] = -100
    return h, w, b, y


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_linear_cross_entropy_gradients_match_torch(reduction):
    h, w, b, y = _linear_data()
    # an incoming gradient other than 1: a factor (per row for "none")
    scale = torch.tensor(2.0, dtype=h.dtype)
    if reduction == "none":
        scale = torch.linspace(0.5, 2, 9, dtype=h.dtype)
    results = []
    for fn in (
        lambda a, c, d: xt.linear_cross_entropy(a, c, y, bias=d, reduction=reduction, chunk_size=4,
                                                label_smoothing=0.1),
        lambda a, c, d: F.cross_entropy(F.linear(a, c, d), y, reduction=reduction, label_smoothing=0.1),
    ):  # fmt: skip
        a, c, d = (x.clone().requires_grad_() for x in (h, w, b))
        loss = fn(a, c, d)
        (loss * scale).sum().backward()
        results.append((loss.detach(), a.grad, c.grad, d.grad))
    for ours, theirs in zip(*results, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-14)


def test_linear_cross_entropy_gradcheck_and_compile():
    import torch._dynamo

    h, w, b, y = _linear_data(1)
    args = tuple(x.clone().requires_grad_() for x in (h, w, b))
    assert torch.autograd.gradcheck(
        lambda a, c, d: xt.linear_cross_entropy(a, c, y, bias=d, reduction="none", chunk_size=3), args
    )
    torch._dynamo.reset()
    f = torch.compile(lambda a, c: xt.linear_cross_entropy(a, c, y), fullgraph=True)
    a, c = h.clone().requires_grad_(), w.clone().requires_grad_()
    f(a, c).backward()
    ra, rc = h.clone().requires_grad_(), w.clone().requires_grad_()
    F.cross_entropy(F.linear(ra, rc), y).backward()
    torch.testing.assert_close(c.grad, rc.grad)
    torch.testing.assert_close(a.grad, ra.grad)


def test_linear_cross_entropy_hands_its_gradients_over_and_recomputes_them_for_a_retained_graph():
    h, w, _, y = _linear_data(2)
    a, c = h.clone().requires_grad_(), w.clone().requires_grad_()
    loss = xt.linear_cross_entropy(a, c, y)
    ptr = loss.grad_fn.grads[1].data_ptr()  # d_classifier of the forward pass
    loss.backward(retain_graph=True)
    assert c.grad.data_ptr() == ptr  # no copy
    ra, rc = h.clone().requires_grad_(), w.clone().requires_grad_()
    F.cross_entropy(F.linear(ra, rc), y).backward()
    for k in (2, 3):
        loss.backward(retain_graph=True)
        torch.testing.assert_close(c.grad, k * rc.grad)
        torch.testing.assert_close(a.grad, k * ra.grad)


def test_denominator_for_gradient_accumulation():
    # two micro-batches, each divided by the tokens of both: their gradients add up to the whole's
    A, y = _data(n=12, c=5)
    y[::4] = -100
    total = int((y != -100).sum())
    whole = A.clone().requires_grad_()
    F.cross_entropy(whole, y).backward()
    parts = A.clone().requires_grad_()
    for s in (slice(0, 5), slice(5, 12)):
        xt.cross_entropy(parts[s], y[s], denominator=total).backward()
    torch.testing.assert_close(parts.grad, whole.grad)
    h, w = torch.randn(12, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    hw = h.clone().requires_grad_()
    F.cross_entropy(F.linear(hw, w), y).backward()
    hp = h.clone().requires_grad_()
    for s in (slice(0, 5), slice(5, 12)):
        xt.linear_cross_entropy(hp[s], w, y[s], denominator=torch.tensor(total)).backward()
    torch.testing.assert_close(hp.grad, hw.grad)


@pytest.mark.parametrize("bad, error", [("8", TypeError), (True, TypeError), (0, ValueError)])
def test_denominator_is_checked_as_in_xentcy(bad, error):
    # the op takes a float: the wrapper checks the value first, as xentcy.cross_entropy does
    A, y = _data()
    h, w = torch.randn(16, 3, dtype=torch.float64), torch.randn(7, 3, dtype=torch.float64)
    with pytest.raises(error, match="denominator must be a positive"):
        xt.cross_entropy(A, y, denominator=bad)
    with pytest.raises(error, match="denominator must be a positive"):
        xt.linear_cross_entropy(h, w, y, denominator=bad)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_language_model_options_against_torch_formulas(reduction):
    # z_loss, softcap and temperature, against torch's autograd of the formulas written out;
    # gradcheck; torch.compile without a graph break
    A, y = _data(n=12, c=9, seed=4)
    A = A * 4
    y[2] = -100
    w = torch.linspace(0.5, 2.0, 9, dtype=torch.float64)
    z, cap, t = 1e-2, 3.0, 0.7

    def ref(a):
        x = cap * torch.tanh((a / t) / cap)
        keep = y != -100
        rows = F.cross_entropy(x, y, weight=w, label_smoothing=0.1, reduction="none")
        rows = rows + torch.where(keep, z * torch.logsumexp(x, 1) ** 2, 0.0)
        return rows if reduction == "none" else rows.sum() / w[y[keep]].sum()

    opts = dict(weight=w, label_smoothing=0.1, reduction=reduction, z_loss=z, softcap=cap, temperature=t)
    a1, a2 = A.clone().requires_grad_(), A.clone().requires_grad_()
    ours, theirs = xt.cross_entropy(a1, y, **opts), ref(a2)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=0)
    ours.sum().backward()
    theirs.sum().backward()
    torch.testing.assert_close(a1.grad, a2.grad, rtol=1e-11, atol=1e-15)
    assert torch.autograd.gradcheck(lambda a: xt.cross_entropy(a, y, **opts), (A.clone().requires_grad_(),))
    f = torch.compile(lambda a: xt.cross_entropy(a, y, **opts), fullgraph=True)
    torch.testing.assert_close(f(A), ref(A), rtol=1e-12, atol=0)
    layer = xt.CrossEntropyLoss(weight=w, label_smoothing=0.1, reduction=reduction, z_loss=z, softcap=cap,
                                temperature=t)  # fmt: skip
    torch.testing.assert_close(layer(A, y), ref(A), rtol=1e-12, atol=0)
    assert "softcap=3.0" in repr(layer)
    h = torch.randn(12, 4, dtype=torch.float64, requires_grad=True)
    cls = torch.randn(9, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: xt.linear_cross_entropy(a, b, y, **opts), (h, cls))
