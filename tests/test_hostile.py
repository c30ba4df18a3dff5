"""Hostile input: hypothesis drives the whole public loss API with random and broken inputs.

Every case is built valid first (random shapes with 0, 1 and large class counts and empty
batches, any class axis, C / Fortran / reversed / read-only / list / misaligned layouts, every
label and target dtype that is allowed, NaN / +-inf / +-1e30 / negative / > 1 values placed
anywhere in y_pred and the targets, every option and reduction, sample weights of every
accepted shape,
``grad_out`` and ``inplace``), then zero, one or two *corruptions* are applied, each of which
is tagged with the argument(s) it breaks: every other NumPy dtype for y_pred, y_true and
sample_weight (bool, integers, float16, longdouble, complex, object, str, bytes, datetime),
negative / out-of-range / fractional / NaN / huge labels, mismatched shapes, bad sample_weight
shapes, bad axis values and bad parameters.

The outcome must be exactly one of

* no corruption: a result equal to the oracle (``tests/reference.py``, float64), rounded to
  the output dtype where the output is an array, with the right type, dtype and shape, and
  the inputs left unmodified (``inplace=True``: y_pred holds the gradient);
* a corruption: a ``TypeError`` or ``ValueError`` whose message names one of the corrupted
  arguments;

never a crash, a hang (faulthandler aborts the run after 15 minutes with every thread's
stack) or a silently wrong number.

At least 5,000 examples run in CI: the settings profile ``fastxent-hostile`` (registered
here, derandomized so CI is reproducible, no deadline, no example database) is the parent of
each ``@given`` test, whose ``max_examples`` sum to 5,000.  ``FASTXENT_HOSTILE_SCALE=10`` runs
ten times as many (with a fresh random seed when ``FASTXENT_HOSTILE_RANDOM=1``).
"""

from __future__ import annotations

import faulthandler
import os
import warnings
from dataclasses import dataclass, field

import hypothesis.strategies as st
import numpy as np
import pytest
import reference as R
from hypothesis import HealthCheck, given, settings
from util import CLASSES, FUNCTIONS, low_precision_dtypes, result_dtype, unaligned

import fastxent as fx

settings.register_profile(
    "fastxent-hostile",
    derandomize=os.environ.get("FASTXENT_HOSTILE_RANDOM", "") != "1",
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.filter_too_much],
)
PROFILE = settings.get_profile("fastxent-hostile")
SCALE = float(os.environ.get("FASTXENT_HOSTILE_SCALE", "1"))


def examples(n: int) -> int:
    return max(1, int(n * SCALE))


KINDS = tuple(CLASSES)
ENTRIES = ("function", "call", "loss_and_grad", "gradient", "gradient_hessian")
REDUCTIONS = ("none", "sum", "sum_over_batch_size", "mean", "mean_with_sample_weight")
RTOL = {np.dtype(np.float32): 2e-5, np.dtype(np.float64): 1e-11}
# float16 / bfloat16 gradients: rtol about 2**-10 and 2**-7, applied as assert_matches does
# (of each value, plus of the array's largest magnitude); tests/test_lowp.py checks one ulp
LOWP = low_precision_dtypes()
RTOL.update({d: (1e-3 if d == np.float16 else 8e-3) for d in LOWP})

INT_DTYPES = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")
# every dtype that is not float32/float64/float16/bfloat16: refused for y_pred
BAD_PRED_DTYPES = ("bool", *INT_DTYPES, "longdouble", "complex64", "complex128",
                   "object", "U8", "S8", "datetime64[s]", "timedelta64[ms]")
# refused for targets / labels / weights (bool and integers are accepted there)
NON_NUMERIC_DTYPES = ("complex64", "complex128", "object", "U8", "S8", "datetime64[s]",
                      "timedelta64[ms]")
LOGIT_SPECIALS = (np.nan, np.inf, -np.inf, 1e30, -1e30, 0.0, -0.0, 1e-30, 88.0, -88.0,
                  1e4, -1e4)
PROB_SPECIALS = (np.nan, np.inf, -np.inf, 0.0, 1.0, 1e-30, 1e-8, -0.5, 2.0, 1e30)
# Targets: NaN, negative, > 1 and large values.  Infinite targets are left out: the kernel
# computes sum_k t_k (m - x_k) + T log(s), which gives NaN where -sum_k t_k log p_k is +inf
# (both non-finite).  Targets of 1e30 are left out too: the softmax gradient p T - t then
# cancels terms of size 1e30, so its rounding error is relative to 1e30, not to the result,
# and no two correct summation orders agree.
TARGET_SPECIALS = (np.nan, -1.0, 2.0, 0.0, 1.0, 0.5, 1e3, -1e3)
NAMES = ("y_true", "y_pred", "sample_weight", "axis", "label_smoothing", "epsilon", "z_loss",
         "class_weight", "pos_weight", "ignore_class", "reduction", "n_threads", "grad_out",
         "inplace", "from_logits")


