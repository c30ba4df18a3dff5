"""Every kernel path against the oracle, bitwise determinism across threads and instruction
sets on each path, and the accuracy of the kernels' own elementary functions.

The kernels choose a path by the row length only (``fastxent._kernels``: ``SHORT_ROWS``,
``SPLIT_MIN``, ``SPLIT_CHUNK``):

* softmax rows of at most ``SHORT_ROWS`` classes: groups of rows transposed so that the vector
  lanes run across rows;
* longer rows: one row per thread at a time, 16 fixed float64 accumulation lanes;
* rows of at least ``SPLIT_MIN`` elements (softmax and binary): cut into chunks of
  ``SPLIT_CHUNK`` that the threads share, merged per row in chunk order (the online
  log-sum-exp rule for softmax).

float32 data: exp and log1p are evaluated in single precision (the shift x - max made exact
by TwoSum; exp within 1 ulp, log1p within 4 ulp of float), every sum in float64.
"""

import re
import shutil
import subprocess

import numpy as np
import pytest
import reference as R
from util import CLASSES, assert_close, logits, make_data, team_items, team_size, teams_ran

import fastxent as fx
from fastxent import _kernels

SHORT = _kernels.SHORT_ROWS
SPLIT = _kernels.SPLIT_MIN
CHUNK = _kernels.SPLIT_CHUNK

# class counts on each side of every path boundary, and of the exponential pass's tail
# boundary (a tail of at most 8 elements runs as a half-width step: 24 = 16 + 8, 25 = 16 + 9)
SOFTMAX_WIDTHS = [1, 2, 7, SHORT, SHORT + 1, 24, 25, 33, 1000]
SPLIT_WIDTH = SPLIT + CHUNK // 2 + 3  # a last chunk of odd length


def _case(kind, rng, shape, dtype, ignore=None):
    return make_data(rng, kind, shape, -1, dtype, True, ignore)


OPTIONS = {
    "sparse_categorical": [
        {},
        {"label_smoothing": 0.1},
        {"class_weight": "random", "reduction": "mean_with_sample_weight"},
        {"ignore_class": 0},
        {"z_loss": 1e-3},
    ],
    "categorical": [{}, {"label_smoothing": 0.2}, {"class_weight": "random"}, {"z_loss": 1e-3}],
    "binary": [{}, {"label_smoothing": 0.1}, {"pos_weight": "random"}],
}


def _resolve(options, rng, n):
    out = dict(options)
    for key in ("class_weight", "pos_weight"):
        if out.get(key) == "random":
            out[key] = rng.uniform(0.5, 2.0, n)
    return out


