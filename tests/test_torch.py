"""fastxent.torch against torch.nn.functional: values, gradients, autograd, errors."""

import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional
fxt = pytest.importorskip("fastxent.torch")
import fastxent as fx  # noqa: E402

RTOL = {torch.float32: 1e-6, torch.float64: 1e-12}
DTYPES = (torch.float32, torch.float64)
REDUCTIONS = ("none", "mean", "sum")


def assert_close(actual, desired, dtype):
    """Relative to the reference's scale (gradients have entries near 0), NaN matching NaN."""
    a = actual.detach().to(torch.float64).numpy()
    d = desired.detach().to(torch.float64).numpy()
    assert a.shape == d.shape, f"shape {a.shape} != {d.shape}"
    finite = d[np.isfinite(d)]
    scale = float(np.max(np.abs(finite))) if finite.size else 1.0
    rtol = RTOL[dtype]
    np.testing.assert_allclose(a, d, rtol=rtol, atol=rtol * max(scale, 1e-300), equal_nan=True)


def gen(seed):
    return torch.Generator().manual_seed(seed)


def grad_output_for(loss, g):
    """A non-uniform grad_output for per-sample losses, 1.0 for a scalar."""
    if loss.dim() == 0:
        return torch.tensor(1.0, dtype=loss.dtype)
    return torch.rand(loss.shape, generator=g, dtype=loss.dtype) * 2 - 0.5


def forward_backward(func, inputs, g, grad_output=None):
    """func(*inputs): the loss and the gradients of the inputs that require grad."""
    loss = func(*inputs)
    go = grad_output_for(loss, g) if grad_output is None else grad_output
    grads = torch.autograd.grad(loss, [t for t in inputs if isinstance(t, torch.Tensor)
                                       and t.requires_grad], go)
    return loss, grads, go


# --------------------------------------------------------------------------- cross_entropy

SHAPES = [(7, 5), (3, 5, 4), (2, 4, 3, 2), (5,)]


def ce_case(seed, shape, dtype, soft, ignore):
    g = gen(seed)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 2).to(dtype)
    class_axis = 0 if len(shape) == 1 else 1
    n_classes = shape[class_axis]
    batch = shape[:class_axis] + shape[class_axis + 1:]
    if soft:
        t = torch.softmax(torch.randn(shape, generator=g, dtype=torch.float64), class_axis)
        t = t.to(dtype)
    else:
        t = torch.randint(0, n_classes, batch, generator=g)
        if ignore and t.numel() > 1:
            t.view(-1)[::3] = -100
    w = torch.rand(n_classes, generator=g, dtype=dtype) + 0.25
    return g, x, t, w


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_matches_torch(dtype, shape, soft, weighted, smoothing, reduction):
    g, x, t, w = ce_case(len(shape) * 10 + soft, shape, dtype, soft, ignore=True)
    kw = dict(weight=w if weighted else None, reduction=reduction, label_smoothing=smoothing)
    ours_x = x.clone().requires_grad_()
    loss, (grad,), go = forward_backward(lambda a: fxt.cross_entropy(a, t, **kw), [ours_x], g)
    ref_x = x.to(torch.float64).requires_grad_()
    ref_kw = dict(kw, weight=None if not weighted else w.to(torch.float64))
    ref_t = t.to(torch.float64) if soft else t
    ref = F.cross_entropy(ref_x, ref_t, **ref_kw)
    (ref_grad,) = torch.autograd.grad(ref, [ref_x], go.to(torch.float64))
    assert loss.dtype == dtype and grad.dtype == dtype
    assert loss.shape == ref.shape and grad.shape == x.shape
    assert_close(loss, ref, dtype)
    assert_close(grad, ref_grad, dtype)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_ignore_index_value(reduction):
    g, x, t, w = ce_case(3, (9, 4), torch.float64, False, ignore=False)
    t[::2] = 2  # the ignored class is a real class index here
    xa = x.clone().requires_grad_()
    loss, (grad,), go = forward_backward(
        lambda a: fxt.cross_entropy(a, t, weight=w, ignore_index=2, reduction=reduction,
                                    label_smoothing=0.1), [xa], g)
    xb = x.clone().requires_grad_()
    ref = F.cross_entropy(xb, t, weight=w, ignore_index=2, reduction=reduction,
                          label_smoothing=0.1)
    (ref_grad,) = torch.autograd.grad(ref, [xb], go)
    assert_close(loss, ref, torch.float64)
    assert_close(grad, ref_grad, torch.float64)


