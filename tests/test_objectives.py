"""fastxent.objectives: gradient/Hessian for boosting, LightGBM and XGBoost objectives.

Oracles: a float64 NumPy loss differentiated by central finite differences, the built-in
objectives' published formulas, and the built-in objectives themselves (a model trained
with the fastxent objective equals the built-in model tree for tree when both start from
the same raw score).
"""

import pickle

import numpy as np
import pytest
from util import central_difference

import fastxent as fx
from fastxent import objectives as fo


def _np_softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _np_log_softmax(z):
    m = z.max(axis=1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=1, keepdims=True))


def softmax_loss_oracle(labels, z, sw=None, label_smoothing=0.0, class_weight=None):
    """sum_i sw_i * (-sum_k w_k t'_ik log softmax(z_i)_k), float64 NumPy."""
    n, k = z.shape
    t = np.eye(k)[labels] * (1 - label_smoothing) + label_smoothing / k
    w = np.ones(k) if class_weight is None else np.asarray(class_weight, float)
    per = -(t * w * _np_log_softmax(z)).sum(axis=1)
    return float(per.sum() if sw is None else (per * sw).sum())


def sigmoid_loss_oracle(y, x, sw=None, label_smoothing=0.0, pos_weight=1.0):
    z = y * (1 - label_smoothing) + label_smoothing / 2
    log_s = -np.logaddexp(0.0, -x)
    log_1ms = -np.logaddexp(0.0, x)
    per = -(pos_weight * z * log_s + (1 - z) * log_1ms)
    return float(per.sum() if sw is None else (per * sw).sum())


def _hess_fd(grad_fn, z, h=1e-5):
    """Diagonal of the Jacobian of grad_fn (same shape as z) by central differences."""
    out = np.empty_like(z)
    flat, fo_ = z.reshape(-1), out.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + h
        gp = grad_fn(z).reshape(-1)[i]
        flat[i] = old - h
        gm = grad_fn(z).reshape(-1)[i]
        flat[i] = old
        fo_[i] = (gp - gm) / (2 * h)
    return out


# --------------------------------------------------------------------------- kernels


@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
@pytest.mark.parametrize("class_weight", [None, [0.5, 2.0, 1.0, 3.0]])
@pytest.mark.parametrize("weighted", [False, True])
def test_softmax_gradient_hessian_finite_differences(rng, label_smoothing, class_weight,
                                                     weighted):
    n, k = 7, 4
    z = rng.normal(size=(n, k)) * 2
    labels = rng.integers(0, k, size=n)
    sw = rng.uniform(0.1, 3.0, size=n) if weighted else None
    kw = dict(label_smoothing=label_smoothing, class_weight=class_weight)

    grad, hess = fo.softmax_gradient_hessian(labels, z, sw, **kw)
    assert grad.shape == hess.shape == z.shape

    fd = central_difference(lambda x: softmax_loss_oracle(labels, x, sw, **kw), z)
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-8)

    hfd = _hess_fd(lambda x: fo.softmax_gradient_hessian(labels, x, sw, **kw)[0], z.copy())
    np.testing.assert_allclose(hess, hfd, rtol=1e-6, atol=1e-8)

    # closed form: the per-sample total target weight times p(1 - p)
    t = np.eye(k)[labels] * (1 - label_smoothing) + label_smoothing / k
    w = np.ones(k) if class_weight is None else np.asarray(class_weight)
    mass = (t * w).sum(axis=1, keepdims=True) * (1.0 if sw is None else sw[:, None])
    p = _np_softmax(z)
    np.testing.assert_allclose(hess, mass * p * (1 - p), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("pos_weight", [None, 2.5])
@pytest.mark.parametrize("weighted", [False, True])
def test_sigmoid_gradient_hessian_finite_differences(rng, label_smoothing, pos_weight,
                                                     weighted):
    n = 9
    x = rng.normal(size=n) * 3
    y = rng.integers(0, 2, size=n).astype(float)
    sw = rng.uniform(0.1, 3.0, size=n) if weighted else None
    grad, hess = fo.sigmoid_gradient_hessian(y, x, sw, label_smoothing=label_smoothing,
                                             pos_weight=pos_weight)
    assert grad.shape == hess.shape == (n,)
    pw = 1.0 if pos_weight is None else pos_weight
    fd = central_difference(
        lambda v: sigmoid_loss_oracle(y, v, sw, label_smoothing, pw), x
    )
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-8)
    hfd = _hess_fd(
        lambda v: fo.sigmoid_gradient_hessian(
            y, v, sw, label_smoothing=label_smoothing, pos_weight=pos_weight)[0],
        x.copy(),
    )
    np.testing.assert_allclose(hess, hfd, rtol=1e-6, atol=1e-8)


