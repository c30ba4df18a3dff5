"""PyTorch autograd functions computed by fastxent's kernels (CPU tensors).

:func:`cross_entropy`, :func:`binary_cross_entropy_with_logits` and
:func:`linear_cross_entropy` take the arguments of ``torch.nn.functional.cross_entropy``,
``torch.nn.functional.binary_cross_entropy_with_logits`` and ``F.linear`` followed by
``F.cross_entropy``, and give the same values and gradients.  Each is a
``torch.autograd.Function`` whose forward computes the loss and its gradient in one call to
fastxent and saves the gradient; the backward only scales it by the incoming gradient.

Tensors are shared with NumPy without a copy (``tensor.detach().numpy()``) and the results
come back with ``torch.from_numpy``.  Inputs must be CPU tensors of float32 or float64;
:func:`cross_entropy` and :func:`binary_cross_entropy_with_logits` also take float16 and
bfloat16 (bfloat16 read through its bits as ``ml_dtypes.bfloat16``: it needs ml_dtypes),
computed in float32 with float64 sums, the loss and gradient returned in the input's dtype.
Targets and weights must not require grad.  The module needs PyTorch
(``pip install '.[torch]'`` from a clone); ``import fastxent`` does not import it.

Memory and copies
-----------------
* ``input`` of shape (N, C) (class axis last) is read in place; an N-d input
  (N, C, d1, ...) is laid out with the class axis last by one copy of the logits (unless it
  is already stored that way, e.g. ``torch.channels_last``), and its gradient is stored with
  the class axis last in memory (a permuted view of shape (N, C, d1, ...)).
* The saved gradient has the input's size; :func:`linear_cross_entropy` saves the
  gradients of ``hidden``, ``weight`` and ``bias`` only, never the N x V logits.  It takes
  float16 / bfloat16 ``hidden``, ``weight`` and ``bias`` whatever the kernels compute in: it
  copies them to float32 once, computes in float32 and rounds the gradients to their dtype.
* ``reduction="none"``: :func:`cross_entropy` and :func:`binary_cross_entropy_with_logits`
  save each sample's own gradient and multiply it by ``grad_output`` broadcast along the
  class axis.  :func:`linear_cross_entropy` cannot do so without the N x V gradient (the
  weight's gradient sums over tokens), so its forward computes the losses only and its
  backward computes the gradients weighted by ``grad_output`` (one more product of the
  logits, blockwise).
"""

from __future__ import annotations

import numbers

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from fastxent._errors import LabelRangeError
from fastxent._interop import ml_bfloat16
from fastxent.linear import linear_cross_entropy as _linear_loss
from fastxent.linear import linear_cross_entropy_and_grad as _linear_loss_and_grad
from fastxent.losses import (
    BinaryCrossentropy,
    CategoricalCrossentropy,
    SparseCategoricalCrossentropy,
)

__all__ = ["cross_entropy", "binary_cross_entropy_with_logits", "linear_cross_entropy"]

_REDUCTIONS = ("none", "mean", "sum")
_NATIVE = (torch.float32, torch.float64)
#: The input dtypes of cross_entropy and binary_cross_entropy_with_logits, for errors.
_LOGIT_DTYPES = "float32, float64, float16 or bfloat16"


# ----------------------------------------------------------------------------- conversions

