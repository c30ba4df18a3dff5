"""Stateful metrics (Keras' names: the cross-entropies, KL divergence; the focal family as
an extension) and streaming evaluation; public in :mod:`fastxent.metrics`.

A metric keeps two float64 numbers: the weighted sum of per-sample losses and the total
weight (each with a Neumaier compensation term).  ``update_state`` adds one batch's pair,
computed by ``fastxent._dispatch`` with the loss-only path (no gradient, nothing of size
N x C allocated for float inputs in y_pred's dtype): the numerator is the plan's weighted
sum (``Outcome.total``: the losses' blocked float64 sum, by the fixed blocks of rows of the
row length) and the denominator is the ``"mean_with_sample_weight"`` plan's (sum of sample
weights over the samples that count), so one batch gives the matching loss's bits.  The
batches' pairs are added in update order by Neumaier's compensated summation;
``result()`` divides once at the end, so a result depends on how the data was split into
batches only through the rounding of each batch's sums, and a mean over nothing is 0.0
(Keras' ``divide_no_nan``).  The public definition is in :mod:`fastxent.metrics`.
"""

from __future__ import annotations

import math
import mmap
import numbers
import warnings

import numpy as np

from fastxent import _dispatch, _family, _reduction
from fastxent._options import sigmoid_options, softmax_options
from fastxent._validation import check_dtype, check_name

__all__ = [
    "BinaryCrossentropy",
    "CategoricalCrossentropy",
    "SparseCategoricalCrossentropy",
    "Perplexity",
    "KLDivergence",
    "BinaryFocalCrossentropy",
    "CategoricalFocalCrossentropy",
    "SparseCategoricalFocalCrossentropy",
    "CategoricalGeneralizedCrossEntropy",
    "evaluate",
]


def _is_dask(a) -> bool:
    return hasattr(a, "__dask_graph__")


def _two_sum(s: float, c: float, x: float) -> tuple[float, float]:
    """Neumaier's compensated ``s + x``: the new sum and the updated compensation."""
    t = s + x
    if math.isfinite(t):
        c += (s - t) + x if abs(s) >= abs(x) else (x - t) + s
    return t, c


