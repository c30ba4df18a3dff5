"""``python -m fastxent bench``: fastxent against the copy roofline and the peers.

A fused cross-entropy loss + gradient reads the logits once and writes the gradient once, so
the least time any implementation can take is about the time of copying an array of the
logits' size: ``np.copyto(dst, x)`` with ``dst`` allocated and touched beforehand, the *copy
roofline*.  For each workload of the performance issue this module times, in one process and
interleaved round by round (so that a slow moment of a shared machine hits every candidate):

- fastxent (``SparseCategoricalCrossentropy(from_logits=True).loss_and_grad`` etc.),
- the copy roofline of the logits,
- the peers that are installed: a plain vectorized NumPy implementation, scikit-learn's
  ``HalfMultinomialLoss`` / ``HalfBinomialLoss`` (``loss_gradient``), PyTorch CPU
  (``F.cross_entropy`` forward + backward through autograd) and JAX
  (``jax.jit(jax.value_and_grad(...))``, compiled beforehand, ``block_until_ready``),

all on the same arrays (same values, same dtype).  It prints a markdown table (time, ratio to
the roofline, ratio to each peer, the target and whether it holds), writes it with the
machine description to ``fastxent_bench.md``, the raw numbers to ``fastxent_bench.json``
and a PNG plot of effective bandwidth against the number of classes to
``fastxent_bench_bandwidth.png`` in ``--out-dir``.  When ``fastxent.linear_cross_entropy_and_grad``
exists it also compares the fused linear + cross-entropy with the unfused pipeline and
PyTorch, in time and peak memory (tracemalloc and peak RSS, one subprocess per variant).

Run ``python -m fastxent bench --help`` for the options; ``--quick`` takes well under two
minutes, the full run a few minutes (most of it in the 8192 x 768 x 50257 matrix products of
the linear group).  Timings are never asserted anywhere: this is a report.
"""

from __future__ import annotations

import argparse
import fnmatch
import gc
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

PEERS = ("numpy", "sklearn", "torch", "jax")
DISPLAY = {
    "fastxent": "fastxent",
    "roofline": "copy roofline",
    "numpy": "NumPy",
    "sklearn": "scikit-learn",
    "torch": "PyTorch",
    "jax": "JAX",
}
MODES = ("full", "quick", "tiny")


# --------------------------------------------------------------------------------------------
# Workloads and targets
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One target of the issue: ``roofline`` (fastxent <= bound x roofline), a peer name
    (peer time >= bound x fastxent time) or ``threads`` (1-thread time >= bound x n-thread)."""

    what: str
    bound: float

    def text(self, n_threads: int) -> str:
        if self.what == "roofline":
            return f"<= {self.bound:g}x roofline"
        if self.what == "threads":
            return f"{n_threads} threads >= {self.bound:g}x faster than 1"
        return f">= {self.bound:g}x faster than {DISPLAY[self.what]}"


@dataclass(frozen=True)
class Workload:
    """A row group of the table: one data set timed with every candidate."""

    name: str  # for --workloads
    kind: str  # "sparse", "categorical" or "binary"
    shape: tuple
    dtype: str
    targets: tuple = ()
    thread_scaling: bool = False  # also time the candidates with 1 thread
    issue_shape: tuple = ()  # the issue's size, when this mode shrinks it

    @property
    def label(self) -> str:
        kind = {
            "sparse": "sparse",
            "categorical": "categorical (probability targets)",
            "binary": "binary from logits",
        }[self.kind]
        shape = " x ".join(f"{s:,}" for s in self.shape)
        if self.kind == "binary":
            shape = f"{int(np.prod(self.shape)):,} elements"
        return f"{kind} {shape} {self.dtype}"


# (name, kind, full shape, quick shape, tiny shape, dtype, targets, thread_scaling)
_WORKLOAD_TABLE = [
    ("sparse", "sparse", (8192, 1000), (8192, 1000), (64, 100), "float32",
     (Target("roofline", 1.7), Target("jax", 2), Target("sklearn", 8), Target("torch", 5),
      Target("threads", 1.7)), True),
    ("vocab", "sparse", (2048, 50257), (512, 50257), (8, 5000), "float32",
     (Target("roofline", 1.5), Target("jax", 3)), False),
    ("short-rows", "sparse", (1_000_000, 10), (1_000_000, 10), (2000, 10), "float32",
     (Target("roofline", 3.5), Target("sklearn", 4), Target("jax", 4)), False),
    ("float64", "sparse", (8192, 1000), (8192, 1000), (64, 100), "float64",
     (Target("roofline", 2),), False),
    ("categorical", "categorical", (8192, 1000), (8192, 1000), (64, 100), "float32",
     (Target("roofline", 2.5),), False),
    ("binary", "binary", (10_000_000,), (10_000_000,), (5000,), "float32",
     (Target("roofline", 3), Target("torch", 4)), False),
    ("split-row", "sparse", (2, 10_000_000), (2, 4_000_000), (2, 20_000), "float32",
     (Target("threads", 1.7),), True),
]
# number of classes for the bandwidth plot, and the bytes of logits per point
_PLOT_CLASSES = {"full": (10, 100, 1000, 10000, 50257), "quick": (10, 1000, 50257),
                 "tiny": (10, 100)}
_PLOT_BYTES = {"full": 32 * 2**20, "quick": 16 * 2**20, "tiny": 64 * 2**10}
# fused linear + cross-entropy: (tokens N, hidden d, vocabulary V)
_LINEAR_SIZE = {"full": (8192, 768, 50257), "quick": (2048, 256, 8192), "tiny": (64, 16, 300)}
_LINEAR_TARGET_TIME = 1.3  # fused <= 1.3x the unfused pipeline
_LINEAR_TARGET_MEMORY = 0.10  # peak above inputs and outputs <= 10% of the logits
# default rounds and the time after which a group stops adding rounds (at least 3 rounds)
_REPEAT = {"full": 9, "quick": 3, "tiny": 1}
_BUDGET_S = {"full": 25.0, "quick": 4.0, "tiny": 0.5}
_GROUP_NAMES = [row[0] for row in _WORKLOAD_TABLE] + ["plot", "linear"]


def workloads(mode: str) -> list[Workload]:
    """The issue's table for ``mode`` ('full', 'quick' with the two largest shrunk, 'tiny')."""
    out = []
    for name, kind, full, quick, tiny, dtype, targets, scaling in _WORKLOAD_TABLE:
        shape = {"full": full, "quick": quick, "tiny": tiny}[mode]
        out.append(Workload(name, kind, shape, dtype, targets, scaling,
                            issue_shape=full if shape != full else ()))
    return out


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def make_data(kind: str, shape: tuple, dtype, seed: int = 0) -> dict:
    """Logits ``x`` and targets ``y`` (labels, probability rows or 0/1 floats) for ``kind``."""
    rng = np.random.default_rng(seed)
    dtype = np.dtype(dtype)
    x = rng.standard_normal(shape, dtype=dtype)
    if kind == "sparse":
        y = rng.integers(0, shape[-1], shape[:-1])
    elif kind == "categorical":
        y = rng.standard_normal(shape, dtype=dtype)
        y -= y.max(axis=-1, keepdims=True)
        np.exp(y, out=y)
        y /= y.sum(axis=-1, keepdims=True)
    elif kind == "binary":
        y = (rng.random(shape) < 0.5).astype(dtype)
    else:
        raise ValueError(f"kind must be 'sparse', 'categorical' or 'binary', got {kind!r}")
    return {"x": x, "y": y}


