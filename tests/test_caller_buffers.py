"""Caller-owned memory (``grad_out``, ``inplace``), ``return_lse`` and ``z_loss``.

* ``grad_out`` / ``inplace``: the caller's own array comes back, holds exactly what the
  allocating path returns, every misuse raises an error naming the argument, and a call
  allocates no N x C array (tracemalloc).
* ``return_lse``: against ``scipy.special.logsumexp``.
* ``z_loss``: loss and gradient against an independent NumPy computation, PyTorch autograd and
  central finite differences, weighted and masked like the main loss.
"""

import tracemalloc

import numpy as np
import pytest
from scipy.special import logsumexp
from util import DTYPES, assert_close, central_difference, logits, sparse_labels

import fastxent as fx

REDUCTIONS = ["none", "sum", "sum_over_batch_size", "mean_with_sample_weight"]


def _case(rng, kind, shape, dtype, from_logits=True, ignore_class=None):
    """(loss object, y_true, y_pred) for one of the three loss families."""
    n_cls = shape[-1]
    if kind == "sparse":
        loss = fx.SparseCategoricalCrossentropy(
            from_logits=from_logits, ignore_class=ignore_class, label_smoothing=0.1
        )
        y_true = sparse_labels(rng, shape, ignore_class=ignore_class)
    elif kind == "categorical":
        loss = fx.CategoricalCrossentropy(from_logits=from_logits, label_smoothing=0.1)
        y_true = rng.dirichlet(np.ones(n_cls), size=shape[:-1]).astype(dtype)
    else:
        loss = fx.BinaryCrossentropy(from_logits=from_logits, label_smoothing=0.1)
        y_true = rng.uniform(size=shape).astype(dtype)
    if from_logits:
        y_pred = logits(rng, shape, dtype)
    else:
        y_pred = rng.uniform(0.05, 1.0, size=shape).astype(dtype)
    return loss, y_true, y_pred


KINDS = ["sparse", "categorical", "binary"]


