"""The CuPy backend: xentcy's own CUDA kernels (``cross_entropy.cu``), launched through CuPy.

The kernels are CUDA C++ templates, compiled at first use by NVRTC through
``cupy.RawModule`` with ``name_expressions``, once per device and dtype, and
cached. :class:`CudaBackend` lays arrays out as dense (N, C) rows (class axis last,
unit stride; other layouts are copied first), picks the kernel and its grid,
and casts every argument to the exact C type the kernel takes: CuPy does not
check them. Work goes on CuPy's current stream and nothing here synchronizes.

The backend does its array work through the array module it is given and
launches through a launcher object, the one seam between it and the device:
:class:`CupyLauncher` (``RawModule`` on a GPU) for CuPy arrays, and in the
tests a host-compiled build of the same kernels on NumPy arrays
(``tests/cuda_host``), so that every argument built here reaches an emulated
kernel exactly as it would reach the GPU.

Nothing here imports CuPy at import time, so that the compile test can ask
for the kernel source, the instantiations and the launch plans on a machine
without a GPU.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import numpy as np

from .. import _layout
from .._typing import Array, Namespace

if TYPE_CHECKING:
    from .._checks import CrossEntropyCall

SOURCE_FILE = Path(__file__).with_name("cross_entropy.cu")

# NVRTC options; CuPy adds the target architecture (and -ftz=true).
COMPILE_OPTIONS = ("-std=c++17",)

# numpy dtype name -> the kernels' C type
C_TYPES = {
    "float32": "float",
    "float64": "double",
    "float16": "__half",
    "bfloat16": "__nv_bfloat16",
}

# (NV, MAX_THREADS) of the *_cached kernels: NV 16-byte vectors of a row held in
# registers per thread, in blocks of at most MAX_THREADS threads (the kernel's
# launch bound, which caps its registers: 64 a thread at 1024, 255 at 256).
_CACHED = {
    "float32": ((1, 1024), (2, 1024), (4, 512), (8, 256)),
    "float64": ((1, 1024), (2, 1024), (4, 256), (8, 256)),
    "float16": ((1, 1024), (2, 1024), (4, 256)),
    "bfloat16": ((1, 1024), (2, 1024), (4, 256)),
}
# The probability kernels hold the target's row too.
_CACHED_PROB = {
    "float32": ((1, 512), (2, 1024), (4, 256)),
    "float64": ((1, 1024), (2, 256), (4, 256)),
    "float16": ((1, 1024), (2, 256)),
    "bfloat16": ((1, 1024), (2, 256)),
}

# The cross-entropy kernels with the language-model options (z_loss, softcap, temperature):
# kernels of their own, so that the plain ones keep their code. Their tiers are the plain
# ones' except where those spill on sm_80 or sm_90 with the options' extra registers (the
# options hold their factors, tanh and the slope's exp need more; nvcc 13.0): the half types'
# and float64's NV = 2 at 1024 threads (64 registers; at 512, ptxas still kept 64 for the
# half types and spilled), and float64's streamed kernel (80 to 96 registers; its group is
# 512 threads, not 1024). benchmarks/results/cuda_resources_sm*.txt has them all.
OPTION_KERNELS = ("index_options", "prob_options")
_CACHED_OPTIONS = {
    "float32": _CACHED["float32"],
    "float64": ((1, 1024), (2, 512), (4, 256), (8, 256)),
    "float16": ((1, 1024), (2, 256), (4, 256)),
    "bfloat16": ((1, 1024), (2, 256), (4, 256)),
}
_CACHED_PROB_OPTIONS = _CACHED_PROB
_STREAMED_OPTIONS = {"float32": 1024, "float64": 512, "float16": 1024, "bfloat16": 1024}

# Threads of a block whose groups own one row each (groups of up to a warp).
_SMALL_GROUP_BLOCK = 256
_MAX_GROUP = 1024
_EVAL_MAX_GROUP = 512
_MAX_CLASSES = 1 << 30


def kernel_source() -> str:
    """The CUDA C++ source that every instantiation is compiled from."""
    return SOURCE_FILE.read_text(encoding="utf-8")


def _tiers(kernel: str, dtype_name: str) -> tuple[tuple[int, int], ...]:
    """(NV, MAX_THREADS) of the cached instantiations of a cross-entropy kernel."""
    if kernel in OPTION_KERNELS:
        return (_CACHED_PROB_OPTIONS if kernel == "prob_options" else _CACHED_OPTIONS)[dtype_name]
    return (_CACHED_PROB if kernel == "prob" else _CACHED)[dtype_name]


def _streamed_name(kernel: str, dtype_name: str) -> str:
    t = C_TYPES[dtype_name]
    if kernel in OPTION_KERNELS:
        return f"xentcy_{kernel}_streamed<{t}, {_STREAMED_OPTIONS[dtype_name]}>"
    return f"xentcy_{kernel}_streamed<{t}>"


def name_expressions(
    dtype_names: tuple[str, ...] | list[str] = tuple(C_TYPES), options: bool | None = None
) -> list[str]:
    """Every kernel instantiation the launcher requests for these dtypes (numpy names).

    ``options``: None, all of them; False, the plain kernels only; True, the kernels of the
    language-model options only. CuPy compiles the two sets as two modules, so that a run
    without the options never compiles (at first use, by NVRTC) the kernels it does not take.
    """
    names = []
    for dtype_name in dtype_names:
        t = C_TYPES[dtype_name]
        if options is not True:
            for kernel in ("index", "prob"):
                names += [f"xentcy_{kernel}_cached<{t}, {nv}, {mt}>" for nv, mt in _tiers(kernel, dtype_name)]
                names.append(_streamed_name(kernel, dtype_name))
            names += [f"xentcy_softmax_cached<{t}, {nv}, {mt}>" for nv, mt in _CACHED[dtype_name]]
            names.append(f"xentcy_softmax_streamed<{t}>")
            names.append(f"xentcy_logsumexp<{t}>")
            names.append(f"xentcy_eval_streamed<{t}>")
        if options is not False:
            for kernel in OPTION_KERNELS:
                names += [f"xentcy_{kernel}_cached<{t}, {nv}, {mt}>" for nv, mt in _tiers(kernel, dtype_name)]
                names.append(_streamed_name(kernel, dtype_name))
    return names


class Plan(NamedTuple):
    """How one kernel runs over (N, C) rows."""

    name: str  # the name expression
    group: int  # G, threads per row: a power of two, at most 1024
    block: int  # threads per block
    grid: int  # blocks


def _pow2_at_least(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _row_layout(
    n_vec: int, tiers: tuple[tuple[int, int], ...], streamed_group: int = _MAX_GROUP
) -> tuple[int, int, int]:
    """(G, NV, MAX_THREADS) for a row of ``n_vec`` 16-byte vectors; NV = 0: streamed.

    Rows of up to 32 vectors take a group of at most a warp, one vector per
    thread; longer rows the smallest group, from a warp up, whose threads hold
    the row in registers (so C <= 1024 in float32 takes one warp); rows too
    long for that are streamed twice by ``streamed_group`` threads (1024 but
    for float64's kernel of the options).
    """
    if n_vec <= 32:
        return _pow2_at_least(n_vec), 1, tiers[0][1]
    group = 32
    while group <= _MAX_GROUP:
        nv = _pow2_at_least(-(-n_vec // group))
        for tier_nv, max_threads in tiers:
            if tier_nv == nv and max_threads >= max(group, _SMALL_GROUP_BLOCK):
                return group, nv, max_threads
        group *= 2
    return streamed_group, 0, streamed_group


def plan(kernel: str, dtype_name: str, n_rows: int, num_classes: int) -> Plan:
    """The instantiation and grid of ``kernel`` ("index", "prob", "index_options", "prob_options",
    "softmax", "logsumexp", "eval")."""
    itemsize = {"float64": 8, "float32": 4}.get(dtype_name, 2)
    if kernel == "eval":
        # one streamed kernel: a group of up to 512 threads (its launch bound), a thread a vector
        group = min(_EVAL_MAX_GROUP, _pow2_at_least(-(-num_classes // (16 // itemsize))))
        block = _SMALL_GROUP_BLOCK if group <= 32 else group
        name = f"xentcy_eval_streamed<{C_TYPES[dtype_name]}>"
        return Plan(name, group, block, -(-n_rows // (block // group)))
    streamed_group = _STREAMED_OPTIONS[dtype_name] if kernel in OPTION_KERNELS else _MAX_GROUP
    group, nv, max_threads = _row_layout(
        -(-num_classes // (16 // itemsize)), _tiers(kernel, dtype_name), streamed_group
    )
    t = C_TYPES[dtype_name]
    if kernel == "logsumexp":
        name = f"xentcy_logsumexp<{t}>"
    elif nv == 0:
        name = _streamed_name(kernel, dtype_name)
    else:
        name = f"xentcy_{kernel}_cached<{t}, {nv}, {max_threads}>"
    block = _SMALL_GROUP_BLOCK if group <= 32 else group
    return Plan(name, group, block, -(-n_rows // (block // group)))


# ------------------------------------------------------------------ launchers


class Launcher(Protocol):
    """Where the backend's kernels run: the only part of it that knows the device."""

    def device(self, x: Array) -> Any:
        """A context manager that makes x's device current."""

    def address(self, x: Array) -> int:
        """The address of x's first element on its device."""

    def launch(self, dtype_name: str, name: str, grid: int, block: int, args: tuple[Any, ...]) -> None:
        """Runs instantiation ``name`` (of the kernels compiled for ``dtype_name``) on a 1-D grid;
        ``args`` are arrays (pointers) and NumPy scalars of the kernel's exact C types."""


def _dtypes() -> tuple[Any, ...]:
    dtypes = [np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)]
    try:
        import ml_dtypes  # CuPy's bfloat16 arrays use its dtype
    except ImportError:
        pass
    else:
        dtypes.append(np.dtype(ml_dtypes.bfloat16))
    return tuple(dtypes)