class _Metric:
    """Shared state and protocol of the cross-entropy metrics (a sample-weighted mean)."""

    _default_name = ""

    def __init__(self, name, dtype, n_threads):
        self.name = check_name(self._default_name if name is None else name)
        dt = check_dtype(dtype)
        self.dtype = None if dt is None else dt.name
        self.n_threads = n_threads
        self.reset_state()

    # -- subclass hooks ------------------------------------------------------------------
    def _options_config(self) -> dict:  # the options besides name / dtype / n_threads
        raise NotImplementedError

    def _outcome(self, y_true, y_pred, sample_weight):
        run = _dispatch.softmax if self._options.family == "softmax" else _dispatch.sigmoid
        return run(self._options, y_true, y_pred, sample_weight, want_total=True)

    def _finish(self, mean: float) -> float:
        return mean

    _loss_name = ""  # the loss class of fastxent with the same options

    def _loss_kwargs(self) -> dict:
        return self._options_config()

    def _loss_object(self):
        """The NumPy loss (``reduction="sum"``) with this metric's options (for Dask)."""
        import fastxent

        return getattr(fastxent, self._loss_name)(reduction="sum", n_threads=self.n_threads,
                                                  **self._loss_kwargs())

    # -- state -----------------------------------------------------------------------------
    def _batch_state(self, y_true, y_pred, sample_weight=None) -> tuple[float, float]:
        """This batch's (weighted sum of losses, total weight); the state is not touched."""
        out = self._outcome(y_true, y_pred, sample_weight)
        return float(out.total), float(out.denominator)

    def _add(self, total: float, weight: float, total_c=0.0, weight_c=0.0) -> None:
        s, c = _two_sum(self._total, self._total_c, total)
        self._total, self._total_c = _two_sum(s, c, total_c) if total_c else (s, c)
        s, c = _two_sum(self._count, self._count_c, weight)
        self._count, self._count_c = _two_sum(s, c, weight_c) if weight_c else (s, c)

    def update_state(self, y_true, y_pred, sample_weight=None) -> None:
        """Accumulate one batch.

        Parameters
        ----------
        y_true, y_pred, sample_weight
            As for the matching loss function of :mod:`fastxent` (``sample_weight``
            broadcastable to the per-sample loss shape).  NumPy arrays, or Dask arrays:
            then each block's state is computed where the block lives and the states are
            merged in block order (:mod:`fastxent.dask` is imported on first use).

        Raises
        ------
        MemoryError
            With Dask arrays on a ``distributed`` cluster, when a block's task killed its
            workers more than ``distributed.scheduler.allowed-failures`` times
            (``distributed.KilledWorker``, kept as ``__cause__``), most likely a block of
            ``y_pred`` too large for a worker's memory limit:
            ``fastxent.dask.WorkerMemoryError``, whose message names the block's
            bytes, the limit and the rows per block to rechunk to; the state is unchanged.
            A worker lost fewer times costs only time: the result is bitwise the same.
        """
        if _is_dask(y_pred) or _is_dask(y_true) or _is_dask(sample_weight):
            from fastxent.dask._metrics import block_states

            for total, weight in block_states(self, y_true, y_pred, sample_weight):
                self._add(total, weight)
            return
        self._add(*self._batch_state(y_true, y_pred, sample_weight))

    def result(self):
        """The weighted mean so far: ``total / count`` (0.0 when ``count`` is 0).

        ``total`` and ``count`` are the compensated sums of the batches' blocked sums (see
        :mod:`fastxent.metrics`); after a single batch this is the bits of the matching loss
        with ``reduction="mean_with_sample_weight"``, for any ``n_threads``.  A Python float,
        or a NumPy scalar of ``dtype`` when one was given.
        """
        count = self._count + self._count_c
        mean = (self._total + self._total_c) / count if count != 0.0 else 0.0
        value = self._finish(mean) if count != 0.0 else 0.0
        return value if self.dtype is None else np.dtype(self.dtype).type(value)

    def reset_state(self) -> None:
        """Forget every batch seen."""
        self._total = self._total_c = 0.0
        self._count = self._count_c = 0.0

    @property
    def total(self) -> float:
        """The weighted sum of per-sample losses so far (float64)."""
        return self._total + self._total_c

    @property
    def count(self) -> float:
        """The total weight so far: sum of sample weights of the samples that count."""
        return self._count + self._count_c

    def merge_state(self, metrics) -> None:
        """Add the state of other metrics of the same class and options, in the given order.

        Parameters
        ----------
        metrics : metric or iterable of metrics
        """
        if isinstance(metrics, _Metric):
            metrics = [metrics]
        mine = self._options_config()
        for m in metrics:
            if type(m) is not type(self):
                raise TypeError(
                    f"merge_state: metrics must be {type(self).__name__} instances, "
                    f"got {type(m).__name__}"
                )
            theirs = m._options_config()
            if theirs != mine:
                diff = sorted(k for k in mine if mine[k] != theirs.get(k))
                raise ValueError(
                    f"merge_state: metrics differ in {', '.join(diff)} "
                    f"({ {k: mine[k] for k in diff} } vs { {k: theirs[k] for k in diff} })"
                )
        for m in list(metrics):
            self._add(m._total, m._count, m._total_c, m._count_c)

    def __call__(self, y_true, y_pred, sample_weight=None):
        """``update_state`` then ``result()`` (as Keras' ``Metric.__call__``)."""
        self.update_state(y_true, y_pred, sample_weight)
        return self.result()

    # -- config and pickling ---------------------------------------------------------------
    def get_config(self) -> dict:
        """The constructor arguments (Keras' ``get_config``)."""
        return {"name": self.name, "dtype": self.dtype, **self._options_config(),
                "n_threads": self.n_threads}

    @classmethod
    def from_config(cls, config: dict):
        """A new metric (empty state) from :meth:`get_config`'s dict."""
        return cls(**config)

    def __getstate__(self):
        return {"config": self.get_config(),
                "state": (self._total, self._total_c, self._count, self._count_c)}

    def __setstate__(self, st):
        self.__init__(**st["config"])
        self._total, self._total_c, self._count, self._count_c = st["state"]

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class _SmoothedMetric(_Metric):
    """The metrics whose options are ``from_logits``, ``label_smoothing`` and ``axis``."""

    def _options_config(self) -> dict:
        o = self._options
        return {"from_logits": o.from_logits, "label_smoothing": o.label_smoothing,
                "axis": o.axis}


