"""Adversarial inputs (bottleneck's idea): one class, empty batches, +-1e30 and -inf
logits, NaN rows, boundary labels, and every memory layout an array can have."""

import warnings

import numpy as np
import pytest
import reference as R
from util import (
    CLASSES,
    DTYPES,
    FUNCTIONS,
    assert_close,
    binary_targets,
    logits,
    make_data,
    one_hot_targets,
    probabilities,
    soft_targets,
    sparse_labels,
    unaligned,
)

import fastxent as fx

REDUCTIONS = ["none", "sum", "sum_over_batch_size", "mean", "mean_with_sample_weight"]


def oracle(kind, y, x, sw=None, **opts):
    return R.reference_loss_and_grad(kind, y, np.asarray(x, dtype=np.float64), sw, **opts)


def data(rng, kind, shape, dtype=np.float64, from_logits=True, axis=-1):
    return make_data(rng, kind, shape, axis, dtype, from_logits)


def check_against_oracle(kind, y, x, sw=None, reductions=REDUCTIONS, **opts):
    dtype = np.asarray(x).dtype
    for reduction in reductions:
        loss, grad = CLASSES[kind](reduction=reduction, **opts).loss_and_grad(y, x, sw)
        exp_loss, exp_grad = oracle(kind, y, x, sw, reduction=reduction, **opts)
        assert_close(loss, exp_loss, dtype, err_msg=reduction)
        assert_close(grad, exp_grad, dtype, err_msg=reduction)
        assert grad.dtype == dtype and grad.shape == np.shape(x)


# ==================================================================== one class


class TestOneClass:
    @pytest.mark.parametrize("dtype", DTYPES)
    @pytest.mark.parametrize("from_logits", [True, False])
    @pytest.mark.parametrize("label_smoothing", [0.0, 0.3])
    def test_categorical(self, rng, dtype, from_logits, label_smoothing):
        x = logits(rng, (6, 1), dtype) if from_logits else rng.uniform(0.1, 1, (6, 1)).astype(dtype)
        y = np.ones((6, 1), dtype)
        # Keras' SyntaxWarning for a single class, and no other warning
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            check_against_oracle(
                "categorical", y, x, from_logits=from_logits, label_smoothing=label_smoothing
            )
        assert rec and all(issubclass(w.category, SyntaxWarning) for w in rec), rec
        if from_logits:  # softmax of one class is 1: zero loss, zero gradient
            with pytest.warns(SyntaxWarning, match="num_classes > 1"):
                loss, grad = fx.CategoricalCrossentropy(
                    from_logits=True, reduction="none"
                ).loss_and_grad(y, x)
            assert not loss.any() and not grad.any()

    @pytest.mark.parametrize("dtype", DTYPES)
    def test_categorical_z_loss(self, rng, dtype):
        x = logits(rng, (6, 1), dtype)
        y = np.ones((6, 1), dtype)
        check_against_oracle("categorical", y, x, from_logits=True, z_loss=0.1)
        loss = fx.categorical_crossentropy(y, x, from_logits=True, z_loss=0.1)
        assert_close(loss, 0.1 * x[:, 0].astype(np.float64) ** 2, dtype)  # lse = x

    @pytest.mark.parametrize("dtype", DTYPES)
    @pytest.mark.parametrize("from_logits", [True, False])
    def test_sparse(self, rng, dtype, from_logits):
        x = logits(rng, (5, 1), dtype) if from_logits else rng.uniform(0.1, 1, (5, 1)).astype(dtype)
        check_against_oracle(
            "sparse_categorical", np.zeros(5, np.int64), x, from_logits=from_logits
        )

    @pytest.mark.parametrize("dtype", DTYPES)
    @pytest.mark.parametrize("from_logits", [True, False])
    def test_binary(self, rng, dtype, from_logits):
        y, x = data(rng, "binary", (7, 1), dtype, from_logits)
        check_against_oracle("binary", y, x, from_logits=from_logits, pos_weight=[2.0])


# ================================================================== empty batches