@pytest.mark.parametrize("weighted", [False, True])
def test_cross_entropy_every_target_ignored_is_nan(weighted):
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    t = torch.full((4,), -100)
    w = torch.rand(3, dtype=torch.float64) if weighted else None
    loss = fxt.cross_entropy(x, t, weight=w)
    loss.backward()
    ref = F.cross_entropy(x.detach(), t, weight=w)
    assert torch.isnan(loss) and torch.isnan(ref)
    assert torch.equal(x.grad, torch.zeros(4, 3, dtype=torch.float64))


@pytest.mark.parametrize("scale", [2.5, -0.75])
def test_cross_entropy_scalar_grad_output(scale):
    g, x, t, w = ce_case(5, (6, 5), torch.float64, False, ignore=True)
    go = torch.tensor(scale, dtype=torch.float64)
    xa = x.clone().requires_grad_()
    _, (grad,), _ = forward_backward(lambda a: fxt.cross_entropy(a, t, weight=w), [xa], g, go)
    xb = x.clone().requires_grad_()
    (ref_grad,) = torch.autograd.grad(F.cross_entropy(xb, t, weight=w), [xb], go)
    assert_close(grad, ref_grad, torch.float64)


def test_cross_entropy_channels_last_is_read_in_place():
    g, x, t, _ = ce_case(6, (2, 5, 3, 4), torch.float64, False, ignore=False)
    xc = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    loss = fxt.cross_entropy(xc, t)
    loss.backward()
    xr = x.clone().requires_grad_()
    F.cross_entropy(xr, t).backward()
    assert_close(xc.grad, xr.grad, torch.float64)


def test_cross_entropy_gradient_is_computed_once(monkeypatch):
    calls = []
    real = fxt._call
    monkeypatch.setattr(fxt, "_call", lambda *a, **k: calls.append(1) or real(*a, **k))
    x = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    loss = fxt.cross_entropy(x, torch.tensor([0, 1, 2, 3, 0]), reduction="none")
    assert len(calls) == 1
    loss.backward(torch.rand(5, dtype=torch.float64))
    assert len(calls) == 1  # backward only scales the saved gradient


def test_cross_entropy_without_grad_needs_no_gradient():
    x = torch.randn(5, 4, dtype=torch.float64)
    loss = fxt.cross_entropy(x, torch.tensor([0, 1, 2, 3, 0]))
    assert loss.grad_fn is None
    assert_close(loss, F.cross_entropy(x, torch.tensor([0, 1, 2, 3, 0])), torch.float64)


@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_gradcheck(soft, reduction):
    g, x, t, w = ce_case(7, (4, 5, 3), torch.float64, soft, ignore=True)
    x.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a: fxt.cross_entropy(a, t, weight=w, reduction=reduction, label_smoothing=0.1),
        (x,), eps=1e-6, atol=1e-8)


# ------------------------------------------------------------------------------- binary

def bce_case(shape, weight_shape, pos, dtype):
    """(generator, logits, targets with exact 0s and 1s, weight, pos_weight) of ``dtype``;
    the weights are drawn in float32 for float16 / bfloat16 and then rounded."""
    g = gen(len(shape) + 3 * pos)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 3).to(dtype)
    t = torch.rand(shape, generator=g, dtype=torch.float64).to(dtype)
    t.view(-1)[::4] = 1.0
    t.view(-1)[1::4] = 0.0
    w_shape = {None: None, "last": shape[-1:], "rows": shape[:1] + (1,) * (len(shape) - 1)}[
        weight_shape]
    draw = dtype if dtype in (torch.float32, torch.float64) else torch.float32
    w = None if w_shape is None else (torch.rand(w_shape, generator=g, dtype=draw) + 0.5).to(dtype)
    pw = (torch.rand(shape[-1:], generator=g, dtype=draw) * 3).to(dtype) if pos else None
    return g, x, t, w, pw


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(6, 4), (3, 4, 5), (7,)])
@pytest.mark.parametrize("weight_shape", [None, "last", "rows"])
@pytest.mark.parametrize("pos", [False, True])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_bce_with_logits_matches_torch(dtype, shape, weight_shape, pos, reduction):
    g, x, t, w, pw = bce_case(shape, weight_shape, pos, dtype)
    xa = x.clone().requires_grad_()
    loss, (grad,), go = forward_backward(
        lambda a: fxt.binary_cross_entropy_with_logits(a, t, w, reduction, pw), [xa], g)
    xb = x.to(torch.float64).requires_grad_()

    def d(v):
        return None if v is None else v.to(torch.float64)

    ref = F.binary_cross_entropy_with_logits(xb, t.to(torch.float64), d(w),
                                             reduction=reduction, pos_weight=d(pw))
    (ref_grad,) = torch.autograd.grad(ref, [xb], go.to(torch.float64))
    assert loss.dtype == dtype and loss.shape == ref.shape
    assert_close(loss, ref, dtype)
    assert_close(grad, ref_grad, dtype)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_bce_with_logits_gradcheck(reduction):
    g = gen(11)
    x = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.rand(5, 3, generator=g, dtype=torch.float64)
    w = torch.rand(5, 1, generator=g, dtype=torch.float64)
    pw = torch.rand(3, generator=g, dtype=torch.float64) * 2
    assert torch.autograd.gradcheck(
        lambda a: fxt.binary_cross_entropy_with_logits(a, t, w, reduction, pw), (x,),
        eps=1e-6, atol=1e-8)


