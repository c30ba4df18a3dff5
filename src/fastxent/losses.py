"""Cross-entropy losses with Keras 3 semantics and PyTorch-style extensions.

Functions (``categorical_crossentropy``, ``sparse_categorical_crossentropy``,
``binary_crossentropy``) return per-sample losses like ``keras.losses.*``.  Classes
(``CategoricalCrossentropy``, ``SparseCategoricalCrossentropy``, ``BinaryCrossentropy``) add
reductions, sample weights and the gradient: ``loss_and_grad`` returns the reduced loss and
d(loss)/d(y_pred) computed in the same pass over the data.

Shapes: ``y_pred`` has the class axis ``axis`` (default last); the per-sample loss has the shape
of ``y_pred`` without that axis.  float32 input gives float32 output and float64 gives float64;
internally every sum is accumulated in float64.  float16 and bfloat16 (``ml_dtypes``) input is
read directly and computed in float32: gradients come back in its dtype (rounded to nearest
even), per-sample losses in float32.
"""

from __future__ import annotations

import numpy as np

from fastxent import _dispatch
from fastxent._interop import asarray
from fastxent._kernels import fast_call as _fast_call
from fastxent._options import sigmoid_options, softmax_options
from fastxent._validation import check_dtype, check_name, is_bfloat16

__all__ = [
    "categorical_crossentropy",
    "sparse_categorical_crossentropy",
    "binary_crossentropy",
    "CategoricalCrossentropy",
    "SparseCategoricalCrossentropy",
    "BinaryCrossentropy",
]


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
    n_threads=None,
):
    """Per-sample categorical cross-entropy (``keras.losses.categorical_crossentropy``).

    Parameters
    ----------
    y_true : array_like, shape of ``y_pred``
        Target distributions (one-hot or soft); bool/int/float, converted to y_pred's dtype
        (float32 targets are read as they are beside a float16 / bfloat16 y_pred).
    y_pred : ndarray of float32, float64, float16 or bfloat16, shape (..., C, ...)
        Logits (``from_logits=True``) or probabilities.
    from_logits : bool
        With False (Keras' default) each row is divided by its sum and clipped to
        ``[epsilon, 1 - epsilon]`` before the log, both bounds rounded to y_pred's dtype
        like Keras' clip (float32: ``1 - 1e-7`` is ``1 - 2**-23``; float16 and bfloat16 are
        clipped as float32, the dtype they are computed in).
    label_smoothing : float in [0, 1]
        Targets become ``y_true * (1 - label_smoothing) + label_smoothing / C``.
    axis : int
        The class axis.
    class_weight : array_like of shape (C,), optional
        Per-class weights ``w``: the loss is ``-sum_k w_k t_k log p_k`` (PyTorch's ``weight``).
    epsilon : float in (0, 0.5)
        Clip for probabilities (Keras' ``backend.epsilon()``).
    z_loss : float >= 0
        Adds ``z_loss * logsumexp(y_pred)**2`` (PaLM's z-loss); needs ``from_logits=True``.
    n_threads : int or None
        OpenMP threads: None for the OpenMP default, -1 for all cores.

    Returns
    -------
    ndarray of y_pred's dtype (float32 for float16 / bfloat16), shape of y_pred without
    ``axis``.

    Examples
    --------
    >>> import numpy as np, fastxent as fx
    >>> y_true = np.array([[0.0, 1.0, 0.0]])
    >>> logits = np.array([[1.0, 2.0, 0.5]])
    >>> fx.categorical_crossentropy(y_true, logits, from_logits=True).round(6)
    array([0.464369])
    """
    opts = softmax_options(
        sparse=False, from_logits=from_logits, label_smoothing=label_smoothing, axis=axis,
        class_weight=class_weight, epsilon=epsilon, z_loss=z_loss, n_threads=n_threads,
    )
    return _dispatch.loss_and_grad(opts, y_true, y_pred)


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
    n_threads=None,
):
    """Per-sample cross-entropy with integer labels
    (``keras.losses.sparse_categorical_crossentropy``).

    Parameters
    ----------
    y_true : array_like of integers, shape of y_pred without ``axis``
        Class labels in ``[0, C)``; any integer dtype, or floats holding integral values.
        A size-1 class axis (Keras' ``(batch, 1)``) is accepted.  An out-of-range label
        raises ``ValueError`` naming its position.
    y_pred : ndarray of float32, float64, float16 or bfloat16
        Logits or probabilities, class axis ``axis``.
    from_logits : bool
    ignore_class : int, optional
        Label to ignore (padding): its loss is 0 and its gradient zero.  Same as PyTorch's
        ``ignore_index``.
    axis : int
    label_smoothing : float in [0, 1]
        Extension (Keras has none for sparse labels): the categorical formula on the
        one-hot target, which is also PyTorch's.
    class_weight, epsilon, z_loss, n_threads
        As in :func:`categorical_crossentropy`.

    Returns
    -------
    ndarray of y_pred's dtype (float32 for float16 / bfloat16), shape of y_true (0 at ignored
    positions).

    Examples
    --------
    >>> import numpy as np, fastxent as fx
    >>> logits = np.array([[1.0, 2.0, 0.5], [0.0, 0.0, 3.0]], dtype=np.float32)
    >>> loss = fx.sparse_categorical_crossentropy([1, 2], logits, from_logits=True)
    >>> loss.dtype
    dtype('float32')
    >>> [round(float(v), 5) for v in loss]  # float32 results: within 1 ulp of the exact value
    [0.46437, 0.09492]
    """
    opts = softmax_options(
        sparse=True, from_logits=from_logits, label_smoothing=label_smoothing, axis=axis,
        class_weight=class_weight, ignore_class=ignore_class, epsilon=epsilon, z_loss=z_loss,
        n_threads=n_threads,
    )
    return _dispatch.loss_and_grad(opts, y_true, y_pred)


