"""The fused linear + cross-entropy (``linear_cross_entropy[_and_grad]``) and ``perplexity``.

Oracles:
* the unfused pipeline: ``logits = hidden @ weight.T + bias``, then
  ``SparseCategoricalCrossentropy(from_logits=True).loss_and_grad`` and the two matrix
  products for the gradients (float64 to 1e-10, float32 to 1e-5, relative);
* the float64 NumPy oracle of tests/reference.py on the same logits;
* PyTorch: ``F.linear`` + ``F.cross_entropy`` + ``backward``;
* central finite differences of the fused loss itself;
* tracemalloc: the peak memory of a call stays far below the N x V logits;
* float16 / bfloat16: the float32 call on the upcast values, its gradients rounded
  (bit for bit), and the float64 oracle on the upcast values (loss to 1e-5, gradients to
  half a unit in the last place of the dtype, plus the float32 computation's error).
"""

import tracemalloc

import numpy as np
import pytest
import reference as R
from util import DTYPES, assert_close, central_difference, low_precision_dtypes, unaligned

import fastxent as fx
from fastxent.linear import (
    DEFAULT_BLOCK_BYTES,
    linear_cross_entropy,
    linear_cross_entropy_and_grad,
    perplexity,
)

RTOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-10}
REDUCTIONS = ["none", "sum", "sum_over_batch_size", "mean", "mean_with_sample_weight"]
# rows only (dividing or not), both rows and vocabulary (dividing or not), degenerate blocks
CHUNKS = [None, 4, 5, (4, 7), (6, 10), (64, 5), (1, 1), (1000, 37)]
OPTIONS = {
    "plain": {},
    "ignore": {"ignore_class": -100},
    "smooth": {"label_smoothing": 0.1},
    "zloss": {"z_loss": 1e-3},
    "all": {"ignore_class": 3, "label_smoothing": 0.2, "z_loss": 0.05},
}


def make_problem(rng, dtype, shape=(3, 7), d=6, vocab=37, bias=True, ignore_class=None,
                 scale=1.0):
    hidden = (rng.standard_normal(shape + (d,)) * scale).astype(dtype)
    weight = rng.standard_normal((vocab, d)).astype(dtype)
    b = rng.standard_normal(vocab).astype(dtype) if bias else None
    labels = rng.integers(0, vocab, size=shape)
    if ignore_class is not None:
        labels[rng.random(shape) < 0.3] = ignore_class
    return hidden, weight, labels, b


def unfused(hidden, weight, labels, bias=None, sample_weight=None, **options):
    """The pipeline the fused function replaces (materializes the N x V logits)."""
    d = hidden.shape[-1]
    h2 = hidden.reshape(-1, d)
    logits = h2 @ weight.T
    if bias is not None:
        logits = logits + bias
    sw = None if sample_weight is None else np.broadcast_to(
        np.asarray(sample_weight, np.float64).reshape(
            np.shape(sample_weight) + (1,) * (labels.ndim - np.ndim(sample_weight))),
        labels.shape).reshape(-1)
    loss, g = fx.SparseCategoricalCrossentropy(from_logits=True, **options).loss_and_grad(
        labels.reshape(-1), logits, sw)
    if isinstance(loss, np.ndarray):
        loss = loss.reshape(labels.shape)
    d_bias = None if bias is None else g.sum(axis=0, dtype=np.float64).astype(g.dtype)
    return loss, (g @ weight).reshape(hidden.shape), g.T @ h2, d_bias


def assert_rel(actual, expected, dtype, rtol=None, err_msg=""):
    """max |actual - expected| <= rtol * max |expected| (NaN where expected is NaN).

    Relative to the array's largest entry, with no absolute floor: gradients are small
    numbers, and an error of 1e-5 absolute could hide a 100% error on them."""
    rtol = RTOL[np.dtype(dtype)] if rtol is None else rtol
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    assert a.shape == e.shape, f"shape {a.shape} != {e.shape} {err_msg}"
    np.testing.assert_array_equal(np.isnan(a), np.isnan(e), err_msg=err_msg)
    fin = ~np.isnan(e)
    if not fin.any():
        return
    scale = float(np.max(np.abs(e[fin])))
    err = float(np.max(np.abs(a[fin] - e[fin])))
    assert err <= rtol * scale, (
        f"max error {err:.3g} > {rtol:g} x max |expected| {scale:.3g} {err_msg}"
    )


def assert_same(actual, expected, dtype, what=""):
    assert len(actual) == len(expected) == 4
    names = ("loss", "d_hidden", "d_weight", "d_bias")
    for name, a, e in zip(names, actual, expected, strict=True):
        if e is None:
            assert a is None, f"{name} {what}"
            continue
        if isinstance(e, np.ndarray):
            assert isinstance(a, np.ndarray) and a.dtype == np.dtype(dtype), f"{name} {what}"
        else:
            assert isinstance(a, float), f"{name} {what}"
        assert_rel(a, e, dtype, err_msg=f"{name} {what}")


