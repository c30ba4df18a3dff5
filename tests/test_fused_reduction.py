"""The reduced losses, summed inside the kernel by fixed blocks of rows.

Every reduction but "none" is one float64 sum of weight x per-row loss, defined once
(xent_kernels.h): the rows are cut into the kernels' fixed blocks
(``_kernels.rows_per_block(row length)`` rows each), a block is summed in 16 lanes (row i of
the block into lane i mod 16, in row order) combined pairwise in a fixed order, and the
blocks' sums are added in block order.  The fast path computes the block sums as it computes
the rows, without writing the per-row losses; the general path sums its per-row array the same
way.  So: the total matches the float64 oracle, the two paths give the same bits, and so does
every thread count.
"""

import math

import numpy as np
import pytest
import reference as ref
from util import (
    binary_targets,
    logits,
    low_precision_dtypes,
    rtol_for,
    soft_targets,
    sparse_labels,
)

import fastxent as fx
from fastxent import LabelRangeError, _family, _kernels

# (rows, row length): one element per row (flat binary: 32,768-row blocks), short rows
# (3,276-row blocks, the transposed softmax kernel), long rows (32-row blocks), and rows of
# 262,144 elements or more (split across threads: one row per block).  None of the row counts
# is a multiple of its block.
SHAPES = ((300_001, 1), (100_003, 10), (2_001, 1_000), (3, 262_147))
REDUCTIONS = ("sum", "sum_over_batch_size", "mean_with_sample_weight")


