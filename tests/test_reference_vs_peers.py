"""Validate the ORACLE (tests/reference.py) against Keras 3 and PyTorch.

No fastxent here: if these pass, the oracle computes what Keras and PyTorch compute
wherever the spec says it should, and every deliberate difference from Keras is pinned
down by a test of that difference (see the ``TestKerasDifferences`` class).

Keras runs on its NumPy backend (set in conftest.py).  ``keras.losses.*`` downcast
float64 to float32 on that backend, so they are compared at float32 precision, while
``keras.ops.*`` (which keep float64) and PyTorch in float64 are compared at ~1e-12.
"""

import warnings

import numpy as np
import pytest
import reference as R
from util import (
    assert_close,
    batch_shape,
    binary_probabilities,
    binary_targets,
    central_difference,
    logits,
    one_hot_targets,
    probabilities,
    soft_targets,
    sparse_labels,
)

keras = pytest.importorskip("keras")
torch = pytest.importorskip("torch")
F = torch.nn.functional

F32 = 2e-5  # rtol for results Keras computed in float32
EPS = 1e-7


@pytest.fixture(autouse=True)
def _quiet_keras():
    with warnings.catch_warnings():
        # Keras warns about C=1 and divides 0/0 inside np.where (divide_no_nan).
        warnings.simplefilter("ignore")
        with np.errstate(all="ignore"):
            yield


def f32_as_f64(*arrays):
    """The float32 values Keras will see, and the same values in float64 for the oracle."""
    out = []
    for a in arrays:
        a32 = np.asarray(a, dtype=np.float32)
        out.append((a32, a32.astype(np.float64)))
    return out


def tt(a, grad=False):
    return torch.tensor(np.asarray(a, dtype=np.float64), requires_grad=grad)


# ===================================================================== hand values


class TestHandComputed:
    def test_keras_docstring_values(self):
        y = [[0, 1, 0], [0, 0, 1]]
        p = [[0.05, 0.95, 0], [0.1, 0.8, 0.1]]
        np.testing.assert_allclose(
            R.categorical_crossentropy(y, p), [-np.log(0.95), -np.log(0.1)], rtol=1e-12
        )
        np.testing.assert_allclose(
            R.sparse_categorical_crossentropy([1, 2], p), [-np.log(0.95), -np.log(0.1)]
        )
        yb = [[0, 1], [0, 0]]
        pb = [[0.6, 0.4], [0.4, 0.6]]
        expected = [
            -(np.log(0.4) + np.log(0.4)) / 2,
            -(np.log(0.6) + np.log(0.4)) / 2,
        ]
        np.testing.assert_allclose(R.binary_crossentropy(yb, pb), expected, rtol=1e-12)

    def test_uniform_logits(self):
        x = np.zeros((3, 4))
        np.testing.assert_allclose(
            R.sparse_categorical_crossentropy([0, 1, 3], x, from_logits=True), np.log(4)
        )
        loss, grad = R.reference_loss_and_grad(
            "sparse_categorical", [0, 1, 3], x, from_logits=True, reduction="sum"
        )
        assert loss == pytest.approx(3 * np.log(4))
        expected = np.full((3, 4), 0.25)
        expected[[0, 1, 2], [0, 1, 3]] -= 1
        np.testing.assert_allclose(grad, expected)

    def test_binary_zero_logit(self):
        loss, grad = R.reference_loss_and_grad(
            "binary", [[1.0, 0.0]], [[0.0, 0.0]], from_logits=True, reduction="none"
        )
        np.testing.assert_allclose(loss, [np.log(2)])
        np.testing.assert_allclose(grad, [[-0.25, 0.25]])  # (s - z) / 2

    def test_z_loss_hand(self):
        x = np.array([[1.0, 2.0, 3.0]])
        lse = np.log(np.exp(x).sum())
        loss = R.sparse_categorical_crossentropy([2], x, from_logits=True, z_loss=0.1)
        np.testing.assert_allclose(loss, [lse - 3.0 + 0.1 * lse**2], rtol=1e-14)

    def test_mean_with_sample_weight_class_weight(self):
        # sum_i sw_i w_{y_i} l_i / sum_i sw_i w_{y_i}
        x = np.array([[0.0, 0.0], [0.0, 0.0]])
        loss = R.reference_loss(
            "sparse_categorical",
            [0, 1],
            x,
            sample_weight=[1.0, 3.0],
            from_logits=True,
            class_weight=[2.0, 5.0],
            reduction="mean_with_sample_weight",
        )
        assert loss == pytest.approx((1 * 2 + 3 * 5) * np.log(2) / (1 * 2 + 3 * 5))


# ================================================================= Keras functions


CAT_SHAPES = [((8, 5), -1), ((3, 4, 6), -1), ((2, 3, 4, 5), -1)]


