"""Smoke tests of ``python -m fastxent bench`` (fastxent.bench) on tiny sizes.

No timing is asserted anywhere: these check that the benchmark runs, produces its table and
files, that its NumPy peers compute the same loss and gradient as the oracle, and that the
"holds" verdicts follow the targets' definitions.
"""

import json

import numpy as np
import pytest
import reference as R
from util import assert_close

import fastxent as fx
from fastxent import bench

N_WORKLOAD_ROWS = 9  # 7 workloads, two of them with a 1-thread row as well


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One tiny run of every group without peers (shared: it spawns subprocesses)."""
    out_dir = tmp_path_factory.mktemp("bench")
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(io.StringIO()):
        status = bench.main(["--tiny", "--no-peers", "--threads", "2", "--out-dir", str(out_dir)])
    return status, buf.getvalue(), out_dir


def _table_rows(text):
    return [line for line in text.splitlines()
            if line.startswith("| ") and not line.startswith("| workload")
            and not line.startswith("| variant")]


class TestTinyRun:
    def test_exit_status_and_table_header(self, tiny_run):
        status, text, _ = tiny_run
        assert status == 0
        assert "| workload | fastxent | GB/s | copy roofline | fastxent / roofline | NumPy " in text
        assert f"fastxent ISA path: **{fx.get_isa()}**" in text

    def test_one_row_per_workload_and_thread_count(self, tiny_run):
        _, text, out_dir = tiny_run
        result = json.loads((out_dir / "fastxent_bench.json").read_text())
        rows = result["rows"]
        assert len(rows) == N_WORKLOAD_ROWS
        assert [r["workload"] for r in rows] == [
            "sparse", "sparse", "vocab", "short-rows", "float64", "categorical", "binary",
            "split-row", "split-row"]
        assert [r["threads"] for r in rows if r["workload"] == "sparse"] == [2, 1]
        for r in rows:
            assert r["fastxent"] > 0 and r["roofline"] > 0
            assert r["peers"] == {}
            assert r["rounds"] >= 1
        assert len([line for line in _table_rows(text) if " float" in line]) == N_WORKLOAD_ROWS

    def test_peer_columns_say_na_without_peers(self, tiny_run):
        _, text, _ = tiny_run
        for line in _table_rows(text):
            if " float" not in line:
                continue
            cells = [c.strip() for c in line.strip("|").split("|")]
            assert cells[5:9] == ["n/a"] * 4, line

    def test_every_issue_target_is_reported(self, tiny_run):
        _, text, _ = tiny_run
        for target in ["<= 1.7x roofline", ">= 2x faster than JAX",
                       ">= 8x faster than scikit-learn", ">= 5x faster than PyTorch",
                       "<= 1.5x roofline", ">= 3x faster than JAX",
                       "<= 3.5x roofline", "<= 2x roofline", "<= 2.5x roofline", "<= 3x roofline",
                       ">= 4x faster than PyTorch", "2 threads >= 1.7x faster than 1"]:
            assert target in text, target

    def test_markdown_file_is_the_printed_report(self, tiny_run):
        _, text, out_dir = tiny_run
        assert (out_dir / "fastxent_bench.md").read_text() == text

    def test_plot_is_a_png(self, tiny_run):
        pytest.importorskip("matplotlib")
        _, text, out_dir = tiny_run
        png = out_dir / "fastxent_bench_bandwidth.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert "](fastxent_bench_bandwidth.png)" in text
        result = json.loads((out_dir / "fastxent_bench.json").read_text())
        assert [p["classes"] for p in result["plot"]] == [10, 100]
        for p in result["plot"]:
            assert set(p["gbps"]) == {"roofline", "fastxent"}

    def test_machine_description(self, tiny_run):
        _, text, out_dir = tiny_run
        machine = json.loads((out_dir / "fastxent_bench.json").read_text())["machine"]
        assert machine["isa"] == fx.get_isa()
        assert machine["threads"] == 2
        assert machine["numpy"] == np.__version__
        assert machine["cpu"] in text

    def test_linear_group(self, tiny_run):
        _, text, out_dir = tiny_run
        result = json.loads((out_dir / "fastxent_bench.json").read_text())
        if not hasattr(fx, "linear_cross_entropy_and_grad"):
            assert result["linear"] is None
            assert "skipped, `fastxent.linear_cross_entropy_and_grad` is not available" in text
            return
        linear = result["linear"]
        assert [r["variant"] for r in linear["rows"]] == ["fused", "unfused"]
        for row in linear["rows"]:
            assert "error" not in row["memory"], row["memory"]
            assert row["loss_rel"] < 1e-4 and row["d_hidden_rel"] < 1e-4
        assert "fastxent.linear_cross_entropy_and_grad" in text


def test_workload_filter_and_no_plot(tmp_path, capsys):
    assert bench.main(["--tiny", "--no-peers", "--workloads", "binary,split-*",
                       "--out-dir", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "fastxent_bench.json").read_text())
    assert [r["workload"] for r in result["rows"]] == ["binary", "split-row", "split-row"]
    assert "plot" not in result and "linear" not in result
    assert not (tmp_path / "fastxent_bench_bandwidth.png").exists()
    assert "binary from logits 5,000 elements float32" in capsys.readouterr().out


def test_one_thread_has_no_scaling_row(tmp_path, capsys):
    assert bench.main(["--tiny", "--no-peers", "--threads", "1", "--workloads", "sparse",
                       "--out-dir", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "fastxent_bench.json").read_text())["rows"]
    assert [r["threads"] for r in rows] == [1]
    threads = [v for v in rows[0]["targets"] if v["what"] == "threads"]
    assert threads[0]["holds"] is None  # cannot be evaluated with one thread


@pytest.mark.parametrize("argv, message", [
    (["--workloads", "nonesuch"], "no workload matches nonesuch"),
    (["--linear-size", "8,16"], "expected N,d,V"),
    (["--linear-size", "8,0,3"], "must be positive"),
    (["--repeat", "0", "--workloads", "binary"], "--repeat must be >= 1"),
    (["--threads", "0"], "--threads must be >= 1"),
])
def test_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(["--tiny", "--no-peers", *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_list(capsys):
    assert bench.main(["--list"]) == 0
    out = capsys.readouterr().out
    for name in ["sparse", "vocab", "short-rows", "float64", "categorical", "binary",
                 "split-row", "plot", "linear"]:
        assert any(line.split()[0] == name for line in out.splitlines()), name
    assert "2 x 10,000,000" in out and "2,048 x 50,257" in out


def test_peers_agree_with_fastxent(tmp_path, capsys):
    """With the installed peers, every peer sees the same data (checked in the run)."""
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    assert bench.main(["--tiny", "--workloads", "sparse,binary", "--repeat", "1",
                       "--out-dir", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "fastxent_bench.json").read_text())
    for workload in ("sparse", "binary"):
        agreement = result["agreement"][workload]
        assert {"numpy", "sklearn", "torch"} <= set(agreement)
        for peer, diff in agreement.items():
            assert diff["loss_rel"] < 1e-4 and diff["grad_rel"] < 1e-4, (workload, peer)
    sparse_rows = [r for r in result["rows"] if r["workload"] == "sparse"]
    assert {"numpy", "sklearn", "torch"} <= set(sparse_rows[0]["peers"])
    assert "sklearn" in sparse_rows[1]["peers"] and "jax" not in sparse_rows[1]["peers"]
    assert "agreed with fastxent" in capsys.readouterr().out


class TestNumpyPeers:
    """The NumPy implementations the benchmark times compute the oracle's loss and gradient."""

    def test_sparse(self):
        rng = np.random.default_rng(1)
        x = rng.standard_normal((7, 5)) * 3
        y = rng.integers(0, 5, 7)
        loss, grad = bench.numpy_sparse(y, x)
        ref_loss, ref_grad = R.reference_loss_and_grad("sparse_categorical", y, x,
                                                       from_logits=True)
        assert_close(loss, ref_loss)
        assert_close(grad, ref_grad)

    def test_categorical(self):
        rng = np.random.default_rng(2)
        x = rng.standard_normal((6, 4)) * 3
        t = rng.random((6, 4))
        t /= t.sum(axis=1, keepdims=True)
        loss, grad = bench.numpy_categorical(t, x)
        ref_loss, ref_grad = R.reference_loss_and_grad("categorical", t, x, from_logits=True)
        assert_close(loss, ref_loss)
        assert_close(grad, ref_grad)

    def test_binary(self):
        rng = np.random.default_rng(3)
        x = rng.standard_normal(50) * 4
        z = (rng.random(50) < 0.5).astype(float)
        loss, grad = bench.numpy_binary(z, x)
        ref_loss, ref_grad = R.reference_loss_and_grad("binary", z, x, from_logits=True)
        assert_close(loss, ref_loss)
        assert_close(grad, ref_grad)

    @pytest.mark.parametrize("kind", ["sparse", "categorical", "binary"])
    def test_make_data(self, kind):
        data = bench.make_data(kind, (5, 3) if kind != "binary" else (20,), "float32", seed=4)
        assert data["x"].dtype == np.float32
        if kind == "sparse":
            assert data["y"].shape == (5,) and data["y"].min() >= 0 and data["y"].max() < 3
        elif kind == "categorical":
            assert data["y"].dtype == np.float32
            np.testing.assert_allclose(data["y"].sum(axis=1), 1, rtol=1e-6)
        else:
            assert set(np.unique(data["y"])) <= {0.0, 1.0}


