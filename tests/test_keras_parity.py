"""Parity with Keras 3 on the corners where fastxent once differed.

* the probability clip ``[eps, 1 - eps]`` is computed in y_pred's dtype;
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