class TestEmpty:
    @pytest.mark.parametrize("kind", list(CLASSES))
    @pytest.mark.parametrize("dtype", DTYPES)
    @pytest.mark.parametrize(
        "shape,axis", [((0, 4), -1), ((0, 3, 4), -1), ((2, 0, 4), -1), ((3, 0), 0)]
    )
    def test_empty(self, rng, kind, dtype, shape, axis):
        y, x = data(rng, kind, shape, dtype, axis=axis)
        loss_shape = tuple(d for i, d in enumerate(shape) if i != axis % len(shape))
        out = FUNCTIONS[kind](y, x, from_logits=True, axis=axis)
        assert out.shape == loss_shape and out.dtype == dtype
        for reduction in REDUCTIONS:
            obj = CLASSES[kind](from_logits=True, axis=axis, reduction=reduction)
            loss, grad = obj.loss_and_grad(y, x, np.ones(loss_shape))
            assert grad.shape == shape and grad.dtype == dtype
            if reduction == "none":
                assert loss.shape == loss_shape and loss.dtype == dtype
            else:
                assert loss == 0.0 and type(loss) is float
            assert obj(y, x) == loss if reduction != "none" else obj(y, x).shape == loss_shape

    def test_empty_with_ignore_class_and_class_weight(self):
        x = np.zeros((0, 3), np.float32)
        y = np.zeros(0, np.int64)
        obj = fx.SparseCategoricalCrossentropy(
            from_logits=True,
            ignore_class=-1,
            class_weight=[1.0, 2.0, 3.0],
            reduction="mean_with_sample_weight",
        )
        assert obj(y, x) == 0.0


# ================================================================ huge logits


class TestHugeLogits:
    @pytest.mark.parametrize("dtype", DTYPES)
    def test_sparse(self, dtype):
        x = np.array(
            [[1e30, 0.0, -1e30], [1e30, 0.0, -1e30], [-1e30, -1e30, 1e30], [-1e30, 1e30, -1e30]],
            dtype,
        )
        labels = np.array([0, 1, 0, 1])
        loss, grad = fx.SparseCategoricalCrossentropy(
            from_logits=True, reduction="none"
        ).loss_and_grad(labels, x)
        np.testing.assert_array_equal(loss, np.array([0.0, 1e30, 2e30, 0.0], dtype))
        expected = np.array([[0, 0, 0], [1, -1, 0], [-1, 0, 1], [0, 0, 0]], dtype)
        np.testing.assert_array_equal(grad, expected)
        check_against_oracle("sparse_categorical", labels, x, from_logits=True)

    @pytest.mark.parametrize("dtype", DTYPES)
    def test_ties_at_huge_magnitude(self, dtype):
        # lse = 1e30 + log 2; the loss log 2 must not be lost to cancellation
        # (compute (max - x_y) + log(sum exp(x - max)), not lse - x_y).
        x = np.array([[1e30, 1e30, -1e30], [-1e30, 1e30, 1e30]], dtype)
        loss, grad = fx.SparseCategoricalCrossentropy(
            from_logits=True, reduction="none"
        ).loss_and_grad(np.array([0, 2]), x)
        assert_close(loss, [np.log(2), np.log(2)], dtype)
        assert_close(grad, [[-0.5, 0.5, 0.0], [0.0, 0.5, -0.5]], dtype)
        t = np.array([[0.5, 0.5, 0.0], [0.0, 0.25, 0.75]], dtype)
        out = fx.categorical_crossentropy(t, x, from_logits=True)
        assert_close(out, [np.log(2), np.log(2)], dtype)

    @pytest.mark.parametrize("dtype", DTYPES)
    def test_categorical_soft(self, rng, dtype):
        x = np.array([[1e30, 1.0, -1e30, 2.0], [-1e30, -1e30, 1e30, 0.0]], dtype)
        t = soft_targets(rng, (2, 4), dtype=dtype)
        check_against_oracle("categorical", t, x, from_logits=True)
        check_against_oracle(
            "categorical", t, x, from_logits=True, label_smoothing=0.1, class_weight=[1, 2, 3, 4]
        )

    @pytest.mark.parametrize("dtype", DTYPES)
    def test_binary(self, dtype):
        x = np.array([[1e30, -1e30, 1e30, -1e30], [1e30, 1e30, -1e30, 0.0]], dtype)
        z = np.array([[1.0, 0.0, 0.0, 1.0], [0.5, 1.0, 0.0, 1.0]], dtype)
        loss, grad = fx.BinaryCrossentropy(from_logits=True, reduction="none").loss_and_grad(z, x)
        assert_close(loss, [(1e30 + 1e30) / 4, (5e29 + np.log(2)) / 4], dtype)
        assert_close(grad, [[0, 0, 0.25, -0.25], [0.125, 0, 0, -0.125]], dtype)
        check_against_oracle("binary", z, x, from_logits=True)
        check_against_oracle(
            "binary", z, x, from_logits=True, pos_weight=[1, 2, 3, 4], label_smoothing=0.1
        )


