"""Exceptions that carry data: other layers read their fields, never their messages."""

from __future__ import annotations

import numpy as np


class LabelRangeError(ValueError):
    """A class label outside ``[0, n_classes)`` that is not the ignored class.

    Attributes
    ----------
    position : tuple of int
        Index of the first bad label in ``y_true`` (as laid out against ``y_pred``'s batch
        shape).
    value : int or float
        That label as the caller gave it.
    n_classes : int
    count : int
        How many labels are out of range.
    argument : str
        The argument that holds them (``"y_true"``, or ``"labels"`` for the linear head).
    """

    def __init__(self, position: tuple, value, n_classes: int, count: int, *,
                 argument: str = "y_true"):
        self.position = position
        self.value = value
        self.n_classes = n_classes
        self.count = count
        self.argument = argument
        super().__init__(
            f"{argument}: label {value!r} at position {position} is outside [0, {n_classes}) "
            f"({count} label(s) out of range)"
        )

    def __reduce__(self):
        return (_rebuild, (self.position, self.value, self.n_classes, self.count,
                           self.argument))


def _rebuild(position, value, n_classes, count, argument):
    return LabelRangeError(position, value, n_classes, count, argument=argument)


def label_range_error(count: int, labels: np.ndarray, y_true, batch_shape: tuple,
                      n_classes: int, ignore_class) -> LabelRangeError:
    """The error for ``count`` bad labels among the flat int64 ``labels`` (first one named)."""
    ok = (labels >= 0) & (labels < n_classes)
    if ignore_class is not None:
        ok |= labels == ignore_class
    i = int(np.argmin(ok))
    pos = np.unravel_index(i, batch_shape) if batch_shape else ()
    original = np.asarray(y_true).reshape(-1)[i] if np.size(y_true) == labels.size else labels[i]
    original = original.item() if hasattr(original, "item") else original
    return LabelRangeError(tuple(int(p) for p in pos), original, n_classes, int(count))
