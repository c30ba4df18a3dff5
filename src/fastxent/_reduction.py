"""Reductions: the denominator, each row's gradient scale, and the reduced loss.

Every entry point (the losses, the fused linear head, the metrics, the Dask blocks) plans its
reduction here *before* the kernel runs, so that each row's gradient scale
(sample weight x mask / denominator) is applied inside the kernel's single write of the
gradient, and reduces the kernel's float64 per-row losses here afterwards.  The arithmetic is
compiled (``fastxent._kernels.plan`` / ``weighted_total`` / ``reduce_total``) and shared with
the fast path of common calls, so both give the same bits.  The weighted sum of the losses is defined once, by
the row length: the rows are cut into the kernels' fixed blocks
(``_kernels.rows_per_block(row_length)`` rows each), a block is summed in float64 in 16 fixed
lanes combined in a fixed order, and the blocks' sums are added in block order.  For every
reduction but ``"none"`` the kernels compute the same block sums themselves (``block_sums``),
without writing the per-row losses: on the fast path and on the general path alike; neither
depends on the thread count.

Reductions (Keras' names): ``"none"`` (the weighted per-sample losses), ``"sum"``,
``"sum_over_batch_size"`` (divided by the number of samples not ignored) and
``"mean_with_sample_weight"`` (divided by the sum of sample weights x each sample's class
weight).  A zero denominator gives 0.0 (Keras' ``divide_no_nan``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fastxent import _kernels


@dataclass(frozen=True)
class Plan:
    """A reduction planned for ``n_rows`` per-row losses."""

    reduction: str
    denominator: float  # 1.0 for "none" and "sum"
    gs0: float  # gradient scale common to all rows: 1 / denominator (0 for a zero one)
    weights: np.ndarray | None  # per-row sample weight x mask, float64 (None: all ones)
    row_length: int = 1  # elements per row of the losses summed: sets the sum's blocks

    @property
    def empty_mean(self) -> bool:
        """A mean over nothing (every sample ignored, or a zero total weight)."""
        return self.reduction in ("sum_over_batch_size", "mean_with_sample_weight") and (
            self.denominator == 0.0
        )


def plan(reduction: str, n_rows: int, *, row_length: int, weights=None, labels=None,
         ignore_class=None, class_weight=None, sample_class_weight=None) -> Plan:
    """Plan ``reduction`` (already normalized) over ``n_rows`` rows.

    Parameters
    ----------
    row_length : int
        Elements per row of the (rows, classes) buffer whose per-row losses are summed: the
        sum runs by the kernels' blocks of rows for that length (the same bits as the fast
        path).  A caller without such a buffer passes the length its rows have.
    weights : float64 ndarray of n_rows, optional
        Flat sample weights.
    labels : int64 ndarray of n_rows, optional
        Flat labels; with ``ignore_class`` their masked rows weigh 0 and are not counted.
    class_weight : float64 ndarray of classes, optional
        Per-class weights; with integer labels a ``mean_with_sample_weight`` divides by the
        sum of ``weights x class_weight[label]`` (PyTorch's weighted mean).
    sample_class_weight : float64 ndarray of n_rows, optional
        Each row's class weight for soft targets (``sum_k class_weight_k t_k``).
    """
    denom, gs0, weff = _kernels.plan(
        reduction, n_rows,
        None if weights is None else np.ascontiguousarray(weights, dtype=np.float64),
        None if labels is None else np.ascontiguousarray(labels, dtype=np.int64),
        ignore_class,
        class_weight if (class_weight is not None and labels is not None
                         and reduction == "mean_with_sample_weight") else None,
        None if sample_class_weight is None
        else np.ascontiguousarray(sample_class_weight, dtype=np.float64),
    )
    return Plan(reduction, denom, gs0, weff, row_length)


def total(loss64: np.ndarray, p: Plan) -> float:
    """The weighted sum of flat float64 per-row losses (the numerator of every mean), by the
    blocks of rows of ``p.row_length``."""
    return _kernels.weighted_total(loss64, p.weights, p.row_length)


def block_sums(p: Plan, n_rows: int) -> np.ndarray | None:
    """Where a kernel sums its own losses for plan ``p``: float64 scratch of one entry per
    fixed block of ``n_rows`` rows of ``p.row_length`` (the kernel's ``block_sums``, weighted
    by ``p.weights``), or None when the per-row losses are wanted (reduction ``"none"``).

    A kernel that sums its blocks writes no per-row array; ``blocks_total`` of its sums has
    the bits of ``total`` of its per-row losses.
    """
    if p.reduction == "none":
        return None
    return np.empty(_kernels.n_blocks(n_rows, p.row_length))


def blocks_total(sums: np.ndarray) -> float:
    """The weighted sum of the losses from a kernel's block sums (see ``block_sums``)."""
    return _kernels.blocks_total(sums)


def reduce_total(t: float, p: Plan) -> float:
    """The reduced loss of a reduction other than ``"none"`` from its weighted sum ``t``: ``t``
    for ``"sum"``, else ``t / p.denominator``, 0.0 for a zero denominator (compiled, the
    rule the fast path applies)."""
    return _kernels.reduce_total(p.reduction, t, p.denominator)


def outcome(loss64, sums, p: Plan, batch_shape: tuple, dtype, want_total: bool):
    """``(loss, total)`` of a kernel call: from its per-row losses ``loss64`` (reduction
    ``"none"``, or a caller that keeps them) or from its ``block_sums`` (``loss64`` None);
    ``total``, the plan's weighted sum, only when ``want_total``."""
    if sums is not None:
        t = blocks_total(sums)
        return reduce_total(t, p), (t if want_total else None)
    return reduce(loss64, p, batch_shape, dtype), (total(loss64, p) if want_total else None)


def sum_and_weight(loss64: np.ndarray, row_length: int, weights=None) -> tuple[float, float]:
    """``(sum_i w_i l_i, sum_i w_i)`` of flat float64 per-row losses ``l`` (``w`` None: ones),
    by the definitions of the losses' ``"mean_with_sample_weight"``: the numerator is
    :func:`total` by the blocks of rows of ``row_length``, the denominator the plan's sum of
    weights.  For the callers that hold per-row losses of their own (``nll_loss``,
    ``fastxent.metrics.log_loss``), so that their sums and means are the losses' bits.
    """
    loss64 = np.ascontiguousarray(loss64, dtype=np.float64).reshape(-1)
    if weights is not None:
        weights = np.ascontiguousarray(weights, dtype=np.float64).reshape(-1)
        if weights.size != loss64.size:  # the kernels read one weight per loss
            raise ValueError(f"{weights.size} weights for {loss64.size} losses")
    p = plan("mean_with_sample_weight", loss64.size, row_length=row_length, weights=weights)
    return total(loss64, p), p.denominator


def exp_of_mean(mean: float) -> float:
    """``exp`` of a mean cross-entropy (a perplexity): the C library's ``exp`` (as
    ``math.exp``), ``inf`` past float64's range; one function for every perplexity, so that
    the one-shot and the streaming ones give the same bits."""
    try:
        return math.exp(mean)
    except OverflowError:
        return math.inf


def reduce(loss64: np.ndarray, p: Plan, batch_shape: tuple, dtype):
    """Apply the weights and the reduction to flat float64 per-row losses.

    Returns a Python float, or for ``"none"`` an array of ``batch_shape`` and ``dtype``.
    """
    if p.reduction == "none":
        weighted = loss64 if p.weights is None else loss64 * p.weights
        return weighted.reshape(batch_shape).astype(dtype)
    return reduce_total(total(loss64, p), p)


def zero_if_empty_mean(p: Plan, *buffers) -> None:
    """A mean over nothing is 0.0 and so is its gradient.

    The kernel scaled each row by ``gs0 = 0``, which leaves NaN in a row that holds NaN or
    +inf (0 * NaN); the loss is 0.0 there (Keras' ``divide_no_nan``), so the gradient is too.
    """
    if p.empty_mean:
        for buf in buffers:
            if buf is not None:
                buf.fill(0)