# ============================================================ -inf masks and NaN


class TestMinusInfMasks:
    @pytest.mark.parametrize("dtype", DTYPES)
    def test_masked_class_with_zero_target_contributes_nothing(self, rng, dtype):
        x = logits(rng, (5, 6), dtype)
        masked = np.zeros((5, 6), bool)
        masked[0, 1] = masked[1, [0, 5]] = masked[3, 2] = masked[4, :5] = True
        x[masked] = -np.inf
        t = soft_targets(rng, (5, 6), dtype=dtype)
        t[masked] = 0.0
        t /= t.sum(axis=1, keepdims=True)
        for kind, y in (("categorical", t), ("sparse_categorical", np.argmax(t, axis=1))):
            obj = CLASSES[kind](from_logits=True, reduction="none")
            loss, grad = obj.loss_and_grad(y, x)
            assert np.isfinite(loss).all() and np.isfinite(grad).all()
            assert not grad[masked].any()  # exactly zero
            check_against_oracle(kind, y, x, from_logits=True)
            check_against_oracle(
                kind, y, x, from_logits=True, z_loss=0.02, class_weight=np.arange(1.0, 7.0)
            )
            # row 0 equals the same row without the masked class
            keep = [0, 2, 3, 4, 5]
            y0 = y[:1, keep] if kind == "categorical" else np.searchsorted(keep, y[:1])
            alone = FUNCTIONS[kind](y0, x[:1, keep], from_logits=True)
            assert_close(loss[:1], alone, dtype)
            assert_close(grad[0, keep], obj.loss_and_grad(y0, x[:1, keep])[1][0], dtype)

    @pytest.mark.parametrize("dtype", DTYPES)
    def test_masked_labelled_class_gives_inf(self, rng, dtype):
        x = logits(rng, (3, 4), dtype)
        x[1, 2] = -np.inf
        labels = np.array([0, 2, 3])
        loss, grad = fx.SparseCategoricalCrossentropy(
            from_logits=True, reduction="none"
        ).loss_and_grad(labels, x)
        assert np.isposinf(loss[1]) and np.isfinite(loss[[0, 2]]).all()
        exp_loss, exp_grad = oracle(
            "sparse_categorical", labels, x, from_logits=True, reduction="none"
        )
        assert_close(loss, exp_loss, dtype)
        assert_close(grad, exp_grad, dtype)  # PyTorch's: softmax - one_hot, finite
        assert np.isposinf(
            fx.SparseCategoricalCrossentropy(from_logits=True, reduction="sum")(labels, x)
        )
        t = np.eye(4, dtype=dtype)[labels]
        assert np.isposinf(fx.categorical_crossentropy(t, x, from_logits=True)[1])

    @pytest.mark.parametrize("dtype", DTYPES)
    def test_masked_class_with_label_smoothing_gives_inf(self, rng, dtype):
        # smoothing puts e/C > 0 on the masked class
        x = logits(rng, (2, 4), dtype)
        x[0, 3] = -np.inf
        out = fx.sparse_categorical_crossentropy([0, 1], x, from_logits=True, label_smoothing=0.1)
        assert np.isposinf(out[0]) and np.isfinite(out[1])

    @pytest.mark.parametrize("dtype", DTYPES)
    @pytest.mark.parametrize("kind", ["categorical", "sparse_categorical"])
    @pytest.mark.parametrize("bad", ["all_minus_inf", "plus_inf", "nan"])
    def test_bad_rows_give_nan_rows(self, rng, dtype, kind, bad):
        y, x = data(rng, kind, (4, 5), dtype)
        if bad == "all_minus_inf":
            x[2] = -np.inf
        elif bad == "plus_inf":
            x[2, 1] = np.inf
        else:
            x[2, 3] = np.nan
        for z_loss in (0.0, 0.1):
            loss, grad = CLASSES[kind](
                from_logits=True, z_loss=z_loss, reduction="none"
            ).loss_and_grad(y, x)
            assert np.isnan(loss[2]) and np.isnan(grad[2]).all()
            good = [0, 1, 3]
            assert np.isfinite(loss[good]).all() and np.isfinite(grad[good]).all()
            exp_loss, exp_grad = oracle(
                kind, y, x, from_logits=True, z_loss=z_loss, reduction="none"
            )
            assert_close(loss, exp_loss, dtype)
            assert_close(grad, exp_grad, dtype)
        total, grad = CLASSES[kind](from_logits=True, reduction="sum").loss_and_grad(y, x)
        assert np.isnan(total)
        assert np.isnan(grad[2]).all() and np.isfinite(grad[[0, 1, 3]]).all()


