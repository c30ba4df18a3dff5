"""Does fastxent release the GIL?  Two Python threads calling concurrently vs one after the other.

Each call runs with ``n_threads=1`` (one OpenMP thread), so any speed-up of the concurrent run
comes from the two Python threads running their kernels at the same time, which is only
possible when the kernels release the GIL.  With a GIL-holding kernel the ratio would be ~1.0;
with two free cores it approaches 2.0.

Usage::

    PYTHONPATH=src python bench/bench_gil.py [--rows 4000] [--classes 1000] [--calls 20]

Prints the machine, the timings and ``sequential / concurrent`` for fastxent and for a
GIL-holding control, ``sorted`` of a Python list (what "no overlap" looks like here),
and a heartbeat: how fast a pure-Python counter thread runs while another thread is inside
fastxent, relative to idle (about 0 if the GIL were held; it does not need a free core).
Not a test: timings are never asserted (the machine may be shared); read the ratios.
"""

from __future__ import annotations

import argparse
import os
import platform
import threading
import time

import numpy as np

import fastxent as fx
from fastxent._config import config_dict


def make_work(rows: int, classes: int, seed: int):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, classes)).astype(np.float32)
    y = rng.integers(0, classes, size=rows)
    loss = fx.SparseCategoricalCrossentropy(from_logits=True, n_threads=1)
    out = np.empty_like(x)

    def work(calls: int) -> None:
        for _ in range(calls):
            loss.loss_and_grad(y, x, grad_out=out)

    return work


def make_gil_holding_work(n: int, seed: int):
    """The control: ``sorted`` of a list of Python floats, one C call that holds the GIL
    throughout (no Python code runs inside it, so the interpreter never switches threads)."""
    values = np.random.default_rng(seed).random(n).tolist()

    def work(calls: int) -> None:
        for _ in range(calls):
            sorted(values)

    return work


def heartbeat_ratio(work, calls: int) -> float:
    """Ticks of a pure-Python counter thread per second while ``work`` runs in this thread,
    relative to its ticks per second while this thread sleeps (GIL free).  ~0 when ``work``
    holds the GIL, a sizeable fraction when it releases it (even on one free core)."""
    def ticks_during(run) -> float:
        stop = threading.Event()
        count = [0]

        def counter():
            while not stop.is_set():
                count[0] += 1

        t = threading.Thread(target=counter)
        t.start()
        t0 = time.perf_counter()
        run()
        elapsed = time.perf_counter() - t0
        stop.set()
        t.join()
        return count[0] / elapsed

    idle = ticks_during(lambda: time.sleep(0.5))
    busy = ticks_during(lambda: work(calls))
    return busy / idle


def sequential(works, calls: int) -> float:
    t0 = time.perf_counter()
    for work in works:
        work(calls)
    return time.perf_counter() - t0


def concurrent(works, calls: int) -> float:
    barrier = threading.Barrier(len(works) + 1)

    def run(work):
        barrier.wait()
        work(calls)

    threads = [threading.Thread(target=run, args=(w,)) for w in works]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--calls", type=int, default=20, help="calls per thread")
    parser.add_argument("--repeats", type=int, default=5, help="best of this many runs")
    args = parser.parse_args()

    cfg = config_dict()
    print(f"fastxent {fx.__version__}, numpy {np.__version__}, Python {platform.python_version()}")
    print(f"CPU: {cfg['cpu']} ({os.cpu_count()} logical CPUs), ISA path {cfg['isa']}, "
          f"OpenMP {cfg['openmp']}")
    print(f"work: SparseCategoricalCrossentropy(from_logits=True, n_threads=1).loss_and_grad "
          f"on ({args.rows}, {args.classes}) float32, {args.calls} calls per Python thread")

    try:
        load = os.getloadavg()[0]
        print(f"load average (1 min) before the run: {load:.2f}")
    except OSError:
        pass
    works = [make_work(args.rows, args.classes, seed) for seed in (1, 2)]
    controls = [make_gil_holding_work(300_000, seed) for seed in (1, 2)]
    for w in works + controls:
        w(1)  # warm-up
    rows = [("fastxent loss_and_grad", works, args.calls),
            ("control: sorted(list) (holds the GIL)", controls, max(1, args.calls // 4))]
    for name, ws, calls in rows:
        seqs, cons = [], []
        for _ in range(args.repeats):  # interleaved, so that a burst of load hits both
            seqs.append(sequential(ws, calls))
            cons.append(concurrent(ws, calls))
        seq, con = min(seqs), min(cons)
        print(f"{name}:")
        print(f"  {'one after the other':<28}{seq * 1e3:10.1f} ms")
        print(f"  {'two threads concurrently':<28}{con * 1e3:10.1f} ms")
        print(f"  {'ratio (sequential/concurrent)':<28}{seq / con:10.2f}x "
              f"(1.0 = no overlap, 2.0 = perfect overlap on 2 free cores)")
    print("heartbeat of a Python counter thread while one thread computes, relative to idle:")
    print(f"  {'during fastxent calls':<28}{heartbeat_ratio(works[0], args.calls):10.2f}")
    print(f"  {'during sorted(list) (control)':<28}"
          f"{heartbeat_ratio(controls[0], max(1, args.calls // 4)):10.2f}")


if __name__ == "__main__":
    main()
