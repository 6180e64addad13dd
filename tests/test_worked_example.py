"""The worked example of spec/cross-entropy.md, number for number.

The spec prints its figures rounded to 3 decimals, so the results are
compared both within 5e-4 and after rounding to 3 decimals.
"""

import numpy as np
import pytest

import xentcy as xc

# NumPy arrays on the CPU core, and on the CUDA backend through its host-compiled kernels
pytestmark = pytest.mark.usefixtures("numpy_backend")

A = np.array([[2.0, 1.0, 0.1],
              [0.1, 2.0, 1.9]])
Y_ONE_HOT = np.array([[0.0, 1.0, 0.0],
                      [1.0, 0.0, 0.0]])
Y_INDEX = np.array([1, 0])  # "class 2" and "class 1", counting from 0

SPEC_SOFTMAX = np.array([[0.659, 0.242, 0.099],
                         [0.073, 0.487, 0.440]])
SPEC_LOSSES = np.array([1.417, 2.620])
SPEC_MEAN = 2.019
SPEC_GRAD = np.array([[0.330, -0.379, 0.049],
                      [-0.464, 0.243, 0.220]])

TARGETS = pytest.mark.parametrize("target", [Y_ONE_HOT, Y_INDEX], ids=["one_hot", "index"])


def assert_matches_spec(actual, spec):
    actual = np.asarray(actual, dtype=np.float64)
    np.testing.assert_allclose(actual, spec, rtol=0, atol=5e-4)
    np.testing.assert_array_equal(np.round(actual, 3), spec)


def test_softmax_rows_match_spec():
    assert_matches_spec(xc.softmax(A), SPEC_SOFTMAX)


@TARGETS
def test_per_sample_losses_match_spec(target):
    assert_matches_spec(xc.cross_entropy(A, target, reduction="none"), SPEC_LOSSES)


@TARGETS
def test_mean_loss_matches_spec(target):
    L = xc.cross_entropy(A, target)
    assert_matches_spec(L, SPEC_MEAN)
    assert L.round(3) == SPEC_MEAN


@TARGETS
def test_sum_loss_is_sum_of_spec_losses(target):
    L = xc.cross_entropy(A, target, reduction="sum")
    np.testing.assert_allclose(L, SPEC_LOSSES.sum(), atol=1e-3)


@TARGETS
def test_gradient_matches_spec(target):
    assert_matches_spec(xc.cross_entropy_grad(A, target), SPEC_GRAD)


@TARGETS
def test_loss_and_grad_match_spec(target):
    L, G = xc.loss_and_grad(A, target)
    assert_matches_spec(L, SPEC_MEAN)
    assert_matches_spec(G, SPEC_GRAD)


@TARGETS
def test_gradient_is_softmax_minus_one_hot_over_n(target):
    # The spec's backward formula (sigma(A) - Y) / N, from the library's own softmax.
    np.testing.assert_allclose(xc.cross_entropy_grad(A, target),
                               (xc.softmax(A) - Y_ONE_HOT) / 2, rtol=1e-12, atol=1e-15)


@TARGETS
def test_cross_entropy_loss_protocol_reproduces_spec(target):
    xent = xc.CrossEntropyLoss()
    L = xent.forward(A, target)
    assert isinstance(L, np.ndarray) and L.ndim == 0
    assert L.round(3) == SPEC_MEAN
    assert abs(L.item() - SPEC_MEAN) < 5e-4
    assert (xent.N, xent.C) == (2, 3)
    assert_matches_spec(xent.softmax, SPEC_SOFTMAX)
    assert_matches_spec(xent.backward(), SPEC_GRAD)


def test_mean_loss_is_a_0d_ndarray_with_round_and_item():
    L = xc.cross_entropy(A, Y_INDEX)
    assert type(L) is np.ndarray
    assert L.ndim == 0 and L.dtype == np.float64
    assert isinstance(L.item(), float)
    assert L.round(4) == round(L.item(), 4)