class TestNaN:
    @pytest.mark.parametrize("dtype", DTYPES)
    @pytest.mark.parametrize("kind", list(CLASSES))
    @pytest.mark.parametrize("from_logits", [True, False])
    def test_nan_stays_in_its_row(self, rng, dtype, kind, from_logits):
        y, x = data(rng, kind, (6, 5), dtype, from_logits)
        x[3, 2] = np.nan
        loss, grad = CLASSES[kind](from_logits=from_logits, reduction="none").loss_and_grad(y, x)
        assert np.isnan(loss[3])
        assert np.isnan(grad[3, 2])
        if kind != "binary":  # softmax / normalization couple the whole row
            assert np.isnan(grad[3]).all()
        others = [0, 1, 2, 4, 5]
        assert np.isfinite(loss[others]).all() and np.isfinite(grad[others]).all()
        exp_loss, exp_grad = oracle(kind, y, x, from_logits=from_logits, reduction="none")
        assert_close(loss[others], exp_loss[others], dtype)
        assert_close(grad[others], exp_grad[others], dtype)
        out = FUNCTIONS[kind](y, x, from_logits=from_logits)
        assert np.isnan(out[3]) and np.isfinite(out[others]).all()
        for reduction in ("sum", "sum_over_batch_size", "mean_with_sample_weight"):
            assert np.isnan(CLASSES[kind](from_logits=from_logits, reduction=reduction)(y, x))

    @pytest.mark.parametrize("dtype", DTYPES)
    def test_nan_in_large_batch(self, rng, dtype):
        # every thread's chunk: NaN rows anywhere never leak into their neighbours
        x = logits(rng, (5000, 7), dtype)
        labels = sparse_labels(rng, (5000, 7))
        bad_rows = [0, 1234, 2500, 4999]
        x[bad_rows, 3] = np.nan
        loss, grad = fx.SparseCategoricalCrossentropy(
            from_logits=True, reduction="none", n_threads=2
        ).loss_and_grad(labels, x)
        assert np.isnan(loss[bad_rows]).all() and np.isnan(grad[bad_rows]).all()
        good = np.setdiff1d(np.arange(5000), bad_rows)
        assert np.isfinite(loss[good]).all() and np.isfinite(grad[good]).all()

    def test_ignored_row_with_nan_is_ignored(self, rng):
        # an ignored entry gets loss 0 and zero gradient whatever its logits hold
        x = logits(rng, (3, 4))
        x[1] = np.nan
        labels = np.array([0, -1, 2])
        loss, grad = fx.SparseCategoricalCrossentropy(
            from_logits=True, ignore_class=-1, reduction="none"
        ).loss_and_grad(labels, x)
        assert loss[1] == 0.0 and not grad[1].any()
        total = fx.SparseCategoricalCrossentropy(from_logits=True, ignore_class=-1)(labels, x)
        assert np.isfinite(total)
        check_against_oracle("sparse_categorical", labels, x, from_logits=True, ignore_class=-1)


    @pytest.mark.parametrize("dtype", DTYPES)
    @pytest.mark.parametrize("kind,reduction", [  # every way a denominator can be 0
        ("sparse_categorical", "sum_over_batch_size"),  # all ignored
        ("sparse_categorical", "mean_with_sample_weight"),  # zero total weight
        ("categorical", "mean_with_sample_weight"),
        ("binary", "mean_with_sample_weight"),
    ])
    def test_zero_denominator_zeroes_a_nan_rows_gradient(self, rng, kind, reduction, dtype):
        """A mean over nothing is 0.0 and so is its gradient, NaN and +inf rows included
        (0 * NaN would leave NaN in the gradient of a loss reported as 0.0)."""
        y, x = data(rng, kind, (4, 3), dtype)
        x[1, 2] = np.nan
        x[2, 0] = np.inf
        opts = {"from_logits": True, "reduction": reduction}
        if reduction == "sum_over_batch_size":
            y = np.full(4, -1)
            opts["ignore_class"] = -1
            sw = None
        else:
            sw = np.zeros(4)
        obj = CLASSES[kind](**opts)
        loss, grad = obj.loss_and_grad(y, x, sw)
        assert loss == 0.0 and type(loss) is float
        np.testing.assert_array_equal(grad, np.zeros_like(x))
        g, h = obj.gradient_hessian(y, x, sw)
        np.testing.assert_array_equal(g, np.zeros_like(x))
        np.testing.assert_array_equal(h, np.zeros_like(x))
        exp_loss, exp_grad = oracle(kind, y, x, sw, **opts)
        assert exp_loss == 0.0 and not exp_grad.any()
        # with one sample counted the NaN row is NaN again: the zeroing is for 0 / 0 only
        if sw is not None:
            sw[1] = 1.0
        else:
            y[1] = 0
        loss, grad = obj.loss_and_grad(y, x, sw)
        assert np.isnan(loss) and np.isnan(grad[1, 2])


