"""Data-parallel ``SoftmaxRegression.fit`` of a Dask ``X``.

The objective is the in-memory fit's, :class:`fastxent._glm.GLM`: this module only finds the
classes and class counts by reductions over the blocks, and evaluates the data term block by
block on the workers.
"""

from __future__ import annotations

import math
import warnings

import dask
import dask.array as da
import numpy as np
from dask.array.core import PerformanceWarning
from dask.sizeof import sizeof

from fastxent import _glm
from fastxent.dask._faults import report_killed_workers
from fastxent.dask._losses import _align, _as_dask, _cache_off_on_workers, _check_known_chunks


def _active_client():
    """The distributed Client that ``dask.compute`` would use, or None."""
    try:
        from distributed import default_client
    except ImportError:  # pragma: no cover - dask without distributed
        return None
    try:
        client = default_client()
    except ValueError:
        return None
    return client if dask.base.get_scheduler() == client.get else None


def _cluster_memory(client) -> float:
    """Total memory limit of the client's workers in bytes (inf when unknown/unlimited)."""
    limits = [w.get("memory_limit") or 0 for w in client.scheduler_info()["workers"].values()]
    return float(sum(limits)) if limits and all(limits) else math.inf


def _encode_labels(y_b, classes):
    """Index of each label in the sorted ``classes`` (np.unique's inverse)."""
    return np.searchsorted(classes, y_b).astype(np.intp)


class _TrainingBlock(np.ndarray):
    """A one-element object array holding a row block's ``(X_b, labels, weights)``.

    Its own type so that dask's ``sizeof`` (registered below, in every process that imports
    this module: the workers do to run the fit's tasks) counts the arrays it holds rather than
    the 8 bytes of an object array.  The scheduler places tasks and weighs moving data by
    those sizes: at 8 bytes, a step's task for a block looked free to run on any worker, and
    the block (tens of MB) then travelled to it unseen by dask's memory and transfer figures.
    """


@sizeof.register(_TrainingBlock)
def _sizeof_training_block(block) -> int:
    return int(sum(sizeof(part) for part in block[0])) if block.size else 0


def _block_training_data(X_b, y_b, sw_b=None, *, classes, class_weight, total):
    """One row block ready for the objective: ``(X_b, class index of each row, sample
    weight x class weight / total)`` in a :class:`_TrainingBlock`, after the in-memory
    fit's check of X's values."""
    data = X_b.data if hasattr(X_b, "tocsr") else X_b
    if not np.all(np.isfinite(data)):
        raise ValueError("Input X contains NaN or infinity.")
    y_enc = _encode_labels(y_b, classes)
    out = np.empty(1, dtype=object).view(_TrainingBlock)
    out[0] = (X_b, y_enc, _glm.effective_weights(y_enc, sw_b, class_weight) / total)
    return out


# The largest total size of the per-block copies of the parameters that a step's graph
# carries (one copy in each block's task); beyond it they are one task of their own.
_INLINE_PARAMS_BYTES = 8 << 20


def _block_data_term(block, params, *, glm):
    """One row block's data term of the objective (:meth:`fastxent._glm.GLM.data_loss_grad`),
    packed as ``[[loss, d loss / d params...]]`` (float64, shape (1, 1 + params.size))."""
    (X_b, y_b, sw_b), = block
    _cache_off_on_workers()
    value, grad = glm.data_loss_grad(np.asarray(params), X_b, y_b, sw_b)
    out = np.empty((1, 1 + grad.size))
    out[0, 0] = value
    out[0, 1:] = grad
    return out


