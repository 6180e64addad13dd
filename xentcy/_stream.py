"""Host batches through two reused slots, and (on a GPU) onto the device, overlapped.

The pipeline, the same code for every target:

* a reader thread fills slot ``i % 2`` with batch ``i`` (``np.copyto`` from a memmap or an
  array into a buffer that is allocated once) while batch ``i - 1`` computes in the other;
* a lane takes the filled slot where the kernels run: on the CPU it hands the host buffers
  on as they are; on a GPU (:class:`CudaLane`) the host buffers are pinned memory, each
  slot is copied to its device buffers on a copy stream and the compute stream waits for
  that copy's event, and an event after the slot's compute tells the reader when it may
  refill the slot.

What only a GPU can show (pinned memory, the two streams, their events, the overlap) is
:class:`CudaLane` alone; the batch order, the slots' reuse and the merge of the sums are
the same code on the CPU, where the tests run it with :class:`RecordingLane` (a lane that
copies into "device" buffers of NumPy and checks the order of its events) and the CUDA
backend's kernels compiled for the host.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator
from typing import Any

import numpy as np


class HostSlots:
    """Two sets of host buffers, one per slot, allocated at the first batch's shapes."""

    def __init__(self, alloc: Any = None) -> None:
        self.alloc = alloc or (lambda shape, dtype: np.empty(shape, dtype))
        self.buffers: list[list[Any] | None] = [None, None]

    def fill(self, slot: int, parts: list[Any]) -> list[Any]:
        """The parts copied into the slot's buffers; views of their first rows."""
        bufs = self.buffers[slot]
        if bufs is None:
            bufs = self.buffers[slot] = [
                None if p is None else self.alloc(tuple(p.shape), np.dtype(p.dtype)) for p in parts
            ]
        out: list[Any] = []
        for buf, part in zip(bufs, parts, strict=True):
            if part is None:
                out.append(None)
                continue
            view = buf[tuple(slice(0, n) for n in part.shape)]
            np.copyto(view, part, casting="no")
            out.append(view)
        return out


class HostLane:
    """The CPU: the slots' host buffers are where the kernels read."""

    slots_alloc = None

    def reuse(self, slot: int) -> None:
        pass

    def stage(self, slot: int, parts: list[Any]) -> list[Any]:
        return parts

    def before_compute(self, slot: int) -> None:
        pass

    def after_compute(self, slot: int) -> None:
        pass

    def finish(self) -> None:
        pass


class RecordingLane(HostLane):
    """A stand-in for :class:`CudaLane` on the CPU (tests): "device" buffers of NumPy per slot,
    a log of the events, and the checks a GPU would need: a slot is refilled only after its
    compute finished, and computed only after its copy."""

    def __init__(self) -> None:
        self.device: list[list[Any] | None] = [None, None]
        self.copied = [False, False]
        self.busy = [False, False]
        self.log: list[tuple[str, int]] = []

    def reuse(self, slot: int) -> None:
        assert not self.busy[slot], f"slot {slot} refilled while its compute runs"
        self.log.append(("reuse", slot))

    def stage(self, slot: int, parts: list[Any]) -> list[Any]:
        if self.device[slot] is None:
            self.device[slot] = [None if p is None else np.empty_like(p) for p in parts]
        out: list[Any] = []
        for dev, part in zip(self.device[slot] or (), parts, strict=True):
            if part is None:
                out.append(None)
                continue
            view = dev[tuple(slice(0, n) for n in part.shape)]
            view[...] = part
            out.append(view)
        self.copied[slot] = True
        self.log.append(("copy", slot))
        return out

    def before_compute(self, slot: int) -> None:
        assert self.copied[slot], f"slot {slot} computed before its copy"
        self.busy[slot] = True
        self.log.append(("compute", slot))

    def after_compute(self, slot: int) -> None:
        self.busy[slot] = False
        self.copied[slot] = False
        self.log.append(("done", slot))


