"""Stateful metrics of fastxent.metrics: against the one-shot losses and Keras 3's metrics,
batch-split invariance, merge_state, pickling, config, empty inputs, errors, thread counts,
Dask blocks and streaming a memory-mapped file larger than the memory the test allows."""

import math
import os
import pickle
import subprocess
import sys
import textwrap
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastxent as fx
from fastxent.metrics import (
    BinaryCrossentropy,
    CategoricalCrossentropy,
    Perplexity,
    SparseCategoricalCrossentropy,
    evaluate,
)

METRICS = ["categorical", "sparse", "binary", "perplexity"]


def make(kind, **kw):
    return {"categorical": CategoricalCrossentropy, "sparse": SparseCategoricalCrossentropy,
            "binary": BinaryCrossentropy, "perplexity": Perplexity}[kind](**kw)


def data(rng, kind, n=200, c=6, dtype=np.float32, ignore=None):
    """(y_true, y_pred) for a kind; sparse labels equal to ``ignore`` on every 4th row."""
    x = rng.normal(size=(n, c)).astype(dtype)
    if kind == "categorical":
        y = rng.dirichlet(np.ones(c), n).astype(dtype)
    elif kind == "binary":
        y = (rng.random((n, c)) > 0.5).astype(dtype)
    else:
        y = rng.integers(0, c, n)
        if ignore is not None:
            y[::4] = ignore
    return y, x


def one_shot(kind, y, x, w=None, ignore=None, **kw):
    """The whole data in one fastxent call, as a sample-weighted mean."""
    red = "mean_with_sample_weight"
    if kind == "categorical":
        return fx.CategoricalCrossentropy(from_logits=True, reduction=red, **kw)(y, x, w)
    if kind == "binary":
        return fx.BinaryCrossentropy(from_logits=True, reduction=red, **kw)(y, x, w)
    loss = fx.SparseCategoricalCrossentropy(from_logits=True, ignore_class=ignore,
                                            reduction=red, **kw)(y, x, w)
    return math.exp(loss) if kind == "perplexity" else loss


def metric_for(kind, ignore=None, **kw):
    if kind == "perplexity":
        return Perplexity(mask_token_id=ignore, **kw)
    if kind == "sparse":
        return SparseCategoricalCrossentropy(from_logits=True, ignore_class=ignore, **kw)
    return make(kind, from_logits=True, **kw)


def feed(m, y, x, w, cuts):
    bounds = [0, *cuts, len(x)]
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        m.update_state(y[lo:hi], x[lo:hi], None if w is None else w[lo:hi])
    return m


def rel(a, b):
    return abs(a - b) / max(abs(b), 1e-300)


# ------------------------------------------------------------------- against one-shot


@pytest.mark.parametrize("kind", METRICS)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("cuts", [[], [1], [7, 8, 150], list(range(10, 200, 10))])
def test_equals_one_shot_loss(rng, kind, weighted, cuts):
    ignore = -1 if kind in ("sparse", "perplexity") else None
    y, x = data(rng, kind, ignore=ignore)
    w = rng.uniform(0, 2, len(x)) if weighted else None
    m = feed(metric_for(kind, ignore), y, x, w, cuts)
    assert rel(m.result(), one_shot(kind, y, x, w, ignore)) <= 1e-12
    if not cuts:  # one batch: the one-shot loss's bits
        assert m.result() == one_shot(kind, y, x, w, ignore)


@settings(max_examples=40, deadline=None)
@given(cuts=st.lists(st.integers(0, 300), max_size=12).map(sorted),
       kind=st.sampled_from(METRICS), seed=st.integers(0, 2**16))
def test_batch_split_invariance(cuts, kind, seed):
    rng = np.random.default_rng(seed)
    ignore = 2 if kind in ("sparse", "perplexity") else None
    y, x = data(rng, kind, n=300, c=5, dtype=np.float64, ignore=ignore)
    w = rng.uniform(0, 3, 300)
    whole = feed(metric_for(kind, ignore), y, x, w, []).result()
    split = feed(metric_for(kind, ignore), y, x, w, cuts).result()
    assert rel(split, whole) <= 1e-12


