#!/usr/bin/env bash
# aarch64 cross build, tested under qemu-user.
#
#   * toolchain: Debian's gcc-aarch64-linux-gnu (cross gcc + libgomp), libc6-dev-arm64-cross
#     (the target's C headers) and qemu-user;
#   * target Python: Debian's arm64 python3.11 packages (same 3.11 and glibc as the build
#     machine's), fetched with `apt-get download` after `dpkg --add-architecture arm64` and
#     unpacked with dpkg-deb into a sysroot, never installed (installing python3.11:arm64
#     would replace the amd64 python3.11);
#   * target NumPy, pytest, hypothesis: PyPI's manylinux aarch64 wheels, `pip install
#     --target` with --platform (Debian's python3-numpy is 1.24, below fastxent's floor);
#   * the build: the host's Python 3.11 runs setup.py with CC=aarch64-linux-gnu-gcc (the
#     probe sees the aarch64 target: compile and link only), the target's Python headers
#     first on the include path; the modules are renamed to the aarch64 extension suffix;
#   * the tests: the target Python under `qemu-aarch64 -L <sysroot>` runs a kernel subset.
#
# Usage: .ci/cross_aarch64.sh   (as root: apt-get; $PYTHON must be a 3.11 with numpy,
#        Cython and setuptools; CROSS_TESTS overrides the test subset)
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/fastxent-aarch64.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
SYSROOT=$WORK/sysroot
SITE=$WORK/site
export DEBIAN_FRONTEND=noninteractive

pyver=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [ "$pyver" != "3.11" ]; then
    echo "cross_aarch64.sh: \$PYTHON is $pyver; the build Python must match Debian's arm64 3.11" >&2
    exit 2
fi

echo "== toolchain: gcc-aarch64-linux-gnu, qemu-user, arm64 python3.11 packages"
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    dpkg --add-architecture arm64
fi
apt-get update -q > "$WORK/apt.log" 2>&1 || { tail "$WORK/apt.log" >&2; exit 1; }
# libc6-dev-arm64-cross (the target's C headers and crt files) is only a Recommends of the
# cross gcc, which --no-install-recommends leaves out: named here
apt-get install -y -q --no-install-recommends gcc-aarch64-linux-gnu libc6-dev-arm64-cross \
    qemu-user >> "$WORK/apt.log" 2>&1 || { tail -n 30 "$WORK/apt.log" >&2; exit 1; }

# What the target interpreter and the extensions load (checked with readelf -d on the
# python3.11 binary, the stdlib's extension modules pytest uses, numpy and fastxent).
ARM_DEBS="libc6 libgcc-s1 libstdc++6 libgomp1 zlib1g libexpat1 libffi8 libbz2-1.0 liblzma5
libssl3 libuuid1 libcrypt1 libsqlite3-0 libncursesw6 libtinfo6 libreadline8 media-types
python3.11-minimal libpython3.11-minimal libpython3.11-stdlib libpython3.11-dev"
mkdir -p "$WORK/debs" "$SYSROOT"
(cd "$WORK/debs" && for p in $ARM_DEBS; do
    case $p in media-types) apt-get download -q "$p" ;; *) apt-get download -q "$p:arm64" ;; esac
done) >> "$WORK/apt.log" 2>&1 || { tail -n 30 "$WORK/apt.log" >&2; exit 1; }
for deb in "$WORK"/debs/*.deb; do dpkg-deb -x "$deb" "$SYSROOT"; done
TARGET_PY=$SYSROOT/usr/bin/python3.11
test -x "$TARGET_PY"

echo "== target packages from PyPI (aarch64 wheels)"
"$PY" -m pip install -q --target "$SITE" --only-binary=:all: --platform manylinux_2_28_aarch64 \
    --platform manylinux2014_aarch64 --python-version 3.11 --implementation cp --abi cp311 \
    "numpy>=2,<2.5" pytest hypothesis

QEMU=(qemu-aarch64 -L "$SYSROOT")
export QEMU_LD_PREFIX=$SYSROOT
run_target() {
    PYTHONHOME=$SYSROOT/usr PYTHONPATH="$WORK/src/src:$SITE" PYTHONDONTWRITEBYTECODE=1 \
        "${QEMU[@]}" "$TARGET_PY" "$@"
}
run_target -c 'import platform, numpy; print("target:", platform.machine(), "numpy", numpy.__version__)'

echo "== copying the working tree"
mkdir -p "$WORK/src"
(cd "$REPO" && git ls-files -z --cached --others --exclude-standard) \
    | (cd "$REPO" && xargs -0 cp --parents -t "$WORK/src" 2>/dev/null || true)
test -f "$WORK/src/setup.py" || { echo "copy failed" >&2; exit 2; }

echo "== cross build (CC=aarch64-linux-gnu-gcc, OpenMP required)"
PYINC=$SYSROOT/usr/include/python3.11:$SYSROOT/usr/include  # pyconfig.h includes <aarch64-linux-gnu/python3.11/pyconfig.h>
(cd "$WORK/src" && CC=aarch64-linux-gnu-gcc FASTXENT_OPENMP=1 \
    "$PY" setup.py -q build_ext --inplace -j 2 -I "$PYINC") > "$WORK/build.log" 2>&1 \
    || { tail -n 40 "$WORK/build.log" >&2; echo "cross build failed" >&2; exit 1; }
host_suffix=$("$PY" -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
target_suffix=$(run_target -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
for so in "$WORK"/src/src/fastxent/*"$host_suffix"; do
    desc=$(file "$so")
    grep -q "ARM aarch64" <<< "$desc" || { echo "$desc: not an aarch64 module" >&2; exit 1; }
    mv "$so" "${so%"$host_suffix"}$target_suffix"
done
grep -h "OPENMP_NOTE" "$WORK/src/build/fastxent_generated/fastxent_build.h"

echo "== under qemu: python -m fastxent's configuration and the kernel tests"
run_target -c 'import fastxent as fx; fx.show_config(); assert fx.openmp_enabled()'
TESTS=${CROSS_TESTS:-"tests/test_kernel_paths.py tests/test_errors.py"}
set +e
(cd "$WORK/src" && KERAS_BACKEND=numpy run_target -m pytest -q -p no:cacheprovider $TESTS)
status=$?
set -e
[ "$status" -eq 5 ] && { echo "no tests collected" >&2; exit 1; }
exit "$status"
