"""The focal, KL-divergence and generalized cross-entropy losses: options and computation.

Each loss reaches the kernels through ``fastxent._dispatch`` and reduces through
``fastxent._reduction`` (the float64 fixed-order sums), like the cross-entropies:

* integer labels (sparse focal, generalized cross-entropy from logits): the per-row loss is
  a function ``h(log p_y)`` of the labelled class's log-probability, and its gradient is the
  cross-entropy gradient times the per-row factor ``F = -dh/dlog p``.  From logits one
  kernel pass gives ``-log p_y`` per row and the gradient, the kernel scaling each row's
  cross-entropy gradient by ``F`` (``row_fn``); rows split across threads (262,144 classes
  or more) and Hessian calls take two passes: ``-log p_y`` first, then the gradient with
  each row's scale (sample weight x mask / denominator) multiplied by ``F``.
* KL divergence from logits: the soft-target cross-entropy kernel (gradient
  ``(sum t) softmax - t``), each row's loss plus ``sum t log t`` (``add_xlogx``).
* binary focal from logits: its own kernel (``_kernels.binary_focal``), one read of the
  logits and targets, one write of the gradient (and Hessian).
  These two kernels sum their losses by their fixed blocks (``_reduction.block_sums``)
  unless the reduction is ``"none"``: no per-row array, the bits of the per-row sum;
* categorical (soft-target) focal, binary focal from probabilities, KL divergence and
  generalized cross-entropy from probabilities: elementwise float64 NumPy over blocks of rows
  (bounded temporaries), row sums in NumPy's fixed pairwise order.

Every result is therefore the same for any thread count.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np

from fastxent import _dispatch, _kernels, _layout, _reduction
from fastxent._config import resolve_n_threads
from fastxent._errors import label_range_error
from fastxent._kernels import Options
from fastxent._options import sigmoid_options, softmax_options
from fastxent._validation import (
    as_labels,
    as_target_array,
    check_bool,
    check_fraction,
    check_nonneg_real,
    check_weight_vector,
    plain,
    sparse_labels_hint,
    warn_single_class,
)

KINDS = ("binary_focal", "categorical_focal", "sparse_focal", "kl", "gce")
BLOCK_ELEMENTS = 1 << 16  # elements per block of rows in the NumPy steps


@dataclass(frozen=True, eq=False)
class Spec:
    """A loss of this module with its validated options.

    ``base`` holds the options shared with the cross-entropies (from_logits, smoothing, axis,
    epsilon, reduction, n_threads, class_weight, ignore_class), validated by
    ``fastxent._options``.
    """

    kind: str
    base: Options
    alpha: float | np.ndarray = 1.0  # focal: scalar, or (categorical) one per class
    gamma: float = 0.0
    apply_class_balancing: bool = False
    q: float = 0.5


def _real(value, name: str) -> float:
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {plain(value)!r}")
    return float(value)


def _alpha(alpha, per_class: bool):
    """Focal alpha: a float in [0, 1] (binary) or a float / per-class vector >= 0."""
    if not per_class:
        return check_fraction(alpha, "alpha")
    if isinstance(alpha, numbers.Real) and not isinstance(alpha, bool | np.bool_):
        return check_nonneg_real(alpha, "alpha")
    if isinstance(alpha, bool | np.bool_):
        raise TypeError(f"alpha must be a real number or a 1-D array of them, got {alpha!r}")
    arr = check_weight_vector(alpha, "alpha", np.size(alpha), "class")
    arr = np.ascontiguousarray(arr)
    arr.flags.writeable = False
    return arr


def focal_spec(kind: str, *, alpha=0.25, gamma=2.0, apply_class_balancing=False,
               from_logits=False, label_smoothing=0.0, axis=-1, class_weight=None,
               ignore_class=None, epsilon=1e-7, reduction="none", n_threads=None) -> Spec:
    """Validated options of a focal loss (``kind``: binary_focal, categorical_focal,
    sparse_focal)."""
    if kind == "binary_focal":
        base = sigmoid_options(from_logits=from_logits, label_smoothing=label_smoothing,
                               axis=axis, epsilon=epsilon, reduction=reduction,
                               n_threads=n_threads)
        balancing = check_bool(apply_class_balancing, "apply_class_balancing")
    else:
        base = softmax_options(sparse=kind == "sparse_focal", from_logits=from_logits,
                               label_smoothing=label_smoothing, axis=axis,
                               class_weight=class_weight, ignore_class=ignore_class,
                               epsilon=epsilon, reduction=reduction, n_threads=n_threads)
        balancing = False
    a = _alpha(alpha, per_class=kind == "categorical_focal")
    g = check_nonneg_real(_real(gamma, "gamma"), "gamma")
    return Spec(kind, base, alpha=a, gamma=g, apply_class_balancing=balancing)


def kl_spec(*, from_logits=False, axis=-1, epsilon=1e-7, reduction="none",
            n_threads=None) -> Spec:
    return Spec("kl", softmax_options(sparse=False, from_logits=from_logits, axis=axis,
                                      epsilon=epsilon, reduction=reduction,
                                      n_threads=n_threads))


def gce_spec(*, q=0.5, from_logits=False, axis=-1, ignore_class=None, reduction="none",
             n_threads=None) -> Spec:
    qv = check_fraction(_real(q, "q"), "q", 0.0, 1.0, lo_open=True, hi_open=True)
    return Spec("gce", softmax_options(sparse=True, from_logits=from_logits, axis=axis,
                                       ignore_class=ignore_class, reduction=reduction,
                                       n_threads=n_threads), q=qv)


# ------------------------------------------------------------------------------------------
# Per-row functions of log p (integer labels)
# ------------------------------------------------------------------------------------------

def _pow(d: np.ndarray, e: float) -> np.ndarray:
    """d**e for d > 0, 0 where d == 0 (the terms using it carry a vanishing factor there)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(d > 0, np.power(np.where(d > 0, d, 1.0), e), 0.0)


