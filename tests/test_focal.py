"""Focal losses, KL divergence and generalized cross-entropy: against the float64 oracles of
tests/reference.py (gradients and Hessians by central finite differences), Keras 3 (NumPy
backend) and PyTorch."""

import os

import numpy as np
import pytest
import reference as ref
from util import assert_close

import fastxent as fx

os.environ.setdefault("KERAS_BACKEND", "numpy")

DTYPES = (np.float32, np.float64)
REDUCTIONS = ("none", "sum", "sum_over_batch_size", "mean_with_sample_weight")

CLASSES = {
    "binary_focal": fx.BinaryFocalCrossentropy,
    "categorical_focal": fx.CategoricalFocalCrossentropy,
    "sparse_focal": fx.SparseCategoricalFocalCrossentropy,
    "kl": fx.KLDivergence,
    "gce": fx.CategoricalGeneralizedCrossEntropy,
}
FUNCTIONS = {
    "binary_focal": fx.binary_focal_crossentropy,
    "categorical_focal": fx.categorical_focal_crossentropy,
    "sparse_focal": fx.sparse_categorical_focal_crossentropy,
    "kl": fx.kl_divergence,
    "gce": fx.categorical_generalized_cross_entropy,
}

# options of each loss: the defaults and everything switched on
OPTIONS = {
    "binary_focal": [{}, {"apply_class_balancing": True, "alpha": 0.3, "gamma": 1.5,
                          "label_smoothing": 0.1}, {"gamma": 0.5}, {"gamma": 0.0}],
    "categorical_focal": [{}, {"alpha": [0.2, 0.5, 1.0, 2.0, 0.7], "gamma": 0.5,
                               "label_smoothing": 0.1}, {"gamma": 3.0}],
    "sparse_focal": [{}, {"alpha": 0.7, "gamma": 1.0, "class_weight": [0.5, 1, 2, 3, 0.2],
                          "ignore_class": 1}, {"gamma": 0.5, "ignore_class": -100}],
    "kl": [{}],
    "gce": [{}, {"q": 0.2, "ignore_class": 2}, {"q": 0.9}],
}


def case(kind, rng, shape, from_logits, dtype=np.float64, axis=-1, options=None):
    """(y_true, y_pred) of ``kind`` away from the clip bounds."""
    ax = axis % len(shape)
    ncls = shape[ax]
    batch = tuple(np.delete(np.array(shape), ax))
    if from_logits:
        y_pred = rng.standard_normal(shape) * 2.0
    elif kind in ("gce",):
        y_pred = rng.uniform(0.05, 1.0, shape)
    elif kind == "binary_focal":
        y_pred = rng.uniform(0.02, 0.98, shape)
    else:
        y_pred = rng.uniform(0.05, 1.0, shape)
        y_pred = y_pred / y_pred.sum(axis=ax, keepdims=True)
    if kind in ("sparse_focal", "gce"):
        y_true = rng.integers(0, ncls, batch)
        ic = (options or {}).get("ignore_class")
        if ic is not None:
            y_true = np.where(rng.random(batch) < 0.3, ic, y_true)
    elif kind == "binary_focal":
        y_true = (rng.random(shape) < 0.4).astype(np.float64)
    else:
        t = rng.exponential(size=shape)
        y_true = t / t.sum(axis=ax, keepdims=True)
    return y_true, y_pred.astype(dtype)


