"""The cache of large gradient blocks (fastxent._cache): reuse without changing any result,
no reuse while an array or a view of it is alive, tracemalloc still sees the arrays, and the
configuration errors."""

import gc
import tracemalloc

import numpy as np
import pytest

import fastxent as fx

ROWS, COLS = 2048, 1000  # an 8 MB float32 gradient: above the 4 MiB floor


@pytest.fixture(autouse=True)
def _fresh_cache():
    before = fx.buffer_cache_info()["limit_bytes"]
    fx.set_buffer_cache(1 << 30)
    yield
    fx.set_buffer_cache(before)


def _case(rng):
    x = rng.standard_normal((ROWS, COLS)).astype(np.float32)
    y = rng.integers(0, COLS, ROWS)
    return y, x


def _address(a):
    return a.__array_interface__["data"][0]


def test_block_is_reused_and_results_do_not_change(rng):
    y, x = _case(rng)
    loss_fn = fx.SparseCategoricalCrossentropy(from_logits=True)
    loss0, g0 = loss_fn.loss_and_grad(y, x)
    expected = g0.copy()
    addr = _address(g0)
    del g0
    gc.collect()
    hits = fx.buffer_cache_info()["hits"]
    loss1, g1 = loss_fn.loss_and_grad(y, x)
    assert fx.buffer_cache_info()["hits"] == hits + 1
    assert _address(g1) == addr
    assert loss1 == loss0
    np.testing.assert_array_equal(g1, expected)


def test_numpy_keeps_its_own_allocator(rng):
    """Only fastxent's own outputs come from the caching handler: after successful calls,
    calls that raise and calls from other threads, the caller's arrays are allocated by
    NumPy's default handler, and a freed gradient block is never handed to np.empty."""
    import threading

    try:
        from numpy._core.multiarray import get_handler_name
    except ImportError:  # NumPy 1.x
        from numpy.core.multiarray import get_handler_name

    y, x = _case(rng)
    loss_fn = fx.SparseCategoricalCrossentropy(from_logits=True)
    _, g = loss_fn.loss_and_grad(y, x)
    assert get_handler_name(g) == "fastxent_buffer_cache"
    with pytest.raises(ValueError):
        loss_fn.loss_and_grad(np.full_like(y, COLS), x)  # raises after the kernel ran
    worker = threading.Thread(target=loss_fn.loss_and_grad, args=(y, x))
    worker.start()
    worker.join()
    assert get_handler_name() == "default_allocator"
    del g
    gc.collect()
    hits = fx.buffer_cache_info()["hits"]
    mine = np.empty((ROWS, COLS), np.float32)  # the size of the cached block
    assert get_handler_name(mine) == "default_allocator"
    assert fx.buffer_cache_info()["hits"] == hits


def test_no_reuse_while_a_view_is_alive(rng):
    y, x = _case(rng)
    loss_fn = fx.SparseCategoricalCrossentropy(from_logits=True)
    _, g0 = loss_fn.loss_and_grad(y, x)
    view = g0[::2]
    kept = view.copy()
    del g0
    gc.collect()
    _, g1 = loss_fn.loss_and_grad(y, -x)  # another gradient: must not land in `view`
    assert not np.shares_memory(g1, view)
    np.testing.assert_array_equal(view, kept)


def test_disabled_cache_never_hits(rng):
    fx.set_buffer_cache(0)
    y, x = _case(rng)
    loss_fn = fx.SparseCategoricalCrossentropy(from_logits=True)
    hits = fx.buffer_cache_info()["hits"]
    for _ in range(3):
        loss_fn.loss_and_grad(y, x)
    info = fx.buffer_cache_info()
    assert info["hits"] == hits and info["held_bytes"] == 0


def test_small_arrays_and_other_sizes_are_not_cached(rng):
    y, x = _case(rng)
    fx.SparseCategoricalCrossentropy(from_logits=True).loss_and_grad(y[:10], x[:10])
    assert fx.buffer_cache_info()["held_bytes"] == 0  # 40 kB: below the floor
    _, g = fx.SparseCategoricalCrossentropy(from_logits=True).loss_and_grad(y, x)
    del g
    gc.collect()
    assert fx.buffer_cache_info()["held_bytes"] == x.nbytes
    hits = fx.buffer_cache_info()["hits"]
    _, g = fx.SparseCategoricalCrossentropy(from_logits=True).loss_and_grad(y[:-1], x[:-1])
    assert fx.buffer_cache_info()["hits"] == hits  # a different byte size: a new block


def test_limit_bounds_what_is_held(rng):
    y, x = _case(rng)
    fx.set_buffer_cache(x.nbytes - 1)  # too small for one gradient
    _, g = fx.SparseCategoricalCrossentropy(from_logits=True).loss_and_grad(y, x)
    del g
    gc.collect()
    assert fx.buffer_cache_info()["held_bytes"] == 0


def test_tracemalloc_sees_the_gradient(rng):
    y, x = _case(rng)
    loss_fn = fx.BinaryCrossentropy(from_logits=True)
    z = (x > 0).astype(np.float32)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        _, g = loss_fn.loss_and_grad(z, x)
        assert tracemalloc.get_traced_memory()[0] - base >= g.nbytes
        del g
        gc.collect()
        assert tracemalloc.get_traced_memory()[0] - base < x.nbytes // 2
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize(
    "value,exc,match",
    [(-1, ValueError, "max_bytes must be >= 0"), (1.5, TypeError, "max_bytes must be an int"),
     (True, TypeError, "max_bytes must be an int"), ("1", TypeError, "max_bytes must be an int")],
)
def test_bad_limits(value, exc, match):
    with pytest.raises(exc, match=match):
        fx.set_buffer_cache(value)


def test_old_sizes_age_out(rng):
    """Blocks of sizes no longer asked for are evicted, oldest first, so the cache keeps
    serving the sizes in use (4 slots)."""
    loss_fn = fx.SparseCategoricalCrossentropy(from_logits=True)
    y, x = _case(rng)
    for rows in (ROWS - 1, ROWS - 2, ROWS - 3, ROWS - 4, ROWS - 5):  # five other sizes
        _, g = loss_fn.loss_and_grad(y[:rows], x[:rows])
        del g
        gc.collect()
    info = fx.buffer_cache_info()
    assert info["held_bytes"] <= 4 * x.nbytes
    _, g = loss_fn.loss_and_grad(y, x)
    del g
    gc.collect()
    hits = fx.buffer_cache_info()["hits"]
    for _ in range(3):
        _, g = loss_fn.loss_and_grad(y, x)
        del g
        gc.collect()
    assert fx.buffer_cache_info()["hits"] == hits + 3


def test_show_config_reports_the_cache(capsys):
    fx.set_buffer_cache(256 * 2**20)
    fx.show_config()
    assert "buffer_cache:" in capsys.readouterr().out.replace("  ", " ")
    assert "256 MiB in all" in fx._config.config_dict()["buffer_cache"]
    fx.set_buffer_cache(0)
    assert fx._config.config_dict()["buffer_cache"] == "off"