class TestVerdicts:
    """The 'holds' column follows the definitions of the targets."""

    ROW = {"fastxent": 2.0, "roofline": 1.25, "peers": {"jax": 5.0, "sklearn": 10.0}}

    @pytest.mark.parametrize("target, value, holds", [
        (bench.Target("roofline", 1.7), 1.6, True),
        (bench.Target("roofline", 1.5), 1.6, False),
        (bench.Target("jax", 2), 2.5, True),
        (bench.Target("jax", 3), 2.5, False),
        (bench.Target("sklearn", 5), 5.0, True),
        (bench.Target("torch", 5), None, None),  # peer not measured
    ])
    def test_single_row_targets(self, target, value, holds):
        got_value, got_holds = bench._evaluate(target, self.ROW, {}, 2)
        assert got_holds is holds
        if value is None:
            assert got_value is None
        else:
            assert got_value == pytest.approx(value)

    def test_thread_scaling(self):
        rows = {2: {"fastxent": 1.0}, 1: {"fastxent": 1.8}}
        target = bench.Target("threads", 1.7)
        assert bench._evaluate(target, rows[1], rows, 2) == (pytest.approx(1.8), True)
        rows[1]["fastxent"] = 1.6
        assert bench._evaluate(target, rows[1], rows, 2) == (pytest.approx(1.6), False)

    def test_holds_cell(self):
        verdicts = [
            {"what": "roofline", "value": 1.2, "holds": True},
            {"what": "jax", "value": 1.5, "holds": False},
            {"what": "torch", "value": None, "holds": None},
        ]
        cell = bench._holds_cell(verdicts)
        assert cell.startswith("**no**")
        assert "JAX 1.50x MISS" in cell and "copy roofline 1.20x ok" in cell
        assert "PyTorch n/a" in cell
        assert bench._holds_cell(verdicts[:1]).startswith("**yes**")
        assert bench._holds_cell([verdicts[0], verdicts[2]]).startswith("**?**")