class TestKerasFunctions:
    @pytest.mark.parametrize("shape,axis", CAT_SHAPES)
    @pytest.mark.parametrize("from_logits", [True, False])
    @pytest.mark.parametrize("label_smoothing", [0.0, 0.15])
    @pytest.mark.parametrize("soft", [False, True])
    def test_categorical(self, rng, shape, axis, from_logits, label_smoothing, soft):
        y = soft_targets(rng, shape) if soft else one_hot_targets(rng, shape)
        x = logits(rng, shape) if from_logits else probabilities(rng, shape)
        (y32, y64), (x32, x64) = f32_as_f64(y, x)
        k = keras.losses.categorical_crossentropy(
            y32, x32, from_logits=from_logits, label_smoothing=label_smoothing, axis=axis
        )
        r = R.categorical_crossentropy(
            y64, x64, from_logits=from_logits, label_smoothing=label_smoothing, axis=axis
        )
        assert_close(k, r, rtol=F32)

    @pytest.mark.parametrize("shape,axis", CAT_SHAPES + [((3, 6, 4), 1), ((5, 3), 0)])
    @pytest.mark.parametrize("from_logits", [True, False])
    def test_categorical_ops_float64(self, rng, shape, axis, from_logits):
        # keras.ops keeps float64 on the numpy backend: a tight comparison.
        y = soft_targets(rng, shape, axis=axis)
        x = logits(rng, shape) if from_logits else probabilities(rng, shape)
        k = keras.ops.categorical_crossentropy(y, x, from_logits=from_logits, axis=axis)
        assert np.asarray(k).dtype == np.float64
        r = R.categorical_crossentropy(y, x, from_logits=from_logits, axis=axis)
        assert_close(k, r)

    @pytest.mark.parametrize("shape", [(8, 5), (3, 4, 6), (7, 1)])
    @pytest.mark.parametrize("from_logits", [True, False])
    @pytest.mark.parametrize("ignore_class", [None, -1, 2])
    def test_sparse(self, rng, shape, from_logits, ignore_class):
        if ignore_class == 2 and shape[-1] <= 2:
            ignore_class = 0
        labels = sparse_labels(rng, shape, ignore_class=ignore_class)
        x = logits(rng, shape) if from_logits else probabilities(rng, shape)
        ((x32, x64),) = f32_as_f64(x)
        k = keras.losses.sparse_categorical_crossentropy(
            labels, x32, from_logits=from_logits, ignore_class=ignore_class
        )
        r = R.sparse_categorical_crossentropy(
            labels, x64, from_logits=from_logits, ignore_class=ignore_class
        )
        assert_close(k, r, rtol=F32)

    @pytest.mark.parametrize("shape", [(8, 5), (3, 4, 6)])
    @pytest.mark.parametrize("from_logits", [True, False])
    def test_sparse_ops_float64(self, rng, shape, from_logits):
        labels = sparse_labels(rng, shape)
        x = logits(rng, shape) if from_logits else probabilities(rng, shape)
        k = keras.ops.sparse_categorical_crossentropy(labels, x, from_logits=from_logits)
        assert_close(k, R.sparse_categorical_crossentropy(labels, x, from_logits=from_logits))

    @pytest.mark.parametrize(
        "shape,axis", [((8, 5), -1), ((3, 4, 6), -1), ((3, 4, 6), 1), ((6,), -1)]
    )
    @pytest.mark.parametrize("from_logits", [True, False])
    @pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
    def test_binary(self, rng, shape, axis, from_logits, label_smoothing):
        z = binary_targets(rng, shape)
        # |logits| < 5: far from where Keras clips sigmoid(x) to [eps, 1 - eps]
        x = np.clip(logits(rng, shape), -5, 5) if from_logits else binary_probabilities(rng, shape)
        (z32, z64), (x32, x64) = f32_as_f64(z, x)
        k = keras.losses.binary_crossentropy(
            z32, x32, from_logits=from_logits, label_smoothing=label_smoothing, axis=axis
        )
        r = R.binary_crossentropy(
            z64, x64, from_logits=from_logits, label_smoothing=label_smoothing, axis=axis
        )
        assert np.shape(r) == batch_shape(shape, axis)
        assert_close(k, r, rtol=F32)

    def test_binary_ops_float64(self, rng):
        z = binary_targets(rng, (6, 4))
        p = binary_probabilities(rng, (6, 4))
        k = keras.ops.binary_crossentropy(z, p, from_logits=False)
        r, _ = R.sigmoid_prob_xent_elementwise(z, p, EPS)
        assert_close(k, r)


# =================================================================== Keras classes


REDUCTIONS = ["none", "sum", "sum_over_batch_size", "mean", "mean_with_sample_weight"]


def _keras_class(kind, **kw):
    cls = {
        "categorical": keras.losses.CategoricalCrossentropy,
        "sparse_categorical": keras.losses.SparseCategoricalCrossentropy,
        "binary": keras.losses.BinaryCrossentropy,
    }[kind]
    return cls(**kw)


def _case(rng, kind, shape, from_logits, ignore_class=None):
    if kind == "categorical":
        y = soft_targets(rng, shape)
    elif kind == "sparse_categorical":
        y = sparse_labels(rng, shape, ignore_class=ignore_class)
    else:
        y = binary_targets(rng, shape)
    if from_logits:
        x = logits(rng, shape)
        if kind == "binary":
            x = np.clip(x, -5, 5)
    else:
        x = binary_probabilities(rng, shape) if kind == "binary" else probabilities(rng, shape)
    return y, x


