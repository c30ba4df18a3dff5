"""Bitwise determinism: the same bits for every thread count, every repeated call and every
instruction-set path the CPU supports.

The kernels split the rows into fixed-size blocks that do not depend on the thread count, sum
each row in fixed lanes combined in a fixed order, and reduce the losses block by block (each
block in fixed lanes, the blocks added in block order); -ffp-contract=off keeps the AVX2 /
AVX-512 paths on the same bits as the baseline path.  So every result here is compared with
``==`` on the raw bits, not with a tolerance.  NaN is compared NaN-aware: the NaN positions
must agree and every other bit pattern must be identical.

The shapes are chosen so that the work is cut into several blocks and so that rows are
longer than, shorter than and not a multiple of the 16 accumulation lanes.  Every n_threads
here really runs on a team of that many threads (of fewer only when a call has fewer blocks):
the team size's minimum of 65,536 elements per thread, which would keep most of these inputs
on one or two threads, is lifted for this module (``util.team_per_item``, a private hook that
changes the team size and nothing else), and each test reads from the kernels the largest
team its calls ran on (``util.teams_ran``).
"""

import numpy as np
import pytest
from util import (
    CLASSES,
    FUNCTIONS,
    family_runs_kernels,
    logits,
    low_precision_dtypes,
    probabilities,
    team_items,
    team_per_item,
    teams_ran,
)

import fastxent as fx

N_THREADS = (1, 2, 3, 4)
REDUCTIONS = ("none", "sum", "sum_over_batch_size", "mean_with_sample_weight")
DTYPES = (np.float32, np.float64, *low_precision_dtypes())  # float16 / bfloat16: float32 inside
# (rows, classes), one per kernel path (README "Kernels"), each of four blocks of rows (the
# last one partial), so that 2, 3 and 4 threads each get blocks: rows of 257 (127-row blocks,
# ragged lanes); one row per block; very short rows (softmax: groups of 32 rows transposed;
# binary: flat chunks); rows of 262,144 elements or more, cut into 65,536-element chunks that
# the threads share and merge in chunk order (10 chunks; where rows are not split, with the
# Hessian, softmax probabilities or the binary focal loss, 2 blocks of one row).
SHAPES = ((400, 257), (4, 40_003), (35_000, 3), (2, 300_007))


@pytest.fixture(autouse=True)
def _teams():
    """Every call of this module on a team of min(n_threads, its blocks or chunks) threads."""
    with team_per_item():
        yield


def check_teams(shape, n_threads, what):
    """The calls since the last check ran on teams of n_threads, or of as many threads as
    they had items (shape's blocks: one call on the blocks of split rows had fewer)."""
    blocks, most = team_items(shape)
    teams_ran(min(n_threads, blocks), min(n_threads, most), what)


def bits(value):
    """(NaN mask, raw bits with NaNs zeroed) of a float, 0-d or n-d array."""
    a = np.ascontiguousarray(np.asarray(value))
    assert a.dtype in DTYPES, a.dtype
    nan = np.isnan(a)
    raw = a.view({2: np.uint16, 4: np.uint32, 8: np.uint64}[a.dtype.itemsize]).copy()
    raw[nan] = 0
    return nan, raw


def assert_same_bits(actual, expected, what):
    if isinstance(expected, tuple):
        assert isinstance(actual, tuple) and len(actual) == len(expected), what
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_same_bits(a, e, f"{what}[{i}]")
        return
    if isinstance(expected, float):
        assert isinstance(actual, float), f"{what}: {type(actual)}"
        actual, expected = np.float64(actual), np.float64(expected)
    a_nan, a_raw = bits(actual)
    e_nan, e_raw = bits(expected)
    assert np.asarray(actual).dtype == np.asarray(expected).dtype, what
    assert a_nan.shape == e_nan.shape, what
    assert np.array_equal(a_nan, e_nan), f"{what}: NaN positions differ"
    if not np.array_equal(a_raw, e_raw):
        n_diff = int(np.count_nonzero(a_raw != e_raw))
        raise AssertionError(f"{what}: {n_diff} value(s) differ bitwise")


def option_sets(kind, from_logits, n_classes, rng):
    """Every option of ``kind``: the defaults, everything switched on, and the odd ones."""
    cw = rng.uniform(0.2, 3.0, n_classes)
    if kind == "categorical":
        everything = {"label_smoothing": 0.1, "class_weight": cw, "epsilon": 1e-4}
        if from_logits:
            everything["z_loss"] = 1e-3
        return [{}, everything]
    if kind == "sparse_categorical":
        everything = {"label_smoothing": 0.1, "class_weight": cw, "ignore_class": 1,
                      "epsilon": 1e-4}
        if from_logits:
            everything["z_loss"] = 1e-3
        return [{}, everything, {"ignore_class": -100}]
    return [
        {},
        {"label_smoothing": 0.1, "pos_weight": cw, "epsilon": 1e-4},
        {"pos_weight": 2.5},
    ]