# ------------------------------------------------------------------- the unfused pipeline


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("chunk_size", CHUNKS, ids=str)
@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("bias", [True, False])
def test_equals_unfused_pipeline(rng, dtype, chunk_size, option, bias):
    opts = OPTIONS[option]
    hidden, weight, labels, b = make_problem(rng, dtype, bias=bias,
                                             ignore_class=opts.get("ignore_class"))
    before = [a.copy() for a in (hidden, weight, labels) + ((b,) if bias else ())]
    got = linear_cross_entropy_and_grad(hidden, weight, labels, b, chunk_size=chunk_size,
                                        **opts)
    assert got[1].shape == hidden.shape and got[2].shape == weight.shape
    assert_same(got, unfused(hidden, weight, labels, b, **opts), dtype)
    loss_only = linear_cross_entropy(hidden, weight, labels, b, chunk_size=chunk_size, **opts)
    assert_rel(loss_only, got[0], dtype)
    for a, a0 in zip((hidden, weight, labels) + ((b,) if bias else ()), before, strict=True):
        np.testing.assert_array_equal(a, a0)  # inputs untouched


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("chunk_size", [None, (5, 8)], ids=str)
def test_reductions_and_sample_weight(rng, dtype, reduction, chunk_size):
    hidden, weight, labels, b = make_problem(rng, dtype, shape=(4, 5), ignore_class=-1)
    for sw in (None, rng.uniform(0.2, 2.0, size=(4, 5)), rng.uniform(0.2, 2.0, size=4), 2.5):
        opts = dict(ignore_class=-1, label_smoothing=0.1, z_loss=0.01, reduction=reduction)
        got = linear_cross_entropy_and_grad(hidden, weight, labels, b, sample_weight=sw,
                                            chunk_size=chunk_size, **opts)
        assert_same(got, unfused(hidden, weight, labels, b, sample_weight=sw, **opts), dtype,
                    what=f"sample_weight={np.shape(sw)}")
        if reduction == "none":
            assert got[0].shape == labels.shape and got[0].dtype == dtype


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("chunk_size", [None, 3, (4, 6)], ids=str)
def test_against_reference_oracle(rng, dtype, chunk_size):
    """The float64 oracle of tests/reference.py on float64 logits."""
    hidden, weight, labels, b = make_problem(rng, dtype, ignore_class=-100)
    opts = dict(ignore_class=-100, label_smoothing=0.15, z_loss=0.02)
    logits = hidden.reshape(-1, 6).astype(np.float64) @ weight.T.astype(np.float64) + b
    loss, g = R.reference_loss_and_grad("sparse_categorical", labels.reshape(-1), logits,
                                        from_logits=True, **opts)
    h64 = hidden.reshape(-1, 6).astype(np.float64)
    expected = (loss, (g @ weight.astype(np.float64)).reshape(hidden.shape), g.T @ h64,
                g.sum(axis=0))
    got = linear_cross_entropy_and_grad(hidden, weight, labels, b, chunk_size=chunk_size,
                                        **opts)
    for a, e in zip(got, expected, strict=True):
        assert_rel(a, e, dtype)


@pytest.mark.parametrize("chunk_size", [None, (3, 4)], ids=str)
def test_gradients_finite_differences(rng, chunk_size):
    hidden, weight, labels, b = make_problem(rng, np.float64, shape=(2, 3), d=3, vocab=9)
    labels[0, 1] = -100
    opts = dict(ignore_class=-100, label_smoothing=0.1, z_loss=0.05, chunk_size=chunk_size)
    sw = np.array([1.0, 2.0])
    _, d_h, d_w, d_b = linear_cross_entropy_and_grad(hidden, weight, labels, b,
                                                     sample_weight=sw, **opts)

    def f_h(v):
        return linear_cross_entropy(v, weight, labels, b, sample_weight=sw, **opts)

    def f_w(v):
        return linear_cross_entropy(hidden, v, labels, b, sample_weight=sw, **opts)

    def f_b(v):
        return linear_cross_entropy(hidden, weight, labels, v, sample_weight=sw, **opts)

    assert_close(d_h, central_difference(f_h, hidden), np.float64, rtol=1e-7)
    assert_close(d_w, central_difference(f_w, weight), np.float64, rtol=1e-7)
    assert_close(d_b, central_difference(f_b, b), np.float64, rtol=1e-7)


@pytest.mark.parametrize("dtype", DTYPES)
def test_large_logits_online_merge_is_stable(rng, dtype):
    """Logits of magnitude ~1e3: exp would overflow without the max shifts."""
    hidden, weight, labels, b = make_problem(rng, dtype, scale=300.0)
    expected = unfused(hidden, weight, labels, b, z_loss=1e-4)
    assert np.isfinite(expected[0])
    for chunk_size in (None, (4, 5), (21, 36)):
        got = linear_cross_entropy_and_grad(hidden, weight, labels, b, z_loss=1e-4,
                                            chunk_size=chunk_size)
        assert all(np.all(np.isfinite(a)) for a in got)
        assert_same(got, expected, dtype, what=str(chunk_size))


