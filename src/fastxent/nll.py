"""Negative log-likelihood of log-probabilities: ``torch.nn.functional.nll_loss`` for NumPy.

The loss reads one entry per sample (the target class's log-probability), so it is a NumPy
gather and, for the gradient, a scatter: no loss kernel.  Semantics are PyTorch's, including
its weighted mean ``sum_i w[y_i] * -input[i, y_i] / sum_i w[y_i]`` over the samples that are
not ``ignore_index``, which is NaN when that denominator is 0 (every sample ignored, or zero
weights).

Reduced losses are Python floats, summed by the losses' float64 definition (see the Notes of
:func:`nll_loss`).
"""

from __future__ import annotations

import numbers

import numpy as np

from fastxent import _reduction
from fastxent._errors import LabelRangeError
from fastxent._interop import asarray
from fastxent._validation import as_float_array, plain

__all__ = ["nll_loss", "nll_loss_and_grad"]

_REDUCTIONS = ("none", "mean", "sum")


def _check(input, target, weight, ignore_index, reduction):
    """Validated (x moved to (..., C), labels, per-sample weights, valid mask, C, reduction)."""
    if not isinstance(reduction, str) or reduction not in _REDUCTIONS:
        raise ValueError(
            f"reduction must be one of {', '.join(map(repr, _REDUCTIONS))} (PyTorch's "
            f"names), got {plain(reduction)!r}"
        )
    if isinstance(ignore_index, bool | np.bool_) or not isinstance(
            ignore_index, numbers.Integral):
        raise TypeError(f"ignore_index must be an int, got {plain(ignore_index)!r}")
    ignore_index = int(ignore_index)
    x = as_float_array(input, "input", low_precision=False)
    if x.ndim == 0:
        raise ValueError("input must have a class axis: shape (C,), (N, C) or (N, C, d1, ...)")
    class_axis = 0 if x.ndim == 1 else 1
    n_classes = x.shape[class_axis]
    batch_shape = x.shape[:class_axis] + x.shape[class_axis + 1:]
    t = asarray(target, "target")
    if t.dtype.kind not in "iu":
        raise TypeError(
            f"target must hold integer class indices (PyTorch's Long), got dtype {t.dtype}; "
            "cast it with target.astype(np.int64)"
        )
    if t.shape != batch_shape:
        raise ValueError(
            f"target has shape {t.shape} but input has shape {x.shape}: target needs input's "
            f"shape without the class axis (axis {class_axis}), {batch_shape}"
        )
    t = t.astype(np.int64)
    valid = t != ignore_index
    bad = valid & ((t < 0) | (t >= n_classes))
    if bad.any():
        pos = np.unravel_index(int(np.argmax(bad)), t.shape)
        raise LabelRangeError(tuple(int(p) for p in pos), int(t[pos]), n_classes,
                              int(bad.sum()), argument="target")
    labels = np.where(valid, t, 0)
    if weight is None:
        w = valid.astype(np.float64)
    else:
        try:
            wv = np.asarray(weight)
        except (TypeError, ValueError):
            raise TypeError("weight must be None or a 1-D array of real numbers") from None
        if wv.dtype.kind not in "iuf":
            raise TypeError(f"weight must hold real numbers, got dtype {wv.dtype}")
        if wv.shape != (n_classes,):
            raise ValueError(
                f"weight must have one entry per class ({n_classes}, input's axis "
                f"{class_axis}), got shape {wv.shape}"
            )
        w = np.where(valid, wv.astype(np.float64)[labels], 0.0)
    xm = np.moveaxis(x, class_axis, -1)
    return xm, labels, w, valid, reduction


def _picked(xm, labels):
    """input[..., y] for each sample, as float64."""
    return np.take_along_axis(xm, labels[..., None], axis=-1)[..., 0].astype(np.float64)


def _losses(xm, labels, w, valid):
    with np.errstate(invalid="ignore"):
        return np.where(valid, -w * _picked(xm, labels), 0.0)


def _sums(xm, labels, w, valid):
    """``(sum_i w_i * -input[i, y_i], sum_i w_i)`` over the samples (0 where ignored)."""
    unweighted = np.where(valid, -_picked(xm, labels), 0.0)
    return _reduction.sum_and_weight(unweighted, xm.shape[-1], w)