@pytest.mark.parametrize("kind", list(CLASSES))
@pytest.mark.parametrize("from_logits", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_loss_and_grad_against_oracle(kind, from_logits, dtype, reduction):
    rng = np.random.default_rng(7)
    for i, opts in enumerate(OPTIONS[kind]):
        y_true, y_pred = case(kind, rng, (9, 5), from_logits, dtype, options=opts)
        sw = rng.uniform(0.1, 2.0, 9)
        loss = CLASSES[kind](from_logits=from_logits, reduction=reduction, **opts)
        value, grad = loss.loss_and_grad(y_true, y_pred, sample_weight=sw)
        ref_value, ref_grad = ref.family_loss_and_grad(
            kind, y_true, y_pred, sample_weight=sw, reduction=reduction,
            from_logits=from_logits, **opts)
        rtol = 3e-6 if dtype == np.float32 else 1e-12
        assert grad.dtype == dtype and grad.shape == y_pred.shape
        assert_close(value, ref_value, dtype, rtol=rtol, err_msg=f"loss, options {i}")
        assert_close(grad, ref_grad, dtype, rtol=max(rtol, 2e-7), err_msg=f"grad, options {i}")
        if reduction == "none":
            assert value.dtype == dtype
        else:
            assert isinstance(value, float)
        assert loss(y_true, y_pred, sample_weight=sw) == pytest.approx(value, rel=0, abs=0) \
            if reduction != "none" else np.array_equal(loss(y_true, y_pred, sw), value)


@pytest.mark.parametrize("kind", list(CLASSES))
@pytest.mark.parametrize("from_logits", [False, True])
def test_function_is_per_sample_oracle(kind, from_logits):
    rng = np.random.default_rng(3)
    for opts in OPTIONS[kind]:
        y_true, y_pred = case(kind, rng, (4, 3, 5), from_logits, options=opts)
        got = FUNCTIONS[kind](y_true, y_pred, from_logits=from_logits, **opts)
        want = ref.FAMILY_PER_SAMPLE[kind](y_true, y_pred, from_logits=from_logits, **opts)
        assert got.shape == want.shape == (4, 3)
        assert_close(got, want, np.float64)


@pytest.mark.parametrize("kind", list(CLASSES))
@pytest.mark.parametrize("from_logits", [False, True])
def test_any_axis(kind, from_logits):
    rng = np.random.default_rng(11)
    y_true, y_pred = case(kind, rng, (3, 5, 4), from_logits, axis=1)
    got = FUNCTIONS[kind](y_true, y_pred, from_logits=from_logits, axis=1)
    want = ref.FAMILY_PER_SAMPLE[kind](y_true, y_pred, from_logits=from_logits, axis=1)
    assert_close(got, want, np.float64)
    value, grad = CLASSES[kind](from_logits=from_logits, axis=1, reduction="sum").loss_and_grad(
        y_true, y_pred)
    _, ref_grad = ref.family_loss_and_grad(kind, y_true, y_pred, reduction="sum",
                                           from_logits=from_logits, axis=1)
    assert_close(grad, ref_grad, np.float64, rtol=2e-7)
    # the same as moving the axis last
    moved_true = y_true if kind in ("sparse_focal", "gce") else np.moveaxis(y_true, 1, -1)
    v2, g2 = CLASSES[kind](from_logits=from_logits, reduction="sum").loss_and_grad(
        moved_true, np.moveaxis(y_pred, 1, -1))
    assert v2 == pytest.approx(value, rel=1e-13)
    assert_close(np.moveaxis(g2, -1, 1), grad, np.float64)


@pytest.mark.parametrize("kind", ["binary_focal", "categorical_focal", "sparse_focal", "kl",
                                  "gce"])
def test_hessian_by_finite_differences(kind):
    rng = np.random.default_rng(5)
    for opts in OPTIONS[kind]:
        y_true, x = case(kind, rng, (6, 5), True, options=opts)
        sw = rng.uniform(0.5, 2.0, 6)
        loss = CLASSES[kind](from_logits=True, reduction="mean_with_sample_weight", **opts)
        grad, hess = loss.gradient_hessian(y_true, x, sw)
        assert_close(grad, loss.loss_and_grad(y_true, x, sw)[1], np.float64)
        h = 1e-5
        fd = np.empty_like(x)
        for idx in np.ndindex(x.shape):
            up, down = x.copy(), x.copy()
            up[idx] += h
            down[idx] -= h
            fd[idx] = (loss.loss_and_grad(y_true, up, sw)[1][idx]
                       - loss.loss_and_grad(y_true, down, sw)[1][idx]) / (2 * h)
        assert_close(hess, fd, np.float64, rtol=1e-7, err_msg=str(opts))


def test_hessian_needs_logits():
    with pytest.raises(ValueError, match="from_logits=True"):
        fx.BinaryFocalCrossentropy().gradient_hessian(np.ones((2, 2)), np.full((2, 2), 0.5))


@pytest.mark.parametrize("from_logits", [False, True])
@pytest.mark.parametrize("kind", list(CLASSES))
def test_thread_counts_same_bits(kind, from_logits):
    rng = np.random.default_rng(2)
    y_true, y_pred = case(kind, rng, (700, 130), from_logits, np.float32)
    results = []
    for nt in (1, 2, 4):
        loss = CLASSES[kind](from_logits=from_logits, n_threads=nt)
        v, g = loss.loss_and_grad(y_true, y_pred)
        results.append((np.float64(v).tobytes(), g.tobytes()))
    assert results[0] == results[1] == results[2]


def test_sparse_equals_categorical_one_hot():
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 6, 20)
    for from_logits in (False, True):
        _, x = case("categorical_focal", rng, (20, 6), from_logits)
        a = fx.SparseCategoricalFocalCrossentropy(alpha=0.4, gamma=1.7, from_logits=from_logits)
        b = fx.CategoricalFocalCrossentropy(alpha=0.4, gamma=1.7, from_logits=from_logits)
        va, ga = a.loss_and_grad(labels, x)
        vb, gb = b.loss_and_grad(np.eye(6)[labels], x)
        assert va == pytest.approx(vb, rel=1e-12)
        assert_close(ga, gb, np.float64)


