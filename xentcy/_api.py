"""The public functions: check the arguments once, dispatch, reduce."""

from __future__ import annotations

from typing import Literal

from . import _checks, _dispatch, _reductions
from ._backend import Backend
from ._typing import Array, Namespace

Reduction = Literal["mean", "sum", "none"]


def _prepare_rows(x: Array, axis: int) -> tuple[Namespace, Backend, int]:
    xp = _dispatch.namespace(x=x)
    backend = _dispatch.backend(xp, x)
    _checks.check_logits(xp, x, "x", backend.DTYPES)
    return xp, backend, _checks.normalize_axis(axis, x.ndim)


def softmax(x: Array, /, *, axis: int = -1) -> Array:
    """Softmax along ``axis``: exp(x) / sum(exp(x)), computed in max-shifted form.

    Parameters
    ----------
    x : array
        Real floating array of any array-API library, at least 1-D.
    axis : int, default -1
        The class axis.

    Returns
    -------
    array
        Probabilities of x's shape, dtype, library and device; each slice
        along ``axis`` sums to 1.

    Raises
    ------
    TypeError
        Non-floating x, or an array of no array-API library.
    ValueError
        A 0-d x, an axis out of range, dimensions of unknown size.

    See Also
    --------
    log_softmax, logsumexp
    cross_entropy : the loss, without the probabilities.

    Examples
    --------
    >>> import numpy as np
    >>> import xentcy as xc
    >>> xc.softmax(np.array([2.0, 1.0, 0.1])).round(3)
    array([0.659, 0.242, 0.099])
    """
    with _dispatch.route({"x": x}) as r:
        x = r.arrays["x"]
        xp, backend, ax = _prepare_rows(x, axis)
        return r.back(backend.softmax(xp, x, ax, False))


def log_softmax(x: Array, /, *, axis: int = -1) -> Array:
    """Logarithm of :func:`softmax` along ``axis``: (x - m) - log(sum(exp(x - m))).

    Parameters
    ----------
    x : array
        Real floating array of any array-API library, at least 1-D.
    axis : int, default -1
        The class axis.

    Returns
    -------
    array
        Log-probabilities of x's shape, dtype, library and device.

    Raises
    ------
    TypeError, ValueError
        As :func:`softmax`.

    See Also
    --------
    softmax, logsumexp

    Examples
    --------
    >>> import numpy as np
    >>> import xentcy as xc
    >>> xc.log_softmax(np.array([0.0, 0.0])).round(4)
    array([-0.6931, -0.6931])
    """
    with _dispatch.route({"x": x}) as r:
        x = r.arrays["x"]
        xp, backend, ax = _prepare_rows(x, axis)
        return r.back(backend.softmax(xp, x, ax, True))


def logsumexp(x: Array, /, *, axis: int = -1, keepdims: bool = False) -> Array:
    """log(sum(exp(x))) along ``axis``, without overflow.

    Parameters
    ----------
    x : array
        Real floating array of any array-API library, at least 1-D.
    axis : int, default -1
        The axis to reduce.
    keepdims : bool, default False
        Keep the reduced axis with length 1.

    Returns
    -------
    array
        x's shape without ``axis`` (or with length 1 there), x's dtype.
        A slice of all -inf gives -inf.

    Raises
    ------
    TypeError, ValueError
        As :func:`softmax`.

    See Also
    --------
    log_softmax : x minus its logsumexp.

    Examples
    --------
    >>> import numpy as np
    >>> import xentcy as xc
    >>> xc.logsumexp(np.array([[1000.0, 1000.0], [0.0, -np.inf]]))
    array([1000.69314718,    0.        ])
    """
    with _dispatch.route({"x": x}) as r:
        x = r.arrays["x"]
        xp, backend, ax = _prepare_rows(x, axis)
        return r.back(backend.logsumexp(xp, x, ax, _checks.check_flag(keepdims, "keepdims")))


def _prepare_cross_entropy(
    logits: Array,
    target: Array,
    axis: int,
    weight: Array,
    ignore_index: int,
    label_smoothing: float,
    reduction: str,
    out: Array | None = None,
    given: object = None,
    options: dict[str, object] | None = None,
) -> tuple[Backend, _checks.CrossEntropyCall, object]:
    backend, call = checked_call(
        {"logits": logits, "target": target, "out": out},
        axis=axis,
        weight=weight,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        reduction=reduction,
        **(options or {}),
    )
    return backend, call, denominator(backend, call, given)


def denominator(backend: Backend, call: _checks.CrossEntropyCall, given: object = None) -> object:
    """D of the call, after the class-index range check (in one compiled pass where the
    backend has one; lazily, chunk by chunk, for Dask); ``given``, the caller's D
    (``denominator=``), replaces it once the check has run."""
    given = _checks.check_denominator(given, call.reduction)
    d = _reductions.denominator(call, backend.class_index_summary)
    return d if given is None else given


