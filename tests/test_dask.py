"""fastxent.dask on a real distributed.LocalCluster: the NumPy path's results, block by block.

One module-scoped cluster (2 worker processes, 1 thread each, loopback only, 320 MB memory
limit per worker) runs the tests that compute, the two largest on a new one of their own.
The comparisons are with the NumPy API of fastxent (itself checked against
tests/reference.py, Keras and PyTorch in test_losses.py), and, for the fit, with
SoftmaxRegression fitted in memory.  Two tests generate a dataset of
more than four times a worker's memory limit lazily on the workers and check that neither a
worker (of a cluster started for the test) nor this process ever held
it, and that the workers sent each other and this process only small results.
"""

import contextlib
import doctest
import functools
import importlib.util
import os
import subprocess
import sys
import threading
import warnings

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")
da = pytest.importorskip("dask.array")
pytest.importorskip("sklearn")

import cloudpickle  # noqa: E402  (a dependency of distributed)
import dask  # noqa: E402
import dask.bag  # noqa: E402
import psutil  # noqa: E402  (a dependency of distributed)
import reference as R  # noqa: E402
from dask.array.core import PerformanceWarning  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from test_focal import CLASSES as FAMILY_CLASSES  # noqa: E402
from test_focal import FUNCTIONS as FAMILY_FUNCTIONS  # noqa: E402
from test_focal import OPTIONS as FAMILY_OPTIONS  # noqa: E402
from test_focal import case as family_case  # noqa: E402
from util import (  # noqa: E402
    assert_close,
    logits,
    make_data,
)

import fastxent as fx  # noqa: E402
import fastxent.dask as fxd  # noqa: E402
from fastxent.sklearn import SoftmaxRegression  # noqa: E402

# The lazy data generators below run on the workers, which cannot import this test module.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

# bytes per worker: an idle worker holds ~150 MB and a fit step ~85 MB more (the nanny kills
# at 95%), so 250 MB left a worker 2 MB of headroom
MEMORY_LIMIT = 320_000_000
CLASSES = {
    "categorical": fx.CategoricalCrossentropy,
    "sparse": fx.SparseCategoricalCrossentropy,
    "binary": fx.BinaryCrossentropy,
}
NUMPY_FUNCTIONS = {
    "categorical": fx.categorical_crossentropy,
    "sparse": fx.sparse_categorical_crossentropy,
    "binary": fx.binary_crossentropy,
}
DASK_FUNCTIONS = {
    "categorical": fxd.categorical_crossentropy,
    "sparse": fxd.sparse_categorical_crossentropy,
    "binary": fxd.binary_crossentropy,
}
# "mean" is an alias the loss classes resolve to "sum_over_batch_size" when constructed.
REDUCTIONS = ["none", "sum", "sum_over_batch_size", "mean_with_sample_weight"]


@contextlib.contextmanager
def local_cluster(work_stealing=True):
    """A LocalCluster of 2 worker processes (1 thread, MEMORY_LIMIT each) on 127.0.0.1 and
    a Client of it, the default while it is open; ``work_stealing=False`` turns the
    scheduler's work stealing off."""
    # Workers import the same fastxent as this process (in place in development, installed
    # in CI): put its parent directory first on their path.
    src = os.path.dirname(os.path.dirname(os.path.abspath(fx.__file__)))
    path = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)
    # No spilling to disk and no pausing: a worker holds its data in memory or is killed
    # at 95% of its limit, so the memory checks below cannot be fooled by a spill.
    no_spill = {"distributed.worker.memory." + k: False for k in ("target", "spill", "pause")}
    long_logs = {"distributed.admin.low-level-log-length": 100_000}  # transfers, for counting
    stealing = {"distributed.scheduler.work-stealing": work_stealing}
    with dask.config.set({**no_spill, **long_logs, **stealing}), distributed.LocalCluster(
        n_workers=2, processes=True, threads_per_worker=1, host="127.0.0.1",
        dashboard_address="127.0.0.1:0", memory_limit=MEMORY_LIMIT, env={"PYTHONPATH": path},
    ) as cluster, distributed.Client(cluster) as c:
        # The workers run this fastxent and got the configuration above.
        assert set(c.run(lambda: fx.__file__).values()) == {fx.__file__}
        assert not any(c.run(lambda: dask.config.get("distributed.worker.memory.spill")).values())
        c.started_workers = set(c.scheduler_info()["workers"])
        yield c


@pytest.fixture(scope="module")
def client():
    with local_cluster() as c:
        yield c


@pytest.fixture
def fresh_client(client):
    """A cluster of its own for one test: new worker processes, whose peak memory is the
    test's.  (The module's cluster is the default client again afterwards.)

    Work stealing is off: it moves blocks to balance the workers' load, more of them the
    busier the machine, so the bytes the workers send would measure the machine's load;
    without it they measure what the graph itself moves."""
    if not sys.platform.startswith("linux"):
        pytest.skip("a worker's peak memory is read from Linux's /proc/self/status")
    with local_cluster(work_stealing=False) as c:
        assert not any(c.run(lambda: dask.config.get("distributed.scheduler.work-stealing"),
                             ).values())
        assert not c.run_on_scheduler(lambda dask_scheduler: "stealing"
                                      in dask_scheduler.extensions)
        yield c


# ------------------------------------------------------------------------ helpers


def make_case(rng, kind, shape, axis, dtype, from_logits=True, ignore_class=None):
    """(y_true, y_pred) NumPy arrays for a kind ("sparse" is util's "sparse_categorical")."""
    util_kind = "sparse_categorical" if kind == "sparse" else kind
    return make_data(rng, util_kind, shape, axis, dtype, from_logits, ignore_class)


def options(kind, n_classes, rng, from_logits=True):
    """Every option of a kind at once (class/pos weights, smoothing, ignore, z-loss)."""
    if kind == "categorical":
        opts = {"label_smoothing": 0.1, "class_weight": rng.uniform(0.3, 3.0, n_classes)}
    elif kind == "sparse":
        opts = {"label_smoothing": 0.1, "class_weight": rng.uniform(0.3, 3.0, n_classes),
                "ignore_class": -1}
    else:
        opts = {"label_smoothing": 0.1, "pos_weight": rng.uniform(0.3, 3.0, n_classes)}
    if kind != "binary" and from_logits:
        opts["z_loss"] = 0.01
    return {"from_logits": from_logits, **opts}


def on_dask(obj):
    """The fastxent.dask class with the options of a NumPy loss object."""
    return getattr(fxd, type(obj).__name__).from_config(obj.get_config())


def batch_chunks(chunks, axis):
    return tuple(c for i, c in enumerate(chunks) if i != axis % len(chunks))


def worker_peak_rss(client) -> dict:
    """Peak resident memory of each worker process, in bytes: VmHWM on Linux, the peak
    since the worker started (ru_maxrss would include its forking parent's peak)."""

    def peak():
        with open("/proc/self/status") as f:
            return 1024 * next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))

    return client.run(peak)


