"""A scikit-learn estimator on fastxent's kernels: multinomial logistic regression.

:class:`SoftmaxRegression` minimizes the L2-penalized softmax cross-entropy with SciPy's
L-BFGS-B, taking the loss and the gradient with respect to the logits from one fused kernel
call (``SparseCategoricalCrossentropy.loss_and_grad``) and the gradient with respect to the
weights by the chain rule (``G.T @ X``).

This module needs scikit-learn and SciPy (``pip install fastxent[sklearn]``); ``import
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

import inspect
import numbers
import warnings

import numpy as np
import scipy.optimize
import scipy.special
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import _check_sample_weight, check_is_fitted

import fastxent as fx
from fastxent._config import resolve_n_threads

try:  # scikit-learn >= 1.6
    from sklearn.utils.validation import validate_data as _validate_data
except ImportError:  # pragma: no cover - older scikit-learn

    def _validate_data(estimator, *args, **kwargs):
        return estimator._validate_data(*args, **kwargs)


__all__ = ["SoftmaxRegression"]

_FLOAT_DTYPES = [np.float64, np.float32]


def _is_dask_collection(x) -> bool:
    """True for dask arrays/dataframes, found without importing dask."""
    return type(x).__module__.startswith("dask")


def _check_real(value, name: str, *, low=None, low_open=False, high=None, high_open=False):
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    bad = (
        not np.isfinite(value)
        or (low is not None and (value <= low if low_open else value < low))
        or (high is not None and (value >= high if high_open else value > high))
    )
    if bad:
        lo = "" if low is None else ("(" if low_open else "[") + f"{low}"
        hi = "" if high is None else f"{high}" + (")" if high_open else "]")
        rng = f"{lo}, {hi}" if hi else (f">{'' if low_open else '='} {low}")
        raise ValueError(f"{name} must be a finite number {rng}, got {value!r}")
    return value


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

    # ------------------------------------------------------------ validation
    def _check_params(self):
        _check_real(self.alpha, "alpha", low=0.0)
        if not isinstance(self.fit_intercept, bool | np.bool_):
            raise TypeError(f"fit_intercept must be a bool, got {self.fit_intercept!r}")
        _check_real(self.label_smoothing, "label_smoothing", low=0.0, high=1.0)
        cw = self.class_weight
        if not (cw is None or isinstance(cw, dict) or (isinstance(cw, str) and cw == "balanced")):
            raise ValueError(f"class_weight must be None, 'balanced' or a dict, got {cw!r}")
        if isinstance(self.max_iter, bool | np.bool_) or not isinstance(
            self.max_iter, numbers.Integral
        ):
            raise TypeError(f"max_iter must be an int, got {self.max_iter!r}")
        if self.max_iter < 1:
            raise ValueError(f"max_iter must be >= 1, got {self.max_iter}")
        _check_real(self.tol, "tol", low=0.0)
        resolve_n_threads(self.n_threads)  # TypeError/ValueError naming n_threads

    def _effective_sample_weight(self, X, y, y_enc, sample_weight):
        """sample_weight x class_weight[y], normalized to sum to one (float64)."""
        n = X.shape[0]
        n_classes = len(self.classes_)
        sw = None
        if sample_weight is not None:
            sw = _check_sample_weight(sample_weight, X, dtype=np.float64)
            if np.any(sw < 0):
                raise ValueError("sample_weight must be non-negative")
            present = np.bincount(y_enc, weights=sw, minlength=n_classes) > 0
            if np.count_nonzero(present) < 2:
                raise ValueError(
                    "SoftmaxRegression needs samples of at least 2 classes with positive "
                    f"sample_weight, got positive weight only for class(es) "
                    f"{self.classes_[present].tolist()}"
                )
        if self.class_weight is not None:
            kwargs = {}
            if sw is not None and "sample_weight" in inspect.signature(
                compute_class_weight
            ).parameters:
                kwargs["sample_weight"] = sw
            with np.errstate(divide="ignore", invalid="ignore"):
                cw = compute_class_weight(
                    self.class_weight, classes=self.classes_, y=y, **kwargs
                )
            cw = np.array(cw, dtype=np.float64)
            if sw is not None:
                # "balanced" gives inf to a class whose samples all weigh zero: they stay zero
                cw[~present & ~np.isfinite(cw)] = 0.0
            if np.any(cw < 0) or not np.all(np.isfinite(cw)):
                raise ValueError(
                    f"class_weight must be finite and non-negative, got {self.class_weight!r}"
                )
            sw = cw[y_enc] if sw is None else sw * cw[y_enc]
        if sw is None:
            return np.full(n, 1.0 / n)
        total = float(np.sum(sw))
        if not total > 0.0:
            raise ValueError(
                "sample_weight (times class_weight) sums to zero: nothing to fit"
            )
        return sw / total

    # ------------------------------------------------------------- objective
    def _make_loss(self, binary: bool):
        if binary:
            return fx.BinaryCrossentropy(
                from_logits=True, label_smoothing=self.label_smoothing, reduction="sum",
                n_threads=self.n_threads,
            )
        return fx.SparseCategoricalCrossentropy(
            from_logits=True, label_smoothing=self.label_smoothing, reduction="sum",
            n_threads=self.n_threads,
        )

    def _unpack(self, params, n_features):
        """Flat parameters -> (coef (n_out, n_features), intercept (n_out,) or None)."""
        width = n_features + int(self.fit_intercept)
        W = params.reshape(-1, width)
        return W[:, :n_features], (W[:, n_features] if self.fit_intercept else None)

    def _data_loss_grad(self, params, X, y, sample_weight):
        """Data term ``sum_i sample_weight_i * loss_i`` and its gradient wrt ``params``.

        Additive over row blocks of ``(X, y, sample_weight)``, so a distributed fit can sum
        it over chunks.  ``y`` holds class indices in ``[0, n_out)`` (0/1 when ``params``
        has one output row, the binary case); ``sample_weight`` is float64 of shape
        ``(n_samples,)``.  Returns ``(float, ndarray like params)``.
        """
        n_features = X.shape[1]
        coef, intercept = self._unpack(params, n_features)
        binary = coef.shape[0] == 1
        dtype = X.dtype if X.dtype in _FLOAT_DTYPES else np.float64
        Z = X @ coef.T.astype(dtype, copy=False)
        Z = np.asarray(Z, dtype=dtype)
        if intercept is not None:
            Z += intercept.astype(dtype, copy=False)
        Z = np.ascontiguousarray(Z)
        loss_fn = self._make_loss(binary)
        target = np.asarray(y).reshape(-1, 1).astype(dtype) if binary else y
        loss, G = loss_fn.loss_and_grad(target, Z, sample_weight)
        grad = np.empty((coef.shape[0], params.size // coef.shape[0]))
        grad[:, :n_features] = np.asarray(X.T @ G).T
        if intercept is not None:
            grad[:, n_features] = G.sum(axis=0, dtype=np.float64)
        return float(loss), grad.ravel()

    def _penalty_grad(self, params, n_features):
        """``alpha / 2 * ||coef||^2`` and its gradient wrt ``params`` (zero for intercepts)."""
        coef, _ = self._unpack(params, n_features)
        alpha = float(self.alpha)
        grad = np.zeros((coef.shape[0], params.size // coef.shape[0]))
        grad[:, :n_features] = alpha * coef
        return 0.5 * alpha * float(np.vdot(coef, coef)), grad.ravel()

    def _loss_grad(self, params, X, y, sample_weight):
        """The full objective minimized by ``fit`` and its gradient wrt the flat ``params``.

        ``params`` is float64 of size ``n_out * (n_features + fit_intercept)`` laid out as
        C-order ``(n_out, n_features [+ 1])`` (``n_out = 1`` for binary problems; the last
        column holds the intercepts); ``y`` holds class indices; ``sample_weight`` already
        includes the class weights and is normalized to sum to one.  The value is
        ``sum_i sample_weight_i * loss_i + alpha / 2 * ||coef||^2``.

        ``fastxent.dask`` passes :meth:`_run_lbfgs` its own objective, which sums the data
        term over the chunks of a dask array.
        """
        n_features = X.shape[1]
        loss, grad = self._data_loss_grad(params, X, y, sample_weight)
        pen, pgrad = self._penalty_grad(params, n_features)
        return loss + pen, grad + pgrad

    def _run_lbfgs(self, X, y, sample_weight, n_features, n_out, loss_grad=None):
        """Minimize ``loss_grad(params, X, y, sample_weight)`` (default :meth:`_loss_grad`)
        from zeros and set coef_, intercept_, n_iter_."""
        x0 = np.zeros(n_out * (n_features + int(self.fit_intercept)))
        res = scipy.optimize.minimize(
            self._loss_grad if loss_grad is None else loss_grad,
            x0,
            args=(X, y, sample_weight),
            method="L-BFGS-B",
            jac=True,
            options={
                "maxiter": int(self.max_iter),
                "maxls": 50,
                "gtol": float(self.tol),
                "ftol": 64 * np.finfo(float).eps,
            },
        )
        if res.status != 0:
            warnings.warn(
                f"SoftmaxRegression: L-BFGS did not converge ({res.message}) after "
                f"{res.nit} iterations; increase max_iter, loosen tol or scale the data.",
                ConvergenceWarning,
                stacklevel=3,
            )
        coef, intercept = self._unpack(res.x, n_features)
        self.coef_ = np.array(coef)
        self.intercept_ = (
            np.array(intercept) if intercept is not None else np.zeros(n_out)
        )
        self.n_iter_ = np.array([res.nit], dtype=np.int32)
        return self

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
        """
        if _is_dask_collection(X):
            from fastxent.dask import _fit_softmax_regression

            return _fit_softmax_regression(self, X, y, sample_weight)
        self._check_params()
        X, y = _validate_data(
            self, X, y, accept_sparse=["csr", "csc"], dtype=_FLOAT_DTYPES, order="C"
        )
        check_classification_targets(y)
        self.classes_, y_enc = np.unique(y, return_inverse=True)
        n_classes = len(self.classes_)
        if n_classes < 2:
            raise ValueError(
                "SoftmaxRegression needs samples of at least 2 classes in the data, but "
                f"the data contains only one class: {self.classes_[0]!r}"
            )
        sw = self._effective_sample_weight(X, y, y_enc, sample_weight)
        if hasattr(X, "tocsr"):
            X = X.tocsr()
        y_enc = y_enc.reshape(-1).astype(np.intp)
        n_out = 1 if n_classes == 2 else n_classes
        return self._run_lbfgs(X, y_enc, sw, X.shape[1], n_out)

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