class TestKerasClasses:
    @pytest.mark.parametrize("kind", R.KINDS)
    @pytest.mark.parametrize("reduction", REDUCTIONS)
    @pytest.mark.parametrize("from_logits", [True, False])
    @pytest.mark.parametrize(
        "shape,sw_shape",
        [((9, 4), None), ((9, 4), ()), ((9, 4), (9,)), ((3, 5, 4), (3, 5)), ((3, 5, 4), None)],
    )
    def test_reductions_and_sample_weight(self, rng, kind, reduction, from_logits, shape, sw_shape):
        y, x = _case(rng, kind, shape, from_logits)
        sw = None if sw_shape is None else rng.uniform(0.1, 2.0, size=sw_shape)
        x32 = x.astype(np.float32)
        y_k = y if kind == "sparse_categorical" else y.astype(np.float32)
        k = _keras_class(kind, from_logits=from_logits, reduction=reduction)(
            y_k, x32, sample_weight=sw
        )
        r = R.reference_loss(
            kind,
            y_k,
            x32.astype(np.float64),
            sample_weight=None if sw is None else sw.astype(np.float32),
            from_logits=from_logits,
            reduction=reduction,
        )
        if reduction == "mean_with_sample_weight" and sw is not None:
            # Documented difference (see TestKerasDifferences): Keras divides by the sum of
            # the weights BEFORE broadcasting them to the loss shape (for a scalar weight:
            # by the scalar itself); the spec divides by the sum of the broadcast weights.
            loss_shape = batch_shape(shape, -1)
            r = r * R.broadcast_sample_weight(sw, loss_shape).sum() / np.sum(sw)
        assert_close(k, r, rtol=F32)

    @pytest.mark.parametrize("reduction", REDUCTIONS)
    @pytest.mark.parametrize("ignore_class", [-1, 0])
    @pytest.mark.parametrize("with_sw", [False, True])
    def test_sparse_ignore_class_reductions(self, rng, reduction, ignore_class, with_sw):
        # Keras masks ignored entries: the mean is over the valid entries only.
        shape = (4, 5, 3)
        y, x = _case(rng, "sparse_categorical", shape, True, ignore_class=ignore_class)
        sw = rng.uniform(0.5, 2.0, size=(4, 5)) if with_sw else None
        k = keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, ignore_class=ignore_class, reduction=reduction
        )(y, x.astype(np.float32), sample_weight=sw)
        r = R.reference_loss(
            "sparse_categorical",
            y,
            x.astype(np.float32).astype(np.float64),
            sample_weight=None if sw is None else sw.astype(np.float32),
            from_logits=True,
            ignore_class=ignore_class,
            reduction=reduction,
        )
        assert_close(k, r, rtol=F32)

    @pytest.mark.parametrize("reduction", ["sum", "sum_over_batch_size", "mean_with_sample_weight"])
    def test_all_ignored_gives_zero(self, rng, reduction):
        x = logits(rng, (4, 3))
        y = np.full(4, -1)
        k = keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, ignore_class=-1, reduction=reduction
        )(y, x)
        r = R.reference_loss(
            "sparse_categorical", y, x, from_logits=True, ignore_class=-1, reduction=reduction
        )
        assert float(k) == 0.0 and r == 0.0

    def test_zero_sample_weights_give_zero(self, rng):
        # divide_no_nan: mean_with_sample_weight with all-zero weights is 0.0
        y, x = _case(rng, "categorical", (5, 3), True)
        sw = np.zeros(5)
        k = keras.losses.CategoricalCrossentropy(
            from_logits=True, reduction="mean_with_sample_weight"
        )(y, x, sample_weight=sw)
        r = R.reference_loss(
            "categorical", y, x, sw, from_logits=True, reduction="mean_with_sample_weight"
        )
        assert float(k) == 0.0 and r == 0.0

    @pytest.mark.parametrize("label_smoothing", [0.0, 0.3])
    def test_classes_label_smoothing(self, rng, label_smoothing):
        y, x = _case(rng, "categorical", (6, 4), True)
        k = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=label_smoothing)(
            y, x.astype(np.float32)
        )
        r = R.reference_loss(
            "categorical",
            y,
            x.astype(np.float32),
            from_logits=True,
            label_smoothing=label_smoothing,
        )
        assert_close(k, r, rtol=F32)
        z, xb = _case(rng, "binary", (6, 4), True)
        k = keras.losses.BinaryCrossentropy(from_logits=True, label_smoothing=label_smoothing)(
            z, xb.astype(np.float32)
        )
        r = R.reference_loss(
            "binary", z, xb.astype(np.float32), from_logits=True, label_smoothing=label_smoothing
        )
        assert_close(k, r, rtol=F32)


# ===================================================== documented Keras differences


