"""Build script for fastxent's compiled kernels.

Environment variables read at build time
----------------------------------------
CC
    The C compiler, split like a shell would (``CC="ccache gcc"`` works); without it
    sysconfig's ``CC``, else ``cc``.
FASTXENT_OPENMP=0 / =1
    ``0`` builds serial kernels without probing; ``1`` fails the build when the compiler cannot
    build an OpenMP program (CI sets it).  Unset: probe, and on failure build serial kernels
    with a warning; the reason is recorded and ``fastxent.show_config()`` prints it.
FASTXENT_REQUIRE_OPENMP=1
    Alias of ``FASTXENT_OPENMP=1``.
FASTXENT_CROSS=1 / =0
    Force / forbid cross-build handling (the probe program is compiled and linked, not run).
    Detected without it from ``CC -dumpmachine`` and ``sysconfig.get_platform()``.
    The probe and these rules live in ``buildtools/openmp_probe.py``.
FASTXENT_SANITIZE=1
    Build with ``-fsanitize=address,undefined`` (and ``-O1 -g``) for the sanitizer run.
    Load ``libasan`` with ``LD_PRELOAD`` when running Python against such a build.
FASTXENT_DEBUG=1
    ``-O0 -g`` for debugging.

Compile flags are chosen for exact IEEE semantics and portability: never ``-ffast-math``,
``-Ofast``, ``-ffinite-math-only`` or ``-march=native``.  Release builds carry no debug
information (``-g0``, stripped with ``-s`` on Linux) and no run path: the ``-Wl,-rpath`` an
interpreter's own ``LDSHARED`` may carry (pyenv, custom prefixes) is dropped.  The C API
floor is pinned with ``NPY_TARGET_VERSION`` to NumPy 1.25, the oldest NumPy declared in
``pyproject.toml``: a wheel built against NumPy 2.x runs on NumPy >= 1.25.
``-ffp-contract=off`` keeps the compiler from fusing multiply-adds, so that every
instruction-set path (chosen at run time, see ``cython_src/fastxent/xent_kernels.h``)
produces bitwise identical results.  ``buildtools/isa_probe.py`` checks that the AVX2 and
AVX-512 variants compile to ymm / zmm code with this compiler (the highest level that does is
recorded; the run-time dispatch never goes above it) and adds clang's
``-mllvm -vectorizer-maximize-bandwidth`` so that clang's float32 loops use full-width vectors.
"""

import os
import sys
import warnings

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from buildtools import isa_probe, openmp_probe  # noqa: E402

GENERATED = os.path.join(HERE, "build", "fastxent_generated")


def _truthy(name):
    return openmp_probe.truthy(os.environ, name)


class ReleaseBuildExt(build_ext):
    """Drops the interpreter's ``-g`` and ``-Wl,-rpath,...`` from the compile/link commands."""

    def build_extensions(self):
        cc = self.compiler
        if getattr(cc, "compiler_type", "") == "unix":
            for attr in ("compiler_so", "compiler", "compiler_so_cxx"):
                if getattr(cc, attr, None):
                    setattr(cc, attr, openmp_probe.drop_debug(getattr(cc, attr)))
            for attr in ("linker_so", "linker_exe", "linker_so_cxx"):
                if getattr(cc, attr, None):
                    setattr(cc, attr, openmp_probe.drop_rpath(getattr(cc, attr)))
            cc.runtime_library_dirs = []
        super().build_extensions()


