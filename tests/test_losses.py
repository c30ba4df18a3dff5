"""fastxent against the oracle (tests/reference.py), against Keras and PyTorch, against
central finite differences, and against identities that must hold exactly.

Tolerances: float64 rtol 1e-12, float32 rtol 2e-5, each with an atol of rtol times the
largest magnitude in the expected array (see ``util.assert_close``).
"""

import itertools

import hypothesis
import hypothesis.strategies as st
import numpy as np
import pytest
import reference as R
from util import (
    CLASSES,
    DTYPES,
    FUNCTIONS,
    assert_close,
    batch_shape,
    binary_probabilities,
    binary_targets,
    central_difference,
    logits,
    make_data,
    probabilities,
    soft_targets,
    sparse_labels,
)

import fastxent as fx

REDUCTIONS = ["none", "sum", "sum_over_batch_size", "mean", "mean_with_sample_weight"]
N_THREADS = [1, 2]

# (y_pred shape, class axis): 2-D, N-d with the class axis last / in the middle / first, 1-D
SHAPES = [
    ((7, 5), -1),
    ((3, 4, 6), -1),
    ((3, 6, 4), 1),
    ((6, 3), 0),
    ((5,), 0),
    ((2, 3, 2, 5), 2),
]

# option variants; each is turned into concrete options by ``make_options``
VARIANTS = {
    "categorical": ["plain", "smooth", "class_weight", "z_loss", "epsilon", "all"],
    "sparse_categorical": [
        "plain",
        "smooth",
        "class_weight",
        "z_loss",
        "ignore",
        "ignore_in_range",
        "epsilon",
        "all",
    ],
    "binary": ["plain", "smooth", "pos_scalar", "pos_vector", "epsilon", "all"],
}


def variant_applies(variant, from_logits):
    # z_loss is defined for softmax from logits only; "all" includes it then.
    return not (variant == "z_loss" and not from_logits)


def make_options(kind, variant, n_classes, from_logits, rng):
    """Concrete constructor options (without reduction/axis/n_threads) for a variant."""
    opts = {"from_logits": from_logits}
    if variant in ("smooth", "all"):
        opts["label_smoothing"] = 0.15
    if variant in ("class_weight", "all") and kind != "binary":
        opts["class_weight"] = rng.uniform(0.2, 3.0, size=n_classes)
    if variant == "z_loss" or (variant == "all" and kind != "binary" and from_logits):
        opts["z_loss"] = 0.03
    if variant in ("ignore", "all") and kind == "sparse_categorical":
        opts["ignore_class"] = -1
    if variant == "ignore_in_range":
        opts["ignore_class"] = 0
    if variant == "epsilon":
        opts["epsilon"] = 0.06  # clipping active on some entries
    if variant == "pos_scalar":
        opts["pos_weight"] = 2.5
    if variant in ("pos_vector", "all") and kind == "binary":
        opts["pos_weight"] = rng.uniform(0.3, 4.0, size=n_classes)
    return opts


def oracle(kind, y, x, sw=None, **opts):
    opts = {k: v for k, v in opts.items() if k != "n_threads"}
    return R.reference_loss_and_grad(kind, y, np.asarray(x, dtype=np.float64), sw, **opts)


def check_loss_type(loss, reduction, dtype, shape):
    if reduction == "none":
        assert isinstance(loss, np.ndarray)
        assert loss.dtype == dtype
        assert loss.shape == shape
    else:
        assert type(loss) is float


# ========================================================== per-sample functions


FUNCTION_CASES = [
    (kind, variant, from_logits, shape, axis)
    for kind in R.KINDS
    for variant in VARIANTS[kind]
    for from_logits in (True, False)
    for shape, axis in SHAPES
    if variant_applies(variant, from_logits)
]


