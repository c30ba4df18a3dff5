"""One definition of the reduced sums outside the losses: the streaming metrics, nll_loss and
fastxent.metrics.log_loss sum as the losses do (docs/guarantees.md, "Streaming metrics").

For each: bit-for-bit equality with the matching loss and reduction where the two definitions
coincide, the same bits for n_threads 1, 2 and 4, and agreement with the float64 oracle of
tests/reference.py.  The data spans several of the kernels' blocks of rows, so a sum that
ignored the blocks (NumPy's pairwise sum, a plain loop) would show, and holds enough elements
(4 x 65,536) for n_threads 2 and 4 to run on teams of 2 and 4 threads.
"""

import math

import numpy as np
import pytest
import reference as R
from test_focal import CLASSES as FAMILY_LOSSES
from test_focal import case
from util import family_runs_kernels, team_size, teams_ran

import fastxent as fx
import fastxent.metrics as M
from fastxent import _kernels

THREADS = (1, 2, 4)
N, C = 8000, 33  # 9 blocks of rows (992 rows each for 33 classes), 264,000 elements


def test_data_spans_several_blocks_and_runs_on_teams():
    assert N > 8 * _kernels.rows_per_block(C)
    for nt in THREADS:
        assert team_size(nt, _kernels.n_blocks(N, C), N * C) == nt


# ------------------------------------------------------------------- data and oracles


def ce_data(rng, kind, dtype):
    """(y_true, logits, sample_weight) of a cross-entropy metric; sparse labels -1 on every
    5th row (ignored)."""
    x = (rng.standard_normal((N, C)) * 2).astype(dtype)
    if kind == "categorical":
        y = rng.dirichlet(np.ones(C), N).astype(dtype)
    elif kind == "binary":
        y = (rng.random((N, C)) < 0.4).astype(dtype)
    else:
        y = rng.integers(0, C, N)
        y[::5] = -1
    return y, x, rng.uniform(0, 2, N)


CE = {  # metric, loss with the metric's options, oracle kind and options
    "categorical": (lambda nt: M.CategoricalCrossentropy(from_logits=True, n_threads=nt),
                    lambda nt: fx.CategoricalCrossentropy(
                        from_logits=True, reduction="mean_with_sample_weight", n_threads=nt),
                    "categorical", {}),
    "sparse": (lambda nt: M.SparseCategoricalCrossentropy(from_logits=True, ignore_class=-1,
                                                          n_threads=nt),
               lambda nt: fx.SparseCategoricalCrossentropy(
                   from_logits=True, ignore_class=-1, reduction="mean_with_sample_weight",
                   n_threads=nt),
               "sparse_categorical", {"ignore_class": -1}),
    "binary": (lambda nt: M.BinaryCrossentropy(from_logits=True, label_smoothing=0.1,
                                               n_threads=nt),
               lambda nt: fx.BinaryCrossentropy(
                   from_logits=True, label_smoothing=0.1, reduction="mean_with_sample_weight",
                   n_threads=nt),
               "binary", {"label_smoothing": 0.1}),
}

FAMILY = {  # metric class and the options it takes (no class_weight: metrics have none)
    "binary_focal": (M.BinaryFocalCrossentropy, {"alpha": 0.3, "gamma": 1.5,
                                                 "apply_class_balancing": True}),
    "categorical_focal": (M.CategoricalFocalCrossentropy, {"gamma": 0.5}),
    "sparse_focal": (M.SparseCategoricalFocalCrossentropy, {"gamma": 1.0, "ignore_class": -1}),
    "kl": (M.KLDivergence, {}),
    "gce": (M.CategoricalGeneralizedCrossEntropy, {"q": 0.3, "ignore_class": -1}),
}


def neumaier(values):
    """Neumaier's compensated sum of finite values, in order (the metrics' accumulation)."""
    s = c = 0.0
    for x in values:
        t = s + x
        c += (s - t) + x if abs(s) >= abs(x) else (x - t) + s
        s = t
    return s + c


def rtol(dtype):
    return 1e-12 if dtype == np.float64 else 2e-6


# ----------------------------------------------------------------- metrics: one batch


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("kind", list(CE))
def test_cross_entropy_metric_is_the_loss_bits(rng, kind, weighted, dtype):
    make_metric, make_loss, oracle_kind, opts = CE[kind]
    y, x, w = ce_data(rng, kind, dtype)
    w = w if weighted else None
    results = {}
    _kernels._team_stats()
    for nt in THREADS:
        m = make_metric(nt)
        m.update_state(y, x, w)
        assert m.result() == make_loss(nt)(y, x, w)
        teams_ran(nt, what=f"n_threads={nt}")
        results[nt] = m.result()
    assert len(set(results.values())) == 1, results
    expected = R.reference_loss(oracle_kind, y, x, w, from_logits=True,
                                reduction="mean_with_sample_weight", **opts)
    assert results[1] == pytest.approx(expected, rel=rtol(dtype))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("from_logits", [True, False])
