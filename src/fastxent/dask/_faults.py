"""Worker faults in the computes that fastxent itself runs (the fit, the metrics' update).

A worker that dies while running a block (SIGKILL, a crash, or distributed's nanny killing
it for exceeding its memory limit) is not an error by itself: the scheduler recomputes the
block's tasks elsewhere, and since every block's result depends only on the block's data the
result is unchanged, bit for bit.  When a task has been running on more than
``distributed.scheduler.allowed-failures`` workers that died, the scheduler gives up with
``distributed.KilledWorker``; almost always a block too large for a worker's memory.
:func:`compute` turns that into a :class:`WorkerMemoryError` that says how large the block
was, what the workers' memory limit is, and which chunk size to use instead.
"""

from __future__ import annotations

import contextlib
import math

import dask


class WorkerMemoryError(MemoryError):
    """A block's task killed its workers more than ``distributed.scheduler.allowed-failures``
    times (``distributed.KilledWorker``), most likely by exceeding their memory limit.

    The message names the block's size in bytes, the workers' memory limit and the number of
    rows per block to rechunk to; the ``KilledWorker`` is its ``__cause__``.  Attributes:
    ``block_bytes``, ``memory_limit`` (bytes; ``math.inf`` when unknown), ``suggested_rows``.
    """

    def __init__(self, message, *, block_bytes=None, memory_limit=None, suggested_rows=None):
        super().__init__(message)
        self.block_bytes = block_bytes
        self.memory_limit = memory_limit
        self.suggested_rows = suggested_rows


def _worker_memory(client):
    """(smallest worker memory limit, largest worker process memory) in bytes, or
    (inf, 0) when unknown."""
    try:
        workers = client.scheduler_info()["workers"].values()
        if not workers:  # all killed at once: wait (briefly) for a nanny to restart one
            client.wait_for_workers(1, timeout=10)
            workers = client.scheduler_info()["workers"].values()
    except Exception:  # noqa: BLE001 - the cluster may be going down; the message still helps
        return math.inf, 0
    limits = [w.get("memory_limit") or math.inf for w in workers]
    used = [(w.get("metrics") or {}).get("memory") or 0 for w in workers]
    return (min(limits) if limits else math.inf), (max(used) if used else 0)


def _killed_worker_types():
    try:
        from distributed import KilledWorker
    except ImportError:  # pragma: no cover - dask without distributed
        return ()
    return (KilledWorker,)


@contextlib.contextmanager
def report_killed_workers(name, block_rows, row_bytes, client=None):
    """Re-raise ``distributed.KilledWorker`` from the body as :class:`WorkerMemoryError`.

    ``name`` is the array's name in the message ("X", "y_pred"), ``block_rows`` its largest
    row block, ``row_bytes`` the bytes of one of its rows.
    """
    killed = _killed_worker_types()
    try:
        yield
    except killed as exc:
        if client is None:
            from distributed import default_client

            try:
                client = default_client()  # KilledWorker came from one
            except ValueError:
                client = None
        limit, used = _worker_memory(client) if client is not None else (math.inf, 0)
        block_bytes = int(block_rows * row_bytes)
        # A block needs a few times its size while it is computed (its source, the block,
        # the kernel's per-row work): aim for a quarter of what a worker has free when idle.
        free = limit - used if used < limit else limit / 2
        budget = free / 4 if math.isfinite(limit) else block_bytes / 4
        rows = int(max(1, min(block_rows // 2, budget // max(row_bytes, 1))))
        limit_text = f"{int(limit):,} bytes" if math.isfinite(limit) else "unknown"
        raise WorkerMemoryError(
            f"a task on a block of {name} killed its worker more than "
            f"distributed.scheduler.allowed-failures="
            f"{dask.config.get('distributed.scheduler.allowed-failures', '?')} times, most "
            f"likely by exceeding the worker memory limit: the largest block of {name} has "
            f"{block_rows:,} rows, {block_bytes:,} bytes; worker memory limit: {limit_text}"
            f" (a worker's process holds about {int(used):,} bytes besides its blocks).  "
            f"Rechunk {name} to at most {rows:,} rows per block, e.g. "
            f"{name}.rechunk({{0: {rows}}}), or give the workers more memory.",
            block_bytes=block_bytes, memory_limit=limit, suggested_rows=rows,
        ) from exc
