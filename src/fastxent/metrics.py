"""Metrics: stateful cross-entropy metrics for evaluation at scale, and scikit-learn's log loss.

Stateful metrics with Keras' names and arguments (:class:`CategoricalCrossentropy`,
:class:`SparseCategoricalCrossentropy`, :class:`BinaryCrossentropy`, :class:`KLDivergence`),
keras-hub's :class:`Perplexity`, and the focal family's losses as metrics (an extension:
:class:`BinaryFocalCrossentropy`, :class:`CategoricalFocalCrossentropy`,
:class:`SparseCategoricalFocalCrossentropy`, :class:`CategoricalGeneralizedCrossEntropy`)
accumulate a float64 weighted sum and total weight over any number of
``update_state`` calls (NumPy or Dask arrays); :func:`evaluate` streams arrays larger than
memory (``np.memmap``, h5py, zarr) through one in chunks, with an optional tqdm progress bar.

How a metric sums, exactly.  A batch (one ``update_state`` call, or one block of a Dask
array) contributes the two sums of the matching loss with
``reduction="mean_with_sample_weight"``: ``S_b``, the weighted sum of its per-sample losses,
summed by the losses' fixed blocks of rows (16 float64 lanes per block, combined in a fixed
order, the blocks added in order), and ``W_b``, that reduction's denominator (the sum of the
sample weights of the samples that count).  The state adds the ``S_b`` in update order with
Neumaier's compensated float64 summation (a sum and a compensation term), and the ``W_b``
likewise; :meth:`~CategoricalCrossentropy.merge_state` adds the other metrics' pairs in the
order given.  ``result()`` is ``(sum + compensation of S) / (sum + compensation of W)``
(0.0 when that is 0), its ``exp`` for :class:`Perplexity` (the C library's ``exp``, as
``math.exp``).  So after one batch a metric returns the bits of the loss
(:class:`Perplexity`: of :func:`fastxent.perplexity`, which gives NaN instead of 0.0 when no
token counts), and no result depends on ``n_threads``; splitting the data into other batches
changes only the rounding of the batches' sums (the test-suite allows a relative 1e-12), not
the definition.

:func:`log_loss` is a drop-in replacement for :func:`sklearn.metrics.log_loss`: the same
argument checks, warnings, errors and results on the same inputs (checked against the
installed scikit-learn by the test-suite), with the cross-entropy computed by fastxent's
probability kernel.  ``log_loss_scorer`` is the matching scorer for ``scoring=``.

scikit-learn is imported when a function is first called, not when this module is
imported (``pip install '.[sklearn]'`` from a clone).
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from fastxent import _reduction
from fastxent._stateful import (
    BinaryCrossentropy,
    BinaryFocalCrossentropy,
    CategoricalCrossentropy,
    CategoricalFocalCrossentropy,
    CategoricalGeneralizedCrossEntropy,
    KLDivergence,
    Perplexity,
    SparseCategoricalCrossentropy,
    SparseCategoricalFocalCrossentropy,
    evaluate,
)
from fastxent.losses import categorical_crossentropy

__all__ = [  # noqa: F822 - log_loss_scorer is lazy
    "BinaryCrossentropy",
    "CategoricalCrossentropy",
    "SparseCategoricalCrossentropy",
    "Perplexity",
    "KLDivergence",
    "BinaryFocalCrossentropy",
    "CategoricalFocalCrossentropy",
    "SparseCategoricalFocalCrossentropy",
    "CategoricalGeneralizedCrossEntropy",
    "evaluate",
    "log_loss",
    "log_loss_scorer",
]

# The public names are fastxent.metrics' (their repr, pickles, help() and doctests say so).
for _cls in (BinaryCrossentropy, CategoricalCrossentropy, SparseCategoricalCrossentropy,
             Perplexity, KLDivergence, BinaryFocalCrossentropy, CategoricalFocalCrossentropy,
             SparseCategoricalFocalCrossentropy, CategoricalGeneralizedCrossEntropy, evaluate):
    _cls.__module__ = __name__
del _cls


def _validate_parameters(y_true, y_pred, normalize, sample_weight, labels):
    """scikit-learn's ``@validate_params`` checks for ``log_loss`` (same messages)."""
    try:
        from sklearn.utils._param_validation import validate_parameter_constraints
    except ImportError:  # pragma: no cover - scikit-learn without the private helper
        if not isinstance(normalize, bool | np.bool_):
            raise TypeError(f"normalize must be a bool, got {normalize!r}") from None
        return
    validate_parameter_constraints(
        {
            "y_true": ["array-like"],
            "y_pred": ["array-like"],
            "normalize": ["boolean"],
            "sample_weight": ["array-like", None],
            "labels": ["array-like", None],
        },
        {
            "y_true": y_true,
            "y_pred": y_pred,
            "normalize": normalize,
            "sample_weight": sample_weight,
            "labels": labels,
        },
        caller_name="log_loss",
    )


