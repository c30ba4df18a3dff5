"""Parity with Keras 3 on the corners where fastxent once differed.

* the probability clip ``[eps, 1 - eps]`` is computed in y_pred's dtype;
* a trailing size-1 axis on either side is squeezed or expanded (Keras' rank rule);
* a categorical loss with a single class warns (SyntaxWarning, as Keras);
"""

import os

os.environ.setdefault("KERAS_BACKEND", "numpy")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import reference as R  # noqa: E402

import fastxent as fx  # noqa: E402

KERAS_CLASSES = {
    "binary": keras.losses.BinaryCrossentropy,
    "categorical": keras.losses.CategoricalCrossentropy,
    "sparse": keras.losses.SparseCategoricalCrossentropy,
}
FX_CLASSES = {
    "binary": fx.BinaryCrossentropy,
    "categorical": fx.CategoricalCrossentropy,
    "sparse": fx.SparseCategoricalCrossentropy,
}


# ------------------------------------------------------------ clip bounds in the dtype


def test_keras_binary_unweighted_value():
    """keras' BinaryCrossentropyTest.test_unweighted: 3.98559 (was 4.02952)."""
    y_true = np.array([1, 0, 1, 0]).reshape([2, 2])
    y_pred = np.array([1, 1, 1, 0], dtype=np.float32).reshape([2, 2])
    got = fx.BinaryCrossentropy()(y_true, y_pred)
    assert got == pytest.approx(3.98559, abs=1e-4)
    assert got == pytest.approx(float(keras.losses.BinaryCrossentropy()(y_true, y_pred)),
                                rel=1e-6)


@pytest.mark.parametrize("dtype, expected", [(np.float32, -np.log(2.0**-23)),
                                             (np.float64, -np.log(1e-7))])
def test_saturated_probability_costs_the_dtype_bound(dtype, expected):
    one = np.array([[1.0]], dtype=dtype)
    zero = np.array([[0.0]], dtype=dtype)
    assert float(fx.binary_crossentropy(zero, one)[0]) == pytest.approx(expected, rel=1e-6)
    # categorical: the class with target 1 has probability 0 -> the lower bound
    y = np.array([[0.0, 1.0]], dtype=dtype)
    p = np.array([[1.0, 0.0]], dtype=dtype)
    lo = float(dtype(1e-7))
    assert float(fx.categorical_crossentropy(y, p)[0]) == pytest.approx(-np.log(lo), rel=1e-6)
    # the upper bound: p = [1, 0] against target [1, 0] costs -log(1 - eps) in the dtype
    hi = R.clip_bounds(1e-7, dtype)[1]
    got = float(fx.categorical_crossentropy(p, p)[0])
    assert got == pytest.approx(-np.log(hi), rel=1e-6)