class CategoricalCrossentropy(_SmoothedMetric):
    """Running categorical cross-entropy, as ``keras.metrics.CategoricalCrossentropy``.

    The sample-weighted mean of :func:`fastxent.categorical_crossentropy` over every batch
    given to :meth:`update_state`: ``sum_i w_i l_i / sum_i w_i``, accumulated in float64.
    Targets of y_pred's dtype are read in place; others (integer one-hot) are converted to
    it, a copy of the batch's size.

    Parameters
    ----------
    name : str, default "categorical_crossentropy"
    dtype : {None, "float32", "float64"}, optional
        The dtype of :meth:`result` (a Python float when None).  The state is float64.
    from_logits : bool, default False
    label_smoothing : float in [0, 1], default 0
    axis : int, default -1
        The class axis.
    n_threads : int, optional
        OpenMP threads (the result does not depend on it).

    Examples
    --------
    >>> import numpy as np
    >>> from fastxent.metrics import CategoricalCrossentropy
    >>> m = CategoricalCrossentropy(from_logits=True)
    >>> m.update_state([[0, 1, 0]], np.array([[1.0, 2.0, 0.5]]))
    >>> m.update_state([[1, 0, 0], [0, 0, 1]], np.zeros((2, 3)))
    >>> round(m.result(), 6)   # (0.464369 + 2 * log 3) / 3
    0.887198
    """

    _default_name = "categorical_crossentropy"
    _loss_name = "CategoricalCrossentropy"

    def __init__(self, name=None, dtype=None, from_logits=False, label_smoothing=0.0,
                 axis=-1, *, n_threads=None):
        self._options = softmax_options(
            sparse=False, from_logits=from_logits, label_smoothing=label_smoothing, axis=axis,
            reduction="mean_with_sample_weight", n_threads=n_threads)
        super().__init__(name, dtype, n_threads)



class SparseCategoricalCrossentropy(_Metric):
    """Running cross-entropy with integer labels, as
    ``keras.metrics.SparseCategoricalCrossentropy``.

    Samples labelled ``ignore_class`` weigh nothing: they count neither in the sum nor in
    the total weight, so a stream of padding gives 0.0, never NaN.  (Keras 3 does the same
    when a ``sample_weight`` is given, but without one it counts the ignored samples in
    the total weight, as zeros; this metric does not.)

    Parameters
    ----------
    name : str, default "sparse_categorical_crossentropy"
    dtype : {None, "float32", "float64"}, optional
    from_logits : bool, default False
    ignore_class : int, optional
    axis : int, default -1
    n_threads : int, optional

    Examples
    --------
    >>> import numpy as np
    >>> from fastxent.metrics import SparseCategoricalCrossentropy
    >>> m = SparseCategoricalCrossentropy(from_logits=True, ignore_class=-1)
    >>> m.update_state([0, -1], np.zeros((2, 4)))
    >>> m.update_state([-1, -1, 3], np.zeros((3, 4)))
    >>> round(m.result(), 6), m.count   # log 4 over the 2 tokens that count
    (1.386294, 2.0)
    """

    _default_name = "sparse_categorical_crossentropy"
    _loss_name = "SparseCategoricalCrossentropy"

    def __init__(self, name=None, dtype=None, from_logits=False, ignore_class=None, axis=-1,
                 *, n_threads=None):
        self._options = softmax_options(
            sparse=True, from_logits=from_logits, ignore_class=ignore_class, axis=axis,
            reduction="mean_with_sample_weight", n_threads=n_threads)
        super().__init__(name, dtype, n_threads)

    def _options_config(self) -> dict:
        o = self._options
        return {"from_logits": o.from_logits, "ignore_class": o.ignore_class, "axis": o.axis}


