"""(N, C) rows: how the compiled backends see an array, the class axis last and every other
axis flattened into N, written once through the array's own module (NumPy and CuPy share
the NumPy-style calls used here: ``moveaxis``, ``reshape``, ``empty``, ``flags``)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ._typing import Array, Namespace


def without(seq: Sequence[Any], axis: int) -> tuple[Any, ...]:
    """``seq`` without its entry at ``axis``: the batch shape of a shape, the batch part of
    a chunk grid or of a block index."""
    return tuple(seq[:axis]) + tuple(seq[axis + 1 :])


def rows_shape(shape: Sequence[int], axis: int) -> tuple[int, int]:
    """(N, C): the product of the batch axes, and the classes."""
    return math.prod(without(shape, axis)), shape[axis]


def class_last(xp: Namespace, x: Array, axis: int) -> Array:
    return x if axis == x.ndim - 1 else xp.moveaxis(x, axis, -1)


def row_view(xp: Namespace, x: Array, axis: int, *, dense: bool) -> Array | None:
    """An (N, C) view of x with the class axis last at unit stride, or None where there is
    none. ``dense``: the rows one after the other too (the CUDA kernels' layout); else the
    rows may have any stride (the CPU core takes a row stride)."""
    moved = class_last(xp, x, axis)
    shape = rows_shape(x.shape, axis)
    if dense:
        return moved.reshape(shape) if moved.flags.c_contiguous else None
    try:
        rows = xp.reshape(moved, shape, copy=False)
    except ValueError:
        return None
    return rows if shape[1] <= 1 or rows.strides[1] == rows.itemsize else None


def as_rows(xp: Namespace, x: Array, axis: int, *, dense: bool) -> Array:
    """:func:`row_view` of x, or a contiguous copy where x's layout has none."""
    rows = row_view(xp, x, axis, dense=dense)
    if rows is None:
        rows = xp.ascontiguousarray(class_last(xp, x, axis)).reshape(rows_shape(x.shape, axis))
    return rows


def empty_rows_like(xp: Namespace, like: Array, axis: int) -> Array:
    """A new array of like's shape and dtype whose memory holds dense (N, C) rows (its class
    axis last in memory, wherever ``axis`` puts it in the shape)."""
    moved_shape = without(like.shape, axis) + (like.shape[axis],)
    return xp.moveaxis(xp.empty(moved_shape, like.dtype), -1, axis)


class RowsOut:
    """Where a kernel writes (N, C) rows that belong in ``dest`` (class axis ``axis``).

    ``rows`` is a view into dest where dest's layout allows (:func:`row_view`), else a
    scratch buffer that :meth:`finish` copies into dest.
    """

    def __init__(self, xp: Namespace, dest: Array, axis: int, *, dense: bool) -> None:
        self.xp, self.dest, self.axis = xp, dest, axis
        view = row_view(xp, dest, axis, dense=dense)
        self.scratch = view is None
        self.rows = xp.empty(rows_shape(dest.shape, axis), dest.dtype) if view is None else view

    def finish(self) -> Array:
        """dest, holding the rows."""
        if self.scratch:
            moved = class_last(self.xp, self.dest, self.axis)
            moved[...] = self.rows.reshape(moved.shape)
        return self.dest