# ------------------------------------------------------------------------ linear head

def linear_case(seed, batch, dtype, bias, n_vocab=11, d=8):
    g = gen(seed)
    h = torch.randn(batch + (d,), generator=g, dtype=torch.float64).to(dtype)
    w = (torch.randn(n_vocab, d, generator=g, dtype=torch.float64) / 2).to(dtype)
    b = (torch.randn(n_vocab, generator=g, dtype=torch.float64)).to(dtype) if bias else None
    t = torch.randint(0, n_vocab, batch, generator=g)
    t.view(-1)[::4] = -100
    return g, h, w, b, t


def reference_linear(h, w, t, b, reduction, smoothing, z_loss):
    """F.linear + F.cross_entropy (+ the z-loss, which PyTorch lacks) in float64."""
    logits = F.linear(h, w, b)
    ce = F.cross_entropy(logits.reshape(-1, w.shape[0]), t.reshape(-1), reduction="none",
                         label_smoothing=smoothing)
    valid = (t.reshape(-1) != -100).to(h.dtype)
    per = ce + z_loss * torch.logsumexp(logits.reshape(-1, w.shape[0]), 1) ** 2 * valid
    if reduction == "none":
        return per.reshape(t.shape)
    if reduction == "sum":
        return per.sum()
    return per.sum() / valid.sum()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", [(12,), (2, 5)])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("z_loss", [0.0, 1e-3])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_linear_cross_entropy_matches_torch(dtype, batch, bias, smoothing, z_loss, reduction):
    g, h, w, b, t = linear_case(len(batch), batch, dtype, bias)
    inputs = [v.clone().requires_grad_() for v in (h, w) + ((b,) if bias else ())]
    loss, grads, go = forward_backward(
        lambda hh, ww, *bb: fxt.linear_cross_entropy(
            hh, ww, t, bb[0] if bb else None, reduction=reduction, label_smoothing=smoothing,
            z_loss=z_loss), inputs, g)
    ref_inputs = [v.to(torch.float64).requires_grad_() for v in inputs]
    ref = reference_linear(ref_inputs[0], ref_inputs[1], t,
                           ref_inputs[2] if bias else None, reduction, smoothing, z_loss)
    if z_loss == 0.0:  # PyTorch's own composition
        plain = F.cross_entropy(F.linear(*[v.detach() for v in ref_inputs[:2]],
                                         ref_inputs[2].detach() if bias else None).reshape(
            -1, w.shape[0]), t.reshape(-1), reduction=reduction, label_smoothing=smoothing)
        assert_close(plain.reshape(ref.shape), ref, torch.float64)
    ref_grads = torch.autograd.grad(ref, ref_inputs, go.to(torch.float64))
    assert loss.dtype == dtype and loss.shape == ref.shape
    assert_close(loss, ref, dtype)
    for ours, theirs in zip(grads, ref_grads, strict=True):
        assert ours.shape == theirs.shape and ours.dtype == dtype
        assert_close(ours, theirs, dtype)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_linear_cross_entropy_gradcheck(reduction):
    _, h, w, b, t = linear_case(4, (6,), torch.float64, True, n_vocab=7, d=3)
    inputs = tuple(v.requires_grad_() for v in (h, w, b))
    assert torch.autograd.gradcheck(
        lambda hh, ww, bb: fxt.linear_cross_entropy(hh, ww, t, bb, reduction=reduction,
                                                    label_smoothing=0.1, z_loss=1e-2),
        inputs, eps=1e-6, atol=1e-8)


