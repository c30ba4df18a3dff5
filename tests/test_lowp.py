"""float16 and bfloat16 y_pred: read directly, computed in float32, gradients rounded once.

* The conversions (C, portable bit manipulation) against NumPy's float16 casts and
  ml_dtypes' bfloat16 casts: every one of the 65,536 bit patterns widened, and a million
  float32 values (random bits, ties, subnormal and overflow boundaries) narrowed.
* Every loss and entry point against the float64 oracle on the upcast values: the loss within
  1e-6 relative, the gradient (and Hessian) within one unit in the last place of its dtype,
  subnormals and zero included.
* The definition itself, bit for bit: a low-precision call returns the float32 results of
  ``y_pred.astype(np.float32)`` with the gradient rounded to nearest even.
* NaN stays in its row, -inf logits are masks, inputs are never modified, ``grad_out=`` and
  ``inplace=True`` write y_pred's dtype, results do not depend on the thread count, and
  ``import fastxent`` does not import ml_dtypes.

bfloat16 cases need ml_dtypes (``pytest.importorskip``); float16 ones run without it.
"""

import subprocess
import sys

import numpy as np
import pytest
import reference as R
from util import CLASSES, FUNCTIONS

import fastxent as fx
from fastxent import _kernels

LOSS_RTOL = 1e-6


def lowp_dtype(name):
    if name == "bfloat16":
        return np.dtype(pytest.importorskip("ml_dtypes").bfloat16)
    return np.dtype(np.float16)


@pytest.fixture(params=["float16", "bfloat16"])
def dtype(request):
    return lowp_dtype(request.param)


# ------------------------------------------------------------------ ulp comparison


def ordered(a):
    """16-bit floats as integers in the order of their values (-0 and +0 both 0): the
    distance between two of them is their distance in units in the last place."""
    bits = np.ascontiguousarray(a).view(np.uint16).astype(np.int64)
    magnitude = bits & 0x7FFF
    return np.where(bits & 0x8000, -magnitude, magnitude)


def assert_within_ulp(actual, expected64, dtype, what, ulps=1, cancellation=False):
    """``actual`` (of ``dtype``) within ``ulps`` of float64 ``expected64`` rounded to dtype;
    NaN exactly where the expectation is NaN.

    ``cancellation``: a gradient that is a difference of two terms (``p - t`` with soft or
    binary targets) is computed in float32, so an entry where the terms nearly cancel carries
    float32's rounding of the terms, not of the result: such an entry may instead be within
    2**-21 (8 float32 units) of the largest magnitude of its row (the last axis).
    """
    actual = np.asarray(actual)
    assert actual.dtype == dtype, (what, actual.dtype)
    with np.errstate(over="ignore", invalid="ignore"):
        expected = np.asarray(expected64, dtype=np.float64).astype(dtype)
    assert actual.shape == expected.shape, what
    nan_a = np.isnan(actual.astype(np.float32))
    nan_e = np.isnan(expected.astype(np.float32))
    assert np.array_equal(nan_a, nan_e), f"{what}: NaN positions differ"
    dist = np.abs(ordered(actual) - ordered(expected))
    if cancellation:
        e64 = np.asarray(expected64, dtype=np.float64)
        row_max = np.max(np.where(np.isfinite(e64), np.abs(e64), 0.0), axis=-1, keepdims=True)
        with np.errstate(invalid="ignore"):
            near = np.abs(actual.astype(np.float64) - e64) <= 2.0**-21 * row_max
        dist = np.where(near, 0, dist)
    dist = dist[~nan_e]
    if dist.size and dist.max() > ulps:
        i = int(np.argmax(dist))
        raise AssertionError(f"{what}: {int((dist > ulps).sum())} value(s) more than {ulps} "
                             f"ulp away; worst {actual[~nan_e].reshape(-1)[i]!r} vs "
                             f"{expected[~nan_e].reshape(-1)[i]!r}")


def same_float(a, b):
    return (np.isnan(a) and np.isnan(b)) or a == b


def assert_loss_close(actual, expected, what):
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    np.testing.assert_array_equal(np.isnan(a), np.isnan(e), err_msg=what)
    ok = ~np.isnan(e)
    np.testing.assert_allclose(a[ok], e[ok], rtol=LOSS_RTOL, atol=0, err_msg=what)


