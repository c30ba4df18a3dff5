"""The fused linear + cross-entropy group: time against the unfused pipeline and PyTorch, and
peak memory of one call, each variant in a fresh process."""

from __future__ import annotations

import contextlib
import gc
import json
import subprocess
import sys
import time

import numpy as np

from fastxent.bench.peers import Candidate
from fastxent.bench.workloads import LINEAR_GOAL_MEMORY, LINEAR_GOAL_TIME, linear_inputs

VARIANTS = ("fused", "unfused", "torch", "fxtorch")
NAMES = {"fused": "fastxent.linear_cross_entropy_and_grad",
         "unfused": "unfused: `h @ W.T`, loss_and_grad, 2 matmuls",
         "torch": "PyTorch F.linear + F.cross_entropy + backward",
         "fxtorch": "fastxent.torch.linear_cross_entropy + backward"}
SYSTEM = {"fused": "fastxent", "unfused": "fastxent", "torch": "torch",
          "fxtorch": "fastxent-torch"}
#: Goals of fastxent.torch's row against PyTorch's: time at most PyTorch's, and PyTorch's
#: peak RSS above the inputs at least this many times fastxent.torch's.
TORCH_GOAL_TIME = 1.0
TORCH_GOAL_MEMORY = 10.0


def available() -> bool:
    """True when this fastxent has ``linear_cross_entropy_and_grad``."""
    import fastxent as fx

    return hasattr(fx, "linear_cross_entropy_and_grad")


def data(shape, seed: int) -> dict:
    """The group's inputs for ``shape`` = (N, d, V)."""
    hidden, weight, labels = linear_inputs(*shape, seed=seed)
    return {"kind": "linear", "hidden": hidden, "weight": weight, "labels": labels}


def blas_limit(threads: int):
    """Limit BLAS to ``threads`` when threadpoolctl is installed (else a no-op context)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=threads, user_api="blas")


def variant(name: str, threads: int):
    """``fn(hidden, weight, labels) -> (loss, d_hidden, d_weight)`` of one variant."""
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
    if name in ("torch", "fxtorch"):
        import torch
        import torch.nn.functional as F

        if name == "fxtorch":
            import fastxent.torch as fxt

            head = fxt.linear_cross_entropy
        else:
            def head(h, w, y):
                return F.cross_entropy(F.linear(h, w), y)

        def pytorch(hidden, weight, labels):
            if torch.get_num_threads() != threads:
                torch.set_num_threads(threads)
            h = torch.from_numpy(hidden).requires_grad_(True)
            w = torch.from_numpy(weight).requires_grad_(True)
            loss = head(h, w, torch.from_numpy(labels))
            loss.backward()
            return loss.item(), h.grad.numpy(), w.grad.numpy()
        return pytorch
    raise ValueError(f"unknown linear variant {name!r}; choose from {', '.join(VARIANTS)}")


def build(spec: dict, inputs: dict) -> Candidate:
    """The timing candidate of variant ``spec["variant"]``; its warm-up runs at a small size
    (a full-size call is too costly to spend on one)."""
    fn, threads = variant(spec["variant"], spec["threads"]), spec["threads"]
    h, w, y = inputs["hidden"], inputs["weight"], inputs["labels"]
    small, v_small = min(len(h), 16), min(len(w), 64)

    def run():
        with blas_limit(threads):
            return fn(h, w, y)

    def warm():
        with blas_limit(threads):
            return fn(h[:small], w[:v_small], y[:small] % v_small)

    return Candidate(run, lambda out: (float(out[0]), np.asarray(out[1][:4], np.float64)
                                       .ravel().tolist()), warm)


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


def memory_child(argv: list[str]) -> int:
    """One call of a variant in this (fresh) process; its peak memory as JSON on stdout.

    ``argv``: variant, N, d, V, threads, seed.  The inputs are built and a small warm-up runs
    first (BLAS and thread pools start), then the peak-RSS mark is reset and the call runs under
    tracemalloc.  Memory figures are *above the inputs* (the outputs are included; the parent
    subtracts them).
    """
    import tracemalloc

    name, n, d, v, threads, seed = argv[0], *map(int, argv[1:6])
    cand = build({"variant": name, "threads": threads}, data((n, d, v), seed))
    cand.warm()
    gc.collect()
    reset = _reset_peak_rss()
    rss0 = _proc_status_kb("VmRSS")
    traced = name not in ("torch", "fxtorch")  # tracemalloc misses PyTorch's allocator
    if traced:
        tracemalloc.start()
    t0 = time.perf_counter()
    loss, d_hidden, d_weight = cand.fn()
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


def run_memory_child(name: str, n: int, d: int, v: int, threads: int, seed: int) -> dict:
    """Run ``memory_child`` in a fresh process; its figures, or ``{"error": ...}``."""
    from fastxent.bench.timing import worker_env  # timing imports this module

    proc = subprocess.run(
        [sys.executable, "-m", "fastxent.bench._worker", "linear-memory", name,
         str(n), str(d), str(v), str(threads), str(seed)],
        capture_output=True, text=True, env=worker_env(), check=False,
    )
    if proc.returncode != 0:
        return {"variant": name, "error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def memory_text(mem: dict) -> str:
    """One readable progress line for a variant's memory figures."""
    if "error" in mem:
        return f"error: {mem['error']}"
    parts = [f"call {mem['time']:.2f} s", f"outputs {mem['out_bytes'] / 2**20:,.1f} MiB"]
    for key, name in (("traced_peak", "tracemalloc peak"), ("rss_peak", "peak RSS")):
        if mem.get(key) is not None:
            parts.append(f"{name} {mem[key] / 2**20:,.1f} MiB")
    return ", ".join(parts)