@pytest.mark.parametrize("kind", ["binary", "categorical", "sparse"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_saturated_probabilities_match_keras(kind, dtype, rng):
    n, c = 12, 4
    p = rng.random((n, c)).astype(dtype)
    p[rng.random((n, c)) < 0.4] = 1.0
    p[rng.random((n, c)) < 0.3] = 0.0
    p[:, 0] += dtype(0.01)  # no all-zero rows
    if kind == "sparse":
        y = rng.integers(0, c, n)
    elif kind == "categorical":
        y = np.eye(c, dtype=dtype)[rng.integers(0, c, n)]
        p = p / p.sum(axis=1, keepdims=True)
    else:
        y = (rng.random((n, c)) < 0.5).astype(dtype)
    ours = FX_CLASSES[kind](reduction="none")(y, p)
    if dtype == np.float32:
        theirs = np.asarray(KERAS_CLASSES[kind](reduction="none")(y, p))
    else:  # Keras' losses compute in float32; its backend ops keep float64
        op = {"binary": keras.ops.binary_crossentropy,
              "categorical": keras.ops.categorical_crossentropy,
              "sparse": keras.ops.sparse_categorical_crossentropy}[kind]
        theirs = np.asarray(op(y, p))
        theirs = theirs.mean(axis=-1) if kind == "binary" else theirs
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(ours, theirs, rtol=rtol, atol=rtol)
    assert ours.dtype == dtype


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_clip_gradient_zero_where_active(dtype):
    bce = fx.BinaryCrossentropy(reduction="sum")
    p = np.array([[1.0, 0.0, 0.5]], dtype=dtype)
    z = np.array([[0.0, 1.0, 1.0]], dtype=dtype)
    _, g = bce.loss_and_grad(z, p)
    assert g[0, 0] == 0 and g[0, 1] == 0 and g[0, 2] != 0
    # just inside the float32 upper bound the gradient flows
    hi = R.clip_bounds(1e-7, dtype)[1]
    _, g = bce.loss_and_grad(np.array([[0.0]], dtype), np.array([[hi]], dtype))
    assert g[0, 0] > 0


# ------------------------------------------------- Keras' squeeze_or_expand_to_same_rank

# (y_true shape, y_pred shape): a trailing size-1 axis more or fewer on either side
RANK_CASES = {
    "binary": [((5, 1), (5,)), ((5,), (5, 1)), ((4, 3, 1), (4, 3)), ((4, 3), (4, 3, 1))],
    "categorical": [((5, 3, 1), (5, 3)), ((5, 3), (5, 3, 1)), ((5, 1), (5,)), ((5,), (5, 1))],
    "sparse": [((5, 1), (5,)), ((5,), (5, 1)), ((5, 1), (5, 3)), ((5,), (5, 3))],
}


def _rank_data(kind, true_shape, pred_shape, rng):
    p = rng.uniform(0.05, 0.95, pred_shape).astype(np.float32)
    if kind == "sparse":
        n_classes = pred_shape[-1] if len(pred_shape) == 2 else 1
        return rng.integers(0, n_classes, true_shape), p
    if kind == "categorical" and len(true_shape) + len(pred_shape) == 5:  # (5, 3) one-hot
        y = np.eye(3, dtype=np.float32)[rng.integers(0, 3, 5)]
        return y.reshape(true_shape), p
    if kind == "categorical":  # a single class: the targets are ones
        return np.ones(true_shape, dtype=np.float32), p
    return (rng.random(true_shape) < 0.5).astype(np.float32), p


@pytest.mark.filterwarnings("ignore:In loss categorical_crossentropy")
@pytest.mark.parametrize("kind, shapes", [(k, s) for k, cases in RANK_CASES.items()
                                          for s in cases])
@pytest.mark.parametrize("reduction", ["none", "sum", "sum_over_batch_size"])
def test_rank_rule_matches_keras(kind, shapes, reduction, rng):
    y, p = _rank_data(kind, *shapes, rng)
    ours = FX_CLASSES[kind](reduction=reduction)(y, p)
    theirs = np.asarray(KERAS_CLASSES[kind](reduction=reduction)(y, p))
    assert np.shape(ours) == theirs.shape
    np.testing.assert_allclose(ours, theirs, rtol=2e-6, atol=1e-7)


def test_rank_rule_reported_example():
    y = np.array([[1.0], [0.0], [1.0], [1.0], [0.0]], dtype=np.float32)
    p = np.array([0.9, 0.1, 0.2, 0.7, 0.6], dtype=np.float32)
    assert fx.BinaryCrossentropy(reduction="sum")(y, p) == pytest.approx(3.0931, abs=1e-4)
    assert fx.BinaryCrossentropy(reduction="none")(y, p).shape == (5,)
    assert fx.binary_crossentropy(y, p).shape == (5,)
    assert fx.binary_crossentropy(y[:, 0], p[:, None]).shape == (5,)


@pytest.mark.filterwarnings("ignore:In loss categorical_crossentropy")
@pytest.mark.parametrize("kind, shapes", [(k, s) for k, cases in RANK_CASES.items()
                                          for s in cases])
def test_rank_rule_gradient_has_y_pred_shape(kind, shapes, rng):
    y, p = _rank_data(kind, *shapes, rng)
    loss = FX_CLASSES[kind](reduction="sum")
    value, g = loss.loss_and_grad(y, p)
    assert g.shape == p.shape
    # the same numbers as the call at equal ranks
    true_shape, pred_shape = fx._dispatch.keras_ranks(np.shape(y), p.shape)
    y2 = np.reshape(y, true_shape) if kind != "sparse" else y
    value2, g2 = loss.loss_and_grad(y2, p.reshape(pred_shape))
    assert value == pytest.approx(value2, rel=1e-6)
    np.testing.assert_allclose(g, g2.reshape(p.shape), rtol=1e-6)
    out = np.empty_like(p)
    assert loss.loss_and_grad(y, p, grad_out=out)[1] is out
    np.testing.assert_array_equal(out, g)
    q = p.copy()
    assert loss.loss_and_grad(y, q, inplace=True)[1] is q
    np.testing.assert_array_equal(q, g)


@pytest.mark.parametrize("kind, true_shape, pred_shape", [
    ("binary", (5, 2), (5,)), ("binary", (5,), (5, 2)), ("binary", (4, 3, 1, 1), (4, 3)),
    ("binary", (4, 3), (4, 3, 1, 1)), ("categorical", (5, 3, 2), (5, 3)),
    ("categorical", (5, 3), (5, 3, 2)), ("binary", (4, 3), (3, 4)),
])
def test_other_shape_differences_raise(kind, true_shape, pred_shape):
    y = np.zeros(true_shape, dtype=np.float32)
    p = np.full(pred_shape, 0.5, dtype=np.float32)
    with pytest.raises(ValueError, match=r"y_true has shape .* but y_pred has shape") as err:
        FX_CLASSES[kind]()(y, p)
    assert str(true_shape) in str(err.value) and str(pred_shape) in str(err.value)


# ------------------------------------------------------ Keras' warnings


@pytest.mark.parametrize("call", [
    lambda y, p: fx.CategoricalCrossentropy()(y, p),
    lambda y, p: fx.CategoricalCrossentropy().loss_and_grad(y, p),
    lambda y, p: fx.categorical_crossentropy(y, p),
])
def test_single_class_warns_like_keras(call):
    y = np.ones((4, 1), dtype=np.float32)
    p = np.full((4, 1), 0.7, dtype=np.float32)
    with pytest.warns(SyntaxWarning, match=r"y_pred.shape=\(4, 1\)") as rec:
        call(y, p)
    assert rec[0].filename == __file__  # at the user's call
    with pytest.warns(SyntaxWarning, match="categorical_crossentropy"):
        keras.losses.CategoricalCrossentropy()(y, p)


def test_no_single_class_warning_otherwise(recwarn):
    p = np.full((4, 2), 0.5, dtype=np.float32)
    fx.CategoricalCrossentropy()(np.eye(2, dtype=np.float32)[[0, 1, 0, 1]], p)
    fx.SparseCategoricalCrossentropy()(np.zeros(4, dtype=np.int64), p[:, :1])
    fx.BinaryCrossentropy()(np.ones((4, 1), np.float32), p[:, :1])
    assert not [w for w in recwarn if issubclass(w.category, SyntaxWarning)]


# ------------------------------------------------------------ name= and dtype=

KERAS_NAMES = {"binary": "binary_crossentropy", "categorical": "categorical_crossentropy",
               "sparse": "sparse_categorical_crossentropy"}


@pytest.mark.parametrize("kind", ["binary", "categorical", "sparse"])
def test_default_names_are_keras(kind):
    assert FX_CLASSES[kind]().name == KERAS_NAMES[kind] == KERAS_CLASSES[kind]().name
    assert FX_CLASSES[kind]().get_config()["name"] == KERAS_NAMES[kind]
    assert FX_CLASSES[kind]().dtype is None


def _some_call(kind, rng, dtype=np.float64):
    p = rng.uniform(0.05, 1.0, (6, 3)).astype(dtype)
    if kind == "sparse":
        return rng.integers(0, 3, 6), p
    if kind == "categorical":
        return np.eye(3)[rng.integers(0, 3, 6)], p / p.sum(axis=1, keepdims=True)
    return (rng.random((6, 3)) < 0.5).astype(np.float64), p


@pytest.mark.parametrize("kind", ["binary", "categorical", "sparse"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_dtype_casts_y_pred(kind, dtype, rng):
    y, p = _some_call(kind, rng)
    loss = FX_CLASSES[kind](reduction="none", dtype=dtype, name="mine")
    assert loss.name == "mine" and loss.dtype == np.dtype(dtype)
    out = loss(y, p)
    assert out.dtype == np.dtype(dtype)
    expected = FX_CLASSES[kind](reduction="none")(y, p.astype(dtype))
    np.testing.assert_array_equal(out, expected)
    value, g = FX_CLASSES[kind](reduction="sum", dtype=dtype).loss_and_grad(y, p)
    assert g.dtype == np.dtype(dtype)
    assert value == FX_CLASSES[kind](reduction="sum")(y, p.astype(dtype))
    keras_value = KERAS_CLASSES[kind](reduction="sum", dtype=dtype)(y, p)
    assert value == pytest.approx(float(keras_value), rel=1e-5)


@pytest.mark.parametrize("kind", ["binary", "categorical", "sparse"])
def test_name_and_dtype_round_trip(kind):
    loss = FX_CLASSES[kind](reduction="sum", name="xent", dtype="float32")
    cfg = loss.get_config()
    assert cfg["name"] == "xent" and cfg["dtype"] == "float32"
    clone = FX_CLASSES[kind].from_config(cfg)
    assert clone == loss and clone.name == "xent" and clone.dtype == np.float32
    assert "name='xent'" in repr(loss)
    assert FX_CLASSES[kind](name="a") != FX_CLASSES[kind](name="b")
    # Keras-style keyword calls
    FX_CLASSES[kind](from_logits=True, reduction="none", name="n", dtype=np.float64)


@pytest.mark.parametrize("kind", ["binary", "categorical", "sparse"])
def test_bad_name_and_dtype(kind):
    with pytest.raises(TypeError, match="name must be a string"):
        FX_CLASSES[kind](name=3)
    with pytest.raises(ValueError, match="dtype must be None .*'float32' or 'float64'"):
        FX_CLASSES[kind](dtype="int32")
    with pytest.raises(ValueError, match="dtype must be"):
        FX_CLASSES[kind](dtype="float16")
    with pytest.raises(TypeError, match="dtype must be None"):
        FX_CLASSES[kind](dtype=object())


def test_dtype_and_inplace(rng):
    y, p = _some_call("binary", rng)
    with pytest.raises(ValueError, match="inplace=True needs y_pred of the loss's dtype"):
        fx.BinaryCrossentropy(dtype="float32").loss_and_grad(y, p, inplace=True)
    q = p.astype(np.float32)
    assert fx.BinaryCrossentropy(dtype="float32").loss_and_grad(y, q, inplace=True)[1] is q


def test_dtype_keeps_the_swapped_arguments_error():
    with pytest.raises(TypeError, match="y_pred"):
        fx.SparseCategoricalCrossentropy(dtype="float32")(np.ones((2, 3)), np.array([0, 1]))
