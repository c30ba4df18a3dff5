"""Custom cross-entropy objectives for gradient boosting (LightGBM, XGBoost).

Gradient boosting needs, for every sample and every raw score (logit), the gradient and
the diagonal of the Hessian of the loss.  fastxent computes both in one pass
(``gradient_hessian`` of the loss classes):

* softmax (multiclass): ``grad = p - t`` and ``hess = p * (1 - p)``, ``p = softmax(raw)``;
* sigmoid (binary): ``grad = sigmoid(raw) - z`` and ``hess = sigmoid(raw) * (1 - sigmoid(raw))``,

times the sample weight, with ``t``/``z`` the (optionally label-smoothed) targets; or, with
``focal_gamma``, the focal loss's exact gradient and Hessian diagonal
(:func:`focal_gradient_hessian`).  These
are per-sample derivatives (no division by the number of samples), which is what the
boosting libraries expect.

Ready objects:

* LightGBM, scikit-learn API ``LGBMClassifier(objective=...)`` and ``lightgbm.train``
  (``params={"objective": ...}``): :data:`lightgbm_multiclass`, :data:`lightgbm_binary`,
  or :class:`LightGBMObjective` for options.  Signature ``(y_true, y_pred, weight)``.
* XGBoost ``xgboost.train(params, dtrain, obj=...)``: :data:`xgboost_multiclass`,
  :data:`xgboost_binary` (:class:`XGBoostObjective`).  Signature ``(predt, dtrain)``.
* XGBoost scikit-learn API ``XGBClassifier(objective=...)``:
  :data:`xgboost_sklearn_multiclass`, :data:`xgboost_sklearn_binary`
  (:class:`XGBoostSklearnObjective`).  Signature ``(y_true, y_pred, *, sample_weight=None)``.

Raw scores, not probabilities
-----------------------------
With a custom objective the libraries do not know the link function.
``LGBMClassifier.predict``/``predict_proba`` then return raw scores (LightGBM warns);
``lightgbm.Booster.predict`` and ``xgboost.Booster.predict(..., output_margin=True)`` too.
Apply :func:`softmax` (multiclass) or :func:`sigmoid` (binary) to get probabilities, or use
:func:`predict_proba`, which does it for the models of both libraries.
``XGBClassifier`` with a callable objective keeps its own ``multi:softprob`` /
``binary:logistic`` transform, so its ``predict_proba`` is already a probability.

Hessian scale and the built-in objectives
-----------------------------------------
The gradients are the built-in ones.  The built-in multiclass objectives scale the
Hessian: LightGBM's ``multiclass`` by ``n_classes / (n_classes - 1)``, XGBoost's
``multi:softprob`` by 2 (and floor it at 1e-16).  The scale acts like a learning-rate
factor on every leaf value, so the wrapper classes default to ``hessian_scale="auto"``,
the convention of their library, and hyperparameters tuned for the built-in objective carry
over.  ``hessian_scale=1.0`` gives the exact diagonal ``p (1 - p)``;
:func:`softmax_gradient_hessian` defaults to it.  Binary objectives are exact in all cases
(as the built-in ``binary`` / ``binary:logistic``).  The built-in objectives also start from
the class log-priors (``boost_from_average`` / ``base_score``); a custom objective starts
from a raw score of zero, so the first trees differ slightly.
"""

from __future__ import annotations

import numpy as np

from fastxent._validation import is_bfloat16
from fastxent.focal import BinaryFocalCrossentropy, SparseCategoricalFocalCrossentropy
from fastxent.losses import BinaryCrossentropy, SparseCategoricalCrossentropy

__all__ = [
    "softmax_gradient_hessian",
    "sigmoid_gradient_hessian",
    "focal_gradient_hessian",
    "LightGBMObjective",
    "XGBoostObjective",
    "XGBoostSklearnObjective",
    "lightgbm_multiclass",
    "lightgbm_binary",
    "xgboost_multiclass",
    "xgboost_binary",
    "xgboost_sklearn_multiclass",
    "xgboost_sklearn_binary",
    "softmax",
    "sigmoid",
    "predict_proba",
]