class TestKerasDifferences:
    """Where the spec deliberately departs from Keras: each difference, pinned down."""

    def test_keras_downcasts_float64(self, rng):
        # Keras' numpy backend computes keras.losses.* in float32 even for float64 input;
        # the oracle (and fastxent) stay in float64.
        y, x = _case(rng, "categorical", (16, 7), True)
        k = keras.losses.categorical_crossentropy(y, x, from_logits=True)
        r = R.categorical_crossentropy(y, x, from_logits=True)
        assert np.asarray(k).dtype == np.float32
        assert r.dtype == np.float64
        assert_close(k, r, rtol=F32)  # agrees to float32 precision ...
        assert np.max(np.abs(np.asarray(k, np.float64) - r) / r) > 1e-12  # ... only
        kc = keras.losses.CategoricalCrossentropy(from_logits=True, reduction="none")(y, x)
        assert np.asarray(kc).dtype == np.float32

    @pytest.mark.parametrize("x,z", [(30.0, 0.0), (-30.0, 1.0), (20.0, 0.0)])
    def test_keras_clips_sigmoid_even_from_logits(self, x, z):
        # Keras: sigmoid(x) then clip to [eps, 1-eps], so the loss saturates near
        # -log(eps) ~ 16.1.  The spec uses the exact stable form max(x,0) - xz + log1p(e^-|x|).
        xa = np.array([[x]])
        za = np.array([[z]])
        k = float(keras.losses.binary_crossentropy(za, xa, from_logits=True)[0])
        r = float(R.binary_crossentropy(za, xa, from_logits=True)[0])
        assert r == pytest.approx(abs(x) + np.log1p(np.exp(-abs(x))), rel=1e-14)
        assert k < 16.2 < r

    def test_minus_inf_mask_with_zero_target(self):
        # Keras: 0 * log_softmax(-inf) = 0 * -inf = NaN.  Spec: a -inf logit whose target
        # is 0 contributes nothing: the loss equals the loss with that class removed.
        x = np.array([[1.0, -np.inf, 0.5, 2.0]])
        t = np.array([[0.3, 0.0, 0.2, 0.5]])
        k = keras.ops.categorical_crossentropy(t, x, from_logits=True)
        assert np.isnan(k).all()
        ks = keras.losses.sparse_categorical_crossentropy(np.array([0]), x, from_logits=True)
        assert np.isnan(ks).all()  # Keras' one-hot product hits the same 0 * -inf
        r, g = R.reference_loss_and_grad("categorical", t, x, from_logits=True, reduction="none")
        keep = [0, 2, 3]
        r_removed = R.categorical_crossentropy(t[:, keep], x[:, keep], from_logits=True)
        np.testing.assert_allclose(r, r_removed, rtol=1e-14)
        assert g[0, 1] == 0.0 and np.isfinite(g).all()
        r_sparse = R.sparse_categorical_crossentropy([0], x, from_logits=True)
        np.testing.assert_allclose(
            r_sparse, R.sparse_categorical_crossentropy([0], x[:, keep], from_logits=True)
        )

    @pytest.mark.parametrize("reduction", ["sum", "sum_over_batch_size", "mean_with_sample_weight"])
    def test_empty_batch(self, reduction):
        # Keras returns the empty per-sample array unreduced; the spec says 0.0.
        y = np.zeros((0, 3))
        x = np.zeros((0, 3))
        k = keras.losses.CategoricalCrossentropy(from_logits=True, reduction=reduction)(y, x)
        assert np.asarray(k).shape == (0,)
        loss, grad = R.reference_loss_and_grad(
            "categorical", y, x, from_logits=True, reduction=reduction
        )
        assert loss == 0.0 and type(loss) is float and grad.shape == (0, 3)
        loss_none, _ = R.reference_loss_and_grad(
            "categorical", y, x, from_logits=True, reduction="none"
        )
        assert loss_none.shape == (0,)

    def test_label_smoothing_axis_not_last(self, rng):
        # Keras smooths with num_classes = shape[-1] even when axis != -1 (a Keras bug);
        # the spec uses the size of `axis`.
        shape, axis, e = (3, 6, 4), 1, 0.2
        y = one_hot_targets(rng, shape, axis=axis)
        x = logits(rng, shape)
        k = keras.losses.categorical_crossentropy(
            y.astype(np.float32),
            x.astype(np.float32),
            from_logits=True,
            label_smoothing=e,
            axis=axis,
        )
        x64 = x.astype(np.float32).astype(np.float64)
        keras_targets = y * (1 - e) + e / shape[-1]
        assert_close(k, R.categorical_crossentropy(keras_targets, x64, True, axis=axis), rtol=F32)
        spec = R.categorical_crossentropy(y, x64, True, label_smoothing=e, axis=axis)
        np.testing.assert_allclose(
            spec, R.categorical_crossentropy(y * (1 - e) + e / shape[axis], x64, True, axis=axis)
        )
        assert np.max(np.abs(spec - np.asarray(k))) > 1e-3

    def test_mean_with_sample_weight_broadcast_weights(self, rng):
        # Keras divides by sum(sample_weight) BEFORE broadcasting it to the loss shape, so
        # a (batch, 1) weight on a (batch, seq) loss gives seq times the weighted mean.
        # The spec's denominator is sum_i sw_i over per-sample entries (a weighted mean).
        labels = sparse_labels(rng, (4, 3, 5))
        x = logits(rng, (4, 3, 5))
        sw = rng.uniform(0.5, 2.0, size=(4, 1))
        k = keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, reduction="mean_with_sample_weight"
        )(labels, x, sample_weight=sw)
        r = R.reference_loss(
            "sparse_categorical",
            labels,
            x,
            sw,
            from_logits=True,
            reduction="mean_with_sample_weight",
        )
        per = R.sparse_categorical_crossentropy(labels, x, from_logits=True)
        np.testing.assert_allclose(r, (per * sw).sum() / np.broadcast_to(sw, (4, 3)).sum())
        assert float(k) == pytest.approx(3 * r, rel=F32)

    def test_lower_rank_sample_weight_aligned_to_leading_dims(self, rng):
        # Keras 3 broadcasts a (batch,) weight against a (batch, seq) loss NumPy-style
        # (trailing alignment), which fails; the spec aligns it to the leading dims.
        labels = sparse_labels(rng, (4, 3, 5))
        x = logits(rng, (4, 3, 5))
        sw = rng.uniform(0.5, 2.0, size=4)
        with pytest.raises(ValueError):
            keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="sum")(
                labels, x, sample_weight=sw
            )
        k = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="sum")(
            labels, x.astype(np.float32), sample_weight=sw[:, None]
        )
        r = R.reference_loss(
            "sparse_categorical",
            labels,
            x.astype(np.float32),
            sw,
            from_logits=True,
            reduction="sum",
        )
        assert_close(k, r, rtol=F32)

    def test_negative_label_without_ignore_class(self, rng):
        # Keras' numpy one_hot silently gives an all-zero row (loss 0) for a negative
        # label; the spec raises ValueError naming the position.
        x = logits(rng, (3, 4))
        k = keras.losses.sparse_categorical_crossentropy(np.array([0, -2, 1]), x, from_logits=True)
        assert float(np.asarray(k)[1]) == 0.0
        with pytest.raises(ValueError, match=r"\(1,\)"):
            R.sparse_categorical_crossentropy([0, -2, 1], x, from_logits=True)

    def test_mask_mean_is_exact(self, rng):
        # Some Keras versions divide a masked mean by (valid + 1e-7) / use total/valid
        # weights; on Keras 3's numpy backend apply_mask uses divide_no_nan(total, valid),
        # which equals sum / valid up to float32 rounding -- as does the spec.
        labels = np.array([0, -1, 2, -1, 1, -1, -1])
        x = logits(rng, (7, 3))
        k = keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=-1)(labels, x)
        per = R.sparse_categorical_crossentropy(labels, x, from_logits=True, ignore_class=-1)
        assert per[labels == -1].tolist() == [0.0] * 4
        r = R.reference_loss("sparse_categorical", labels, x, from_logits=True, ignore_class=-1)
        assert r == pytest.approx(per.sum() / 3, rel=1e-14)
        assert float(k) == pytest.approx(r, rel=F32)


