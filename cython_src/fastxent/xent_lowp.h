/*
 * Conversions between float and the 16-bit float formats of low-precision logits:
 * IEEE binary16 (NumPy's float16) and bfloat16 (ml_dtypes.bfloat16, the upper half of a
 * float).  Portable bit manipulation, branch-free (selects only), so that the loops of
 * xent_lowp_t.inc vectorize on every instruction-set path.
 *
 * Widening (to float) is exact.  Narrowing (from float) rounds to nearest, ties to even; a
 * value beyond the format's largest finite one rounds to +-inf as IEEE rounding does, +-inf
 * stay +-inf, and NaN stays NaN (quieted); float16 subnormals are produced and read exactly.
 */
#ifndef FASTXENT_XENT_LOWP_H
#define FASTXENT_XENT_LOWP_H

#include <stdint.h>
#include "xent_math.h"

/* The conversions take and return the 16-bit pattern in a uint32_t (its low half): the
 * loops of xent_lowp_t.inc widen / narrow the 16-bit arrays in separate steps, so that the
 * arithmetic here vectorizes in 32-bit lanes (GCC 12 otherwise narrowed it to 16-bit lanes
 * and vectorized 4 elements at a time). */
FX_INLINE float fx_bf16_to_f32(uint32_t h)
{
    return fx_from_bits_f((int32_t)(h << 16));
}

FX_INLINE uint32_t fx_f32_to_bf16(float f)
{
    const uint32_t u = (uint32_t)fx_bits_f(f);
    /* + 0x7fff and the lowest kept bit: a tie rounds to the even neighbour */
    const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    const uint32_t nan = (u >> 16) | 0x40u;                 /* keep the sign, set quiet bit */
    return ((u & 0x7fffffffu) > 0x7f800000u) ? nan : rounded;
}

FX_INLINE float fx_f16_to_f32(uint32_t h)
{
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    const uint32_t em = h & 0x7fffu;                        /* exponent and mantissa */
    const uint32_t normal = (em << 13) + (112u << 23);      /* exponent bias 15 -> 127 */
    const uint32_t infnan = (em << 13) | 0x7f800000u;       /* payload (and quiet bit) kept */
    /* zero and subnormals: em * 2^-24, exact in float */
    const uint32_t sub = (uint32_t)fx_bits_f((float)(int32_t)em * 0x1p-24f);
    const uint32_t r = (em >= 0x7c00u) ? infnan : ((em >= 0x0400u) ? normal : sub);
    return fx_from_bits_f((int32_t)(r | sign));
}

FX_INLINE uint32_t fx_f32_to_f16(float f)
{
    const uint32_t u = (uint32_t)fx_bits_f(f);
    const uint32_t sign = (u >> 16) & 0x8000u;
    const uint32_t a = u & 0x7fffffffu;
    /* normal results: rebias 127 -> 15 and round on bit 13 (a carry into the exponent, up to
     * inf for values from 65520 on, is the correct rounding) */
    const uint32_t normal = (a - (112u << 23) + 0x0fffu + ((a >> 13) & 1u)) >> 13;
    /* below 2^-14: adding 0.5 leaves the value rounded (by the FPU, to nearest even) to a
     * multiple of 2^-24, the float16 subnormal step, in the low bits of 0.5's mantissa */
    const uint32_t sub = (uint32_t)fx_bits_f(fx_from_bits_f((int32_t)a) + 0.5f) - 0x3f000000u;
    const uint32_t r = (a > 0x7f800000u) ? 0x7e00u                  /* NaN */
                     : (a >= 0x47800000u) ? 0x7c00u                 /* >= 2^16, inf: inf */
                     : (a < 0x38800000u) ? sub : normal;            /* below 2^-14 */
    return r | sign;
}

#endif /* FASTXENT_XENT_LOWP_H */
