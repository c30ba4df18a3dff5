"""Focal losses, the KL divergence and the generalized cross-entropy, with Keras 3 semantics.

Functions return per-sample losses like ``keras.losses.*``; classes add the reductions, sample
weights, ``loss_and_grad`` and (from logits) ``gradient_hessian``, as the cross-entropy
classes of :mod:`fastxent.losses` do.

From probabilities (``from_logits=False``) the formulas are Keras' own, clip included (bounds
rounded to y_pred's dtype).  From logits the log-probabilities are exact (log-sigmoid,
log-softmax): Keras' focal losses take ``sigmoid`` / ``softmax`` first and then clip the
probabilities to ``[eps, 1 - eps]``, so the two differ where a probability is below ``eps``
(a logit margin beyond about 16), where Keras' loss stops growing and its gradient vanishes.
"""

from __future__ import annotations

import numpy as np

from fastxent import _family
from fastxent.losses import _Loss, _option

__all__ = [
    "binary_focal_crossentropy",
    "categorical_focal_crossentropy",
    "sparse_categorical_focal_crossentropy",
    "kl_divergence",
    "categorical_generalized_cross_entropy",
    "BinaryFocalCrossentropy",
    "CategoricalFocalCrossentropy",
    "SparseCategoricalFocalCrossentropy",
    "KLDivergence",
    "CategoricalGeneralizedCrossEntropy",
]


def binary_focal_crossentropy(y_true, y_pred, apply_class_balancing=False, alpha=0.25,
                              gamma=2.0, from_logits=False, label_smoothing=0.0, axis=-1, *,
                              epsilon=1e-7, n_threads=None):
    """Per-sample binary focal cross-entropy, the mean over ``axis``
    (``keras.losses.binary_focal_crossentropy``).

    Elementwise ``w (1 - p_t)**gamma * bce`` with ``p_t = z p + (1 - z)(1 - p)``, ``bce`` the
    binary cross-entropy and ``w = z alpha + (1 - z)(1 - alpha)`` with
    ``apply_class_balancing`` (else 1).

    Parameters
    ----------
    y_true : array_like, shape of y_pred
        Targets in [0, 1].
    y_pred : ndarray of float32 or float64
        Logits (``from_logits=True``) or probabilities.
    apply_class_balancing : bool
        Weigh positives by ``alpha`` and negatives by ``1 - alpha`` (torchvision's
        ``sigmoid_focal_loss`` always does).
    alpha : float in [0, 1]
    gamma : float >= 0
        Focusing parameter; 0 gives the binary cross-entropy.
    from_logits : bool
        False: ``p = y_pred``, ``bce`` from ``p`` clipped to ``[epsilon, 1 - epsilon]`` and
        ``p_t`` from the unclipped ``p``, as Keras.  True: ``p = sigmoid(y_pred)`` and the
        exact ``bce`` (Keras clips here too, see the module notes).
    label_smoothing : float in [0, 1]
        Targets become ``z (1 - label_smoothing) + label_smoothing / 2``.
    axis : int
        The axis averaged over.
    epsilon : float in (0, 0.5)
    n_threads : int or None

    Returns
    -------
    ndarray of y_pred's dtype, shape of y_pred without ``axis``.

    Examples
    --------
    >>> import numpy as np, fastxent as fx
    >>> y_true = np.array([[0, 1], [0, 0]])
    >>> y_pred = np.array([[0.6, 0.4], [0.4, 0.6]])
    >>> fx.binary_focal_crossentropy(y_true, y_pred, gamma=2).round(4)
    array([0.3299, 0.2058])
    """
    spec = _family.focal_spec(
        "binary_focal", alpha=alpha, gamma=gamma, apply_class_balancing=apply_class_balancing,
        from_logits=from_logits, label_smoothing=label_smoothing, axis=axis, epsilon=epsilon,
        n_threads=n_threads)
    return _family.compute(spec, y_true, y_pred).loss


