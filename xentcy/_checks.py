"""Argument checks and normalisation, written once for every backend.

Everything here is written with array-API calls on the caller's namespace ``xp``,
so the same rules hold for NumPy, CuPy, PyTorch, JAX and the rest. Backends
receive a :class:`CrossEntropyCall` and never re-check it.
"""

from __future__ import annotations

import math
import numbers
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from array_api_compat import array_namespace, device, is_array_api_obj, is_numpy_array

from ._typing import Array, Namespace

if TYPE_CHECKING:
    from ._backend import Backend

REDUCTIONS = ("mean", "sum", "none")
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def traced(x: Array) -> bool:
    """Whether x is a JAX tracer (inside ``jit``, ``grad``, ``vmap``): no value can be read back."""
    jax = sys.modules.get("jax")
    return jax is not None and isinstance(x, jax.core.Tracer)


def _without_x64(xp: Namespace) -> bool:
    """JAX with 64-bit types off, where asking for int64 or float64 warns and gives 32 bits."""
    jax = sys.modules.get("jax")
    return jax is not None and xp.__name__.startswith("jax") and not jax.config.jax_enable_x64


def index_dtype(xp: Namespace) -> Any:
    """int64, or int32 where the library has no int64 (JAX without x64)."""
    return xp.int32 if _without_x64(xp) else xp.int64


def sum_dtype(xp: Namespace) -> Any:
    """float64, or float32 where the library has no float64 (JAX without x64)."""
    return xp.float32 if _without_x64(xp) else xp.float64


@dataclass(frozen=True)
class CrossEntropyCall:
    """A validated cross-entropy call, normalised for the backends.

    ``target`` is either an int64 array of class indices shaped like
    ``batch_shape`` (``class_indices`` true) or a probability array shaped like
    ``logits`` in the logits' dtype. ``weight`` is None or a 1-D array of C
    weights in the logits' namespace, device and dtype. ``label_smoothing`` is
    0 where its mass eps / C rounds to 0 in the loss's dtype.
    """

    xp: Namespace
    logits: Array
    target: Array
    class_indices: bool
    axis: int
    num_classes: int
    batch_shape: tuple[int, ...]
    weight: Array
    ignore_index: int
    label_smoothing: float
    reduction: str
    traced: bool = False  # inside a JAX trace: nothing can be read back (bad indices give NaN)
    # sum_c w_c in float64 (a 0-d array where the arrays are, or lazy), for the smoothing
    # term of class-index targets: computed once, here; None without weights or smoothing
    weight_sum: Any = None
    # the language-model options (check_loss_options), in the order they apply: the logits
    # are divided by the temperature, then soft-capped to softcap * tanh(x / softcap) (None:
    # not), and z_loss * lse^2 of those final logits is added to each counted sample's loss
    z_loss: float = 0.0
    softcap: float | None = None
    temperature: float = 1.0

    @property
    def num_samples(self) -> int:
        return math.prod(self.batch_shape)


def library_name(x: Array) -> str:
    """The name of the library an array comes from, for error messages."""
    module = type(x).__module__.split(".")[0]
    return module or type(x).__name__


def _describe_dtype(dtype: Any) -> str:
    return str(dtype).removeprefix("torch.")


def _is_real_floating(xp: Namespace, dtype: Any, dtypes: tuple[Any, ...] | None) -> bool:
    # A backend's own dtypes count too: ml_dtypes' bfloat16 is not "real floating" to NumPy.
    return (dtypes is not None and dtype in dtypes) or xp.isdtype(dtype, "real floating")


def check_logits(xp: Namespace, x: Array, name: str, dtypes: tuple[Any, ...] | None) -> None:
    """Logits must be a real floating array of at least one dimension.

    ``dtypes`` is the backend's supported set (None: every real floating dtype).
    """
    if not _is_real_floating(xp, x.dtype, dtypes):
        raise TypeError(
            f"{name} must be a real floating array (float32 or float64), got dtype {_describe_dtype(x.dtype)}"
        )
    if dtypes is not None and x.dtype not in dtypes:
        allowed = ", ".join(_describe_dtype(d) for d in dtypes)
        raise TypeError(
            f"{name} must have one of the dtypes {allowed} for {library_name(x)} arrays, "
            f"got {_describe_dtype(x.dtype)}"
        )
    if x.ndim < 1:
        raise ValueError(f"{name} must have at least 1 dimension, got a 0-d array")
    check_known_shape(x, name)


