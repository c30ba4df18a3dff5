"""The cache of large output blocks (see ``cython_src/fastxent/fx_buffer_cache.h``).

A gradient array of tens of MB, allocated afresh, costs a page fault and a zero-fill per
page: for an (8192, 1000) float64 gradient that takes about as long as computing it.
fastxent allocates its gradient and Hessian arrays from a NumPy memory handler that keeps
up to 4 freed blocks of at least 4 MiB (at most 1 GiB in all by default) and hands a block
back to the next request of the same byte size.  Only arrays fastxent allocates use it.
"""

from __future__ import annotations

import os
import warnings

from fastxent import _kernels

DEFAULT_LIMIT_BYTES = 1 << 30


def set_buffer_cache(max_bytes: int) -> None:
    """Set how many bytes of freed gradient blocks fastxent may keep for reuse.

    Parameters
    ----------
    max_bytes : int
        Upper bound on the bytes held (default 1 GiB, or ``FASTXENT_BUFFER_CACHE_MB``
        mebibytes from the environment at import).  ``0`` disables the cache: every
        gradient is then a fresh allocation.  The blocks held now are freed either way.

    Examples
    --------
    >>> import fastxent as fx
    >>> fx.set_buffer_cache(256 * 2**20)
    >>> fx.buffer_cache_info()["limit_bytes"]
    268435456
    >>> fx.set_buffer_cache(2**30)
    """
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int):
        raise TypeError(f"max_bytes must be an int (bytes), got {type(max_bytes).__name__}")
    if max_bytes < 0:
        raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
    _kernels.configure_cache(max_bytes)


def buffer_cache_info() -> dict:
    """The cache's limit, bytes held now, block-size floor, slots, hits and misses."""
    return dict(_kernels.cache_info())


def _init_buffer_cache_from_env() -> None:
    text = os.environ.get("FASTXENT_BUFFER_CACHE_MB", "").strip()
    if not text:
        return
    try:
        mb = float(text)
        if not mb >= 0:
            raise ValueError
    except ValueError:
        warnings.warn(
            f"FASTXENT_BUFFER_CACHE_MB={text!r} ignored: expected a number of MiB >= 0",
            RuntimeWarning,
            stacklevel=2,
        )
        return
    set_buffer_cache(int(mb * 2**20))
