"""The benchmark's report: rows and goals from the measured times, markdown and the machine."""

from __future__ import annotations

import os
import time

import numpy as np

from fastxent.bench import autograd
from fastxent.bench.linear import NAMES as LINEAR_NAMES
from fastxent.bench.timing import stat
from fastxent.bench.workloads import DISPLAY, PEERS, Target, Workload, itemsize

_ROLE_LABEL = {"functional": "functional form (loss only)", "avx2": "AVX2 path",
               "float32": "the same values in float32"}


def fmt_bytes(b: float) -> str:
    """``b`` bytes as MiB or KiB."""
    return f"{b / 2**20:,.0f} MiB" if b >= 2**20 else f"{b / 2**10:,.0f} KiB"


def fmt_time(t: float | None) -> str:
    """Seconds as s, ms or µs with three significant digits; ``n/a`` for None."""
    if t is None:
        return "n/a"
    if t >= 1:
        return f"{t:.2f} s"
    if t >= 1e-3:
        return f"{t * 1e3:.3g} ms"
    return f"{t * 1e6:.3g} µs"


def evaluate(target: Target, row: dict, main_row: dict):
    """``(value, holds)`` of one goal on ``row``; ``(None, None)`` when it cannot be evaluated.

    Parameters
    ----------
    target : Target
    row : dict
        The row the goal is shown on (``fastxent``, ``roofline`` and ``peers`` times).
    main_row : dict
        The workload's main row, which ``threads``, ``busy``, ``functional`` and ``avx2``
        goals compare with (the same dict when there is no other row, e.g. with one thread).
    """
    fx_t = row["fastxent"]
    if target.what == "roofline":
        value = fx_t / row["roofline"]
    elif target.what in PEERS:
        peer = row["peers"].get(target.what)
        if peer is None:
            return None, None
        value = peer / fx_t
    elif row is main_row:
        return None, None
    else:
        value = fx_t / main_row["fastxent"]
    return value, (value <= target.bound if target.at_most else value >= target.bound)


def workload_rows(work: Workload, cands: list[dict], rounds: int, n_threads: int,
                  how: str) -> list[dict]:
    """The table rows of a measured workload: one per fastxent candidate, with its goals.

    Parameters
    ----------
    work : Workload
    cands : list of dict
        The measured candidates (``system``, ``threads``, ``role``, ``times``).
    rounds : int
    n_threads : int
        The run's thread count (``--threads``).
    how : str
        ``"min"`` or ``"median"``; many-calls and busy-core workloads always use the median
        (the minimum of a busy-core row is its least disturbed round, which hides what the
        goal is about).
    """
    how = "median" if work.many_calls or work.busy else how
    nbytes = int(np.prod(work.shape)) * itemsize(work.dtype)
    roof = next((stat(c["times"], how) for c in cands
                 if c["system"] == "roofline" and c["times"]), None)
    rows = []
    for c in cands:
        if c["system"] != "fastxent" or not c["times"]:
            continue
        t = stat(c["times"], how)
        role = c["role"]
        label = work.label
        if work.thread_scaling or work.busy:
            label += f", {c['threads']} thread" + ("s" if c["threads"] > 1 else "")
        if work.busy:
            label += ", one core busy"
        if role in _ROLE_LABEL:
            label += ", " + _ROLE_LABEL[role]
        peers = {}
        peer_threads = 1 if role == "threads" else n_threads
        if role in ("main", "threads"):
            for p in cands:
                if (p["system"] in PEERS and p["times"]
                        and p["threads"] in (None, peer_threads)
                        and (p["system"] != "jax" or role == "main")):
                    peers[p["system"]] = stat(p["times"], how)
        written = 0 if role == "functional" else nbytes  # the functional form has no gradient
        moved = nbytes + written if role != "float32" else 2 * int(np.prod(work.shape)) * 4
        rows.append({
            "workload": work.group, "label": label, "role": role, "threads": c["threads"],
            "variant": c["variant"], "shape": list(work.shape), "dtype": work.dtype,
            "kind": work.kind, "bytes": nbytes, "fastxent": t, "roofline": roof,
            "gbps": moved / t / 1e9, "peers": peers, "rounds": rounds,
            "stat": how, "isa": c.get("isa"), "full_shape": list(work.full_shape),
        })
    main_row = next((r for r in rows if r["role"] == "main"), None)
    for row in rows:
        goals = [g for g in work.targets
                 if (row["role"] == "main" and (g.what == "roofline" or g.what in PEERS))
                 or g.what == row["role"]
                 or (row["role"] == "main" and g.what == "threads" and n_threads == 1)]
        row["targets"] = []
        for g in goals:
            value, holds = (None, None) if main_row is None else evaluate(g, row, main_row)
            row["targets"].append({"target": g.text(n_threads), "what": g.what,
                                   "bound": g.bound, "value": value, "holds": holds})
    return rows