# =========================================================== boundary labels


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_classes", [2, 5, 1000])
@pytest.mark.parametrize("from_logits", [True, False])
def test_labels_zero_and_last(rng, dtype, n_classes, from_logits):
    shape = (8, n_classes)
    x = logits(rng, shape, dtype) if from_logits else probabilities(rng, shape, dtype=dtype)
    labels = np.array([0, n_classes - 1] * 4, dtype=np.int32)
    check_against_oracle(
        "sparse_categorical",
        labels,
        x,
        from_logits=from_logits,
        label_smoothing=0.05,
        class_weight=np.linspace(0.5, 2.0, n_classes),
    )
    t = one_hot_targets(rng, shape, dtype=dtype)
    t[:] = np.eye(n_classes, dtype=dtype)[labels]
    check_against_oracle("categorical", t, x, from_logits=from_logits)


# ============================================================ memory layouts


LAYOUT_KINDS = list(CLASSES)


def _opts(kind, n):
    if kind == "binary":
        return {"pos_weight": np.linspace(0.5, 2.0, n)}
    opts = {"class_weight": np.linspace(0.5, 2.0, n), "label_smoothing": 0.1}
    if kind == "sparse_categorical":
        opts["ignore_class"] = -1
    return opts


class TestLayouts:
    @pytest.mark.parametrize("kind", LAYOUT_KINDS)
    @pytest.mark.parametrize("dtype", DTYPES)
    def test_read_only(self, rng, kind, dtype):
        y, x = data(rng, kind, (6, 4), dtype)
        sw = rng.uniform(0.5, 2, 6)
        opts = _opts(kind, 4)
        for a in (y, x, sw, *opts.values()):
            if isinstance(a, np.ndarray):
                a.flags.writeable = False
        check_against_oracle(kind, y, x, sw, from_logits=True, **opts)
        FUNCTIONS[kind](y, x, from_logits=True, **opts)

    @pytest.mark.parametrize("kind", LAYOUT_KINDS)
    @pytest.mark.parametrize("dtype", DTYPES)
    @pytest.mark.parametrize("shape,axis", [((7, 5), -1), ((3, 4, 5), -1), ((3, 5, 4), 1)])
    def test_fortran_order(self, rng, kind, dtype, shape, axis):
        y, x = data(rng, kind, shape, dtype, axis=axis)
        opts = dict(from_logits=True, axis=axis, **_opts(kind, shape[axis]))
        xf = np.asfortranarray(x)
        yf = np.asfortranarray(y)
        assert not xf.flags.c_contiguous or x.ndim == 1
        for reduction in ("none", "sum"):
            obj = CLASSES[kind](reduction=reduction, **opts)
            lc, gc = obj.loss_and_grad(y, x)
            lf, gf = obj.loss_and_grad(yf, xf)
            assert_close(lf, lc, dtype, rtol=1e-15 if dtype == np.float64 else 1e-7)
            assert_close(gf, gc, dtype, rtol=1e-15 if dtype == np.float64 else 1e-7)
        check_against_oracle(kind, yf, xf, **opts)

    @pytest.mark.parametrize("kind", LAYOUT_KINDS)
    @pytest.mark.parametrize("dtype", DTYPES)
    @pytest.mark.parametrize(
        "view",
        ["rows_step2", "classes_step2", "reversed_rows", "reversed_classes", "transposed_axis0"],
    )
    def test_strided_views(self, rng, kind, dtype, view):
        big_y, big_x = data(rng, kind, (12, 10), dtype)
        axis = -1
        if view == "rows_step2":
            x = big_x[::2]
            y = big_y[::2]
        elif view == "classes_step2":
            x = big_x[:, ::2]
            y = big_y[:, ::2] if kind != "sparse_categorical" else big_y % 5
            if kind == "categorical":
                y = y / y.sum(axis=1, keepdims=True)
        elif view == "reversed_rows":
            x = big_x[::-1]
            y = big_y[::-1]
        elif view == "reversed_classes":
            x = big_x[:, ::-1]
            y = big_y[:, ::-1] if kind != "sparse_categorical" else big_y
        else:  # class axis first and not contiguous: a transposed (C, N) view
            x = big_x.T
            y = big_y.T if kind != "sparse_categorical" else big_y
            axis = 0
        n = x.shape[axis]
        opts = dict(from_logits=True, axis=axis, **_opts(kind, n))
        sw = rng.uniform(0.5, 2, 24)[::2][: x.shape[1 - axis % 2]] if x.ndim == 2 else None
        check_against_oracle(kind, y, x, sw, **opts)
        # identical to the same data made contiguous
        xc, yc = np.ascontiguousarray(x), np.ascontiguousarray(y)
        for reduction in ("none", "mean_with_sample_weight"):
            obj = CLASSES[kind](reduction=reduction, **opts)
            a = obj.loss_and_grad(y, x, sw)
            b = obj.loss_and_grad(yc, xc, sw)
            assert_close(a[0], b[0], dtype, rtol=1e-15 if dtype == np.float64 else 1e-7)
            assert_close(a[1], b[1], dtype, rtol=1e-15 if dtype == np.float64 else 1e-7)

    @pytest.mark.parametrize("kind", LAYOUT_KINDS)
    @pytest.mark.parametrize("axis", [0, 1, -2])
    def test_class_axis_not_last(self, rng, kind, axis):
        shape = (4, 5, 6)
        y, x = data(rng, kind, shape, axis=axis)
        opts = dict(from_logits=True, axis=axis, **_opts(kind, shape[axis]))
        sw = rng.uniform(0.5, 2, tuple(d for i, d in enumerate(shape) if i != axis % 3))
        check_against_oracle(kind, y, x, sw, **opts)
        # the same as moving the class axis last by hand
        y_last = y if kind == "sparse_categorical" else np.moveaxis(y, axis, -1)
        moved = CLASSES[kind](reduction="none", **{**opts, "axis": -1}).loss_and_grad(
            y_last, np.moveaxis(x, axis, -1), sw
        )
        loss, grad = CLASSES[kind](reduction="none", **opts).loss_and_grad(y, x, sw)
        assert_close(loss, moved[0], rtol=1e-15)
        assert_close(grad, np.moveaxis(moved[1], -1, axis), rtol=1e-15)

    @pytest.mark.parametrize("kind", ["categorical", "binary"])
    def test_broadcast_zero_stride_targets(self, rng, kind):
        _, x = data(rng, kind, (9, 4))
        row = soft_targets(rng, (1, 4)) if kind == "categorical" else binary_targets(rng, (1, 4))
        y = np.broadcast_to(row, (9, 4))  # read-only, stride 0 along the batch
        check_against_oracle(kind, y, x, from_logits=True)

    @pytest.mark.parametrize("kind", LAYOUT_KINDS)
    def test_memmap(self, rng, tmp_path, kind):
        y, x = data(rng, kind, (10, 3))
        path = tmp_path / "x.dat"
        mm = np.memmap(path, dtype=np.float64, mode="w+", shape=x.shape)
        mm[:] = x
        mm.flush()
        ro = np.memmap(path, dtype=np.float64, mode="r", shape=x.shape)
        check_against_oracle(kind, y, ro, from_logits=True)
        del mm, ro

    @pytest.mark.parametrize("dtype", DTYPES)
    def test_grad_out_non_contiguous_input(self, rng, dtype):
        # the input is copied once; grad_out still receives the gradient in y_pred's layout
        y, x = data(rng, "categorical", (6, 8), dtype)
        xv = x[:, ::2]
        yv = y[:, ::2] / y[:, ::2].sum(axis=1, keepdims=True)
        obj = fx.CategoricalCrossentropy(from_logits=True, reduction="sum")
        expected = obj.gradient(yv, xv)
        out = np.empty((6, 4), dtype)
        got = obj.gradient(yv, xv, grad_out=out)
        assert np.shares_memory(got, out)
        np.testing.assert_array_equal(out, expected)