def test_linear_cross_entropy_saves_nothing_of_size_n_by_v():
    n, n_vocab, d = 64, 50, 4
    g = gen(0)
    h = torch.randn(n, d, generator=g, requires_grad=True)
    w = torch.randn(n_vocab, d, generator=g, requires_grad=True)
    t = torch.randint(0, n_vocab, (n,), generator=g)
    for reduction in REDUCTIONS:
        loss = fxt.linear_cross_entropy(h, w, t, reduction=reduction)
        sizes = [s.numel() for s in loss.grad_fn.saved_tensors]
        assert sizes and max(sizes) < n * n_vocab, (reduction, sizes)


LOWP = (torch.float16, torch.bfloat16)


def needs_ml_dtypes(dtype):
    if dtype == torch.bfloat16:
        pytest.importorskip("ml_dtypes")


def as_numpy32(v):
    return None if v is None else v.detach().float().numpy()


def assert_within_ulp(actual, expected32, dtype, what=""):
    """``actual`` (16-bit) within one unit in the last place of ``dtype`` of the float32
    ``expected32`` rounded to ``dtype`` (the two float32 computations differ by a few float32
    rounding errors, which can move a value across a rounding boundary), plus 2e-6 of the
    largest entry for entries that the products nearly cancel."""
    a = actual.detach().double().numpy()
    e = expected32.detach().to(dtype).double().numpy()
    assert a.shape == e.shape, what
    nmant = -int(np.log2(torch.finfo(dtype).eps))
    _, exp = np.frexp(np.abs(e))  # |e| = m 2**exp, 0.5 <= m < 1
    floor = torch.finfo(dtype).smallest_normal * torch.finfo(dtype).eps  # subnormal spacing
    bound = np.where(e == 0, floor, np.maximum(np.ldexp(1.0, exp - 1 - nmant), floor))
    bound += 2e-6 * np.max(np.abs(e), initial=0.0)
    err = np.abs(a - e)
    assert np.all(err <= bound), (
        f"{what}: {np.count_nonzero(err > bound)} of {err.size} entries beyond one ulp")


@pytest.mark.parametrize("dtype", LOWP, ids=str)
@pytest.mark.parametrize("batch", [(12,), (2, 5)])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("z_loss", [0.0, 1e-3])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_linear_cross_entropy_low_precision(dtype, batch, bias, smoothing, z_loss, reduction):
    """float16 / bfloat16 tensors: the float32 computation on their values.  Gradients in
    their dtype, bit for bit the NumPy float32 call rounded once, and within one ulp of
    PyTorch's float32 F.linear + F.cross_entropy rounded; the loss (per token too) is the
    float32 call's rounded to the dtype, and that call's within 1e-5 of float64."""
    needs_ml_dtypes(dtype)
    g, h, w, b, t = linear_case(len(batch) + 7, batch, dtype, bias, n_vocab=37)
    inputs = [v.clone().requires_grad_() for v in (h, w) + ((b,) if bias else ())]
    kw = dict(reduction=reduction, label_smoothing=smoothing, z_loss=z_loss)
    loss, grads, go = forward_backward(
        lambda hh, ww, *bb: fxt.linear_cross_entropy(hh, ww, t, bb[0] if bb else None, **kw),
        inputs, g)
    # the NumPy call on the float32 values (for "none": the gradient of sum(go * losses))
    np_kw = dict(ignore_class=-100, label_smoothing=smoothing, z_loss=z_loss)
    if reduction == "none":
        np_kw.update(reduction="sum", sample_weight=go.double().numpy())
    else:
        np_kw.update(reduction=reduction.replace("mean", "sum_over_batch_size"))
    np_loss, *np_grads = fx.linear_cross_entropy_and_grad(
        *(as_numpy32(v) for v in (h, w)), t.numpy(), as_numpy32(b), **np_kw)
    per_token = fx.linear_cross_entropy(*(as_numpy32(v) for v in (h, w)), t.numpy(),
                                        as_numpy32(b), **dict(np_kw, reduction="none",
                                                              sample_weight=None))
    ref64 = reference_linear(*(v.double() for v in (h, w)), t,
                             None if b is None else b.double(), reduction, smoothing, z_loss)
    if reduction == "none":
        assert loss.dtype == dtype and loss.shape == t.shape
        assert torch.equal(loss.detach(), torch.from_numpy(per_token).to(dtype))
    else:
        assert loss.dtype == dtype and loss.shape == ()
        assert loss.item() == torch.tensor(np_loss).to(dtype).item()
    np.testing.assert_allclose(per_token if reduction == "none" else np_loss,
                               ref64.detach().numpy(), rtol=1e-5)
    # PyTorch in float32 on the same values
    ref_inputs = [v.detach().float().requires_grad_() for v in inputs]
    ref = reference_linear(ref_inputs[0], ref_inputs[1], t, ref_inputs[2] if bias else None,
                           reduction, smoothing, z_loss)
    ref_grads = torch.autograd.grad(ref, ref_inputs, go.float())
    names = ("hidden", "weight", "bias")
    for name, ours, mine, theirs in zip(names, grads, np_grads, ref_grads):
        assert ours.dtype == dtype and ours.shape == theirs.shape, name
        expected = torch.from_numpy(np.ascontiguousarray(mine)).to(dtype)
        assert torch.equal(ours.view(torch.int16), expected.view(torch.int16)), (
            f"{name}: not the float32 result rounded once")
        assert_within_ulp(ours, theirs, dtype, name)


