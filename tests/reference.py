"""Plain NumPy float64 reference implementations of fastxent's public API: the test oracle.

Every public function and option of ``fastxent`` has a slow, obviously-correct
counterpart here.  The rules are written out one at a time, on float64 copies:

* softmax cross-entropy: ``log_softmax`` of the logits (max-shifted), explicit one-hot /
  smoothed / class-weighted targets, ``loss = -sum_k w_k t_k log p_k (+ z_loss * lse**2)``,
  gradient ``softmax * sum_k(w_k t_k) - w * t (+ 2 z_loss lse softmax)``;
* from probabilities (``from_logits=False``, Keras): rows divided by their sum, clipped
  to ``[eps, 1 - eps]`` with both bounds rounded to y_pred's dtype (as Keras' clip does:
  for float32, ``1 - 1e-7`` is ``1 - 2**-23``), and the exact gradient of that formula
  (the derivative of the clip is 0 where it is active);
* sigmoid (binary) cross-entropy, elementwise, then the mean over ``axis``;
* ``-inf`` logits are masks (a zero target times ``-inf`` contributes nothing), a row
  that is all ``-inf`` or holds ``+inf``/NaN gives a NaN loss and a NaN gradient row;
* sample weights (lower-rank weights aligned to the leading dims) and the reductions
  ``none``, ``sum``, ``sum_over_batch_size`` (alias ``mean``) and
  ``mean_with_sample_weight``, a zero denominator giving 0.0.

Nothing here is fast; nothing here shares code with the library.  The oracle itself is
checked against Keras 3 and PyTorch in ``test_reference_vs_peers.py``.
"""

import numpy as np

KINDS = ("categorical", "sparse_categorical", "binary")
REDUCTIONS = ("none", "sum", "sum_over_batch_size", "mean", "mean_with_sample_weight")


# --------------------------------------------------------------------------- helpers


def canonical_axis(axis, ndim):
    """Return ``axis`` as a non-negative int, or raise ValueError."""
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis={axis} out of range for an array of rank {ndim}")
    return axis % ndim


def _to_rows(a, axis):
    """Move ``axis`` last and flatten the rest: returns (rows (M, C), batch shape)."""
    a = np.moveaxis(np.asarray(a, dtype=np.float64), axis, -1)
    return a.reshape(-1, a.shape[-1]), a.shape[:-1]


def _from_rows(rows, batch_shape, axis):
    """Inverse of ``_to_rows``."""
    return np.moveaxis(rows.reshape(batch_shape + (rows.shape[-1],)), -1, axis)


def _class_weight_vector(class_weight, n_classes):
    if class_weight is None:
        return np.ones(n_classes)
    w = np.asarray(class_weight, dtype=np.float64).reshape(-1)
    if w.shape != (n_classes,) or not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError(f"bad class_weight {class_weight!r} for {n_classes} classes")
    return w


def sparse_labels_to_int(y_true):
    """Integer labels; float arrays holding integral values are accepted (Keras)."""
    labels = np.asarray(y_true)
    if labels.dtype.kind == "f":
        if not np.all(np.isfinite(labels)) or np.any(labels != np.round(labels)):
            raise ValueError("y_true holds non-integral labels")
        return labels.astype(np.int64)
    if labels.dtype.kind not in "iu":
        raise TypeError(f"y_true must hold integer labels, got {labels.dtype}")
    return labels


# --------------------------------------------------------------- per-row kernels


def softmax_rows(x):
    """Row-wise log-softmax, softmax and log-sum-exp with fastxent's inf/NaN rules.

    Returns (log_p, p, lse, bad) where ``bad`` marks rows that are all ``-inf`` or hold
    ``+inf`` or NaN (their outputs must be NaN; the caller fills them in).
    """
    x = np.asarray(x, dtype=np.float64)
    bad = np.isnan(x).any(axis=1) | np.isposinf(x).any(axis=1) | np.isneginf(x).all(axis=1)
    xs = np.where(bad[:, None], 0.0, x)
    row_max = xs.max(axis=1, keepdims=True)
    shifted = xs - row_max  # -inf stays -inf: a masked class
    e = np.exp(shifted)  # exactly 0.0 for a masked class
    s = e.sum(axis=1, keepdims=True)  # >= 1: the max itself contributes exp(0)
    log_p = shifted - np.log(s)
    p = e / s
    lse = (row_max + np.log(s))[:, 0]
    return log_p, p, lse, bad


