"""JAX integration: xentcy's fused loss under ``jit``, ``grad`` and ``vmap``.

``xentcy.jax.cross_entropy`` is a ``jax.custom_vjp`` function whose forward pass runs
xentcy's fused CPU kernel, which computes the gradient with the loss; the backward pass
multiplies that saved gradient by the incoming cotangent (a multiplication XLA drops
under ``jax.grad``, whose cotangent is 1). On the CPU the kernel runs as an XLA custom
call (``jax.ffi``: the CPU core's handler, on XLA's own buffers, without a copy); on
other platforms, and with a jaxlib without ``jax.ffi``, through ``jax.pure_callback``
on the host. It works eagerly and under ``jit``, ``grad``, ``value_and_grad`` and
``vmap`` (one kernel call per mapped problem), with 64-bit types on or off.

Inside a trace a class index outside [0, C) (and not ``ignore_index``) cannot raise: that
row's loss and gradient are NaN (the mean and sum too); eager calls raise a ValueError.
No gradient flows to ``target`` or ``weight``. Importing this module imports JAX;
``import xentcy`` does not.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import _api, _checks, _reductions
from ._cpu import _core

__all__ = ["cross_entropy"]


def _loss_dtype(dtype: Any) -> Any:
    return jnp.float32 if jnp.dtype(dtype).itemsize < 4 else jnp.dtype(dtype)


def _host(logits, target, weight, *, ignore_index, label_smoothing, reduction, axis, z_loss, softcap,
          temperature, denominator, want_grad):
    """The fused pass on the host (NumPy arrays). Bad class indices give NaN rows instead of
    the ValueError: this runs inside a trace, where nothing can be raised to the caller."""
    a = np.asarray(logits)  # (the callback's arguments are jax.Arrays on JAX 0.10)
    weight = None if weight is None else np.asarray(weight)
    dtype = a.dtype
    if dtype.itemsize < 4:
        a = a.astype(np.float32)  # the CPU core computes float32 and float64
    t = np.asarray(target)
    bad = None
    if t.ndim == a.ndim - 1:
        num_classes = a.shape[axis]
        bad = (t != ignore_index) & ((t < 0) | (t >= num_classes))
        if bad.any():
            t = np.where(bad, ignore_index, t)
        else:
            bad = None
    options = dict(
        axis=axis,
        weight=weight,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        reduction=reduction,
        z_loss=z_loss,
        softcap=softcap,
        temperature=temperature,
        denominator=denominator,
    )
    loss_dtype = _loss_dtype(dtype)
    if want_grad:
        loss, grad = _api.loss_and_grad(a, t, **options)
    else:
        loss, grad = _api.cross_entropy(a, t, **options), None
    loss = np.asarray(loss, dtype=loss_dtype)
    if bad is not None:
        if reduction == "none":
            loss = np.where(bad, np.nan, loss).astype(loss_dtype)
        else:
            loss = np.asarray(np.nan, dtype=loss_dtype)
        if grad is not None:
            grad = np.where(np.expand_dims(bad, axis), np.nan, grad)
    if grad is None:
        return loss
    return loss, np.asarray(grad, dtype=dtype)


def _shapes(logits, reduction, axis, want_grad):
    shape = logits.shape[:axis] + logits.shape[axis + 1 :] if reduction == "none" else ()
    loss = jax.ShapeDtypeStruct(shape, _loss_dtype(logits.dtype))
    return (loss, jax.ShapeDtypeStruct(logits.shape, logits.dtype)) if want_grad else loss


def _callback(logits, target, weight, options, want_grad):
    """The fused pass through jax.pure_callback: any platform (the arrays go to the host),
    and a jaxlib without the typed FFI."""
    host = functools.partial(_host, **dict(options), want_grad=want_grad)
    shapes = _shapes(logits, dict(options)["reduction"], dict(options)["axis"], want_grad)
    if weight is None:
        return jax.pure_callback(
            lambda a, t: host(a, t, None), shapes, logits, target, vmap_method="sequential"
        )
    return jax.pure_callback(host, shapes, logits, target, weight, vmap_method="sequential")


_FFI_TARGET = "xentcy_cross_entropy"
_REDUCTIONS = {"mean": 0, "sum": 1, "none": 2}


@functools.cache
def _ffi_registered() -> bool:
    """Whether the CPU core's XLA FFI handler (xent_xla.h) is registered with this jaxlib."""
    ffi = getattr(jax, "ffi", None)
    if ffi is None or not hasattr(ffi, "ffi_call"):
        return False
    try:
        ffi.register_ffi_target(_FFI_TARGET, _core.xla_cross_entropy(), platform="cpu")
    except Exception:  # noqa: BLE001 - a jaxlib that refuses it: the callback path
        return False
    return True