def make_inputs(kind, from_logits, dtype, shape, rng):
    """Inputs with a few NaN / -inf / +-1e30 entries (their rows must be deterministic too)."""
    n, c = shape
    if from_logits:
        x = logits(rng, shape, dtype, scale=3.0)
    else:
        x = probabilities(rng, shape, dtype=dtype)
    flat = x.reshape(-1)
    special = rng.choice(flat.size, size=min(12, flat.size // 4), replace=False)
    values = [np.nan, -np.inf, 1e30, -1e30] if from_logits else [np.nan, 0.0, 1.0, 1e-9]
    flat[special] = np.resize(np.array(values, dtype=dtype), special.size)
    if kind == "sparse_categorical":
        y = rng.integers(0, c, size=n)
        y[rng.random(n) < 0.1] = -100
        y[rng.random(n) < 0.1] = 1
    elif kind == "categorical":
        y = rng.dirichlet(np.ones(c), size=n).astype(dtype)
    else:
        y = rng.uniform(0.0, 1.0, size=shape).astype(dtype)
    sw = rng.uniform(0.0, 2.0, size=n)
    return y, x, sw


def compute_all(kind, from_logits, opts, y, x, sw, n_threads):
    """Every entry point of ``kind`` with these options, as a dict of results."""
    out = {}
    if kind == "sparse_categorical":  # -100 marks the entries to ignore, when ignoring
        y = np.where(y == -100, opts.get("ignore_class", 0), y)
    for reduction in REDUCTIONS:
        loss = CLASSES[kind](from_logits=from_logits, reduction=reduction, n_threads=n_threads,
                             **opts)
        out[f"loss_and_grad/{reduction}"] = loss.loss_and_grad(y, x, sw)
        if reduction in ("none", "sum"):  # the loss-only kernel path (no gradient buffer)
            out[f"call/{reduction}"] = loss(y, x, sw if reduction == "sum" else None)
        if reduction == "sum_over_batch_size" and from_logits:
            out["gradient_hessian"] = tuple(loss.gradient_hessian(y, x, sw))
            if kind != "binary":
                out["return_lse"] = loss.loss_and_grad(y, x, return_lse=True)
    out["function"] = FUNCTIONS[kind](y, x, from_logits=from_logits, n_threads=n_threads, **opts)
    return out


def test_bit_comparison_detects_one_ulp():
    """The comparison used here is exact: one ulp anywhere, or a moved NaN, fails it."""
    a = np.linspace(-3, 3, 50, dtype=np.float32)
    assert_same_bits(a.copy(), a, "same")
    b = a.copy()
    b[17] = np.nextafter(b[17], np.float32(np.inf))
    with pytest.raises(AssertionError, match="bitwise"):
        assert_same_bits(b, a, "one ulp")
    c = a.copy()
    c[3] = np.nan
    with pytest.raises(AssertionError, match="NaN"):
        assert_same_bits(c, a, "nan")
    with pytest.raises(AssertionError, match="bitwise"):
        assert_same_bits(0.1 + 0.2, 0.3, "float")
    assert_same_bits(float("nan"), float("nan"), "nan float")


@pytest.fixture
def restore_isa():
    yield
    fx.set_isa("auto")


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("from_logits", [True, False], ids=["logits", "probs"])
@pytest.mark.parametrize("kind", list(CLASSES))
def test_bitwise_identical_threads_repeats_isas(kind, from_logits, dtype, shape, rng,
                                                restore_isa):
    """Same bits for n_threads 1..4, for a repeated call, and on every ISA path."""
    y, x, sw = make_inputs(kind, from_logits, dtype, shape, rng)
    isas = fx.available_isas()
    assert isas[0] == "baseline"
    for opts in option_sets(kind, from_logits, shape[1], rng):
        fx.set_isa("baseline")
        expected = compute_all(kind, from_logits, opts, y, x, sw, n_threads=1)
        for isa in isas:
            fx.set_isa(isa)
            assert fx.get_isa() == isa
            for n_threads in N_THREADS:
                for repeat in range(2 if n_threads == 2 else 1):
                    got = compute_all(kind, from_logits, opts, y, x, sw, n_threads)
                    check_teams(shape, n_threads, f"isa={isa} n_threads={n_threads}")
                    assert got.keys() == expected.keys()
                    for key, value in expected.items():
                        assert_same_bits(
                            got[key], value,
                            f"{key} isa={isa} n_threads={n_threads} repeat={repeat} "
                            f"opts={sorted(opts)}",
                        )


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_one_element_binary_rows_fused_sum(dtype, rng, restore_isa):
    """Binary rows of one element from logits, reduced without sample weights, with the
    gradient: each block's sum is taken by the flat span kernel as it computes the gradient,
    with no per-row losses (float32 / float64; the low-precision runner otherwise).  The same
    bits for n_threads 1..4, a repeated call and every ISA path, with targets of shape (N, 1)
    and (N,); 300,001 rows are ten blocks, a team of 4 even at the default minimum of elements
    per thread."""
    n = 300_001
    x = logits(rng, (n, 1), dtype, scale=3.0)
    y = rng.uniform(size=(n, 1)).astype(dtype)
    x[:4, 0] = [np.inf, -np.inf, 0.0, -0.0]  # the exact limits (loss 0) and zero logits
    y[:4, 0] = [1.0, 0.0, -0.0, 1.0]

    def compute(n_threads):
        out = {}
        for reduction in REDUCTIONS:
            loss = fx.BinaryCrossentropy(from_logits=True, reduction=reduction,
                                         n_threads=n_threads)
            out[reduction] = loss.loss_and_grad(y, x)
            out[f"{reduction}, targets (N,)"] = loss.loss_and_grad(y[:, 0], x)
        return out

    fx.set_isa("baseline")
    expected = compute(1)
    assert np.isfinite(expected["sum"][0])  # a NaN total would hide the sum's bits
    for isa in fx.available_isas():
        fx.set_isa(isa)
        for n_threads in (*N_THREADS, 2):
            got = compute(n_threads)
            check_teams((n, 1), n_threads, f"isa={isa} n_threads={n_threads}")
            for key, value in expected.items():
                assert_same_bits(got[key], value, f"{key} isa={isa} n_threads={n_threads}")


@pytest.mark.parametrize("kind", list(CLASSES))
def test_bitwise_identical_nd_and_noncontiguous(kind, rng, restore_isa):
    """N-d input with the class axis in the middle (copied to rows) and a strided view: 3600
    rows of 37 classes, five blocks."""
    base = logits(rng, (120, 37, 60), np.float32)
    x = base[:, :, ::2]  # strided along the class axis: copied once
    axis = 1
    cls = CLASSES[kind]
    if kind == "sparse_categorical":
        y = rng.integers(0, x.shape[axis], size=(120, 30))
    elif kind == "categorical":
        y = np.moveaxis(rng.dirichlet(np.ones(x.shape[axis]), size=(120, 30)), -1, axis)
        y = y.astype(np.float32)
    else:
        y = rng.uniform(size=x.shape).astype(np.float32)
    sw = rng.uniform(size=120)
    results = []
    for isa in fx.available_isas():
        fx.set_isa(isa)
        for n_threads in N_THREADS:
            loss = cls(from_logits=True, axis=axis, reduction="sum", n_threads=n_threads)
            results.append((loss.loss_and_grad(y, x, sw), FUNCTIONS[kind](
                y, x, from_logits=True, axis=axis, n_threads=n_threads)))
            check_teams((120 * 30, 37), n_threads, f"isa={isa} n_threads={n_threads}")
    for got in results[1:]:
        assert_same_bits(got[0], results[0][0], "loss_and_grad")
        assert_same_bits(got[1], results[0][1], "function")


def test_set_isa_contract(restore_isa):
    """set_isa accepts every available path and 'auto', and refuses the rest by name."""
    isas = fx.available_isas()
    for isa in isas:
        assert fx.set_isa(isa) == isa
        assert fx.get_isa() == isa
    assert fx.set_isa("auto") == isas[-1]
    with pytest.raises(ValueError, match="isa"):
        fx.set_isa("sse9")
    for isa in ("baseline", "avx2", "avx512"):
        if isa not in isas:
            with pytest.raises(ValueError, match="not supported"):
                fx.set_isa(isa)
    assert fx.get_isa() == isas[-1]


@pytest.mark.parametrize("dtype", (np.float32, np.float64), ids=lambda d: np.dtype(d).name)
def test_linear_cross_entropy_and_perplexity_bitwise_identical(dtype, rng):
    """The fused linear cross-entropy (logits never formed) and perplexity: the same bits for
    n_threads 1..4 and a repeated call, for every reduction and option, on vocabulary blocks
    (400 x 256 logits: four blocks of rows, then a block of the last 50 rows) and on the
    whole vocabulary per block of rows (the default: 450 x 1000 logits, 15 blocks)."""
    n, d, vocab = 450, 48, 1000
    hidden = logits(rng, (3, n // 3, d), dtype, scale=0.5)
    weight = logits(rng, (vocab, d), dtype, scale=0.5)
    bias = logits(rng, (vocab,), dtype)
    labels = rng.integers(0, vocab, size=(3, n // 3))
    labels[rng.random(labels.shape) < 0.1] = -100
    sw = rng.uniform(0.0, 2.0, size=labels.shape)
    opts = {"ignore_class": -100, "label_smoothing": 0.1, "z_loss": 1e-3,
            "sample_weight": sw}

    def compute(n_threads):
        out = {}
        for reduction in REDUCTIONS:
            out[reduction] = fx.linear_cross_entropy_and_grad(
                hidden, weight, labels, bias, reduction=reduction, n_threads=n_threads,
                chunk_size=(400, 256), **opts)
            out[f"loss/{reduction}"] = fx.linear_cross_entropy(
                hidden, weight, labels, bias, reduction=reduction, n_threads=n_threads,
                chunk_size=(400, 256), **opts)
        check_teams((400, 256), n_threads, f"vocabulary blocks, n_threads={n_threads}")
        out["whole vocabulary"] = fx.linear_cross_entropy_and_grad(
            hidden, weight, labels, bias, n_threads=n_threads, **opts)
        out["perplexity"] = fx.perplexity(labels, hidden @ weight.T + bias, ignore_class=-100,
                                          sample_weight=sw, n_threads=n_threads)
        check_teams((n, vocab), n_threads, f"whole vocabulary, n_threads={n_threads}")
        return out

    expected = compute(1)
    for n_threads in (*N_THREADS, 2):  # 2 twice: a repeated call
        got = compute(n_threads)
        for key, value in expected.items():
            assert_same_bits(got[key], value, f"{key} n_threads={n_threads}")


FAMILY = {
    "binary_focal": (fx.BinaryFocalCrossentropy,
                     {"apply_class_balancing": True, "alpha": 0.3, "gamma": 1.5,
                      "label_smoothing": 0.1}),
    "categorical_focal": (fx.CategoricalFocalCrossentropy,
                          {"alpha": 0.5, "gamma": 2.5, "label_smoothing": 0.1}),
    "sparse_focal": (fx.SparseCategoricalFocalCrossentropy,
                     {"alpha": 0.5, "gamma": 0.5, "ignore_class": -100}),
    "kl": (fx.KLDivergence, {}),
    "gce": (fx.CategoricalGeneralizedCrossEntropy, {"q": 0.3, "ignore_class": -100}),
}


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", (np.float32, np.float64), ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("from_logits", [True, False], ids=["logits", "probs"])
@pytest.mark.parametrize("kind", list(FAMILY))
def test_family_bitwise_identical_threads_isas(kind, from_logits, dtype, shape, rng,
                                               restore_isa):
    """Focal, KL and GCE losses: the same bits for n_threads 1..4, a repeated call and every
    ISA path (every reduction, the Hessian from logits)."""
    cls, opts = FAMILY[kind]
    base = "binary" if kind == "binary_focal" else (
        "sparse_categorical" if kind in ("sparse_focal", "gce") else "categorical")
    y, x, sw = make_inputs(base, from_logits, dtype, shape, rng)
    if base == "sparse_categorical" and "ignore_class" not in opts:
        y = np.where(y == -100, 0, y)

    def compute(n_threads):
        out = {}
        for reduction in REDUCTIONS:
            loss = cls(from_logits=from_logits, reduction=reduction, n_threads=n_threads,
                       **opts)
            out[reduction] = loss.loss_and_grad(y, x, sw)
            if reduction == "sum" and from_logits:
                out["hessian"] = tuple(loss.gradient_hessian(y, x, sw))
        return out

    fx.set_isa("baseline")
    expected = compute(1)
    for isa in fx.available_isas():
        fx.set_isa(isa)
        for n_threads in (*N_THREADS, 2):
            got = compute(n_threads)
            if family_runs_kernels(kind, from_logits):
                check_teams(shape, n_threads, f"isa={isa} n_threads={n_threads}")
            else:  # computed in NumPy
                teams_ran(1, what="NumPy")
            for key, value in expected.items():
                assert_same_bits(got[key], value, f"{key} isa={isa} n_threads={n_threads}")
