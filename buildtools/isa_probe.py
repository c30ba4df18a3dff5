"""Build-time check of the instruction-set variants: is AVX2 / AVX-512 code really compiled?

The kernels are compiled three times, the second and third time under the function attributes
of ``cython_src/fastxent/xent_isa.h``.  A compiler that does not understand an attribute may
ignore it with a mere warning (clang did so with GCC's ``prefer-vector-width=512`` spelling),
leaving baseline code under an AVX-512 name.  This probe compiles the kernels' exponential
pass (the single-precision exponential of ``xent_math.h`` with its float64 sums, the loop that
sets the time of a softmax row) under each attribute with the build's own flags, to assembly,
and reads which registers its float32 arithmetic uses: ``ymm`` for AVX2, ``zmm`` for AVX-512.
A compiler that ignores an attribute, or does not vectorize that loop at full width under
it, fails the level.  ``setup.py`` records the highest level that passed as
``FASTXENT_BUILD_ISA_MAX`` (the run-time dispatch never selects a path above it) and the
verdict as ``FASTXENT_BUILD_ISA_NOTE`` (``fastxent.show_config()`` prints it).

``tests/test_build_probe.py`` drives these functions with fake compilers;
``tests/test_kernel_paths.py`` disassembles the built extension.  Nothing here imports numpy,
Cython or setuptools.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile

from buildtools.openmp_probe import _first_error_line, _run

PROBE_SOURCE = r"""
#include "xent_isa.h"
#include "xent_math.h"
#if FX_HAVE_DISPATCH
/* The float kernels' exponential pass (fx_row_expsum in xent_rows.inc): the single-precision
 * exponential with its exact shift, the exponentials stored, and their sums in 16 float64
 * lanes.  It sets the time of a softmax row and is the loop that most needs full-width
 * vectors; a compiler that leaves it scalar, or at half width, under an attribute fails
 * that attribute's level. */
#define FX_PROBE_BODY                                                   \
    double acc[16];                                                     \
    for (int j = 0; j < 16; j++) acc[j] = 0.0;                          \
    for (long k = 0; k + 16 <= n; k += 16) {                            \
        _Pragma("omp simd")                                             \
        for (int j = 0; j < 16; j++) {                                  \
            float e = fx_expf_shifted(x[k + j], negm);                  \
            g[k + j] = e;                                               \
            acc[j] += (double)e;                                        \
        }                                                               \
    }                                                                   \
    double s = 0.0;                                                     \
    for (int j = 0; j < 16; j++) s += acc[j];                           \
    return s;
FX_ATTR_AVX2 double fx_probe_avx2(const float *restrict x, float *restrict g, long n,
                                  float negm)
{
    FX_PROBE_BODY
}
FX_ATTR_AVX512 double fx_probe_avx512(const float *restrict x, float *restrict g, long n,
                                      float negm)
{
    FX_PROBE_BODY
}
#endif
"""

# level -> (probe function, register that proves the width, name)
LEVELS = {1: ("fx_probe_avx2", "ymm", "avx2"), 2: ("fx_probe_avx512", "zmm", "avx512")}

# Options to make a compiler's vectorizer use the full width of the attribute's registers.
# clang sizes a loop's vectors by its widest element type (double), so a float32 loop that
# accumulates in double would run on half-width float vectors; maximize-bandwidth sizes them
# by the narrowest type, as GCC does.
CLANG_VECTOR_FLAGS = ["-mllvm", "-vectorizer-maximize-bandwidth"]


def is_clang(cc, run=_run):
    """Whether ``cc`` is clang (Apple's included), from ``cc --version``."""
    try:
        out = run([*cc, "--version"], timeout=60)
    except (OSError, subprocess.SubprocessError):
        return False
    return "clang" in (out.stdout + out.stderr).lower()


def vector_flags(cc, run=_run):
    """Extra compile options for full-width vectors with this compiler (clang: see above)."""
    return list(CLANG_VECTOR_FLAGS) if is_clang(cc, run=run) else []


def function_body(asm, name):
    """The assembly text of function ``name`` (from its label to the end of the function)."""
    m = re.search(rf"^{re.escape(name)}:", asm, flags=re.MULTILINE)
    if not m:
        return None
    rest = asm[m.end():]
    end = re.search(r"^\s*(\.cfi_endproc|\.size\s+" + re.escape(name) + r"\b)", rest,
                    flags=re.MULTILINE)
    return rest[:end.start()] if end else rest


def levels_in_assembly(asm):
    """``(max_level, facts)``: the highest level whose probe function does its single-precision
    arithmetic (``vmulps`` / ``vaddps`` / ``vsubps``) on its register class, every lower level
    passing too; ``facts`` says what was found for each level.  Wide registers alone are not
    enough: a compiler that sizes the loop by its float64 sums runs the float32 exponential at
    half width and only converts into the wide registers."""
    best, facts = 0, []
    for level in sorted(LEVELS):
        func, reg, name = LEVELS[level]
        body = function_body(asm, func)
        if body is None:
            facts.append(f"{name}: no code")
            break
        if not re.search(rf"%{reg}\d|\b{reg}\d", body):
            facts.append(f"{name}: attribute compiled without {reg} registers")
            break
        # AT&T (gcc, clang -S) or Intel operand order
        if not re.search(rf"\bv(?:mul|add|sub)ps\b[^\n]*(?:%{reg}\d|\b{reg}\d)", body):
            facts.append(f"{name}: exponential pass not vectorized on {reg} registers")
            break
        facts.append(f"{name}: {reg} code")
        best = level
    return best, facts


def probe_isa(cc, compile_args, include_dir, run=_run):
    """Compile the probe under the kernels' attributes, at ``-O3`` with ``compile_args``, to
    assembly.  ``setup.py`` passes the release build's code-generation options (numerics,
    OpenMP, vector flags) whatever the build's own level: the probe checks the attributes,
    and a debug or sanitizer build must still reach every path.

    Returns ``(max_level, note)``: 0 (baseline only), 1 (AVX2) or 2 (AVX-512), and a note for
    ``show_config()``.  Warnings are errors here: an ignored attribute fails its level.
    """
    with tempfile.TemporaryDirectory(prefix="fastxent-isa-") as tmp:
        src, out = os.path.join(tmp, "isa_probe.c"), os.path.join(tmp, "isa_probe.s")
        with open(src, "w") as f:
            f.write(PROBE_SOURCE)
        cmd = [*cc, "-O3", *compile_args, "-Werror", f"-I{include_dir}", "-S", src, "-o", out]
        try:
            res = run(cmd)
        except (OSError, subprocess.SubprocessError) as exc:
            return 0, f"baseline only: the instruction-set probe did not run ({exc})"
        if res.returncode != 0:
            return 0, ("baseline only: the kernels' AVX2 / AVX-512 attributes do not compile "
                       "cleanly: " + _first_error_line(res.stderr or res.stdout))
        with open(out) as f:
            asm = f.read()
    level, facts = levels_in_assembly(asm)
    names = {0: "baseline", 1: "avx2", 2: "avx512"}
    return level, f"up to {names[level]} ({'; '.join(facts)})"