def focal_of_logp(u: np.ndarray, gamma: float):
    """For u = log p: ``(m, F, dF)`` with m = -(1 - p)**gamma u (the focal loss of alpha 1),
    F = -dm/du and dF = dF/du (float64, elementwise)."""
    with np.errstate(invalid="ignore", over="ignore"):
        p = np.exp(u)
        d = -np.expm1(u)  # 1 - p, accurate near p = 1
        g = gamma
        dg = _pow(d, g) if g else np.ones_like(d)
        m = -dg * u
        if g == 0:
            return m, np.ones_like(u), np.zeros_like(u)
        dg1 = _pow(d, g - 1.0)
        F = dg - g * u * p * dg1
        dF = -2.0 * g * p * dg1 - g * u * p * dg1 + g * (g - 1.0) * u * p * p * _pow(d, g - 2.0)
        at_one = d == 0  # p == 1: the limits of F and dF
        if at_one.any():
            lim = 0.0 if g > 1 else (-2.0 if g == 1 else -np.inf)
            F = np.where(at_one, 0.0, F)
            dF = np.where(at_one, lim, dF)
        nan = np.isnan(u)
        if nan.any():
            F = np.where(nan, np.nan, F)
            dF = np.where(nan, np.nan, dF)
    return m, F, dF


def gce_of_logp(u: np.ndarray, q: float):
    """For u = log p: ``(h, F, dF)`` with h = (1 - p**q) / q, F = p**q, dF = q p**q."""
    with np.errstate(invalid="ignore", over="ignore"):
        pq = np.exp(q * u)
        return -np.expm1(q * u) / q, pq, q * pq


def _unit_plan() -> _reduction.Plan:
    return _reduction.Plan("none", 1.0, 1.0, None)


def _checked_call(spec: Spec, want_grad, want_hess, grad_out, inplace) -> Options:
    """The call's buffer options checked; the loss's base options."""
    _dispatch._check_buffers(want_grad, want_hess, grad_out, inplace)
    if want_hess and not spec.base.from_logits:
        raise ValueError("the Hessian is available for from_logits=True only")
    return spec.base


def _outcome(loss64, plan, lay, grad2, hess2, y_pred, given_shape, grad_out, gout,
             inplace, want_total, block_sums=None) -> _dispatch.Outcome:
    """The reduced loss, the gradient and Hessian in y_pred's own shape (and on request the
    plan's weighted sum of the per-row losses, a stateful metric's numerator), from the
    per-row losses ``loss64`` or from a kernel's ``block_sums`` (``loss64`` None)."""
    loss, total = _reduction.outcome(loss64, block_sums, plan, lay.batch_shape, lay.arr.dtype,
                                     want_total)
    return _dispatch._as_given(_dispatch.Outcome(
        loss=loss,
        grad=_layout.grad_result(grad2, lay, gout, inplace),
        hess=None if hess2 is None else lay.from_rows(hess2),
        denominator=plan.denominator,
        total=total,
    ), y_pred, given_shape, grad_out, inplace)


