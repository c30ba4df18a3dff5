"""The PyTorch group: ``fastxent.torch.cross_entropy`` against ``F.cross_entropy``.

Forward and backward of the mean sparse cross-entropy of float32 logits, as in a training
step (``loss = f(logits, labels); loss.backward()``), each function in its own worker
process.  The fused linear head's PyTorch row is in the linear group
(:mod:`fastxent.bench.linear`).
"""

from __future__ import annotations

import importlib.util

import numpy as np

from fastxent.bench.peers import Candidate, torch_step

VARIANTS = ("fxtorch", "torch")
NAMES = {"fxtorch": "fastxent.torch.cross_entropy + backward",
         "torch": "PyTorch F.cross_entropy + backward"}
#: The worker process of each variant (one each).
WORKER = {"fxtorch": "fastxent-torch", "torch": "torch"}
#: (rows, classes) per mode, and the goal: F.cross_entropy's time >= goal x fastxent.torch's.
SIZES = {"full": ((8192, 1000), (2048, 50257)), "quick": ((8192, 1000), (512, 50257)),
         "tiny": ((64, 100),)}
GOALS = {1000: 2.0, 50257: 8.0}


def available() -> bool:
    """True when PyTorch is installed (checked without importing it)."""
    return importlib.util.find_spec("torch") is not None


def build(spec: dict, data: dict) -> Candidate:
    """The candidate ``spec["variant"]`` on logits ``data["x"]`` and labels ``data["y"]``."""
    if spec["variant"] == "fxtorch":
        from fastxent.torch import cross_entropy
    else:
        from torch.nn.functional import cross_entropy
    return torch_step(cross_entropy, "sparse", data["x"], data["y"], spec["threads"])


def candidates(threads: int) -> list[dict]:
    """One candidate per variant, each in its own worker."""
    return [{"key": f"autograd:{name}", "worker": WORKER[name], "system": WORKER[name],
             "variant": name, "threads": threads} for name in VARIANTS]


def rows(shape: tuple, cands: list[dict], how: str) -> list[dict]:
    """The rows of one size: times, PyTorch / fastxent.torch, agreement and the goal."""
    from fastxent.bench.timing import stat  # timing imports this module

    by_name = {c["variant"]: c for c in cands if c["times"] and "check" in c}
    if len(by_name) < 2:
        return [{"shape": list(shape), "variant": c["variant"],
                 "error": c.get("error", "no time")} for c in cands]
    t_fx, t_torch = (stat(by_name[v]["times"], how) for v in VARIANTS)
    (l_fx, g_fx), (l_torch, g_torch) = (by_name[v]["check"] for v in VARIANTS)
    g_fx, g_torch = np.asarray(g_fx), np.asarray(g_torch)
    goal = GOALS.get(shape[1])
    ratio = t_torch / t_fx
    return [{
        "shape": list(shape), "fxtorch": t_fx, "torch": t_torch, "speedup": ratio,
        "loss_rel": abs(l_fx - l_torch) / abs(l_torch),
        "grad_rel": float(np.max(np.abs(g_fx - g_torch)) / np.max(np.abs(g_torch))),
        "goal": goal, "holds": None if goal is None else ratio >= goal,
    }]


def markdown(result: dict) -> str:
    """The PyTorch table."""
    lines = [
        "fastxent.torch.cross_entropy against F.cross_entropy, forward + backward of the mean "
        "loss of float32 logits with integer labels; each in its own worker process, "
        "interleaved rounds.",
        "",
        f"| logits | {NAMES['fxtorch']} | {NAMES['torch']} | PyTorch / fastxent.torch "
        "| loss / gradient difference (rel.) | goal | met |",
        "|" + "---|" * 7,
    ]
    from fastxent.bench.report import fmt_time  # report imports this module

    for row in result["rows"]:
        shape = " x ".join(f"{s:,}" for s in row["shape"])
        if "error" in row:
            lines.append(f"| {shape} | {NAMES[row['variant']]} failed: {row['error']} "
                         "| | | | | |")
            continue
        goal = "—" if row["goal"] is None else f">= {row['goal']:g}x faster"
        met = "—" if row["holds"] is None else ("met" if row["holds"] else "not met")
        lines.append(
            f"| {shape} | {fmt_time(row['fxtorch'])} | {fmt_time(row['torch'])} "
            f"| {row['speedup']:.2f}x | {row['loss_rel']:.1e} / {row['grad_rel']:.1e} "
            f"| {goal} | {met} |"
        )
    return "\n".join(lines)