_KINDS = ("multiclass", "binary")


def _check_kind(kind):
    if kind not in _KINDS:
        raise ValueError(f"kind must be 'multiclass' or 'binary', got {kind!r}")
    return kind


def _check_hessian_scale(hessian_scale):
    if isinstance(hessian_scale, bool) or not isinstance(hessian_scale, int | float | np.number):
        raise TypeError(f"hessian_scale must be a positive number, got {hessian_scale!r}")
    if not (np.isfinite(hessian_scale) and hessian_scale > 0):
        raise ValueError(f"hessian_scale must be a positive finite number, got {hessian_scale!r}")
    return float(hessian_scale)


def _sample_weight(weight):
    """None or a float64 vector; empty (XGBoost's "no weights") becomes None."""
    if weight is None:
        return None
    w = np.asarray(weight, dtype=np.float64).reshape(-1)
    return None if w.size == 0 else w


def _as_float_scores(raw, name="y_pred"):
    arr = np.asarray(raw)
    if arr.dtype not in (np.float32, np.float64):
        # other numbers (integers, float16, bfloat16) are computed in float64
        if not (np.issubdtype(arr.dtype, np.number) or is_bfloat16(arr.dtype)):
            raise TypeError(f"{name} must hold raw scores (floats), got dtype {arr.dtype}")
        arr = arr.astype(np.float64)
    return arr


def softmax_gradient_hessian(
    labels,
    raw_scores,
    sample_weight=None,
    *,
    label_smoothing: float = 0.0,
    class_weight=None,
    hessian_scale: float = 1.0,
    n_threads: int | None = None,
):
    """Per-sample gradient and diagonal Hessian of the softmax cross-entropy.

    Parameters
    ----------
    labels : array_like of shape (n_samples,)
        Class indices in ``[0, n_classes)``; integers, or floats holding integers (as
        LightGBM and XGBoost store labels).
    raw_scores : ndarray of shape (n_samples, n_classes), float32 or float64
        (other real dtypes, float16 and bfloat16 included, are converted to float64)
        Raw scores (logits).  Also accepted: LightGBM < 4's flat class-major layout of
        size ``n_samples * n_classes`` (``raw[k * n_samples + i]``); the result then has
        the same flat layout.
    sample_weight : array_like of shape (n_samples,), optional
        Multiplies each sample's gradient and Hessian (None or empty: unweighted).
    label_smoothing : float in [0, 1]
        Targets ``onehot * (1 - label_smoothing) + label_smoothing / n_classes``.
    class_weight : array_like of shape (n_classes,), optional
        Per-class weights as in PyTorch (``-sum_k w_k t_k log p_k``).
    hessian_scale : float > 0
        Multiplies the Hessian: 1 gives the exact diagonal ``p (1 - p)``;
        ``n_classes / (n_classes - 1)`` reproduces LightGBM's ``multiclass`` and 2
        XGBoost's ``multi:softprob``.
    n_threads : int or None
        OpenMP threads of the kernel.

    Returns
    -------
    grad, hess : ndarrays of the shape and dtype of ``raw_scores``

    Examples
    --------
    >>> import numpy as np
    >>> from fastxent.objectives import softmax_gradient_hessian
    >>> g, h = softmax_gradient_hessian([0, 2], np.zeros((2, 3)))
    >>> g.round(4)
    array([[-0.6667,  0.3333,  0.3333],
           [ 0.3333,  0.3333, -0.6667]])
    >>> h.round(4)
    array([[0.2222, 0.2222, 0.2222],
           [0.2222, 0.2222, 0.2222]])
    """
    loss = SparseCategoricalCrossentropy(
        from_logits=True, label_smoothing=label_smoothing, class_weight=class_weight,
        reduction="sum", n_threads=n_threads,
    )
    return _multiclass(loss, labels, raw_scores, sample_weight, hessian_scale)


