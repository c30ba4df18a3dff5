"""The build's OpenMP probe and release-flag helpers (buildtools/openmp_probe.py).

Fake compilers stand in for real ones: a ``run`` callable that answers like gcc, clang, a
cross-compiler or a broken toolchain would, and a few executable scripts in a temporary
directory for the real subprocess path.  Fast: no extension is built.
"""

import os
import shutil
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir))
from buildtools import openmp_probe as P  # noqa: E402


class FakeToolchain:
    """Answers ``CC -dumpmachine``, ``CC --version``, the compile command and the probe run."""

    def __init__(self, target="x86_64-linux-gnu", version="gcc (Debian 12.2.0) 12.2.0",
                 compile_ok=True, run_output="1\n", stderr="fatal error: omp.h: No such file"):
        self.target, self.version = target, version
        self.compile_ok, self.run_output, self.stderr = compile_ok, run_output, stderr
        self.calls = []

    def __call__(self, cmd, timeout=120, **kw):
        self.calls.append(list(cmd))
        ok = subprocess.CompletedProcess(cmd, 0, "", "")
        if cmd[-1] == "-dumpmachine":
            return subprocess.CompletedProcess(cmd, 0, self.target + "\n", "")
        if cmd[-1] == "--version":
            return subprocess.CompletedProcess(cmd, 0, self.version + "\n", "")
        if len(cmd) == 1 and cmd[0].endswith("omp_test"):
            return subprocess.CompletedProcess(cmd, 0, self.run_output, "")
        if "-o" in cmd:
            if not self.compile_ok:
                return subprocess.CompletedProcess(cmd, 1, "", self.stderr)
            return ok
        raise AssertionError(f"unexpected command {cmd}")

    @property
    def compile_calls(self):
        return [c for c in self.calls if "-o" in c]

    @property
    def ran_probe(self):
        return any(len(c) == 1 and c[0].endswith("omp_test") for c in self.calls)


def decide(env, tool, **kw):
    kw.setdefault("build_machine", "x86_64")
    kw.setdefault("host_platform", "linux-x86_64")
    kw.setdefault("sys_platform", "linux")
    kw.setdefault("get_config_var", lambda name: "gcc")
    return P.decide_openmp(environ=env, run=tool, **kw)


@pytest.mark.parametrize("cc, argv", [
    ("gcc -pthread", ["gcc", "-pthread"]),
    ("ccache gcc", ["ccache", "gcc"]),
    ("  clang  ", ["clang"]),
    ("'/opt/my cc/bin/gcc' -m64", ["/opt/my cc/bin/gcc", "-m64"]),
])
def test_cc_is_split_like_a_shell(cc, argv):
    assert P.compiler_command({"CC": cc}) == argv
    tool = FakeToolchain()
    d = decide({"CC": cc}, tool)
    assert d.enabled and d.compile_args == ["-fopenmp"]
    (compile_cmd,) = tool.compile_calls
    assert compile_cmd[: len(argv)] == argv
    assert tool.ran_probe


@pytest.mark.parametrize("config_cc, argv", [
    (None, ["cc"]), ("", ["cc"]), ("gcc -pthread", ["gcc", "-pthread"]),
])
def test_missing_cc_falls_back(config_cc, argv):
    assert P.compiler_command({}, get_config_var=lambda name: config_cc) == argv


def test_native_build_runs_the_probe_and_checks_its_output():
    tool = FakeToolchain(run_output="0\n")
    d = decide({}, tool)
    assert not d.enabled and tool.ran_probe
    assert d.note.startswith("serial build:") and "failed" in d.note


def test_cross_compiler_is_detected_from_its_target_and_not_run():
    tool = FakeToolchain(target="aarch64-linux-gnu")
    d = decide({"CC": "aarch64-linux-gnu-gcc"}, tool)
    assert d.enabled and not tool.ran_probe
    assert "cross build" in d.note and "aarch64" in d.note


def test_cross_build_from_sysconfig_host_platform():
    tool = FakeToolchain(target="x86_64-linux-gnu")  # e.g. a wrapper that hides the target
    d = decide({}, tool, host_platform="linux-aarch64")
    assert d.enabled and not tool.ran_probe
    assert "linux-aarch64" in d.note


def test_fastxent_cross_env_forces_and_forbids():
    tool = FakeToolchain()
    assert decide({"FASTXENT_CROSS": "1"}, tool).enabled and not tool.ran_probe
    tool = FakeToolchain(target="aarch64-linux-gnu")
    assert decide({"FASTXENT_CROSS": "0"}, tool).enabled and tool.ran_probe


