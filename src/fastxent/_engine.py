"""The machinery between the public API and the kernels: layout, buffers, reductions.

Every public function funnels into :func:`softmax_xent` or :func:`sigmoid_xent`, which

1. validate and convert the inputs (``_validation``),
2. move the class axis last and view the data as a C-contiguous (rows, classes) buffer
   (copying once only when the input is not already laid out that way),
3. work out the reduction *before* the kernel runs, so that each row's gradient scale
   (sample weight x mask / denominator) is applied inside the kernel's single write of the
   gradient (no second pass over N x C),
4. run the kernel with the GIL released, and
5. reduce the per-sample losses (float64, NumPy's deterministic pairwise sum).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fastxent import _buffers, _sigmoid, _softmax
from fastxent._config import resolve_n_threads
from fastxent._validation import (
    as_float_array,
    as_kernel_array,
    as_labels,
    as_target_array,
    broadcast_sample_weight,
    check_bool,
    check_fraction,
    check_nonneg_real,
    check_reduction,
    check_weight_vector,
    normalize_axis,
)


@dataclass
class Outcome:
    """What a computation returns to the public layer."""

    loss: object  # Python float, or ndarray for reduction "none"
    grad: np.ndarray | None = None
    hess: np.ndarray | None = None
    lse: np.ndarray | None = None


@dataclass
class _Layout:
    arr: np.ndarray  # y_pred as given (float32/float64 ndarray)
    axis: int  # non-negative class axis
    batch_shape: tuple  # shape of the per-sample loss
    x2: np.ndarray  # (rows, classes) C-contiguous view or copy


def _layout(y_pred, axis, *, inplace: bool = False, name: str = "y_pred") -> _Layout:
    arr = as_float_array(y_pred, name)
    ax = normalize_axis(axis, arr.ndim)
    moved = np.moveaxis(arr, ax, -1)
    ncls = moved.shape[-1]
    if ncls == 0:
        raise ValueError(f"{name} has an empty class axis (axis={axis}, shape {arr.shape})")
    batch_shape = moved.shape[:-1]
    if inplace:
        if not isinstance(y_pred, np.ndarray):
            raise TypeError("inplace=True needs y_pred to be a NumPy array")
        if not arr.flags.writeable:
            raise ValueError("inplace=True needs a writeable y_pred, got a read-only array")
        if not arr.flags.aligned:
            raise ValueError("inplace=True needs an aligned y_pred (it would have to be copied)")
        if not moved.flags.c_contiguous:
            raise ValueError(
                "inplace=True needs y_pred contiguous with the class axis last "
                "(C order after moving `axis` to the end); it would have to be copied"
            )
    x2 = as_kernel_array(moved).reshape(-1, ncls)
    return _Layout(arr, ax, batch_shape, x2)


def _from_rows(a2: np.ndarray, lay: _Layout) -> np.ndarray:
    """(rows, classes) buffer back to y_pred's shape and axis order (a view)."""
    return np.moveaxis(a2.reshape(lay.batch_shape + (lay.x2.shape[1],)), -1, lay.axis)


def _grad_buffers(lay: _Layout, grad_out, inplace: bool, others) -> np.ndarray:
    """The (rows, classes) buffer the kernel writes the gradient into."""
    if inplace:
        if grad_out is not None:
            raise ValueError("pass either grad_out or inplace=True, not both")
        for name, other in others:
            if other is not None and np.may_share_memory(lay.arr, other):
                raise ValueError(f"inplace=True: y_pred overlaps {name}")
        return lay.x2
    if grad_out is None:
        return _buffers.empty_like(lay.x2)
    if not isinstance(grad_out, np.ndarray):
        raise TypeError("grad_out must be a NumPy array")
    if grad_out.shape != lay.arr.shape:
        raise ValueError(
            f"grad_out has shape {grad_out.shape}, expected y_pred's shape {lay.arr.shape}"
        )
    if grad_out.dtype != lay.arr.dtype:
        raise TypeError(f"grad_out has dtype {grad_out.dtype}, expected {lay.arr.dtype}")
    if not grad_out.flags.writeable:
        raise ValueError("grad_out is read-only")
    if not grad_out.flags.aligned:
        raise ValueError("grad_out must be aligned (its elements at multiples of their size)")
    moved = np.moveaxis(grad_out, lay.axis, -1)
    if not moved.flags.c_contiguous:
        raise ValueError("grad_out must be C-contiguous with the class axis last")
    for name, other in [("y_pred", lay.arr), *others]:
        if other is not None and np.may_share_memory(grad_out, other):
            raise ValueError(
                f"grad_out overlaps {name}; use inplace=True to overwrite y_pred on purpose"
            )
    return moved.reshape(lay.x2.shape)


