"""Batch evaluation: loss, perplexity, top-k accuracy and entropy over data of any size.

The per-row metrics (loss, the target's rank, the entropy of the softmax) come from one
pass over each row where the backend has a kernel for it (the CPU core); the sums behind
the means are float64 and the counts integers, so batches, shards and workers merge exactly.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from array_api_compat import is_numpy_namespace

from . import _api, _checks, _dispatch, _generic, _reductions, _stream
from ._backend import Backend
from ._typing import Array, Namespace

# ---------------------------------------------------------------------------------------
# the result


def _check_top_k(top_k: Any) -> tuple[int, ...]:
    if isinstance(top_k, numbers.Integral) and not isinstance(top_k, bool):
        top_k = (top_k,)
    try:
        if isinstance(top_k, (str, bytes)):
            raise TypeError
        ks = tuple(top_k)
    except TypeError:
        raise TypeError(f"top_k must be an int or a sequence of ints, got {type(top_k).__name__}") from None
    for k in ks:
        if not isinstance(k, numbers.Integral) or isinstance(k, bool) or k < 1:
            raise ValueError(f"top_k must hold integers >= 1, got {k!r}")
    if not ks:
        raise ValueError("top_k must hold at least one k, got none")
    return tuple(sorted({int(k) for k in ks}))


def _ratio(num: float, den: float) -> float:
    return num / den if den else math.nan


@dataclass(frozen=True)
class Evaluation:
    """The metrics of an evaluation and the exact sums behind them (each parameter is an
    attribute of the same name).

    Parameters
    ----------
    loss : float
        The mean loss, with PyTorch's denominator: ``loss_sum / denominator`` (the sum
        of the target classes' weights over the counted rows, or their number).
    perplexity : float
        ``exp(loss)``; with label smoothing, of the smoothed loss.
    accuracy : dict of int to float
        For each k of ``top_k``, the fraction of counted rows whose target ranks below k
        (top-1 accuracy at k = 1). Unweighted.
    entropy : float
        The mean entropy of the rows' softmax (nats), over the counted rows. Unweighted.
    count : int
        The counted rows (not ignored).
    loss_sum, denominator, entropy_sum : float
        The float64 sums behind the means.
    correct : dict of int to int
        For each k, the counted rows whose target ranks below k.
    kl_divergence, top1_agreement : float or None
        With reference logits: the mean KL(p_ref || p) (nats) and the fraction of rows
        where both models' argmax agree; None without. Each row's KL keeps its digits
        however small it is (two models 1e-3 apart in float32: a KL near 1e-7, to a few
        ulp); it is +inf where p gives no mass to a class the reference does, and NaN (the
        row not agreeing) where either softmax is undefined (a NaN, a +inf, no finite
        logit).
    kl_sum : float
    agreement_count, reference_count : int
        The sums behind them.

    See Also
    --------
    evaluate, Evaluator : what returns one.

    Examples
    --------
    >>> import numpy as np
    >>> import xentcy as xc
    >>> r = xc.evaluate(np.array([[2.0, 1.0, 0.1], [0.1, 2.0, 1.9]]), np.array([1, 0]), top_k=(1, 2))
    >>> r.count, r.accuracy, round(r.loss_sum / r.denominator, 6) == round(r.loss, 6)
    (2, {1: 0.0, 2: 0.5}, True)
    """

    loss: float
    perplexity: float
    accuracy: dict[int, float]
    entropy: float
    count: int
    loss_sum: float
    denominator: float
    entropy_sum: float
    correct: dict[int, int]
    kl_divergence: float | None = None
    top1_agreement: float | None = None
    kl_sum: float = 0.0
    agreement_count: int = 0
    reference_count: int = 0

    def __repr__(self) -> str:
        acc = ", ".join(f"{k}: {v:.4f}" for k, v in self.accuracy.items())
        parts = [
            f"count={self.count}",
            f"loss={self.loss:.6g}",
            f"perplexity={self.perplexity:.6g}",
            f"accuracy={{{acc}}}",
            f"entropy={self.entropy:.6g}",
        ]
        if self.kl_divergence is not None:
            parts += [f"kl_divergence={self.kl_divergence:.6g}", f"top1_agreement={self.top1_agreement:.4f}"]
        return f"Evaluation({', '.join(parts)})"


# ---------------------------------------------------------------------------------------
# the accumulator

_SUMS = ("loss_sum", "denominator", "entropy_sum", "kl_sum")
_COUNTS = ("count", "agreement_count", "reference_count")


@dataclass
class _State:
    loss_sum: Any = 0.0
    denominator: Any = 0.0
    entropy_sum: Any = 0.0
    count: Any = 0
    correct: dict[int, Any] = field(default_factory=dict)
    kl_sum: Any = 0.0
    agreement_count: Any = 0
    reference_count: Any = 0
    batches: int = 0
    # the first batch that held a class index outside [0, C), where the check is deferred
    # to result() (a device backend: no read-back in update); -1: none
    bad_batch: Any = -1


def _host(value: Array) -> Any:
    """A Python number from a float, an int or a 0-d array (the one read-back of a device
    sum; a lazy one is computed here)."""
    if isinstance(value, (int, float)):
        return value
    if hasattr(value, "compute"):
        value = value.compute()
    if hasattr(value, "item"):
        return value.item()
    return float(value)


class Evaluator:
    """Metrics accumulated over batches: ``update`` for each, then ``result``.

    Parameters
    ----------
    axis, weight, ignore_index, label_smoothing, softcap, temperature
        As in :func:`xentcy.cross_entropy`, for every batch: the metrics are those of
        the final logits (divided by the temperature, then soft-capped), the model's
        distribution. The ``z_loss`` of training is not taken: the loss reported is the
        cross-entropy, whose exp is the perplexity.
    top_k : int or sequence of int, default (1, 5)
        The k of the top-k accuracies.

    Raises
    ------
    TypeError, ValueError
        A bad ``top_k``, ``softcap`` or ``temperature``; ``update`` raises as
        :func:`xentcy.cross_entropy` for a bad batch.

    See Also
    --------
    evaluate : the same over arrays at hand, batch by batch.
    Evaluation : what :meth:`~xentcy.Evaluator.result` returns.

    Examples
    --------
    >>> import numpy as np
    >>> import xentcy as xc
    >>> A = np.array([[2.0, 1.0, 0.1], [0.1, 2.0, 1.9]])
    >>> ev = xc.Evaluator(top_k=(1, 2))
    >>> ev.update(A[:1], np.array([1]))
    >>> ev.update(A[1:], np.array([0]))
    >>> r = ev.result()
    >>> round(r.loss, 4), r.accuracy, r.count
    (2.0185, {1: 0.0, 2: 0.5}, 2)
    """

    def __init__(
        self,
        *,
        axis: int = -1,
        weight: Array = None,
        ignore_index: int = -100,
        label_smoothing: float = 0.0,
        softcap: float | None = None,
        temperature: float = 1.0,
        top_k: Any = (1, 5),
    ) -> None:
        self.axis = axis
        self.weight = weight
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing
        _, self.softcap, self.temperature = _checks.check_loss_options(0.0, softcap, temperature)
        self.top_k = _check_top_k(top_k)
        self.reset()

    def reset(self) -> None:
        """Forget every batch seen."""
        self._state = _State(correct={k: 0 for k in self.top_k})

    def _settings(self) -> tuple[Any, ...]:
        return (self.axis, self.ignore_index, float(self.label_smoothing), self.top_k, self.softcap,
                self.temperature)  # fmt: skip

    def update(self, logits: Array, target: Array = None, /, *, reference: Array = None) -> None:
        """Add one batch.

        Bad arguments raise at once, as in :func:`xentcy.cross_entropy`.

        Parameters
        ----------
        logits, target : array
            As :func:`xentcy.cross_entropy` takes them; ``target`` may be None with
            ``reference``.
        reference : array, optional
            The logits of a second model (same shape), for the KL divergence and the top-1
            agreement.
        """
        arrays = {"logits": logits, "target": target, "reference": reference, "weight": self.weight}
        with _dispatch.route(arrays) as r:
            a = r.arrays
            self._update(a["logits"], a["target"], a["reference"], a["weight"])

    def _final(self, xp: Namespace, logits: Array) -> Array:
        """The logits the metrics are of: divided by the temperature, then soft-capped (a new
        array where either is set)."""
        return _generic.final_logits(xp, logits, self.softcap, self.temperature)[0]

    def _update(self, logits: Array, target: Array, reference: Array, weight: Array) -> None:
        st = self._state
        shape, ref_shape = tuple(getattr(logits, "shape", ())), tuple(getattr(reference, "shape", ()))
        if reference is not None and ref_shape != shape:
            # (before anything is added: a failed update leaves the sums as they were)
            raise ValueError(f"reference must have the logits' shape {shape}, got {ref_shape}")
        if target is not None:
            backend, call = _api.checked_call(
                {"logits": logits, "target": target, "reference": reference},
                axis=self.axis,
                weight=weight,
                ignore_index=self.ignore_index,
                label_smoothing=self.label_smoothing,
                reduction="sum",
            )
            xp = call.xp
            if self.temperature != 1.0 or self.softcap is not None:
                logits = self._final(xp, logits)
                call = dataclasses.replace(call, logits=logits)
            if backend.DEFERRED_INDEX_CHECK and call.class_indices:
                denom, bad = _reductions.unchecked_denominator(call)
                st.bad_batch = xp.where((st.bad_batch < 0) & bad, st.batches, st.bad_batch)
            else:
                denom = _api.denominator(backend, call)
            losses, ranks, entropies = backend.evaluate_rows(call)
            counted = ranks >= 0
            st.loss_sum = st.loss_sum + _sum(xp, losses)
            st.denominator = st.denominator + _host_or_device(xp, denom)
            st.entropy_sum = st.entropy_sum + _sum(xp, entropies)
            st.count = st.count + _count(xp, counted)
            for k in self.top_k:
                st.correct[k] = st.correct[k] + _count(xp, counted & (ranks < k))
        else:
            if reference is None:
                raise ValueError("target may be None only with reference logits (for the KL divergence)")
            xp = _dispatch.namespace(logits=logits, reference=reference)
            backend = _dispatch.backend(xp, logits)
            _checks.check_logits(xp, logits, "logits", backend.DTYPES)
            logits = self._final(xp, logits)
            counted = None
        if reference is not None:
            self._update_reference(backend, xp, logits, reference, counted)
        st.batches += 1

    def _update_reference(
        self, backend: Backend, xp: Namespace, logits: Array, reference: Array, counted: Array | None
    ) -> None:
        # (the logits are checked already, with the target or without)
        ax = _checks.normalize_axis(self.axis, logits.ndim)
        _checks.check_logits(xp, reference, "reference", backend.DTYPES)
        kl, agree = (backend.compare_rows or _generic.compare_rows)(xp, logits, reference, ax)
        st = self._state
        if counted is not None:
            kl = xp.where(counted, kl, xp.zeros_like(kl))
            agree = agree & counted
            n = _count(xp, counted)
        else:
            n = math.prod(kl.shape)
        st.kl_sum = st.kl_sum + _sum(xp, kl)
        st.agreement_count = st.agreement_count + _count(xp, agree)
        st.reference_count = st.reference_count + n

    def merge(self, other: Evaluator) -> Evaluator:
        """Add the batches of another evaluator to these; exact.

        Parameters
        ----------
        other : Evaluator
            An evaluator of the same settings (a ValueError otherwise).

        Returns
        -------
        Evaluator
            self.
        """
        if not isinstance(other, Evaluator):
            raise TypeError(f"other must be an Evaluator, got {type(other).__name__}")
        if other._settings() != self._settings():
            raise ValueError(
                f"other evaluates with different settings: {other._settings()} against {self._settings()} "
                "(axis, ignore_index, label_smoothing, top_k, softcap, temperature)"
            )
        a, b = self._state, other._state
        for name in _SUMS + _COUNTS:
            setattr(a, name, getattr(a, name) + getattr(b, name))
        for k in self.top_k:
            a.correct[k] = a.correct[k] + b.correct[k]
        if _host(a.bad_batch) < 0 and _host(b.bad_batch) >= 0:
            a.bad_batch = _host(b.bad_batch) + a.batches
        a.batches += b.batches
        return self

    def state_dict(self) -> dict[str, Any]:
        """The sums and counts as plain Python numbers (reads device sums back).

        Returns
        -------
        dict
            The sums, the counts and the settings they belong to: for a checkpoint, or for
            :meth:`~xentcy.Evaluator.load_state_dict`.
        """
        st = self._computed()
        out: dict[str, Any] = {name: float(_host(getattr(st, name))) for name in _SUMS}
        out.update({name: int(_host(getattr(st, name))) for name in _COUNTS})
        out["correct"] = {int(k): int(_host(v)) for k, v in st.correct.items()}
        out["batches"] = st.batches
        out["settings"] = {
            "axis": self.axis,
            "ignore_index": self.ignore_index,
            "label_smoothing": float(self.label_smoothing),
            "top_k": list(self.top_k),
        }
        # (the options only where set: a state saved before they existed still loads)
        if self.softcap is not None:
            out["settings"]["softcap"] = self.softcap
        if self.temperature != 1.0:
            out["settings"]["temperature"] = self.temperature
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a saved state.

        Parameters
        ----------
        state : dict
            What :meth:`~xentcy.Evaluator.state_dict` returned, for the same settings (a
            ValueError otherwise).
        """
        settings = state.get("settings", {})
        mine = self.state_dict()["settings"]
        if {**settings, "top_k": list(settings.get("top_k", []))} != mine:
            raise ValueError(f"the state was saved with settings {settings}, this evaluator has {mine}")
        st = _State(
            correct={int(k): int(v) for k, v in state["correct"].items()}, batches=int(state["batches"])
        )
        for name in _SUMS:
            setattr(st, name, float(state[name]))
        for name in _COUNTS:
            setattr(st, name, int(state[name]))
        self._state = st

    def _computed(self) -> _State:
        """The state with lazy (Dask) sums computed, all in one pass over their graphs."""
        st = self._state
        names = [n for n in _SUMS + _COUNTS if hasattr(getattr(st, n), "compute")]
        ks = [k for k, v in st.correct.items() if hasattr(v, "compute")]
        if not names and not ks:
            return st
        import dask

        values = dask.compute(*[getattr(st, n) for n in names], *[st.correct[k] for k in ks])
        out = _State(correct=dict(st.correct), batches=st.batches)
        for n in _SUMS + _COUNTS:
            setattr(out, n, getattr(st, n))
        for n, v in zip(names, values[: len(names)], strict=True):
            setattr(out, n, v)
        for k, v in zip(ks, values[len(names) :], strict=True):
            out.correct[k] = v
        return out

    def result(self) -> Evaluation:
        """The metrics of every batch so far (the one read-back of device sums; Dask sums
        are computed here, together).

        Returns
        -------
        Evaluation
            The metrics and the sums behind them.
        """
        st = self._computed()
        bad = int(_host(st.bad_batch))
        if bad >= 0:
            raise ValueError(
                f"batch {bad} (counting from 0) holds a class index outside [0, C) that is not "
                f"ignore_index ({self.ignore_index}); its metrics are not defined"
            )
        loss_sum, denom = float(_host(st.loss_sum)), float(_host(st.denominator))
        entropy_sum, count = float(_host(st.entropy_sum)), int(_host(st.count))
        correct = {k: int(_host(v)) for k, v in st.correct.items()}
        loss = _ratio(loss_sum, denom)
        kl = agree = None
        n_ref = int(_host(st.reference_count))
        kl_sum, n_agree = float(_host(st.kl_sum)), int(_host(st.agreement_count))
        if n_ref:
            kl, agree = _ratio(kl_sum, n_ref), _ratio(n_agree, n_ref)
        return Evaluation(
            loss=loss,
            perplexity=math.exp(loss) if loss < 709.0 else (math.inf if loss == loss else math.nan),
            accuracy={k: _ratio(v, count) for k, v in correct.items()},
            entropy=_ratio(entropy_sum, count),
            count=count,
            loss_sum=loss_sum,
            denominator=denom,
            entropy_sum=entropy_sum,
            correct=correct,
            kl_divergence=kl,
            top1_agreement=agree,
            kl_sum=kl_sum,
            agreement_count=n_agree,
            reference_count=n_ref,
        )