def test_cross_compiler_without_openmp_is_serial_with_reason():
    tool = FakeToolchain(target="aarch64-linux-gnu", compile_ok=False)
    d = decide({}, tool)
    assert not d.enabled and "omp.h" in d.note and not tool.ran_probe


@pytest.mark.parametrize("machine, target, cross", [
    ("x86_64", "x86_64-pc-linux-gnu", False),
    ("AMD64", "x86_64-w64-mingw32", False),
    ("arm64", "arm64-apple-darwin23.0.0", False),
    ("aarch64", "aarch64-unknown-linux-gnu", False),
    ("x86_64", "aarch64-linux-gnu", True),
    ("x86_64", "powerpc64le-linux-gnu", True),
    ("arm64", "x86_64-apple-darwin", True),
])
def test_target_triples(machine, target, cross):
    tool = FakeToolchain(target=target)
    host = "linux-" + machine
    got, _ = P.cross_compiling(["cc"], {}, run=tool, build_machine=machine, host_platform=host)
    assert got is cross


def test_dumpmachine_failure_falls_back_to_sysconfig():
    def run(cmd, **kw):
        raise FileNotFoundError(cmd[0])
    assert P.cross_compiling(["cc"], {}, run=run, build_machine="x86_64",
                             host_platform="linux-x86_64") == (False, "")
    assert P.cross_compiling(["cc"], {}, run=run, build_machine="x86_64",
                             host_platform="linux-aarch64")[0]
    # universal2 builds run natively
    assert not P.cross_compiling(["cc"], {}, run=run, build_machine="arm64",
                                 host_platform="macosx-11.0-universal2")[0]


def test_apple_clang_gets_the_preprocessor_recipe_and_libomp():
    tool = FakeToolchain(target="arm64-apple-darwin23.0.0",
                         version="Apple clang version 15.0.0 (clang-1500.1.0.2.5)")
    d = decide({"CC": "clang"}, tool, sys_platform="darwin", build_machine="arm64",
               host_platform="macosx-11.0-arm64", isdir=lambda p: False)
    assert d.enabled
    assert d.compile_args == ["-Xpreprocessor", "-fopenmp"] and d.link_args == ["-lomp"]
    assert tool.ran_probe


def test_apple_clang_uses_homebrew_libomp_when_present():
    brew = "/opt/homebrew/opt/libomp"
    tool = FakeToolchain(target="arm64-apple-darwin23.0.0", version="Apple clang version 15")
    d = decide({"CC": "clang"}, tool, sys_platform="darwin", build_machine="arm64",
               host_platform="macosx-11.0-arm64", isdir=lambda p: p.startswith(brew))
    assert d.compile_args == ["-Xpreprocessor", "-fopenmp", f"-I{brew}/include"]
    assert d.link_args == [f"-L{brew}/lib", f"-Wl,-rpath,{brew}/lib", "-lomp"]
    (compile_cmd,) = tool.compile_calls
    assert compile_cmd[-3:] == d.link_args


def test_llvm_clang_on_macos_and_gcc_on_linux_get_fopenmp():
    tool = FakeToolchain(version="Homebrew clang version 18.1.8")
    d = decide({"CC": "clang"}, tool, sys_platform="darwin", build_machine="arm64",
               host_platform="macosx-11.0-arm64")
    assert d.compile_args == ["-fopenmp"]
    # an "Apple clang" --version on Linux is not treated as Apple's toolchain
    tool = FakeToolchain(version="Apple clang version 15")
    assert decide({}, tool).compile_args == ["-fopenmp"]


@pytest.mark.parametrize("value", ["0", "false", "off"])
def test_fastxent_openmp_0_is_serial_without_probing(value):
    tool = FakeToolchain()
    d = decide({"FASTXENT_OPENMP": value}, tool)
    assert not d.enabled and tool.calls == []
    assert d.note == f"serial build: FASTXENT_OPENMP={value} was set"


@pytest.mark.parametrize("env", [{"FASTXENT_OPENMP": "1"}, {"FASTXENT_REQUIRE_OPENMP": "1"}])
def test_required_openmp_fails_with_the_reason(env):
    tool = FakeToolchain(compile_ok=False)
    with pytest.raises(P.OpenMPRequiredError, match=r"=1 but .*omp\.h: No such file"):
        decide(env, tool)
    assert decide(env, FakeToolchain()).enabled