def main():
    try:
        omp = openmp_probe.decide_openmp()
    except (openmp_probe.OpenMPRequiredError, ValueError) as exc:
        sys.exit(str(exc))
    if omp.enabled:
        omp_compile, omp_link = omp.compile_args, omp.link_args
        if sys.platform.startswith("linux"):  # the kernels' thread team (xent_team.h)
            omp_compile, omp_link = [*omp_compile, "-pthread"], [*omp_link, "-pthread"]
    else:
        warnings.warn(f"fastxent: {omp.note}; the kernels will run on one thread.",
                      stacklevel=1)
        omp_compile, omp_link = ["-fopenmp-simd"], []

    if _truthy("FASTXENT_SANITIZE"):
        opt = ["-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined",
               "-fno-sanitize-recover=undefined"]
        link_extra = ["-fsanitize=address,undefined"]
    elif _truthy("FASTXENT_DEBUG"):
        opt, link_extra = ["-O0", "-g"], []
    else:
        # release: no debug information, stripped (GNU ld's -s; Apple's ld has no -s)
        opt = ["-O3", "-g0"]
        link_extra = ["-s"] if sys.platform.startswith("linux") else []

    # Exact IEEE semantics: no fast-math family; no FMA contraction (identical bits on every
    # instruction-set path); errno-free math so that vectorizable code stays vectorizable.
    numerics = ["-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math"]
    cc = openmp_probe.compiler_command()
    compile_args = [*opt, *numerics, *omp_compile, "-std=c11",
                    "-Wno-unused-function", "-Wno-unreachable-code", *isa_probe.vector_flags(cc)]
    link_args = [*omp_link, *link_extra]
    # which instruction-set variants really compile to AVX2 / AVX-512 code (xent_isa.h)
    kernel_dir = os.path.join("cython_src", "fastxent")
    probe_args = [*numerics, *omp_compile, "-std=c11", *isa_probe.vector_flags(cc)]
    isa_max, isa_note = isa_probe.probe_isa(cc, probe_args, os.path.join(HERE, kernel_dir))
    if opt[0] != "-O3":
        # a debug or sanitizer build keeps every path selectable (above); say whether its own
        # optimization level vectorizes the loops (-O1 does, -O0 does not)
        own_level, _ = isa_probe.probe_isa(cc, [*probe_args, opt[0]],
                                           os.path.join(HERE, kernel_dir))
        if own_level < isa_max:
            isa_note += (f"; this build's {opt[0]} leaves the kernels' loops scalar on every "
                         "path (only their intrinsics are wide)")

    os.makedirs(GENERATED, exist_ok=True)
    with open(os.path.join(GENERATED, "fastxent_build.h"), "w") as f:
        f.write("/* generated by setup.py */\n")
        c_string = openmp_probe.c_string
        f.write(f"#define FASTXENT_BUILD_CFLAGS {c_string(' '.join(compile_args))}\n")
        f.write(f"#define FASTXENT_BUILD_LDFLAGS {c_string(' '.join(link_args))}\n")
        f.write(f"#define FASTXENT_BUILD_COMPILER {c_string(' '.join(cc))}\n")
        f.write(f"#define FASTXENT_BUILD_OPENMP {int(omp.enabled)}\n")
        f.write(f"#define FASTXENT_BUILD_OPENMP_NOTE {c_string(omp.note)}\n")
        f.write(f"#define FASTXENT_BUILD_ISA_MAX {isa_max}\n")
        f.write(f"#define FASTXENT_BUILD_ISA_NOTE {c_string(isa_note)}\n")

    include_dirs = [np.get_include(), os.path.join(HERE, "cython_src", "fastxent"), GENERATED]
    # NPY_TARGET_VERSION: the oldest NumPy the built extensions run with (pyproject's floor)
    macros = [("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION"),
              ("NPY_TARGET_VERSION", "NPY_1_25_API_VERSION")]
    # the C kernels the modules include: a change to any of them rebuilds the extensions
    headers = sorted(
        os.path.join(kernel_dir, f) for f in os.listdir(kernel_dir) if f.endswith((".h", ".inc"))
    )
    # One extension: the C kernels are compiled once, every C function is static and the
    # module exports only its init function (-fvisibility=hidden).
    extensions = [
        Extension(
            "fastxent._kernels",
            [os.path.join(kernel_dir, "_kernels.pyx")],
            include_dirs=include_dirs,
            define_macros=macros,
            extra_compile_args=[*compile_args, "-fvisibility=hidden"],
            extra_link_args=link_args,
            libraries=["m"],
            depends=headers,
        )
    ]
    setup(
        cmdclass={"build_ext": ReleaseBuildExt},
        ext_modules=cythonize(
            extensions,
            compiler_directives={
                "language_level": 3,
                "boundscheck": False,
                "wraparound": False,
                "cdivision": True,
                "initializedcheck": False,
            },
            include_path=[os.path.join(HERE, "cython_src")],
        ),
    )


if __name__ == "__main__":
    main()
