"""Argument checks and conversions shared by the public functions (no kernels here)."""

from __future__ import annotations

import numbers
import sys

import numpy as np

from fastxent._interop import asarray

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
# y_pred dtypes the losses also read directly, computed in float32 (see is_low_precision)
LOW_PRECISION_NAMES = ("float16", "bfloat16")
REDUCTIONS = ("none", "sum", "sum_over_batch_size", "mean", "mean_with_sample_weight")


def plain(value):
    """``value`` for an error message: NumPy scalars (and tuples of them) as Python values.

    ``repr(np.float64(0.5))`` is ``np.float64(0.5)`` under NumPy 2; messages show ``0.5``.
    """
    if isinstance(value, tuple):
        return tuple(plain(v) for v in value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def _kind_name(dtype: np.dtype) -> str:
    return {"b": "bool", "i": "integer", "u": "integer", "f": "float"}.get(dtype.kind, str(dtype))


def swap_hint(y_true, y_pred_dtype: np.dtype) -> str:
    """A hint when ``y_pred`` is integer/bool and ``y_true`` float: the arguments look swapped.

    PyTorch's ``F.cross_entropy(input, target)`` takes the logits first; fastxent (like Keras)
    takes ``(y_true, y_pred)``.  Empty when the arguments do not look swapped.
    """
    if y_true is None or y_pred_dtype.kind not in "biu":
        return ""
    true_dtype = getattr(y_true, "dtype", None)  # arrays (NumPy, Dask) are not converted
    if not isinstance(true_dtype, np.dtype):
        try:
            true_dtype = np.asarray(y_true).dtype
        except Exception:  # noqa: BLE001 - a hint must never hide the real error
            return ""
    if true_dtype.kind != "f":
        return ""
    return (
        f"; the arguments look swapped: y_true is {_kind_name(true_dtype)} "
        f"({true_dtype}) and y_pred is {_kind_name(y_pred_dtype)}.  fastxent takes "
        "(y_true, y_pred) like Keras (labels or targets first, then logits or "
        "probabilities), the reverse of PyTorch's F.cross_entropy(input, target): call "
        "loss(labels, logits)"
    )


def is_bfloat16(dtype) -> bool:
    """``dtype`` is ``ml_dtypes.bfloat16``.

    Never imports ml_dtypes: an array of bfloat16 exists only once its caller has imported it,
    so a dtype named "bfloat16" is compared with ``sys.modules["ml_dtypes"].bfloat16``.
    """
    if getattr(dtype, "name", None) != "bfloat16":
        return False
    ml_dtypes = sys.modules.get("ml_dtypes")
    return ml_dtypes is not None and dtype == np.dtype(ml_dtypes.bfloat16)


def is_low_precision(dtype) -> bool:
    """float16 or bfloat16: read directly by the kernels, computed in float32."""
    return dtype == np.float16 or is_bfloat16(dtype)


def result_dtype(dtype) -> np.dtype:
    """The dtype of per-sample results (losses, log-sum-exp) for ``y_pred`` of ``dtype``:
    its own, or float32 for float16 / bfloat16 (the dtype they are computed in)."""
    return np.dtype(np.float32) if is_low_precision(dtype) else np.dtype(dtype)


def as_kernel_array(a, dtype=None) -> np.ndarray:
    """``a`` C-contiguous and aligned (copied only when it is not already).

    ``np.ascontiguousarray`` keeps a misaligned buffer (e.g. one NumPy made from bytes at an
    odd offset, as deserialized data can be); the kernels' loads need aligned elements.
    """
    return np.require(a, dtype=dtype, requirements=["C_CONTIGUOUS", "ALIGNED"])


def as_float_array(a, name: str, *, y_true=None, low_precision: bool = True) -> np.ndarray:
    """``a`` as an ndarray of float32 or float64, or (``low_precision``) float16 or
    ``ml_dtypes.bfloat16``, without a copy; TypeError for any other dtype.

    Integer, bool, complex and other predictions are refused rather than silently promoted:
    an integer y_pred is almost always a bug upstream.  Cast explicitly.  With ``y_true``
    given, an integer/bool ``a`` beside a float ``y_true`` is reported as swapped arguments
    instead of advising a cast.
    """
    arr = asarray(a, name)
    if arr.dtype in FLOAT_DTYPES or (low_precision and is_low_precision(arr.dtype)):
        return arr
    accepted = "float32, float64, float16 or bfloat16" if low_precision else "float32 or float64"
    hint = swap_hint(y_true, arr.dtype)
    advice = hint or f"; convert it explicitly (e.g. {name}.astype(np.float32))"
    if not low_precision and is_low_precision(arr.dtype):
        advice = (f"; float16 and bfloat16 are read by the cross-entropy losses only (binary, "
                  f"categorical, sparse categorical): convert {name} "
                  f"explicitly (e.g. {name}.astype(np.float32))")
    raise TypeError(f"{name} must have dtype {accepted}, got {arr.dtype}{advice}")


def as_target_array(a, name: str, dtype: np.dtype) -> np.ndarray:
    """Targets (probabilities, one-hot, binary labels) as ``dtype``: bool, integer and float
    targets are accepted and converted; complex, object and string targets are refused.

    Beside a float16 / bfloat16 ``y_pred`` (``dtype``), float32 targets are kept as they are
    (the kernels read them in place); others are converted to ``dtype``, as Keras does.
    """
    arr = asarray(a, name)
    if arr.dtype.kind not in "biuf" and not is_bfloat16(arr.dtype):
        raise TypeError(f"{name} must be numeric (bool, integer or float), got dtype {arr.dtype}")
    if arr.dtype == np.float32 and is_low_precision(dtype):
        return arr
    return arr.astype(dtype, copy=False)


def normalize_axis(axis, ndim: int, name: str = "axis") -> int:
    if isinstance(axis, bool | np.bool_) or not isinstance(axis, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {plain(axis)!r}")
    axis = int(axis)
    if ndim == 0:
        raise ValueError("y_pred must have at least one dimension (the class axis), got a scalar")
    if not -ndim <= axis < ndim:
        raise ValueError(f"{name}={axis} is out of range for y_pred with {ndim} dimension(s)")
    return axis % ndim


def check_fraction(value, name: str, lo: float = 0.0, hi: float = 1.0,
                   lo_open: bool = False, hi_open: bool = False) -> float:
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {plain(value)!r}")
    v = float(value)
    ok_lo = v > lo if lo_open else v >= lo
    ok_hi = v < hi if hi_open else v <= hi
    if not (ok_lo and ok_hi and np.isfinite(v)):
        lb = "(" if lo_open else "["
        rb = ")" if hi_open else "]"
        raise ValueError(f"{name} must be in {lb}{lo}, {hi}{rb}, got {plain(value)!r}")
    return v


def check_nonneg_real(value, name: str) -> float:
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {plain(value)!r}")
    v = float(value)
    if not (np.isfinite(v) and v >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {plain(value)!r}")
    return v


def check_reduction(reduction) -> str:
    if reduction is None:
        return "none"
    if not isinstance(reduction, str) or reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return "sum_over_batch_size" if reduction == "mean" else reduction


def check_name(name) -> str:
    """The ``name`` of a loss or metric (Keras' ``name``): a string."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a string (the loss's or metric's name, as in Keras), "
                        f"got {plain(name)!r}")
    return name


def check_dtype(dtype) -> np.dtype | None:
    """A loss's or metric's ``dtype`` (Keras' ``dtype``): None, or float32 / float64 as an
    ``np.dtype``."""
    if dtype is None:
        return None
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(
            f"dtype must be None, 'float32' or 'float64', got {plain(dtype)!r}"
        ) from None
    if dt not in FLOAT_DTYPES:
        raise ValueError(
            f"dtype must be None (y_pred's own dtype), 'float32' or 'float64', got "
            f"{plain(dtype)!r}; the kernels compute in float32 or float64 only"
        )
    return dt


def check_bool(value, name: str) -> bool:
    """``value`` as a Python bool; TypeError for anything but True / False (or np.bool_)."""
    if not isinstance(value, bool | np.bool_):
        raise TypeError(f"{name} must be True or False, got {plain(value)!r}")
    return bool(value)


def as_weight_array(w, name: str, max_ndim: int | None = 1) -> np.ndarray:
    """Per-class weights as float64: a scalar or a 1-D array (``max_ndim``; None: any) of
    finite numbers >= 0.

    The length is checked against the data by :func:`check_weight_vector`; this part runs in
    the class constructors too, so a bad weight fails where it is given.
    """
    try:
        arr = np.asarray(w)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a scalar or a 1-D array of real numbers") from None
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"{name} must be real numbers, got dtype {arr.dtype}")
    if max_ndim is not None and arr.ndim > max_ndim:
        raise ValueError(f"{name} must be a scalar or a 1-D array, got shape {arr.shape}")
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ValueError(f"{name} must be finite and >= 0")
    return arr


def check_weight_vector(w, name: str, length: int, what: str) -> np.ndarray | None:
    """Per-class weights: a scalar or a 1-D array of ``length`` finite non-negative numbers."""
    if w is None:
        return None
    arr = as_weight_array(w, name)
    if arr.ndim == 0:
        arr = np.full(length, float(arr))
    if arr.shape != (length,):
        raise ValueError(f"{name} must have one entry per {what} ({length}), got shape {arr.shape}")
    return np.ascontiguousarray(arr)


def _one_hot_hint(arr: np.ndarray, pred_ndim: int) -> str:
    """For dense targets given to a sparse loss: which loss takes them."""
    if arr.ndim != pred_ndim:
        return ""
    return (
        "; y_true looks like one-hot or probability targets (one value per class): use "
        "CategoricalCrossentropy / categorical_crossentropy for those, "
        "SparseCategoricalCrossentropy for integer class labels"
    )


def sparse_labels_hint(y_true, pred_shape: tuple, axis: int) -> str:
    """For integer labels given to a categorical loss: which loss takes them."""
    arr = np.asarray(y_true)
    batch_shape = pred_shape[:axis] + pred_shape[axis + 1:]
    if arr.shape not in (batch_shape, batch_shape + (1,)):
        return ""
    return (
        "; y_true looks like integer class labels (one per sample): use "
        "SparseCategoricalCrossentropy / sparse_categorical_crossentropy for those, "
        "CategoricalCrossentropy for one-hot or probability targets"
    )


def as_labels(y_true, batch_shape: tuple, class_axis: int, pred_ndim: int) -> np.ndarray:
    """Integer class labels with shape ``batch_shape``, as int64.

    Accepts any integer dtype, and float arrays holding integral values (Keras passes labels
    as floats); a trailing/class-axis dimension of size 1 is squeezed (Keras' (batch, 1)).
    """
    arr = asarray(y_true, "y_true")
    if arr.ndim == pred_ndim and arr.shape[class_axis] == 1 and arr.shape != batch_shape:
        arr = np.squeeze(arr, axis=class_axis)
    if arr.shape != batch_shape:
        raise ValueError(
            f"y_true has shape {arr.shape} but y_pred with the class axis removed has shape "
            f"{batch_shape}; sparse labels need one integer per sample"
            f"{_one_hot_hint(arr, pred_ndim)}"
        )
    kind = arr.dtype.kind
    if kind in "iu":
        int64_max = np.iinfo(np.int64).max
        if kind == "u" and arr.dtype.itemsize == 8 and arr.size and arr.max() > int64_max:
            bad = np.unravel_index(int(np.argmax(arr > int64_max)), arr.shape)
            pos = tuple(int(b) for b in bad)
            raise ValueError(
                f"y_true: label {int(arr[bad])} at position {pos} is outside [0, n_classes)"
            )
        return as_kernel_array(arr, np.int64).reshape(-1)
    if kind == "f":
        flat = arr.reshape(-1)
        integral = np.isfinite(flat) & (flat == np.round(flat))
        if not np.all(integral):
            i = int(np.argmin(integral))
            raise ValueError(
                f"y_true must hold integer class labels; found {plain(flat[i])!r} at position "
                f"{plain(np.unravel_index(i, arr.shape))}"
            )
        if flat.size and np.max(np.abs(flat)) >= 2.0**62:
            raise ValueError("y_true holds labels too large to be class indices")
        return flat.astype(np.int64)
    raise TypeError(
        f"y_true must hold integer class labels (an integer dtype), got dtype {arr.dtype}"
    )


def broadcast_sample_weight(sample_weight, loss_shape: tuple) -> np.ndarray | None:
    """``sample_weight`` as a float64 array of ``loss_shape``, or None.

    A scalar multiplies everything.  An array of lower rank is aligned with the LEADING
    dimensions of the per-sample loss (shape (batch,) weighs each row of a (batch, seq) loss,
    as Keras does), then broadcast; a trailing dimension of size 1 is dropped.
    """
    if sample_weight is None:
        return None
    w = asarray(sample_weight, "sample_weight")
    if w.dtype.kind not in "biuf":
        raise TypeError(f"sample_weight must be real numbers, got dtype {w.dtype}")
    w = w.astype(np.float64, copy=False)
    if w.ndim == len(loss_shape) + 1 and w.shape[-1] == 1:
        w = w[..., 0]
    if w.ndim < len(loss_shape) and w.ndim > 0:
        w = w.reshape(w.shape + (1,) * (len(loss_shape) - w.ndim))
    try:
        return np.broadcast_to(w, loss_shape)
    except ValueError:
        raise ValueError(
            f"sample_weight with shape {np.shape(sample_weight)} cannot be broadcast to the "
            f"per-sample loss shape {loss_shape}"
        ) from None


def _caller_stacklevel() -> int:
    """The ``stacklevel`` of the first frame outside the fastxent package (the user's call)."""
    import os
    import sys

    pkg = os.path.dirname(os.path.abspath(__file__)) + os.sep
    frame, level = sys._getframe(2), 2  # the caller of the function that warns
    while frame is not None and frame.f_code.co_filename.startswith(pkg):
        frame, level = frame.f_back, level + 1
    return level


def warn_single_class(loss: str, pred_shape: tuple) -> None:
    """Keras' warning for a categorical loss whose class axis has size 1 (its loss is 0).

    ``SyntaxWarning``, as ``keras.losses.categorical_crossentropy`` gives, at the user's call.
    """
    import warnings

    warnings.warn(
        f"In loss {loss}, expected y_pred.shape to be (batch_size, num_classes) with "
        f"num_classes > 1. Received: y_pred.shape={pred_shape}. Consider using "
        "'binary_crossentropy' if you only have 2 classes.",
        SyntaxWarning,
        stacklevel=_caller_stacklevel(),
    )