def check_known_shape(x: Array, name: str) -> None:
    """Every dimension of ``x`` is known (a Dask array after boolean indexing has NaN sizes)."""
    if any(n is None or (isinstance(n, float) and math.isnan(n)) for n in x.shape):
        raise ValueError(
            f"{name} must have known dimensions, got shape {tuple(x.shape)} "
            f"(for a Dask array, call {name}.compute_chunk_sizes() first)"
        )


def check_flag(value: Array, name: str) -> bool:
    """``value`` as a bool: True, False or a NumPy bool; anything else is a TypeError."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__}")
    return bool(value)


def check_array_subclass(x: Array, name: str) -> None:
    """NumPy array subclasses whose meaning xentcy would silently drop are a TypeError."""
    if isinstance(x, np.ma.MaskedArray):
        fill = {"target": "ignore_index (class indices) or 0 (probabilities)", "weight": "0"}.get(
            name, "-np.inf (masked classes get probability 0)"
        )
        raise TypeError(
            f"{name} is a masked array, and xentcy would ignore its mask: pass {name}.filled(value) "
            f"with value {fill}, or {name}.data to use the values under the mask"
        )
    if isinstance(x, np.matrix):
        raise TypeError(
            f"{name} is a numpy.matrix, which xentcy does not support (it is always 2-D and its "
            f"operators differ from arrays'): pass np.asarray({name})"
        )


def normalize_axis(axis: Any, ndim: int, name: str = "axis") -> int:
    """``axis`` as a non-negative int below ``ndim``."""
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(axis).__name__}")
    axis = int(axis)
    if not -ndim <= axis < ndim:
        raise ValueError(f"{name}={axis} is out of range for an array of {ndim} dimensions")
    return axis % ndim


def check_options(ignore_index: Any, label_smoothing: Any, reduction: Any) -> tuple[int, float]:
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral):
        raise TypeError(f"ignore_index must be an int, got {type(ignore_index).__name__}")
    if not INT64_MIN <= int(ignore_index) <= INT64_MAX:
        # class indices are int64 in every backend: a wider value could never match one
        raise ValueError(
            f"ignore_index must be a 64-bit signed integer in [-2**63, 2**63 - 1], got {int(ignore_index)}"
        )
    if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, numbers.Real):
        raise TypeError(
            f"label_smoothing must be a real number in [0, 1], got {type(label_smoothing).__name__}"
        )
    eps = float(label_smoothing)
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {eps}")
    if not isinstance(reduction, str) or reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {', '.join(map(repr, REDUCTIONS))}, got {reduction!r}")
    return int(ignore_index), eps


def _positive_real(value: Any, name: str, what: str) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be {what}, got {type(value).__name__}")
    return float(value)


# The range of softcap and temperature: the kernels multiply by 1 / T and 1 / (T cap), which
# must be normal float32 numbers (the logits' or their accumulation's type); 1e15 times or a
# 1e15th of a logit is past any use (a temperature of 1e-15 is the argmax already).
SCALE_RANGE = (1e-15, 1e15)


def check_loss_options(z_loss: Any, softcap: Any, temperature: Any) -> tuple[float, float | None, float]:
    """(z_loss, softcap, temperature) of a loss call: z_loss a finite number >= 0, softcap None
    or a positive number, temperature a positive number, both in SCALE_RANGE."""
    z = _positive_real(z_loss, "z_loss", "a finite number >= 0")
    if not (math.isfinite(z) and z >= 0.0):
        raise ValueError(f"z_loss must be a finite number >= 0, got {z}")
    low, high = SCALE_RANGE
    cap = None
    if softcap is not None:
        cap = _positive_real(softcap, "softcap", "None or a positive finite number")
        if not (math.isfinite(cap) and cap > 0.0):
            raise ValueError(f"softcap must be None or a positive finite number, got {cap}")
        if not low <= cap <= high:
            raise ValueError(f"softcap must be in [{low:g}, {high:g}], got {cap}")
    t = _positive_real(temperature, "temperature", "a positive finite number")
    if not (math.isfinite(t) and t > 0.0):
        raise ValueError(f"temperature must be a positive finite number, got {t}")
    if not low <= t <= high:
        raise ValueError(f"temperature must be in [{low:g}, {high:g}], got {t}")
    return z, cap, t


def _effective_smoothing(xp: Namespace, eps: float, num_classes: int, dtype: Any) -> float:
    """eps, or 0 where the smoothing mass eps / C rounds to 0 in the dtype the kernels hold it in
    (the loss's): every backend then computes without it, alike. It matters only against an
    infinite or NaN term, where 0 * inf and 1e-300 * inf differ (docs/math.md, Numerics)."""
    mass = eps / num_classes
    if itemsize(xp, loss_dtype(xp, dtype)) == 4:
        mass = float(np.float32(mass))
    return eps if mass != 0.0 else 0.0


def _check_weight(xp: Namespace, weight: Array, logits: Array, num_classes: int) -> Array | None:
    """``weight`` converted to the logits' namespace, device and dtype."""
    if weight is None:
        return None
    check_array_subclass(weight, "weight")
    if is_array_api_obj(weight) and not is_numpy_array(weight) and array_namespace(weight) != xp:
        raise TypeError(
            "weight must be a list, a NumPy array or an array of the logits' library "
            f"({library_name(logits)}), got a {library_name(weight)} array"
        )
    try:
        w = xp.asarray(weight, device=device(logits))
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"weight must be a 1-D array or list of {num_classes} real numbers, got {type(weight).__name__}"
        ) from err
    if not (xp.isdtype(w.dtype, "real floating") or xp.isdtype(w.dtype, "integral")):
        raise TypeError(f"weight must hold real numbers, got dtype {_describe_dtype(w.dtype)}")
    if w.ndim != 1 or w.shape[0] != num_classes:
        raise ValueError(
            f"weight must be 1-D with one entry per class ({num_classes},), got shape {tuple(w.shape)}"
        )
    return xp.astype(w, logits.dtype, copy=False)