def test_gradient_hessian_matches_loss_class_and_float32(rng):
    z = rng.normal(size=(50, 6))
    labels = rng.integers(0, 6, size=50)
    g64, h64 = fo.softmax_gradient_hessian(labels, z)
    g_cls, h_cls = fx.SparseCategoricalCrossentropy(
        from_logits=True, reduction="sum").gradient_hessian(labels, z)
    np.testing.assert_array_equal(g64, g_cls)
    np.testing.assert_array_equal(h64, h_cls)
    g32, h32 = fo.softmax_gradient_hessian(labels.astype(np.float32), z.astype(np.float32))
    assert g32.dtype == h32.dtype == np.float32
    np.testing.assert_allclose(g32, g64, atol=1e-6)
    np.testing.assert_allclose(h32, h64, atol=1e-6)


def test_builtin_formulas(rng):
    """LightGBM multiclass: p - y, K/(K-1) p(1-p); XGBoost softprob: p - y, 2 p(1-p)."""
    n, k = 40, 5
    z = rng.normal(size=(n, k)) * 2
    y = rng.integers(0, k, size=n).astype(np.float64)  # boosting libraries store float labels
    w = rng.uniform(0.5, 2.0, size=n)
    p = _np_softmax(z)
    onehot = np.eye(k)[y.astype(int)]

    g, h = fo.lightgbm_multiclass(y, z, w)
    np.testing.assert_allclose(g, (p - onehot) * w[:, None], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(h, k / (k - 1) * p * (1 - p) * w[:, None], rtol=1e-12)
    g, h = fo.lightgbm_multiclass(y, z, None)
    np.testing.assert_allclose(h, k / (k - 1) * p * (1 - p), rtol=1e-12)

    g, h = fo.xgboost_sklearn_multiclass(y, z, sample_weight=w)
    np.testing.assert_allclose(g, (p - onehot) * w[:, None], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(h, 2 * p * (1 - p) * w[:, None], rtol=1e-12)

    g, h = fo.LightGBMObjective(hessian_scale=1.0)(y, z, None)
    np.testing.assert_allclose(h, p * (1 - p), rtol=1e-12)

    x = rng.normal(size=n) * 2
    yb = rng.integers(0, 2, size=n).astype(np.float64)
    s = 1 / (1 + np.exp(-x))
    for obj in (fo.lightgbm_binary, fo.xgboost_sklearn_binary):
        args = (yb, x, w) if obj is fo.lightgbm_binary else (yb, x)
        kwargs = {} if obj is fo.lightgbm_binary else {"sample_weight": w}
        g, h = obj(*args, **kwargs)
        assert g.shape == h.shape == (n,)
        np.testing.assert_allclose(g, (s - yb) * w, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(h, s * (1 - s) * w, rtol=1e-12)


def test_flat_class_major_layout(rng):
    """LightGBM < 4 passes multiclass scores flat, class-major: raw[k * n + i]."""
    n, k = 6, 3
    z = rng.normal(size=(n, k))
    y = rng.integers(0, k, size=n)
    g2, h2 = fo.softmax_gradient_hessian(y, z)
    g1, h1 = fo.softmax_gradient_hessian(y, z.T.reshape(-1))
    assert g1.shape == h1.shape == (n * k,)
    np.testing.assert_array_equal(g1, g2.T.reshape(-1))
    np.testing.assert_array_equal(h1, h2.T.reshape(-1))
    with pytest.raises(ValueError, match="raw_scores of shape"):
        fo.softmax_gradient_hessian(y, np.zeros(n * k + 1))


def test_xgboost_objective_reads_dmatrix(rng):
    class FakeDMatrix:
        def __init__(self, label, weight):
            self._label, self._weight = label, weight

        def get_label(self):
            return self._label

        def get_weight(self):
            return self._weight

    z = rng.normal(size=(8, 3)).astype(np.float32)
    y = rng.integers(0, 3, size=8).astype(np.float32)
    w = rng.uniform(0.5, 2, size=8).astype(np.float32)
    g, h = fo.xgboost_multiclass(z, FakeDMatrix(y, np.array([], np.float32)))
    assert g.dtype == np.float32 and g.shape == (8, 3)
    gw, hw = fo.xgboost_multiclass(z, FakeDMatrix(y, w))
    np.testing.assert_allclose(gw, g * w[:, None], rtol=1e-6)
    np.testing.assert_allclose(hw, h * w[:, None], rtol=1e-6)
    gb, hb = fo.xgboost_binary(z[:, 0], FakeDMatrix((y > 0).astype(np.float32), w))
    assert gb.shape == (8,)


def test_softmax_sigmoid_helpers():
    p = fo.softmax(np.array([[1000.0, 0.0, -1000.0], [1.0, 1.0, 1.0]]))
    np.testing.assert_allclose(p, [[1, 0, 0], [1 / 3, 1 / 3, 1 / 3]], atol=1e-300)
    x = np.array([-800.0, -1.0, 0.0, 2.0, 800.0])
    s = fo.sigmoid(x)
    assert np.all(np.isfinite(s))
    np.testing.assert_allclose(s, [0, 1 / (1 + np.e), 0.5, 1 / (1 + np.exp(-2)), 1])
    assert fo.sigmoid(np.float32([0.0])).dtype == np.float32


def test_errors():
    with pytest.raises(ValueError, match="kind must be"):
        fo.LightGBMObjective("regression")
    with pytest.raises(ValueError, match="hessian_scale"):
        fo.LightGBMObjective(hessian_scale=0.0)
    with pytest.raises(ValueError, match="hessian_scale"):
        fo.LightGBMObjective(hessian_scale="lightgbm")
    with pytest.raises(TypeError, match="hessian_scale"):
        fo.softmax_gradient_hessian([0], np.zeros((1, 2)), hessian_scale=None)
    with pytest.raises(ValueError, match="hessian_scale applies"):
        fo.LightGBMObjective("binary", hessian_scale=2.0)
    with pytest.raises(ValueError, match="class_weight applies"):
        fo.LightGBMObjective("binary", class_weight=[1.0, 2.0])
    with pytest.raises(ValueError, match="pos_weight applies"):
        fo.XGBoostObjective("multiclass", pos_weight=2.0)
    with pytest.raises(ValueError, match="class_weight"):
        fo.LightGBMObjective(class_weight=[1.0, -1.0])
    with pytest.raises(ValueError, match="label_smoothing"):
        fo.XGBoostSklearnObjective(label_smoothing=1.5)
    with pytest.raises(ValueError, match="n_threads"):
        fo.LightGBMObjective(n_threads=0)
    with pytest.raises(ValueError, match="labels has 3 entries"):
        fo.sigmoid_gradient_hessian([0, 1, 1], np.zeros(2))
    with pytest.raises(ValueError, match=r"label .*5.* at position \(1,\)"):
        fo.lightgbm_multiclass(np.array([0.0, 5.0]), np.zeros((2, 3)), None)
    with pytest.raises(TypeError, match="raw scores"):
        fo.softmax(np.array(["a"]))
    with pytest.raises(TypeError, match="LightGBM or XGBoost"):
        fo.predict_proba(object(), np.zeros((1, 1)))


def test_objectives_pickle_and_repr():
    obj = fo.LightGBMObjective(label_smoothing=0.1, class_weight=np.array([1.0, 2.0]))
    clone = pickle.loads(pickle.dumps(obj))
    z = np.zeros((2, 2))
    for a, b in zip(obj(np.array([0.0, 1.0]), z, None), clone(np.array([0.0, 1.0]), z, None),
                    strict=True):
        np.testing.assert_array_equal(a, b)
    assert repr(fo.lightgbm_multiclass) == "LightGBMObjective('multiclass')"
    assert "label_smoothing=0.1" in repr(obj)


# --------------------------------------------------------------------------- LightGBM


@pytest.fixture(scope="module")
def digits_split():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    return train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)


_LGB_PARAMS = dict(learning_rate=0.1, num_leaves=15, random_state=0, n_jobs=1, verbose=-1,
                   deterministic=True)


def test_lightgbm_digits_accuracy_matches_builtin(digits_split):
    lgb = pytest.importorskip("lightgbm")
    Xtr, Xte, ytr, yte = digits_split
    builtin = lgb.LGBMClassifier(n_estimators=100, **_LGB_PARAMS).fit(Xtr, ytr)
    ours = lgb.LGBMClassifier(n_estimators=100, objective=fo.lightgbm_multiclass,
                              **_LGB_PARAMS).fit(Xtr, ytr)
    acc_builtin = np.mean(builtin.predict(Xte) == yte)
    proba = fo.predict_proba(ours, Xte)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    acc_ours = np.mean(ours.classes_[proba.argmax(axis=1)] == yte)
    assert acc_builtin > 0.95
    assert abs(acc_ours - acc_builtin) <= 0.01, (acc_ours, acc_builtin)


def test_lightgbm_same_trees_as_builtin(rng):
    """From the same start (no boost_from_average) the models are identical."""
    lgb = pytest.importorskip("lightgbm")
    from sklearn.datasets import load_breast_cancer, load_digits

    params = dict(_LGB_PARAMS, n_estimators=5, boost_from_average=False)
    X, y = load_digits(return_X_y=True)
    X, y = X[:500], y[:500]
    builtin = lgb.LGBMClassifier(**params).fit(X, y)
    ours = lgb.LGBMClassifier(objective=fo.lightgbm_multiclass, **params).fit(X, y)
    np.testing.assert_allclose(ours.predict(X, raw_score=True),
                               builtin.predict(X, raw_score=True), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(fo.predict_proba(ours, X), builtin.predict_proba(X),
                               rtol=1e-9, atol=1e-12)

    Xb, yb = load_breast_cancer(return_X_y=True)
    w = rng.uniform(0.2, 2.0, size=len(yb))
    builtin = lgb.LGBMClassifier(**params).fit(Xb, yb, sample_weight=w)
    ours = lgb.LGBMClassifier(objective=fo.lightgbm_binary, **params).fit(Xb, yb,
                                                                         sample_weight=w)
    np.testing.assert_allclose(ours.predict(Xb, raw_score=True),
                               builtin.predict(Xb, raw_score=True), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(fo.predict_proba(ours, Xb), builtin.predict_proba(Xb),
                               rtol=1e-9, atol=1e-12)


def test_lightgbm_custom_objective_returns_raw_scores_and_pickles(digits_split):
    lgb = pytest.importorskip("lightgbm")
    Xtr, Xte, ytr, _ = digits_split
    model = lgb.LGBMClassifier(n_estimators=3, objective=fo.LightGBMObjective(
        label_smoothing=0.1), **_LGB_PARAMS).fit(Xtr, ytr)
    with pytest.warns(UserWarning, match="raw scores"):
        raw = model.predict(Xte[:5])  # LightGBM returns raw scores with a custom objective
    assert raw.shape == (5, 10)
    np.testing.assert_allclose(fo.predict_proba(model, Xte[:5]), fo.softmax(raw))
    again = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(again.predict(Xte[:5], raw_score=True), raw)
    booster = lgb.train({"objective": fo.lightgbm_multiclass, "num_class": 10, "verbose": -1,
                         "num_threads": 1, "deterministic": True},
                        lgb.Dataset(Xtr, ytr), num_boost_round=3)
    np.testing.assert_allclose(fo.predict_proba(booster, Xte[:5]).sum(axis=1), 1.0)


# --------------------------------------------------------------------------- XGBoost

_XGB_PARAMS = dict(learning_rate=0.3, max_depth=4, random_state=0, n_jobs=1, tree_method="hist")


def test_xgboost_digits_accuracy_matches_builtin(digits_split):
    xgb = pytest.importorskip("xgboost")
    Xtr, Xte, ytr, yte = digits_split
    builtin = xgb.XGBClassifier(n_estimators=100, **_XGB_PARAMS).fit(Xtr, ytr)
    ours = xgb.XGBClassifier(n_estimators=100, objective=fo.xgboost_sklearn_multiclass,
                             **_XGB_PARAMS).fit(Xtr, ytr)
    acc_builtin = np.mean(builtin.predict(Xte) == yte)
    acc_ours = np.mean(ours.predict(Xte) == yte)
    np.testing.assert_allclose(ours.predict_proba(Xte).sum(axis=1), 1.0, rtol=1e-6)
    assert acc_builtin > 0.95
    assert abs(acc_ours - acc_builtin) <= 0.01, (acc_ours, acc_builtin)

    dtrain, dtest = xgb.DMatrix(Xtr, label=ytr), xgb.DMatrix(Xte)
    booster = xgb.train({"num_class": 10, "max_depth": 4, "eta": 0.3, "nthread": 1,
                         "disable_default_eval_metric": 1},
                        dtrain, 100, obj=fo.xgboost_multiclass)
    acc_train_api = np.mean(fo.predict_proba(booster, dtest).argmax(axis=1) == yte)
    assert abs(acc_train_api - acc_builtin) <= 0.01, (acc_train_api, acc_builtin)


def test_xgboost_same_trees_as_builtin():
    xgb = pytest.importorskip("xgboost")
    from sklearn.datasets import load_breast_cancer, load_digits

    params = {"max_depth": 3, "eta": 0.3, "nthread": 1}
    X, y = load_digits(return_X_y=True)
    d = xgb.DMatrix(X[:500], label=y[:500])
    builtin = xgb.train({**params, "objective": "multi:softprob", "num_class": 10,
                         "base_score": 0.5}, d, 5)
    ours = xgb.train({**params, "num_class": 10, "disable_default_eval_metric": 1}, d, 5,
                     obj=fo.xgboost_multiclass)
    r0 = builtin.predict(d, output_margin=True)
    r1 = ours.predict(d, output_margin=True)
    # the start differs by a constant per row (base_score), which softmax ignores
    np.testing.assert_allclose(r1 - r1.mean(1, keepdims=True), r0 - r0.mean(1, keepdims=True),
                               atol=1e-5)
    np.testing.assert_allclose(fo.predict_proba(ours, d), builtin.predict(d), atol=1e-6)

    Xb, yb = load_breast_cancer(return_X_y=True)
    d = xgb.DMatrix(Xb, label=yb)
    # binary:logistic's base_score is a probability (0.5 -> margin 0); a custom
    # objective's base_score is a margin
    builtin = xgb.train({**params, "objective": "binary:logistic", "base_score": 0.5}, d, 5)
    ours = xgb.train({**params, "base_score": 0.0, "disable_default_eval_metric": 1}, d, 5,
                     obj=fo.xgboost_binary)
    np.testing.assert_allclose(ours.predict(d, output_margin=True),
                               builtin.predict(d, output_margin=True), atol=1e-5)
    np.testing.assert_allclose(fo.predict_proba(ours, d)[:, 1], builtin.predict(d), atol=1e-6)


def test_xgboost_sklearn_binary_with_sample_weight(rng):
    xgb = pytest.importorskip("xgboost")
    from sklearn.datasets import load_breast_cancer

    X, y = load_breast_cancer(return_X_y=True)
    w = rng.uniform(0.2, 2.0, size=len(y))
    model = xgb.XGBClassifier(n_estimators=20, objective=fo.xgboost_sklearn_binary,
                              **_XGB_PARAMS).fit(X, y, sample_weight=w)
    proba = model.predict_proba(X)
    assert proba.shape == (len(y), 2)
    assert np.mean(proba.argmax(axis=1) == y) > 0.95