def binary_crossentropy(
    y_true,
    y_pred,
    from_logits=False,
    label_smoothing=0.0,
    axis=-1,
    *,
    pos_weight=None,
    epsilon=1e-7,
    n_threads=None,
):
    """Per-sample binary cross-entropy, the mean over ``axis``
    (``keras.losses.binary_crossentropy``).

    From logits the stable form ``max(x, 0) - x z + log1p(exp(-|x|))`` is used; from
    probabilities ``p`` is clipped to ``[epsilon, 1 - epsilon]``.

    Parameters
    ----------
    y_true : array_like, shape of y_pred
        Targets in [0, 1] (bool/int/float), converted like those of
        :func:`categorical_crossentropy`.
    y_pred : ndarray of float32, float64, float16 or bfloat16
    from_logits : bool
    label_smoothing : float in [0, 1]
        Targets become ``y_true * (1 - label_smoothing) + label_smoothing / 2``.
    axis : int
        The axis averaged over.
    pos_weight : float or array_like, optional
        Weight of the positive term, as PyTorch's ``binary_cross_entropy_with_logits``:
        ``-(pos_weight * z * log p + (1 - z) * log(1 - p))``.  A scalar; a 1-D array of
        ``y_pred.shape[axis]`` entries (one per element of the class axis); or any shape that
        broadcasts against y_pred's (PyTorch's rule: ``(C,)`` and ``(1, C)`` weigh the last
        axis, ``(N, 1)`` each sample, ``(N, C)`` each element).
    epsilon, n_threads
        As in :func:`categorical_crossentropy`.

    Returns
    -------
    ndarray of y_pred's dtype (float32 for float16 / bfloat16), shape of y_pred without
    ``axis``.

    Examples
    --------
    >>> import numpy as np, fastxent as fx
    >>> fx.binary_crossentropy([[0.0, 1.0]], np.array([[-1.0, 2.0]]), from_logits=True).round(6)
    array([0.220095])
    """
    opts = sigmoid_options(
        from_logits=from_logits, label_smoothing=label_smoothing, axis=axis,
        pos_weight=pos_weight, epsilon=epsilon, n_threads=n_threads,
    )
    return _dispatch.loss_and_grad(opts, y_true, y_pred)


def _option(name: str, doc: str) -> property:
    return property(lambda self: getattr(self._options, name), doc=doc)