class RssSampler:
    """Samples this process's resident memory every 20 ms while active."""

    def __enter__(self):
        self.process = psutil.Process()
        self.start = self.process.memory_info().rss
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @property
    def growth(self) -> int:
        return self.peak - self.start


def reset_transfer_logs(client):
    client.run(lambda dask_worker: dask_worker.transfer_outgoing_log.clear())


def bytes_sent_by_workers(client, exclude=()) -> int:
    """Bytes the workers sent, to each other and to clients, since reset_transfer_logs;
    without the blocks of the arrays named in ``exclude``."""

    def sent(dask_worker):
        return sum(n for entry in dask_worker.transfer_outgoing_log
                   for key, n in entry["keys"].items()
                   if (key[0] if isinstance(key, tuple) else key) not in exclude)

    return sum(client.run(sent).values())


def assert_nothing_gathered(client, sampler, data_bytes, sent_bytes, max_sent):
    """The dataset was never in one place: not here, not on a worker, no worker restarted,
    and the workers sent no more than ``max_sent`` bytes in all."""
    assert data_bytes >= 4 * MEMORY_LIMIT
    assert sent_bytes < max_sent, f"the workers sent {sent_bytes / 1e6:.1f} MB"
    assert sampler.growth < 150e6, f"this process grew by {sampler.growth / 1e6:.0f} MB"
    peaks = worker_peak_rss(client)
    assert all(p < MEMORY_LIMIT for p in peaks.values()), peaks
    assert set(client.scheduler_info()["workers"]) == client.started_workers, (
        "a worker was restarted (killed for exceeding its memory limit?)"
    )


# Lazily generated data: each block from its own seeded generator, so that the same block
# can be regenerated anywhere (on a worker, or here for the oracle) without the others.
# Rows are drawn (with a per-block generator) from a seeded pool of 4096 random rows: as
# random as needed here, and about as cheap to make as a copy, so that the big tests time
# the losses rather than the random number generator.

POOL_ROWS = 4096


