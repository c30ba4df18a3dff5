"""fastxent.sklearn.SoftmaxRegression.

Oracles: scikit-learn's LogisticRegression (same optimum under the documented C <-> alpha
mapping), scikit-learn's estimator checks, finite differences of the objective, and the
first-order optimality condition computed with plain NumPy (for label smoothing, which
scikit-learn lacks).
"""

import pickle
import sys
import types
import warnings

import numpy as np
import pytest

pytest.importorskip("sklearn")
pytest.importorskip("scipy")

from scipy import sparse  # noqa: E402
from sklearn.datasets import load_breast_cancer, load_digits, load_iris  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.model_selection import GridSearchCV, cross_val_score  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402
from util import central_difference  # noqa: E402

from fastxent.sklearn import SoftmaxRegression  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _single_threaded_blas():
    """Small matrices: BLAS threads only add overhead (and noise on a shared machine)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, user_api="blas"):
        yield


@pytest.fixture(scope="module")
def iris():
    return load_iris(return_X_y=True)


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return StandardScaler().fit_transform(X), y


@pytest.fixture(scope="module")
def cancer():
    X, y = load_breast_cancer(return_X_y=True)
    return StandardScaler().fit_transform(X), y


TIGHT = dict(tol=1e-10, max_iter=10000)


def _logreg(C, **kw):
    return LogisticRegression(C=C, solver="lbfgs", **TIGHT, **kw)


# ----------------------------------------------------------------- estimator checks


@parametrize_with_checks(
    [
        SoftmaxRegression(n_threads=1),
        SoftmaxRegression(alpha=1e-3, label_smoothing=0.1, class_weight="balanced", n_threads=1),
    ]
)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


# ---------------------------------------------------- agreement with LogisticRegression


@pytest.mark.parametrize("C", [0.05, 1.0])
@pytest.mark.parametrize("fit_intercept", [True, False])
def test_matches_logistic_regression_iris(iris, C, fit_intercept):
    X, y = iris
    ref = _logreg(C, fit_intercept=fit_intercept).fit(X, y)
    est = SoftmaxRegression(alpha=1.0 / (C * len(y)), fit_intercept=fit_intercept,
                            n_threads=1, **TIGHT).fit(X, y)
    assert est.coef_.shape == ref.coef_.shape == (3, 4)
    np.testing.assert_allclose(est.coef_, ref.coef_, atol=1e-4)
    np.testing.assert_allclose(est.intercept_, ref.intercept_, atol=1e-4)
    np.testing.assert_allclose(est.predict_proba(X), ref.predict_proba(X), atol=1e-5)
    np.testing.assert_array_equal(est.predict(X), ref.predict(X))


@pytest.mark.parametrize("C", [0.01, 0.5])
def test_matches_logistic_regression_digits(digits, C):
    X, y = digits
    ref = _logreg(C).fit(X, y)
    est = SoftmaxRegression(alpha=1.0 / (C * len(y)), n_threads=1, **TIGHT).fit(X, y)
    assert est.coef_.shape == (10, 64)
    np.testing.assert_allclose(est.coef_, ref.coef_, atol=1e-4)
    np.testing.assert_allclose(est.intercept_, ref.intercept_, atol=1e-4)
    np.testing.assert_allclose(est.decision_function(X), ref.decision_function(X), atol=1e-3)


def test_matches_logistic_regression_binary(cancer, iris):
    X, y = cancer
    C = 0.3
    ref = _logreg(C).fit(X, y)
    est = SoftmaxRegression(alpha=1.0 / (C * len(y)), n_threads=1, **TIGHT).fit(X, y)
    assert est.coef_.shape == ref.coef_.shape == (1, 30)
    assert est.intercept_.shape == (1,)
    np.testing.assert_allclose(est.coef_, ref.coef_, atol=1e-4)
    np.testing.assert_allclose(est.intercept_, ref.intercept_, atol=1e-4)
    d = est.decision_function(X)
    assert d.shape == (len(y),)
    np.testing.assert_allclose(d, ref.decision_function(X), atol=1e-3)
    np.testing.assert_allclose(est.predict_proba(X), ref.predict_proba(X), atol=1e-6)

    # string labels: the positive class is classes_[1], as in scikit-learn
    Xi, yi = iris
    keep = yi > 0
    labels = np.array(["setosa", "versicolor", "virginica"])[yi[keep]]
    ref = _logreg(1.0).fit(Xi[keep], labels)
    est = SoftmaxRegression(alpha=1.0 / keep.sum(), n_threads=1, **TIGHT).fit(Xi[keep], labels)
    assert list(est.classes_) == ["versicolor", "virginica"]
    np.testing.assert_allclose(est.coef_, ref.coef_, atol=1e-4)
    np.testing.assert_array_equal(est.predict(Xi[keep]), ref.predict(Xi[keep]))


@pytest.mark.parametrize("class_weight", [None, "balanced", {0: 3.0, 2: 0.5}])
def test_matches_logistic_regression_with_weights(iris, rng, class_weight):
    X, y = iris
    X, y = X[20:], y[20:]  # unbalanced: 30 / 50 / 50
    sw = rng.uniform(0.1, 3.0, size=len(y))
    est = SoftmaxRegression(alpha=2e-3, class_weight=class_weight, n_threads=1, **TIGHT)
    est.fit(X, y, sample_weight=sw)
    # C = 1 / (alpha * sum_i sample_weight_i * class_weight[y_i])
    if class_weight is None:
        s = sw
    elif class_weight == "balanced":
        counts = np.bincount(y, weights=sw)
        s = sw * (sw.sum() / (3 * counts))[y]
    else:
        s = sw * np.array([3.0, 1.0, 0.5])[y]
    # the optimality condition: the fit zeros the gradient of the documented objective (plain
    # NumPy, per-sample weights s normalized to sum 1); 1e-7 is 2.5x what the fit leaves here,
    # and a shift of 1e-4 in one intercept alone exceeds it
    params = np.c_[est.coef_, est.intercept_].ravel()
    args = (X, y, s / s.sum(), 2e-3, 3, True, 0.0)
    fd = central_difference(lambda p: _np_objective(p, *args), params)
    assert np.max(np.abs(fd)) < 1e-7
    # both solvers stop short of the optimum on this ill-conditioned problem (intercepts near
    # 12): with scikit-learn 1.9.1 its intercepts 6e-5 from a tighter solution, ours 5e-5,
    # and the two fits 1.1e-4 apart
    ref = _logreg(1.0 / (2e-3 * s.sum()), class_weight=class_weight).fit(X, y, sample_weight=sw)
    np.testing.assert_allclose(est.coef_, ref.coef_, atol=2e-4)
    np.testing.assert_allclose(est.intercept_, ref.intercept_, atol=2e-4)
    # the fit is invariant to scaling all weights (LogisticRegression's is not)
    est2 = SoftmaxRegression(alpha=2e-3, class_weight=class_weight, n_threads=1, **TIGHT)
    est2.fit(X, y, sample_weight=10 * sw)
    np.testing.assert_allclose(est2.coef_, est.coef_, atol=1e-4)


# ------------------------------------------------------------ objective and smoothing


def _np_objective(params, X, y, sw, alpha, n_out, fit_intercept, smoothing):
    """The documented objective in plain NumPy (float64)."""
    width = X.shape[1] + int(fit_intercept)
    W = params.reshape(n_out, width)
    Z = X @ W[:, : X.shape[1]].T + (W[:, -1] if fit_intercept else 0.0)
    if n_out == 1:  # sigmoid form, target smoothed to z (1 - e) + e / 2
        z = y * (1 - smoothing) + smoothing / 2
        per = np.logaddexp(0, Z[:, 0]) - z * Z[:, 0]
    else:
        t = np.eye(n_out)[y] * (1 - smoothing) + smoothing / n_out
        lse = np.logaddexp.reduce(Z, axis=1)
        per = lse - (t * Z).sum(axis=1)
    return float(per @ sw) + 0.5 * alpha * float(np.sum(W[:, : X.shape[1]] ** 2))


@pytest.mark.parametrize("n_out", [1, 3])
@pytest.mark.parametrize("fit_intercept", [True, False])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_loss_grad_finite_differences(rng, n_out, fit_intercept, smoothing):
    n, d = 30, 4
    X = rng.normal(size=(n, d))
    y = rng.integers(0, max(n_out, 2), size=n)
    sw = rng.uniform(0.1, 1.0, size=n)
    sw /= sw.sum()
    est = SoftmaxRegression(alpha=0.3, fit_intercept=fit_intercept, label_smoothing=smoothing,
                            n_threads=1)
    params = rng.normal(size=n_out * (d + int(fit_intercept)))
    value, grad = est._loss_grad(params, X, y, sw)
    args = (X, y, sw, 0.3, n_out, fit_intercept, smoothing)
    np.testing.assert_allclose(value, _np_objective(params, *args), rtol=1e-12)
    fd = central_difference(lambda p: _np_objective(p, *args), params)
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("dataset", ["iris", "cancer"])
def test_label_smoothing_fit_is_stationary(request, dataset):
    """With smoothing, the fitted parameters zero the NumPy gradient of the objective."""
    X, y = request.getfixturevalue(dataset)
    n_out = 1 if dataset == "cancer" else 3
    est = SoftmaxRegression(alpha=1e-2, label_smoothing=0.2, n_threads=1, **TIGHT).fit(X, y)
    params = np.c_[est.coef_, est.intercept_].ravel()
    sw = np.full(len(y), 1.0 / len(y))
    args = (X, y, sw, 1e-2, n_out, True, 0.2)
    fd = central_difference(lambda p: _np_objective(p, *args), params)
    assert np.max(np.abs(fd)) < 1e-6
    plain = SoftmaxRegression(alpha=1e-2, n_threads=1, **TIGHT).fit(X, y)
    assert not np.allclose(est.coef_, plain.coef_, atol=1e-3)
    # smoothing keeps the predicted distribution away from 0/1
    assert est.predict_proba(X).max() < plain.predict_proba(X).max()


# ------------------------------------------------------------------- API behaviour


@pytest.mark.parametrize(
    "labels",
    [
        np.array([-5, 3, 10]),
        np.array(["b", "a", "c"]),
        np.array(["b", "a", "c"], dtype=object),
        np.array([1.0, -2.0, 3.0]),
        np.array([True, False, True]),
    ],
    ids=["int", "str", "object", "float", "bool"],
)
def test_any_label_type(iris, labels):
    X, y = iris
    yl = labels[y]
    est = SoftmaxRegression(alpha=1e-3, n_threads=1).fit(X, yl)
    np.testing.assert_array_equal(est.classes_, np.unique(labels))
    if labels.dtype == bool:  # two classes: [False, True]
        assert est.coef_.shape == (1, 4)
        return
    pred = est.predict(X)
    assert pred.dtype == est.classes_.dtype
    assert np.mean(pred == yl) > 0.95
    assert est.score(X, yl) == np.mean(pred == yl)
    # columns of predict_proba follow classes_
    proba = est.predict_proba(X)
    np.testing.assert_array_equal(est.classes_[proba.argmax(axis=1)], pred)


@pytest.mark.parametrize("dataset", ["iris", "cancer"])
def test_prediction_methods_consistent(request, dataset):
    X, y = request.getfixturevalue(dataset)
    est = SoftmaxRegression(alpha=1e-3, n_threads=1).fit(X, y)
    proba = est.predict_proba(X)
    log_proba = est.predict_log_proba(X)
    scores = est.decision_function(X)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(log_proba, np.log(proba), rtol=1e-9, atol=1e-12)
    if scores.ndim == 1:
        np.testing.assert_allclose(proba[:, 1], 1 / (1 + np.exp(-scores)), rtol=1e-12)
    else:
        e = np.exp(scores - scores.max(axis=1, keepdims=True))
        np.testing.assert_allclose(proba, e / e.sum(axis=1, keepdims=True), rtol=1e-12)
    np.testing.assert_array_equal(est.predict(X), est.classes_[proba.argmax(axis=1)])
    # extreme scores stay finite in log space
    far = X[:3] * 1e4
    assert np.all(np.isfinite(est.predict_log_proba(far)))


def test_pipeline_gridsearch_and_cross_val_score():
    X, y = load_digits(return_X_y=True)
    pipe = make_pipeline(StandardScaler(), SoftmaxRegression(n_threads=1, tol=1e-5))
    search = GridSearchCV(pipe, {"softmaxregression__alpha": [1e-3, 1.0]}, cv=3)
    search.fit(X, y)
    assert search.best_params_ == {"softmaxregression__alpha": 1e-3}
    assert search.best_score_ > 0.9
    scores = cross_val_score(pipe, X, y, cv=3, scoring="neg_log_loss")
    assert np.all(scores < 0) and np.all(scores > -0.5)


def test_pickle_roundtrip(iris):
    X, y = iris
    est = SoftmaxRegression(alpha=1e-3, label_smoothing=0.05, n_threads=1).fit(X, y)
    again = pickle.loads(pickle.dumps(est))
    np.testing.assert_array_equal(again.coef_, est.coef_)
    np.testing.assert_array_equal(again.predict_proba(X), est.predict_proba(X))
    assert again.get_params() == est.get_params()


def test_sparse_input_equals_dense(digits):
    X, y = digits
    Xs = np.where(np.abs(X) < 0.5, 0.0, X)
    dense = SoftmaxRegression(alpha=1e-3, n_threads=1, **TIGHT).fit(Xs, y)
    for fmt in (sparse.csr_matrix, sparse.csc_array):
        sp = SoftmaxRegression(alpha=1e-3, n_threads=1, **TIGHT).fit(fmt(Xs), y)
        np.testing.assert_allclose(sp.coef_, dense.coef_, atol=1e-6)
        np.testing.assert_allclose(sp.predict_proba(fmt(Xs)), dense.predict_proba(Xs),
                                   atol=1e-8)


def test_float32_input(digits):
    X, y = digits
    est64 = SoftmaxRegression(alpha=1e-2, n_threads=1).fit(X, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # float32 limits the precision
        est32 = SoftmaxRegression(alpha=1e-2, n_threads=1).fit(X.astype(np.float32), y)
    np.testing.assert_allclose(est32.coef_, est64.coef_, atol=2e-3)
    assert np.mean(est32.predict(X) == est64.predict(X)) > 0.99


def test_n_threads_do_not_change_the_result(digits):
    X, y = digits
    a = SoftmaxRegression(alpha=1e-2, n_threads=1).fit(X, y)
    b = SoftmaxRegression(alpha=1e-2, n_threads=2).fit(X, y)
    np.testing.assert_array_equal(a.coef_, b.coef_)


def test_convergence_warning_and_n_iter(iris):
    X, y = iris
    with pytest.warns(ConvergenceWarning, match="did not converge"):
        est = SoftmaxRegression(max_iter=2, n_threads=1).fit(X, y)
    assert est.n_iter_.tolist() == [2]


def test_zero_weight_samples_equal_removal(iris, rng):
    X, y = iris
    sw = (rng.random(len(y)) < 0.7).astype(float)
    a = SoftmaxRegression(alpha=1e-2, n_threads=1, **TIGHT).fit(X, y, sample_weight=sw)
    b = SoftmaxRegression(alpha=1e-2, n_threads=1, **TIGHT).fit(X[sw > 0], y[sw > 0])
    np.testing.assert_allclose(a.coef_, b.coef_, atol=1e-4)


@pytest.mark.parametrize(
    "params, error, match",
    [
        (dict(alpha=-1.0), ValueError, "alpha"),
        (dict(alpha="big"), TypeError, "alpha"),
        (dict(alpha=np.inf), ValueError, "alpha"),
        (dict(label_smoothing=1.5), ValueError, "label_smoothing"),
        (dict(fit_intercept="yes"), TypeError, "fit_intercept"),
        (dict(class_weight="auto"), ValueError, "class_weight"),
        (dict(class_weight={0: -1.0}), ValueError, "class_weight"),
        (dict(max_iter=0), ValueError, "max_iter"),
        (dict(max_iter=2.5), TypeError, "max_iter"),
        (dict(tol=-1e-3), ValueError, "tol"),
        (dict(n_threads=0), ValueError, "n_threads"),
        (dict(n_threads="all"), TypeError, "n_threads"),
    ],
)
def test_parameter_errors(iris, params, error, match):
    X, y = iris
    with pytest.raises(error, match=match):
        SoftmaxRegression(**params).fit(X, y)


def test_data_errors(iris):
    X, y = iris
    est = SoftmaxRegression(n_threads=1)
    with pytest.raises(ValueError, match="at least 2 classes"):
        est.fit(X, np.zeros(len(y)))
    with pytest.raises(ValueError, match="sample_weight must be non-negative"):
        est.fit(X, y, sample_weight=-np.ones(len(y)))
    with pytest.raises(ValueError, match="at least 2 classes with positive sample_weight"):
        est.fit(X, y, sample_weight=(y == 1).astype(float))
    for target in (np.linspace(0, 1, len(y)), np.array([0.5, -1.5, 2.0])[y]):
        with pytest.raises(ValueError, match="Unknown label type"):
            LogisticRegression().fit(X, target)  # same rule as scikit-learn
        with pytest.raises(ValueError, match="Unknown label type"):
            est.fit(X, target)
    with pytest.raises(ValueError, match="class_weight"):
        SoftmaxRegression(class_weight={7: 2.0}).fit(X, y)
    est.fit(X, y)
    with pytest.raises(ValueError, match="features"):
        est.predict(X[:, :3])


# ------------------------------------------------------------------ extension hooks


def test_loss_grad_is_the_objective_used_by_fit(iris):
    """fit minimizes _loss_grad through _run_lbfgs (to which fastxent.dask passes its own)."""
    X, y = iris
    calls = []

    class Counting(SoftmaxRegression):
        def _loss_grad(self, params, X, y, sample_weight):
            calls.append(params.shape)
            return super()._loss_grad(params, X, y, sample_weight)

    est = Counting(alpha=1e-3, n_threads=1).fit(X, y)
    assert len(calls) >= est.n_iter_[0] and calls[0] == (15,)


def test_dask_arrays_are_delegated(monkeypatch):
    """A dask collection goes to fastxent.dask._fit_softmax_regression (dask not imported)."""
    seen = {}
    stub = types.ModuleType("fastxent.dask")

    def _fit_softmax_regression(est, X, y, sample_weight):
        seen["args"] = (est, X, y, sample_weight)
        return est

    stub._fit_softmax_regression = _fit_softmax_regression
    monkeypatch.setitem(sys.modules, "fastxent.dask", stub)
    FakeDaskArray = type("Array", (), {"__module__": "dask.array.core"})
    X = FakeDaskArray()
    est = SoftmaxRegression()
    assert est.fit(X, "y", sample_weight="w") is est
    assert seen["args"] == (est, X, "y", "w")