def _check_tensor(t, name: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.device.type != "cpu":
        raise ValueError(
            f"{name} is on device {t.device}; fastxent computes on the CPU: move it with "
            f"{name}.cpu(), or use torch.nn.functional on that device"
        )


def _no_grad(t, name: str) -> None:
    if t.requires_grad:
        raise ValueError(
            f"{name} requires grad, but fastxent.torch differentiates with respect to the "
            f"input only: pass {name}.detach()"
        )


def _float_array(t, name: str, dtypes: str = "float32 or float64") -> np.ndarray:
    """A CPU floating tensor as a NumPy array sharing its memory (``dtypes``: the accepted
    dtypes, as the error names them)."""
    _check_tensor(t, name)
    if t.dtype in _NATIVE or t.dtype == torch.float16:
        return t.detach().numpy()
    if t.dtype == torch.bfloat16:  # NumPy has no bfloat16: view the bits as ml_dtypes'
        bfloat16 = ml_bfloat16()
        if bfloat16 is None:
            raise TypeError(
                f"{name} has dtype torch.bfloat16, which fastxent reads as ml_dtypes.bfloat16, "
                f"but ml_dtypes is not installed: install it (pip install ml_dtypes, or "
                f"fastxent's [lowp] extra) or cast with {name}.float()"
            )
        return t.detach().view(torch.int16).numpy().view(bfloat16)
    raise TypeError(
        f"{name} must have dtype {dtypes}, got {t.dtype}; cast it with {name}.float()"
    )


def _tensor(a) -> torch.Tensor:
    """A NumPy result as a tensor sharing its memory (bfloat16 through its bits)."""
    a = np.asarray(a)
    if a.dtype.name == "bfloat16":
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def _scalar(value, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(value, dtype=like.dtype)


def _reduced(loss, like: torch.Tensor) -> torch.Tensor:
    """The loss in ``like``'s dtype (per-sample losses of float16 / bfloat16 logits come
    from NumPy as float32)."""
    return _tensor(loss).to(like.dtype) if isinstance(loss, np.ndarray) else _scalar(loss, like)


def _check_reduction(reduction) -> str:
    if not isinstance(reduction, str) or reduction not in _REDUCTIONS:
        raise ValueError(
            f"reduction must be one of {', '.join(map(repr, _REDUCTIONS))} (PyTorch's names), "
            f"got {reduction!r}"
        )
    return reduction


def _check_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r}")
    return int(value)


def _class_weight(weight, n_classes: int) -> np.ndarray | None:
    """``weight`` (C,) as float64, or None."""
    if weight is None:
        return None
    _check_tensor(weight, "weight")
    _no_grad(weight, "weight")
    if weight.shape != (n_classes,):
        raise ValueError(
            f"weight must have one entry per class ({n_classes}), got shape "
            f"{tuple(weight.shape)}"
        )
    w = weight.detach().to(torch.float64).numpy()
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError("weight must be finite and >= 0 (fastxent's kernels take "
                         "non-negative class weights)")
    return w


def _scaled(grad: torch.Tensor, grad_output: torch.Tensor, axis: int) -> torch.Tensor:
    """The saved gradient times ``grad_output`` (per sample: broadcast along ``axis``).

    A unit scalar ``grad_output`` (``loss.backward()``) returns the saved gradient itself.
    """
    if grad_output.dim() == 0:
        if grad_output.item() == 1.0:
            return grad
        return grad * grad_output
    return grad * grad_output.unsqueeze(axis)


def _call(func, *args, **kwargs):
    """``func(*args, **kwargs)``, a bad label reported against ``target``."""
    try:
        return func(*args, **kwargs)
    except LabelRangeError as exc:
        raise LabelRangeError(exc.position, exc.value, exc.n_classes, exc.count,
                              argument="target") from None


def _nan_if_empty(loss, reduction: str, denominator: float):
    """PyTorch's mean over no sample (every target ignored, or zero total weight) is NaN."""
    if reduction == "mean" and denominator == 0.0:
        return float("nan")
    return loss


# ---------------------------------------------------------------------------- cross_entropy

def _fx_reduction(reduction: str, mean: str) -> str:
    """PyTorch's reduction as fastxent's, ``mean`` the name of the matching mean."""
    return {"none": "none", "sum": "sum", "mean": mean}[reduction]


def _probabilities(input, t, x, cw, reduction, label_smoothing):
    """Probability targets: (targets as an array laid out like ``x``, the loss, the mean's
    denominator)."""
    if tuple(t.shape) != tuple(input.shape):
        raise ValueError(
            f"target of probabilities has shape {tuple(t.shape)}; it needs input's shape "
            f"{tuple(input.shape)}"
        )
    y = _float_array(t.to(input.dtype), "target", _LOGIT_DTYPES).reshape(x.shape)
    loss_fn = CategoricalCrossentropy(
        from_logits=True, label_smoothing=label_smoothing, axis=1, class_weight=cw,
        reduction=_fx_reduction(reduction, "sum_over_batch_size"))
    return y, loss_fn, lambda: x.size // x.shape[1]


def _class_indices(input, t, x, cw, ignore_index, reduction, label_smoothing):
    """Class-index targets: (labels as an int64 array, the loss, the mean's denominator:
    the summed class weight of the targets not ignored, taken once they are checked)."""
    if t.dtype.is_complex or t.dtype == torch.bool:
        raise TypeError(
            f"target must hold class indices (an integer dtype) or probabilities (a float "
            f"dtype), got {t.dtype}"
        )
    batch_shape = x.shape[:1] + x.shape[2:]
    if t.numel() != int(np.prod(batch_shape)) or (input.dim() > 1
                                                  and tuple(t.shape) != batch_shape):
        raise ValueError(
            f"target has shape {tuple(t.shape)} but input has shape {tuple(input.shape)}: "
            "class indices need input's shape without the class axis (axis 1)"
        )
    y = t.numpy().reshape(batch_shape).astype(np.int64, copy=False)
    loss_fn = SparseCategoricalCrossentropy(
        from_logits=True, ignore_class=ignore_index, label_smoothing=label_smoothing, axis=1,
        class_weight=cw, reduction=_fx_reduction(reduction, "mean_with_sample_weight"))

    def denominator():
        kept = y[y != ignore_index]
        return kept.size if cw is None else cw[kept].sum()

    return y, loss_fn, denominator


class _CrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, target, weight, ignore_index, reduction, label_smoothing):
        x = _float_array(input, "input", _LOGIT_DTYPES)
        if x.ndim == 0:
            raise ValueError("input must have a class axis: shape (C,), (N, C) or (N, C, d1, ...)")
        unbatched = x.ndim == 1
        x = x[None] if unbatched else x
        cw = _class_weight(weight, x.shape[1])
        _check_tensor(target, "target")
        _no_grad(target, "target")
        t = target.detach()
        if t.is_floating_point():
            y, loss_fn, denominator = _probabilities(input, t, x, cw, reduction,
                                                     label_smoothing)
        else:
            y, loss_fn, denominator = _class_indices(input, t, x, cw, ignore_index, reduction,
                                                     label_smoothing)
        if ctx.needs_input_grad[0]:
            loss, grad = _call(loss_fn.loss_and_grad, y, x)
            ctx.save_for_backward(_tensor(grad[0] if unbatched else grad))
        else:
            loss = _call(loss_fn, y, x)
        if reduction == "mean":
            loss = _nan_if_empty(loss, reduction, float(denominator()))
        ctx.class_axis = 0 if unbatched else 1
        out = _reduced(loss, input)
        return out[0] if unbatched and reduction == "none" else out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        (grad,) = ctx.saved_tensors
        return _scaled(grad, grad_output, ctx.class_axis), None, None, None, None, None