class CudaLane:
    """Pinned host slots, a copy stream and events: batch i's copy overlaps batch i - 1's
    kernels (not yet run on hardware: scripts/gpu_check.sh)."""

    def __init__(self) -> None:
        import cupy

        self.cp = cupy
        self.copy_stream = cupy.cuda.Stream(non_blocking=True)
        self.compute_stream = cupy.cuda.get_current_stream()
        self.device: list[list[Any] | None] = [None, None]
        self.copied = [cupy.cuda.Event(), cupy.cuda.Event()]
        self.done = [cupy.cuda.Event(), cupy.cuda.Event()]
        self.started = [False, False]

    def slots_alloc(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        """A host buffer in pinned (page-locked) memory, as a NumPy array."""
        count = int(np.prod(shape, dtype=np.int64))
        mem = self.cp.cuda.alloc_pinned_memory(max(1, count * dtype.itemsize))
        return np.frombuffer(mem, dtype, count).reshape(shape)

    def reuse(self, slot: int) -> None:
        # the host may overwrite the slot's pinned buffer once the kernels that read its
        # device copy (and so the copy itself) are done
        if self.started[slot]:
            self.done[slot].synchronize()

    def stage(self, slot: int, parts: list[Any]) -> list[Any]:
        cp = self.cp
        if self.device[slot] is None:
            self.device[slot] = [None if p is None else cp.empty(p.shape, p.dtype) for p in parts]
        out: list[Any] = []
        with self.copy_stream:
            for dev, part in zip(self.device[slot] or (), parts, strict=True):
                if part is None:
                    out.append(None)
                    continue
                view = dev[tuple(slice(0, n) for n in part.shape)]
                view.set(part, stream=self.copy_stream)
                out.append(view)
            self.copied[slot].record(self.copy_stream)
        return out

    def before_compute(self, slot: int) -> None:
        self.compute_stream.wait_event(self.copied[slot])

    def after_compute(self, slot: int) -> None:
        self.done[slot].record(self.compute_stream)
        self.started[slot] = True

    def finish(self) -> None:
        self.compute_stream.synchronize()


# The lane of device="cuda": set by xentcy._testing only (the tests drive the GPU pipeline
# with RecordingLane on the CPU).
cuda_lane_override: Any = None


def lane_for(device: str | None) -> Any:
    if device in (None, "cpu"):
        return HostLane()
    if device == "cuda":
        if cuda_lane_override is not None:
            return cuda_lane_override()
        try:
            return CudaLane()
        except ImportError:
            raise ValueError("device='cuda' needs CuPy and a GPU; CuPy is not installed") from None
    raise ValueError(f"device must be None, 'cpu' or 'cuda', got {device!r}")


def _touch(parts: list[Any]) -> None:
    """Fault in the pages of the memmap parts (one byte a page), ahead of the kernels."""
    for part in parts:
        if isinstance(part, np.memmap) and part.size and part.flags.c_contiguous:
            np.asarray(part).reshape(-1).view(np.uint8)[::4096].sum(dtype=np.uint64)


def staged_batches(
    parts_of: Any, n_batches: int, lane: Any, use_slots: bool
) -> Iterator[tuple[int, list[Any]]]:
    """(slot, the lane's arrays) of each batch, in order. ``parts_of(i)`` gives batch i's
    parts (views of a memmap or an array); with ``use_slots`` a reader thread copies them
    into the slot's reused host buffers while the batch before computes. The caller
    computes between ``lane.before_compute(slot)`` and ``lane.after_compute(slot)``."""
    if not use_slots:
        # the parts as they are (views of the array, or of a memmap: its pages are the page
        # cache's, and a copy into fresh buffers would cost more than it saves); a memmap's
        # next batch is read ahead (a byte a page) by a second thread while this one computes
        with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="xentcy-reader") as pool:
            ahead = None
            for i in range(n_batches):
                parts = parts_of(i)
                if ahead is not None:
                    ahead.result()
                ahead = pool.submit(_touch, parts_of(i + 1)) if i + 1 < n_batches else None
                yield i % 2, lane.stage(i % 2, parts)
        lane.finish()
        return
    slots = HostSlots(lane.slots_alloc)

    def load(i: int) -> list[Any]:
        slot = i % 2
        lane.reuse(slot)  # (on a GPU: waits for the kernels that last read this slot)
        return slots.fill(slot, parts_of(i))

    with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="xentcy-reader") as pool:
        pending = pool.submit(load, 0) if n_batches else None
        for i in range(n_batches):
            assert pending is not None  # (submitted for every batch)
            staged = lane.stage(i % 2, pending.result())
            # the next batch into the other slot, while this one computes
            pending = pool.submit(load, i + 1) if i + 1 < n_batches else None
            yield i % 2, staged
    lane.finish()