def _ffi(logits, target, weight, options, want_grad):
    """The fused pass as XLA's custom call on the CPU: the kernel reads and writes XLA's own
    buffers (no copy in or out), laid out as (N, C) rows with the classes last."""
    opts = dict(options)
    axis, reduction = opts["axis"], opts["reduction"]
    num_classes = logits.shape[axis]
    batch_shape = logits.shape[:axis] + logits.shape[axis + 1 :]
    a = jnp.moveaxis(logits, axis, -1)
    moved_shape = a.shape
    a = a.reshape(-1, num_classes)
    if a.dtype.itemsize < 4:
        a = a.astype(jnp.float32)  # the CPU core computes float32 and float64
    if target.ndim == logits.ndim:
        t = jnp.moveaxis(target, axis, -1).reshape(a.shape).astype(a.dtype)
    else:
        t = target.reshape(-1)
        if t.dtype not in (jnp.int32, jnp.int64):
            t = t.astype(jnp.int64 if jax.config.jax_enable_x64 else jnp.int32)
    w = jnp.zeros((0,), a.dtype) if weight is None else weight.astype(a.dtype)
    loss = jax.ShapeDtypeStruct((a.shape[0],) if reduction == "none" else (), _loss_dtype(logits.dtype))
    results = (loss, jax.ShapeDtypeStruct(a.shape, a.dtype)) if want_grad else (loss,)
    out = jax.ffi.ffi_call(_FFI_TARGET, results, vmap_method="sequential")(
        a,
        t,
        w,
        ignore_index=np.int64(opts["ignore_index"]),
        label_smoothing=np.float64(opts["label_smoothing"]),
        reduction=np.int32(_REDUCTIONS[reduction]),
        z_loss=np.float64(opts["z_loss"]),
        temperature=np.float64(opts["temperature"]),
        softcap=np.float64(opts["softcap"] or 0.0),
        denominator=np.float64(opts["denominator"] or 0.0),
    )
    loss = out[0].reshape(batch_shape) if reduction == "none" else out[0]
    if not want_grad:
        return loss
    grad = jnp.moveaxis(out[1].reshape(moved_shape), -1, axis).astype(logits.dtype)
    return loss, grad