def softmax_xent_rows(targets, logits, z_loss=0.0):
    """Per-row loss and gradient of ``-sum_k t_k log softmax(x)_k + z_loss * lse**2``.

    ``targets`` are the final (smoothed and class-weighted) targets.  A zero target
    times a ``-inf`` log-probability contributes nothing (mask semantics).
    """
    t = np.asarray(targets, dtype=np.float64)
    log_p, p, lse, bad = softmax_rows(logits)
    with np.errstate(invalid="ignore"):
        terms = np.where(t != 0.0, t * log_p, 0.0)
    loss = -terms.sum(axis=1) + z_loss * lse**2
    grad = p * t.sum(axis=1, keepdims=True) - t + 2.0 * z_loss * lse[:, None] * p
    loss[bad] = np.nan
    grad[bad, :] = np.nan
    return loss, grad


def clip_bounds(epsilon, dtype=np.float64):
    """Keras' clip ``[eps, 1 - eps]`` of probabilities of ``dtype``: both bounds in that dtype.

    Keras computes ``1.0 - epsilon`` in Python and its clip casts both bounds to the data's
    dtype; for float32 data ``1 - 1e-7`` becomes ``1 - 2**-23``.
    """
    dt = np.dtype(dtype)
    if dt == np.float32:
        return float(np.float32(epsilon)), float(np.float32(1.0 - epsilon))
    return float(epsilon), 1.0 - float(epsilon)


def prob_xent_rows(targets, probs, epsilon, dtype=np.float64):
    """Per-row loss and gradient of Keras' ``from_logits=False`` categorical formula.

    q = p / sum(p); c = clip(q, eps, 1 - eps) (bounds from :func:`clip_bounds` for the
    input's ``dtype``); loss = -sum_k t_k log c_k.
    dloss/dp_j = -(1/S) * (a_j - sum_k a_k q_k) with a_k = t_k / c_k where the clip is
    inactive and 0 where it is active.
    """
    lo, hi = clip_bounds(epsilon, dtype)
    t = np.asarray(targets, dtype=np.float64)
    p = np.asarray(probs, dtype=np.float64)
    s = p.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        q = p / s
        c = np.clip(q, lo, hi)
        loss = -(t * np.log(c)).sum(axis=1)
        inside = (q >= lo) & (q <= hi)  # at the bound the gradient passes
        a = np.where(inside, t / c, 0.0)
        grad = -(a - (a * q).sum(axis=1, keepdims=True)) / s
    grad[np.isnan(s[:, 0]), :] = np.nan  # a NaN anywhere in the row poisons the row
    return loss, grad