def test_gamma_zero_is_cross_entropy():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((10, 4))
    z = (rng.random((10, 4)) < 0.5).astype(float)
    labels = rng.integers(0, 4, 10)
    bf = fx.BinaryFocalCrossentropy(gamma=0.0, from_logits=True)
    bc = fx.BinaryCrossentropy(from_logits=True)
    assert_close(bf.loss_and_grad(z, x)[1], bc.loss_and_grad(z, x)[1], np.float64)
    sf = fx.SparseCategoricalFocalCrossentropy(alpha=1.0, gamma=0.0, from_logits=True)
    sc = fx.SparseCategoricalCrossentropy(from_logits=True)
    assert sf(labels, x) == pytest.approx(sc(labels, x), rel=1e-13)
    assert_close(sf.loss_and_grad(labels, x)[1], sc.loss_and_grad(labels, x)[1], np.float64)


def test_kl_from_logits_equals_probabilities_inside_clip():
    rng = np.random.default_rng(9)
    x = rng.standard_normal((8, 5))
    t = rng.dirichlet(np.ones(5), 8)
    p = np.exp(x - x.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    assert_close(fx.kl_divergence(t, x, from_logits=True), fx.kl_divergence(t, p), np.float64)
    # the gradient from logits: (sum t) softmax - t
    _, g = fx.KLDivergence(from_logits=True, reduction="sum").loss_and_grad(t, x)
    assert_close(g, p - t, np.float64)


def test_kl_from_logits_zero_targets_and_masks():
    x = np.array([[0.0, -np.inf, 1.0], [1.0, 2.0, 3.0]])
    t = np.array([[0.5, 0.0, 0.5], [0.0, 0.0, 1.0]])
    got = fx.kl_divergence(t, x, from_logits=True)
    assert np.all(np.isfinite(got))
    assert_close(got, ref.kl_per_sample(t, x, from_logits=True), np.float64)


def test_label_out_of_range():
    x = np.zeros((3, 4))
    for loss in (fx.SparseCategoricalFocalCrossentropy(from_logits=True),
                 fx.SparseCategoricalFocalCrossentropy(),
                 fx.CategoricalGeneralizedCrossEntropy(),
                 fx.CategoricalGeneralizedCrossEntropy(from_logits=True),
                 fx.SparseCategoricalFocalCrossentropy(from_logits=True,
                                                       class_weight=[1.0, 2.0, 3.0, 4.0])):
        with pytest.raises(fx.LabelRangeError, match=r"label 4 at position \(1,\)") as info:
            loss.loss_and_grad([0, 4, 1], x + 0.25)
        assert info.value.position == (1,) and info.value.value == 4


def test_ignore_class_everything_ignored():
    loss = fx.SparseCategoricalFocalCrossentropy(from_logits=True, ignore_class=-1)
    v, g = loss.loss_and_grad([-1, -1], np.array([[1.0, np.inf], [0.0, np.nan]]))
    assert v == 0.0 and np.all(g == 0)


def test_nan_stays_in_its_row():
    x = np.array([[0.1, np.nan, 0.3], [0.2, 0.5, 0.3]])
    for kind in CLASSES:
        y_true, _ = case(kind, np.random.default_rng(0), (2, 3), True)
        v, g = CLASSES[kind](from_logits=True, reduction="none").loss_and_grad(y_true, x)
        assert np.isnan(v[0]) and np.isfinite(v[1]), kind
        assert np.all(np.isfinite(g[1])), kind


@pytest.mark.parametrize("kind", list(CLASSES))
def test_buffers_and_inputs_unmodified(kind):
    rng = np.random.default_rng(12)
    y_true, x = case(kind, rng, (6, 5), True, np.float32)
    loss = CLASSES[kind](from_logits=True)
    x0, t0 = x.copy(), np.copy(y_true)
    v, g = loss.loss_and_grad(y_true, x)
    assert np.array_equal(x, x0) and np.array_equal(y_true, t0)
    out = np.empty_like(x)
    v2, g2 = loss.loss_and_grad(y_true, x, grad_out=out)
    assert g2 is out and np.array_equal(out, g) and v2 == v
    xi = x.copy()
    v3, g3 = loss.loss_and_grad(y_true, xi, inplace=True)
    assert g3 is xi and np.array_equal(xi, g) and v3 == v


@pytest.mark.parametrize("kind", list(CLASSES))
def test_config_round_trip(kind):
    opts = OPTIONS[kind][-1]
    loss = CLASSES[kind](reduction="sum", name="mine", dtype="float32", **opts)
    cfg = loss.get_config()
    again = CLASSES[kind].from_config(cfg)
    assert again == loss and again.get_config() == cfg
    assert cfg["name"] == "mine" and cfg["dtype"] == "float32" and cfg["reduction"] == "sum"
    for key, value in opts.items():
        assert cfg[key] == value


def test_default_names():
    assert fx.BinaryFocalCrossentropy().name == "binary_focal_crossentropy"
    assert fx.CategoricalFocalCrossentropy().name == "categorical_focal_crossentropy"
    assert fx.SparseCategoricalFocalCrossentropy().name == \
        "sparse_categorical_focal_crossentropy"
    assert fx.KLDivergence().name == "kl_divergence"
    assert fx.CategoricalGeneralizedCrossEntropy().name == \
        "categorical_generalized_cross_entropy"


@pytest.mark.parametrize("bad, match, exc", [
    ({"gamma": -1.0}, "gamma must be a finite number >= 0", ValueError),
    ({"gamma": "2"}, "gamma must be a real number", TypeError),
    ({"alpha": 1.5}, r"alpha must be in \[0.0, 1.0\]", ValueError),
    ({"apply_class_balancing": 1}, "apply_class_balancing must be True or False", TypeError),
])
def test_bad_focal_options(bad, match, exc):
    with pytest.raises(exc, match=match):
        fx.BinaryFocalCrossentropy(**bad)


def test_bad_q():
    for q in (0.0, 1.0, -0.5):
        with pytest.raises(ValueError, match=r"q must be in \(0.0, 1.0\)"):
            fx.CategoricalGeneralizedCrossEntropy(q=q)


def test_categorical_alpha_length_checked():
    with pytest.raises(ValueError, match=r"alpha must have one entry per class \(3\)"):
        fx.categorical_focal_crossentropy(np.eye(3), np.eye(3) + 0.1, alpha=[1.0, 2.0])


# ------------------------------------------------------------------------- Keras


@pytest.fixture(scope="module")
def keras():
    os.environ["KERAS_BACKEND"] = "numpy"
    return pytest.importorskip("keras")


KERAS_CASES = [
    ("binary_focal", "BinaryFocalCrossentropy",
     {"apply_class_balancing": True, "alpha": 0.3, "gamma": 1.5, "label_smoothing": 0.1}),
    ("binary_focal", "BinaryFocalCrossentropy", {}),
    ("categorical_focal", "CategoricalFocalCrossentropy",
     {"alpha": 0.4, "gamma": 2.5, "label_smoothing": 0.05}),
    ("categorical_focal", "CategoricalFocalCrossentropy", {}),
    ("kl", "KLDivergence", {}),
    ("gce", "CategoricalGeneralizedCrossEntropy", {"q": 0.3}),
]


# Keras' KL divergence and GCE take probabilities only
@pytest.mark.parametrize("kind, keras_name, opts, from_logits", [
    c + (fl,) for c in KERAS_CASES for fl in (False, True) if not (fl and c[0] in ("kl", "gce"))
])
@pytest.mark.parametrize("reduction", [None, "sum", "sum_over_batch_size",
                                       "mean_with_sample_weight"])
def test_against_keras(keras, kind, keras_name, opts, from_logits, reduction):
    rng = np.random.default_rng(21)
    y_true, y_pred = case(kind, rng, (7, 6), from_logits, np.float32)
    sw = rng.uniform(0.2, 2.0, 7).astype(np.float32)
    kopts = dict(opts)
    if kind not in ("kl", "gce"):
        kopts["from_logits"] = from_logits
    k = getattr(keras.losses, keras_name)(reduction=reduction, **kopts)
    f = CLASSES[kind](reduction=reduction, **kopts)
    for weights in (None, sw):
        want = np.asarray(k(y_true, y_pred, sample_weight=weights), dtype=np.float64)
        got = np.asarray(f(y_true, y_pred, sample_weight=weights), dtype=np.float64)
        np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-7)