def test_unavailable_openmp_gives_a_serial_build_with_the_reason():
    tool = FakeToolchain(compile_ok=False)
    d = decide({}, tool)
    assert not d.enabled and d.compile_args == [] and d.link_args == []
    assert d.note.startswith("serial build: `gcc -fopenmp` could not build an OpenMP program")
    assert "omp.h" in d.note


def test_bad_fastxent_openmp_value():
    with pytest.raises(ValueError, match="FASTXENT_OPENMP must be 0 or 1, got 'maybe'"):
        decide({"FASTXENT_OPENMP": "maybe"}, FakeToolchain())


def test_missing_compiler_is_reported(tmp_path):
    d = P.decide_openmp(environ={"CC": str(tmp_path / "no-such-cc")}, build_machine="x86_64",
                        host_platform="linux-x86_64", sys_platform="linux")
    assert not d.enabled and "not found" in d.note


def _script(path, body):
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


@pytest.mark.skipif(sys.platform == "win32", reason="shell scripts as fake compilers")
def test_real_subprocess_with_fake_compiler_scripts(tmp_path):
    # a "compiler" that takes a wrapper argument and writes a probe printing 1
    cc = _script(tmp_path / "fakecc", 'case "$*" in *-dumpmachine*) echo x86_64-linux-gnu;'
                 ' exit 0;; esac\n'
                 'while [ "$1" != "-o" ]; do shift; done\n'
                 'printf "#!/bin/sh\\necho 1\\n" > "$2"; chmod +x "$2"\n')
    d = P.decide_openmp(environ={"CC": f"{cc} --wrapped"}, build_machine="x86_64",
                        host_platform="linux-x86_64", sys_platform="linux")
    assert d.enabled, d.note
    broken = _script(tmp_path / "brokencc", 'echo "cc1: error: unrecognized -fopenmp" >&2\n'
                     'exit 1\n')
    d = P.decide_openmp(environ={"CC": broken}, build_machine="x86_64",
                        host_platform="linux-x86_64", sys_platform="linux")
    assert not d.enabled and "unrecognized -fopenmp" in d.note


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
def test_real_gcc_with_extra_words_in_cc():
    import platform
    d = P.decide_openmp(environ={"CC": "gcc -pthread"}, build_machine=platform.machine(),
                        host_platform=None)
    assert d.enabled, d.note
    assert "`gcc -pthread -fopenmp` compiled, linked and ran" in d.note


def test_drop_rpath_and_debug():
    ld = ["gcc", "-shared", "-L/p/lib", "-Wl,-rpath,/p/lib", "-Wl,-rpath=/q", "-Wl,-R/r",
          "-Wl,-rpath", "-Wl,/s", "-Wl,--enable-new-dtags", "-fopenmp"]
    assert P.drop_rpath(ld) == ["gcc", "-shared", "-L/p/lib", "-fopenmp"]
    cflags = ["gcc", "-g", "-fwrapv", "-O3", "-g3", "-ggdb", "-gdwarf-4", "-Wall", "-gsplit"]
    assert P.drop_debug(cflags) == ["gcc", "-fwrapv", "-O3", "-Wall", "-gsplit"]


def test_c_string_escapes():
    assert P.c_string('a "b" \\c\nd') == '"a \\"b\\" \\\\c d"'


# -- the instruction-set probe (buildtools/isa_probe.py) -------------------------------------

from buildtools import isa_probe as I  # noqa: E402

GCC_ASM = """\t.globl\tfx_probe_avx2
fx_probe_avx2:
.LFB0:
\tvmovups\t(%rdi,%rax), %ymm0
\tvmulps\t(%rsi,%rax), %ymm0, %ymm0
\t.cfi_endproc
fx_probe_avx512:
.LFB1:
\tvmovups\t(%rdi,%rax), %zmm0
\tvaddps\t%zmm2, %zmm0, %zmm0
\t.cfi_endproc
"""
# clang puts a comment after the label; a spelling it ignored leaves xmm code
CLANG_IGNORED_ASM = """fx_probe_avx2:                          # @fx_probe_avx2
\tvmulps\t(%rsi,%rax,4), %ymm1, %ymm1
\t.cfi_endproc
fx_probe_avx512:                        # @fx_probe_avx512
\tmulps\t(%rsi,%rax,4), %xmm1
\t.cfi_endproc
"""