def categorical_focal_crossentropy(y_true, y_pred, alpha=0.25, gamma=2.0, from_logits=False,
                                   label_smoothing=0.0, axis=-1, *, epsilon=1e-7,
                                   n_threads=None):
    """Per-sample categorical focal cross-entropy
    (``keras.losses.categorical_focal_crossentropy``).

    ``loss = -sum_k alpha_k (1 - p_k)**gamma t_k log p_k``.

    Parameters
    ----------
    y_true : array_like, shape of y_pred
        One-hot or soft targets.
    y_pred : ndarray of float32 or float64
        Logits or probabilities, class axis ``axis``.
    alpha : float >= 0 or array_like of one weight per class
    gamma : float >= 0
    from_logits : bool
        False: each row divided by its sum and clipped to ``[epsilon, 1 - epsilon]`` (in
        y_pred's dtype), as Keras.  True: ``log p`` is the exact log-softmax.
    label_smoothing : float in [0, 1]
        Targets become ``t (1 - label_smoothing) + label_smoothing / C``.
    axis : int
    epsilon : float in (0, 0.5)
    n_threads : int or None

    Returns
    -------
    ndarray of y_pred's dtype, shape of y_pred without ``axis``.

    Examples
    --------
    >>> import numpy as np, fastxent as fx
    >>> y_true = [[0, 1, 0], [0, 0, 1]]
    >>> y_pred = np.array([[0.05, 0.9, 0.05], [0.1, 0.85, 0.05]], dtype=np.float32)
    >>> [round(float(v), 6) for v in fx.categorical_focal_crossentropy(y_true, y_pred)]
    [0.000263, 0.675912]
    """
    spec = _family.focal_spec(
        "categorical_focal", alpha=alpha, gamma=gamma, from_logits=from_logits,
        label_smoothing=label_smoothing, axis=axis, epsilon=epsilon, n_threads=n_threads)
    return _family.compute(spec, y_true, y_pred).loss


def sparse_categorical_focal_crossentropy(y_true, y_pred, alpha=0.25, gamma=2.0,
                                          from_logits=False, ignore_class=None, axis=-1, *,
                                          class_weight=None, epsilon=1e-7, n_threads=None):
    """Per-sample focal cross-entropy with integer labels: the categorical focal loss of the
    one-hot target, ``-alpha w_y (1 - p_y)**gamma log p_y`` (an extension: Keras has none).

    Parameters
    ----------
    y_true : array_like of integers, shape of y_pred without ``axis``
        Class labels in ``[0, C)``; an out-of-range label raises
        :class:`~fastxent.LabelRangeError`.
    y_pred : ndarray of float32 or float64
        Logits or probabilities (as :func:`categorical_focal_crossentropy`).
    alpha : float >= 0
    gamma : float >= 0
    from_logits : bool
    ignore_class : int, optional
        Label whose samples get loss 0 and a zero gradient (PyTorch's ``ignore_index``).
    axis : int
    class_weight : array_like of shape (C,), optional
        Per-class weights ``w`` (1 when not given).
    epsilon, n_threads
        As in :func:`categorical_focal_crossentropy`.

    Returns
    -------
    ndarray of y_pred's dtype, shape of y_true.

    Examples
    --------
    >>> import numpy as np, fastxent as fx
    >>> logits = np.array([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    >>> fx.sparse_categorical_focal_crossentropy([0, 2], logits, from_logits=True).round(6)
    array([0.001036, 0.122068])
    """
    spec = _family.focal_spec(
        "sparse_focal", alpha=alpha, gamma=gamma, from_logits=from_logits,
        ignore_class=ignore_class, axis=axis, class_weight=class_weight, epsilon=epsilon,
        n_threads=n_threads)
    return _family.compute(spec, y_true, y_pred).loss


def kl_divergence(y_true, y_pred, *, from_logits=False, axis=-1, epsilon=1e-7,
                  n_threads=None):
    """Per-sample Kullback-Leibler divergence ``sum_k t_k log(t_k / p_k)``
    (``keras.losses.kl_divergence``).

    Parameters
    ----------
    y_true : array_like, shape of y_pred
        Target distributions.
    y_pred : ndarray of float32 or float64
        Probabilities, or logits with ``from_logits=True``.
    from_logits : bool
        False (Keras): both ``y_true`` and ``y_pred`` clipped to ``[epsilon, 1]`` (in
        y_pred's dtype) first.  True (an extension for distillation): ``p = softmax(y_pred)``
        and ``y_true`` is used as given, not clipped; entries equal to 0 contribute 0
        (``0 log 0 = 0``) and a negative entry gives NaN, as
        ``torch.nn.functional.kl_div(log_softmax(y_pred), y_true, reduction="none")`` summed
        over the class axis.  The gradient is ``(sum_k t_k) softmax(y_pred) - t``.
    axis : int
        The class axis (Keras: always the last).
    epsilon : float in (0, 0.5)
    n_threads : int or None

    Returns
    -------
    ndarray of y_pred's dtype, shape of y_pred without ``axis``.

    Examples
    --------
    >>> import numpy as np, fastxent as fx
    >>> t = np.array([[0.25, 0.75]])
    >>> fx.kl_divergence(t, np.array([[0.5, 0.5]])).round(6)
    array([0.130812])
    >>> fx.kl_divergence(t, np.log([[0.5, 0.5]]), from_logits=True).round(6)
    array([0.130812])
    """
    spec = _family.kl_spec(from_logits=from_logits, axis=axis, epsilon=epsilon,
                           n_threads=n_threads)
    return _family.compute(spec, y_true, y_pred).loss


