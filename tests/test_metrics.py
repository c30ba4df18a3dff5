"""fastxent.metrics.log_loss against the installed sklearn.metrics.log_loss.

Every case is run through both functions and must give the same value (to the rounding of
the dtype), the same warnings (category and text) and the same exception (type and text).
"""

import subprocess
import sys
import warnings

import numpy as np
import pytest

sklearn_metrics = pytest.importorskip("sklearn.metrics")

from fastxent import metrics as fm  # noqa: E402

RTOL = {np.float64: 1e-12, np.float32: 2e-6, np.float16: 2e-3}


def _outcome(func, args, kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            value, error = func(*args, **kwargs), None
        except Exception as exc:  # noqa: BLE001 - compared below
            value, error = None, (type(exc), str(exc))
    # scikit-learn's own deprecation/future warnings are not about the data
    seen = [(w.category, str(w.message)) for w in caught
            if not issubclass(w.category, DeprecationWarning | FutureWarning)]
    return value, error, seen


def assert_same_as_sklearn(*args, rtol=1e-12, **kwargs):
    ours = _outcome(fm.log_loss, args, kwargs)
    theirs = _outcome(sklearn_metrics.log_loss, args, kwargs)
    assert ours[1] == theirs[1], f"errors differ: {ours[1]} vs {theirs[1]}"
    assert ours[2] == theirs[2], f"warnings differ: {ours[2]} vs {theirs[2]}"
    if theirs[1] is None:
        assert isinstance(ours[0], float)
        np.testing.assert_allclose(ours[0], theirs[0], rtol=rtol, atol=0)
    return ours


def _proba(rng, n, k, dtype=np.float64):
    p = rng.dirichlet(np.ones(k), size=n)
    return p.astype(dtype)


# ---------------------------------------------------------------------------- values


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("weighted", [False, True])
def test_multiclass_values(rng, dtype, normalize, weighted):
    n, k = 40, 5
    y = rng.integers(0, k, size=n)
    p = _proba(rng, n, k, dtype)
    sw = rng.uniform(0, 3, size=n) if weighted else None
    value, _, _ = assert_same_as_sklearn(y, p, normalize=normalize, sample_weight=sw,
                                         rtol=RTOL[dtype])
    # independent float64 NumPy value
    q = np.clip(p.astype(np.float64), np.finfo(dtype).eps, 1 - np.finfo(dtype).eps)
    per = -np.log(q[np.arange(n), y])
    w = np.ones(n) if sw is None else sw
    expected = (per * w).sum() / (w.sum() if normalize else 1.0)
    np.testing.assert_allclose(value, expected, rtol=max(RTOL[dtype], 1e-12))


@pytest.mark.parametrize(
    "labels_of",
    [
        lambda i: i,
        lambda i: np.array(["ant", "bee", "cat", "dog"])[i],
        lambda i: np.array(["ant", "bee", "cat", "dog"], dtype=object)[i],
        lambda i: np.array([-3.5, 0.0, 2.0, 10.0])[i],
        lambda i: [["ant", "bee", "cat", "dog"][j] for j in i],
    ],
    ids=["int", "str", "object", "float", "list"],
)
def test_label_types(rng, labels_of):
    idx = rng.integers(0, 4, size=30)
    idx[:4] = np.arange(4)
    assert_same_as_sklearn(labels_of(idx), _proba(rng, 30, 4))


def test_sklearn_docstring_example():
    y_true = ["spam", "ham", "ham", "spam"]
    y_pred = [[0.1, 0.9], [0.9, 0.1], [0.8, 0.2], [0.35, 0.65]]
    value, _, _ = assert_same_as_sklearn(y_true, y_pred)
    assert round(value, 5) == 0.21616


@pytest.mark.parametrize("shape", ["1d", "column", "two_columns"])
@pytest.mark.parametrize("labels", [None, ["no", "yes"]])
def test_binary_forms(rng, shape, labels):
    y = np.array(["no", "yes"])[rng.integers(0, 2, size=25)]
    p1 = rng.uniform(0, 1, size=25)
    y_pred = {"1d": p1, "column": p1[:, None], "two_columns": np.c_[1 - p1, p1]}[shape]
    assert_same_as_sklearn(y, y_pred, labels=labels)


def test_rows_not_summing_to_one_warn_and_are_not_renormalized(rng):
    y = rng.integers(0, 3, size=20)
    p = _proba(rng, 20, 3)
    for q in (p * 0.5, p * 0.999, p * 0.5 + 0.2):  # sums 0.5, 0.999, 1.1
        _, _, seen = assert_same_as_sklearn(y, q)
        assert seen == [(UserWarning,
                         "The y_prob values do not sum to one. Make sure to pass probabilities.")]
    # a single bad row is enough; the loss uses the row as given
    q = p.copy()
    q[3] *= 0.25
    value, _, _ = assert_same_as_sklearn(y, q)
    expected = -np.mean(np.log(q[np.arange(20), y]))
    np.testing.assert_allclose(value, expected, rtol=1e-12)
    # within sqrt(eps) of one: no warning
    _, _, seen = assert_same_as_sklearn(y, p * (1 + 1e-9))
    assert seen == []


def test_clipping_of_zeros_and_ones():
    y = [0, 1, 2, 1]
    p = np.array([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.5, 0.5, 0.0]])
    value, _, _ = assert_same_as_sklearn(y, p)
    eps = np.finfo(np.float64).eps
    expected = np.mean([-np.log(1 - eps), -np.log(eps), -np.log(1 - eps), -np.log(0.5)])
    np.testing.assert_allclose(value, expected, rtol=1e-12)
    assert_same_as_sklearn(y, p.astype(np.float32), rtol=RTOL[np.float32])