def _multiclass(loss, labels, raw_scores, sample_weight, hessian_scale):
    """``loss.gradient_hessian`` of (n_samples, n_classes) or LightGBM's flat class-major
    raw scores, the Hessian times ``hessian_scale``."""
    scale = _check_hessian_scale(hessian_scale)
    labels = np.asarray(labels).reshape(-1)
    raw = _as_float_scores(raw_scores, "raw_scores")
    flat = raw.ndim == 1
    if flat:
        n = labels.shape[0]
        if n == 0 or raw.size % n:
            raise ValueError(
                f"raw_scores of shape {raw.shape} is neither (n_samples, n_classes) nor a flat "
                f"class-major array of n_samples * n_classes values (n_samples={n})"
            )
        raw = raw.reshape(-1, n).T
    grad, hess = loss.gradient_hessian(labels, raw, _sample_weight(sample_weight))
    if scale != 1.0:
        hess *= scale
    if flat:
        return grad.T.reshape(-1), hess.T.reshape(-1)
    return grad, hess


def sigmoid_gradient_hessian(
    labels,
    raw_scores,
    sample_weight=None,
    *,
    label_smoothing: float = 0.0,
    pos_weight=None,
    n_threads: int | None = None,
):
    """Per-sample gradient and second derivative of the binary (sigmoid) cross-entropy.

    Parameters
    ----------
    labels : array_like of shape (n_samples,)
        Targets in [0, 1].
    raw_scores : array_like of shape (n_samples,), float32 or float64
        (other real dtypes are converted to float64)
        Raw scores (logits); a trailing axis of size 1 is accepted.
    sample_weight : array_like of shape (n_samples,), optional
    label_smoothing : float in [0, 1]
        Targets ``z * (1 - label_smoothing) + label_smoothing / 2``.
    pos_weight : float, optional
        Weight of the positive term (PyTorch's ``pos_weight``).
    n_threads : int or None

    Returns
    -------
    grad, hess : ndarrays of the shape and dtype of ``raw_scores``

    Examples
    --------
    >>> import numpy as np
    >>> from fastxent.objectives import sigmoid_gradient_hessian
    >>> g, h = sigmoid_gradient_hessian([1.0, 0.0], np.zeros(2))
    >>> g, h
    (array([-0.5,  0.5]), array([0.25, 0.25]))
    """
    loss = BinaryCrossentropy(
        from_logits=True, label_smoothing=label_smoothing, pos_weight=pos_weight,
        reduction="sum", n_threads=n_threads,
    )
    return _binary(loss, labels, raw_scores, sample_weight)


def _binary(loss, labels, raw_scores, sample_weight):
    """``loss.gradient_hessian`` of one raw score per sample."""
    raw = _as_float_scores(raw_scores, "raw_scores")
    shape = raw.shape
    z = np.asarray(labels).reshape(-1, 1)
    col = raw.reshape(-1, 1)
    if z.shape[0] != col.shape[0]:
        raise ValueError(
            f"labels has {z.shape[0]} entries but raw_scores has shape {shape}; a binary "
            "objective needs one raw score per sample"
        )
    grad, hess = loss.gradient_hessian(z, col, _sample_weight(sample_weight))
    return grad.reshape(shape), hess.reshape(shape)