class BinaryCrossentropy(_SmoothedMetric):
    """Running binary cross-entropy, as ``keras.metrics.BinaryCrossentropy``.

    Each sample's loss is the mean over ``axis`` (:func:`fastxent.binary_crossentropy`);
    the metric is the sample-weighted mean of those.

    Parameters
    ----------
    name : str, default "binary_crossentropy"
    dtype : {None, "float32", "float64"}, optional
    from_logits : bool, default False
    label_smoothing : float in [0, 1], default 0
    axis : int, default -1
    n_threads : int, optional

    Examples
    --------
    >>> import numpy as np
    >>> from fastxent.metrics import BinaryCrossentropy
    >>> m = BinaryCrossentropy(from_logits=True)
    >>> m.update_state([[1.0], [0.0]], np.zeros((2, 1)), sample_weight=[1.0, 3.0])
    >>> round(m.result(), 6)   # log 2
    0.693147
    """

    _default_name = "binary_crossentropy"
    _loss_name = "BinaryCrossentropy"

    def __init__(self, name=None, dtype=None, from_logits=False, label_smoothing=0.0,
                 axis=-1, *, n_threads=None):
        self._options = sigmoid_options(
            from_logits=from_logits, label_smoothing=label_smoothing, axis=axis,
            reduction="mean_with_sample_weight", n_threads=n_threads)
        super().__init__(name, dtype, n_threads)



class Perplexity(_Metric):
    """Running perplexity, as ``keras_hub.metrics.Perplexity`` (formerly keras-nlp):
    ``exp`` of the mean token cross-entropy over the tokens not equal to ``mask_token_id``.

    ``exp(sum_i w_i l_i / sum_i w_i)`` over every token of every batch, the masked tokens
    weighing 0.  Differences from keras-hub, which accumulates ``batch_size x`` each batch's
    mean: here the mean is over tokens, so the result does not depend on the batch split
    (keras-hub's agrees with this one for a single batch, or batches of equal token weight);
    keras-hub returns 0.0 before any update (so does this one) but NaN after a batch whose
    tokens are all masked, where this one stays 0.0 until a token counts.  ``from_logits``
    defaults to True here (language-model heads output logits; keras-hub's default is False).
    :func:`fastxent.perplexity` (one-shot) returns NaN when no token counts.

    Parameters
    ----------
    from_logits : bool, default True
    mask_token_id : int, optional
        Padding token: its positions count neither in the sum nor in the total weight.
    name : str, default "perplexity"
    dtype : {None, "float32", "float64"}, optional
    axis : int, default -1
        The vocabulary axis.
    n_threads : int, optional

    Examples
    --------
    >>> import numpy as np
    >>> from fastxent.metrics import Perplexity
    >>> ppl = Perplexity(mask_token_id=0)
    >>> ppl.update_state([[1, 2, 0]], np.zeros((1, 3, 5)))    # uniform over 5 tokens
    >>> round(ppl.result(), 10)
    5.0
    """

    _default_name = "perplexity"
    _loss_name = "SparseCategoricalCrossentropy"

    def __init__(self, from_logits=True, mask_token_id=None, name=None, dtype=None, axis=-1,
                 *, n_threads=None):
        if mask_token_id is not None and (
            isinstance(mask_token_id, bool | np.bool_)
            or not isinstance(mask_token_id, numbers.Integral)
        ):
            raise TypeError(f"mask_token_id must be None or an int, got {mask_token_id!r}")
        self._options = softmax_options(
            sparse=True, from_logits=from_logits,
            ignore_class=None if mask_token_id is None else int(mask_token_id), axis=axis,
            reduction="mean_with_sample_weight", n_threads=n_threads)
        super().__init__(name, dtype, n_threads)

    def _options_config(self) -> dict:
        o = self._options
        return {"from_logits": o.from_logits, "mask_token_id": o.ignore_class, "axis": o.axis}

    def _finish(self, mean: float) -> float:
        return _reduction.exp_of_mean(mean)

    def _loss_kwargs(self) -> dict:
        o = self._options
        return {"from_logits": o.from_logits, "ignore_class": o.ignore_class, "axis": o.axis}