# ======================================================================= PyTorch


TORCH_RED = {"none": "none", "sum": "sum"}


class TestTorchCrossEntropyIndexTargets:
    @pytest.mark.parametrize("shape", [(10, 5), (3, 5, 4), (2, 4, 3, 3)])
    @pytest.mark.parametrize("weighted", [False, True])
    @pytest.mark.parametrize("ignore", [False, True])
    @pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
    @pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
    def test_loss_and_grad(self, rng, shape, weighted, ignore, label_smoothing, reduction):
        # torch's class dim is 1: our axis=1.
        n_classes = shape[1]
        ignore_index = -100
        labels = sparse_labels(rng, shape, axis=1, ignore_class=ignore_index if ignore else None)
        x = logits(rng, shape)
        w = rng.uniform(0.2, 3.0, size=n_classes) if weighted else None
        xt = tt(x, grad=True)
        tl = F.cross_entropy(
            xt,
            torch.tensor(labels),
            weight=None if w is None else tt(w),
            ignore_index=ignore_index,
            label_smoothing=label_smoothing,
            reduction=reduction,
        )
        (tg,) = torch.autograd.grad(tl.sum(), xt)
        # torch's weighted mean is sum_i w_{y_i} l_i / sum_i w_{y_i}
        ours = {"none": "none", "sum": "sum", "mean": "mean_with_sample_weight"}[reduction]
        loss, grad = R.reference_loss_and_grad(
            "sparse_categorical",
            labels,
            x,
            from_logits=True,
            axis=1,
            class_weight=w,
            ignore_class=ignore_index if ignore else None,
            label_smoothing=label_smoothing,
            reduction=ours,
        )
        assert_close(loss, tl.detach().numpy())
        assert_close(grad, tg.numpy())
        if reduction == "mean" and w is None:
            # unweighted torch mean over valid entries == sum_over_batch_size
            loss2, grad2 = R.reference_loss_and_grad(
                "sparse_categorical",
                labels,
                x,
                from_logits=True,
                axis=1,
                ignore_class=ignore_index if ignore else None,
                label_smoothing=label_smoothing,
            )
            assert_close(loss2, tl.detach().numpy())
            assert_close(grad2, tg.numpy())

    def test_all_ignored(self, rng):
        # torch gives NaN (0/0) for an all-ignored mean; the spec (Keras) gives 0.0.
        x = logits(rng, (3, 4))
        labels = np.full(3, -100)
        tl = F.cross_entropy(tt(x), torch.tensor(labels), ignore_index=-100)
        assert torch.isnan(tl)
        loss, grad = R.reference_loss_and_grad(
            "sparse_categorical", labels, x, from_logits=True, ignore_class=-100
        )
        assert loss == 0.0 and not grad.any()

    def test_minus_inf_masks(self, rng):
        x = logits(rng, (4, 5))
        x[0, 1] = x[1, 3] = x[1, 4] = x[2, 0] = -np.inf
        labels = np.array([0, 2, 0, 4])  # row 2: the labelled class is masked
        xt = tt(x, grad=True)
        tl = F.cross_entropy(xt, torch.tensor(labels), reduction="none")
        (tg,) = torch.autograd.grad(tl.sum(), xt)
        loss, grad = R.reference_loss_and_grad(
            "sparse_categorical", labels, x, from_logits=True, reduction="none"
        )
        assert np.isposinf(loss[2]) and np.isfinite(loss[[0, 1, 3]]).all()
        assert_close(loss, tl.detach().numpy())
        assert_close(grad, tg.numpy())
        assert grad[0, 1] == grad[1, 3] == grad[1, 4] == 0.0

    def test_nan_row(self, rng):
        x = logits(rng, (3, 4))
        x[1, 2] = np.nan
        xt = tt(x, grad=True)
        tl = F.cross_entropy(xt, torch.tensor([0, 1, 2]), reduction="none")
        (tg,) = torch.autograd.grad(tl.sum(), xt)
        loss, grad = R.reference_loss_and_grad(
            "sparse_categorical", [0, 1, 2], x, from_logits=True, reduction="none"
        )
        assert np.isnan(loss[1]) and np.isnan(grad[1]).all()
        assert_close(loss, tl.detach().numpy())
        assert_close(grad, tg.numpy())