def _one_hot_targets(y_true, labels):
    """One-hot (or indicator) targets and the classes, as scikit-learn's LabelBinarizer."""
    from sklearn.preprocessing import LabelBinarizer

    lb = LabelBinarizer()
    if labels is not None:
        lb = lb.fit(labels)
        if not np.all(lb.classes_ == labels):
            warnings.warn(
                f"Labels passed were {labels}. But this function "
                "assumes labels are ordered lexicographically. "
                f"Pass the ordered labels={lb.classes_.tolist()} and ensure that "
                "the columns of y_prob correspond to this ordering.",
                UserWarning,
                stacklevel=3,
            )
        if not np.all(np.isin(y_true, labels)):
            undeclared_labels = set(y_true) - set(labels)
            raise ValueError(
                f"y_true contains values {undeclared_labels} not belonging "
                f"to the passed labels {labels}."
            )
    else:
        lb = lb.fit(y_true)

    if lb.classes_.shape[0] == 1:
        if labels is None:
            raise ValueError(
                f"y_true contains only one label ({lb.classes_[0]}). Please provide the list "
                "of all expected class labels explicitly through the labels argument."
            )
        raise ValueError(
            f"The labels array needs to contain at least two labels, got {lb.classes_}."
        )

    transformed = lb.transform(y_true)
    if transformed.shape[1] == 1:
        transformed = np.concatenate((1 - transformed, transformed), axis=1)
    return transformed, lb.classes_


