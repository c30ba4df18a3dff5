"""fastxent.nll_loss / nll_loss_and_grad against torch.nn.functional.nll_loss."""

import numpy as np
import pytest

import fastxent as fx

torch = pytest.importorskip("torch")
F = torch.nn.functional

SHAPES = [(4,), (6, 5), (3, 4, 2), (2, 3, 2, 2)]


def _data(rng, shape, dtype, ignore_index, frac_ignored=0.3):
    x = np.log(rng.dirichlet(np.ones(shape[0 if len(shape) == 1 else 1]),
                             size=1 if len(shape) == 1 else (shape[0],) + shape[2:]))
    x = np.moveaxis(x, -1, 0 if len(shape) == 1 else 1).reshape(shape).astype(dtype)
    n_classes = shape[0] if len(shape) == 1 else shape[1]
    batch = () if len(shape) == 1 else shape[:1] + shape[2:]
    t = rng.integers(0, n_classes, batch)
    if batch:
        t = np.where(rng.random(batch) < frac_ignored, ignore_index, t)
    return x, np.asarray(t, dtype=np.int64), n_classes


def _torch(x, t, weight, ignore_index, reduction):
    xt = torch.tensor(np.ascontiguousarray(x), requires_grad=True)  # torch wants C order
    wt = None if weight is None else torch.tensor(weight, dtype=xt.dtype)
    loss = F.nll_loss(xt, torch.tensor(t), weight=wt, ignore_index=ignore_index,
                      reduction=reduction)
    loss.sum().backward() if reduction == "none" else loss.backward()
    return loss.detach().numpy(), xt.grad.numpy()


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("ignore_index", [-100, 1])
def test_matches_torch(rng, shape, dtype, reduction, weighted, ignore_index):
    x, t, c = _data(rng, shape, dtype, ignore_index)
    weight = rng.uniform(0.1, 2.0, c) if weighted else None
    ref_loss, ref_grad = _torch(x, t, weight, ignore_index, reduction)
    loss = fx.nll_loss(x, t, weight, ignore_index, reduction)
    loss2, grad = fx.nll_loss_and_grad(x, t, weight=weight, ignore_index=ignore_index,
                                       reduction=reduction)
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(loss, ref_loss, rtol=rtol, atol=rtol)
    np.testing.assert_array_equal(np.asarray(loss), np.asarray(loss2))
    assert grad.shape == x.shape and grad.dtype == x.dtype
    np.testing.assert_allclose(grad, ref_grad, rtol=rtol, atol=rtol)
    if reduction == "none":
        assert loss.dtype == x.dtype and loss.shape == t.shape
    else:
        assert isinstance(loss, float)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_finite_differences(rng, reduction):
    x, t, c = _data(rng, (5, 4, 3), np.float64, -100)
    weight = rng.uniform(0.1, 2.0, c)
    _, grad = fx.nll_loss_and_grad(x, t, weight, reduction=reduction)

    def f(z):
        out = fx.nll_loss(z, t, weight, reduction=reduction)
        return float(np.sum(out))

    h = 1e-6
    num = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        d = np.zeros_like(x)
        d[i] = h
        num[i] = (f(x + d) - f(x - d)) / (2 * h)
    np.testing.assert_allclose(grad, num, atol=1e-6)


def test_all_ignored_is_nan_like_torch():
    x = np.log(np.full((3, 4), 0.25))
    t = np.full(3, -100)
    ref_loss, ref_grad = _torch(x, t, None, -100, "mean")
    loss, grad = fx.nll_loss_and_grad(x, t)
    assert np.isnan(loss) and np.isnan(ref_loss)
    np.testing.assert_array_equal(grad, ref_grad)  # zeros
    assert fx.nll_loss(x, t, reduction="sum") == 0.0
    # zero total weight with samples kept: NaN where the targets are, as torch
    w = np.array([1.0, 0.0, 0.0, 0.0])
    t = np.array([1, 1, 2])
    ref_loss, ref_grad = _torch(x, t, w, -100, "mean")
    loss, grad = fx.nll_loss_and_grad(x, t, w)
    assert np.isnan(loss) and np.isnan(ref_loss)
    np.testing.assert_array_equal(np.isnan(grad), np.isnan(ref_grad))


def test_empty_batch_like_torch():
    x = np.zeros((0, 4))
    t = np.zeros(0, dtype=np.int64)
    assert np.isnan(fx.nll_loss(x, t)) and fx.nll_loss(x, t, reduction="sum") == 0.0


@pytest.mark.parametrize("kwargs, exc, match", [
    ({"target": np.array([0, 5, 1])}, ValueError, r"target: label 5 at position \(1,\)"),
    ({"target": np.array([0, -1, 1])}, ValueError, r"target: label -1"),
    ({"target": np.array([0.0, 1.0, 1.0])}, TypeError, "target must hold integer"),
    ({"target": np.array([[0, 1, 1]])}, ValueError, "target has shape"),
    ({"input": np.zeros((3, 4), np.int64)}, TypeError, "input must have dtype"),
    ({"input": np.float64(1.0)}, ValueError, "input must have a class axis"),
    ({"weight": np.ones(3)}, ValueError, r"weight must have one entry per class \(4"),
    ({"weight": np.array(["a"] * 4)}, TypeError, "weight must hold real numbers"),
    ({"ignore_index": 1.5}, TypeError, "ignore_index must be an int"),
    ({"ignore_index": True}, TypeError, "ignore_index must be an int"),
    ({"reduction": "sum_over_batch_size"}, ValueError, "reduction must be one of"),
])
def test_errors_name_the_argument(kwargs, exc, match):
    args = {"input": np.log(np.full((3, 4), 0.25)), "target": np.array([0, 1, 2])}
    args.update(kwargs)
    for fn in (fx.nll_loss, fx.nll_loss_and_grad):
        with pytest.raises(exc, match=match):
            fn(**args)


def test_out_of_range_error_is_label_range_error():
    with pytest.raises(fx.LabelRangeError) as err:
        fx.nll_loss(np.zeros((2, 3)), np.array([0, 3]))
    assert err.value.argument == "target" and err.value.position == (1,)