# ============================================================ Keras-style inputs


def test_probabilities_with_exact_zeros():
    # Keras' docstring example: a zero probability is clipped to eps
    y = np.array([[0, 1, 0], [0, 0, 1]], dtype=np.float64)
    p = np.array([[0.05, 0.95, 0.0], [0.1, 0.8, 0.1]])
    out = fx.categorical_crossentropy(y, p)
    np.testing.assert_allclose(out, [-np.log(0.95), -np.log(0.1)], rtol=1e-12)
    check_against_oracle("categorical", y, p)
    check_against_oracle("sparse_categorical", np.array([1, 2]), p)
    check_against_oracle("binary", y, p)


@pytest.mark.parametrize("target_dtype", [np.int64, np.int32, np.bool_, np.float32])
@pytest.mark.parametrize("kind", ["categorical", "binary"])
def test_dense_targets_of_other_dtypes(rng, kind, target_dtype):
    # Keras casts y_true to y_pred's dtype; y_pred alone decides the output dtype
    x = logits(rng, (6, 4))
    t = np.eye(4)[rng.integers(0, 4, 6)]
    a = FUNCTIONS[kind](t.astype(target_dtype), x, from_logits=True)
    b = FUNCTIONS[kind](t, x, from_logits=True)
    assert a.dtype == np.float64
    assert_close(a, b)


