"""Every bad input in the spec: the exception type AND its message (which names the
offending argument) are part of the API."""

import re

import numpy as np
import pytest
from util import CLASSES, FUNCTIONS

import fastxent as fx

KINDS = list(CLASSES)


def good_inputs(kind, shape=(4, 3), dtype=np.float64):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(dtype)
    if kind == "sparse_categorical":
        y = rng.integers(0, shape[-1], size=shape[:-1])
    elif kind == "categorical":
        y = np.eye(shape[-1], dtype=dtype)[rng.integers(0, shape[-1], size=shape[:-1])]
    else:
        y = rng.integers(0, 2, size=shape).astype(dtype)
    return y, x


def each_entry_point(kind, **options):
    """Callables running the function and the class's __call__ / loss_and_grad with options.

    Construction happens inside the callable, so a check made either at construction or
    at call time is accepted.
    """
    function_opts = {k: v for k, v in options.items() if k != "reduction"}

    def run_function(y, x):
        return FUNCTIONS[kind](y, x, **function_opts)

    def run_call(y, x):
        return CLASSES[kind](**options)(y, x)

    def run_loss_and_grad(y, x):
        return CLASSES[kind](**options).loss_and_grad(y, x)

    runners = [run_call, run_loss_and_grad]
    if "reduction" not in options:
        runners.insert(0, run_function)
    return runners


# ================================================================ y_pred dtype


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "bad_dtype", [np.longdouble, np.int32, np.int64, np.bool_, np.complex128, np.uint8]
)
def test_y_pred_dtype(kind, bad_dtype):
    y, x = good_inputs(kind)
    xb = x.astype(bad_dtype)
    for run in each_entry_point(kind, from_logits=True):
        with pytest.raises(
            TypeError,
            match=rf"y_pred must have dtype float32, float64, float16 or bfloat16, got "
                  rf"{np.dtype(bad_dtype)}",
        ):
            run(y, xb)


@pytest.mark.parametrize("kind", KINDS)
def test_y_pred_object_or_string(kind):
    y, _ = good_inputs(kind)
    for bad in (np.array([["a", "b", "c"]] * 4), np.empty((4, 3), dtype=object)):
        with pytest.raises(TypeError, match="y_pred"):
            FUNCTIONS[kind](y, bad)


# ============================================================== shape mismatch


@pytest.mark.parametrize("kind", ["categorical", "binary"])
@pytest.mark.parametrize("y_shape", [(4, 2), (3, 3), (4, 3, 3), (12,), (3,)])
def test_dense_shape_mismatch(kind, y_shape):
    # (y_shape (4, 3, 1) is left out: binary accepts a trailing size-1 dim, Keras'
    # squeeze_or_expand_to_same_rank)
    _, x = good_inputs(kind, (4, 3))
    y = np.zeros(y_shape)
    for run in each_entry_point(kind):
        with pytest.raises(ValueError) as info:
            run(y, x)
        message = str(info.value)
        assert str(y_shape) in message and str((4, 3)) in message, message


@pytest.mark.parametrize("labels_shape", [(5,), (4, 3), (2, 2)])
def test_sparse_shape_mismatch(labels_shape):
    # the message shows y_true's shape and y_pred's (or y_pred's without the class axis)
    _, x = good_inputs("sparse_categorical", (4, 3))
    y = np.zeros(labels_shape, dtype=np.int64)
    for run in each_entry_point("sparse_categorical"):
        with pytest.raises(ValueError, match="y_true") as info:
            run(y, x)
        message = str(info.value)
        assert str(labels_shape) in message, message
        assert str((4, 3)) in message or str((4,)) in message, message


def test_sparse_shape_mismatch_with_axis():
    x = np.zeros((2, 3, 4))
    y = np.zeros((2, 3), dtype=np.int64)  # the shape for axis=-1, not axis=1
    with pytest.raises(ValueError) as info:
        fx.sparse_categorical_crossentropy(y, x, axis=1)
    message = str(info.value)
    assert str((2, 3)) in message, message
    assert str((2, 3, 4)) in message or str((2, 4)) in message, message


# =================================================================== labels


@pytest.mark.parametrize("bad", [np.array([0.0, 1.0, 2.5, 1.0]), np.array([0.5, 1.0, 2.0, 1.0])])
def test_fractional_float_labels(bad):
    _, x = good_inputs("sparse_categorical")
    for run in each_entry_point("sparse_categorical"):
        with pytest.raises(ValueError, match="y_true"):
            run(bad, x)


