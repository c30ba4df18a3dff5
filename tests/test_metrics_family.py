"""Stateful metrics of the focal family (fastxent.metrics: KLDivergence, BinaryFocalCrossentropy,
CategoricalFocalCrossentropy, SparseCategoricalFocalCrossentropy,
CategoricalGeneralizedCrossEntropy) against the one-shot NumPy losses, tests/reference.py's
float64 oracles and Keras' KLDivergence metric; NumPy batches and Dask blocks; and the
cross-entropy metrics on float16 / bfloat16 Dask blocks."""

import math
import os
import pickle

import numpy as np
import pytest
import reference as R
from test_focal import CLASSES, OPTIONS, case

import fastxent as fx
import fastxent.metrics as M

os.environ.setdefault("KERAS_BACKEND", "numpy")

METRICS = {
    "binary_focal": M.BinaryFocalCrossentropy,
    "categorical_focal": M.CategoricalFocalCrossentropy,
    "sparse_focal": M.SparseCategoricalFocalCrossentropy,
    "kl": M.KLDivergence,
    "gce": M.CategoricalGeneralizedCrossEntropy,
}
SPARSE = ("sparse_focal", "gce")


def metric_options(kind):
    """Every option of a kind's metric switched on (metrics take no class_weight)."""
    opts = dict(OPTIONS[kind][1]) if kind != "kl" else {}
    opts.pop("class_weight", None)
    if kind in SPARSE:
        opts["ignore_class"] = -1
    return opts


def make_data(rng, kind, n, from_logits=True, dtype=np.float64):
    y, x = case(kind, rng, (n, 5), from_logits, dtype, options={"ignore_class": -1})
    return y, x


def feed(m, y, x, w, cuts):
    bounds = [0, *cuts, len(x)]
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        m.update_state(y[lo:hi], x[lo:hi], None if w is None else w[lo:hi])
    return m


def oracle_mean(kind, y, x, w, from_logits, opts):
    """sum_i w_i l_i / sum_i w_i over the samples that count (tests/reference.py)."""
    return R.family_loss_and_grad(kind, y, x, sample_weight=w, reduction="mean_with_sample_weight",
                                  from_logits=from_logits, **opts)[0]


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("from_logits", [True, False])
@pytest.mark.parametrize("kind", list(METRICS))
def test_equals_one_shot_loss_and_oracle(rng, kind, from_logits, weighted):
    opts = metric_options(kind)
    y, x = make_data(rng, kind, 200, from_logits)
    w = rng.uniform(0, 2, 200) if weighted else None
    m = feed(METRICS[kind](from_logits=from_logits, **opts), y, x, w, [1, 57, 58, 150])
    loss = CLASSES[kind](from_logits=from_logits, reduction="mean_with_sample_weight", **opts)
    assert m.result() == pytest.approx(loss(y, x, w), rel=1e-13)
    assert m.result() == pytest.approx(oracle_mean(kind, y, x, w, from_logits, opts), rel=1e-12)
    counted = np.ones(200, bool) if kind not in SPARSE else y != -1
    assert m.count == pytest.approx(np.sum(np.where(counted, 1.0 if w is None else w, 0.0)),
                                    rel=1e-14)


@pytest.mark.parametrize("kind", list(METRICS))
def test_float32_batches(rng, kind):
    opts = metric_options(kind)
    y, x = make_data(rng, kind, 300, True, np.float32)
    m = feed(METRICS[kind](from_logits=True, **opts), y, x, None, [100, 200])
    assert m.result() == pytest.approx(oracle_mean(kind, y, x, None, True, opts), rel=3e-6)


@pytest.mark.parametrize("weighted", [False, True])
def test_kl_divergence_matches_keras_metric(rng, weighted):
    keras = pytest.importorskip("keras")
    t = rng.dirichlet(np.ones(4), 90).astype(np.float32)
    t[:5] = 0.0  # Keras clips targets too: zero rows count, with a clipped log
    p = rng.dirichlet(np.ones(4), 90).astype(np.float32)
    w = rng.uniform(0, 2, 90).astype(np.float32) if weighted else None
    ours, theirs = M.KLDivergence(), keras.metrics.KLDivergence()
    assert ours.name == theirs.name == "kl_divergence"
    for lo, hi in [(0, 11), (11, 60), (60, 90)]:
        sw = None if w is None else w[lo:hi]
        ours.update_state(t[lo:hi], p[lo:hi], sw)
        theirs.update_state(t[lo:hi], p[lo:hi], sample_weight=sw)
    assert ours.result() == pytest.approx(float(theirs.result()), rel=2e-6)


