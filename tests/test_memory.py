"""Memory: no leaks, no hidden N x C temporaries, inputs never written.

* 10,000 calls (every entry point, error paths included) grow the resident set by at most
  1 MB, measured in-process from /proc/self/statm after a warm-up; so do 300 calls whose
  8 MiB gradients go through the gradient block cache.
* tracemalloc (NumPy reports its data buffers to it) shows that ``loss_and_grad`` allocates
  the gradient it returns and nothing else of size N x C; with ``grad_out=`` or
  ``inplace=True`` nothing of size N x C at all; ``__call__`` (loss only) nothing of size
  N x C.  An input that has to be converted (another dtype, or not contiguous along the class
  axis) is copied exactly once.
* Every input (y_true, y_pred, sample_weight, class_weight, pos_weight) has the same bytes
  after the call as before, except y_pred with ``inplace=True``, which then holds the
  gradient.
"""

import gc
import hashlib
import mmap
import os
import sys
import tracemalloc

import numpy as np
import pytest
import reference as R
from util import CLASSES, FUNCTIONS, assert_close, logits, low_precision_dtypes, probabilities

import fastxent as fx

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="reads /proc/self/statm")


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        resident_pages = int(f.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def rss_growth(run, warm_up: int, calls: int) -> int:
    """RSS bytes gained by ``run(calls)`` after ``run(warm_up)`` filled caches, allocator
    pools and lazily imported modules."""
    run(warm_up)
    gc.collect()
    before = rss_bytes()
    run(calls)
    gc.collect()
    return rss_bytes() - before


def targets(kind, rng, shape, dtype, axis=-1):
    if kind == "sparse_categorical":
        n_classes = shape[axis]
        batch = tuple(np.delete(np.array(shape), axis % len(shape)))
        return rng.integers(0, n_classes, size=batch)
    if kind == "categorical":
        t = rng.dirichlet(np.ones(shape[axis]), size=tuple(
            np.delete(np.array(shape), axis % len(shape))))
        return np.moveaxis(t, -1, axis).astype(dtype)
    return rng.uniform(size=shape).astype(dtype)


# ----------------------------------------------------------------------------- leaks


def test_10000_calls_do_not_grow_rss(rng):
    x = logits(rng, (32, 10), np.float32)
    p = probabilities(rng, (32, 10), dtype=np.float64)
    labels = rng.integers(0, 10, size=32)
    bad_labels = labels.copy()
    bad_labels[5] = 10
    soft = targets("categorical", rng, (32, 10), np.float64)
    z = rng.uniform(size=(32, 10)).astype(np.float32)
    sw = rng.uniform(size=32)
    out = np.empty_like(x)
    sparse = fx.SparseCategoricalCrossentropy(from_logits=True, ignore_class=3,
                                              class_weight=np.ones(10), n_threads=2)
    cat = fx.CategoricalCrossentropy(reduction="mean_with_sample_weight", label_smoothing=0.1)
    binary = fx.BinaryCrossentropy(from_logits=True, pos_weight=np.full(32, 2.0), axis=0)

    def expect(exc, fn, *args, **kw):
        try:
            fn(*args, **kw)
        except exc:
            return
        raise AssertionError(f"{fn} did not raise {exc}")

    calls = [
        lambda: sparse.loss_and_grad(labels, x, sw),
        lambda: sparse.loss_and_grad(labels, x, grad_out=out),
        lambda: sparse(labels, x),
        lambda: sparse.loss_and_grad(labels, x, return_lse=True),
        lambda: sparse.gradient_hessian(labels, x),
        lambda: cat.loss_and_grad(soft, p, sw),
        lambda: binary.loss_and_grad(z, x),
        lambda: binary.gradient_hessian(z, x),
        lambda: fx.sparse_categorical_crossentropy(labels, x, from_logits=True),
        lambda: fx.categorical_crossentropy(soft, p, axis=0),
        lambda: fx.binary_crossentropy(z, x, from_logits=True),
        lambda: fx.SparseCategoricalCrossentropy(from_logits=True).gradient(labels, x.copy(),
                                                                           inplace=True),
        # error paths: a leak on the way out of an exception is a leak too
        lambda: expect(ValueError, sparse, bad_labels, x),  # raised after the kernel ran
        lambda: expect(ValueError, sparse.loss_and_grad, bad_labels, x, grad_out=out),
        lambda: expect(TypeError, sparse, labels, x.astype(np.int32)),
        lambda: expect(ValueError, cat, soft[:3], p),
        lambda: expect(ValueError, binary, z, x, np.ones(7)),
    ]

    def run(n):
        for i in range(n):
            calls[i % len(calls)]()

    growth = rss_growth(run, warm_up=2000, calls=10_000)
    assert growth <= 1 << 20, f"RSS grew by {growth / 1024:.0f} KiB over 10,000 calls"


def test_large_gradients_reuse_memory_instead_of_growing_rss(rng):
    """Gradients of 8 MiB (above the 4 MiB floor of the gradient block cache) in a loop, the
    way a training step uses them: after a warm-up that fills the cache, 300 more calls grow
    the RSS by at most 1 MB, and the cache never holds more than its limit."""
    x = logits(rng, (512, 4096), np.float32)
    labels = rng.integers(0, 4096, size=512)
    loss = fx.SparseCategoricalCrossentropy(from_logits=True, n_threads=2)
    hess_loss = fx.BinaryCrossentropy(from_logits=True)
    z = rng.uniform(size=x.shape).astype(np.float32)

    def run(n):
        for i in range(n):
            if i % 3 == 2:
                hess_loss.gradient_hessian(z, x)  # two arrays of the same size at once
            else:
                loss.loss_and_grad(labels, x)

    # start from an empty cache: blocks of other sizes left by earlier tests fill its slots
    fx.set_buffer_cache(fx.buffer_cache_info()["limit_bytes"])
    hits_before = fx.buffer_cache_info()["hits"]
    growth = rss_growth(run, warm_up=30, calls=300)
    assert growth <= 1 << 20, f"RSS grew by {growth / 1024:.0f} KiB over 300 large calls"
    info = fx.buffer_cache_info()
    assert info["held_bytes"] <= info["limit_bytes"]
    assert info["hits"] >= hits_before + 300  # every call after the warm-up reused a block


def test_rss_probe_sees_a_leak():
    """The probe is not blind: holding on to 64 MB of fresh, touched memory shows up.  The
    memory is an anonymous mapping of its own, so that no allocator can hand back pages that
    are already resident (a 64 MB np.ones once came back without any RSS growth late in a
    full run of the suite)."""
    gc.collect()
    before = rss_bytes()
    hold = mmap.mmap(-1, 64 << 20)
    pages = np.frombuffer(hold, dtype=np.uint8)
    pages[::4096] = 1  # touch every page
    try:
        assert rss_bytes() - before >= 60 << 20
    finally:
        del pages
        hold.close()


# ------------------------------------------------------------------- allocations


def traced_peak(fn):
    """(result, peak bytes allocated above the starting point while ``fn`` ran)."""
    gc.collect()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        start, _ = tracemalloc.get_traced_memory()
        result = fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak - start


N, C = 512, 4096  # N x C float32 = 8 MiB; anything of size O(N) is a few KiB
SMALL = 256 * 1024  # generous allowance for O(N) buffers and Python objects


def _options(kind, from_logits):
    if kind == "sparse_categorical":
        return {"ignore_class": 0, "class_weight": np.linspace(0.5, 1.5, C),
                "label_smoothing": 0.1}
    if kind == "categorical":
        return {"class_weight": np.linspace(0.5, 1.5, C), "label_smoothing": 0.1}
    return {"pos_weight": np.linspace(0.5, 1.5, C), "label_smoothing": 0.1}


@pytest.mark.parametrize("from_logits", [True, False], ids=["logits", "probs"])
@pytest.mark.parametrize("kind", list(CLASSES))
@pytest.mark.parametrize("dtype", [np.float32, np.float64, *low_precision_dtypes()],
                         ids=lambda d: np.dtype(d).name)
def test_loss_and_grad_allocates_only_its_outputs(kind, from_logits, dtype, rng):
    """float16 / bfloat16 included: they are widened a block at a time in the kernels'
    per-thread scratch (C memory, bounded by one block), never as a float32 array."""
    x = logits(rng, (N, C), dtype) if from_logits else probabilities(rng, (N, C), dtype=dtype)
    y = targets(kind, rng, (N, C), dtype)
    sw = rng.uniform(size=N)
    nbytes = x.nbytes
    for reduction in ("none", "mean_with_sample_weight"):
        loss = CLASSES[kind](from_logits=from_logits, reduction=reduction, n_threads=2,
                             **_options(kind, from_logits))
        expected = loss.loss_and_grad(y, x, sw)

        (value, grad), peak = traced_peak(lambda: loss.loss_and_grad(y, x, sw))  # noqa: B023
        assert grad.shape == x.shape and grad.dtype == x.dtype
        assert nbytes <= peak <= nbytes + SMALL, (reduction, peak)

        out = np.empty_like(x)
        (value, grad), peak = traced_peak(
            lambda: loss.loss_and_grad(y, x, sw, grad_out=out))  # noqa: B023
        assert grad is out
        assert peak <= SMALL, (reduction, "grad_out", peak)
        np.testing.assert_array_equal(out, expected[1])

        x_work = x.copy()
        (value, grad), peak = traced_peak(
            lambda: loss.loss_and_grad(y, x_work, sw, inplace=True))  # noqa: B023
        assert grad is x_work
        assert peak <= SMALL, (reduction, "inplace", peak)
        np.testing.assert_array_equal(x_work, expected[1])

        value, peak = traced_peak(lambda: loss(y, x, sw))  # noqa: B023
        assert peak <= SMALL, (reduction, "__call__", peak)


@pytest.mark.parametrize("name", ["sparse_focal", "binary_focal", "kl", "gce"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_one_pass_family_losses_allocate_only_their_outputs(name, dtype, rng):
    """Sparse focal, binary focal, KL divergence and GCE from logits: the gradient and O(N)
    buffers only (no N x C temporary); with grad_out or inplace=True, nothing of N x C."""
    x = logits(rng, (N, C), dtype)
    sw = rng.uniform(size=N)
    if name in ("sparse_focal", "gce"):
        y = rng.integers(0, C, size=N)
    elif name == "kl":
        y = targets("categorical", rng, (N, C), dtype)
    else:
        y = targets("binary", rng, (N, C), dtype)
    cls = {"sparse_focal": fx.SparseCategoricalFocalCrossentropy,
           "binary_focal": fx.BinaryFocalCrossentropy, "kl": fx.KLDivergence,
           "gce": fx.CategoricalGeneralizedCrossEntropy}[name]
    loss = cls(from_logits=True, reduction="mean_with_sample_weight", n_threads=2)
    expected = loss.loss_and_grad(y, x, sw)
    (value, grad), peak = traced_peak(lambda: loss.loss_and_grad(y, x, sw))
    assert nbytes_ok(peak, x.nbytes), peak
    out = np.empty_like(x)
    (value, grad), peak = traced_peak(lambda: loss.loss_and_grad(y, x, sw, grad_out=out))
    assert grad is out and peak <= (SMALL if name != "kl" else KL_BLOCK), peak
    np.testing.assert_array_equal(out, expected[1])
    x_work = x.copy()
    (value, grad), peak = traced_peak(lambda: loss.loss_and_grad(y, x_work, sw, inplace=True))
    assert grad is x_work and peak <= (SMALL if name != "kl" else KL_BLOCK), peak
    np.testing.assert_array_equal(x_work, expected[1])


# allowance for O(N) buffers (the KL divergence: a second per-row vector)
KL_BLOCK = SMALL + 4 * 65536 * 8


def nbytes_ok(peak, nbytes):
    return nbytes <= peak <= nbytes + KL_BLOCK


@pytest.mark.parametrize("kind", list(FUNCTIONS))
def test_functions_allocate_no_n_by_c(kind, rng):
    x = logits(rng, (N, C), np.float32)
    y = targets(kind, rng, (N, C), np.float32)
    value, peak = traced_peak(lambda: FUNCTIONS[kind](y, x, from_logits=True))
    assert value.shape == (N,)
    assert peak <= SMALL


@pytest.mark.parametrize("kind", ["categorical", "binary"])
def test_converted_input_is_copied_exactly_once(kind, rng):
    """A float64 / int target with float32 logits is converted once (one N x C copy)."""
    x = logits(rng, (N, C), np.float32)
    y64 = targets(kind, rng, (N, C), np.float64)
    loss = CLASSES[kind](from_logits=True)
    (value, grad), peak = traced_peak(lambda: loss.loss_and_grad(y64, x))
    assert 2 * x.nbytes <= peak <= 2 * x.nbytes + SMALL
    y_int = (y64 > 0.5).astype(np.int8)
    value, peak = traced_peak(lambda: loss(y_int, x))
    assert x.nbytes <= peak <= x.nbytes + SMALL


def test_non_contiguous_class_axis_is_copied_exactly_once(rng):
    x = logits(rng, (C, N), np.float32)  # class axis first: not contiguous along it
    y = rng.integers(0, C, size=N)
    loss = fx.SparseCategoricalCrossentropy(from_logits=True, axis=0)
    (value, grad), peak = traced_peak(lambda: loss.loss_and_grad(y, x))
    assert grad.shape == x.shape
    assert 2 * x.nbytes <= peak <= 2 * x.nbytes + SMALL
    value, peak = traced_peak(lambda: loss(y, x))
    assert x.nbytes <= peak <= x.nbytes + SMALL


def test_tracemalloc_sees_numpy_buffers():
    """The probe is not blind: an N x C temporary shows up."""
    _, peak = traced_peak(lambda: np.ones((N, C), np.float32).sum())
    assert peak >= N * C * 4


# ------------------------------------------------------------- inputs unmodified


def digest(a) -> str:
    if a is None or np.isscalar(a):
        return repr(a)
    a = np.asarray(a)
    data = np.ascontiguousarray(a).tobytes()
    return hashlib.sha256(data).hexdigest() + str(a.shape) + a.dtype.str


def _all_inputs(kind, from_logits, rng, shape, axis, dtype):
    if from_logits:
        x = logits(rng, shape, dtype)
        flat = x.reshape(-1)
        flat[:: max(1, flat.size // 7)] = np.nan
        flat[3] = -np.inf
    else:
        x = probabilities(rng, shape, dtype=dtype)
    y = targets(kind, rng, shape, dtype, axis=axis)
    n_cls = shape[axis]
    batch = tuple(np.delete(np.array(shape), axis % len(shape)))
    sw = rng.uniform(size=batch)
    weights = rng.uniform(0.5, 2.0, size=n_cls)
    return y, x, sw, weights


@pytest.mark.parametrize("axis", [-1, 0], ids=["last", "first"])
@pytest.mark.parametrize("from_logits", [True, False], ids=["logits", "probs"])
@pytest.mark.parametrize("kind", list(CLASSES))
def test_inputs_never_modified(kind, from_logits, axis, rng):
    for dtype in (np.float32, np.float64, *low_precision_dtypes()):
        y, x, sw, weights = _all_inputs(kind, from_logits, rng, (9, 6, 5), axis, dtype)
        wkey = "pos_weight" if kind == "binary" else "class_weight"
        opts = {wkey: weights, "label_smoothing": 0.1, "axis": axis}
        if kind == "sparse_categorical":
            opts["ignore_class"] = 2
        if from_logits and kind != "binary":
            opts["z_loss"] = 1e-3
        inputs = (y, x, sw, weights)
        before = [digest(a) for a in inputs]
        for reduction in ("none", "sum", "mean_with_sample_weight"):
            loss = CLASSES[kind](from_logits=from_logits, reduction=reduction, **opts)
            loss(y, x, sw)
            loss.loss_and_grad(y, x, sw)
            loss.gradient(y, x, sw)
            if from_logits:
                loss.gradient_hessian(y, x, sw)
            if axis == -1:
                loss.loss_and_grad(y, x, sw, grad_out=np.empty_like(x))
        FUNCTIONS[kind](y, x, from_logits=from_logits, **opts)
        assert [digest(a) for a in inputs] == before


@pytest.mark.parametrize("kind", list(CLASSES))
def test_inplace_overwrites_only_y_pred_with_the_gradient(kind, rng):
    y, x, sw, weights = _all_inputs(kind, True, rng, (40, 7), -1, np.float64)
    x[np.isnan(x)] = 0.5  # finite rows, so the comparison below is value-for-value
    x[np.isinf(x)] = -3.0
    wkey = "pos_weight" if kind == "binary" else "class_weight"
    loss = CLASSES[kind](from_logits=True, reduction="sum", **{wkey: weights})
    expected_loss, expected_grad = R.reference_loss_and_grad(
        kind, y, x, sw, from_logits=True, reduction="sum", **{wkey: weights})
    others = [digest(a) for a in (y, sw, weights)]
    x_work = x.copy()
    value, grad = loss.loss_and_grad(y, x_work, sw, inplace=True)
    assert grad is x_work
    assert_close(value, expected_loss)
    assert_close(x_work, expected_grad)
    assert [digest(a) for a in (y, sw, weights)] == others