@pytest.mark.parametrize("kind", list(FAMILY))
def test_family_metric_is_the_loss_bits(rng, kind, from_logits, weighted, dtype):
    metric_cls, opts = FAMILY[kind]
    y, x = case(kind, rng, (N, C), from_logits, dtype, options=opts)
    w = rng.uniform(0, 2, N) if weighted else None
    results = {}
    _kernels._team_stats()
    for nt in THREADS:
        m = metric_cls(from_logits=from_logits, n_threads=nt, **opts)
        m.update_state(y, x, w)
        loss = FAMILY_LOSSES[kind](from_logits=from_logits, reduction="mean_with_sample_weight",
                                   n_threads=nt, **opts)
        assert m.result() == loss(y, x, w)
        teams_ran(nt if family_runs_kernels(kind, from_logits) else 1, what=f"n_threads={nt}")
        results[nt] = m.result()
    assert len(set(results.values())) == 1, results
    expected = R.family_loss(kind, y, x, w, reduction="mean_with_sample_weight",
                             from_logits=from_logits, **opts)
    assert results[1] == pytest.approx(expected, rel=rtol(dtype))


def test_perplexity_metric_is_the_one_shot_bits(rng):
    labels = rng.integers(0, C, (N // 10, 10))
    labels[:, -2:] = 0  # padding
    logits = rng.standard_normal((*labels.shape, C)) * 2
    w = rng.uniform(0.5, 2, labels.shape)
    results = set()
    _kernels._team_stats()
    for nt in THREADS:
        m = M.Perplexity(mask_token_id=0, n_threads=nt)
        m.update_state(labels, logits, w)
        assert m.result() == fx.perplexity(labels, logits, ignore_class=0, sample_weight=w,
                                           n_threads=nt)
        teams_ran(nt, what=f"n_threads={nt}")
        results.add(m.result())
    assert len(results) == 1
    mean = R.reference_loss("sparse_categorical", labels, logits, w, from_logits=True,
                            ignore_class=0, reduction="mean_with_sample_weight")
    assert m.result() == pytest.approx(math.exp(mean), rel=1e-12)
    # one exp for both: NumPy's and the C library's differ in the last bit on a few percent
    # of arguments, so 100 means of 100 prefixes would show two different ones
    for k in range(1, 101):
        one = M.Perplexity(mask_token_id=0)
        one.update_state(labels[:k], logits[:k], w[:k])
        assert one.result() == fx.perplexity(labels[:k], logits[:k], ignore_class=0,
                                             sample_weight=w[:k])
    # past float64's range both give inf
    big = np.array([[0.0, 1e6]])
    assert M.Perplexity()([0], big) == fx.perplexity([0], big) == math.inf


# ------------------------------------------------------- metrics: batches and Dask blocks


@pytest.mark.parametrize("kind", ["sparse", "binary"])
@pytest.mark.parametrize("cuts", [[700], [1, 999, 1000, 2500]])
def test_batches_are_the_compensated_sum_of_the_batch_sums(rng, kind, cuts):
    """The documented state: each batch's (sum, weight) of the loss, added by Neumaier's
    summation in update order; the result their quotient, for any thread count."""
    make_metric, make_loss, _, _ = CE[kind]
    y, x, w = ce_data(rng, kind, np.float64)
    bounds = [0, *cuts, N]
    parts = list(zip(bounds[:-1], bounds[1:], strict=True))
    sums, weights = [], []
    for lo, hi in parts:
        alone = make_metric(1)
        alone.update_state(y[lo:hi], x[lo:hi], w[lo:hi])
        sum_loss = fx.SparseCategoricalCrossentropy if kind == "sparse" else fx.BinaryCrossentropy
        opts = {"ignore_class": -1} if kind == "sparse" else {"label_smoothing": 0.1}
        assert alone.total == sum_loss(from_logits=True, reduction="sum", **opts)(
            y[lo:hi], x[lo:hi], w[lo:hi])
        sums.append(alone.total)
        weights.append(alone.count)
    for nt in THREADS:
        m = make_metric(nt)
        for lo, hi in parts:
            m.update_state(y[lo:hi], x[lo:hi], w[lo:hi])
        assert m.total == neumaier(sums) and m.count == neumaier(weights)
        assert m.result() == neumaier(sums) / neumaier(weights)
        rows = M.evaluate(make_metric(nt), y, x, sample_weight=w, batch_rows=700,
                          progress=False)
        assert rows == feed_result(make_metric(1), y, x, w, 700)
    whole = make_loss(1)(y, x, w)
    assert m.result() == pytest.approx(whole, rel=1e-13)


def feed_result(m, y, x, w, step):
    for lo in range(0, len(x), step):
        m.update_state(y[lo:lo + step], x[lo:lo + step], w[lo:lo + step])
    return m.result()


# ------------------------------------------------------------------------------ nll_loss


def nll_case(rng, shape, ignore_index, weighted):
    """(input, target, weight, sparse-loss logits, sparse-loss labels) such that the picked
    log-probabilities are minus the per-sample losses of sparse_categorical_crossentropy on
    the logits; powers-of-two class weights, so that weight x loss rounds as the kernel's."""
    n_classes = shape[1]
    z = rng.standard_normal(shape) * 2
    batch = shape[:1] + shape[2:]
    labels = rng.integers(0, n_classes, batch)
    target = np.where(rng.random(batch) < 0.2, ignore_index, labels)
    per_sample = fx.sparse_categorical_crossentropy(labels, z, from_logits=True, axis=1)
    x = rng.standard_normal(shape)
    xm = np.moveaxis(x, 1, -1)  # a view: writes land in x
    np.put_along_axis(xm, labels[..., None], -per_sample[..., None], axis=-1)
    weight = 2.0 ** rng.integers(-3, 4, n_classes) if weighted else None
    return x, target, weight, z


@pytest.mark.parametrize("shape", [(N, C), (N // 4, 7, 5), (2, 1000)])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("ignore_index", [-100, 3])
def test_nll_loss_is_the_sparse_loss_bits(rng, shape, weighted, ignore_index):
    x, target, weight, z = nll_case(rng, shape, ignore_index, weighted)
    for reduction, loss_reduction in (("sum", "sum"), ("mean", "mean_with_sample_weight")):
        loss = fx.SparseCategoricalCrossentropy(
            from_logits=True, axis=1, class_weight=weight, ignore_class=ignore_index,
            reduction=loss_reduction)
        got = fx.nll_loss(x, target, weight, ignore_index, reduction)
        assert got == loss(target, z)
        assert fx.nll_loss_and_grad(x, target, weight, ignore_index, reduction)[0] == got


def test_nll_loss_sums_by_the_blocks(rng):
    """Sums whose rounding depends on the order: the blocked sum, not NumPy's pairwise one."""
    x = np.zeros((N, C))
    target = rng.integers(0, C, N)
    picked = rng.uniform(0.5, 1.5, N)  # and 40 spikes of +-1e16 that swallow them
    spikes = rng.permutation(N)[:40]
    picked[spikes] *= np.repeat([1e16, -1e16], 20)
    x[np.arange(N), target] = picked
    expected = _kernels.weighted_total(np.ascontiguousarray(-picked), None, C)
    assert expected != float(np.sum(-picked))  # the data tells the two sums apart
    assert fx.nll_loss(x, target, reduction="sum") == expected
    assert fx.nll_loss(x, target, reduction="mean") == expected / N
    assert expected == pytest.approx(R.nll_loss(x, target, reduction="sum"), rel=1e-12)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("reduction", ["sum", "mean", "none"])
def test_nll_loss_against_the_oracle(rng, dtype, reduction):
    x = np.log(rng.dirichlet(np.ones(C), N)).astype(dtype)
    target = np.where(rng.random(N) < 0.2, -100, rng.integers(0, C, N))
    weight = rng.uniform(0.1, 3.0, C)
    got = fx.nll_loss(x, target, weight, reduction=reduction)
    expected = R.nll_loss(x, target, weight, reduction=reduction)
    np.testing.assert_allclose(got, expected, rtol=rtol(dtype), atol=0)
    assert np.isnan(fx.nll_loss(x, np.full(N, -100), weight, reduction="mean"))


# ------------------------------------------------------------------------------ log_loss


def dyadic_probabilities(rng, n, k):
    """Rows of multiples of 1 / 2**m (at least 1/512) that sum to exactly 1 in float64, so
    that neither the kernel's renormalization nor any clip changes them."""
    a = rng.integers(1, 16, (n, k - 1)).astype(np.float64)
    scale = 2.0 ** np.ceil(np.log2(a.sum(1, keepdims=True) + 1))
    p = np.empty((n, k))
    p[:, :-1] = a / scale
    p[:, -1] = 1.0 - p[:, :-1].sum(1)
    assert np.all(p.sum(1) == 1.0) and p.min() >= 1 / 1024
    return p


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("k", [3, C])
def test_log_loss_is_the_categorical_loss_bits(rng, k, normalize, weighted):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    pytest.importorskip("sklearn")
    n = 8 * _kernels.rows_per_block(k) + 17 if k == C else 90_000  # 9 blocks
    p = dyadic_probabilities(rng, n, k)
    y = rng.integers(0, k, n)
    y[:k] = np.arange(k)
    w = rng.uniform(0, 3, n) if weighted else None
    loss = fx.CategoricalCrossentropy(
        reduction="mean_with_sample_weight" if normalize else "sum")
    results = set()
    _kernels._team_stats()
    for nt in THREADS:  # log_loss takes no n_threads: OpenMP's limit sets its team
        with threadpoolctl.threadpool_limits(nt, user_api="openmp"):
            got = M.log_loss(y, p, normalize=normalize, sample_weight=w)
            assert got == loss(np.eye(k)[y], p, w)
            teams_ran(nt, what=f"OpenMP limit {nt}")
            results.add(got)
    assert len(results) == 1
    assert got == pytest.approx(R.log_loss(y, p, normalize, w), rel=1e-12)


def test_log_loss_zero_total_weight_is_numpy_s_error(rng):
    pytest.importorskip("sklearn")
    p = dyadic_probabilities(rng, 4, 2)
    with pytest.raises(ZeroDivisionError, match="Weights sum to zero"):
        M.log_loss([0, 1, 0, 1], p, sample_weight=[1.0, -1.0, 2.0, -2.0])
    assert M.log_loss([0, 1, 0, 1], p, sample_weight=[1.0, -1.0, 2.0, -2.0],
                      normalize=False) == pytest.approx(
        R.log_loss([0, 1, 0, 1], p, False, [1.0, -1.0, 2.0, -2.0]), rel=1e-12)


# ------------------------------------------------------------ the reduced loss: one rule


@pytest.mark.parametrize("reduction", ["sum", "sum_over_batch_size", "mean_with_sample_weight"])
def test_reduced_loss_is_one_rule_on_both_paths(rng, reduction):
    """The sum, the mean, and 0.0 for a mean over nothing (every label ignored, or zero
    weights; a NaN row included): the compiled fast path (a contiguous call) and the general
    path (a Fortran-ordered y_pred, reduced by ``_reduction.reduce_total``) give the same bits,
    those of the rule applied to the oracle's weighted sum and denominator."""
    from fastxent import _reduction

    n, c = 32, 10
    x = rng.standard_normal((n, c)).astype(np.float32)
    x[3, 4] = np.nan
    y = rng.integers(0, c, n)
    sw = rng.uniform(0.5, 2.0, n)
    loss = fx.SparseCategoricalCrossentropy(from_logits=True, ignore_class=-1,
                                            reduction=reduction)
    cases = {"some": (y, sw), "all ignored": (np.full(n, -1), sw),
             "zero weights": (y, np.zeros(n))}
    for what, (labels, weights) in cases.items():
        with np.errstate(invalid="ignore"):
            fast = loss(labels, x, weights)
            general = loss(labels, np.asfortranarray(x), weights)
            per = R.reference_loss_and_grad("sparse_categorical", labels, x, from_logits=True,
                                            ignore_class=-1, reduction="none")[0]
        kept = labels != -1
        numerator = float(np.sum(np.where(kept, per * weights, 0.0)))
        denominator = {"sum": 1.0, "sum_over_batch_size": float(kept.sum()),
                       "mean_with_sample_weight": float(weights[kept].sum())}[reduction]
        assert math.isnan(fast) == math.isnan(general), what
        if not math.isnan(fast):
            assert np.float64(fast).tobytes() == np.float64(general).tobytes(), what
        if reduction == "sum":
            want = numerator
        else:
            want = numerator / denominator if denominator != 0.0 else 0.0
        if math.isnan(want):
            assert math.isnan(fast), what
        else:
            assert fast == pytest.approx(want, rel=1e-6), what
        if denominator == 0.0 and reduction != "sum":  # a mean over nothing
            assert fast == 0.0 and general == 0.0, what
    # the rule itself, on numbers
    p = _reduction.plan(reduction, 4, row_length=c, weights=np.array([1.0, 2.0, 0.0, 1.0]))
    assert _reduction.reduce_total(6.0, p) == (6.0 if reduction == "sum" else 6.0
                                                / p.denominator)
    empty = _reduction.plan(reduction, 4, row_length=c, labels=np.full(4, -1), ignore_class=-1)
    got = _reduction.reduce_total(math.nan, empty)
    if reduction == "sum":
        assert math.isnan(got)
    else:
        assert empty.denominator == 0.0 and got == 0.0