def test_keras_docstring_examples():
    # the figures printed in Keras' BinaryFocalCrossentropy docstring
    y_true = np.array([[0, 1], [0, 0]])
    y_pred = np.array([[-18.6, 0.51], [2.94, -12.8]])
    cases = [({"gamma": 3}, None, 0.647), ({"apply_class_balancing": True, "gamma": 3}, None,
                                           0.482),
             ({"gamma": 3}, [0.8, 0.2], 0.133),
             ({"apply_class_balancing": True, "gamma": 3}, [0.8, 0.2], 0.097)]
    for opts, sw, want in cases:
        got = fx.BinaryFocalCrossentropy(from_logits=True, **opts)(y_true, y_pred, sw)
        assert round(got, 3) == want
    got = fx.BinaryFocalCrossentropy(gamma=4, from_logits=True, reduction="sum")(y_true, y_pred)
    assert round(got, 3) == 1.222
    got = fx.BinaryFocalCrossentropy(gamma=5, from_logits=True, reduction=None)(y_true, y_pred)
    np.testing.assert_allclose(got, [0.0017, 1.1561], atol=1e-4)


# ------------------------------------------------------------------------- PyTorch


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


def test_binary_focal_vs_torchvision_formula(torch):
    """torchvision.ops.sigmoid_focal_loss (not installed: its formula, written out in torch).

    torchvision always applies alpha (as ``apply_class_balancing=True`` here) and reduces
    with a plain mean over all elements."""
    rng = np.random.default_rng(30)
    x = rng.standard_normal((16, 3)) * 3
    z = (rng.random((16, 3)) < 0.3).astype(np.float64)
    xt = torch.tensor(x, requires_grad=True)
    zt = torch.tensor(z)
    p = torch.sigmoid(xt)
    ce = torch.nn.functional.binary_cross_entropy_with_logits(xt, zt, reduction="none")
    p_t = p * zt + (1 - p) * (1 - zt)
    tv = ce * (1 - p_t) ** 2.0
    tv = (0.25 * zt + 0.75 * (1 - zt)) * tv
    tv = tv.mean()
    tv.backward()
    loss = fx.BinaryFocalCrossentropy(apply_class_balancing=True, alpha=0.25, gamma=2.0,
                                      from_logits=True)
    v, g = loss.loss_and_grad(z, x)
    assert v == pytest.approx(tv.item(), rel=1e-12)
    assert_close(g, xt.grad.numpy(), np.float64)