def test_three_dimensional_tokens_and_token_weights(rng):
    labels = rng.integers(0, 11, (8, 30))
    labels[:, 25:] = 0
    logits = rng.normal(size=(8, 30, 11)).astype(np.float32)
    w = rng.uniform(0.5, 1.5, (8, 30))
    ppl = Perplexity(mask_token_id=0)
    feed(ppl, labels, logits, w, [3, 5])
    expected = fx.perplexity(labels, logits, ignore_class=0, sample_weight=w)
    assert rel(ppl.result(), expected) <= 1e-12
    assert ppl.count == pytest.approx(w[labels != 0].sum(), rel=1e-14)


# ----------------------------------------------------------------------- against Keras


@pytest.fixture(scope="module")
def keras():
    return pytest.importorskip("keras")


@pytest.mark.parametrize("kind", ["categorical", "sparse", "binary"])
@pytest.mark.parametrize("from_logits", [True, False])
@pytest.mark.parametrize("weighted", [False, True])
def test_matches_keras_metric(rng, keras, kind, from_logits, weighted):
    y, x = data(rng, kind, n=120, c=5)
    if not from_logits:
        x = (np.abs(x) + 0.05) / (np.abs(x) + 0.05).sum(-1, keepdims=True) if kind != "binary" \
            else 1 / (1 + np.exp(-x))
        x = x.astype(np.float32)
    w = rng.uniform(0, 2, len(x)).astype(np.float32) if weighted else None
    extra = {"label_smoothing": 0.1} if kind != "sparse" else {}
    cls = {"categorical": "CategoricalCrossentropy", "sparse": "SparseCategoricalCrossentropy",
           "binary": "BinaryCrossentropy"}[kind]
    ours = getattr(fx.metrics, cls)(from_logits=from_logits, **extra)
    theirs = getattr(keras.metrics, cls)(from_logits=from_logits, **extra)
    assert ours.name == theirs.name
    for lo, hi in [(0, 13), (13, 100), (100, 120)]:
        sw = None if w is None else w[lo:hi]
        ours.update_state(y[lo:hi], x[lo:hi], sw)
        theirs.update_state(y[lo:hi], x[lo:hi], sample_weight=sw)
    assert ours.result() == pytest.approx(float(theirs.result()), rel=2e-6)


def test_ignore_class_matches_keras_with_weights(rng, keras):
    """With sample weights Keras also drops ignored samples from the total weight; without
    them Keras counts them as zeros, which this metric does not (documented)."""
    y, x = data(rng, "sparse", n=90, c=4, ignore=-1)
    w = rng.uniform(0.5, 2, 90).astype(np.float32)
    ours = SparseCategoricalCrossentropy(from_logits=True, ignore_class=-1)
    theirs = keras.metrics.SparseCategoricalCrossentropy(from_logits=True, ignore_class=-1)
    for lo, hi in [(0, 40), (40, 90)]:
        ours.update_state(y[lo:hi], x[lo:hi], w[lo:hi])
        theirs.update_state(y[lo:hi], x[lo:hi], sample_weight=w[lo:hi])
    assert ours.result() == pytest.approx(float(theirs.result()), rel=2e-6)
    assert ours.count == pytest.approx(w[y != -1].sum(), rel=1e-6)


def keras_hub_perplexity(batches, mask_token_id):
    """keras-hub's Perplexity (metrics/perplexity.py) in NumPy: each batch's token mean,
    accumulated as batch_size x mean over batches."""
    agg = n = 0.0
    for y, x in batches:
        lp = x - x.max(-1, keepdims=True)
        lp = lp - np.log(np.exp(lp).sum(-1, keepdims=True))
        ce = -np.take_along_axis(lp, y[..., None], -1)[..., 0]
        mask = (y != mask_token_id) if mask_token_id is not None else np.ones(y.shape)
        agg += y.shape[0] * (ce * mask).sum() / mask.sum()
        n += y.shape[0]
    return 0.0 if n == 0 else math.exp(agg / n)


