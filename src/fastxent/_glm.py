"""The multinomial GLM objective of :class:`fastxent.sklearn.SoftmaxRegression`.

One objective serves both fits: the in-memory ``SoftmaxRegression.fit``
(:mod:`fastxent.sklearn`) and the data-parallel fit of a Dask ``X``
(:mod:`fastxent.dask`).  Each fit validates its inputs, finds the classes and counts them its
own way (``np.unique`` in memory, reductions over blocks on Dask) and then calls this module
for everything else:

* :func:`check_params`: the estimator's hyperparameters, checked once and returned as a
  :class:`GLM` (a small frozen object that a Dask task can carry to the workers);
* :func:`check_classes`, :func:`class_weights`, :func:`effective_weights` and
  :func:`check_total`: the classes, scikit-learn's class weights (from the per-class counts,
  so that a distributed fit needs no pass over ``y`` for them), each sample's weight
  ``s_i = sample_weight_i * class_weight[y_i]`` and the total that normalizes them;
* :meth:`GLM.data_loss_grad`: the data term ``sum_i s_i * loss_i`` of a block of rows and its
  gradient with respect to the parameters, through fastxent's public loss classes
  (``loss_and_grad`` with ``reduction="sum"``, then ``G.T @ X``); it is additive over row
  blocks, so a distributed fit sums it over the blocks of ``X``;
* :meth:`GLM.penalty_grad`: the L2 penalty ``alpha / 2 * ||coef||_F^2`` and its gradient;
* :meth:`GLM.minimize`: SciPy's L-BFGS-B from zeros on an objective given as a function.

Parameters are a flat float64 vector laid out as the C-order matrix
``(n_out, n_features + fit_intercept)``: one row per output (``n_out = 1`` for two classes,
the sigmoid form, else ``n_classes``), the intercept in the last column.

This module imports scikit-learn and SciPy; ``import fastxent`` does not import it.
"""

from __future__ import annotations

import inspect
import numbers
import warnings
from dataclasses import dataclass

import numpy as np
import scipy.optimize
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.class_weight import compute_class_weight

import fastxent as fx
from fastxent._config import resolve_n_threads

__all__ = [
    "FLOAT_DTYPES",
    "GLM",
    "check_params",
    "check_classes",
    "class_weights",
    "effective_weights",
    "check_total",
]

#: The dtypes ``X`` keeps; any other becomes float64.
FLOAT_DTYPES = [np.float64, np.float32]


# ------------------------------------------------------------------------- parameters


def check_real(value, name: str, *, low=None, low_open=False, high=None, high_open=False):
    """``value`` as a float, checked to be a finite real number in the given range.

    Parameters
    ----------
    value : object
        The value to check (``bool`` is rejected).
    name : str
        The parameter's name, for the error messages.
    low, high : float or None
        Bounds of the range (None: unbounded).
    low_open, high_open : bool
        Whether the bound itself is excluded.

    Returns
    -------
    float

    Raises
    ------
    TypeError
        ``value`` is not a real number.
    ValueError
        ``value`` is not finite or outside the range.
    """
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


def check_params(estimator) -> GLM:
    """Check a ``SoftmaxRegression``'s hyperparameters and return its :class:`GLM`.

    Parameters
    ----------
    estimator : SoftmaxRegression
        Read for ``alpha``, ``fit_intercept``, ``label_smoothing``, ``class_weight``,
        ``max_iter``, ``tol`` and ``n_threads``; not modified.

    Returns
    -------
    GLM

    Raises
    ------
    TypeError, ValueError
        Naming the first invalid parameter.
    """
    _check_params(estimator)
    return GLM.from_estimator(estimator)


def _check_params(est) -> None:
    check_real(est.alpha, "alpha", low=0.0)
    if not isinstance(est.fit_intercept, bool | np.bool_):
        raise TypeError(f"fit_intercept must be a bool, got {est.fit_intercept!r}")
    check_real(est.label_smoothing, "label_smoothing", low=0.0, high=1.0)
    cw = est.class_weight
    if not (cw is None or isinstance(cw, dict) or (isinstance(cw, str) and cw == "balanced")):
        raise ValueError(f"class_weight must be None, 'balanced' or a dict, got {cw!r}")
    if isinstance(est.max_iter, bool | np.bool_) or not isinstance(est.max_iter, numbers.Integral):
        raise TypeError(f"max_iter must be an int, got {est.max_iter!r}")
    if est.max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {est.max_iter}")
    check_real(est.tol, "tol", low=0.0)
    resolve_n_threads(est.n_threads)  # TypeError/ValueError naming n_threads


# ---------------------------------------------------------------- classes and weights


def check_classes(classes) -> None:
    """Raise ``ValueError`` unless there are at least two classes.

    Parameters
    ----------
    classes : ndarray of shape (n_classes,)
        The distinct labels found in ``y``.
    """
    if len(classes) < 2:
        raise ValueError(
            "SoftmaxRegression needs samples of at least 2 classes in the data, but "
            f"the data contains only one class: {classes[0]!r}"
        )


