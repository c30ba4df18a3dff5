"""Smoke tests of ``python -m fastxent bench`` (fastxent.bench) on tiny sizes.

No timing is asserted anywhere: these check that the benchmark runs every group in its worker
processes, produces its table and files, that its NumPy peers compute the same loss and
gradient as the oracle, and that the "met" verdicts follow the goals' definitions.
"""

import contextlib
import importlib.util
import io
import json
import re

import numpy as np
import pytest
import reference as R
from util import assert_close

import fastxent as fx
from fastxent import bench
from fastxent.bench import cli, linear, peers, report, timing
from fastxent.bench.workloads import GROUP_NAMES, Target, make_data, workloads

AVX2 = "avx2" in fx.available_isas()
ML_DTYPES = importlib.util.find_spec("ml_dtypes") is not None
# (workload group, role, threads) of every row of a tiny run with --threads 2
EXPECTED_ROWS = [
    ("sparse", "main", 2), ("sparse", "threads", 1), ("vocab", "main", 2),
    ("short-rows", "main", 2), ("float64", "main", 2), ("categorical", "main", 2),
    ("binary", "main", 2), ("split-row", "main", 2), ("split-row", "threads", 1),
    ("small", "main", 2), ("small", "functional", 2),
    ("small", "main", 2), ("small", "functional", 2),
    ("in-cache", "main", 2), ("in-cache", "main", 2),
    ("binary-shapes", "main", 2), ("binary-shapes", "main", 2),
    ("focal", "main", 2), ("focal", "main", 2), ("focal", "main", 2),
    # float16 / bfloat16 beside the same values in float32 (bfloat16 rows need ml_dtypes)
    *[("low-precision", role, 2) for _ in range(2) for dtype in ("bfloat16", "float16")
      if dtype == "float16" or ML_DTYPES for role in ("main", "float32")],
    ("busy-core", "main", 1), ("busy-core", "busy", 2),
    ("busy-core", "main", 1), ("busy-core", "busy", 2),
] + [("avx2", role, 2) for _ in range(4) for role in ("main", "avx2") if AVX2]
UNSHIPPABLE = re.compile(r"\b(issues?|tickets?|sessions?|MISS)\b", re.IGNORECASE)


def _run(argv):
    """``bench.main(argv)`` with its output captured: (status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = bench.main(argv)
    return status, out.getvalue(), err.getvalue()


def _result(out_dir):
    return json.loads((out_dir / "fastxent_bench.json").read_text())


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One tiny run of every group without peers (shared: it starts worker processes)."""
    out_dir = tmp_path_factory.mktemp("bench")
    status, text, log = _run(["--tiny", "--no-peers", "--threads", "2",
                              "--out-dir", str(out_dir)])
    return status, text, log, out_dir


def _table_rows(text):
    return [line for line in text.splitlines()
            if line.startswith("| ") and re.search(r" b?float", line.split("|")[1])]