def test_perplexity_matches_keras_hub_on_equal_batches(rng):
    y = rng.integers(1, 9, (6, 10))
    x = rng.normal(size=(6, 10, 9))
    ppl = Perplexity(mask_token_id=0)
    feed(ppl, y, x, None, [2, 4])  # equal batches with no mask: keras-hub's mean agrees
    assert ppl.result() == pytest.approx(keras_hub_perplexity(
        [(y[:2], x[:2]), (y[2:4], x[2:4]), (y[4:], x[4:])], 0), rel=1e-12)
    assert Perplexity().result() == keras_hub_perplexity([], None) == 0.0


# ---------------------------------------------------------------- state and protocol


@pytest.mark.parametrize("kind", METRICS)
def test_merge_state_is_the_sequential_state(rng, kind):
    ignore = -1 if kind in ("sparse", "perplexity") else None
    y, x = data(rng, kind, ignore=ignore)
    w = rng.uniform(0, 2, len(x))
    seq = feed(metric_for(kind, ignore), y, x, w, [50, 120])
    parts = [metric_for(kind, ignore) for _ in range(3)]
    for p, (lo, hi) in zip(parts, [(0, 50), (50, 120), (120, 200)], strict=True):
        p.update_state(y[lo:hi], x[lo:hi], w[lo:hi])
    merged = metric_for(kind, ignore)
    merged.merge_state(parts)
    assert merged.result() == seq.result()
    assert (merged.total, merged.count) == (seq.total, seq.count)
    single = metric_for(kind, ignore)
    single.merge_state(parts[0])
    assert single.total == parts[0].total


def test_merge_state_refuses_other_options():
    m = SparseCategoricalCrossentropy(from_logits=True)
    with pytest.raises(ValueError, match="from_logits"):
        m.merge_state([SparseCategoricalCrossentropy(from_logits=False)])
    with pytest.raises(TypeError, match="SparseCategoricalCrossentropy"):
        m.merge_state([CategoricalCrossentropy()])


@pytest.mark.parametrize("kind", METRICS)
def test_pickle_and_config_round_trip(rng, kind):
    ignore = 3 if kind in ("sparse", "perplexity") else None
    y, x = data(rng, kind, ignore=ignore)
    m = metric_for(kind, ignore, name="val", dtype="float32")
    m.update_state(y, x)
    back = pickle.loads(pickle.dumps(m))
    assert type(back) is type(m) and back.get_config() == m.get_config()
    assert back.result() == m.result() and isinstance(back.result(), np.float32)
    fresh = type(m).from_config(m.get_config())
    assert fresh.get_config() == m.get_config() and fresh.result() == 0.0
    assert type(m).__module__ == "fastxent.metrics"
    assert repr(m).startswith(type(m).__name__ + "(name='val'")


def test_reset_state_and_call(rng):
    y, x = data(rng, "sparse")
    m = SparseCategoricalCrossentropy(from_logits=True)
    first = m(y, x)
    m.reset_state()
    assert (m.total, m.count, m.result()) == (0.0, 0.0, 0.0)
    assert m(y, x) == first
    assert SparseCategoricalCrossentropy().name == "sparse_categorical_crossentropy"
    assert Perplexity().get_config()["from_logits"] is True


# ------------------------------------------------------------------- empty and ignored