def check_alpha_length(alpha, n_classes: int) -> None:
    """A per-class focal alpha must have one entry per class of y_pred."""
    if isinstance(alpha, np.ndarray) and alpha.shape != (n_classes,):
        raise ValueError(f"alpha must have one entry per class ({n_classes}), got shape "
                         f"{alpha.shape}")


def _sparse_setup(o: Options, y_true, y_pred, inplace, grad_out):
    lay = _layout.rows(y_pred, o.axis, inplace=inplace, y_true=y_true,
                       low_precision=False)
    gout = grad_out
    true_shape = np.shape(y_true)
    if lay.arr.ndim == 1 and len(true_shape) == 2 and true_shape[-1] == 1:
        lay, gout = _dispatch._same_rank_pred(lay, lay.arr.shape + (1,), o.axis, inplace,
                                              y_true, grad_out)
    labels = as_labels(y_true, lay.batch_shape, lay.axis, lay.arr.ndim)
    return lay, gout, labels


def sparse_rows(spec: Spec, y_true, y_pred, sample_weight=None, *, want_grad=False,
                want_hess=False, grad_out=None, inplace=False,
                want_total=False) -> _dispatch.Outcome:
    """A loss ``h(log p_y)`` of integer labels: sparse focal, generalized cross-entropy."""
    o = _checked_call(spec, want_grad, want_hess, grad_out, inplace)
    nt = resolve_n_threads(o.n_threads)
    lay, gout, labels = _sparse_setup(o, y_true, y_pred, inplace, grad_out)
    given_shape = np.shape(y_pred)
    n_rows, ncls = lay.x2.shape
    cw = check_weight_vector(o.class_weight, "class_weight", ncls, "class")
    plan = _reduction.plan(o.reduction, n_rows, row_length=ncls,
                           weights=_dispatch._weights(sample_weight, lay), labels=labels,
                           ignore_class=o.ignore_class, class_weight=cw)
    grad2, hess2 = _dispatch._outputs(lay, y_true, sample_weight, want_grad, want_hess, gout,
                                      inplace)
    loss64 = np.zeros(n_rows)
    if n_rows:
        ok = labels if o.ignore_class is None else np.where(labels == o.ignore_class, 0, labels)
        fused = False
        if cw is not None or (spec.kind == "gce" and not o.from_logits):
            # labels index class weights or y_pred here, before any kernel checks them
            bad = int(np.count_nonzero((ok < 0) | (ok >= ncls)))
            if bad:
                raise label_range_error(bad, labels, y_true, lay.batch_shape, ncls,
                                        o.ignore_class)
        if spec.kind == "gce" and not o.from_logits:
            # Keras: p = y_pred at the label, neither normalized nor clipped
            p = lay.x2[np.arange(n_rows), ok].astype(np.float64)
            with np.errstate(divide="ignore", invalid="ignore"):
                u = np.log(p)
        else:
            neglogp = np.empty(n_rows)
            lse = np.empty(n_rows) if want_hess else None
            fused = grad2 is not None and o.from_logits and hess2 is None and (
                ncls < _kernels.SPLIT_MIN)
            if fused:
                # one pass: the kernel scales each row's gradient by the loss's factor of
                # log p_y itself; the class weight goes into the row scale
                scale = plan.weights
                if cw is not None:
                    scale = cw[ok] if scale is None else scale * cw[ok]
                run_plan = _reduction.Plan(plan.reduction, plan.denominator, plan.gs0,
                                           None if scale is None
                                           else np.ascontiguousarray(scale))
                row_fn, ra, rb = (("gce", 0.0, spec.q) if spec.kind == "gce"
                                  else ("focal", spec.alpha, spec.gamma))
                bad = _dispatch.run_softmax(o, lay.x2, plan=run_plan, loss=neglogp,
                                            labels=labels, grad=grad2, n_threads=nt,
                                            row_fn=row_fn, row_a=ra, row_b=rb)
            else:
                bad = _dispatch.run_softmax(o, lay.x2, plan=_unit_plan(), loss=neglogp,
                                            labels=labels, lse=lse, n_threads=nt)
            if bad:
                raise label_range_error(bad, labels, y_true, lay.batch_shape, ncls,
                                        o.ignore_class)
            u = -neglogp
        ignored = None if o.ignore_class is None else labels == o.ignore_class
        if ignored is not None:
            u = np.where(ignored, 0.0, u)
        if spec.kind == "gce":
            h, F, dF = gce_of_logp(u, spec.q)
        else:
            h, F, dF = focal_of_logp(u, spec.gamma)
            h, F, dF = spec.alpha * h, spec.alpha * F, spec.alpha * dF
        cwy = None if cw is None else cw[ok]
        loss64 = h if cwy is None else h * cwy
        if ignored is not None:
            loss64 = np.where(ignored, 0.0, loss64)
        loss64 = np.ascontiguousarray(loss64, dtype=np.float64)
        rows_w = np.ones(n_rows) if plan.weights is None else plan.weights
        if grad2 is not None and spec.kind == "gce" and not o.from_logits:
            # d/dp (1 - p**q) / q = -p**(q - 1) at the label, 0 elsewhere
            with np.errstate(divide="ignore", invalid="ignore"):
                gy = -np.exp((spec.q - 1.0) * u) * (rows_w * plan.gs0)
            if ignored is not None:
                gy = np.where(ignored, 0.0, gy)
            grad2.fill(0)
            grad2[np.arange(n_rows), ok] = gy
        elif grad2 is not None and not fused:
            with np.errstate(invalid="ignore"):
                scale = np.ascontiguousarray(rows_w * F)
            if ignored is not None:
                scale = np.where(ignored, 0.0, scale)
            run_plan = _reduction.Plan(plan.reduction, plan.denominator, plan.gs0, scale)
            _dispatch.run_softmax(o, lay.x2, plan=run_plan, loss=np.empty(n_rows),
                                  labels=labels, grad=grad2, hess=hess2, class_weight=cw,
                                  n_threads=nt)
            if hess2 is not None:
                _sparse_hess_correction(hess2, lay.x2, labels, ok, lse, dF, cwy, rows_w,
                                        plan.gs0, ignored)
        _reduction.zero_if_empty_mean(plan, grad2, hess2)
    return _outcome(loss64, plan, lay, grad2, hess2, y_pred, given_shape, grad_out, gout,
                    inplace, want_total)