# --------------------------------------------------------------------------------------------
# Candidates: fastxent, the roofline and the peers
# --------------------------------------------------------------------------------------------


@dataclass
class Candidate:
    """Something to time: ``fn()`` runs it once; ``check(out)`` gives (mean loss, gradient
    sample scaled like fastxent's mean-reduced gradient) to verify the inputs are equivalent."""

    system: str
    threads: int | None  # None: the same measurement serves every thread count (NumPy)
    fn: Callable[[], object]
    check: Callable[[object], tuple] | None = None
    times: list = field(default_factory=list)


def _sample(g, kind: str):
    """A small slice of a gradient (first rows / elements) as float64."""
    g = np.asarray(g)
    return np.array(g[:4] if kind != "binary" else g[:1000], dtype=np.float64)


def numpy_sparse(labels, logits):
    """The obvious NumPy sparse softmax cross-entropy a user would otherwise write."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    total = exp.sum(axis=1, keepdims=True)
    rows = np.arange(len(labels))
    loss = np.mean(np.log(total[:, 0]) - shifted[rows, labels])
    grad = exp / total
    grad[rows, labels] -= 1.0
    grad /= len(labels)
    return loss, grad


def numpy_categorical(targets, logits):
    """The obvious NumPy softmax cross-entropy with probability targets (rows summing to 1)."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    total = exp.sum(axis=1, keepdims=True)
    log_p = shifted - np.log(total)
    loss = -np.mean(np.sum(targets * log_p, axis=1))
    grad = (exp / total - targets) / len(logits)
    return loss, grad


def numpy_binary(targets, logits):
    """The obvious NumPy binary cross-entropy from logits (mean over every element)."""
    loss = np.mean(np.logaddexp(0, logits) - targets * logits)
    grad = (1 / (1 + np.exp(-logits)) - targets) / logits.size
    return loss, grad


def _fastxent_candidate(kind, x, y, threads):
    import fastxent as fx

    cls = {"sparse": fx.SparseCategoricalCrossentropy, "categorical": fx.CategoricalCrossentropy,
           "binary": fx.BinaryCrossentropy}[kind]
    loss = cls(from_logits=True, n_threads=threads)
    return Candidate("fastxent", threads, lambda: loss.loss_and_grad(y, x),
                     lambda out: (out[0], _sample(out[1], kind)))


def _roofline_candidate(x):
    dst = np.empty_like(x)
    dst[...] = 0  # allocated and touched: no page faults inside the timing
    return Candidate("roofline", None, lambda: np.copyto(dst, x))


def _numpy_candidate(kind, x, y):
    fn = {"sparse": numpy_sparse, "categorical": numpy_categorical, "binary": numpy_binary}[kind]
    return Candidate("numpy", None, lambda: fn(y, x),
                     lambda out: (float(out[0]), _sample(out[1], kind)))


def _sklearn_candidate(mods, kind, x, y, threads):
    loss_mod = mods.get("sklearn")
    if loss_mod is None or kind == "categorical":  # sklearn has no soft-target softmax loss
        return None
    n = len(x)
    if kind == "sparse":
        loss = loss_mod.HalfMultinomialLoss(n_classes=x.shape[1])
        y_float = y.astype(x.dtype)  # sklearn takes labels as floats of the logits' dtype
    else:
        loss = loss_mod.HalfBinomialLoss()
        y_float = y

    def run():
        return loss.loss_gradient(y_true=y_float, raw_prediction=x, n_threads=threads)

    # sklearn returns per-sample losses and unscaled per-sample gradients
    return Candidate("sklearn", threads, run,
                     lambda out: (float(np.mean(out[0], dtype=np.float64)),
                                  _sample(out[1], kind) / n))


