"""A language model's last layer and its loss, without the N x V logits: linear_cross_entropy.

The logits ``hidden @ classifier.T (+ bias)`` are formed a chunk of rows at a time by the
array library's own matmul (BLAS for NumPy), the fused pass of the backend turns each chunk
into its gradient in place, and the chunk's share of the three gradients follows:
``d_hidden[rows] = G @ W`` and ``d_classifier += G.T @ h`` (for NumPy a BLAS gemm with
beta = 1, in place: no V x H temporary), ``d_bias += sum_rows G``. At most one chunk of
logits exists at a time; on NumPy the ignored rows take no part in any matmul.
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any

import numpy as np

from . import _api, _checks, _dispatch, _reductions
from . import _cpu as _cpu_backend
from ._api import Reduction
from ._backend import Backend
from ._cpu import _core
from ._typing import Array, Namespace

# The chunk's logits take about this many bytes when chunk_size is None: large enough that
# every matmul of a chunk runs at BLAS's full speed (measured on this VM, (2048, 1024) x
# (32000, 1024) float32, 2 threads, medians of 3: 31 and 62 MiB chunks 2.04 s, 15 MiB 2.32 s,
# 7 MiB 2.83 s, 3 MiB 4.05 s; benchmarks/cpu-notes.md v20), small against the logits.
CHUNK_BYTES = 32 << 20


def _check_chunk_size(chunk_size: Any, n_rows: int, num_classes: int, itemsize: int) -> int:
    """The rows a chunk holds (documented in linear_cross_entropy)."""
    if chunk_size is None:
        return max(1, min(n_rows, CHUNK_BYTES // max(1, num_classes * itemsize)))
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    return int(chunk_size)


@dataclasses.dataclass(frozen=True)
class _LinearCall:
    xp: Namespace
    hidden: Array  # (N, H)
    classifier: Array  # (V, H)
    bias: Array | None  # (V,)
    call: _checks.CrossEntropyCall  # the loss's options and targets (its logits: a stand-in)
    batch_shape: tuple[int, ...]
    chunk: int


def _check(
    hidden: Array,
    classifier: Array,
    target: Array,
    bias: Array | None,
    options: dict[str, Any],
    chunk_size: Any,
) -> tuple[Backend, _LinearCall]:
    xp = _dispatch.namespace(hidden=hidden, classifier=classifier, target=target, bias=bias)
    backend = _dispatch.backend(xp, hidden)
    h, w, b = _checks.check_linear(xp, hidden, classifier, bias, backend.DTYPES)
    n_rows, num_classes = h.shape[0], w.shape[0]
    batch_shape = tuple(int(n) for n in hidden.shape[:-1])
    if hasattr(target, "ndim") and target.ndim == len(batch_shape) + 1:
        raise ValueError(
            "linear_cross_entropy takes class-index targets only (the hidden states' shape without "
            f"its last axis, {batch_shape}): probabilities would need the N x V array it avoids"
        )
    # the loss's checks, on a stand-in of the logits' shape and dtype (no memory)
    stand_in = xp.broadcast_to(xp.zeros((), dtype=h.dtype), batch_shape + (num_classes,))
    call = _checks.check_cross_entropy(
        xp, stand_in, target, axis=-1, **options, dtypes=backend.DTYPES
    )
    # (the rows' view of the call: class axis 1 of (N, V) chunks)
    call = dataclasses.replace(call, target=xp.reshape(call.target, (n_rows,)), batch_shape=(n_rows,), axis=1)
    chunk = _check_chunk_size(chunk_size, n_rows, num_classes, _checks.itemsize(xp, h.dtype))
    return backend, _LinearCall(xp, h, w, b, call, batch_shape, chunk)


def _chunk_call(lc: _LinearCall, logits: Array, target: Array) -> _checks.CrossEntropyCall:
    return dataclasses.replace(lc.call, logits=logits, target=target, batch_shape=(int(logits.shape[0]),))


def _numpy_rows(
    lc: _LinearCall, backend: Any, scale: Any, want_grad: bool, row_scale: Array | None
) -> tuple[Any, ...]:
    """NumPy: the chunks' three matmuls by SciPy's BLAS gemm into reused buffers (d_classifier
    accumulated in place, beta = 1), ignored rows skipped.

    One BLAS for all three, and the fused pass on one thread: with NumPy's matmul beside
    SciPy's gemm (two OpenBLAS thread pools) and xentcy's OpenMP threads between them, each
    pool's waiting threads took the cores from the next, and a chunk cost twice its parts
    (measured, 2 vCPUs, (1024, 256) x (8000, 256) float32: 147 ms against 76 ms for the parts
    timed alone; one BLAS, the pass on 2 threads 88 ms, on 1 thread 75 ms; cpu-notes v20).
    """
    # (SciPy's BLAS wrappers; imported here, not at the top, so that `import xentcy` does not
    # import SciPy)
    from scipy.linalg import blas

    h, w, b, y = lc.hidden, lc.classifier, lc.bias, lc.call.target
    n_rows, num_classes = h.shape[0], w.shape[0]
    kept = np.flatnonzero(y != lc.call.ignore_index)
    losses = np.zeros(n_rows, np.float64)
    # (C-ordered whatever the inputs' layout: gemm writes in place only into F-contiguous
    # transposes of them, and would otherwise return a copy and leave them as they were)
    d_h: Any = np.zeros(h.shape, h.dtype) if want_grad else None
    d_w: Any = np.zeros(w.shape, w.dtype) if want_grad else None
    d_b: Any = np.zeros(num_classes, np.float64) if want_grad and b is not None else None
    gemm = blas.sgemm if h.dtype == np.float32 else blas.dgemm
    chunk = min(lc.chunk, kept.size)
    buffer = np.empty((chunk, num_classes), h.dtype)
    d_h_buffer: Any = np.empty((chunk, h.shape[1]), h.dtype) if want_grad else None
    # (BLAS works in column-major order: each product below is written for the transposes,
    # which are F-contiguous views of the C-contiguous arrays, so nothing is copied)
    for start in range(0, kept.size, lc.chunk):
        rows = kept[start : start + lc.chunk]
        n = rows.size
        contiguous = int(rows[-1]) - int(rows[0]) == n - 1
        h_c = h[rows[0] : rows[-1] + 1] if contiguous else h[rows]
        logits = buffer[:n]
        # logits^T (V, n) = W (V, H) @ h_c^T (H, n)
        gemm(1.0, w.T, h_c.T, beta=0.0, c=logits.T, trans_a=1, overwrite_c=1)
        if b is not None:
            logits += b
        previous = _core.set_max_threads(1)
        try:
            loss_c, g = backend.cross_entropy_rows(
                _chunk_call(lc, logits, y[rows]), want_grad=want_grad, out=logits, grad_scale=scale
            )
        finally:
            _core.set_max_threads(previous)
        losses[rows] = loss_c
        if not want_grad:
            continue
        if row_scale is not None:
            g *= row_scale[rows, None]
        # d_h_c^T (H, n) = W^T (H, V) @ g^T (V, n)
        d_h_c = d_h[rows[0] : rows[-1] + 1] if contiguous else d_h_buffer[:n]
        gemm(1.0, w.T, g.T, beta=0.0, c=d_h_c.T, overwrite_c=1)
        if not contiguous:
            d_h[rows] = d_h_c
        # d_classifier^T (H, V) += h_c^T (H, n) @ g (n, V)
        gemm(1.0, h_c.T, g.T, beta=1.0, c=d_w.T, trans_b=1, overwrite_c=1)
        if d_b is not None:
            d_b += np.sum(g, axis=0, dtype=np.float64)
    if d_b is not None:
        d_b = d_b.astype(h.dtype)
    return losses, d_h, d_w, d_b


def _generic_rows(
    lc: _LinearCall, backend: Any, scale: Any, want_grad: bool, row_scale: Array | None
) -> tuple[Any, ...]:
    """Any other library: its matmul, chunk after chunk of rows (ignored ones included).
    Half-precision inputs (the GPU's float16 and bfloat16): each chunk's matmuls in the
    inputs' dtype (the BLAS accumulates in float32 within them), d_classifier and d_bias
    accumulated across the chunks in float32 and rounded once at the end."""
    xp, h, w, b, y = lc.xp, lc.hidden, lc.classifier, lc.bias, lc.call.target
    n_rows = h.shape[0]
    losses, d_hs = [], []
    d_w = d_b = None
    acc = xp.float32 if _checks.itemsize(xp, h.dtype) < 4 else None
    for r0 in range(0, n_rows, lc.chunk):
        r1 = min(r0 + lc.chunk, n_rows)  # (a stop past the end is not array-API indexing)
        h_c = h[r0:r1, ...]
        logits = xp.matmul(h_c, xp.matrix_transpose(w))
        if b is not None:
            logits = logits + b
        out = logits if backend.writable(logits) else None
        loss_c, g = backend.cross_entropy_rows(
            _chunk_call(lc, logits, y[r0:r1]), want_grad=want_grad, out=out, grad_scale=scale
        )
        losses.append(loss_c)
        if not want_grad:
            continue
        if row_scale is not None:
            g = g * xp.reshape(row_scale[r0:r1], (-1, 1))
        d_hs.append(xp.matmul(g, w))
        part = xp.matmul(xp.matrix_transpose(g), h_c)
        if acc is not None:
            part = xp.astype(part, acc)
        d_w = part if d_w is None else d_w + part
        if b is not None:
            col = xp.sum(g if acc is None else xp.astype(g, acc), axis=0)
            d_b = col if d_b is None else d_b + col
    if n_rows == 0:
        losses = [xp.zeros((0,), dtype=_checks.sum_dtype(xp))]
    loss = xp.concat(losses)
    if not want_grad:
        return loss, None, None, None
    if n_rows == 0:
        return loss, xp.zeros_like(h), xp.zeros_like(w), (None if b is None else xp.zeros_like(b))
    if acc is not None:
        d_w = xp.astype(d_w, w.dtype)
        d_b = None if d_b is None else xp.astype(d_b, w.dtype)
    return loss, xp.concat(d_hs), d_w, d_b


def _options(
    weight: Array | None, ignore_index: Any, label_smoothing: Any, reduction: Any,
    z_loss: Any = 0.0, softcap: Any = None, temperature: Any = 1.0,
) -> dict[str, Any]:
    """The loss's keywords, as xentcy.cross_entropy takes them."""
    return {
        "weight": weight,
        "ignore_index": ignore_index,
        "label_smoothing": label_smoothing,
        "reduction": reduction,
        "z_loss": z_loss,
        "softcap": softcap,
        "temperature": temperature,
    }


def _run(
    hidden: Array,
    classifier: Array,
    target: Array,
    bias: Array | None,
    options: dict[str, Any],
    chunk_size: Any,
    want_grad: bool,
    row_scale: Array | None = None,
    denominator: Any = None,
) -> tuple[Any, ...]:
    """(loss, d_hidden, d_classifier, d_bias); ``row_scale`` (batch-shaped, for
    reduction="none" only: xentcy.torch's backward) multiplies each row's gradient."""
    arrays = {"hidden": hidden, "classifier": classifier, "target": target, "bias": bias,
              "weight": options["weight"], "row_scale": row_scale}  # fmt: skip
    with _dispatch.route(arrays) as r:
        a = r.arrays
        options = {**options, "weight": a["weight"]}
        backend, lc = _check(a["hidden"], a["classifier"], a["target"], a["bias"], options, chunk_size)
        denom = _api.denominator(backend, lc.call, denominator)
        scale = _reductions.gradient_scale(lc.call, denom)
        # the CPU core's BLAS loop for the CPU backend (not for NumPy arrays another backend
        # computes for: the tests' CUDA kernels on the CPU take the generic loop, as CuPy's do)
        rows = _numpy_rows if backend is _cpu_backend else _generic_rows
        scales = None
        if a["row_scale"] is not None:
            scales = lc.xp.astype(lc.xp.reshape(a["row_scale"], (-1,)), lc.hidden.dtype)
        losses, d_h, d_w, d_b = rows(lc, backend, scale, want_grad, scales)
        call = dataclasses.replace(lc.call, batch_shape=lc.batch_shape)
        loss = _reductions.reduce_losses(call, lc.xp.reshape(losses, lc.batch_shape), denom)
        if d_h is not None:
            d_h = lc.xp.reshape(d_h, tuple(hidden.shape))
        return r.back((loss, d_h, d_w, d_b))


def linear_cross_entropy(
    hidden: Array,
    classifier: Array,
    target: Array,
    /,
    *,
    bias: Array | None = None,
    weight: Array | None = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    reduction: Reduction = "mean",
    z_loss: float = 0.0,
    softcap: float | None = None,
    temperature: float = 1.0,
    denominator: float | None = None,
    chunk_size: int | None = None,
) -> Array:
    """Cross-entropy of the logits ``hidden @ classifier.T + bias``, without forming them whole.

    A language model's last layer and its loss in one call: the logits are computed a
    chunk of rows at a time and dropped, so that the memory beyond the inputs is about
    one chunk of logits however many rows there are.

    Parameters
    ----------
    hidden : array
        Hidden states, (..., H), float32 or float64 on the CPU.
    classifier : array
        The output layer's weight matrix, (V, H), of hidden's dtype: V classes (the vocabulary).
    target : array
        Class indices, shaped like ``hidden`` without its last axis (probabilities are not
        taken: they would be the N x V array this function avoids).
    bias : array, optional
        (V,) added to every row of logits.
    weight, ignore_index, label_smoothing, reduction, z_loss, softcap, temperature, denominator
        As in :func:`xentcy.cross_entropy`: the options apply to the logits
        ``hidden @ classifier.T + bias``.
    chunk_size : int, optional
        Rows of logits per chunk. None: as many as fit in 32 MiB (``V * itemsize`` bytes a
        row), at least one: large enough for the matmuls to run at full speed, small against
        the N x V logits of a language model.

    Returns
    -------
    array
        The loss, as :func:`xentcy.cross_entropy` returns it for the full logits.

    Raises
    ------
    TypeError
        hidden, classifier and bias of different dtypes, non-floating arrays.
    ValueError
        Shapes that do not agree (H, V), probability targets, a bad chunk_size, and every
        error of :func:`xentcy.cross_entropy`.

    See Also
    --------
    linear_loss_and_grad : the loss and its gradients with respect to hidden, classifier
        and bias.

    Examples
    --------
    >>> import numpy as np
    >>> import xentcy as xc
    >>> h = np.array([[1.0, 0.0], [0.0, 1.0]])
    >>> W = np.array([[2.0, 0.1], [1.0, 2.0], [0.1, 1.9]])   # 3 classes
    >>> xc.linear_cross_entropy(h, W, np.array([1, 0]))      # the spec's worked example
    array(2.01850839)
    """
    options = _options(weight, ignore_index, label_smoothing, reduction, z_loss, softcap, temperature)
    return _run(hidden, classifier, target, bias, options, chunk_size, False, denominator=denominator)[0]


def linear_loss_and_grad(
    hidden: Array,
    classifier: Array,
    target: Array,
    /,
    *,
    bias: Array | None = None,
    weight: Array | None = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    reduction: Reduction = "mean",
    z_loss: float = 0.0,
    softcap: float | None = None,
    temperature: float = 1.0,
    denominator: float | None = None,
    chunk_size: int | None = None,
) -> tuple[Array, Array, Array, Array | None]:
    """The loss of :func:`linear_cross_entropy` and its gradients, in one pass over the chunks.

    Parameters
    ----------
    hidden, classifier, target, bias, weight, ignore_index, label_smoothing, reduction
        As in :func:`linear_cross_entropy`.
    z_loss, softcap, temperature, denominator, chunk_size
        As in :func:`linear_cross_entropy`.

    Returns
    -------
    loss : array
        As :func:`linear_cross_entropy` returns it.
    d_hidden : array
        d loss / d hidden, of hidden's shape (zeros for ignored rows).
    d_classifier : array
        d loss / d classifier, (V, H).
    d_bias : array or None
        d loss / d bias, (V,); None without a bias.

    Raises
    ------
    TypeError, ValueError
        As :func:`linear_cross_entropy`.

    See Also
    --------
    linear_cross_entropy : the loss alone.
    xentcy.torch.linear_cross_entropy : differentiable by torch's autograd.

    Examples
    --------
    >>> import numpy as np
    >>> import xentcy as xc
    >>> h = np.array([[1.0, 0.0], [0.0, 1.0]])
    >>> W = np.array([[2.0, 0.1], [1.0, 2.0], [0.1, 1.9]])
    >>> loss, d_h, d_W, d_b = xc.linear_loss_and_grad(h, W, np.array([1, 0]))
    >>> d_W.round(3)   # the logits' gradient (the worked example's) times h
    array([[ 0.33 , -0.464],
           [-0.379,  0.243],
           [ 0.049,  0.22 ]])
    """
    options = _options(weight, ignore_index, label_smoothing, reduction, z_loss, softcap, temperature)
    return _run(hidden, classifier, target, bias, options, chunk_size, True, denominator=denominator)