class TestTorchCrossEntropyProbTargets:
    @pytest.mark.parametrize("shape", [(10, 5), (3, 5, 4)])
    @pytest.mark.parametrize("weighted", [False, True])
    @pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
    @pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
    def test_loss_and_grad(self, rng, shape, weighted, label_smoothing, reduction):
        t = soft_targets(rng, shape, axis=1)
        x = logits(rng, shape)
        w = rng.uniform(0.2, 3.0, size=shape[1]) if weighted else None
        xt = tt(x, grad=True)
        tl = F.cross_entropy(
            xt,
            tt(t),
            weight=None if w is None else tt(w),
            label_smoothing=label_smoothing,
            reduction=reduction,
        )
        (tg,) = torch.autograd.grad(tl.sum(), xt)
        # torch's mean with probability targets divides by the number of samples
        ours = {"none": "none", "sum": "sum", "mean": "sum_over_batch_size"}[reduction]
        loss, grad = R.reference_loss_and_grad(
            "categorical",
            t,
            x,
            from_logits=True,
            axis=1,
            class_weight=w,
            label_smoothing=label_smoothing,
            reduction=ours,
        )
        assert_close(loss, tl.detach().numpy())
        assert_close(grad, tg.numpy())

    def test_one_hot_weighted_mean_matches_index_targets(self, rng):
        # mean_with_sample_weight with class_weight divides by sum_i sum_k w_k t_ik
        # (unsmoothed), so one-hot targets reproduce torch's weighted index-target mean.
        x = logits(rng, (8, 4))
        labels = sparse_labels(rng, (8, 4))
        w = rng.uniform(0.2, 3.0, size=4)
        tl = F.cross_entropy(tt(x), torch.tensor(labels), weight=tt(w), label_smoothing=0.1)
        loss = R.reference_loss(
            "categorical",
            np.eye(4)[labels],
            x,
            from_logits=True,
            class_weight=w,
            label_smoothing=0.1,
            reduction="mean_with_sample_weight",
        )
        assert_close(loss, tl.item())

    def test_sample_weight(self, rng):
        t = soft_targets(rng, (6, 3))
        x = logits(rng, (6, 3))
        sw = rng.uniform(0.1, 2.0, size=6)
        xt = tt(x, grad=True)
        per = F.cross_entropy(xt, tt(t), reduction="none")
        tl = (per * tt(sw)).sum() / tt(sw).sum()
        (tg,) = torch.autograd.grad(tl, xt)
        loss, grad = R.reference_loss_and_grad(
            "categorical", t, x, sw, from_logits=True, reduction="mean_with_sample_weight"
        )
        assert_close(loss, tl.item())
        assert_close(grad, tg.numpy())


