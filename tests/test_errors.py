"""Bad input raises TypeError or ValueError naming the argument (api.md, Errors).

TypeError: the wrong kind of thing (dtype, library). ValueError: wrong
values or shapes. Every message names the argument concerned.
"""

import numpy as np
import pytest

import xentcy as xc

# NumPy arrays on the CPU core, and on the CUDA backend through its host-compiled kernels
pytestmark = pytest.mark.usefixtures("numpy_backend")

rng = np.random.default_rng(0)
A = rng.standard_normal((4, 3))
Y = np.array([0, 2, 1, 2])
Q = rng.random((4, 3))

LOSS_FUNCTIONS = [xc.cross_entropy, xc.cross_entropy_grad, xc.loss_and_grad]


def forward_of_loss_object(logits, target, /, **kwargs):
    return xc.CrossEntropyLoss(**kwargs).forward(logits, target)


ALL_LOSS_ENTRIES = LOSS_FUNCTIONS + [forward_of_loss_object]
ALL_LOSS_IDS = ["cross_entropy", "cross_entropy_grad", "loss_and_grad",
                "CrossEntropyLoss.forward"]
loss_entries = pytest.mark.parametrize("fn", ALL_LOSS_ENTRIES, ids=ALL_LOSS_IDS)
softmax_family = pytest.mark.parametrize(
    "fn", [xc.softmax, xc.log_softmax, xc.logsumexp],
    ids=["softmax", "log_softmax", "logsumexp"])


# --- logits -----------------------------------------------------------------

@loss_entries
@pytest.mark.parametrize("logits", [
    pytest.param(np.arange(12).reshape(4, 3), id="int64"),
    pytest.param(np.ones((4, 3), dtype=bool), id="bool"),
    pytest.param(A.astype(np.complex128), id="complex128"),
    # the CUDA backend takes float16
    pytest.param(A.astype(np.float16), id="float16", marks=pytest.mark.cpu_core_only),
    pytest.param(A.astype(np.longdouble), id="longdouble",
                 marks=pytest.mark.skipif(np.dtype(np.longdouble) == np.float64,
                                          reason="longdouble is float64 here")),
])
def test_logits_of_unsupported_dtype_is_type_error(fn, logits):
    with pytest.raises(TypeError, match="logits"):
        fn(logits, Y)


@softmax_family
@pytest.mark.parametrize("x", [
    pytest.param(np.arange(12).reshape(4, 3), id="int64"),
    pytest.param(A.astype(np.complex64), id="complex64"),
    # the CUDA backend takes float16
    pytest.param(A.astype(np.float16), id="float16", marks=pytest.mark.cpu_core_only),
])
def test_softmax_family_input_of_unsupported_dtype_is_type_error(fn, x):
    with pytest.raises(TypeError, match=r"\bx\b"):
        fn(x)


@loss_entries
@pytest.mark.parametrize("logits", [
    pytest.param([[1.0, 2.0], [0.5, 0.1]], id="list"),
    pytest.param(np.float64(1.0), id="numpy_scalar"),
])
def test_logits_that_are_not_an_array_is_type_error_naming_logits(fn, logits):
    with pytest.raises(TypeError, match="logits"):
        fn(logits, [0, 1])


@softmax_family
def test_softmax_family_input_that_is_not_an_array_is_type_error_naming_x(fn):
    with pytest.raises(TypeError, match=r"\bx\b"):
        fn([[1.0, 2.0], [0.5, 0.1]])


@loss_entries
def test_zero_dimensional_logits_is_value_error(fn):
    with pytest.raises(ValueError, match="logits"):
        fn(np.array(1.0), 0)


@softmax_family
def test_zero_dimensional_input_of_softmax_family_is_value_error(fn):
    with pytest.raises(ValueError, match=r"\bx\b|axis"):
        fn(np.array(1.0))


@loss_entries
def test_zero_classes_is_value_error(fn):
    with pytest.raises(ValueError, match="logits"):
        fn(np.zeros((4, 0)), np.zeros(4, dtype=np.int64))


# --- axis -------------------------------------------------------------------