@pytest.fixture(scope="module", autouse=True)
def abort_on_hang():
    """A hang anywhere in this module dumps every thread's stack and ends the run."""
    faulthandler.dump_traceback_later(15 * 60, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


# ----------------------------------------------------------------------------- cases


@dataclass
class Case:
    kind: str
    entry: str
    dtype: np.dtype
    pred_shape: tuple
    axis: int  # the valid class axis the case was built with (corruptions change opts["axis"])
    from_logits: bool
    x: object  # y_pred as passed
    y: object  # y_true as passed
    opts: dict  # options (constructor / keyword arguments), n_threads included
    reduction: str | None = None  # classes only
    sample_weight: object = None
    grad_out: object = None
    inplace: bool = False
    oracle_y: object = None  # y_true as the oracle needs it (squeezed, converted)
    oracle_sw: object = None
    bad: set = field(default_factory=set)  # names of the corrupted arguments
    notes: list = field(default_factory=list)


def _batch_shape(shape, axis):
    axis = axis % len(shape)
    return shape[:axis] + shape[axis + 1:]


@st.composite
def shapes(draw):
    """(y_pred shape, axis): 1-3 dims, batch dims 0..4, class counts 1, 2, 3, 7, 17, 33, 1000,
    4099 and 262,147 (every kernel path: short rows, one row per thread, a row split into
    chunks that the threads share)."""
    ndim = draw(st.integers(1, 3))
    n_classes = draw(st.sampled_from((1, 1, 2, 2, 3, 7, 17, 33, 1000, 4099, 262_147)))
    batch = [draw(st.sampled_from((0, 1, 1, 2, 3, 4))) for _ in range(ndim - 1)]
    if n_classes >= 1000:
        batch = [min(b, 2 if n_classes < 100_000 else 1) for b in batch]
    axis = draw(st.integers(-ndim, ndim - 1))
    shape = list(batch)
    shape.insert(axis % ndim, n_classes)
    return tuple(shape), axis


def _place_specials(draw, rng, a, specials):
    """Put 0-3 special values at random positions (or fill a whole row) of float array ``a``."""
    flat = a.reshape(-1)
    if flat.size == 0:
        return
    mode = draw(st.sampled_from(("none", "none", "few", "few", "many", "row")))
    if mode == "none":
        return
    if mode == "row":  # a whole row along the last axis, e.g. all -inf
        value = draw(st.sampled_from(specials))
        a[(0,) * (a.ndim - 1)] = value
        return
    k = draw(st.integers(1, 3)) if mode == "few" else max(1, flat.size // 3)
    idx = rng.integers(0, flat.size, size=k)
    values = [draw(st.sampled_from(specials)) for _ in range(min(k, 3))]
    flat[idx] = np.resize(np.array(values, dtype=a.dtype), k)


def _layout(draw, x):
    """y_pred in one of the accepted layouts (all mean the same values)."""
    how = draw(st.sampled_from(("c", "c", "c", "fortran", "reversed", "readonly", "list",
                                "unaligned")))
    if how == "unaligned":
        return unaligned(x), how
    if how == "fortran":
        return np.asfortranarray(x), how
    if how == "reversed" and x.ndim >= 1:
        rev = x[::-1].copy()[::-1]  # a view with a negative stride
        return rev, how
    if how == "readonly":
        x = x.copy()
        x.flags.writeable = False
        return x, how
    if how == "list" and x.dtype == np.float64 and 0 < x.size <= 64:
        return x.tolist(), how
    return x, "c"


@st.composite
def valid_cases(draw, entries=ENTRIES, dtypes=(np.float32, np.float64)):
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    kind = draw(st.sampled_from(KINDS))
    entry = draw(st.sampled_from(entries))
    dtype = np.dtype(draw(st.sampled_from(dtypes)))
    # float16 / bfloat16 cases are drawn in float32, then rounded (inf beyond float16's range)
    draw_dtype = np.dtype(np.float32) if dtype in LOWP else dtype
    shape, axis = draw(shapes())
    from_logits = True if entry == "gradient_hessian" else draw(st.booleans())
    n_classes = shape[axis]
    batch = _batch_shape(shape, axis)

    # ---- y_pred
    if from_logits:
        x = (rng.standard_normal(shape) * draw(st.sampled_from((1.0, 5.0, 50.0)))).astype(
            draw_dtype)
        specials = LOGIT_SPECIALS
        if kind == "binary":  # see test_binary_infinite_logits_give_the_limits
            # (nor the values that round to +-inf in dtype: 1e30 in float16)
            with np.errstate(over="ignore"):
                specials = tuple(v for v in specials
                                 if not np.isinf(np.asarray(v, draw_dtype).astype(dtype)))
        _place_specials(draw, rng, x, specials)
    else:
        x = rng.uniform(0.0, 1.0, size=shape)
        if draw(st.booleans()) and x.size:
            x = x / x.sum(axis=axis, keepdims=True)
        x = x.astype(draw_dtype)
        _place_specials(draw, rng, x, PROB_SPECIALS)
    with np.errstate(over="ignore"):
        x = x.astype(dtype)

    # ---- options
    opts = {"from_logits": from_logits, "axis": axis}
    if draw(st.booleans()):
        opts["label_smoothing"] = draw(st.sampled_from((0.0, 0.1, 0.5, 1.0)))
    if draw(st.booleans()):
        opts["epsilon"] = draw(st.sampled_from((1e-7, 1e-3, 0.25, 0.49)))
    if draw(st.booleans()):
        opts["n_threads"] = draw(st.sampled_from((None, 1, 2, 3, -1)))
    if kind != "binary":
        if from_logits and draw(st.booleans()):
            opts["z_loss"] = draw(st.sampled_from((0.0, 1e-4, 1.0)))
        if draw(st.booleans()):
            w = rng.uniform(0.0, 3.0, n_classes)
            w[rng.random(n_classes) < 0.2] = 0.0
            opts["class_weight"] = w.tolist() if draw(st.booleans()) else w
    elif draw(st.booleans()):
        opts["pos_weight"] = draw(st.sampled_from((
            float(rng.uniform(0, 4)), rng.uniform(0, 4, n_classes), 1, np.float32(2.5))))

    # ---- y_true
    oracle_y = None
    if kind == "sparse_categorical":
        if draw(st.booleans()):
            opts["ignore_class"] = draw(st.sampled_from((-100, -1, 0, n_classes - 1,
                                                          n_classes + 5, np.int16(-100))))
        label_dtype = np.dtype(draw(st.sampled_from((*INT_DTYPES, "float16", "float32",
                                                     "float64"))))
        hi = n_classes
        if label_dtype.kind in "iu":
            hi = min(hi, int(np.iinfo(label_dtype).max) + 1)
        if label_dtype == np.float16:
            hi = min(hi, 2049)
        labels = rng.integers(0, hi, size=batch)
        ign = opts.get("ignore_class")
        if ign is not None and labels.size:
            representable = (label_dtype.kind != "u" or ign >= 0) and (
                label_dtype.kind == "f" or np.iinfo(label_dtype).min <= ign
                <= np.iinfo(label_dtype).max)
            if representable:
                labels[rng.random(batch) < 0.3] = ign
        y = labels.astype(label_dtype)
        oracle_y = y
        if draw(st.integers(0, 5)) == 0:  # Keras' (batch, 1) labels
            y = np.expand_dims(y, axis % len(shape))
        elif draw(st.integers(0, 5)) == 0 and 0 < y.size <= 64:
            y = y.tolist()  # Python ints (or floats)
    else:
        if kind == "categorical":
            tshape = batch + (n_classes,)
            if draw(st.booleans()):  # one-hot
                t = np.zeros(tshape)
                t.reshape(-1, n_classes)[np.arange(t.size // n_classes),
                                         rng.integers(0, n_classes, t.size // n_classes)] = 1
            else:
                t = rng.dirichlet(np.ones(n_classes), size=batch) if n_classes else np.zeros(
                    tshape)
            t = np.moveaxis(t.reshape(tshape), -1, axis % len(shape))
        else:
            t = rng.uniform(size=shape) if draw(st.booleans()) else rng.integers(0, 2, shape)
        t_dtype = np.dtype(draw(st.sampled_from(("float64", "float32", "float16", "bool",
                                                 "int8", "uint8", "int64"))))
        t = np.asarray(t, dtype=np.float64)
        if t_dtype.kind == "f":
            _place_specials(draw, rng, t, TARGET_SPECIALS)
            if t_dtype == np.float16:
                t[np.abs(t) > 6e4] = 2.0  # keep float16 finite where it was finite
        with np.errstate(invalid="ignore"):
            y = t.astype(t_dtype) if t_dtype.kind == "f" else (t > 0.5).astype(t_dtype)
        # documented: targets are converted to y_pred's dtype (float32 ones are read as they
        # are beside float16 / bfloat16)
        oracle_y = y if (dtype in LOWP and y.dtype == np.float32) else y.astype(dtype)
        if kind == "binary" and len(shape) == 2 and shape[-1] == 1 and draw(st.booleans()):
            # Keras' squeeze_or_expand_to_same_rank expands a (batch,) y_true for (batch, 1);
            # at higher ranks it squeezes y_pred instead (tests/test_keras_parity.py)
            y = y[..., 0]

    case = Case(kind, entry, dtype, shape, axis, from_logits, x, y, opts, oracle_y=oracle_y)

    # ---- class entry points: reduction, sample weight, grad_out / inplace
    if entry != "function":
        case.reduction = draw(st.sampled_from(REDUCTIONS))
        sw_kind = draw(st.sampled_from(("none", "none", "scalar", "full", "leading", "ones",
                                        "trailing1", "list")))
        sw = None
        if sw_kind == "scalar":
            sw = draw(st.sampled_from((0.5, 2, 0.0, np.float32(3.0))))
        elif sw_kind in ("full", "list", "trailing1"):
            sw = rng.uniform(0.0, 2.0, size=batch)
            if sw.size and draw(st.booleans()):
                sw[rng.random(batch) < 0.3] = 0.0
            if sw_kind == "trailing1":
                sw = sw[..., None]
            elif sw_kind == "list" and 0 < sw.size <= 64:
                sw = sw.tolist()
        elif sw_kind == "leading" and len(batch) >= 1:
            sw = rng.uniform(0.0, 2.0, size=batch[: draw(st.integers(1, len(batch)))])
        elif sw_kind == "ones" and len(batch) >= 1:
            sw = rng.uniform(0.0, 2.0, size=tuple(b if rng.random() < 0.5 else 1
                                                    for b in batch))
        case.sample_weight = sw
        if sw is not None:
            osw = np.asarray(sw, dtype=np.float64)
            if osw.ndim == len(batch) + 1 and osw.shape[-1] == 1:
                osw = osw[..., 0]
            case.oracle_sw = osw
        if entry == "loss_and_grad":
            out_kind = draw(st.sampled_from(("none", "none", "grad_out", "inplace")))
            moved_shape = np.moveaxis(np.empty(shape, dtype=bool), axis, -1).shape
            if out_kind == "grad_out":
                case.grad_out = np.moveaxis(np.full(moved_shape, 7.0, dtype=dtype), -1, axis)
            elif out_kind == "inplace":
                case.inplace = True
                case.x = np.moveaxis(
                    np.ascontiguousarray(np.moveaxis(np.asarray(x), axis, -1)), -1, axis)
    if not case.inplace:
        case.x, layout = _layout(draw, x)
        case.notes.append(f"layout={layout}")
    return case


# ------------------------------------------------------------------------ corruptions


def _bad_dtype_array(a, dtype):
    a = np.asarray(a)
    if dtype in ("U8", "S8"):
        return a.astype(np.float64).astype(str).astype(dtype)
    if dtype == "object":
        return a.astype(object)
    if dtype.startswith(("datetime", "timedelta")):
        return np.zeros(a.shape, dtype=dtype)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.nan_to_num(a.astype(np.float64)).astype(dtype)


def _bigger(shape, draw):
    """``shape`` with one dimension grown by 2 (never broadcastable, never squeezable)."""
    if not shape:
        return (2,)
    d = draw(st.integers(0, len(shape) - 1))
    return shape[:d] + (shape[d] + 2,) + shape[d + 1:]


@st.composite
def corruptions(draw, case: Case):
    """Apply one corruption to ``case`` (in place) and return its name."""
    kind, batch = case.kind, _batch_shape(case.pred_shape, case.axis)
    n_classes = case.pred_shape[case.axis]
    options = ["y_pred_dtype", "y_pred_0d", "y_pred_empty_classes", "y_true_dtype",
               "y_true_shape", "axis_range", "axis_type", "label_smoothing", "epsilon",
               "n_threads", "from_logits"]
    if kind == "sparse_categorical":
        options += ["labels_out_of_range", "labels_fractional", "labels_bool", "ignore_class"]
    if kind != "binary":
        options += ["class_weight", "z_loss"]
    else:
        options += ["pos_weight"]
    if case.entry != "function":
        options += ["reduction", "sample_weight_shape", "sample_weight_dtype"]
    if case.entry == "loss_and_grad":
        options += ["grad_out"]
    if case.entry == "gradient_hessian":
        options += ["hessian_from_probs"]
    what = draw(st.sampled_from(options))

    if what == "y_pred_dtype":
        case.x = _bad_dtype_array(case.x, draw(st.sampled_from(BAD_PRED_DTYPES)))
        case.bad.add("y_pred")
    elif what == "y_pred_0d":
        case.x = np.asarray(np.ravel(case.x)[:1].sum() if np.size(case.x) else 0.5,
                            dtype=case.dtype)
        case.opts["axis"] = 0
        case.bad.update({"y_pred", "axis"})
    elif what == "y_pred_empty_classes":
        shape = list(case.pred_shape)
        shape[case.axis] = 0
        case.x = np.zeros(shape, dtype=case.dtype)
        case.bad.update({"y_pred"})
        if kind != "sparse_categorical":
            case.bad.add("y_true")  # its shape no longer matches either
    elif what == "y_true_dtype":
        dt = draw(st.sampled_from(NON_NUMERIC_DTYPES + (("bool",) if kind ==
                                                        "sparse_categorical" else ())))
        case.y = _bad_dtype_array(case.y, dt)
        case.bad.add("y_true")
    elif what == "y_true_shape":
        shape = np.shape(case.y)
        if draw(st.booleans()):
            new_shape = _bigger(shape, draw)
        else:
            new_shape = shape + (3,)  # an extra dimension of size 3
        case.y = np.zeros(new_shape, dtype=np.asarray(case.y).dtype)
        case.bad.add("y_true")
    elif what == "axis_range":
        ndim = len(case.pred_shape)
        case.opts["axis"] = draw(st.sampled_from((ndim, -ndim - 1, 100, -100)))
        case.bad.add("axis")
    elif what == "axis_type":
        case.opts["axis"] = draw(st.sampled_from((1.0, "0", None, True, [0])))
        case.bad.add("axis")
    elif what == "label_smoothing":
        case.opts["label_smoothing"] = draw(st.sampled_from(
            (-0.1, 1.5, np.nan, np.inf, "0.1", None, True, 1 + 1e-9)))
        case.bad.add("label_smoothing")
    elif what == "epsilon":
        case.opts["epsilon"] = draw(st.sampled_from((0.0, 0.5, -1e-7, 1.0, np.nan, "1e-7",
                                                     None)))
        case.bad.add("epsilon")
    elif what == "n_threads":
        case.opts["n_threads"] = draw(st.sampled_from((0, -2, 1.5, "2", True, -1000)))
        case.bad.add("n_threads")
    elif what == "from_logits":  # truthy / falsy non-bools are not guessed at
        case.opts["from_logits"] = draw(st.sampled_from(("False", "True", 1, 0, None, 1.0,
                                                         np.int8(1), [True])))
        case.bad.add("from_logits")
    elif what == "labels_out_of_range":
        labels = np.array(R.sparse_labels_to_int(case.oracle_y), dtype=np.int64)
        if labels.size == 0:
            labels = np.zeros(batch, dtype=np.int64)
        if labels.size == 0:  # an empty batch has no label to break: break the shape
            case.y = np.zeros(_bigger(batch, draw), dtype=np.int64)
        else:
            ign = case.opts.get("ignore_class")
            bad_value = draw(st.sampled_from((n_classes, n_classes + 1, -1, -7, 2**40,
                                              -(2**40))))
            if bad_value == ign:
                bad_value = n_classes + 3 if ign != n_classes + 3 else -2
            flat = labels.reshape(-1)
            flat[draw(st.integers(0, flat.size - 1))] = bad_value
            dt = draw(st.sampled_from(("int64", "float64", "int32", "uint64")))
            if dt == "uint64":
                if bad_value < 0:
                    dt = "int64"
                labels = labels.astype(dt)
            elif dt == "int32" and abs(bad_value) < 2**31:
                labels = labels.astype(dt)
            elif dt == "float64":
                labels = labels.astype(dt)
            case.y = labels
        case.bad.add("y_true")
    elif what == "labels_fractional":
        labels = np.asarray(case.oracle_y, dtype=np.float64).copy()
        if labels.size == 0:
            case.y = np.zeros(_bigger(batch, draw))
        else:
            flat = labels.reshape(-1)
            flat[draw(st.integers(0, flat.size - 1))] = draw(st.sampled_from(
                (0.5, 1.25, np.nan, np.inf, -np.inf, 1e300, -0.5)))
            with np.errstate(over="ignore"):  # 1e300 as float32 is inf: still not a label
                case.y = labels.astype(draw(st.sampled_from(("float64", "float32"))))
        case.bad.add("y_true")
    elif what == "labels_bool":
        case.y = np.zeros(batch, dtype=bool)
        case.bad.add("y_true")
    elif what == "ignore_class":
        case.opts["ignore_class"] = draw(st.sampled_from((1.5, "0", True, [0], np.float64(1))))
        case.bad.add("ignore_class")
    elif what == "class_weight":
        bad_w = draw(st.sampled_from(("short", "long", "negative", "nan", "inf", "2d", "str",
                                      "complex")))
        w = np.ones(n_classes)
        if bad_w == "short":
            w = np.ones(n_classes + 1)[:-2] if n_classes > 1 else np.ones(2)
        elif bad_w == "long":
            w = np.ones(n_classes + 1)
        elif bad_w == "negative":
            w[-1] = -0.5
        elif bad_w == "nan":
            w[0] = np.nan
        elif bad_w == "inf":
            w[0] = np.inf
        elif bad_w == "2d":
            w = np.ones((n_classes, 2))
        elif bad_w == "str":
            w = np.array(["1"] * n_classes)
        else:
            w = w.astype(complex)
        case.opts["class_weight"] = w
        case.bad.add("class_weight")
    elif what == "pos_weight":
        bad_w = draw(st.sampled_from(("long", "negative", "nan", "2d", "str", "inf_scalar",
                                      "neg_scalar", "complex", "complex_scalar", "bool")))
        width = n_classes
        # "long" and "2d" broadcast against no y_pred here: a batch axis is at most 4 long
        # and y_pred has at most 3 dimensions (pos_weight broadcasts by PyTorch's rule)
        w = {"long": np.ones(width + 5), "negative": -np.ones(width),
             "nan": np.full(width, np.nan), "2d": np.ones((2, 2, 2, width)),
             "str": np.array(["1"] * width), "inf_scalar": np.inf,
             "neg_scalar": -1.0, "complex": np.ones(width, complex), "complex_scalar": 2 + 0j,
             "bool": np.ones(width, bool)}[bad_w]
        case.opts["pos_weight"] = w
        case.bad.add("pos_weight")
    elif what == "z_loss":
        if case.from_logits:
            case.opts["z_loss"] = draw(st.sampled_from((-1.0, np.nan, np.inf, "0.1", None)))
        else:
            case.opts["z_loss"] = 0.5  # z_loss needs from_logits=True
            case.bad.add("from_logits")
        case.bad.add("z_loss")
    elif what == "reduction":
        case.reduction = draw(st.sampled_from(("avg", "", "SUM", 3, "sum_over_batch", "auto")))
        case.bad.add("reduction")
    elif what == "sample_weight_shape":
        if draw(st.booleans()) or not batch:
            shape = _bigger(batch, draw)
        else:
            shape = batch + (3,)
        case.sample_weight = np.ones(shape)
        case.bad.add("sample_weight")
    elif what == "sample_weight_dtype":
        case.sample_weight = _bad_dtype_array(np.ones(batch),
                                              draw(st.sampled_from(NON_NUMERIC_DTYPES)))
        case.bad.add("sample_weight")
    elif what == "grad_out":
        problem = draw(st.sampled_from(("shape", "dtype", "readonly", "overlap", "noncontig",
                                        "list", "both")))
        pred_shape = case.pred_shape
        moved = np.moveaxis(np.zeros(pred_shape, dtype=case.dtype), case.axis, -1)
        good = np.moveaxis(np.ascontiguousarray(moved), -1, case.axis)
        case.inplace = False
        if problem == "shape":
            case.grad_out = np.empty(_bigger(pred_shape, draw), dtype=case.dtype)
        elif problem == "dtype":
            other = np.float64 if case.dtype == np.float32 else np.float32
            case.grad_out = good.astype(other)
        elif problem == "readonly":
            good.flags.writeable = False
            case.grad_out = good
        elif problem == "overlap" and 0 in pred_shape:  # empty arrays cannot overlap
            case.grad_out = np.empty(_bigger(pred_shape, draw), dtype=case.dtype)
        elif problem == "overlap":
            if not isinstance(case.x, np.ndarray) or not case.x.flags.writeable:
                case.x = np.array(case.x, dtype=case.dtype)
            case.grad_out = case.x
        elif problem == "noncontig":
            big = np.empty(moved.shape[:-1] + (2 * moved.shape[-1] + 1,), dtype=case.dtype)
            case.grad_out = np.moveaxis(big[..., ::2][..., : moved.shape[-1]], -1, case.axis)
            if case.grad_out.shape != pred_shape or np.moveaxis(
                    case.grad_out, case.axis, -1).flags.c_contiguous:
                case.grad_out = np.empty(_bigger(pred_shape, draw), dtype=case.dtype)
        elif problem == "list":
            case.grad_out = good.tolist()
        else:  # grad_out and inplace together
            case.grad_out = good
            case.inplace = True
            if not isinstance(case.x, np.ndarray) or not case.x.flags.writeable:
                case.x = np.array(case.x, dtype=case.dtype)
            case.bad.add("inplace")
        case.bad.add("grad_out")
    elif what == "hessian_from_probs":
        case.from_logits = case.opts["from_logits"] = False
        case.opts.pop("z_loss", None)
        case.bad.add("from_logits")
    return what


# ------------------------------------------------------------------------- running


def run(case: Case):
    """Call the library for ``case``; returns what it returned."""
    opts = dict(case.opts)
    if case.entry == "function":
        return FUNCTIONS[case.kind](case.y, case.x, **opts)
    obj = CLASSES[case.kind](reduction=case.reduction, **opts)
    if case.entry == "call":
        return obj(case.y, case.x, case.sample_weight)
    if case.entry == "loss_and_grad":
        kw = {}
        if case.grad_out is not None:
            kw["grad_out"] = case.grad_out
        if case.inplace:
            kw["inplace"] = True
        return obj.loss_and_grad(case.y, case.x, case.sample_weight, **kw)
    if case.entry == "gradient":
        return obj.gradient(case.y, case.x, case.sample_weight)
    return obj.gradient_hessian(case.y, case.x, case.sample_weight)


def oracle(case: Case):
    """(loss, grad) from the float64 oracle for a valid case."""
    # in y_pred's own dtype: the oracle rounds the probability clip's bounds to it (float32,
    # the dtype computed in, for float16 / bfloat16: the oracle sees their float32 values)
    x = np.asarray(case.x) if not case.inplace else case.x_before
    oracle_y = case.oracle_y
    if case.dtype in LOWP:
        x = x.astype(np.float32)
        if case.kind != "sparse_categorical":
            oracle_y = np.asarray(oracle_y).astype(np.float32)
    opts = {k: v for k, v in case.opts.items() if k != "n_threads"}
    with np.errstate(all="ignore"):
        if case.entry == "function":
            return R.per_sample(case.kind, oracle_y, x, **opts), None
        return R.reference_loss_and_grad(case.kind, oracle_y, x, case.oracle_sw,
                                         reduction=case.reduction, **opts)


def _as_output(expected, dtype):
    """The oracle's float64 array rounded to the output dtype (overflow gives inf)."""
    with np.errstate(over="ignore", invalid="ignore"):
        return np.asarray(expected, dtype=np.float64).astype(dtype)


def assert_matches(actual, expected, dtype, what):
    """Equal up to the dtype's rounding: NaN where NaN, the same infinities, and finite
    values within rtol of the value itself or, for values far below the array's scale, of
    that scale (a gradient's near-zero entries carry the absolute error of its big ones)."""
    rtol = RTOL[np.dtype(dtype)]
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    assert a.shape == e.shape, f"{what}: shape {a.shape} != {e.shape}"
    nan_a, nan_e = np.isnan(a), np.isnan(e)
    assert np.array_equal(nan_a, nan_e), (
        f"{what}: NaN at {np.argwhere(nan_a != nan_e)[:3].tolist()}: got {a[nan_a != nan_e][:3]}"
        f" expected {e[nan_a != nan_e][:3]}")
    inf_e = np.isinf(e)
    assert np.array_equal(a[inf_e], e[inf_e]) and not np.isinf(a[~inf_e]).any(), (
        f"{what}: infinities differ: got {a[np.isinf(a) | inf_e][:4]} expected "
        f"{e[np.isinf(a) | inf_e][:4]}")
    fin = np.isfinite(e)
    if not fin.any():
        return
    scale = max(1.0, float(np.max(np.abs(e[fin]))))
    # subnormals and values near the rounding boundary: an absolute floor too
    atol = rtol * scale + {"float64": 1e-300, "float16": 6e-8}.get(np.dtype(dtype).name, 1e-37)
    err = np.abs(a[fin] - e[fin])
    ok = err <= rtol * np.abs(e[fin]) + atol
    if not ok.all():
        i = int(np.argmin(ok))
        raise AssertionError(
            f"{what}: {int((~ok).sum())} value(s) differ beyond rtol={rtol}; first: got "
            f"{a[fin][i]!r} expected {e[fin][i]!r}")


def _digest(a):
    if a is None or isinstance(a, (int, float, str)):
        return repr(a)
    arr = np.asarray(a)
    if arr.dtype.kind == "O":
        return repr(arr.tolist())
    return (arr.shape, arr.dtype.str, np.ascontiguousarray(arr).tobytes())


def check(case: Case):
    """Run ``case`` and check the outcome: oracle result or a named TypeError/ValueError."""
    case.x_before = np.array(case.x) if case.inplace else None
    before = [_digest(a) for a in (case.x, case.y, case.sample_weight)]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # float32 overflow casts
            warnings.simplefilter("ignore", SyntaxWarning)  # Keras' one-class warning
            result = run(case)
    except (TypeError, ValueError) as exc:
        msg = str(exc)
        assert case.bad, f"valid case raised {type(exc).__name__}: {msg}\n{describe(case)}"
        assert any(name in msg for name in case.bad), (
            f"{type(exc).__name__} message does not name any of {sorted(case.bad)}: {msg!r}\n"
            f"{describe(case)}")
        return "raised"
    assert not case.bad, (
        f"corrupted {sorted(case.bad)} but no error; returned {result!r:.200}\n{describe(case)}")

    after = [_digest(a) for a in (case.x, case.y, case.sample_weight)]
    assert after[1:] == before[1:], "y_true or sample_weight was modified"
    if not case.inplace:
        assert after[0] == before[0], "y_pred was modified"

    loss_exp, grad_exp = oracle(case)
    dtype = case.dtype
    ldtype = result_dtype(dtype)  # per-sample losses: float32 for float16 / bfloat16
    out_shape = _batch_shape(case.pred_shape, case.axis)
    if case.entry == "function":
        assert isinstance(result, np.ndarray) and result.dtype == ldtype, type(result)
        assert result.shape == out_shape
        assert_matches(result, _as_output(loss_exp, ldtype), ldtype, "per-sample loss")
        return "ok"
    if case.entry in ("call", "loss_and_grad"):
        loss = result if case.entry == "call" else result[0]
        if case.reduction == "none":
            assert isinstance(loss, np.ndarray) and loss.dtype == ldtype
            assert loss.shape == out_shape
            assert_matches(loss, _as_output(loss_exp, ldtype), ldtype, "loss (none)")
        else:
            assert type(loss) is float, type(loss)
            assert_matches(loss, loss_exp, ldtype, f"loss ({case.reduction})")
    if case.entry == "call":
        return "ok"
    if case.entry == "loss_and_grad":
        grad = result[1]
        if case.grad_out is not None:
            assert grad is case.grad_out
        if case.inplace:
            assert grad is case.x
    elif case.entry == "gradient":
        grad = result
    else:
        grad, hess = result
        assert isinstance(hess, np.ndarray) and hess.shape == case.pred_shape
        assert hess.dtype == dtype
    assert isinstance(grad, np.ndarray) and grad.dtype == dtype
    assert grad.shape == case.pred_shape
    assert_matches(grad, _as_output(grad_exp, dtype), dtype, "gradient")
    return "ok"


def describe(case: Case) -> str:
    def short(a):
        if isinstance(a, np.ndarray):
            return f"ndarray{a.shape} {a.dtype} {np.array2string(a.reshape(-1)[:8])}"
        return repr(a)[:120]

    opts = {k: short(v) for k, v in case.opts.items()}
    return (f"kind={case.kind} entry={case.entry} dtype={case.dtype} shape={case.pred_shape} "
            f"axis={case.axis!r} reduction={case.reduction!r} opts={opts} "
            f"x={short(case.x)} y={short(case.y)} sw={short(case.sample_weight)} "
            f"grad_out={short(case.grad_out)} inplace={case.inplace} bad={sorted(case.bad)} "
            f"notes={case.notes}")


# --------------------------------------------------------------------------- tests
# max_examples: 2,000 + 2,000 + 1,000 = 5,000 in CI, and 600 + 300 of float16 / bfloat16.


@settings(PROFILE, max_examples=examples(2000))
@given(case=valid_cases())
def test_valid_hostile_values_match_oracle(case):
    """Valid inputs full of NaN / inf / extreme values: the oracle's numbers, bit for bit
    up to rounding, with the right types, shapes and untouched inputs."""
    assert check(case) == "ok"


@settings(PROFILE, max_examples=examples(2000))
@given(data=st.data())
def test_one_corruption_raises_named_error(data):
    case = data.draw(valid_cases())
    case.notes.append(data.draw(corruptions(case)))
    assert check(case) == "raised"


@settings(PROFILE, max_examples=examples(600))
@given(case=valid_cases(dtypes=LOWP))
def test_valid_low_precision_match_oracle(case):
    """float16 / bfloat16 y_pred: the float64 oracle on their float32 values.  The gradient,
    in y_pred's dtype, against the oracle's rounded to it as assert_matches checks: within
    rtol 1e-3 (float16) or 8e-3 (bfloat16) of each value, plus rtol times the array's largest
    magnitude (at least 1) and a subnormal floor; the losses (per-sample ones in float32)
    within float32's rtol, 2e-5."""
    assert check(case) == "ok"


@settings(PROFILE, max_examples=examples(300))
@given(data=st.data())
def test_one_corruption_low_precision_raises_named_error(data):
    case = data.draw(valid_cases(dtypes=LOWP))
    case.notes.append(data.draw(corruptions(case)))
    assert check(case) == "raised"


@settings(PROFILE, max_examples=examples(1000))
@given(data=st.data())
def test_zero_to_two_corruptions(data):
    case = data.draw(valid_cases())
    for _ in range(data.draw(st.integers(0, 2))):
        case.notes.append(data.draw(corruptions(case)))
    check(case)


def test_checker_is_not_blind():
    """The outcome check rejects a wrong number, an unnamed error and a silent success."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3))
    case = Case("sparse_categorical", "call", np.dtype(np.float64), (4, 3), -1, True, x,
                np.array([0, 1, 2, 0]), {"from_logits": True, "axis": -1},
                reduction="sum", oracle_y=np.array([0, 1, 2, 1]))  # oracle sees other labels
    with pytest.raises(AssertionError, match="differ"):
        check(case)
    case.oracle_y = case.y
    assert check(case) == "ok"
    case.bad.add("sample_weight")  # claims a corruption that is not there
    with pytest.raises(AssertionError, match="no error"):
        check(case)
    case.bad = {"class_weight"}
    case.opts["label_smoothing"] = 2.0  # raises, but names label_smoothing
    with pytest.raises(AssertionError, match="does not name"):
        check(case)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_binary_infinite_logits_give_the_limits(dtype):
    """Binary cross-entropy from +-inf logits: the exact limits, not NaN.

    sigmoid(+inf) = 1 and sigmoid(-inf) = 0 exactly, so the elementwise loss
    -(pw z log s + (1 - z) log(1 - s)) is 0 when the infinite log is multiplied by an exact 0
    (x = +inf with z = 1; x = -inf with z = 0 -- the same masking rule as a -inf softmax
    logit) and +inf otherwise; the gradient s (1 + (pw - 1) z) - pw z is 1 - z at +inf and
    -pw z at -inf.  (torch.binary_cross_entropy_with_logits and tests/reference.py give NaN
    for the 0 * inf cases; that is why the hypothesis cases above leave infinite binary logits
    out.)  Values computed by hand, one element per row.
    """
    pw = 2.0
    x = np.array([[np.inf], [-np.inf], [np.inf], [-np.inf], [0.0], [np.nan]], dtype=dtype)
    z = np.array([[1.0], [0.0], [0.25], [0.25], [1.0], [0.5]], dtype=dtype)
    loss = fx.BinaryCrossentropy(from_logits=True, pos_weight=pw, reduction="none")
    value, grad = loss.loss_and_grad(z, x)
    expected_loss = np.array([0.0, 0.0, np.inf, np.inf, pw * np.log(2.0), np.nan])
    expected_grad = np.array([[0.0], [0.0], [0.75], [-0.5], [0.5 * (1 + (pw - 1)) - pw],
                              [np.nan]])
    assert_matches(value, expected_loss.astype(dtype), dtype, "loss")
    assert_matches(grad, expected_grad.astype(dtype), dtype, "grad")


# ------------------------------------------------- focal, KL divergence, generalized CE

FAMILY_CLASSES = {
    "binary_focal": fx.BinaryFocalCrossentropy,
    "categorical_focal": fx.CategoricalFocalCrossentropy,
    "sparse_focal": fx.SparseCategoricalFocalCrossentropy,
    "kl": fx.KLDivergence,
    "gce": fx.CategoricalGeneralizedCrossEntropy,
}
FAMILY_FUNCTIONS = {
    "binary_focal": fx.binary_focal_crossentropy,
    "categorical_focal": fx.categorical_focal_crossentropy,
    "sparse_focal": fx.sparse_categorical_focal_crossentropy,
    "kl": fx.kl_divergence,
    "gce": fx.categorical_generalized_cross_entropy,
}
# corruptions of the options: (option, bad value) -> the error must name the option
FAMILY_BAD_OPTIONS = {
    "binary_focal": [("gamma", -1.0), ("gamma", np.nan), ("gamma", "2"), ("alpha", 1.5),
                     ("alpha", None), ("apply_class_balancing", 1), ("label_smoothing", 2.0)],
    "categorical_focal": [("gamma", -0.5), ("alpha", -1.0), ("alpha", [1.0, np.inf]),
                          ("alpha", "x")],
    "sparse_focal": [("gamma", np.inf), ("alpha", -2.0), ("ignore_class", 1.5),
                     ("class_weight", [-1.0])],
    "kl": [("epsilon", 0.0), ("axis", 1.5)],
    "gce": [("q", 0.0), ("q", 1.0), ("q", "0.5"), ("ignore_class", "pad")],
}


@st.composite
def family_cases(draw):
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    kind = draw(st.sampled_from(tuple(FAMILY_CLASSES)))
    dtype = np.dtype(draw(st.sampled_from((np.float32, np.float64))))
    shape, axis = draw(shapes())
    if shape[axis] > 4099:  # the NumPy steps of these losses: keep the examples quick
        shape = tuple(min(s, 4099) if i == axis % len(shape) else s
                      for i, s in enumerate(shape))
    from_logits = draw(st.booleans())
    n_classes = shape[axis]
    batch = _batch_shape(shape, axis)
    if from_logits:
        x = (rng.standard_normal(shape) * draw(st.sampled_from((1.0, 5.0)))).astype(dtype)
        _place_specials(draw, rng, x, (np.nan, -np.inf, 1e30, -1e30, 0.0, 40.0, -40.0))
    else:
        x = rng.uniform(0.0, 1.0, size=shape)
        if kind != "binary_focal" and x.size:
            x = x / x.sum(axis=axis, keepdims=True)
        x = x.astype(dtype)
        _place_specials(draw, rng, x, (np.nan, 0.0, 1.0, 1e-30))
    opts = {"from_logits": from_logits, "axis": axis}
    if draw(st.booleans()):
        opts["n_threads"] = draw(st.sampled_from((None, 1, 2, -1)))
    if kind in ("binary_focal", "categorical_focal", "sparse_focal"):
        opts["gamma"] = draw(st.sampled_from((0.0, 0.5, 2.0, 3.0)))
        if kind == "categorical_focal" and draw(st.booleans()):
            opts["alpha"] = rng.uniform(0.1, 2.0, n_classes)
        else:
            opts["alpha"] = draw(st.sampled_from((0.25, 0.5, 1.0)))
    if kind == "binary_focal":
        opts["apply_class_balancing"] = draw(st.booleans())
    if kind in ("binary_focal", "categorical_focal") and draw(st.booleans()):
        opts["label_smoothing"] = draw(st.sampled_from((0.1, 0.5)))
    if kind == "gce":
        opts["q"] = draw(st.sampled_from((0.1, 0.5, 0.9)))
    if kind in ("sparse_focal", "gce"):
        labels = rng.integers(0, n_classes, size=batch)
        if draw(st.booleans()):
            opts["ignore_class"] = -100
            if labels.size:
                labels[rng.random(batch) < 0.3] = -100
        if kind == "sparse_focal" and draw(st.booleans()):
            opts["class_weight"] = rng.uniform(0.0, 2.0, n_classes)
        y = labels.astype(draw(st.sampled_from(("int64", "int32", "float64"))))
    elif kind == "binary_focal":
        y = (rng.random(shape) < 0.3).astype(draw(st.sampled_from(("float64", "float32",
                                                                   "bool"))))
    else:
        y = np.moveaxis(rng.dirichlet(np.ones(n_classes), size=batch), -1,
                        axis % len(shape)).astype(dtype)
    reduction = draw(st.sampled_from(REDUCTIONS))
    sw = rng.uniform(0.0, 2.0, size=batch) if draw(st.booleans()) else None
    return kind, dtype, x, y, opts, reduction, sw


@settings(PROFILE, max_examples=examples(300), suppress_health_check=list(HealthCheck))
@given(case=family_cases())
def test_family_valid_hostile_values(case):
    """Focal, KL and GCE losses on hostile values, layouts and options: the per-sample losses
    equal the float64 oracle where it is finite, the gradient has y_pred's shape and dtype and
    is finite where the loss is, and the inputs are left alone."""
    kind, dtype, x, y, opts, reduction, sw = case
    x0, y0 = x.copy(), np.copy(y)
    loss = FAMILY_CLASSES[kind](reduction="none", **opts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SyntaxWarning)  # one class: Keras' warning
        value, grad = loss.loss_and_grad(y, x)
        per = FAMILY_FUNCTIONS[kind](y, x, **opts)
    assert np.array_equal(x, x0, equal_nan=True) and np.array_equal(y, y0)
    assert grad.shape == x.shape and grad.dtype == dtype
    assert value.dtype == dtype and per.dtype == dtype
    assert np.array_equal(value, per, equal_nan=True)
    o = {k: v for k, v in opts.items() if k != "n_threads"}
    with np.errstate(all="ignore"):
        want = R.FAMILY_PER_SAMPLE[kind](y, x, **o)
    fin = np.isfinite(want) & (np.abs(want) < 1e15)
    rtol = 5e-5 if dtype == np.float32 else 1e-9
    if fin.any():
        got = np.asarray(value, dtype=np.float64)[fin]
        scale = max(1.0, float(np.max(np.abs(want[fin]))))
        assert np.all(np.abs(got - want[fin]) <= rtol * (np.abs(want[fin]) + scale)), (
            kind, got[:4], want[fin][:4])
    # reductions: a float, equal to the weighted per-sample losses reduced
    red = FAMILY_CLASSES[kind](reduction=reduction, **opts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SyntaxWarning)
        r = red(y, x, sw)
    if reduction == "none":
        assert r.shape == value.shape
    else:
        assert isinstance(r, float)


@settings(PROFILE, max_examples=examples(200), suppress_health_check=list(HealthCheck))
@given(case=family_cases(), data=st.data())
def test_family_corruption_raises_named_error(case, data):
    """One bad option, dtype, shape or label: TypeError / ValueError naming it."""
    kind, dtype, x, y, opts, reduction, sw = case
    what = data.draw(st.sampled_from(("option", "y_pred", "y_true_shape", "label")))
    name = None
    if what == "option":
        name, bad = data.draw(st.sampled_from(FAMILY_BAD_OPTIONS[kind]))
        opts = {**opts, name: bad}
    elif what == "y_pred":
        with np.errstate(invalid="ignore", over="ignore"):  # NaN / inf cast to integers
            x = np.asarray(x).astype(data.draw(st.sampled_from(("int32", "float16",
                                                                "complex64", "bool"))))
        name = "y_pred"
    elif what == "y_true_shape" or kind not in ("sparse_focal", "gce") or np.size(y) == 0:
        y = np.zeros(np.shape(y) + (3, 2))
        name = "y_true"
    else:
        y = np.array(y, dtype=np.int64)
        y.reshape(-1)[0] = np.shape(x)[opts["axis"]] + 7
        name = "y_true"
    with pytest.raises((TypeError, ValueError), match=name):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            FAMILY_CLASSES[kind](reduction=reduction, **opts).loss_and_grad(y, x, sw)