@pytest.mark.parametrize("dtype", LOWP, ids=str)
def test_linear_cross_entropy_low_precision_errors(dtype, monkeypatch):
    needs_ml_dtypes(dtype)
    name = str(dtype).removeprefix("torch.")
    h = torch.randn(3, 4).to(dtype)
    w = torch.randn(5, 4).to(dtype)
    t = torch.tensor([0, 1, 2])
    with pytest.raises(TypeError, match=f"weight has dtype torch.float32 but hidden has dtype "
                                        rf"torch.{name}; .*weight.to\(hidden.dtype\)"):
        fxt.linear_cross_entropy(h, w.float(), t)
    with pytest.raises(TypeError, match=f"bias has dtype torch.float32 but hidden has dtype "
                                        rf"torch.{name}; .*bias.to\(hidden.dtype\)"):
        fxt.linear_cross_entropy(h, w, t, torch.zeros(5))
    with pytest.raises(TypeError, match="hidden must have dtype float32, float64, float16 or "
                                        r"bfloat16, got torch.int32; cast it with hidden.float"):
        fxt.linear_cross_entropy(h.to(torch.int32), w, t)
    if dtype == torch.bfloat16:  # NumPy reads bfloat16 through ml_dtypes
        monkeypatch.setitem(sys.modules, "ml_dtypes", None)
        with pytest.raises(TypeError, match="hidden has dtype torch.bfloat16.*ml_dtypes is not "
                                            r"installed.*hidden.float\(\)"):
            fxt.linear_cross_entropy(h, w, t)


def test_linear_cross_entropy_every_target_ignored_is_nan():
    h = torch.randn(3, 4, requires_grad=True)
    w = torch.randn(5, 4, requires_grad=True)
    t = torch.full((3,), -100)
    loss = fxt.linear_cross_entropy(h, w, t)
    assert torch.isnan(loss) and torch.isnan(F.cross_entropy(h @ w.T, t))


# -------------------------------------------------------------------------------- errors

def test_errors_name_the_argument():
    x = torch.randn(3, 4)
    t = torch.tensor([0, 1, 2])
    with pytest.raises(ValueError, match="input is on device meta.*cpu"):
        fxt.cross_entropy(torch.empty(3, 4, device="meta"), t)
    with pytest.raises(TypeError, match=r"input must have dtype float32, float64, float16 or "
                                        r"bfloat16, got torch\.int32; cast it with input\.float"):
        fxt.cross_entropy(torch.zeros(3, 4, dtype=torch.int32), t)
    with pytest.raises(TypeError, match=r"input must have dtype float32, float64, float16 or "
                                        r"bfloat16, got torch\.complex64"):
        fxt.binary_cross_entropy_with_logits(torch.zeros(3, 4, dtype=torch.complex64), x)
    with pytest.raises(TypeError, match="input must be a torch.Tensor"):
        fxt.cross_entropy(x.numpy(), t)
    with pytest.raises(ValueError, match="target requires grad.*target.detach"):
        fxt.cross_entropy(x, torch.softmax(x, 1).requires_grad_())
    with pytest.raises(ValueError, match="weight requires grad"):
        fxt.cross_entropy(x, t, weight=torch.ones(4, requires_grad=True))
    with pytest.raises(ValueError, match="weight must have one entry per class"):
        fxt.cross_entropy(x, t, weight=torch.ones(3))
    with pytest.raises(ValueError, match="target: label 7 at position \\(1,\\)"):
        fxt.cross_entropy(x, torch.tensor([0, 7, 1]))
    with pytest.raises(ValueError, match="reduction must be one of"):
        fxt.cross_entropy(x, t, reduction="batchmean")
    with pytest.raises(ValueError, match="pos_weight has shape \\(3,\\)"):
        fxt.binary_cross_entropy_with_logits(x, x.sigmoid(), pos_weight=torch.ones(3))
    with pytest.raises(ValueError, match="target: label 9"):
        fxt.linear_cross_entropy(x, torch.randn(5, 4), torch.tensor([0, 9, 1]))
    with pytest.raises(TypeError, match="weight has dtype torch.float64 but hidden has dtype torch.float32"):
        fxt.linear_cross_entropy(x, torch.randn(5, 4, dtype=torch.float64), t)


