#!/usr/bin/env bash
# The compiled kernels alone, from C, one thread (bench/kernel_micro.c): every instruction-set
# path of this machine, with gcc (and clang when installed), and the same vector paths with
# fused multiply-adds: allowed to the compiler (-ffp-contract=fast, +fma: "+fma"), or written
# into the exponential pass (bench/kernel_micro_fma.h: "+fmaexp").  The measurements behind
# keeping every path on the same bits (see docs/performance.md, "Fused multiply-adds").
#
#   bash bench/kernel_micro.sh [ROWSxCOLS ...]     (default: 1024x1000 4096x256 10000x100 16384x64 100000x10)
#
# Needs a configured build tree (python setup.py build_ext --inplace) for fastxent_build.h.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
src="$here/cython_src/fastxent"
gen="$here/build/fastxent_generated"
[ -f "$gen/fastxent_build.h" ] || { echo "build the extension first (python setup.py build_ext --inplace)" >&2; exit 2; }
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
flags=(-O3 -std=c11 -fno-math-errno -fno-trapping-math -fopenmp-simd -Wno-unused-function
       -Wno-unknown-pragmas -I"$src" -I"$gen")
a512='avx512f,avx512dq,avx512vl,f16c'
declare -A variants=(
  [gcc-baseline]="gcc|-ffp-contract=off|"
  [gcc-avx2]="gcc|-ffp-contract=off|__attribute__((target(\"avx2,f16c\")))"
  [gcc-avx512]="gcc|-ffp-contract=off|__attribute__((target(\"$a512,prefer-vector-width=512\")))"
  [gcc-avx2+fma]="gcc|-ffp-contract=fast|__attribute__((target(\"avx2,f16c,fma\")))"
  [gcc-avx512+fma]="gcc|-ffp-contract=fast|__attribute__((target(\"$a512,fma,prefer-vector-width=512\")))"
  [gcc-avx2+fmaexp]="gcc|-ffp-contract=off -DFX_MICRO_FMA_EXP=1|__attribute__((target(\"avx2,fma,f16c\")))"
  [gcc-avx512+fmaexp]="gcc|-ffp-contract=off -DFX_MICRO_FMA_EXP=2|__attribute__((target(\"$a512,prefer-vector-width=512\")))"
)
if command -v clang >/dev/null; then
  variants[clang-avx2]="clang|-ffp-contract=off -mllvm -vectorizer-maximize-bandwidth|__attribute__((target(\"avx2,f16c\"), min_vector_width(256)))"
  variants[clang-avx512]="clang|-ffp-contract=off -mllvm -vectorizer-maximize-bandwidth|__attribute__((target(\"$a512\"), min_vector_width(512)))"
  variants[clang-avx2+fmaexp]="clang|-ffp-contract=off -mllvm -vectorizer-maximize-bandwidth -DFX_MICRO_FMA_EXP=1|__attribute__((target(\"avx2,fma,f16c\"), min_vector_width(256)))"
  variants[clang-avx512+fmaexp]="clang|-ffp-contract=off -mllvm -vectorizer-maximize-bandwidth -DFX_MICRO_FMA_EXP=2|__attribute__((target(\"$a512\"), min_vector_width(512)))"
fi
order=(gcc-baseline gcc-avx2 gcc-avx2+fma gcc-avx2+fmaexp gcc-avx512 gcc-avx512+fma gcc-avx512+fmaexp
       clang-avx2 clang-avx2+fmaexp clang-avx512 clang-avx512+fmaexp)
for v in "${order[@]}"; do
  [ -n "${variants[$v]+x}" ] || continue
  IFS='|' read -r cc extra attr <<<"${variants[$v]}"
  # shellcheck disable=SC2086
  "$cc" "${flags[@]}" $extra -DFX_MICRO_ATTR="$attr" -o "$out/$v" "$here/bench/kernel_micro.c" -lm
done
shapes=("$@")
[ ${#shapes[@]} -gt 0 ] || shapes=(1024x1000 4096x256 10000x100 16384x64 100000x10)
for shape in "${shapes[@]}"; do
  for v in "${order[@]}"; do
    [ -x "$out/$v" ] && "$out/$v" "${shape%x*}" "${shape#*x}" "$v"
  done
done
