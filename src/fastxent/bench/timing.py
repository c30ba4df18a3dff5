"""Timing machinery: the candidates' workers, interleaved rounds, the busy-core competitor.

Each worker holds one system's candidates (fastxent, the copy roofline or one peer) for the
current workload.  By default a worker is a subprocess (``python -m fastxent.bench._worker``)
that answers one JSON line per request, so that no runtime's spinning threads or allocator
state slow down another; ``LocalWorker`` runs the same requests in this process
(``--in-process``).  The parent sends ``time`` requests round by round, each candidate once per
round in an order rotated from round to round, after an untimed pause (``settle_s``).
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from fastxent.bench import autograd, linear, peers, workloads


class Handler:
    """The requests a worker answers (shared by the subprocess and the in-process worker).

    ``setup``: build the workload's data and candidates, warm each up once, choose how many
    calls make one sample.  ``time``: one sample of one candidate, seconds per call.
    ``clear``: drop the workload's data.  A sample of many calls (``min_sample_s`` > 0)
    starts with one untimed call, so that it times data back in the cache.
    """

    def __init__(self):
        self.cands = {}
        self.numbers = {}
        self.pending_checks = set()

    def handle(self, request: dict) -> dict:
        """Answer one request; errors are answered, not raised."""
        try:
            if request["cmd"] == "setup":
                return self.setup(request)
            if request["cmd"] == "time":
                return self.time(request["key"])
            if request["cmd"] == "clear":
                self.cands, self.numbers, self.pending_checks = {}, {}, set()
                gc.collect()
                return {}
            raise ValueError(f"unknown request {request['cmd']!r}")
        except Exception as exc:  # reported to the parent, which shows the peer as failed
            return {"error": f"{type(exc).__name__}: {exc}"}

    def setup(self, request: dict) -> dict:
        self.cands, self.numbers, self.pending_checks = {}, {}, set()
        gc.collect()
        work = request["workload"]
        if work["kind"] == "linear":
            data = linear.data(work["shape"], request["seed"])
        else:  # the autograd group times sparse labels through PyTorch
            kind = "sparse" if work["kind"] == "autograd" else work["kind"]
            data = workloads.make_data(kind, tuple(work["shape"]), work["dtype"],
                                       seed=request["seed"])
            data["kind"] = kind
        builder = {"linear": linear.build, "autograd": autograd.build}.get(work["kind"],
                                                                          peers.build)
        checks = {}
        for spec in request["candidates"]:
            key = spec["key"]
            cand = builder(spec, data)
            self.cands[key] = cand
            if cand.warm is not None:
                cand.warm()
                self.pending_checks.add(key)
            else:
                out = cand.fn()
                if cand.check is not None:
                    checks[key] = cand.check(out)
                del out
            self.numbers[key] = _calls_per_sample(cand.fn, request["min_sample_s"])
        reply = {"checks": checks, "numbers": self.numbers}
        if "fastxent" in sys.modules:
            import fastxent

            reply["isa"] = fastxent.get_isa()
        return reply

    def time(self, key: str) -> dict:
        cand, number = self.cands[key], self.numbers[key]
        gc.collect()
        gc.disable()
        try:
            if number > 1:
                # a sample of many short calls starts with one untimed call: the other
                # candidates' samples have evicted its data from the cache, and the call
                # brings it back (its own warm-up, like the ones after it)
                cand.fn()
            t0 = time.perf_counter()
            for _ in range(number):
                out = cand.fn()
            elapsed = (time.perf_counter() - t0) / number
        finally:
            gc.enable()
        reply = {"t": elapsed}
        if key in self.pending_checks:
            reply["check"] = cand.check(out)
            self.pending_checks.discard(key)
        return reply


def _calls_per_sample(fn, min_sample_s: float) -> int:
    """1 when ``min_sample_s`` is 0, else enough calls to last ``min_sample_s`` (from the
    fastest of three calls)."""
    if min_sample_s <= 0:
        return 1
    one = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        fn()
        one = min(one, time.perf_counter() - t0)
    return max(1, math.ceil(min_sample_s / max(one, 1e-9)))


class LocalWorker:
    """A worker in this process (``--in-process``)."""

    def __init__(self, name: str):
        self.name = name
        self.handler = Handler()

    def request(self, request: dict) -> dict:
        return self.handler.handle(request)

    def close(self) -> None:
        self.handler = None


def worker_env(extra: dict | None = None) -> dict:
    """This environment, ``extra`` added, with the directory fastxent was imported from first
    on ``PYTHONPATH`` (a source checkout works without installing)."""
    import fastxent

    src = os.path.dirname(os.path.dirname(os.path.abspath(fastxent.__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([src] + [p for p in [env.get("PYTHONPATH")] if p])
    env.update(extra or {})
    return env


class ProcessWorker:
    """A worker subprocess, ``python -m fastxent.bench._worker``, with its own environment.

    Parameters
    ----------
    name : str
        The system it times (shown in errors).
    env : dict, optional
        Variables added to the worker's environment (e.g. ``FASTXENT_ISA``).
    """

    def __init__(self, name: str, env: dict | None = None):
        self.name = name
        self._stderr = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fastxent.bench._worker"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, text=True,
            env=worker_env(env), bufsize=1,
        )

    def request(self, request: dict) -> dict:
        """Send one request and wait for its answer; a dead worker answers an error."""
        try:
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except (BrokenPipeError, OSError):
            line = ""
        if not line:
            self.proc.wait()
            return {"error": f"the {self.name} worker exited with status "
                             f"{self.proc.returncode}: {self._stderr_tail()}"}
        return json.loads(line)

    def _stderr_tail(self) -> str:
        self._stderr.seek(0)
        lines = [line.strip() for line in self._stderr.read().splitlines() if line.strip()]
        return lines[-1] if lines else "no message"

    def close(self) -> None:
        """Ask the worker to finish (end of its input); kill it if it does not."""
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
        self._stderr.close()


class WorkerPool:
    """One worker per system, started on first use and kept for the whole run.

    Parameters
    ----------
    in_process : bool
        ``LocalWorker``s instead of subprocesses.
    """

    ENV = {"fastxent-avx2": {"FASTXENT_ISA": "avx2"}}

    def __init__(self, in_process: bool = False):
        self.in_process = in_process
        self.workers = {}

    def get(self, name: str):
        if name not in self.workers:
            self.workers[name] = (LocalWorker(name) if self.in_process
                                  else ProcessWorker(name, self.ENV.get(name)))
        return self.workers[name]

    def measure(self, workload: dict, cands: list[dict], *, seed: int, min_sample_s: float,
                repeat: int, budget_s: float, settle_s: float) -> int:
        """Set up each candidate's worker with ``workload``, then time interleaved rounds.

        Each candidate (a dict with ``key``, ``worker`` and what ``peers.build`` needs) gets
        ``times``, its ``check`` and the worker's ``isa`` (fastxent), or an ``error``.
        Returns the number of rounds.
        """
        for c in cands:
            c["times"] = []
        for name in dict.fromkeys(c["worker"] for c in cands):
            mine = [c for c in cands if c["worker"] == name]
            reply = self.get(name).request({
                "cmd": "setup", "workload": workload, "seed": seed,
                "min_sample_s": min_sample_s,
                "candidates": [{k: v for k, v in c.items() if k != "times"} for c in mine]})
            for c in mine:
                if "error" in reply:
                    c["error"] = reply["error"]
                    continue
                if c["key"] in reply["checks"]:
                    c["check"] = reply["checks"][c["key"]]
                if "isa" in reply:
                    c["isa"] = reply["isa"]
        try:
            return run_rounds(cands, self.workers, repeat, budget_s, settle_s)
        finally:
            for name in dict.fromkeys(c["worker"] for c in cands):
                self.workers[name].request({"cmd": "clear"})

    def close(self) -> None:
        for worker in self.workers.values():
            worker.close()
        self.workers = {}


@contextlib.contextmanager
def busy_core():
    """A competitor process spinning one core (``while True: pass``) for the ``with`` block."""
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.1)  # let it start spinning
        yield proc
    finally:
        proc.kill()
        proc.wait()


def run_rounds(cands: list[dict], workers: dict, repeat: int, budget_s: float,
               settle_s: float, min_rounds: int = 3) -> int:
    """Time rounds of one sample per candidate, in an order rotated from round to round.

    Parameters
    ----------
    cands : list of dict
        Each with ``key``, ``worker`` (a key of ``workers``) and a ``times`` list that receives
        the seconds per call of every sample.
    workers : dict
        Worker name -> worker (set up for this workload).
    repeat : int
        Rounds, unless ``budget_s`` seconds pass first (but not before
        ``min(repeat, min_rounds)`` rounds).
    settle_s : float
        Untimed pause before each sample: the thread pools of OpenMP, PyTorch and XLA spin for
        a while after a call returns and, on a machine with few cores, would take them away
        from whichever candidate runs next.

    Returns
    -------
    int
        The number of rounds.
    """
    start = time.perf_counter()
    rounds = 0
    for r in range(repeat):
        live = [c for c in cands if "error" not in c]
        if not live:
            break
        for c in live[r % len(live):] + live[:r % len(live)]:
            if settle_s:
                time.sleep(settle_s)
            reply = workers[c["worker"]].request({"cmd": "time", "key": c["key"]})
            if "error" in reply:
                c["error"] = reply["error"]
                continue
            c["times"].append(reply["t"])
            if "check" in reply:
                c["check"] = reply["check"]
        rounds += 1
        if rounds >= min(repeat, min_rounds) and time.perf_counter() - start > budget_s:
            break
    return rounds


def stat(times: list, how: str) -> float:
    """``"min"`` or ``"median"`` of ``times``."""
    return float(np.min(times) if how == "min" else np.median(times))