def _grad_result(grad2, lay: _Layout, grad_out, inplace: bool):
    """The gradient as returned to the caller: the caller's own array when it gave one."""
    if grad2 is None:
        return None
    if grad_out is not None:
        return grad_out
    if inplace:
        return lay.arr
    return _from_rows(grad2, lay)


@dataclass
class _Plan:
    reduction: str
    weights: np.ndarray | None  # flat float64 sample weights x mask (None = all ones)
    gs0: float  # gradient scale of every row: 1 / denominator
    gscale: np.ndarray | None  # flat per-row gradient factor (None = all ones)
    denom: float


def _plan(reduction: str, n_rows: int, weights, valid, sample_cw) -> _Plan:
    """Denominator of the reduction and each row's gradient scale.

    weights: flat sample weights or None; valid: flat bool mask of non-ignored rows or None;
    sample_cw: flat class weight of each sample (for mean_with_sample_weight) or None.
    """
    w = weights
    if valid is not None:
        w = valid.astype(np.float64) if w is None else w * valid
    if reduction in ("none", "sum"):
        denom = 1.0
    elif reduction == "sum_over_batch_size":
        denom = float(n_rows if valid is None else np.count_nonzero(valid))
    else:  # mean_with_sample_weight
        base = np.ones(n_rows) if w is None else w
        denom = float(np.sum(base if sample_cw is None else base * sample_cw))
    gs0 = 1.0 / denom if denom != 0.0 else 0.0
    gscale = None if w is None else as_kernel_array(w)
    return _Plan(reduction, w, gs0, gscale, denom)


def _zero_without_denominator(plan: _Plan, *buffers) -> None:
    """A mean over nothing (all ignored, zero total weight) is 0.0 and so is its gradient.

    The kernel scaled each row by ``gs0 = 0``, which leaves NaN in a row that holds NaN or
    +inf (0 * NaN); the loss is 0.0 there (Keras' ``divide_no_nan``), so the gradient is too.
    """
    if plan.reduction in ("sum_over_batch_size", "mean_with_sample_weight") and plan.denom == 0.0:
        for buf in buffers:
            if buf is not None:
                buf.fill(0)


def _reduce(loss64: np.ndarray, plan: _Plan, lay: _Layout):
    """Apply weights and the reduction to flat float64 per-sample losses."""
    weighted = loss64 if plan.weights is None else loss64 * plan.weights
    if plan.reduction == "none":
        return weighted.reshape(lay.batch_shape).astype(lay.arr.dtype)
    total = float(np.sum(weighted))
    if plan.reduction == "sum":
        return total
    return total / plan.denom if plan.denom != 0.0 else 0.0


def _check_bad_labels(bad: int, labels: np.ndarray, y_true, lay: _Layout, ignore_class):
    if not bad:
        return
    ncls = lay.x2.shape[1]
    ok = (labels >= 0) & (labels < ncls)
    if ignore_class is not None:
        ok |= labels == ignore_class
    i = int(np.argmin(ok))
    pos = np.unravel_index(i, lay.batch_shape) if lay.batch_shape else ()
    original = np.asarray(y_true).reshape(-1)[i] if np.size(y_true) == labels.size else labels[i]
    original = original.item() if hasattr(original, "item") else original
    raise ValueError(
        f"y_true: label {original!r} at position {tuple(int(p) for p in pos)} is outside "
        f"[0, {ncls}) ({bad} label(s) out of range)"
    )