class _Loss:
    """Shared behaviour of the loss classes: reductions, config, gradients.

    The constructor validates every option once into an immutable ``Options`` object
    (``self._options``); the attributes below read it.
    """

    _config_keys: tuple = ()
    _options = None
    _name = None
    _dtype = None

    from_logits = _option("from_logits", "Whether y_pred holds logits.")
    label_smoothing = _option("label_smoothing", "Label smoothing in [0, 1].")
    axis = _option("axis", "The class axis.")
    epsilon = _option("epsilon", "Clip for probabilities.")
    reduction = _option("reduction", "The reduction (normalized: 'mean' is "
                                     "'sum_over_batch_size').")
    n_threads = _option("n_threads", "OpenMP threads (None: OpenMP's default, -1: all).")

    @property
    def name(self) -> str:
        """The loss's name (Keras' ``name``)."""
        return self._name

    @property
    def dtype(self):
        """The dtype computed in (``np.dtype``), or None for y_pred's own dtype."""
        return self._dtype

    def _set_options(self, opts, reduction, name, dtype) -> None:
        self._options = opts
        self._reduction_arg = reduction
        self._name = check_name(name)
        self._dtype = check_dtype(dtype)

    def _cast(self, y_pred, inplace=False):
        """y_pred in the loss's ``dtype`` (the targets follow y_pred's dtype)."""
        dt = self._dtype
        if dt is None or (isinstance(y_pred, np.ndarray) and y_pred.dtype == dt):
            return y_pred
        if inplace:
            raise ValueError(
                f"inplace=True needs y_pred of the loss's dtype {dt.name}; cast it first or "
                "construct the loss with dtype=None"
            )
        arr = asarray(y_pred, "y_pred")
        if arr.dtype.kind != "f" and not is_bfloat16(arr.dtype):
            return y_pred  # keep the dtype errors (and the swapped-arguments hint)
        return arr.astype(dt)

    def __call__(self, y_true, y_pred, sample_weight=None):
        """The reduced loss: a Python float (an ndarray for ``reduction="none"``)."""
        y_pred = self._cast(y_pred)
        out = _fast_call(self._options, y_true, y_pred, sample_weight, False)
        if out is not None:
            return out
        return _dispatch.loss_and_grad(self._options, y_true, y_pred, sample_weight)

    def loss_and_grad(self, y_true, y_pred, sample_weight=None, *, grad_out=None, inplace=False,
                      return_lse=False):
        """The reduced loss and its gradient with respect to ``y_pred``, in one pass.

        Parameters
        ----------
        y_true, y_pred, sample_weight
            As for ``__call__``.
        grad_out : ndarray, optional
            Write the gradient into this array (shape and dtype of y_pred, C-contiguous with
            the class axis last, writeable, not overlapping any input) and return it.
        inplace : bool
            Overwrite ``y_pred`` with the gradient and return it: no N x C allocation.  Opt-in
            only; y_pred must be a writeable C-contiguous (class axis last) array.
        return_lse : bool
            Softmax losses from logits only: also return the per-sample log-sum-exp of the
            logits (shape of the per-sample loss, y_pred's dtype or float32 for float16 /
            bfloat16; 0 at ignored positions).

        Returns
        -------
        loss : float or ndarray
            As ``__call__``.
        grad : ndarray, shape and dtype of y_pred
            d(loss)/d(y_pred) (for float16 / bfloat16: computed in float32, rounded once).
            With ``reduction="none"``, ``grad[i] = d loss[i] / d y_pred[i]``.
        lse : ndarray
            Only with ``return_lse=True``.
        """
        y_pred = self._cast(y_pred, inplace)
        if not return_lse:
            out = _fast_call(self._options, y_true, y_pred, sample_weight, True, grad_out,
                             inplace)
            if out is not None:
                return out
        if return_lse:
            if self._options.family != "softmax":
                raise ValueError("return_lse applies to the softmax (categorical) losses only")
            if not self.from_logits:
                raise ValueError("return_lse needs from_logits=True")
        return _dispatch.loss_and_grad(self._options, y_true, y_pred, sample_weight,
                                       want_grad=True, grad_out=grad_out, inplace=inplace,
                                       want_lse=return_lse)

    def gradient(self, y_true, y_pred, sample_weight=None, *, grad_out=None, inplace=False):
        """d(loss)/d(y_pred) only (see :meth:`loss_and_grad`)."""
        return self.loss_and_grad(y_true, y_pred, sample_weight, grad_out=grad_out,
                                  inplace=inplace)[1]

    def gradient_hessian(self, y_true, y_pred, sample_weight=None):
        """The gradient and the diagonal of the Hessian with respect to logits.

        For gradient boosting (LightGBM/XGBoost custom objectives).  Needs
        ``from_logits=True``.  Softmax: ``p - t`` and ``p (1 - p)`` (times the sum of the
        targets, plus the z-loss terms); sigmoid: ``sigmoid(x) - z`` and
        ``sigmoid(x) (1 - sigmoid(x))`` (with pos_weight, the exact derivatives).  Both scaled
        by the reduction like the gradient of :meth:`loss_and_grad`.

        Returns
        -------
        grad, hess : ndarrays of y_pred's shape and dtype
        """
        if not self.from_logits:
            raise ValueError("gradient_hessian needs from_logits=True")
        run = _dispatch.softmax if self._options.family == "softmax" else _dispatch.sigmoid
        out = run(self._options, y_true, self._cast(y_pred), sample_weight, want_grad=True,
                  want_hess=True)
        return out.grad, out.hess

    def get_config(self) -> dict:
        cfg = {key: getattr(self, key) for key in self._config_keys}
        cfg["reduction"] = self._reduction_arg
        cfg["n_threads"] = self.n_threads
        cfg["name"] = self._name
        cfg["dtype"] = None if self._dtype is None else self._dtype.name
        for key in ("class_weight", "pos_weight"):
            if isinstance(cfg.get(key), np.ndarray):
                cfg[key] = cfg[key].tolist()
        return cfg

    @classmethod
    def from_config(cls, config: dict):
        return cls(**config)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    __hash__ = None