def _check_against_oracle(kind, y, x, options, dtype, sample_weight=None, n_threads=2):
    obj = CLASSES[kind](from_logits=True, n_threads=n_threads, **options)
    loss, grad = obj.loss_and_grad(y, x, sample_weight)
    ref_loss, ref_grad = R.reference_loss_and_grad(
        kind, y, x, sample_weight, from_logits=True, **options
    )
    assert grad.dtype == x.dtype
    assert_close(loss, ref_loss, dtype)
    assert_close(grad, ref_grad, dtype)
    per_options = {**options, "reduction": "none"}
    per = CLASSES[kind](from_logits=True, **per_options)(y, x)
    ref_per = R.reference_loss(kind, y, x, from_logits=True, **per_options)
    assert_close(per, ref_per, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_classes", SOFTMAX_WIDTHS)
@pytest.mark.parametrize("kind", ["sparse_categorical", "categorical", "binary"])
def test_paths_match_oracle(kind, n_classes, dtype, rng):
    for options in OPTIONS[kind]:
        options = _resolve(options, rng, n_classes)
        y, x = _case(kind, rng, (67, n_classes), dtype, options.get("ignore_class"))
        w = rng.uniform(0.0, 2.0, 67)
        _check_against_oracle(kind, y, x, options, dtype, sample_weight=w)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", ["sparse_categorical", "categorical", "binary"])
def test_split_rows_match_oracle(kind, dtype, rng):
    for options in OPTIONS[kind]:
        options = _resolve(options, rng, SPLIT_WIDTH)
        y, x = _case(kind, rng, (3, SPLIT_WIDTH), dtype)
        if kind == "sparse_categorical":
            y[:] = [5, SPLIT_WIDTH - 1, CHUNK + 7]  # labels in the first, last and a middle chunk
            if "ignore_class" in options:
                y[1] = options["ignore_class"]
        _check_against_oracle(kind, y, x, options, dtype, sample_weight=np.array([1.0, 0.5, 2.0]))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_split_rows_special_values(dtype, rng):
    """A chunk that is all -inf (masked) is no NaN; a labelled masked class is +inf; NaN
    stays in its row; a row all -inf is NaN."""
    x = logits(rng, (4, SPLIT_WIDTH), dtype)
    x[0, CHUNK : 2 * CHUNK] = -np.inf  # a masked chunk, label elsewhere
    x[1, :CHUNK] = -np.inf  # a masked chunk holding the label
    x[2, 3 * CHUNK + 11] = np.nan
    x[3, :] = -np.inf
    y = np.array([2 * CHUNK + 1, 17, 4, 0])
    per, grad = fx.SparseCategoricalCrossentropy(from_logits=True, reduction="none").loss_and_grad(
        y, x
    )
    ref_per = R.reference_loss("sparse_categorical", y, x, from_logits=True, reduction="none")
    assert np.isfinite(per[0]) and per[1] == np.inf and np.isnan(per[2]) and np.isnan(per[3])
    assert_close(per[0], ref_per[0], dtype)
    assert np.all(grad[0, CHUNK : 2 * CHUNK] == 0) and np.all(np.isfinite(grad[0]))
    assert np.all(np.isnan(grad[2])) and np.all(np.isnan(grad[3]))
    assert grad[1, 17] < 0 and np.all(grad[1, :17] == 0)
    # soft targets: a masked chunk with zero targets contributes nothing
    t = np.zeros_like(x[:1])
    t[0, [0, 2 * CHUNK + 5]] = 0.5
    loss = fx.categorical_crossentropy(t, x[:1], from_logits=True)
    ref = R.per_sample("categorical", t, x[:1], from_logits=True)
    assert_close(loss, ref, dtype)


# groups of rows in the short-row kernel: 4-row register blocks inside 32-row groups
SHORT_ROW_COUNTS = [1, 3, 4, 5, 31, 32, 33, 70]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_classes", range(1, SHORT + 1))
def test_short_rows_every_width_and_row_count(n_classes, dtype, rng):
    """Every short width against the oracle, with row counts that leave partial 4-row blocks
    and partial groups, for integer labels and soft targets (both transposed)."""
    for n_rows in SHORT_ROW_COUNTS:
        for kind in ("sparse_categorical", "categorical"):
            y, x = _case(kind, rng, (n_rows, n_classes), dtype)
            _check_against_oracle(kind, y, x, {}, dtype, n_threads=1)


def _special_short_rows(rng, n_rows, n, dtype):
    """Short rows with -inf in row r at class r % n (so over the rows every lane of a group
    and every class holds one), NaN in every 7th row at class (r // 7) % n, and a row all
    -inf; labels on a masked class in every 5th row (an infinite loss)."""
    x = logits(rng, (n_rows, n), dtype)
    y = rng.integers(0, n, n_rows)
    r = np.arange(n_rows)
    if n > 1:
        x[r, r % n] = -np.inf
        y = np.where(y == r % n, (y + 1) % n, y)  # the label on a finite logit ...
        y[::5] = r[::5] % n  # ... except every 5th row
    x[::7, :] = np.where(np.arange(n) == ((r[::7] // 7) % n)[:, None], np.nan, x[::7, :])
    x[n_rows // 2, :] = -np.inf
    return y, x


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_classes", [1, 2, 4, 5, 10, 16])
def test_short_rows_special_values_every_lane(n_classes, dtype, rng):
    """-inf logits are masks (exp 0, gradient 0), a label on a masked class gives +inf, NaN
    stays in its row, a row all -inf is NaN: at every lane position of the short-row groups,
    on every instruction-set path and thread count (bitwise the same)."""
    n_rows = 2 * 32 + 13
    y, x = _special_short_rows(rng, n_rows, n_classes, dtype)
    ref_per, ref_grad = R.softmax_xent_rows(np.eye(n_classes)[y], x)
    ref_grad = ref_grad / n_rows  # sum_over_batch_size
    before = fx.get_isa()
    first = None
    try:
        for isa in _all_isas():
            fx.set_isa(isa)
            for nt in (1, 2):
                obj = fx.SparseCategoricalCrossentropy(from_logits=True, n_threads=nt)
                _, grad = obj.loss_and_grad(y, x)
                per = fx.sparse_categorical_crossentropy(y, x, from_logits=True, n_threads=nt)
                assert_close(per, ref_per, dtype)
                assert_close(grad, ref_grad, dtype)
                unlabelled = np.arange(n_classes) != y[:, None]  # a labelled one: -1 / N
                masked = np.isneginf(x) & ~np.isnan(ref_per)[:, None] & unlabelled
                assert np.all(grad[masked] == 0)
                bits = _bits(per) + _bits(grad)
                first = bits if first is None else first
                assert bits == first, f"{isa}, {nt} threads differ"
    finally:
        fx.set_isa(before)
    assert np.isnan(per[n_rows // 2]) and np.all(np.isnan(grad[n_rows // 2]))
    assert np.all(np.isnan(per[::7]))
    if n_classes > 1:
        assert np.all(np.isposinf(per[5::35]))  # every 5th row not holding NaN: label masked


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_classes", [1, 3, 10, 31])
@pytest.mark.parametrize("options", [{}, {"label_smoothing": 0.1}, {"pos_weight": "random"}])
def test_short_binary_rows_match_oracle(n_classes, options, dtype, rng):
    """Binary rows shorter than 2 x 16 (one flat run of elements per block), with and without
    sample weights, against the oracle."""
    options = _resolve(options, rng, n_classes)
    for n_rows in (1, 33, 1500):
        y, x = _case("binary", rng, (n_rows, n_classes), dtype)
        _check_against_oracle("binary", y, x, options, dtype, n_threads=1)
        w = rng.uniform(0.0, 2.0, n_rows)
        _check_against_oracle("binary", y, x, options, dtype, sample_weight=w, n_threads=1)


def _all_isas():
    return fx.available_isas()


def _bits(a):
    a = np.ascontiguousarray(a)
    return a.view(np.uint8).tobytes() if isinstance(a, np.ndarray) else np.float64(a).tobytes()


# Every path on teams of 2, 3 and 4 threads at the kernels' own team size (at most one thread
# per TEAM_ELEMENTS = 65,536 elements): each shape has at least 4 x 65,536 elements and more
# blocks (or chunks) than 4.
TEAM_CASES = [
    ("sparse_categorical", (26_215, 10)),  # short rows: 32-row groups transposed
    ("sparse_categorical", (263, 1000)),  # long rows
    # rows of 17 to 31 and longer ones: exponential tails of 9 and 15 (full-width step) and 8
    # (half-width)
    ("sparse_categorical", (10_487, 25)),
    ("categorical", (5_579, 47)),
    ("categorical", (6_555, 40)),
    ("sparse_categorical", (2, SPLIT_WIDTH)),  # split rows: 10 chunks
    ("categorical", (52_429, 5)),
    ("categorical", (2, SPLIT_WIDTH)),
    ("binary", (87_382, 3)),  # short binary rows: flat runs of elements
    ("binary", (10_487, 25)),
    ("binary", (375, 700)),
    ("binary", (SPLIT_WIDTH,)),  # one split row: 5 chunks
    ("binary", (300_001, 1)),  # one-element rows: the sum taken by the flat span kernel
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind,shape", TEAM_CASES)
def test_bitwise_identical_across_threads_and_isas(kind, shape, dtype, rng):
    """Per-row losses, the summed loss (each block's sum taken as its rows are computed) and
    the gradients: the same bits on every instruction-set path for n_threads 1 to 4, each run
    on the team the rule gives (read back from the kernels)."""
    y, x = _case(kind, rng, shape, dtype)
    _, items = team_items(shape)
    assert items > 4 and x.size >= 4 * _kernels.TEAM_ELEMENTS
    before = fx.get_isa()
    results = []
    _kernels._team_stats()
    try:
        for isa in _all_isas():
            fx.set_isa(isa)
            for nt in (1, 2, 3, 4):
                per, grad = CLASSES[kind](from_logits=True, reduction="none",
                                          n_threads=nt).loss_and_grad(y, x)
                total, grad_sum = CLASSES[kind](from_logits=True, reduction="sum",
                                                n_threads=nt).loss_and_grad(y, x)
                teams_ran(team_size(nt, items, x.size), what=f"{isa}, {nt} threads")
                assert team_size(nt, items, x.size) == nt
                results.append(((isa, nt), _bits(per) + _bits(grad) + _bits(total)
                                + _bits(grad_sum)))
    finally:
        fx.set_isa(before)
    first = results[0][1]
    for key, bits in results[1:]:
        assert bits == first, f"{kind} {shape} {np.dtype(dtype).name}: {key} differs"


# ---- elementary functions -----------------------------------------------------------------


def _ulp_error(got, exact, dtype):
    """|got - exact| in units of the last place of exact rounded to dtype."""
    rounded = np.asarray(exact, dtype=dtype)
    ulp = np.spacing(np.abs(rounded)).astype(np.float64)
    return np.abs(np.asarray(got, np.float64) - exact) / ulp


@pytest.mark.parametrize("shift", [0.0, 3.7, -20.5, 1e4])
def test_expf_shifted_within_one_ulp(shift):
    m = np.float32(shift)
    x = (np.linspace(-110.0, 0.0, 400_001) + np.float64(m)).astype(np.float32)
    x = x[x <= m]
    got = _kernels.elementary("expf", x, float(m))
    exact = np.exp(x.astype(np.float64) - np.float64(m))  # exact shift in float64
    normal = exact >= np.finfo(np.float32).tiny
    assert _ulp_error(got[normal], exact[normal], np.float32).max() <= 1.0
    # subnormal results: rounded once (error at most one subnormal ulp), then 0
    tiny = ~normal
    assert np.abs(got[tiny] - exact[tiny]).max() <= np.float64(2.0**-149)
    special = np.array([-np.inf, np.nan, m, np.float32(m) - 200], dtype=np.float32)
    out = _kernels.elementary("expf", special, float(m))
    assert out[0] == 0.0 and np.isnan(out[1]) and out[2] == 1.0 and out[3] == 0.0


def test_expf_shift_is_exact():
    """exp(x - m) keeps full accuracy where x - m rounds in float32 (x tiny, m large)."""
    m = np.float32(30.000002)
    x = np.float32(1e-6) * np.arange(1, 1000, dtype=np.float32)
    got = _kernels.elementary("expf", x, float(m))
    exact = np.exp(x.astype(np.float64) - np.float64(m))
    assert _ulp_error(got, exact, np.float32).max() <= 1.0


def test_log1pf_and_reciprocal_within_four_ulp():
    """log1p(y) and 1 / (1 + y) share one division (fx_log1pf_recip): a few ulp of float."""
    y = np.linspace(0.0, 1.0, 400_001).astype(np.float32)[1:]
    y64 = y.astype(np.float64)
    assert _ulp_error(_kernels.elementary("log1pf", y), np.log1p(y64), np.float32).max() <= 4.0
    assert _ulp_error(_kernels.elementary("recipf", y), 1.0 / (1.0 + y64), np.float32).max() <= 3.0
    out = _kernels.elementary("log1pf", np.array([0.0, np.nan], dtype=np.float32))
    assert out[0] == 0.0 and np.isnan(out[1])


def test_double_elementary_functions(rng):
    x = -np.abs(rng.standard_normal(200_000)) * 30
    assert _ulp_error(_kernels.elementary("exp", x), np.exp(x), np.float64).max() <= 2.0
    y = rng.random(200_000)
    assert _ulp_error(_kernels.elementary("log1p", y), np.log1p(y), np.float64).max() <= 2.0
    p = np.exp(rng.uniform(-30, 30, 200_000))
    lp = np.log(p)
    nz = lp != 0
    assert _ulp_error(_kernels.elementary("log", p)[nz], lp[nz], np.float64).max() <= 2.0


def test_isa_paths_are_compiled_as_such():
    """show_config()'s instruction-set paths are what the extension's code contains: the build
    probe's level caps the dispatch, and the module's machine code has ymm (AVX2) and zmm
    (AVX-512) instructions when the build says it has those paths."""
    from fastxent import _kernels

    info = _kernels.isa_build()
    assert _kernels.cpu_isa() <= info["max_level"]
    assert len(fx.available_isas()) == _kernels.cpu_isa() + 1
    if info["max_level"] == 0:
        return
    objdump = shutil.which("objdump")
    if objdump is None:
        pytest.skip("objdump (binutils) is needed to read the extension's machine code")
    out = subprocess.run([objdump, "-d", "--no-show-raw-insn", _kernels.__file__],
                         capture_output=True, text=True, check=True).stdout
    counts = {reg: len(re.findall(rf"%{reg}\d", out)) for reg in ("ymm", "zmm")}
    # every kernel is compiled once per path: thousands of wide instructions, not a stray few
    assert counts["ymm"] > 1000, (info, counts)
    if info["max_level"] >= 2:
        assert counts["zmm"] > 1000, (info, counts)
