"""The cluster beside the local run: fastxent.dask on a distributed.LocalCluster.

Run from a source checkout with the extensions built in place::

    PYTHONPATH=src python bench/bench_dask.py            # about a minute
    PYTHONPATH=src python bench/bench_dask.py --quick    # smaller, a few seconds

Two workloads, each timed three ways in this one process, in interleaved rounds (each round
runs every candidate once, so a slow moment of a shared machine hits all of them); a cell
is the minimum over the rounds, after a warm-up:

* **loss + gradient**: ``SparseCategoricalCrossentropy(from_logits=True)`` loss and
  gradient of ``rows x classes`` float32 logits, the gradient then summed over the rows (so
  that the cluster computes all of it without sending it back).  *local*: the NumPy class on
  an in-memory array, with as many OpenMP threads as the cluster has worker threads;
  *dask threads*: ``fastxent.dask`` on a dask array of the same array with dask's threaded
  scheduler; *cluster*: ``fastxent.dask`` on a ``LocalCluster`` (worker processes on
  127.0.0.1) with the logits generated and held on the workers.
* **fit**: ``SoftmaxRegression(alpha=1e-3, tol=1e-8).fit`` on ``fit_rows x 20`` float64
  features with 5 classes: in memory, and data-parallel on the cluster (the data held on the
  workers).  The coefficients of the two fits are compared.

Nothing is asserted; the figures depend on the machine and on its load, which is printed.
The file is named ``bench_*.py`` like the rest of bench/, but holds no pytest benchmark.
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import numpy as np


def _normal_block(block_info=None, *, seed, n_cols, item_dtype):
    """A block of seeded standard normals: the same wherever it is computed."""
    lo, hi = block_info[None]["array-location"][0]
    return np.random.default_rng([seed, lo]).standard_normal((hi - lo, n_cols), dtype=item_dtype)


def _label_block(block_info=None, *, seed, n_classes):
    lo, hi = block_info[None]["array-location"][0]
    return np.random.default_rng([seed, lo, 1]).integers(0, n_classes, hi - lo)


def _planted_labels(x, block_info=None, *, seed, n_classes):
    """Labels of a softmax model with seeded weights (Gumbel-max sampling)."""
    lo = block_info[0]["array-location"][0][0]
    scores = x @ np.random.default_rng(seed).standard_normal((x.shape[1], n_classes))
    noise = np.random.default_rng([seed, lo, 1]).gumbel(size=scores.shape)
    return np.argmax(scores + noise, axis=1)


def lazy_data(n_rows, n_cols, chunk_rows, seed, what):
    """Lazily generated (x, y): float32 logits with uniform labels (``what="logits"``), or
    float64 features with the labels of a planted 5-class model (``"features"``)."""
    import dask.array as da

    rows = da.core.normalize_chunks(chunk_rows, (n_rows,))[0]
    dtype = np.float32 if what == "logits" else np.float64
    x = da.map_blocks(_normal_block, chunks=(rows, (n_cols,)), meta=np.empty((0, 0), dtype),
                      seed=seed, n_cols=n_cols, item_dtype=dtype)
    if what == "logits":
        y = da.map_blocks(_label_block, chunks=(rows,), meta=np.empty(0, np.int64),
                          seed=seed, n_classes=n_cols)
    else:
        y = x.map_blocks(_planted_labels, drop_axis=1, meta=np.empty(0, np.int64),
                         seed=seed, n_classes=5)
    return x, y


def interleaved_min(candidates: dict, rounds: int) -> dict:
    """{name: best seconds} over ``rounds`` rounds of calling every candidate once, the
    order rotated from round to round, after one warm-up call each."""
    for fn in candidates.values():
        fn()
    best = dict.fromkeys(candidates, math.inf)
    names = list(candidates)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            t0 = time.perf_counter()
            candidates[name]()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def run(n_rows, n_classes, chunk_rows, fit_rows, n_workers, rounds, seed=0) -> dict:
    import dask
    import dask.array as da
    from distributed import Client, LocalCluster

    import fastxent as fx
    import fastxent.dask as fxd
    from fastxent.sklearn import SoftmaxRegression

    threads = n_workers
    x_lazy, y_lazy = lazy_data(n_rows, n_classes, chunk_rows, seed, "logits")
    logits, labels = dask.compute(x_lazy, y_lazy, scheduler="sync")
    local_fn = fx.SparseCategoricalCrossentropy(from_logits=True, n_threads=threads)
    dask_fn = fxd.SparseCategoricalCrossentropy(from_logits=True, n_threads=1)

    def local():
        value, grad = local_fn.loss_and_grad(labels, logits)
        return value, grad.sum(axis=0, dtype=np.float64)

    def on_dask(x, y, **kw):
        value, grad = dask_fn.loss_and_grad(y, x)
        return dask.compute(value, grad.sum(axis=0, dtype=np.float64), **kw)

    in_memory = (da.from_array(logits, chunks=x_lazy.chunks),
                 da.from_array(labels, chunks=y_lazy.chunks))
    Xf_lazy, yf_lazy = lazy_data(fit_rows, 20, -(-fit_rows // (4 * n_workers)), seed + 1,
                                 "features")
    X_fit, y_fit = dask.compute(Xf_lazy, yf_lazy, scheduler="sync")
    fit_params = dict(alpha=1e-3, tol=1e-8)

    with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                      host="127.0.0.1", dashboard_address="127.0.0.1:0") as cluster, \
            Client(cluster) as client:
        x_w, y_w, Xf_w, yf_w = client.persist([x_lazy, y_lazy, Xf_lazy, yf_lazy])
        want, got = local()[0], on_dask(x_w, y_w)[0]
        loss_times = interleaved_min({
            "local": local,
            "dask_threads": lambda: on_dask(*in_memory, scheduler="threads",
                                            num_workers=threads),
            "cluster": lambda: on_dask(x_w, y_w),
        }, rounds)
        fits = {}

        def fit_local():
            fits["local"] = SoftmaxRegression(**fit_params).fit(X_fit, y_fit)

        def fit_cluster():
            fits["cluster"] = SoftmaxRegression(**fit_params).fit(Xf_w, yf_w)

        fit_times = interleaved_min({"local": fit_local, "cluster": fit_cluster},
                                    max(1, rounds // 2))
    return {
        "loss_workload": (f"SparseCategoricalCrossentropy(from_logits=True).loss_and_grad, "
                          f"{n_rows:,} x {n_classes} float32, gradient summed over rows, "
                          f"{x_lazy.numblocks[0]} chunks"),
        "loss_times": loss_times,
        "loss_rel_diff": abs(float(got) - want) / abs(want),
        "fit_workload": (f"SoftmaxRegression(alpha=1e-3, tol=1e-8).fit, {fit_rows:,} x 20 "
                         f"float64, 5 classes, {Xf_lazy.numblocks[0]} chunks, "
                         f"{int(fits['local'].n_iter_[0])} L-BFGS iterations"),
        "fit_times": fit_times,
        "fit_max_coef_diff": float(np.max(np.abs(fits["cluster"].coef_ - fits["local"].coef_))),
        "n_workers": n_workers,
    }


def markdown(result: dict, machine: dict, load: tuple) -> str:
    lt, ft = result["loss_times"], result["fit_times"]
    n = result["n_workers"]
    lines = [
        f"| workload | local (NumPy, {n} threads) | dask threaded scheduler | "
        f"LocalCluster ({n} processes x 1 thread) | cluster / local |",
        "|---|---|---|---|---|",
        f"| {result['loss_workload']} | {lt['local'] * 1e3:.0f} ms | "
        f"{lt['dask_threads'] * 1e3:.0f} ms | {lt['cluster'] * 1e3:.0f} ms | "
        f"{lt['cluster'] / lt['local']:.2f}x |",
        f"| {result['fit_workload']} | {ft['local']:.2f} s | n/a | {ft['cluster']:.2f} s | "
        f"{ft['cluster'] / ft['local']:.2f}x |",
        "",
        f"Agreement: loss relative difference {result['loss_rel_diff']:.1e}; fitted "
        f"coefficients max abs difference {result['fit_max_coef_diff']:.1e}.",
        f"Machine: {machine['cpu']}, {machine['cpus']} CPUs, ISA path {machine['isa']}, "
        f"Python {machine['python']}, NumPy {machine['numpy']}, fastxent {machine['fastxent']}, "
        f"dask {machine['dask']}, distributed {machine['distributed']}; "
        f"load average {load[0]} at the start, {load[1]} at the end.",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller data, fewer rounds")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--chunk-rows", type=int, default=62_500)
    parser.add_argument("--fit-rows", type=int, default=400_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.chunk_rows, args.fit_rows, args.rounds = 100_000, 12_500, 40_000, 3

    import dask
    import distributed

    from fastxent.bench import _loadavg, machine_info

    machine = machine_info(args.workers, {"dask": dask.__version__,
                                          "distributed": distributed.__version__})
    start_load = _loadavg()
    result = run(args.rows, args.classes, args.chunk_rows, args.fit_rows, args.workers,
                 args.rounds)
    print(markdown(result, machine, (start_load, _loadavg())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