@pytest.mark.parametrize("labels", [np.array([0, 1, np.nan, 2]), np.array([0, np.inf, 1, 2])])
def test_non_finite_float_labels(labels):
    _, x = good_inputs("sparse_categorical")
    with pytest.raises(ValueError, match="y_true"):
        fx.sparse_categorical_crossentropy(labels, x)


@pytest.mark.parametrize(
    "bad",
    [
        np.array(["0", "1", "2", "0"]),
        np.array([0, 1, 2, 0], dtype=np.complex128),
        np.array([0, 1, 2, 0], dtype=object),
    ],
)
def test_non_integer_label_dtype(bad):
    _, x = good_inputs("sparse_categorical")
    with pytest.raises(TypeError, match="y_true"):
        fx.sparse_categorical_crossentropy(bad, x)


def test_integral_float_labels_are_accepted():
    _, x = good_inputs("sparse_categorical")
    a = fx.sparse_categorical_crossentropy(np.array([0.0, 2.0, 1.0, 2.0]), x)
    b = fx.sparse_categorical_crossentropy(np.array([0, 2, 1, 2]), x)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("from_logits", [True, False])
@pytest.mark.parametrize(
    "labels,position,value",
    [
        (np.array([0, 1, 3, 2]), (2,), 3),  # == C
        (np.array([0, -1, 2, 7]), (1,), -1),  # negative, first of two bad ones
        (np.array([2, 1, 0, 100]), (3,), 100),
    ],
)
def test_out_of_range_label_1d(from_logits, labels, position, value):
    _, x = good_inputs("sparse_categorical")
    if not from_logits:
        x = np.abs(x) + 0.1
    for run in each_entry_point("sparse_categorical", from_logits=from_logits):
        with pytest.raises(ValueError) as info:
            run(labels, x)
        message = str(info.value)
        assert str(position) in message and str(value) in message, message
        assert re.search(r"y_true|label", message), message


@pytest.mark.parametrize("label_dtype", [np.int8, np.uint8, np.int32, np.int64, np.uint64])
def test_out_of_range_label_nd_position(label_dtype):
    x = np.zeros((3, 4, 5), dtype=np.float32)
    labels = np.zeros((3, 4), dtype=label_dtype)
    labels[1, 2] = 5
    labels[2, 0] = 9  # a later bad label: the first one (in C order) is reported
    with pytest.raises(ValueError) as info:
        fx.SparseCategoricalCrossentropy(from_logits=True).loss_and_grad(labels, x)
    message = str(info.value)
    assert str((1, 2)) in message and "5" in message, message


def test_out_of_range_label_position_with_axis_not_last():
    x = np.zeros((3, 5, 4))  # classes on axis 1
    labels = np.zeros((3, 4), dtype=np.int64)
    labels[2, 1] = -3
    with pytest.raises(ValueError) as info:
        fx.sparse_categorical_crossentropy(labels, x, axis=1, from_logits=True)
    assert str((2, 1)) in str(info.value) and "-3" in str(info.value)


def test_out_of_range_label_in_large_batch_is_first():
    # the range check runs inside the (parallel) kernel: still the FIRST bad position
    x = np.zeros((100000, 3))
    labels = np.zeros(100000, dtype=np.int64)
    labels[[70001, 30007, 99999]] = [4, 3, 5]
    for n_threads in (1, 2):
        with pytest.raises(ValueError) as info:
            fx.SparseCategoricalCrossentropy(from_logits=True, n_threads=n_threads)(labels, x)
        assert str((30007,)) in str(info.value) and "3" in str(info.value)


def test_ignore_class_does_not_hide_other_bad_labels():
    _, x = good_inputs("sparse_categorical")
    with pytest.raises(ValueError) as info:
        fx.sparse_categorical_crossentropy(np.array([0, -1, 5, 1]), x, ignore_class=-1)
    assert str((2,)) in str(info.value) and "5" in str(info.value)


# ============================================================ scalar options


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("value", [-0.1, 1.01, 2.0, float("nan")])
def test_label_smoothing_range(kind, value):
    y, x = good_inputs(kind)
    for run in each_entry_point(kind, label_smoothing=value):
        with pytest.raises(ValueError, match="label_smoothing"):
            run(y, x)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("value", [0.0, 1.0])