@loss_entries
@pytest.mark.parametrize("axis", [2, -3, 7])
def test_axis_out_of_range_is_value_error(fn, axis):
    with pytest.raises(ValueError, match="axis"):
        fn(A, Y, axis=axis)


@softmax_family
@pytest.mark.parametrize("axis", [2, -3])
def test_softmax_family_axis_out_of_range_is_value_error(fn, axis):
    with pytest.raises(ValueError, match="axis"):
        fn(A, axis=axis)


# --- target -----------------------------------------------------------------

@loss_entries
@pytest.mark.parametrize("target", [
    pytest.param(Y.astype(np.float64), id="float_array"),
    pytest.param(Y.astype(np.complex128), id="complex_array"),
])
def test_non_integer_class_index_target_is_type_error(fn, target):
    with pytest.raises(TypeError, match="target"):
        fn(A, target)


@loss_entries
def test_python_float_class_index_for_1d_logits_is_type_error(fn):
    with pytest.raises(TypeError, match="target"):
        fn(A[0], 1.0)


@loss_entries
def test_complex_probability_target_is_type_error(fn):
    with pytest.raises(TypeError, match="target"):
        fn(A, Q.astype(np.complex128))


@loss_entries
@pytest.mark.parametrize("target", [
    pytest.param(np.array([0, 1, 2]), id="index_too_few"),
    pytest.param(np.array([0, 1, 2, 0, 1]), id="index_too_many"),
    pytest.param(np.zeros((4, 1), dtype=np.int64) + 5, id="probability_one_class"),
    pytest.param(rng.random((4, 4)), id="probability_too_many_classes"),
    pytest.param(rng.random((3, 3)), id="probability_too_few_samples"),
    pytest.param(rng.random((4, 3, 1)), id="too_many_dims"),
    pytest.param(np.array(1), id="too_few_dims"),
])
def test_target_of_wrong_shape_is_value_error(fn, target):
    with pytest.raises(ValueError, match="target"):
        fn(A, target)


@loss_entries
@pytest.mark.parametrize("bad", [3, 4, -1, -2, 2**40, -100])
def test_class_index_out_of_range_is_value_error(fn, bad):
    y = Y.copy()
    y[2] = bad
    # -100 is out of range once ignore_index is something else.
    with pytest.raises(ValueError, match="target"):
        fn(A, y, ignore_index=-7)


@loss_entries
def test_out_of_range_index_in_3d_layout_is_value_error(fn):
    y = np.zeros((2, 5), dtype=np.int64)
    y[1, 4] = 3
    with pytest.raises(ValueError, match="target"):
        fn(rng.standard_normal((2, 3, 5)), y, axis=1)


@loss_entries
def test_out_of_range_python_int_target_is_value_error(fn):
    with pytest.raises(ValueError, match="target"):
        fn(A[0], 3)


# --- keywords ---------------------------------------------------------------

@loss_entries
@pytest.mark.parametrize("reduction", ["avg", "MEAN", ""])
def test_unknown_reduction_is_value_error(fn, reduction):
    with pytest.raises(ValueError, match="reduction"):
        fn(A, Y, reduction=reduction)


@loss_entries
@pytest.mark.parametrize("eps", [-0.1, 1.5, float("nan"), float("inf")])
def test_label_smoothing_outside_unit_interval_is_value_error(fn, eps):
    with pytest.raises(ValueError, match="label_smoothing"):
        fn(A, Y, label_smoothing=eps)


@loss_entries
@pytest.mark.parametrize("weight", [
    pytest.param(np.ones(2), id="too_short"),
    pytest.param(np.ones(4), id="too_long"),
    pytest.param([1.0, 2.0], id="list_too_short"),
    pytest.param(np.ones((1, 3)), id="2d"),
    pytest.param(np.ones((3, 3)), id="2d_square"),
    pytest.param(np.array(1.0), id="0d"),
])
def test_weight_of_wrong_shape_is_value_error(fn, weight):
    with pytest.raises(ValueError, match="weight"):
        fn(A, Y, weight=weight)


# --- out= and inplace= ------------------------------------------------------