def blocked_total(values, weights, row_length):
    """The definition of the reduction's sum, written out in NumPy (independent of the C)."""
    rpb = max(1, 32768 // row_length)
    a = values if weights is None else values * weights
    total = 0.0
    for b0 in range(0, a.size, rpb):
        block = a[b0:b0 + rpb]
        lanes = np.zeros(16)
        padded = np.zeros(-(-block.size // 16) * 16)
        padded[:block.size] = block   # + 0.0 in the unused lanes of the tail changes nothing
        for row in padded.reshape(-1, 16):
            lanes = lanes + row
        s8 = lanes[:8] + lanes[8:]
        s4 = s8[:4] + s8[4:]
        total += float((s4[0] + s4[2]) + (s4[1] + s4[3]))
    return total


def strided(a):
    """A non-contiguous view holding a's values (sends a call to the general path)."""
    wide = np.empty(a.shape[:-1] + (2 * a.shape[-1],), dtype=a.dtype)
    wide[..., ::2] = a
    view = wide[..., ::2]
    assert not view.flags.c_contiguous
    return view


def binary_case(rng, shape, dtype):
    return binary_targets(rng, shape, dtype), logits(rng, shape, dtype)


def sparse_case(rng, shape, dtype, ignore_class=None):
    labels = sparse_labels(rng, shape, ignore_class=ignore_class)
    return labels, logits(rng, shape, dtype)


@pytest.mark.parametrize("n", [1, 15, 16, 17, 3276, 3277, 70_001])
@pytest.mark.parametrize("row_length", [1, 10, 1000, 40_000])
def test_weighted_total_is_the_definition(rng, n, row_length):
    values = rng.standard_normal(n) * 10.0 ** rng.integers(-3, 4, n)
    weights = rng.random(n)
    assert _kernels.rows_per_block(row_length) == max(1, 32768 // row_length)
    for w in (None, weights):
        got = _kernels.weighted_total(values, w, row_length)
        assert got == blocked_total(values, w, row_length)
        exact = math.fsum(values if w is None else values * w)
        assert abs(got - exact) <= 1e-13 * math.fsum(np.abs(values))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_binary_total_matches_the_oracle(rng, shape, reduction):
    y, x = binary_case(rng, shape, np.float64)
    w = rng.random(shape[0])
    for sw in (None, w):
        loss = fx.BinaryCrossentropy(from_logits=True, reduction=reduction)
        got = loss(y, x, sw)
        expected = ref.reference_loss("binary", y, x, sw, from_logits=True,
                                      reduction=reduction)
        assert got == pytest.approx(expected, rel=rtol_for(np.float64))
        # the sum itself, apart from the per-row arithmetic: the kernel's own per-row
        # losses (reduction "none", float64) summed exactly
        rows = fx.BinaryCrossentropy(from_logits=True, reduction="none")(y, x, sw)
        exact = math.fsum(rows)
        denom = {"sum": 1.0, "sum_over_batch_size": shape[0],
                 "mean_with_sample_weight": math.fsum(w) if sw is not None else shape[0]}
        assert got == pytest.approx(exact / denom[reduction], rel=1e-13, abs=0.0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [s for s in SHAPES if s[1] > 1])
def test_sparse_total_matches_the_oracle(rng, shape, dtype):
    y, x = sparse_case(rng, shape, dtype, ignore_class=1)
    w = rng.random(shape[0])
    for sw in (None, w):
        got = fx.SparseCategoricalCrossentropy(from_logits=True, ignore_class=1,
                                               reduction="sum")(y, x, sw)
        expected = ref.reference_loss("sparse_categorical", y, x.astype(np.float64), sw,
                                      from_logits=True, ignore_class=1, reduction="sum")
        assert got == pytest.approx(expected, rel=rtol_for(dtype))


def calls(kind, shape, dtype, rng):
    """(loss class, y_true, y_pred, sample weight) of a family on one shape."""
    w = rng.random(shape[0])
    if kind == "binary":
        y, x = binary_case(rng, shape, dtype)
        return fx.BinaryCrossentropy, y, x, w
    if kind == "categorical":
        y = rng.dirichlet(np.ones(shape[1]), shape[0]).astype(dtype)
        return fx.CategoricalCrossentropy, y, logits(rng, shape, dtype), w
    y, x = sparse_case(rng, shape, dtype)
    return fx.SparseCategoricalCrossentropy, y, x, w


CASES = [("binary", s) for s in SHAPES] + [
    ("sparse", s) for s in SHAPES if s[1] > 1] + [("categorical", (100_003, 10)),
                                                  ("categorical", (2_001, 1_000))]


@pytest.mark.parametrize("kind,shape", CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64, *low_precision_dtypes()])
def test_fast_and_general_paths_same_bits(rng, kind, shape, dtype):
    cls, y, x, w = calls(kind, shape, np.float32 if np.dtype(dtype).itemsize == 2 else dtype,
                         rng)
    x = x.astype(dtype)
    if kind != "sparse" and np.dtype(dtype).itemsize == 2:
        y = y.astype(dtype)
    for reduction in REDUCTIONS:
        for sw in (None, w):
            for from_logits in (True, False):
                if not from_logits:
                    if kind == "sparse" or shape[1] >= 262_144:
                        continue
                    xp = (1.0 / (1.0 + np.exp(-x.astype(np.float64)))).astype(dtype)
                else:
                    xp = x
                loss = cls(from_logits=from_logits, reduction=reduction)
                fast = loss(y, xp, sw)
                general = loss(y, strided(xp), sw)
                assert isinstance(fast, float) and isinstance(general, float)
                assert np.float64(fast).tobytes() == np.float64(general).tobytes(), (
                    reduction, sw is None, from_logits, fast, general)
                fast_lg, _ = loss.loss_and_grad(y, xp, sw)
                assert np.float64(fast_lg).tobytes() == np.float64(fast).tobytes()
                # grad_out= takes the general path on contiguous input too
                general_lg, _ = loss.loss_and_grad(y, xp, sw, grad_out=np.empty_like(xp))
                assert np.float64(general_lg).tobytes() == np.float64(fast).tobytes()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_one_element_rows_summed_as_a_span_same_gradient(rng, dtype):
    """Rows of one element with a gradient and an unweighted sum: each block is summed by the
    long rows' span kernel; the gradient and the total are the per-row path's, bit for bit
    (targets with -0.0, exact 0 and 1 included)."""
    y, x = binary_case(rng, (300_001, 1), dtype)
    y[:5, 0] = [-0.0, 0.0, 1.0, 0.25, -0.0]
    x[:5, 0] = [0.0, -0.0, -3.5, np.inf, -np.inf]
    fast = fx.BinaryCrossentropy(from_logits=True, reduction="sum")
    rows = fx.BinaryCrossentropy(from_logits=True, reduction="none")
    total, grad = fast.loss_and_grad(y, x)
    per_row, grad_rows = rows.loss_and_grad(y, x)
    assert grad.tobytes() == grad_rows.tobytes()
    expected = blocked_total(np.asarray(per_row, dtype=np.float64), None, 1)
    assert np.float64(total).tobytes() == np.float64(expected).tobytes()
    # and the per-row path of the sum itself (a strided view goes there)
    assert np.float64(fast(y, strided(x))).tobytes() == np.float64(total).tobytes()


@pytest.mark.parametrize("kind,shape", CASES)
def test_thread_counts_same_bits(rng, kind, shape):
    cls, y, x, w = calls(kind, shape, np.float32, rng)
    for reduction in REDUCTIONS:
        for sw in (None, w):
            got = {np.float64(cls(from_logits=True, reduction=reduction, n_threads=k)(
                y, x, sw)).tobytes() for k in (1, 2, 4)}
            assert len(got) == 1, reduction


@pytest.mark.parametrize("shape", [(300_001, 1), (100_003, 10), (2_001, 1_000)])
def test_nan_in_a_block_stays_nan(rng, shape):
    y, x = binary_case(rng, shape, np.float32)
    x[shape[0] // 2, 0] = np.nan
    for reduction in REDUCTIONS:
        got = fx.BinaryCrossentropy(from_logits=True, reduction=reduction)(y, x)
        assert math.isnan(got)
    labels, xs = sparse_case(rng, (shape[0], max(shape[1], 2)), np.float32)
    xs[shape[0] - 1, 1] = np.nan
    assert math.isnan(fx.SparseCategoricalCrossentropy(from_logits=True, reduction="sum")(
        labels, xs))
    # the other blocks are untouched: the NaN row weighs 0 yet stays NaN (0 * NaN), as before
    w = np.ones(shape[0])
    w[shape[0] - 1] = 0.0
    assert math.isnan(fx.SparseCategoricalCrossentropy(from_logits=True, reduction="sum")(
        labels, xs, w))


def test_label_out_of_range_still_reported(rng):
    labels, x = sparse_case(rng, (300_001, 3), np.float32)
    labels[123_456] = 3
    loss = fx.SparseCategoricalCrossentropy(from_logits=True, reduction="sum")
    with pytest.raises(LabelRangeError, match="3") as err:
        loss(labels, x)
    assert err.value.position == (123_456,)
    assert err.value.value == 3



# The binary focal and KL-divergence kernels (from logits) sum their blocks the same way.
FOCAL_KL_CASES = [("binary_focal", s) for s in SHAPES] + [
    ("kl", s) for s in SHAPES if s[1] > 1]


def focal_kl_call(kind, shape, dtype, rng):
    """(loss class, its options, y_true, y_pred, sample weight)."""
    x = logits(rng, shape, dtype)
    if kind == "binary_focal":
        return (fx.BinaryFocalCrossentropy,
                {"gamma": 1.5, "apply_class_balancing": True, "label_smoothing": 0.1},
                binary_targets(rng, shape, dtype), x, rng.random(shape[0]))
    t = soft_targets(rng, shape, dtype=dtype)
    t[0, 0] = 0.0   # 0 log 0 = 0
    return fx.KLDivergence, {}, t, x, rng.random(shape[0])


@pytest.fixture
def every_isa():
    """The available instruction-set paths; the automatic choice restored afterwards."""
    yield fx.available_isas()
    fx.set_isa("auto")


def same_bits(a, b):
    return np.asarray(a, dtype=np.float64).tobytes() == np.asarray(b, dtype=np.float64).tobytes()


@pytest.mark.parametrize("kind,shape", FOCAL_KL_CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_focal_and_kl_block_sums_same_bits(rng, every_isa, kind, shape, dtype):
    """Summed inside the kernel (any reduction but "none") == the float64 per-row losses
    summed afterwards, with the same gradient, on every path and thread count."""
    cls, opts, y, x, w = focal_kl_call(kind, shape, dtype, rng)
    first = {}
    for isa in every_isa:
        fx.set_isa(isa)
        for n_threads in (1, 2, 4):
            for sw in (None, w):
                rows_loss = cls(from_logits=True, reduction="none", n_threads=n_threads,
                                **opts)
                # the kernel's float64 per-row losses, weighted and summed by the blocks
                per_row = _family.compute(rows_loss._spec, y, x, sw, want_grad=True,
                                          want_total=True)
                fused, grad = cls(from_logits=True, reduction="sum", n_threads=n_threads,
                                  **opts).loss_and_grad(y, x, sw)
                assert same_bits(fused, per_row.total), (isa, n_threads, sw is None)
                assert same_bits(grad, per_row.grad)
                if dtype == np.float64:
                    # the definition in NumPy over the rows of reduction "none"
                    assert same_bits(fused, blocked_total(per_row.loss.ravel(), None,
                                                          shape[1]))
                mean = cls(from_logits=True, n_threads=n_threads, **opts)(y, x, sw)
                assert same_bits(mean, per_row.total / shape[0])
                # and the same bits on every path and thread count
                assert same_bits(fused, first.setdefault(sw is None, fused)), (isa, n_threads)


@pytest.mark.parametrize("kind", ["binary_focal", "kl"])
def test_focal_and_kl_block_sums_match_the_oracle(rng, kind):
    shape = (2_001, 1_000)
    cls, opts, y, x, w = focal_kl_call(kind, shape, np.float64, rng)
    got = cls(from_logits=True, reduction="sum", **opts)(y, x, w)
    expected = math.fsum(ref.FAMILY_PER_SAMPLE[kind](y, x, from_logits=True, **opts) * w)
    assert got == pytest.approx(expected, rel=rtol_for(np.float64))


@pytest.mark.parametrize("kind", ["binary_focal", "kl"])
def test_focal_and_kl_nan_in_a_block_stays_nan(rng, kind):
    cls, opts, y, x, w = focal_kl_call(kind, (100_003, 10), np.float32, rng)
    x[50_000, 3] = np.nan
    w[50_000] = 0.0   # weighs 0 yet stays NaN (0 * NaN), as the per-row sum does
    for reduction in REDUCTIONS:
        assert math.isnan(cls(from_logits=True, reduction=reduction, **opts)(y, x, w))