DTYPES = _dtypes()


@functools.cache
def _module(device_id: int, dtype_name: str, options: bool) -> Any:
    """The compiled kernels of one dtype on one device (compiled while that device is current):
    the plain ones, or those of the language-model options (see :func:`name_expressions`)."""
    import cupy

    names = name_expressions((dtype_name,), options)
    return cupy.RawModule(code=kernel_source(), options=COMPILE_OPTIONS, name_expressions=names)


@functools.cache
def _function(device_id: int, dtype_name: str, name: str) -> Any:
    options = name.startswith(tuple(f"xentcy_{kernel}_" for kernel in OPTION_KERNELS))
    return _module(device_id, dtype_name, options).get_function(name)


class CupyLauncher:
    """The kernels through NVRTC and ``cupy.RawModule``, on CuPy's current device and stream."""

    def device(self, x: Array) -> Any:
        return x.device

    def address(self, x: Array) -> int:
        return int(x.data.ptr)

    def launch(self, dtype_name: str, name: str, grid: int, block: int, args: tuple[Any, ...]) -> None:
        import cupy

        _function(cupy.cuda.runtime.getDevice(), dtype_name, name)((grid,), (block,), args)


# ------------------------------------------------------------------ the backend


class CudaBackend:
    """The CUDA backend: arrays of module ``xp`` (CuPy, or NumPy in the tests), kernels through ``launcher``.

    ``xp`` is the array library's own module (``cupy``, ``numpy``), whose
    NumPy-style API (``ascontiguousarray``, ``moveaxis``, ``may_share_memory``)
    both libraries have.
    """

    DTYPES = DTYPES
    # Evaluator.update keeps the class-index range check on the device (no read-back) and
    # result() raises it: the kernels give such a row NaN and never read through its index.
    DEFERRED_INDEX_CHECK = True
    class_index_summary = None  # the array-API rule of xentcy._reductions, on the device
    compare_rows = None  # the array-API algorithm of xentcy._generic, on the device

    def __init__(self, xp: Namespace, launcher: Launcher) -> None:
        self.xp, self.launcher = xp, launcher

    def writable(self, x: Array) -> bool:
        return isinstance(x, self.xp.ndarray) and getattr(x.flags, "writeable", True)

    def overlaps(self, x: Array, y: Array) -> bool:
        """Whether writing x could change y (x being y itself excluded by the caller)."""
        return bool(self.xp.may_share_memory(x, y))

    def _rows(self, x: Array, axis: int) -> Any:
        """A dense (N, C) view of x with the class axis last, or a dense copy."""
        return _layout.as_rows(self.xp, x, axis, dense=True)

    def _rows_out(self, like: Array, dest: Array, axis: int) -> _layout.RowsOut:
        """Where the kernel writes rows for ``dest``; dest None: a new array laid out as the
        rows (returned with the class axis where ``like`` has it)."""
        if dest is None:
            dest = _layout.empty_rows_like(self.xp, like, axis)
        return _layout.RowsOut(self.xp, dest, axis, dense=True)

    def _aligned(self, num_classes: int, itemsize: int, *arrays: Any) -> Any:
        """int 1 where every row of these dense (N, C) arrays starts on 16 bytes, else 0."""
        ok = (num_classes * itemsize) % 16 == 0 and all(self.launcher.address(a) % 16 == 0 for a in arrays)
        return np.int32(1 if ok else 0)

    def _launch(
        self,
        kernel: str,
        dtype: Any,
        n_rows: int,
        num_classes: int,
        pointers: tuple[Any, ...],
        options: tuple[Any, ...],
    ) -> None:
        """Runs ``kernel`` over (N, C) rows: its arguments are the pointers, then
        (long long N, long long C, int G), then ``options``, already cast to their C types."""
        if num_classes >= _MAX_CLASSES:  # indices within a row are 32-bit in the kernels
            raise ValueError(
                f"the CUDA kernels take fewer than {_MAX_CLASSES} classes, got C = {num_classes}"
            )
        p = plan(kernel, dtype.name, n_rows, num_classes)
        args = (*pointers, np.int64(n_rows), np.int64(num_classes), np.int32(p.group), *options)
        self.launcher.launch(dtype.name, p.name, p.grid, p.block, args)

    def _scale_arguments(self, grad_scale: Array) -> tuple[Any, Any]:
        """(scale_value, scale_ptr) of the kernels: a float by value, a 0-d device array by pointer."""
        if isinstance(grad_scale, float):
            return np.float64(grad_scale), _NULL
        return np.float64(0.0), self.xp.ascontiguousarray(grad_scale, dtype=np.float64)

    def softmax(self, xp: Namespace, x: Array, axis: int, log_space: bool) -> Any:
        with self.launcher.device(x):
            out = self._rows_out(x, None, axis)
            n_rows, num_classes = out.rows.shape
            if n_rows == 0 or num_classes == 0:
                return out.finish()
            a = self._rows(x, axis)
            aligned = self._aligned(num_classes, x.itemsize, a, out.rows)
            options = (aligned, np.int32(log_space))
            self._launch("softmax", x.dtype, n_rows, num_classes, (a, out.rows), options)
            return out.finish()

    def logsumexp(self, xp: Namespace, x: Array, axis: int, keepdims: bool) -> Any:
        cp = self.xp
        with self.launcher.device(x):
            n_rows, num_classes = _layout.rows_shape(x.shape, axis)
            batch_shape = _layout.without(x.shape, axis)
            if num_classes == 0:
                out = cp.full(batch_shape, -np.inf, x.dtype)
            else:
                out = cp.empty(n_rows, x.dtype)
                if n_rows:
                    a = self._rows(x, axis)
                    aligned = self._aligned(num_classes, x.itemsize, a)
                    self._launch("logsumexp", x.dtype, n_rows, num_classes, (a, out), (aligned,))
                out = out.reshape(batch_shape)
            return cp.expand_dims(out, axis) if keepdims else out

    def cross_entropy_rows(
        self, call: CrossEntropyCall, *, want_grad: bool, out: Array | None, grad_scale: Array
    ) -> tuple[Array, Array | None]:
        """Per-sample losses (float64, batch-shaped) and, where ``want_grad``, the gradient.

        The gradient, times ``grad_scale`` (a float, or a 0-d float64 array left on
        the device), goes into ``out`` (which may be the logits themselves) or,
        where ``out`` is None, into a new array.
        """
        cp = self.xp
        logits, axis = call.logits, call.axis
        with self.launcher.device(logits):
            grad = self._rows_out(logits, out, axis) if want_grad else None
            n_rows, num_classes = _layout.rows_shape(logits.shape, axis)
            loss = cp.empty(n_rows, cp.float64)
            if n_rows == 0:
                return loss.reshape(call.batch_shape), (grad.finish() if grad is not None else None)
            a = self._rows(logits, axis)
            g = grad.rows if grad is not None else None
            weight = cp.ascontiguousarray(call.weight) if call.weight is not None else None
            eps = np.float64(call.label_smoothing)
            common = (a, g) if g is not None else (a,)
            # the language-model options, where any is set: the *_options_* kernels, which take
            # them after the plain kernels' arguments (softcap None: 0)
            with_options = call.z_loss != 0.0 or call.softcap is not None or call.temperature != 1.0
            suffix = "_options" if with_options else ""
            extra = (
                (np.float64(call.z_loss), np.float64(call.softcap or 0.0), np.float64(call.temperature))
                if with_options
                else ()
            )
            if call.class_indices:
                y = cp.ascontiguousarray(call.target).reshape(n_rows)
                # sum_c w_c, for smoothing (xentcy._checks): float64, on the device, read by the kernel
                w_sum = None if call.weight_sum is None else cp.asarray(call.weight_sum, dtype=cp.float64)
                pointers = (a, y, _or_null(weight), _or_null(w_sum), _or_null(g), loss)
                options = (
                    self._aligned(num_classes, logits.itemsize, *common),
                    eps,
                    np.int64(call.ignore_index),  # in int64's range (xentcy._checks)
                    *self._scale_arguments(grad_scale),
                    *extra,
                )
                self._launch("index" + suffix, logits.dtype, n_rows, num_classes, pointers, options)
            else:
                q = self._rows(call.target, axis)
                prob_pointers = (a, q, _or_null(weight), _or_null(g), loss)
                prob_options = (
                    self._aligned(num_classes, logits.itemsize, q, *common),
                    eps,
                    *self._scale_arguments(grad_scale),
                    *extra,
                )
                self._launch("prob" + suffix, logits.dtype, n_rows, num_classes, prob_pointers, prob_options)
            return loss.reshape(call.batch_shape), (grad.finish() if grad is not None else None)

    def evaluate_rows(self, call: CrossEntropyCall) -> tuple[Any, Any, Any]:
        """(losses, ranks, entropies) per sample, batch-shaped: the evaluation kernel (the
        loss from the index kernel instead where there is smoothing; probability targets
        rank their argmax class, and take their loss from the prob kernel)."""
        cp = self.xp
        logits, axis = call.logits, call.axis
        with self.launcher.device(logits):
            n_rows, num_classes = _layout.rows_shape(logits.shape, axis)
            loss = cp.empty(n_rows, cp.float64)
            rank = cp.empty(n_rows, cp.int64)
            entropy = cp.empty(n_rows, cp.float64)
            shape = call.batch_shape
            if n_rows == 0:
                return loss.reshape(shape), rank.reshape(shape), entropy.reshape(shape)
            a = self._rows(logits, axis)
            if call.class_indices:
                y, ignore_index = cp.ascontiguousarray(call.target).reshape(n_rows), call.ignore_index
                weight = cp.ascontiguousarray(call.weight) if call.weight is not None else None
            else:
                # every row counts: an ignore_index no argmax equals
                y, ignore_index = cp.argmax(self._rows(call.target, axis), axis=1).astype(cp.int64), -1
                weight = None
            pointers = (a, y, _or_null(weight), loss, rank, entropy)
            options = (self._aligned(num_classes, logits.itemsize, a), np.int64(ignore_index))
            self._launch("eval", logits.dtype, n_rows, num_classes, pointers, options)
            if not call.class_indices or call.label_smoothing != 0.0:
                loss, _ = self.cross_entropy_rows(call, want_grad=False, out=None, grad_scale=0.0)
                loss = loss.reshape(n_rows)
            return loss.reshape(shape), rank.reshape(shape), entropy.reshape(shape)


_NULL = np.uint64(0)  # a null pointer argument: 8 bytes of zero


def _or_null(x: Array) -> Any:
    """x, or a null pointer argument where x is None."""
    return _NULL if x is None else x


@functools.cache
def cupy_backend() -> CudaBackend:
    """The backend of CuPy arrays (xentcy._dispatch imports CuPy's arrays' module first)."""
    import cupy

    return CudaBackend(cupy, CupyLauncher())