def _sigmoid(x):
    """Logistic function without overflow warnings."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(over="ignore"):
        e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _softplus(x):
    """log(1 + exp(x)), stable for any finite x."""
    x = np.asarray(x, dtype=np.float64)
    return np.maximum(x, 0.0) + np.log1p(np.exp(-np.abs(x)))


def sigmoid_xent_elementwise(z, x, pos_weight=1.0):
    """Elementwise ``-[pw z log s(x) + (1 - z) log(1 - s(x))]`` and its derivative in x.

    Written as ``(1 - z) x + (1 + (pw - 1) z) softplus(-x)`` (PyTorch's form).
    """
    z = np.asarray(z, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    pw = np.asarray(pos_weight, dtype=np.float64)
    log_weight = 1.0 + (pw - 1.0) * z
    loss = (1.0 - z) * x + log_weight * _softplus(-x)
    grad = _sigmoid(x) * log_weight - pw * z
    return loss, grad


def sigmoid_prob_xent_elementwise(z, p, epsilon, pos_weight=1.0, dtype=None):
    """Elementwise Keras binary cross-entropy on probabilities clipped to [eps, 1-eps].

    The bounds are :func:`clip_bounds` of ``dtype`` (default: ``p``'s dtype when it is
    float32, else float64).
    """
    if dtype is None:
        dtype = getattr(p, "dtype", np.float64)
    lo, hi = clip_bounds(epsilon, dtype)
    z = np.asarray(z, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    pw = np.asarray(pos_weight, dtype=np.float64)
    c = np.clip(p, lo, hi)
    loss = -(pw * z * np.log(c) + (1.0 - z) * np.log(1.0 - c))
    inside = (p >= lo) & (p <= hi)  # as tf.clip_by_value / torch.clamp
    grad = np.where(inside, -(pw * z / c - (1.0 - z) / (1.0 - c)), 0.0)
    grad = np.where(np.isnan(p), np.nan, grad)
    return loss, grad


# ------------------------------------------------------------ per-sample losses


def _check_common(y_pred, label_smoothing, epsilon):
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing={label_smoothing} outside [0, 1]")
    if not 0.0 < epsilon < 0.5:
        raise ValueError(f"epsilon={epsilon} outside (0, 0.5)")
    if y_pred.ndim < 1:
        raise ValueError("y_pred must be at least 1-D")


def categorical_per_sample(
    y_true,
    y_pred,
    from_logits=False,
    label_smoothing=0.0,
    axis=-1,
    class_weight=None,
    epsilon=1e-7,
    z_loss=0.0,
):
    """Per-sample loss, per-sample gradient and denominator weight, dense targets.

    Returns (loss (batch shape), grad (y_pred shape), valid mask, sample class weight).
    """
    in_dtype = np.asarray(y_pred).dtype  # the clip's bounds are rounded to it
    y_pred = np.asarray(y_pred, dtype=np.float64)
    y_true = np.asarray(y_true, dtype=np.float64)
    _check_common(y_pred, label_smoothing, epsilon)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"shape mismatch {y_true.shape} vs {y_pred.shape}")
    axis = canonical_axis(axis, y_pred.ndim)
    x, batch_shape = _to_rows(y_pred, axis)
    t, _ = _to_rows(y_true, axis)
    n_classes = x.shape[1]
    if n_classes == 0:
        raise ValueError("class axis of size 0")
    w = _class_weight_vector(class_weight, n_classes)
    smoothed = t * (1.0 - label_smoothing) + label_smoothing / n_classes
    loss, grad = _dense_rows(smoothed * w, x, from_logits, epsilon, z_loss, in_dtype)
    sample_cw = (t * w).sum(axis=1) if class_weight is not None else np.ones(len(t))
    return (
        loss.reshape(batch_shape),
        _from_rows(grad, batch_shape, axis),
        np.ones(batch_shape, dtype=bool),
        sample_cw.reshape(batch_shape),
    )


def _dense_rows(targets, x, from_logits, epsilon, z_loss, dtype):
    if from_logits:
        return softmax_xent_rows(targets, x, z_loss)
    if z_loss:
        raise ValueError("z_loss needs from_logits=True")
    return prob_xent_rows(targets, x, epsilon, dtype)


def sparse_categorical_per_sample(
    y_true,
    y_pred,
    from_logits=False,
    ignore_class=None,
    axis=-1,
    label_smoothing=0.0,
    class_weight=None,
    epsilon=1e-7,
    z_loss=0.0,
):
    """Same as ``categorical_per_sample`` for integer labels (shape = y_pred without axis)."""
    in_dtype = np.asarray(y_pred).dtype  # the clip's bounds are rounded to it
    y_pred = np.asarray(y_pred, dtype=np.float64)
    _check_common(y_pred, label_smoothing, epsilon)
    axis = canonical_axis(axis, y_pred.ndim)
    labels = sparse_labels_to_int(y_true)
    batch_shape = y_pred.shape[:axis] + y_pred.shape[axis + 1 :]
    if labels.shape != batch_shape:
        raise ValueError(f"shape mismatch {labels.shape} vs {y_pred.shape}")
    x, _ = _to_rows(y_pred, axis)
    n_classes = x.shape[1]
    if n_classes == 0:
        raise ValueError("class axis of size 0")
    labels = labels.reshape(-1).astype(np.int64)
    valid = np.ones(len(labels), dtype=bool) if ignore_class is None else labels != ignore_class
    out_of_range = valid & ((labels < 0) | (labels >= n_classes))
    if out_of_range.any():
        first = np.flatnonzero(out_of_range)[0]
        pos = np.unravel_index(first, batch_shape)
        raise ValueError(f"label {labels[first]} at {tuple(int(i) for i in pos)} out of range")
    one_hot = np.zeros_like(x)
    one_hot[np.flatnonzero(valid), labels[valid]] = 1.0
    w = _class_weight_vector(class_weight, n_classes)
    smoothed = one_hot * (1.0 - label_smoothing) + label_smoothing / n_classes
    loss, grad = _dense_rows(smoothed * w, x, from_logits, epsilon, z_loss, in_dtype)
    loss[~valid] = 0.0
    grad[~valid, :] = 0.0
    sample_cw = (one_hot * w).sum(axis=1) if class_weight is not None else valid * 1.0
    return (
        loss.reshape(batch_shape),
        _from_rows(grad, batch_shape, axis),
        valid.reshape(batch_shape),
        sample_cw.reshape(batch_shape),
    )


def binary_per_sample(
    y_true,
    y_pred,
    from_logits=False,
    label_smoothing=0.0,
    axis=-1,
    pos_weight=None,
    epsilon=1e-7,
):
    """Per-sample binary cross-entropy: the mean over ``axis`` of the elementwise loss.

    ``pos_weight`` is a scalar or a vector with one entry per position along ``axis``.
    """
    in_dtype = np.asarray(y_pred).dtype  # the clip's bounds are rounded to it
    y_pred = np.asarray(y_pred, dtype=np.float64)
    y_true = np.asarray(y_true, dtype=np.float64)
    _check_common(y_pred, label_smoothing, epsilon)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"shape mismatch {y_true.shape} vs {y_pred.shape}")
    axis = canonical_axis(axis, y_pred.ndim)
    x, batch_shape = _to_rows(y_pred, axis)
    z, _ = _to_rows(y_true, axis)
    n = x.shape[1]
    if n == 0:
        raise ValueError("class axis of size 0")
    pw = 1.0 if pos_weight is None else np.asarray(pos_weight, dtype=np.float64)
    if np.ndim(pw) > 0 and np.shape(pw) != (n,):
        raise ValueError("bad pos_weight")
    z = z * (1.0 - label_smoothing) + 0.5 * label_smoothing
    if from_logits:
        loss_el, grad_el = sigmoid_xent_elementwise(z, x, pw)
    else:
        loss_el, grad_el = sigmoid_prob_xent_elementwise(z, x, epsilon, pw, in_dtype)
    loss = loss_el.mean(axis=1)
    grad = grad_el / n
    return (
        loss.reshape(batch_shape),
        _from_rows(grad, batch_shape, axis),
        np.ones(batch_shape, dtype=bool),
        np.ones(batch_shape),
    )


_PER_SAMPLE = {
    "categorical": categorical_per_sample,
    "sparse_categorical": sparse_categorical_per_sample,
    "binary": binary_per_sample,
}


# ------------------------------------------------- public-function counterparts


def categorical_crossentropy(
    y_true,
    y_pred,
    from_logits=False,
    label_smoothing=0.0,
    axis=-1,
    *,
    class_weight=None,
    epsilon=1e-7,
    z_loss=0.0,
):
    """Oracle of ``fastxent.categorical_crossentropy`` (float64 per-sample losses)."""
    return categorical_per_sample(
        y_true, y_pred, from_logits, label_smoothing, axis, class_weight, epsilon, z_loss
    )[0]


def sparse_categorical_crossentropy(
    y_true,
    y_pred,
    from_logits=False,
    ignore_class=None,
    axis=-1,
    *,
    label_smoothing=0.0,
    class_weight=None,
    epsilon=1e-7,
    z_loss=0.0,
):
    """Oracle of ``fastxent.sparse_categorical_crossentropy``."""
    return sparse_categorical_per_sample(
        y_true,
        y_pred,
        from_logits,
        ignore_class,
        axis,
        label_smoothing,
        class_weight,
        epsilon,
        z_loss,
    )[0]


def binary_crossentropy(
    y_true,
    y_pred,
    from_logits=False,
    label_smoothing=0.0,
    axis=-1,
    *,
    pos_weight=None,
    epsilon=1e-7,
):
    """Oracle of ``fastxent.binary_crossentropy``."""
    return binary_per_sample(
        y_true, y_pred, from_logits, label_smoothing, axis, pos_weight, epsilon
    )[0]


# ------------------------------------------------------ weights and reductions


def broadcast_sample_weight(sample_weight, loss_shape):
    """Sample weights as a float64 array of the per-sample loss shape.

    Lower-rank weights are aligned to the LEADING dims (a (batch,) weight works for a
    (batch, seq) loss); then ordinary broadcasting applies (ValueError if impossible).
    """
    if sample_weight is None:
        return np.ones(loss_shape)
    sw = np.asarray(sample_weight, dtype=np.float64)
    if sw.ndim < len(loss_shape):
        sw = sw.reshape(sw.shape + (1,) * (len(loss_shape) - sw.ndim))
    return np.broadcast_to(sw, loss_shape)


def reduce_loss_and_grad(loss, grad, valid, sample_cw, axis, sample_weight, reduction):
    """Apply sample weights and a reduction to per-sample losses and gradients."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"bad reduction {reduction!r}")
    sw = broadcast_sample_weight(sample_weight, loss.shape)
    axis = canonical_axis(axis, grad.ndim)
    sw_along_classes = np.expand_dims(sw, axis)
    # An infinite loss (a +inf logit, a masked labelled class) times a zero sample weight is
    # NaN, as in Keras and in the kernels; that product is intended, so NumPy's warning is not
    # wanted.  Ignored entries are zeroed before weighting and never reach it.
    with np.errstate(invalid="ignore"):
        weighted_loss = np.where(valid, loss * sw, 0.0)
        weighted_grad = np.where(np.expand_dims(valid, axis), grad * sw_along_classes, 0.0)
    if reduction == "none":
        return weighted_loss, weighted_grad
    if loss.size == 0:
        return 0.0, np.zeros_like(grad)
    if reduction == "sum":
        denominator = 1.0
    elif reduction in ("sum_over_batch_size", "mean"):
        denominator = float(np.count_nonzero(valid))
    else:  # mean_with_sample_weight
        denominator = float(np.sum(np.where(valid, sw * sample_cw, 0.0)))
    if denominator == 0.0:
        return 0.0, np.zeros_like(grad)
    return float(weighted_loss.sum() / denominator), weighted_grad / denominator


def reference_loss_and_grad(kind, y_true, y_pred, sample_weight=None, **options):
    """Oracle of ``Class(**options).loss_and_grad(y_true, y_pred, sample_weight)``.

    ``kind`` is "categorical", "sparse_categorical" or "binary"; ``options`` are the
    class's constructor arguments (from_logits, label_smoothing, axis, reduction,
    class_weight / pos_weight, ignore_class, epsilon, z_loss; n_threads is ignored).
    Returns (loss, grad): a Python float (float64 ndarray for reduction="none") and a
    float64 ndarray of y_pred's shape.
    """
    options = dict(options)
    reduction = options.pop("reduction", "sum_over_batch_size")
    options.pop("n_threads", None)
    axis = options.get("axis", -1)
    loss, grad, valid, sample_cw = _PER_SAMPLE[kind](y_true, y_pred, **options)
    return reduce_loss_and_grad(loss, grad, valid, sample_cw, axis, sample_weight, reduction)


def reference_loss(kind, y_true, y_pred, sample_weight=None, **options):
    """Oracle of ``Class(**options)(y_true, y_pred, sample_weight)``."""
    return reference_loss_and_grad(kind, y_true, y_pred, sample_weight, **options)[0]


def per_sample(kind, y_true, y_pred, **options):
    """Oracle of the per-sample function of ``kind`` (float64 array)."""
    return _PER_SAMPLE[kind](y_true, y_pred, **options)[0]


# ------------------------------------ focal, KL divergence, generalized cross-entropy
#
# Loss oracles only (float64, written from the papers' / Keras' formulas); their gradients
# and Hessians are taken by central finite differences (:func:`fd_grad`), an independent
# route to every derivative fastxent computes in closed form.


def binary_focal_per_sample(y_true, y_pred, apply_class_balancing=False, alpha=0.25,
                            gamma=2.0, from_logits=False, label_smoothing=0.0, axis=-1,
                            epsilon=1e-7):
    """Keras' binary focal cross-entropy; from logits with the exact log-sigmoid."""
    in_dtype = np.asarray(y_pred).dtype
    x, batch_shape = _to_rows(y_pred, canonical_axis(axis, np.ndim(y_pred)))
    z, _ = _to_rows(y_true, canonical_axis(axis, np.ndim(y_pred)))
    z = z * (1.0 - label_smoothing) + 0.5 * label_smoothing
    if from_logits:
        p = _sigmoid(x)
        bce = (1.0 - z) * x + _softplus(-x)
    else:
        lo, hi = clip_bounds(epsilon, in_dtype)
        p = x
        c = np.clip(x, lo, hi)
        bce = -(z * np.log(c) + (1.0 - z) * np.log(1.0 - c))
    p_t = z * p + (1.0 - z) * (1.0 - p)
    loss = (1.0 - p_t) ** gamma * bce
    if apply_class_balancing:
        loss = loss * (z * alpha + (1.0 - z) * (1.0 - alpha))
    return loss.mean(axis=1).reshape(batch_shape)


def categorical_focal_per_sample(y_true, y_pred, alpha=0.25, gamma=2.0, from_logits=False,
                                 label_smoothing=0.0, axis=-1, epsilon=1e-7):
    """``-sum_k alpha_k (1 - p_k)**gamma t_k log p_k`` (Keras' clip from probabilities)."""
    in_dtype = np.asarray(y_pred).dtype
    ax = canonical_axis(axis, np.ndim(y_pred))
    x, batch_shape = _to_rows(y_pred, ax)
    t, _ = _to_rows(y_true, ax)
    t = t * (1.0 - label_smoothing) + label_smoothing / x.shape[1]
    if from_logits:
        log_p, p, _, bad = softmax_rows(x)
    else:
        lo, hi = clip_bounds(epsilon, in_dtype)
        p = np.clip(x / x.sum(axis=1, keepdims=True), lo, hi)
        log_p, bad = np.log(p), np.zeros(len(x), dtype=bool)
    at = np.asarray(alpha, dtype=np.float64) * t
    with np.errstate(invalid="ignore"):
        terms = np.where(at != 0, -at * (1.0 - p) ** gamma * log_p, 0.0)
    loss = terms.sum(axis=1)
    loss[bad] = np.nan
    return loss.reshape(batch_shape)


def sparse_focal_per_sample(y_true, y_pred, alpha=0.25, gamma=2.0, from_logits=False,
                            ignore_class=None, axis=-1, class_weight=None, epsilon=1e-7):
    """The categorical focal loss of the one-hot target times the label's class weight."""
    ax = canonical_axis(axis, np.ndim(y_pred))
    labels = sparse_labels_to_int(y_true).reshape(-1)
    n_classes = np.shape(y_pred)[ax]
    valid = np.ones(labels.shape, bool) if ignore_class is None else labels != ignore_class
    if np.any(valid & ((labels < 0) | (labels >= n_classes))):
        raise ValueError("label out of range")
    safe = np.where(valid, labels, 0)
    one_hot = np.moveaxis(np.eye(n_classes)[safe].reshape(
        np.shape(y_true) + (n_classes,)), -1, ax)
    cw = _class_weight_vector(class_weight, n_classes)
    loss = categorical_focal_per_sample(one_hot, y_pred, alpha, gamma, from_logits, 0.0, ax,
                                        epsilon).reshape(-1)
    loss = np.where(valid, loss * cw[safe], 0.0)
    return loss.reshape(np.shape(y_true))


def kl_per_sample(y_true, y_pred, from_logits=False, axis=-1, epsilon=1e-7):
    """Keras' KL divergence (both clipped to [eps, 1]); from logits: ``sum t log t - t log
    softmax(x)`` with y_true as given (0 log 0 = 0)."""
    in_dtype = np.asarray(y_pred).dtype
    ax = canonical_axis(axis, np.ndim(y_pred))
    x, batch_shape = _to_rows(y_pred, ax)
    t, _ = _to_rows(y_true, ax)
    bad = np.zeros(len(x), dtype=bool)
    if from_logits:
        log_p, _, _, bad = softmax_rows(x)
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(t != 0, t * (np.log(t) - log_p), 0.0)
    else:
        lo, _ = clip_bounds(epsilon, in_dtype)
        tc, pc = np.clip(t, lo, 1.0), np.clip(x, lo, 1.0)
        terms = tc * np.log(tc / pc)
    loss = terms.sum(axis=1)
    loss[bad] = np.nan  # a row that is all -inf or holds +inf / NaN
    return loss.reshape(batch_shape)


def gce_per_sample(y_true, y_pred, q=0.5, from_logits=False, ignore_class=None, axis=-1):
    """``(1 - p_y**q) / q`` with p = y_pred (Keras: not normalized) or softmax(y_pred)."""
    ax = canonical_axis(axis, np.ndim(y_pred))
    x, _ = _to_rows(y_pred, ax)
    labels = sparse_labels_to_int(y_true).reshape(-1)
    valid = np.ones(labels.shape, bool) if ignore_class is None else labels != ignore_class
    safe = np.where(valid, labels, 0)
    bad = np.zeros(len(x), dtype=bool)
    if from_logits:
        _, p, _, bad = softmax_rows(x)
    else:
        p = x
    py = p[np.arange(len(x)), safe]
    with np.errstate(invalid="ignore"):
        loss = np.where(valid, np.where(bad, np.nan, (1.0 - py ** q) / q), 0.0)
    return loss.reshape(np.shape(y_true))


FAMILY_PER_SAMPLE = {
    "binary_focal": binary_focal_per_sample,
    "categorical_focal": categorical_focal_per_sample,
    "sparse_focal": sparse_focal_per_sample,
    "kl": kl_per_sample,
    "gce": gce_per_sample,
}


def fd_grad(f, x, h=1e-6):
    """Central finite differences of the scalar ``f`` at every entry of float64 ``x``."""
    x = np.array(x, dtype=np.float64)
    g = np.empty_like(x)
    flat, gf = x.reshape(-1), g.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + h
        up = f(x)
        flat[i] = old - h
        down = f(x)
        flat[i] = old
        gf[i] = (up - down) / (2.0 * h)
    return g


def family_loss_and_grad(kind, y_true, y_pred, sample_weight=None, reduction="none",
                         **options):
    """Oracle of ``Class(**options).loss_and_grad``: the per-sample oracle, reduced as the
    cross-entropies are (ignored samples not counted), gradient by finite differences."""
    options.pop("n_threads", None)
    f = FAMILY_PER_SAMPLE[kind]
    x = np.asarray(y_pred, dtype=np.float64)
    loss = f(y_true, x, **options)
    ic = options.get("ignore_class")
    valid = (np.ones(loss.shape, bool) if ic is None
             else np.asarray(y_true).reshape(loss.shape) != ic)
    sample_cw = valid * 1.0
    cw = options.get("class_weight")
    if cw is not None:
        lab = np.where(valid, np.asarray(y_true).reshape(loss.shape), 0)
        sample_cw = np.where(valid, np.asarray(cw)[lab], 0.0)
    sw = broadcast_sample_weight(sample_weight, loss.shape)
    grad = fd_grad(lambda v: float(np.sum(f(y_true, v, **options) * np.where(valid, sw, 0))),
                   x)
    red, _ = reduce_loss_and_grad(loss, np.zeros_like(x), valid, sample_cw,
                                  options.get("axis", -1), sample_weight, reduction)
    if reduction in ("none", "sum"):
        return red, grad
    if reduction in ("sum_over_batch_size", "mean"):
        den = float(np.count_nonzero(valid))
    else:
        den = float(np.sum(np.where(valid, sw * sample_cw, 0.0)))
    return red, (grad / den if den else np.zeros_like(grad))


def family_loss(kind, y_true, y_pred, sample_weight=None, reduction="none", **options):
    """The loss of :func:`family_loss_and_grad` alone (no finite differences: any size)."""
    options.pop("n_threads", None)
    loss = FAMILY_PER_SAMPLE[kind](y_true, np.asarray(y_pred, dtype=np.float64), **options)
    ic = options.get("ignore_class")
    valid = (np.ones(loss.shape, bool) if ic is None
             else np.asarray(y_true).reshape(loss.shape) != ic)
    grad = np.zeros(np.shape(y_pred))
    return reduce_loss_and_grad(loss, grad, valid, valid * 1.0, options.get("axis", -1),
                                sample_weight, reduction)[0]


# ------------------------------------------------- PyTorch's nll_loss, scikit-learn's log_loss


def nll_loss(input, target, weight=None, ignore_index=-100, reduction="mean"):
    """``torch.nn.functional.nll_loss``: ``w[y_i] * -input[i, y_i]`` per sample (class axis 1,
    0 for 1-D input), 0 where ``y_i == ignore_index``; ``mean`` divides the sum by
    ``sum_i w[y_i]`` over the samples not ignored (NaN when that is 0)."""
    x = np.asarray(input, dtype=np.float64)
    xm = np.moveaxis(x, 0 if x.ndim == 1 else 1, -1)
    t = np.asarray(target, dtype=np.int64)
    valid = t != ignore_index
    lab = np.where(valid, t, 0)
    w = np.ones(xm.shape[-1]) if weight is None else np.asarray(weight, dtype=np.float64)
    wi = np.where(valid, w[lab], 0.0)
    picked = np.take_along_axis(xm, lab[..., None], axis=-1)[..., 0]
    loss = np.where(valid, -wi * picked, 0.0)
    if reduction == "none":
        return loss
    if reduction == "sum":
        return float(loss.sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(loss.sum() / wi.sum())


def log_loss(labels, probs, normalize=True, sample_weight=None):
    """``sklearn.metrics.log_loss`` for integer labels ``0..C-1`` (columns of ``probs``):
    ``-log(clip(p[i, y_i], eps, 1 - eps))`` with ``eps`` the machine epsilon of probs' dtype,
    weighted mean (or weighted sum when not ``normalize``)."""
    p = np.asarray(probs)
    eps = np.finfo(p.dtype).eps
    q = np.clip(p.astype(np.float64), eps, 1 - eps)
    loss = -np.log(q[np.arange(len(q)), np.asarray(labels)])
    w = np.ones(len(q)) if sample_weight is None else np.asarray(sample_weight, np.float64)
    return float((loss * w).sum() / (w.sum() if normalize else 1.0))