class TestTorchZLoss:
    @pytest.mark.parametrize("sparse", [False, True])
    @pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
    def test_z_loss(self, rng, sparse, label_smoothing):
        z = 0.03
        x = logits(rng, (7, 5))
        xt = tt(x, grad=True)
        if sparse:
            y = sparse_labels(rng, (7, 5))
            target = torch.tensor(y)
        else:
            y = soft_targets(rng, (7, 5))
            target = tt(y)
        tl = F.cross_entropy(xt, target, label_smoothing=label_smoothing, reduction="none")
        tl = tl + z * torch.logsumexp(xt, dim=1) ** 2
        (tg,) = torch.autograd.grad(tl.sum(), xt)
        kind = "sparse_categorical" if sparse else "categorical"
        loss, grad = R.reference_loss_and_grad(
            kind,
            y,
            x,
            from_logits=True,
            z_loss=z,
            label_smoothing=label_smoothing,
            reduction="none",
        )
        assert_close(loss, tl.detach().numpy())
        assert_close(grad, tg.numpy())

    def test_z_loss_not_class_weighted_and_ignored(self, rng):
        z = 0.05
        x = logits(rng, (6, 4))
        labels = np.array([0, 1, -1, 3, 2, -1])
        w = rng.uniform(0.5, 2.0, size=4)
        xt = tt(x, grad=True)
        ce = F.cross_entropy(
            xt, torch.tensor(labels), weight=tt(w), ignore_index=-1, reduction="none"
        )
        valid = torch.tensor(labels != -1, dtype=torch.float64)
        tl = ce + z * torch.logsumexp(xt, dim=1) ** 2 * valid
        (tg,) = torch.autograd.grad(tl.sum(), xt)
        loss, grad = R.reference_loss_and_grad(
            "sparse_categorical",
            labels,
            x,
            from_logits=True,
            class_weight=w,
            ignore_class=-1,
            z_loss=z,
            reduction="none",
        )
        assert_close(loss, tl.detach().numpy())
        assert_close(grad, tg.numpy())


class TestTorchFromProbabilities:
    @pytest.mark.parametrize("sparse", [False, True])
    @pytest.mark.parametrize("weighted", [False, True])
    @pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
    @pytest.mark.parametrize("clipped", [False, True])
    def test_keras_formula_gradient(self, rng, sparse, weighted, label_smoothing, clipped):
        # torch autograd through normalize -> clamp -> log, Keras' formula written in torch
        n, c = 6, 5
        p = probabilities(rng, (n, c))
        if clipped:
            p[0, 1] = 1e-10 * p[0].sum()  # q < eps: clip active, zero derivative there
            p[1] = [1.0, 1e-12, 1e-12, 1e-12, 1e-12]  # q_0 > 1 - eps: every class clipped
        if sparse:
            y = sparse_labels(rng, (n, c))
            t = np.eye(c)[y]
        else:
            y = t = soft_targets(rng, (n, c))
        w = rng.uniform(0.2, 3.0, size=c) if weighted else np.ones(c)
        ts = t * (1 - label_smoothing) + label_smoothing / c
        pt = tt(p, grad=True)
        q = pt / pt.sum(dim=1, keepdim=True)
        tl = -(tt(ts * w) * torch.log(torch.clamp(q, EPS, 1 - EPS))).sum(dim=1)
        (tg,) = torch.autograd.grad(tl.sum(), pt)
        kind = "sparse_categorical" if sparse else "categorical"
        loss, grad = R.reference_loss_and_grad(
            kind,
            y,
            p,
            from_logits=False,
            class_weight=w if weighted else None,
            label_smoothing=label_smoothing,
            reduction="none",
        )
        assert_close(loss, tl.detach().numpy())
        assert_close(grad, tg.numpy())
        if clipped:
            assert not grad[1].any()

    @pytest.mark.parametrize("pos_weight", [None, 2.5, "vector"])
    def test_binary_probabilities(self, rng, pos_weight):
        shape = (5, 4)
        z = binary_targets(rng, shape)
        p = binary_probabilities(rng, shape)
        p[0, 0] = 1e-9  # clipped: zero derivative
        p[1, 1] = 1 - 1e-9
        pw = rng.uniform(0.5, 3.0, size=4) if pos_weight == "vector" else pos_weight
        pt = tt(p, grad=True)
        c = torch.clamp(pt, EPS, 1 - EPS)
        pwt = tt(1.0 if pw is None else pw)
        el = -(pwt * tt(z) * torch.log(c) + (1 - tt(z)) * torch.log(1 - c))
        tl = el.mean(dim=1)
        (tg,) = torch.autograd.grad(tl.sum(), pt)
        loss, grad = R.reference_loss_and_grad(
            "binary", z, p, from_logits=False, pos_weight=pw, reduction="none"
        )
        assert_close(loss, tl.detach().numpy())
        assert_close(grad, tg.numpy())
        assert grad[0, 0] == 0.0 and grad[1, 1] == 0.0
        if pw is None:
            # away from the clip, F.binary_cross_entropy is the same formula
            q = binary_probabilities(rng, shape)
            qt = tt(q, grad=True)
            tb = F.binary_cross_entropy(qt, tt(z), reduction="none").mean(dim=1)
            (tbg,) = torch.autograd.grad(tb.sum(), qt)
            loss, grad = R.reference_loss_and_grad("binary", z, q, reduction="none")
            assert_close(loss, tb.detach().numpy())
            assert_close(grad, tbg.numpy())


