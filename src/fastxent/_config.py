"""Build facts, thread counts and the instruction-set path of the compiled kernels."""

from __future__ import annotations

import operator
import os
import platform
import sys
import warnings

import numpy as np

from fastxent import _kernels

ISA_NAMES = ("baseline", "avx2", "avx512")


def openmp_enabled() -> bool:
    """True when the kernels were compiled with OpenMP (multi-threaded)."""
    return _kernels.openmp_enabled()


def resolve_n_threads(n_threads) -> int:
    """Validate ``n_threads`` and return the number of OpenMP threads to use.

    * ``None``: OpenMP's current default team size, ``omp_get_max_threads()``: it honours
      ``OMP_NUM_THREADS`` and a ``threadpoolctl.threadpool_limits(..., "openmp")`` in force
      (else it is every processor).
    * ``-1``: every processor *allowed*: ``min(omp_get_num_procs(), omp_get_max_threads())``,
      the processors in this process's affinity mask, capped by the same OpenMP limit.  Unlike
      ``None`` it never exceeds the processor count (``OMP_NUM_THREADS=8`` on 2 cores gives 2).
    * a positive int: exactly that many; an explicit count overrides ``OMP_NUM_THREADS`` and
      threadpoolctl limits.

    In a serial build (no OpenMP) every call runs on one thread; asking for more (an explicit
    count > 1, or ``-1`` on a multi-core machine) warns once with the build's reason.
    """
    if n_threads is None:
        return max(1, _kernels.max_threads())
    if isinstance(n_threads, bool | np.bool_):
        raise TypeError(f"n_threads must be None or an int, got {n_threads!r}")
    try:
        n = operator.index(n_threads)
    except TypeError:
        raise TypeError(
            f"n_threads must be None or an int, got {type(n_threads).__name__}"
        ) from None
    if n == -1:
        if not openmp_enabled() and _usable_cpus() > 1:
            _warn_serial_build(-1)
        return max(1, min(_kernels.num_procs(), _kernels.max_threads()))
    if n < 1:
        raise ValueError(f"n_threads must be a positive int, -1 (all cores) or None, got {n}")
    if n > 1 and not openmp_enabled():
        _warn_serial_build(n)
    return n


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


_serial_warned = False


def _warn_serial_build(requested: int) -> None:
    """Warn once per process that a serial build ignores a request for several threads."""
    global _serial_warned
    if _serial_warned:
        return
    _serial_warned = True
    warnings.warn(
        f"fastxent was built without OpenMP, so n_threads={requested} runs on one thread "
        f"({_kernels.build_note()}); see fastxent.show_config()",
        RuntimeWarning,
        stacklevel=4,
    )


def cpu_isa() -> str:
    """Best instruction-set path this CPU supports and this build compiled as such (checked
    when the extension was built): 'baseline', 'avx2' or 'avx512'."""
    return ISA_NAMES[_kernels.cpu_isa()]


def get_isa() -> str:
    """Instruction-set path in use."""
    return ISA_NAMES[_kernels.get_isa()]


def set_isa(name: str) -> str:
    """Force an instruction-set path ('baseline', 'avx2', 'avx512' or 'auto' for the best one).

    All paths return bitwise identical results; this exists for testing and benchmarking.
    Raises ValueError for an unknown name or a path this CPU does not support.
    """
    if name == "auto":
        level = _kernels.cpu_isa()
    elif name in ISA_NAMES:
        level = ISA_NAMES.index(name)
    else:
        raise ValueError(f"isa must be one of {ISA_NAMES + ('auto',)}, got {name!r}")
    if level > _kernels.cpu_isa():
        raise ValueError(f"isa {name!r} is not supported by this CPU (best: {cpu_isa()!r})")
    _kernels.set_isa(level)
    return ISA_NAMES[level]


def available_isas() -> list[str]:
    return list(ISA_NAMES[: _kernels.cpu_isa() + 1])


def _init_isa_from_env() -> None:
    name = os.environ.get("FASTXENT_ISA", "auto").strip().lower() or "auto"
    try:
        set_isa(name)
    except ValueError as exc:
        warnings.warn(f"FASTXENT_ISA ignored: {exc}", RuntimeWarning, stacklevel=2)
        set_isa("auto")


def config_dict() -> dict:
    from fastxent import __version__

    flags = _kernels.build_flags()
    return {
        "fastxent": __version__,
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "openmp": openmp_enabled(),
        "openmp_build": _kernels.build_note(),  # why the build is (not) threaded
        "default_n_threads": resolve_n_threads(None),
        "num_procs": _kernels.num_procs(),
        "isa": get_isa(),
        "cpu_isa": cpu_isa(),
        "isa_build": _isa_build_text(),
        "compiler": flags["compiler"],
        "cflags": flags["cflags"],
        "ldflags": flags["ldflags"],
        "buffer_cache": _buffer_cache_text(),
        "dtypes": _dtypes_text(),
    }


def _dtypes_text() -> str:
    """The y_pred dtypes the losses read, and whether bfloat16 can occur (ml_dtypes found,
    not imported)."""
    import importlib.util

    bf16 = ("bfloat16 (ml_dtypes installed)" if importlib.util.find_spec("ml_dtypes")
            else "bfloat16 (needs ml_dtypes, not installed)")
    return (f"float32, float64; float16, {bf16} computed in float32 (portable 16-bit "
            "conversions, vectorized on the selected path)")


def _isa_build_text() -> str:
    info = _kernels.isa_build()
    return f"{info['note']}; attributes {info['spelling']}"


def _buffer_cache_text() -> str:
    from fastxent._cache import buffer_cache_info

    info = buffer_cache_info()
    if not info["limit_bytes"]:
        return "off"
    return (f"up to {info['slots']} blocks >= {info['min_block_bytes'] >> 20} MiB, "
            f"{info['limit_bytes'] >> 20} MiB in all ({info['held_bytes'] >> 20} MiB held)")


def show_config() -> None:
    """Print version, OpenMP status, default thread count, instruction-set path, compile
    flags, the gradient block cache and the dtypes the losses read."""
    for key, value in config_dict().items():
        print(f"{key + ':':<19}{value}")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