def categorical_generalized_cross_entropy(y_true, y_pred, q=0.5, *, from_logits=False,
                                          ignore_class=None, axis=-1, n_threads=None):
    """Per-sample generalized cross-entropy ``(1 - p_y**q) / q`` of integer labels
    (``keras.losses.categorical_generalized_cross_entropy``).

    Parameters
    ----------
    y_true : array_like of integers, shape of y_pred without ``axis``
        Class labels in ``[0, C)`` (Keras one-hot encodes them: an out-of-range label gives
        ``p_y = 0`` there; here it raises :class:`~fastxent.LabelRangeError`).
    y_pred : ndarray of float32 or float64
        Probabilities (Keras: ``p_y = y_pred[y]``, neither normalized nor clipped), or
        logits with ``from_logits=True`` (an extension: ``p = softmax(y_pred)``).
    q : float in (0, 1)
        Towards 0 the loss approaches the cross-entropy, at 1 the mean absolute error.
    from_logits : bool
    ignore_class : int, optional
        Label whose samples get loss 0 and a zero gradient.
    axis : int
    n_threads : int or None

    Returns
    -------
    ndarray of y_pred's dtype, shape of y_true.

    Examples
    --------
    >>> import numpy as np, fastxent as fx
    >>> y_pred = np.array([[0.7, 0.3], [0.2, 0.8]])
    >>> fx.categorical_generalized_cross_entropy([0, 1], y_pred).round(6)
    array([0.32668 , 0.211146])
    """
    spec = _family.gce_spec(q=q, from_logits=from_logits, ignore_class=ignore_class, axis=axis,
                            n_threads=n_threads)
    return _family.compute(spec, y_true, y_pred).loss


class _SpecLoss(_Loss):
    """A loss class of this module: options in ``self._spec``, computed by ``_family``."""

    _spec = None

    def _set_spec(self, spec, reduction, name, dtype) -> None:
        self._spec = spec
        self._set_options(spec.base, reduction, name, dtype)

    def __call__(self, y_true, y_pred, sample_weight=None):
        """The reduced loss: a Python float (an ndarray for ``reduction="none"``)."""
        return _family.compute(self._spec, y_true, self._cast(y_pred), sample_weight).loss

    def loss_and_grad(self, y_true, y_pred, sample_weight=None, *, grad_out=None,
                      inplace=False):
        """The reduced loss and its gradient with respect to ``y_pred``.

        Parameters
        ----------
        y_true, y_pred, sample_weight
            As for ``__call__``.
        grad_out : ndarray, optional
            Write the gradient into this array (shape and dtype of y_pred, C-contiguous with
            the class axis last, writeable, not overlapping any input) and return it.
        inplace : bool
            Overwrite ``y_pred`` with the gradient and return it.

        Returns
        -------
        loss : float or ndarray
        grad : ndarray, shape and dtype of y_pred
        """
        out = _family.compute(self._spec, y_true, self._cast(y_pred, inplace), sample_weight,
                              want_grad=True, grad_out=grad_out, inplace=inplace)
        return out.loss, out.grad

    def gradient_hessian(self, y_true, y_pred, sample_weight=None):
        """The gradient and the exact diagonal of the Hessian with respect to logits.

        Needs ``from_logits=True``; both scaled by the reduction like the gradient of
        :meth:`loss_and_grad` (for gradient-boosting objectives).

        Returns
        -------
        grad, hess : ndarrays of y_pred's shape and dtype
        """
        if not self.from_logits:
            raise ValueError("gradient_hessian needs from_logits=True")
        out = _family.compute(self._spec, y_true, self._cast(y_pred), sample_weight,
                              want_grad=True, want_hess=True)
        return out.grad, out.hess

    def get_config(self) -> dict:
        cfg = super().get_config()
        if isinstance(cfg.get("alpha"), np.ndarray):
            cfg["alpha"] = cfg["alpha"].tolist()
        return cfg