def test_sparse_labels_with_trailing_unit_axis(rng):
    # documented Keras compatibility: (batch, 1) labels for (batch, C) predictions
    x = logits(rng, (6, 4))
    labels = rng.integers(0, 4, 6)
    a = fx.SparseCategoricalCrossentropy(from_logits=True).loss_and_grad(labels[:, None], x)
    b = fx.SparseCategoricalCrossentropy(from_logits=True).loss_and_grad(labels, x)
    assert a[0] == b[0]
    np.testing.assert_array_equal(a[1], b[1])


@pytest.mark.parametrize("kind", list(CLASSES))
def test_sample_weight_as_list_and_ints(rng, kind):
    y, x = data(rng, kind, (4, 3))
    ref = CLASSES[kind](from_logits=True, reduction="sum")(y, x, np.array([1.0, 2.0, 0.0, 3.0]))
    assert CLASSES[kind](from_logits=True, reduction="sum")(y, x, [1, 2, 0, 3]) == pytest.approx(
        ref, rel=1e-15
    )
    assert CLASSES[kind](from_logits=True, reduction="sum")(
        y, x, np.array([1, 2, 0, 3])
    ) == pytest.approx(ref, rel=1e-15)


@pytest.mark.parametrize("dtype", DTYPES)
def test_many_classes_few_rows(rng, dtype):
    x = logits(rng, (3, 50000), dtype, scale=5.0)
    labels = np.array([0, 49999, 31337])
    check_against_oracle(
        "sparse_categorical", labels, x, reductions=["none", "sum"], from_logits=True, z_loss=1e-3
    )


