"""pytest-benchmark suite: every loss x dtype x shape x n_threads, beside the copy roofline.

Run with ``pytest bench/ --benchmark-only`` (see bench/README.md).  Each table group is one
dtype and shape; it holds the copy roofline of the logits (``np.copyto`` into a touched
buffer: the least time a pass that reads the logits and writes a gradient can take) and
``loss_and_grad`` of every loss at each thread count.  Sizes are small to medium so the whole
suite runs in a few minutes; ``python -m fastxent bench`` times the large workloads and
the peers.
"""

import functools

import numpy as np
import pytest

import fastxent as fx
from fastxent._config import resolve_n_threads

DTYPES = ("float32", "float64")
# short rows, a classifier head, a language-model-like vocabulary (about 1-2 M elements)
SHAPES = ((16384, 10), (1024, 1000), (32, 32000))
THREADS = sorted({1, min(2, resolve_n_threads(-1)), resolve_n_threads(-1)})
# (loss class, target kind, from_logits)
LOSSES = {
    "sparse-logits": (fx.SparseCategoricalCrossentropy, "sparse", True),
    "sparse-probs": (fx.SparseCategoricalCrossentropy, "sparse", False),
    "categorical-logits": (fx.CategoricalCrossentropy, "categorical", True),
    "categorical-probs": (fx.CategoricalCrossentropy, "categorical", False),
    "binary-logits": (fx.BinaryCrossentropy, "binary", True),
    "binary-probs": (fx.BinaryCrossentropy, "binary", False),
}


def _shape_id(shape):
    return "x".join(map(str, shape))


@functools.lru_cache(maxsize=8)
def _data(kind, shape, dtype, from_logits):
    """(y_true, y_pred) built once per case and shared by its thread counts."""
    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal(shape).astype(dtype)
    if kind == "binary":
        y = (rng.random(shape) < 0.5).astype(dtype)
        pred = x if from_logits else 1 / (1 + np.exp(-x))
    else:
        e = np.exp(x - x.max(axis=1, keepdims=True))
        probs = e / e.sum(axis=1, keepdims=True)
        pred = x if from_logits else probs
        if kind == "sparse":
            y = rng.integers(0, shape[1], shape[0])
        else:  # soft targets: another random softmax row
            t = np.exp(rng.standard_normal(shape))
            y = (t / t.sum(axis=1, keepdims=True)).astype(dtype)
    for a in (pred, y):
        a.flags.writeable = False  # the benchmark must not change its inputs
    return y, pred.astype(dtype, copy=False)


@pytest.mark.parametrize("shape", SHAPES, ids=_shape_id)
@pytest.mark.parametrize("dtype", DTYPES)
def test_copy_roofline(benchmark, dtype, shape):
    x = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    dst = np.empty_like(x)
    dst[...] = 0
    benchmark.group = f"{dtype} {_shape_id(shape)}"
    benchmark.name = "copy roofline (np.copyto)"
    benchmark.extra_info["bytes"] = x.nbytes
    benchmark(np.copyto, dst, x)
    np.testing.assert_array_equal(dst, x)


@pytest.mark.parametrize("n_threads", THREADS)
@pytest.mark.parametrize("loss_name", list(LOSSES))
@pytest.mark.parametrize("shape", SHAPES, ids=_shape_id)
@pytest.mark.parametrize("dtype", DTYPES)
def test_loss_and_grad(benchmark, dtype, shape, loss_name, n_threads):
    cls, kind, from_logits = LOSSES[loss_name]
    y, pred = _data(kind, shape, dtype, from_logits)
    loss = cls(from_logits=from_logits, n_threads=n_threads)
    benchmark.group = f"{dtype} {_shape_id(shape)}"
    benchmark.name = f"{loss_name} n_threads={n_threads}"
    benchmark.extra_info["bytes"] = pred.nbytes
    value, grad = benchmark(loss.loss_and_grad, y, pred)
    assert np.isfinite(value)
    assert grad.shape == pred.shape
    assert grad.dtype == pred.dtype