def test_label_smoothing_bounds_are_valid(kind, value):
    y, x = good_inputs(kind)
    for run in each_entry_point(kind, label_smoothing=value, from_logits=True):
        run(y, x)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("axis", [2, -3, 5])
def test_axis_out_of_range(kind, axis):
    y, x = good_inputs(kind)
    for run in each_entry_point(kind, axis=axis):
        with pytest.raises(ValueError, match="axis"):
            run(y, x)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("reduction", ["avg", "MEAN", "", "auto", "sum_over_batch"])
def test_bad_reduction(kind, reduction):
    y, x = good_inputs(kind)
    with pytest.raises(ValueError, match="reduction"):
        CLASSES[kind](reduction=reduction)(y, x)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("epsilon", [0.0, -1e-7, 0.5, 0.7, float("nan")])
def test_epsilon_range(kind, epsilon):
    y, x = good_inputs(kind)
    x = np.abs(x) + 0.1
    for run in each_entry_point(kind, epsilon=epsilon):
        with pytest.raises(ValueError, match="epsilon"):
            run(y, x)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n_threads", [0, -2, -100])
def test_n_threads_value(kind, n_threads):
    y, x = good_inputs(kind)
    for run in each_entry_point(kind, n_threads=n_threads):
        with pytest.raises(ValueError, match="n_threads"):
            run(y, x)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n_threads", [1.5, "2", 2.0])
def test_n_threads_type(kind, n_threads):
    y, x = good_inputs(kind)
    for run in each_entry_point(kind, n_threads=n_threads):
        with pytest.raises(TypeError, match="n_threads"):
            run(y, x)


# ============================================================ weights


@pytest.mark.parametrize("kind", ["categorical", "sparse_categorical"])
@pytest.mark.parametrize(
    "class_weight",
    [
        [1.0, 2.0],
        [1.0, 2.0, 3.0, 4.0],
        [1.0, -0.5, 1.0],
        [1.0, np.nan, 1.0],
        [1.0, np.inf, 1.0],
        [[1.0, 2.0, 3.0]] * 2,
    ],
)
def test_bad_class_weight(kind, class_weight):
    y, x = good_inputs(kind)  # 3 classes
    for run in each_entry_point(kind, class_weight=class_weight):
        with pytest.raises(ValueError, match="class_weight"):
            run(y, x)


@pytest.mark.parametrize(
    "pos_weight", [[1.0, 2.0], [1.0, 2.0, 3.0, 4.0], [1.0, -1.0, 1.0], [np.nan, 1.0, 1.0]]
)
def test_bad_pos_weight(pos_weight):
    # not spelled out in the spec: the same rules as class_weight (length of the class axis,
    # finite, non-negative)
    y, x = good_inputs("binary")  # 3 entries on the class axis
    for run in each_entry_point("binary", pos_weight=pos_weight):
        with pytest.raises(ValueError, match="pos_weight"):
            run(y, x)


WEIGHT_OF = {"categorical": "class_weight", "sparse_categorical": "class_weight",
             "binary": "pos_weight"}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "weight",
    [["1", "2", "3"], np.ones(3, complex), np.ones(3, object), np.ones(3, bool), "1",
     [1.0, [2.0, 3.0]], 1j],
    ids=["str", "complex", "object", "bool", "str-scalar", "ragged", "complex-scalar"],
)
def test_weight_dtype_is_refused_by_functions_and_constructors(kind, weight):
    """Strings, complex, object, bool and ragged class_weight / pos_weight: TypeError naming
    the argument from the function, from the constructor (not only when called) and from
    every entry point; nothing is silently converted."""
    name = WEIGHT_OF[kind]
    y, x = good_inputs(kind)
    with pytest.raises(TypeError, match=name):
        CLASSES[kind](**{name: weight})
    for run in each_entry_point(kind, **{name: weight}):
        with pytest.raises(TypeError, match=name):
            run(y, x)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("weight", [[-1.0, 1.0, 1.0], [np.nan, 1, 1], np.inf, np.ones((3, 1))])
def test_bad_weight_values_are_refused_by_constructors(kind, weight):
    name = WEIGHT_OF[kind]
    if name == "pos_weight" and np.ndim(weight) == 2:
        weight = -np.ones((3, 1))  # any shape is a pos_weight (broadcast with y_pred)
    with pytest.raises(ValueError, match=name):
        CLASSES[kind](**{name: weight})


