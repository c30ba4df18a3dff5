"""Arrays with __dlpack__ (PyTorch tensors, JAX arrays) as input to the NumPy API."""

import sys

import numpy as np
import pytest

import fastxent as fx
from fastxent._interop import asarray
from fastxent._validation import as_float_array, as_labels, as_target_array

torch = pytest.importorskip("torch")


def data(rng, n=6, c=4, dtype=np.float32):
    x = rng.standard_normal((n, c)).astype(dtype)
    y = rng.integers(0, c, size=n)
    return x, y


def test_torch_tensors_are_read_without_a_copy(rng):
    x, y = data(rng)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    assert np.shares_memory(as_float_array(xt, "y_pred"), x)
    assert np.shares_memory(as_target_array(xt, "y_true", np.dtype(np.float32)), x)
    assert np.shares_memory(as_labels(yt, (6,), 1, 2), y)
    strided = torch.from_numpy(x).T  # a transposed view: still no copy
    assert np.shares_memory(asarray(strided, "y_pred"), x)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_torch_tensors_give_the_numpy_results(rng, dtype):
    x, y = data(rng, dtype=dtype)
    w = rng.random(6)
    for loss in (fx.SparseCategoricalCrossentropy(from_logits=True, ignore_class=2),
                 fx.SparseCategoricalCrossentropy(from_logits=True, axis=0)):
        xx = x if loss.axis == -1 else np.ascontiguousarray(x.T)
        ref_loss, ref_grad = loss.loss_and_grad(y, xx, w)
        got_loss, got_grad = loss.loss_and_grad(torch.from_numpy(y), torch.from_numpy(xx),
                                                torch.from_numpy(w))
        assert type(got_grad) is np.ndarray and got_grad.dtype == dtype
        assert got_loss == ref_loss and np.array_equal(got_grad, ref_grad)
    z = (rng.random(x.shape) > 0.5).astype(dtype)
    bce = fx.BinaryCrossentropy(from_logits=True)
    assert bce(torch.from_numpy(z), torch.from_numpy(x)) == bce(z, x)
    t = rng.dirichlet(np.ones(4), size=6).astype(dtype)
    assert np.array_equal(
        fx.categorical_crossentropy(torch.from_numpy(t), torch.from_numpy(x), from_logits=True),
        fx.categorical_crossentropy(t, x, from_logits=True))


def test_linear_head_and_nll_take_tensors(rng):
    h = rng.standard_normal((5, 3))
    w = rng.standard_normal((7, 3))
    b = rng.standard_normal(7)
    y = rng.integers(0, 7, size=5)
    ref = fx.linear_cross_entropy_and_grad(h, w, y, b)
    got = fx.linear_cross_entropy_and_grad(*(torch.from_numpy(a) for a in (h, w, y, b)))
    assert got[0] == ref[0]
    for g, r in zip(got[1:], ref[1:], strict=True):
        assert type(g) is np.ndarray and np.array_equal(g, r)
    logp = np.log(rng.dirichlet(np.ones(7), size=5))
    assert fx.nll_loss(torch.from_numpy(logp), torch.from_numpy(y)) == fx.nll_loss(logp, y)


def test_tensor_requiring_grad_is_refused(rng):
    x, y = data(rng)
    xt = torch.from_numpy(x).requires_grad_()
    with pytest.raises(TypeError, match="y_pred is a tensor that requires grad.*detach"):
        fx.sparse_categorical_crossentropy(y, xt, from_logits=True)
    with pytest.raises(TypeError, match="hidden is a tensor that requires grad"):
        fx.linear_cross_entropy(xt, np.ones((3, 4), np.float32), y)


def test_non_cpu_device_is_refused():
    class OnGpu:  # what a CUDA tensor reports through the protocol
        def __dlpack__(self, **kwargs):
            raise AssertionError("must not be read")

        def __dlpack_device__(self):
            return (2, 0)

    with pytest.raises(ValueError, match="y_pred is on the cuda device.*CPU"):
        fx.sparse_categorical_crossentropy([0], OnGpu(), from_logits=True)
    with pytest.raises(ValueError, match="y_true is on the cuda device"):
        fx.sparse_categorical_crossentropy(OnGpu(), np.zeros((1, 2)), from_logits=True)


def test_dtype_without_a_numpy_equivalent_is_refused():
    xt = torch.zeros(2, 3, dtype=torch.float8_e4m3fn)
    with pytest.raises(TypeError, match=r"y_pred \(torch\.Tensor of dtype torch\.float8_e4m3fn\) "
                                        r"could not be read .*convert y_pred to a dtype NumPy "
                                        r"has first, e\.g\. float32"):
        fx.sparse_categorical_crossentropy([0, 1], xt, from_logits=True)


def lowp_case(rng, name, n=6, c=5):
    """Logits of ``name`` (float16 / bfloat16) as a NumPy array and as a torch tensor on the
    same memory (bfloat16 through its bits), labels, probabilities and binary targets."""
    if name == "bfloat16":
        dtype = np.dtype(pytest.importorskip("ml_dtypes").bfloat16)
        x = (rng.standard_normal((n, c)) * 3).astype(dtype)
        xt = torch.from_numpy(x.view(np.int16)).view(torch.bfloat16)
    else:
        x = (rng.standard_normal((n, c)) * 3).astype(np.float16)
        xt = torch.from_numpy(x)
    y = rng.integers(0, c, size=n)
    p = rng.dirichlet(np.ones(c), size=n).astype(np.float32)
    z = (rng.random((n, c)) > 0.5).astype(np.float32)
    return x, xt, y, p, z