def _check_class_index_dtype(xp: Namespace, y: Array, num_classes: int, ignore_index: int) -> Array:
    """Class indices as int64; their values are checked by :func:`denominator`.

    Unsigned 64-bit values of 2**63 and more would wrap to negative int64 values
    (one of which may be ignore_index): they are out of range for any C, and raise
    here with the value as written (one read-back, for uint64 targets only).
    """
    if not xp.isdtype(y.dtype, "integral"):
        raise TypeError(
            "target with one dimension fewer than logits must hold integer class indices, "
            f"got dtype {_describe_dtype(y.dtype)}"
        )
    y64 = xp.astype(y, index_dtype(xp), copy=False)
    if xp.iinfo(y.dtype).max > INT64_MAX and not traced(y):
        # an unsigned value v >= 2**63 became v - 2**64 < 0 (torch's uint64 has no comparisons)
        wrapped = y64 < 0
        if bool(xp.any(wrapped)):
            largest = int(xp.max(xp.where(wrapped, y64, xp.full_like(y64, INT64_MIN))))
            raise class_index_error(num_classes, ignore_index, largest + 2**64)
    return y64


def class_index_error(num_classes: int, ignore_index: int, value: int) -> ValueError:
    return ValueError(
        f"target holds the class index {value}, outside [0, {num_classes}) "
        f"and not ignore_index={ignore_index}"
    )


def check_class_index_values(call: CrossEntropyCall) -> None:
    """Every class index is in [0, C) or equal to ignore_index (one read-back of a flag)."""
    xp, y, num_classes = call.xp, call.target, call.num_classes
    kept = y != call.ignore_index
    bad = kept & ((y < 0) | (y >= num_classes))
    if not bool(xp.any(bad)):
        return
    too_big = kept & (y >= num_classes)
    if bool(xp.any(too_big)):
        value = int(xp.max(xp.where(too_big, y, xp.zeros_like(y))))
    else:
        value = int(xp.min(xp.where(bad, y, xp.zeros_like(y))))
    raise class_index_error(call.num_classes, call.ignore_index, value)