class _FamilyMetric(_Metric):
    """The metrics of the focal family (:mod:`fastxent.focal`): the options are a
    ``fastxent._family.Spec`` and every batch is computed by ``_family.compute``."""

    _option_names = ()  # the options besides name / dtype / n_threads, in config order

    def _set_spec(self, spec, name, dtype, n_threads) -> None:
        self._spec = spec
        self._options = spec.base
        super().__init__(name, dtype, n_threads)

    def _options_config(self) -> dict:
        cfg = {}
        for key in self._option_names:
            value = getattr(self._spec if hasattr(self._spec, key) else self._options, key)
            cfg[key] = value.tolist() if isinstance(value, np.ndarray) else value
        return cfg

    def _outcome(self, y_true, y_pred, sample_weight):
        return _family.compute(self._spec, y_true, y_pred, sample_weight, want_total=True)


class KLDivergence(_FamilyMetric):
    """Running Kullback-Leibler divergence, as ``keras.metrics.KLDivergence``.

    The sample-weighted mean of :func:`fastxent.kl_divergence` over every batch: Keras'
    ``sum_k t_k log(t_k / p_k)`` with both clipped to ``[1e-7, 1]``.  ``from_logits`` and
    ``axis`` are extensions (Keras' metric reads probabilities, class axis last); with
    ``from_logits=True`` the teacher's probabilities ``y_true`` are not clipped.

    Parameters
    ----------
    name : str, default "kl_divergence"
    dtype : {None, "float32", "float64"}, optional
        The dtype of :meth:`result` (a Python float when None).  The state is float64.
    from_logits : bool, keyword-only, default False
    axis : int, keyword-only, default -1
    n_threads : int, optional, keyword-only

    Examples
    --------
    >>> from fastxent.metrics import KLDivergence
    >>> m = KLDivergence()
    >>> m.update_state([[0, 1], [0, 0]], [[0.6, 0.4], [0.4, 0.6]])
    >>> round(m.result(), 6)
    0.458143
    """

    _default_name = "kl_divergence"
    _loss_name = "KLDivergence"
    _option_names = ("from_logits", "axis")

    def __init__(self, name=None, dtype=None, *, from_logits=False, axis=-1, n_threads=None):
        self._set_spec(_family.kl_spec(from_logits=from_logits, axis=axis,
                                       reduction="mean_with_sample_weight",
                                       n_threads=n_threads), name, dtype, n_threads)


class BinaryFocalCrossentropy(_FamilyMetric):
    """Running binary focal cross-entropy (an extension: Keras has the loss, not the metric).

    The sample-weighted mean of :func:`fastxent.binary_focal_crossentropy` (each sample's
    loss the mean over ``axis``) over every batch.

    Parameters
    ----------
    name : str, default "binary_focal_crossentropy"
    dtype : {None, "float32", "float64"}, optional
    apply_class_balancing, alpha, gamma, from_logits, label_smoothing, axis
        As in :func:`fastxent.binary_focal_crossentropy`.
    n_threads : int, optional, keyword-only

    Examples
    --------
    >>> import numpy as np
    >>> from fastxent.metrics import BinaryFocalCrossentropy
    >>> m = BinaryFocalCrossentropy(gamma=2.0, from_logits=True)
    >>> m.update_state([[0, 1], [1, 1]], np.array([[-1.0, 2.0], [0.5, 0.5]]))
    >>> round(m.result(), 6)
    0.039902
    """

    _default_name = "binary_focal_crossentropy"
    _loss_name = "BinaryFocalCrossentropy"
    _option_names = ("apply_class_balancing", "alpha", "gamma", "from_logits",
                     "label_smoothing", "axis")

    def __init__(self, name=None, dtype=None, apply_class_balancing=False, alpha=0.25,
                 gamma=2.0, from_logits=False, label_smoothing=0.0, axis=-1, *,
                 n_threads=None):
        self._set_spec(_family.focal_spec(
            "binary_focal", alpha=alpha, gamma=gamma,
            apply_class_balancing=apply_class_balancing, from_logits=from_logits,
            label_smoothing=label_smoothing, axis=axis, reduction="mean_with_sample_weight",
            n_threads=n_threads), name, dtype, n_threads)


