"""A scikit-learn estimator on fastxent's kernels: multinomial logistic regression.

:class:`SoftmaxRegression` minimizes the L2-penalized softmax cross-entropy with SciPy's
L-BFGS-B, taking the loss and the gradient with respect to the logits from one fused kernel
call (``SparseCategoricalCrossentropy.loss_and_grad``) and the gradient with respect to the
weights by the chain rule (``G.T @ X``).  The objective, its checks and the solver live in
:mod:`fastxent._glm`, shared with the distributed fit of a Dask ``X`` (:mod:`fastxent.dask`).

This module needs scikit-learn and SciPy (``pip install '.[sklearn]'`` from a clone); ``import
fastxent`` does not import it.

Penalty convention and the mapping to ``LogisticRegression``
------------------------------------------------------------
The objective is the sample-weighted *mean* loss plus the L2 penalty on the coefficients
(the intercept is not penalized)::

    sum_i s_i * loss_i / sum_i s_i  +  alpha / 2 * ||coef_||_F^2
    with  s_i = sample_weight_i * class_weight[y_i]

which is scikit-learn's own internal objective (``LinearModelLoss``) with
``l2_reg_strength = 1 / (C * sum_i s_i)``.  Hence ``SoftmaxRegression(alpha=a)`` and
``LogisticRegression(C=c)`` have the same minimizer when ::

    c = 1 / (a * sum_i s_i)       (c = 1 / (a * n_samples) without weights)

Binary problems are fitted, like scikit-learn's, with one coefficient vector and the
sigmoid (binomial) loss, so ``coef_`` has shape ``(1, n_features)`` and the mapping above is
the same.  Multiplying all sample weights by a constant does not change the fit here (it
does change ``LogisticRegression``'s, whose effective ``C`` grows with the weights).
"""

from __future__ import annotations

import numpy as np
import scipy.special
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import _check_sample_weight, check_is_fitted

from fastxent import _glm
from fastxent._glm import FLOAT_DTYPES as _FLOAT_DTYPES

try:  # scikit-learn >= 1.6
    from sklearn.utils.validation import validate_data as _validate_data
except ImportError:  # pragma: no cover - older scikit-learn

    def _validate_data(estimator, *args, **kwargs):
        return estimator._validate_data(*args, **kwargs)


__all__ = ["SoftmaxRegression"]


def _is_dask_collection(x) -> bool:
    """True for dask arrays/dataframes, found without importing dask."""
    return type(x).__module__.startswith("dask")


