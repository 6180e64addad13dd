"""Batch evaluation (issue 13): evaluate, Evaluator, target_rank.

References are written here, in float64 NumPy: ranks from a stable argsort of the negated
logits (ties to the lower class index), the entropy from the float64 softmax, the loss from
log-sum-exp; top-k accuracy also against scikit-learn on tie-free data. Every backend of the
conformance suite runs them (the CUDA backend through its host-compiled kernels).
"""

import math

import numpy as np
import pytest
from backends import make, to_numpy

import xentcy as xc

# ---------------------------------------------------------------------------------------
# the float64 reference


def ref_rank(A, y, ignore_index=-100):
    """Ranks by a stable sort of -A (first index first on ties): a different algorithm
    from the kernels' count."""
    A = np.asarray(A, np.float64)
    out = np.empty(len(y), np.int64)
    for i, (row, t) in enumerate(zip(A, y, strict=True)):
        if t == ignore_index:
            out[i] = -1
        elif np.isnan(row).any():
            out[i] = A.shape[1]
        else:
            order = np.argsort(-row, kind="stable")
            out[i] = int(np.nonzero(order == t)[0][0])
    return out


def ref_entropy(A):
    A = np.asarray(A, np.float64)
    m = A.max(axis=1, keepdims=True)
    e = np.exp(A - m)
    p = e / e.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        logp = np.where(p > 0, np.log(p), 0.0)
    return -(p * logp).sum(axis=1)


def ref_losses(A, y, weight=None, ignore_index=-100):
    A = np.asarray(A, np.float64)
    m = A.max(axis=1, keepdims=True)
    lse = (m + np.log(np.exp(A - m).sum(axis=1, keepdims=True)))[:, 0]
    w = np.ones(A.shape[1]) if weight is None else np.asarray(weight, np.float64)
    out = np.zeros(len(y))
    den = 0.0
    for i, t in enumerate(y):
        if t == ignore_index:
            continue
        out[i] = w[t] * (lse[i] - A[i, t])
        den += w[t]
    return out, den


def reference(A, y, *, weight=None, ignore_index=-100, top_k=(1, 5)):
    losses, den = ref_losses(A, y, weight, ignore_index)
    ranks = ref_rank(A, y, ignore_index)
    kept = ranks >= 0
    ent = ref_entropy(A)
    n = int(kept.sum())
    return {
        "loss": losses.sum() / den,
        "accuracy": {k: float(np.mean(ranks[kept] < k)) for k in top_k},
        "entropy": float(ent[kept].mean()),
        "count": n,
        "correct": {k: int(np.sum(ranks[kept] < k)) for k in top_k},
    }


def assert_matches(got, want, rtol):
    assert got.count == want["count"]
    assert got.correct == want["correct"]
    assert got.accuracy == pytest.approx(want["accuracy"], abs=0)
    assert got.loss == pytest.approx(want["loss"], rel=rtol)
    assert got.perplexity == pytest.approx(math.exp(want["loss"]), rel=rtol)
    assert got.entropy == pytest.approx(want["entropy"], rel=rtol)


def data(N, C, dtype=np.float64, seed=0, ties=False, ignore=False):
    gen = np.random.default_rng([N, C, seed])
    A = gen.standard_normal((N, C)) * 2
    if ties:
        # rows with several classes at one value, the target among them or not
        A = np.round(A)
    y = gen.integers(0, C, N)
    if ignore:
        y[gen.random(N) < 0.2] = -100
    return A.astype(dtype), y