def test_labels_argument(rng):
    y = rng.integers(1, 3, size=15)  # class 0 never appears
    p = _proba(rng, 15, 3)
    assert_same_as_sklearn(y, p, labels=[0, 1, 2])
    assert_same_as_sklearn(y, p, labels=np.array([0, 1, 2]))
    _, _, seen = assert_same_as_sklearn(y, p, labels=[2, 0, 1])  # warns: not sorted
    assert seen and "ordered lexicographically" in seen[0][1]
    _, error, _ = assert_same_as_sklearn(y, p)  # 2 classes in y_true, 3 columns
    assert error[0] is ValueError and "different number of classes" in error[1]
    _, error, _ = assert_same_as_sklearn(y, p, labels=[0, 1])
    assert error[0] is ValueError and "not belonging to the passed labels" in error[1]
    _, error, _ = assert_same_as_sklearn(y, p, labels=[1, 2])
    assert error[0] is ValueError and "number of classes in labels is different" in error[1]
    _, error, _ = assert_same_as_sklearn(np.r_[y, 0], np.r_[p, p[:1]], labels=[0, 1, 2, 3])
    assert error[0] is ValueError and "number of classes in labels is different" in error[1]


def test_single_label_errors(rng):
    p = rng.uniform(size=6)
    _, error, _ = assert_same_as_sklearn([1] * 6, p)
    assert error[0] is ValueError and "contains only one label" in error[1]
    _, error, _ = assert_same_as_sklearn([1] * 6, p, labels=[1])
    assert error[0] is ValueError and "at least two labels" in error[1]
    # with labels= a single present class is fine
    assert_same_as_sklearn([1] * 6, p, labels=[0, 1])


def test_multilabel_indicator_y_true(rng):
    t = (rng.random((20, 4)) < 0.4).astype(int)
    p = _proba(rng, 20, 4)
    assert_same_as_sklearn(t, p)
    assert_same_as_sklearn(np.eye(4, dtype=int)[rng.integers(0, 4, size=20)], p)


def test_sample_weight_cases(rng):
    y = rng.integers(0, 3, size=12)
    p = _proba(rng, 12, 3)
    assert_same_as_sklearn(y, p, sample_weight=list(rng.uniform(size=12)))
    assert_same_as_sklearn(y, p, sample_weight=np.r_[np.zeros(11), 2.0])
    _, error, _ = assert_same_as_sklearn(y, p, sample_weight=np.zeros(12))
    assert error[0] is ValueError and "Sample weights" in error[1]
    assert_same_as_sklearn(y, p, sample_weight=np.zeros(12), normalize=False)
    _, error, _ = assert_same_as_sklearn(y, p, sample_weight=np.ones(11))
    assert error[0] is ValueError and "inconsistent numbers of samples" in error[1]
    # integer weights equal repeating the rows
    reps = rng.integers(0, 4, size=12)
    reps[0] = 1
    a = fm.log_loss(y, p, sample_weight=reps, labels=[0, 1, 2])
    b = fm.log_loss(np.repeat(y, reps), np.repeat(p, reps, axis=0), labels=[0, 1, 2])
    np.testing.assert_allclose(a, b, rtol=1e-12)