class SoftmaxRegression(ClassifierMixin, BaseEstimator):
    """Multinomial logistic regression with an L2 penalty, fitted by L-BFGS on fastxent.

    Minimizes ``sum_i s_i * loss_i / sum_i s_i + alpha / 2 * ||coef_||^2`` where ``loss_i``
    is the (optionally label-smoothed) softmax cross-entropy of sample ``i`` and
    ``s_i = sample_weight_i * class_weight[y_i]``.  Two-class problems use the equivalent
    single-logit (sigmoid) form, like :class:`sklearn.linear_model.LogisticRegression`.

    With ``label_smoothing=0`` the fitted coefficients equal those of
    ``LogisticRegression(C=1 / (alpha * sum_i s_i))`` (``C = 1 / (alpha * n_samples)``
    without weights); see the module docstring.

    Parameters
    ----------
    alpha : float >= 0, default=1e-4
        Strength of the L2 penalty on ``coef_`` (not on ``intercept_``), in units of the
        mean loss.
    fit_intercept : bool, default=True
        Fit an unpenalized intercept.
    label_smoothing : float in [0, 1], default=0.0
        Train against ``onehot(y) * (1 - label_smoothing) + label_smoothing / n_classes``
        (for two classes, the sigmoid target ``y * (1 - e) + e / 2``, the same thing).
        scikit-learn's ``LogisticRegression`` has no such option.
    class_weight : dict, "balanced" or None, default=None
        Multiplies each sample's weight by the weight of its class (scikit-learn's
        meaning, not PyTorch's): ``"balanced"`` uses
        ``n_samples / (n_classes * bincount(y))`` (weighted counts when ``sample_weight``
        is given, as scikit-learn does); a dict maps class labels to weights, missing
        classes get 1.
    max_iter : int >= 1, default=1000
        Maximum number of L-BFGS iterations.
    tol : float >= 0, default=1e-6
        L-BFGS stops when the largest absolute entry of the gradient is below ``tol``
        (``gtol`` of :func:`scipy.optimize.minimize`).
    n_threads : int or None, default=None
        OpenMP threads of the loss kernel (None: OpenMP's default, -1: all cores).  The
        matrix products use NumPy's BLAS and its own threads.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        The sorted class labels (any label type).
    coef_ : ndarray of shape (1, n_features) or (n_classes, n_features)
        Coefficients; one row for binary problems (the positive class is ``classes_[1]``).
    intercept_ : ndarray of shape (1,) or (n_classes,)
        Intercepts (zeros when ``fit_intercept=False``).
    n_iter_ : ndarray of shape (1,)
        Number of L-BFGS iterations run.
    n_features_in_ : int
    feature_names_in_ : ndarray of str
        Only when ``X`` had string column names.

    Notes
    -----
    ``fit`` accepts dense arrays (float64, float32 kept as is) and CSR/CSC sparse matrices.
    When ``X`` is a dask array, ``fit`` delegates to ``fastxent.dask`` (distributed fit).

    Examples
    --------
    >>> from sklearn.datasets import load_iris
    >>> from fastxent.sklearn import SoftmaxRegression
    >>> X, y = load_iris(return_X_y=True)
    >>> clf = SoftmaxRegression(alpha=1e-3).fit(X, y)
    >>> clf.coef_.shape, clf.predict_proba(X[:2]).shape
    ((3, 4), (2, 3))
    >>> bool(clf.score(X, y) > 0.95)
    True
    """

    def __init__(
        self,
        alpha: float = 1e-4,
        fit_intercept: bool = True,
        label_smoothing: float = 0.0,
        class_weight: dict | str | None = None,
        max_iter: int = 1000,
        tol: float = 1e-6,
        n_threads: int | None = None,
    ):
        self.alpha = alpha
        self.fit_intercept = fit_intercept
        self.label_smoothing = label_smoothing
        self.class_weight = class_weight
        self.max_iter = max_iter
        self.tol = tol
        self.n_threads = n_threads

    # ------------------------------------------------------------------ tags
    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        return tags

    # ------------------------------------------------------------- objective
    def _effective_sample_weight(self, X, y_enc, sample_weight):
        """sample_weight x class_weight[y], normalized to sum to one (float64)."""
        n_classes = len(self.classes_)
        counts = weighted = np.bincount(y_enc, minlength=n_classes)
        sw = None
        if sample_weight is not None:
            sw = _check_sample_weight(sample_weight, X, dtype=np.float64)
            if np.any(sw < 0):
                raise ValueError("sample_weight must be non-negative")
            weighted = np.bincount(y_enc, weights=sw, minlength=n_classes)
        cw = _glm.class_weights(self.class_weight, self.classes_, counts, weighted)
        sw = _glm.effective_weights(y_enc, sw, cw)
        total = float(np.sum(sw))
        _glm.check_total(total)
        return sw / total

    def _loss_grad(self, params, X, y, sample_weight):
        """The full objective minimized by ``fit`` and its gradient wrt the flat ``params``.

        ``params`` is float64 of size ``n_out * (n_features + fit_intercept)`` laid out as
        C-order ``(n_out, n_features [+ 1])`` (``n_out = 1`` for binary problems; the last
        column holds the intercepts); ``y`` holds class indices; ``sample_weight`` already
        includes the class weights and is normalized to sum to one.  The value is
        ``sum_i sample_weight_i * loss_i + alpha / 2 * ||coef||^2``
        (:meth:`fastxent._glm.GLM.loss_grad`).
        """
        return _glm.GLM.from_estimator(self).loss_grad(params, X, y, sample_weight)

    # ------------------------------------------------------------------- fit
    def fit(self, X, y, sample_weight=None):
        """Fit the model.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Training data; float32 is kept as float32, other types become float64.  A dask
            array (chunked along the rows) is fitted data-parallel by ``fastxent.dask``:
            each L-BFGS step evaluates the objective block by block where the blocks are,
            and ``y`` and ``sample_weight`` may then be dask arrays too.
        y : array-like of shape (n_samples,)
            Class labels of any type (at least two distinct values).
        sample_weight : array-like of shape (n_samples,), optional
            Non-negative weights; each sample's loss is weighted by
            ``sample_weight_i * class_weight[y_i]`` and the total is divided by the sum of
            these weights.

        Returns
        -------
        self : SoftmaxRegression

        Raises
        ------
        MemoryError
            With a Dask ``X`` on a ``distributed`` cluster, when a block's task killed its
            workers more than ``distributed.scheduler.allowed-failures`` times
            (``distributed.KilledWorker``, kept as ``__cause__``), most likely a block too
            large for a worker's memory limit: ``fastxent.dask.WorkerMemoryError``,
            whose message names the block's bytes, the limit and the rows per block to
            rechunk ``X`` to.  A worker lost fewer times costs only time: its blocks are
            recomputed and the coefficients equal the undisturbed fit's (to 1e-10).
        """
        if _is_dask_collection(X):
            from fastxent.dask import _fit_softmax_regression

            return _fit_softmax_regression(self, X, y, sample_weight)
        glm = _glm.check_params(self)
        X, y = _validate_data(
            self, X, y, accept_sparse=["csr", "csc"], dtype=_FLOAT_DTYPES, order="C"
        )
        check_classification_targets(y)
        self.classes_, y_enc = np.unique(y, return_inverse=True)
        _glm.check_classes(self.classes_)
        y_enc = y_enc.reshape(-1).astype(np.intp)
        sw = self._effective_sample_weight(X, y_enc, sample_weight)
        if hasattr(X, "tocsr"):
            X = X.tocsr()
        n_classes = len(self.classes_)
        n_out = 1 if n_classes == 2 else n_classes
        self.coef_, self.intercept_, self.n_iter_ = glm.minimize(
            self._loss_grad, (X, y_enc, sw), X.shape[1], n_out, stacklevel=2
        )
        return self

    # ------------------------------------------------------------ prediction
    def decision_function(self, X):
        """Logits ``X @ coef_.T + intercept_``.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)

        Returns
        -------
        ndarray of shape (n_samples,) for binary problems (logit of ``classes_[1]``),
        else (n_samples, n_classes)
        """
        check_is_fitted(self)
        X = _validate_data(self, X, accept_sparse=["csr", "csc"], dtype=_FLOAT_DTYPES,
                           reset=False)
        scores = np.asarray(X @ self.coef_.T) + self.intercept_
        return scores.ravel() if scores.shape[1] == 1 else scores

    def predict(self, X):
        """Most probable class label for each sample.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)

        Returns
        -------
        ndarray of shape (n_samples,) with values from ``classes_``
        """
        scores = self.decision_function(X)
        idx = (scores > 0).astype(np.intp) if scores.ndim == 1 else scores.argmax(axis=1)
        return self.classes_[idx]

    def predict_log_proba(self, X):
        """Log of the class probabilities (log-softmax of the logits).

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)

        Returns
        -------
        ndarray of shape (n_samples, n_classes), columns in the order of ``classes_``
        """
        scores = self.decision_function(X)
        if scores.ndim == 1:
            return np.column_stack(
                [scipy.special.log_expit(-scores), scipy.special.log_expit(scores)]
            )
        return scipy.special.log_softmax(scores, axis=1)

    def predict_proba(self, X):
        """Class probabilities (softmax of the logits; sigmoid for binary problems).

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)

        Returns
        -------
        ndarray of shape (n_samples, n_classes), rows summing to one, columns in the
        order of ``classes_``
        """
        scores = self.decision_function(X)
        if scores.ndim == 1:
            p1 = scipy.special.expit(scores)
            return np.column_stack([scipy.special.expit(-scores), p1])
        return scipy.special.softmax(scores, axis=1)


def __getattr__(name):
    # log_loss lives in fastxent.metrics (it needs no estimator); say so instead of a bare
    # AttributeError for the natural guess.
    if name in ("log_loss", "log_loss_scorer"):
        raise AttributeError(
            f"module {__name__!r} has no attribute {name!r}; it is fastxent.metrics.{name} "
            f"(from fastxent.metrics import {name})"
        )
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