RTOL = {np.float32: 2e-5, np.float64: 1e-11}
SHAPES = [(1, 1), (5, 2), (37, 3), (64, 10), (33, 17), (20, 100), (9, 1000), (3, 20000)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize(("N", "C"), SHAPES, ids=[f"{n}x{c}" for n, c in SHAPES])
def test_evaluate_matches_the_float64_reference(xp, N, C, dtype):
    A, y = data(N, C, dtype, ignore=True)
    got = xc.evaluate(make(xp, A), make(xp, y), top_k=(1, 2, 5))
    assert_matches(got, reference(A, y, top_k=(1, 2, 5)), RTOL[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("C", [3, 10, 100, 1000])
def test_ties_go_to_the_lower_class_index(xp, C, dtype):
    A, y = data(200, C, dtype, ties=True)
    A[0, :] = 1.0  # one row all tied: rank = y
    ranks = to_numpy(xc.target_rank(make(xp, A), make(xp, y)))
    np.testing.assert_array_equal(ranks, ref_rank(A, y))
    assert ranks[0] == y[0]
    # rank 0 is exactly NumPy's argmax rule
    np.testing.assert_array_equal(ranks == 0, np.argmax(A, axis=1) == y)


def test_weights_weight_the_loss_only(xp):
    A, y = data(300, 7, ignore=True)
    w = np.random.default_rng(1).random(7) + 0.5
    got = xc.evaluate(make(xp, A), make(xp, y), weight=make(xp, w))
    want = reference(A, y, weight=w)
    assert_matches(got, want, 1e-11)
    # the mean is torch's: the sum over the weight of the targets
    losses, den = ref_losses(A, y, w)
    assert got.loss_sum == pytest.approx(losses.sum(), rel=1e-12)
    assert got.denominator == pytest.approx(den, rel=1e-12)


def test_infinite_and_nan_logits(xp):
    A, y = data(8, 6)
    A[0, 2] = -np.inf  # a masked class
    A[1, :] = -np.inf
    A[1, 3] = 0.0  # one finite class
    A[2, y[2]] = np.inf  # +inf at the target: softmax undefined
    A[3, 1] = np.nan  # a NaN row counts as wrong, NaN loss and entropy
    ranks = to_numpy(xc.target_rank(make(xp, A), make(xp, y)))
    assert ranks[3] == 6
    np.testing.assert_array_equal(ranks[[0, 1, 4, 5, 6, 7]], ref_rank(A, y)[[0, 1, 4, 5, 6, 7]])
    good = np.array([0, 1, 4, 5, 6, 7])
    r = xc.evaluate(make(xp, A[good]), make(xp, y[good]))
    assert_matches(r, reference(A[good], y[good]), 1e-11)
    bad = xc.evaluate(make(xp, A[[3]]), make(xp, y[[3]]))
    assert math.isnan(bad.loss) and math.isnan(bad.entropy) and bad.accuracy[5] == 0.0


def test_probability_targets_rank_their_argmax(xp):
    A, y = data(50, 9)
    Q = np.random.default_rng(2).random((50, 9))
    Q[0] = 0.1  # a tie in Q: its first class
    Q = Q / Q.sum(axis=1, keepdims=True)
    got = xc.evaluate(make(xp, A), make(xp, Q), top_k=(1, 3))
    first = np.argmax(Q, axis=1)
    ranks = ref_rank(A, first)
    assert got.correct == {1: int(np.sum(ranks < 1)), 3: int(np.sum(ranks < 3))}
    loss = -(
        Q * (A - A.max(1, keepdims=True) - np.log(np.exp(A - A.max(1, keepdims=True)).sum(1, keepdims=True)))
    )
    assert got.loss == pytest.approx(loss.sum(1).mean(), rel=1e-11)
    assert got.entropy == pytest.approx(ref_entropy(A).mean(), rel=1e-11)


def test_label_smoothing_gives_the_smoothed_loss(xp):
    A, y = data(40, 5)
    got = xc.evaluate(make(xp, A), make(xp, y), label_smoothing=0.2)
    want = float(to_numpy(xc.cross_entropy(A, y, label_smoothing=0.2)))
    assert got.loss == pytest.approx(want, rel=1e-12)
    assert got.perplexity == pytest.approx(math.exp(want), rel=1e-12)
    assert got.correct == reference(A, y)["correct"]


def test_top_k_against_scikit_learn():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    gen = np.random.default_rng(5)
    A = gen.standard_normal((500, 12))  # continuous: no ties
    y = gen.integers(0, 12, 500)
    r = xc.evaluate(A, y, top_k=(1, 3, 5))
    for k in (1, 3, 5):
        want = sklearn_metrics.top_k_accuracy_score(y, A, k=k, labels=np.arange(12))
        assert r.accuracy[k] == pytest.approx(want, abs=1e-15)


@pytest.mark.parametrize("batch_size", [1, 7, 64, 499, 500, 1000])
def test_streaming_equals_one_shot(batch_size):
    A, y = data(500, 30, ignore=True)
    whole = xc.evaluate(A, y)
    parts = xc.evaluate(A, y, batch_size=batch_size)
    assert parts.count == whole.count and parts.correct == whole.correct
    for name in ("loss_sum", "denominator", "entropy_sum"):
        assert getattr(parts, name) == pytest.approx(getattr(whole, name), rel=1e-12)


def test_merge_of_shards_equals_the_whole():
    A, y = data(600, 40, ignore=True)
    whole = xc.Evaluator(top_k=(1, 5))
    whole.update(A, y)
    shards = []
    for lo, hi in [(0, 100), (100, 101), (101, 450), (450, 600)]:
        ev = xc.Evaluator(top_k=(1, 5))
        ev.update(A[lo:hi], y[lo:hi])
        shards.append(ev)
    merged = shards[0]
    for ev in shards[1:]:
        merged.merge(ev)
    a, b = merged.result(), whole.result()
    assert a.count == b.count and a.correct == b.correct
    assert a.loss == pytest.approx(b.loss, rel=1e-12) and a.entropy == pytest.approx(b.entropy, rel=1e-12)
    with pytest.raises(ValueError, match="different settings"):
        merged.merge(xc.Evaluator(top_k=(1,)))


def test_state_dict_round_trip_and_reset():
    A, y = data(100, 8)
    ev = xc.Evaluator()
    ev.update(A, y)
    again = xc.Evaluator()
    again.load_state_dict(ev.state_dict())
    assert again.result() == ev.result()
    again.update(A, y)
    assert again.result().count == 2 * ev.result().count
    again.reset()
    assert again.result().count == 0 and math.isnan(again.result().loss)
    with pytest.raises(ValueError, match="settings"):
        xc.Evaluator(top_k=(1, 2)).load_state_dict(ev.state_dict())


def test_memmap_larger_than_a_batch(tmp_path):
    A, y = data(1000, 50, np.float32)
    path = tmp_path / "logits.npy"
    np.save(path, A)
    mm = np.load(path, mmap_mode="r")
    got = xc.evaluate(mm, y, batch_size=128)
    assert_matches(got, reference(A, y), RTOL[np.float32])


def test_reference_logits_give_kl_and_agreement(xp):
    A, y = data(200, 20)
    ref = A + np.random.default_rng(3).standard_normal(A.shape)

    def log_softmax(x):
        m = x.max(1, keepdims=True)
        return x - m - np.log(np.exp(x - m).sum(1, keepdims=True))

    lp, lq = log_softmax(A), log_softmax(ref)
    kl = (np.exp(lq) * (lq - lp)).sum(1).mean()
    agree = np.mean(np.argmax(A, 1) == np.argmax(ref, 1))
    got = xc.evaluate(make(xp, A), make(xp, y), reference=make(xp, ref))
    assert got.kl_divergence == pytest.approx(kl, rel=1e-10)
    assert got.top1_agreement == agree
    no_target = xc.evaluate(make(xp, A), None, reference=make(xp, ref))
    assert no_target.kl_divergence == pytest.approx(kl, rel=1e-10)
    assert no_target.count == 0


def test_kl_of_close_models_keeps_its_digits(xp):
    """Two float32 models 1e-3 apart (a KL near 1e-7, where KL = E_q[log q - log p] from two
    rounded log-softmaxes loses half its digits): the mean KL against mpmath at 50 digits,
    on every backend (the CPU core's row-pair kernel, or the array-API path)."""
    import mpmath

    rng = np.random.default_rng(5)
    A = (2 * rng.standard_normal((40, 30))).astype(np.float32)
    B = (A + 1e-3 * rng.standard_normal(A.shape)).astype(np.float32)
    B[3, 4] = -np.inf  # a class the reference gives no mass
    with mpmath.workdps(50):
        rows = []
        for a, b in zip(A.astype(float), B.astype(float), strict=True):
            lp = [mpmath.mpf(x) - mpmath.log(mpmath.fsum(mpmath.exp(v) for v in a)) for x in a]
            lse_q = mpmath.log(mpmath.fsum(mpmath.exp(v) for v in b if v > -np.inf))
            rows.append(
                mpmath.fsum(
                    mpmath.exp(y - lse_q) * ((y - lse_q) - p)
                    for y, p in zip(b, lp, strict=True)
                    if y > -np.inf
                )
            )
        want = float(mpmath.fsum(rows) / len(rows))
    got = xc.evaluate(make(xp, A), None, reference=make(xp, B))
    assert got.kl_divergence == pytest.approx(want, rel=2e-5)
    assert got.top1_agreement == np.mean(A.argmax(1) == B.argmax(1))


def test_undefined_reference_rows_are_nan_and_disagree(xp):
    A, y = data(6, 5)
    ref = A.copy()
    ref[2, 1] = np.nan
    got = xc.evaluate(make(xp, A), make(xp, y), reference=make(xp, ref))
    assert math.isnan(got.kl_divergence)
    assert got.agreement_count == 5 and got.reference_count == 6


def test_errors():
    A, y = data(10, 4)
    with pytest.raises(ValueError, match="top_k"):
        xc.evaluate(A, y, top_k=(0,))
    with pytest.raises(TypeError, match="top_k"):
        xc.evaluate(A, y, top_k="5")
    with pytest.raises(ValueError, match="batch_size"):
        xc.evaluate(A, y, batch_size=0)
    with pytest.raises(ValueError, match="class index"):
        xc.evaluate(A, np.full(10, 4))
    with pytest.raises(ValueError, match="shape"):
        xc.evaluate(A, y[:5])
    with pytest.raises(ValueError, match="reference"):
        xc.evaluate(A, y, reference=A[:, :3])
    with pytest.raises(ValueError, match="target may be None"):
        xc.Evaluator().update(A, None)
    with pytest.raises(TypeError, match="float"):
        xc.evaluate(A.astype(np.int64), y)


def test_confident_rows_keep_the_digits_of_their_entropy():
    # target logit 40 above standard normal others, float64: H ~ 40 exp(-40) C, far below ulp(1)
    mpmath = pytest.importorskip("mpmath")
    gen = np.random.default_rng(9)
    A = gen.standard_normal((4, 50))
    y = gen.integers(0, 50, 4)
    A[np.arange(4), y] = 40.0
    r = xc.evaluate(A, y)
    with mpmath.workdps(50):
        hs = []
        for row in A:
            a = [mpmath.mpf(float(v)) for v in row]
            m = max(a)
            s = mpmath.fsum(mpmath.exp(v - m) for v in a)
            hs.append(mpmath.log(s) + mpmath.fsum(mpmath.exp(v - m) * (m - v) for v in a) / s)
        want = float(mpmath.fsum(hs) / 4)
    assert r.entropy == pytest.approx(want, rel=1e-13)
    assert r.accuracy[1] == 1.0


def test_repr_is_readable():
    r = xc.evaluate(np.array([[2.0, 1.0, 0.1], [0.1, 2.0, 1.9]]), np.array([1, 0]), top_k=(1, 2))
    text = repr(r)
    assert text.startswith("Evaluation(count=2, loss=2.01851")
    assert "accuracy={1: 0.0000, 2: 0.5000}" in text


@pytest.mark.only_xp_backends("cuda_host", "cupy", reason="the deferred check is the CUDA backend's")
def test_a_device_backend_raises_a_bad_index_at_result(xp):
    # CuPy (and the CUDA backend on the CPU): update records it on the device, result raises it
    A, y = data(30, 6)
    bad = y.copy()
    bad[4] = 6
    ev = xc.Evaluator()
    ev.update(make(xp, A), make(xp, y))
    ev.update(make(xp, A), make(xp, bad))  # no read-back, no error yet
    ev.update(make(xp, A), make(xp, y))
    with pytest.raises(ValueError, match=r"batch 1 .*class index outside \[0, C\)"):
        ev.result()
    with pytest.raises(ValueError, match="class index"):
        xc.evaluate(make(xp, A), make(xp, bad))
    # merged: the first bad batch, counted across both
    good = xc.Evaluator()
    good.update(make(xp, A), make(xp, y))
    other = xc.Evaluator()
    other.update(make(xp, A), make(xp, bad))
    with pytest.raises(ValueError, match="batch 1 "):
        good.merge(other).result()


def test_a_failed_update_adds_nothing():
    A, y = data(20, 4)
    ev = xc.Evaluator()
    ev.update(A, y)
    before = ev.state_dict()
    with pytest.raises(ValueError, match="reference"):
        ev.update(A, y, reference=A[:, :2])
    with pytest.raises(ValueError, match="class index"):
        ev.update(A, np.full(20, 9))
    assert ev.state_dict() == before
