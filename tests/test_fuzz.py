"""Differential fuzzing of every public function on the NumPy backend (api.md, Errors).

hypothesis draws the structure of a call (shape, class axis, memory layout,
dtypes, special logits, the kind, dtype and values of the target, weights,
smoothing, reduction, ``out=``/``inplace=``) and the instruction set whose
kernels run it (AVX-512, AVX2, baseline: every one this CPU has); NumPy draws
the values from a seed that hypothesis chose. Every case either

- raises a ValueError or TypeError that names an argument which the rules
  below (written from api.md, not from xentcy) say is wrong, or
- matches the float64 reference of ``tests/reference.py``, NaN for NaN and
  inf for inf, within a tolerance relative to the size of the terms of each
  quantity, and, where torch means the same thing, torch in float64 too.

``XENTCY_FUZZ_EXAMPLES`` sets the examples per function (default 2000, as in
CI); the runs are derandomized, so CI tries the same cases every time. The
counts (cases, errors raised, matched, checked against torch) are printed at
the end of the run.
"""

import collections
import math
import os
import re

import numpy as np
import pytest
import reference as ref
from backends import kernels

import xentcy as xc
from xentcy._cpu import _core

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

try:
    import torch
except ImportError:  # the sanitizer run has no torch: the float64 reference alone
    torch = None

EXAMPLES = int(os.environ.get("XENTCY_FUZZ_EXAMPLES", "2000"))
FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
ISAS = _core.supported_isas()
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
INDEX_DTYPES = [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64]
PROB_DTYPES = [np.float16, np.float32, np.float64, np.int64, np.uint8, np.bool_]
# relative tolerance of a result against the size of its terms
RTOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}

STATS = collections.defaultdict(collections.Counter)


# the reference meets NaN, inf and overflow on purpose
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


@pytest.fixture(scope="module", autouse=True)
def report_counts(request):
    """Hands the counts to tests/conftest.py, which prints them in the run's summary."""
    request.config.xentcy_fuzz_counts = (EXAMPLES, ISAS, STATS)
    yield


# ---------------------------------------------------------------- drawing a case


_INVALID = object()