def test_names_and_keras_example():
    assert [METRICS[k]().name for k in METRICS] == [
        "binary_focal_crossentropy", "categorical_focal_crossentropy",
        "sparse_categorical_focal_crossentropy", "kl_divergence",
        "categorical_generalized_cross_entropy"]
    m = M.KLDivergence()  # keras.metrics.KLDivergence's documented example
    m.update_state([[0, 1], [0, 0]], [[0.6, 0.4], [0.4, 0.6]])
    assert m.result() == pytest.approx(0.45814306, rel=1e-7)
    m.reset_state()
    m.update_state([[0, 1], [0, 0]], [[0.6, 0.4], [0.4, 0.6]], sample_weight=[1, 0])
    assert m.result() == pytest.approx(0.9162892, rel=1e-7)


@pytest.mark.parametrize("kind", SPARSE)
def test_ignored_rows_weigh_nothing_and_are_not_read(kind):
    m = METRICS[kind](from_logits=True, ignore_class=-1)
    m.update_state(np.full(4, -1), np.full((4, 3), np.nan))
    m.update_state(np.zeros(0, np.int64), np.zeros((0, 3)))
    assert (m.result(), m.count) == (0.0, 0.0)
    m.update_state([2, -1], np.array([[0.0, 0.0, 0.0], [np.nan, 1.0, 2.0]]))
    want = R.FAMILY_PER_SAMPLE[kind]([2], np.zeros((1, 3)), from_logits=True)[0]
    assert m.result() == pytest.approx(want, rel=1e-14) and m.count == 1.0


@pytest.mark.parametrize("kind", list(METRICS))
def test_empty_zero_weight_and_nan(rng, kind):
    m = METRICS[kind](from_logits=True)
    assert m.result() == 0.0
    y, x = make_data(rng, kind, 6)
    if kind in SPARSE:
        y = np.abs(y)
    m.update_state(y[:0], x[:0])
    m.update_state(y, x, sample_weight=np.zeros(6))
    assert (m.result(), m.count) == (0.0, 0.0)
    x[2, 1] = np.nan  # a NaN in a row that counts makes the mean NaN
    m.update_state(y, x)
    assert math.isnan(m.result()) and m.count == 6.0


@pytest.mark.parametrize("kind", list(METRICS))
def test_merge_pickle_and_config(rng, kind):
    opts = metric_options(kind)
    y, x = make_data(rng, kind, 90)
    w = rng.uniform(0, 2, 90)
    seq = feed(METRICS[kind](from_logits=True, **opts), y, x, w, [40])
    parts = [METRICS[kind](from_logits=True, **opts) for _ in range(2)]
    parts[0].update_state(y[:40], x[:40], w[:40])
    parts[1].update_state(y[40:], x[40:], w[40:])
    merged = METRICS[kind](from_logits=True, **opts)
    merged.merge_state(parts)
    assert (merged.total, merged.count) == (seq.total, seq.count)
    back = pickle.loads(pickle.dumps(seq))
    assert type(back) is type(seq) and back.get_config() == seq.get_config()
    assert back.result() == seq.result()
    assert type(seq).__module__ == "fastxent.metrics"
    cfg = seq.get_config()
    assert cfg["from_logits"] is True and all(cfg.get(k) == v for k, v in opts.items()
                                              if not isinstance(v, list))
    with pytest.raises(ValueError, match="from_logits"):
        merged.merge_state(METRICS[kind](from_logits=False, **opts))


def test_per_class_alpha_config_is_a_list():
    m = M.CategoricalFocalCrossentropy(alpha=np.array([0.5, 1.0, 2.0]))
    assert m.get_config()["alpha"] == [0.5, 1.0, 2.0]
    m.merge_state(M.CategoricalFocalCrossentropy(alpha=[0.5, 1.0, 2.0]))
    with pytest.raises(ValueError, match="alpha"):
        m.merge_state(M.CategoricalFocalCrossentropy(alpha=[0.5, 1.0, 3.0]))