def _call(logits, target, weight, options, want_grad):
    if not _ffi_registered():
        return _callback(logits, target, weight, options, want_grad)
    # the custom call where the arrays are on the CPU, the callback on any other platform
    return jax.lax.platform_dependent(
        logits,
        target,
        weight,
        cpu=lambda *a: _ffi(*a, options, want_grad),
        default=lambda *a: _callback(*a, options, want_grad),
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _cross_entropy(logits, target, weight, options):
    return _call(logits, target, weight, options, False)


def _forward(logits, target, weight, options):
    loss, grad = _call(logits, target, weight, options, True)
    return loss, (grad, target, weight)


def _backward(options, saved, cotangent):
    grad, target, weight = saved
    opts = dict(options)
    scale = jnp.expand_dims(cotangent, opts["axis"]) if opts["reduction"] == "none" else cotangent
    d_logits = (grad * scale.astype(grad.dtype)).astype(grad.dtype)
    d_target = (
        np.zeros(target.shape, jax.dtypes.float0)
        if jnp.issubdtype(target.dtype, jnp.integer)
        else jnp.zeros_like(target)
    )
    d_weight = None if weight is None else jnp.zeros_like(weight)
    return d_logits, d_target, d_weight


_cross_entropy.defvjp(_forward, _backward)


def cross_entropy(
    logits: Any,
    target: Any,
    /,
    *,
    axis: int = -1,
    weight: Any = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
    z_loss: float = 0.0,
    softcap: float | None = None,
    temperature: float = 1.0,
    denominator: float | None = None,
) -> Any:
    """Softmax cross-entropy of ``logits`` against ``target``, differentiable by JAX.

    The arguments of :func:`xentcy.cross_entropy` (the class axis is last by default, as
    in optax).

    Parameters
    ----------
    logits : jax.Array
        float32 or float64 (float16 and bfloat16 are computed in float32), at least 1-D.
    target : jax.Array or int
        Class indices (the logits' shape without ``axis``) or class probabilities (the
        logits' shape).
    axis, weight, ignore_index, label_smoothing, reduction, z_loss, softcap, temperature
        As in :func:`xentcy.cross_entropy`.
    denominator : float, optional
        As in :func:`xentcy.cross_entropy`: a number, not a traced value.

    Returns
    -------
    jax.Array
        The loss: 0-d, or per sample for ``reduction="none"``; float32 for half-precision
        logits, else the logits' dtype.

    Raises
    ------
    TypeError, ValueError
        Eagerly, as :func:`xentcy.cross_entropy`. Inside a trace a bad class index gives its
        row a NaN loss and gradient instead.

    See Also
    --------
    xentcy.cross_entropy : the loss of any array library, not differentiable.

    Examples
    --------
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import xentcy.jax as xj
    >>> A = jnp.array([[2.0, 1.0, 0.1], [0.1, 2.0, 1.9]])
    >>> y = jnp.array([1, 0])
    >>> print(f"{float(jax.jit(xj.cross_entropy)(A, y)):.5f}")
    2.01851
    >>> import numpy as np
    >>> np.asarray(jax.grad(xj.cross_entropy)(A, y), dtype=np.float64).round(3)
    array([[ 0.33 , -0.379,  0.049],
           [-0.464,  0.243,  0.22 ]])
    """
    if not isinstance(logits, jax.Array):
        logits = jnp.asarray(logits)
    if isinstance(target, int) and not isinstance(target, bool):
        target = jnp.asarray(target)
    if not isinstance(target, jax.Array):
        target = jnp.asarray(target)
    if weight is not None:
        weight = jnp.asarray(weight, dtype=_loss_dtype(logits.dtype))
    if not (_checks.traced(logits) or _checks.traced(target) or _checks.traced(weight)):
        # eager: every check of xentcy.cross_entropy, with its errors (the values can be read)
        _check_eager(logits, target, weight, axis, ignore_index, label_smoothing, reduction)
    ax = _checks.normalize_axis(axis, logits.ndim)
    _checks.check_options(ignore_index, label_smoothing, reduction)
    z, cap, t = _checks.check_loss_options(z_loss, softcap, temperature)
    options = (
        ("axis", ax),
        ("ignore_index", int(ignore_index)),
        ("label_smoothing", float(label_smoothing)),
        ("reduction", str(reduction)),
        ("z_loss", z),
        ("softcap", cap),
        ("temperature", t),
        ("denominator", _checks.check_denominator(denominator, reduction)),
    )
    return _cross_entropy(logits, target, weight, options)


def _check_eager(logits, target, weight, axis, ignore_index, label_smoothing, reduction) -> None:
    """The checks of :func:`xentcy.cross_entropy`, on the values (eager calls only)."""
    a = np.asarray(logits)
    if a.dtype.itemsize < 4 and a.dtype.kind == "f":
        a = a.astype(np.float32)
    call = _checks.check_cross_entropy(
        np,
        a,
        np.asarray(target),
        axis=axis,
        weight=None if weight is None else np.asarray(weight),
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        reduction=reduction,
        dtypes=None,
    )
    _reductions.denominator(call)  # the class-index range check