def focal_gradient_hessian(
    labels,
    raw_scores,
    sample_weight=None,
    *,
    kind: str = "multiclass",
    gamma: float = 2.0,
    alpha=None,
    class_weight=None,
    hessian_scale: float = 1.0,
    n_threads: int | None = None,
):
    """Per-sample gradient and exact diagonal Hessian of a focal loss.

    Parameters
    ----------
    labels : array_like of shape (n_samples,)
        Class indices (multiclass) or targets in [0, 1] (binary).
    raw_scores : ndarray
        As in :func:`softmax_gradient_hessian` (multiclass) or
        :func:`sigmoid_gradient_hessian` (binary).
    sample_weight : array_like of shape (n_samples,), optional
    kind : {"multiclass", "binary"}
        Multiclass: ``-alpha w_y (1 - p_y)**gamma log p_y`` with ``p = softmax(raw)``
        (:class:`~fastxent.SparseCategoricalFocalCrossentropy`); binary: Keras' binary focal
        loss of ``sigmoid(raw)`` (:class:`~fastxent.BinaryFocalCrossentropy`).
    gamma : float >= 0
        0 gives the cross-entropy.
    alpha : float, optional
        Multiclass: the loss's factor (default 1).  Binary: the weight of the positive class
        (``1 - alpha`` for the negative; None: no class balancing).
    class_weight : array_like of shape (n_classes,), optional
        Multiclass only.
    hessian_scale : float > 0
        Multiplies the multiclass Hessian, as in :func:`softmax_gradient_hessian`.
    n_threads : int or None

    Returns
    -------
    grad, hess : ndarrays of the shape and dtype of ``raw_scores``.  The Hessian is exact: it
    is negative where the focal loss is concave (badly misclassified samples).

    Examples
    --------
    >>> import numpy as np
    >>> from fastxent.objectives import focal_gradient_hessian
    >>> g, h = focal_gradient_hessian([1.0, 0.0], np.zeros(2), kind="binary")
    >>> g.round(4), h.round(4)
    (array([-0.2983,  0.2983]), array([0.3991, 0.3991]))
    """
    _check_kind(kind)
    if kind == "binary":
        if class_weight is not None:
            raise ValueError("class_weight applies to kind='multiclass'")
        loss = BinaryFocalCrossentropy(
            apply_class_balancing=alpha is not None, alpha=0.25 if alpha is None else alpha,
            gamma=gamma, from_logits=True, reduction="sum", n_threads=n_threads)
        return _binary(loss, labels, raw_scores, sample_weight)
    loss = SparseCategoricalFocalCrossentropy(
        alpha=1.0 if alpha is None else alpha, gamma=gamma, from_logits=True,
        class_weight=class_weight, reduction="sum", n_threads=n_threads)
    return _multiclass(loss, labels, raw_scores, sample_weight, hessian_scale)