def test_evaluate_streams_a_family_metric(rng):
    y, x = make_data(rng, "sparse_focal", 1000)
    m = M.SparseCategoricalFocalCrossentropy(from_logits=True, ignore_class=-1)
    got = M.evaluate(m, y, x, batch_rows=70, progress=False)
    want = fx.SparseCategoricalFocalCrossentropy(from_logits=True, ignore_class=-1)(y, x)
    assert got == pytest.approx(want, rel=1e-13)


def test_bad_arguments_and_dtypes():
    with pytest.raises(ValueError, match="gamma"):
        M.BinaryFocalCrossentropy(gamma=-1.0)
    with pytest.raises(ValueError, match="q"):
        M.CategoricalGeneralizedCrossEntropy(q=1.0)
    with pytest.raises(TypeError, match="from_logits"):
        M.KLDivergence(from_logits=1)
    with pytest.raises(TypeError, match="y_pred must have dtype float32 or float64, got float16; "
                                        "float16 and bfloat16 are read by the cross-entropy"):
        M.KLDivergence().update_state(np.full((2, 2), 0.5), np.full((2, 2), 0.5, np.float16))


# ------------------------------------------------------------------------------- Dask


@pytest.mark.parametrize("kind", list(METRICS))
def test_dask_blocks_equal_numpy_batches_bitwise(rng, kind):
    da = pytest.importorskip("dask.array")
    import dask

    opts = metric_options(kind)
    y, x = make_data(rng, kind, 500)
    w = rng.uniform(0, 2, 500)
    row_chunks = (120, 1, 239, 140)  # uneven, one block of one row
    expected = feed(METRICS[kind](from_logits=True, **opts), y, x, w, [120, 121, 360]).result()
    y_chunks = (row_chunks,) if y.ndim == 1 else (row_chunks, (5,))
    results = set()
    for workers in (1, 2, 4):
        with dask.config.set(scheduler="threads", num_workers=workers):
            m = METRICS[kind](from_logits=True, **opts)
            m.update_state(da.from_array(y, chunks=y_chunks),
                           da.from_array(x, chunks=(row_chunks, (5,))),
                           da.from_array(w, chunks=(row_chunks,)))
            results.add(m.result())
    assert results == {expected}


def test_dask_bad_label_names_its_position(rng):
    da = pytest.importorskip("dask.array")
    y = rng.integers(0, 5, 40)
    y[33] = 7
    m = M.SparseCategoricalFocalCrossentropy(from_logits=True)
    with pytest.raises(fx.LabelRangeError) as info:
        m.update_state(da.from_array(y, chunks=15), da.from_array(rng.normal(size=(40, 5)),
                                                                  chunks=(15, 5)))
    assert info.value.position == (33,) and m.count == 0.0


@pytest.mark.parametrize("kind", ["categorical", "sparse", "binary", "perplexity"])
def test_dask_low_precision_blocks_equal_numpy_batches(rng, kind):
    """float16 / bfloat16 y_pred in the cross-entropy metrics, as NumPy batches or Dask
    blocks: the same bits."""
    da = pytest.importorskip("dask.array")
    ml_dtypes = pytest.importorskip("ml_dtypes")
    import dask

    cls = {"categorical": M.CategoricalCrossentropy, "sparse": M.SparseCategoricalCrossentropy,
           "binary": M.BinaryCrossentropy, "perplexity": M.Perplexity}[kind]
    for dtype in (np.float16, ml_dtypes.bfloat16):
        x = rng.normal(size=(300, 6)).astype(dtype)
        if kind in ("sparse", "perplexity"):
            y = rng.integers(0, 6, 300)
        elif kind == "binary":
            y = (rng.random((300, 6)) > 0.5).astype(np.float32)
        else:
            y = rng.dirichlet(np.ones(6), 300).astype(np.float32)
        expected = feed(cls(from_logits=True), y, x, None, [100, 101]).result()
        with dask.config.set(scheduler="sync"):
            m = cls(from_logits=True)
            m.update_state(y, da.from_array(x, chunks=((100, 1, 199), (6,))))
        assert m.result() == expected
