"""Build-time decisions for fastxent's C extensions: the OpenMP probe and release flags.

Imported by ``setup.py`` (which puts its own directory on ``sys.path``); the unit tests in
``tests/test_build_probe.py`` drive every function here with fake compilers.  Nothing here
imports numpy, Cython or setuptools.

Environment variables
---------------------
CC
    The C compiler command, split like a shell would (``CC="ccache gcc"``,
    ``CC="gcc -pthread"``).  Without it: ``sysconfig``'s ``CC``, else ``cc``.
FASTXENT_OPENMP
    ``0``: build serial kernels without probing.  ``1``: OpenMP is required; a compiler
    without it fails the build.  Unset: probe, and fall back to a serial build with a warning.
FASTXENT_REQUIRE_OPENMP=1
    Alias of ``FASTXENT_OPENMP=1`` (kept for existing CI configurations).
FASTXENT_CROSS
    ``1``: this is a cross build: the probe program is compiled and linked but not run.
    ``0``: never treat the build as a cross build.  Unset: a cross build is detected when
    the compiler's target (``CC -dumpmachine``) or ``sysconfig.get_platform()`` (which
    honours ``_PYTHON_HOST_PLATFORM``) names another architecture than this machine's.
"""

from __future__ import annotations

import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass, field

OPENMP_TEST = r"""
#include <omp.h>
#include <stdio.h>
int main(void) {
    int n = 0;
    #pragma omp parallel reduction(+:n)
    n += 1;
    printf("%d\n", n > 0 && omp_get_max_threads() > 0);
    return 0;
}
"""

TRUE = {"1", "true", "yes", "on"}
FALSE = {"0", "false", "no", "off"}

# Homebrew's libomp (keg-only): Apple Silicon, then Intel prefixes.
HOMEBREW_LIBOMP = ("/opt/homebrew/opt/libomp", "/usr/local/opt/libomp")

_ARCH_ALIASES = {
    "amd64": "x86_64", "x64": "x86_64", "x86-64": "x86_64",
    "arm64": "aarch64", "armv8": "aarch64", "aarch64_be": "aarch64_be",
    "i386": "x86", "i486": "x86", "i586": "x86", "i686": "x86", "win32": "x86",
    "ppc64el": "ppc64le", "powerpc64le": "ppc64le",
}


class OpenMPRequiredError(RuntimeError):
    """OpenMP was required (FASTXENT_OPENMP=1) but the compiler cannot provide it."""


@dataclass
class OpenMPDecision:
    """What the build does about OpenMP, and why (the note goes into fastxent_build.h)."""

    enabled: bool
    compile_args: list[str] = field(default_factory=list)
    link_args: list[str] = field(default_factory=list)
    note: str = ""


def truthy(environ, name):
    return environ.get(name, "").strip().lower() in TRUE


def compiler_command(environ=None, get_config_var=sysconfig.get_config_var):
    """The C compiler as an argv list: ``CC`` (shell-split), else sysconfig's ``CC``, else cc."""
    environ = os.environ if environ is None else environ
    cc = environ.get("CC", "").strip() or (get_config_var("CC") or "").strip() or "cc"
    return shlex.split(cc) or ["cc"]


def normalize_arch(arch):
    arch = (arch or "").strip().lower()
    return _ARCH_ALIASES.get(arch, arch)