class TestTinyRun:
    def test_exit_status_and_table_header(self, tiny_run):
        status, text, _, _ = tiny_run
        assert status == 0
        assert "| workload | fastxent | GB/s | copy roofline | fastxent / roofline | NumPy " in text
        assert f"fastxent ISA path: **{fx.get_isa()}**" in text
        assert "each in its own worker process" in text

    def test_one_row_per_fastxent_candidate(self, tiny_run):
        _, text, _, out_dir = tiny_run
        rows = _result(out_dir)["rows"]
        assert [(r["workload"], r["role"], r["threads"]) for r in rows] == EXPECTED_ROWS
        for r in rows:
            assert r["fastxent"] > 0 and r["roofline"] > 0
            assert r["peers"] == {}
            assert r["rounds"] >= 1
        assert len(_table_rows(text)) == len(EXPECTED_ROWS)

    def test_many_calls_and_busy_core_rows_use_the_median(self, tiny_run):
        _, _, _, out_dir = tiny_run
        for r in _result(out_dir)["rows"]:
            many = r["workload"] in ("small", "in-cache") or r["shape"] == [256, 100]
            median = many or r["workload"] == "busy-core"
            assert r["stat"] == ("median" if median else "min"), r["label"]

    def test_peer_columns_say_na_without_peers(self, tiny_run):
        _, text, _, _ = tiny_run
        for line in _table_rows(text):
            cells = [c.strip() for c in line.strip("|").split("|")]
            assert cells[5:9] == ["n/a"] * 4, line

    def test_every_goal_is_reported(self, tiny_run):
        _, text, _, _ = tiny_run
        goals = ["<= 1.3x the copy roofline", ">= 2x faster than JAX",
                 ">= 8x faster than scikit-learn", ">= 5x faster than PyTorch",
                 "<= 1.25x the copy roofline", ">= 3x faster than JAX",
                 "<= 2.5x the copy roofline", "<= 1.8x the copy roofline",
                 "<= 2x the copy roofline",
                 ">= 4x faster than PyTorch", "2 threads >= 1.7x faster than 1",
                 ">= 3x faster than NumPy", "faster than JAX; faster than PyTorch",
                 "functional form <= 2x the class call", ">= 1.3x faster than JAX",
                 "2 threads <= 1.1x the time of 1 thread while a core is busy",
                 "<= 1.4x the copy roofline", ">= 1.5x faster than fastxent float32"]
        if AVX2:
            goals.append("AVX2 path <= 1.3x the time of the default path")
        for goal in goals:
            assert goal in text, goal

    def test_speaks_to_users(self, tiny_run):
        _, text, log, _ = tiny_run
        assert not UNSHIPPABLE.search(text), UNSHIPPABLE.search(text)
        assert not UNSHIPPABLE.search(log)
        assert "{" not in log  # readable progress lines, no raw dicts
        assert "busy-core: sparse 64 x 100 float32 (a competitor process spins a core)" in log

    def test_busy_core_rows(self, tiny_run):
        _, _, _, out_dir = tiny_run
        rows = [r for r in _result(out_dir)["rows"] if r["workload"] == "busy-core"]
        assert len(rows) == 4  # the reference size and an in-cache size
        for one, two in (rows[:2], rows[2:]):
            assert one["label"].endswith("1 thread, one core busy") and one["targets"] == []
            (goal,) = two["targets"]
            assert goal["what"] == "busy"
            assert goal["value"] == pytest.approx(two["fastxent"] / one["fastxent"])
            assert goal["holds"] is (goal["value"] <= 1.1)

    def test_avx2_rows_run_in_an_avx2_worker(self, tiny_run):
        _, text, _, out_dir = tiny_run
        rows = [r for r in _result(out_dir)["rows"] if r["workload"] == "avx2"]
        if not AVX2:
            assert rows == [] and "this CPU does not support AVX2" in text
            return
        assert [r["isa"] for r in rows] == [fx.get_isa(), "avx2"] * 4
        for r in rows[1::2]:
            assert r["label"].endswith(", AVX2 path")
            assert r["targets"][0]["what"] == "avx2"

    def test_functional_form_agrees(self, tiny_run):
        _, _, _, out_dir = tiny_run
        agreement = _result(out_dir)["agreement"]
        for key in ("small 32x10", "small 256x100"):
            assert agreement[key]["fastxent functional"]["loss_rel"] < 1e-5

    def test_markdown_file_is_the_printed_report(self, tiny_run):
        _, text, _, out_dir = tiny_run
        assert (out_dir / "fastxent_bench.md").read_text() == text

    def test_plot_is_a_png(self, tiny_run):
        pytest.importorskip("matplotlib")
        _, text, _, out_dir = tiny_run
        png = out_dir / "fastxent_bench_bandwidth.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert "](fastxent_bench_bandwidth.png)" in text
        points = _result(out_dir)["plot"]
        assert [p["classes"] for p in points] == [10, 100]
        for p in points:
            assert set(p["gbps"]) == {"roofline", "fastxent"}

    def test_machine_description(self, tiny_run):
        _, text, _, out_dir = tiny_run
        machine = _result(out_dir)["machine"]
        assert machine["isa"] == fx.get_isa()
        assert machine["threads"] == 2
        assert machine["numpy"] == np.__version__
        assert machine["cpu"] in text

    def test_linear_group(self, tiny_run):
        _, text, _, out_dir = tiny_run
        result = _result(out_dir)
        if not linear.available():
            assert result["linear"] is None
            assert "skipped, `fastxent.linear_cross_entropy_and_grad` is not available" in text
            return
        rows = result["linear"]["rows"]
        assert [r["variant"] for r in rows] == ["fused", "unfused"]
        for row in rows:
            assert "error" not in row["memory"], row["memory"]
            assert row["loss_rel"] < 1e-4 and row["d_hidden_rel"] < 1e-4
        assert "fastxent.linear_cross_entropy_and_grad" in text


