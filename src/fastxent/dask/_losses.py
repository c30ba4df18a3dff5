"""The loss graphs of :mod:`fastxent.dask`: the functions and classes on Dask arrays.

Every block of ``y_pred`` (whole rows: the class axis in one chunk) runs the NumPy loss object
(:mod:`fastxent.losses`) on the worker that holds it; ``y_true`` and ``sample_weight`` are
aligned block for block with it (:class:`_Job`).

Reductions are exact, not means of means: each block contributes the sum of its weighted
losses (the numerator) and its share of the denominator (its number of non-ignored samples, or
the sum of its sample weights times class weights); the two are summed over blocks and divided
once.  The gradient of a reduced loss needs the global denominator, so ``loss_and_grad``
computes it first, when it is called: a constant when there are no weights and no ignored
label, otherwise one pass over the labels and weights only (never over ``y_pred``).  It is
folded into the per-block sample weights, so that each block runs the kernel once, with
``reduction="sum"``, and writes its finished gradient block.  (Left lazy, the denominator
would be a barrier before every kernel task, and dask would then run the kernels ahead of
whatever consumes their gradient blocks, holding many of them in a worker's memory.)

What is bit for bit and what depends on the chunking: per-sample losses and gradients are the
NumPy path's bits for any chunking (rows are independent), except that the gradient of a
mean over a sum of weights (``"mean_with_sample_weight"`` with sample or class weights) is
scaled by a denominator summed over blocks, as below (a count is exact).  A block's
numerator is the NumPy loss's own float64 sum of that block (the kernels' fixed blocks of
rows, counted from the block's first row, added in order); the blocks' numerators (and
denominator shares) are then added by ``dask.array``'s ``sum`` (NumPy's sum within Dask's
reduction tree), which depends on the chunking.  So a reduced loss is deterministic for a
given chunking (any scheduler, worker count or ``n_threads``), a single chunk gives the
NumPy call's bits (``__call__``; ``loss_and_grad`` scales each row by 1 / denominator before
summing, which can round a mean's last bit differently), and another chunking may change the
last bits (docs/guide/dask.md gives the figures).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import dask
import dask.array as da
import numpy as np
from dask.array.core import PerformanceWarning
from dask.utils import parse_bytes

import fastxent.focal as _np_focal
import fastxent.losses as _np_losses
from fastxent import _reduction
from fastxent._cache import buffer_cache_info, set_buffer_cache
from fastxent._dispatch import keras_ranks
from fastxent._errors import LabelRangeError
from fastxent._family import check_alpha_length
from fastxent._validation import (
    as_float_array,
    as_labels,
    as_target_array,
    broadcast_sample_weight,
    check_weight_vector,
    normalize_axis,
    result_dtype,
)

# ----------------------------------------------------------------------- loss classes


class _DaskLoss:
    """Dask behaviour of the loss classes, mixed in before the NumPy class."""

    def __call__(self, y_true, y_pred, sample_weight=None) -> da.Array:
        """The reduced loss: a 0-d float64 dask array (for ``reduction="none"`` the
        weighted per-sample losses, a dask array of y_pred's dtype)."""
        return _loss(_prepare(self, y_true, y_pred, sample_weight))

    def loss_and_grad(self, y_true, y_pred, sample_weight=None) -> tuple[da.Array, da.Array]:
        """The loss (as ``__call__``) and d(loss)/d(y_pred), a dask array with y_pred's
        shape, dtype and chunks (after any class-axis rechunk).  Computing both together
        (``dask.compute(loss, grad)``) runs each block's kernel once.  For a reduced loss
        with weights or ``ignore_class``, the denominator is computed by this call."""
        return _loss_and_grad(_prepare(self, y_true, y_pred, sample_weight))

    def gradient(self, y_true, y_pred, sample_weight=None) -> da.Array:
        """d(loss)/d(y_pred): the second result of :meth:`loss_and_grad`."""
        return self.loss_and_grad(y_true, y_pred, sample_weight)[1]

    def gradient_hessian(self, y_true, y_pred, sample_weight=None):
        raise NotImplementedError(
            "gradient_hessian is not available on dask arrays; use the NumPy class "
            f"fastxent.{type(self).__name__} on each block"
        )


_SHARED_DOC = """
    Calling the object, :meth:`loss_and_grad` and :meth:`gradient` take Dask arrays (or
    array-likes, converted) and return lazy Dask arrays; the options, reductions and results
    are those of the NumPy class.

    * ``y_pred``: float32 or float64, chunked along the non-class axes.  A class axis split
      across chunks is rechunked to one chunk with a ``PerformanceWarning``.
    * ``y_true`` and ``sample_weight`` (NumPy or Dask; lower-rank weights align with the
      leading dimensions) are rechunked to match ``y_pred``.
    * ``reduction="none"``: the weighted per-sample losses, chunked like ``y_pred`` without
      its class axis.  Otherwise a 0-d float64 array: the weighted losses summed over all
      blocks, divided once by the denominator summed over all blocks (0.0 when it is 0).
    * Errors in the options, dtypes and shapes are raised when the graph is built; a bad
      label is found when its block is computed, and the ``ValueError`` gives its position
      in the whole array.
"""


class CategoricalCrossentropy(_DaskLoss, _np_losses.CategoricalCrossentropy):
    __doc__ = """Categorical cross-entropy of Dask arrays
    (:class:`fastxent.CategoricalCrossentropy`).
""" + _SHARED_DOC + """
    Examples
    --------
    >>> import dask, dask.array as da, numpy as np, fastxent as fx, fastxent.dask as fxd
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((1000, 5))
    >>> t = rng.dirichlet(np.ones(5), 1000)
    >>> loss_fn = fxd.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1)
    >>> lazy_loss, lazy_grad = loss_fn.loss_and_grad(t, da.from_array(x, chunks=(250, 5)))
    >>> loss, grad = dask.compute(lazy_loss, lazy_grad)   # each block's kernel runs once
    >>> want_loss, want_grad = fx.CategoricalCrossentropy(
    ...     from_logits=True, label_smoothing=0.1).loss_and_grad(t, x)
    >>> bool(np.isclose(loss, want_loss, rtol=1e-12)), bool(np.allclose(grad, want_grad))
    (True, True)
    """


class SparseCategoricalCrossentropy(_DaskLoss, _np_losses.SparseCategoricalCrossentropy):
    __doc__ = """Cross-entropy of Dask arrays with integer labels
    (:class:`fastxent.SparseCategoricalCrossentropy`).
""" + _SHARED_DOC + """
    Examples
    --------
    >>> import dask, dask.array as da, numpy as np, fastxent as fx, fastxent.dask as fxd
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((1000, 5))
    >>> y = rng.integers(-1, 5, 1000)            # -1: padding
    >>> w = rng.uniform(0, 2, 1000)
    >>> opts = dict(from_logits=True, ignore_class=-1, reduction="mean_with_sample_weight")
    >>> lazy_loss = fxd.SparseCategoricalCrossentropy(**opts)(
    ...     da.from_array(y, chunks=100), da.from_array(x, chunks=(100, 5)), w)
    >>> bool(np.isclose(lazy_loss.compute(), fx.SparseCategoricalCrossentropy(**opts)(y, x, w),
    ...                 rtol=1e-12))
    True
    """


class BinaryCrossentropy(_DaskLoss, _np_losses.BinaryCrossentropy):
    __doc__ = """Binary cross-entropy of Dask arrays (:class:`fastxent.BinaryCrossentropy`).
""" + _SHARED_DOC + """
    Examples
    --------
    >>> import dask.array as da, numpy as np, fastxent.dask as fxd
    >>> x = da.zeros((4, 2), chunks=(2, 2))
    >>> fxd.BinaryCrossentropy(from_logits=True, reduction="sum").gradient(
    ...     np.ones((4, 2)), x).compute()
    array([[-0.25, -0.25],
           [-0.25, -0.25],
           [-0.25, -0.25],
           [-0.25, -0.25]])
    """


class BinaryFocalCrossentropy(_DaskLoss, _np_focal.BinaryFocalCrossentropy):
    __doc__ = """Binary focal cross-entropy of Dask arrays
    (:class:`fastxent.BinaryFocalCrossentropy`).
""" + _SHARED_DOC + """
    Examples
    --------
    >>> import dask.array as da, numpy as np, fastxent as fx, fastxent.dask as fxd
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((1000, 3))
    >>> z = rng.integers(0, 2, (1000, 3))
    >>> opts = dict(gamma=2.0, apply_class_balancing=True, from_logits=True)
    >>> lazy_loss = fxd.BinaryFocalCrossentropy(**opts)(z, da.from_array(x, chunks=(300, 3)))
    >>> bool(np.isclose(lazy_loss.compute(), fx.BinaryFocalCrossentropy(**opts)(z, x),
    ...                 rtol=1e-12))
    True
    """


class CategoricalFocalCrossentropy(_DaskLoss, _np_focal.CategoricalFocalCrossentropy):
    __doc__ = """Categorical focal cross-entropy of Dask arrays
    (:class:`fastxent.CategoricalFocalCrossentropy`).
""" + _SHARED_DOC + """
    Examples
    --------
    >>> import dask, dask.array as da, numpy as np, fastxent as fx, fastxent.dask as fxd
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((1000, 5))
    >>> t = rng.dirichlet(np.ones(5), 1000)
    >>> loss_fn = fxd.CategoricalFocalCrossentropy(alpha=0.5, from_logits=True)
    >>> loss, grad = dask.compute(*loss_fn.loss_and_grad(t, da.from_array(x, chunks=(300, 5))))
    >>> want_loss, want_grad = fx.CategoricalFocalCrossentropy(
    ...     alpha=0.5, from_logits=True).loss_and_grad(t, x)
    >>> bool(np.isclose(loss, want_loss, rtol=1e-12)), bool(np.allclose(grad, want_grad))
    (True, True)
    """


class SparseCategoricalFocalCrossentropy(_DaskLoss,
                                         _np_focal.SparseCategoricalFocalCrossentropy):
    __doc__ = """Focal cross-entropy of Dask arrays with integer labels
    (:class:`fastxent.SparseCategoricalFocalCrossentropy`).
""" + _SHARED_DOC + """
    Examples
    --------
    >>> import dask.array as da, numpy as np, fastxent as fx, fastxent.dask as fxd
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((1000, 5))
    >>> y = rng.integers(-1, 5, 1000)            # -1: padding
    >>> opts = dict(from_logits=True, ignore_class=-1, class_weight=[1.0, 2.0, 1.0, 1.0, 0.5],
    ...             reduction="mean_with_sample_weight")
    >>> lazy_loss = fxd.SparseCategoricalFocalCrossentropy(**opts)(
    ...     da.from_array(y, chunks=300), da.from_array(x, chunks=(300, 5)))
    >>> bool(np.isclose(lazy_loss.compute(),
    ...                 fx.SparseCategoricalFocalCrossentropy(**opts)(y, x), rtol=1e-12))
    True
    """


class KLDivergence(_DaskLoss, _np_focal.KLDivergence):
    __doc__ = """Kullback-Leibler divergence of Dask arrays (:class:`fastxent.KLDivergence`).
""" + _SHARED_DOC + """
    Examples
    --------
    >>> import dask.array as da, numpy as np, fastxent.dask as fxd
    >>> teacher = np.array([[0.25, 0.75], [0.5, 0.5]])
    >>> student = da.zeros((2, 2), chunks=(1, 2))        # logits
    >>> kl = fxd.KLDivergence(from_logits=True, reduction="none")
    >>> kl(teacher, student).compute().round(6)
    array([0.130812, 0.      ])
    """


class CategoricalGeneralizedCrossEntropy(_DaskLoss,
                                         _np_focal.CategoricalGeneralizedCrossEntropy):
    __doc__ = """Generalized cross-entropy of Dask arrays with integer labels
    (:class:`fastxent.CategoricalGeneralizedCrossEntropy`).
""" + _SHARED_DOC + """
    Examples
    --------
    >>> import dask.array as da, numpy as np, fastxent.dask as fxd
    >>> y_pred = da.from_array(np.array([[0.7, 0.3], [0.2, 0.8], [0.6, 0.4], [0.4, 0.6]]),
    ...                        chunks=(3, 2))
    >>> round(float(fxd.CategoricalGeneralizedCrossEntropy()([0, 1, 0, 1], y_pred).compute()), 6)
    0.35986
    """


# ----------------------------------------------------------------- per-sample functions


def categorical_crossentropy(
    y_true,
    y_pred,
    from_logits: bool = False,
    label_smoothing: float = 0.0,
    axis: int = -1,
    *,
    class_weight=None,
    epsilon: float = 1e-7,
    z_loss: float = 0.0,
    n_threads: int | None = None,
) -> da.Array:
    """Per-sample categorical cross-entropy of Dask arrays
    (:func:`fastxent.categorical_crossentropy` block by block).

    Parameters
    ----------
    y_true : dask or NumPy array, shape of ``y_pred``
        Target distributions; rechunked to ``y_pred``'s chunks.
    y_pred : dask array of float32 or float64, shape (..., C, ...)
        Logits or probabilities, chunked along the non-class axes.  A class axis split
        across chunks is rechunked to one chunk with a ``PerformanceWarning``.
    from_logits, label_smoothing, axis, class_weight, epsilon, z_loss, n_threads
        As in :func:`fastxent.categorical_crossentropy`; ``n_threads`` applies on each worker.

    Returns
    -------
    dask array of y_pred's dtype, shape of y_pred without ``axis``
        Chunked like ``y_pred`` without its class axis; lazy until computed.

    Examples
    --------
    >>> import dask.array as da, numpy as np, fastxent.dask as fxd
    >>> logits = da.from_array(np.array([[1.0, 2.0, 0.5], [0.0, 0.0, 3.0]]), chunks=(1, 3))
    >>> y_true = np.eye(3)[[1, 2]]
    >>> fxd.categorical_crossentropy(y_true, logits, from_logits=True).compute().round(6)
    array([0.464369, 0.094923])
    """
    obj = CategoricalCrossentropy(
        from_logits, label_smoothing, axis, "none", class_weight, n_threads,
        epsilon=epsilon, z_loss=z_loss,
    )
    return _loss(_prepare(obj, y_true, y_pred, None))


def sparse_categorical_crossentropy(
    y_true,
    y_pred,
    from_logits: bool = False,
    ignore_class: int | None = None,
    axis: int = -1,
    *,
    label_smoothing: float = 0.0,
    class_weight=None,
    epsilon: float = 1e-7,
    z_loss: float = 0.0,
    n_threads: int | None = None,
) -> da.Array:
    """Per-sample cross-entropy of Dask arrays with integer labels
    (:func:`fastxent.sparse_categorical_crossentropy` block by block).

    Parameters
    ----------
    y_true : dask or NumPy array of integers, shape of y_pred without ``axis``
        Class labels; rechunked to match ``y_pred``.  An out-of-range label raises
        ``ValueError`` when the block holding it is computed, naming its global position.
    y_pred : dask array of float32 or float64
        Chunked along the non-class axes.
    from_logits, ignore_class, axis, label_smoothing, class_weight, epsilon, z_loss, n_threads
        As in :func:`fastxent.sparse_categorical_crossentropy`.

    Returns
    -------
    dask array of y_pred's dtype, shape of y_true (0 at ignored positions)

    Examples
    --------
    >>> import dask.array as da, numpy as np, fastxent.dask as fxd
    >>> logits = da.from_array(np.array([[1.0, 2.0, 0.5], [0.0, 0.0, 3.0]]), chunks=(1, 3))
    >>> fxd.sparse_categorical_crossentropy([1, 2], logits, from_logits=True).compute().round(6)
    array([0.464369, 0.094923])
    """
    obj = SparseCategoricalCrossentropy(
        from_logits, ignore_class, label_smoothing, axis, "none", class_weight, n_threads,
        epsilon=epsilon, z_loss=z_loss,
    )
    return _loss(_prepare(obj, y_true, y_pred, None))


def binary_crossentropy(
    y_true,
    y_pred,
    from_logits: bool = False,
    label_smoothing: float = 0.0,
    axis: int = -1,
    *,
    pos_weight=None,
    epsilon: float = 1e-7,
    n_threads: int | None = None,
) -> da.Array:
    """Per-sample binary cross-entropy of Dask arrays, the mean over ``axis``
    (:func:`fastxent.binary_crossentropy` block by block).

    Parameters
    ----------
    y_true : dask or NumPy array, shape of y_pred
        Targets in [0, 1].
    y_pred : dask array of float32 or float64
        Chunked along the axes other than ``axis``.
    from_logits, label_smoothing, axis, pos_weight, epsilon, n_threads
        As in :func:`fastxent.binary_crossentropy`.

    Returns
    -------
    dask array of y_pred's dtype, shape of y_pred without ``axis``

    Examples
    --------
    >>> import dask.array as da, numpy as np, fastxent.dask as fxd
    >>> x = da.from_array(np.array([[-1.0, 2.0], [0.5, 0.5]]), chunks=(1, 2))
    >>> fxd.binary_crossentropy([[0, 1], [1, 1]], x, from_logits=True).compute().round(6)
    array([0.220095, 0.474077])
    """
    obj = BinaryCrossentropy(
        from_logits, label_smoothing, axis, "none", pos_weight, n_threads, epsilon=epsilon,
    )
    return _loss(_prepare(obj, y_true, y_pred, None))


def binary_focal_crossentropy(
    y_true,
    y_pred,
    apply_class_balancing: bool = False,
    alpha: float = 0.25,
    gamma: float = 2.0,
    from_logits: bool = False,
    label_smoothing: float = 0.0,
    axis: int = -1,
    *,
    epsilon: float = 1e-7,
    n_threads: int | None = None,
) -> da.Array:
    """Per-sample binary focal cross-entropy of Dask arrays, the mean over ``axis``
    (:func:`fastxent.binary_focal_crossentropy` block by block).

    Parameters
    ----------
    y_true : dask or NumPy array, shape of y_pred
        Targets in [0, 1].
    y_pred : dask array of float32 or float64
        Chunked along the axes other than ``axis``.
    apply_class_balancing, alpha, gamma, from_logits, label_smoothing, axis, epsilon, n_threads
        As in :func:`fastxent.binary_focal_crossentropy`.

    Returns
    -------
    dask array of y_pred's dtype, shape of y_pred without ``axis``

    Examples
    --------
    >>> import dask.array as da, numpy as np, fastxent.dask as fxd
    >>> x = da.from_array(np.array([[-1.0, 2.0], [0.5, 0.5]]), chunks=(1, 2))
    >>> fxd.binary_focal_crossentropy([[0, 1], [1, 1]], x, gamma=2.0,
    ...                               from_logits=True).compute().round(6)
    array([0.012231, 0.067573])
    """
    obj = BinaryFocalCrossentropy(
        apply_class_balancing, alpha, gamma, from_logits, label_smoothing, axis, "none",
        epsilon=epsilon, n_threads=n_threads,
    )
    return _loss(_prepare(obj, y_true, y_pred, None))


def categorical_focal_crossentropy(
    y_true,
    y_pred,
    alpha=0.25,
    gamma: float = 2.0,
    from_logits: bool = False,
    label_smoothing: float = 0.0,
    axis: int = -1,
    *,
    epsilon: float = 1e-7,
    n_threads: int | None = None,
) -> da.Array:
    """Per-sample categorical focal cross-entropy of Dask arrays
    (:func:`fastxent.categorical_focal_crossentropy` block by block).

    Parameters
    ----------
    y_true : dask or NumPy array, shape of y_pred
        Target distributions.
    y_pred : dask array of float32 or float64
        Chunked along the non-class axes.
    alpha, gamma, from_logits, label_smoothing, axis, epsilon, n_threads
        As in :func:`fastxent.categorical_focal_crossentropy`.

    Returns
    -------
    dask array of y_pred's dtype, shape of y_pred without ``axis``

    Examples
    --------
    >>> import dask.array as da, numpy as np, fastxent.dask as fxd
    >>> logits = da.from_array(np.array([[2.0, 1.0, 0.0], [0.0, 0.0, 0.0]]), chunks=(1, 3))
    >>> fxd.categorical_focal_crossentropy(np.eye(3)[[0, 2]], logits,
    ...                                    from_logits=True).compute().round(6)
    array([0.011419, 0.122068])
    """
    obj = CategoricalFocalCrossentropy(
        alpha, gamma, from_logits, label_smoothing, axis, "none", epsilon=epsilon,
        n_threads=n_threads,
    )
    return _loss(_prepare(obj, y_true, y_pred, None))


def sparse_categorical_focal_crossentropy(
    y_true,
    y_pred,
    alpha: float = 0.25,
    gamma: float = 2.0,
    from_logits: bool = False,
    ignore_class: int | None = None,
    axis: int = -1,
    *,
    class_weight=None,
    epsilon: float = 1e-7,
    n_threads: int | None = None,
) -> da.Array:
    """Per-sample focal cross-entropy of Dask arrays with integer labels
    (:func:`fastxent.sparse_categorical_focal_crossentropy` block by block).

    Parameters
    ----------
    y_true : dask or NumPy array of integers, shape of y_pred without ``axis``
        Class labels; an out-of-range label raises ``ValueError`` when the block holding it
        is computed, naming its global position.
    y_pred : dask array of float32 or float64
        Chunked along the non-class axes.
    alpha, gamma, from_logits, ignore_class, axis, class_weight, epsilon, n_threads
        As in :func:`fastxent.sparse_categorical_focal_crossentropy`.

    Returns
    -------
    dask array of y_pred's dtype, shape of y_true (0 at ignored positions)

    Examples
    --------
    >>> import dask.array as da, numpy as np, fastxent.dask as fxd
    >>> logits = da.from_array(np.array([[2.0, 1.0, 0.0], [0.0, 0.0, 0.0]]), chunks=(1, 3))
    >>> fxd.sparse_categorical_focal_crossentropy([0, -1], logits, from_logits=True,
    ...                                           ignore_class=-1).compute().round(6)
    array([0.011419, 0.      ])
    """
    obj = SparseCategoricalFocalCrossentropy(
        alpha, gamma, from_logits, ignore_class, axis, "none", class_weight=class_weight,
        epsilon=epsilon, n_threads=n_threads,
    )
    return _loss(_prepare(obj, y_true, y_pred, None))


def kl_divergence(
    y_true,
    y_pred,
    *,
    from_logits: bool = False,
    axis: int = -1,
    epsilon: float = 1e-7,
    n_threads: int | None = None,
) -> da.Array:
    """Per-sample Kullback-Leibler divergence of Dask arrays
    (:func:`fastxent.kl_divergence` block by block).

    Parameters
    ----------
    y_true : dask or NumPy array, shape of y_pred
        Target distributions.
    y_pred : dask array of float32 or float64
        Probabilities, or logits with ``from_logits=True``; chunked along the non-class axes.
    from_logits, axis, epsilon, n_threads
        As in :func:`fastxent.kl_divergence`.

    Returns
    -------
    dask array of y_pred's dtype, shape of y_pred without ``axis``

    Examples
    --------
    >>> import dask.array as da, numpy as np, fastxent.dask as fxd
    >>> p = da.from_array(np.array([[0.5, 0.5], [0.25, 0.75]]), chunks=(1, 2))
    >>> fxd.kl_divergence(np.array([[0.25, 0.75], [0.25, 0.75]]), p).compute().round(6)
    array([0.130812, 0.      ])
    """
    obj = KLDivergence("none", from_logits=from_logits, axis=axis, epsilon=epsilon,
                       n_threads=n_threads)
    return _loss(_prepare(obj, y_true, y_pred, None))


def categorical_generalized_cross_entropy(
    y_true,
    y_pred,
    q: float = 0.5,
    *,
    from_logits: bool = False,
    ignore_class: int | None = None,
    axis: int = -1,
    n_threads: int | None = None,
) -> da.Array:
    """Per-sample generalized cross-entropy of Dask arrays with integer labels
    (:func:`fastxent.categorical_generalized_cross_entropy` block by block).

    Parameters
    ----------
    y_true : dask or NumPy array of integers, shape of y_pred without ``axis``
        Class labels.
    y_pred : dask array of float32 or float64
        Probabilities, or logits with ``from_logits=True``.
    q, from_logits, ignore_class, axis, n_threads
        As in :func:`fastxent.categorical_generalized_cross_entropy`.

    Returns
    -------
    dask array of y_pred's dtype, shape of y_true (0 at ignored positions)

    Examples
    --------
    >>> import dask.array as da, numpy as np, fastxent.dask as fxd
    >>> y_pred = da.from_array(np.array([[0.7, 0.3], [0.2, 0.8]]), chunks=(1, 2))
    >>> fxd.categorical_generalized_cross_entropy([0, 1], y_pred).compute().round(6)
    array([0.32668 , 0.211146])
    """
    obj = CategoricalGeneralizedCrossEntropy(q, "none", from_logits=from_logits,
                                             ignore_class=ignore_class, axis=axis,
                                             n_threads=n_threads)
    return _loss(_prepare(obj, y_true, y_pred, None))


# -------------------------------------------------------------------- the two graphs


def _loss(job: _Job) -> da.Array:
    """The loss of a prepared job: per-sample blocks, or block sums divided once."""
    if job.reduction == "none":
        return job.map_kernel(_block_per_sample, drop_axis=job.axis, meta_dtype=job.loss_dtype)
    numerators = job.map_kernel(
        _block_weighted_sum, chunks=job.one_per_block, meta_dtype=np.float64,
        obj=_with_reduction(job.obj, "sum"),
    )
    total = numerators.sum()
    if job.reduction == "sum":
        return total
    return da.map_blocks(_divide_no_nan, total, job.denominator(), dtype=np.float64)


def _loss_and_grad(job: _Job) -> tuple[da.Array, da.Array]:
    """(loss, grad) of a prepared job, each block's kernel run once for both."""
    if job.reduction == "none":
        pairs = job.map_kernel(_block_loss_and_grad, meta_dtype=object)
        losses = pairs.map_blocks(
            _pick_per_sample, axis=job.axis, chunks=job.with_class_chunk(1), dtype=job.loss_dtype,
        )
        return losses.squeeze(axis=job.axis), _pick_grad(pairs, job)
    denominator = () if job.reduction == "sum" else (float(job.denominator()),)  # computes
    pairs = job.map_kernel(
        _block_loss_and_grad, *denominator, meta_dtype=object, obj=_with_reduction(job.obj, "sum"),
    )
    total = pairs.map_blocks(
        _pick_weighted_sum, chunks=job.one_per_block, dtype=np.float64,
    ).sum()
    if denominator == (0.0,):
        # divide_no_nan: a zero denominator gives 0.0 (even if a block's sum is inf or NaN)
        total = da.zeros((), dtype=np.float64)
    return total, _pick_grad(pairs, job)


# ------------------------------------------------------------ preparing the arrays


@dataclass
class _Job:
    """Inputs aligned block for block with ``y_pred`` (whose class axis is one chunk).

    ``y_true`` and ``sample_weight`` have y_pred's number of dimensions: sparse labels and
    sample weights carry a size-1 class axis, so that every array maps block to block.
    """

    obj: Any  # the NumPy loss object that runs on each block
    kind: str  # "categorical", "sparse" or "binary"
    reduction: str
    axis: int  # non-negative class axis
    y_pred: da.Array
    y_true: da.Array
    sample_weight: Any  # None, a Python float, or a dask array with a size-1 class axis

    @property
    def dtype(self) -> np.dtype:
        return self.y_pred.dtype

    @property
    def loss_dtype(self) -> np.dtype:
        """The dtype of per-sample losses: y_pred's, float32 for float16 / bfloat16."""
        return result_dtype(self.y_pred.dtype)

    @property
    def one_per_block(self) -> tuple:
        return tuple((1,) * len(c) for c in self.y_pred.chunks)

    def with_class_chunk(self, size: int) -> tuple:
        chunks = list(self.y_pred.chunks)
        chunks[self.axis] = (size,)
        return tuple(chunks)

    def _weight_args(self) -> tuple:
        return (self.sample_weight,) if isinstance(self.sample_weight, da.Array) else ()

    def map_kernel(self, func, *extra, meta_dtype, obj=None, **kwargs) -> da.Array:
        """``func(y_pred_b, y_true_b[, sw_b], *extra, obj=..., ...)`` on every block."""
        ndim = self.y_pred.ndim - (1 if "drop_axis" in kwargs else 0)
        return da.map_blocks(
            func, self.y_pred, self.y_true, *self._weight_args(), *extra,
            obj=self.obj if obj is None else obj, axis=self.axis, sparse=self.kind == "sparse",
            weight=None if isinstance(self.sample_weight, da.Array) else self.sample_weight,
            n_weight_arrays=len(self._weight_args()),
            meta=np.empty((0,) * ndim, dtype=meta_dtype), **kwargs,
        )

    def denominator(self) -> float | da.Array:
        """The reduction's denominator over all blocks: a float when it is a constant."""
        obj = self.obj
        ignore = getattr(obj, "ignore_class", None) if self.kind == "sparse" else None
        weighted = self.reduction == "mean_with_sample_weight" and (
            self.sample_weight is not None or getattr(obj, "class_weight", None) is not None
        )
        if ignore is None and not weighted:
            return float(math.prod(s for i, s in enumerate(self.y_pred.shape) if i != self.axis))
        parts = da.map_blocks(
            _block_denominator, self.y_true, *self._weight_args(),
            kind=self.kind, reduction=self.reduction, ignore_class=ignore,
            class_weight=getattr(obj, "class_weight", None), axis=self.axis,
            target_dtype=self.dtype,
            weight=None if isinstance(self.sample_weight, da.Array) else self.sample_weight,
            chunks=self.one_per_block, meta=np.empty((0,) * self.y_pred.ndim),
        )
        return parts.sum()


# The NumPy classes a block runs, the kind of y_true each takes ("categorical": targets of
# y_pred's shape, "sparse": integer labels, "binary": targets of y_pred's shape, the loss a
# mean over the class axis), and whether it reads float16 / bfloat16 y_pred.
_NUMPY_CLASSES = (
    (_np_losses.CategoricalCrossentropy, "categorical", True),
    (_np_losses.SparseCategoricalCrossentropy, "sparse", True),
    (_np_losses.BinaryCrossentropy, "binary", True),
    (_np_focal.BinaryFocalCrossentropy, "binary", False),
    (_np_focal.CategoricalFocalCrossentropy, "categorical", False),
    (_np_focal.SparseCategoricalFocalCrossentropy, "sparse", False),
    (_np_focal.KLDivergence, "categorical", False),
    (_np_focal.CategoricalGeneralizedCrossEntropy, "sparse", False),
)


def _with_reduction(obj, reduction: str):
    """A NumPy loss object with ``obj``'s options and ``reduction``."""
    return type(obj).from_config({**obj.get_config(), "reduction": reduction})


def _as_dask(a, name: str) -> da.Array:
    if isinstance(a, da.Array):
        return a
    if dask.is_dask_collection(a):
        raise TypeError(f"{name} must be a dask array or array-like, got {type(a).__name__}")
    return da.asarray(np.asarray(a))


def _check_known_chunks(a: da.Array, name: str) -> None:
    if any(math.isnan(c) for cs in a.chunks for c in cs):
        raise ValueError(
            f"{name} has unknown chunk sizes; call {name}.compute_chunk_sizes() first"
        )


def _class_axis_in_one_chunk(y_pred: da.Array, axis: int) -> da.Array:
    n_chunks = len(y_pred.chunks[axis])
    if n_chunks == 1:
        return y_pred
    warnings.warn(
        f"y_pred's class axis (axis={axis}, {y_pred.shape[axis]} classes) is split across "
        f"{n_chunks} chunks; rechunking it to one chunk, since every block must hold whole "
        "rows.  Chunk y_pred along the other axes only to avoid this copy.",
        PerformanceWarning,
        stacklevel=4,
    )
    # Keep the other axes' chunks when the merged blocks stay within the larger of the
    # current largest block and dask's array.chunk-size; otherwise shrink them to that.
    itemsize = y_pred.dtype.itemsize
    largest = itemsize * math.prod(max(c) for c in y_pred.chunks)
    merged = largest // max(y_pred.chunks[axis]) * y_pred.shape[axis]
    limit = max(largest, parse_bytes(dask.config.get("array.chunk-size")))
    if merged <= limit:
        return y_pred.rechunk({axis: -1})
    spec = {i: (-1 if i == axis else "auto") for i in range(y_pred.ndim)}
    return y_pred.rechunk(spec, block_size_limit=max(limit, y_pred.shape[axis] * itemsize))


def _align(a: da.Array, chunks: tuple) -> da.Array:
    return a if a.chunks == chunks else a.rechunk(chunks)


def _prepare(loss_obj: _DaskLoss, y_true, y_pred, sample_weight) -> _Job:
    cls, kind, low_precision = next(c for c in _NUMPY_CLASSES if isinstance(loss_obj, c[0]))
    loss_obj = cls.from_config(loss_obj.get_config())  # what blocks run
    y_pred = _as_dask(y_pred, "y_pred")
    if loss_obj.dtype is not None and y_pred.dtype.kind == "f" and y_pred.dtype != loss_obj.dtype:
        y_pred = y_pred.astype(loss_obj.dtype)  # the loss's dtype= (Keras'), as in NumPy
    as_float_array(np.empty(0, y_pred.dtype), "y_pred", y_true=y_true,
                   low_precision=low_precision)
    axis = normalize_axis(loss_obj.axis, y_pred.ndim)
    _check_known_chunks(y_pred, "y_pred")
    y_pred = _class_axis_in_one_chunk(y_pred, axis)
    batch_shape = y_pred.shape[:axis] + y_pred.shape[axis + 1:]
    single_class_chunks = tuple(
        (1,) if i == axis else c for i, c in enumerate(y_pred.chunks)
    )

    y_true = _as_dask(y_true, "y_true")
    _check_known_chunks(y_true, "y_true")
    if kind == "sparse":
        if y_true.ndim == y_pred.ndim and y_true.shape[axis] == 1:
            y_true = y_true.squeeze(axis=axis)  # Keras' (batch, 1) labels
        if y_true.shape != batch_shape:
            raise ValueError(
                f"y_true has shape {y_true.shape} but y_pred with the class axis removed has "
                f"shape {batch_shape}; sparse labels need one integer per sample"
            )
        y_true = _align(da.expand_dims(y_true, axis), single_class_chunks)
    else:
        true_shape, pred_shape = keras_ranks(y_true.shape, y_pred.shape)
        if true_shape == pred_shape and pred_shape != y_pred.shape:
            raise ValueError(
                f"y_true has shape {y_true.shape} and y_pred has shape {y_pred.shape}: Keras' "
                f"rank rule reshapes y_pred to {pred_shape}, which the dask losses do not do; "
                f"reshape y_pred to {pred_shape} (and y_true to {true_shape}) first"
            )
        if true_shape == pred_shape and true_shape != y_true.shape:
            y_true = y_true.reshape(true_shape)  # Keras' squeeze_or_expand_to_same_rank
        if y_true.shape != y_pred.shape:
            what = "binary" if kind == "binary" else "categorical"
            raise ValueError(
                f"y_true has shape {y_true.shape} but y_pred has shape {y_pred.shape}; "
                f"{what} targets need the shape of y_pred"
            )
        y_true = _align(y_true, y_pred.chunks)

    weight = _align_sample_weight(sample_weight, batch_shape, axis, single_class_chunks)
    _validate_options(loss_obj, kind, y_pred, y_true, weight)
    return _Job(loss_obj, kind, loss_obj.reduction, axis, y_pred, y_true, weight)


def _align_sample_weight(sample_weight, batch_shape: tuple, axis: int, chunks: tuple):
    """``sample_weight`` as None, a Python float, or a dask array of batch_shape with a
    size-1 class axis at ``axis``, chunked like y_pred (Keras' leading-dims alignment)."""
    if sample_weight is None:
        return None
    if not isinstance(sample_weight, da.Array):
        arr = np.asarray(sample_weight)
        if arr.ndim == 0:
            broadcast_sample_weight(arr, batch_shape)  # dtype check, same message as NumPy
            return float(arr)
        w = da.asarray(arr)
    else:
        _check_known_chunks(sample_weight, "sample_weight")
        w = sample_weight
    # Check dtype and broadcastability with the NumPy rule, on a zero-stride stand-in.
    if w.dtype.kind not in "biuf":
        broadcast_sample_weight(np.empty(0, w.dtype), (0,))
    broadcast_sample_weight(np.broadcast_to(np.float64(0.0), w.shape), batch_shape)
    w = w.astype(np.float64)
    if w.ndim == len(batch_shape) + 1 and w.shape[-1] == 1:
        w = w[..., 0]
    if w.ndim < len(batch_shape):
        w = w.reshape(w.shape + (1,) * (len(batch_shape) - w.ndim))
    w = da.expand_dims(w, axis)
    own = tuple((1,) if w.shape[i] == 1 and chunks[i] != (1,) else c
                for i, c in enumerate(chunks))
    w = _align(w, own)
    full = tuple(sum(c) for c in chunks)
    return w if w.shape == full else da.broadcast_to(w, full, chunks=chunks)


def _validate_options(obj, kind, y_pred, y_true, weight) -> None:
    """What the blocks would refuse, checked now against the arrays' metadata (dtypes, the
    class axis, weight lengths), with fastxent's own messages, rather than on a worker at
    compute time.  The options themselves were validated when ``obj`` was built."""
    opts = obj._options
    n_classes = y_pred.shape[normalize_axis(opts.axis, y_pred.ndim)]
    if n_classes == 0:
        raise ValueError(f"y_pred has an empty class axis (axis={opts.axis}, shape "
                         f"{y_pred.shape})")
    check_weight_vector(opts.class_weight, "class_weight", n_classes, "class")
    check_weight_vector(opts.pos_weight, "pos_weight", n_classes, "element of the class axis")
    check_alpha_length(getattr(obj, "alpha", None), n_classes)
    if kind == "sparse":
        as_labels(np.empty(0, y_true.dtype), (0,), 0, 1)
    else:
        as_target_array(np.empty(0, y_true.dtype), "y_true", y_pred.dtype)
    if weight is not None:
        broadcast_sample_weight(np.empty(0, np.asarray(weight).dtype
                                         if not isinstance(weight, da.Array)
                                         else weight.dtype), (0,))


# ------------------------------------------------------------ functions run per block


def _block_inputs(y_true_b, rest, axis, sparse, weight, n_weight_arrays):
    """Unpack a block's arguments: (y_true, sample_weight, extra arguments), with the size-1
    class axis of sparse labels and sample weights removed."""
    if n_weight_arrays:
        weight, rest = np.squeeze(rest[0], axis=axis), rest[1:]
    if sparse:
        y_true_b = np.squeeze(y_true_b, axis=axis)
    return y_true_b, weight, rest


def _cache_off_on_workers() -> None:
    """On a distributed worker, turn fastxent's cache of freed gradient blocks off: a worker's
    memory is Dask's to manage (its memory limit counts the process's RSS), and blocks kept
    for reuse would count against it.  The user's own process keeps its setting."""
    try:
        from distributed import get_worker

        get_worker()
    except (ImportError, ValueError):
        return
    if buffer_cache_info()["limit_bytes"]:
        set_buffer_cache(0)


def _run_block(call, block_info, axis):
    """Run ``call()``; a bad label is re-raised with its position in the whole array, any
    other ValueError with the block it came from."""
    _cache_off_on_workers()
    try:
        return call()
    except LabelRangeError as exc:
        origin = _block_origin(block_info, axis)
        if origin is None or len(origin) != len(exc.position):
            raise
        pos = tuple(int(o + p) for o, p in zip(origin, exc.position, strict=True))
        raise LabelRangeError(pos, exc.value, exc.n_classes, exc.count,
                              argument=exc.argument) from exc
    except ValueError as exc:
        origin = _block_origin(block_info, axis)
        if origin is None:
            raise
        raise ValueError(f"{exc} (in the block of y_pred starting at {origin})") from exc


def _block_origin(block_info, axis) -> tuple | None:
    """Where this block starts in the whole array, the class axis left out."""
    if not block_info:
        return None
    return tuple(lo for i, (lo, _) in enumerate(block_info[0]["array-location"]) if i != axis)


def _block_per_sample(y_pred_b, y_true_b, *rest, obj, axis, sparse, weight, n_weight_arrays,
                      block_info=None):
    y_true_b, sw, _ = _block_inputs(y_true_b, rest, axis, sparse, weight, n_weight_arrays)
    return _run_block(lambda: obj(y_true_b, y_pred_b, sw), block_info, axis)


def _block_weighted_sum(y_pred_b, y_true_b, *rest, obj, axis, sparse, weight, n_weight_arrays,
                        block_info=None):
    y_true_b, sw, _ = _block_inputs(y_true_b, rest, axis, sparse, weight, n_weight_arrays)
    total = _run_block(lambda: obj(y_true_b, y_pred_b, sw), block_info, axis)
    return np.full((1,) * y_pred_b.ndim, total)


def _block_loss_and_grad(y_pred_b, y_true_b, *rest, obj, axis, sparse, weight, n_weight_arrays,
                         block_info=None):
    """(loss, grad) of one block.  With the reduction's denominator among the extra
    arguments, the sample weights are divided by it, so that the kernel (run with
    ``reduction="sum"``) writes the finished gradient in its one pass."""
    y_true_b, sw, extra = _block_inputs(y_true_b, rest, axis, sparse, weight, n_weight_arrays)
    if extra:
        denominator = float(extra[0])
        scale = 1.0 / denominator if denominator != 0.0 else 0.0
        sw = scale if sw is None else np.asarray(sw, dtype=np.float64) * scale
    return _run_block(lambda: obj.loss_and_grad(y_true_b, y_pred_b, sw), block_info, axis)


def _pick_per_sample(pair, axis):
    return np.expand_dims(pair[0], axis)


def _pick_weighted_sum(pair):
    return np.full((1,) * pair[1].ndim, pair[0])


def _second(pair):
    return pair[1]


def _pick_grad(pairs: da.Array, job: _Job) -> da.Array:
    meta = np.empty((0,) * job.y_pred.ndim, dtype=job.dtype)
    return pairs.map_blocks(_second, dtype=job.dtype, meta=meta)


def _block_denominator(y_true_b, *rest, kind, reduction, ignore_class, class_weight, axis,
                       target_dtype, weight, block_info=None):
    """This block's share of the denominator of ``reduction`` (``fastxent._reduction``): the
    number of non-ignored samples, or the sum over non-ignored samples of sample weight x
    the sample's class weight (from the unsmoothed targets).  Reads labels and weights only."""
    if rest:
        weight = np.squeeze(rest[0], axis=axis)
    batch_shape = y_true_b.shape[:axis] + y_true_b.shape[axis + 1:]
    n_rows = math.prod(batch_shape)

    def share() -> float:
        labels = as_labels(y_true_b, batch_shape, axis, y_true_b.ndim) if kind == "sparse" else None
        w = broadcast_sample_weight(weight, batch_shape)
        sample_cw = None
        if class_weight is not None and kind != "sparse" and reduction != "sum_over_batch_size":
            t = as_target_array(y_true_b, "y_true", np.dtype(target_dtype))
            sample_cw = (np.moveaxis(t, axis, -1).reshape(n_rows, -1).astype(np.float64)
                         @ class_weight)
        plan = _reduction.plan(  # only its denominator is read: any row length
            reduction, n_rows, row_length=1, weights=None if w is None else np.reshape(w, -1),
            labels=labels, ignore_class=ignore_class, class_weight=class_weight,
            sample_class_weight=sample_cw,
        )
        return plan.denominator

    return np.full((1,) * y_true_b.ndim, _run_block(share, block_info, axis))


def _divide_no_nan(numerator, denominator):
    d = float(denominator)
    return np.float64(float(numerator) / d if d != 0.0 else 0.0)