def _spec_option(name: str, doc: str) -> property:
    return property(lambda self: getattr(self._spec, name), doc=doc)


class BinaryFocalCrossentropy(_SpecLoss):
    """Binary focal cross-entropy (``keras.losses.BinaryFocalCrossentropy``), averaged over
    ``axis``.

    Parameters
    ----------
    apply_class_balancing, alpha, gamma, from_logits, label_smoothing, axis
        As in :func:`binary_focal_crossentropy`.
    reduction : str
        As in :class:`~fastxent.CategoricalCrossentropy`.
    name : str
        Default ``"binary_focal_crossentropy"``.
    dtype : {None, "float32", "float64"}
        As in :class:`~fastxent.CategoricalCrossentropy`.
    epsilon : float, keyword-only
    n_threads : int or None, keyword-only

    Examples
    --------
    >>> import numpy as np, fastxent as fx
    >>> loss = fx.BinaryFocalCrossentropy(gamma=2, from_logits=True)
    >>> round(loss(np.array([0, 1, 0, 0]), np.array([-18.6, 0.51, 2.94, -12.8])), 3)
    0.691
    """

    _config_keys = ("apply_class_balancing", "alpha", "gamma", "from_logits",
                    "label_smoothing", "axis", "epsilon")

    def __init__(self, apply_class_balancing=False, alpha=0.25, gamma=2.0, from_logits=False,
                 label_smoothing=0.0, axis=-1, reduction="sum_over_batch_size",
                 name="binary_focal_crossentropy", dtype=None, *, epsilon=1e-7,
                 n_threads=None):
        self._set_spec(_family.focal_spec(
            "binary_focal", alpha=alpha, gamma=gamma,
            apply_class_balancing=apply_class_balancing, from_logits=from_logits,
            label_smoothing=label_smoothing, axis=axis, epsilon=epsilon, reduction=reduction,
            n_threads=n_threads), reduction, name, dtype)

    apply_class_balancing = _spec_option("apply_class_balancing",
                                         "Weigh positives by alpha, negatives by 1 - alpha.")
    alpha = _spec_option("alpha", "The balancing weight of the positive class.")
    gamma = _spec_option("gamma", "The focusing parameter.")


class CategoricalFocalCrossentropy(_SpecLoss):
    """Categorical focal cross-entropy (``keras.losses.CategoricalFocalCrossentropy``).

    Parameters
    ----------
    alpha, gamma, from_logits, label_smoothing, axis
        As in :func:`categorical_focal_crossentropy`.
    reduction, name, dtype, epsilon, n_threads
        As in :class:`BinaryFocalCrossentropy` (default name
        ``"categorical_focal_crossentropy"``).

    Examples
    --------
    >>> import numpy as np, fastxent as fx
    >>> loss = fx.CategoricalFocalCrossentropy(from_logits=True)
    >>> value, grad = loss.loss_and_grad(np.eye(3)[[0, 2]], np.array([[2.0, 1, 0], [0, 0, 0]]))
    >>> round(value, 6), grad.shape
    (0.066744, (2, 3))
    """

    _config_keys = ("alpha", "gamma", "from_logits", "label_smoothing", "axis", "epsilon")

    def __init__(self, alpha=0.25, gamma=2.0, from_logits=False, label_smoothing=0.0, axis=-1,
                 reduction="sum_over_batch_size", name="categorical_focal_crossentropy",
                 dtype=None, *, epsilon=1e-7, n_threads=None):
        self._set_spec(_family.focal_spec(
            "categorical_focal", alpha=alpha, gamma=gamma, from_logits=from_logits,
            label_smoothing=label_smoothing, axis=axis, epsilon=epsilon, reduction=reduction,
            n_threads=n_threads), reduction, name, dtype)

    alpha = _spec_option("alpha", "The class weight (a float or one per class).")
    gamma = _spec_option("gamma", "The focusing parameter.")


