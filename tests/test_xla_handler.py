"""The CPU core's XLA FFI handler (xent_xla.h, the custom call of xentcy.jax), called here as
XLA calls it: through its function pointer, on call frames built with ctypes. So it runs
without JAX (and in the sanitizer run, scripts/sanitize.sh): its results against float64
NumPy written here, and every frame that does not fit refused with a message, its output
buffers untouched.
"""

import ctypes
from ctypes import (
    CFUNCTYPE,
    POINTER,
    Structure,
    c_char_p,
    c_double,
    c_int,
    c_int32,
    c_int64,
    c_size_t,
    c_void_p,
)

import numpy as np
import pytest

from xentcy._cpu import _core

S32, S64, F32, F64 = 4, 5, 11, 12
DTYPES = {
    np.dtype(np.int32): S32,
    np.dtype(np.int64): S64,
    np.dtype(np.float32): F32,
    np.dtype(np.float64): F64,
}


class Extension(Structure):
    pass


Extension._fields_ = [("struct_size", c_size_t), ("type", c_int), ("next", POINTER(Extension))]


class Buffer(Structure):
    _fields_ = [
        ("struct_size", c_size_t),
        ("extension_start", c_void_p),
        ("dtype", c_int),
        ("data", c_void_p),
        ("rank", c_int64),
        ("dims", POINTER(c_int64)),
    ]


class ByteSpan(Structure):
    _fields_ = [("ptr", c_char_p), ("len", c_size_t)]


class Scalar(Structure):
    _fields_ = [("dtype", c_int), ("value", c_void_p)]


class List(Structure):
    _fields_ = [
        ("struct_size", c_size_t),
        ("extension_start", c_void_p),
        ("size", c_int64),
        ("types", POINTER(c_int)),
        ("items", POINTER(c_void_p)),
    ]


class Attrs(Structure):
    _fields_ = [
        ("struct_size", c_size_t),
        ("extension_start", c_void_p),
        ("size", c_int64),
        ("types", POINTER(c_int)),
        ("names", POINTER(POINTER(ByteSpan))),
        ("attrs", POINTER(c_void_p)),
    ]


class ErrorArgs(Structure):
    _fields_ = [
        ("struct_size", c_size_t),
        ("extension_start", c_void_p),
        ("message", c_char_p),
        ("errc", c_int),
    ]


class ApiVersion(Structure):
    _fields_ = [("struct_size", c_size_t), ("extension_start", c_void_p), ("major", c_int), ("minor", c_int)]


ErrorCreate = CFUNCTYPE(c_void_p, POINTER(ErrorArgs))


class Api(Structure):
    _fields_ = [
        ("struct_size", c_size_t),
        ("extension_start", c_void_p),
        ("api_version", ApiVersion),
        ("internal_api", c_void_p),
        ("error_create", ErrorCreate),
    ]


class CallFrame(Structure):
    _fields_ = [
        ("struct_size", c_size_t),
        ("extension_start", POINTER(Extension)),
        ("api", POINTER(Api)),
        ("ctx", c_void_p),
        ("stage", c_int),
        ("args", List),
        ("rets", List),
        ("attrs", Attrs),
    ]


class Metadata(Structure):
    _fields_ = [("struct_size", c_size_t), ("api_version", ApiVersion), ("traits", ctypes.c_uint32)]


class MetadataExtension(Structure):
    _fields_ = [("base", Extension), ("metadata", POINTER(Metadata))]


def _handler():
    get = ctypes.pythonapi.PyCapsule_GetPointer
    get.restype, get.argtypes = c_void_p, [ctypes.py_object, c_char_p]
    return CFUNCTYPE(c_void_p, POINTER(CallFrame))(get(_core.xla_cross_entropy(), None))


HANDLER = _handler()