class CategoricalCrossentropy(_Loss):
    """Categorical cross-entropy with one-hot or soft targets
    (``keras.losses.CategoricalCrossentropy``).

    Parameters
    ----------
    from_logits, label_smoothing, axis, class_weight, epsilon, z_loss
        As in :func:`categorical_crossentropy`.
    reduction : {"sum_over_batch_size", "mean", "sum", "mean_with_sample_weight", "none"}
        ``sum_over_batch_size`` (alias ``mean``): sum of weighted losses / number of samples;
        ``mean_with_sample_weight``: / sum of sample weights (times each sample's class
        weight ``sum_k w_k t_k`` when ``class_weight`` is given, which with one-hot targets is
        PyTorch's weighted mean); ``sum``; ``none``: per-sample weighted losses.  A zero
        denominator gives 0.0.
    n_threads : int or None
    name : str, keyword-only
        The loss's name (Keras' ``name``; default ``"categorical_crossentropy"``).
    dtype : {None, "float32", "float64"}, keyword-only
        Keras' ``dtype``: None computes in y_pred's dtype; a float dtype casts y_pred to it
        first (targets follow y_pred's dtype), so results come in that dtype.

    Examples
    --------
    >>> import numpy as np, fastxent as fx
    >>> loss = fx.CategoricalCrossentropy(from_logits=True)
    >>> y = np.eye(3)[[0, 2]]
    >>> x = np.array([[2.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    >>> value, grad = loss.loss_and_grad(y, x)
    >>> round(value, 6), grad.shape
    (0.753109, (2, 3))
    """

    _config_keys = ("from_logits", "label_smoothing", "axis", "class_weight", "epsilon", "z_loss")

    def __init__(self, from_logits=False, label_smoothing=0.0, axis=-1,
                 reduction="sum_over_batch_size", class_weight=None, n_threads=None, *,
                 epsilon=1e-7, z_loss=0.0, name="categorical_crossentropy", dtype=None):
        self._set_options(softmax_options(
            sparse=False, from_logits=from_logits, label_smoothing=label_smoothing, axis=axis,
            class_weight=class_weight, epsilon=epsilon, z_loss=z_loss, reduction=reduction,
            n_threads=n_threads,
        ), reduction, name, dtype)

    class_weight = _option("class_weight", "Per-class weights (None, a float or an array).")
    z_loss = _option("z_loss", "z-loss coefficient.")