def test_deterministic_across_threads(rng):
    hidden, weight, labels, b = make_problem(rng, np.float32, shape=(40,), d=8, vocab=300)
    for chunk_size in (None, (16, 64)):
        one = linear_cross_entropy_and_grad(hidden, weight, labels, b, chunk_size=chunk_size,
                                            n_threads=1)
        two = linear_cross_entropy_and_grad(hidden, weight, labels, b, chunk_size=chunk_size,
                                            n_threads=2)
        for a, c in zip(one, two, strict=True):
            np.testing.assert_array_equal(a, c)


def test_misaligned_inputs_give_the_aligned_results(rng):
    """Labels, weights and arrays at odd addresses (rebuilt from bytes) are copied aligned
    before they reach the kernels, with the results of aligned inputs."""
    hidden, weight, labels, b = make_problem(rng, np.float64, shape=(40,), d=8, vocab=300)
    sw = rng.uniform(size=40)
    want = linear_cross_entropy_and_grad(hidden, weight, labels, b, sample_weight=sw,
                                         chunk_size=(16, 64))
    got = linear_cross_entropy_and_grad(unaligned(hidden), unaligned(weight), unaligned(labels),
                                        unaligned(b), sample_weight=unaligned(sw),
                                        chunk_size=(16, 64))
    for a, c in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, c)


# ---------------------------------------------------------------------------------- layout


def test_language_model_shift_with_views(rng):
    """The usual next-token setup: non-contiguous hidden views and a Fortran weight."""
    hidden, weight, tokens, _ = make_problem(rng, np.float64, shape=(3, 9), vocab=23)
    h, y = hidden[:, :-1], tokens[:, 1:]  # non-contiguous views
    w_f = np.asfortranarray(weight)
    got = linear_cross_entropy_and_grad(h, w_f, y, chunk_size=(5, 6))
    assert got[1].shape == h.shape
    assert_same(got, unfused(np.ascontiguousarray(h), weight, y), np.float64)


def test_single_token_and_one_class(rng):
    h = rng.standard_normal(4)
    w = rng.standard_normal((5, 4))
    got = linear_cross_entropy_and_grad(h, w, np.array(2), reduction="none")
    assert got[0].shape == () and got[1].shape == (4,)
    expected = unfused(h[None], w, np.array([2]), reduction="none")
    expected = (expected[0].reshape(()), expected[1].reshape(4), expected[2], None)
    assert_same(got, expected, np.float64)
    # V = 1: the loss is 0 (only z-loss remains) and d_hidden = 2 z lse w
    w1 = rng.standard_normal((1, 4))
    loss, d_h, d_w, _ = linear_cross_entropy_and_grad(h[None], w1, np.array([0]), z_loss=0.5)
    lse = float(h @ w1[0])
    assert_close(loss, 0.5 * lse**2, np.float64, rtol=1e-12)
    assert_close(d_h[0], 2 * 0.5 * lse * w1[0], np.float64, rtol=1e-12)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_empty_batch_and_all_ignored(rng, reduction):
    w = rng.standard_normal((7, 3))
    b = rng.standard_normal(7)
    loss, d_h, d_w, d_b = linear_cross_entropy_and_grad(
        np.zeros((0, 3)), w, np.zeros(0, dtype=np.int64), b, reduction=reduction)
    if reduction == "none":
        assert isinstance(loss, np.ndarray) and loss.shape == (0,)
    else:
        assert loss == 0.0
    assert d_h.shape == (0, 3)
    np.testing.assert_array_equal(d_w, 0.0)
    np.testing.assert_array_equal(d_b, 0.0)
    h = rng.standard_normal((4, 3))
    for chunk_size in (None, (2, 3)):
        loss, d_h, d_w, d_b = linear_cross_entropy_and_grad(
            h, w, np.full(4, -100), b, ignore_class=-100, reduction=reduction,
            chunk_size=chunk_size)
        np.testing.assert_array_equal(loss, 0.0)
        for g in (d_h, d_w, d_b):
            np.testing.assert_array_equal(g, 0.0)


def test_nan_hidden_poisons_its_token_only(rng):
    hidden, weight, labels, _ = make_problem(rng, np.float64, shape=(6,), bias=False)
    hidden[2, 0] = np.nan
    for chunk_size in (None, (4, 10)):
        loss, d_h, _, _ = linear_cross_entropy_and_grad(hidden, weight, labels,
                                                        reduction="none", chunk_size=chunk_size)
        assert np.isnan(loss[2]) and np.all(np.isfinite(np.delete(loss, 2)))
        assert np.all(np.isnan(d_h[2])) and np.all(np.isfinite(np.delete(d_h, 2, axis=0)))
    # an ignored NaN token: zero loss and zero d_hidden row; d_weight = G.T @ hidden still
    # multiplies its NaN by 0 (NaN), exactly as with the materialized logits
    labels[2] = -100
    expected = unfused(hidden, weight, labels, ignore_class=-100)
    for chunk_size in (None, (4, 10)):
        got = linear_cross_entropy_and_grad(hidden, weight, labels, ignore_class=-100,
                                            chunk_size=chunk_size)
        assert_same(got, expected, np.float64, what=str(chunk_size))
        np.testing.assert_array_equal(got[1][2], 0.0)


