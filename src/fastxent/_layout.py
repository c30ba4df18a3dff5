"""Class axis last: ``y_pred`` viewed as C-contiguous (rows, classes), and the gradient's buffer.

A call's arrays are laid out once here: the class axis moved last and the data viewed (or,
when it is not laid out that way, copied once) as a C-contiguous, aligned (rows, classes)
buffer that the kernels read.  The gradient is written into a buffer of the same layout: a
fresh array, the caller's ``grad_out``, or ``y_pred`` itself with ``inplace=True``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fastxent import _kernels
from fastxent._validation import as_float_array, as_kernel_array, normalize_axis


@dataclass
class Rows:
    """``y_pred`` as the kernels see it."""

    arr: np.ndarray  # y_pred as given (float32/float64 ndarray)
    axis: int  # non-negative class axis
    batch_shape: tuple  # shape of the per-sample loss
    x2: np.ndarray  # (rows, classes) C-contiguous view or copy

    @property
    def n_rows(self) -> int:
        return self.x2.shape[0]

    @property
    def n_classes(self) -> int:
        return self.x2.shape[1]

    def rows_of(self, a: np.ndarray) -> np.ndarray:
        """An array of y_pred's shape as a (rows, classes) kernel buffer (copied if needed)."""
        return as_kernel_array(np.moveaxis(a, self.axis, -1)).reshape(self.x2.shape)

    def from_rows(self, a2: np.ndarray) -> np.ndarray:
        """A (rows, classes) buffer back in y_pred's shape and axis order (a view)."""
        return np.moveaxis(a2.reshape(self.batch_shape + (self.n_classes,)), -1, self.axis)

    def empty(self) -> np.ndarray:
        """A new (rows, classes) buffer of y_pred's dtype (large ones from the block cache)."""
        return _kernels.empty_like(self.x2)


def rows(y_pred, axis, *, inplace: bool = False, name: str = "y_pred", y_true=None,
         low_precision: bool = True) -> Rows:
    """Lay out ``y_pred`` (checked: float32/float64, or also float16/bfloat16 with
    ``low_precision``; a valid axis; a non-empty class axis).

    ``y_true`` is only read for the error message when ``y_pred`` has the wrong dtype (a
    hint when the two look swapped).
    """
    arr = as_float_array(y_pred, name, y_true=y_true, low_precision=low_precision)
    ax = normalize_axis(axis, arr.ndim)
    moved = np.moveaxis(arr, ax, -1)
    ncls = moved.shape[-1]
    if ncls == 0:
        raise ValueError(f"{name} has an empty class axis (axis={axis}, shape {arr.shape})")
    if inplace:
        if not isinstance(y_pred, np.ndarray):
            raise TypeError("inplace=True needs y_pred to be a NumPy array")
        if not arr.flags.writeable:
            raise ValueError("inplace=True needs a writeable y_pred, got a read-only array")
        if not arr.flags.aligned:
            raise ValueError("inplace=True needs an aligned y_pred (it would have to be copied)")
        if not moved.flags.c_contiguous:
            raise ValueError(
                "inplace=True needs y_pred contiguous with the class axis last "
                "(C order after moving `axis` to the end); it would have to be copied"
            )
    x2 = as_kernel_array(moved).reshape(-1, ncls)
    return Rows(arr, ax, moved.shape[:-1], x2)


def grad_buffer(lay: Rows, grad_out, inplace: bool, others) -> np.ndarray:
    """The (rows, classes) buffer the kernel writes the gradient into.

    ``others``: (name, array) pairs of the call's other inputs, which neither ``grad_out``
    nor an in-place ``y_pred`` may overlap.
    """
    if inplace:
        if grad_out is not None:
            raise ValueError("pass either grad_out or inplace=True, not both")
        for name, other in others:
            if other is not None and np.may_share_memory(lay.arr, other):
                raise ValueError(f"inplace=True: y_pred overlaps {name}")
        return lay.x2
    if grad_out is None:
        return lay.empty()
    if not isinstance(grad_out, np.ndarray):
        raise TypeError("grad_out must be a NumPy array")
    if grad_out.shape != lay.arr.shape:
        raise ValueError(
            f"grad_out has shape {grad_out.shape}, expected y_pred's shape {lay.arr.shape}"
        )
    if grad_out.dtype != lay.arr.dtype:
        raise TypeError(f"grad_out has dtype {grad_out.dtype}, expected {lay.arr.dtype}")
    if not grad_out.flags.writeable:
        raise ValueError("grad_out is read-only")
    if not grad_out.flags.aligned:
        raise ValueError("grad_out must be aligned (its elements at multiples of their size)")
    moved = np.moveaxis(grad_out, lay.axis, -1)
    if not moved.flags.c_contiguous:
        raise ValueError("grad_out must be C-contiguous with the class axis last")
    for name, other in [("y_pred", lay.arr), *others]:
        if other is not None and np.may_share_memory(grad_out, other):
            raise ValueError(
                f"grad_out overlaps {name}; use inplace=True to overwrite y_pred on purpose"
            )
    return moved.reshape(lay.x2.shape)


def grad_result(grad2, lay: Rows, grad_out, inplace: bool):
    """The gradient as returned to the caller: the caller's own array when it gave one."""
    if grad2 is None:
        return None
    if grad_out is not None:
        return grad_out
    if inplace:
        return lay.arr
    return lay.from_rows(grad2)
