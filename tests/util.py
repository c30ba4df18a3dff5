"""Case generators and assertions shared by the test modules (bottleneck's tests/util.py idea)."""

import contextlib

import numpy as np

import fastxent as fx
from fastxent import _kernels

# the three loss families: the class (reductions, gradient) and the per-sample function
CLASSES = {
    "categorical": fx.CategoricalCrossentropy,
    "sparse_categorical": fx.SparseCategoricalCrossentropy,
    "binary": fx.BinaryCrossentropy,
}
FUNCTIONS = {
    "categorical": fx.categorical_crossentropy,
    "sparse_categorical": fx.sparse_categorical_crossentropy,
    "binary": fx.binary_crossentropy,
}
DTYPES = (np.float32, np.float64)
RTOL = {np.dtype(np.float32): 2e-5, np.dtype(np.float64): 1e-12}


def low_precision_dtypes():
    """float16, and bfloat16 when ml_dtypes is installed (an optional extra)."""
    try:
        import ml_dtypes
    except ImportError:
        return (np.dtype(np.float16),)
    return (np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16))


def is_low_precision(dtype) -> bool:
    return np.dtype(dtype).name in ("float16", "bfloat16")


def result_dtype(dtype):
    """The dtype of per-sample losses for y_pred of ``dtype`` (float32 for low precision)."""
    return np.dtype(np.float32) if is_low_precision(dtype) else np.dtype(dtype)


def rtol_for(dtype):
    return RTOL[np.dtype(dtype)]


def assert_close(actual, desired, dtype=np.float64, rtol=None, err_msg=""):
    """allclose with a dtype-dependent rtol and an atol relative to the array's scale.

    NaN must match NaN and +-inf must match exactly.  The atol is ``rtol`` times the
    largest finite magnitude in ``desired`` (at least 1): gradients have entries near 0
    whose absolute error is set by the largest entries, not by themselves.
    """
    rtol = rtol_for(dtype) if rtol is None else rtol
    actual = np.asarray(actual, dtype=np.float64)
    desired = np.asarray(desired, dtype=np.float64)
    assert actual.shape == desired.shape, f"shape {actual.shape} != {desired.shape} {err_msg}"
    finite = desired[np.isfinite(desired)]
    scale = max(1.0, float(np.max(np.abs(finite)))) if finite.size else 1.0
    np.testing.assert_allclose(
        actual, desired, rtol=rtol, atol=rtol * scale, equal_nan=True, err_msg=err_msg
    )


def logits(rng, shape, dtype=np.float64, scale=2.0):
    return (rng.standard_normal(shape) * scale).astype(dtype)


def probabilities(rng, shape, axis=-1, dtype=np.float64, normalized=False):
    """Positive entries, away from the [eps, 1 - eps] clip boundaries once normalized."""
    p = rng.uniform(0.05, 1.0, size=shape)
    if normalized:
        p = p / p.sum(axis=axis, keepdims=True)
    return p.astype(dtype)


def soft_targets(rng, shape, axis=-1, dtype=np.float64):
    """Rows that are probability distributions along ``axis`` (sum to 1)."""
    t = rng.exponential(size=shape)
    return (t / t.sum(axis=axis, keepdims=True)).astype(dtype)


def one_hot_targets(rng, shape, axis=-1, dtype=np.float64):
    n_classes = shape[axis]
    batch = tuple(np.delete(np.array(shape), axis % len(shape)))
    labels = rng.integers(0, n_classes, size=batch)
    t = np.moveaxis(np.eye(n_classes)[labels], -1, axis % len(shape))
    return t.astype(dtype)


def sparse_labels(rng, pred_shape, axis=-1, ignore_class=None, frac_ignored=0.25, dtype=np.int64):
    n_classes = pred_shape[axis]
    batch = tuple(np.delete(np.array(pred_shape), axis % len(pred_shape)))
    labels = rng.integers(0, n_classes, size=batch)
    if ignore_class is not None:
        labels = np.where(rng.random(batch) < frac_ignored, ignore_class, labels)
    return labels.astype(dtype)


def binary_targets(rng, shape, dtype=np.float64, hard=False):
    if hard:
        return rng.integers(0, 2, size=shape).astype(dtype)
    return rng.uniform(0.0, 1.0, size=shape).astype(dtype)


def binary_probabilities(rng, shape, dtype=np.float64):
    return rng.uniform(0.02, 0.98, size=shape).astype(dtype)