def _torch_candidate(mods, kind, x, y, threads):
    torch = mods.get("torch")
    if torch is None:
        return None
    import torch.nn.functional as F

    xt = torch.from_numpy(x).requires_grad_(True)  # shares x's memory: the same bytes
    yt = torch.from_numpy(y)
    if kind == "sparse":
        def loss_of(t):
            return F.cross_entropy(t, yt)
    elif kind == "categorical":
        def loss_of(t):
            return F.cross_entropy(t, yt)  # probability targets
    else:
        def loss_of(t):
            return F.binary_cross_entropy_with_logits(t, yt)

    def run():
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        xt.grad = None
        loss = loss_of(xt)
        loss.backward()
        return loss.item(), xt.grad

    return Candidate("torch", threads, run,
                     lambda out: (out[0], _sample(out[1].numpy(), kind)))


def _jax_candidate(mods, kind, x, y):
    jax = mods.get("jax")
    if jax is None:
        return None
    jnp = jax.numpy

    if kind == "sparse":
        def loss_of(logits, labels):
            picked = jnp.take_along_axis(logits, labels[:, None], axis=1)[:, 0]
            return jnp.mean(jax.nn.logsumexp(logits, axis=1) - picked)
    elif kind == "categorical":
        def loss_of(logits, targets):
            return -jnp.mean(jnp.sum(targets * jax.nn.log_softmax(logits, axis=1), axis=1))
    else:
        def loss_of(logits, targets):
            return jnp.mean(jax.nn.softplus(logits) - targets * logits)

    value_and_grad = jax.jit(jax.value_and_grad(loss_of))
    xj = jax.device_put(x)  # the data lives in JAX before the timing, as in a JAX program
    yj = jax.device_put(y)

    def run():
        loss, grad = value_and_grad(xj, yj)
        grad.block_until_ready()
        return loss, grad

    return Candidate("jax", None, run, lambda out: (float(out[0]), _sample(out[1], kind)))


def import_peers(enabled: bool) -> dict:
    """The installed peers' modules (None for a missing one) and their versions."""
    mods: dict = {p: None for p in PEERS}
    versions: dict = {}
    if not enabled:
        return {"modules": mods, "versions": versions}
    mods["numpy"] = np
    try:
        import sklearn
        from sklearn._loss import loss as sklearn_loss

        mods["sklearn"] = sklearn_loss
        versions["scikit-learn"] = sklearn.__version__
    except ImportError:
        pass
    try:
        import torch

        mods["torch"] = torch
        versions["torch"] = torch.__version__
    except ImportError:
        pass
    try:
        import jax

        jax.config.update("jax_enable_x64", True)  # else float64 is silently float32
        mods["jax"] = jax
        versions["jax"] = jax.__version__
        try:
            import jaxlib

            versions["jaxlib"] = jaxlib.__version__
        except (ImportError, AttributeError):
            pass
    except ImportError:
        pass
    return {"modules": mods, "versions": versions}


def candidates_for(work: Workload, data: dict, mods: dict, threads: int) -> list[Candidate]:
    x, y, kind = data["x"], data["y"], work.kind
    thread_counts = [threads] + ([1] if work.thread_scaling and threads > 1 else [])
    cands = [_roofline_candidate(x)]
    cands += [_fastxent_candidate(kind, x, y, t) for t in thread_counts]
    if mods["numpy"] is not None:
        cands.append(_numpy_candidate(kind, x, y))
    for t in thread_counts:
        cands.append(_sklearn_candidate(mods, kind, x, y, t))
        cands.append(_torch_candidate(mods, kind, x, y, t))
    cands.append(_jax_candidate(mods, kind, x, y))  # XLA's own pool: no per-call threads
    return [c for c in cands if c is not None]


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------


def time_interleaved(cands: list[Candidate], repeat: int, budget_s: float,
                     min_rounds: int = 3, settle_s: float = 0.0) -> tuple[int, dict]:
    """Warm every candidate up once, then time rounds of one call each, rotating the order.

    Stops after ``repeat`` rounds, or earlier once ``budget_s`` has passed (but not before
    ``min(repeat, min_rounds)`` rounds).  ``settle_s`` seconds of sleep (untimed) precede each
    timed call: the thread pools of OpenMP, PyTorch and XLA keep spinning for a while after a
    call returns, and on a machine with few cores they would take the cores away from
    whichever candidate runs next.  Returns the number of rounds and the warm-up outputs
    passed through each candidate's ``check``.
    """
    checks = {}
    for i, c in enumerate(cands):
        out = c.fn()
        if c.check is not None:
            checks[i] = c.check(out)
        del out
    gc.collect()
    start = time.perf_counter()
    rounds = 0
    for r in range(repeat):
        order = cands[r % len(cands):] + cands[:r % len(cands)]
        gc.collect()
        gc.disable()
        try:
            for c in order:
                if settle_s:
                    time.sleep(settle_s)
                t0 = time.perf_counter()
                out = c.fn()
                c.times.append(time.perf_counter() - t0)
                del out
        finally:
            gc.enable()
        rounds += 1
        if rounds >= min(repeat, min_rounds) and time.perf_counter() - start > budget_s:
            break
    return rounds, checks


def _stat(times: list, how: str) -> float:
    return float(np.min(times) if how == "min" else np.median(times))


def _agreement(checks: dict, cands: list[Candidate]) -> dict:
    """Largest relative difference of each peer's loss and gradient sample from fastxent's."""
    ref = next((checks[i] for i, c in enumerate(cands) if c.system == "fastxent" and i in checks),
               None)
    out = {}
    if ref is None:
        return out
    for i, c in enumerate(cands):
        if c.system == "fastxent" or i not in checks:
            continue
        loss, grad = checks[i]
        scale = max(np.max(np.abs(ref[1])), 1e-30)
        out[c.system] = {
            "loss_rel": abs(float(loss) - float(ref[0])) / max(abs(float(ref[0])), 1e-30),
            "grad_rel": float(np.max(np.abs(np.asarray(grad) - ref[1])) / scale),
        }
    return out


# --------------------------------------------------------------------------------------------
# Rows of the table
# --------------------------------------------------------------------------------------------