def agreement(cands: list[dict]) -> dict:
    """Largest relative difference of each candidate's loss and gradient sample from the main
    fastxent candidate's (same inputs)."""
    ref = next((c["check"] for c in cands if c.get("role") == "main" and "check" in c), None)
    out = {}
    if ref is None:
        return out
    ref_loss, ref_grad = float(ref[0]), np.asarray(ref[1])
    scale = max(float(np.max(np.abs(ref_grad))), 1e-30)
    for c in cands:
        if "check" not in c or c.get("role") == "main":
            continue
        name = c["system"] if c["system"] != "fastxent" else f"fastxent {c['role']}"
        loss, grad = c["check"]
        diff = {"loss_rel": abs(float(loss) - ref_loss) / max(abs(ref_loss), 1e-30)}
        if grad is not None:
            diff["grad_rel"] = float(np.max(np.abs(np.asarray(grad) - ref_grad)) / scale)
        out[name] = diff
    return out


def progress_line(work: Workload, cands: list[dict], rounds: int, how: str) -> str:
    """One readable line of what a workload measured, for the progress log."""
    how = "median" if work.many_calls or work.busy else how
    parts = []
    for c in cands:
        name = DISPLAY[c["system"]]
        if c.get("role") in _ROLE_LABEL:
            name += " " + _ROLE_LABEL[c["role"]]
        elif c["threads"] is not None and (work.thread_scaling or work.busy):
            name += f" {c['threads']} thread" + ("s" if c["threads"] > 1 else "")
        if c["times"]:
            parts.append(f"{name} {fmt_time(stat(c['times'], how))}")
        elif "error" in c:
            parts.append(f"{name} failed ({c['error']})")
    return f"  {work.label}: {rounds} round(s); " + ", ".join(parts)


def _peer_cell(row: dict, peer: str, available: dict, failed) -> str:
    if not available.get(peer):
        return "n/a"
    t = row["peers"].get(peer)
    if t is None:
        return "failed" if peer in failed and row["role"] == "main" else "—"
    return f"{fmt_time(t)} ({t / row['fastxent']:.1f}x)"


def holds_cell(verdicts: list) -> str:
    """``**yes**`` / ``**no**`` / ``**?**`` and each goal's ratio with met / not met."""
    if not verdicts:
        return ""
    failed = [v for v in verdicts if v["holds"] is False]
    unknown = [v for v in verdicts if v["holds"] is None]
    parts = []
    for v in verdicts:
        if v["value"] is None:
            continue
        name = DISPLAY.get(v["what"], v["what"])
        parts.append(f"{name} {v['value']:.2f}x {'met' if v['holds'] else 'not met'}")
    head = "no" if failed else ("yes" if not unknown else "?")
    if unknown:
        missing = ", ".join(DISPLAY.get(v["what"], v["what"]) for v in unknown)
        parts.append(f"{missing} n/a")
    return f"**{head}**: " + "; ".join(parts) if parts else f"**{head}**"


def table_markdown(rows: list, available: dict, errors: dict) -> str:
    """The main table: one line per row, peers as ``time (time / fastxent time)``; ``errors``:
    workload -> {system: message} of the candidates that failed."""
    head = ("| workload | fastxent | GB/s | copy roofline | fastxent / roofline | NumPy "
            "| scikit-learn | PyTorch | JAX | goal | met |")
    lines = [head, "|" + "---|" * 11]
    for row in rows:
        goal = "; ".join(v["target"] for v in row["targets"]) or "—"
        roof = row["roofline"]
        lines.append(
            f"| {row['label']} | {fmt_time(row['fastxent'])} | {row['gbps']:.1f} "
            f"| {fmt_time(roof)} | "
            + ("n/a" if roof is None else f"{row['fastxent'] / roof:.2f}x")
            + "".join(f" | {_peer_cell(row, p, available, errors.get(row['workload'], {}))}"
                       for p in PEERS)
            + f" | {goal} | {holds_cell(row['targets'])} |"
        )
    return "\n".join(lines)


def linear_markdown(result: dict) -> str:
    """The fused linear + cross-entropy table."""
    n, d, v = result["size"]
    lines = [
        f"Fused linear + cross-entropy, N = {n:,} tokens, d = {d}, V = {v:,}, float32 "
        f"(unfused logits: {result['logits_bytes'] / 1e9:.2f} GB); time: {result['repeat']} "
        "interleaved call(s) per variant; memory: one fresh process per variant, "
        "peak above the inputs minus the outputs (d_hidden, d_weight).",
        "",
        "| variant | time | / unfused | peak tracemalloc - outputs | peak RSS - outputs "
        "| loss / d_hidden vs unfused (rel.) | goal | met |",
        "|" + "---|" * 8,
    ]

    def mem(row, key):
        if "error" in row["memory"]:
            return f"error: {row['memory']['error']}"
        value = row.get(key + "_over_io")
        if value is None:
            return "n/a"
        return f"{value / 2**20:,.0f} MiB ({value / result['logits_bytes']:.1%})"

    def verdict(t):
        if t["value"] is None:
            return "n/a"
        value = (f"{t['value']:.2f}x" if t["what"] in ("time", "times lower")
                 else f"{t['value']:.1%}")
        return f"{'met' if t['holds'] else 'not met'} ({value})"

    for row in result["rows"]:
        goal = "; ".join(t["target"] for t in row["targets"]) or "—"
        lines.append(
            f"| {LINEAR_NAMES[row['variant']]} | {fmt_time(row['time'])} "
            f"| {row['vs_unfused']:.2f}x | {mem(row, 'traced_peak')} | {mem(row, 'rss_peak')} "
            f"| {row['loss_rel']:.1e} / {row['d_hidden_rel']:.1e} | {goal} "
            f"| {'; '.join(verdict(t) for t in row['targets'])} |"
        )
    return "\n".join(lines)


