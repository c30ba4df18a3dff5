/*
 * The function attributes under which the block kernels are compiled a second and a third time
 * (xent_kernels.h): AVX2 and AVX-512.  Also compiled alone by buildtools/isa_probe.py, which
 * checks at build time that code under each attribute really uses ymm / zmm registers; the
 * build records the result (FASTXENT_BUILD_ISA_MAX) and no path above it is ever selected.
 *
 * Both include F16C (the float16 conversions of the low-precision row kernels,
 * xent_lowp_rows.inc); the dispatch requires it of the CPU too.
 *
 * The spellings differ between compilers: GCC takes the preferred vector width inside
 * target("...,prefer-vector-width=512"); clang rejects that string (and then ignores the whole
 * attribute, leaving baseline code under an AVX-512 name) and takes min_vector_width instead.
 */
#ifndef FASTXENT_XENT_ISA_H
#define FASTXENT_XENT_ISA_H

#if defined(__GNUC__) && (defined(__x86_64__) || defined(_M_X64)) && !defined(FASTXENT_NO_DISPATCH)
#define FX_HAVE_DISPATCH 1
#else
#define FX_HAVE_DISPATCH 0
#endif

#if FX_HAVE_DISPATCH && defined(__clang__)
#define FX_ATTR_AVX2 __attribute__((target("avx2,f16c"), min_vector_width(256)))
#define FX_ATTR_AVX512 __attribute__((target("avx512f,avx512dq,avx512vl,f16c"), min_vector_width(512)))
#define FX_ISA_SPELLING "clang: target(\"avx512f,avx512dq,avx512vl,f16c\"), min_vector_width(512)"
#elif FX_HAVE_DISPATCH
#define FX_ATTR_AVX2 __attribute__((target("avx2,f16c")))
#define FX_ATTR_AVX512 __attribute__((target("avx512f,avx512dq,avx512vl,f16c,prefer-vector-width=512")))
#define FX_ISA_SPELLING "gcc: target(\"avx512f,avx512dq,avx512vl,f16c,prefer-vector-width=512\")"
#else
#define FX_ISA_SPELLING "none (baseline only)"
#endif

#endif /* FASTXENT_XENT_ISA_H */
