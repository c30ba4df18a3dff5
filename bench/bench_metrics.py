"""Streaming evaluation beside the one-shot call: fastxent.metrics.evaluate's throughput.

Run from a source checkout with the extensions built in place::

    PYTHONPATH=src python bench/bench_metrics.py            # a few seconds
    PYTHONPATH=src python bench/bench_metrics.py --rows 8192 --classes 1000 --batch 512

Candidates, on ``rows x classes`` float32 logits with integer labels, timed in interleaved
rounds (each round runs every candidate once, so a slow moment of a shared machine hits all
of them); a cell is the minimum over the rounds, after a warm-up:

* *one-shot*: ``fastxent.SparseCategoricalCrossentropy(from_logits=True)(y, x)`` on the
  whole array (the compiled fast path);
* *evaluate*: ``fastxent.metrics.evaluate(SparseCategoricalCrossentropy(from_logits=True),
  y, x, batch_rows=batch)``: the same loss in batches, accumulated in the metric's state;
* *evaluate (memmap)*: the same over an ``np.memmap`` of the logits (page cache warm).

Throughput is logits elements per second; the ratio is evaluate / one-shot.  Nothing is
asserted; the figures depend on the machine and its load.  The file is named
``bench_*.py`` like the rest of bench/, but holds no pytest benchmark.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=8192)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=None, help="OpenMP threads (default: all)")
    args = ap.parse_args(argv)

    import fastxent as fx
    from fastxent.metrics import SparseCategoricalCrossentropy, evaluate

    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.rows, args.classes), dtype=np.float32)
    y = rng.integers(0, args.classes, args.rows)
    loss = fx.SparseCategoricalCrossentropy(from_logits=True, n_threads=args.threads)
    metric = SparseCategoricalCrossentropy(from_logits=True, n_threads=args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "logits.f32")
        x.tofile(path)
        mm = np.memmap(path, dtype=np.float32, mode="r", shape=x.shape)

        def streamed(arr):
            metric.reset_state()
            return evaluate(metric, y, arr, batch_rows=args.batch, progress=False)

        candidates = {
            "one-shot": lambda: loss(y, x),
            f"evaluate (batch {args.batch})": lambda: streamed(x),
            f"evaluate memmap (batch {args.batch})": lambda: streamed(mm),
        }
        values = {name: f() for name, f in candidates.items()}  # warm-up
        best = dict.fromkeys(candidates, float("inf"))
        for _ in range(args.rounds):
            for name, f in candidates.items():
                t0 = time.perf_counter()
                f()
                best[name] = min(best[name], time.perf_counter() - t0)

    n = x.size
    base = best["one-shot"]
    print(f"{args.rows} x {args.classes} float32, sparse labels, from_logits, "
          f"threads={args.threads or 'default'}, min of {args.rounds} rounds, "
          f"load {os.getloadavg()[0]:.2f}")
    print(f"{'candidate':<34} {'time ms':>9} {'Melem/s':>9} {'vs one-shot':>12} {'loss':>12}")
    for name, t in best.items():
        print(f"{name:<34} {t * 1e3:9.2f} {n / t / 1e6:9.0f} {base / t:11.2f}x "
              f"{values[name]:12.8f}")


if __name__ == "__main__":
    main()