def class_weights(class_weight, classes, counts, weighted_counts) -> np.ndarray | None:
    """scikit-learn's class weights, computed from the per-class counts alone.

    Gives what ``compute_class_weight(class_weight, classes=classes, y=y,
    sample_weight=sample_weight)`` gives for the ``y`` and ``sample_weight`` behind the
    counts, without ``y`` itself: the classes, each once, weighted by their weighted counts,
    are ``y``'s weighted bincount.  A class whose samples all weigh zero keeps weight 0 where
    ``"balanced"`` would give it infinity.

    Parameters
    ----------
    class_weight : dict, "balanced" or None
        The estimator's ``class_weight``.
    classes : ndarray of shape (n_classes,)
        The sorted class labels.
    counts : array-like of shape (n_classes,)
        The number of samples of each class (used by scikit-learn < 1.6 only, whose
        ``"balanced"`` ignores sample weights).
    weighted_counts : array-like of shape (n_classes,)
        The sum of the sample weights of each class (``counts`` without sample weights).

    Returns
    -------
    ndarray of shape (n_classes,), float64, or None
        None when ``class_weight`` is None.

    Raises
    ------
    ValueError
        Fewer than two classes have positive weight, or the class weights are negative or
        not finite (or a dict names labels that are not classes, scikit-learn's error).
    """
    weighted_counts = np.asarray(weighted_counts, dtype=np.float64)
    present = weighted_counts > 0
    if np.count_nonzero(present) < 2:
        raise ValueError(
            "SoftmaxRegression needs samples of at least 2 classes with positive "
            f"sample_weight, got positive weight only for class(es) "
            f"{classes[present].tolist()}"
        )
    if class_weight is None:
        return None
    with np.errstate(divide="ignore", invalid="ignore"):
        if "sample_weight" in inspect.signature(compute_class_weight).parameters:
            cw = compute_class_weight(class_weight, classes=classes, y=classes,
                                      sample_weight=weighted_counts)
        elif class_weight == "balanced":  # pragma: no cover - scikit-learn < 1.6
            cw = np.sum(counts) / (len(classes) * np.asarray(counts, dtype=np.float64))
        else:  # pragma: no cover - scikit-learn < 1.6
            cw = compute_class_weight(class_weight, classes=classes, y=classes)
    cw = np.array(cw, dtype=np.float64)
    cw[~present & ~np.isfinite(cw)] = 0.0
    if np.any(cw < 0) or not np.all(np.isfinite(cw)):
        raise ValueError(f"class_weight must be finite and non-negative, got {class_weight!r}")
    return cw


def effective_weights(y, sample_weight, class_weight) -> np.ndarray:
    """Each sample's weight in the objective: ``sample_weight_i * class_weight[y_i]``.

    Parameters
    ----------
    y : ndarray of int of shape (n_samples,)
        Class indices into ``class_weight``.
    sample_weight : array-like of shape (n_samples,) or None
        None: all ones.
    class_weight : ndarray of shape (n_classes,) or None
        From :func:`class_weights`; None: all ones.

    Returns
    -------
    ndarray of float64 of shape (n_samples,), not yet normalized
    """
    w = None if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    if class_weight is not None:
        w = class_weight[y] if w is None else w * class_weight[y]
    return np.ones(len(y)) if w is None else w


def check_total(total: float) -> None:
    """Raise ``ValueError`` unless the total effective weight is positive."""
    if not total > 0.0:
        raise ValueError("sample_weight (times class_weight) sums to zero: nothing to fit")


# -------------------------------------------------------------------------- objective