def test_ulp_comparison_is_not_blind(dtype):
    one = np.array([1.0, 0.0, -0.0, 2.0**-20], dtype)
    assert_within_ulp(one, one.astype(np.float64), dtype, "same", ulps=0)
    nxt = (one.view(np.uint16) + np.uint16(1)).view(dtype)  # one ulp up (down for -0 + 1)
    assert_within_ulp(nxt, one.astype(np.float64), dtype, "one ulp")
    with pytest.raises(AssertionError, match="ulp away"):
        assert_within_ulp(nxt, one.astype(np.float64), dtype, "zero ulp", ulps=0)
    two = (one.view(np.uint16) + np.uint16(2)).view(dtype)
    with pytest.raises(AssertionError, match="ulp away"):
        assert_within_ulp(two, one.astype(np.float64), dtype, "two ulps")
    # across zero: the smallest subnormal each side of 0 is 2 ulps apart
    tiny = np.array([-1], np.int64)
    assert ordered(np.array([0x8001], np.uint16).view(dtype)) == tiny
    with pytest.raises(AssertionError, match="NaN"):
        assert_within_ulp(np.array([np.nan, 1.0], dtype), np.ones(2), dtype, "nan")


# ------------------------------------------------------------------ conversions


def test_widening_every_bit_pattern(dtype):
    bits = np.arange(1 << 16, dtype=np.uint16)
    name = "f16_to_f32" if dtype == np.float16 else "bf16_to_f32"
    got = _kernels.convert(name, bits)
    want = bits.view(dtype).astype(np.float32)
    nan = np.isnan(want)
    np.testing.assert_array_equal(np.isnan(got), nan)
    np.testing.assert_array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32))


def narrowing_cases(dtype):
    rng = np.random.default_rng(7)
    random_bits = rng.integers(0, 1 << 32, size=1_000_000, dtype=np.uint64).astype(np.uint32)
    # every 16-bit value, the ties halfway to the next one (exact in float32) and a float32
    # ulp either side of those, with both signs
    pos = np.arange(0x7C00 if dtype == np.float16 else 0x7F80, dtype=np.uint16)
    vals = pos.view(dtype).astype(np.float64)
    nxt = (pos + np.uint16(1)).view(dtype).astype(np.float64)  # the last one: inf
    ties = np.where(np.isfinite(nxt), (vals + nxt) / 2, vals)
    vals = np.concatenate([vals, -vals])
    halves = np.concatenate([ties, -ties]).astype(np.float32)
    around = np.concatenate([np.nextafter(halves, np.float32(np.inf)),
                             np.nextafter(halves, np.float32(-np.inf))])
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, 65504.0, 65519.99,
                        65520.0, 65536.0, 2.0**-24, 2.0**-25, 1.5 * 2.0**-25, 2.0**-14,
                        3.4e38, -3.4e38, 1e-45, -1e-45], np.float32)
    return np.concatenate([random_bits.view(np.float32), vals.astype(np.float32), halves,
                           around, special])


def test_narrowing_rounds_to_nearest_even(dtype):
    src = narrowing_cases(dtype)
    name = "f32_to_f16" if dtype == np.float16 else "f32_to_bf16"
    got = _kernels.convert(name, src).view(dtype)
    with np.errstate(over="ignore", invalid="ignore"):
        want = src.astype(dtype)
    nan = np.isnan(src)
    np.testing.assert_array_equal(np.isnan(got.astype(np.float32)), nan)
    np.testing.assert_array_equal(got[~nan].view(np.uint16), want[~nan].view(np.uint16))


@pytest.fixture(params=fx.available_isas())
def isa(request):
    """Every instruction-set path this CPU has, restored afterwards."""
    before = fx.get_isa()
    fx.set_isa(request.param)
    yield request.param
    fx.set_isa(before)


