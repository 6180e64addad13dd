"""Dask on a real distributed cluster: lazy, chunk by chunk, exact reductions.

Two worker processes compute the chunks; the NumPy results of xentcy itself
on the whole arrays are the reference (the Dask path must not change a bit of
any per-sample value, and the mean is the global weighted mean, not a mean of
the chunks' means). The NumPy path is checked against independent references
in the rest of the suite.
"""

import contextlib

import numpy as np
import pytest

import xentcy as xc

da = pytest.importorskip("dask.array", reason="dask is not installed")
distributed = pytest.importorskip("distributed", reason="dask.distributed is not installed")
dask = pytest.importorskip("dask")


@pytest.fixture(scope="module")
def client():
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client


@pytest.fixture
def problem():
    rng = np.random.default_rng(7)
    logits = (3 * rng.standard_normal((240, 11, 3))).astype(np.float32)
    target = rng.integers(0, 11, (240, 3))
    target[::5, 0] = -100  # ignored samples, unevenly spread over the chunks
    weight = rng.random(11)
    return logits, target, weight


@contextlib.contextmanager
def nothing_computed():
    """Within the block, any computation of a Dask graph fails the test (a scheduler that
    raises): the calls in it must only build graphs."""

    def refuse(dsk, keys, **kwargs):
        raise AssertionError("a Dask graph was computed where it was to stay lazy")

    with dask.config.set(scheduler=refuse):
        yield


def test_nothing_computed_catches_a_computation():
    with pytest.raises(AssertionError, match="stay lazy"), nothing_computed():
        da.ones(3).sum().compute()


KEYWORDS = [
    {},
    {"weight": "w", "label_smoothing": 0.1},
    {"weight": "w", "reduction": "sum"},
    {"reduction": "none", "label_smoothing": 0.3},
]


@pytest.mark.parametrize("keywords", KEYWORDS, ids=lambda k: ",".join(k) or "default")
def test_cluster_loss_and_grad_equal_numpy_on_whole_arrays(client, problem, keywords):
    logits, target, weight = problem
    keywords = {k: (weight if v == "w" else v) for k, v in keywords.items()}
    # Uneven chunks on the batch axes and a split class axis, which xentcy rechunks.
    lazy_logits = da.from_array(logits, chunks=(70, 4, 2))
    lazy_target = da.from_array(target, chunks=(50, 3))

    with nothing_computed():
        loss, grad = xc.loss_and_grad(lazy_logits, lazy_target, axis=1, **keywords)
    loss, grad = client.compute([loss, grad], sync=True)

    want_loss, want_grad = xc.loss_and_grad(logits, target, axis=1, **keywords)
    np.testing.assert_array_equal(grad, want_grad)
    assert loss.dtype == np.float32 and grad.dtype == np.float32
    np.testing.assert_allclose(loss, want_loss, rtol=1e-6)


def test_cluster_mean_is_the_global_weighted_mean_not_a_mean_of_chunk_means(client, problem):
    logits, target, weight = problem
    lazy = xc.cross_entropy(
        da.from_array(logits, chunks=(40, 11, 3)),
        da.from_array(target, chunks=(40, 3)),
        axis=1,
        weight=weight,
    )
    got = client.compute(lazy, sync=True)
    per_sample = xc.cross_entropy(logits, target, axis=1, weight=weight, reduction="none").astype(np.float64)
    kept = target != -100
    want = per_sample.sum() / weight[target[kept]].sum()
    np.testing.assert_allclose(got, want, rtol=1e-6)
    chunk_means = [
        per_sample[i : i + 40].sum() / weight[target[i : i + 40][kept[i : i + 40]]].sum()
        for i in range(0, 240, 40)
    ]
    assert abs(np.mean(chunk_means) - want) > 1e-4  # the test would catch a mean of means


def test_cluster_bad_class_index_raises_when_computed(client, problem):
    logits, target, _ = problem
    target = target.copy()
    target[200, 1] = 11
    lazy = xc.cross_entropy(
        da.from_array(logits, chunks=(60, 11, 3)), da.from_array(target, chunks=(60, 3)), axis=1
    )
    with pytest.raises(ValueError, match="target holds the class index 11"):
        client.compute(lazy, sync=True)


def test_softmax_and_logsumexp_on_the_cluster(client, problem):
    logits, _, _ = problem
    lazy = da.from_array(logits, chunks=(64, 5, 3))
    np.testing.assert_array_equal(
        client.compute(xc.softmax(lazy, axis=1), sync=True), xc.softmax(logits, axis=1)
    )
    np.testing.assert_array_equal(
        client.compute(xc.logsumexp(lazy, axis=1, keepdims=True), sync=True),
        xc.logsumexp(logits, axis=1, keepdims=True),
    )


def test_dask_arrays_refuse_out_and_inplace(problem):
    logits, target, _ = problem
    lazy_logits, lazy_target = da.from_array(logits), da.from_array(target)
    with pytest.raises(ValueError, match="inplace"):
        xc.loss_and_grad(lazy_logits, lazy_target, axis=1, inplace=True)
    with pytest.raises(ValueError, match="out"):
        xc.loss_and_grad(lazy_logits, lazy_target, axis=1, out=da.zeros_like(lazy_logits))


def test_cluster_evaluation_is_exact(client, problem):
    # sums and counts merged across the chunks, not means of means; computed on the workers
    logits, target, weight = problem
    lazy_logits = da.from_array(logits, chunks=(70, 4, 2))
    lazy_target = da.from_array(target, chunks=(50, 3))
    ev = xc.Evaluator(axis=1, weight=weight, top_k=(1, 3))
    with nothing_computed():
        ev.update(lazy_logits, lazy_target)
    got = ev.result()
    want = xc.evaluate(logits, target, axis=1, weight=weight, top_k=(1, 3))
    assert got.count == want.count and got.correct == want.correct
    assert got.loss == pytest.approx(want.loss, rel=1e-6)  # float32 per-sample values, two paths
    assert got.entropy == pytest.approx(want.entropy, rel=1e-6)
    assert got.denominator == pytest.approx(want.denominator, rel=1e-12)