def make_data(rng, kind, shape, axis, dtype, from_logits, ignore_class=None):
    """y_true and y_pred for a case; targets in y_pred's dtype for the dense kinds."""
    if kind == "categorical":
        y = soft_targets(rng, shape, axis=axis, dtype=dtype)
    elif kind == "sparse_categorical":
        y = sparse_labels(rng, shape, axis=axis, ignore_class=ignore_class)
    else:
        y = binary_targets(rng, shape, dtype=dtype)
    if from_logits:
        x = logits(rng, shape, dtype=dtype)
    elif kind == "binary":
        x = binary_probabilities(rng, shape, dtype=dtype)
    else:
        x = probabilities(rng, shape, dtype=dtype)
    return y, x


def batch_shape(pred_shape, axis):
    return tuple(np.delete(np.array(pred_shape), axis % len(pred_shape)).tolist())


def central_difference(f, x, rel_step=1e-6, floor=1.0, steps=None):
    """Central finite-difference gradient of the scalar function ``f`` at float64 ``x``.

    The step for entry i is ``rel_step * max(floor, |x_i|)``, or ``steps[i]`` when given
    (for entries next to a kink, e.g. a clipped probability, where the step must stay
    on one side of it yet be large enough to move the row sum).
    """
    x = np.array(x, dtype=np.float64)
    if steps is None:
        steps = rel_step * np.maximum(floor, np.abs(x))
    steps = np.broadcast_to(np.asarray(steps, dtype=np.float64), x.shape).reshape(-1)
    grad = np.zeros_like(x)
    flat = x.reshape(-1)
    g = grad.reshape(-1)
    for i in range(flat.size):
        h = steps[i]
        old = flat[i]
        flat[i] = old + h
        f_plus = f(x)
        flat[i] = old - h
        f_minus = f(x)
        flat[i] = old
        g[i] = (f_plus - f_minus) / (2.0 * h)
    return grad


def unaligned(a):
    """A copy of ``a`` whose elements sit at an odd byte offset (``flags.aligned`` False), as
    arrays rebuilt from serialized bytes can be."""
    a = np.asarray(a)
    buf = bytearray(a.nbytes + 1)
    out = np.frombuffer(buf, dtype=a.dtype, offset=1, count=a.size).reshape(a.shape)
    out[...] = a
    assert not out.flags.aligned or a.dtype.itemsize == 1 or a.size == 0
    return out


# ---- thread teams ----------------------------------------------------------------------------
# A kernel loop over k fixed items (blocks of rows, or the chunks of rows split across threads)
# holding n elements runs on min(n_threads, k, max(1, n // TEAM_ELEMENTS)) threads
# (xent_kernels.h, fx_team_size).  No result depends on the team, but a test of that must run
# on teams: the helpers below say how many items a shape has, and read what the kernels ran.


def team_size(n_threads, n_items, n_elements, per_thread=_kernels.TEAM_ELEMENTS):
    """The documented rule: the threads of a loop over n_items items of n_elements."""
    return max(1, min(n_threads, n_items, n_elements // per_thread))


def team_items(shape):
    """(blocks, most items) of a call on y_pred of ``shape`` (class axis last): its fixed
    blocks of rows, and the chunks of its rows when they are long enough to be split (the
    split paths: binary rows, softmax rows from logits without the Hessian)."""
    n_cols = shape[-1] if shape else 1
    n_rows = int(np.prod(shape[:-1], dtype=np.int64)) if len(shape) > 1 else 1
    blocks = _kernels.n_blocks(n_rows, n_cols)
    if n_cols < _kernels.SPLIT_MIN:
        return blocks, blocks
    return blocks, n_rows * -(-n_cols // _kernels.SPLIT_CHUNK)


def family_runs_kernels(kind, from_logits):
    """Whether a loss of ``test_focal.CLASSES`` computes its rows in kernel loops (on
    n_threads threads); the others compute them in NumPy, on the calling thread."""
    if kind in ("binary_focal", "kl"):
        return from_logits
    return kind == "sparse_focal" or (kind == "gce" and from_logits)


def teams_ran(smallest, largest=None, what=""):
    """Assert that the kernel loops since the last read ran on teams of at most ``largest``
    threads and that the largest of them had at least ``smallest`` (the kernels' own record,
    ``_kernels._team_stats``; a serial build runs everything on one thread)."""
    team, _ = _kernels._team_stats()
    largest = smallest if largest is None else largest
    if not fx.openmp_enabled():
        smallest = largest = 1
    assert smallest <= team <= largest, (
        f"{what}: the largest team had {team} threads, expected {smallest} to {largest}")


@contextlib.contextmanager
def team_per_item():
    """Lift the team size's minimum of elements per thread (a private hook that changes the
    team size only), so that a loop over k items runs on min(n_threads, k) threads: inputs of
    a few blocks then run on teams of up to 4."""
    old = _kernels._set_team_elements(1)
    _kernels._team_stats()
    try:
        yield
    finally:
        _kernels._set_team_elements(old)