def softmax_xent(
    y_true,
    y_pred,
    *,
    sparse: bool,
    from_logits: bool,
    label_smoothing: float = 0.0,
    axis: int = -1,
    class_weight=None,
    ignore_class=None,
    epsilon: float = 1e-7,
    z_loss: float = 0.0,
    n_threads=None,
    sample_weight=None,
    reduction: str = "none",
    want_grad: bool = False,
    want_hess: bool = False,
    want_lse: bool = False,
    grad_out=None,
    inplace: bool = False,
) -> Outcome:
    """Softmax cross-entropy (integer labels if ``sparse`` else soft targets)."""
    from_logits = check_bool(from_logits, "from_logits")
    reduction = check_reduction(reduction)
    smoothing = check_fraction(label_smoothing, "label_smoothing")
    eps = check_fraction(epsilon, "epsilon", 0.0, 0.5, lo_open=True, hi_open=True)
    z = check_nonneg_real(z_loss, "z_loss")
    if z and not from_logits:
        raise ValueError("z_loss needs from_logits=True (it penalizes the log-sum-exp of logits)")
    if ignore_class is not None:
        if not sparse:
            raise ValueError("ignore_class applies to integer labels only")
        if isinstance(ignore_class, bool | np.bool_) or not isinstance(
            ignore_class, int | np.integer
        ):
            raise TypeError(f"ignore_class must be None or an int, got {ignore_class!r}")
        ignore_class = int(ignore_class)
    nt = resolve_n_threads(n_threads)
    if (want_grad or want_hess) is False and (grad_out is not None or inplace):
        raise ValueError("grad_out and inplace only apply when a gradient is computed")
    if inplace and want_hess:
        raise ValueError("inplace=True is not available with the Hessian")

    lay = _layout(y_pred, axis, inplace=inplace)
    ncls = lay.x2.shape[1]
    n_rows = lay.x2.shape[0]
    cw = check_weight_vector(class_weight, "class_weight", ncls, "class")

    labels = target = None
    if sparse:
        labels = as_labels(y_true, lay.batch_shape, lay.axis, lay.arr.ndim)
    else:
        t = as_target_array(y_true, "y_true", lay.arr.dtype)
        if t.shape != lay.arr.shape:
            raise ValueError(
                f"y_true has shape {t.shape} but y_pred has shape {lay.arr.shape}; "
                "categorical targets need the shape of y_pred"
            )
        target = as_kernel_array(np.moveaxis(t, lay.axis, -1)).reshape(n_rows, ncls)

    weights = broadcast_sample_weight(sample_weight, lay.batch_shape)
    weights = None if weights is None else as_kernel_array(weights).reshape(-1)
    valid = (labels != ignore_class) if ignore_class is not None else None
    sample_cw = None
    if cw is not None and reduction == "mean_with_sample_weight":
        if sparse:
            sample_cw = np.take(cw, labels, mode="clip")
        else:
            # sum_k cw_k t_k per row, accumulated in float64 through einsum's small buffers:
            # no N x C float64 copy of a float32 target (and no threaded BLAS: same bits)
            sample_cw = np.einsum("ij,j->i", target, cw, dtype=np.float64)
    plan = _plan(reduction, n_rows, weights, valid, sample_cw)

    grad2 = hess2 = None
    if want_grad or want_hess:
        grad2 = _grad_buffers(
            lay, grad_out, inplace, [("y_true", y_true), ("sample_weight", sample_weight)]
        )
    if want_hess:
        hess2 = _buffers.empty_like(lay.x2)
    loss64 = np.empty(n_rows)
    lse = np.empty(n_rows) if want_lse else None

    if n_rows:
        keep, spread = 1.0 - smoothing, smoothing / ncls
        if from_logits:
            bad = _softmax.softmax_xent_logits(
                lay.x2, grad2, hess2, target, labels, plan.gs0, plan.gscale, loss64, lse,
                keep, spread, z, cw, ignore_class, nt,
            )
        else:
            bad = _softmax.softmax_xent_probs(
                lay.x2, grad2, target, labels, plan.gs0, plan.gscale, loss64,
                keep, spread, eps, cw, ignore_class, nt,
            )
        _check_bad_labels(bad, labels, y_true, lay, ignore_class)
        _zero_without_denominator(plan, grad2, hess2)

    return Outcome(
        loss=_reduce(loss64, plan, lay),
        grad=_grad_result(grad2, lay, grad_out, inplace),
        hess=None if hess2 is None else _from_rows(hess2, lay),
        lse=None if lse is None else lse.reshape(lay.batch_shape).astype(lay.arr.dtype),
    )