def test_out_of_wrong_dtype_is_type_error():
    with pytest.raises(TypeError, match="out"):
        xc.loss_and_grad(A, Y, out=np.empty((4, 3), dtype=np.float32))


def test_out_of_wrong_library_is_type_error():
    with pytest.raises(TypeError, match="out"):
        xc.loss_and_grad(A, Y, out=[[0.0] * 3] * 4)


def test_out_of_wrong_shape_is_value_error():
    for shape in [(3, 4), (4, 4), (12,), (4, 3, 1)]:
        with pytest.raises(ValueError, match="out"):
            xc.loss_and_grad(A, Y, out=np.empty(shape))


def test_read_only_out_is_value_error():
    out = np.empty((4, 3))
    out.setflags(write=False)
    with pytest.raises(ValueError, match="out"):
        xc.loss_and_grad(A, Y, out=out)


def test_inplace_on_read_only_logits_is_value_error():
    logits = A.copy()
    logits.setflags(write=False)
    with pytest.raises(ValueError, match="inplace|logits"):
        xc.loss_and_grad(logits, Y, inplace=True)
    np.testing.assert_array_equal(logits, A)


def test_out_together_with_inplace_is_value_error():
    logits = A.copy()
    with pytest.raises(ValueError, match="out"):
        xc.loss_and_grad(logits, Y, out=np.empty((4, 3)), inplace=True)
    np.testing.assert_array_equal(logits, A)


def test_out_that_is_the_probability_target_is_value_error():
    q = Q.copy()
    with pytest.raises(ValueError, match="out"):
        xc.loss_and_grad(A, q, out=q)
    np.testing.assert_array_equal(q, Q)


def test_out_overlapping_logits_without_being_them_is_value_error():
    buffer = np.zeros((5, 3))
    buffer[:4] = A
    logits = buffer[:4]
    with pytest.raises(ValueError, match="out"):
        xc.loss_and_grad(logits, Y, out=buffer[1:])
    np.testing.assert_array_equal(logits, A)


def test_out_overlapping_weight_is_value_error():
    out = np.ones((4, 3))
    with pytest.raises(ValueError, match="out"):
        xc.loss_and_grad(A, Y, weight=out[1], out=out)


# --- mixed libraries --------------------------------------------------------

LIBRARY_NAMES = {"torch": r"torch", "array_api_strict": r"array_api_strict"}


@pytest.mark.parametrize("library", ["torch", "array_api_strict"])
@loss_entries
def test_logits_and_target_of_two_libraries_is_type_error_naming_both(fn, library):
    other = pytest.importorskip(library)
    name = LIBRARY_NAMES[library]
    both = rf"(?is)(numpy.*{name}|{name}.*numpy)"
    with pytest.raises(TypeError, match=both):
        fn(A, other.asarray(Y))
    with pytest.raises(TypeError, match=both):
        fn(other.asarray(A), Y)


@pytest.mark.parametrize("library", ["torch", "array_api_strict"])
def test_weight_of_another_library_than_numpy_logits_is_type_error(library):
    other = pytest.importorskip(library)
    with pytest.raises(TypeError, match="weight"):
        xc.cross_entropy(A, Y, weight=other.asarray(np.ones(3)))


def test_out_of_another_library_is_type_error():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="out"):
        xc.loss_and_grad(A, Y, out=torch.empty((4, 3), dtype=torch.float64))


# --- CrossEntropyLoss -------------------------------------------------------

def test_backward_before_forward_is_runtime_error():
    with pytest.raises(RuntimeError, match="forward"):
        xc.CrossEntropyLoss().backward()


@pytest.mark.parametrize("kwargs, name", [
    (dict(reduction="avg"), "reduction"),
    (dict(label_smoothing=2.0), "label_smoothing"),
    (dict(weight=np.ones(5)), "weight"),
])
def test_loss_object_rejects_bad_keywords(kwargs, name):
    # Either the constructor or the first forward may raise.
    with pytest.raises(ValueError, match=name):
        xc.CrossEntropyLoss(**kwargs).forward(A, Y)
