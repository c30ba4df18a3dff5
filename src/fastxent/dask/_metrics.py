"""Dask arrays in the stateful metrics of :mod:`fastxent.metrics`.

``metric.update_state`` with a Dask array lands here (imported on first use, so that
``import fastxent`` never imports dask).  The inputs are aligned block for block as for the
Dask losses (``fastxent.dask._losses._prepare``: whole rows per block, labels and weights
chunked like ``y_pred``); every block's ``(weighted sum, weight)`` is computed where the block
lives, by the same per-batch code as a NumPy ``update_state``; only those pairs travel, and
they are merged in block order (row-major over the block grid) by the caller.  Each block's
pair depends only on the block's data, never on the worker, its thread count or the order in
which blocks finish, so the result is bitwise identical on any number of workers and is the
same after a lost worker's blocks were recomputed elsewhere.
"""

from __future__ import annotations

import numpy as np

from fastxent.dask._faults import report_killed_workers
from fastxent.dask._losses import _block_inputs, _prepare, _run_block


def _block_state(y_pred_b, y_true_b, *rest, obj, axis, sparse, weight, n_weight_arrays,
                 block_info=None):
    """One block's ``(weighted sum, weight)``, laid along the class axis (length 2)."""
    y_true_b, sw, _ = _block_inputs(y_true_b, rest, axis, sparse, weight, n_weight_arrays)
    total, count = _run_block(lambda: obj._batch_state(y_true_b, y_pred_b, sw), block_info,
                              axis)
    shape = tuple(2 if i == axis else 1 for i in range(y_pred_b.ndim))
    return np.array([total, count], dtype=np.float64).reshape(shape)


def block_states(metric, y_true, y_pred, sample_weight=None) -> np.ndarray:
    """The ``(n_blocks, 2)`` float64 per-block states of ``metric`` on Dask inputs, in
    block order; computed with the current Dask scheduler (a distributed Client if one is
    active).

    A block's task that killed its workers more than ``distributed.scheduler.allowed-failures``
    times raises :class:`fastxent.dask.WorkerMemoryError` (a ``MemoryError`` naming
    the block's bytes, the workers' memory limit and the rows per block to rechunk to);
    a worker lost fewer times only costs the recomputation of its blocks."""
    job = _prepare(metric._loss_object(), y_true, y_pred, sample_weight)
    proto = type(metric).from_config(metric.get_config())  # options only: no state shipped
    chunks = tuple((2,) if i == job.axis else (1,) * len(c)
                   for i, c in enumerate(job.y_pred.chunks))
    states = job.map_kernel(_block_state, meta_dtype=np.float64, obj=proto, chunks=chunks)
    row_chunks = job.y_pred.chunks[0] if job.axis != 0 else (1,)
    row_bytes = job.y_pred.dtype.itemsize * int(np.prod(
        [sum(c) for i, c in enumerate(job.y_pred.chunks) if i != 0]))
    with report_killed_workers("y_pred", max(row_chunks), row_bytes):
        out = np.asarray(states.compute())
    return np.moveaxis(out, job.axis, -1).reshape(-1, 2)