class FakeAsmCompiler:
    """Answers ``--version`` and writes ``asm`` to the -o file of an -S compile."""

    def __init__(self, asm="", version="gcc (Debian 12.2.0) 12.2.0", returncode=0, stderr=""):
        self.asm, self.version, self.returncode, self.stderr = asm, version, returncode, stderr
        self.calls = []

    def __call__(self, cmd, timeout=120, **kw):
        self.calls.append(list(cmd))
        if cmd[-1] == "--version":
            return subprocess.CompletedProcess(cmd, 0, self.version + "\n", "")
        assert "-S" in cmd and "-Werror" in cmd
        if self.returncode == 0:
            with open(cmd[cmd.index("-o") + 1], "w") as f:
                f.write(self.asm)
        return subprocess.CompletedProcess(cmd, self.returncode, "", self.stderr)


def test_isa_levels_read_from_the_registers_of_each_probe_function():
    assert I.levels_in_assembly(GCC_ASM) == (2, ["avx2: ymm code", "avx512: zmm code"])
    level, facts = I.levels_in_assembly(CLANG_IGNORED_ASM)
    assert level == 1 and facts[1] == "avx512: attribute compiled without zmm registers"
    # no probe functions (a target without dispatch): baseline
    assert I.levels_in_assembly("main:\n\tret\n") == (0, ["avx2: no code"])
    # a level counts only with every level below it
    assert I.levels_in_assembly(GCC_ASM.replace("%ymm", "%xmm"))[0] == 0
    # wide registers for the float64 sums only, the float32 arithmetic at half width: clang
    # without -vectorizer-maximize-bandwidth
    half = GCC_ASM.replace("\tvaddps\t%zmm2, %zmm0, %zmm0", "\tvaddps\t%ymm2, %ymm0, %ymm0")
    level, facts = I.levels_in_assembly(half)
    assert level == 1 and facts[1] == "avx512: exponential pass not vectorized on zmm registers"


def test_isa_probe_compiles_to_assembly_with_warnings_as_errors(tmp_path):
    tool = FakeAsmCompiler(GCC_ASM)
    level, note = I.probe_isa(["gcc"], ["-fopenmp"], str(tmp_path), run=tool)
    assert (level, note) == (2, "up to avx512 (avx2: ymm code; avx512: zmm code)")
    (cmd,) = tool.calls
    assert cmd[:3] == ["gcc", "-O3", "-fopenmp"] and f"-I{tmp_path}" in cmd


def test_isa_probe_rejected_attribute_means_baseline_with_the_reason(tmp_path):
    msg = ("isa_probe.c:9:1: error: unsupported 'prefer-vector-width=512' in the 'target' "
           "attribute string; 'target' attribute ignored [-Werror,-Wignored-attributes]")
    tool = FakeAsmCompiler(returncode=1, stderr=msg)
    level, note = I.probe_isa(["clang"], [], str(tmp_path), run=tool)
    assert level == 0 and "prefer-vector-width=512" in note and note.startswith("baseline only")


def test_clang_gets_full_width_vectors_and_gcc_nothing():
    clang = FakeAsmCompiler(version="Debian clang version 14.0.6")
    assert I.vector_flags(["clang"], run=clang) == ["-mllvm", "-vectorizer-maximize-bandwidth"]
    assert I.vector_flags(["gcc"], run=FakeAsmCompiler()) == []


@pytest.mark.parametrize("cc", ["gcc", "clang"])
def test_real_compiler_builds_the_kernels_attributes_as_wide_code(cc):
    """The attribute spellings of xent_isa.h, with a real compiler, give ymm / zmm code for
    the kernels' exponential pass; at -O0 (no vectorizer) the probe says baseline."""
    if shutil.which(cc) is None:
        pytest.skip(f"{cc} is not installed")
    if not I.is_clang([cc]) and cc == "clang":
        pytest.skip("clang is not clang")
    kernels = os.path.join(os.path.dirname(__file__), os.pardir, "cython_src", "fastxent")
    # setup.py's numerics flags (without -fno-trapping-math GCC keeps the selects scalar)
    args = ["-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math", "-fopenmp-simd",
            "-std=c11", *I.vector_flags([cc])]
    level, note = I.probe_isa([cc], args, kernels)
    import platform
    expected = 2 if platform.machine().lower() in ("x86_64", "amd64") else 0
    assert level == expected, note
    level, note = I.probe_isa([cc], [*args, "-O0"], kernels)  # the last -O wins
    assert level == 0, note