# ------------------------------------------------------------------- float16 and bfloat16

LOWP = (torch.float16, torch.bfloat16)


def lowp(dtype):
    """``dtype``; a bfloat16 case is skipped without ml_dtypes (fastxent reads it as theirs)."""
    if dtype == torch.bfloat16:
        pytest.importorskip("ml_dtypes")
    return dtype


def ulp(values, dtype):
    """The unit in the last place of ``dtype`` at each of ``values`` (floats):
    eps * 2**floor(log2|v|), and the subnormal spacing below the smallest normal."""
    fi = torch.finfo(dtype)
    magnitude = np.maximum(np.abs(np.asarray(values, dtype=np.float64)), fi.tiny)
    return fi.eps * 2.0 ** np.floor(np.log2(magnitude))


def assert_lowp_loss(loss, ref, dtype):
    """``loss`` (``dtype``) is float32 ``ref`` rounded to ``dtype``, up to the float32
    computation's error: within half an ulp of ``dtype`` plus 1e-6 relative of ``ref``."""
    assert loss.dtype == dtype and loss.shape == ref.shape
    a = loss.detach().to(torch.float64).numpy()
    r = ref.detach().to(torch.float64).numpy()
    err = np.abs(a - r)
    ok = err <= 0.5 * ulp(r, dtype) + 1e-6 * np.abs(r)
    assert ok.all(), f"loss: got {a[~ok][:3]}, float32 reference {r[~ok][:3]}"


def assert_lowp_grad(grad, ref32, dtype):
    """``grad`` (``dtype``) within one ulp of ``dtype`` of the float32 gradient ``ref32``
    rounded to ``dtype``."""
    assert grad.dtype == dtype and grad.shape == ref32.shape
    expected = ref32.detach().to(dtype).to(torch.float64).numpy()
    a = grad.detach().to(torch.float64).numpy()
    ok = np.abs(a - expected) <= ulp(expected, dtype)
    assert ok.all(), (f"gradient: {int((~ok).sum())} entries more than one ulp away: got "
                      f"{a[~ok][:3]}, expected {expected[~ok][:3]}")


@pytest.mark.parametrize("dtype", LOWP)
def test_ulp_is_the_spacing_of_the_dtype(dtype):
    """``ulp`` against the next value up, bit pattern + 1: normal, subnormal and zero."""
    dtype = lowp(dtype)
    fi = torch.finfo(dtype)
    v = torch.tensor([0.0, fi.tiny / 8, fi.tiny, 0.75, 1.0, 1.5, 3.0, 1000.0], dtype=dtype)
    up = (v.view(torch.int16) + 1).view(dtype)
    spacing = (up.to(torch.float64) - v.to(torch.float64)).numpy()
    np.testing.assert_array_equal(ulp(v.to(torch.float64).numpy(), dtype), spacing)
    with pytest.raises(AssertionError, match="one ulp"):  # two ulps up is refused
        assert_lowp_grad((up.view(torch.int16) + 1).view(dtype), v.float(), dtype)
    assert_lowp_grad(up, v.float(), dtype)