class SparseCategoricalCrossentropy(_Loss):
    """Cross-entropy with integer labels (``keras.losses.SparseCategoricalCrossentropy``).

    Parameters
    ----------
    from_logits, ignore_class, label_smoothing, axis, class_weight, epsilon, z_loss
        As in :func:`sparse_categorical_crossentropy`.
    reduction : str
        As in :class:`CategoricalCrossentropy`; ``sum_over_batch_size`` divides by the number
        of non-ignored samples, and ``mean_with_sample_weight`` with ``class_weight`` equals
        ``torch.nn.functional.cross_entropy(weight=..., ignore_index=..., reduction="mean")``.
    n_threads : int or None
    name : str, keyword-only
        Default ``"sparse_categorical_crossentropy"``.
    dtype : {None, "float32", "float64"}, keyword-only
        As in :class:`CategoricalCrossentropy` (labels are not cast).

    Examples
    --------
    >>> import numpy as np, fastxent as fx
    >>> loss = fx.SparseCategoricalCrossentropy(from_logits=True, ignore_class=-100)
    >>> logits = np.array([[2.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    >>> round(loss([0, -100], logits), 6)
    0.407606
    """

    _config_keys = ("from_logits", "ignore_class", "label_smoothing", "axis", "class_weight",
                    "epsilon", "z_loss")

    def __init__(self, from_logits=False, ignore_class=None, label_smoothing=0.0, axis=-1,
                 reduction="sum_over_batch_size", class_weight=None, n_threads=None, *,
                 epsilon=1e-7, z_loss=0.0, name="sparse_categorical_crossentropy",
                 dtype=None):
        self._set_options(softmax_options(
            sparse=True, from_logits=from_logits, label_smoothing=label_smoothing, axis=axis,
            class_weight=class_weight, ignore_class=ignore_class, epsilon=epsilon,
            z_loss=z_loss, reduction=reduction, n_threads=n_threads,
        ), reduction, name, dtype)

    class_weight = _option("class_weight", "Per-class weights (None, a float or an array).")
    ignore_class = _option("ignore_class", "The ignored label, or None.")
    z_loss = _option("z_loss", "z-loss coefficient.")


class BinaryCrossentropy(_Loss):
    """Binary cross-entropy (``keras.losses.BinaryCrossentropy``), averaged over ``axis``.

    Parameters
    ----------
    from_logits, label_smoothing, axis, pos_weight, epsilon
        As in :func:`binary_crossentropy`.
    reduction : str
        As in :class:`CategoricalCrossentropy`.
    n_threads : int or None
    name : str, keyword-only
        Default ``"binary_crossentropy"``.
    dtype : {None, "float32", "float64"}, keyword-only
        As in :class:`CategoricalCrossentropy`.

    Examples
    --------
    >>> import numpy as np, fastxent as fx
    >>> bce = fx.BinaryCrossentropy(from_logits=True, pos_weight=2.0)
    >>> round(bce(np.array([[1.0], [0.0]]), np.array([[0.5], [-0.5]])), 6)
    0.711115
    """

    _config_keys = ("from_logits", "label_smoothing", "axis", "pos_weight", "epsilon")

    def __init__(self, from_logits=False, label_smoothing=0.0, axis=-1,
                 reduction="sum_over_batch_size", pos_weight=None, n_threads=None, *,
                 epsilon=1e-7, name="binary_crossentropy", dtype=None):
        self._set_options(sigmoid_options(
            from_logits=from_logits, label_smoothing=label_smoothing, axis=axis,
            pos_weight=pos_weight, epsilon=epsilon, reduction=reduction, n_threads=n_threads,
        ), reduction, name, dtype)

    pos_weight = _option("pos_weight", "Weight of the positive term (None, a float or an "
                                       "array).")