def _peak_bytes(call) -> int:
    """The peak of NumPy / Python allocations (tracemalloc) during ``call()``."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        call()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# ------------------------------------------------------------------------------ grad_out


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("from_logits", [True, False])
@pytest.mark.parametrize("shape", [(9, 7), (3, 4, 40)])
def test_grad_out_is_returned_and_equals_allocating_path(rng, kind, dtype, from_logits, shape):
    loss, y_true, y_pred = _case(rng, kind, shape, dtype, from_logits)
    sw = rng.uniform(0.5, 2.0, size=shape[:-1])
    expected_loss, expected_grad = loss.loss_and_grad(y_true, y_pred, sw)
    before = y_pred.copy()
    grad_out = np.full(shape, np.nan, dtype=dtype)  # garbage: every entry must be written
    value, grad = loss.loss_and_grad(y_true, y_pred, sw, grad_out=grad_out)
    assert grad is grad_out
    assert np.shares_memory(grad, grad_out)
    assert value == expected_loss
    np.testing.assert_array_equal(grad, expected_grad)
    np.testing.assert_array_equal(y_pred, before)  # inputs untouched


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_grad_out_with_ignored_rows_writes_zeros(rng, reduction):
    loss = fx.SparseCategoricalCrossentropy(from_logits=True, ignore_class=-100,
                                            reduction=reduction)
    y_pred = logits(rng, (12, 6), np.float32)
    y_true = sparse_labels(rng, (12, 6), ignore_class=-100, frac_ignored=0.5)
    y_true[0] = -100
    grad_out = np.full_like(y_pred, np.nan)
    value, grad = loss.loss_and_grad(y_true, y_pred, grad_out=grad_out)
    expected_value, expected_grad = loss.loss_and_grad(y_true, y_pred)
    assert grad is grad_out
    np.testing.assert_array_equal(grad, expected_grad)
    np.testing.assert_array_equal(grad[y_true == -100], 0.0)
    np.testing.assert_array_equal(value, expected_value)


def test_grad_out_through_gradient_method(rng):
    loss = fx.SparseCategoricalCrossentropy(from_logits=True)
    y_pred = logits(rng, (5, 4))
    y_true = rng.integers(0, 4, 5)
    out = np.empty_like(y_pred)
    grad = loss.gradient(y_true, y_pred, grad_out=out)
    assert grad is out
    np.testing.assert_array_equal(grad, loss.loss_and_grad(y_true, y_pred)[1])


def test_grad_out_with_class_axis_not_last(rng):
    loss = fx.SparseCategoricalCrossentropy(from_logits=True, axis=1)
    y_pred = logits(rng, (4, 6, 3))  # (batch, classes, seq), torch layout
    y_true = rng.integers(0, 6, (4, 3))
    # the buffer must be C-contiguous once the class axis is moved last
    out = np.moveaxis(np.empty((4, 3, 6)), -1, 1)
    value, grad = loss.loss_and_grad(y_true, y_pred, grad_out=out)
    assert grad is out
    expected_value, expected_grad = loss.loss_and_grad(y_true, y_pred)
    assert value == expected_value
    np.testing.assert_array_equal(grad, expected_grad)
    with pytest.raises(ValueError, match="grad_out must be C-contiguous with the class axis last"):
        loss.loss_and_grad(y_true, y_pred, grad_out=np.empty((4, 6, 3)))


def _sparse_setup(rng, dtype=np.float64):
    loss = fx.SparseCategoricalCrossentropy(from_logits=True)
    return loss, rng.integers(0, 5, 6), logits(rng, (6, 5), dtype)


def test_grad_out_wrong_shape(rng):
    loss, y, x = _sparse_setup(rng)
    with pytest.raises(ValueError, match=r"grad_out has shape \(6, 4\), expected y_pred's shape"):
        loss.loss_and_grad(y, x, grad_out=np.empty((6, 4)))
    with pytest.raises(ValueError, match="grad_out has shape"):
        loss.loss_and_grad(y, x, grad_out=np.empty(30))


@pytest.mark.parametrize("dtype", DTYPES)
def test_grad_out_wrong_dtype(rng, dtype):
    loss, y, x = _sparse_setup(rng, dtype)
    other = np.float64 if dtype == np.float32 else np.float32
    with pytest.raises(TypeError, match="grad_out has dtype"):
        loss.loss_and_grad(y, x, grad_out=np.empty(x.shape, dtype=other))
    with pytest.raises(TypeError, match="grad_out has dtype"):
        loss.loss_and_grad(y, x, grad_out=np.empty(x.shape, dtype=np.int64))


def test_grad_out_not_contiguous(rng):
    loss, y, x = _sparse_setup(rng)
    with pytest.raises(ValueError, match="grad_out must be C-contiguous"):
        loss.loss_and_grad(y, x, grad_out=np.asfortranarray(np.empty(x.shape)))
    with pytest.raises(ValueError, match="grad_out must be C-contiguous"):
        loss.loss_and_grad(y, x, grad_out=np.empty((6, 10))[:, ::2])


def test_grad_out_read_only_or_not_an_array(rng):
    loss, y, x = _sparse_setup(rng)
    ro = np.empty_like(x)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="grad_out is read-only"):
        loss.loss_and_grad(y, x, grad_out=ro)
    with pytest.raises(TypeError, match="grad_out must be a NumPy array"):
        loss.loss_and_grad(y, x, grad_out=np.zeros(x.shape).tolist())


def test_grad_out_overlapping_inputs(rng):
    loss, y, x = _sparse_setup(rng)
    with pytest.raises(ValueError, match="grad_out overlaps y_pred; use inplace=True"):
        loss.loss_and_grad(y, x, grad_out=x)
    buf = logits(rng, (12, 5))
    with pytest.raises(ValueError, match="grad_out overlaps y_pred"):  # partial overlap
        loss.loss_and_grad(y, buf[:6], grad_out=buf[3:9])
    big = np.empty((7, 5))
    with pytest.raises(ValueError, match="grad_out overlaps sample_weight"):
        loss.loss_and_grad(y, x, sample_weight=big[:6, 0], grad_out=big[:6])
    cce = fx.CategoricalCrossentropy(from_logits=True)
    t = np.eye(5)[y]
    with pytest.raises(ValueError, match="grad_out overlaps y_true"):
        cce.loss_and_grad(t, x, grad_out=t)


def test_grad_out_with_inplace_or_without_gradient(rng):
    loss, y, x = _sparse_setup(rng)
    with pytest.raises(ValueError, match="either grad_out or inplace=True, not both"):
        loss.loss_and_grad(y, x.copy(), grad_out=np.empty_like(x), inplace=True)


def _general_path_result(loss, y_true, y_pred, sw, **kw):
    """The same call through the general (Python-planned) path: y_true as a list."""
    return loss.loss_and_grad(np.asarray(y_true).tolist(), y_pred, sw, **kw)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("shape", [(37, 5), (3000, 1), (5, 300)])
def test_caller_buffers_take_the_compiled_path_with_the_same_bits(rng, kind, dtype, reduction,
                                                                  n_threads, shape):
    """grad_out and inplace go through the compiled common-call path (no per-sample array,
    no Python planning) and return exactly the bits of the general path."""
    loss, y_true, y_pred = _case(rng, kind, shape, dtype)
    loss = type(loss).from_config({**loss.get_config(), "reduction": reduction,
                                   "n_threads": n_threads})
    sw = rng.uniform(0.5, 2.0, size=shape[:-1])
    want_loss, want_grad = _general_path_result(loss, y_true, y_pred, sw)
    grad_out = np.full(shape, np.nan, dtype=dtype)
    got_loss, got_grad = loss.loss_and_grad(y_true, y_pred, sw, grad_out=grad_out)
    assert got_grad is grad_out
    np.testing.assert_array_equal(got_grad, want_grad)
    np.testing.assert_array_equal(np.asarray(got_loss), np.asarray(want_loss))
    work = y_pred.copy()
    got_loss, got_grad = loss.loss_and_grad(y_true, work, sw, inplace=True)
    assert got_grad is work
    np.testing.assert_array_equal(work, want_grad)
    np.testing.assert_array_equal(np.asarray(got_loss), np.asarray(want_loss))


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_binary_targets_one_rank_lower_take_the_compiled_path(rng, reduction, dtype):
    """Binary y_true of shape (N,) beside y_pred (N, 1) (Keras' rank rule): the compiled path,
    the general path's bits, and no per-sample array."""
    n = 300_000
    loss = fx.BinaryCrossentropy(from_logits=True, reduction=reduction, label_smoothing=0.1)
    y_true = rng.uniform(size=n).astype(dtype)
    y_pred = logits(rng, (n, 1), dtype)
    sw = rng.uniform(0.5, 2.0, size=n)
    want_loss, want_grad = _general_path_result(loss, y_true, y_pred, sw)
    got_loss, got_grad = loss.loss_and_grad(y_true, y_pred, sw)
    assert got_grad.shape == (n, 1)
    np.testing.assert_array_equal(got_grad, want_grad)
    np.testing.assert_array_equal(np.asarray(got_loss), np.asarray(want_loss))
    if reduction != "none":
        loss.loss_and_grad(y_true, y_pred)
        peak = _peak_bytes(lambda: loss.loss_and_grad(y_true, y_pred))
        assert peak < y_pred.nbytes + 0.25 * n * 8  # the gradient, and no float64 per sample


@pytest.mark.parametrize("kind", ["binary", "categorical"])
def test_general_path_writes_no_per_sample_array(rng, kind):
    """A call the compiled common-call path does not take (here: float64 targets beside
    float32 logits, converted first) still has the kernel sum its blocks for a reduced loss:
    the conversion is the only per-row allocation, no float64 per-sample losses."""
    n, c = 300_000, (1 if kind == "binary" else 2)
    loss = (fx.BinaryCrossentropy(from_logits=True) if kind == "binary"
            else fx.CategoricalCrossentropy(from_logits=True))
    y_pred = logits(rng, (n, c), np.float32)
    y_true = (rng.uniform(size=(n, c)) if kind == "binary"
              else rng.dirichlet(np.ones(c), size=n))  # float64: not y_pred's dtype
    grad_out = np.empty_like(y_pred)
    want = loss.loss_and_grad(y_true.astype(np.float32), y_pred)  # the compiled path
    got = loss.loss_and_grad(y_true, y_pred, grad_out=grad_out)
    assert got[0] == want[0]
    np.testing.assert_array_equal(got[1], want[1])
    peak = _peak_bytes(lambda: loss.loss_and_grad(y_true, y_pred, grad_out=grad_out))
    converted = n * c * 4
    assert peak < converted + 0.25 * n * 8


@pytest.mark.parametrize("kind", KINDS)
def test_caller_buffers_write_no_per_sample_array(rng, kind):
    """A reduced loss into the caller's buffer writes no float64 per-sample array (the
    kernel sums its blocks): tall, narrow inputs, where that array would be the largest."""
    n, c = 400_000, 1
    if kind != "binary":
        c = 2
    loss, y_true, y_pred = _case(rng, kind, (n, c), np.float32)
    grad_out = np.empty_like(y_pred)
    loss.loss_and_grad(y_true, y_pred, grad_out=grad_out)
    peak = _peak_bytes(lambda: loss.loss_and_grad(y_true, y_pred, grad_out=grad_out))
    assert peak < 0.25 * n * 8


# ------------------------------------------------------------------------------- inplace


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("from_logits", [True, False])
@pytest.mark.parametrize("shape", [(9, 7), (3, 4, 40), (2, 3)])
def test_inplace_overwrites_y_pred_with_the_gradient(rng, kind, dtype, from_logits, shape):
    loss, y_true, y_pred = _case(rng, kind, shape, dtype, from_logits)
    y_true_before = np.array(y_true, copy=True)
    expected_loss, expected_grad = loss.loss_and_grad(y_true, y_pred)
    work = y_pred.copy()
    value, grad = loss.loss_and_grad(y_true, work, inplace=True)
    assert grad is work
    assert np.shares_memory(grad, work)
    assert value == expected_loss
    np.testing.assert_array_equal(grad, expected_grad)
    np.testing.assert_array_equal(y_true, y_true_before)


def test_inplace_sparse_with_every_option(rng):
    loss = fx.SparseCategoricalCrossentropy(
        from_logits=True, ignore_class=-1, label_smoothing=0.2, z_loss=1e-2,
        class_weight=rng.uniform(0.5, 2.0, 6), reduction="mean_with_sample_weight",
    )
    x = logits(rng, (10, 6), np.float32)
    y = sparse_labels(rng, x.shape, ignore_class=-1)
    sw = rng.uniform(0.5, 2.0, 10)
    expected = loss.loss_and_grad(y, x, sw)
    work = x.copy()
    value, grad = loss.loss_and_grad(y, work, sw, inplace=True)
    assert grad is work and value == expected[0]
    np.testing.assert_array_equal(grad, expected[1])
    work = x.copy()
    assert loss.gradient(y, work, sw, inplace=True) is work
    np.testing.assert_array_equal(work, expected[1])


def test_inplace_class_axis_not_last(rng):
    loss = fx.SparseCategoricalCrossentropy(from_logits=True, axis=0)
    x = np.asfortranarray(logits(rng, (5, 8)))  # classes first; rows contiguous after moveaxis
    y = rng.integers(0, 5, 8)
    expected = loss.loss_and_grad(y, x)
    work = x.copy(order="F")
    value, grad = loss.loss_and_grad(y, work, inplace=True)
    assert grad is work and value == expected[0]
    np.testing.assert_array_equal(grad, expected[1])


def test_inplace_read_only_raises_and_leaves_input(rng):
    loss, y, x = _sparse_setup(rng)
    x.flags.writeable = False
    before = x.copy()
    with pytest.raises(ValueError, match="inplace=True needs a writeable y_pred"):
        loss.loss_and_grad(y, x, inplace=True)
    np.testing.assert_array_equal(x, before)


@pytest.mark.parametrize("layout", ["fortran", "strided", "axis0_c_order"])
def test_inplace_non_contiguous_raises(rng, layout):
    loss, y, x = _sparse_setup(rng)
    if layout == "fortran":
        arr = np.asfortranarray(x)
    elif layout == "strided":
        arr = np.repeat(x, 2, axis=1)[:, ::2]
    else:
        loss = fx.SparseCategoricalCrossentropy(from_logits=True, axis=0)
        arr = np.ascontiguousarray(x.T)
    before = arr.copy()
    with pytest.raises(ValueError, match="inplace=True needs y_pred contiguous"):
        loss.loss_and_grad(y, arr, inplace=True)
    np.testing.assert_array_equal(arr, before)


def test_inplace_not_an_array_or_overlapping(rng):
    loss, y, x = _sparse_setup(rng)
    with pytest.raises(TypeError, match="inplace=True needs y_pred to be a NumPy array"):
        loss.loss_and_grad(y, x.tolist(), inplace=True)
    cce = fx.CategoricalCrossentropy(from_logits=True)
    both = np.eye(5)[y]
    with pytest.raises(ValueError, match="y_pred overlaps y_true"):
        cce.loss_and_grad(both, both, inplace=True)


def test_default_never_modifies_y_pred(rng):
    loss, y, x = _sparse_setup(rng)
    before = x.copy()
    _, grad = loss.loss_and_grad(y, x)
    assert not np.shares_memory(grad, x)
    np.testing.assert_array_equal(x, before)


# ------------------------------------------------------------------------ no N x C alloc


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_caller_buffers_allocate_no_n_by_c_array(rng, kind, dtype):
    n, c = 1500, 2000
    loss, y_true, y_pred = _case(rng, kind, (n, c), dtype)
    if kind == "sparse":
        loss = fx.SparseCategoricalCrossentropy(from_logits=True, ignore_class=-100,
                                                z_loss=1e-4, label_smoothing=0.1)
    sw = rng.uniform(0.5, 2.0, n)
    grad_out = np.empty_like(y_pred)
    work = y_pred.copy()
    nbytes = y_pred.nbytes

    def peak_of(**kw):
        return _peak_bytes(lambda: loss.loss_and_grad(y_true, kw.pop("x", y_pred), sw, **kw))

    # the measurement sees the N x C gradient of the allocating path ...
    assert peak_of() >= nbytes
    # ... and none with the caller's buffer or in place
    assert peak_of(grad_out=grad_out) < 0.05 * nbytes
    assert peak_of(x=work, inplace=True) < 0.05 * nbytes


# ---------------------------------------------------------------------------- return_lse


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("shape", "axis"), [((7, 5), -1), ((3, 6, 4), 1), ((4,), 0)])
def test_return_lse_matches_scipy(rng, dtype, shape, axis):
    x = logits(rng, shape, dtype, scale=5.0)
    batch = np.delete(np.array(shape), axis % len(shape))
    y = rng.integers(0, shape[axis], size=tuple(batch.tolist()))
    loss = fx.SparseCategoricalCrossentropy(from_logits=True, axis=axis)
    value, grad, lse = loss.loss_and_grad(y, x, return_lse=True)
    expected = logsumexp(x.astype(np.float64), axis=axis)
    assert lse.dtype == dtype and lse.shape == expected.shape
    assert_close(lse, expected, dtype, rtol=1e-6 if dtype == np.float32 else 1e-13)
    # and the other outputs are those of the plain call
    plain = loss.loss_and_grad(y, x)
    assert value == plain[0]
    np.testing.assert_array_equal(grad, plain[1])