def checked_call(arrays: dict[str, Array], **options: object) -> tuple[Backend, _checks.CrossEntropyCall]:
    """(backend, the validated call) of a cross-entropy call; ``arrays`` holds the logits and
    target first, then any other argument whose library must be theirs (out=, reference=)."""
    xp = _dispatch.namespace(**arrays)
    logits = arrays["logits"]
    backend = _dispatch.backend(xp, logits)
    call = _checks.check_cross_entropy(xp, logits, arrays["target"], **options, dtypes=backend.DTYPES)
    return backend, call


def cross_entropy(
    logits: Array,
    target: Array,
    /,
    *,
    axis: int = -1,
    weight: Array | None = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    reduction: Reduction = "mean",
    z_loss: float = 0.0,
    softcap: float | None = None,
    temperature: float = 1.0,
    denominator: float | None = None,
) -> Array:
    """Softmax cross-entropy loss of ``logits`` against ``target``.

    The forward pass alone: no array of the logits' size is allocated.

    Parameters
    ----------
    logits : array
        Real floating array (float32 or float64; float16 and bfloat16 on
        the GPU), at least 1-D; C = ``logits.shape[axis]`` classes.
    target : array or int
        Class indices (one dimension fewer than logits, integers in
        [0, C) or equal to ``ignore_index``) or class probabilities (the
        logits' shape, any real dtype, e.g. one-hot rows).
    axis : int, default -1
        The class axis; every other axis is a batch axis (PyTorch's
        (N, C, d1, ...) layout is ``axis=1``).
    weight : array or list, optional
        C class weights, as in ``torch.nn.functional.cross_entropy``.
    ignore_index : int, default -100
        Class-index targets equal to it add nothing to the loss or the mean's
        denominator.
    label_smoothing : float, default 0.0
        ε in [0, 1]: the target distribution q becomes (1 - ε) q + ε / C.
    reduction : {"mean", "sum", "none"}, default "mean"
        "mean" divides the sum of the per-sample losses by the sum of the
        target classes' weights (class indices) or the number of samples
        (probabilities); "none" returns the per-sample losses.
    z_loss : float, default 0.0
        z ≥ 0: adds z · lse² to each counted sample's loss (PaLM's auxiliary
        z-loss), lse = log Σ_c exp(final logits), unweighted by ``weight``,
        reduced with the rest (the mean divides it by the same D); its
        gradient is 2 z · lse · softmax. The part alone is
        ``z_loss * logsumexp(final logits) ** 2``: see :func:`logsumexp`.
    softcap : float, optional
        cap > 0: the logits become cap · tanh(logits / cap) before the loss
        (Gemma-style soft-capping), and the gradient is chained through the
        tanh.
    temperature : float, default 1.0
        T > 0: the logits are divided by T first. The order: divided by the
        temperature, then soft-capped, then the loss and z-loss.
    denominator : float, optional
        With "mean", the number it divides by instead (the gradient too): for
        gradient accumulation over micro-batches or data-parallel ranks, the
        global count of target tokens (``num_items_in_batch``), so that the
        parts add up to the mean of the whole. A positive finite number.

    Returns
    -------
    array
        A 0-d array ("mean", "sum") or the per-sample losses shaped like the
        batch axes ("none"), of the logits' dtype, library and device.

    Raises
    ------
    TypeError
        Non-floating logits, a non-integer class-index target, arrays of
        different libraries, a NumPy masked array (its mask would be
        ignored: pass ``.filled(-np.inf)`` or ``.data``) or ``numpy.matrix``.
    ValueError
        Mismatched shapes, a class index out of range (for Dask arrays, when
        computed), an ``ignore_index`` outside int64, an unknown reduction, a
        smoothing outside [0, 1], a weight of the wrong size, dimensions of
        unknown size, a ``denominator`` that is not a positive finite number or
        comes with another reduction than "mean", a negative ``z_loss``, a
        ``softcap`` or ``temperature`` that is not a positive finite number.

    See Also
    --------
    loss_and_grad : the loss and its gradient in one pass.
    cross_entropy_grad : the gradient alone.
    CrossEntropyLoss : the forward/backward protocol of a layer.
    linear_cross_entropy : the loss of a linear layer's output, without its logits.
    xentcy.torch.cross_entropy, xentcy.jax.cross_entropy : differentiable by torch and JAX.

    Examples
    --------
    The worked example of the spec (classes count from 0):

    >>> import numpy as np
    >>> import xentcy as xc
    >>> A = np.array([[2.0, 1.0, 0.1], [0.1, 2.0, 1.9]])
    >>> xc.cross_entropy(A, np.array([1, 0]))
    array(2.01850839)
    >>> xc.cross_entropy(A, np.array([[0, 1, 0], [1, 0, 0]]), reduction="none").round(3)
    array([1.417, 2.62 ])

    A language model's options: logits soft-capped at 30, and a z-loss:

    >>> y = np.array([1, 0])
    >>> capped = 30 * np.tanh(A / 30)
    >>> loss = xc.cross_entropy(A, y, softcap=30.0, z_loss=1e-4)
    >>> bool(np.isclose(loss, xc.cross_entropy(capped, y) + 1e-4 * np.mean(xc.logsumexp(capped) ** 2)))
    True
    """
    with _dispatch.route({"logits": logits, "target": target, "weight": weight}) as r:
        a = r.arrays
        backend, call, denom = _prepare_cross_entropy(
            a["logits"], a["target"], axis, a["weight"], ignore_index, label_smoothing, reduction,
            given=denominator, options={"z_loss": z_loss, "softcap": softcap, "temperature": temperature},
        )
        losses, _ = backend.cross_entropy_rows(call, want_grad=False, out=None, grad_scale=0.0)
        return r.back(_reductions.reduce_losses(call, losses, denom))