def _usually(draw, valid, invalid):
    """One of ``valid`` or, about one time in 13, one of ``invalid``: most cases should compute."""
    choice = draw(st.sampled_from(valid * max(1, 12 // len(valid)) + [_INVALID]))
    return draw(st.sampled_from(invalid)) if choice is _INVALID else choice


def _fits(value, dtype):
    info = np.iinfo(dtype)
    return info.min <= value <= info.max


def _relayout(rng, x, layout):
    """x with the same values in another memory layout."""
    if layout == "f":
        return np.asfortranarray(x)
    if layout == "strided" and x.ndim:
        axis = int(rng.integers(x.ndim))
        wide = np.repeat(x, 2, axis=axis)
        return wide[(slice(None),) * axis + (slice(None, None, 2),)]
    if layout == "reversed" and x.ndim:
        axis = int(rng.integers(x.ndim))
        flip = (slice(None),) * axis + (slice(None, None, -1),)
        return np.ascontiguousarray(x[flip])[flip]
    if layout == "readonly":
        x = x.copy()
        x.setflags(write=False)
    return x


@st.composite
def logits_cases(draw):
    """(logits, class axis): float32 or float64, 1-4 dimensions, any layout, special values."""
    dtype = np.dtype(draw(st.sampled_from([np.float32, np.float64])))
    ndim = draw(st.sampled_from([1, 2, 2, 2, 3, 4]))
    num_classes = draw(
        st.one_of(st.integers(1, 20), st.integers(21, 80), st.sampled_from([0, 100, 257, 1000, 1500]))
    )
    if ndim == 2:
        batch = [draw(st.integers(0, 40))]
    else:
        batch = [draw(st.integers(0, 4)) for _ in range(ndim - 1)]
    axis = draw(st.integers(-ndim, ndim - 1))
    shape = tuple(batch[: axis % ndim] + [num_classes] + batch[axis % ndim :])
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = draw(st.sampled_from([1.0, 3.0, 30.0]))
    offset = draw(st.sampled_from([0.0, 0.0, 1e4, -50.0]))
    a = rng.standard_normal(shape) * scale + offset
    info = np.finfo(dtype)
    specials = {
        "nan": np.nan,
        "inf": np.inf,
        "-inf": -np.inf,
        "huge": 1e30 if dtype == np.float32 else 1e300,
        "-huge": -1e30 if dtype == np.float32 else -1e300,
        "denormal": float(info.smallest_subnormal) * 3,
        "confident": offset + 25.0,
    }
    for special in draw(st.lists(st.sampled_from([*specials, "-inf_slice"]), max_size=3)):
        if a.size == 0:
            break
        index = tuple(int(rng.integers(n)) for n in shape)
        if special == "-inf_slice":  # every class of one sample
            index = index[: axis % ndim] + (slice(None),) + index[axis % ndim + 1 :]
            a[index] = -np.inf
        else:
            a[index] = specials[special]
    layout = draw(st.sampled_from(["c", "c", "f", "strided", "reversed", "readonly"]))
    return _relayout(rng, a.astype(dtype), layout), axis, rng


def _index_target(draw, rng, batch_shape, num_classes, ignore_index, one_d):
    """(target as passed, its values as Python ints in a list)."""
    if one_d and draw(st.booleans()):
        value = _usually(draw, [0, num_classes - 1, -100], [num_classes, -1, 2**63, 2**70, -(2**70)])
        return value, [value]
    dtype = draw(st.sampled_from(INDEX_DTYPES))
    high = min(num_classes, int(np.iinfo(dtype).max) + 1)
    y = rng.integers(0, max(high, 1), batch_shape).astype(dtype)
    if y.size:
        for special in draw(st.lists(st.just("ignore") | st.just(None), max_size=2)) + [
            _usually(draw, [None], ["C", "-1", "big", "max"])
        ]:
            value = {
                None: None,
                "ignore": ignore_index,
                "C": num_classes,
                "-1": -1,
                "big": 2**40,
                "max": int(np.iinfo(dtype).max),
            }[special]
            if isinstance(value, int) and _fits(value, dtype):
                y[tuple(int(rng.integers(n)) for n in batch_shape)] = value
    values = [int(v) for v in y.reshape(-1)]
    layout = draw(st.sampled_from(["c", "c", "strided", "reversed", "readonly"]))
    return _relayout(rng, y, layout), values


def _probability_target(draw, rng, shape, axis):
    dtype = np.dtype(draw(st.sampled_from(PROB_DTYPES)))
    kind = draw(st.sampled_from(["simplex", "onehot", "random", "nan"])) if dtype.kind == "f" else "onehot"
    moved = tuple(np.delete(shape, axis % len(shape))) + (shape[axis],)
    if shape[axis] == 0:
        q = np.zeros(moved)
    elif kind == "onehot":
        q = np.eye(shape[axis])[rng.integers(0, shape[axis], moved[:-1])]
    elif kind == "random":
        q = rng.random(moved) * 2 - 0.5  # negative masses too: the formula holds for any q
    else:
        q = rng.dirichlet(np.ones(shape[axis]), moved[:-1]) if shape[axis] else np.zeros(moved)
        if kind == "nan" and q.size:
            q[tuple(int(rng.integers(n)) for n in moved)] = np.nan
    q = np.moveaxis(q, -1, axis).astype(dtype)
    return _relayout(rng, q, draw(st.sampled_from(["c", "f", "strided"])))


@st.composite
def loss_cases(draw):
    """Keyword arguments of a cross-entropy call, the errors api.md expects, and the reference's inputs."""
    a, axis, rng = draw(logits_cases())
    num_classes = a.shape[axis]
    batch_shape = tuple(np.delete(a.shape, axis % a.ndim))
    errors = [] if num_classes else [(ValueError, "logits")]
    kwargs = {"axis": axis} if axis != -1 or draw(st.booleans()) else {}
    # ignore_index (omitted: -100)
    ignore_index = _usually(draw, [-100, -100, 0, -1, num_classes - 1, num_classes, INT64_MAX, INT64_MIN],
                            [2**63, 2**70, -(2**63) - 1])
    if ignore_index != -100 or draw(st.booleans()):
        kwargs["ignore_index"] = ignore_index
    if not INT64_MIN <= ignore_index <= INT64_MAX:
        errors.append((ValueError, "ignore_index"))
    # target
    if draw(st.integers(0, 2)) > 0:
        target, values = _index_target(draw, rng, batch_shape, num_classes, ignore_index, a.ndim == 1)
        if any(v != ignore_index and not 0 <= v < num_classes for v in values):
            errors.append((ValueError, "target"))
        target_ref = np.array(values, dtype=object).reshape(batch_shape)
    else:
        target = _probability_target(draw, rng, a.shape, axis)
        target_ref = target.astype(a.dtype).astype(np.float64)
    # weight
    weight_kinds = ["none"] * 4 + ["ones", "random", "zeros", "negative", "nan", "inf", "int", "list"]
    weight_kinds.append("float32")
    weight_kind = _usually(draw, weight_kinds, ["short", "long", "2d"])
    weight = weight_ref = None
    if weight_kind != "none":
        w = rng.random(num_classes) * 2
        if weight_kind in ("zeros", "negative", "nan", "inf") and num_classes:
            picked = rng.integers(0, num_classes, max(1, num_classes // 3))
            w[picked] = {"zeros": 0.0, "negative": -1.5, "nan": np.nan, "inf": np.inf}[weight_kind]
        weight = {
            "ones": np.ones(num_classes),
            "int": rng.integers(0, 4, num_classes),
            "list": [float(v) for v in w],
            "float32": w.astype(np.float32),
            "short": w[:-1],
            "long": np.append(w, 1.0),
            "2d": w[None, :],
        }.get(weight_kind, w)
        if weight_kind in ("short", "long", "2d"):
            errors.append((ValueError, "weight"))
        else:
            weight_ref = np.asarray(weight).astype(a.dtype).astype(np.float64)  # the logits' dtype, as xentcy
        kwargs["weight"] = weight
    # label smoothing
    eps = _usually(draw, [0.0] * 3 + [0.1, 1.0, "uniform", "uniform"], [-0.1, 1.5, math.nan])
    if eps == "uniform":
        eps = draw(st.floats(0.0, 1.0))
    if eps != 0.0 or draw(st.booleans()):
        kwargs["label_smoothing"] = eps
    if not 0.0 <= eps <= 1.0:
        errors.append((ValueError, "label_smoothing"))
    reduction = _usually(draw, ["mean", "sum", "none"], ["avg", "MEAN"])
    if reduction != "mean" or draw(st.booleans()):
        kwargs["reduction"] = reduction
    if reduction not in ("mean", "sum", "none"):
        errors.append((ValueError, "reduction"))
    case = dict(
        logits=a, target=target, kwargs=kwargs, errors=errors, axis=axis,
        ref=dict(target=target_ref, weight=weight_ref, ignore_index=ignore_index, label_smoothing=eps,
                 reduction=reduction),
    )
    return case, draw(st.sampled_from(ISAS))


# ---------------------------------------------------------------- the oracles


def _reference(case):
    """(loss, grad, loss tolerance, grad tolerance) from the float64 reference, in float64.

    The tolerances are RTOL times the size of the terms each quantity is made
    of: for a sample's loss sum_c |w_c q_c| (|m - A_c| + |log s| + 1), for a
    gradient element |scale| (p_c sum_k |w_k q_k| + |w_c q_c|), so a tiny
    loss has a tiny tolerance; plus what flushing the smallest exp terms costs,
    and one subnormal step of the result's dtype.
    NaN tolerances accept any value that is not finite, where the order of
    the operations decides between inf and NaN and api.md does not: a sample
    with an infinite term w_c q_c (an infinite weight on a class of nonzero
    mass: inf * 0 where A_c = m), its loss and its gradient; and the loss of a
    sample of nonzero mass with a +inf logit (the shift is 0 and s = inf, so
    its terms are inf - inf or inf + inf, depending on how they are grouped).
    A sample with a +inf logit and no mass may be NaN too (0 * log s = 0 * inf).
    """
    a, r = case["logits"], case["ref"]
    a64 = a.astype(np.float64)
    target = r["target"]
    if target.dtype == object:  # class indices, now known to be in int64's range
        target = target.astype(np.int64)
    eps = r["label_smoothing"]
    if a.dtype.type(eps / a.shape[case["axis"]]) == 0:
        eps = 0.0  # a smoothing mass eps / C that rounds to 0 in the logits' dtype is none (docs/math.md)
    kw = dict(axis=case["axis"], weight=r["weight"], ignore_index=r["ignore_index"],
              label_smoothing=eps, reduction=r["reduction"])
    loss, grad = ref.cross_entropy_and_grad(a64, target, **kw)
    A, q, y, valid, batch_shape = ref._flatten(a64, target, case["axis"] % a.ndim, r["ignore_index"], eps)
    num_classes = A.shape[1]
    w = np.ones(num_classes) if r["weight"] is None else r["weight"]
    with np.errstate(all="ignore"):
        wq = np.abs(w * q)
        if y is not None:
            wq = np.where(q != 0, wq, 0.0)
        m = np.max(A, axis=-1, keepdims=True) if A.size else np.zeros((A.shape[0], 1))
        m = np.where(np.isfinite(m), m, 0.0)
        e = np.exp(A - m)
        s = np.sum(e, axis=-1, keepdims=True)
        gap = np.where(wq != 0, np.abs(m - A), 0.0)
        term = np.where(wq != 0, gap + np.abs(np.log(s)) + 1.0, 0.0)
        row_size = np.sum(wq * term, axis=-1)
        # a mass w_c q_c that is subnormal (a tiny smoothing) is known to a few subnormal steps
        step = float(np.finfo(a.dtype).smallest_subnormal)
        row_size = row_size + 4 * step / RTOL[a.dtype] * np.sum(term, axis=-1)
        mass = np.sum(wq, axis=-1, keepdims=True)
        grad_size = e / s * mass + wq
        # a NaN logit makes its sample NaN: no tolerance needed there
        row_size, grad_size = np.nan_to_num(row_size, nan=0.0), np.nan_to_num(grad_size, nan=0.0)
        mass = np.nan_to_num(mass, nan=0.0)
        infinite_term = np.isinf(wq).any(axis=-1)
        plus_inf = (A == np.inf).any(axis=-1) & (mass[:, 0] != 0)
        row_size = np.where(infinite_term | plus_inf, np.nan, row_size)
    if r["reduction"] == "mean":
        D = float(np.sum(w[y[valid]])) if y is not None else float(A.shape[0])
        scale = 1.0 / abs(D) if D != 0 and np.isfinite(D) else 0.0  # else the expected values are 0 or NaN
    else:
        scale = 1.0
    rtol = RTOL[a.dtype]
    tiny = float(np.finfo(a.dtype).tiny)
    if r["reduction"] == "none":
        loss_tol = rtol * row_size.reshape(batch_shape) + 4 * step
        loss_nan_ok = (A == np.inf).any(axis=-1).reshape(batch_shape)
    else:
        loss_tol = rtol * np.sum(row_size) * scale + 4 * step
        loss_nan_ok = (A == np.inf).any()
    grad_tol = (rtol * grad_size + 4 * tiny * mass) * scale + 4 * step
    grad_tol[infinite_term & valid] = np.nan
    grad_tol = np.moveaxis(grad_tol.reshape(batch_shape + (num_classes,)), -1, case["axis"])
    plus_inf_rows = np.broadcast_to((A == np.inf).any(axis=-1, keepdims=True), A.shape)
    plus_inf_rows = np.moveaxis(plus_inf_rows.reshape(batch_shape + (num_classes,)), -1, case["axis"])
    return loss, grad, loss_tol, grad_tol, loss_nan_ok, plus_inf_rows


def _torch_loss_and_grad(case):
    """torch's float64 loss and gradient where torch means what api.md means, else None."""
    if torch is None:
        return None
    a, r = case["logits"], case["ref"]
    target, weight = r["target"], r["weight"]
    finite = np.isfinite(a).all() and (weight is None or np.isfinite(weight).all())
    if target.dtype != object:
        finite = finite and np.isfinite(target).all()
    if not finite or a.size == 0:
        return None
    kw = dict(ignore_index=r["ignore_index"], label_smoothing=r["label_smoothing"], reduction=r["reduction"])
    if target.dtype == object:
        y = target.astype(np.int64)
        kept = y != r["ignore_index"]
        if r["reduction"] == "mean" and (weight if weight is not None else np.ones(a.shape[case["axis"]]))[
                y[kept]].sum() == 0:
            return None  # D = 0: torch's gradient is NaN, api.md's is 0 (a deliberate difference)
        t = torch.tensor(y)
    else:
        t = torch.tensor(np.moveaxis(target, case["axis"], 1) if a.ndim > 1 else target)
        del kw["ignore_index"]
    moved = np.moveaxis(a.astype(np.float64), case["axis"], 1) if a.ndim > 1 else a.astype(np.float64)
    x = torch.tensor(moved, requires_grad=True)
    w = None if weight is None else torch.tensor(weight)
    loss = torch.nn.functional.cross_entropy(x, t, weight=w, **kw)
    (loss.sum() if r["reduction"] == "none" else loss).backward()
    grad = x.grad.numpy()
    return loss.detach().numpy(), (np.moveaxis(grad, 1, case["axis"]) if a.ndim > 1 else grad)


def _assert_close(got, expected, tol, dtype, what, nan_ok=False):
    """got equals expected (float64, then rounded to the result's dtype) NaN for NaN,
    inf for inf, and within tol elsewhere; where nan_ok, NaN is accepted too.

    nan_ok marks the slices with a +inf logit: they are shifted by 0, so a
    float32 kernel's exp overflows for logits above 88.7 (inf / inf: NaN),
    where the float64 reference's does not.
    """
    got = np.asarray(got).astype(np.float64)
    with np.errstate(over="ignore"):
        expected = np.asarray(expected).astype(dtype).astype(np.float64)
    assert got.shape == expected.shape, f"{what}: shape {got.shape}, expected {expected.shape}"
    nan_ok = np.broadcast_to(nan_ok, got.shape) & np.isnan(got)
    got = np.where(nan_ok, expected, got)
    loose = np.broadcast_to(np.isnan(tol), expected.shape)
    assert np.isfinite(expected[loose]).sum() == 0 and not np.isfinite(got[loose]).any(), (
        f"{what}: finite where the result has an infinite term: {got[loose]}"
    )
    got, expected = got[~loose], expected[~loose]
    tol = np.broadcast_to(tol, loose.shape)[~loose]
    nan = np.isnan(expected)
    assert np.array_equal(np.isnan(got), nan), f"{what}: NaN at {np.argwhere(np.isnan(got) != nan)[:5]}"
    inf = np.isinf(expected)
    assert np.array_equal(got[inf], expected[inf]) and np.isfinite(got[~inf & ~nan]).all(), (
        f"{what}: expected {expected[np.isinf(got) != inf][:5]}, got {got[np.isinf(got) != inf][:5]}"
    )
    finite = ~inf & ~nan
    err = np.abs(got - expected)[finite]
    bound = tol[finite]
    worst = np.argmax(err - bound) if err.size else None
    assert (err <= bound).all(), (
        f"{what}: error {err[worst]:.3g} above {bound[worst]:.3g} (got {got[finite][worst]!r}, "
        f"expected {expected[finite][worst]!r})"
    )


def _expect_error(call, errors):
    """call() raises one of the expected errors, its message naming the argument."""
    types = tuple({t for t, _ in errors})
    with pytest.raises(types) as info:
        call()
    message = str(info.value)
    assert any(isinstance(info.value, t) and re.search(rf"\b({name})\b", message) for t, name in errors), (
        f"{type(info.value).__name__}: {message!r}, expected one of {errors}"
    )


def _run(name, case, isa, call, check):
    """The common frame: expected errors, else the call's results checked against the oracles."""
    STATS[name]["cases"] += 1
    try:
        with kernels(isa):
            if case["errors"]:
                _expect_error(call, case["errors"])
                STATS[name]["raised"] += 1
                return
            result = call()
        check(result)
    except BaseException:
        STATS[name]["mismatches"] += 1
        raise
    STATS[name]["matched"] += 1


def _check_loss_and_grad(name, case, loss, grad):
    dtype = case["logits"].dtype
    ref_loss, ref_grad, loss_tol, grad_tol, loss_nan_ok, plus_inf_rows = _reference(case)
    if loss is not None:
        assert loss.dtype == dtype and isinstance(loss, np.ndarray)
        _assert_close(loss, ref_loss, loss_tol, dtype, "loss", loss_nan_ok)
    if grad is not None:
        assert grad.dtype == dtype and grad.shape == case["logits"].shape
        _assert_close(grad, ref_grad, grad_tol, dtype, "gradient", plus_inf_rows)
    oracle = _torch_loss_and_grad(case)
    if oracle is not None:
        if loss is not None:
            _assert_close(loss, oracle[0], loss_tol, dtype, "loss against torch")
        if grad is not None:
            _assert_close(grad, oracle[1], grad_tol, dtype, "gradient against torch")
        STATS[name]["torch"] += 1


# ---------------------------------------------------------------- the cross-entropy functions


@FUZZ
@given(loss_cases())
def test_fuzz_cross_entropy(drawn):
    case, isa = drawn

    def check(loss):
        _check_loss_and_grad("cross_entropy", case, loss, None)

    _run("cross_entropy", case, isa,
         lambda: xc.cross_entropy(case["logits"], case["target"], **case["kwargs"]), check)


@FUZZ
@given(loss_cases())
def test_fuzz_cross_entropy_grad(drawn):
    case, isa = drawn

    def check(grad):
        _check_loss_and_grad("cross_entropy_grad", case, None, grad)

    _run("cross_entropy_grad", case, isa,
         lambda: xc.cross_entropy_grad(case["logits"], case["target"], **case["kwargs"]), check)


@FUZZ
@given(loss_cases(), st.sampled_from(["none", "out", "out_c", "out_is_logits", "inplace"] * 2
                                     + ["out_wrong_dtype", "out_wrong_shape"]))
def test_fuzz_loss_and_grad(drawn, mode):
    case, isa = drawn
    a = case["logits"]
    original = a.copy()
    kwargs = dict(case["kwargs"])
    errors = list(case["errors"])
    writable = a.flags.writeable
    if mode == "out":
        kwargs["out"] = np.empty_like(a)
    elif mode == "out_c":
        kwargs["out"] = np.empty(a.shape, a.dtype)
    elif mode == "out_is_logits":
        kwargs["out"] = a
        if not writable:
            errors.append((ValueError, "out"))
    elif mode == "inplace":
        kwargs["inplace"] = True
        if not writable:
            errors.append((ValueError, "inplace|logits"))
    elif mode == "out_wrong_dtype":
        kwargs["out"] = np.empty(a.shape, np.float64 if a.dtype == np.float32 else np.float32)
        errors.append((TypeError, "out"))
    elif mode == "out_wrong_shape":
        kwargs["out"] = np.empty(a.shape + (1,), a.dtype)
        errors.append((ValueError, "out"))
    case = dict(case, errors=errors)

    def check(result):
        loss, grad = result
        if "out" in kwargs:
            assert grad is kwargs["out"]
        if kwargs.get("inplace"):
            assert grad is a
        elif mode != "out_is_logits":
            np.testing.assert_array_equal(a, original)  # no other call modifies its inputs
        _check_loss_and_grad("loss_and_grad", dict(case, logits=original), loss, grad)

    _run("loss_and_grad", case, isa, lambda: xc.loss_and_grad(a, case["target"], **kwargs), check)


@FUZZ
@given(loss_cases())
def test_fuzz_cross_entropy_loss_layer(drawn):
    case, isa = drawn
    layer = xc.CrossEntropyLoss(**case["kwargs"])

    def forward_backward():
        return layer.forward(case["logits"], case["target"]), layer.backward()

    def check(result):
        _check_loss_and_grad("CrossEntropyLoss", case, *result)

    _run("CrossEntropyLoss", case, isa, forward_backward, check)


# ---------------------------------------------------------------- softmax, log_softmax, logsumexp


@st.composite
def softmax_cases(draw):
    a, axis, _ = draw(logits_cases())
    errors = []
    if draw(st.integers(0, 9)) == 0:  # an axis out of range
        axis = draw(st.sampled_from([a.ndim, -a.ndim - 1, a.ndim + 3]))
        errors.append((ValueError, "axis"))
    keepdims = draw(st.sampled_from([False] * 3 + [True] * 2 + [np.True_, "yes", 1]))
    if not isinstance(keepdims, (bool, np.bool_)):
        errors.append((TypeError, "keepdims"))
    return a, axis, keepdims, errors, draw(st.sampled_from(ISAS))


def _softmax_reference(a, axis):
    """(softmax, log_softmax, logsumexp with keepdims) in float64, and their tolerances."""
    a64 = a.astype(np.float64)
    rtol = RTOL[a.dtype]
    if a.shape[axis] == 0:  # no classes: an empty softmax, and a logsumexp of -inf
        lse = np.full(a.shape[:axis % a.ndim] + (1,) + a.shape[axis % a.ndim + 1 :], -np.inf)
        return (a64, a64), (a64, a64), (lse, np.zeros_like(lse))
    with np.errstate(all="ignore"):
        m = np.max(a64, axis=axis, keepdims=True)
        m = np.where(np.isfinite(m), m, 0.0)
        log_s = np.abs(ref.logsumexp(a64, axis=axis, keepdims=True) - m)
        tiny = float(np.finfo(a.dtype).tiny)
        p = ref.softmax(a64, axis=axis)
        return (
            (p, rtol * p + 4 * tiny),
            (ref.log_softmax(a64, axis=axis), rtol * (np.abs(a64 - m) + log_s + 1)),
            (ref.logsumexp(a64, axis=axis, keepdims=True), rtol * (np.abs(m) + log_s + 1)),
        )


def _run_softmax_family(name, drawn, fn, pick):
    a, axis, keepdims, errors, isa = drawn
    case = dict(errors=errors)
    kwargs = dict(axis=axis, keepdims=keepdims) if name == "logsumexp" else dict(axis=axis)
    if name != "logsumexp":
        case["errors"] = [e for e in errors if e[1] != "keepdims"]

    def check(out):
        assert isinstance(out, np.ndarray) and out.dtype == a.dtype
        expected, tol = _softmax_reference(a, axis)[pick]
        if name == "logsumexp" and not keepdims:
            expected, tol = np.squeeze(expected, axis), np.squeeze(tol, axis)
        plus_inf = (a == np.inf).any(axis=axis, keepdims=True) if a.shape[axis] else False
        if name == "logsumexp" and not keepdims:
            plus_inf = np.squeeze(plus_inf, axis) if a.shape[axis] else False
        _assert_close(out, expected, tol, a.dtype, name, plus_inf)
        if torch is not None and np.isfinite(a).all() and a.shape[axis]:
            t = torch.tensor(a.astype(np.float64))
            oracle = {
                "softmax": lambda: torch.softmax(t, axis),
                "log_softmax": lambda: torch.log_softmax(t, axis),
                "logsumexp": lambda: torch.logsumexp(t, axis, keepdim=bool(keepdims)),
            }[name]().numpy()
            _assert_close(out, oracle, tol, a.dtype, f"{name} against torch")
            STATS[name]["torch"] += 1

    _run(name, case, isa, lambda: fn(a, **kwargs), check)


@FUZZ
@given(softmax_cases())
def test_fuzz_softmax(drawn):
    _run_softmax_family("softmax", drawn, xc.softmax, 0)


@FUZZ
@given(softmax_cases())
def test_fuzz_log_softmax(drawn):
    _run_softmax_family("log_softmax", drawn, xc.log_softmax, 1)


@FUZZ
@given(softmax_cases())
def test_fuzz_logsumexp(drawn):
    _run_softmax_family("logsumexp", drawn, xc.logsumexp, 2)