def cross_entropy(input, target, weight=None, ignore_index=-100, reduction="mean",
                  label_smoothing=0.0):
    """Cross-entropy of logits: ``torch.nn.functional.cross_entropy`` on fastxent's kernels.

    Parameters
    ----------
    input : torch.Tensor, shape (C,), (N, C) or (N, C, d1, ...)
        Logits, class axis 1 (0 for an unbatched (C,) input); a CPU tensor of float32,
        float64, float16 or bfloat16 (bfloat16 needs ml_dtypes; float16 and bfloat16 are
        computed in float32).
    target : torch.Tensor
        Class indices of input's shape without the class axis (an integer dtype; values in
        ``[0, C)`` or ``ignore_index``), or class probabilities of input's shape (a float
        dtype).  Must not require grad.
    weight : torch.Tensor of shape (C,), optional
        Per-class weights ``w``.
    ignore_index : int
        Class index whose samples count neither in the loss nor in the mean (class indices
        only).
    reduction : {"mean", "sum", "none"}
        ``mean`` over class indices divides by ``sum_i w[y_i]`` over the samples not
        ignored (their number without ``weight``; NaN when it is 0, as PyTorch); over
        probabilities by the number of samples.
    label_smoothing : float in [0, 1]
        The target becomes ``(1 - eps) y + eps / C``; with ``weight``, the smoothing term of
        sample ``i`` is ``eps / C * sum_k w_k (-log p_ik)`` (PyTorch's formula).

    Returns
    -------
    torch.Tensor
        A scalar, or for ``reduction="none"`` the per-sample losses (target's shape for class
        indices, input's shape without the class axis for probabilities); input's dtype.

    Notes
    -----
    The loss of sample ``i`` with class index ``y_i`` is
    ``(1 - eps) w[y_i] (-log p_{i y_i}) + eps / C sum_k w_k (-log p_ik)``, ``p`` the softmax
    of the logits along the class axis.  The gradient is computed with the loss and saved;
    ``backward`` multiplies it by the incoming gradient.

    Examples
    --------
    >>> import torch
    >>> from fastxent.torch import cross_entropy
    >>> logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, 3.0]], requires_grad=True)
    >>> loss = cross_entropy(logits, torch.tensor([0, 2]))
    >>> loss.backward()
    >>> round(loss.item(), 5), logits.grad.shape
    (0.25126, torch.Size([2, 3]))
    """
    reduction = _check_reduction(reduction)
    ignore_index = _check_int(ignore_index, "ignore_index")
    return _CrossEntropy.apply(input, target, weight, ignore_index, reduction, label_smoothing)