@pytest.mark.parametrize("kind", METRICS)
def test_empty_and_all_ignored_give_zero(kind):
    m = metric_for(kind, -1 if kind in ("sparse", "perplexity") else None)
    assert m.result() == 0.0
    c = 4
    if kind in ("sparse", "perplexity"):
        m.update_state(np.zeros(0, np.int64), np.zeros((0, c)))
        m.update_state(np.full(5, -1), np.full((5, c), np.nan))  # all ignored: NaN unread
    else:
        m.update_state(np.zeros((0, c)), np.zeros((0, c)))
    m.update_state(*(a[:3] for a in data(np.random.default_rng(1), kind, c=c)),
                   sample_weight=np.zeros(3))
    assert m.result() == 0.0 and m.count == 0.0
    assert not math.isnan(m.result())


def test_perplexity_overflow_is_inf():
    m = Perplexity(from_logits=True)
    m.update_state([0], np.array([[-1e4, 1e4]]))
    assert m.result() == math.inf


# ------------------------------------------------------------------------------ errors


@pytest.mark.parametrize("make_it, match", [
    (lambda: CategoricalCrossentropy(from_logits=1), "from_logits"),
    (lambda: CategoricalCrossentropy(label_smoothing=2.0), "label_smoothing"),
    (lambda: BinaryCrossentropy(axis=1.5), "axis"),
    (lambda: SparseCategoricalCrossentropy(ignore_class="pad"), "ignore_class"),
    (lambda: Perplexity(mask_token_id=0.5), "mask_token_id"),
    (lambda: Perplexity(mask_token_id=True), "mask_token_id"),
    (lambda: CategoricalCrossentropy(name=3), "name"),
    (lambda: CategoricalCrossentropy(dtype="int32"), "dtype"),
    (lambda: CategoricalCrossentropy(n_threads="all"), "n_threads"),
])
def test_bad_arguments_are_named(make_it, match):
    with pytest.raises((TypeError, ValueError), match=match):
        make_it()


def test_bad_data_leaves_state_untouched(rng):
    y, x = data(rng, "sparse", c=4)
    m = SparseCategoricalCrossentropy(from_logits=True)
    m.update_state(y, x)
    before = (m.total, m.count)
    bad = y.copy()
    bad[7] = 9
    with pytest.raises(fx.LabelRangeError) as info:
        m.update_state(bad, x)
    assert info.value.position == (7,)
    with pytest.raises(ValueError, match="y_true"):
        CategoricalCrossentropy().update_state(np.zeros((3, 2)), np.ones((3, 4)))
    assert (m.total, m.count) == before


def test_evaluate_bad_arguments(rng):
    y, x = data(rng, "sparse")
    m = SparseCategoricalCrossentropy(from_logits=True)
    with pytest.raises(ValueError, match="batch_rows"):
        evaluate(m, y, x, batch_rows=0)
    with pytest.raises(TypeError, match="progress"):
        evaluate(m, y, x, progress="yes")
    with pytest.raises(TypeError, match="metric"):
        evaluate(fx.SparseCategoricalCrossentropy(), y, x)
    with pytest.raises(ValueError, match="axis"):
        evaluate(SparseCategoricalCrossentropy(axis=0), y, x)
    with pytest.raises(ValueError, match="rows"):
        evaluate(m, y[:-1], x)


# ------------------------------------------------------------ threads and allocations


@pytest.mark.parametrize("kind", METRICS)
def test_thread_count_does_not_change_a_bit(rng, kind):
    ignore = -1 if kind in ("sparse", "perplexity") else None
    y, x = data(rng, kind, n=3000, c=33, ignore=ignore)
    w = rng.uniform(0, 2, len(x))
    results = {
        nt: feed(metric_for(kind, ignore, n_threads=nt), y, x, w, [1000, 1700]).result()
        for nt in (1, 2, 3)
    }
    assert len(set(results.values())) == 1, results


@pytest.mark.parametrize("kind", ["categorical", "sparse", "binary"])
def test_update_allocates_nothing_of_size_n_by_c(rng, kind):
    y, x = data(rng, kind, n=4000, c=250)  # 4 MB of float32 logits
    w = rng.uniform(0, 2, 4000)
    m = metric_for(kind)
    m.update_state(y[:10], x[:10], w[:10])  # warm caches of options and plans
    tracemalloc.start()
    try:
        m.update_state(y, x, w)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < x.nbytes / 8, peak  # per-row float64 vectors only (32 KB each here)