@pytest.mark.parametrize("dtype", LOWP)
@pytest.mark.parametrize("shape", [(7, 5), (3, 5, 4)])
@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_low_precision_matches_float32(dtype, shape, soft, weighted, smoothing,
                                                     reduction):
    """float16 / bfloat16 logits: PyTorch's float32 result on the same values (upcast), the
    loss and gradient rounded to the input's dtype."""
    dtype = lowp(dtype)
    g, x, t, w = ce_case(len(shape) * 10 + soft, shape, dtype, soft, ignore=False)
    kw = dict(weight=w if weighted else None, reduction=reduction, label_smoothing=smoothing)
    if not soft:  # a real class index ignored, as ignore_index
        t.view(-1)[::3] = 2
        kw["ignore_index"] = 2
    loss, (grad,), go = forward_backward(lambda a: fxt.cross_entropy(a, t, **kw),
                                         [x.clone().requires_grad_()], g)
    ref_x = x.float().requires_grad_()
    ref = F.cross_entropy(ref_x, t.float() if soft else t,
                          **dict(kw, weight=w.float() if weighted else None))
    (ref_grad,) = torch.autograd.grad(ref, [ref_x], go.float())
    assert_lowp_loss(loss, ref, dtype)
    assert_lowp_grad(grad, ref_grad, dtype)


@pytest.mark.parametrize("dtype", LOWP)
@pytest.mark.parametrize("shape", [(6, 4), (3, 4, 5)])
@pytest.mark.parametrize("weight_shape", [None, "last", "rows"])
@pytest.mark.parametrize("pos", [False, True])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_bce_with_logits_low_precision_matches_float32(dtype, shape, weight_shape, pos,
                                                       reduction):
    """float16 / bfloat16 logits, targets and weights: PyTorch's float32 result on the same
    values, the loss and gradient rounded to the input's dtype."""
    dtype = lowp(dtype)
    g, x, t, w, pw = bce_case(shape, weight_shape, pos, dtype)
    loss, (grad,), go = forward_backward(
        lambda a: fxt.binary_cross_entropy_with_logits(a, t, w, reduction, pw),
        [x.clone().requires_grad_()], g)
    ref_x = x.float().requires_grad_()

    def f32(v):
        return None if v is None else v.float()

    ref = F.binary_cross_entropy_with_logits(ref_x, t.float(), f32(w), reduction=reduction,
                                             pos_weight=f32(pw))
    (ref_grad,) = torch.autograd.grad(ref, [ref_x], go.float())
    assert_lowp_loss(loss, ref, dtype)
    assert_lowp_grad(grad, ref_grad, dtype)


def test_bfloat16_without_ml_dtypes_is_refused_by_name(monkeypatch):
    """fastxent reads a bfloat16 tensor as ml_dtypes.bfloat16: with ml_dtypes not importable
    the error names the argument and says to install it or cast; float16 still computes."""
    monkeypatch.setitem(sys.modules, "ml_dtypes", None)  # `import ml_dtypes` raises
    x = torch.randn(3, 4).to(torch.bfloat16)
    t = torch.tensor([0, 1, 2])
    message = (r"input has dtype torch\.bfloat16, which fastxent reads as ml_dtypes\.bfloat16, "
               r"but ml_dtypes is not installed: install it \(pip install ml_dtypes, or "
               r"fastxent's \[lowp\] extra\) or cast with input\.float\(\)")
    with pytest.raises(TypeError, match=message):
        fxt.cross_entropy(x, t)
    with pytest.raises(TypeError, match=message):
        fxt.binary_cross_entropy_with_logits(x, torch.rand(3, 4))
    loss = fxt.cross_entropy(x.to(torch.float16), t)
    assert loss.dtype == torch.float16 and torch.isfinite(loss)


def test_import_fastxent_does_not_import_torch():
    code = ("import sys, fastxent; "
            "assert 'torch' not in sys.modules and 'ml_dtypes' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_second_derivatives_are_refused():
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    loss = fxt.cross_entropy(x, torch.tensor([0, 1, 2, 0]))
    (g,) = torch.autograd.grad(loss, x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|does not require grad"):
        g.sum().backward()


def test_bad_label_with_weight_and_mean_is_a_label_error():
    x = torch.randn(3, 4)
    with pytest.raises(ValueError, match="target: label 7 at position \\(1,\\)"):
        fxt.cross_entropy(x, torch.tensor([0, 7, 1]), weight=torch.ones(4))
    with pytest.raises(ValueError, match="weight must be finite and >= 0"):
        fxt.cross_entropy(x, torch.tensor([0, 1, 1]), weight=-torch.ones(4))