def machine_info(threads: int, peer_versions: dict) -> dict:
    """CPU, thread count, fastxent's ISA path, build and versions."""
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
        "openmp": fx.openmp_enabled(),
        "platform": cfg["platform"],
        "python": cfg["python"],
        "fastxent": fx.__version__,
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


def loadavg() -> str:
    """The 1, 5 and 15 minute load averages, or ``n/a``."""
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def report_markdown(result: dict, available: dict, args, png_name) -> str:
    """The whole report (printed and written to ``fastxent_bench.md``)."""
    info = result["machine"]
    versions = ", ".join(f"{k} {info[k]}" for k in
                         ("fastxent", "python", "numpy", "scikit-learn", "torch", "jax",
                          "jaxlib", "matplotlib") if k in info)
    missing = [DISPLAY[p] for p in PEERS if not available.get(p)]
    where = ("in this one process (`--in-process`)" if args.in_process else
             "each in its own worker process (fastxent, the copy roofline and every peer)")
    lines = [
        f"## fastxent benchmark ({result['mode']})",
        "",
        f"- CPU: {info['cpu']}, {info['cpus']} logical CPUs; threads used: {info['threads']}; "
        f"fastxent ISA path: **{info['isa']}** (available: {', '.join(info['available_isas'])}); "
        f"OpenMP: {info['openmp']}",
        f"- Versions: {versions}" + (f"; BLAS: {info['blas']}" if info.get("blas") else ""),
        f"- Platform: {info['platform']}; {info['date']}; load average "
        f"{info.get('load_average', 'n/a')}; {info.get('elapsed_s', '?')} s",
        f"- Candidates run {where}, interleaved: every round times each candidate once, in an "
        f"order rotated from round to round, after an untimed pause of {args.settle:g} s. "
        f"Each time is the **{args.stat}** over the rounds, after one warm-up call (JAX "
        "compiled then). Short calls (the small and in-cache groups, the 256 x 100 AVX2 rows): "
        f"each sample times as many calls as last at least {result['min_sample_s'] * 1e3:g} ms "
        "after one untimed call (the other candidates' samples evicted its data from the cache), "
        "and the time per call is the **median** of the samples; the busy-core rows are the "
        "**median** over the rounds too. Copy roofline: "
        "`np.copyto(dst, x)` of the logits into a touched buffer (one thread).",
        "- Peer cells: peer time (peer time / fastxent time; above 1 means fastxent is faster). "
        "`n/a`: peer not installed" + (" or `--no-peers`" if args.no_peers else "")
        + "; `—`: not timed on this row (scikit-learn has no probability-target softmax loss; "
        "JAX runs on XLA's own thread pool, so it is shown beside the all-threads rows only). "
        "NumPy is single-threaded and the same measurement appears in both thread rows. "
        "scikit-learn returns per-sample losses and unscaled gradients (no reduction). "
        "The functional form `fastxent.sparse_categorical_crossentropy` returns the "
        "per-sample losses only (no gradient).",
        "- GB/s: (logits read + gradient written) / fastxent time.",
    ]
    if missing and not args.no_peers:
        lines.append(f"- Not installed: {', '.join(missing)}.")
    if any(r["full_shape"] for r in result["rows"]):
        lines.append("- Reduced sizes in this mode; the goals are set for the full sizes "
                     "(`python -m fastxent bench`).")
    lines += [f"- {note}" for note in result["notes"]]
    if result["rows"]:
        lines += ["", table_markdown(result["rows"], available, result["errors"])]
    bad = {w: {p: a for p, a in agr.items() if max(a.values()) > 1e-3}
           for w, agr in result["agreement"].items()}
    bad = {w: a for w, a in bad.items() if a}
    if any(result["agreement"].values()):
        lines += ["", "Every candidate's loss and gradient sample agreed with fastxent's to 1e-3 "
                      "relative (same inputs)." if not bad else
                  "**Warning**: candidates disagreeing with fastxent (relative difference "
                  "above 1e-3): " + "; ".join(
                      f"{w}: " + ", ".join(f"{p} loss {a['loss_rel']:.1e}"
                                           + (f", gradient {a['grad_rel']:.1e}"
                                              if "grad_rel" in a else "")
                                           for p, a in agr.items())
                      for w, agr in bad.items())]
    errors = [f"{w}: {DISPLAY[s]} failed: {e}" for w, errs in result["errors"].items()
              for s, e in errs.items()]
    if errors:
        lines += ["", "Failures: " + "; ".join(errors) + "."]
    if "torch" in result:
        lines += ["", "fastxent.torch against PyTorch: skipped, PyTorch is not installed."
                  if result["torch"] is None else autograd.markdown(result["torch"])]
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