def loss_and_grad(
    logits: Array,
    target: Array,
    /,
    *,
    axis: int = -1,
    weight: Array | None = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    reduction: Reduction = "mean",
    z_loss: float = 0.0,
    softcap: float | None = None,
    temperature: float = 1.0,
    denominator: float | None = None,
    out: Array | None = None,
    inplace: bool = False,
) -> tuple[Array, Array]:
    """The loss and its gradient with respect to ``logits``, in one fused pass.

    Parameters
    ----------
    logits, target, axis, weight, ignore_index, label_smoothing, reduction, z_loss, softcap, \
temperature, denominator
        As in :func:`cross_entropy`.
    out : array, optional
        A writable buffer of the logits' shape, dtype and library that
        receives the gradient; it is returned as ``grad``. It must not share
        memory with ``target`` or ``weight`` (a ValueError), nor with
        ``logits`` unless it is ``logits`` itself.
    inplace : bool, default False
        Write the gradient over ``logits`` and return ``logits`` as ``grad``:
        no buffer of the logits' size is allocated. ``target`` and ``weight``
        must not share memory with ``logits`` (a ValueError).

    Returns
    -------
    loss : array
        As :func:`cross_entropy` returns it.
    grad : array
        d loss / d logits, of the logits' shape and dtype. For
        ``reduction="none"`` the gradient of the sum of the per-sample losses.

    Raises
    ------
    TypeError, ValueError
        As :func:`cross_entropy`; an ``out`` of another library, shape or dtype, a
        read-only buffer, or one that shares memory with another argument.

    See Also
    --------
    cross_entropy : the loss alone.
    cross_entropy_grad : the gradient alone.

    Examples
    --------
    >>> import numpy as np
    >>> import xentcy as xc
    >>> A = np.array([[2.0, 1.0, 0.1], [0.1, 2.0, 1.9]])
    >>> loss, grad = xc.loss_and_grad(A, np.array([1, 0]))
    >>> grad.round(3)
    array([[ 0.33 , -0.379,  0.049],
           [-0.464,  0.243,  0.22 ]])
    >>> G = np.empty_like(A)
    >>> xc.loss_and_grad(A, np.array([1, 0]), out=G)[1] is G
    True
    """
    writes = ("out",) if out is not None else ("logits",) if inplace is True else ()
    with _dispatch.route({"logits": logits, "target": target, "weight": weight, "out": out}, writes) as r:
        a = r.arrays
        logits, target, weight, out = a["logits"], a["target"], a["weight"], a["out"]
        backend, call, denom = _prepare_cross_entropy(
            logits, target, axis, weight, ignore_index, label_smoothing, reduction, out, given=denominator,
            options={"z_loss": z_loss, "softcap": softcap, "temperature": temperature},
        )
        _checks.check_grad_output(
            call, out, inplace, backend, {"logits": logits, "target": target, "weight": weight}
        )
        losses, grad = backend.cross_entropy_rows(
            call,
            want_grad=True,
            out=logits if inplace else out,
            grad_scale=_reductions.gradient_scale(call, denom),
        )
        return r.back((_reductions.reduce_losses(call, losses, denom), grad))


def cross_entropy_grad(
    logits: Array,
    target: Array,
    /,
    *,
    axis: int = -1,
    weight: Array | None = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    reduction: Reduction = "mean",
    z_loss: float = 0.0,
    softcap: float | None = None,
    temperature: float = 1.0,
    denominator: float | None = None,
) -> Array:
    """The gradient of :func:`cross_entropy` with respect to ``logits``.

    For the spec's case (one-hot Y, mean) it is (softmax(A) - Y) / N.

    Parameters
    ----------
    logits, target, axis, weight, ignore_index, label_smoothing, reduction, z_loss, softcap, \
temperature, denominator
        As in :func:`cross_entropy`.

    Returns
    -------
    array
        A new array of the logits' shape, dtype, library and device.

    Raises
    ------
    TypeError, ValueError
        As :func:`cross_entropy`.

    See Also
    --------
    loss_and_grad : the loss too, from the same pass.

    Examples
    --------
    >>> import numpy as np
    >>> import xentcy as xc
    >>> xc.cross_entropy_grad(np.array([0.0, 0.0]), 1)
    array([ 0.5, -0.5])
    """
    return loss_and_grad(
        logits,
        target,
        axis=axis,
        weight=weight,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        reduction=reduction,
        z_loss=z_loss,
        softcap=softcap,
        temperature=temperature,
        denominator=denominator,
    )[1]