class CategoricalFocalCrossentropy(_FamilyMetric):
    """Running categorical focal cross-entropy (an extension: Keras has the loss, not the
    metric).

    The sample-weighted mean of :func:`fastxent.categorical_focal_crossentropy` over every
    batch.

    Parameters
    ----------
    name : str, default "categorical_focal_crossentropy"
    dtype : {None, "float32", "float64"}, optional
    alpha, gamma, from_logits, label_smoothing, axis
        As in :func:`fastxent.categorical_focal_crossentropy` (a per-class ``alpha`` is
        given back as a list by :meth:`get_config`).
    n_threads : int, optional, keyword-only

    Examples
    --------
    >>> import numpy as np
    >>> from fastxent.metrics import CategoricalFocalCrossentropy
    >>> m = CategoricalFocalCrossentropy(from_logits=True)
    >>> m.update_state(np.eye(3)[[0, 2]], np.array([[2.0, 1.0, 0.0], [0.0, 0.0, 0.0]]))
    >>> round(m.result(), 6)
    0.066744
    """

    _default_name = "categorical_focal_crossentropy"
    _loss_name = "CategoricalFocalCrossentropy"
    _option_names = ("alpha", "gamma", "from_logits", "label_smoothing", "axis")

    def __init__(self, name=None, dtype=None, alpha=0.25, gamma=2.0, from_logits=False,
                 label_smoothing=0.0, axis=-1, *, n_threads=None):
        self._set_spec(_family.focal_spec(
            "categorical_focal", alpha=alpha, gamma=gamma, from_logits=from_logits,
            label_smoothing=label_smoothing, axis=axis, reduction="mean_with_sample_weight",
            n_threads=n_threads), name, dtype, n_threads)


class SparseCategoricalFocalCrossentropy(_FamilyMetric):
    """Running focal cross-entropy with integer labels (an extension, like the loss
    :func:`fastxent.sparse_categorical_focal_crossentropy`).

    Samples labelled ``ignore_class`` count neither in the sum nor in the total weight, as
    in :class:`SparseCategoricalCrossentropy`.

    Parameters
    ----------
    name : str, default "sparse_categorical_focal_crossentropy"
    dtype : {None, "float32", "float64"}, optional
    alpha, gamma, from_logits, ignore_class, axis
        As in :func:`fastxent.sparse_categorical_focal_crossentropy`.
    n_threads : int, optional, keyword-only

    Examples
    --------
    >>> import numpy as np
    >>> from fastxent.metrics import SparseCategoricalFocalCrossentropy
    >>> m = SparseCategoricalFocalCrossentropy(from_logits=True, ignore_class=-1)
    >>> m.update_state([0, -1], np.array([[2.0, 1.0, 0.0], [0.0, 0.0, 0.0]]))
    >>> round(m.result(), 6), m.count
    (0.011419, 1.0)
    """

    _default_name = "sparse_categorical_focal_crossentropy"
    _loss_name = "SparseCategoricalFocalCrossentropy"
    _option_names = ("alpha", "gamma", "from_logits", "ignore_class", "axis")

    def __init__(self, name=None, dtype=None, alpha=0.25, gamma=2.0, from_logits=False,
                 ignore_class=None, axis=-1, *, n_threads=None):
        self._set_spec(_family.focal_spec(
            "sparse_focal", alpha=alpha, gamma=gamma, from_logits=from_logits,
            ignore_class=ignore_class, axis=axis, reduction="mean_with_sample_weight",
            n_threads=n_threads), name, dtype, n_threads)