@functools.lru_cache(maxsize=4)
def _row_pool(seed, n_cols, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal((POOL_ROWS, n_cols), dtype=dtype)


def _normal_block(block_info=None, *, seed, n_cols):
    lo, hi = block_info[None]["array-location"][0]
    rows = np.random.default_rng([seed, lo]).integers(0, POOL_ROWS, hi - lo)
    return _row_pool(seed, n_cols)[rows]


def _label_block(block_info=None, *, seed, low, high):
    lo, hi = block_info[None]["array-location"][0]
    return np.random.default_rng([seed, lo, 1]).integers(low, high, hi - lo)


def _planted_features(block_info=None, *, seed, n_cols, dtype=np.float64, out=None):
    """Pooled noise around a seeded center per class, the classes being the labels that
    ``_label_block(seed=seed, low=0, high=3)`` gives this block: learnable, yet X and y are
    computed independently (so each block's X is made where its objective is evaluated).
    Written into ``out`` when given."""
    lo, hi = block_info[None]["array-location"][0]
    y = _label_block(block_info, seed=seed, low=0, high=3)
    centers = np.random.default_rng(seed + 1).standard_normal((3, n_cols)).astype(dtype)
    rows = np.random.default_rng([seed, lo]).integers(0, POOL_ROWS, hi - lo)
    x = np.take(_row_pool(seed, n_cols, dtype), rows, axis=0, out=out, mode="clip")
    x += centers[y]
    return x


def _planted_rows(block_info=None, *, seed, n_cols):
    """A block of ``_planted_features`` with its labels (``_label_block(seed=seed, low=0,
    high=3)``) as one more column: features and labels made by one task, as when both are
    read from one file's row group, so that they lie on the same worker."""
    lo, hi = block_info[None]["array-location"][0]
    out = np.empty((hi - lo, n_cols + 1))
    _planted_features(block_info, seed=seed, n_cols=n_cols, out=out[:, :n_cols])
    out[:, n_cols] = _label_block(block_info, seed=seed, low=0, high=3)
    return out


def lazy_normal(n_rows, n_cols, chunk_rows, seed):
    rows = (chunk_rows,) * (n_rows // chunk_rows)
    assert sum(rows) == n_rows
    return da.map_blocks(_normal_block, chunks=(rows, (n_cols,)), dtype=np.float32,
                         seed=seed, n_cols=n_cols)


def block_bounds(n_rows, chunk_rows):
    return [(lo, lo + chunk_rows) for lo in range(0, n_rows, chunk_rows)]


def info(lo, hi):
    return {None: {"array-location": [(lo, hi)]}}


# =========================================================== per-sample functions

LAYOUTS = {
    # name: (y_pred shape, class axis, chunks); blocks along every non-class axis
    "rows": ((103, 7), -1, (20, 7)),
    "middle": ((6, 5, 8), 1, (2, 5, 3)),
    "first": ((4, 50), 0, (4, 16)),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("kind", list(CLASSES))
def test_per_sample_functions_equal_numpy(client, rng, kind, layout, dtype):
    shape, axis, chunks = LAYOUTS[layout]
    from_logits = layout != "first"  # probabilities too, once per kind and dtype
    opts = options(kind, shape[axis], rng, from_logits)
    y, x = make_case(rng, kind, shape, axis, dtype, from_logits, opts.get("ignore_class"))
    x_d = da.from_array(x, chunks=chunks)
    y_d = da.from_array(y, chunks=batch_chunks(chunks, axis) if kind == "sparse" else chunks)

    lazy = DASK_FUNCTIONS[kind](y_d, x_d, axis=axis, **opts)

    assert isinstance(lazy, da.Array)
    assert lazy.dtype == dtype
    assert lazy.chunks == batch_chunks(x_d.chunks, axis)
    expected = NUMPY_FUNCTIONS[kind](y, x, axis=axis, **opts)
    # Rows are independent: the blocks give the NumPy path's values bit for bit.
    np.testing.assert_array_equal(lazy.compute(), expected)
    assert_close(lazy.compute(), R.per_sample(
        "sparse_categorical" if kind == "sparse" else kind, y, x.astype(np.float64),
        axis=axis, **opts), dtype)


def test_core_package_does_not_import_dask():
    code = ("import sys, fastxent, fastxent.sklearn; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'dask', 'distributed'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}, check=True)
    assert out.stdout.strip() == "[]"


def test_docstring_examples():
    failures, tried = doctest.testmod(fxd, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert tried > 10 and failures == 0


def test_dask_classes_are_the_numpy_classes_on_dask_arrays(client, rng):
    opts = dict(from_logits=True, ignore_class=0, label_smoothing=0.1, reduction="sum")
    loss_fn = fxd.SparseCategoricalCrossentropy(**opts)
    numpy_fn = fx.SparseCategoricalCrossentropy(**opts)
    assert isinstance(loss_fn, fx.SparseCategoricalCrossentropy)
    assert loss_fn.get_config() == numpy_fn.get_config()
    assert type(loss_fn.from_config(loss_fn.get_config())) is fxd.SparseCategoricalCrossentropy
    assert repr(loss_fn).startswith("SparseCategoricalCrossentropy(")
    y, x = make_case(rng, "sparse", (40, 5), -1, np.float32)
    lazy = loss_fn(y, x)  # NumPy inputs are converted: the result is lazy all the same
    assert isinstance(lazy, da.Array) and lazy.shape == () and lazy.dtype == np.float64
    assert_close(lazy.compute(), numpy_fn(y, x))
    with pytest.raises(NotImplementedError, match="gradient_hessian is not available on dask"):
        loss_fn.gradient_hessian(y, x)


def test_one_row_y_pred(client, rng):
    x = logits(rng, (6,))
    out = fxd.sparse_categorical_crossentropy(4, da.from_array(x), from_logits=True)
    assert out.shape == ()
    assert out.compute() == fx.sparse_categorical_crossentropy(4, x, from_logits=True)


# ======================================================= loss objects, reductions


@pytest.mark.parametrize("weights", ["none", "dask_leading"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("kind", list(CLASSES))
def test_loss_objects_equal_numpy(client, rng, kind, reduction, weights):
    shape, axis, chunks = (9, 10, 6), -1, (5, 6, 6)  # blocks along batch and sequence
    opts = options(kind, shape[axis], rng)
    y, x = make_case(rng, kind, shape, axis, np.float64, True, opts.get("ignore_class"))
    sw = None if weights == "none" else rng.uniform(0.0, 2.0, shape[0])
    obj = CLASSES[kind](reduction=reduction, **opts)
    x_d = da.from_array(x, chunks=chunks)
    sw_d = None if sw is None else da.from_array(sw, chunks=5)

    lazy_loss = on_dask(obj)(y, x_d, sw_d)
    lazy_pair = on_dask(obj).loss_and_grad(y, x_d, sw_d)
    value, (value2, grad) = dask.compute(lazy_loss, lazy_pair)

    want, want_grad = obj.loss_and_grad(y, x, sw)
    if reduction == "none":
        assert lazy_loss.shape == want.shape and lazy_loss.dtype == want.dtype
        np.testing.assert_array_equal(value, want)
        np.testing.assert_array_equal(value2, want)
        np.testing.assert_array_equal(grad, want_grad)
    else:
        assert lazy_loss.shape == () and lazy_loss.dtype == np.float64
        assert_close(value, want)
        assert_close(value2, want)
        assert_close(grad, want_grad)
    assert lazy_pair[1].chunks == x_d.chunks and grad.dtype == x.dtype


@pytest.mark.parametrize("form", ["numpy_full", "numpy_leading", "trailing_one", "scalar",
                                  "dask_full", "dask_row"])
def test_sample_weight_forms(client, rng, form):
    shape = (8, 6, 5)
    y, x = make_case(rng, "sparse", shape, -1, np.float64, True, ignore_class=-1)
    obj = fx.SparseCategoricalCrossentropy(from_logits=True, ignore_class=-1,
                                           reduction="mean_with_sample_weight")
    sw = {
        "numpy_full": rng.uniform(0, 2, (8, 6)),
        "numpy_leading": rng.uniform(0, 2, 8),
        "trailing_one": rng.uniform(0, 2, (8, 6, 1)),
        "scalar": 1.7,
        "dask_full": rng.uniform(0, 2, (8, 6)),
        "dask_row": rng.uniform(0, 2, (1, 6)),
    }[form]
    sw_arg = da.from_array(sw, chunks=3) if form.startswith("dask") else sw
    value, grad = dask.compute(*on_dask(obj).loss_and_grad(y, da.from_array(x, chunks=(3, 2, 5)),
                                                  sw_arg))
    want, want_grad = obj.loss_and_grad(y, x, sw)
    assert_close(value, want)
    assert_close(grad, want_grad)


def test_float32_reduced_loss_and_grad(client, rng):
    y, x = make_case(rng, "sparse", (500, 30), -1, np.float32, True)
    obj = fx.SparseCategoricalCrossentropy(from_logits=True, label_smoothing=0.2)
    value, grad = dask.compute(*on_dask(obj).loss_and_grad(y, da.from_array(x, chunks=(64, 30))))
    want, want_grad = obj.loss_and_grad(y, x)
    assert grad.dtype == np.float32
    assert_close(value, want, np.float32)
    assert_close(grad, want_grad, np.float32)


def test_workers_keep_no_gradient_blocks(client, rng):
    """Workers turn fastxent's gradient block cache off (their memory is Dask's); the
    client process keeps its own setting."""
    before = fx.buffer_cache_info()["limit_bytes"]
    x = rng.standard_normal((4096, 600)).astype(np.float32)  # 2.4 MB blocks of 1024 rows
    y = rng.integers(0, 600, 4096)
    loss_fn = fxd.SparseCategoricalCrossentropy(from_logits=True)
    loss, grad = loss_fn.loss_and_grad(da.from_array(y, chunks=1024),
                                       da.from_array(x, chunks=(1024, 600)))
    dask.compute(loss, grad)
    limits = client.run(lambda: fx.buffer_cache_info()["limit_bytes"])
    assert limits and all(v == 0 for v in limits.values())
    assert fx.buffer_cache_info()["limit_bytes"] == before


def test_means_are_exact_not_means_of_block_means(client, rng):
    # Blocks of very different sizes and ignored fractions: averaging block means is wrong.
    x = logits(rng, (100, 4))
    y = rng.integers(0, 4, 100)
    y[:3] = -1  # the small block is mostly ignored...
    y[3:40] = np.where(rng.random(37) < 0.6, -1, y[3:40])
    chunks = ((4, 96), (4,))
    obj = fx.SparseCategoricalCrossentropy(from_logits=True, ignore_class=-1)
    value, grad = dask.compute(*on_dask(obj).loss_and_grad(y, da.from_array(x, chunks=chunks)))
    want, want_grad = obj.loss_and_grad(y, x)
    assert_close(value, want)
    assert_close(grad, want_grad)
    assert on_dask(obj)(da.from_array(y, chunks=(4, 96)), da.from_array(x, chunks=chunks)
                    ).compute() == pytest.approx(want, rel=1e-12)
    block_means = [obj(y[:4], x[:4]), obj(y[4:], x[4:])]
    assert abs(np.mean(block_means) - want) > 1e-2  # the wrong answer is far away


@pytest.mark.parametrize("reduction", REDUCTIONS[1:])
def test_reduced_loss_bits_and_the_chunking(client, rng, reduction):
    """What the reduced loss promises (docs/guide/dask.md): one chunk gives the NumPy loss's
    bits; a given chunking gives the same bits on the cluster and on the synchronous scheduler;
    other chunkings combine other block sums, so only their last bits may move (within
    1e-14 relative); gradients do not depend on the chunking unless the denominator is a sum
    of sample weights."""
    n, c = 4099, 33  # 5 of the kernels' fixed blocks of rows for 33 classes
    x = (rng.standard_normal((n, c)) * 5).astype(np.float32)
    y = rng.integers(0, c, n)
    y[::7] = -1
    sw = rng.uniform(0.1, 3.0, n)
    masked = fx.SparseCategoricalCrossentropy(from_logits=True, ignore_class=-1,
                                              reduction=reduction)
    plain = fx.SparseCategoricalCrossentropy(from_logits=True, reduction=reduction)
    for obj, labels, weights in ((masked, y, sw), (plain, np.abs(y), None)):
        want, want_grad = obj.loss_and_grad(labels, x, weights)
        for rows in (n, 1000, 777, 64):
            x_d = da.from_array(x, chunks=(rows, c))
            y_d = da.from_array(labels, chunks=rows)
            w_d = None if weights is None else da.from_array(weights, chunks=rows)
            lazy = on_dask(obj)(y_d, x_d, w_d)
            value = lazy.compute()
            assert value == lazy.compute(scheduler="sync"), rows
            if rows == n:
                assert value == want
            assert value == pytest.approx(want, rel=1e-14, abs=0), rows
            value2, grad = dask.compute(*on_dask(obj).loss_and_grad(y_d, x_d, w_d))
            assert value2 == pytest.approx(want, rel=1e-14, abs=0), rows
            if reduction != "mean_with_sample_weight" or weights is None:  # a count, exact
                np.testing.assert_array_equal(grad, want_grad)
            else:
                assert_close(grad, want_grad, np.float32)


@pytest.mark.parametrize("case", ["all_ignored", "zero_weights", "empty"])
def test_zero_denominator_gives_zero(client, rng, case):
    obj = fx.SparseCategoricalCrossentropy(from_logits=True, ignore_class=-1,
                                           reduction="mean_with_sample_weight")
    x = logits(rng, (0 if case == "empty" else 12, 3))
    y = np.full(len(x), -1) if case == "all_ignored" else rng.integers(0, 3, len(x))
    sw = np.zeros(len(x)) if case == "zero_weights" else None
    x_d = da.from_array(x, chunks=(5, 3))
    value, grad = dask.compute(*on_dask(obj).loss_and_grad(y, x_d, sw))
    assert on_dask(obj)(y, x_d, sw).compute() == value == obj(y, x, sw) == 0.0
    np.testing.assert_array_equal(grad, obj.gradient(y, x, sw))
    assert not np.any(grad)


def test_split_class_axis_is_rechunked_with_a_warning(client, rng):
    y, x = make_case(rng, "categorical", (20, 9, 12), 1, np.float64)
    obj = fx.CategoricalCrossentropy(from_logits=True, axis=1)
    x_d = da.from_array(x, chunks=(5, 4, 6))  # the 9 classes in 3 chunks
    with pytest.warns(PerformanceWarning, match=r"class axis \(axis=1, 9 classes\) is split"):
        lazy_loss, lazy_grad = on_dask(obj).loss_and_grad(y, x_d)
    assert lazy_grad.chunks == ((5, 5, 5, 5), (9,), (6, 6))
    value, grad = dask.compute(lazy_loss, lazy_grad)
    want, want_grad = obj.loss_and_grad(y, x)
    assert_close(value, want)
    assert_close(grad, want_grad)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one chunk along the class axis: no warning
        on_dask(obj)(y, da.from_array(x, chunks=(5, 9, 6)))


def test_wide_split_class_axis_is_rechunked_to_smaller_row_blocks(client, rng):
    # Merging 6 chunks of 50 classes would make 240 kB blocks, above array.chunk-size:
    # the rows are then split further so that a block of whole rows stays near that size.
    y, x = make_case(rng, "sparse", (200, 300), -1, np.float64)
    obj = fx.SparseCategoricalCrossentropy(from_logits=True)
    with dask.config.set({"array.chunk-size": "64KiB"}), pytest.warns(PerformanceWarning):
        lazy_loss, lazy_grad = on_dask(obj).loss_and_grad(y, da.from_array(x, chunks=(100, 50)))
    assert lazy_grad.chunks[1] == (300,)
    assert max(lazy_grad.chunks[0]) * 300 * 8 <= 64 * 1024 < 100 * 300 * 8
    value, grad = dask.compute(lazy_loss, lazy_grad)
    want, want_grad = obj.loss_and_grad(y, x)
    assert_close(value, want)
    assert_close(grad, want_grad)


def test_gradient_matches_loss_and_grad(client, rng):
    y, x = make_case(rng, "binary", (30, 4), -1, np.float64)
    obj = fx.BinaryCrossentropy(from_logits=True, reduction="sum")
    grad = on_dask(obj).gradient(y, da.from_array(x, chunks=(7, 4))).compute()
    assert_close(grad, obj.gradient(y, x))


def test_each_y_pred_block_is_read_once(rng):
    """loss and gradient together run the kernel once per block, and the denominator
    (computed first) reads labels and weights only."""
    calls = []

    def block(block_info=None):
        calls.append(block_info[None]["chunk-location"])
        lo, hi = block_info[None]["array-location"][0]
        return np.random.default_rng(lo).standard_normal((hi - lo, 6))

    x = da.map_blocks(block, chunks=((25,) * 8, (6,)), dtype=np.float64)
    y = rng.integers(-1, 6, 200)
    obj = fx.SparseCategoricalCrossentropy(from_logits=True, ignore_class=-1,
                                           reduction="mean_with_sample_weight",
                                           class_weight=np.arange(1.0, 7.0))
    value, grad = dask.compute(*on_dask(obj).loss_and_grad(y, x, rng.uniform(0, 1, 200)),
                               scheduler="sync")
    assert sorted(calls) == [(i, 0) for i in range(8)]
    assert grad.shape == (200, 6) and np.isfinite(value)


# ============================================== focal losses, KL divergence and GCE

FAMILY_SPARSE = ("sparse_focal", "gce")


def family_chunks(kind, y, x_chunks):
    """y's chunks for y_pred chunked ``x_chunks`` (class axis last)."""
    return x_chunks[:-1] if kind in FAMILY_SPARSE else x_chunks


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("from_logits", [True, False])
@pytest.mark.parametrize("kind", list(FAMILY_CLASSES))
def test_family_functions_equal_numpy_and_oracle(client, rng, kind, from_logits, dtype):
    opts = FAMILY_OPTIONS[kind][-1] if kind != "kl" else {}
    if kind == "gce" and not from_logits:
        opts = {"q": 0.2, "ignore_class": 2}
    y, x = family_case(kind, rng, (103, 5), from_logits, dtype, options=opts)
    x[17] = np.nan  # NaN stays in its row
    if kind in FAMILY_SPARSE:
        y[17] = 0  # a label that counts
    chunks = ((20, 33, 1, 49), (5,))  # uneven, one block of one row
    x_d = da.from_array(x, chunks=chunks)
    y_d = da.from_array(y, chunks=family_chunks(kind, y, chunks))

    lazy = getattr(fxd, FAMILY_FUNCTIONS[kind].__name__)(y_d, x_d, from_logits=from_logits,
                                                         **opts)

    assert isinstance(lazy, da.Array) and lazy.dtype == dtype
    assert lazy.chunks == (chunks[0],)
    got = lazy.compute()
    # Rows are independent: the blocks give the NumPy path's values bit for bit.
    np.testing.assert_array_equal(got, FAMILY_FUNCTIONS[kind](y, x, from_logits=from_logits,
                                                              **opts))
    assert np.isnan(got[17]) and np.isfinite(np.delete(got, 17)).all()
    want = R.FAMILY_PER_SAMPLE[kind](y, x.astype(np.float64), from_logits=from_logits, **opts)
    assert_close(got, want, dtype)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("kind", list(FAMILY_CLASSES))
def test_family_loss_objects_equal_numpy_and_oracle(client, rng, kind, reduction):
    opts = FAMILY_OPTIONS[kind][1] if kind != "kl" else {}
    y, x = family_case(kind, rng, (23, 5), True, options=opts)
    sw = rng.uniform(0.0, 2.0, 23)
    chunks = ((7, 1, 15), (5,))
    obj = FAMILY_CLASSES[kind](from_logits=True, reduction=reduction, **opts)
    x_d = da.from_array(x, chunks=chunks)
    lazy_d = getattr(fxd, type(obj).__name__).from_config(obj.get_config())
    assert type(lazy_d).__module__ == "fastxent.dask" and isinstance(lazy_d, type(obj))

    value, (value2, grad) = dask.compute(lazy_d(y, x_d, da.from_array(sw, chunks=5)),
                                         lazy_d.loss_and_grad(y, x_d, sw))

    want, want_grad = obj.loss_and_grad(y, x, sw)
    if reduction == "none":
        np.testing.assert_array_equal(value, want)
        np.testing.assert_array_equal(value2, want)
        np.testing.assert_array_equal(grad, want_grad)
    else:
        # block sums added, then divided once: the NumPy path's sum in another order
        assert value == pytest.approx(want, rel=1e-13) and value2 == pytest.approx(want, rel=1e-13)
        assert_close(grad, want_grad, rtol=1e-14)
    ref_value, ref_grad = R.family_loss_and_grad(kind, y, x, sample_weight=sw,
                                                 reduction=reduction, from_logits=True, **opts)
    assert_close(value, ref_value, rtol=1e-12)
    assert_close(grad, ref_grad, rtol=2e-7)  # finite differences


@pytest.mark.parametrize("kind", FAMILY_SPARSE)
@pytest.mark.parametrize("case", ["all_ignored", "zero_weights", "empty"])
def test_family_zero_denominator_gives_zero(client, rng, kind, case):
    obj = FAMILY_CLASSES[kind](from_logits=True, ignore_class=-1,
                               reduction="mean_with_sample_weight")
    x = logits(rng, (0 if case == "empty" else 12, 3))
    y = np.full(len(x), -1) if case == "all_ignored" else rng.integers(0, 3, len(x))
    sw = np.zeros(len(x)) if case == "zero_weights" else None
    x_d = da.from_array(x, chunks=(5, 3))
    lazy_d = getattr(fxd, type(obj).__name__).from_config(obj.get_config())
    value, grad = dask.compute(*lazy_d.loss_and_grad(y, x_d, sw))
    assert lazy_d(y, x_d, sw).compute() == value == obj(y, x, sw) == 0.0
    assert grad.shape == x.shape and not np.any(grad)


def test_family_errors_are_raised_when_the_graph_is_built(client, rng):
    x = da.from_array(logits(rng, (10, 4)), chunks=(5, 4))
    with pytest.raises(TypeError, match="y_pred must have dtype float32 or float64, got "
                                        "float16; float16 and bfloat16 are read by the "
                                        "cross-entropy losses only"):
        fxd.kl_divergence(np.full((10, 4), 0.25), x.astype(np.float16))
    with pytest.raises(ValueError, match=r"alpha must have one entry per class \(4\), got "
                                         r"shape \(3,\)"):
        fxd.categorical_focal_crossentropy(np.full((10, 4), 0.25), x, alpha=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match=r"y_true has shape \(9,\) but y_pred with the class"):
        fxd.categorical_generalized_cross_entropy(np.zeros(9, np.int64), x)
    bad = np.zeros(10, np.int64)
    bad[7] = 4
    with pytest.raises(fx.LabelRangeError) as info:
        fxd.sparse_categorical_focal_crossentropy(da.from_array(bad, chunks=5), x,
                                                  from_logits=True).compute()
    assert info.value.position == (7,)


@pytest.mark.parametrize("kind", ["categorical", "sparse", "binary"])
def test_low_precision_y_pred_equal_numpy(client, rng, kind):
    """float16 and bfloat16 y_pred: the NumPy classes' results, block by block."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    for dtype in (np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16)):
        y, x = make_case(rng, kind, (61, 7), -1, np.float64, True)
        x = x.astype(dtype)
        if kind != "sparse":
            y = y.astype(np.float32)
        opts = {"ignore_class": 0} if kind == "sparse" else {}
        chunks = ((30, 1, 30), (7,))
        x_d = da.from_array(x, chunks=chunks)
        per_sample = DASK_FUNCTIONS[kind](y, x_d, from_logits=True, **opts)
        obj = CLASSES[kind](from_logits=True, reduction="mean_with_sample_weight", **opts)
        value, grad = dask.compute(*on_dask(obj).loss_and_grad(y, x_d, np.linspace(0, 1, 61)))
        want, want_grad = obj.loss_and_grad(y, x, np.linspace(0, 1, 61))
        assert per_sample.dtype == np.float32 and grad.dtype == dtype
        np.testing.assert_array_equal(
            per_sample.compute(), NUMPY_FUNCTIONS[kind](y, x, from_logits=True, **opts))
        assert value == pytest.approx(want, rel=1e-12)
        np.testing.assert_array_equal(grad.view(np.uint16), want_grad.view(np.uint16))
        assert_close(value, R.reference_loss(
            "sparse_categorical" if kind == "sparse" else kind, y, x.astype(np.float64),
            np.linspace(0, 1, 61), from_logits=True, reduction="mean_with_sample_weight",
            **opts), np.float32, rtol=1e-5)


# ================================================================== errors


def test_errors_are_raised_when_the_graph_is_built(rng):
    x = da.from_array(logits(rng, (10, 4)), chunks=(5, 4))
    y = rng.integers(0, 4, 10)
    sparse = fx.SparseCategoricalCrossentropy(from_logits=True)
    with pytest.raises(TypeError, match="y_pred must have dtype float32, float64, float16 or "
                                        "bfloat16, got int64"):
        on_dask(sparse)(y, x.astype(np.int64))
    with pytest.raises(ValueError, match=r"y_true has shape \(9,\) but y_pred with the class"):
        on_dask(sparse)(y[:9], x)
    with pytest.raises(ValueError, match=r"y_true has shape \(10, 3\) but y_pred has shape"):
        fxd.categorical_crossentropy(np.ones((10, 3)), x)
    with pytest.raises(TypeError, match="y_true must hold integer class labels"):
        on_dask(sparse)(np.array(["a"] * 10), x)
    with pytest.raises(ValueError, match=r"class_weight must have one entry per class \(4\)"):
        fxd.sparse_categorical_crossentropy(y, x, class_weight=[1.0, 2.0])
    with pytest.raises(ValueError, match="pos_weight must have one entry"):
        fxd.binary_crossentropy(np.ones((10, 4)), x, pos_weight=[1.0, 2.0])
    with pytest.raises(ValueError, match="z_loss needs from_logits=True"):
        fxd.categorical_crossentropy(np.ones((10, 4)), x, z_loss=0.1)
    with pytest.raises(ValueError, match=r"sample_weight with shape \(3,\) cannot be broadcast"):
        on_dask(sparse)(y, x, da.ones(3))
    with pytest.raises(TypeError, match="sample_weight must be real numbers"):
        on_dask(sparse)(y, x, np.array(["w"] * 10))
    with pytest.raises(ValueError, match=r"axis=2 is out of range"):
        on_dask(fx.SparseCategoricalCrossentropy(axis=2))(y, x)
    with pytest.raises(ValueError, match="y_pred has an empty class axis"):
        on_dask(sparse)(y, da.zeros((10, 0), chunks=(5, 0)))
    unknown = x[x[:, 0] > 0]  # boolean indexing: unknown chunk sizes
    with pytest.raises(ValueError, match=r"y_pred has unknown chunk sizes; call"):
        on_dask(sparse)(y, unknown)
    with pytest.raises(ValueError, match=r"y_true has unknown chunk sizes; call"):
        on_dask(sparse)(da.from_array(y)[da.from_array(y) >= 0], x)
    with pytest.raises(ValueError, match=r"sample_weight has unknown chunk sizes; call"):
        on_dask(sparse)(y, x, unknown[:, 0])
    bag = dask.bag.from_sequence(range(10))
    with pytest.raises(TypeError, match="y_pred must be a dask array or array-like, got Bag"):
        on_dask(sparse)(y, bag)
    with pytest.raises(TypeError, match="y_true must be a dask array or array-like, got Bag"):
        fxd.binary_crossentropy(bag, x)


def test_bad_label_names_its_position_in_the_whole_array(client, rng):
    x = da.from_array(logits(rng, (100, 7)), chunks=(20, 7))
    y = rng.integers(0, 7, 100)
    y[57] = 9
    lazy = fxd.sparse_categorical_crossentropy(y, x, from_logits=True)  # no error yet
    with pytest.raises(ValueError, match=r"at position \(57,\) is outside \[0, 7\)"):
        lazy.compute()
    y3 = rng.integers(0, 7, (10, 12))
    y3[7, 9] = -3
    x3 = da.from_array(logits(rng, (10, 7, 12)), chunks=(5, 7, 4))
    obj = fx.SparseCategoricalCrossentropy(from_logits=True, axis=1, reduction="sum")
    with pytest.raises(ValueError, match=r"at position \(7, 9\) is outside \[0, 7\)"):
        on_dask(obj).loss_and_grad(y3, x3)[1].compute()


def test_fractional_label_names_its_block(client, rng):
    x = da.from_array(logits(rng, (30, 3)), chunks=(10, 3))
    y = np.zeros(30)
    y[25] = 0.5
    with pytest.raises(ValueError, match=r"integer class labels.*block of y_pred starting at "
                                         r"\(20,\)"):
        fxd.sparse_categorical_crossentropy(y, x, from_logits=True).compute()


def test_fit_steps_send_only_parameters_and_block_results(client):
    """X on the workers stays where it is: a step sends each block the parameters and gets
    back one (loss, gradient) vector per block (summed on the workers)."""
    n_rows, n_features, chunk = 120_000, 20, 10_000  # 19 MB of float64 features
    rows = (chunk,) * (n_rows // chunk)
    y = da.map_blocks(_label_block, chunks=(rows,), dtype=np.int64, seed=3, low=0, high=3)
    X = da.map_blocks(_planted_features, chunks=(rows, (n_features,)), dtype=np.float64,
                      seed=3, n_cols=n_features)
    X, y = client.persist([X, y])

    reset_transfer_logs(client)
    dist = SoftmaxRegression(alpha=1e-3, tol=1e-8).fit(X, y)
    # Preparing the blocks may, once, bring a block of X or y to the other worker; after
    # that the ~40 steps send about 20 kB each.  Sending X or y at every step would be
    # 19 MB or 1 MB per step.
    moved_once = bytes_sent_by_workers(client) - bytes_sent_by_workers(client, (X.name, y.name))
    steps = bytes_sent_by_workers(client, exclude=(X.name, y.name))
    assert dist.n_iter_[0] > 10
    assert moved_once <= X.nbytes + y.nbytes
    assert steps < 0.05 * X.nbytes, f"the steps sent {steps / 1e6:.1f} MB"

    X_np, y_np = dask.compute(X, y)
    local = SoftmaxRegression(alpha=1e-3, tol=1e-8).fit(X_np, y_np)
    np.testing.assert_allclose(dist.coef_, local.coef_, rtol=0, atol=1e-6)
    np.testing.assert_allclose(dist.intercept_, local.intercept_, rtol=0, atol=1e-6)


# ==================================================== larger than a worker's memory

BIG_ROWS, BIG_CLASSES, BIG_CHUNK = 3_225_600, 100, 25_600  # 1.29 GB of float32 logits


def test_loss_and_grad_of_data_larger_than_worker_memory(fresh_client):
    client = fresh_client
    x = lazy_normal(BIG_ROWS, BIG_CLASSES, BIG_CHUNK, seed=11)
    rows = x.chunks[0]
    y = da.map_blocks(_label_block, chunks=(rows,), dtype=np.int64, seed=11, low=-1,
                      high=BIG_CLASSES)
    obj = fx.SparseCategoricalCrossentropy(from_logits=True, ignore_class=-1)
    lazy_loss, lazy_grad = on_dask(obj).loss_and_grad(y, x)

    reset_transfer_logs(client)
    with RssSampler() as sampler:
        futures = client.compute([lazy_loss, lazy_grad.sum(axis=0, dtype=np.float64)])
        value, column_sums = (f.result(timeout=300) for f in futures)
    # Only per-block scalars and column sums travel (about 1 kB per block).
    assert_nothing_gathered(client, sampler, x.nbytes, bytes_sent_by_workers(client),
                            max_sent=x.nbytes / 1000)

    # The NumPy path, streamed here one regenerated block at a time: mean = sum / count.
    # (Summing the float32 per-sample losses in float64 leaves a relative error ~1e-11.)
    per_sample = fx.SparseCategoricalCrossentropy(from_logits=True, ignore_class=-1,
                                                  reduction="none")
    total, sums, count = 0.0, np.zeros(BIG_CLASSES), 0
    for lo, hi in block_bounds(BIG_ROWS, BIG_CHUNK):
        xb = _normal_block(info(lo, hi), seed=11, n_cols=BIG_CLASSES)
        yb = _label_block(info(lo, hi), seed=11, low=-1, high=BIG_CLASSES)
        losses, grad = per_sample.loss_and_grad(yb, xb)
        total += float(np.sum(losses, dtype=np.float64))
        sums += grad.sum(axis=0, dtype=np.float64)
        count += int(np.count_nonzero(yb != -1))
    assert value == pytest.approx(total / count, rel=1e-9)
    np.testing.assert_allclose(column_sums, sums / count, rtol=1e-5, atol=1e-9)


# ============================================================ data-parallel fit


def classification_data(rng, n, d, k, dtype=np.float64):
    X = rng.standard_normal((n, d)).astype(dtype)
    scores = X @ rng.standard_normal((d, k))
    y = np.argmax(scores + rng.gumbel(size=scores.shape), axis=1)
    return X, y


FIT_CASES = {
    "multiclass_balanced_dask_weights": dict(
        k=4, params=dict(class_weight="balanced"), weights="dask"),
    # float32 X makes the objective float32: its gradient cannot get below ~1e-6, so a tol
    # under that stops L-BFGS wherever rounding does (the in-memory fit of the same rows in
    # another order moves by ~1e-5 then).  tol=1e-5 is reached, and 1e-6 holds.
    "binary_string_labels_float32": dict(
        k=2, params=dict(tol=1e-5), weights=None, labels=np.array(["no", "yes"]),
        dtype=np.float32),
    "smoothing_no_intercept_dict_weights": dict(
        k=3, params=dict(label_smoothing=0.1, fit_intercept=False, class_weight={0: 2.0}),
        weights="numpy"),
}


@pytest.mark.parametrize("case", list(FIT_CASES))
def test_fit_equals_in_memory_fit(client, rng, case):
    spec = FIT_CASES[case]
    X, y = classification_data(rng, 1500, 8, spec["k"], spec.get("dtype", np.float64))
    if "labels" in spec:
        y = spec["labels"][y]
    sw = rng.uniform(0.2, 2.0, len(y)) if spec["weights"] else None
    params = {"alpha": 1e-2, "tol": 1e-9, **spec["params"]}

    local = SoftmaxRegression(**params).fit(X, y, sample_weight=sw)
    X_d = da.from_array(X, chunks=(400, 8))  # uneven: 400, 400, 400, 300
    sw_d = da.from_array(sw, chunks=250) if spec["weights"] == "dask" else sw
    dist = SoftmaxRegression(**params).fit(X_d, da.from_array(y, chunks=300), sample_weight=sw_d)

    np.testing.assert_array_equal(dist.classes_, local.classes_)
    assert dist.coef_.shape == local.coef_.shape
    np.testing.assert_allclose(dist.coef_, local.coef_, rtol=0, atol=1e-6)
    np.testing.assert_allclose(dist.intercept_, local.intercept_, rtol=0, atol=1e-6)
    assert dist.n_features_in_ == 8
    np.testing.assert_array_equal(dist.predict(X), local.predict(X))


def test_prepared_blocks_have_their_size_for_dask(rng):
    """The scheduler sees a prepared row block's real size: at the 8 bytes of an object
    array, a step's task looked free to run anywhere and its block moved unseen."""
    from dask.sizeof import sizeof

    from fastxent.dask._fit import _block_training_data

    X_b = rng.standard_normal((500, 20))
    block = _block_training_data(X_b, np.arange(500) % 3, classes=np.arange(3),
                                 class_weight=None, total=500.0)
    (x_got, y_enc, w), = block
    assert x_got is X_b and y_enc.dtype == np.intp
    assert X_b.nbytes + y_enc.nbytes + w.nbytes <= sizeof(block) <= X_b.nbytes + 20_000
    assert sizeof(cloudpickle.loads(cloudpickle.dumps(block))) == sizeof(block)


def test_fit_without_a_distributed_client(rng):
    X, y = classification_data(rng, 600, 5, 3)
    local = SoftmaxRegression(alpha=1e-2, tol=1e-8).fit(X, y)
    with dask.config.set(scheduler="sync"):
        dist = SoftmaxRegression(alpha=1e-2, tol=1e-8).fit(da.from_array(X, chunks=(200, 5)), y)
        scalar = SoftmaxRegression(alpha=1e-2, tol=1e-8).fit(da.from_array(X, chunks=(200, 5)),
                                                             y, sample_weight=2.5)
    np.testing.assert_allclose(dist.coef_, local.coef_, rtol=0, atol=1e-6)
    np.testing.assert_allclose(scalar.coef_, local.coef_, rtol=0, atol=1e-6)


def test_fit_rechunks_split_features_with_a_warning(rng):
    X, y = classification_data(rng, 300, 6, 3)
    with dask.config.set(scheduler="sync"), pytest.warns(PerformanceWarning, match="feature axis"):
        dist = SoftmaxRegression(alpha=1e-2).fit(da.from_array(X, chunks=(100, 3)), y)
    local = SoftmaxRegression(alpha=1e-2).fit(X, y)
    np.testing.assert_allclose(dist.coef_, local.coef_, rtol=0, atol=1e-6)


def test_fit_balanced_weights_with_a_weightless_class(client, rng):
    X, y = classification_data(rng, 600, 5, 3)
    sw = rng.uniform(0.5, 1.5, 600)
    sw[y == 2] = 0.0  # class 2 carries no weight: balanced gives it 0, as in memory
    params = dict(alpha=1e-2, tol=1e-9, class_weight="balanced")
    local = SoftmaxRegression(**params).fit(X, y, sample_weight=sw)
    dist = SoftmaxRegression(**params).fit(da.from_array(X, chunks=(250, 5)), y,
                                           sample_weight=da.from_array(sw, chunks=250))
    np.testing.assert_allclose(dist.coef_, local.coef_, rtol=0, atol=1e-6)
    sw[y == 1] = 0.0
    for X_arg in (X, da.from_array(X, chunks=(250, 5))):
        with pytest.raises(ValueError, match=r"positive weight only for class\(es\) \[0\]"):
            SoftmaxRegression(**params).fit(X_arg, y, sample_weight=sw)


def test_fit_errors(client, rng):
    X, y = classification_data(rng, 50, 3, 3)
    X_d = da.from_array(X, chunks=(20, 3))
    bad = X.copy()
    bad[33, 1] = np.nan
    with pytest.raises(ValueError, match="Input X contains NaN or infinity"):  # on a worker
        SoftmaxRegression().fit(da.from_array(bad, chunks=(20, 3)), y)
    with dask.config.set(scheduler="sync"):  # the others are raised before any iteration
        check_fit_argument_errors(X_d, y, rng)


def check_fit_argument_errors(X_d, y, rng):
    with pytest.raises(ValueError, match=r"X must be 2-D"):
        SoftmaxRegression().fit(X_d[:, 0], y)
    with pytest.raises(ValueError, match=r"y must have shape \(50,\)"):
        SoftmaxRegression().fit(X_d, y[:40])
    with pytest.raises(ValueError, match="at least 2 classes"):
        SoftmaxRegression().fit(X_d, np.zeros(50))
    with pytest.raises(ValueError, match="Unknown label type"):
        SoftmaxRegression().fit(X_d, rng.standard_normal(50))
    with pytest.raises(ValueError, match="sample_weight must be non-negative"):
        SoftmaxRegression().fit(X_d, y, sample_weight=-np.ones(50))
    with pytest.raises(ValueError, match=r"sample_weight.shape == \(3,\)"):
        SoftmaxRegression().fit(X_d, y, sample_weight=np.ones(3))
    with pytest.raises(ValueError, match="alpha must be"):
        SoftmaxRegression(alpha=-1.0).fit(X_d, y)
    with pytest.raises(TypeError, match="X must hold numbers"):
        SoftmaxRegression().fit(X_d.astype(str), y)
    with pytest.raises(TypeError, match="X must be a dask array, got Bag"):
        SoftmaxRegression().fit(dask.bag.from_sequence(range(50)), y)
    with pytest.raises(ValueError, match=r"X has unknown chunk sizes; call X.compute_chunk"):
        SoftmaxRegression().fit(X_d[X_d[:, 0] > 0], y)
    y_d = da.from_array(y, chunks=20)
    with pytest.raises(ValueError, match=r"y has unknown chunk sizes"):
        SoftmaxRegression().fit(X_d, y_d[y_d >= 0])
    with pytest.raises(ValueError, match=r"sample_weight has unknown chunk sizes"):
        SoftmaxRegression().fit(X_d, y, sample_weight=y_d[y_d >= 0].astype(float))
    with pytest.raises(TypeError, match="sample_weight must be a dask array or array-like"):
        SoftmaxRegression().fit(X_d, y, sample_weight=dask.bag.from_sequence(range(50)))



def test_fit_on_data_larger_than_worker_memory(fresh_client):
    client = fresh_client
    n_rows, n_features, chunk = 2_016_000, 80, 16_000  # 1.29 GB of float64 features
    rows = (chunk,) * (n_rows // chunk)
    Xy = da.map_blocks(_planted_rows, chunks=(rows, (n_features + 1,)), dtype=np.float64,
                       seed=5, n_cols=n_features)
    X, y = Xy[:, :n_features], Xy[:, n_features].astype(np.int64)
    params = dict(alpha=1e-4, max_iter=3)  # three L-BFGS steps: enough to compare

    reset_transfer_logs(client)
    with RssSampler() as sampler, warnings.catch_warnings():
        warnings.simplefilter("ignore", category=ConvergenceWarning)
        dist = SoftmaxRegression(**params).fit(X, y)
    # Each evaluation regenerates X's blocks on the worker that evaluates them, X_b and its
    # labels by one task (labels made by a task of their own can land on the other worker,
    # and the scheduler then moved a few X_b to them, by the workers' load).  The prepared
    # blocks count at their full size (fastxent registers their sizeof), so no block
    # travels unseen: in all, the workers sent less than one block of X (10.2 MB).
    assert_nothing_gathered(client, sampler, X.nbytes, bytes_sent_by_workers(client),
                            max_sent=X.nbytes / 200)

    # The in-memory fit of the same data, assembled here block by block, after the fact.
    X_np = np.empty(X.shape)
    y_np = np.empty(n_rows, dtype=np.int64)
    for lo, hi in block_bounds(n_rows, chunk):
        X_np[lo:hi] = _planted_features(info(lo, hi), seed=5, n_cols=n_features)
        y_np[lo:hi] = _label_block(info(lo, hi), seed=5, low=0, high=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=ConvergenceWarning)
        local = SoftmaxRegression(**params).fit(X_np, y_np)
    del X_np
    assert dist.n_iter_[0] == local.n_iter_[0] == 3
    np.testing.assert_array_equal(dist.classes_, [0, 1, 2])
    np.testing.assert_allclose(dist.coef_, local.coef_, rtol=0, atol=1e-6)
    np.testing.assert_allclose(dist.intercept_, local.intercept_, rtol=0, atol=1e-6)
    assert np.abs(local.coef_).max() > 1e-2  # the steps went somewhere


def test_benchmark_script_runs(client):
    """bench/bench_dask.py on tiny sizes: it runs and its runs agree (no timing checked)."""
    path = os.path.join(os.path.dirname(__file__), os.pardir, "bench", "bench_dask.py")
    spec = importlib.util.spec_from_file_location("bench_dask", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.run(n_rows=20_000, n_classes=10, chunk_rows=5_000, fit_rows=4_000,
                       n_workers=2, rounds=1)
    assert result["loss_rel_diff"] < 1e-12 and result["fit_max_coef_diff"] < 1e-6
    assert set(result["loss_times"]) == {"local", "dask_threads", "cluster"}
    machine = {k: "m" for k in ("cpu", "cpus", "isa", "python", "numpy", "fastxent", "dask",
                                "distributed")}
    table = bench.markdown(result, machine, ("0", "0"))
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert len(rows) == 3 and "cluster / local" in rows[0]


def test_keras_rank_rule():
    """A trailing size-1 axis on y_true is matched as Keras does; where Keras would reshape
    y_pred, the dask losses say so instead of computing another number."""
    p = np.array([[0.9], [0.1], [0.2], [0.7], [0.6]])
    z = np.array([1.0, 0.0, 1.0, 1.0, 0.0])
    bce = fxd.BinaryCrossentropy(reduction="sum")
    expected = fx.BinaryCrossentropy(reduction="sum")(z, p)
    assert float(bce(da.from_array(z, chunks=2), da.from_array(p, chunks=(2, 1)))) == (
        pytest.approx(expected))
    with pytest.raises(ValueError, match=r"reshape y_pred to \(5, 1\)"):
        bce(da.from_array(z[:, None], chunks=2), da.from_array(p[:, 0], chunks=-1))


def test_dtype_option_casts_y_pred():
    p = np.random.default_rng(0).random((6, 3))
    z = (p > 0.5).astype(np.float64)
    loss = fxd.BinaryCrossentropy(dtype="float32", reduction="none")
    out = loss(da.from_array(z, chunks=2), da.from_array(p, chunks=(2, 3)))
    assert out.dtype == np.float32 and out.compute().dtype == np.float32
    np.testing.assert_array_equal(
        out.compute(), fx.BinaryCrossentropy(dtype="float32", reduction="none")(z, p))
