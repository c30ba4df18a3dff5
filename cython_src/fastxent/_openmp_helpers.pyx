"""Build and OpenMP facts of the compiled kernels (private; see fastxent.show_config)."""
from fastxent._openmp cimport FX_OPENMP_ENABLED, fx_omp_max_threads, fx_omp_num_procs


cdef extern from "fastxent_build.h":
    const char *FASTXENT_BUILD_CFLAGS
    const char *FASTXENT_BUILD_LDFLAGS
    const char *FASTXENT_BUILD_COMPILER
    const char *FASTXENT_BUILD_OPENMP_NOTE


def openmp_enabled():
    return bool(FX_OPENMP_ENABLED)


def max_threads():
    """OpenMP's default team size (honours OMP_NUM_THREADS); 1 in a serial build."""
    return fx_omp_max_threads()


def num_procs():
    """Processors available to this process (OpenMP's count); 1 in a serial build."""
    return fx_omp_num_procs()


def build_flags():
    return {
        "compiler": FASTXENT_BUILD_COMPILER.decode(),
        "cflags": FASTXENT_BUILD_CFLAGS.decode(),
        "ldflags": FASTXENT_BUILD_LDFLAGS.decode(),
    }


def build_note():
    """Why the build is (or is not) multi-threaded: the OpenMP probe's verdict at build time."""
    return FASTXENT_BUILD_OPENMP_NOTE.decode()