def test_return_lse_categorical_with_masks_and_grad_out(rng):
    x = logits(rng, (6, 5))
    x[0, 1] = -np.inf
    x[2, :3] = -np.inf
    t = rng.dirichlet(np.ones(5), size=6)
    t[0, 1] = 0.0
    t[2, :3] = 0.0
    t /= t.sum(axis=1, keepdims=True)
    loss = fx.CategoricalCrossentropy(from_logits=True, reduction="none")
    out = np.empty_like(x)
    _, grad, lse = loss.loss_and_grad(t, x, grad_out=out, return_lse=True)
    assert grad is out
    assert_close(lse, logsumexp(x, axis=1), np.float64, rtol=1e-13)


def test_return_lse_is_zero_on_ignored_rows(rng):
    x = logits(rng, (8, 4))
    y = rng.integers(0, 4, 8)
    y[[1, 5]] = -100
    loss = fx.SparseCategoricalCrossentropy(from_logits=True, ignore_class=-100)
    lse = loss.loss_and_grad(y, x, return_lse=True)[2]
    keep = y != -100
    np.testing.assert_array_equal(lse[~keep], 0.0)
    assert_close(lse[keep], logsumexp(x[keep], axis=1), np.float64, rtol=1e-13)


def test_return_lse_errors(rng):
    x = logits(rng, (4, 3))
    with pytest.raises(ValueError, match="return_lse applies to the softmax"):
        fx.BinaryCrossentropy(from_logits=True).loss_and_grad(np.zeros((4, 3)), x,
                                                              return_lse=True)
    with pytest.raises(ValueError, match="return_lse needs from_logits=True"):
        fx.SparseCategoricalCrossentropy().loss_and_grad([0, 1, 2, 0], np.abs(x) + 0.1,
                                                         return_lse=True)


