"""Arrays of other libraries read as NumPy arrays, through DLPack where they offer it.

PyTorch tensors, JAX arrays and any other object with ``__dlpack__`` on the CPU are read
with ``np.from_dlpack``: a NumPy view of the same memory, no copy.  NumPy has no bfloat16,
so DLPack cannot carry one: a PyTorch bfloat16 tensor is read through its bits as
``ml_dtypes.bfloat16`` (still no copy; ml_dtypes is imported then, and must be installed),
and a JAX bfloat16 array, whose dtype already is ml_dtypes', by ``np.asarray``.  Results are
NumPy arrays.  An array on another device, or a tensor that requires grad, is refused with
an error that names the argument and says what to do.
"""

from __future__ import annotations

import sys

import numpy as np

#: DLPack's device codes (``DLDeviceType``) of the devices named in errors.
_DEVICES = {1: "cpu", 2: "cuda", 3: "cuda_host", 4: "opencl", 7: "vulkan", 8: "metal",
            9: "vpi", 10: "rocm", 13: "cuda_managed", 14: "oneapi"}
_CPU = 1


def asarray(a, name: str) -> np.ndarray:
    """``a`` as an ndarray: ndarrays and plain sequences by ``np.asarray``; objects with
    ``__dlpack__`` by ``np.from_dlpack`` (no copy)."""
    if isinstance(a, np.ndarray) or not hasattr(type(a), "__dlpack__"):
        return np.asarray(a)
    return from_dlpack(a, name)


def ml_bfloat16() -> np.dtype | None:
    """``ml_dtypes.bfloat16`` as a NumPy dtype (importing ml_dtypes), or None without it."""
    try:
        import ml_dtypes
    except ImportError:
        return None
    return np.dtype(ml_dtypes.bfloat16)


def _torch_bfloat16(a) -> bool:
    """``a`` is a PyTorch bfloat16 tensor (never imports torch: a tensor implies it is)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(a, torch.Tensor) and a.dtype == torch.bfloat16


def from_dlpack(a, name: str) -> np.ndarray:
    """A DLPack-capable CPU array as an ndarray sharing its memory."""
    if getattr(a, "requires_grad", False) is True:
        raise TypeError(
            f"{name} is a tensor that requires grad: pass {name}.detach() (fastxent returns "
            "NumPy arrays, outside autograd), or use fastxent.torch for autograd functions"
        )
    try:
        device = tuple(a.__dlpack_device__())
    except (AttributeError, TypeError, ValueError):
        device = None
    if device is not None and int(device[0]) != _CPU:
        where = _DEVICES.get(int(device[0]), f"DLPack device type {int(device[0])}")
        raise ValueError(
            f"{name} is on the {where} device; fastxent computes on the CPU: copy it to host "
            "memory first (e.g. tensor.cpu() for PyTorch, jax.device_get for JAX)"
        )
    if _torch_bfloat16(a):
        bfloat16 = ml_bfloat16()
        if bfloat16 is None:
            raise TypeError(
                f"{name} is a torch.bfloat16 tensor, which fastxent reads as "
                "ml_dtypes.bfloat16, but ml_dtypes is not installed: install it (pip install "
                f"ml_dtypes, or fastxent's [lowp] extra) or convert it with {name}.float()"
            )
        # the same bits as int16 through DLPack, viewed as bfloat16: no copy, any strides
        return np.from_dlpack(a.view(sys.modules["torch"].int16)).view(bfloat16)
    try:
        return np.from_dlpack(a)
    except (BufferError, TypeError, ValueError, RuntimeError) as exc:
        # a dtype NumPy reads from no DLPack code (JAX's bfloat16): its own conversion, if any
        try:
            return np.asarray(a)
        except Exception:  # noqa: BLE001 - the DLPack error is the informative one
            dtype = getattr(a, "dtype", "unknown")
            raise TypeError(
                f"{name} ({type(a).__module__}.{type(a).__name__} of dtype {dtype}) could not "
                f"be read as a NumPy array through DLPack ({exc}); convert {name} to a dtype "
                "NumPy has first, e.g. float32 (tensor.float() for PyTorch)"
            ) from None