def _run(cmd, timeout=120, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


def compiler_target(cc, run=_run):
    """Architecture the compiler generates code for (``CC -dumpmachine``), or None."""
    try:
        out = run([*cc, "-dumpmachine"], timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0 or not out.stdout.strip():
        return None
    return normalize_arch(out.stdout.strip().split("-")[0])


def cross_compiling(cc, environ=None, run=_run, build_machine=None, host_platform=None):
    """``(is_cross, reason)``: whether probe programs can't be run on this machine."""
    environ = os.environ if environ is None else environ
    flag = environ.get("FASTXENT_CROSS", "").strip().lower()
    if flag in TRUE:
        return True, "FASTXENT_CROSS=1"
    if flag in FALSE:
        return False, ""
    build = normalize_arch(build_machine or platform.machine())
    if not build:
        return False, ""
    target = compiler_target(cc, run=run)
    if target and target != build:
        return True, f"the compiler targets {target}, this machine is {build}"
    host = host_platform or sysconfig.get_platform()
    # "linux-aarch64", "macosx-11.0-arm64", "win-amd64"; universal2 builds run natively
    host_arch = normalize_arch(host.rsplit("-", 1)[-1]) if host else ""
    runs_here = {build, "universal2", "intel", "fat", "universal"}
    if build == "x86_64":
        runs_here.add("x86")  # a 32-bit x86 interpreter on an x86-64 machine
    if host_arch and host_arch not in runs_here:
        return True, f"sysconfig's host platform is {host}, this machine is {build}"
    return False, ""


def is_apple_clang(cc, run=_run, sys_platform=None):
    if (sys_platform or sys.platform) != "darwin":
        return False
    try:
        out = run([*cc, "--version"], timeout=60)
    except (OSError, subprocess.SubprocessError):
        return False
    return "apple" in (out.stdout + out.stderr).lower() and "clang" in (
        out.stdout + out.stderr).lower()


def apple_clang_flags(isdir=os.path.isdir, environ=None):
    """scikit-learn's recipe for Apple clang: the preprocessor flag and libomp.

    Homebrew's keg-only libomp is used when present (``HOMEBREW_PREFIX`` first).
    """
    environ = os.environ if environ is None else environ
    compile_args = ["-Xpreprocessor", "-fopenmp"]
    link_args = ["-lomp"]
    prefixes = list(HOMEBREW_LIBOMP)
    if environ.get("HOMEBREW_PREFIX"):
        prefixes.insert(0, os.path.join(environ["HOMEBREW_PREFIX"], "opt", "libomp"))
    for prefix in prefixes:
        if isdir(os.path.join(prefix, "include")) and isdir(os.path.join(prefix, "lib")):
            lib = os.path.join(prefix, "lib")
            compile_args.append(f"-I{os.path.join(prefix, 'include')}")
            link_args = [f"-L{lib}", f"-Wl,-rpath,{lib}", "-lomp"]
            break
    return compile_args, link_args


def _first_error_line(text):
    for line in (text or "").splitlines():
        if "error" in line.lower() or "not found" in line.lower() or "cannot" in line.lower():
            return line.strip()[:200]
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[0][:200] if lines else "no output"


def probe_openmp(cc, compile_args, link_args, cross=False, run=_run):
    """Compile and link (and unless ``cross``, run) a ``#pragma omp parallel`` program.

    Returns ``(ok, reason)``; ``reason`` says what failed, or how far the probe went.
    """
    tmp = tempfile.mkdtemp(prefix="fastxent-omp-")
    try:
        src = os.path.join(tmp, "omp_test.c")
        exe = os.path.join(tmp, "omp_test")
        with open(src, "w") as f:
            f.write(OPENMP_TEST)
        cmd = [*cc, *compile_args, src, "-o", exe, *link_args]
        flags = list(dict.fromkeys([*compile_args, *link_args]))
        shown = " ".join(shlex.quote(a) for a in [*cc, *flags])
        try:
            out = run(cmd)
        except FileNotFoundError:
            return False, f"C compiler {cc[0]!r} not found"
        except (OSError, subprocess.SubprocessError) as exc:
            return False, f"`{shown}` failed: {exc}"
        if out.returncode != 0:
            return False, f"`{shown}` could not build an OpenMP program: " + _first_error_line(
                out.stderr or out.stdout)
        if cross:
            return True, f"`{shown}` compiled and linked an OpenMP program (cross build: not run)"
        try:
            res = run([exe], timeout=60)
        except (OSError, subprocess.SubprocessError) as exc:
            return False, f"the OpenMP program built by `{shown}` did not run: {exc}"
        if res.returncode != 0 or res.stdout.strip() != "1":
            return False, (f"the OpenMP program built by `{shown}` failed "
                           f"(exit {res.returncode}): " + _first_error_line(res.stderr))
        return True, f"`{shown}` compiled, linked and ran an OpenMP program"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def decide_openmp(environ=None, run=_run, get_config_var=sysconfig.get_config_var,
                  sys_platform=None, build_machine=None, host_platform=None,
                  isdir=os.path.isdir):
    """Apply FASTXENT_OPENMP / FASTXENT_REQUIRE_OPENMP / FASTXENT_CROSS and probe.

    Returns an :class:`OpenMPDecision`; raises :class:`OpenMPRequiredError` when OpenMP is
    required and unavailable, ``ValueError`` for an unrecognised ``FASTXENT_OPENMP``.
    """
    environ = os.environ if environ is None else environ
    mode = environ.get("FASTXENT_OPENMP", "").strip().lower()
    if mode and mode not in TRUE | FALSE:
        raise ValueError(f"FASTXENT_OPENMP must be 0 or 1, got {environ['FASTXENT_OPENMP']!r}")
    if mode in FALSE:
        return OpenMPDecision(False, note=f"serial build: FASTXENT_OPENMP={mode} was set")
    required = mode in TRUE or truthy(environ, "FASTXENT_REQUIRE_OPENMP")

    cc = compiler_command(environ, get_config_var)
    cross, why_cross = cross_compiling(cc, environ, run=run, build_machine=build_machine,
                                       host_platform=host_platform)
    if is_apple_clang(cc, run=run, sys_platform=sys_platform):
        compile_args, link_args = apple_clang_flags(isdir=isdir, environ=environ)
    else:
        compile_args, link_args = ["-fopenmp"], ["-fopenmp"]
    ok, reason = probe_openmp(cc, compile_args, link_args, cross=cross, run=run)
    if cross and ok:
        reason = reason[:-1] + f"; {why_cross})"
    elif cross:
        reason += f" (cross build: {why_cross})"
    if ok:
        return OpenMPDecision(True, compile_args, link_args, note=f"OpenMP: {reason}")
    if required:
        which = ("FASTXENT_OPENMP=1" if mode in TRUE else "FASTXENT_REQUIRE_OPENMP=1")
        raise OpenMPRequiredError(f"fastxent: {which} but {reason}")
    return OpenMPDecision(False, note=f"serial build: {reason}")


# -- release flags -------------------------------------------------------------------------

_RPATH = re.compile(r"^(-Wl,-rpath[,=].*|-Wl,-R.*|-Wl,--enable-new-dtags|-R.*)$")


def drop_rpath(args):
    """Remove run-path options (``-Wl,-rpath,DIR``, ``-Wl,-R``, ``-Wl,-rpath -Wl,DIR``).

    The interpreter's own build flags (pyenv, conda, custom prefixes) carry
    ``-Wl,-rpath,<its lib dir>`` into ``LDSHARED``; an extension module needs no run path
    (libpython and libgomp are found by the loader), and a wheel must not name build paths.
    """
    out, skip = [], False
    for arg in args:
        if skip:
            skip = False
            continue
        if arg in ("-Wl,-rpath", "-rpath"):
            skip = True
            continue
        if _RPATH.match(arg):
            continue
        out.append(arg)
    return out


def drop_debug(args):
    """Remove ``-g``/``-g2``/``-ggdb`` ... (sysconfig's CFLAGS carry the interpreter's ``-g``)."""
    return [a for a in args if not re.fullmatch(r"-g(gdb|dwarf(-\d)?|\d)?", a)]


def c_string(text):
    """A C string literal for ``text``."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")
    return f'"{escaped}"'