class CategoricalGeneralizedCrossEntropy(_FamilyMetric):
    """Running generalized cross-entropy of integer labels (an extension: Keras has the
    loss :func:`~fastxent.categorical_generalized_cross_entropy`, not the metric).

    Samples labelled ``ignore_class`` count neither in the sum nor in the total weight.

    Parameters
    ----------
    name : str, default "categorical_generalized_cross_entropy"
    dtype : {None, "float32", "float64"}, optional
    q, from_logits, ignore_class, axis
        As in :func:`fastxent.categorical_generalized_cross_entropy`.
    n_threads : int, optional, keyword-only

    Examples
    --------
    >>> import numpy as np
    >>> from fastxent.metrics import CategoricalGeneralizedCrossEntropy
    >>> m = CategoricalGeneralizedCrossEntropy(q=0.5)
    >>> m.update_state([0, 1], np.array([[0.7, 0.3], [0.2, 0.8]]))
    >>> m.update_state([0, 1], np.array([[0.6, 0.4], [0.4, 0.6]]))
    >>> round(m.result(), 6)
    0.35986
    """

    _default_name = "categorical_generalized_cross_entropy"
    _loss_name = "CategoricalGeneralizedCrossEntropy"
    _option_names = ("q", "from_logits", "ignore_class", "axis")

    def __init__(self, name=None, dtype=None, q=0.5, from_logits=False, ignore_class=None,
                 axis=-1, *, n_threads=None):
        self._set_spec(_family.gce_spec(
            q=q, from_logits=from_logits, ignore_class=ignore_class, axis=axis,
            reduction="mean_with_sample_weight", n_threads=n_threads), name, dtype, n_threads)


# --------------------------------------------------------------------------- evaluate

_CHUNK_BYTES = 8 << 20  # y_pred bytes per chunk when batch_rows is not given


def _mapping(a):
    """The ``mmap.mmap`` under a NumPy memmap (or a view of one) and its base address."""
    root = a
    while isinstance(root, np.ndarray) and isinstance(root.base, np.ndarray):
        root = root.base
    mm = getattr(root, "base", None)
    if not isinstance(root, np.memmap) or not isinstance(mm, mmap.mmap):
        return None
    if root.mode in ("c", "copyonwrite"):
        return None  # a private mapping: dropping its pages would drop the caller's changes
    offset = getattr(root, "offset", 0) % mmap.ALLOCATIONGRANULARITY
    return mm, root.ctypes.data - offset


def _release(chunk, mapping) -> None:
    """Drop the pages of ``chunk`` (a view of a memory-mapped file) from this process's
    resident set: the file stays in the page cache, but the process's RSS stays bounded."""
    if (mapping is None or not hasattr(mmap, "MADV_DONTNEED") or chunk.size == 0
            or not chunk.flags.c_contiguous):
        return
    mm, base = mapping
    start = chunk.ctypes.data - base
    end = start + chunk.nbytes  # contiguous rows (a slice of axis 0 of a C-order memmap)
    page = mmap.PAGESIZE
    lo = start - start % page
    try:
        mm.madvise(mmap.MADV_DONTNEED, lo, min(len(mm), end) - lo)
    except (OSError, ValueError):  # pragma: no cover - closed map or odd platform
        pass


def _progress_bar(progress, total: int, desc: str):
    if progress is False:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        if progress:
            warnings.warn("progress=True needs tqdm (pip install '.[metrics]' from a clone, "
                          "or pip install tqdm); evaluating without a progress bar",
                          stacklevel=3)
        return None
    # auto (None): the bar appears only on runs longer than two seconds
    return tqdm(total=total, unit="row", unit_scale=True, desc=desc,
                delay=0.0 if progress else 2.0, leave=bool(progress))