def test_row_kernel_conversions_on_every_isa(dtype, isa):
    """The 16-bit row kernels convert whole rows (F16C / shifts in vectors, then an element
    tail): every bit pattern widened and every narrowing case, on each path, give NumPy's and
    ml_dtypes' results; lengths that leave tails of every size."""
    f16 = dtype == np.float16
    bits = np.arange(1 << 16, dtype=np.uint16)
    want = bits.view(dtype).astype(np.float32)
    nan = np.isnan(want)
    src = narrowing_cases(dtype)
    with np.errstate(over="ignore", invalid="ignore"):
        want_n = src.astype(dtype)
    for n in (1 << 16, (1 << 16) - 13, 31, 7):
        got = _kernels.convert("f16_to_f32" if f16 else "bf16_to_f32", bits[-n:], rows=True)
        keep = ~nan[-n:]
        np.testing.assert_array_equal(np.isnan(got), nan[-n:])
        np.testing.assert_array_equal(got[keep].view(np.uint32), want[-n:][keep].view(np.uint32))
    for n in (src.size, src.size - 13, 1000, 31, 7):  # the ties and specials are last
        got = _kernels.convert("f32_to_f16" if f16 else "f32_to_bf16", src[-n:],
                               rows=True).view(dtype)
        keep = ~np.isnan(src[-n:])
        np.testing.assert_array_equal(np.isnan(got.astype(np.float32)), ~keep)
        np.testing.assert_array_equal(got[keep].view(np.uint16),
                                      want_n[-n:][keep].view(np.uint16))
    # NaN narrows to the quiet NaN of its sign whatever its payload (as the element code)
    payloads = np.array([0x7FC00000, 0x7F800001, 0x7FFFFFFF, 0xFFC00000, 0xFF812345] * 4,
                        np.uint32).view(np.float32)
    name = "f32_to_f16" if f16 else "f32_to_bf16"
    np.testing.assert_array_equal(_kernels.convert(name, payloads, rows=True),
                                  _kernels.convert(name, payloads))


# sparse labels from logits: the 16-bit row kernels (rows longer than SHORT_ROWS and shorter
# than SPLIT_MIN), with every option they take
LABEL_ROW_OPTIONS = (
    {},
    {"label_smoothing": 0.1},
    {"class_weight": "random", "z_loss": 1e-3, "ignore_class": 3,
     "reduction": "mean_with_sample_weight"},
    {"z_loss": 1e-3, "reduction": "sum"},
)


@pytest.mark.parametrize("shape", ((67, 17), (64, 1000), (3, 40_003)),
                         ids=lambda s: "x".join(map(str, s)))