# -------------------------------------------------------------------------- binary (sigmoid)

def _broadcast(w, name: str, shape: tuple) -> np.ndarray | None:
    """A weight tensor broadcast to ``shape`` (PyTorch's rules) as float64, or None."""
    if w is None:
        return None
    _check_tensor(w, name)
    _no_grad(w, name)
    arr = w.detach().to(torch.float64).numpy()
    try:
        return np.broadcast_to(arr, shape)
    except ValueError:
        raise ValueError(
            f"{name} has shape {tuple(w.shape)}, which does not broadcast to input's shape "
            f"{shape}"
        ) from None


class _BinaryCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, target, weight, reduction, pos_weight):
        x = _float_array(input, "input", _LOGIT_DTYPES)
        _check_tensor(target, "target")
        _no_grad(target, "target")
        if tuple(target.shape) != x.shape:
            raise ValueError(
                f"target has shape {tuple(target.shape)} but input has shape {x.shape}; "
                "they must be the same"
            )
        t = _float_array(target.detach().to(input.dtype), "target", _LOGIT_DTYPES)
        w = _broadcast(weight, "weight", x.shape)
        pw = _broadcast(pos_weight, "pos_weight", x.shape)
        if pw is not None:
            # pos_weight p as a per-element weight q = p t + 1 - t and target p t / q:
            # q (t' softplus(-x) + (1 - t') softplus(x)) = p t softplus(-x) + (1 - t) softplus(x)
            t = t.astype(np.float64)  # 1 - t in float64, not in a 16-bit input's dtype
            pt = pw * t
            q = pt + (1.0 - t)
            if np.any((q == 0) & (pt != 0)):
                raise ValueError(
                    "pos_weight * target + 1 - target is 0 where pos_weight * target is not: "
                    "use targets in [0, 1] and pos_weight >= 0"
                )
            t = np.divide(pt, q, out=np.zeros_like(q), where=q != 0)
            if x.dtype.itemsize == 2:
                # float16 / bfloat16 logits: the kernels read float32 targets as they are
                # (others are rounded to the logits' dtype, which p t / q is not exactly)
                t = t.astype(np.float32)
            w = q if w is None else w * q
        # Each element is a sample: rows of one element, the loss per element.
        loss_fn = BinaryCrossentropy(
            from_logits=True, reduction=_fx_reduction(reduction, "sum_over_batch_size"))
        x2, t2 = x.reshape(-1, 1), t.reshape(-1, 1)
        sw = None if w is None else np.ascontiguousarray(w, dtype=np.float64).reshape(-1)
        if ctx.needs_input_grad[0]:
            loss, grad = loss_fn.loss_and_grad(t2, x2, sw)
            ctx.save_for_backward(_tensor(grad.reshape(x.shape)))
        else:
            loss = loss_fn(t2, x2, sw)
        if isinstance(loss, np.ndarray):
            loss = loss.reshape(x.shape)
        return _reduced(_nan_if_empty(loss, reduction, float(x.size)), input)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        (grad,) = ctx.saved_tensors
        if grad_output.dim():
            return grad * grad_output, None, None, None, None
        return _scaled(grad, grad_output, 0), None, None, None, None