@pytest.mark.parametrize(
    "y_true, y_pred, kwargs",
    [
        ([0, 1, 1], [0.2, 0.7, 1.2], {}),
        ([0, 1, 1], [0.2, -0.1, 0.5], {}),
        ([0, 1, 1], [0.2, np.nan, 0.5], {}),
        ([0, 1, 1], [0.2, np.inf, 0.5], {}),
        ([0, 1, 1], [0.2, 0.5], {}),
        ([], [], {}),
        ([0, 1, 1], [[[0.2]], [[0.5]], [[0.5]]], {}),
        ([0, 1, 1], ["a", "b", "c"], {}),
        ([0, 1, 1], [0.2, 0.5, 0.5], {"normalize": "yes"}),
        ([0, 1, 1], [0.2, 0.5, 0.5], {"normalize": 1}),
        ([0, 1, 1], [0.2, 0.5, 0.5], {"sample_weight": "w"}),
        ([0.5, 1.5, 2.5], [0.2, 0.5, 0.5], {}),
        (3, [0.2, 0.5, 0.5], {}),
    ],
)
def test_errors_match(y_true, y_pred, kwargs):
    ours = _outcome(fm.log_loss, (y_true, y_pred), kwargs)
    theirs = _outcome(sklearn_metrics.log_loss, (y_true, y_pred), kwargs)
    assert theirs[1] is not None, "case should be an error in scikit-learn"
    assert ours[1][0] is theirs[1][0]
    # scikit-learn 1.9 calls the argument y_proba; ours is y_pred (y_proba is an alias)
    assert ours[1][1] == theirs[1][1].replace("'y_proba' parameter", "'y_pred' parameter")
    assert ours[2] == theirs[2]


def test_random_cases_match(rng):
    for _ in range(60):
        n = int(rng.integers(2, 30))
        k = int(rng.integers(2, 7))
        y = rng.integers(0, k, size=n)
        y[:2] = [0, k - 1]
        p = rng.uniform(0, 1, size=(n, k)) ** 3
        if rng.random() < 0.7:
            p /= p.sum(axis=1, keepdims=True)
        p[rng.random((n, k)) < 0.1] = 0.0
        sw = rng.uniform(0, 2, size=n) if rng.random() < 0.5 else None
        labels = list(range(k)) if rng.random() < 0.3 else None
        dtype = [np.float64, np.float32][int(rng.integers(0, 2))]
        assert_same_as_sklearn(y, p.astype(dtype), sample_weight=sw, labels=labels,
                               normalize=bool(rng.random() < 0.7), rtol=RTOL[dtype])


def test_y_proba_alias(rng):
    y = rng.integers(0, 3, size=10)
    p = _proba(rng, 10, 3)
    assert fm.log_loss(y, y_proba=p) == fm.log_loss(y, p)
    with pytest.raises(ValueError, match="both `y_pred` and `y_proba`"):
        fm.log_loss(y, p, y_proba=p)
    with pytest.raises(TypeError, match="y_pred"):
        fm.log_loss(y)


def test_loss_is_computed_by_the_kernel(monkeypatch, rng):
    calls = []
    original = fm.categorical_crossentropy

    def spy(*args, **kwargs):
        calls.append(args[1].shape)
        return original(*args, **kwargs)

    monkeypatch.setattr(fm, "categorical_crossentropy", spy)
    fm.log_loss(rng.integers(0, 3, size=8), _proba(rng, 8, 3))
    assert calls == [(8, 3)]


# ---------------------------------------------------------------------------- scorer


def test_scorer_in_cross_val_score():
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, cross_val_score

    X, y = load_iris(return_X_y=True)
    est = LogisticRegression(max_iter=500)
    ours = cross_val_score(est, X, y, cv=3, scoring=fm.log_loss_scorer)
    theirs = cross_val_score(est, X, y, cv=3, scoring="neg_log_loss")
    assert np.all(ours < 0)
    np.testing.assert_allclose(ours, theirs, rtol=1e-12)

    Xb, yb = X[50:], np.array(["versicolor", "virginica"])[y[50:] - 1]
    ours = cross_val_score(est, Xb, yb, cv=3, scoring=fm.log_loss_scorer)
    theirs = cross_val_score(est, Xb, yb, cv=3, scoring="neg_log_loss")
    np.testing.assert_allclose(ours, theirs, rtol=1e-12)

    search = GridSearchCV(est, {"C": [0.01, 1.0]}, cv=3, scoring=fm.log_loss_scorer).fit(X, y)
    assert search.best_params_ == {"C": 1.0}


def test_importing_fastxent_does_not_import_sklearn_or_scipy():
    code = (
        "import sys, fastxent, fastxent.metrics, fastxent.objectives\n"
        "bad = [m for m in ('sklearn', 'scipy') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