def test_label_row_kernels_on_every_isa(shape, dtype, isa, rng):
    """Every option against the oracle (loss within 1e-6, gradient within one ulp), the float32
    results rounded bit for bit, a NaN row, a row of masked classes, ignored labels, in place,
    and the same bits for 1, 2 and 3 threads."""
    y, x = make_case("sparse_categorical", True, dtype, shape, rng)
    y[2::5] = 3  # ignored below (row 0: the NaN row; row 1: masked classes)
    sw = rng.uniform(0.5, 2.0, size=shape[0])
    for opts in LABEL_ROW_OPTIONS:
        opts = dict(opts)
        if opts.get("class_weight") == "random":
            opts["class_weight"] = rng.uniform(0.5, 2.0, shape[1])
        loss = fx.SparseCategoricalCrossentropy(from_logits=True, **opts)
        value, grad = loss.loss_and_grad(y, x, sw)
        exp_loss, exp_grad = oracle("sparse_categorical", y, x, sample_weight=sw,
                                    from_logits=True, **opts)
        assert_loss_close(value, exp_loss, f"{opts} loss")
        assert_within_ulp(grad, exp_grad, dtype, f"{opts} gradient")
        g = grad.astype(np.float32)
        assert np.isnan(g[0]).all() and not np.isnan(g[1:]).any()
        if "label_smoothing" not in opts:  # (smoothing puts targets on masked classes)
            assert (g[1, : shape[1] // 2] == 0).all()
        if "ignore_class" in opts:
            assert not g[2::5].any()
        v32, g32 = loss.loss_and_grad(y, x.astype(np.float32), sw)
        assert same_float(value, v32)
        np.testing.assert_array_equal(grad.view(np.uint16), g32.astype(dtype).view(np.uint16))
        per = fx.SparseCategoricalCrossentropy(from_logits=True, n_threads=1,
                                               **{**opts, "reduction": "none"})
        ref = per.loss_and_grad(y, x)
        for n_threads in (2, 3):
            got = fx.SparseCategoricalCrossentropy(
                from_logits=True, n_threads=n_threads,
                **{**opts, "reduction": "none"}).loss_and_grad(y, x)
            np.testing.assert_array_equal(got[0].view(np.uint32), ref[0].view(np.uint32))
            np.testing.assert_array_equal(got[1].view(np.uint16), ref[1].view(np.uint16))
        work = x.copy()
        v_in, g_in = loss.loss_and_grad(y, work, sw, inplace=True)
        assert g_in is work and same_float(v_in, value)
        np.testing.assert_array_equal(work.view(np.uint16), grad.view(np.uint16))


def test_label_row_kernels_same_bits_on_every_isa(dtype, rng):
    """The 16-bit row kernels return the same bits on every instruction-set path (NaN rows
    included: NaN where the others have NaN)."""
    y, x = make_case("sparse_categorical", True, dtype, (40, 1001), rng)
    before = fx.get_isa()
    results = []
    try:
        for name in fx.available_isas():
            fx.set_isa(name)
            results.append(fx.SparseCategoricalCrossentropy(
                from_logits=True, reduction="none", z_loss=1e-4).loss_and_grad(y, x))
    finally:
        fx.set_isa(before)
    for per, grad in results[1:]:
        np.testing.assert_array_equal(per, results[0][0])  # NaN where NaN
        np.testing.assert_array_equal(grad.view(np.uint16), results[0][1].view(np.uint16))



def special_rows(c, rng):
    """Rows of c logits for the row maximum: a NaN at each position, a +inf at each position,
    a zero maximum held by both +0 and -0 at each position (the other one next to it), every
    class masked, every logit +inf, every logit NaN."""
    base = -np.abs(rng.standard_normal((c, c)) * 3).astype(np.float32)
    eye = np.eye(c, dtype=bool)
    after = np.roll(eye, 1, axis=1)
    nan_at, inf_at = np.where(eye, np.nan, base), np.where(eye, np.inf, base)
    pos_zero = np.where(eye, 0.0, np.where(after, -0.0, base)).astype(np.float32)
    neg_zero = np.where(eye, -0.0, np.where(after, 0.0, base)).astype(np.float32)
    whole = np.array([[-np.inf] * c, [np.inf] * c, [np.nan] * c], np.float32)
    return np.concatenate([nan_at, inf_at, pos_zero, neg_zero, whole])


def test_label_row_kernels_row_max_specials(dtype, isa, rng):
    """The 16-bit row kernels' row maximum on rows of every tail length: NaN, +inf and a zero
    maximum at every position (in the vector steps and the tail), rows of -inf, +inf and NaN.
    The results are the float32 kernels' on the widened rows (NaN where those are NaN) and NaN
    exactly where the oracle's are."""
    for c in (17, 31, 32, 33, 47, 64, 65, 100):
        x = special_rows(c, rng).astype(dtype)
        y = rng.integers(0, c, size=x.shape[0])
        for opts in ({}, {"label_smoothing": 0.1}, {"z_loss": 1e-3}):
            loss = fx.SparseCategoricalCrossentropy(from_logits=True, reduction="none", **opts)
            with np.errstate(invalid="ignore", over="ignore"):
                per, grad = loss.loss_and_grad(y, x)
                per32, grad32 = loss.loss_and_grad(y, x.astype(np.float32))
                exp_loss, exp_grad = oracle("sparse_categorical", y, x, from_logits=True,
                                            reduction="none", **opts)
                grad32 = grad32.astype(dtype)
            what = f"{c} classes, {opts}"
            nan = np.isnan(per32)
            np.testing.assert_array_equal(np.isnan(per), nan, err_msg=what)
            np.testing.assert_array_equal(per[~nan].view(np.uint32),
                                          per32[~nan].view(np.uint32), err_msg=what)
            gnan = np.isnan(grad32.astype(np.float32))
            np.testing.assert_array_equal(np.isnan(grad.astype(np.float32)), gnan, err_msg=what)
            np.testing.assert_array_equal(grad[~gnan].view(np.uint16),
                                          grad32[~gnan].view(np.uint16), err_msg=what)
            np.testing.assert_array_equal(nan, np.isnan(exp_loss), err_msg=what)
            # NaN stays in its row and fills it; a +inf logit makes its row NaN too
            assert nan[: 2 * c].all() and gnan[: 2 * c].all(), what
            assert not nan[2 * c: 4 * c].any() and not gnan[2 * c: 4 * c].any(), what
            assert_within_ulp(grad[2 * c: 4 * c], exp_grad[2 * c: 4 * c], dtype, what)


# ------------------------------------------------------------------ every loss vs the oracle


def make_case(kind, from_logits, dtype, shape, rng, specials=True):
    n, c = shape
    if from_logits:
        x32 = (rng.standard_normal(shape) * 3).astype(np.float32)
    else:
        x32 = rng.uniform(0.02, 1.0, size=shape).astype(np.float32)
    x = x32.astype(dtype)
    if specials and from_logits and n >= 3 and c >= 2:
        x[0, 0] = np.nan          # row 0: NaN stays in its row
        if kind != "binary":  # (binary: no masks, -inf is a limit, test_losses.py)
            x[1, : c // 2] = -np.inf  # row 1: masked classes
    if kind == "sparse_categorical":
        y = rng.integers(0, c, size=n)
        if from_logits and n >= 2 and c >= 2:
            y[1] = c - 1          # a label on an unmasked class
    elif kind == "categorical":
        y = rng.dirichlet(np.ones(c), size=n).astype(dtype)
        if specials and from_logits and n >= 2 and c >= 2:
            y[1, : c // 2] = 0.0  # no target on the masked classes
    else:
        y = (rng.random(shape) < 0.4).astype(dtype)
    return y, x


def oracle(kind, y, x, **opts):
    """The float64 oracle on the upcast values (clip bounds of float32, the dtype computed in)."""
    x32 = np.asarray(x).astype(np.float32)
    yo = y if kind == "sparse_categorical" else np.asarray(y).astype(np.float32)
    with np.errstate(all="ignore"):
        return R.reference_loss_and_grad(kind, yo, x32, **opts)


SHAPES = ((37, 5), (64, 1000), (5, 40_003))


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("from_logits", [True, False], ids=["logits", "probs"])
@pytest.mark.parametrize("kind", list(CLASSES))
def test_loss_and_grad_match_oracle(kind, from_logits, shape, dtype, rng):
    y, x = make_case(kind, from_logits, dtype, shape, rng)
    sw = rng.uniform(0.5, 2.0, size=shape[0])
    for reduction in ("sum_over_batch_size", "sum", "none"):
        opts = {"from_logits": from_logits, "reduction": reduction}
        loss = CLASSES[kind](**opts)
        value, grad = loss.loss_and_grad(y, x, sw)
        exp_loss, exp_grad = oracle(kind, y, x, sample_weight=sw, **opts)
        if reduction == "none":
            assert isinstance(value, np.ndarray) and value.dtype == np.float32
        else:
            assert type(value) is float
        assert_loss_close(value, exp_loss, f"{reduction} loss")
        assert_within_ulp(grad, exp_grad, dtype, f"{reduction} gradient",
                          cancellation=kind != "sparse_categorical")
        if from_logits and shape[0] >= 3 and shape[1] >= 2:
            g = grad.astype(np.float32)
            assert not np.isnan(g[1:]).any()  # NaN stays in row 0
            if kind == "binary":  # elementwise: only that element
                assert np.isnan(g[0, 0]) and not np.isnan(g[0, 1:]).any()
            else:
                assert np.isnan(g[0]).all()
                assert (g[1, : shape[1] // 2] == 0).all()  # masked classes: zero gradient
        if reduction != "none":
            assert same_float(loss(y, x, sw), value)


@pytest.mark.parametrize("kind", list(CLASSES))
def test_functions_and_options_match_oracle(kind, dtype, rng):
    y, x = make_case(kind, True, dtype, (50, 17), rng, specials=False)
    opts = {"from_logits": True, "label_smoothing": 0.1}
    if kind == "binary":
        opts["pos_weight"] = rng.uniform(0.5, 2.0, 17)
    else:
        opts["class_weight"] = rng.uniform(0.5, 2.0, 17)
        opts["z_loss"] = 1e-3
    if kind == "sparse_categorical":
        y[::7] = 3
        opts["ignore_class"] = 3
    per_sample = FUNCTIONS[kind](y, x, **opts)
    assert per_sample.dtype == np.float32
    exp, _ = oracle(kind, y, x, reduction="none", **opts)
    assert_loss_close(per_sample, exp, "per-sample")
    loss = CLASSES[kind](reduction="mean_with_sample_weight", **opts)
    value, grad = loss.loss_and_grad(y, x)
    exp_loss, exp_grad = oracle(kind, y, x, reduction="mean_with_sample_weight", **opts)
    assert_loss_close(value, exp_loss, "mean_with_sample_weight")
    assert_within_ulp(grad, exp_grad, dtype, "gradient", cancellation=True)


@pytest.mark.parametrize("kind", list(CLASSES))
def test_gradient_hessian(kind, dtype, rng):
    y, x = make_case(kind, True, dtype, (40, 9), rng, specials=False)
    grad, hess = CLASSES[kind](from_logits=True).gradient_hessian(y, x)
    assert grad.dtype == dtype and hess.dtype == dtype
    grad32, hess32 = CLASSES[kind](from_logits=True).gradient_hessian(
        y if kind == "sparse_categorical" else y.astype(np.float32), x.astype(np.float32))
    # the definition: the float32 results, rounded once
    np.testing.assert_array_equal(grad.view(np.uint16), grad32.astype(dtype).view(np.uint16))
    np.testing.assert_array_equal(hess.view(np.uint16), hess32.astype(dtype).view(np.uint16))
    # and against the float64 oracle's Hessian diagonal
    x64 = x.astype(np.float64)
    if kind == "binary":
        s = 1.0 / (1.0 + np.exp(-x64))
        exp_hess = s * (1 - s) / (x.shape[0] * x.shape[1])
    else:
        p = np.exp(x64 - x64.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        exp_hess = p * (1 - p) / x.shape[0]
    assert_within_ulp(hess, exp_hess, dtype, "hessian")


@pytest.mark.parametrize("from_logits", [True, False], ids=["logits", "probs"])
@pytest.mark.parametrize("kind", list(CLASSES))
def test_equals_float32_results_rounded(kind, from_logits, dtype, rng):
    """A low-precision call computes exactly what the float32 kernels compute on the upcast
    values; the gradient is that float32 gradient rounded to nearest even."""
    for shape in ((300, 3), (100, 257), (3, 40_003)):
        y, x = make_case(kind, from_logits, dtype, shape, rng)
        y32 = y if kind == "sparse_categorical" else y.astype(np.float32)
        for reduction in ("none", "sum_over_batch_size"):
            loss = CLASSES[kind](from_logits=from_logits, reduction=reduction)
            value, grad = loss.loss_and_grad(y, x)
            v32, g32 = loss.loss_and_grad(y32, x.astype(np.float32))
            np.testing.assert_array_equal(value, v32)
            np.testing.assert_array_equal(grad.view(np.uint16), g32.astype(dtype).view(np.uint16))


def test_long_rows_match_oracle(dtype, rng):
    """Rows of at least 262,144 elements (one row per thread's block here)."""
    y, x = make_case("sparse_categorical", True, dtype, (2, 300_007), rng, specials=False)
    value, grad = fx.SparseCategoricalCrossentropy(from_logits=True).loss_and_grad(y, x)
    exp_loss, exp_grad = oracle("sparse_categorical", y, x, from_logits=True)
    assert_loss_close(value, exp_loss, "loss")
    assert_within_ulp(grad, exp_grad, dtype, "gradient")
    z, xb = make_case("binary", True, dtype, (1, 300_007), rng, specials=False)
    value, grad = fx.BinaryCrossentropy(from_logits=True).loss_and_grad(z, xb)
    exp_loss, exp_grad = oracle("binary", z, xb, from_logits=True)
    assert_loss_close(value, exp_loss, "binary loss")
    assert_within_ulp(grad, exp_grad, dtype, "binary gradient", cancellation=True)


@pytest.mark.parametrize("from_logits", [True, False], ids=["logits", "probs"])
def test_long_binary_rows_are_chunked_like_float32(from_logits, dtype, rng):
    """Binary rows of 262,144 elements or more: the float32 runner's fixed chunks, shared by
    the threads, each widened on its own; the same bits as the float32 results."""
    for shape in ((2, 300_007), (600_000,)):
        z, x = make_case("binary", from_logits, dtype, (1, int(np.prod(shape))), rng,
                         specials=False)
        z, x = z.reshape(shape), x.reshape(shape)
        z32, x32 = z.astype(np.float32), x.astype(np.float32)
        for n_threads in (1, 2):
            # "sum": the float64 sum of the rows' float64 losses, which shows how a row's
            # elementwise losses were added
            loss = fx.BinaryCrossentropy(from_logits=from_logits, n_threads=n_threads,
                                         reduction="sum")
            value, grad = loss.loss_and_grad(z, x)
            v32, g32 = loss.loss_and_grad(z32, x32)
            np.testing.assert_array_equal(value, v32)
            np.testing.assert_array_equal(grad.view(np.uint16),
                                          g32.astype(dtype).view(np.uint16))
            if from_logits:
                g, h = loss.gradient_hessian(z, x)
                g32, h32 = loss.gradient_hessian(z32, x32)
                np.testing.assert_array_equal(h.view(np.uint16),
                                              h32.astype(dtype).view(np.uint16))


@pytest.mark.parametrize("kind", ["sparse_categorical", "categorical"])
def test_long_softmax_rows_are_chunked_like_float32(kind, dtype, rng):
    """Softmax rows of 262,144 elements or more: the float32 runner's chunks, statistics and
    ordered merge; the same bits as the float32 results (losses summed in float64)."""
    y, x = make_case(kind, True, dtype, (4, 300_007), rng)
    y, x = y[1:], x[1:]  # masked classes in the first row (the NaN row would hide the sums)
    y32 = y if kind == "sparse_categorical" else y.astype(np.float32)
    x32 = x.astype(np.float32)
    cw = rng.uniform(0.5, 2.0, 300_007)
    for opts in ({}, {"label_smoothing": 0.1, "class_weight": cw, "z_loss": 1e-3}):
        for n_threads in (1, 2):
            loss = CLASSES[kind](from_logits=True, n_threads=n_threads, reduction="sum",
                                 **opts)
            value, grad = loss.loss_and_grad(y, x)
            v32, g32 = loss.loss_and_grad(y32, x32)
            assert same_float(value, v32)
            np.testing.assert_array_equal(grad.view(np.uint16),
                                          g32.astype(dtype).view(np.uint16))
            if kind == "sparse_categorical":
                labels = np.array(y)
                labels[2] = 7
                ign = CLASSES[kind](from_logits=True, n_threads=n_threads, ignore_class=7,
                                    reduction="none", **opts)
                v, g = ign.loss_and_grad(labels, x)
                assert v[2] == 0 and not g[2].astype(np.float32).any()


# ------------------------------------------------------------------ targets


@pytest.mark.parametrize("kind", ["categorical", "binary"])
def test_targets_float32_read_as_given_others_converted(kind, dtype, rng):
    y, x = make_case(kind, True, dtype, (30, 11), rng, specials=False)
    soft = rng.uniform(size=x.shape)
    soft = soft / soft.sum(axis=1, keepdims=True) if kind == "categorical" else soft
    loss = CLASSES[kind](from_logits=True, reduction="sum")
    x32 = x.astype(np.float32)
    # float32 targets: their own values (not rounded to y_pred's dtype)
    t32 = soft.astype(np.float32)
    np.testing.assert_array_equal(loss.loss_and_grad(t32, x)[1].view(np.uint16),
                                  loss.loss_and_grad(t32, x32)[1].astype(dtype).view(np.uint16))
    # float64 targets: converted to y_pred's dtype, as Keras does
    t_low = soft.astype(dtype)
    assert loss(soft, x) == loss(t_low, x) == loss(t_low.astype(np.float32), x32)
    # targets of y_pred's dtype and integer targets are accepted
    assert loss((soft > 0.5).astype(np.int8), x) == loss((soft > 0.5).astype(dtype), x)


# ------------------------------------------------------------------ buffers, threads, inputs


@pytest.mark.parametrize("kind", list(CLASSES))
def test_grad_out_inplace_and_inputs_unmodified(kind, dtype, rng):
    y, x = make_case(kind, True, dtype, (64, 33), rng)
    x_before, y_before = x.copy(), np.array(y, copy=True)
    loss = CLASSES[kind](from_logits=True)
    value, grad = loss.loss_and_grad(y, x)
    np.testing.assert_array_equal(x.view(np.uint16), x_before.view(np.uint16))
    np.testing.assert_array_equal(np.asarray(y).view(np.uint8), y_before.view(np.uint8))
    out = np.zeros_like(x)
    v2, g2 = loss.loss_and_grad(y, x, grad_out=out)
    assert g2 is out and same_float(v2, value)
    np.testing.assert_array_equal(out.view(np.uint16), grad.view(np.uint16))
    with pytest.raises(TypeError, match="grad_out has dtype float32"):
        loss.loss_and_grad(y, x, grad_out=np.zeros(x.shape, np.float32))
    work = x.copy()
    v3, g3 = loss.loss_and_grad(y, work, inplace=True)
    assert g3 is work and same_float(v3, value)
    np.testing.assert_array_equal(work.view(np.uint16), grad.view(np.uint16))


@pytest.mark.parametrize("kind", list(CLASSES))
def test_same_bits_for_any_thread_count(kind, dtype, rng):
    y, x = make_case(kind, True, dtype, (2000, 100), rng)  # 6 blocks of rows
    ref = CLASSES[kind](from_logits=True, n_threads=1, reduction="none").loss_and_grad(y, x)
    for n_threads in (2, 4):
        got = CLASSES[kind](from_logits=True, n_threads=n_threads,
                            reduction="none").loss_and_grad(y, x)
        np.testing.assert_array_equal(got[0].view(np.uint32), ref[0].view(np.uint32))
        np.testing.assert_array_equal(got[1].view(np.uint16), ref[1].view(np.uint16))


def test_lse_is_float32(dtype, rng):
    y, x = make_case("sparse_categorical", True, dtype, (20, 7), rng, specials=False)
    _, _, lse = fx.SparseCategoricalCrossentropy(from_logits=True).loss_and_grad(
        y, x, return_lse=True)
    assert lse.dtype == np.float32
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(lse, np.log(np.exp(x64).sum(axis=1)), rtol=1e-6)


def test_loss_dtype_casts_low_precision(dtype, rng):
    """A loss built with dtype="float32" computes a float16 / bfloat16 y_pred in float32 and
    returns float32 gradients (Keras' dtype=)."""
    y, x = make_case("sparse_categorical", True, dtype, (20, 7), rng, specials=False)
    value, grad = fx.SparseCategoricalCrossentropy(from_logits=True,
                                                   dtype="float32").loss_and_grad(y, x)
    assert grad.dtype == np.float32


# ------------------------------------------------------------------ refusals, imports


def test_other_entry_points_refuse_low_precision(dtype, rng):
    h = rng.standard_normal((4, 3)).astype(dtype)
    with pytest.raises(TypeError, match=r"input must have dtype float32 or float64, got "
                                        rf"{dtype.name}; float16 and bfloat16 are read by "
                                        r"the cross-entropy losses only"):
        fx.nll_loss(h, np.zeros(4, np.int64))
    # the fused linear head takes them (tests/test_linear.py), in one dtype with its weight
    w = rng.standard_normal((5, 3)).astype(np.float32)
    with pytest.raises(TypeError, match=rf"weight has dtype float32 but hidden has dtype "
                                        rf"{dtype.name}"):
        fx.linear_cross_entropy(h, w, np.zeros(4, np.int64))


def test_boosting_objectives_compute_low_precision_scores_in_float64(dtype, rng):
    from fastxent.objectives import sigmoid_gradient_hessian, softmax_gradient_hessian

    raw = rng.standard_normal((20, 4)).astype(dtype)
    labels = rng.integers(0, 4, 20)
    grad, hess = softmax_gradient_hessian(labels, raw)
    g64, h64 = softmax_gradient_hessian(labels, raw.astype(np.float64))
    assert grad.dtype == np.float64
    np.testing.assert_array_equal(grad, g64)
    np.testing.assert_array_equal(hess, h64)
    z = (labels > 1).astype(np.float64)
    grad, hess = sigmoid_gradient_hessian(z, raw[:, 0])
    g64, _ = sigmoid_gradient_hessian(z, raw[:, 0].astype(np.float64))
    np.testing.assert_array_equal(grad, g64)


def test_bad_dtypes_name_every_accepted_dtype():
    for bad in (np.int32, np.complex64, np.longdouble, bool):
        with pytest.raises(TypeError, match=r"y_pred must have dtype float32, float64, "
                                            r"float16 or bfloat16, got"):
            fx.sparse_categorical_crossentropy([0], np.zeros((1, 3), bad))


def test_import_does_not_import_ml_dtypes_and_float16_works_without_it():
    code = (
        "import sys, numpy as np, fastxent as fx\n"
        "assert 'ml_dtypes' not in sys.modules\n"
        "x = np.array([[1.0, 2.0, 0.5]], np.float16)\n"
        "l, g = fx.SparseCategoricalCrossentropy(from_logits=True).loss_and_grad([1], x)\n"
        "assert g.dtype == np.float16 and abs(l - 0.4643688) < 1e-6, (l, g)\n"
        "assert 'ml_dtypes' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
