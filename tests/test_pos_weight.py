"""pos_weight broadcast against y_pred by PyTorch's rule (binary_cross_entropy_with_logits
broadcasts pos_weight with the target): against torch and the float64 oracle."""

import numpy as np
import pytest
import reference as ref
from util import assert_close

import fastxent as fx

SHAPES = [(4,), (1, 4), (6, 1), (6, 4), (1,), (5, 6, 4), (5, 1, 1), (1, 6, 4)]


def _case(rng, shape=(5, 6, 4)):
    x = rng.standard_normal(shape) * 2
    z = (rng.random(shape) < 0.4).astype(np.float64)
    return x, z


@pytest.mark.parametrize("pw_shape", SHAPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_logits_against_torch(pw_shape, reduction):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(len(pw_shape) * 10 + sum(pw_shape))
    x, z = _case(rng)
    pw = rng.uniform(0.2, 3.0, pw_shape)
    xt = torch.tensor(x, requires_grad=True)
    out = torch.nn.functional.binary_cross_entropy_with_logits(
        xt, torch.tensor(z), pos_weight=torch.tensor(pw), reduction=reduction)
    (out.sum() if reduction == "none" else out).backward()
    loss = fx.BinaryCrossentropy(from_logits=True, pos_weight=pw, reduction=reduction)
    value, grad = loss.loss_and_grad(z, x)
    if reduction == "none":  # fastxent: the mean over the last axis (Keras)
        assert_close(value, out.detach().numpy().mean(axis=-1), np.float64)
        assert_close(grad, xt.grad.numpy() / x.shape[-1], np.float64)
    elif reduction == "sum":
        assert value * x.shape[-1] == pytest.approx(out.item(), rel=1e-12)
        assert_close(grad * x.shape[-1], xt.grad.numpy(), np.float64)
    else:
        assert value == pytest.approx(out.item(), rel=1e-12)
        assert_close(grad, xt.grad.numpy(), np.float64)


@pytest.mark.parametrize("from_logits", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_per_element_against_oracle_and_fd(from_logits, dtype):
    rng = np.random.default_rng(3)
    x, z = _case(rng, (7, 5))
    if not from_logits:
        x = rng.uniform(0.05, 0.95, x.shape)
    x = x.astype(dtype)
    pw = rng.uniform(0.2, 3.0, (7, 1))
    sw = rng.uniform(0.5, 2.0, 7)
    loss = fx.BinaryCrossentropy(from_logits=from_logits, pos_weight=pw, label_smoothing=0.1,
                                 reduction="mean_with_sample_weight")
    value, grad = loss.loss_and_grad(z, x, sw)
    pwf = np.broadcast_to(pw, x.shape)
    zs = z * 0.9 + 0.05
    if from_logits:
        el, gel = ref.sigmoid_xent_elementwise(zs, x, pwf)
    else:
        el, gel = ref.sigmoid_prob_xent_elementwise(zs, x, 1e-7, pwf, dtype)
    want = float(np.sum(el.mean(axis=1) * sw) / sw.sum())
    rtol = 2e-6 if dtype == np.float32 else 1e-12
    assert value == pytest.approx(want, rel=rtol)
    assert_close(grad, gel / 5 * (sw / sw.sum())[:, None], dtype)
    if from_logits:  # the Hessian by finite differences of the gradient
        x64 = x.astype(np.float64)
        loss64 = fx.BinaryCrossentropy(from_logits=True, pos_weight=pw, reduction="sum")
        _, hess = loss64.gradient_hessian(z, x64)
        fd = ref.fd_grad(lambda v: 0.0, x64)  # zeros of the right shape
        h = 1e-5
        for idx in np.ndindex(x64.shape):
            up, down = x64.copy(), x64.copy()
            up[idx] += h
            down[idx] -= h
            fd[idx] = (loss64.gradient(z, up)[idx] - loss64.gradient(z, down)[idx]) / (2 * h)
        assert_close(hess, fd, np.float64, rtol=1e-7)


def test_per_column_shapes_take_the_kernel_and_agree():
    """(C,), (1, C) and (N, C) with equal rows: the same numbers (the kernel's per-column
    weights, or the elementwise route)."""
    rng = np.random.default_rng(4)
    x, z = _case(rng, (9, 4))
    pw = rng.uniform(0.5, 2.0, 4)
    results = [fx.BinaryCrossentropy(from_logits=True, pos_weight=w).loss_and_grad(z, x)
               for w in (pw, pw[None, :], np.tile(pw, (9, 1)))]
    for v, g in results[1:]:
        assert v == pytest.approx(results[0][0], rel=1e-14)
        assert_close(g, results[0][1], np.float64, rtol=1e-14)


def test_one_per_element_of_a_middle_axis_keeps_its_meaning():
    """A 1-D pos_weight as long as the class axis weighs that axis (axis=1 here), as before;
    a 2-D one broadcasts against y_pred's shape."""
    rng = np.random.default_rng(5)
    x, z = _case(rng, (3, 5, 2))
    pw = rng.uniform(0.5, 2.0, 5)
    a = fx.binary_crossentropy(z, x, from_logits=True, axis=1, pos_weight=pw)
    b = fx.binary_crossentropy(z, x, from_logits=True, axis=1, pos_weight=pw[:, None])
    assert_close(a, b, np.float64)


def test_not_broadcastable():
    x = np.zeros((4, 3))
    with pytest.raises(ValueError, match=r"pos_weight has shape \(2,\).*broadcasts against "
                                         r"y_pred's shape \(4, 3\)"):
        fx.BinaryCrossentropy(pos_weight=[1.0, 2.0])(np.zeros((4, 3)), x + 0.5)
    with pytest.raises(ValueError, match="pos_weight must be finite and >= 0"):
        fx.BinaryCrossentropy(pos_weight=-np.ones((4, 1)))


def test_config_round_trip_nd():
    loss = fx.BinaryCrossentropy(pos_weight=np.ones((3, 1)) * 2)
    cfg = loss.get_config()
    assert cfg["pos_weight"] == [[2.0], [2.0], [2.0]]
    assert fx.BinaryCrossentropy.from_config(cfg) == loss