def same_bits(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.mark.parametrize("name", ["float16", "bfloat16"])
def test_torch_low_precision_tensors_are_read_without_a_copy(rng, name):
    x, xt, y, p, z = lowp_case(rng, name)
    arr = as_float_array(xt, "y_pred")
    assert arr.dtype == x.dtype and np.shares_memory(arr, x)
    assert arr.ctypes.data == xt.data_ptr()
    strided = asarray(xt.T, "y_pred")  # a transposed view: still no copy
    assert strided.ctypes.data == xt.data_ptr() and np.shares_memory(strided, x)
    assert np.array_equal(strided.astype(np.float32), x.T.astype(np.float32))


@pytest.mark.parametrize("name", ["float16", "bfloat16"])
def test_torch_low_precision_tensors_give_the_numpy_results(rng, name):
    """The NumPy API on a float16 / bfloat16 tensor: the results of the NumPy array, bit for
    bit, the gradient in the tensor's dtype."""
    x, xt, y, p, z = lowp_case(rng, name)
    w = rng.random(6)
    yt, pt, zt, wt = (torch.from_numpy(v) for v in (y, p, z, w))
    for loss in (fx.SparseCategoricalCrossentropy(from_logits=True, ignore_class=2),
                 fx.SparseCategoricalCrossentropy(from_logits=True, reduction="none")):
        ref = loss.loss_and_grad(y, x, w)
        got = loss.loss_and_grad(yt, xt, wt)
        assert type(got[1]) is np.ndarray and got[1].dtype == x.dtype
        assert same_bits(got[0], ref[0]) and same_bits(got[1], ref[1])
    cce = fx.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1)
    assert all(same_bits(g, r) for g, r in zip(cce.loss_and_grad(pt, xt),
                                              cce.loss_and_grad(p, x), strict=True))
    bce = fx.BinaryCrossentropy(from_logits=True)
    assert all(same_bits(g, r) for g, r in zip(bce.loss_and_grad(zt, xt),
                                              bce.loss_and_grad(z, x), strict=True))
    assert same_bits(fx.sparse_categorical_crossentropy(yt, xt, from_logits=True),
                     fx.sparse_categorical_crossentropy(y, x, from_logits=True))


def test_torch_bfloat16_without_ml_dtypes_is_refused_by_name(monkeypatch):
    """A bfloat16 tensor is read as ml_dtypes.bfloat16: with ml_dtypes not importable the
    error names the argument and says what to do."""
    monkeypatch.setitem(sys.modules, "ml_dtypes", None)  # `import ml_dtypes` raises
    xt = torch.zeros(2, 3, dtype=torch.bfloat16)
    with pytest.raises(TypeError, match=r"y_pred is a torch\.bfloat16 tensor, which fastxent "
                                        r"reads as ml_dtypes\.bfloat16, but ml_dtypes is not "
                                        r"installed: install it .* or convert it with "
                                        r"y_pred\.float\(\)"):
        fx.sparse_categorical_crossentropy([0, 1], xt, from_logits=True)


def test_jax_arrays_are_read_without_a_copy(rng):
    jnp = pytest.importorskip("jax.numpy")
    x, y = data(rng)
    xj, yj = jnp.asarray(x), jnp.asarray(y)
    arr = asarray(xj, "y_pred")
    assert arr.ctypes.data == xj.unsafe_buffer_pointer()
    loss, grad = fx.SparseCategoricalCrossentropy(from_logits=True).loss_and_grad(yj, xj)
    ref_loss, ref_grad = fx.SparseCategoricalCrossentropy(from_logits=True).loss_and_grad(
        np.asarray(y, dtype=np.asarray(yj).dtype), x)
    assert type(grad) is np.ndarray and loss == ref_loss and np.array_equal(grad, ref_grad)


def test_jax_bfloat16_arrays_are_read_without_a_copy(rng):
    """JAX's bfloat16 is ml_dtypes': DLPack cannot carry it, np.asarray reads it in place."""
    jnp = pytest.importorskip("jax.numpy")
    bfloat16 = np.dtype(pytest.importorskip("ml_dtypes").bfloat16)
    x = (rng.standard_normal((6, 5)) * 3).astype(bfloat16)
    y = rng.integers(0, 5, size=6)
    xj = jnp.asarray(x)
    arr = asarray(xj, "y_pred")
    assert arr.dtype == bfloat16 and arr.ctypes.data == xj.unsafe_buffer_pointer()
    loss = fx.SparseCategoricalCrossentropy(from_logits=True)
    got = loss.loss_and_grad(jnp.asarray(y), xj)
    ref = loss.loss_and_grad(np.asarray(y, dtype=np.asarray(jnp.asarray(y)).dtype), x)
    assert got[1].dtype == bfloat16
    assert got[0] == ref[0] and got[1].tobytes() == ref[1].tobytes()


def test_inputs_are_not_modified(rng):
    x, y = data(rng)
    xt = torch.from_numpy(x.copy())
    fx.SparseCategoricalCrossentropy(from_logits=True).loss_and_grad(torch.from_numpy(y), xt)
    assert np.array_equal(xt.numpy(), x)