class TestTorchBCEWithLogits:
    @pytest.mark.parametrize("shape", [(8, 3), (2, 3, 4), (6,)])
    @pytest.mark.parametrize("pos_weight", [None, 3.0, "vector"])
    @pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
    @pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
    def test_loss_and_grad(self, rng, shape, pos_weight, label_smoothing, reduction):
        z = binary_targets(rng, shape, hard=True)
        x = logits(rng, shape, scale=4.0)
        k = shape[-1]
        pw = rng.uniform(0.3, 4.0, size=k) if pos_weight == "vector" else pos_weight
        zs = z * (1 - label_smoothing) + 0.5 * label_smoothing  # torch has no smoothing arg
        xt = tt(x, grad=True)
        el = F.binary_cross_entropy_with_logits(
            xt,
            tt(zs),
            pos_weight=None if pw is None else tt(np.broadcast_to(pw, (k,))),
            reduction="none",
        )
        tl = {"none": el.mean(dim=-1), "sum": el.sum() / k, "mean": el.mean()}[reduction]
        (tg,) = torch.autograd.grad(tl.sum(), xt)
        ours = {"none": "none", "sum": "sum", "mean": "sum_over_batch_size"}[reduction]
        loss, grad = R.reference_loss_and_grad(
            "binary",
            z,
            x,
            from_logits=True,
            pos_weight=pw,
            label_smoothing=label_smoothing,
            reduction=ours,
        )
        assert_close(loss, tl.detach().numpy())
        assert_close(grad, tg.numpy())

    def test_per_sample_weight_is_torch_weight(self, rng):
        z = binary_targets(rng, (7, 3))
        x = logits(rng, (7, 3))
        sw = rng.uniform(0.1, 2.0, size=7)
        xt = tt(x, grad=True)
        tl = F.binary_cross_entropy_with_logits(xt, tt(z), weight=tt(sw[:, None]), reduction="mean")
        (tg,) = torch.autograd.grad(tl, xt)
        loss, grad = R.reference_loss_and_grad("binary", z, x, sw, from_logits=True)
        assert_close(loss, tl.item())
        assert_close(grad, tg.numpy())

    def test_huge_logits(self):
        x = np.array([[1e30, -1e30, 1e30, -1e30, 0.0]])
        z = np.array([[1.0, 0.0, 0.0, 1.0, 1.0]])
        xt = tt(x, grad=True)
        el = F.binary_cross_entropy_with_logits(xt, tt(z), reduction="none")
        (tg,) = torch.autograd.grad(el.mean(), xt)
        loss, grad = R.reference_loss_and_grad("binary", z, x, from_logits=True, reduction="none")
        np.testing.assert_allclose(loss, el.detach().numpy().mean(axis=1), rtol=1e-15)
        np.testing.assert_allclose(grad, tg.numpy(), rtol=1e-15)
        assert loss[0] == pytest.approx((2e30 + np.log(2)) / 5)


# ========================================= the oracle's gradients vs finite differences


def _fd_case(rng, kind, from_logits, shape, axis):
    if kind == "categorical":
        y = soft_targets(rng, shape, axis=axis)
    elif kind == "sparse_categorical":
        y = sparse_labels(rng, shape, axis=axis)
    else:
        y = binary_targets(rng, shape)
    if from_logits:
        x = logits(rng, shape)
    else:
        x = binary_probabilities(rng, shape) if kind == "binary" else probabilities(rng, shape)
    return y, x


class TestOracleFiniteDifferences:
    @pytest.mark.parametrize("kind", R.KINDS)
    @pytest.mark.parametrize("from_logits", [True, False])
    @pytest.mark.parametrize("shape,axis", [((4, 3), -1), ((2, 3, 4), 1)])
    @pytest.mark.parametrize("weights", [False, True])
    @pytest.mark.parametrize("reduction", ["sum", "mean_with_sample_weight"])
    def test_gradient(self, rng, kind, from_logits, shape, axis, weights, reduction):
        y, x = _fd_case(rng, kind, from_logits, shape, axis)
        opts = dict(from_logits=from_logits, axis=axis, reduction=reduction, label_smoothing=0.1)
        n = shape[axis]
        if weights and kind == "binary":
            opts["pos_weight"] = rng.uniform(0.5, 2.0, size=n)
        elif weights:
            opts["class_weight"] = rng.uniform(0.5, 2.0, size=n)
            if from_logits:
                opts["z_loss"] = 0.02
        sw = rng.uniform(0.5, 2.0, size=batch_shape(shape, axis))
        _, grad = R.reference_loss_and_grad(kind, y, x, sw, **opts)
        fd = central_difference(
            lambda v: R.reference_loss(kind, y, v, sw, **opts), x, floor=1.0 if from_logits else 0.0
        )
        assert_close(grad, fd, rtol=1e-6)