class Call:
    """One call frame and everything it points to (kept alive here); ``run()`` calls the
    handler and returns the error message, or None."""

    def __init__(self, args, rets, attrs):
        self.keep = []
        self.errors = []

        def create(p):
            self.errors.append(p.contents.message.decode())
            return 1  # an error object: anything but NULL

        self.create = ErrorCreate(create)
        self.api = Api(
            ctypes.sizeof(Api), None, ApiVersion(ctypes.sizeof(ApiVersion), None, 0, 1), None, self.create
        )
        self.frame = CallFrame(
            ctypes.sizeof(CallFrame), None, ctypes.pointer(self.api), None, 3,
            self._list(args), self._list(rets), self._attrs(attrs),
        )  # fmt: skip

    def _buffer(self, a):
        dims = (c_int64 * max(a.ndim, 1))(*a.shape)
        b = Buffer(ctypes.sizeof(Buffer), None, DTYPES.get(a.dtype, 0), a.ctypes.data, a.ndim, dims)
        self.keep += [a, dims, b]
        return ctypes.cast(ctypes.pointer(b), c_void_p)

    def _list(self, arrays):
        types = (c_int * max(len(arrays), 1))(*[1] * len(arrays))
        items = (c_void_p * max(len(arrays), 1))(*[self._buffer(a) for a in arrays])
        self.keep += [types, items]
        return List(ctypes.sizeof(List), None, len(arrays), types, items)

    def _attrs(self, attrs):
        kinds = {
            "ignore_index": (S64, c_int64),
            "label_smoothing": (F64, c_double),
            "reduction": (S32, c_int32),
        }
        names, values = [], []
        for name, value in attrs.items():
            dtype, ctype = kinds.get(name, (S32, c_int32))
            if isinstance(value, tuple):  # (XLA dtype code, ctypes type, value): a wrongly typed attribute
                dtype, ctype, value = value
            v = ctype(value)
            s = Scalar(dtype, ctypes.cast(ctypes.pointer(v), c_void_p))
            raw = name.encode()
            span = ByteSpan(raw, len(raw))
            self.keep += [v, s, raw, span]
            names.append(ctypes.pointer(span))
            values.append(ctypes.cast(ctypes.pointer(s), c_void_p))
        n = len(attrs)
        types = (c_int * max(n, 1))(*[3] * n)
        name_array = (POINTER(ByteSpan) * max(n, 1))(*names)
        value_array = (c_void_p * max(n, 1))(*values)
        self.keep += [types, name_array, value_array]
        return Attrs(ctypes.sizeof(Attrs), None, n, types, name_array, value_array)

    def run(self):
        result = HANDLER(ctypes.pointer(self.frame))
        if result is None:
            assert not self.errors
            return None
        assert len(self.errors) == 1
        return self.errors[0]


REDUCTIONS = {"mean": 0, "sum": 1, "none": 2}


def _attrs(ignore_index=-100, label_smoothing=0.0, reduction="mean"):
    return {
        "ignore_index": ignore_index,
        "label_smoothing": label_smoothing,
        "reduction": REDUCTIONS[reduction],
    }


def _reference(A, y=None, Q=None, w=None, ignore_index=-100, eps=0.0, reduction="mean"):
    """Loss and gradient in float64 NumPy, torch's rules; bad class indices give NaN rows."""
    A = A.astype(np.float64)
    N, C = A.shape
    w = np.ones(C) if w is None else w.astype(np.float64)
    lp = A - A.max(1, keepdims=True)
    lp -= np.log(np.exp(lp).sum(1, keepdims=True))
    bad = np.zeros(N, bool)
    if Q is None:
        keep = y != ignore_index
        valid = keep & (y >= 0) & (y < C)
        bad = keep & ~valid
        Q = np.zeros((N, C))
        Q[valid, y[valid]] = 1.0
        Q = np.where(keep[:, None], (1 - eps) * Q + eps / C, 0.0)
        D = w[y[valid]].sum()
    else:
        Q = (1 - eps) * Q.astype(np.float64) + eps / C
        D = N
    rows = -(w * Q * lp).sum(1)
    G = np.exp(lp) * (w * Q).sum(1, keepdims=True) - w * Q
    rows[bad] = np.nan
    G[bad] = np.nan
    if reduction == "none":
        return rows, G
    if reduction == "sum":
        return rows.sum(), G
    return (rows.sum() / D, G / D) if D else (np.nan, 0 * G)


def _data(N=9, C=13, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((N, C)) * 3).astype(dtype), rng.integers(0, C, N)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_class_indices_against_float64_numpy(dtype, index_dtype, reduction):
    A, y = _data(dtype=dtype)
    y = y.astype(index_dtype)
    y[2] = -100
    w = np.linspace(0.5, 2, A.shape[1]).astype(dtype)
    loss = np.full(A.shape[0] if reduction == "none" else (), np.nan, dtype)
    G = np.full_like(A, np.nan)
    attrs = _attrs(label_smoothing=0.1, reduction=reduction)
    assert Call([A, y, w], [loss, G], attrs).run() is None
    ref_loss, ref_G = _reference(A, y, w=w, eps=0.1, reduction=reduction)
    tol = 1e-6 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(loss, ref_loss, rtol=tol)
    np.testing.assert_allclose(G, ref_G, rtol=tol * 10, atol=tol * 1e-2)


def test_probability_targets_and_no_gradient():
    A, _ = _data()
    Q = np.random.default_rng(1).dirichlet(np.ones(A.shape[1]), A.shape[0])
    loss = np.zeros(())
    assert Call([A, Q, np.zeros(0)], [loss], _attrs()).run() is None  # the loss alone
    np.testing.assert_allclose(loss, _reference(A, Q=Q)[0], rtol=1e-13)


