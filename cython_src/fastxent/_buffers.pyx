"""Output arrays for the kernels, from a NumPy memory handler that reuses large blocks.

See ``fx_buffer_cache.h``: a gradient array of tens of MB costs a page fault and a zero-fill
per page when it is allocated afresh, about as long as the loss-and-gradient pass itself.
Arrays allocated here return their block to a small cache when they die, and the next array
of the same byte size reuses it.  Configure with ``fastxent.set_buffer_cache`` or the
environment variable ``FASTXENT_BUFFER_CACHE_MB`` (0 disables).
"""
cimport numpy as cnp

import numpy as np

cnp.import_array()

cdef extern from "numpy/arrayobject.h":
    object PyDataMem_SetHandler(object handler)

cdef extern from "fx_buffer_cache.h":
    object fx_cache_capsule()
    void fx_cache_configure(size_t limit)
    size_t fx_cache_held
    size_t fx_cache_limit
    size_t fx_cache_min
    size_t fx_cache_hits
    size_t fx_cache_misses
    const int FX_CACHE_SLOTS

_HANDLER = fx_cache_capsule()


def empty_like(a):
    """``np.empty_like(a)`` (C order) with its memory from the caching handler."""
    old = PyDataMem_SetHandler(_HANDLER)
    try:
        return np.empty(a.shape, dtype=a.dtype)
    finally:
        PyDataMem_SetHandler(old)


def configure(size_t limit_bytes):
    """Free the cached blocks and hold at most ``limit_bytes`` from now on (0: no cache)."""
    fx_cache_configure(limit_bytes)


def info():
    return {
        "limit_bytes": fx_cache_limit,
        "held_bytes": fx_cache_held,
        "min_block_bytes": fx_cache_min,
        "slots": FX_CACHE_SLOTS,
        "hits": fx_cache_hits,
        "misses": fx_cache_misses,
    }