# -------------------------------------------------------------------------------- z_loss


def _np_zloss(targets, x, z, sw=None, valid=None, reduction="none", denom_weights=None):
    """Independent NumPy: -sum_k t_k log softmax(x)_k + z lse^2 per row, then the reduction.

    Returns (loss, grad) with grad = d(reduced loss)/dx (grad of the sum for "none")."""
    x = np.asarray(x, np.float64)
    lse = logsumexp(x, axis=1)
    p = np.exp(x - lse[:, None])
    log_p = x - lse[:, None]
    per_row = -(targets * log_p).sum(axis=1) + z * lse**2
    grad_rows = p * targets.sum(axis=1, keepdims=True) - targets + 2 * z * lse[:, None] * p
    w = np.ones(len(x)) if sw is None else np.asarray(sw, np.float64)
    if valid is not None:
        w = w * valid
    per_row = per_row * w
    grad_rows = grad_rows * w[:, None]
    if reduction == "none":
        return per_row, grad_rows
    if reduction == "sum":
        d = 1.0
    elif reduction == "sum_over_batch_size":
        d = float(len(x) if valid is None else valid.sum())
    else:
        d = float(np.sum(w if denom_weights is None else w * denom_weights))
    return per_row.sum() / d, grad_rows / d


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("z", [1e-4, 0.05, 1.0])
def test_zloss_sparse_against_numpy(rng, dtype, reduction, z):
    n, c = 11, 7
    x = logits(rng, (n, c), dtype, scale=3.0)
    y = sparse_labels(rng, (n, c), ignore_class=-1)
    y[0] = -1
    sw = rng.uniform(0.5, 2.0, n)
    cw = rng.uniform(0.5, 2.0, c)
    eps = 0.1
    loss = fx.SparseCategoricalCrossentropy(from_logits=True, ignore_class=-1,
                                            label_smoothing=eps, class_weight=cw, z_loss=z,
                                            reduction=reduction)
    valid = y != -1
    onehot = np.zeros((n, c))
    onehot[np.flatnonzero(valid), y[valid]] = 1.0
    targets = (onehot * (1 - eps) + eps / c) * cw  # class weight on the targets only
    exp_loss, exp_grad = _np_zloss(targets, x, z, sw, valid, reduction,
                                   denom_weights=np.where(valid, cw[np.maximum(y, 0)], 0.0))
    value, grad = loss.loss_and_grad(y, x, sw)
    rtol = 2e-5 if dtype == np.float32 else 1e-12
    assert_close(value, exp_loss, dtype, rtol=rtol)
    assert_close(grad, exp_grad, dtype, rtol=rtol)
    np.testing.assert_array_equal(grad[~valid], 0.0)
    # the per-sample function agrees with the class
    per = fx.sparse_categorical_crossentropy(y, x, from_logits=True, ignore_class=-1,
                                             label_smoothing=eps, class_weight=cw, z_loss=z)
    assert_close(per, _np_zloss(targets, x, z, None, valid)[0], dtype, rtol=rtol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_zloss_categorical_against_numpy(rng, dtype):
    x = logits(rng, (3, 5, 6), dtype)
    t = rng.dirichlet(np.ones(6), size=(3, 5)).astype(dtype)
    sw = rng.uniform(0.5, 2.0, 3)  # (batch,) aligned to the leading dim
    z = 0.02
    loss = fx.CategoricalCrossentropy(from_logits=True, z_loss=z, reduction="sum")
    value, grad = loss.loss_and_grad(t, x, sw)
    exp_loss, exp_grad = _np_zloss(t.reshape(-1, 6).astype(np.float64), x.reshape(-1, 6), z,
                                   np.repeat(sw, 5), None, "sum")
    rtol = 2e-5 if dtype == np.float32 else 1e-12
    assert_close(value, exp_loss, dtype, rtol=rtol)
    assert_close(grad, exp_grad.reshape(x.shape), dtype, rtol=rtol)


def test_zloss_adds_exactly_z_lse_squared(rng):
    x = logits(rng, (9, 4), scale=4.0)
    y = rng.integers(0, 4, 9)
    base = fx.sparse_categorical_crossentropy(y, x, from_logits=True)
    for z in (0.0, 0.5, 3.0):
        with_z = fx.sparse_categorical_crossentropy(y, x, from_logits=True, z_loss=z)
        assert_close(with_z - base, z * logsumexp(x, axis=1) ** 2, np.float64, rtol=1e-12)


@pytest.mark.parametrize("reduction", ["sum_over_batch_size", "none"])
def test_zloss_gradient_finite_differences(rng, reduction):
    x = logits(rng, (4, 5))
    y = np.array([0, -100, 3, 1])
    sw = np.array([1.0, 2.0, 0.5, 1.5])
    loss = fx.SparseCategoricalCrossentropy(from_logits=True, z_loss=0.3, ignore_class=-100,
                                            label_smoothing=0.1, reduction=reduction)

    def total(v):
        out = loss(y, v, sw)
        return float(np.sum(out))

    _, grad = loss.loss_and_grad(y, x, sw)
    assert_close(grad, central_difference(total, x), np.float64, rtol=1e-7)


def test_zloss_hessian_diagonal_finite_differences(rng):
    x = logits(rng, (3, 4))
    y = np.array([1, 0, 3])
    loss = fx.SparseCategoricalCrossentropy(from_logits=True, z_loss=0.2, reduction="sum")
    _, hess = loss.gradient_hessian(y, x)
    fd = np.empty_like(x)
    h = 1e-5
    for i in range(x.shape[0]):
        for k in range(x.shape[1]):
            xp, xm = x.copy(), x.copy()
            xp[i, k] += h
            xm[i, k] -= h
            fd[i, k] = (loss.gradient(y, xp)[i, k] - loss.gradient(y, xm)[i, k]) / (2 * h)
    assert_close(hess, fd, np.float64, rtol=1e-7)


@pytest.mark.parametrize("dtype", DTYPES)
def test_zloss_against_torch_autograd(rng, dtype):
    torch = pytest.importorskip("torch")
    n, c, z = 10, 8, 0.05
    x = logits(rng, (n, c), dtype)
    y = rng.integers(0, c, n)
    y[[2, 7]] = -100
    xt = torch.tensor(x.astype(np.float64), requires_grad=True)
    yt = torch.tensor(y)
    ce = torch.nn.functional.cross_entropy(xt, yt, ignore_index=-100, label_smoothing=0.1,
                                           reduction="none")
    mask = yt != -100
    lse = torch.logsumexp(xt, dim=1)
    total = ((ce + z * lse**2) * mask).sum() / mask.sum()
    total.backward()
    loss = fx.SparseCategoricalCrossentropy(from_logits=True, ignore_class=-100,
                                            label_smoothing=0.1, z_loss=z)
    value, grad = loss.loss_and_grad(y, x)
    rtol = 2e-5 if dtype == np.float32 else 1e-12
    assert_close(value, total.item(), dtype, rtol=rtol)
    assert_close(grad, xt.grad.numpy(), dtype, rtol=rtol)


def test_zloss_errors():
    x = np.array([[0.2, 0.8]])
    with pytest.raises(ValueError, match="z_loss needs from_logits=True"):
        fx.SparseCategoricalCrossentropy(z_loss=0.1)([1], x)
    with pytest.raises(ValueError, match="z_loss needs from_logits=True"):
        fx.categorical_crossentropy([[0.0, 1.0]], x, z_loss=0.1)
    with pytest.raises(ValueError, match="z_loss must be a finite number >= 0"):
        fx.sparse_categorical_crossentropy([1], x, from_logits=True, z_loss=-1.0)
    with pytest.raises(ValueError, match="z_loss must be a finite number >= 0"):
        fx.sparse_categorical_crossentropy([1], x, from_logits=True, z_loss=np.inf)
    with pytest.raises(TypeError, match="z_loss must be a real number"):
        fx.sparse_categorical_crossentropy([1], x, from_logits=True, z_loss="0.1")


def test_zloss_in_config_round_trip():
    loss = fx.SparseCategoricalCrossentropy(from_logits=True, z_loss=1e-4)
    assert loss.get_config()["z_loss"] == 1e-4
    assert fx.SparseCategoricalCrossentropy.from_config(loss.get_config()) == loss