def test_bad_class_index_is_a_nan_row_and_a_nan_mean():
    A, y = _data()
    y[4] = A.shape[1] + 5
    y[5] = -7
    losses = np.zeros(A.shape[0])
    G = np.zeros_like(A)
    assert Call([A, y, np.zeros(0)], [losses, G], _attrs(reduction="none")).run() is None
    assert np.isnan(losses[[4, 5]]).all() and np.isnan(G[[4, 5]]).all()
    keep = np.ones(A.shape[0], bool)
    keep[[4, 5]] = False
    assert np.isfinite(losses[keep]).all() and np.isfinite(G[keep]).all()
    mean = np.zeros(())
    assert Call([A, y, np.zeros(0)], [mean, G], _attrs()).run() is None
    assert np.isnan(mean)
    # the other rows' gradient is divided by D of the rows in range
    np.testing.assert_allclose(G[keep], _reference(A[keep], y[keep])[1], rtol=1e-13, atol=1e-16)


def test_every_sample_ignored_gives_a_nan_mean_and_a_zero_gradient():
    A, y = _data()
    y[:] = -100
    mean, G = np.zeros(()), np.full_like(A, 7.0)
    assert Call([A, y, np.zeros(0)], [mean, G], _attrs()).run() is None
    assert np.isnan(mean) and (G == 0).all()


def test_no_rows():
    A = np.zeros((0, 4))
    for reduction, expected in (("mean", np.nan), ("sum", 0.0)):
        loss = np.full((), 5.0)
        assert (
            Call([A, np.zeros(0, np.int64), np.zeros(0)], [loss, A.copy()], _attrs(reduction=reduction)).run()
            is None
        )
        np.testing.assert_equal(loss, expected)


def test_metadata_query_reports_api_version_0_1():
    metadata = Metadata(ctypes.sizeof(Metadata), ApiVersion(0, None, -1, -1), 99)
    ext = MetadataExtension(Extension(ctypes.sizeof(MetadataExtension), 1, None), ctypes.pointer(metadata))
    A, y = _data()
    call = Call([A, y, np.zeros(0)], [np.zeros(())], _attrs())
    call.frame.extension_start = ctypes.cast(ctypes.pointer(ext), POINTER(Extension))
    assert call.run() is None
    assert (metadata.api_version.major, metadata.api_version.minor, metadata.traits) == (0, 1, 0)


def _refused():
    A, y = _data(N=6, C=5)
    w0 = np.zeros(0)
    loss, G = np.zeros(()), np.zeros_like(A)
    return {
        "two args": ([A, y], [loss, G], _attrs()),
        "short target": ([A, y[:4], w0], [loss, G], _attrs()),
        "float32 target": ([A, y.astype(np.float32), w0], [loss, G], _attrs()),
        "probabilities of another shape": ([A, A[:, :4], w0], [loss, G], _attrs()),
        "weight size": ([A, y, np.ones(4)], [loss, G], _attrs()),
        "weight dtype": ([A, y, np.ones(5, np.float32)], [loss, G], _attrs()),
        "float32 gradient": ([A, y, w0], [loss, G.astype(np.float32)], _attrs()),
        "gradient shape": ([A, y, w0], [loss, G.T.copy()], _attrs()),
        "per-sample loss for a mean": ([A, y, w0], [np.zeros(6), G], _attrs()),
        "scalar loss for none": ([A, y, w0], [loss, G], _attrs(reduction="none")),
        "three results": ([A, y, w0], [loss, G, G.copy()], _attrs()),
        "int32 logits": ([A.astype(np.int32), y, w0], [loss, G], _attrs()),
        "1-D logits": ([A[0], y[:1], w0], [loss, G], _attrs()),
        "no classes": ([A[:, :0], y, w0], [loss, G[:, :0]], _attrs()),
        "reduction 3": ([A, y, w0], [loss, G], {**_attrs(), "reduction": 3}),
        "missing attribute": ([A, y, w0], [loss, G], {"ignore_index": -100, "reduction": 0}),
        "int32 ignore_index": ([A, y, w0], [loss, G], {**_attrs(), "ignore_index": (S32, c_int32, -100)}),
    }


@pytest.mark.parametrize("case", list(_refused()))
def test_a_frame_that_does_not_fit_is_refused_and_nothing_written(case):
    args, rets, attrs = _refused()[case]
    for r in rets:
        r.fill(-3.0)
    message = Call(args, rets, attrs).run()
    assert message is not None and message.startswith("xentcy_cross_entropy")
    for r in rets:
        assert (r == -3.0).all()


def test_old_call_frames_and_other_stages_are_refused():
    A, y = _data()
    loss = np.zeros(())
    call = Call([A, y, np.zeros(0)], [loss], _attrs())
    call.frame.struct_size = CallFrame.attrs.offset  # a frame without its attributes
    assert "older than API 0.1" in call.run()
    call = Call([A, y, np.zeros(0)], [loss], _attrs())
    call.frame.stage = 0  # instantiate
    assert "execute stage" in call.run()