def _mean(total, denom):
    """PyTorch's weighted mean: NaN (or +-inf) when the denominator is 0."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(np.float64(total) / np.float64(denom))


def nll_loss(input, target, weight=None, ignore_index=-100, reduction="mean"):
    """Negative log-likelihood loss (``torch.nn.functional.nll_loss``).

    Parameters
    ----------
    input : ndarray of float32 or float64, shape (C,), (N, C) or (N, C, d1, ...)
        Log-probabilities (e.g. a log-softmax); the class axis is axis 1 (axis 0 for 1-D).
    target : array_like of integers, shape of input without the class axis
        Class indices in ``[0, C)``, or ``ignore_index``.  Out-of-range indices raise
        :class:`~fastxent.LabelRangeError` (a ``ValueError``) naming ``target`` and the first
        position.
    weight : array_like of shape (C,), optional
        Per-class weights ``w`` (any real numbers, as in PyTorch).
    ignore_index : int
        Target value that is skipped: loss 0, gradient 0, and not counted in the mean.
    reduction : {"mean", "sum", "none"}
        ``mean``: ``sum_i w[y_i] * -input[i, y_i] / sum_i w[y_i]`` over non-ignored samples
        (NaN when the denominator is 0, e.g. every sample ignored, as in PyTorch); ``sum``:
        the numerator; ``none``: the per-sample ``w[y_i] * -input[i, y_i]`` (0 where
        ignored).

    Returns
    -------
    float or ndarray
        A Python float for ``mean``/``sum`` (float64 sums, see Notes); for ``none`` an
        array of input's dtype and target's shape.

    Notes
    -----
    Both sums are the ones of fastxent's losses, the same for any thread count: the
    numerator is summed by the fixed blocks of rows of C elements that the losses use (each
    block in 16 float64 lanes combined in a fixed order, the blocks added in order), the
    denominator is the sum of weights of the ``"mean_with_sample_weight"`` reduction.  So
    when ``input[i, y_i] = -l_i`` for the per-sample losses ``l`` of
    :func:`~fastxent.sparse_categorical_crossentropy` on C classes, ``nll_loss`` returns that loss's
    ``"sum"`` and ``"mean_with_sample_weight"`` (with ``class_weight=weight`` and
    ``ignore_class=ignore_index``) bit for bit, except where the denominator is 0.

    Examples
    --------
    >>> import numpy as np, fastxent as fx
    >>> logp = np.log(np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]]))
    >>> round(fx.nll_loss(logp, [0, 2]), 6)
    0.289909
    >>> fx.nll_loss(logp, [0, -100], reduction="none").round(6)
    array([0.356675, 0.      ])
    """
    xm, labels, w, valid, reduction = _check(input, target, weight, ignore_index, reduction)
    if reduction == "none":
        return _losses(xm, labels, w, valid).astype(xm.dtype)
    total, denom = _sums(xm, labels, w, valid)
    return total if reduction == "sum" else _mean(total, denom)


def nll_loss_and_grad(input, target, weight=None, ignore_index=-100, reduction="mean"):
    """:func:`nll_loss` and its gradient with respect to ``input``.

    Parameters
    ----------
    input, target, weight, ignore_index, reduction
        As in :func:`nll_loss`.

    Returns
    -------
    loss : float or ndarray
        As :func:`nll_loss`.
    grad : ndarray, shape and dtype of input
        Zero except at each sample's target class: ``-w[y_i]`` (``sum``, and for ``none``
        the gradient of each sample's own loss), ``-w[y_i] / sum_j w[y_j]`` (``mean``; NaN
        there when that sum is 0, as PyTorch), 0 at ignored samples.

    Examples
    --------
    >>> import numpy as np, fastxent as fx
    >>> logp = np.log(np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]]))
    >>> loss, grad = fx.nll_loss_and_grad(logp, [0, 2])
    >>> grad
    array([[-0.5,  0. ,  0. ],
           [ 0. ,  0. , -0.5]])
    """
    xm, labels, w, valid, reduction = _check(input, target, weight, ignore_index, reduction)
    if reduction == "none":
        loss = _losses(xm, labels, w, valid).astype(xm.dtype)
        scale = w
    else:
        total, denom = _sums(xm, labels, w, valid)
        if reduction == "sum":
            loss, scale = total, w
        else:
            loss = _mean(total, denom)
            with np.errstate(invalid="ignore", divide="ignore"):
                scale = w / np.float64(denom)
    grad = np.zeros(xm.shape, dtype=xm.dtype)  # (..., C): the class axis last
    np.put_along_axis(grad, labels[..., None], np.where(valid, -scale, 0.0)[..., None].astype(
        xm.dtype), axis=-1)
    class_axis = 0 if grad.ndim == 1 else 1
    return loss, np.ascontiguousarray(np.moveaxis(grad, -1, class_axis))