def test_kl_from_logits_vs_torch(torch):
    rng = np.random.default_rng(31)
    x = rng.standard_normal((10, 7)) * 2
    t = rng.dirichlet(np.ones(7) * 0.5, 10)
    t[0, 2] = 0.0
    t[0] /= t[0].sum()
    xt = torch.tensor(x, requires_grad=True)
    kl = torch.nn.functional.kl_div(torch.log_softmax(xt, -1), torch.tensor(t),
                                    reduction="batchmean")
    kl.backward()
    v, g = fx.KLDivergence(from_logits=True).loss_and_grad(t, x)
    assert v == pytest.approx(kl.item(), rel=1e-12)
    assert_close(g, xt.grad.numpy(), np.float64)


def test_sparse_focal_and_gce_vs_torch_autograd(torch):
    rng = np.random.default_rng(32)
    x = rng.standard_normal((12, 6)) * 2
    y = rng.integers(0, 6, 12)
    cw = rng.uniform(0.5, 2.0, 6)
    xt = torch.tensor(x, requires_grad=True)
    logp = torch.log_softmax(xt, -1)[torch.arange(12), torch.tensor(y)]
    focal = -(0.4 * torch.tensor(cw)[torch.tensor(y)] * (1 - logp.exp()) ** 1.5 * logp)
    focal.sum().backward()
    v, g = fx.SparseCategoricalFocalCrossentropy(alpha=0.4, gamma=1.5, from_logits=True,
                                                 class_weight=cw, reduction="sum"
                                                 ).loss_and_grad(y, x)
    assert v == pytest.approx(focal.sum().item(), rel=1e-12)
    assert_close(g, xt.grad.numpy(), np.float64)
    xt.grad = None
    gce = (1 - torch.softmax(xt, -1)[torch.arange(12), torch.tensor(y)] ** 0.3) / 0.3
    gce.mean().backward()
    v, g = fx.CategoricalGeneralizedCrossEntropy(q=0.3, from_logits=True).loss_and_grad(y, x)
    assert v == pytest.approx(gce.mean().item(), rel=1e-12)
    assert_close(g, xt.grad.numpy(), np.float64)