def _check_probabilities(xp: Namespace, q: Array, logits: Array, dtypes: tuple[Any, ...] | None) -> Array:
    if not (
        _is_real_floating(xp, q.dtype, dtypes)
        or xp.isdtype(q.dtype, "integral")
        or xp.isdtype(q.dtype, "bool")
    ):
        raise TypeError(f"target of class probabilities must be real, got dtype {_describe_dtype(q.dtype)}")
    if tuple(q.shape) != tuple(logits.shape):
        raise ValueError(
            "target of class probabilities must have the logits' shape "
            f"{tuple(logits.shape)}, got {tuple(q.shape)}"
        )
    return xp.astype(q, logits.dtype, copy=False)


def check_cross_entropy(
    xp: Namespace,
    logits: Array,
    target: Array,
    *,
    axis: Any,
    weight: Array,
    ignore_index: Any,
    label_smoothing: Any,
    reduction: Any,
    dtypes: tuple[Any, ...] | None,
    z_loss: Any = 0.0,
    softcap: Any = None,
    temperature: Any = 1.0,
) -> CrossEntropyCall:
    """Check every argument of a cross-entropy call; return it normalised."""
    check_logits(xp, logits, "logits", dtypes)
    ignore_index, eps = check_options(ignore_index, label_smoothing, reduction)
    z, cap, temp = check_loss_options(z_loss, softcap, temperature)
    ax = normalize_axis(axis, logits.ndim)
    num_classes = int(logits.shape[ax])
    if num_classes == 0:
        raise ValueError(f"logits must have at least one class along axis {ax}, got C = 0")
    batch_shape = tuple(int(n) for i, n in enumerate(logits.shape) if i != ax)
    if isinstance(target, numbers.Integral) and not isinstance(target, bool):
        if not INT64_MIN <= int(target) <= INT64_MAX:
            raise class_index_error(num_classes, ignore_index, int(target))
        target = xp.asarray(int(target), device=device(logits))
    if not hasattr(target, "ndim"):
        raise TypeError(f"target must be an array, got {type(target).__name__}")
    check_known_shape(target, "target")
    if target.ndim == logits.ndim - 1:
        if tuple(target.shape) != batch_shape:
            raise ValueError(
                "target of class indices must have the logits' shape without the class axis "
                f"{batch_shape}, got {tuple(target.shape)}"
            )
        target = _check_class_index_dtype(xp, target, num_classes, ignore_index)
        class_indices = True
    elif target.ndim == logits.ndim:
        target = _check_probabilities(xp, target, logits, dtypes)
        class_indices = False
    else:
        raise ValueError(
            f"target must have {logits.ndim - 1} dimensions (class indices) or {logits.ndim} "
            f"(class probabilities) for {logits.ndim}-D logits, got {target.ndim}"
        )
    w = _check_weight(xp, weight, logits, num_classes)
    eps = _effective_smoothing(xp, eps, num_classes, logits.dtype)
    return CrossEntropyCall(
        xp=xp,
        logits=logits,
        target=target,
        class_indices=class_indices,
        axis=ax,
        num_classes=num_classes,
        batch_shape=batch_shape,
        weight=w,
        ignore_index=ignore_index,
        label_smoothing=eps,
        reduction=reduction,
        traced=traced(logits) or traced(target),
        weight_sum=None if w is None or eps == 0.0 else xp.sum(xp.astype(w, sum_dtype(xp))),
        z_loss=z,
        softcap=cap,
        temperature=temp,
    )


def check_denominator(value: Any, reduction: str) -> float | None:
    """A caller's D for the mean (``denominator=``): None, or a positive finite number, with
    reduction "mean" only."""
    if value is None:
        return None
    if reduction != "mean":
        raise ValueError(f"denominator applies to reduction='mean' only, got reduction={reduction!r}")
    # a real number, or a 0-d array of one (a count from an all-reduce), read here
    number = isinstance(value, numbers.Real) or getattr(value, "ndim", None) == 0
    if not number or isinstance(value, (bool, np.bool_)) or traced(value):
        raise TypeError(f"denominator must be a positive number, got {type(value).__name__}")
    try:
        d = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"denominator must be a positive number, got {type(value).__name__}") from None
    if not (math.isfinite(d) and d > 0):
        raise ValueError(f"denominator must be a positive finite number, got {d}")
    return d