@pytest.mark.parametrize("kind", KINDS)
def test_valid_weights_are_stored_as_float(kind):
    name = WEIGHT_OF[kind]
    obj = CLASSES[kind](**{name: [1, 2, 3]})
    assert getattr(obj, name).dtype == np.float64
    assert obj.get_config()[name] == [1.0, 2.0, 3.0]
    assert CLASSES[kind](**{name: 2}).get_config()[name] == 2.0


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("value", [1, 0, None, 1.0, "False", "yes", np.int64(1), [True]])
def test_from_logits_must_be_a_bool(kind, value):
    """from_logits="False" used to be truthy: it is a TypeError naming from_logits."""
    y, x = good_inputs(kind)
    with pytest.raises(TypeError, match="from_logits"):
        CLASSES[kind](from_logits=value)
    with pytest.raises(TypeError, match="from_logits"):
        FUNCTIONS[kind](y, x, from_logits=value)


@pytest.mark.parametrize("kind", KINDS)
def test_from_logits_accepts_numpy_bool(kind):
    y, x = good_inputs(kind)
    x = np.abs(x) / np.abs(x).sum(axis=-1, keepdims=True)  # probabilities
    for flag in (np.True_, np.False_):
        expected = FUNCTIONS[kind](y, x, from_logits=bool(flag))
        np.testing.assert_array_equal(FUNCTIONS[kind](y, x, from_logits=flag), expected)
        assert CLASSES[kind](from_logits=flag).from_logits is bool(flag)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("sw_shape", [(3,), (4, 2), (5,), (2, 4), (4, 3, 1)])
def test_sample_weight_not_broadcastable(kind, sw_shape):
    y, x = good_inputs(kind, (4, 5, 3))  # per-sample loss shape (4, 5)
    sw = np.ones(sw_shape)
    for reduction in ("none", "sum", "mean_with_sample_weight"):
        with pytest.raises(ValueError, match="sample_weight"):
            CLASSES[kind](reduction=reduction).loss_and_grad(y, x, sw)
        with pytest.raises(ValueError, match="sample_weight"):
            CLASSES[kind](reduction=reduction)(y, x, sw)


# ========================================================== empty class axis


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape,axis", [((4, 0), -1), ((0, 0), -1), ((0, 3), 0)])
def test_empty_class_axis(kind, shape, axis):
    x = np.zeros(shape)
    if kind == "sparse_categorical":
        y = np.zeros(tuple(d for i, d in enumerate(shape) if i != axis % 2), dtype=np.int64)
    else:
        y = np.zeros(shape)
    for run in each_entry_point(kind, axis=axis):
        with pytest.raises(ValueError, match=r"(?i)y_pred|class|axis"):
            run(y, x)


def test_scalar_y_pred():
    with pytest.raises(ValueError, match="y_pred"):
        fx.categorical_crossentropy(np.float64(1.0), np.float64(1.0))


@pytest.mark.parametrize("value", [2**63 + 3, 2**64 - 1])
def test_huge_uint64_label(value):
    # not wrapped to a negative int64 (which could then match ignore_class=-1)
    _, x = good_inputs("sparse_categorical")
    labels = np.array([0, value, 1, 2], dtype=np.uint64)
    for ignore_class in (None, -1):
        with pytest.raises(ValueError) as info:
            fx.sparse_categorical_crossentropy(labels, x, ignore_class=ignore_class)
        message = str(info.value)
        assert str(value) in message and "y_true" in message, message


@pytest.mark.parametrize("label_dtype", [np.int64, np.uint8, np.uint64])
def test_out_of_range_message_is_plain(label_dtype):
    # the position and the value read as Python ints: "(1,)" and "9", not NumPy
    # scalar reprs such as "(np.int64(1),)" or "np.uint8(9)"
    _, x = good_inputs("sparse_categorical")
    huge = label_dtype == np.uint64
    labels = np.array([0, 2**64 - 1 if huge else 9, 1, 2], dtype=label_dtype)
    with pytest.raises(ValueError) as info:
        fx.sparse_categorical_crossentropy(labels, x)
    message = str(info.value)
    assert "np." not in message, message
    assert "(1,)" in message, message


# ====================================================== hints for common mix-ups