def _row_chunked_linear_xent(hidden, weight, labels, bias=None, *, n_threads=None, chunk=16):
    """Stand-in for fastxent.linear_cross_entropy_and_grad (mean over tokens, no bias):
    chunks of rows through the sparse loss.  Lets the benchmark's linear group be tested
    whether or not the real function exists yet."""
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


def test_linear_group_with_a_stand_in(tmp_path, monkeypatch, capsys):
    """The linear group's bookkeeping (in-process child, memory columns, verdicts)."""
    import contextlib
    import io

    monkeypatch.setattr(fx, "linear_cross_entropy_and_grad", _row_chunked_linear_xent,
                        raising=False)

    def child_in_process(name, n, d, v, threads, seed):
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            assert bench.linear_child([name, str(n), str(d), str(v), str(threads),
                                       str(seed)]) == 0
        return json.loads(buf.getvalue().strip().splitlines()[-1])

    monkeypatch.setattr(bench, "_run_linear_child", child_in_process)
    assert bench.main(["--tiny", "--no-peers", "--workloads", "linear",
                       "--linear-size", "48,8,200", "--out-dir", str(tmp_path)]) == 0
    linear = json.loads((tmp_path / "fastxent_bench.json").read_text())["linear"]
    assert linear["size"] == [48, 8, 200] and linear["logits_bytes"] == 48 * 200 * 4
    fused, unfused = linear["rows"]
    assert (fused["variant"], unfused["variant"]) == ("fused", "unfused")
    assert unfused["vs_unfused"] == 1.0
    for row in (fused, unfused):
        assert row["loss_rel"] < 1e-5 and row["d_hidden_rel"] < 1e-5
        assert row["memory"]["out_bytes"] == (48 * 8 + 200 * 8) * 4
        assert row["memory"]["traced_peak"] >= row["memory"]["out_bytes"]
    assert [t["what"] for t in fused["targets"]] == ["time", "memory"]
    assert unfused["targets"] == []
    text = capsys.readouterr().out
    assert "N = 48 tokens, d = 8, V = 200" in text
    assert "| fastxent.linear_cross_entropy_and_grad |" in text