class _Objective:
    """Options shared by the objective wrappers."""

    def __init__(self, kind="multiclass", *, label_smoothing=0.0, class_weight=None,
                 pos_weight=None, hessian_scale="auto", n_threads=None, focal_gamma=None,
                 focal_alpha=None, hessian_floor=1e-6):
        self.kind = _check_kind(kind)
        self.focal_gamma = focal_gamma
        self.focal_alpha = focal_alpha
        self.hessian_floor = hessian_floor
        if focal_gamma is None:
            if focal_alpha is not None:
                raise ValueError("focal_alpha needs focal_gamma (the focal loss)")
        else:
            if label_smoothing:
                raise ValueError("label_smoothing is not available with focal_gamma")
            if pos_weight is not None:
                raise ValueError("pos_weight is not available with focal_gamma; use "
                                 "focal_alpha to weigh the positive class")
            focal_gradient_hessian([0], np.zeros((1, 2)) if kind == "multiclass"
                                   else np.zeros(1), kind=kind, gamma=focal_gamma,
                                   alpha=focal_alpha, n_threads=n_threads)
            if hessian_floor is not None and not (
                    isinstance(hessian_floor, int | float) and not isinstance(hessian_floor, bool)
                    and np.isfinite(hessian_floor) and hessian_floor >= 0):
                raise ValueError(f"hessian_floor must be None or a finite number >= 0, got "
                                 f"{hessian_floor!r}")
        if kind == "binary" and class_weight is not None:
            raise ValueError("class_weight applies to kind='multiclass'; use pos_weight")
        if kind == "multiclass" and pos_weight is not None:
            raise ValueError("pos_weight applies to kind='binary'; use class_weight")
        if isinstance(hessian_scale, str):
            if hessian_scale != "auto":
                raise ValueError(
                    f"hessian_scale must be 'auto' or a positive number, got {hessian_scale!r}"
                )
        else:
            _check_hessian_scale(hessian_scale)
            if kind == "binary" and hessian_scale != 1.0:
                raise ValueError("hessian_scale applies to kind='multiclass' only")
        self.label_smoothing = label_smoothing
        self.class_weight = class_weight
        self.pos_weight = pos_weight
        self.hessian_scale = hessian_scale
        self.n_threads = n_threads
        # Validate the options now rather than inside the boosting loop (the class count
        # is checked against class_weight at the first call).
        if kind == "multiclass":
            SparseCategoricalCrossentropy(from_logits=True, label_smoothing=label_smoothing,
                                          n_threads=n_threads)
            if class_weight is not None:
                cw = np.asarray(class_weight, dtype=np.float64)
                if cw.ndim != 1 or not np.all(np.isfinite(cw)) or np.any(cw < 0):
                    raise ValueError(
                        "class_weight must be a 1-D array of finite non-negative weights, "
                        f"got {class_weight!r}"
                    )
        else:
            BinaryCrossentropy(from_logits=True, label_smoothing=label_smoothing,
                               pos_weight=pos_weight, n_threads=n_threads)

    def _auto_hessian_scale(self, n_classes):  # pragma: no cover - overridden
        return 1.0

    def _grad_hess(self, labels, raw, weight):
        scale = self.hessian_scale
        if self.kind == "multiclass" and scale == "auto":
            n = np.asarray(labels).size
            n_classes = raw.shape[-1] if raw.ndim == 2 else (raw.size // n if n else 1)
            scale = self._auto_hessian_scale(n_classes)
        if self.focal_gamma is not None:
            grad, hess = focal_gradient_hessian(
                labels, raw, weight, kind=self.kind, gamma=self.focal_gamma,
                alpha=self.focal_alpha, class_weight=self.class_weight,
                hessian_scale=scale if self.kind == "multiclass" else 1.0,
                n_threads=self.n_threads)
            if self.hessian_floor is not None:
                np.maximum(hess, self.hessian_floor, out=hess)
            return grad, hess
        if self.kind == "multiclass":
            return softmax_gradient_hessian(
                labels, raw, weight, label_smoothing=self.label_smoothing,
                class_weight=self.class_weight,
                hessian_scale=scale, n_threads=self.n_threads,
            )
        return sigmoid_gradient_hessian(
            labels, raw, weight, label_smoothing=self.label_smoothing,
            pos_weight=self.pos_weight, n_threads=self.n_threads,
        )

    def __repr__(self):
        opts = [f"{self.kind!r}"]
        for key, default in (("label_smoothing", 0.0), ("class_weight", None),
                             ("pos_weight", None), ("hessian_scale", "auto"), ("n_threads", None),
                             ("focal_gamma", None), ("focal_alpha", None),
                             ("hessian_floor", 1e-6)):
            value = getattr(self, key)
            if value is None or isinstance(value, str | int | float):
                if value == default:
                    continue
            opts.append(f"{key}={value!r}")
        return f"{type(self).__name__}({', '.join(opts)})"


class LightGBMObjective(_Objective):
    """Cross-entropy objective for LightGBM: ``LGBMClassifier(objective=obj)``.

    Called by ``LGBMClassifier`` as ``obj(y_true, y_pred, weight)`` with raw scores
    ``y_pred`` of shape ``(n_samples, n_classes)`` (multiclass) or ``(n_samples,)``
    (binary), and returns ``(grad, hess)`` of the same shape.  ``weight`` is the sample
    weight of the training set (LightGBM applies ``class_weight`` of ``LGBMClassifier``
    through it), or None.  ``lightgbm.train(params={"objective": obj, "num_class": K})``
    calls it as ``obj(preds, train_set)``, which works too.

    Predictions of a model trained with it are raw scores: see :func:`predict_proba`.

    Parameters
    ----------
    kind : {"multiclass", "binary"}
    label_smoothing : float in [0, 1]
    class_weight : array_like of shape (n_classes,), optional
        PyTorch-style class weights (multiclass only).
    pos_weight : float, optional
        Weight of the positive term (binary only).
    hessian_scale : "auto" or float > 0
        Multiplies the Hessian (multiclass only).  "auto": ``n_classes / (n_classes - 1)``,
        LightGBM's built-in ``multiclass`` convention; 1.0: the exact diagonal.
    n_threads : int or None
    focal_gamma : float >= 0, optional
        Boost the focal loss with this ``gamma`` (see :func:`focal_gradient_hessian`)
        instead of the cross-entropy.
    focal_alpha : float, optional
        The focal loss's ``alpha`` (binary: weight of the positive class).
    hessian_floor : float >= 0 or None
        Focal objectives only: the Hessian is floored at this value (the focal loss's exact
        Hessian is negative for badly misclassified samples); None keeps it exact.

    Examples
    --------
    >>> import numpy as np
    >>> from fastxent.objectives import LightGBMObjective
    >>> obj = LightGBMObjective("multiclass", label_smoothing=0.1)
    >>> grad, hess = obj(np.array([0.0, 2.0]), np.zeros((2, 3)), None)
    >>> grad.shape, hess.shape
    ((2, 3), (2, 3))
    """

    def _auto_hessian_scale(self, n_classes):
        return n_classes / (n_classes - 1) if n_classes > 1 else 1.0

    def __call__(self, y_true, y_pred, weight=None):
        if hasattr(y_pred, "get_label"):  # lightgbm.train calls obj(preds, train_set)
            preds, dataset = y_true, y_pred
            return self._grad_hess(dataset.get_label(), _as_float_scores(preds),
                                   dataset.get_weight())
        return self._grad_hess(y_true, _as_float_scores(y_pred), weight)


class XGBoostObjective(_Objective):
    """Cross-entropy objective for ``xgboost.train(params, dtrain, obj=obj)``.

    Called as ``obj(predt, dtrain)``: labels and weights are read from the ``DMatrix``;
    ``predt`` holds raw scores of shape ``(n_samples, n_classes)`` (multiclass, set
    ``params["num_class"]``) or ``(n_samples,)``.  Use
    ``booster.predict(dtest, output_margin=True)`` and :func:`softmax` / :func:`sigmoid`
    for probabilities.

    Parameters
    ----------
    kind, label_smoothing, class_weight, pos_weight, hessian_scale, n_threads
        As in :class:`LightGBMObjective`, except that ``hessian_scale="auto"`` is 2,
        XGBoost's ``multi:softprob`` convention.

    Examples
    --------
    >>> import numpy as np
    >>> from fastxent.objectives import XGBoostObjective
    >>> class FakeDMatrix:  # stands in for xgboost.DMatrix
    ...     def get_label(self): return np.array([1.0, 0.0], dtype=np.float32)
    ...     def get_weight(self): return np.array([], dtype=np.float32)
    >>> grad, hess = XGBoostObjective("binary")(np.zeros(2, dtype=np.float32), FakeDMatrix())
    >>> grad
    array([-0.5,  0.5], dtype=float32)
    """

    def _auto_hessian_scale(self, n_classes):
        return 2.0

    def __call__(self, predt, dtrain):
        return self._grad_hess(dtrain.get_label(), _as_float_scores(predt, "predt"),
                               dtrain.get_weight())


class XGBoostSklearnObjective(_Objective):
    """Cross-entropy objective for XGBoost's scikit-learn API: ``XGBClassifier(objective=obj)``.

    Called as ``obj(y_true, y_pred, sample_weight=None)``; XGBClassifier applies its own
    softmax/sigmoid in ``predict_proba``.

    Parameters
    ----------
    kind, label_smoothing, class_weight, pos_weight, hessian_scale, n_threads
        As in :class:`XGBoostObjective`.

    Examples
    --------
    >>> import numpy as np
    >>> from fastxent.objectives import XGBoostSklearnObjective
    >>> grad, hess = XGBoostSklearnObjective()(np.array([1, 0]), np.zeros((2, 2)))
    >>> grad
    array([[ 0.5, -0.5],
           [-0.5,  0.5]])
    """

    def _auto_hessian_scale(self, n_classes):
        return 2.0

    def __call__(self, y_true, y_pred, *, sample_weight=None):
        return self._grad_hess(y_true, _as_float_scores(y_pred), sample_weight)


lightgbm_multiclass = LightGBMObjective("multiclass")
lightgbm_binary = LightGBMObjective("binary")
xgboost_multiclass = XGBoostObjective("multiclass")
xgboost_binary = XGBoostObjective("binary")
xgboost_sklearn_multiclass = XGBoostSklearnObjective("multiclass")
xgboost_sklearn_binary = XGBoostSklearnObjective("binary")


def softmax(raw_scores, axis: int = -1):
    """Probabilities from multiclass raw scores: ``exp(raw - logsumexp(raw))``.

    Parameters
    ----------
    raw_scores : array_like, float
    axis : int
        The class axis.

    Returns
    -------
    ndarray of the shape of ``raw_scores``, float64 (float32 kept)

    Examples
    --------
    >>> from fastxent.objectives import softmax
    >>> softmax([[0.0, 0.0], [0.0, 1e3]]).round(3)
    array([[0.5, 0.5],
           [0. , 1. ]])
    """
    z = _as_float_scores(raw_scores, "raw_scores")
    z = z - np.max(z, axis=axis, keepdims=True)
    e = np.exp(z)
    return e / np.sum(e, axis=axis, keepdims=True)


def sigmoid(raw_scores):
    """Probabilities from binary raw scores: ``1 / (1 + exp(-raw))`` (no overflow).

    Examples
    --------
    >>> from fastxent.objectives import sigmoid
    >>> sigmoid([-1e3, 0.0, 1e3])
    array([0. , 0.5, 1. ])
    """
    x = _as_float_scores(raw_scores, "raw_scores")
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(x.dtype, copy=False)


def predict_proba(model, X):
    """Class probabilities of a model trained with one of these objectives.

    Works for ``lightgbm.LGBMClassifier`` / ``lightgbm.Booster`` (raw scores via
    ``raw_score=True``), ``xgboost.Booster`` (``output_margin=True``, ``X`` a ``DMatrix``)
    and ``xgboost.XGBClassifier`` (its ``predict_proba``).

    Returns
    -------
    ndarray of shape (n_samples, n_classes): softmax of the raw scores, or
    ``[1 - sigmoid, sigmoid]`` for a single raw score per sample.
    """
    module = type(model).__module__.split(".")[0]
    if module == "lightgbm":
        raw = model.predict(X, raw_score=True)
    elif module == "xgboost":
        if hasattr(model, "predict_proba"):
            return model.predict_proba(X)
        raw = model.predict(X, output_margin=True)
    else:
        raise TypeError(
            f"model must be a LightGBM or XGBoost model, got {type(model).__name__}"
        )
    raw = np.asarray(raw)
    if raw.ndim == 1 or raw.shape[1] == 1:
        p1 = sigmoid(raw.reshape(-1))
        return np.column_stack([1.0 - p1, p1])
    return softmax(raw, axis=1)
