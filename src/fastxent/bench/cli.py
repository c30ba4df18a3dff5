"""``python -m fastxent bench``: the command line and the run of the selected groups."""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import json
import os
import sys
import time

from fastxent.bench import autograd, linear, peers, plot, report, timing
from fastxent.bench.workloads import (
    BUDGET_S,
    GROUP_HELP,
    GROUP_NAMES,
    LINEAR_SIZE,
    MIN_SAMPLE_S,
    PLOT_BYTES,
    PLOT_CLASSES,
    REPEAT,
    Workload,
    workloads,
)


def _parse_size(text: str) -> tuple[int, int, int]:
    try:
        n, d, v = (int(s) for s in text.lower().replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N,d,V (three ints), got {text!r}") from None
    if min(n, d, v) < 1:
        raise argparse.ArgumentTypeError(f"N, d and V must be positive, got {text!r}")
    return n, d, v


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m fastxent bench`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="python -m fastxent bench",
        description="Time fastxent against the copy roofline and the installed peers "
                    "(NumPy, scikit-learn, PyTorch, JAX), each in its own process, and check "
                    "fastxent's performance goals.",
    )
    parser.add_argument("--quick", action="store_true",
                        help="shorter run: fewer rounds, the largest workloads shrunk")
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # smoke tests
    parser.add_argument("--only", "--workloads", dest="workloads", default="*",
                        metavar="GROUPS",
                        help="comma-separated names or globs of the groups to run "
                             f"({', '.join(GROUP_NAMES)}); default: all; --list describes them")
    parser.add_argument("--list", action="store_true", help="list the groups and exit")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for fastxent and the peers (default: all cores); "
                             "thread-scaling rows compare with 1")
    parser.add_argument("--repeat", type=int, default=None,
                        help="timed rounds per workload (default 9, --quick 3); a workload stops "
                             "adding rounds after a time budget, but runs at least 3")
    parser.add_argument("--stat", choices=("min", "median"), default="min",
                        help="statistic over the rounds (default: min, the least disturbed "
                             "by other processes); groups of short calls use the median")
    parser.add_argument("--settle", type=float, default=0.2,
                        help="seconds of untimed pause before each timed sample, so that the "
                             "spinning worker threads of the previous candidate's runtime "
                             "(OpenMP, PyTorch, XLA) are idle again (default 0.2)")
    parser.add_argument("--in-process", action="store_true",
                        help="run every candidate in this process instead of one worker "
                             "process each (no AVX2 rows)")
    parser.add_argument("--out-dir", default="fastxent-bench",
                        help="directory for fastxent_bench.md / .json / _bandwidth.png "
                             "(default: ./fastxent-bench)")
    parser.add_argument("--no-peers", action="store_true",
                        help="time fastxent and the copy roofline only")
    parser.add_argument("--linear-size", type=_parse_size, default=None,
                        help="N,d,V of the fused linear group (default 8192,768,50257)")
    parser.add_argument("--linear-repeat", type=int, default=None,
                        help="calls per variant in the fused linear group (default 1; 2 quick)")
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    return parser


def _selected(patterns: str, parser) -> list[str]:
    pats = [p.strip() for p in patterns.split(",") if p.strip()]
    chosen = [g for g in GROUP_NAMES if any(fnmatch.fnmatchcase(g, p) for p in pats)]
    bad = [p for p in pats if not any(fnmatch.fnmatchcase(g, p) for g in GROUP_NAMES)]
    if bad or not chosen:
        parser.error(f"--only: no group matches {', '.join(bad) or repr(patterns)}; "
                     f"choose from {', '.join(GROUP_NAMES)}")
    return chosen


def candidates(work: Workload, n_threads: int, available: dict) -> list[dict]:
    """The candidates of a workload: fastxent's rows, the copy roofline and the peers.

    Returns
    -------
    list of dict
        ``key``, ``worker`` (one process per system; the AVX2 path has its own), ``system``,
        ``variant``, ``threads`` (None: single-threaded, serves every row) and ``role``.
    """
    cands = [{"key": f"fastxent:{variant}@{t}", "system": "fastxent", "variant": variant,
              "threads": t, "role": role,
              "worker": "fastxent-avx2" if variant == "avx2" else "fastxent"}
             for variant, t, role in work.fastxent_rows(n_threads)]
    cands.append({"key": "roofline", "system": "roofline", "threads": None, "role": "roofline"})
    mine = [p for p in work.peers if available.get(p)
            and not (p == "sklearn" and work.kind == "categorical")]
    peer_threads = [t for _, t, role in work.fastxent_rows(n_threads)
                    if role in ("main", "threads")]
    for p in mine:
        # NumPy is single-threaded; XLA has its own thread pool
        for t in [None] if p in ("numpy", "jax") else peer_threads:
            cands.append({"key": f"{p}@{t}", "system": p, "threads": t, "role": "peer"})
    for c in cands:
        c.setdefault("worker", c["system"])
    return cands


def _workload_key(work: Workload, all_works: list[Workload]) -> str:
    """The workload's key in the JSON file: its group, with the shape if the group has more."""
    if sum(w.group == work.group for w in all_works) == 1:
        return work.group
    return f"{work.group} {'x'.join(map(str, work.shape))}"


def run_workload(pool, work: Workload, args, available: dict, log) -> dict:
    """Time one workload; its rows, raw times, agreement and failures."""
    cands = candidates(work, args.threads, available)
    spec = {"kind": work.kind, "shape": list(work.shape), "dtype": work.dtype}
    measure = dict(seed=args.seed, min_sample_s=args.min_sample_s if work.many_calls else 0.0,
                   repeat=args.repeat, budget_s=args.budget, settle_s=args.settle)
    with timing.busy_core() if work.busy else contextlib.nullcontext():
        rounds = pool.measure(spec, cands, **measure)
    log(report.progress_line(work, cands, rounds, args.stat))
    return {"rows": report.workload_rows(work, cands, rounds, args.threads, args.stat),
            "raw_times": {c["key"]: c["times"] for c in cands},
            "agreement": report.agreement(cands),
            "errors": {c["system"]: c["error"] for c in cands if "error" in c}}


def run_plot_sweep(pool, mode: str, args, available: dict, log) -> list[dict]:
    """Effective GB/s (logits read + gradient written, over time) for each system and C."""
    points = []
    for n_classes in PLOT_CLASSES[mode]:
        n_rows = max(1, PLOT_BYTES[mode] // (4 * n_classes))
        work = Workload("plot", "sparse", (n_rows, n_classes), "float32")
        cands = candidates(work, args.threads, available)
        pool.measure({"kind": "sparse", "shape": [n_rows, n_classes], "dtype": "float32"},
                     cands, seed=args.seed, min_sample_s=0.0, repeat=max(1, min(args.repeat, 5)),
                     budget_s=args.budget / 3, settle_s=args.settle)
        nbytes = n_rows * n_classes * 4
        point = {"classes": n_classes, "rows": n_rows, "bytes": nbytes, "gbps": {}}
        for c in cands:
            if c["times"]:
                point["gbps"][c["system"]] = 2 * nbytes / timing.stat(c["times"], args.stat) / 1e9
        points.append(point)
        log(f"  C = {n_classes:,}: " + ", ".join(
            f"{report.DISPLAY[k]} {v:.1f} GB/s" for k, v in point["gbps"].items()))
    return points


def run_linear(pool, mode: str, args, available: dict, log) -> dict | None:
    """Fused linear + cross-entropy against the unfused pipeline and PyTorch: time (workers,
    interleaved) and peak memory (one fresh process per variant)."""
    if not linear.available():
        return None
    n, d, v = args.linear_size or LINEAR_SIZE[mode]
    variants = ["fused", "unfused"] + (["torch", "fxtorch"] if available.get("torch") else [])
    memory = {}
    for name in variants:
        memory[name] = linear.run_memory_child(name, n, d, v, args.threads, args.seed)
        log(f"  memory of {linear.NAMES[name]}: {linear.memory_text(memory[name])}")
    cands = [{"key": f"linear:{name}", "worker": linear.SYSTEM[name],
              "system": linear.SYSTEM[name], "variant": name, "threads": args.threads}
             for name in variants]
    repeat = args.linear_repeat or {"full": 1, "quick": 2, "tiny": 1}[mode]
    pool.measure({"kind": "linear", "shape": [n, d, v]}, cands, seed=args.seed,
                 min_sample_s=0.0, repeat=repeat, budget_s=float("inf"), settle_s=args.settle)
    for c in cands:
        if "error" in c:
            log(f"  {linear.NAMES[c['variant']]} failed: {c['error']}")
    logits_bytes = n * v * 4
    return {"size": [n, d, v], "logits_bytes": logits_bytes, "repeat": repeat,
            "rows": linear.rows(cands, memory, logits_bytes, args.stat)}


def run_autograd(pool, mode: str, args, available: dict, log) -> dict | None:
    """fastxent.torch.cross_entropy against F.cross_entropy, forward + backward, per size."""
    if not available.get("torch"):
        return None
    out = []
    for shape in autograd.SIZES[mode]:
        cands = autograd.candidates(args.threads)
        pool.measure({"kind": "autograd", "shape": list(shape), "dtype": "float32"}, cands,
                     seed=args.seed, min_sample_s=0.0, repeat=args.repeat,
                     budget_s=args.budget, settle_s=args.settle)
        rows = autograd.rows(shape, cands, args.stat)
        for row in rows:
            log(f"  {row['shape'][0]:,} x {row['shape'][1]:,}: "
                + (f"{autograd.NAMES[row['variant']]} failed: {row['error']}" if "error" in row
                   else f"fastxent.torch {report.fmt_time(row['fxtorch'])}, PyTorch "
                        f"{report.fmt_time(row['torch'])} ({row['speedup']:.2f}x)"))
        out += rows
    return {"rows": out}


def _default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _list(mode: str) -> None:
    works = workloads(mode)
    for group in GROUP_NAMES:
        print(f"{group:<15}{GROUP_HELP[group]}")
        if group == "plot":
            print(f"{'':<17}C = {', '.join(map(str, PLOT_CLASSES[mode]))}, "
                  f"{report.fmt_bytes(PLOT_BYTES[mode])} of logits each")
        elif group == "torch":
            print(f"{'':<17}" + ", ".join(" x ".join(f"{s:,}" for s in shape)
                                          for shape in autograd.SIZES[mode])
                  + " float32 (needs PyTorch)")
        elif group == "linear":
            print(f"{'':<17}N,d,V = {','.join(map(str, LINEAR_SIZE[mode]))} "
                  "(needs fastxent.linear_cross_entropy_and_grad)")
        for w in works:
            if w.group == group:
                goals = "; ".join(t.text(_default_threads()) for t in w.targets)
                print(f"{'':<17}{w.label} (goal: {goals})")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the markdown report and write the files to ``--out-dir``.

    Parameters
    ----------
    argv : list of str, optional
        Command-line arguments (default ``sys.argv[1:]``); see ``--help``.

    Returns
    -------
    int
        0 (goals that are not met are reported, not treated as errors).

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
        _list(mode)
        return 0
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    args.threads = args.threads or _default_threads()
    args.repeat = REPEAT[mode] if args.repeat is None else args.repeat
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")
    if args.settle < 0:
        parser.error(f"--settle must be >= 0, got {args.settle}")
    if mode == "tiny":
        args.settle = min(args.settle, 0.001)
    args.budget, args.min_sample_s = BUDGET_S[mode], MIN_SAMPLE_S[mode]
    groups = _selected(args.workloads, parser)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    import fastxent as fx

    started = time.perf_counter()
    load_before = report.loadavg()
    installed = peers.installed_peers(not args.no_peers)
    available = installed["available"]
    info = report.machine_info(args.threads, installed["versions"])
    log(f"fastxent bench ({mode}): {info['cpu']}, {args.threads} threads, ISA path "
        f"{info['isa']}, " + ("all candidates in this process" if args.in_process
                              else "one process per candidate"))
    result: dict = {"mode": mode, "stat": args.stat, "min_sample_s": args.min_sample_s,
                    "in_process": args.in_process, "machine": info, "rows": [],
                    "agreement": {}, "errors": {}, "raw_times": {}, "notes": []}
    works = workloads(mode, groups)
    if "avx2" in groups:
        skip = None
        if args.in_process:
            skip = "AVX2 rows: skipped, they need worker processes (not `--in-process`)."
        elif "avx2" not in fx.available_isas():
            skip = "AVX2 rows: skipped, this CPU does not support AVX2."
        elif fx.get_isa() == "avx2":
            result["notes"].append("AVX2 rows: the default path is AVX2 already on this CPU.")
        if skip:
            result["notes"].append(skip)
            log(skip)
            works = [w for w in works if not w.avx2]
    pool = timing.WorkerPool(in_process=args.in_process)
    try:
        for work in works:
            log(f"{work.group}: {work.label}"
                + (" (a competitor process spins a core)" if work.busy else ""))
            out = run_workload(pool, work, args, available, log)
            key = _workload_key(work, works)
            result["rows"] += out["rows"]
            result["agreement"][key] = out["agreement"]
            result["raw_times"][key] = out["raw_times"]
            if out["errors"]:
                result["errors"].setdefault(work.group, {}).update(out["errors"])
        if "plot" in groups:
            log("plot: bandwidth against the number of classes")
            result["plot"] = run_plot_sweep(pool, mode, args, available, log)
        if "torch" in groups:
            log("torch: fastxent.torch.cross_entropy against F.cross_entropy")
            result["torch"] = run_autograd(pool, mode, args, available, log)
        if "linear" in groups:
            log("linear: fused linear + cross-entropy")
            result["linear"] = run_linear(pool, mode, args, available, log)
    finally:
        pool.close()

    info["load_average"] = f"{load_before} (start), {report.loadavg()} (end)"
    info["elapsed_s"] = round(time.perf_counter() - started, 1)
    os.makedirs(args.out_dir, exist_ok=True)
    png = os.path.join(args.out_dir, "fastxent_bench_bandwidth.png")
    plotted = bool(result.get("plot")) and plot.write_plot(
        result["plot"], png,
        f"float32 sparse labels, {report.fmt_bytes(PLOT_BYTES[mode])} of logits per point, "
        f"{args.threads} threads, {info['cpu']}")
    text = report.report_markdown(result, available, args, plotted and os.path.basename(png))
    print(text)
    with open(os.path.join(args.out_dir, "fastxent_bench.md"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(args.out_dir, "fastxent_bench.json"), "w") as f:
        json.dump(result, f, indent=1, default=str)
    log(f"wrote {args.out_dir}/fastxent_bench.md, .json" + (", bandwidth PNG" if plotted else ""))
    return 0

