"""n_threads=None / -1 / explicit counts under threadpoolctl limits and OMP_NUM_THREADS, and
the serial-build warning.  The rule is in fastxent._config.resolve_n_threads' docstring."""

import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

import fastxent as fx
from fastxent import _config

threadpoolctl = pytest.importorskip("threadpoolctl")

needs_openmp = pytest.mark.skipif(not fx.openmp_enabled(), reason="serial build")


def _procs():
    from fastxent import _kernels
    return _kernels.num_procs()


@needs_openmp
@pytest.mark.parametrize("limit", [1, 2])
def test_threadpool_limits_cap_none_and_minus_one(limit):
    with threadpoolctl.threadpool_limits(limit, user_api="openmp"):
        assert _config.resolve_n_threads(None) == limit
        assert _config.resolve_n_threads(-1) == min(limit, _procs())
        assert _config.resolve_n_threads(3) == 3  # an explicit count wins
    assert _config.resolve_n_threads(-1) == min(_procs(), _config.resolve_n_threads(None))


@needs_openmp
def test_threadpool_limits_reports_fastxent_openmp_runtime():
    info = threadpoolctl.threadpool_info()
    assert any(i["user_api"] == "openmp" for i in info), info


@needs_openmp
def test_results_identical_under_a_limit():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((512, 300)).astype(np.float32)
    y = rng.integers(0, 300, 512)
    loss = fx.SparseCategoricalCrossentropy(from_logits=True, n_threads=-1)
    ref = loss.loss_and_grad(y, x)
    with threadpoolctl.threadpool_limits(1, user_api="openmp"):
        got = loss.loss_and_grad(y, x)
    assert ref[0] == got[0] and np.array_equal(ref[1], got[1])


@needs_openmp
@pytest.mark.parametrize("omp, expect_none", [("1", 1), ("8", 8)])
def test_omp_num_threads(omp, expect_none):
    code = ("from fastxent._config import resolve_n_threads as r; "
            "from fastxent import _kernels as h; print(r(None), r(-1), r(5), h.num_procs())")
    env = {**os.environ, "OMP_NUM_THREADS": omp}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    none, minus_one, five, procs = map(int, out)
    assert none == expect_none
    assert minus_one == min(procs, expect_none)  # -1 never exceeds the processors
    assert five == 5


@pytest.fixture
def serial_build(monkeypatch):
    monkeypatch.setattr(_config, "openmp_enabled", lambda: False)
    monkeypatch.setattr(_config, "_serial_warned", False)


def test_serial_build_warns_once_for_several_threads(serial_build):
    y, x = np.array([0, 1]), np.zeros((2, 3))
    with pytest.warns(RuntimeWarning, match=r"built without OpenMP, so n_threads=4 runs on one"):
        fx.sparse_categorical_crossentropy(y, x, from_logits=True, n_threads=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fx.sparse_categorical_crossentropy(y, x, from_logits=True, n_threads=4)
        fx.sparse_categorical_crossentropy(y, x, from_logits=True, n_threads=-1)


def test_serial_build_is_silent_for_one_thread_and_default(serial_build):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _config.resolve_n_threads(1) == 1
        _config.resolve_n_threads(None)


def test_serial_build_warns_for_minus_one_on_a_multicore_machine(serial_build, monkeypatch):
    monkeypatch.setattr(_config, "_usable_cpus", lambda: 4)
    with pytest.warns(RuntimeWarning, match=r"n_threads=-1 runs on one thread \("):
        _config.resolve_n_threads(-1)


def test_show_config_says_how_openmp_was_decided(capsys):
    fx.show_config()
    out = capsys.readouterr().out
    line = next(li for li in out.splitlines() if li.startswith("openmp_build:"))
    if fx.openmp_enabled():
        assert "OpenMP: " in line and "compiled, linked" in line
    else:
        assert "serial build: " in line