def _fmt_bytes(b: float) -> str:
    return f"{b / 2**20:,.0f} MiB" if b >= 2**20 else f"{b / 2**10:,.0f} KiB"


def _fmt_time(t: float | None) -> str:
    if t is None:
        return "n/a"
    if t >= 1:
        return f"{t:.2f} s"
    if t >= 1e-3:
        return f"{t * 1e3:.3g} ms"
    return f"{t * 1e6:.3g} µs"


def _evaluate(target: Target, row: dict, rows_by_threads: dict, threads: int):
    """(value, holds) for one target; value None when it cannot be evaluated."""
    fx_t = row["fastxent"]
    if target.what == "roofline":
        value = fx_t / row["roofline"]
        return value, value <= target.bound
    if target.what == "threads":
        one = rows_by_threads.get(1)
        many = rows_by_threads.get(threads)
        if one is None or many is None or threads == 1:
            return None, None
        value = one["fastxent"] / many["fastxent"]
        return value, value >= target.bound
    peer = row["peers"].get(target.what)
    if peer is None:
        return None, None
    value = peer / fx_t
    return value, value >= target.bound


def run_workload(work: Workload, mods: dict, args, log) -> dict:
    """Time one workload; returns its rows (one per thread count) and the raw numbers."""
    data = make_data(work.kind, work.shape, work.dtype, seed=args.seed)
    cands = candidates_for(work, data, mods, args.threads)
    rounds, checks = time_interleaved(cands, args.repeat, args.budget, settle_s=args.settle)
    agreement = _agreement(checks, cands)
    nbytes = data["x"].nbytes
    roof = next(_stat(c.times, args.stat) for c in cands if c.system == "roofline")
    thread_counts = sorted({c.threads for c in cands if c.system == "fastxent"}, reverse=True)
    rows_by_threads = {}
    for t in thread_counts:
        row = {"threads": t, "roofline": roof, "peers": {}}
        for c in cands:
            if c.system == "roofline":
                continue
            if c.threads is not None and c.threads != t:
                continue
            if c.system == "jax" and t != args.threads:
                continue  # JAX runs on its own thread pool: only beside the main thread count
            value = _stat(c.times, args.stat)
            if c.system == "fastxent":
                row["fastxent"] = value
            else:
                row["peers"][c.system] = value
        rows_by_threads[t] = row
    rows = []
    for t in thread_counts:
        row = rows_by_threads[t]
        main_row = t == args.threads
        targets = [g for g in work.targets if (g.what == "threads") != main_row]
        if not work.thread_scaling or args.threads == 1:
            targets = list(work.targets)
        verdicts = []
        for g in targets:
            value, holds = _evaluate(g, row, rows_by_threads, args.threads)
            verdicts.append({"target": g.text(args.threads), "what": g.what, "bound": g.bound,
                             "value": value, "holds": holds})
        label = work.label
        if work.thread_scaling:
            label += f", {t} thread" + ("s" if t > 1 else "")
        rows.append({
            "workload": work.name, "label": label, "threads": t, "shape": list(work.shape),
            "dtype": work.dtype, "kind": work.kind, "bytes": nbytes,
            "fastxent": row["fastxent"], "roofline": roof,
            "gbps": 2 * nbytes / row["fastxent"] / 1e9,
            "peers": row["peers"], "targets": verdicts, "rounds": rounds,
            "issue_shape": list(work.issue_shape),
        })
    raw = {c.system + ("" if c.threads is None else f"@{c.threads}"): c.times for c in cands}
    del cands, data, checks
    gc.collect()
    log(f"  {work.name}: {rounds} rounds, fastxent {_fmt_time(rows[0]['fastxent'])}, "
        f"roofline {_fmt_time(roof)}")
    return {"rows": rows, "raw_times": raw, "agreement": agreement}


def _peer_cell(row: dict, peer: str, mods: dict) -> str:
    if mods.get(peer) is None:
        return "n/a"
    t = row["peers"].get(peer)
    if t is None:
        return "—"
    return f"{_fmt_time(t)} ({t / row['fastxent']:.1f}x)"


def _holds_cell(verdicts: list) -> str:
    if not verdicts:
        return ""
    failed = [v for v in verdicts if v["holds"] is False]
    unknown = [v for v in verdicts if v["holds"] is None]
    parts = []
    for v in verdicts:
        if v["value"] is None:
            continue
        mark = "ok" if v["holds"] else "MISS"
        name = DISPLAY.get(v["what"], v["what"])
        parts.append(f"{name} {v['value']:.2f}x {mark}")
    head = "no" if failed else ("yes" if not unknown else "?")
    if unknown:
        missing = ", ".join(DISPLAY.get(v["what"], v["what"]) for v in unknown)
        parts.append(f"{missing} n/a")
    return f"**{head}**: " + "; ".join(parts) if parts else f"**{head}**"