def _check_X(X) -> da.Array:
    """``X`` as a 2-D float dask array with its feature axis in one chunk."""
    if not isinstance(X, da.Array):
        raise TypeError(
            f"X must be a dask array, got {type(X).__name__}; for a dask DataFrame pass "
            "X.to_dask_array(lengths=True)"
        )
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (n_samples, n_features), got shape {X.shape}")
    _check_known_chunks(X, "X")
    if X.shape[0] < 1:
        raise ValueError(
            f"Found array with 0 sample(s) (shape={X.shape}) while a minimum of 1 is required."
        )
    if X.dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        if X.dtype.kind not in "biuf":
            raise TypeError(f"X must hold numbers, got dtype {X.dtype}")
        X = X.astype(np.float64)
    if len(X.chunks[1]) > 1:
        warnings.warn(
            f"X's feature axis is split across {len(X.chunks[1])} chunks; rechunking it to one "
            "chunk, since every block needs whole rows for its logits.",
            PerformanceWarning,
            stacklevel=4,
        )
        X = X.rechunk({1: -1})
    return X


def _check_y_and_weights(y, sample_weight, X: da.Array):
    """``y`` and ``sample_weight`` (None or float64) as 1-D dask arrays chunked like X's rows."""
    n_samples, row_chunks = X.shape[0], X.chunks[0]
    y = _as_dask(y, "y")
    _check_known_chunks(y, "y")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or y.shape[0] != n_samples:
        raise ValueError(
            f"y must have shape ({n_samples},) to match X with shape {X.shape}, got {y.shape}"
        )
    y = _align(y, (row_chunks,))
    if sample_weight is None:
        return y, None
    sw = _as_dask(sample_weight, "sample_weight")
    if sw.ndim == 0:
        sw = da.broadcast_to(sw, (n_samples,), chunks=(row_chunks,))
    _check_known_chunks(sw, "sample_weight")
    if sw.shape != (n_samples,):
        raise ValueError(f"sample_weight.shape == {sw.shape}, expected ({n_samples},)!")
    return y, _align(sw.astype(np.float64), (row_chunks,))


def _fit_softmax_regression(estimator, X, y, sample_weight=None):
    """``SoftmaxRegression.fit(X, y, sample_weight)`` for a dask array ``X``, data-parallel.

    The same objective as the in-memory fit (:class:`fastxent._glm.GLM`): classes, class
    weights and the normalizing total weight come from reductions over the blocks of ``y``
    and ``sample_weight``; then every L-BFGS evaluation ships only the parameter vector to
    the workers (one task of the graph, fetched by every worker that needs it), each block
    computes its data term and gradient ``X_b.T @ G_b`` with the compiled kernel
    (:meth:`fastxent._glm.GLM.data_loss_grad`), the per-block vectors are summed by a tree
    reduction on the workers, and the client adds the L2 penalty.

    Each row block's features, encoded labels and effective weights are prepared once, as
    one object on the worker that computes ``X_b``; every evaluation's task for the block
    depends on that object alone and runs where it lies.  The prepared blocks are persisted
    when ``X`` takes at most half of the cluster's memory limit; otherwise each evaluation
    recomputes them from their source, so a dataset larger than the cluster's memory is
    fitted without being held.

    Parameters
    ----------
    estimator : SoftmaxRegression
        Its hyperparameters are read; ``classes_``, ``coef_``, ``intercept_``, ``n_iter_``
        and ``n_features_in_`` are set.
    X : dask array of shape (n_samples, n_features)
        Chunked along the rows (a split feature axis is rechunked with a warning).
    y, sample_weight : dask or NumPy arrays of shape (n_samples,)
        Rechunked to X's row chunks.

    Returns
    -------
    estimator

    Raises
    ------
    fastxent.dask.WorkerMemoryError
        (a ``MemoryError``) when a block's task killed its workers more than
        ``distributed.scheduler.allowed-failures`` times (``distributed.KilledWorker``, its
        ``__cause__``), most likely a block of ``X`` too large for a worker's memory limit:
        the message names the block's bytes, the limit and the rows per block to rechunk to.

    Notes
    -----
    A worker lost during the fit (killed, crashed, restarted by its nanny) costs only time:
    the scheduler recomputes its blocks elsewhere, and every block's contribution depends on
    the block alone, so the fitted coefficients are the undisturbed fit's, bit for bit.
    """
    glm = _glm.check_params(estimator)
    X = _check_X(X)
    n_features = X.shape[1]
    y, sw = _check_y_and_weights(y, sample_weight, X)
    row_bytes = n_features * X.dtype.itemsize
    with report_killed_workers("X", max(X.chunks[0]), row_bytes, _active_client()):
        return _fit(estimator, glm, X, y, sw)