def evaluate(metric, y_true, y_pred, *, sample_weight=None, batch_rows=None, progress=None):
    """Stream ``y_pred`` (and ``y_true``) through ``metric`` in chunks of rows.

    The arrays may be larger than memory: an ``np.memmap`` (pages read for a chunk are
    released after it) or any array-like that can be sliced along axis 0 (h5py, zarr, ...).
    Each chunk goes to ``metric.update_state``; the result is the one of a single call,
    whatever ``batch_rows`` is (within rounding: the sums are float64).

    Parameters
    ----------
    metric : one of this module's metrics
        Its state is added to (call ``metric.reset_state()`` first to start over).
    y_true, y_pred : array-like, sliceable along axis 0
        As for ``metric.update_state``; the class axis must not be axis 0.
    sample_weight : array-like or float, optional
        Sliced along axis 0 with the others when it is an array with ``len(y_pred)`` rows.
    batch_rows : int, optional
        Rows per chunk; by default about 8 MiB of ``y_pred``.
    progress : bool or None
        A ``tqdm`` progress bar: True always, False never, None (default) on runs longer
        than two seconds.  Without tqdm installed (``pip install '.[metrics]'``)
        there is no bar.

    Returns
    -------
    The metric's :meth:`result` after the last chunk.

    Examples
    --------
    >>> import numpy as np
    >>> from fastxent.metrics import SparseCategoricalCrossentropy, evaluate
    >>> logits = np.zeros((1000, 8), dtype=np.float32)
    >>> labels = np.arange(1000) % 8
    >>> m = SparseCategoricalCrossentropy(from_logits=True)
    >>> round(evaluate(m, labels, logits, batch_rows=300, progress=False), 6)   # log 8
    2.079442
    """
    if not isinstance(metric, _Metric):
        raise TypeError(f"metric must be a fastxent.metrics metric, got {type(metric).__name__}")
    shape = tuple(np.shape(y_pred)) if not hasattr(y_pred, "shape") else tuple(y_pred.shape)
    if len(shape) < 2:
        raise ValueError(f"y_pred must have at least 2 dimensions to be split in rows, "
                         f"got shape {shape}")
    if metric._options.axis % len(shape) == 0:
        raise ValueError("evaluate splits axis 0 into chunks, so the metric's axis must not "
                         f"be axis 0 (axis={metric._options.axis})")
    n = shape[0]
    if len(y_true) != n:
        raise ValueError(f"y_true has {len(y_true)} rows but y_pred has {n}")
    if batch_rows is None:
        row_bytes = np.dtype(getattr(y_pred, "dtype", np.float64)).itemsize * math.prod(shape[1:])
        batch_rows = max(1, _CHUNK_BYTES // max(1, row_bytes))
    elif (isinstance(batch_rows, bool) or not isinstance(batch_rows, numbers.Integral)
          or batch_rows < 1):
        raise ValueError(f"batch_rows must be a positive int, got {batch_rows!r}")
    if progress is not None and not isinstance(progress, bool):
        raise TypeError(f"progress must be True, False or None, got {progress!r}")
    sliced_weight = (sample_weight is not None and np.ndim(sample_weight) > 0
                     and np.shape(sample_weight)[0] == n)

    maps = (_mapping(y_true), _mapping(y_pred),
            _mapping(sample_weight) if sliced_weight else None)
    bar = _progress_bar(progress, n, metric.name)
    try:
        for lo in range(0, n, int(batch_rows)):
            hi = min(n, lo + int(batch_rows))
            t, p = y_true[lo:hi], y_pred[lo:hi]
            w = sample_weight[lo:hi] if sliced_weight else sample_weight
            metric.update_state(t, p, w)
            for chunk, mapping in zip((t, p, w), maps, strict=True):
                if mapping is not None:
                    _release(chunk, mapping)
            if bar is not None:
                bar.update(hi - lo)
    finally:
        if bar is not None:
            bar.close()
    return metric.result()