def table_markdown(rows: list, mods: dict, threads: int) -> str:
    head = ("| workload | fastxent | GB/s | copy roofline | fastxent / roofline | NumPy "
            "| scikit-learn | PyTorch | JAX | target | holds |")
    lines = [head, "|" + "---|" * 11]
    for row in rows:
        target = "; ".join(v["target"] for v in row["targets"]) or "—"
        lines.append(
            f"| {row['label']} | {_fmt_time(row['fastxent'])} | {row['gbps']:.1f} "
            f"| {_fmt_time(row['roofline'])} | {row['fastxent'] / row['roofline']:.2f}x "
            + " ".join(f"| {_peer_cell(row, p, mods)}" for p in PEERS)
            + f" | {target} | {_holds_cell(row['targets'])} |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Bandwidth against the number of classes (the plot)
# --------------------------------------------------------------------------------------------


def run_plot_sweep(mode: str, mods: dict, args, log) -> list[dict]:
    """Effective GB/s (logits read + gradient written, over time) for each system and C."""
    points = []
    for n_classes in _PLOT_CLASSES[mode]:
        n_rows = max(1, _PLOT_BYTES[mode] // (4 * n_classes))
        work = Workload(f"plot-{n_classes}", "sparse", (n_rows, n_classes), "float32")
        data = make_data("sparse", work.shape, "float32", seed=args.seed)
        cands = candidates_for(work, data, mods, args.threads)
        time_interleaved(cands, max(1, min(args.repeat, 5)), args.budget / 3,
                         settle_s=args.settle)
        nbytes = data["x"].nbytes
        point = {"classes": n_classes, "rows": n_rows, "bytes": nbytes, "gbps": {}}
        for c in cands:
            point["gbps"][c.system] = 2 * nbytes / _stat(c.times, args.stat) / 1e9
        points.append(point)
        log(f"  plot C={n_classes}: " + ", ".join(f"{k} {v:.1f} GB/s"
                                                  for k, v in point["gbps"].items()))
        del cands, data
        gc.collect()
    return points


def write_plot(points: list, path: str, title: str) -> bool:
    """Write the bandwidth plot with Matplotlib's Agg canvas (no pyplot state); False when
    Matplotlib is not installed."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return False
    fig = Figure(figsize=(7.5, 4.8), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    styles = {"roofline": dict(color="black", linestyle="--", marker=""),
              "fastxent": dict(color="tab:red", linewidth=2.5, marker="o"),
              "numpy": dict(color="tab:blue", marker="s"),
              "sklearn": dict(color="tab:orange", marker="^"),
              "torch": dict(color="tab:green", marker="v"),
              "jax": dict(color="tab:purple", marker="D")}
    systems = ["roofline", "fastxent"] + [p for p in PEERS
                                          if any(p in pt["gbps"] for pt in points)]
    for system in systems:
        xs = [pt["classes"] for pt in points if system in pt["gbps"]]
        ys = [pt["gbps"][system] for pt in points if system in pt["gbps"]]
        if xs:
            ax.plot(xs, ys, label=DISPLAY[system], **styles[system])
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("number of classes C (rows = logits bytes / (4 C))")
    ax.set_ylabel("effective bandwidth, GB/s\n(logits read + gradient written) / time")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    return True


# --------------------------------------------------------------------------------------------
# Fused linear + cross-entropy (issue 4)
# --------------------------------------------------------------------------------------------


def _linear_inputs(n: int, d: int, v: int, seed: int):
    rng = np.random.default_rng(seed)
    hidden = rng.standard_normal((n, d), dtype=np.float32)
    weight = rng.standard_normal((v, d), dtype=np.float32)
    weight *= np.float32(1 / np.sqrt(d))  # logits of unit scale
    labels = rng.integers(0, v, n)
    return hidden, weight, labels


def _linear_variant(name: str, threads: int):
    """fn(hidden, weight, labels) -> (loss, d_hidden, d_weight) for one variant."""
    import fastxent as fx

    if name == "fused":
        def fused(hidden, weight, labels):
            loss, d_hidden, d_weight, _ = fx.linear_cross_entropy_and_grad(
                hidden, weight, labels, n_threads=threads)
            return loss, d_hidden, d_weight
        return fused
    if name == "unfused":
        xent = fx.SparseCategoricalCrossentropy(from_logits=True, n_threads=threads)

        def unfused(hidden, weight, labels):
            logits = hidden @ weight.T
            loss, grad = xent.loss_and_grad(labels, logits)
            del logits
            return loss, grad @ weight, grad.T @ hidden
        return unfused
    if name == "torch":
        import torch
        import torch.nn.functional as F

        def pytorch(hidden, weight, labels):
            if torch.get_num_threads() != threads:
                torch.set_num_threads(threads)
            h = torch.from_numpy(hidden).requires_grad_(True)
            w = torch.from_numpy(weight).requires_grad_(True)
            loss = F.cross_entropy(F.linear(h, w), torch.from_numpy(labels))
            loss.backward()
            return loss.item(), h.grad.numpy(), w.grad.numpy()
        return pytorch
    raise ValueError(f"unknown linear variant {name!r}")


def _proc_status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _blas_limit(threads: int):
    """Limit BLAS threads to ``threads`` when threadpoolctl is installed (else a no-op)."""
    try:
        from threadpoolctl import threadpool_limits

        return threadpool_limits(limits=threads, user_api="blas")
    except ImportError:
        import contextlib

        return contextlib.nullcontext()


def linear_child(argv: list[str]) -> int:
    """Entry point of the per-variant subprocess: one call, its peak memory as JSON on stdout.

    ``argv``: variant, N, d, V, threads, seed.  The inputs are built and a small warm-up runs
    first (BLAS and thread pools start), then the peak-RSS mark is reset and the call runs under
    tracemalloc.  Memory figures are *above the inputs* (the outputs are included; the parent
    subtracts them).
    """
    import tracemalloc

    name, n, d, v, threads, seed = argv[0], *map(int, argv[1:6])
    fn = _linear_variant(name, threads)
    hidden, weight, labels = _linear_inputs(n, d, v, seed)
    with _blas_limit(threads):
        small = min(n, 16)
        fn(hidden[:small], weight[: min(v, 64)], labels[:small] % min(v, 64))
        gc.collect()
        reset = _reset_peak_rss()
        rss0 = _proc_status_kb("VmRSS")
        traced = name != "torch"  # PyTorch's allocator is not seen by tracemalloc
        if traced:
            tracemalloc.start()
        t0 = time.perf_counter()
        loss, d_hidden, d_weight = fn(hidden, weight, labels)
        elapsed = time.perf_counter() - t0
        traced_peak = tracemalloc.get_traced_memory()[1] if traced else None
        if traced:
            tracemalloc.stop()
        hwm = _proc_status_kb("VmHWM")
    rss_peak = None if rss0 is None or hwm is None else (hwm - rss0) * 1024
    print(json.dumps({
        "variant": name, "time": elapsed, "loss": float(loss),
        "traced_peak": traced_peak, "rss_peak": rss_peak, "hwm_reset": reset,
        "out_bytes": int(d_hidden.nbytes + d_weight.nbytes),
    }))
    return 0


def _run_linear_child(name: str, n: int, d: int, v: int, threads: int, seed: int) -> dict:
    import fastxent

    src = os.path.dirname(os.path.dirname(os.path.abspath(fastxent.__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([src] + [p for p in [env.get("PYTHONPATH")] if p])
    code = ("import sys; from fastxent.bench import linear_child; "
            "sys.exit(linear_child(sys.argv[1:]))")
    proc = subprocess.run(
        [sys.executable, "-c", code, name, str(n), str(d), str(v), str(threads), str(seed)],
        capture_output=True, text=True, env=env, check=False,
    )
    if proc.returncode != 0:
        return {"variant": name, "error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_linear(mode: str, mods: dict, args, log) -> dict | None:
    """Fused linear + cross-entropy vs the unfused pipeline and PyTorch: time (in this process,
    interleaved) and peak memory (one subprocess per variant)."""
    import fastxent as fx

    if not hasattr(fx, "linear_cross_entropy_and_grad"):
        return None
    n, d, v = args.linear_size or _LINEAR_SIZE[mode]
    variants = ["fused", "unfused"] + (["torch"] if mods.get("torch") is not None else [])
    memory = {}
    for name in variants:
        memory[name] = _run_linear_child(name, n, d, v, args.threads, args.seed)
        log(f"  linear memory {name}: {memory[name]}")
    hidden, weight, labels = _linear_inputs(n, d, v, args.seed)
    fns = {name: _linear_variant(name, args.threads) for name in variants}
    cands = [Candidate(name, args.threads, (lambda f=f, h=hidden, w=weight, y=labels: f(h, w, y)),
                       lambda out: (float(out[0]), np.asarray(out[1][:4], np.float64)))
             for name, f in fns.items()]
    repeat = args.linear_repeat or {"full": 1, "quick": 2, "tiny": 1}[mode]
    with _blas_limit(args.threads):
        # warm-up at a small size (the full-size call is too costly to spend on a warm-up)
        for f in fns.values():
            f(hidden[:16], weight[:64], labels[:16] % 64)
        checks = {}
        idx = list(range(len(cands)))
        for r in range(repeat):
            for i in idx[r % len(idx):] + idx[:r % len(idx)]:
                gc.collect()
                t0 = time.perf_counter()
                out = cands[i].fn()
                cands[i].times.append(time.perf_counter() - t0)
                checks[i] = cands[i].check(out)
                del out
    ref_loss, ref_grad = checks[variants.index("unfused")]
    times = {c.system: _stat(c.times, args.stat) for c in cands}
    logits_bytes = n * v * 4
    rows = []
    for name in variants:
        mem = memory[name]
        loss, grad = checks[variants.index(name)]
        row = {
            "variant": name, "time": times[name], "vs_unfused": times[name] / times["unfused"],
            "loss_rel": abs(loss - ref_loss) / abs(ref_loss),
            "d_hidden_rel": float(np.max(np.abs(grad - ref_grad)) / np.max(np.abs(ref_grad))),
            "memory": mem, "targets": [],
        }
        if "error" not in mem:
            for key in ("traced_peak", "rss_peak"):
                if mem.get(key) is not None:
                    row[key + "_over_io"] = mem[key] - mem["out_bytes"]
        if name == "fused":
            row["targets"].append({
                "target": f"time <= {_LINEAR_TARGET_TIME:g}x unfused", "what": "time",
                "value": row["vs_unfused"], "holds": row["vs_unfused"] <= _LINEAR_TARGET_TIME})
            over = [row[k] for k in ("traced_peak_over_io", "rss_peak_over_io") if k in row]
            frac = max(over) / logits_bytes if over else None
            row["targets"].append({
                "target": f"peak above inputs+outputs <= {_LINEAR_TARGET_MEMORY:.0%} of logits",
                "what": "memory", "value": frac,
                "holds": None if frac is None else frac <= _LINEAR_TARGET_MEMORY})
        rows.append(row)
    del cands, fns, hidden, weight, labels
    gc.collect()
    return {"size": [n, d, v], "logits_bytes": logits_bytes, "rows": rows, "repeat": repeat}


def linear_markdown(result: dict) -> str:
    n, d, v = result["size"]
    mb = 2**20
    lines = [
        f"Fused linear + cross-entropy, N = {n:,} tokens, d = {d}, V = {v:,}, float32 "
        f"(unfused logits: {result['logits_bytes'] / 1e9:.2f} GB); time: {result['repeat']} "
        "interleaved call(s) per variant in this process; memory: one subprocess per variant, "
        "peak above the inputs minus the outputs (d_hidden, d_weight).",
        "",
        "| variant | time | / unfused | peak tracemalloc - outputs | peak RSS - outputs "
        "| loss / d_hidden vs unfused (rel.) | target | holds |",
        "|" + "---|" * 8,
    ]
    names = {"fused": "fastxent.linear_cross_entropy_and_grad",
             "unfused": "unfused: `h @ W.T`, loss_and_grad, 2 matmuls",
             "torch": "PyTorch F.linear + F.cross_entropy + backward"}

    def mem(row, key):
        if "error" in row["memory"]:
            return f"error: {row['memory']['error']}"
        value = row.get(key + "_over_io")
        if value is None:
            return "n/a"
        return f"{value / mb:,.0f} MiB ({value / result['logits_bytes']:.1%})"

    for row in result["rows"]:
        target = "; ".join(t["target"] for t in row["targets"]) or "—"
        holds = "; ".join(
            ("n/a" if t["value"] is None else
             f"{'ok' if t['holds'] else 'MISS'} ({t['value']:.2f}x)" if t["what"] == "time"
             else f"{'ok' if t['holds'] else 'MISS'} ({t['value']:.1%})")
            for t in row["targets"]) or ""
        lines.append(
            f"| {names[row['variant']]} | {_fmt_time(row['time'])} | {row['vs_unfused']:.2f}x "
            f"| {mem(row, 'traced_peak')} | {mem(row, 'rss_peak')} "
            f"| {row['loss_rel']:.1e} / {row['d_hidden_rel']:.1e} | {target} | {holds} |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Machine description
# --------------------------------------------------------------------------------------------


def machine_info(threads: int, peer_versions: dict) -> dict:
    import fastxent as fx
    from fastxent._config import config_dict

    cfg = config_dict()
    info = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "cpu": cfg["cpu"],
        "cpus": cfg["num_procs"],
        "threads": threads,
        "isa": fx.get_isa(),
        "available_isas": fx.available_isas(),
        "openmp": cfg["openmp"],
        "platform": cfg["platform"],
        "python": cfg["python"],
        "fastxent": cfg["fastxent"],
        "numpy": np.__version__,
        "cflags": cfg["cflags"],
    }
    info.update(peer_versions)
    try:
        import matplotlib

        info["matplotlib"] = matplotlib.__version__
    except ImportError:
        pass
    try:
        from threadpoolctl import threadpool_info

        info["blas"] = ", ".join(sorted({f"{p.get('internal_api')} {p.get('version')}"
                                         for p in threadpool_info()
                                         if p.get("user_api") == "blas"}))
    except ImportError:
        pass
    return info


def _loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def _parse_size(text: str) -> tuple[int, int, int]:
    try:
        n, d, v = (int(s) for s in text.lower().replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N,d,V (three ints), got {text!r}") from None
    if min(n, d, v) < 1:
        raise argparse.ArgumentTypeError(f"N, d and V must be positive, got {text!r}")
    return n, d, v


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fastxent bench",
        description="Time fastxent against the copy roofline and the installed peers "
                    "(NumPy, scikit-learn, PyTorch, JAX) on the performance issue's workloads.",
    )
    parser.add_argument("--quick", action="store_true",
                        help="short run (< 2 min): fewer rounds, the largest workloads shrunk")
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # smoke tests
    parser.add_argument("--workloads", default="*",
                        help="comma-separated names or globs of the groups to run "
                             f"({', '.join(_GROUP_NAMES)}); default: all")
    parser.add_argument("--list", action="store_true", help="list the workloads and exit")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for fastxent and the peers (default: all cores); "
                             "thread-scaling rows compare with 1")
    parser.add_argument("--repeat", type=int, default=None,
                        help="timed rounds per workload (default 9, --quick 3); a workload stops "
                             "adding rounds after a time budget")
    parser.add_argument("--stat", choices=("min", "median"), default="min",
                        help="statistic over the rounds (default: min, the least disturbed "
                             "by other processes)")
    parser.add_argument("--settle", type=float, default=0.2,
                        help="seconds of (untimed) sleep before each timed call, so that the "
                             "spinning worker threads of the previous candidate's runtime "
                             "(OpenMP, PyTorch, XLA) are idle again (default 0.2)")
    parser.add_argument("--out-dir", default="fastxent-bench",
                        help="directory for fastxent_bench.md / .json / _bandwidth.png "
                             "(default: ./fastxent-bench)")
    parser.add_argument("--no-peers", action="store_true",
                        help="time fastxent and the roofline only")
    parser.add_argument("--linear-size", type=_parse_size, default=None,
                        help="N,d,V of the fused linear group (default 8192,768,50257)")
    parser.add_argument("--linear-repeat", type=int, default=None,
                        help="calls per variant in the fused linear group (default 1; 2 quick)")
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    return parser


def _selected(patterns: str, parser) -> list[str]:
    pats = [p.strip() for p in patterns.split(",") if p.strip()]
    chosen = [g for g in _GROUP_NAMES if any(fnmatch.fnmatchcase(g, p) for p in pats)]
    bad = [p for p in pats if not any(fnmatch.fnmatchcase(g, p) for g in _GROUP_NAMES)]
    if bad or not chosen:
        parser.error(f"--workloads: no workload matches {', '.join(bad) or repr(patterns)}; "
                     f"choose from {', '.join(_GROUP_NAMES)}")
    return chosen


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the markdown table and write the files to ``--out-dir``.

    Parameters
    ----------
    argv : list of str, optional
        Command-line arguments (default ``sys.argv[1:]``); see ``--help``.

    Returns
    -------
    int
        0 (targets that do not hold are reported, not treated as errors).

    Examples
    --------
    >>> from fastxent import bench
    >>> bench.main(["--list"])  # doctest: +ELLIPSIS
    sparse ...
    0
    """
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    mode = "tiny" if args.tiny else ("quick" if args.quick else "full")
    if args.list:
        for w in workloads(mode):
            print(f"{w.name:<12}{w.label}")
        print(f"{'plot':<12}bandwidth against the number of classes "
              f"({', '.join(map(str, _PLOT_CLASSES[mode]))})")
        print(f"{'linear':<12}fused linear + cross-entropy, N,d,V = "
              f"{','.join(map(str, _LINEAR_SIZE[mode]))} (needs linear_cross_entropy_and_grad)")
        return 0
    from fastxent._config import resolve_n_threads

    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    args.threads = resolve_n_threads(-1 if args.threads is None else args.threads)
    if args.repeat is None:
        args.repeat = _REPEAT[mode]
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")
    args.budget = _BUDGET_S[mode]
    if args.settle < 0:
        parser.error(f"--settle must be >= 0, got {args.settle}")
    if mode == "tiny":
        args.settle = min(args.settle, 0.001)
    groups = _selected(args.workloads, parser)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    started = time.perf_counter()
    load_before = _loadavg()
    peers = import_peers(not args.no_peers)
    mods = peers["modules"]
    torch_threads = mods["torch"].get_num_threads() if mods["torch"] is not None else None
    info = machine_info(args.threads, peers["versions"])
    log(f"fastxent bench ({mode}): {info['cpu']}, {args.threads} threads, ISA {info['isa']}")

    result: dict = {"mode": mode, "stat": args.stat, "machine": info, "rows": [],
                    "agreement": {}, "raw_times": {}}
    try:
        for work in workloads(mode):
            if work.name in groups:
                log(f"running {work.name}: {work.label}")
                out = run_workload(work, mods, args, log)
                result["rows"] += out["rows"]
                result["agreement"][work.name] = out["agreement"]
                result["raw_times"][work.name] = out["raw_times"]
        if "plot" in groups:
            log("running plot: bandwidth against the number of classes")
            result["plot"] = run_plot_sweep(mode, mods, args, log)
        if "linear" in groups:
            log("running linear: fused linear + cross-entropy")
            result["linear"] = run_linear(mode, mods, args, log)
    finally:
        if torch_threads is not None:
            mods["torch"].set_num_threads(torch_threads)

    info["load_average"] = f"{load_before} (start), {_loadavg()} (end)"
    info["elapsed_s"] = round(time.perf_counter() - started, 1)
    os.makedirs(args.out_dir, exist_ok=True)
    png = os.path.join(args.out_dir, "fastxent_bench_bandwidth.png")
    plotted = False
    if result.get("plot"):
        plotted = write_plot(
            result["plot"], png,
            f"float32 sparse labels, {_fmt_bytes(_PLOT_BYTES[mode])} of logits per point, "
            f"{args.threads} threads, {info['cpu']}")
    text = report_markdown(result, mods, args, plotted and os.path.basename(png))
    print(text)
    with open(os.path.join(args.out_dir, "fastxent_bench.md"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(args.out_dir, "fastxent_bench.json"), "w") as f:
        json.dump(result, f, indent=1, default=str)
    log(f"wrote {args.out_dir}/fastxent_bench.md, .json" + (", bandwidth PNG" if plotted else ""))
    return 0


def report_markdown(result: dict, mods: dict, args, png_name) -> str:
    info = result["machine"]
    versions = ", ".join(f"{k} {info[k]}" for k in
                         ("fastxent", "python", "numpy", "scikit-learn", "torch", "jax",
                          "jaxlib", "matplotlib") if k in info)
    missing = [DISPLAY[p] for p in PEERS if mods.get(p) is None]
    lines = [
        f"## fastxent benchmark ({result['mode']})",
        "",
        f"- CPU: {info['cpu']}, {info['cpus']} logical CPUs; threads used: {info['threads']}; "
        f"fastxent ISA path: **{info['isa']}** (available: {', '.join(info['available_isas'])}); "
        f"OpenMP: {info['openmp']}",
        f"- Versions: {versions}" + (f"; BLAS: {info['blas']}" if info.get("blas") else ""),
        f"- Platform: {info['platform']}; {info['date']}; load average "
        f"{info.get('load_average', 'n/a')}; {info.get('elapsed_s', '?')} s",
        f"- Each time is the **{args.stat}** over interleaved rounds (every candidate once per "
        "round, order rotated) in one process, after one warm-up call (JAX compiled then). "
        "Copy roofline: `np.copyto(dst, x)` of the logits into a touched buffer (one thread).",
        "- Peer cells: peer time (peer time / fastxent time; above 1 means fastxent is faster). "
        "`n/a`: peer not installed" + (" or `--no-peers`" if args.no_peers else "")
        + "; `—`: not applicable (scikit-learn has no probability-target softmax loss; JAX "
        "runs on XLA's own thread pool, so it is shown beside the all-threads rows only). "
        "NumPy is single-threaded and the same measurement appears in both thread rows. "
        "scikit-learn returns per-sample losses and unscaled gradients (no reduction).",
        "- GB/s: (logits read + gradient written) / fastxent time.",
    ]
    if missing and not args.no_peers:
        lines.append(f"- Not installed: {', '.join(missing)}.")
    if any(r["issue_shape"] for r in result["rows"]):
        lines.append("- Reduced sizes in this mode; the issue's targets are for the full sizes "
                     "(`python -m fastxent bench`).")
    lines += ["", table_markdown(result["rows"], mods, args.threads)] if result["rows"] else []
    bad = {w: {p: a for p, a in agr.items()
               if a["loss_rel"] > 1e-3 or a["grad_rel"] > 1e-3}
           for w, agr in result["agreement"].items()}
    bad = {w: a for w, a in bad.items() if a}
    if result["agreement"]:
        lines += ["", "Every peer's loss and gradient sample agreed with fastxent's to 1e-3 "
                      "relative (same inputs)." if not bad else
                  f"**Warning**: peers disagreeing with fastxent (rel. diff > 1e-3): {bad}"]
    if "linear" in result:
        lines += [""]
        if result["linear"] is None:
            lines.append("Fused linear + cross-entropy: skipped, "
                         "`fastxent.linear_cross_entropy_and_grad` is not available.")
        else:
            lines.append(linear_markdown(result["linear"]))
    if png_name:
        lines += ["", f"![effective bandwidth against the number of classes]({png_name})"]
    elif "plot" in result:
        lines += ["", "Bandwidth plot: not written (Matplotlib not installed)."]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