# ------------------------------------------------------------------------------ evaluate


def test_evaluate_equals_one_call_and_slices_weights(rng, tmp_path):
    y, x = data(rng, "sparse", n=1001, c=7)
    w = rng.uniform(0, 2, 1001)
    path = tmp_path / "logits.f32"
    x.tofile(path)
    mm = np.memmap(path, dtype=np.float32, mode="r", shape=x.shape)
    m = SparseCategoricalCrossentropy(from_logits=True)
    got = evaluate(m, y, mm, sample_weight=w, batch_rows=64, progress=False)
    assert rel(got, one_shot("sparse", y, x, w)) <= 1e-12
    m.reset_state()
    assert evaluate(m, y, mm, sample_weight=2.0, progress=False) == one_shot("sparse", y, x)


def test_evaluate_progress_bar(rng, capsys):
    pytest.importorskip("tqdm")
    y, x = data(rng, "sparse", n=100)
    evaluate(SparseCategoricalCrossentropy(name="val_xent"), y, np.abs(x), batch_rows=10,
             progress=True)
    assert "val_xent" in capsys.readouterr().err
    evaluate(SparseCategoricalCrossentropy(), y, np.abs(x), batch_rows=10)  # auto: short run
    assert capsys.readouterr().err == ""


LARGE_SCRIPT = textwrap.dedent("""
    import resource, sys, threading, time
    import numpy as np, psutil
    from fastxent.metrics import SparseCategoricalCrossentropy, evaluate
    path, n, c, budget = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    labels = np.arange(n, dtype=np.int64) * 7919 % c
    logits = np.memmap(path, dtype=np.float32, mode="r", shape=(n, c))
    m = SparseCategoricalCrossentropy(from_logits=True)
    evaluate(m, labels[:64], logits[:64], progress=False)  # warm up: the code's pages
    m.reset_state()
    proc = psutil.Process()
    base = proc.memory_info().rss
    peak = [base]
    done = threading.Event()
    def watch():
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.002)
    t = threading.Thread(target=watch); t.start()
    full = evaluate(m, labels, logits, batch_rows=2048, progress=False)
    done.set(); t.join()
    peak[0] = max(peak[0], proc.memory_info().rss)
    part = evaluate(SparseCategoricalCrossentropy(from_logits=True), labels[:5000],
                    logits[:5000], batch_rows=777, progress=False)
    print(repr(full), repr(part), peak[0] - base, budget)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RSS and madvise: Linux")
def test_evaluate_memmap_four_times_the_memory_budget(tmp_path):
    """A 400 MB float32 logits file through evaluate with a 100 MB RSS budget (sampled
    every 2 ms in the child process): the pages of each chunk are released after it."""
    pytest.importorskip("psutil")
    n, c, budget = 100_000, 1000, 100_000_000  # 400 MB of logits, 100 MB of RSS
    path = tmp_path / "logits.f32"
    rng = np.random.default_rng(5)
    with open(path, "wb") as f:  # written in 40 MB pieces: the test process stays small too
        for _ in range(10):
            f.write(rng.standard_normal((n // 10, c), dtype=np.float32).tobytes())
    assert os.path.getsize(path) >= 4 * budget
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    out = subprocess.run([sys.executable, "-c", LARGE_SCRIPT, str(path), str(n), str(c),
                          str(budget)], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    full, part, grew, _ = (float(v) for v in out.stdout.split())
    assert grew < budget, f"RSS grew by {grew / 2**20:.0f} MB"
    labels = np.arange(n, dtype=np.int64) * 7919 % c
    first = np.fromfile(path, dtype=np.float32, count=5000 * c).reshape(5000, c)
    assert rel(part, one_shot("sparse", labels[:5000], first)) <= 1e-12
    assert math.isfinite(full) and abs(full - (math.log(c) + 0.5)) < 0.05  # N(0,1) logits


# -------------------------------------------------------------------------------- Dask


def test_import_fastxent_does_not_import_dask():
    code = ("import sys, numpy as np, fastxent, fastxent.metrics as m; "
            "x = m.SparseCategoricalCrossentropy(); x.update_state([0], np.ones((1, 2))); "
            "print('dask' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.stdout.strip() == "False", out.stderr


@pytest.mark.parametrize("kind", METRICS)
def test_dask_blocks_equal_numpy_batches_bitwise(rng, kind):
    da = pytest.importorskip("dask.array")
    import dask

    ignore = -1 if kind in ("sparse", "perplexity") else None
    y, x = data(rng, kind, n=500, c=6, ignore=ignore)
    w = rng.uniform(0, 2, 500)
    cuts = [120, 240, 360, 480]
    expected = feed(metric_for(kind, ignore), y, x, w, cuts).result()
    ychunks = (120,) if y.ndim == 1 else (120, 6)
    results = set()
    for workers in (1, 2, 4):
        with dask.config.set(scheduler="threads", num_workers=workers):
            m = metric_for(kind, ignore)
            m.update_state(da.from_array(y, chunks=ychunks), da.from_array(x, chunks=(120, 6)),
                           da.from_array(w, chunks=120))
            results.add(m.result())
    assert results == {expected}
    with dask.config.set(scheduler="sync"):
        m = metric_for(kind, ignore)
        m.update_state(y, da.from_array(x, chunks=(120, 6)), w)  # NumPy y and w, aligned
        assert m.result() == expected


def test_dask_two_dimensional_blocks_and_bad_label_position(rng):
    da = pytest.importorskip("dask.array")
    labels = rng.integers(1, 9, (20, 30))
    labels[:, 24:] = 0
    logits = rng.normal(size=(20, 30, 9))
    ppl = Perplexity(mask_token_id=0)
    ppl.update_state(da.from_array(labels, chunks=(5, 10)),
                     da.from_array(logits, chunks=(5, 10, 9)))
    assert rel(ppl.result(), fx.perplexity(labels, logits, ignore_class=0)) <= 1e-12
    bad = labels.copy()
    bad[13, 17] = 99
    with pytest.raises(fx.LabelRangeError) as info:
        Perplexity().update_state(da.from_array(bad, chunks=(5, 10)),
                                  da.from_array(logits, chunks=(5, 10, 9)))
    assert info.value.position == (13, 17)


# ------------------------------------------------------- faults on a real LocalCluster


def _slow_logits(block_info=None, *, seed, n_cols, delay):
    """Seeded normals for a block (the same wherever and however often it is computed),
    slowly, so that a worker can be killed while blocks are running."""
    import time

    lo, hi = block_info[None]["array-location"][0]
    time.sleep(delay)
    return np.random.default_rng([seed, lo]).standard_normal((hi - lo, n_cols),
                                                              dtype=np.float32)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SIGKILL of a worker")
def test_worker_killed_mid_evaluation_gives_the_same_bits():
    """2 worker processes on 127.0.0.1; one is SIGKILLed while the metric's blocks run: its
    blocks are recomputed on the other worker (or its restarted self) and the result is
    bitwise the undisturbed one, and the in-process one."""
    import signal
    import threading
    import time

    distributed = pytest.importorskip("distributed")
    import cloudpickle
    import dask
    import dask.array as da

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    src = os.path.dirname(os.path.dirname(os.path.abspath(fx.__file__)))
    path = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)
    n_blocks, rows, n_cols, delay = 40, 256, 300, 0.1
    labels = (np.arange(n_blocks * rows) * 7919 % n_cols).astype(np.int64)
    labels[::9] = -1

    def inputs(delay=delay):
        logits = da.map_blocks(_slow_logits, seed=11, n_cols=n_cols, delay=delay,
                               chunks=((rows,) * n_blocks, (n_cols,)), dtype=np.float32,
                               meta=np.empty((0, 0), np.float32))
        return da.from_array(labels, chunks=rows), logits

    def run(**kw):
        m = SparseCategoricalCrossentropy(from_logits=True, ignore_class=-1)
        m.update_state(*inputs(**kw))
        return m

    with dask.config.set(scheduler="sync"):
        local = run(delay=0.0)
    with dask.config.set({"distributed.scheduler.allowed-failures": 5}), distributed.LocalCluster(
        n_workers=2, processes=True, threads_per_worker=1, host="127.0.0.1",
        dashboard_address="127.0.0.1:0", memory_limit=320_000_000,
        env={"PYTHONPATH": path, "OMP_NUM_THREADS": "1"},
    ) as cluster, distributed.Client(cluster) as client:
        quiet = run()
        victim = sorted(client.run(os.getpid).items())[0][1]
        box = {}
        worker = threading.Thread(target=lambda: box.setdefault("m", run()))
        worker.start()
        time.sleep(0.6)  # about a third of the blocks done
        alive_at_kill = worker.is_alive()
        os.kill(victim, signal.SIGKILL)
        worker.join(timeout=60)
        assert not worker.is_alive()
        assert alive_at_kill, "the evaluation ended before the worker was killed"
        disturbed = box["m"]
        assert victim not in client.run(os.getpid).values()
    assert (disturbed.total, disturbed.count) == (quiet.total, quiet.count)
    assert disturbed.result() == quiet.result() == local.result()


@pytest.mark.parametrize("weight_shape", [None, (6,), (6, 7)])
def test_sequences_match_keras(rng, keras, weight_shape):
    """(batch, time, classes) with per-sequence or per-token weights: Keras reduces each
    sequence to its mean first; the weighted means agree."""
    y = rng.integers(0, 5, (6, 7))
    x = rng.normal(size=(6, 7, 5)).astype(np.float32)
    w = None if weight_shape is None else rng.uniform(0.1, 2, weight_shape).astype(np.float32)
    ours = SparseCategoricalCrossentropy(from_logits=True)
    theirs = keras.metrics.SparseCategoricalCrossentropy(from_logits=True)
    for lo, hi in [(0, 2), (2, 6)]:
        sw = None if w is None else w[lo:hi]
        ours.update_state(y[lo:hi], x[lo:hi], sw)
        theirs.update_state(y[lo:hi], x[lo:hi], sample_weight=sw)
    assert ours.result() == pytest.approx(float(theirs.result()), rel=2e-6)


@pytest.mark.parametrize("mode", ["r+", "c"])
def test_evaluate_keeps_changes_to_a_writable_memmap(rng, tmp_path, mode):
    y, x = data(rng, "sparse", n=3000, c=64)
    path = tmp_path / "logits.f32"
    x.tofile(path)
    mm = np.memmap(path, dtype=np.float32, mode=mode, shape=x.shape)
    mm[::7] += 1.0  # changed in memory, not flushed
    x[::7] += 1.0
    m = SparseCategoricalCrossentropy(from_logits=True)
    got = evaluate(m, y, mm, batch_rows=100, progress=False)
    assert np.array_equal(mm, x)
    assert rel(got, one_shot("sparse", y, x)) <= 1e-12


def test_name_and_dtype_checked_as_the_losses_are():
    """One check for losses and metrics: the same messages, the same accepted dtypes."""
    for cls in (CategoricalCrossentropy, fx.CategoricalCrossentropy):
        with pytest.raises(TypeError, match="name must be a string"):
            cls(name=3)
        with pytest.raises(ValueError, match="dtype must be None .*'float32' or 'float64'"):
            cls(dtype="float16")
        with pytest.raises(TypeError, match="dtype must be None, 'float32' or 'float64'"):
            cls(dtype=object())
    assert CategoricalCrossentropy(dtype=np.float32).dtype == "float32"