def test_default_blocks_follow_documented_rule():
    from fastxent.linear import _blocks

    # whole vocabulary while a block of >= 256 rows fits the 64 MiB budget
    assert _blocks(None, 8192, 50257, 4) == (328, 50257)  # 333 rows fit: 25 blocks of 328
    assert _blocks(None, 100, 50257, 4) == (100, 50257)
    # a vocabulary too large for 256 rows is split: 1024 rows x (budget // 1024) entries
    rows, vocab = _blocks(None, 8192, 256000, 4)
    assert rows == 1024 and vocab == DEFAULT_BLOCK_BYTES // 4 // 1024
    assert _blocks(7, 100, 50, 8) == (7, 50)
    assert _blocks((500, 500), 100, 50, 8) == (100, 50)


# ------------------------------------------------------------------------------ memory


def _traced_peak(fn):
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        out = fn()
        return tracemalloc.get_traced_memory()[1], out
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("chunk_size", [None, (512, 4096)], ids=str)
def test_peak_memory_far_below_the_logits(rng, chunk_size):
    n, d, v = 2048, 64, 32000
    hidden = rng.standard_normal((n, d), dtype=np.float32)
    weight = rng.standard_normal((v, d), dtype=np.float32) * np.float32(0.1)
    bias = rng.standard_normal(v, dtype=np.float32)
    labels = rng.integers(0, v, n)
    logits_bytes = n * v * 4  # 262 MB
    peak, out = _traced_peak(lambda: linear_cross_entropy_and_grad(
        hidden, weight, labels, bias, chunk_size=chunk_size))
    outputs = sum(a.nbytes for a in out[1:])
    above = peak - outputs
    from fastxent.linear import _blocks

    rows, vocab = _blocks(chunk_size, n, v, 4)
    # the documented bound: block + d_weight scratch + d_hidden scratch + float64 vectors
    n_chunks = -(-v // vocab)
    bound = (rows * vocab * 4 + (4 << 20) + rows * d * 4 + 8 * (vocab + 6 * n + rows * n_chunks)
             + (1 << 20))  # + 1 MiB for small temporaries (index arrays, Python objects)
    assert above <= bound
    assert above < logits_bytes / 3
    if chunk_size is not None:
        assert above < logits_bytes / 20
    # the unfused pipeline really does hold (at least) the logits: the measurement sees it
    peak_unfused, _ = _traced_peak(lambda: unfused(hidden[:256], weight, labels[:256], bias))
    assert peak_unfused >= 256 * v * 4


def test_loss_only_needs_no_gradient_buffers(rng):
    n, d, v = 512, 16, 20000
    hidden = rng.standard_normal((n, d), dtype=np.float32)
    weight = rng.standard_normal((v, d), dtype=np.float32)
    labels = rng.integers(0, v, n)
    peak, _ = _traced_peak(lambda: linear_cross_entropy(hidden, weight, labels,
                                                        chunk_size=(128, 5000)))
    assert peak < 128 * 5000 * 4 + (1 << 20)


# ------------------------------------------------------------------------------ PyTorch


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("chunk_size", [None, (5, 9)], ids=str)
@pytest.mark.parametrize("option", ["plain", "all"])
def test_against_torch(rng, dtype, chunk_size, option):
    torch = pytest.importorskip("torch")
    opts = OPTIONS[option]
    ignore = opts.get("ignore_class", -100)
    hidden, weight, labels, b = make_problem(rng, dtype, shape=(3, 8), d=10, vocab=41,
                                             ignore_class=opts.get("ignore_class"))
    ht = torch.tensor(hidden, requires_grad=True)
    wt = torch.tensor(weight, requires_grad=True)
    bt = torch.tensor(b, requires_grad=True)
    yt = torch.tensor(labels.reshape(-1))
    logits = torch.nn.functional.linear(ht, wt, bt).reshape(-1, 41)
    loss = torch.nn.functional.cross_entropy(
        logits, yt, ignore_index=ignore, label_smoothing=opts.get("label_smoothing", 0.0))
    z = opts.get("z_loss", 0.0)
    if z:
        mask = (yt != ignore).to(logits.dtype)
        loss = loss + z * (torch.logsumexp(logits, dim=1) ** 2 * mask).sum() / mask.sum()
    loss.backward()
    got = linear_cross_entropy_and_grad(hidden, weight, labels, b, chunk_size=chunk_size,
                                        **opts)
    expected = (loss.item(), ht.grad.numpy(), wt.grad.numpy(), bt.grad.numpy())
    for a, e in zip(got, expected, strict=True):
        assert_rel(a, e, dtype)


# ------------------------------------------------------------------- float16 / bfloat16

LOWP = low_precision_dtypes()


def bits(a):
    """The raw bits of a 16-bit array (NaN compared by position and payload)."""
    return np.asarray(a).view(np.uint16)


def ulp(x, dtype):
    """The spacing of ``dtype`` at each |x| (float64): 2**(exponent - mantissa bits), never
    below the dtype's smallest subnormal."""
    # float16: 10 mantissa bits, subnormals down to 2**-24; bfloat16: 7 bits, float32's range
    nmant, tiny = (10, 2.0**-24) if dtype == np.float16 else (7, 2.0**-133)
    ax = np.abs(np.asarray(x, dtype=np.float64))
    _, e = np.frexp(ax)  # ax = m 2**e, 0.5 <= m < 1 (0 for 0: its spacing is tiny)
    return np.where(ax == 0, tiny, np.maximum(np.ldexp(1.0, e - 1 - nmant), tiny))


def oracle64(hidden, weight, labels, bias=None, sample_weight=None, **options):
    """The float64 loss and gradients of the upcast values (tests/reference.py)."""
    d = hidden.shape[-1]
    h64 = hidden.reshape(-1, d).astype(np.float64)
    w64 = weight.astype(np.float64)
    logits = h64 @ w64.T + (0.0 if bias is None else bias.astype(np.float64))
    sw = None if sample_weight is None else R.broadcast_sample_weight(
        sample_weight, labels.shape).reshape(-1)
    loss, g = R.reference_loss_and_grad("sparse_categorical", labels.reshape(-1), logits, sw,
                                        from_logits=True, **options)
    if isinstance(loss, np.ndarray):
        loss = loss.reshape(labels.shape)
    return (loss, (g @ w64).reshape(hidden.shape), g.T @ h64,
            None if bias is None else g.sum(axis=0))


def check_low_precision(got, as32, oracle, dtype, what=""):
    """``got`` (16-bit inputs) against the float32 call on their values (``as32``: the same
    loss, its gradients rounded once) and the float64 oracle."""
    loss, *grads = got
    if isinstance(as32[0], np.ndarray):  # per-token losses: float32, those of the float32 call
        assert loss.dtype == np.float32, what
        np.testing.assert_array_equal(loss, as32[0], err_msg=what)
    else:
        assert isinstance(loss, float) and loss == as32[0], what
    assert_rel(loss, oracle[0], np.float32, rtol=1e-5, err_msg=f"loss {what}")
    for name, g, g32, g64 in zip(("d_hidden", "d_weight", "d_bias"), grads, as32[1:],
                                 oracle[1:], strict=True):
        if g32 is None:
            assert g is None, f"{name} {what}"
            continue
        assert g.dtype == dtype and g.shape == g32.shape, f"{name} {what}"
        np.testing.assert_array_equal(bits(g), bits(g32.astype(dtype)),
                                      err_msg=f"{name}: not the float32 result rounded {what}")
        # correctly rounded up to the float32 computation's error: half a unit in the last
        # place of the dtype, plus 1e-6 of the largest entry (the float32 products' error,
        # which can move a value that sits near a rounding boundary across it)
        err = np.abs(g.astype(np.float64) - g64)
        bound = 0.5 * ulp(g64, dtype) + 1e-6 * np.max(np.abs(g64), initial=0.0)
        assert np.all(err <= bound), (
            f"{name} {what}: {np.count_nonzero(err > bound)} entries beyond half an ulp, "
            f"worst {np.max(err / bound):.3g} x the bound")


@pytest.mark.parametrize("dtype", LOWP, ids=str)
@pytest.mark.parametrize("chunk_size", [None, 4, (4, 7), (6, 10), (1, 1)], ids=str)
@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("bias", [True, False])
def test_low_precision_is_float32_rounded(rng, dtype, chunk_size, option, bias):
    """float16 / bfloat16 inputs: the float32 computation on their values, gradients in their
    dtype rounded once (bit for bit), and the float64 oracle correctly rounded (up to the
    float32 computation's error)."""
    opts = OPTIONS[option]
    hidden, weight, labels, b = make_problem(rng, dtype, bias=bias,
                                             ignore_class=opts.get("ignore_class"))
    up = [None if a is None else a.astype(np.float32) for a in (hidden, weight, b)]
    before = [bits(a).copy() for a in (hidden, weight) + ((b,) if bias else ())]
    got = linear_cross_entropy_and_grad(hidden, weight, labels, b, chunk_size=chunk_size,
                                        **opts)
    as32 = linear_cross_entropy_and_grad(up[0], up[1], labels, up[2], chunk_size=chunk_size,
                                         **opts)
    check_low_precision(got, as32, oracle64(hidden, weight, labels, b, **opts), dtype)
    loss_only = linear_cross_entropy(hidden, weight, labels, b, chunk_size=chunk_size, **opts)
    assert isinstance(loss_only, float) and loss_only == as32[0]
    for a, a0 in zip((hidden, weight) + ((b,) if bias else ()), before, strict=True):
        np.testing.assert_array_equal(bits(a), a0)  # inputs untouched


@pytest.mark.parametrize("dtype", LOWP, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("chunk_size", [None, (5, 8)], ids=str)
def test_low_precision_reductions_and_sample_weight(rng, dtype, reduction, chunk_size):
    hidden, weight, labels, b = make_problem(rng, dtype, shape=(4, 5), ignore_class=-1)
    up = [a.astype(np.float32) for a in (hidden, weight, b)]
    opts = dict(ignore_class=-1, label_smoothing=0.1, z_loss=0.01, reduction=reduction,
                chunk_size=chunk_size)
    for sw in (None, rng.uniform(0.2, 2.0, size=(4, 5)), rng.uniform(0.2, 2.0, size=4), 2.5):
        what = f"sample_weight={np.shape(sw)}"
        got = linear_cross_entropy_and_grad(hidden, weight, labels, b, sample_weight=sw, **opts)
        as32 = linear_cross_entropy_and_grad(*up[:2], labels, up[2], sample_weight=sw, **opts)
        opts64 = {k: v for k, v in opts.items() if k != "chunk_size"}
        check_low_precision(got, as32, oracle64(hidden, weight, labels, b, sw, **opts64), dtype,
                            what)
        loss_only = linear_cross_entropy(hidden, weight, labels, b, sample_weight=sw, **opts)
        if reduction == "none":
            assert loss_only.shape == labels.shape and loss_only.dtype == np.float32
            np.testing.assert_array_equal(loss_only, as32[0])
        else:
            assert isinstance(loss_only, float) and loss_only == as32[0], what


@pytest.mark.parametrize("dtype", LOWP, ids=str)
def test_low_precision_layouts_and_large_logits(rng, dtype):
    """Non-contiguous hidden views, a Fortran weight, and logits ~ 1e3 (the float32
    computation's shifts) in 16 bits; float16's range overflows to inf when rounded."""
    hidden, weight, tokens, b = make_problem(rng, dtype, shape=(3, 9), vocab=23, scale=40.0)
    h, y, w_f = hidden[:, :-1], tokens[:, 1:], np.asfortranarray(weight)
    assert np.max(np.abs(h.astype(np.float64) @ weight.astype(np.float64).T)) > 100
    for chunk_size in (None, (5, 6)):
        got = linear_cross_entropy_and_grad(h, w_f, y, b, z_loss=1e-4, chunk_size=chunk_size)
        assert got[1].shape == h.shape and got[2].flags.c_contiguous
        as32 = linear_cross_entropy_and_grad(h.astype(np.float32), weight.astype(np.float32),
                                             y, b.astype(np.float32), z_loss=1e-4,
                                             chunk_size=chunk_size)
        check_low_precision(got, as32, oracle64(h, weight, y, b, z_loss=1e-4), dtype,
                            str(chunk_size))
    if dtype == np.float16:  # a float32 gradient beyond 65504 rounds to inf, as astype does
        big = np.full((2, 1), 60000.0, np.float16)
        w = np.array([[1e-3], [-1e-3]], np.float16)
        loss, d_h, d_w, _ = linear_cross_entropy_and_grad(big, w, np.array([1, 1]),
                                                          reduction="sum")
        assert np.isfinite(loss) and np.all(np.isfinite(d_h))
        np.testing.assert_array_equal(d_w, [[np.inf], [-np.inf]])


@pytest.mark.parametrize("dtype", LOWP, ids=str)
def test_low_precision_peak_memory(rng, dtype):
    """The float32 copies of hidden / weight / bias and the float32 gradients, on top of the
    float32 formula, and nothing of size N x V."""
    n, d, v = 1024, 64, 16000
    hidden = rng.standard_normal((n, d), dtype=np.float32).astype(dtype)
    weight = (rng.standard_normal((v, d), dtype=np.float32) * np.float32(0.1)).astype(dtype)
    bias = rng.standard_normal(v, dtype=np.float32).astype(dtype)
    labels = rng.integers(0, v, n)
    from fastxent.linear import _blocks

    for chunk_size in (None, (256, 4096)):
        peak, out = _traced_peak(lambda cs=chunk_size: linear_cross_entropy_and_grad(
            hidden, weight, labels, bias, chunk_size=cs))
        assert all(a.dtype == dtype for a in out[1:])
        above = peak - sum(a.nbytes for a in out[1:])
        rows, vocab = _blocks(chunk_size, n, v, 4)
        n_chunks = -(-v // vocab)
        formula = (rows * vocab * 4 + (4 << 20) + rows * d * 4
                   + 8 * (vocab + 6 * n + rows * n_chunks))
        copies = 4 * (n + v) * d + 4 * v
        gradients32 = 4 * (n + v) * d
        assert above <= formula + copies + gradients32 + (1 << 20), chunk_size
        if chunk_size is not None:  # (the default block holds all 1024 rows here)
            assert above < n * v * 4 / 3
        peak, _ = _traced_peak(lambda cs=chunk_size: linear_cross_entropy(
            hidden, weight, labels, bias, chunk_size=cs))
        assert peak <= rows * vocab * 4 + 8 * (vocab + 6 * n + rows * n_chunks) + copies + (
            1 << 20), chunk_size


@pytest.mark.parametrize("dtype", LOWP, ids=str)
def test_low_precision_mixed_dtypes_are_refused(rng, dtype):
    h, w, y, b = make_problem(rng, dtype, shape=(2, 3), d=4, vocab=5)
    name = np.dtype(dtype).name
    with pytest.raises(TypeError, match=rf"weight has dtype float32 but hidden has dtype {name};"
                                        r".*weight.astype\(hidden.dtype\)"):
        linear_cross_entropy(h, w.astype(np.float32), y)
    with pytest.raises(TypeError, match=rf"weight has dtype {name} but hidden has dtype float32"):
        linear_cross_entropy(h.astype(np.float32), w, y)
    with pytest.raises(TypeError, match=rf"bias has dtype float32 but hidden has dtype {name};"
                                        r".*bias.astype\(hidden.dtype\)"):
        linear_cross_entropy_and_grad(h, w, y, b.astype(np.float32))
    for other in LOWP:  # float16 beside bfloat16 (when ml_dtypes is installed)
        if other != dtype:
            with pytest.raises(TypeError, match=f"weight has dtype {other.name} but hidden "
                                                f"has dtype {name}"):
                linear_cross_entropy(h, w.astype(other), y)


# ------------------------------------------------------------------------------- errors


def _args(rng):
    hidden, weight, labels, b = make_problem(rng, np.float64, shape=(2, 3), d=4, vocab=5)
    return hidden, weight, labels, b


def test_error_dtypes(rng):
    h, w, y, b = _args(rng)
    with pytest.raises(TypeError, match="hidden must have dtype float32, float64, float16 or "
                                        "bfloat16, got int32"):
        linear_cross_entropy(h.astype(np.int32), w, y)
    with pytest.raises(TypeError, match="weight has dtype float32 but hidden has dtype float64"):
        linear_cross_entropy(h, w.astype(np.float32), y)
    with pytest.raises(TypeError, match="weight must have dtype float32, float64, float16 or "
                                        "bfloat16, got int64"):
        linear_cross_entropy(h, w.astype(np.int64), y)
    with pytest.raises(TypeError, match="bias has dtype float32 but hidden has dtype float64"):
        linear_cross_entropy(h, w, y, b.astype(np.float32))
    with pytest.raises(TypeError, match="labels must have an integer dtype, got float64"):
        linear_cross_entropy(h, w, y.astype(np.float64))


def test_error_shapes(rng):
    h, w, y, b = _args(rng)
    with pytest.raises(ValueError, match=r"weight must be 2-D .* got shape \(20,\)"):
        linear_cross_entropy(h, w.reshape(-1), y)
    with pytest.raises(ValueError, match=r"last axis of hidden must equal weight.shape\[1\] = 3"):
        linear_cross_entropy(h, w[:, :3], y)
    with pytest.raises(ValueError, match=r"bias has shape \(4,\), expected \(5,\)"):
        linear_cross_entropy(h, w, y, b[:4])
    with pytest.raises(ValueError, match=r"labels has shape \(6,\) but hidden has shape"):
        linear_cross_entropy(h, w, y.reshape(-1))
    with pytest.raises(ValueError, match="an empty vocabulary"):
        linear_cross_entropy(h, w[:0], y)
    with pytest.raises(ValueError, match="hidden must have at least one dimension"):
        linear_cross_entropy(np.float64(1.0), w, y)


def test_error_label_out_of_range_names_position(rng):
    h, w, y, _ = _args(rng)
    y[1, 2] = 5
    msg = r"labels: label 5 at position \(1, 2\) is outside \[0, 5\)"
    with pytest.raises(ValueError, match=msg):
        linear_cross_entropy_and_grad(h, w, y)
    y[1, 2] = -100
    with pytest.raises(ValueError, match=r"label -100 at position \(1, 2\)"):
        linear_cross_entropy(h, w, y, ignore_class=-1)
    assert np.isfinite(linear_cross_entropy(h, w, y, ignore_class=-100))


def test_error_options(rng):
    h, w, y, _ = _args(rng)
    with pytest.raises(TypeError, match="ignore_class must be None or an int"):
        linear_cross_entropy(h, w, y, ignore_class=1.5)
    with pytest.raises(TypeError, match="ignore_class must be None or an int"):
        linear_cross_entropy(h, w, y, ignore_class=True)
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0.0, 1.0\]"):
        linear_cross_entropy(h, w, y, label_smoothing=1.5)
    with pytest.raises(ValueError, match="z_loss must be a finite number >= 0"):
        linear_cross_entropy(h, w, y, z_loss=-0.1)
    with pytest.raises(ValueError, match="reduction must be one of"):
        linear_cross_entropy(h, w, y, reduction="avg")
    with pytest.raises(ValueError, match="n_threads must be a positive int"):
        linear_cross_entropy(h, w, y, n_threads=0)
    with pytest.raises(ValueError, match="sample_weight with shape"):
        linear_cross_entropy(h, w, y, sample_weight=np.ones(5))


@pytest.mark.parametrize(("chunk_size", "exc", "match"), [
    (0, ValueError, "chunk_size must be a positive int, got 0"),
    (-3, ValueError, "chunk_size must be a positive int"),
    (2.5, TypeError, "chunk_size must be a positive int"),
    (True, TypeError, "chunk_size must be a positive int"),
    ((4, 0), ValueError, r"chunk_size\[1\] \(vocabulary entries per block\)"),
    ((0, 4), ValueError, r"chunk_size\[0\] \(rows per block\)"),
    ((4, 4, 4), ValueError, r"chunk_size must be an int \(rows\) or a pair"),
    ("big", TypeError, "chunk_size must be a positive int"),
])
def test_error_chunk_size(rng, chunk_size, exc, match):
    h, w, y, _ = _args(rng)
    with pytest.raises(exc, match=match):
        linear_cross_entropy(h, w, y, chunk_size=chunk_size)


# ---------------------------------------------------------------------------- perplexity


@pytest.mark.parametrize("dtype", DTYPES)
def test_perplexity_against_reference_and_torch(rng, dtype):
    torch = pytest.importorskip("torch")
    x = (rng.standard_normal((4, 6, 11)) * 2).astype(dtype)
    y = rng.integers(0, 11, (4, 6))
    y[rng.random((4, 6)) < 0.3] = -100
    per_token = R.per_sample("sparse_categorical", y, x, from_logits=True, ignore_class=-100)
    valid = y != -100
    expected = np.exp(per_token[valid].mean())
    got = perplexity(y, x, ignore_class=-100)
    assert isinstance(got, float)
    assert_close(got, expected, dtype, rtol=2e-5 if dtype == np.float32 else 1e-12)
    ce = torch.nn.functional.cross_entropy(torch.tensor(x.astype(np.float64)).reshape(-1, 11),
                                           torch.tensor(y.reshape(-1)), ignore_index=-100)
    assert_close(got, float(torch.exp(ce)), dtype, rtol=2e-5 if dtype == np.float32 else 1e-12)


def test_perplexity_weights_axis_and_probabilities(rng):
    x = rng.standard_normal((3, 5, 4))
    y = rng.integers(0, 5, (3, 4))  # vocabulary on axis 1 (PyTorch layout)
    sw = rng.uniform(0.5, 2.0, 3)
    per_token = R.per_sample("sparse_categorical", y, x, from_logits=True, axis=1)
    w = np.broadcast_to(sw[:, None], y.shape)
    expected = np.exp((per_token * w).sum() / w.sum())
    assert_close(perplexity(y, x, axis=1, sample_weight=sw), expected, np.float64, rtol=1e-12)
    # from probabilities: exp of the mean of -log p_label
    p = np.exp(x) / np.exp(x).sum(axis=1, keepdims=True)
    p_label = np.take_along_axis(p, y[:, None, :], axis=1)[:, 0]
    assert_close(perplexity(y, p, from_logits=False, axis=1),
                 np.exp(-np.log(p_label).mean()), np.float64, rtol=1e-10)


def test_perplexity_exact_values_and_edges():
    assert perplexity([0, 1, 2], np.zeros((3, 7))) == pytest.approx(7.0, rel=1e-14)
    y = np.array([3, -100])
    assert np.isnan(perplexity([-100, -100], np.zeros((2, 4)), ignore_class=-100))
    assert np.isnan(perplexity(np.zeros(0, np.int64), np.zeros((0, 4))))
    assert np.isnan(perplexity(y, np.zeros((2, 4)), ignore_class=-100, sample_weight=[0.0, 1.0]))
    big = np.array([[0.0, 2000.0]])
    with np.errstate(all="raise"):  # no overflow warning leaks out
        assert perplexity([0], big) == np.inf


def test_perplexity_errors():
    with pytest.raises(TypeError,
                       match="y_pred must have dtype float32, float64, float16 or bfloat16"):
        perplexity([0], np.zeros((1, 3), dtype=np.int32))
    # (the engine currently prints the label as np.int64(3): reported to the lead)
    with pytest.raises(ValueError, match=r"y_true: label .*3.* at position \(0,\) is outside"):
        perplexity([3], np.zeros((1, 3)))
    with pytest.raises(ValueError, match="axis=2 is out of range"):
        perplexity([0], np.zeros((1, 3)), axis=2)


def test_perplexity_of_fused_loss(rng):
    """exp(linear_cross_entropy) is the perplexity of the materialized logits."""
    hidden, weight, labels, b = make_problem(rng, np.float64, ignore_class=-100)
    fused = np.exp(linear_cross_entropy(hidden, weight, labels, b, ignore_class=-100,
                                        chunk_size=(4, 9)))
    logits = hidden @ weight.T + b
    assert_close(perplexity(labels, logits, ignore_class=-100), fused, np.float64, rtol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("chunk_size", [None, (16, 100), (64, 37)], ids=str)
def test_logits_with_a_large_common_offset(rng, dtype, chunk_size):
    """Logits ~ 1000 +- a few: the softmax must be taken relative to the row, in float64
    (float32 cannot hold x - lse to 1e-5 when |lse| ~ 1000)."""
    hidden, weight, labels, b = make_problem(rng, dtype, shape=(64,), d=16, vocab=500)
    b = (3.0 * b + 2000.0).astype(dtype)
    opts = dict(label_smoothing=0.1, z_loss=1e-7)
    expected = unfused(hidden, weight, labels, b, **opts)
    got = linear_cross_entropy_and_grad(hidden, weight, labels, b, chunk_size=chunk_size,
                                        **opts)
    assert_same(got, expected, dtype, what=str(chunk_size))