@dataclass(frozen=True)
class GLM:
    """The penalized multinomial (or, for two classes, binomial) objective and its solver.

    The objective of ``params`` is ::

        sum_i s_i * loss_i  +  alpha / 2 * ||coef||_F^2

    with ``s_i`` the effective weights normalized to sum to one (:func:`effective_weights`
    divided by their total) and ``loss_i`` the (label-smoothed) softmax cross-entropy of the
    logits ``X_i @ coef.T + intercept``; its first term is :meth:`data_loss_grad`, summed
    over row blocks, and the second :meth:`penalty_grad`.

    Parameters
    ----------
    alpha : float
        L2 penalty strength (the intercept is not penalized).
    fit_intercept : bool
        Whether ``params`` holds an intercept column.
    label_smoothing : float
        Passed to the loss classes.
    n_threads : int or None
        OpenMP threads of the loss kernel.
    max_iter : int
        L-BFGS iterations at most.
    tol : float
        L-BFGS's ``gtol``.
    """

    alpha: float
    fit_intercept: bool
    label_smoothing: float
    n_threads: int | None
    max_iter: int
    tol: float

    @classmethod
    def from_estimator(cls, estimator) -> GLM:
        """The GLM of a ``SoftmaxRegression``'s hyperparameters (assumed valid: see
        :func:`check_params`)."""
        return cls(
            alpha=float(estimator.alpha),
            fit_intercept=bool(estimator.fit_intercept),
            label_smoothing=float(estimator.label_smoothing),
            n_threads=estimator.n_threads,
            max_iter=int(estimator.max_iter),
            tol=float(estimator.tol),
        )

    def n_params(self, n_features: int, n_out: int) -> int:
        """Size of the flat parameter vector."""
        return n_out * (n_features + int(self.fit_intercept))

    def unpack(self, params, n_features: int):
        """Flat ``params`` -> ``(coef (n_out, n_features), intercept (n_out,) or None)``,
        views of ``params``."""
        width = n_features + int(self.fit_intercept)
        W = params.reshape(-1, width)
        return W[:, :n_features], (W[:, n_features] if self.fit_intercept else None)

    def loss_fn(self, binary: bool):
        """The loss object of the data term: from logits, summed over samples."""
        cls = fx.BinaryCrossentropy if binary else fx.SparseCategoricalCrossentropy
        return cls(from_logits=True, label_smoothing=self.label_smoothing, reduction="sum",
                   n_threads=self.n_threads)

    def data_loss_grad(self, params, X, y, sample_weight):
        """The data term ``sum_i sample_weight_i * loss_i`` of a block of rows and its gradient.

        Additive over row blocks of ``(X, y, sample_weight)``.

        Parameters
        ----------
        params : ndarray of float64
            Flat parameters (see the module docstring); one output row means the binary
            (sigmoid) form.
        X : ndarray or scipy sparse matrix of shape (n_rows, n_features)
            float32 is kept (the logits are then float32), other dtypes compute in float64.
        y : ndarray of int of shape (n_rows,)
            Class indices in ``[0, n_out)`` (0/1 in the binary form).
        sample_weight : ndarray of float64 of shape (n_rows,)
            The rows' effective weights, already normalized.

        Returns
        -------
        loss : float
        grad : ndarray of float64, shape of ``params``
        """
        n_features = X.shape[1]
        coef, intercept = self.unpack(params, n_features)
        binary = coef.shape[0] == 1
        dtype = X.dtype if X.dtype in FLOAT_DTYPES else np.float64
        Z = X @ coef.T.astype(dtype, copy=False)
        Z = np.asarray(Z, dtype=dtype)
        if intercept is not None:
            Z += intercept.astype(dtype, copy=False)
        Z = np.ascontiguousarray(Z)
        target = np.asarray(y).reshape(-1, 1).astype(dtype) if binary else y
        loss, G = self.loss_fn(binary).loss_and_grad(target, Z, sample_weight)
        grad = np.empty((coef.shape[0], params.size // coef.shape[0]))
        grad[:, :n_features] = np.asarray(X.T @ G).T
        if intercept is not None:
            grad[:, n_features] = G.sum(axis=0, dtype=np.float64)
        return float(loss), grad.ravel()

    def penalty_grad(self, params, n_features: int):
        """``alpha / 2 * ||coef||^2`` and its gradient with respect to ``params`` (zero for
        the intercepts).

        Returns
        -------
        penalty : float
        grad : ndarray of float64, shape of ``params``
        """
        coef, _ = self.unpack(params, n_features)
        grad = np.zeros((coef.shape[0], params.size // coef.shape[0]))
        grad[:, :n_features] = self.alpha * coef
        return 0.5 * self.alpha * float(np.vdot(coef, coef)), grad.ravel()

    def loss_grad(self, params, X, y, sample_weight):
        """The whole objective of in-memory data, :meth:`data_loss_grad` plus
        :meth:`penalty_grad`, and its gradient."""
        loss, grad = self.data_loss_grad(params, X, y, sample_weight)
        pen, pgrad = self.penalty_grad(params, X.shape[1])
        return loss + pen, grad + pgrad

    def minimize(self, fun, args, n_features: int, n_out: int, *, stacklevel: int = 2):
        """Minimize ``fun(params, *args) -> (value, gradient)`` by L-BFGS-B from zeros.

        Warns with ``ConvergenceWarning`` (at ``stacklevel`` from this call) when L-BFGS
        stops before converging.

        Parameters
        ----------
        fun : callable
            The objective and its gradient.
        args : tuple
            Passed to ``fun`` after the parameters.
        n_features, n_out : int
            The shape of ``coef``.
        stacklevel : int
            Of the warning, counted from the caller of this method.

        Returns
        -------
        coef : ndarray of shape (n_out, n_features)
        intercept : ndarray of shape (n_out,)
            Zeros when ``fit_intercept`` is False.
        n_iter : ndarray of int32 of shape (1,)
            The number of L-BFGS iterations run.
        """
        res = scipy.optimize.minimize(
            fun,
            np.zeros(self.n_params(n_features, n_out)),
            args=args,
            method="L-BFGS-B",
            jac=True,
            options={
                "maxiter": self.max_iter,
                "maxls": 50,
                "gtol": self.tol,
                "ftol": 64 * np.finfo(float).eps,
            },
        )
        if res.status != 0:
            warnings.warn(
                f"SoftmaxRegression: L-BFGS did not converge ({res.message}) after "
                f"{res.nit} iterations; increase max_iter, loosen tol or scale the data.",
                ConvergenceWarning,
                stacklevel=stacklevel + 1,
            )
        coef, intercept = self.unpack(res.x, n_features)
        intercept = np.array(intercept) if intercept is not None else np.zeros(n_out)
        return np.array(coef), intercept, np.array([res.nit], dtype=np.int32)