def _sum(xp: Namespace, x: Array) -> Any:
    """The float64 sum of x: a Python float for NumPy, a 0-d array elsewhere (no read-back)."""
    if is_numpy_namespace(xp):
        return float(np.sum(x, dtype=np.float64))
    acc = _generic._accumulation_dtype(xp, x)
    return xp.sum(xp.astype(x, acc))


def _count(xp: Namespace, mask: Array) -> Any:
    if is_numpy_namespace(xp):
        return int(np.count_nonzero(mask))
    return xp.sum(xp.astype(mask, xp.int64))


def _host_or_device(xp: Namespace, x: Array) -> Any:
    return float(x) if is_numpy_namespace(xp) else x


# ---------------------------------------------------------------------------------------
# evaluate: one array (or memmap) in batches


class _Progress:
    """A one-line progress bar on stderr: rows done, rows/s, ETA."""

    def __init__(self, total: int, stream: Any = None) -> None:
        self.total, self.stream = total, stream or sys.stderr
        self.start = time.perf_counter()
        self.last = 0.0

    def update(self, done: int, final: bool = False) -> None:
        now = time.perf_counter()
        if not final and now - self.last < 0.2:
            return
        self.last = now
        elapsed = max(now - self.start, 1e-9)
        rate = done / elapsed
        eta = (self.total - done) / rate if rate > 0 else math.inf
        frac = done / self.total if self.total else 1.0
        bar = "#" * int(30 * frac)
        eta_s = f"{eta:5.0f}s" if math.isfinite(eta) else "    ?"
        self.stream.write(
            f"\r[{bar:<30}] {done}/{self.total} rows  {rate:,.0f} rows/s  ETA {eta_s}"
            + ("\n" if final else "")
        )
        self.stream.flush()


