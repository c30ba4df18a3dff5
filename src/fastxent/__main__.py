"""``python -m fastxent``: configuration and a quick timing against plain NumPy.

``python -m fastxent bench [...]``: the full benchmark against the copy roofline and the peers
(see ``fastxent.bench``; ``--help`` for options).
"""

from __future__ import annotations

import sys
import time

import numpy as np


def _best_time(fn, repeat: int = 5) -> float:
    fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _numpy_sparse_loss_and_grad(labels, logits):
    """The obvious NumPy implementation a user would otherwise write."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    total = exp.sum(axis=1, keepdims=True)
    rows = np.arange(len(labels))
    loss = np.mean(np.log(total[:, 0]) - shifted[rows, labels])
    grad = exp / total
    grad[rows, labels] -= 1.0
    grad /= len(labels)
    return loss, grad


def quick_table() -> str:
    import fastxent as fx

    rng = np.random.default_rng(0)
    lines = [
        "| workload (float32, sparse labels, from logits) | fastxent loss_and_grad | NumPy "
        "| speed-up |",
        "|---|---|---|---|",
    ]
    loss = fx.SparseCategoricalCrossentropy(from_logits=True)
    for n, c in [(4096, 10), (4096, 1000), (256, 32000)]:
        x = rng.standard_normal((n, c), dtype=np.float32)
        y = rng.integers(0, c, n)
        t_fx = _best_time(lambda y=y, x=x: loss.loss_and_grad(y, x))
        t_np = _best_time(lambda y=y, x=x: _numpy_sparse_loss_and_grad(y, x))
        lines.append(
            f"| {n} x {c} | {t_fx * 1e3:.2f} ms | {t_np * 1e3:.2f} ms | {t_np / t_fx:.1f}x |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "bench":
        from fastxent import bench

        return bench.main(argv[1:])
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    import fastxent as fx

    fx.show_config()
    print()
    print(quick_table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