def rows(cands: list[dict], memory: dict, logits_bytes: int, how: str) -> list[dict]:
    """The group's rows: time against the unfused pipeline, memory, agreement and goals."""
    from fastxent.bench.timing import stat  # timing imports this module

    by_name = {c["variant"]: c for c in cands if c["times"] and "check" in c}
    if "unfused" not in by_name:
        return []
    ref_loss, ref_grad = by_name["unfused"]["check"]
    ref_grad = np.asarray(ref_grad)
    t_unfused = stat(by_name["unfused"]["times"], how)
    out = []
    for name, c in by_name.items():
        mem = memory[name]
        loss, grad = c["check"]
        t = stat(c["times"], how)
        row = {
            "variant": name, "time": t, "vs_unfused": t / t_unfused,
            "loss_rel": abs(loss - ref_loss) / abs(ref_loss),
            "d_hidden_rel": float(np.max(np.abs(np.asarray(grad) - ref_grad))
                                  / np.max(np.abs(ref_grad))),
            "memory": mem, "targets": [],
        }
        if "error" not in mem:
            for key in ("traced_peak", "rss_peak"):
                if mem.get(key) is not None:
                    row[key + "_over_io"] = mem[key] - mem["out_bytes"]
        if name == "fused":
            row["targets"].append({
                "target": f"time <= {LINEAR_GOAL_TIME:g}x the unfused pipeline", "what": "time",
                "value": row["vs_unfused"], "holds": row["vs_unfused"] <= LINEAR_GOAL_TIME})
            over = [row[k] for k in ("traced_peak_over_io", "rss_peak_over_io") if k in row]
            frac = max(over) / logits_bytes if over else None
            row["targets"].append({
                "target": f"peak above inputs and outputs <= {LINEAR_GOAL_MEMORY:.0%} "
                          "of the logits",
                "what": "memory", "value": frac,
                "holds": None if frac is None else frac <= LINEAR_GOAL_MEMORY})
        if name == "fxtorch" and "torch" in by_name:
            row["targets"] += _torch_targets(t, mem, by_name["torch"], memory["torch"], how)
        out.append(row)
    return out


def _torch_targets(t: float, mem: dict, torch_cand: dict, torch_mem: dict, how: str) -> list:
    """fastxent.torch's goals against PyTorch: time, and peak RSS above the inputs."""
    from fastxent.bench.timing import stat  # timing imports this module

    ratio = t / stat(torch_cand["times"], how)
    peaks = [m.get("rss_peak") for m in (mem, torch_mem)]
    less = (peaks[1] / peaks[0] if None not in peaks and "error" not in mem
            and "error" not in torch_mem and peaks[0] > 0 else None)
    return [
        {"target": f"time <= {TORCH_GOAL_TIME:g}x PyTorch's", "what": "time", "value": ratio,
         "holds": ratio <= TORCH_GOAL_TIME},
        {"target": f"peak RSS above the inputs >= {TORCH_GOAL_MEMORY:g}x lower than PyTorch's",
         "what": "times lower", "value": less,
         "holds": None if less is None else less >= TORCH_GOAL_MEMORY},
    ]