def _fit(estimator, glm, X, y, sw):
    """The fit's passes over the blocks (see :func:`_fit_softmax_regression`)."""
    from sklearn.utils.multiclass import check_classification_targets

    n_features = X.shape[1]
    # Pass 1 over y (and the weights): the classes.
    classes = np.asarray(da.unique(y).compute())
    check_classification_targets(classes)
    _glm.check_classes(classes)
    estimator.classes_ = classes
    y_enc = y.map_blocks(_encode_labels, classes, dtype=np.intp, meta=np.empty(0, np.intp))
    # Pass 2: class counts, weighted and not (and a negative-weight check), give the class
    # weights and the total weight without another pass.
    k = len(classes)
    counts = da.bincount(y_enc, minlength=k)
    weighted, negative = counts, False
    if sw is not None:
        weighted = da.bincount(y_enc, weights=sw, minlength=k)
        negative = (sw < 0).any()
    counts, weighted, negative = dask.compute(counts, weighted, negative)
    if negative:
        raise ValueError("sample_weight must be non-negative")
    weighted = np.asarray(weighted, dtype=np.float64)
    class_w = _glm.class_weights(estimator.class_weight, classes, counts, weighted)
    total = float(weighted @ class_w) if class_w is not None else float(np.sum(weighted))
    _glm.check_total(total)
    # One (X_b, encoded labels, effective weights) object per row block (see above).
    blocks = da.blockwise(
        _block_training_data, "i", X, "ij", y, "i", *((sw, "i") if sw is not None else ()),
        classes=classes, class_weight=class_w, total=total, adjust_chunks={"i": 1},
        concatenate=True, meta=np.empty(0, dtype=object),
    )
    client = _active_client()
    if client is not None and X.nbytes <= 0.5 * _cluster_memory(client):
        blocks = blocks.persist()

    n_blocks = blocks.numblocks[0]

    def loss_grad(params, blocks):
        """The objective: data term summed over blocks on the workers, plus the penalty."""
        # The parameters travel in the graph, not as scattered data: a task that a lost
        # worker held is recomputed from its graph, scattered data would be lost.  When a
        # copy per block is small, each block's task carries them, so that its block is its
        # only dependency and the scheduler runs it where the block lies; a shared task of
        # parameters held by one worker would make that worker a candidate for every
        # block's task, and the scheduler, weighing the workers' load against a transfer,
        # moved blocks to it.  Larger parameters are one task that all blocks depend on.
        if params.nbytes * n_blocks <= _INLINE_PARAMS_BYTES:
            args, per_task = (), {"params": params}
        else:
            args, per_task = (da.from_array(params, chunks=-1, name=False), "k"), {}
        parts = da.blockwise(
            _block_data_term, "ij", blocks, "i", *args, new_axes={"j": 1 + params.size},
            glm=glm, concatenate=True, dtype=np.float64, meta=np.empty((0, 0)), **per_task,
        )
        packed = parts.sum(axis=0).compute()  # a tree reduction on the workers
        pen, pgrad = glm.penalty_grad(params, n_features)
        return float(packed[0]) + pen, packed[1:] + pgrad

    n_out = 1 if k == 2 else k
    estimator.coef_, estimator.intercept_, estimator.n_iter_ = glm.minimize(
        loss_grad, (blocks,), n_features, n_out, stacklevel=4
    )
    estimator.n_features_in_ = n_features
    if hasattr(estimator, "feature_names_in_"):
        del estimator.feature_names_in_
    return estimator
