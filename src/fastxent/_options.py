"""Options validated once: each loss's arguments become one immutable ``_kernels.Options``.

The loss classes build theirs in the constructor; the functions build one per call, through
a small cache keyed on the arguments' types and values (so ``from_logits=1`` is still
refused after ``from_logits=True`` was accepted).  Everything that can be checked without
the arrays is checked here, once; what needs the arrays (the axis against ``y_pred``'s rank,
a weight vector's length against the number of classes) is checked per call by
``fastxent._dispatch``.
"""

from __future__ import annotations

import functools
import numbers

import numpy as np

from fastxent._config import resolve_n_threads
from fastxent._kernels import Options
from fastxent._validation import (
    as_weight_array,
    check_bool,
    check_fraction,
    check_nonneg_real,
    check_reduction,
    plain,
)

__all__ = ["Options", "softmax_options", "sigmoid_options"]


def _weights(w, name: str, max_ndim: int | None = 1):
    """class_weight / pos_weight: None, a float, or a read-only float64 array (a vector for
    class_weight; pos_weight of any shape broadcastable against y_pred)."""
    if w is None:
        return None
    arr = as_weight_array(w, name, max_ndim)
    if arr.ndim == 0:
        return float(arr)
    arr = np.ascontiguousarray(arr)
    arr.flags.writeable = False
    return arr


def _axis(axis) -> int:
    if isinstance(axis, bool | np.bool_) or not isinstance(axis, numbers.Integral):
        raise TypeError(f"axis must be an int, got {plain(axis)!r}")
    return int(axis)


def _common(from_logits, label_smoothing, epsilon, reduction, n_threads, axis) -> dict:
    """The options every loss has, checked in the order the error tests expect."""
    kw = {
        "from_logits": check_bool(from_logits, "from_logits"),
        "reduction": check_reduction(reduction),
        "label_smoothing": check_fraction(label_smoothing, "label_smoothing"),
        "epsilon": check_fraction(epsilon, "epsilon", 0.0, 0.5, lo_open=True, hi_open=True),
    }
    resolve_n_threads(n_threads)  # validated now; resolved per call (OpenMP's default may move)
    kw["n_threads"] = n_threads
    kw["axis"] = _axis(axis)
    return kw


def _build_softmax(sparse, from_logits, label_smoothing, axis, class_weight, ignore_class,
                   epsilon, z_loss, reduction, n_threads) -> Options:
    kw = _common(from_logits, label_smoothing, epsilon, reduction, n_threads, axis)
    z = check_nonneg_real(z_loss, "z_loss")
    if z and not kw["from_logits"]:
        raise ValueError("z_loss needs from_logits=True (it penalizes the log-sum-exp of logits)")
    if ignore_class is not None:
        if not sparse:
            raise ValueError("ignore_class applies to integer labels only")
        if isinstance(ignore_class, bool | np.bool_) or not isinstance(
            ignore_class, int | np.integer
        ):
            raise TypeError(f"ignore_class must be None or an int, got {plain(ignore_class)!r}")
        ignore_class = int(ignore_class)
    return Options(family="softmax", sparse=bool(sparse), class_weight=_weights(
        class_weight, "class_weight"), pos_weight=None, ignore_class=ignore_class,
        z_loss=z, **kw)


def _build_sigmoid(from_logits, label_smoothing, axis, pos_weight, epsilon, reduction,
                   n_threads) -> Options:
    kw = _common(from_logits, label_smoothing, epsilon, reduction, n_threads, axis)
    return Options(family="sigmoid", sparse=False, class_weight=None,
                   pos_weight=_weights(pos_weight, "pos_weight", None), ignore_class=None,
                   z_loss=0.0, **kw)


@functools.lru_cache(maxsize=512)
def _cached(builder, key):
    return builder(*key[0])


def _build(builder, args: tuple) -> Options:
    """``builder(*args)``, cached when every argument is hashable.

    The key holds each argument's type beside its value: ``1 == True`` and ``0 == 0.0``, but
    ``from_logits=1`` must still be refused after ``from_logits=True`` was accepted.
    """
    key = (args, tuple(map(type, args)))
    try:
        hash(key)
    except TypeError:  # an array of weights: built afresh
        return builder(*args)
    return _cached(builder, key)


def softmax_options(*, sparse: bool, from_logits=False, label_smoothing=0.0, axis=-1,
                    class_weight=None, ignore_class=None, epsilon=1e-7, z_loss=0.0,
                    reduction="none", n_threads=None) -> Options:
    """Validated options of a softmax (categorical or sparse) cross-entropy."""
    return _build(_build_softmax, (sparse, from_logits, label_smoothing, axis, class_weight,
                                   ignore_class, epsilon, z_loss, reduction, n_threads))


def sigmoid_options(*, from_logits=False, label_smoothing=0.0, axis=-1, pos_weight=None,
                    epsilon=1e-7, reduction="none", n_threads=None) -> Options:
    """Validated options of a binary (sigmoid) cross-entropy."""
    return _build(_build_sigmoid, (from_logits, label_smoothing, axis, pos_weight, epsilon,
                                   reduction, n_threads))