def binary_cross_entropy_with_logits(input, target, weight=None, reduction="mean",
                                     pos_weight=None):
    """Binary cross-entropy of logits: ``torch.nn.functional.binary_cross_entropy_with_logits``.

    Parameters
    ----------
    input : torch.Tensor
        Logits, any shape; a CPU tensor of float32, float64, float16 or bfloat16 (bfloat16
        needs ml_dtypes; float16 and bfloat16 are computed in float32).
    target : torch.Tensor, shape of input
        Targets in [0, 1].  Must not require grad.
    weight : torch.Tensor, optional
        Weight of each element, broadcast to input's shape.
    reduction : {"mean", "sum", "none"}
        ``mean`` divides the sum by the number of elements.
    pos_weight : torch.Tensor, optional
        Weight of the positive term, broadcast to input's shape (e.g. shape (C,) for the last
        axis): ``-(pos_weight t log sigmoid(x) + (1 - t) log(1 - sigmoid(x)))``.

    Returns
    -------
    torch.Tensor
        A scalar, or input's shape for ``reduction="none"``; input's dtype.

    Notes
    -----
    Each element is computed as a sample of fastxent's binary kernel.  ``pos_weight`` is
    applied as the element weight ``q = pos_weight t + 1 - t`` and target ``pos_weight t / q``,
    which gives the same loss and gradient ``q sigmoid(x) - pos_weight t``.

    Examples
    --------
    >>> import torch
    >>> from fastxent.torch import binary_cross_entropy_with_logits
    >>> x = torch.tensor([[0.5, -1.0]], requires_grad=True)
    >>> loss = binary_cross_entropy_with_logits(x, torch.tensor([[1.0, 0.0]]),
    ...                                         pos_weight=torch.tensor([2.0, 1.0]))
    >>> round(loss.item(), 5)
    0.63071
    """
    reduction = _check_reduction(reduction)
    return _BinaryCrossEntropy.apply(input, target, weight, reduction, pos_weight)


# --------------------------------------------------------------------- linear_cross_entropy

class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, target, bias, ignore_index, reduction, label_smoothing,
                z_loss):
        h = _float_array(hidden, "hidden", _LOGIT_DTYPES)
        for name, t in (("weight", weight), ("bias", bias)):
            if isinstance(t, torch.Tensor) and t.dtype != hidden.dtype:
                raise TypeError(
                    f"{name} has dtype {t.dtype} but hidden has dtype {hidden.dtype}; cast "
                    f"one of them, e.g. {name}.to(hidden.dtype)"
                )
        w = _float_array(weight, "weight", _LOGIT_DTYPES)
        b = None if bias is None else _float_array(bias, "bias", _LOGIT_DTYPES)
        _check_tensor(target, "target")
        _no_grad(target, "target")
        if target.is_floating_point() or target.dtype == torch.bool:
            raise TypeError(f"target must hold class indices (an integer dtype), got "
                            f"{target.dtype}")
        y = target.detach().numpy()
        kw = dict(ignore_class=ignore_index, label_smoothing=label_smoothing, z_loss=z_loss)
        fx_reduction = _fx_reduction(reduction, "sum_over_batch_size")
        need = ctx.needs_input_grad[0] or ctx.needs_input_grad[1] or (
            bias is not None and ctx.needs_input_grad[3])
        ctx.deferred = need and reduction == "none"
        if need and not ctx.deferred:
            loss, dh, dw, db = _call(_linear_loss_and_grad, h, w, y, b,
                                           reduction=fx_reduction, **kw)
            saved = [_tensor(dh), _tensor(dw)] + ([] if db is None else [_tensor(db)])
            ctx.save_for_backward(*saved)
        else:
            loss = _call(_linear_loss, h, w, y, b, reduction=fx_reduction, **kw)
            if ctx.deferred:
                ctx.save_for_backward(*[v for v in (hidden, weight, bias) if v is not None])
                ctx.target, ctx.kw = y, kw
        if reduction == "mean":
            loss = _nan_if_empty(loss, reduction, float(np.count_nonzero(y != ignore_index)))
        ctx.has_bias = bias is not None
        return _reduced(loss, hidden)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        saved = ctx.saved_tensors
        if ctx.deferred:
            h, w = _float_array(saved[0], "hidden", _LOGIT_DTYPES), _float_array(saved[1], "weight", _LOGIT_DTYPES)
            b = _float_array(saved[2], "bias", _LOGIT_DTYPES) if ctx.has_bias else None
            g = grad_output.detach().to(torch.float64).numpy()
            _, dh, dw, db = _linear_loss_and_grad(h, w, ctx.target, b, sample_weight=g,
                                                  reduction="sum", **ctx.kw)
            grads = [_tensor(dh), _tensor(dw), None if db is None else _tensor(db)]
        else:
            grads = [_scaled(s, grad_output, 0) for s in saved]
            grads += [None] * (3 - len(grads))
        return grads[0], grads[1], None, grads[2], None, None, None, None