@pytest.mark.parametrize("kind", ["sparse_focal", "gce"])
@pytest.mark.parametrize("ncls", [3, 16, 17, 262_147])
def test_one_pass_and_two_pass_gradients_agree(kind, ncls):
    """From logits the kernel scales each row's gradient by the loss's factor (one pass);
    rows of SPLIT_MIN classes or more, and the Hessian path, take two passes.  Both are the
    finite-difference-checked formula F (softmax - onehot)."""
    rng = np.random.default_rng(ncls)
    n = 2 if ncls > 1000 else 70
    x = rng.standard_normal((n, ncls)) * 3
    y = rng.integers(0, ncls, n)
    y[0] = -1
    opts = {"ignore_class": -1, **({"gamma": 1.5, "alpha": 0.7} if kind == "sparse_focal"
                                   else {"q": 0.4})}
    loss = CLASSES[kind](from_logits=True, reduction="sum", **opts)
    v, g = loss.loss_and_grad(y, x, sample_weight=np.linspace(0.5, 1.5, n))
    g2, _ = loss.gradient_hessian(y, x, sample_weight=np.linspace(0.5, 1.5, n))
    assert_close(g, g2, np.float64, rtol=1e-13)
    log_p, p, _, _ = ref.softmax_rows(x)
    u = log_p[np.arange(n), np.where(y < 0, 0, y)]
    if kind == "gce":
        F = np.exp(0.4 * u)
    else:
        d = -np.expm1(u)
        F = 0.7 * (d ** 1.5 - 1.5 * u * np.exp(u) * d ** 0.5)
    onehot = np.eye(ncls)[np.where(y < 0, 0, y)] if ncls < 1000 else np.zeros_like(x)
    if ncls >= 1000:
        onehot[np.arange(n), np.where(y < 0, 0, y)] = 1.0
    want = (F * np.linspace(0.5, 1.5, n) * (y >= 0))[:, None] * (p - onehot)
    assert_close(g, want, np.float64, rtol=1e-12)
