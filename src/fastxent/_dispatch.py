"""The one way to the kernels: options + layout + reduction plan -> kernel -> result.

Every public entry point reaches the compiled kernels through this module:

1. a common call (ndarrays, class axis last, contiguous, plain targets and weights; the
   gradient into a new array, a contiguous ``grad_out`` or ``y_pred`` itself) is checked,
   planned, run and reduced in compiled code (``_kernels.fast_call``);
2. every other call is laid out (``_layout``), planned (``_reduction``), run through
   :func:`run_softmax` / :func:`run_sigmoid` (the only callers of the kernels, with named
   arguments) and reduced (``_reduction``).

Both routes give the same bits for the same data.  Options arrive validated
(``_options``); only what needs the arrays is checked here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fastxent import _kernels, _layout, _reduction
from fastxent._config import resolve_n_threads
from fastxent._errors import label_range_error
from fastxent._kernels import Options
from fastxent._validation import (
    as_kernel_array,
    as_labels,
    as_target_array,
    broadcast_sample_weight,
    check_weight_vector,
    result_dtype,
    sparse_labels_hint,
    warn_single_class,
)


@dataclass
class Outcome:
    """What a computation returns to the public layer."""

    loss: object  # Python float, or ndarray for reduction "none"
    grad: np.ndarray | None = None
    hess: np.ndarray | None = None
    lse: np.ndarray | None = None
    denominator: float = 1.0  # of the reduction's mean
    total: float | None = None  # the weighted sum (the mean's numerator), on request


def loss_and_grad(opts: Options, y_true, y_pred, sample_weight=None, *, want_grad=False,
                  grad_out=None, inplace=False, want_lse=False):
    """``loss`` or ``(loss, grad)``: the compiled fast path when the call allows it."""
    if not want_lse:
        out = _kernels.fast_call(opts, y_true, y_pred, sample_weight, want_grad, grad_out,
                                 inplace)
        if out is not None:
            return out
    run = softmax if opts.family == "softmax" else sigmoid
    res = run(opts, y_true, y_pred, sample_weight, want_grad=want_grad, grad_out=grad_out,
              inplace=inplace, want_lse=want_lse)
    if want_lse:
        return res.loss, res.grad, res.lse
    return (res.loss, res.grad) if want_grad else res.loss


def _check_buffers(want_grad, want_hess, grad_out, inplace):
    if not (want_grad or want_hess) and (grad_out is not None or inplace):
        raise ValueError("grad_out and inplace only apply when a gradient is computed")
    if inplace and want_hess:
        raise ValueError("inplace=True is not available with the Hessian")


def _outputs(lay: _layout.Rows, y_true, sample_weight, want_grad, want_hess, grad_out,
             inplace):
    """The (rows, classes) gradient and Hessian buffers a call writes (None when unwanted)."""
    grad2 = hess2 = None
    if want_grad or want_hess:
        grad2 = _layout.grad_buffer(
            lay, grad_out, inplace, [("y_true", y_true), ("sample_weight", sample_weight)]
        )
    if want_hess:
        hess2 = lay.empty()
    return grad2, hess2


def _weights(sample_weight, lay: _layout.Rows):
    w = broadcast_sample_weight(sample_weight, lay.batch_shape)
    return None if w is None else as_kernel_array(w).reshape(-1)


def keras_ranks(true_shape: tuple, pred_shape: tuple) -> tuple:
    """Keras' ``squeeze_or_expand_to_same_rank(y_true, y_pred)`` on shapes.

    When the ranks differ by one and the longer shape ends in a size-1 axis, that axis is
    squeezed, except that a rank-1 partner is expanded instead (Keras' ``expand_rank_1``):
    ``(5, 1)`` against ``(5,)`` makes both ``(5, 1)``; ``(5, 3, 1)`` against ``(5, 3)`` makes
    both ``(5, 3)``.  Returns the (y_true, y_pred) shapes; any other difference is left to
    the caller's shape check.
    """
    nt, npred = len(true_shape), len(pred_shape)
    if nt == npred + 1 and true_shape[-1] == 1:
        if npred == 1:
            return true_shape, pred_shape + (1,)
        return true_shape[:-1], pred_shape
    if npred == nt + 1 and pred_shape[-1] == 1:
        if nt == 1:
            return true_shape + (1,), pred_shape
        return true_shape, pred_shape[:-1]
    return true_shape, pred_shape


def _resized(a: np.ndarray, shape: tuple) -> np.ndarray:
    """``a`` with a trailing size-1 axis added or removed (always a view)."""
    if a.shape == shape:
        return a
    return np.expand_dims(a, -1) if len(shape) > a.ndim else np.squeeze(a, -1)


def _same_rank_pred(lay: _layout.Rows, pred_shape: tuple, axis, inplace, y_true, grad_out):
    """Lay ``y_pred`` out again at Keras' rank (``pred_shape``) when it differs.

    Returns the layout and the ``grad_out`` to write into (a view of the caller's).
    """
    if pred_shape == lay.arr.shape:
        return lay, grad_out
    try:
        lay = _layout.rows(_resized(lay.arr, pred_shape), axis, inplace=inplace, y_true=y_true)
    except ValueError as exc:  # e.g. `axis` does not fit the squeezed y_pred
        raise ValueError(
            f"y_true has shape {np.shape(y_true)} and y_pred has shape {lay.arr.shape}: Keras' "
            f"rank rule makes y_pred of shape {pred_shape}, but then {exc}"
        ) from None
    if isinstance(grad_out, np.ndarray) and grad_out.ndim == len(pred_shape) + (
            1 if len(pred_shape) < grad_out.ndim else -1) and grad_out.size == lay.arr.size:
        grad_out = _resized(grad_out, pred_shape)
    return lay, grad_out


def _as_given(out: Outcome, y_pred, shape: tuple, grad_out, inplace) -> Outcome:
    """The gradient and Hessian back in y_pred's own shape (after a Keras rank change)."""
    if out.grad is not None and out.grad.shape != shape:
        out.grad = y_pred if inplace else (grad_out if grad_out is not None
                                           else out.grad.reshape(shape))
    if out.hess is not None and out.hess.shape != shape:
        out.hess = out.hess.reshape(shape)
    return out


def run_softmax(opts: Options, x2: np.ndarray, *, plan: _reduction.Plan,
                loss: np.ndarray | None, labels=None, target=None, grad=None, hess=None,
                lse=None, class_weight=None, n_threads: int, row_fn: str = "xent",
                row_a: float = 0.0, row_b: float = 0.0, block_sums=None,
                add_xlogx: bool = False) -> int:
    """The softmax kernel on laid-out (rows, classes) buffers; returns the bad-label count.

    ``row_fn`` "focal" / "gce" (labels, from logits, rows shorter than
    ``_kernels.SPLIT_MIN``, no smoothing, class weight, z-loss or Hessian): the gradient of
    that per-row loss of ``log p_y`` (see ``_kernels.softmax``).  ``block_sums``
    (``_reduction.block_sums``; ``loss`` None): the losses summed by the kernel's blocks,
    weighted by ``plan.weights``.  ``add_xlogx``: each row's loss plus ``sum t log t`` of
    its targets (the KL divergence from logits)."""
    ncls = x2.shape[1]
    return _kernels.softmax(
        x=x2, grad=grad, hess=hess, target=target, labels=labels, gs0=plan.gs0,
        gscale=plan.weights, loss=loss, lse=lse, from_logits=opts.from_logits,
        keep=1.0 - opts.label_smoothing, spread=opts.label_smoothing / ncls,
        zloss=opts.z_loss, eps=opts.epsilon, class_weight=class_weight,
        ignore_class=opts.ignore_class, n_threads=n_threads,
        row_fn=_kernels.ROW_FUNCTIONS[row_fn], row_a=row_a, row_b=row_b,
        block_sums=block_sums, sum_w=plan.weights, add_xlogx=add_xlogx,
    )


def run_sigmoid(opts: Options, x2: np.ndarray, z2: np.ndarray, *, plan: _reduction.Plan,
                loss: np.ndarray | None, grad=None, hess=None, pos_weight=None,
                n_threads: int, block_sums=None) -> None:
    """The sigmoid kernel on laid-out (rows, elements) buffers; ``block_sums`` as for
    ``run_softmax``."""
    _kernels.sigmoid(
        x=x2, target=z2, grad=grad, hess=hess, gs0=plan.gs0, gscale=plan.weights, loss=loss,
        from_logits=opts.from_logits, keep=1.0 - opts.label_smoothing,
        spread=opts.label_smoothing / 2.0, eps=opts.epsilon, pos_weight=pos_weight,
        n_threads=n_threads, block_sums=block_sums, sum_w=plan.weights,
    )


def run_binary_focal(opts: Options, x2: np.ndarray, z2: np.ndarray, *, plan: _reduction.Plan,
                     loss: np.ndarray | None, gamma: float, alpha_pos: float,
                     alpha_neg: float, grad=None, hess=None, n_threads: int,
                     block_sums=None) -> None:
    """The binary focal kernel (from logits) on laid-out (rows, elements) buffers;
    ``block_sums`` as for ``run_softmax``."""
    _kernels.binary_focal(
        x=x2, target=z2, grad=grad, hess=hess, gs0=plan.gs0, gscale=plan.weights, loss=loss,
        keep=1.0 - opts.label_smoothing, spread=opts.label_smoothing / 2.0, gamma=gamma,
        a1=alpha_pos, a0=alpha_neg, n_threads=n_threads, block_sums=block_sums,
        sum_w=plan.weights,
    )


def softmax(opts: Options, y_true, y_pred, sample_weight=None, *, want_grad=False,
            want_hess=False, want_lse=False, grad_out=None, inplace=False,
            want_total=False) -> Outcome:
    """Softmax cross-entropy (integer labels if ``opts.sparse`` else soft targets).

    ``want_total``: also the plan's weighted sum of the per-row losses (``Outcome.total``,
    the numerator of a mean), for the metrics that accumulate it across batches."""
    _check_buffers(want_grad, want_hess, grad_out, inplace)
    nt = resolve_n_threads(opts.n_threads)
    lay = _layout.rows(y_pred, opts.axis, inplace=inplace, y_true=y_true)
    given_shape, gout = lay.arr.shape, grad_out

    labels = target = t = None
    if opts.sparse:
        true_shape = np.shape(y_true)
        if lay.arr.ndim == 1 and len(true_shape) == 2 and true_shape[-1] == 1:
            # Keras' rank rule expands a rank-1 y_pred for (batch, 1) labels: one class
            lay, gout = _same_rank_pred(lay, lay.arr.shape + (1,), opts.axis, inplace, y_true,
                                        grad_out)
    else:
        t = as_target_array(y_true, "y_true", lay.arr.dtype)
        true_shape, pred_shape = keras_ranks(t.shape, lay.arr.shape)
        if true_shape == pred_shape:  # else the shape error below names both shapes
            t = _resized(t, true_shape)
            lay, gout = _same_rank_pred(lay, pred_shape, opts.axis, inplace, y_true, grad_out)
    n_rows, ncls = lay.x2.shape
    cw = check_weight_vector(opts.class_weight, "class_weight", ncls, "class")
    if ncls == 1 and not opts.sparse:  # Keras warns (its sparse loss does not)
        warn_single_class("categorical_crossentropy", lay.arr.shape)

    if opts.sparse:
        labels = as_labels(y_true, lay.batch_shape, lay.axis, lay.arr.ndim)
    else:
        if t.shape != lay.arr.shape:
            raise ValueError(
                f"y_true has shape {t.shape} but y_pred has shape {lay.arr.shape}; "
                "categorical targets need the shape of y_pred"
                f"{sparse_labels_hint(t, lay.arr.shape, lay.axis)}"
            )
        target = lay.rows_of(t)

    sample_cw = None
    if cw is not None and opts.reduction == "mean_with_sample_weight" and not opts.sparse:
        # sum_k cw_k t_k per row, accumulated in float64 through einsum's small buffers:
        # no N x C float64 copy of a float32 target (and no threaded BLAS: same bits)
        sample_cw = np.einsum("ij,j->i", target, cw, dtype=np.float64)
    plan = _reduction.plan(
        opts.reduction, n_rows, row_length=ncls, weights=_weights(sample_weight, lay),
        labels=labels, ignore_class=opts.ignore_class, class_weight=cw,
        sample_class_weight=sample_cw,
    )

    grad2, hess2 = _outputs(lay, y_true, sample_weight, want_grad, want_hess, gout, inplace)
    # a reduced loss: the kernel sums its fixed blocks, no per-row array
    sums = _reduction.block_sums(plan, n_rows)
    loss64 = np.empty(n_rows) if sums is None else None
    lse = np.empty(n_rows) if want_lse else None
    if n_rows:
        bad = run_softmax(opts, lay.x2, plan=plan, loss=loss64, labels=labels, target=target,
                          grad=grad2, hess=hess2, lse=lse, class_weight=cw, n_threads=nt,
                          block_sums=sums)
        if bad:
            raise label_range_error(bad, labels, y_true, lay.batch_shape, ncls,
                                    opts.ignore_class)
        _reduction.zero_if_empty_mean(plan, grad2, hess2)

    loss, total = _reduction.outcome(loss64, sums, plan, lay.batch_shape,
                                     result_dtype(lay.arr.dtype), want_total)
    return _as_given(Outcome(
        loss=loss,
        grad=_layout.grad_result(grad2, lay, gout, inplace),
        hess=None if hess2 is None else lay.from_rows(hess2),
        lse=None if lse is None else lse.reshape(lay.batch_shape).astype(
            result_dtype(lay.arr.dtype)),
        denominator=plan.denominator,
        total=total,
    ), y_pred, given_shape, grad_out, inplace)


def pos_weight_rows(pos_weight, lay: _layout.Rows):
    """``(per_column, per_element)``: pos_weight as one weight per element of the class axis
    (a float64 vector for the kernel; None for none) or, when it varies along other axes
    too, a float64 (rows, classes) array (else None).

    A scalar, or a 1-D array with one entry per element of the class axis, weighs that
    axis (as before); any other shape broadcasts against y_pred's shape by NumPy's rule,
    which is PyTorch's (``binary_cross_entropy_with_logits`` broadcasts pos_weight with the
    target).  When the class axis is last the two readings agree.
    """
    width = lay.n_classes
    if not isinstance(pos_weight, np.ndarray) or (
            pos_weight.ndim == 1 and pos_weight.shape[0] == width):
        return check_weight_vector(pos_weight, "pos_weight", width,
                                   "element of the class axis"), None
    try:
        full = np.broadcast_to(pos_weight, lay.arr.shape)
    except ValueError:
        raise ValueError(
            f"pos_weight has shape {pos_weight.shape}, which neither has one entry per element "
            f"of the class axis ({width}) nor broadcasts against y_pred's shape "
            f"{lay.arr.shape} (PyTorch's rule)"
        ) from None
    moved = np.moveaxis(full, lay.axis, -1)
    if all(st == 0 or n == 1 for st, n in zip(moved.strides[:-1], moved.shape[:-1],
                                              strict=True)):
        return np.ascontiguousarray(moved.reshape(-1, width)[0] if moved.size else
                                    np.ones(width)), None
    return None, np.ascontiguousarray(moved, dtype=np.float64).reshape(-1, width)


def sigmoid(opts: Options, y_true, y_pred, sample_weight=None, *, want_grad=False,
            want_hess=False, want_lse=False, grad_out=None, inplace=False,
            want_total=False) -> Outcome:
    """Binary (sigmoid) cross-entropy, averaged over the axis like Keras."""
    _check_buffers(want_grad, want_hess, grad_out, inplace)
    if want_hess and not opts.from_logits:
        raise ValueError("the Hessian is available for from_logits=True only")
    nt = resolve_n_threads(opts.n_threads)
    lay = _layout.rows(y_pred, opts.axis, inplace=inplace, y_true=y_true)
    given_shape = lay.arr.shape

    t = as_target_array(y_true, "y_true", lay.arr.dtype)
    true_shape, pred_shape = keras_ranks(t.shape, lay.arr.shape)
    if t.shape != lay.arr.shape and true_shape != pred_shape:
        raise ValueError(
            f"y_true has shape {t.shape} but y_pred has shape {lay.arr.shape}; "
            "binary targets need the shape of y_pred (or one more or one fewer trailing "
            "axis of size 1, as in Keras)"
        )
    t = _resized(t, true_shape) if len(true_shape) != t.ndim else t
    lay, gout = _same_rank_pred(lay, pred_shape, opts.axis, inplace, y_true, grad_out)
    n_rows, width = lay.x2.shape
    pw, pw_full = pos_weight_rows(opts.pos_weight, lay)
    z2 = lay.rows_of(t)
    plan = _reduction.plan(opts.reduction, n_rows, row_length=width,
                           weights=_weights(sample_weight, lay))

    grad2, hess2 = _outputs(lay, y_true, sample_weight, want_grad, want_hess, gout, inplace)
    # a reduced loss from the kernel: its fixed blocks' sums, no per-row array (a weight per
    # element runs in NumPy, which keeps per-row losses)
    sums = _reduction.block_sums(plan, n_rows) if pw_full is None else None
    loss64 = np.empty(n_rows) if sums is None else None
    if n_rows and pw_full is not None:  # a weight per element: elementwise NumPy
        from fastxent._family import binary_elementwise_pos_weight

        binary_elementwise_pos_weight(opts, lay.x2, z2, pw_full, plan=plan, loss=loss64,
                                      grad=grad2, hess=hess2)
        _reduction.zero_if_empty_mean(plan, grad2, hess2)
    elif n_rows:
        run_sigmoid(opts, lay.x2, z2, plan=plan, loss=loss64, grad=grad2, hess=hess2,
                    pos_weight=pw, n_threads=nt, block_sums=sums)
        _reduction.zero_if_empty_mean(plan, grad2, hess2)
    loss, total = _reduction.outcome(loss64, sums, plan, lay.batch_shape,
                                     result_dtype(lay.arr.dtype), want_total)
    return _as_given(Outcome(
        loss=loss,
        grad=_layout.grad_result(grad2, lay, gout, inplace),
        hess=None if hess2 is None else lay.from_rows(hess2),
        denominator=plan.denominator,
        total=total,
    ), y_pred, given_shape, grad_out, inplace)
