"""``python -m fastxent bench``: fastxent against the copy roofline and the peers.

A fused cross-entropy loss + gradient reads the logits once and writes the gradient once, so
the least time any implementation can take is about the time of copying an array of the
logits' size: ``np.copyto(dst, x)`` with ``dst`` allocated and touched beforehand, the *copy
roofline*.  For each workload the benchmark times fastxent, the copy roofline and the installed
peers (NumPy, scikit-learn, PyTorch, JAX) on the same arrays, each candidate in its own worker
process, interleaved round by round, and reports each time beside fastxent's performance
goals, in markdown (``fastxent_bench.md``), JSON (``fastxent_bench.json``) and a bandwidth plot
(``fastxent_bench_bandwidth.png``).

Modules: ``workloads`` (the groups, their sizes and goals), ``peers`` (the candidates,
imported lazily), ``timing`` (workers and interleaved rounds), ``report`` (rows, goals,
markdown), ``plot`` (the bandwidth plot), ``linear`` (the fused linear + cross-entropy group)
and ``cli`` (the command line).  Run ``python -m fastxent bench --help`` for the options.
"""

from fastxent.bench.cli import main

__all__ = ["main"]