def sigmoid_xent(
    y_true,
    y_pred,
    *,
    from_logits: bool,
    label_smoothing: float = 0.0,
    axis: int = -1,
    pos_weight=None,
    epsilon: float = 1e-7,
    n_threads=None,
    sample_weight=None,
    reduction: str = "none",
    want_grad: bool = False,
    want_hess: bool = False,
    grad_out=None,
    inplace: bool = False,
) -> Outcome:
    """Binary (sigmoid) cross-entropy, averaged over ``axis`` like Keras."""
    from_logits = check_bool(from_logits, "from_logits")
    reduction = check_reduction(reduction)
    smoothing = check_fraction(label_smoothing, "label_smoothing")
    eps = check_fraction(epsilon, "epsilon", 0.0, 0.5, lo_open=True, hi_open=True)
    nt = resolve_n_threads(n_threads)
    if (want_grad or want_hess) is False and (grad_out is not None or inplace):
        raise ValueError("grad_out and inplace only apply when a gradient is computed")
    if want_hess and not from_logits:
        raise ValueError("the Hessian is available for from_logits=True only")
    if inplace and want_hess:
        raise ValueError("inplace=True is not available with the Hessian")

    lay = _layout(y_pred, axis, inplace=inplace)
    n_rows, width = lay.x2.shape
    pw = check_weight_vector(pos_weight, "pos_weight", width, "element of the class axis")

    t = as_target_array(y_true, "y_true", lay.arr.dtype)
    if t.shape != lay.arr.shape:
        if t.size == lay.arr.size and (
            t.shape + (1,) == lay.arr.shape or t.shape == lay.arr.shape + (1,)
        ):
            t = t.reshape(lay.arr.shape)  # Keras' squeeze_or_expand_to_same_rank
        else:
            raise ValueError(
                f"y_true has shape {t.shape} but y_pred has shape {lay.arr.shape}; "
                "binary targets need the shape of y_pred"
            )
    z = as_kernel_array(np.moveaxis(t, lay.axis, -1)).reshape(n_rows, width)

    weights = broadcast_sample_weight(sample_weight, lay.batch_shape)
    weights = None if weights is None else as_kernel_array(weights).reshape(-1)
    plan = _plan(reduction, n_rows, weights, None, None)

    grad2 = hess2 = None
    if want_grad or want_hess:
        grad2 = _grad_buffers(
            lay, grad_out, inplace, [("y_true", y_true), ("sample_weight", sample_weight)]
        )
    if want_hess:
        hess2 = _buffers.empty_like(lay.x2)
    loss64 = np.empty(n_rows)
    if n_rows:
        _sigmoid.sigmoid_xent(
            lay.x2, z, grad2, hess2, plan.gs0, plan.gscale, loss64, from_logits,
            1.0 - smoothing, smoothing / 2.0, eps, pw, nt,
        )
        _zero_without_denominator(plan, grad2, hess2)
    return Outcome(
        loss=_reduce(loss64, plan, lay),
        grad=_grad_result(grad2, lay, grad_out, inplace),
        hess=None if hess2 is None else _from_rows(hess2, lay),
    )