def _sparse_hess_correction(hess2, x2, labels, ok, lse, dF, cwy, rows_w, gs0, ignored):
    """hess -= gs dF (onehot - softmax)**2: the kernel wrote gs F softmax (1 - softmax)."""
    with np.errstate(invalid="ignore"):  # an infinite dF (gamma < 1 at p = 1) times weight 0
        c = rows_w * gs0 * dF
        if cwy is not None:
            c = c * cwy
    if ignored is not None:
        c = np.where(ignored, 0.0, c)
    n_rows, ncls = x2.shape
    step = max(1, BLOCK_ELEMENTS // ncls)
    for r0 in range(0, n_rows, step):
        r1 = min(n_rows, r0 + step)
        with np.errstate(invalid="ignore", over="ignore"):
            s = np.exp(x2[r0:r1].astype(np.float64) - lse[r0:r1, None])
            d = -s
            d[np.arange(r1 - r0), ok[r0:r1]] += 1.0
            hb = hess2[r0:r1].astype(np.float64) - c[r0:r1, None] * d * d
        hess2[r0:r1] = hb


# ------------------------------------------------------------------------------------------
# Dense losses over blocks of rows (binary focal, categorical focal, KL)
# ------------------------------------------------------------------------------------------

def _dense_setup(o: Options, y_true, y_pred, inplace, grad_out, what: str):
    lay = _layout.rows(y_pred, o.axis, inplace=inplace, y_true=y_true,
                       low_precision=False)
    gout = grad_out
    t = as_target_array(y_true, "y_true", lay.arr.dtype)
    true_shape, pred_shape = _dispatch.keras_ranks(t.shape, lay.arr.shape)
    if true_shape == pred_shape:
        t = _dispatch._resized(t, true_shape)
        lay, gout = _dispatch._same_rank_pred(lay, pred_shape, o.axis, inplace, y_true,
                                              grad_out)
    if t.shape != lay.arr.shape:
        hint = sparse_labels_hint(t, lay.arr.shape, lay.axis) if what != "binary" else ""
        raise ValueError(
            f"y_true has shape {t.shape} but y_pred has shape {lay.arr.shape}; {what} "
            f"targets need the shape of y_pred{hint}"
        )
    return lay, gout, lay.rows_of(t)


def _clip_bounds(eps: float, dtype) -> tuple:
    """Keras' clip bounds ``[eps, 1 - eps]`` rounded to the data's dtype."""
    if np.dtype(dtype) == np.float32:
        return float(np.float32(eps)), float(np.float32(1.0 - eps))
    return eps, 1.0 - eps


def _sigmoids(x):
    """sigmoid(x), sigmoid(-x) and softplus(-x) = log1p(exp(-|x|)) + max(-x, 0), float64."""
    with np.errstate(over="ignore"):
        e = np.exp(-np.abs(x))
    inv = 1.0 / (1.0 + e)
    pos = x >= 0
    p = np.where(pos, inv, e * inv)
    pn = np.where(pos, e * inv, inv)
    return p, pn, np.log1p(e)


def binary_focal_block(spec: Spec, x, t, lo, hi, want_grad, want_hess):
    """Elementwise binary focal loss (float64) and its derivatives in y_pred."""
    o = spec.base
    g = spec.gamma
    if o.label_smoothing:
        t = t * (1.0 - o.label_smoothing) + 0.5 * o.label_smoothing
    w = (t * spec.alpha + (1.0 - t) * (1.0 - spec.alpha)) if spec.apply_class_balancing else 1.0
    d1 = d2 = None
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        if o.from_logits:
            p, pn, L = _sigmoids(x)
            # softplus(x) - t x, written so that a zero coefficient times an infinite x is 0
            lin = np.where(x >= 0, np.where(t != 1.0, (1.0 - t) * x, 0.0),
                           np.where(t != 0.0, -t * x, 0.0))
            B = lin + L
            d = t * pn + (1.0 - t) * p  # 1 - p_t
            F = np.power(d, g)
            loss = w * F * B
            if want_grad or want_hess:
                pq = p * pn
                e = pq * (1.0 - 2.0 * t)  # d(1 - p_t)/dx
                dB = p - t
                dF = g * _pow(d, g - 1.0) * e if g else 0.0
                d1 = w * (dF * B + F * dB)
                if want_hess:
                    de = (1.0 - 2.0 * t) * pq * (pn - p)
                    d2F = (g * (g - 1.0) * _pow(d, g - 2.0) * e * e
                           + g * _pow(d, g - 1.0) * de) if g else 0.0
                    d2 = w * (d2F * B + 2.0 * dF * dB + F * pq)
        else:
            pc = np.clip(x, lo, hi)
            pc = np.where(np.isnan(x), x, pc)
            B = -(t * np.log(pc) + (1.0 - t) * np.log(1.0 - pc))
            d = 1.0 - (t * x + (1.0 - t) * (1.0 - x))  # Keras' 1 - p_t, unclipped
            F = np.power(d, g)
            loss = w * F * B
            if want_grad:
                inside = (x >= lo) & (x <= hi)
                dB = np.where(inside, -t / pc + (1.0 - t) / (1.0 - pc), 0.0)
                dF = g * np.power(d, g - 1.0) * (1.0 - 2.0 * t) if g else 0.0
                d1 = w * (dF * B + F * dB)
                d1 = np.where(np.isnan(x), np.nan, d1)
    return loss, d1, d2


def categorical_focal_block(spec: Spec, x, t, lo, hi, cw, want_grad, want_hess):
    """Soft-target focal loss of a block of rows (float64): per-row losses and derivatives."""
    o = spec.base
    ncls = x.shape[1]
    if o.label_smoothing:
        t = t * (1.0 - o.label_smoothing) + o.label_smoothing / ncls
    a = spec.alpha if cw is None else spec.alpha * cw
    at = a * t
    g = spec.gamma
    d1 = d2 = None
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        if o.from_logits:
            m = np.max(x, axis=1, keepdims=True)
            z = x - m
            s = np.sum(np.exp(z), axis=1, keepdims=True)
            u = z - np.log(s)  # log softmax (-inf at a masked class)
            mf, F0, dF0 = focal_of_logp(u, g)
            loss = np.sum(np.where(at != 0, at * mf, 0.0), axis=1)
            if want_grad or want_hess:
                p = np.exp(u)
                wv = np.where(at != 0, -at * F0, 0.0)  # dL/du_c
                W = np.sum(wv, axis=1, keepdims=True)
                d1 = wv - p * W
                if want_hess:
                    hv = np.where(at != 0, -at * dF0, 0.0)  # d2L/du_c2
                    Hs = np.sum(hv, axis=1, keepdims=True)
                    d2 = hv * (1.0 - 2.0 * p) + p * p * Hs - W * p * (1.0 - p)
        else:
            ssum = np.sum(x, axis=1, keepdims=True)
            q = x / ssum
            oc = np.clip(q, lo, hi)
            oc = np.where(np.isnan(q), q, oc)
            one = 1.0 - oc
            lg = np.log(oc)
            fo = np.power(one, g)
            loss = np.sum(-at * fo * lg, axis=1)
            if want_grad:
                inside = (q >= lo) & (q <= hi)
                dg1 = np.power(one, g - 1.0) if g else 0.0
                v = np.where(inside, at * (g * dg1 * lg - fo / oc), 0.0)
                d1 = (v - np.sum(v * q, axis=1, keepdims=True)) / ssum
                d1 = np.where(np.isnan(ssum), np.nan, d1)
    return loss, d1, d2


def kl_block(spec: Spec, x, t, lo, hi, want_grad):
    """Keras' KL divergence from probabilities: both clipped to [eps, 1]."""
    with np.errstate(invalid="ignore", divide="ignore"):
        tc = np.clip(t, lo, 1.0)
        pc = np.clip(x, lo, 1.0)
        pc = np.where(np.isnan(x), x, pc)
        loss = np.sum(tc * (np.log(tc) - np.log(pc)), axis=1)
        d1 = None
        if want_grad:
            d1 = np.where((x >= lo) & (x <= 1.0), -tc / pc, 0.0)
            d1 = np.where(np.isnan(x), np.nan, d1)
    return loss, d1, None


def dense_rows(spec: Spec, y_true, y_pred, sample_weight=None, *, want_grad=False,
               want_hess=False, grad_out=None, inplace=False,
               want_total=False) -> _dispatch.Outcome:
    """Binary focal, categorical focal and KL divergence."""
    o = _checked_call(spec, want_grad, want_hess, grad_out, inplace)
    what = {"binary_focal": "binary", "categorical_focal": "categorical", "kl": "KL"}[spec.kind]
    lay, gout, t2 = _dense_setup(o, y_true, y_pred, inplace, grad_out, what)
    given_shape = np.shape(y_pred)
    n_rows, ncls = lay.x2.shape
    if ncls == 1 and spec.kind == "categorical_focal":
        warn_single_class("categorical_focal_crossentropy", lay.arr.shape)
    cw = check_weight_vector(o.class_weight, "class_weight", ncls, "class")
    check_alpha_length(spec.alpha, ncls)
    plan = _reduction.plan(o.reduction, n_rows, row_length=ncls,
                           weights=_dispatch._weights(sample_weight, lay))
    grad2, hess2 = _dispatch._outputs(lay, y_true, sample_weight, want_grad, want_hess, gout,
                                      inplace)
    lo, hi = _clip_bounds(o.epsilon, lay.arr.dtype)
    rows_w = None if plan.weights is None else plan.weights
    kernel = n_rows > 0 and o.from_logits and spec.kind in ("binary_focal", "kl")
    # a kernel sums its losses by its fixed blocks unless the per-row losses are wanted
    sums = _reduction.block_sums(plan, n_rows) if kernel else None
    loss64 = np.empty(n_rows) if sums is None else None
    if kernel and spec.kind == "binary_focal":
        a1, a0 = ((spec.alpha, 1.0 - spec.alpha) if spec.apply_class_balancing else (1.0, 1.0))
        _dispatch.run_binary_focal(o, lay.x2, t2, plan=plan, loss=loss64, gamma=spec.gamma,
                                   alpha_pos=a1, alpha_neg=a0, grad=grad2, hess=hess2,
                                   n_threads=resolve_n_threads(o.n_threads), block_sums=sums)
    elif kernel:
        # soft-target cross-entropy from logits (gradient (sum t) softmax - t) + sum t log t
        _dispatch.run_softmax(o, lay.x2, plan=plan, loss=loss64, target=t2, grad=grad2,
                              hess=hess2, n_threads=resolve_n_threads(o.n_threads),
                              block_sums=sums, add_xlogx=True)
    elif n_rows:
        step = max(1, BLOCK_ELEMENTS // ncls)
        for r0 in range(0, n_rows, step):
            r1 = min(n_rows, r0 + step)
            xb = lay.x2[r0:r1].astype(np.float64)
            tb = t2[r0:r1].astype(np.float64)
            if spec.kind == "binary_focal":
                le, d1, d2 = binary_focal_block(spec, xb, tb, lo, hi, grad2 is not None,
                                                hess2 is not None)
                loss64[r0:r1] = np.sum(le, axis=1) / ncls
                scale = plan.gs0 / ncls
            elif spec.kind == "categorical_focal":
                loss64[r0:r1], d1, d2 = categorical_focal_block(
                    spec, xb, tb, lo, hi, cw, grad2 is not None, hess2 is not None)
                scale = plan.gs0
            else:
                loss64[r0:r1], d1, d2 = kl_block(spec, xb, tb, lo, hi, grad2 is not None)
                scale = plan.gs0
            rs = scale if rows_w is None else scale * rows_w[r0:r1, None]
            with np.errstate(invalid="ignore"):
                if grad2 is not None:
                    grad2[r0:r1] = d1 * rs
                if hess2 is not None:
                    hess2[r0:r1] = d2 * rs
    if n_rows:
        _reduction.zero_if_empty_mean(plan, grad2, hess2)
    return _outcome(loss64, plan, lay, grad2, hess2, y_pred, given_shape, grad_out, gout,
                    inplace, want_total, sums)


def binary_elementwise_pos_weight(o: Options, x2, z2, pw2, *, plan, loss, grad, hess):
    """Binary cross-entropy with one pos_weight per element (PyTorch's broadcast pos_weight
    that varies along other axes than the class axis), over blocks of rows in float64:
    ``l = (1 - z) x + (1 + (w - 1) z) softplus(-x)`` from logits, Keras' clipped formula with
    ``w`` on the positive term from probabilities; row means; derivatives scaled like the
    kernel's."""
    n_rows, n = x2.shape
    lo, hi = _clip_bounds(o.epsilon, x2.dtype)
    step = max(1, BLOCK_ELEMENTS // n)
    for r0 in range(0, n_rows, step):
        r1 = min(n_rows, r0 + step)
        x = x2[r0:r1].astype(np.float64)
        z = z2[r0:r1].astype(np.float64) * (1.0 - o.label_smoothing) + o.label_smoothing / 2.0
        w = pw2[r0:r1]
        d1 = d2 = None
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            if o.from_logits:
                p, pn, L = _sigmoids(x)
                c = 1.0 + (w - 1.0) * z
                lin = np.where(x >= 0, np.where(z != 1.0, (1.0 - z) * x, 0.0),
                               np.where(w * z != 0.0, -w * z * x, 0.0))
                le = lin + c * L
                d1 = (1.0 - z) - c * pn
                d2 = c * pn * p
            else:
                pc = np.where(np.isnan(x), x, np.clip(x, lo, hi))
                le = -(w * z * np.log(pc) + (1.0 - z) * np.log(1.0 - pc))
                inside = (x >= lo) & (x <= hi)
                d1 = np.where(inside, -(w * z) / pc + (1.0 - z) / (1.0 - pc), 0.0)
                d1 = np.where(np.isnan(x), np.nan, d1)
            loss[r0:r1] = np.sum(le, axis=1) / n
            rs = plan.gs0 / n if plan.weights is None else (
                plan.gs0 / n * plan.weights[r0:r1, None])
            if grad is not None:
                grad[r0:r1] = d1 * rs
            if hess is not None:
                hess[r0:r1] = d2 * rs


def compute(spec: Spec, y_true, y_pred, sample_weight=None, **kw) -> _dispatch.Outcome:
    """The one entry point of this module's losses (float32 / float64 ``y_pred`` only:
    float16 and bfloat16 are read by the cross-entropies alone; ``_layout.rows`` checks)."""
    if spec.kind in ("sparse_focal", "gce"):
        return sparse_rows(spec, y_true, y_pred, sample_weight, **kw)
    return dense_rows(spec, y_true, y_pred, sample_weight, **kw)