def test_torch_group(tmp_path):
    """fastxent.torch against PyTorch, and the linear group's fastxent.torch row, in workers."""
    pytest.importorskip("torch")
    status, text, log = _run(["--tiny", "--only", "torch,linear", "--threads", "2",
                              "--out-dir", str(tmp_path)])
    assert status == 0
    result = _result(tmp_path)
    (row,) = result["torch"]["rows"]
    assert "error" not in row, row
    assert row["shape"] == [64, 100] and row["fxtorch"] > 0 and row["torch"] > 0
    assert row["loss_rel"] < 1e-6 and row["grad_rel"] < 1e-5
    assert "| 64 x 100 |" in text and "fastxent.torch.cross_entropy + backward" in text
    linear_rows = {r["variant"]: r for r in result["linear"]["rows"]}
    fxtorch = linear_rows["fxtorch"]
    assert fxtorch["loss_rel"] < 1e-6 and fxtorch["d_hidden_rel"] < 1e-5
    assert [t["what"] for t in fxtorch["targets"]] == ["time", "times lower"]
    assert "fastxent.torch.linear_cross_entropy + backward" in text
    assert not UNSHIPPABLE.search(text) and not UNSHIPPABLE.search(log)


def test_group_filter_and_no_plot(tmp_path):
    status, text, _ = _run(["--tiny", "--no-peers", "--workloads", "binary,split-*",
                            "--out-dir", str(tmp_path)])
    assert status == 0
    result = _result(tmp_path)
    assert [r["workload"] for r in result["rows"]] == ["binary", "split-row", "split-row"]
    assert "plot" not in result and "linear" not in result
    assert not (tmp_path / "fastxent_bench_bandwidth.png").exists()
    assert "binary from logits 5,000 elements float32" in text


def test_in_process_small_calls(tmp_path):
    """``--only small`` in one process; the AVX2 rows say why they are skipped."""
    status, text, _ = _run(["--tiny", "--no-peers", "--in-process", "--only", "small,avx2",
                            "--out-dir", str(tmp_path)])
    assert status == 0
    result = _result(tmp_path)
    assert [r["workload"] for r in result["rows"]] == ["small"] * 4
    assert "in this one process (`--in-process`)" in text
    assert "AVX2 rows: skipped, they need worker processes" in text


def test_one_thread_has_no_scaling_row(tmp_path):
    assert _run(["--tiny", "--no-peers", "--threads", "1", "--only", "sparse",
                 "--out-dir", str(tmp_path)])[0] == 0
    rows = _result(tmp_path)["rows"]
    assert [r["threads"] for r in rows] == [1]
    threads = [v for v in rows[0]["targets"] if v["what"] == "threads"]
    assert threads[0]["holds"] is None  # cannot be evaluated with one thread