def check_linear(
    xp: Namespace, hidden: Array, classifier: Array, bias: Array | None, dtypes: tuple[Any, ...] | None
) -> tuple[Array, Array, Array | None]:
    """The arrays of a linear layer's loss: hidden (..., H) as (N, H) rows, classifier (V, H)
    and bias (V,) or None, all of hidden's real floating dtype."""
    check_logits(xp, hidden, "hidden", dtypes)
    check_logits(xp, classifier, "classifier", dtypes)
    if classifier.dtype != hidden.dtype:
        raise TypeError(
            f"classifier must have hidden's dtype {_describe_dtype(hidden.dtype)}, "
            f"got {_describe_dtype(classifier.dtype)}"
        )
    h_size = int(hidden.shape[-1])
    if classifier.ndim != 2 or int(classifier.shape[1]) != h_size:
        raise ValueError(
            f"classifier must have shape (V, {h_size}) for hidden states of {h_size} features, "
            f"got {tuple(classifier.shape)}"
        )
    if int(classifier.shape[0]) == 0:
        raise ValueError("classifier must have at least one class (row), got V = 0")
    if bias is not None:
        check_array_subclass(bias, "bias")
        if not hasattr(bias, "dtype") or tuple(bias.shape) != (int(classifier.shape[0]),):
            raise ValueError(
                f"bias must have shape ({int(classifier.shape[0])},), one entry per class, "
                f"got {tuple(getattr(bias, 'shape', ())) or type(bias).__name__}"
            )
        if bias.dtype != hidden.dtype:
            raise TypeError(
                f"bias must have hidden's dtype {_describe_dtype(hidden.dtype)}, "
                f"got {_describe_dtype(bias.dtype)}"
            )
    rows = xp.reshape(hidden, (-1, h_size)) if hidden.ndim != 2 else hidden
    return rows, classifier, bias


def check_grad_output(
    call: CrossEntropyCall, out: Array, inplace: bool, backend: Backend, inputs: dict[str, Array]
) -> None:
    """``out=`` and ``inplace=`` must name a writable buffer shaped like the logits.

    ``backend.writable(x)`` tells whether the backend can write into ``x`` and
    ``backend.overlaps(x, y)`` whether x and y may share memory; ``inputs``
    are the caller's other arrays by argument name, which ``out`` must not overlap.
    """
    writable, logits = backend.writable, call.logits
    if check_flag(inplace, "inplace"):
        if out is not None:
            raise ValueError("give either out= or inplace=True, not both")
        if not writable(logits):
            raise ValueError(
                f"inplace=True needs writable logits, got a read-only {library_name(logits)} array"
            )
        others = {name: x for name, x in inputs.items() if name != "logits"}
        _check_no_overlap(backend, logits, others, "inplace=True writes over logits, which")
        return
    if out is None:
        return
    if type(out) is not type(logits):
        raise TypeError(
            f"out must be an array of the logits' library ({library_name(logits)}), "
            f"got {type(out).__name__} from {library_name(out)}"
        )
    if tuple(out.shape) != tuple(logits.shape):
        raise ValueError(f"out must have the logits' shape {tuple(logits.shape)}, got {tuple(out.shape)}")
    if out.dtype != logits.dtype:
        raise TypeError(
            f"out must have the logits' dtype {_describe_dtype(logits.dtype)}, "
            f"got {_describe_dtype(out.dtype)}"
        )
    if not writable(out):
        raise ValueError(f"out must be writable, got a read-only {library_name(out)} array")
    if out is logits:
        return
    _check_no_overlap(backend, out, inputs, "out")


def _check_no_overlap(backend: Backend, written: Array, inputs: dict[str, Array], what: str) -> None:
    """The array the gradient is written into shares no memory with the other inputs."""
    for name, x in inputs.items():
        if type(x) is type(written) and (x is written or backend.overlaps(written, x)):
            raise ValueError(f"{what} must not share memory with {name}")


def itemsize(xp: Namespace, dtype: Any) -> int:
    itemsize = getattr(dtype, "itemsize", None)
    return itemsize if itemsize is not None else xp.finfo(dtype).bits // 8  # array_api_strict's dtypes


def loss_dtype(xp: Namespace, dtype: Any) -> Any:
    """The dtype of the loss: the logits' for float32 and float64, float32 for half precision
    (a bfloat16 loss of 36 could only move in steps of 0.25; api.md, Arguments)."""
    return xp.float32 if itemsize(xp, dtype) < 4 else dtype