def log_loss(
    y_true,
    y_pred=None,
    *,
    normalize: bool = True,
    sample_weight=None,
    labels=None,
    y_proba=None,
) -> float:
    r"""Log loss (cross-entropy) of predicted probabilities, as ``sklearn.metrics.log_loss``.

    For ``n`` samples with one-hot (or indicator) targets ``t`` and probabilities ``p``::

        loss = sum_i w_i * (-sum_k t_ik * log(clip(p_ik, eps, 1 - eps))) / sum_i w_i

    with ``eps = np.finfo(p.dtype).eps``; rows are *not* renormalized (a row that does not
    sum to one gives a ``UserWarning``, as in scikit-learn >= 1.5).  The per-sample losses
    are computed by fastxent's probability kernel and summed as fastxent's losses sum them
    (float64, by the fixed blocks of rows of ``n_classes`` elements, the same for any thread
    count; the denominator is the sum of weights of ``"mean_with_sample_weight"``): for
    float64 probabilities in ``[1e-7, 1 - 1e-7]`` whose rows sum to exactly 1, the result
    is bit for bit :func:`fastxent.categorical_crossentropy`'s with ``reduction="sum"``
    (``normalize=False``) or ``"mean_with_sample_weight"``, on the one-hot targets.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,) or label indicator matrix
        True labels, of any type scikit-learn's ``LabelBinarizer`` accepts.
    y_pred : array-like of shape (n_samples, n_classes) or (n_samples,)
        Predicted probabilities, columns in the sorted order of the labels (as
        ``predict_proba`` returns them).  A 1-D array is the probability of the positive
        (greater) label of a binary problem.
    normalize : bool, default=True
        Return the (weighted) mean per-sample loss; else the (weighted) sum.
    sample_weight : array-like of shape (n_samples,), optional
    labels : array-like, optional
        All the labels; needed when ``y_true`` does not contain every class.
    y_proba : array-like, optional
        Keyword alias of ``y_pred`` (scikit-learn 1.9 renamed the argument).

    Returns
    -------
    float

    Raises
    ------
    ValueError
        Probabilities outside [0, 1], inconsistent lengths, fewer than two labels, a
        label of ``y_true`` missing from ``labels``, or a class count of ``y_pred`` that
        does not match the labels; the messages are scikit-learn's.

    Examples
    --------
    >>> from fastxent.metrics import log_loss
    >>> round(log_loss(["spam", "ham", "ham", "spam"],
    ...                [[.1, .9], [.9, .1], [.8, .2], [.35, .65]]), 5)
    0.21616
    """
    if y_proba is not None:
        if y_pred is not None:
            raise ValueError("Cannot use both `y_pred` and `y_proba`; they are the same argument.")
        y_pred = y_proba
    elif y_pred is None:
        raise TypeError("log_loss() missing the predicted probabilities y_pred")
    _validate_parameters(y_true, y_pred, normalize, sample_weight, labels)

    from sklearn.utils import check_array, check_consistent_length
    from sklearn.utils.validation import _check_sample_weight

    y_prob = check_array(
        y_pred, ensure_2d=False, dtype=[np.float64, np.float32, np.float16]
    )
    if np.max(y_prob) > 1:
        raise ValueError(f"y_prob contains values greater than 1: {np.max(y_prob)}")
    if np.min(y_prob) < 0:
        raise ValueError(f"y_prob contains values lower than 0: {np.min(y_prob)}")

    check_consistent_length(y_prob, y_true, sample_weight)
    if sample_weight is not None:
        _check_sample_weight(sample_weight, y_prob, force_float_dtype=False)

    targets, classes = _one_hot_targets(y_true, labels)

    if y_prob.ndim == 1:
        y_prob = y_prob[:, np.newaxis]
    if y_prob.shape[1] == 1:
        y_prob = np.concatenate([1 - y_prob, y_prob], axis=1)

    eps = np.finfo(y_prob.dtype).eps
    row_sums = np.sum(y_prob, axis=1)
    if not np.all(np.isclose(row_sums, 1, rtol=math.sqrt(eps), atol=1e-8)):
        warnings.warn(
            "The y_prob values do not sum to one. Make sure to pass probabilities.",
            UserWarning,
            stacklevel=2,
        )

    if classes.shape[0] != y_prob.shape[1]:
        if labels is None:
            raise ValueError(
                "y_true and y_prob contain different number of "
                f"classes: {targets.shape[1]} vs {y_prob.shape[1]}. Please provide the "
                "true labels explicitly through the labels argument. "
                f"Classes found in y_true: {classes}"
            )
        raise ValueError(
            "The number of classes in labels is different "
            f"from that in y_prob. Classes found in labels: {classes}"
        )

    per_sample = _clipped_xent(targets, y_prob, eps)
    total, weight = _reduction.sum_and_weight(per_sample, y_prob.shape[1], sample_weight)
    if not normalize:
        return total
    if weight == 0.0:  # np.average's error, which scikit-learn lets through
        raise ZeroDivisionError("Weights sum to zero, can't be normalized")
    return total / weight


def _clipped_xent(targets, y_prob, eps):
    """``-sum_k t_k log(clip(p_k, eps, 1 - eps))`` per row, by the fastxent kernel.

    The kernel divides each row by its sum before the log (Keras' convention) and clips
    at its own ``epsilon``.  scikit-learn does neither, so the probabilities are clipped
    here first, the kernel's clip is set to the smallest normal number (inactive: after
    clipping every entry is >= eps / n_classes), and the row-sum term is added back:
    ``-sum_k t_k log(q_k) = kernel - sum_k t_k * log(sum_j q_j)``.
    """
    kdtype = np.float32 if y_prob.dtype == np.float16 else y_prob.dtype
    q = np.clip(y_prob, eps, 1 - eps).astype(kdtype, copy=False)
    t = targets.astype(kdtype)
    per_row = categorical_crossentropy(t, q, epsilon=float(np.finfo(kdtype).tiny))
    log_sums = np.log(np.sum(q, axis=1, dtype=np.float64))
    return per_row.astype(np.float64) - np.sum(t, axis=1, dtype=np.float64) * log_sums


def _make_log_loss_scorer():
    from sklearn.metrics import make_scorer

    return make_scorer(log_loss, greater_is_better=False, response_method="predict_proba")


def __getattr__(name):
    # log_loss_scorer is built on first access so that importing this module does not
    # import scikit-learn.
    if name == "log_loss_scorer":
        scorer = _make_log_loss_scorer()
        globals()["log_loss_scorer"] = scorer
        return scorer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
