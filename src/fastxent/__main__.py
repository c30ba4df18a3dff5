"""``python -m fastxent``: configuration and a quick timing against plain NumPy.

``python -m fastxent bench [...]``: the full benchmark against the copy roofline and the peers
(see ``fastxent.bench``; ``python -m fastxent bench --help`` for options).
"""

from __future__ import annotations

import sys
import time

import numpy as np

USAGE = "usage: python -m fastxent [-h | bench [options]]"


def _best_time(fn, repeat: int = 5, min_sample_s: float = 0.01) -> float:
    """Seconds per call: the best of ``repeat`` samples of as many calls as last about
    ``min_sample_s`` (short calls are timed many at a time)."""
    t0 = time.perf_counter()
    fn()
    number = max(1, int(min_sample_s / max(time.perf_counter() - t0, 1e-9)))
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - t0) / number)
    return best


def _fmt_ms(t: float) -> str:
    return f"{t * 1e3:.2f} ms" if t >= 1e-3 else f"{t * 1e6:.1f} µs"


def quick_table() -> str:
    """A markdown table: fastxent's ``loss_and_grad`` against plain NumPy at a few sizes."""
    import fastxent as fx
    from fastxent.bench.peers import numpy_sparse  # the obvious NumPy code

    rng = np.random.default_rng(0)
    lines = [
        "| workload (float32, sparse labels, from logits) | fastxent loss_and_grad | NumPy "
        "| speed-up |",
        "|---|---|---|---|",
    ]
    loss = fx.SparseCategoricalCrossentropy(from_logits=True)
    for n, c in [(32, 10), (256, 100), (4096, 10), (4096, 1000), (256, 32000)]:
        x = rng.standard_normal((n, c), dtype=np.float32)
        y = rng.integers(0, c, n)
        t_fx = _best_time(lambda y=y, x=x: loss.loss_and_grad(y, x))
        t_np = _best_time(lambda y=y, x=x: numpy_sparse(y, x))
        lines.append(f"| {n} x {c} | {_fmt_ms(t_fx)} | {_fmt_ms(t_np)} | {t_np / t_fx:.1f}x |")
    return "\n".join(lines)


def main(argv=None) -> int:
    """Show the configuration and the quick table, or run ``bench``; 2 for unknown arguments."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "bench":
        from fastxent import bench

        return bench.main(argv[1:])
    if argv and argv[0] in ("-h", "--help"):
        print(USAGE)
        print(__doc__)
        return 0
    if argv:
        print(USAGE, file=sys.stderr)
        print(f"python -m fastxent: error: unrecognized arguments: {' '.join(argv)}",
              file=sys.stderr)
        return 2
    import fastxent as fx

    fx.show_config()
    print()
    print(quick_table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