def _swapped_cases():
    x = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    labels = np.array([0, 1, 2, 0])
    onehot = np.eye(3, dtype=np.float32)[labels]
    z = (x > 0)  # binary targets as bool
    return [
        ("sparse_categorical", x, labels),
        ("categorical", x, labels),
        ("categorical", x, onehot.astype(np.int64)),
        ("binary", x, z),
        ("binary", x, z.astype(np.int8)),
    ]


@pytest.mark.parametrize("case", range(5))
def test_swapped_arguments_get_a_hint(case):
    # PyTorch's order, loss(logits, labels): an integer/bool y_pred beside a float y_true
    kind, x, y = _swapped_cases()[case]
    for run in each_entry_point(kind, from_logits=True):
        with pytest.raises(TypeError, match="y_pred") as info:
            run(x, y)  # swapped on purpose
        message = str(info.value)
        assert "float32" in message and "float64" in message, message  # the old key words
        assert "swapped" in message and "(y_true, y_pred)" in message, message
        # the cast advice would silently compute a loss of the swapped arguments
        assert "astype" not in message, message


@pytest.mark.parametrize("kind", KINDS)
def test_integer_y_pred_without_swap_keeps_the_cast_advice(kind):
    # y_true not float: nothing suggests a swap, the message advises the explicit cast
    y, x = good_inputs(kind)
    y = np.asarray(y).astype(np.int64)
    with pytest.raises(TypeError, match="y_pred") as info:
        FUNCTIONS[kind](y, x.astype(np.int32))
    message = str(info.value)
    assert "astype(np.float32)" in message and "swapped" not in message, message


def test_integer_labels_to_categorical_name_the_sparse_loss():
    y, x = good_inputs("sparse_categorical")
    for labels in (y, y[:, None]):
        for run in each_entry_point("categorical", from_logits=True):
            with pytest.raises(ValueError, match="y_true") as info:
                run(labels, x)
            message = str(info.value)
            assert "shape" in message and "SparseCategoricalCrossentropy" in message, message


def test_one_hot_targets_to_sparse_name_the_categorical_loss():
    y, x = good_inputs("categorical")
    for run in each_entry_point("sparse_categorical", from_logits=True):
        with pytest.raises(ValueError, match="y_true") as info:
            run(y, x)
        message = str(info.value)
        assert "one integer per sample" in message, message
        assert "CategoricalCrossentropy / categorical_crossentropy" in message, message


def test_shape_mismatch_without_a_mix_up_has_no_hint():
    _, x = good_inputs("categorical")
    with pytest.raises(ValueError, match="y_true") as info:
        fx.categorical_crossentropy(np.zeros((3, 3)), x)
    assert "Sparse" not in str(info.value)
    with pytest.raises(ValueError, match="y_true") as info:
        fx.sparse_categorical_crossentropy(np.zeros(3, dtype=np.int64), x)
    assert "CategoricalCrossentropy" not in str(info.value)


def test_fractional_label_message_is_plain():
    # "found 0.5 at position (1,)", not "np.float64(0.5) at position (np.int64(1),)"
    _, x = good_inputs("sparse_categorical")
    with pytest.raises(ValueError) as info:
        fx.sparse_categorical_crossentropy(np.array([0.0, 0.5, 1.0, 2.0]), x)
    message = str(info.value)
    assert "np." not in message, message
    assert "found 0.5 at position (1,)" in message, message


@pytest.mark.parametrize("make", [
    lambda: fx.CategoricalCrossentropy(label_smoothing=np.float64(2.0)),
    lambda: fx.CategoricalCrossentropy(epsilon=np.float32(0.75)),
    lambda: fx.CategoricalCrossentropy(from_logits=True, z_loss=np.float64(-1.0)),
    lambda: fx.CategoricalCrossentropy(from_logits=np.int64(1)),
    lambda: fx.CategoricalCrossentropy(axis=np.float64(1.0)),
    lambda: fx.SparseCategoricalCrossentropy(ignore_class=np.float64(1.0)),
])
def test_option_messages_show_plain_values(make):
    with pytest.raises((TypeError, ValueError)) as info:
        make()
    assert "np." not in str(info.value), str(info.value)


def test_log_loss_is_in_metrics_not_sklearn():
    pytest.importorskip("sklearn")
    import fastxent.metrics
    import fastxent.sklearn

    assert callable(fastxent.metrics.log_loss)
    with pytest.raises(AttributeError, match=r"fastxent\.metrics\.log_loss"):
        fastxent.sklearn.log_loss  # noqa: B018