def _batch_axis(axis: int) -> int:
    """The axis batches are cut along: the first that is not the class axis."""
    return 0 if axis != 0 else 1


def _slice(x: Array, ax: int, start: int, stop: int) -> Array:
    return None if x is None else x[(slice(None),) * ax + (slice(start, stop), ...)]


def _check_batch_size(batch_size: Any) -> int | None:
    if batch_size is None:
        return None
    if not isinstance(batch_size, numbers.Integral) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}")
    return int(batch_size)


def evaluate(
    logits: Array,
    target: Array,
    /,
    *,
    axis: int = -1,
    weight: Array = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    softcap: float | None = None,
    temperature: float = 1.0,
    top_k: Any = (1, 5),
    batch_size: int | None = None,
    reference: Array = None,
    progress: bool = False,
    device: str | None = None,
) -> Evaluation:
    """Loss, perplexity, top-k accuracy and entropy of ``logits`` against ``target``.

    Each row is read once for its loss, its target's rank and its entropy (on NumPy
    arrays, by the CPU core).

    Parameters
    ----------
    logits, target, axis, weight, ignore_index, label_smoothing, softcap, temperature
        As in :func:`xentcy.cross_entropy` (see :class:`Evaluator` for the last two).
        ``logits`` may be a NumPy memmap
        (``np.load(path, mmap_mode="r")``) larger than memory; with ``batch_size``
        at most two batches of it are in memory at once. ``target`` may be None with
        ``reference``.
    top_k : int or sequence of int, default (1, 5)
        The k of the top-k accuracies.
    batch_size : int, optional
        Rows (along the first batch axis) per batch; None: the whole array at once.
    reference : array, optional
        Logits of a reference model, of the logits' shape: adds the mean KL divergence
        KL(p_ref || p) and the top-1 agreement of the two models, from one pass over each
        pair of rows on the CPU (the array-API path elsewhere, in float64 where the library
        has it). ``target`` may then be None.
    progress : bool, default False
        A progress bar on stderr (rows done, rows/s, ETA).
    device : {None, "cpu", "cuda"}, optional
        Where the kernels run for NumPy (or memmap) inputs: the CPU core (None, "cpu"), or
        ``"cuda"``: each batch is copied through pinned host memory to the GPU on a copy
        stream while the batch before computes (CuPy needed); the sums stay on the GPU
        until the result is read.

    Returns
    -------
    Evaluation

    Raises
    ------
    TypeError, ValueError
        As :func:`xentcy.cross_entropy`; a bad ``top_k`` or ``batch_size``.

    See Also
    --------
    Evaluator : the same, for batches that arrive one at a time.
    target_rank : the per-sample ranks.

    Notes
    -----
    The mean loss divides by PyTorch's denominator; perplexity is ``exp`` of it (with
    label smoothing, of the smoothed loss). The rank of a target counts the classes
    whose logit beats it, ties going to the lower class index (rank 0 is
    ``np.argmax(row) == y``); a row with a NaN logit has a NaN loss and entropy and counts
    as wrong. Accuracy and entropy are unweighted means over the rows not ignored.

    Examples
    --------
    >>> import numpy as np
    >>> import xentcy as xc
    >>> A = np.array([[2.0, 1.0, 0.1], [0.1, 2.0, 1.9]])
    >>> r = xc.evaluate(A, np.array([1, 0]), top_k=(1, 2))
    >>> r
    Evaluation(count=2, loss=2.01851, perplexity=7.52709, accuracy={1: 0.0000, 2: 0.5000}, entropy=0.874548)
    >>> r.accuracy[2]
    0.5
    """
    ev = Evaluator(
        axis=axis, weight=weight, ignore_index=ignore_index, label_smoothing=label_smoothing,
        softcap=softcap, temperature=temperature, top_k=top_k,
    )
    batch_size = _check_batch_size(batch_size)
    lane = _stream.lane_for(device)
    if not hasattr(logits, "ndim"):
        _dispatch.namespace(logits=logits)  # the library's TypeError
    host = (logits, target, reference)
    if device == "cuda" and not all(x is None or isinstance(x, np.ndarray) for x in host):
        raise TypeError(
            "device='cuda' streams NumPy arrays (or memmaps) to the GPU; for arrays already on it "
            "(CuPy, torch CUDA) leave device unset"
        )
    ax = _checks.normalize_axis(axis, logits.ndim)
    batched_target = target is None or (
        hasattr(target, "ndim") and target.ndim in (logits.ndim, logits.ndim - 1)
    )
    if logits.ndim == 1 or not batched_target:
        # one batch (a target of the wrong shape gets xentcy.cross_entropy's error there)
        n, size, n_batches = 1, 1, 1

        def parts_of(i: int) -> list[Any]:
            return [logits, target, reference]

    else:
        bax = _batch_axis(ax)
        n = int(logits.shape[bax])
        size = batch_size or max(n, 1)
        tax = bax - (1 if target is not None and target.ndim == logits.ndim - 1 and ax < bax else 0)
        n_batches = -(-n // size)

        def parts_of(i: int) -> list[Any]:
            lo, hi = i * size, min((i + 1) * size, n)
            return [_slice(logits, bax, lo, hi), _slice(target, tax, lo, hi), _slice(reference, bax, lo, hi)]

    # host slots where the batches go on to a device (pinned memory); on the CPU the kernels
    # read a memmap's pages where they are, in the page cache (copied into new buffers, a
    # 2 GiB file took 2.2 s on this VM, whose first touch of memory costs 2.8 s a GiB; in
    # place 0.4 s, mapping its pages 7 ms a GiB)
    use_slots = not isinstance(lane, _stream.HostLane)
    bar = _Progress(n) if progress else None
    for i, (slot, (a, y, ref)) in enumerate(_stream.staged_batches(parts_of, n_batches, lane, use_slots)):
        lane.before_compute(slot)
        ev.update(a, y, reference=ref)
        lane.after_compute(slot)
        if bar is not None:
            bar.update(min((i + 1) * size, n), final=i + 1 == n_batches)
    return ev.result()


def target_rank(logits: Array, target: Array, /, *, axis: int = -1, ignore_index: int = -100) -> Array:
    """The rank of each sample's target class among its logits.

    The number of classes whose logit beats the target's, ties going to the lower class
    index: rank 0 is ``argmax == target`` (NumPy's first-index rule), and ``rank < k``
    is a top-k hit. A sample whose logits hold a NaN gets C (wrong at every k), an
    ignored one -1. For probability targets, the rank of each row's most probable class.

    Parameters
    ----------
    logits, target, axis, ignore_index
        As in :func:`xentcy.cross_entropy`.

    Returns
    -------
    array
        int64 ranks shaped like the batch axes, of the logits' library and device.

    Raises
    ------
    TypeError, ValueError
        As :func:`xentcy.cross_entropy`.

    See Also
    --------
    evaluate : top-k accuracies from these ranks, with the loss and the entropy.

    Examples
    --------
    >>> import numpy as np
    >>> import xentcy as xc
    >>> xc.target_rank(np.array([[2.0, 1.0, 0.1], [0.1, 2.0, 2.0]]), np.array([1, 2]))
    array([1, 1])
    """
    with _dispatch.route({"logits": logits, "target": target}) as r:
        backend, call = _api.checked_call(
            r.arrays,
            axis=axis,
            weight=None,
            ignore_index=ignore_index,
            label_smoothing=0.0,
            reduction="none",
        )
        _api.denominator(backend, call)  # the range check
        _, ranks, _ = backend.evaluate_rows(call)
        return r.back(ranks)
