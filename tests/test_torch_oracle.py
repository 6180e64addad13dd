"""xentcy (NumPy inputs) against torch.nn.functional.cross_entropy in float64.

Torch is the reference for weights, ignore_index, label_smoothing and the
reductions (api.md, Semantics); its class axis is 1, so other layouts are
moved there before torch sees them. The gradient is torch's autograd
gradient of the reduced loss (of the sum for reduction="none"). Cases where
torch deliberately differs (D = 0, zero-mass classes at -inf) are in
test_edge_cases.py instead.
"""

import itertools

import numpy as np
import pytest

import xentcy as xc

# NumPy arrays on the CPU core, and on the CUDA backend through its host-compiled kernels
pytestmark = pytest.mark.usefixtures("numpy_backend")

torch = pytest.importorskip("torch", reason="torch is the oracle of this module")
F = torch.nn.functional

# (id, logits shape, class axis)
LAYOUTS = [
    ("N8_C5", (8, 5), -1),
    ("N1_C3", (1, 3), -1),
    ("N6_C1", (6, 1), -1),
    ("N_C_d1_axis1", (4, 5, 3), 1),
    ("C_d1_d2_axis0", (5, 3, 4), 0),
    ("1d_C5", (5,), -1),
]
REDUCTIONS = ["mean", "sum", "none"]
SMOOTHING = [0.0, 0.1, 1.0]


def to_torch_layout(a, axis):
    """Move the class axis of a NumPy array to where torch expects it."""
    return a if a.ndim == 1 else np.moveaxis(a, axis, 1)


def torch_loss_and_grad(logits, target, axis, reduction, weight, **kwargs):
    A = torch.tensor(to_torch_layout(logits, axis), requires_grad=True)
    T = torch.as_tensor(np.asarray(target))
    if T.is_floating_point():
        T = torch.tensor(to_torch_layout(np.asarray(target), axis))
    W = None if weight is None else torch.tensor(weight)
    L = F.cross_entropy(A, T, weight=W, reduction=reduction, **kwargs)
    (L.sum() if reduction == "none" else L).backward()
    grad = A.grad.numpy()
    return L.detach().numpy(), (grad if grad.ndim == 1 else np.moveaxis(grad, 1, axis))


def assert_matches_torch(actual, expected):
    actual = np.asarray(actual)
    assert actual.dtype == np.float64
    assert actual.shape == expected.shape
    scale = np.abs(expected).max() if expected.size else 0.0
    # All-zero expectations (C = 1) allow rounding-sized residue.
    atol = 1e-15 * scale if scale > 0 else 1e-15
    np.testing.assert_allclose(actual, expected, rtol=1e-12, atol=atol)


def check_against_torch(logits, target, axis, reduction, weight, **kwargs):
    expected_loss, expected_grad = torch_loss_and_grad(logits, target, axis, reduction,
                                                       weight, **kwargs)
    kw = dict(kwargs, axis=axis, reduction=reduction, weight=weight)
    assert_matches_torch(xc.cross_entropy(logits, target, **kw), expected_loss)
    assert_matches_torch(xc.cross_entropy_grad(logits, target, **kw), expected_grad)
    loss, grad = xc.loss_and_grad(logits, target, **kw)
    assert_matches_torch(loss, expected_loss)
    assert_matches_torch(grad, expected_grad)
    xent = xc.CrossEntropyLoss(**kw)
    assert_matches_torch(xent.forward(logits, target), expected_loss)
    assert_matches_torch(xent.backward(), expected_grad)


def case_id(values):
    return "-".join(str(v) for v in values)


INDEX_GRID = list(itertools.product(
    LAYOUTS, [False, True], ["default_ignored", "ignore_in_range"], SMOOTHING, REDUCTIONS))


@pytest.mark.parametrize(
    "seed, layout, weighted, ignore, smoothing, reduction",
    [pytest.param(seed, *case, id=case_id((case[0][0], "weight" if case[1] else "unweighted")
                                          + case[2:]))
     for seed, case in enumerate(INDEX_GRID)])
def test_index_targets_match_torch(seed, layout, weighted, ignore, smoothing, reduction):
    _, shape, axis = layout
    rng = np.random.default_rng(seed)
    C = shape[axis]
    logits = 2.0 * rng.standard_normal(shape)
    weight = rng.uniform(0.2, 2.0, C) if weighted else None
    ignore_index = -100 if ignore == "default_ignored" else 1
    batch = tuple(n for i, n in enumerate(shape) if i != axis % len(shape))
    if batch:
        target = rng.integers(0, C, batch)
        flat = target.reshape(-1)
        if ignore == "default_ignored":
            flat[rng.random(flat.size) < 0.3] = -100
        flat[0] = 0  # at least one counted sample: torch's gradient is NaN at D = 0
    else:
        target = 0 if C > 1 and ignore == "ignore_in_range" else int(rng.integers(0, C))
    check_against_torch(logits, target, axis, reduction, weight,
                        ignore_index=ignore_index, label_smoothing=smoothing)


PROBABILITY_GRID = list(itertools.product(
    LAYOUTS, [False, True], ["soft", "soft_unnormalized", "one_hot"], SMOOTHING,
    REDUCTIONS))


@pytest.mark.parametrize(
    "seed, layout, weighted, kind, smoothing, reduction",
    [pytest.param(seed, *case, id=case_id((case[0][0], "weight" if case[1] else "unweighted")
                                          + case[2:]))
     for seed, case in enumerate(PROBABILITY_GRID)])
def test_probability_targets_match_torch(seed, layout, weighted, kind, smoothing, reduction):
    _, shape, axis = layout
    rng = np.random.default_rng(seed)
    C = shape[axis]
    logits = 2.0 * rng.standard_normal(shape)
    weight = rng.uniform(0.2, 2.0, C) if weighted else None
    if kind == "one_hot":
        target = np.eye(C)[np.argmax(rng.random(shape), axis=axis)]
        target = np.moveaxis(target, -1, axis % len(shape))
    else:
        target = rng.random(shape)
        if kind == "soft":
            target /= target.sum(axis=axis, keepdims=True)
    check_against_torch(logits, target, axis, reduction, weight, label_smoothing=smoothing)


@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_softmax_log_softmax_logsumexp_match_torch(axis):
    x = 3.0 * np.random.default_rng(2).standard_normal((4, 5, 6))
    X = torch.tensor(x)
    np.testing.assert_allclose(xc.softmax(x, axis=axis), torch.softmax(X, axis).numpy(),
                               rtol=1e-13, atol=1e-17)
    np.testing.assert_allclose(xc.log_softmax(x, axis=axis),
                               torch.log_softmax(X, axis).numpy(), rtol=1e-13)
    for keepdims in (False, True):
        np.testing.assert_allclose(xc.logsumexp(x, axis=axis, keepdims=keepdims),
                                   torch.logsumexp(X, axis, keepdims).numpy(), rtol=1e-13)