def linear_cross_entropy(hidden, weight, target, bias=None, ignore_index=-100,
                         reduction="mean", label_smoothing=0.0, z_loss=0.0):
    """``F.cross_entropy(F.linear(hidden, weight, bias), target)`` without the logits.

    The fused head of :func:`fastxent.linear_cross_entropy_and_grad`: the N x V logits are
    computed one block at a time and never stored, nor is their gradient.

    Parameters
    ----------
    hidden : torch.Tensor, shape (..., d)
        Hidden states; a CPU tensor of float32, float64, float16 or bfloat16 (bfloat16 needs
        ml_dtypes, the ``[lowp]`` extra).  float16 and bfloat16 are computed in float32 on one
        float32 copy of ``hidden``, ``weight`` and ``bias`` (never of the logits).
    weight : torch.Tensor, shape (V, d)
        ``nn.Linear(d, V).weight`` (PyTorch's ``F.linear`` layout), hidden's dtype.
    target : torch.Tensor of integers, shape hidden.shape[:-1]
        Token ids in ``[0, V)`` or ``ignore_index``.  Must not require grad.
    bias : torch.Tensor of shape (V,), hidden's dtype, optional
    ignore_index : int
        Padding label: loss 0, zero gradient, not counted by the mean.
    reduction : {"mean", "sum", "none"}
        ``mean`` divides by the number of tokens not ignored (NaN when there are none, as
        PyTorch).
    label_smoothing : float in [0, 1]
        As in :func:`cross_entropy` (no class weights here).
    z_loss : float >= 0
        Adds ``z_loss * logsumexp(logits)**2`` per token (PaLM's z-loss; not in PyTorch).

    Returns
    -------
    torch.Tensor
        A scalar, or the per-token losses (target's shape) for ``reduction="none"``, of
        hidden's dtype (as PyTorch and :func:`cross_entropy` return them).

    Notes
    -----
    With ``mean`` or ``sum`` the forward computes the loss and the gradients of ``hidden``,
    ``weight`` and ``bias`` (three matrix products per block of logits, as the unfused
    head) and saves those gradients.  With ``none`` the forward computes the losses only and
    the backward the gradients weighted by ``grad_output`` (one more product of the logits).

    float16 / bfloat16 tensors give the results of their float32 values (those of
    :func:`fastxent.linear_cross_entropy_and_grad` on them): the gradients are the float32
    ones rounded once to the tensors' dtype, to nearest even (with ``none``, ``grad_output``
    weighs the tokens inside the float32 computation; with ``mean`` or ``sum``, a
    ``grad_output`` other than 1 multiplies the rounded gradients in their dtype, as
    PyTorch's own backward would); a reduced loss is rounded to that dtype too.

    Examples
    --------
    >>> import torch
    >>> from fastxent.torch import linear_cross_entropy
    >>> g = torch.Generator().manual_seed(0)
    >>> hidden = torch.randn(6, 4, generator=g, requires_grad=True)
    >>> weight = torch.randn(9, 4, generator=g, requires_grad=True)
    >>> target = torch.tensor([1, 2, 3, 4, 5, -100])
    >>> loss = linear_cross_entropy(hidden, weight, target)
    >>> loss.backward()
    >>> ref = torch.nn.functional.cross_entropy(hidden @ weight.T, target)
    >>> bool(torch.isclose(loss, ref)), weight.grad.shape
    (True, torch.Size([9, 4]))
    """
    reduction = _check_reduction(reduction)
    ignore_index = _check_int(ignore_index, "ignore_index")
    return _LinearCrossEntropy.apply(hidden, weight, target, bias, ignore_index, reduction,
                                     label_smoothing, z_loss)