@pytest.mark.parametrize("argv, message", [
    (["--only", "nonesuch"], "no group matches nonesuch"),
    (["--linear-size", "8,16"], "expected N,d,V"),
    (["--linear-size", "8,0,3"], "must be positive"),
    (["--repeat", "0", "--only", "binary"], "--repeat must be >= 1"),
    (["--threads", "0"], "--threads must be >= 1"),
    (["--settle", "-1"], "--settle must be >= 0"),
])
def test_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(["--tiny", "--no-peers", *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_list_and_help(capsys):
    assert bench.main(["--list"]) == 0
    out = capsys.readouterr().out
    listed = [line.split()[0] for line in out.splitlines() if not line.startswith(" ")]
    assert listed == GROUP_NAMES
    assert "2 x 10,000,000" in out and "2,048 x 50,257" in out and "32 x 10" in out
    with pytest.raises(SystemExit):
        bench.main(["--help"])
    helptext = capsys.readouterr().out
    assert "--only GROUPS, --workloads GROUPS" in helptext and "--in-process" in helptext
    assert not UNSHIPPABLE.search(out + helptext)


def test_peers_agree_with_fastxent(tmp_path):
    """With the installed peers, each in its worker, every peer sees the same data."""
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    pytest.importorskip("jax")
    status, text, log = _run(["--tiny", "--only", "sparse,binary,small", "--repeat", "1",
                              "--out-dir", str(tmp_path)])
    assert status == 0
    result = _result(tmp_path)
    assert result["errors"] == {}
    for key, expected in [("sparse", {"numpy", "sklearn", "torch", "jax"}),
                          ("binary", {"numpy", "sklearn", "torch", "jax"}),
                          ("small 32x10", {"numpy", "torch", "jax", "fastxent functional"})]:
        agreement = result["agreement"][key]
        assert expected <= set(agreement), key
        for peer, diff in agreement.items():
            assert max(diff.values()) < 1e-4, (key, peer)
    sparse_rows = [r for r in result["rows"] if r["workload"] == "sparse"]
    assert set(sparse_rows[0]["peers"]) == {"numpy", "sklearn", "torch", "jax"}
    assert "sklearn" in sparse_rows[1]["peers"] and "jax" not in sparse_rows[1]["peers"]
    small = [r for r in result["rows"] if r["workload"] == "small" and r["role"] == "main"]
    assert all(set(r["peers"]) == {"numpy", "torch", "jax"} for r in small)
    assert "agreed with fastxent" in text
    assert "PyTorch" in log and "{" not in log


def test_worker_reports_errors():
    worker = timing.ProcessWorker("test")
    try:
        reply = worker.request({"cmd": "setup", "seed": 0, "min_sample_s": 0.0,
                                "workload": {"kind": "sparse", "shape": [4, 3],
                                             "dtype": "float32"},
                                "candidates": [{"key": "k", "system": "nonesuch"}]})
        assert reply == {"error": "ValueError: unknown candidate system 'nonesuch'"}
        reply = worker.request({"cmd": "setup", "seed": 0, "min_sample_s": 0.0,
                                "workload": {"kind": "sparse", "shape": [4, 3],
                                             "dtype": "float32"},
                                "candidates": [{"key": "k", "system": "roofline"}]})
        assert reply["checks"] == {} and reply["numbers"] == {"k": 1}
        assert worker.request({"cmd": "time", "key": "k"})["t"] > 0
    finally:
        worker.close()
    assert worker.proc.returncode == 0


def test_candidates_of_a_thread_scaling_workload():
    work = next(w for w in workloads("tiny", {"sparse"}))
    available = dict.fromkeys(["numpy", "sklearn", "torch", "jax"], True)
    keys = [c["key"] for c in cli.candidates(work, 2, available)]
    assert keys == ["fastxent:class@2", "fastxent:class@1", "roofline", "numpy@None",
                    "sklearn@2", "sklearn@1", "torch@2", "torch@1", "jax@None"]
    workers = {c["worker"] for c in cli.candidates(work, 2, available)}
    assert workers == {"fastxent", "roofline", "numpy", "sklearn", "torch", "jax"}


class TestNumpyPeers:
    """The NumPy implementations the benchmark times compute the oracle's loss and gradient."""

    def test_sparse(self):
        rng = np.random.default_rng(1)
        x = rng.standard_normal((7, 5)) * 3
        y = rng.integers(0, 5, 7)
        loss, grad = peers.numpy_sparse(y, x)
        ref_loss, ref_grad = R.reference_loss_and_grad("sparse_categorical", y, x,
                                                       from_logits=True)
        assert_close(loss, ref_loss)
        assert_close(grad, ref_grad)

    def test_categorical(self):
        rng = np.random.default_rng(2)
        x = rng.standard_normal((6, 4)) * 3
        t = rng.random((6, 4))
        t /= t.sum(axis=1, keepdims=True)
        loss, grad = peers.numpy_categorical(t, x)
        ref_loss, ref_grad = R.reference_loss_and_grad("categorical", t, x, from_logits=True)
        assert_close(loss, ref_loss)
        assert_close(grad, ref_grad)

    def test_binary(self):
        rng = np.random.default_rng(3)
        x = rng.standard_normal(50) * 4
        z = (rng.random(50) < 0.5).astype(float)
        loss, grad = peers.numpy_binary(z, x)
        ref_loss, ref_grad = R.reference_loss_and_grad("binary", z, x, from_logits=True)
        assert_close(loss, ref_loss)
        assert_close(grad, ref_grad)

    @pytest.mark.parametrize("kind", ["sparse", "categorical", "binary"])
    def test_make_data(self, kind):
        data = make_data(kind, (5, 3) if kind != "binary" else (20,), "float32", seed=4)
        assert data["x"].dtype == np.float32
        if kind == "sparse":
            assert data["y"].shape == (5,) and data["y"].min() >= 0 and data["y"].max() < 3
        elif kind == "categorical":
            assert data["y"].dtype == np.float32
            np.testing.assert_allclose(data["y"].sum(axis=1), 1, rtol=1e-6)
        else:
            assert set(np.unique(data["y"])) <= {0.0, 1.0}


class TestVerdicts:
    """The 'met' column follows the definitions of the goals."""

    ROW = {"fastxent": 2.0, "roofline": 1.25, "peers": {"jax": 5.0, "sklearn": 10.0}}

    @pytest.mark.parametrize("target, value, holds", [
        (Target("roofline", 1.7), 1.6, True),
        (Target("roofline", 1.5), 1.6, False),
        (Target("jax", 2), 2.5, True),
        (Target("jax", 3), 2.5, False),
        (Target("sklearn", 5), 5.0, True),
        (Target("torch", 5), None, None),  # peer not measured
    ])
    def test_single_row_goals(self, target, value, holds):
        got_value, got_holds = report.evaluate(target, self.ROW, self.ROW)
        assert got_holds is holds
        if value is None:
            assert got_value is None
        else:
            assert got_value == pytest.approx(value)

    @pytest.mark.parametrize("what, other, holds", [
        ("threads", 1.8, True), ("threads", 1.6, False),  # 1-thread time / all-threads time
        ("busy", 1.05, True), ("busy", 1.2, False),  # 2-thread time / 1-thread time
        ("functional", 1.9, True), ("functional", 2.1, False),
        ("avx2", 1.2, True), ("avx2", 1.4, False),
    ])
    def test_goals_against_the_main_row(self, what, other, holds):
        main, row = {"fastxent": 1.0}, {"fastxent": other}
        bound = {"threads": 1.7, "busy": 1.1, "functional": 2, "avx2": 1.3}[what]
        assert report.evaluate(Target(what, bound), row, main) == (pytest.approx(other), holds)
        assert report.evaluate(Target(what, bound), main, main) == (None, None)

    def test_holds_cell(self):
        verdicts = [
            {"what": "roofline", "value": 1.2, "holds": True},
            {"what": "jax", "value": 1.5, "holds": False},
            {"what": "torch", "value": None, "holds": None},
        ]
        cell = report.holds_cell(verdicts)
        assert cell.startswith("**no**")
        assert "JAX 1.50x not met" in cell and "copy roofline 1.20x met" in cell
        assert "PyTorch n/a" in cell
        assert report.holds_cell(verdicts[:1]).startswith("**yes**")
        assert report.holds_cell([verdicts[0], verdicts[2]]).startswith("**?**")


def _row_chunked_linear_xent(hidden, weight, labels, bias=None, *, n_threads=None, chunk=16):
    """Stand-in for fastxent.linear_cross_entropy_and_grad (mean over tokens, no bias):
    chunks of rows through the sparse loss.  Lets the benchmark's linear group be tested
    whether or not the real function exists."""
    xent = fx.SparseCategoricalCrossentropy(from_logits=True, reduction="sum",
                                            n_threads=n_threads)
    n = len(hidden)
    loss = 0.0
    d_hidden = np.empty_like(hidden)
    d_weight = np.zeros_like(weight)
    for start in range(0, n, chunk):
        h = hidden[start:start + chunk]
        part, g = xent.loss_and_grad(labels[start:start + chunk], h @ weight.T)
        g /= n
        loss += part / n
        d_hidden[start:start + chunk] = g @ weight
        d_weight += g.T @ h
    return loss, d_hidden, d_weight, None


def test_linear_group_with_a_stand_in(tmp_path, monkeypatch):
    """The linear group's bookkeeping (in-process memory child, memory columns, verdicts)."""
    monkeypatch.setattr(fx, "linear_cross_entropy_and_grad", _row_chunked_linear_xent,
                        raising=False)

    def child_in_process(name, n, d, v, threads, seed):
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            assert linear.memory_child([name, str(n), str(d), str(v), str(threads),
                                        str(seed)]) == 0
        return json.loads(buf.getvalue().strip().splitlines()[-1])

    monkeypatch.setattr(linear, "run_memory_child", child_in_process)
    status, text, log = _run(["--tiny", "--no-peers", "--in-process", "--only", "linear",
                              "--linear-size", "48,8,200", "--out-dir", str(tmp_path)])
    assert status == 0
    result = _result(tmp_path)["linear"]
    assert result["size"] == [48, 8, 200] and result["logits_bytes"] == 48 * 200 * 4
    fused, unfused = result["rows"]
    assert (fused["variant"], unfused["variant"]) == ("fused", "unfused")
    assert unfused["vs_unfused"] == 1.0
    for row in (fused, unfused):
        assert row["loss_rel"] < 1e-5 and row["d_hidden_rel"] < 1e-5
        assert row["memory"]["out_bytes"] == (48 * 8 + 200 * 8) * 4
        assert row["memory"]["traced_peak"] >= row["memory"]["out_bytes"]
    assert [t["what"] for t in fused["targets"]] == ["time", "memory"]
    assert unfused["targets"] == []
    assert "N = 48 tokens, d = 8, V = 200" in text
    assert "| fastxent.linear_cross_entropy_and_grad |" in text
    assert "memory of fastxent.linear_cross_entropy_and_grad: call " in log


def test_a_failing_peer_is_reported(tmp_path, monkeypatch):
    """A peer whose worker fails shows as failed; the others are still timed."""
    def broken(labels, logits):
        raise RuntimeError("broken on purpose")

    monkeypatch.setattr(peers, "numpy_sparse", broken)
    monkeypatch.setattr(peers, "installed_peers", lambda enabled: {
        "available": {"numpy": True, "sklearn": False, "torch": False, "jax": False},
        "versions": {}})
    status, text, log = _run(["--tiny", "--in-process", "--only", "small",
                              "--out-dir", str(tmp_path)])
    assert status == 0
    result = _result(tmp_path)
    assert result["errors"] == {"small": {"numpy": "RuntimeError: broken on purpose"}}
    assert len(result["rows"]) == 4
    main_cells = [line.split("|")[6].strip() for line in _table_rows(text)]
    assert main_cells == ["failed", "—", "failed", "—"]
    assert "Failures: small: NumPy failed: RuntimeError: broken on purpose." in text
    assert "NumPy failed (RuntimeError: broken on purpose)" in log


def test_avx2_rows_need_a_cpu_with_avx2(tmp_path, monkeypatch):
    monkeypatch.setattr(fx, "available_isas", lambda: ["baseline"])
    status, text, _ = _run(["--tiny", "--no-peers", "--only", "avx2", "--out-dir",
                            str(tmp_path)])
    assert status == 0
    assert _result(tmp_path)["rows"] == []
    assert "AVX2 rows: skipped, this CPU does not support AVX2." in text


@pytest.mark.parametrize("kind", ["sparse_focal", "binary_focal", "kl"])
def test_focal_group_peers_compute_the_same(kind):
    """The focal group's PyTorch and JAX candidates compute fastxent's loss and gradient."""
    data = make_data(kind, (64, 50), "float32", seed=3)
    data["kind"] = kind
    ref = peers.build({"system": "fastxent", "threads": 1}, data)
    ref_loss, ref_grad = ref.check(ref.fn())
    for system in ("torch", "jax"):
        pytest.importorskip(system)
        cand = peers.build({"system": system, "threads": 1}, data)
        loss, grad = cand.check(cand.fn())
        assert loss == pytest.approx(ref_loss, rel=2e-5), system
        np.testing.assert_allclose(grad, ref_grad, rtol=1e-4,
                                   atol=1e-5 * np.max(np.abs(ref_grad)))


@pytest.mark.parametrize("number", [1, 5])
def test_a_many_call_sample_starts_with_one_untimed_call(number):
    # a sample of one call is that call alone; a sample of many calls (the short-call groups)
    # runs one call more, untimed, before its timed calls
    calls = []
    handler = timing.Handler()
    handler.cands = {"k": peers.Candidate(lambda: calls.append(1))}
    handler.numbers = {"k": number}
    assert handler.time("k")["t"] >= 0
    assert len(calls) == (1 if number == 1 else number + 1)