def test_concurrent_python_threads(rng):
    # the kernels release the GIL: concurrent calls (and concurrent label errors) must not
    # interfere through any shared state
    from concurrent.futures import ThreadPoolExecutor

    cases = []
    for i in range(6):
        x = logits(rng, (8000 + 7 * i, 9))
        y = sparse_labels(rng, x.shape)
        if i % 2:
            y[100 * i + 5] = 9 + i
        cases.append((y, x))

    def run(case):
        y, x = case
        try:
            return fx.SparseCategoricalCrossentropy(from_logits=True, n_threads=2).loss_and_grad(
                y, x
            )
        except ValueError as error:
            return str(error)

    serial = [run(c) for c in cases]
    for _ in range(3):
        with ThreadPoolExecutor(4) as pool:
            parallel = list(pool.map(run, cases))
        for s, p in zip(serial, parallel, strict=True):
            if isinstance(s, str):
                assert s == p
            else:
                assert s[0] == p[0]
                np.testing.assert_array_equal(s[1], p[1])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", list(CLASSES))
def test_misaligned_inputs(rng, kind, dtype):
    """Arrays whose elements sit at odd addresses (from serialized bytes) give the results of
    aligned ones: they are copied once, never handed to the kernels misaligned (undefined
    behaviour the sanitizer run reports).  A misaligned grad_out, or y_pred with
    inplace=True, cannot be copied and raises a ValueError naming it."""
    y, x = data(rng, kind, (37, 19), dtype)
    sw = rng.uniform(size=37)
    y_u, x_u, sw_u = unaligned(y), unaligned(x), unaligned(sw)
    assert not x_u.flags.aligned
    for reduction in ("none", "mean_with_sample_weight"):
        obj = CLASSES[kind](from_logits=True, reduction=reduction)
        expected = obj.loss_and_grad(y, x, sw)
        got = obj.loss_and_grad(y_u, x_u, sw_u)
        np.testing.assert_array_equal(got[0], expected[0])
        np.testing.assert_array_equal(got[1], expected[1])
    np.testing.assert_array_equal(FUNCTIONS[kind](y_u, x_u, from_logits=True),
                                  FUNCTIONS[kind](y, x, from_logits=True))
    obj = CLASSES[kind](from_logits=True)
    with pytest.raises(ValueError, match="grad_out"):
        obj.loss_and_grad(y, x, grad_out=unaligned(np.empty_like(x)))
    with pytest.raises(ValueError, match="inplace"):
        obj.loss_and_grad(y, unaligned(x), inplace=True)