@pytest.mark.parametrize("n_threads", N_THREADS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind,variant,from_logits,shape,axis", FUNCTION_CASES)
def test_function_vs_oracle(rng, kind, variant, from_logits, shape, axis, dtype, n_threads):
    opts = make_options(kind, variant, shape[axis], from_logits, rng)
    y, x = make_data(rng, kind, shape, axis, dtype, from_logits, opts.get("ignore_class"))
    out = FUNCTIONS[kind](y, x, axis=axis, n_threads=n_threads, **opts)
    expected = R.per_sample(kind, y, x.astype(np.float64), axis=axis, **opts)
    assert isinstance(out, np.ndarray)
    assert out.dtype == dtype
    assert out.shape == batch_shape(shape, axis)
    assert_close(out, expected, dtype)


# ============================================= classes: reductions x sample weights


def sample_weight_variants(loss_shape):
    """name -> sample weight (None, scalar, full, leading-dims lower rank, broadcast 1s)."""
    variants = {"none": None, "scalar": 1.7, "full": loss_shape}
    if len(loss_shape) >= 2:
        variants["leading"] = loss_shape[:1]  # (batch,) for a (batch, seq) loss
        variants["ones_dim"] = loss_shape[:1] + (1,) * (len(loss_shape) - 1)
        variants["row"] = (1,) + loss_shape[1:]
    return variants


SW_NAMES = ["none", "scalar", "full", "leading", "ones_dim", "row"]


def make_sample_weight(rng, name, loss_shape):
    spec = sample_weight_variants(loss_shape)[name]
    if spec is None or isinstance(spec, float):
        return spec
    return rng.uniform(0.1, 2.0, size=spec)


REDUCTION_CASES = [
    (kind, variant, from_logits)
    for kind in R.KINDS
    for variant in ("plain", "all")
    for from_logits in (True, False)
]


@pytest.mark.parametrize("n_threads", N_THREADS)
@pytest.mark.parametrize("sw_name", SW_NAMES)
@pytest.mark.parametrize("reduction", [r for r in REDUCTIONS if r != "mean"])  # see test_mean_alias
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind,variant,from_logits", REDUCTION_CASES)
def test_class_reductions_vs_oracle(
    rng, kind, variant, from_logits, dtype, reduction, sw_name, n_threads
):
    shape, axis = (3, 4, 5), -1
    loss_shape = (3, 4)
    opts = make_options(kind, variant, shape[axis], from_logits, rng)
    y, x = make_data(rng, kind, shape, axis, dtype, from_logits, opts.get("ignore_class"))
    sw = make_sample_weight(rng, sw_name, loss_shape)
    obj = CLASSES[kind](reduction=reduction, n_threads=n_threads, **opts)
    loss, grad = obj.loss_and_grad(y, x, sw)
    exp_loss, exp_grad = oracle(kind, y, x, sw, reduction=reduction, **opts)
    check_loss_type(loss, reduction, dtype, loss_shape)
    assert grad.dtype == dtype and grad.shape == shape
    assert_close(loss, exp_loss, dtype)
    assert_close(grad, exp_grad, dtype)
    # __call__ and gradient() agree with loss_and_grad
    assert_close(obj(y, x, sw), loss, dtype)
    np.testing.assert_array_equal(obj.gradient(y, x, sw), grad)


CLASS_SHAPE_CASES = [
    (kind, variant, from_logits, shape, axis)
    for kind in R.KINDS
    for variant in VARIANTS[kind]
    for from_logits in (True, False)
    for shape, axis in SHAPES
    if variant_applies(variant, from_logits)
]


@pytest.mark.parametrize("reduction", ["none", "mean_with_sample_weight"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind,variant,from_logits,shape,axis", CLASS_SHAPE_CASES)
def test_class_shapes_and_options_vs_oracle(
    rng, kind, variant, from_logits, shape, axis, dtype, reduction
):
    opts = make_options(kind, variant, shape[axis], from_logits, rng)
    y, x = make_data(rng, kind, shape, axis, dtype, from_logits, opts.get("ignore_class"))
    loss_shape = batch_shape(shape, axis)
    sw = rng.uniform(0.1, 2.0, size=loss_shape)
    obj = CLASSES[kind](axis=axis, reduction=reduction, n_threads=1, **opts)
    loss, grad = obj.loss_and_grad(y, x, sw)
    exp_loss, exp_grad = oracle(kind, y, x, sw, axis=axis, reduction=reduction, **opts)
    check_loss_type(loss, reduction, dtype, loss_shape)
    assert grad.dtype == dtype and grad.shape == shape
    assert_close(loss, exp_loss, dtype)
    assert_close(grad, exp_grad, dtype)


@pytest.mark.parametrize("n_classes", [1, 2, 3, 4, 7, 8, 9, 15, 16, 17, 31, 33, 64, 100, 1000])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", R.KINDS)
@pytest.mark.parametrize("from_logits", [True, False])
def test_class_counts(rng, n_classes, dtype, kind, from_logits):
    # SIMD bodies and tails: every width around the vector lengths.
    shape = (13, n_classes)
    opts = make_options(kind, "all", n_classes, from_logits, rng)
    y, x = make_data(rng, kind, shape, -1, dtype, from_logits, opts.get("ignore_class"))
    for reduction in ("none", "sum"):
        obj = CLASSES[kind](reduction=reduction, **opts)
        loss, grad = obj.loss_and_grad(y, x)
        exp_loss, exp_grad = oracle(kind, y, x, reduction=reduction, **opts)
        assert_close(loss, exp_loss, dtype)
        assert_close(grad, exp_grad, dtype)


def test_large_batch_many_threads(rng):
    # enough rows for every thread to get several chunks
    shape = (20011, 10)
    x = logits(rng, shape)
    labels = sparse_labels(rng, shape, ignore_class=-1)
    sw = rng.uniform(0.0, 2.0, size=shape[0])
    opts = dict(from_logits=True, ignore_class=-1, label_smoothing=0.05, z_loss=0.01)
    for reduction in ("sum_over_batch_size", "mean_with_sample_weight"):
        loss, grad = fx.SparseCategoricalCrossentropy(
            reduction=reduction, n_threads=2, **opts
        ).loss_and_grad(labels, x, sw)
        exp_loss, exp_grad = oracle(
            "sparse_categorical", labels, x, sw, reduction=reduction, **opts
        )
        assert_close(loss, exp_loss)
        assert_close(grad, exp_grad)


# ==================================================================== determinism


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", R.KINDS)
def test_results_independent_of_thread_count(rng, dtype, kind):
    # Reductions use fixed-size chunks combined in a fixed order: bitwise identical
    # results for any n_threads.
    shape = (30001, 9)
    opts = make_options(kind, "all", 9, True, rng)
    y, x = make_data(rng, kind, shape, -1, dtype, True, opts.get("ignore_class"))
    sw = rng.uniform(0.1, 2.0, size=shape[0])
    results = {}
    for n_threads in (1, 2, -1, None):
        for reduction in ("sum", "sum_over_batch_size", "mean_with_sample_weight", "none"):
            obj = CLASSES[kind](reduction=reduction, n_threads=n_threads, **opts)
            results[n_threads, reduction] = obj.loss_and_grad(y, x, sw)
        results[n_threads, "function"] = FUNCTIONS[kind](y, x, n_threads=n_threads, **opts)
    for (n_threads, reduction), value in results.items():
        ref = results[1, reduction]
        if reduction == "function":
            np.testing.assert_array_equal(value, ref, err_msg=str(n_threads))
        else:
            np.testing.assert_array_equal(value[0], ref[0], err_msg=f"{n_threads} {reduction}")
            np.testing.assert_array_equal(value[1], ref[1], err_msg=f"{n_threads} {reduction}")


def test_repeatable(rng):
    x = logits(rng, (5000, 12))
    labels = sparse_labels(rng, (5000, 12))
    obj = fx.SparseCategoricalCrossentropy(from_logits=True, n_threads=2)
    first = obj.loss_and_grad(labels, x)
    for _ in range(3):
        again = obj.loss_and_grad(labels, x)
        assert again[0] == first[0]
        np.testing.assert_array_equal(again[1], first[1])


@pytest.mark.skipif(not hasattr(fx, "available_isas"), reason="no ISA dispatch")
@pytest.mark.parametrize("kind", R.KINDS)
@pytest.mark.parametrize("from_logits", [True, False])
def test_every_isa_path_agrees(rng, kind, from_logits):
    # Every instruction-set path must match the oracle (and, as documented, each other).
    shape = (257, 19)
    opts = make_options(kind, "all", 19, from_logits, rng)
    y, x = make_data(rng, kind, shape, -1, np.float64, from_logits, opts.get("ignore_class"))
    x32 = x.astype(np.float32)
    y32 = y if kind == "sparse_categorical" else y.astype(np.float32)
    original = fx.get_isa()
    outputs = {}
    try:
        for isa in fx.available_isas():
            fx.set_isa(isa)
            obj = CLASSES[kind](reduction="none", **opts)
            outputs[isa] = (obj.loss_and_grad(y, x), obj.loss_and_grad(y32, x32))
    finally:
        fx.set_isa(original)
    exp_loss, exp_grad = oracle(kind, y, x, reduction="none", **opts)
    exp_loss32, exp_grad32 = oracle(kind, y32, x32, reduction="none", **opts)
    first = next(iter(outputs.values()))
    for isa, ((loss, grad), (loss32, grad32)) in outputs.items():
        assert_close(loss, exp_loss, err_msg=isa)
        assert_close(grad, exp_grad, err_msg=isa)
        assert_close(loss32, exp_loss32, np.float32, err_msg=isa)
        assert_close(grad32, exp_grad32, np.float32, err_msg=isa)
        for a, b in zip((loss, grad, loss32, grad32), itertools.chain(*first), strict=True):
            np.testing.assert_array_equal(a, b, err_msg=f"{isa} differs from another ISA")


# ====================================================== sparse labels: dtypes


@pytest.mark.parametrize(
    "label_dtype",
    [
        np.int8,
        np.int16,
        np.int32,
        np.int64,
        np.uint8,
        np.uint16,
        np.uint32,
        np.uint64,
        np.float32,
        np.float64,
    ],
)
@pytest.mark.parametrize("dtype", DTYPES)
def test_label_dtypes(rng, label_dtype, dtype):
    # any integer dtype, and float arrays holding integral values (Keras compatibility)
    x = logits(rng, (11, 6), dtype=dtype)
    labels = sparse_labels(rng, (11, 6))
    obj = fx.SparseCategoricalCrossentropy(from_logits=True, reduction="none")
    loss, grad = obj.loss_and_grad(labels.astype(label_dtype), x)
    exp_loss, exp_grad = oracle("sparse_categorical", labels, x, from_logits=True, reduction="none")
    assert_close(loss, exp_loss, dtype)
    assert_close(grad, exp_grad, dtype)
    np.testing.assert_array_equal(
        fx.sparse_categorical_crossentropy(labels.astype(label_dtype), x, from_logits=True),
        fx.sparse_categorical_crossentropy(labels, x, from_logits=True),
    )


def test_labels_as_python_list(rng):
    x = logits(rng, (3, 4))
    np.testing.assert_array_equal(
        fx.sparse_categorical_crossentropy([0, 3, 1], x, from_logits=True),
        fx.sparse_categorical_crossentropy(np.array([0, 3, 1]), x, from_logits=True),
    )


@pytest.mark.parametrize("ignore_class", [-1, 255, 2, -100])
def test_ignore_class_values(rng, ignore_class):
    x = logits(rng, (40, 4))
    labels = sparse_labels(rng, (40, 4), ignore_class=ignore_class, frac_ignored=0.4)
    labels_u = labels.astype(np.int64)
    for reduction in REDUCTIONS:
        obj = fx.SparseCategoricalCrossentropy(
            from_logits=True, ignore_class=ignore_class, reduction=reduction
        )
        loss, grad = obj.loss_and_grad(labels_u, x)
        exp_loss, exp_grad = oracle(
            "sparse_categorical",
            labels_u,
            x,
            from_logits=True,
            ignore_class=ignore_class,
            reduction=reduction,
        )
        assert_close(loss, exp_loss)
        assert_close(grad, exp_grad)
        ignored = labels_u == ignore_class
        assert not grad[ignored].any()
        if reduction == "none":
            assert not loss[ignored].any()


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_all_ignored(rng, reduction):
    x = logits(rng, (5, 3))
    labels = np.full(5, -1)
    loss, grad = fx.SparseCategoricalCrossentropy(
        from_logits=True, ignore_class=-1, reduction=reduction, z_loss=0.1
    ).loss_and_grad(labels, x)
    if reduction == "none":
        np.testing.assert_array_equal(loss, np.zeros(5))
    else:
        assert loss == 0.0 and type(loss) is float
    assert not grad.any()


@pytest.mark.parametrize("kind", R.KINDS)
@pytest.mark.parametrize("reduction", ["sum_over_batch_size", "mean_with_sample_weight", "sum"])
def test_zero_sample_weights(rng, kind, reduction):
    y, x = make_data(rng, kind, (6, 4), -1, np.float64, True)
    loss, grad = CLASSES[kind](from_logits=True, reduction=reduction).loss_and_grad(
        y, x, np.zeros(6)
    )
    assert loss == 0.0 and type(loss) is float
    assert not grad.any()


# ===================================================== Keras / PyTorch direct parity


class TestKerasParity:
    """fastxent == Keras 3 (numpy backend) where the spec follows Keras."""

    @pytest.fixture(autouse=True)
    def _keras(self):
        self.keras = pytest.importorskip("keras")

    @pytest.mark.parametrize("from_logits", [True, False])
    @pytest.mark.parametrize(
        "kind,label_smoothing",  # Keras' sparse function has no label_smoothing
        [(k, e) for k in R.KINDS for e in (0.0, 0.1) if not (k == "sparse_categorical" and e)],
    )
    def test_functions(self, rng, kind, from_logits, label_smoothing):
        keras = self.keras
        shape = (16, 5)
        y, x = make_data(rng, kind, shape, -1, np.float32, from_logits)
        if kind == "binary" and from_logits:
            x = np.clip(x, -5, 5)  # Keras clips sigmoid(x) to [eps, 1 - eps]
        if kind == "sparse_categorical":
            k = keras.losses.sparse_categorical_crossentropy(y, x, from_logits=from_logits)
            ours = fx.sparse_categorical_crossentropy(y, x, from_logits=from_logits)
        else:
            k = getattr(keras.losses, f"{kind}_crossentropy")(
                y, x, from_logits=from_logits, label_smoothing=label_smoothing
            )
            ours = FUNCTIONS[kind](y, x, from_logits=from_logits, label_smoothing=label_smoothing)
        assert ours.dtype == np.float32
        np.testing.assert_allclose(ours, k, rtol=1e-4, atol=1e-5)

    @pytest.mark.parametrize("kind", R.KINDS)
    @pytest.mark.parametrize(
        "reduction", ["none", "sum", "sum_over_batch_size", "mean_with_sample_weight"]
    )
    def test_classes_with_sample_weight(self, rng, kind, reduction):
        keras = self.keras
        shape = (4, 6, 5)
        y, x = make_data(rng, kind, shape, -1, np.float32, True)
        if kind == "binary":
            x = np.clip(x, -5, 5)
        sw = rng.uniform(0.1, 2.0, size=(4, 6)).astype(np.float32)
        kcls = getattr(keras.losses, CLASSES[kind].__name__)
        k = kcls(from_logits=True, reduction=reduction)(y, x, sample_weight=sw)
        ours = CLASSES[kind](from_logits=True, reduction=reduction)(y, x, sw)
        np.testing.assert_allclose(ours, k, rtol=1e-4, atol=1e-5)

    @pytest.mark.parametrize("reduction", ["sum", "sum_over_batch_size", "mean_with_sample_weight"])
    def test_sparse_ignore_class(self, rng, reduction):
        keras = self.keras
        labels = sparse_labels(rng, (8, 3, 4), ignore_class=-1)
        x = logits(rng, (8, 3, 4), dtype=np.float32)
        k = keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, ignore_class=-1, reduction=reduction
        )(labels, x)
        ours = fx.SparseCategoricalCrossentropy(
            from_logits=True, ignore_class=-1, reduction=reduction
        )(labels, x)
        np.testing.assert_allclose(ours, k, rtol=1e-4, atol=1e-5)


class TestTorchParity:
    """fastxent == PyTorch (float64, autograd gradients) for the mapped options."""

    @pytest.fixture(autouse=True)
    def _torch(self):
        self.torch = pytest.importorskip("torch")

    def tensor(self, a, grad=False):
        return self.torch.tensor(np.asarray(a, dtype=np.float64), requires_grad=grad)

    @pytest.mark.parametrize("shape", [(20, 7), (4, 7, 5)])
    @pytest.mark.parametrize("weighted", [False, True])
    @pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
    @pytest.mark.parametrize("n_threads", N_THREADS)
    def test_cross_entropy_index_targets(self, rng, shape, weighted, label_smoothing, n_threads):
        torch = self.torch
        labels = sparse_labels(rng, shape, axis=1, ignore_class=-100)
        x = logits(rng, shape)
        w = rng.uniform(0.2, 3.0, size=shape[1]) if weighted else None
        xt = self.tensor(x, grad=True)
        tl = torch.nn.functional.cross_entropy(
            xt,
            torch.tensor(labels),
            weight=None if w is None else self.tensor(w),
            ignore_index=-100,
            label_smoothing=label_smoothing,
        )
        (tg,) = torch.autograd.grad(tl, xt)
        loss, grad = fx.SparseCategoricalCrossentropy(
            from_logits=True,
            ignore_class=-100,
            label_smoothing=label_smoothing,
            axis=1,
            reduction="mean_with_sample_weight",
            class_weight=w,
            n_threads=n_threads,
        ).loss_and_grad(labels, x)
        assert_close(loss, tl.item())
        assert_close(grad, tg.numpy())

    @pytest.mark.parametrize("weighted", [False, True])
    @pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
    def test_cross_entropy_prob_targets(self, rng, weighted, label_smoothing):
        torch = self.torch
        t = soft_targets(rng, (12, 6))
        x = logits(rng, (12, 6))
        w = rng.uniform(0.2, 3.0, size=6) if weighted else None
        xt = self.tensor(x, grad=True)
        tl = torch.nn.functional.cross_entropy(
            xt,
            self.tensor(t),
            weight=None if w is None else self.tensor(w),
            label_smoothing=label_smoothing,
        )
        (tg,) = torch.autograd.grad(tl, xt)
        loss, grad = fx.CategoricalCrossentropy(
            from_logits=True, label_smoothing=label_smoothing, class_weight=w
        ).loss_and_grad(t, x)
        assert_close(loss, tl.item())
        assert_close(grad, tg.numpy())

    @pytest.mark.parametrize("pos_weight", [None, 2.0, "vector"])
    @pytest.mark.parametrize("shape", [(15, 4), (3, 5, 4)])
    def test_bce_with_logits(self, rng, pos_weight, shape):
        torch = self.torch
        z = binary_targets(rng, shape)
        x = logits(rng, shape, scale=4.0)
        pw = rng.uniform(0.3, 4.0, size=shape[-1]) if pos_weight == "vector" else pos_weight
        xt = self.tensor(x, grad=True)
        tl = torch.nn.functional.binary_cross_entropy_with_logits(
            xt,
            self.tensor(z),
            pos_weight=None if pw is None else self.tensor(np.broadcast_to(pw, shape[-1:])),
        )
        (tg,) = torch.autograd.grad(tl, xt)
        loss, grad = fx.BinaryCrossentropy(from_logits=True, pos_weight=pw).loss_and_grad(z, x)
        assert_close(loss, tl.item())
        assert_close(grad, tg.numpy())


# ============================================================ finite differences


FD_CASES = [
    (kind, variant, from_logits)
    for kind in R.KINDS
    for variant in VARIANTS[kind]
    for from_logits in (True, False)
    if variant_applies(variant, from_logits) and variant != "epsilon"
]


@pytest.mark.parametrize("shape,axis", [((4, 5), -1), ((2, 4, 3), 1)])
@pytest.mark.parametrize("kind,variant,from_logits", FD_CASES)
def test_gradient_finite_differences(rng, kind, variant, from_logits, shape, axis):
    opts = make_options(kind, variant, shape[axis], from_logits, rng)
    y, x = make_data(rng, kind, shape, axis, np.float64, from_logits, opts.get("ignore_class"))
    sw = rng.uniform(0.5, 2.0, size=batch_shape(shape, axis))
    for reduction in ("sum", "mean_with_sample_weight", "none"):
        obj = CLASSES[kind](axis=axis, reduction=reduction, n_threads=1, **opts)
        _, grad = obj.loss_and_grad(y, x, sw)

        def total(v, obj=obj):
            return float(np.sum(obj(y, v, sw)))

        fd = central_difference(total, x, floor=1.0 if from_logits else 0.0)
        assert_close(grad, fd, rtol=1e-6, err_msg=reduction)


@pytest.mark.parametrize("kind", ["categorical", "sparse_categorical"])
def test_gradient_finite_differences_with_active_clipping(rng, kind):
    # from_logits=False: classes whose normalized probability is clipped have a zero
    # derivative through the clip; the others still see them through the normalization.
    p = probabilities(rng, (4, 5))
    p[0, 2] = p[2, 4] = 0.0
    p[0, 2] = 2e-8 * p[0].sum()  # q = 2e-8 < eps, and stays below it within +- the step
    p[1] = [1.0, 1e-11, 2e-11, 1e-11, 3e-11]  # class 0 above 1 - eps, the rest below eps
    p[2, 4] = 3e-8 * p[2].sum()
    if kind == "categorical":
        y = soft_targets(rng, (4, 5))
    else:
        y = np.array([2, 0, 4, 1])
    obj = CLASSES[kind](reduction="sum", label_smoothing=0.1)
    _, grad = obj.loss_and_grad(y, p)
    # a clipped entry's own term is flat, but it still moves the row sum: step it by half
    # its value (it stays clipped) so that the change of the sum is resolved
    steps = 1e-6 * p
    tiny = p < 1e-7 * p.sum(axis=1, keepdims=True)
    steps[tiny] = 0.5 * p[tiny]
    fd = central_difference(lambda v: obj(y, v), p, steps=steps)
    assert_close(grad, fd, rtol=1e-6)
    _, exp_grad = oracle(kind, y, p, reduction="sum", label_smoothing=0.1)
    assert_close(grad, exp_grad)
    assert not grad[1].any()


def test_gradient_finite_differences_binary_clipped(rng):
    p = binary_probabilities(rng, (3, 4))
    p[0, 1] = 1e-9
    p[2, 3] = 1 - 1e-9
    z = binary_targets(rng, (3, 4))
    obj = fx.BinaryCrossentropy(reduction="sum", pos_weight=1.5)
    _, grad = obj.loss_and_grad(z, p)
    assert grad[0, 1] == 0.0 and grad[2, 3] == 0.0
    steps = 1e-6 * np.minimum(p, 1 - p)  # never crosses 0, 1 or a clip boundary
    steps[0, 1] = steps[2, 3] = 5e-10
    fd = central_difference(lambda v: obj(z, v), p, steps=steps)
    assert_close(grad, fd, rtol=1e-6)


# ====================================================================== identities


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
@pytest.mark.parametrize("pos_weight", [None, 2.5])
def test_binary_equals_two_class_softmax(rng, dtype, label_smoothing, pos_weight):
    # sigmoid(x) = softmax([0, x])_1: binary(z) == categorical([1 - z, z]) on logits [0, x],
    # with pos_weight == class_weight [1, pos_weight].
    n = 50
    x = logits(rng, (n, 1), dtype=dtype, scale=4.0)
    z = binary_targets(rng, (n, 1), dtype=dtype)
    binary = fx.BinaryCrossentropy(
        from_logits=True, label_smoothing=label_smoothing, pos_weight=pos_weight, reduction="none"
    )
    lb, gb = binary.loss_and_grad(z, x)
    x2 = np.concatenate([np.zeros_like(x), x], axis=1)
    t2 = np.concatenate([1 - z, z], axis=1)
    cw = None if pos_weight is None else [1.0, pos_weight]
    cat = fx.CategoricalCrossentropy(
        from_logits=True, label_smoothing=label_smoothing, class_weight=cw, reduction="none"
    )
    lc, gc = cat.loss_and_grad(t2, x2)
    assert_close(lb, lc, dtype)
    assert_close(gb[:, 0], gc[:, 1], dtype)
    assert_close(gc[:, 0], -gc[:, 1], dtype)
    hard = (z[:, 0] > 0.5).astype(np.int64)
    if label_smoothing == 0.0:
        zh = hard[:, None].astype(dtype)
        ls, gs = fx.SparseCategoricalCrossentropy(
            from_logits=True, class_weight=cw, reduction="none"
        ).loss_and_grad(hard, x2)
        lbh, gbh = binary.loss_and_grad(zh, x)
        assert_close(ls, lbh, dtype)
        assert_close(gs[:, 1], gbh[:, 0], dtype)


@pytest.mark.parametrize("kind", R.KINDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_sample_weight_multiplies(rng, kind, dtype):
    shape = (6, 3, 4)
    opts = make_options(kind, "all", 4, True, rng)
    y, x = make_data(rng, kind, shape, -1, dtype, True, opts.get("ignore_class"))
    sw = rng.uniform(0.1, 2.0, size=(6, 3))
    none = CLASSES[kind](reduction="none", **opts)
    l0, g0 = none.loss_and_grad(y, x)
    l1, g1 = none.loss_and_grad(y, x, sw)
    assert_close(l1, l0.astype(np.float64) * sw, dtype)
    assert_close(g1, g0.astype(np.float64) * sw[..., None], dtype)
    total = CLASSES[kind](reduction="sum", **opts)
    ls, gs = total.loss_and_grad(y, x, sw)
    ls3, gs3 = total.loss_and_grad(y, x, 3.0 * sw)
    assert ls3 == pytest.approx(3.0 * ls, rel=1e-12 if dtype == np.float64 else 1e-5)
    assert_close(gs3, 3.0 * gs.astype(np.float64), dtype)
    mean_sw = CLASSES[kind](reduction="mean_with_sample_weight", **opts)
    lm, gm = mean_sw.loss_and_grad(y, x, sw)
    lm3, gm3 = mean_sw.loss_and_grad(y, x, 3.0 * sw)  # invariant to scaling the weights
    assert lm3 == pytest.approx(lm, rel=1e-12 if dtype == np.float64 else 1e-5)
    assert_close(gm3, gm, dtype)


@pytest.mark.parametrize("kind", ["categorical", "sparse_categorical"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("label_smoothing", [0.0, 0.3])
@pytest.mark.parametrize("weighted", [False, True])
def test_softmax_gradient_rows_sum_to_zero(rng, kind, dtype, label_smoothing, weighted):
    shape = (40, 7)
    y, x = make_data(rng, kind, shape, -1, dtype, True)
    cw = rng.uniform(0.2, 3.0, size=7) if weighted else None
    obj = CLASSES[kind](
        from_logits=True, label_smoothing=label_smoothing, class_weight=cw, reduction="none"
    )
    grad = obj.gradient(y, x)
    scale = 1.0 if cw is None else cw.max()
    tol = (1e-15 if dtype == np.float64 else 1e-6) * 7 * scale
    assert np.all(np.abs(grad.astype(np.float64).sum(axis=1)) <= tol)


@pytest.mark.parametrize("kind", R.KINDS)
@pytest.mark.parametrize("from_logits", [True, False])
def test_inputs_unmodified(rng, kind, from_logits):
    shape = (5, 3, 4)
    opts = make_options(kind, "all", 4, from_logits, rng)
    y, x = make_data(rng, kind, shape, -1, np.float32, from_logits, opts.get("ignore_class"))
    sw = rng.uniform(0.1, 2.0, size=(5, 3))
    weights = {k: v for k, v in opts.items() if isinstance(v, np.ndarray)}
    copies = [a.copy() for a in (y, x, sw, *weights.values())]
    y_t = y if kind == "sparse_categorical" else y.swapaxes(1, 2)
    for reduction in REDUCTIONS:
        CLASSES[kind](reduction=reduction, **opts).loss_and_grad(y, x, sw)
        # the class axis in the middle: the library copies, never writes back
        CLASSES[kind](reduction=reduction, axis=1, **opts).loss_and_grad(y_t, x.swapaxes(1, 2), sw)
    FUNCTIONS[kind](y, x, **opts)
    for before, after in zip(copies, (y, x, sw, *weights.values()), strict=True):
        np.testing.assert_array_equal(before, after)


@pytest.mark.parametrize("kind", R.KINDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_output_dtypes(rng, kind, dtype):
    y, x = make_data(rng, kind, (4, 3), -1, dtype, True)
    if kind != "sparse_categorical":
        y64 = y.astype(np.float64)  # the targets' dtype does not decide the output dtype
        assert FUNCTIONS[kind](y64, x, from_logits=True).dtype == dtype
    out = FUNCTIONS[kind](y, x, from_logits=True)
    assert out.dtype == dtype and out.shape == (4,)
    for reduction in REDUCTIONS:
        loss, grad = CLASSES[kind](from_logits=True, reduction=reduction).loss_and_grad(y, x)
        check_loss_type(loss, reduction, dtype, (4,))
        assert grad.dtype == dtype and grad.shape == (4, 3)


@pytest.mark.parametrize("kind", R.KINDS)
def test_one_dimensional_input_gives_0d(rng, kind):
    y, x = make_data(rng, kind, (6,), 0, np.float64, True)
    out = FUNCTIONS[kind](y, x, from_logits=True)
    assert isinstance(out, np.ndarray) and out.shape == ()
    assert_close(out, R.per_sample(kind, y, x, from_logits=True))


@pytest.mark.parametrize("kind", R.KINDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_grad_out_and_inplace(rng, kind, dtype):
    y, x = make_data(rng, kind, (9, 5), -1, dtype, True)
    obj = CLASSES[kind](from_logits=True, reduction="sum")
    loss, grad = obj.loss_and_grad(y, x)
    buf = np.full_like(x, np.nan)
    loss2, grad2 = obj.loss_and_grad(y, x, grad_out=buf)
    assert grad2 is buf or np.shares_memory(grad2, buf)
    assert loss2 == loss
    np.testing.assert_array_equal(buf, grad)
    x_copy = x.copy()
    loss3, grad3 = obj.loss_and_grad(y, x_copy, inplace=True)
    assert np.shares_memory(grad3, x_copy)
    assert loss3 == loss
    np.testing.assert_array_equal(grad3, grad)
    np.testing.assert_array_equal(x_copy, grad)
    g4 = obj.gradient(y, x, grad_out=np.empty_like(x))
    np.testing.assert_array_equal(g4, grad)


@pytest.mark.parametrize("kind", R.KINDS)
def test_function_equals_class_none(rng, kind):
    opts = make_options(kind, "all", 6, True, rng)
    y, x = make_data(rng, kind, (10, 6), -1, np.float64, True, opts.get("ignore_class"))
    out = FUNCTIONS[kind](y, x, **opts)
    loss = CLASSES[kind](reduction="none", **opts)(y, x)
    assert_close(out, loss)


@pytest.mark.parametrize("kind", R.KINDS)
def test_mean_alias(rng, kind):
    y, x = make_data(rng, kind, (10, 6), -1, np.float64, True)
    sw = rng.uniform(size=10)
    a = CLASSES[kind](from_logits=True, reduction="mean").loss_and_grad(y, x, sw)
    b = CLASSES[kind](from_logits=True, reduction="sum_over_batch_size").loss_and_grad(y, x, sw)
    assert a[0] == b[0]
    np.testing.assert_array_equal(a[1], b[1])


@pytest.mark.parametrize("kind", R.KINDS)
def test_get_config_round_trip(rng, kind):
    opts = make_options(kind, "all", 4, True, rng)
    obj = CLASSES[kind](axis=1, reduction="sum", n_threads=1, **opts)
    cfg = obj.get_config()
    assert isinstance(cfg, dict)
    for key in ("from_logits", "label_smoothing", "axis", "reduction", "n_threads"):
        assert key in cfg, key
    assert cfg["axis"] == 1 and cfg["reduction"] == "sum" and cfg["from_logits"] is True
    for key, value in opts.items():
        np.testing.assert_array_equal(np.asarray(cfg[key]), np.asarray(value), err_msg=key)
    clone = CLASSES[kind].from_config(cfg)
    y, x = make_data(rng, kind, (3, 4, 2), 1, np.float64, True, opts.get("ignore_class"))
    a = obj.loss_and_grad(y, x)
    b = clone.loss_and_grad(y, x)
    assert a[0] == b[0]
    np.testing.assert_array_equal(a[1], b[1])


@pytest.mark.parametrize("n_threads", [None, -1, 1, 2, 3, np.int64(2)])
def test_n_threads_values(rng, n_threads):
    x = logits(rng, (50, 4))
    labels = sparse_labels(rng, (50, 4))
    loss = fx.SparseCategoricalCrossentropy(from_logits=True, n_threads=n_threads)(labels, x)
    assert loss == pytest.approx(
        R.reference_loss("sparse_categorical", labels, x, from_logits=True), rel=1e-12
    )
    out = fx.sparse_categorical_crossentropy(labels, x, from_logits=True, n_threads=n_threads)
    assert_close(out, R.sparse_categorical_crossentropy(labels, x, from_logits=True))


def test_package_metadata(capsys):
    assert isinstance(fx.__version__, str) and fx.__version__
    assert isinstance(fx.openmp_enabled(), bool)
    fx.show_config()
    shown = capsys.readouterr().out
    assert fx.__version__ in shown
    assert "openmp" in shown.lower()


# ============================================================ property-based (light)


@hypothesis.settings(max_examples=40, deadline=None, derandomize=True)
@hypothesis.given(
    kind=st.sampled_from(R.KINDS),
    shape=st.lists(st.integers(1, 5), min_size=1, max_size=4),
    axis_index=st.integers(0, 3),
    from_logits=st.booleans(),
    label_smoothing=st.sampled_from([0.0, 0.05, 1.0]),
    reduction=st.sampled_from(REDUCTIONS),
    dtype=st.sampled_from(DTYPES),
    seed=st.integers(0, 2**31),
)
def test_random_shapes_vs_oracle(
    kind, shape, axis_index, from_logits, label_smoothing, reduction, dtype, seed
):
    rng = np.random.default_rng(seed)
    shape = tuple(shape)
    axis = axis_index % len(shape) - len(shape) * (seed % 2)  # negative half the time
    y, x = make_data(rng, kind, shape, axis, dtype, from_logits)
    opts = dict(
        from_logits=from_logits, label_smoothing=label_smoothing, axis=axis, reduction=reduction
    )
    loss, grad = CLASSES[kind](**opts).loss_and_grad(y, x)
    exp_loss, exp_grad = oracle(kind, y, x, **opts)
    assert_close(loss, exp_loss, dtype)
    assert_close(grad, exp_grad, dtype)


@pytest.mark.parametrize("kind", R.KINDS)
def test_float32_reductions_accumulate_in_float64(rng, kind):
    # Each float32 per-sample loss carries at most half an ulp (6e-8 relative) of error;
    # sums accumulated in float64 keep the reduced loss within that, while a float32
    # running sum over 200k entries would drift far past it.
    shape = (200_000, 3)
    y, x = make_data(rng, kind, shape, -1, np.float32, True)
    for reduction in ("sum", "sum_over_batch_size"):
        loss = CLASSES[kind](from_logits=True, reduction=reduction, n_threads=2)(y, x)
        expected = R.reference_loss(
            kind, y, x.astype(np.float64), from_logits=True, reduction=reduction
        )
        assert loss == pytest.approx(expected, rel=2e-7), reduction