class SparseCategoricalFocalCrossentropy(_SpecLoss):
    """Focal cross-entropy with integer labels (an extension; see
    :func:`sparse_categorical_focal_crossentropy`).

    Parameters
    ----------
    alpha, gamma, from_logits, ignore_class, axis, class_weight
        As in :func:`sparse_categorical_focal_crossentropy`.
    reduction : str
        As in :class:`~fastxent.SparseCategoricalCrossentropy` (``sum_over_batch_size``
        divides by the number of samples not ignored; ``mean_with_sample_weight`` by the sum
        of sample weight x class weight).
    name, dtype, epsilon, n_threads
        As in :class:`BinaryFocalCrossentropy` (default name
        ``"sparse_categorical_focal_crossentropy"``).

    Examples
    --------
    >>> import numpy as np, fastxent as fx
    >>> loss = fx.SparseCategoricalFocalCrossentropy(from_logits=True, ignore_class=-1)
    >>> round(loss([0, -1], np.array([[2.0, 1.0, 0.0], [0.0, 0.0, 0.0]])), 6)
    0.011419
    """

    _config_keys = ("alpha", "gamma", "from_logits", "ignore_class", "axis", "class_weight",
                    "epsilon")

    def __init__(self, alpha=0.25, gamma=2.0, from_logits=False, ignore_class=None, axis=-1,
                 reduction="sum_over_batch_size",
                 name="sparse_categorical_focal_crossentropy", dtype=None, *,
                 class_weight=None, epsilon=1e-7, n_threads=None):
        self._set_spec(_family.focal_spec(
            "sparse_focal", alpha=alpha, gamma=gamma, from_logits=from_logits,
            ignore_class=ignore_class, axis=axis, class_weight=class_weight, epsilon=epsilon,
            reduction=reduction, n_threads=n_threads), reduction, name, dtype)

    alpha = _spec_option("alpha", "The weight of every class.")
    gamma = _spec_option("gamma", "The focusing parameter.")
    ignore_class = _option("ignore_class", "The ignored label, or None.")
    class_weight = _option("class_weight", "Per-class weights (None, a float or an array).")


class KLDivergence(_SpecLoss):
    """Kullback-Leibler divergence (``keras.losses.KLDivergence``).

    Parameters
    ----------
    reduction : str
        As in :class:`~fastxent.CategoricalCrossentropy`.
    name : str
        Default ``"kl_divergence"``.
    dtype : {None, "float32", "float64"}
    from_logits, axis, epsilon, n_threads : keyword-only
        As in :func:`kl_divergence` (``from_logits=True``: teacher probabilities against
        student logits, one kernel pass).

    Examples
    --------
    >>> import numpy as np, fastxent as fx
    >>> kl = fx.KLDivergence(from_logits=True)
    >>> value, grad = kl.loss_and_grad(np.array([[0.25, 0.75]]), np.array([[0.0, 0.0]]))
    >>> round(value, 6), grad.round(6).tolist()
    (0.130812, [[0.25, -0.25]])
    """

    _config_keys = ("from_logits", "axis", "epsilon")

    def __init__(self, reduction="sum_over_batch_size", name="kl_divergence", dtype=None, *,
                 from_logits=False, axis=-1, epsilon=1e-7, n_threads=None):
        self._set_spec(_family.kl_spec(from_logits=from_logits, axis=axis, epsilon=epsilon,
                                       reduction=reduction, n_threads=n_threads),
                       reduction, name, dtype)


class CategoricalGeneralizedCrossEntropy(_SpecLoss):
    """Generalized cross-entropy of integer labels
    (``keras.losses.CategoricalGeneralizedCrossEntropy``).

    Parameters
    ----------
    q : float in (0, 1)
    reduction : str
        As in :class:`~fastxent.SparseCategoricalCrossentropy`.
    name : str
        Default ``"categorical_generalized_cross_entropy"``.
    dtype : {None, "float32", "float64"}
    from_logits, ignore_class, axis, n_threads : keyword-only
        As in :func:`categorical_generalized_cross_entropy`.

    Examples
    --------
    >>> import numpy as np, fastxent as fx
    >>> gce = fx.CategoricalGeneralizedCrossEntropy()
    >>> y_pred = np.array([[0.7, 0.3], [0.2, 0.8], [0.6, 0.4], [0.4, 0.6]])
    >>> round(gce([0, 1, 0, 1], y_pred), 6)
    0.35986
    """

    _config_keys = ("q", "from_logits", "ignore_class", "axis")

    def __init__(self, q=0.5, reduction="sum_over_batch_size",
                 name="categorical_generalized_cross_entropy", dtype=None, *,
                 from_logits=False, ignore_class=None, axis=-1, n_threads=None):
        self._set_spec(_family.gce_spec(q=q, from_logits=from_logits,
                                        ignore_class=ignore_class, axis=axis,
                                        reduction=reduction, n_threads=n_threads),
                       reduction, name, dtype)

    q = _spec_option("q", "The noise parameter in (0, 1).")
    ignore_class = _option("ignore_class", "The ignored label, or None.")
