/*
 * The float exponential pass of the softmax row kernels written with fused multiply-adds, for
 * bench/kernel_micro.c only (the shipped kernels keep xent_math.h's fx_expf_shifted on every
 * path, and with it the same bits on every path): sum_k exp(x_k - m) in FX_LANES float64
 * lanes, the exponentials stored, with intrinsics for AVX2 + FMA and for AVX-512.
 *
 * The method of fx_expf_shifted, with the roundings placed differently:
 *   - d = fl(x - m) and its error err by TwoSum; d clamped to -104 from below (the result
 *     rounds to 0 there; -inf -> 0, NaN passes), err dropped where d was clamped;
 *   - n = round(d / ln2) by the 1.5 * 2^23 trick, r = (d - n ln2hi) - n ln2lo + err with each
 *     product fused into its subtraction (d - n ln2hi is exact);
 *   - exp(r) = 1 + r (1 + r P(r)) with fx_expf_core's P, every step one FMA;
 *   - 2^n applied by vscalefps (AVX-512: one rounding, subnormal results included) or as
 *     2^(n+64) * 2^-64 (AVX2: the same single rounding).
 * Checked against exp in float64 over every float32 x <= 0 (m = 0) and over shifted samples
 * (m = 3.7, -20.5, 30, 88, 1e4): within 0.89 ulp of float (fx_expf_shifted: 0.98), NaN -> NaN,
 * -inf -> 0, results below 2^-149 / 2 -> 0; the AVX2 and AVX-512 versions return the same
 * bits as each other, and differ from fx_expf_shifted by one ulp on 0.44% of arguments.
 */
#ifndef FASTXENT_KERNEL_MICRO_FMA_H
#define FASTXENT_KERNEL_MICRO_FMA_H

#include "xent_kernels.h"
#include <immintrin.h>

#if defined(__clang__)
#define FX_MICRO_FMA_AVX2 __attribute__((target("avx2,fma,f16c"), min_vector_width(256)))
#else
#define FX_MICRO_FMA_AVX2 __attribute__((target("avx2,fma,f16c")))
#endif

#define FX_EXPF_CLAMP (-104.0f)
#define FX_EXPF_MAGIC 12582912.0f          /* 1.5 * 2^23 */
#define FX_EXPF_LOG2E 1.44269504088896341f
#define FX_EXPF_LN2HI 0.693359375f         /* 9 significant bits: n ln2hi exact for |n| <= 150 */
#define FX_EXPF_LN2LO (-2.12194440e-4f)
/* P(r) of fx_expf_core, highest degree first */
#define FX_EXPF_P4 1.3814171543e-3f
#define FX_EXPF_P3 8.3689205348e-3f
#define FX_EXPF_P2 4.1668407619e-2f
#define FX_EXPF_P1 1.6666519642e-1f
#define FX_EXPF_P0 4.9999994040e-1f
/* the main loops evaluate several vectors side by side (independent dependency chains next to
 * each other in the instruction stream): 3 x 16 lanes on AVX-512, 2 x 16 on AVX2 */
#ifndef FX_EXPF_WAYS
#define FX_EXPF_WAYS 3
#endif
#ifndef FX_EXPF_WAYS2
#define FX_EXPF_WAYS2 2
#endif

#define FX_AVX512_INLINE static inline __attribute__((always_inline)) FX_ATTR_AVX512
#define FX_AVX2_INLINE static inline __attribute__((always_inline)) FX_MICRO_FMA_AVX2
/* each statement of the exponential once per vector (w: a constant after inlining) */
#define FX_EACH for (int i = 0; i < w; i++)

/* ---- AVX-512: 16 lanes per register ---- */

/* out[i] = exp(x[i] - m), i < w, negm = -m in every lane */
FX_AVX512_INLINE void fx_expf_shifted_avx512(const __m512 *x, __m512 negm, __m512 *out, int w)
{
    const __m512 lo = _mm512_set1_ps(FX_EXPF_CLAMP);
    const __m512 magic = _mm512_set1_ps(FX_EXPF_MAGIC);
    const __m512 one = _mm512_set1_ps(1.0f);
    __m512 d[FX_EXPF_WAYS], bp[FX_EXPF_WAYS], ap[FX_EXPF_WAYS], err[FX_EXPF_WAYS];
    __m512 nf[FX_EXPF_WAYS], r[FX_EXPF_WAYS], p[FX_EXPF_WAYS];
    __mmask16 kept[FX_EXPF_WAYS];
    FX_EACH d[i] = _mm512_add_ps(x[i], negm);
    FX_EACH bp[i] = _mm512_sub_ps(d[i], x[i]);                    /* TwoSum(x, -m) */
    FX_EACH ap[i] = _mm512_sub_ps(d[i], bp[i]);
    FX_EACH kept[i] = _mm512_cmp_ps_mask(d[i], lo, _CMP_GE_OQ);  /* false for NaN */
    FX_EACH d[i] = _mm512_max_ps(lo, d[i]);                       /* NaN: the 2nd operand */
    FX_EACH nf[i] = _mm512_fmadd_ps(d[i], _mm512_set1_ps(FX_EXPF_LOG2E), magic);
    FX_EACH err[i] = _mm512_add_ps(_mm512_sub_ps(x[i], ap[i]), _mm512_sub_ps(negm, bp[i]));
    FX_EACH nf[i] = _mm512_sub_ps(nf[i], magic);                  /* round-to-nearest(d / ln2) */
    FX_EACH r[i] = _mm512_fnmadd_ps(nf[i], _mm512_set1_ps(FX_EXPF_LN2HI), d[i]);
    FX_EACH r[i] = _mm512_fnmadd_ps(nf[i], _mm512_set1_ps(FX_EXPF_LN2LO), r[i]);
    FX_EACH r[i] = _mm512_mask_add_ps(r[i], kept[i], r[i], err[i]);
    FX_EACH p[i] = _mm512_fmadd_ps(_mm512_set1_ps(FX_EXPF_P4), r[i], _mm512_set1_ps(FX_EXPF_P3));
    FX_EACH p[i] = _mm512_fmadd_ps(p[i], r[i], _mm512_set1_ps(FX_EXPF_P2));
    FX_EACH p[i] = _mm512_fmadd_ps(p[i], r[i], _mm512_set1_ps(FX_EXPF_P1));
    FX_EACH p[i] = _mm512_fmadd_ps(p[i], r[i], _mm512_set1_ps(FX_EXPF_P0));
    FX_EACH p[i] = _mm512_fmadd_ps(p[i], r[i], one);
    FX_EACH p[i] = _mm512_fmadd_ps(p[i], r[i], one);
    FX_EACH out[i] = _mm512_scalef_ps(p[i], nf[i]);
}

/* One step of w vectors: the exponentials of x[k + 16 i + j] (lanes past `in` read nothing
 * and hold -inf, whose exponential is 0), stored into g when g is not NULL, and added in
 * vector order to the float64 lanes a[0] (j < 8) and a[1] (j >= 8). */
FX_AVX512_INLINE void fx_expsum_step_avx512(const float *x, float *g, __m512 negm, __m512d *a,
                                            int w, __mmask16 in)
{
    __m512 xv[FX_EXPF_WAYS], e[FX_EXPF_WAYS];
    FX_EACH xv[i] = _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), in, x + 16 * i);
    fx_expf_shifted_avx512(xv, negm, e, w);
    if (g != NULL) FX_EACH _mm512_mask_storeu_ps(g + 16 * i, in, e[i]);
    FX_EACH {
        a[0] = _mm512_add_pd(a[0], _mm512_cvtps_pd(_mm512_castps512_ps256(e[i])));
        a[1] = _mm512_add_pd(a[1], _mm512_cvtps_pd(_mm512_extractf32x8_ps(e[i], 1)));
    }
}

/* sum_k exp(x_k - m) in FX_LANES = 16 float64 lanes (lane j: the elements k = j mod 16, in
 * order, combined in fx_lanes_total's order), exp(x_k - m) stored into g when g is not NULL:
 * the sums of fx_row_expsum_f32 given the exponentials. */
FX_AVX512_INLINE double fx_row_expsum_f32_avx512(const float *x, float *g, int64_t n, double m)
{
    const __m512 negm = _mm512_set1_ps(-(float)m);
    const __mmask16 all = 0xffff;
    __m512d a[2] = {_mm512_setzero_pd(), _mm512_setzero_pd()};
    int64_t k = 0;
    if (g != NULL) {
        for (; k + 16 * FX_EXPF_WAYS <= n; k += 16 * FX_EXPF_WAYS)
            fx_expsum_step_avx512(x + k, g + k, negm, a, FX_EXPF_WAYS, all);
        for (; k + 16 <= n; k += 16) fx_expsum_step_avx512(x + k, g + k, negm, a, 1, all);
    } else {
        for (; k + 16 * FX_EXPF_WAYS <= n; k += 16 * FX_EXPF_WAYS)
            fx_expsum_step_avx512(x + k, NULL, negm, a, FX_EXPF_WAYS, all);
        for (; k + 16 <= n; k += 16) fx_expsum_step_avx512(x + k, NULL, negm, a, 1, all);
    }
    if (k < n)
        fx_expsum_step_avx512(x + k, (g != NULL) ? g + k : NULL, negm, a, 1,
                              (__mmask16)((1u << (n - k)) - 1u));
    /* fx_lanes_total's order in registers: lanes j + 8, then j + 4, then (0 + 2) + (1 + 3) */
    const __m512d s8 = _mm512_add_pd(a[0], a[1]);
    const __m256d s4 = _mm256_add_pd(_mm512_castpd512_pd256(s8), _mm512_extractf64x4_pd(s8, 1));
    const __m128d s2 = _mm_add_pd(_mm256_castpd256_pd128(s4), _mm256_extractf128_pd(s4, 1));
    return _mm_cvtsd_f64(_mm_add_sd(s2, _mm_unpackhi_pd(s2, s2)));
}

/* ---- AVX2 + FMA: 8 lanes per register, two registers per 16 elements ---- */

/* out[i] = exp(x[i] - m), i < w (w: registers of 8) */
FX_AVX2_INLINE void fx_expf_shifted_avx2(const __m256 *x, __m256 negm, __m256 *out, int w)
{
    const __m256 lo = _mm256_set1_ps(FX_EXPF_CLAMP);
    const __m256 magic = _mm256_set1_ps(FX_EXPF_MAGIC);
    const __m256 one = _mm256_set1_ps(1.0f);
    __m256 d[2 * FX_EXPF_WAYS2], bp[2 * FX_EXPF_WAYS2], ap[2 * FX_EXPF_WAYS2];
    __m256 err[2 * FX_EXPF_WAYS2], kept[2 * FX_EXPF_WAYS2], t[2 * FX_EXPF_WAYS2];
    __m256 nf[2 * FX_EXPF_WAYS2], r[2 * FX_EXPF_WAYS2], p[2 * FX_EXPF_WAYS2];
    FX_EACH d[i] = _mm256_add_ps(x[i], negm);
    FX_EACH bp[i] = _mm256_sub_ps(d[i], x[i]);                    /* TwoSum(x, -m) */
    FX_EACH ap[i] = _mm256_sub_ps(d[i], bp[i]);
    FX_EACH kept[i] = _mm256_cmp_ps(d[i], lo, _CMP_GE_OQ);        /* all-zero for NaN */
    FX_EACH d[i] = _mm256_max_ps(lo, d[i]);                       /* NaN: the 2nd operand */
    FX_EACH t[i] = _mm256_fmadd_ps(d[i], _mm256_set1_ps(FX_EXPF_LOG2E), magic);
    FX_EACH err[i] = _mm256_add_ps(_mm256_sub_ps(x[i], ap[i]), _mm256_sub_ps(negm, bp[i]));
    FX_EACH nf[i] = _mm256_sub_ps(t[i], magic);                   /* round-to-nearest(d / ln2) */
    FX_EACH r[i] = _mm256_fnmadd_ps(nf[i], _mm256_set1_ps(FX_EXPF_LN2HI), d[i]);
    FX_EACH r[i] = _mm256_fnmadd_ps(nf[i], _mm256_set1_ps(FX_EXPF_LN2LO), r[i]);
    FX_EACH r[i] = _mm256_add_ps(r[i], _mm256_and_ps(kept[i], err[i]));
    FX_EACH p[i] = _mm256_fmadd_ps(_mm256_set1_ps(FX_EXPF_P4), r[i], _mm256_set1_ps(FX_EXPF_P3));
    FX_EACH p[i] = _mm256_fmadd_ps(p[i], r[i], _mm256_set1_ps(FX_EXPF_P2));
    FX_EACH p[i] = _mm256_fmadd_ps(p[i], r[i], _mm256_set1_ps(FX_EXPF_P1));
    FX_EACH p[i] = _mm256_fmadd_ps(p[i], r[i], _mm256_set1_ps(FX_EXPF_P0));
    FX_EACH p[i] = _mm256_fmadd_ps(p[i], r[i], one);
    FX_EACH p[i] = _mm256_fmadd_ps(p[i], r[i], one);
    /* the low bits of t hold n (two's complement); n + 64 + 127 is in [41, 191] */
    FX_EACH t[i] = _mm256_castsi256_ps(_mm256_slli_epi32(
        _mm256_add_epi32(_mm256_castps_si256(t[i]), _mm256_set1_epi32(191)), 23));
    FX_EACH out[i] = _mm256_mul_ps(_mm256_mul_ps(p[i], t[i]), _mm256_set1_ps(0x1p-64f));
}

/* As fx_expsum_step_avx512 with w registers of 8 (w even) and the float64 lanes a[0..3];
 * rem: elements of the step inside the row (at least 8 w: all). */
FX_AVX2_INLINE void fx_expsum_step_avx2(const float *x, float *g, __m256 negm, __m256d *a, int w,
                                        int rem)
{
    __m256 xv[2 * FX_EXPF_WAYS2], e[2 * FX_EXPF_WAYS2];
    __m256i in[2 * FX_EXPF_WAYS2];
    const int full = rem >= 8 * w;
    FX_EACH {
        if (full) {
            xv[i] = _mm256_loadu_ps(x + 8 * i);
        } else {
            in[i] = _mm256_cmpgt_epi32(_mm256_set1_epi32(rem - 8 * i),
                                       _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
            xv[i] = _mm256_blendv_ps(_mm256_set1_ps(-INFINITY),
                                     _mm256_maskload_ps(x + 8 * i, in[i]),
                                     _mm256_castsi256_ps(in[i]));
        }
    }
    fx_expf_shifted_avx2(xv, negm, e, w);
    if (g != NULL) FX_EACH {
        if (full)
            _mm256_storeu_ps(g + 8 * i, e[i]);
        else
            _mm256_maskstore_ps(g + 8 * i, in[i], e[i]);
    }
    FX_EACH {
        const int h = 2 * (i % 2);
        a[h] = _mm256_add_pd(a[h], _mm256_cvtps_pd(_mm256_castps256_ps128(e[i])));
        a[h + 1] = _mm256_add_pd(a[h + 1], _mm256_cvtps_pd(_mm256_extractf128_ps(e[i], 1)));
    }
}

/* fx_row_expsum_f32_avx512 on AVX2 + FMA: the same bits. */
FX_AVX2_INLINE double fx_row_expsum_f32_avx2(const float *x, float *g, int64_t n, double m)
{
    const __m256 negm = _mm256_set1_ps(-(float)m);
    __m256d a[4];
    for (int j = 0; j < 4; j++) a[j] = _mm256_setzero_pd();
    int64_t k = 0;
    if (g != NULL) {
        for (; k + 16 * FX_EXPF_WAYS2 <= n; k += 16 * FX_EXPF_WAYS2)
            fx_expsum_step_avx2(x + k, g + k, negm, a, 2 * FX_EXPF_WAYS2, 16 * FX_EXPF_WAYS2);
        for (; k + 16 <= n; k += 16) fx_expsum_step_avx2(x + k, g + k, negm, a, 2, 16);
    } else {
        for (; k + 16 * FX_EXPF_WAYS2 <= n; k += 16 * FX_EXPF_WAYS2)
            fx_expsum_step_avx2(x + k, NULL, negm, a, 2 * FX_EXPF_WAYS2, 16 * FX_EXPF_WAYS2);
        for (; k + 16 <= n; k += 16) fx_expsum_step_avx2(x + k, NULL, negm, a, 2, 16);
    }
    if (k < n)
        fx_expsum_step_avx2(x + k, (g != NULL) ? g + k : NULL, negm, a, 2, (int)(n - k));
    /* fx_lanes_total's order in registers: lanes j + 8, then j + 4, then (0 + 2) + (1 + 3) */
    const __m256d s4 = _mm256_add_pd(_mm256_add_pd(a[0], a[2]), _mm256_add_pd(a[1], a[3]));
    const __m128d s2 = _mm_add_pd(_mm256_castpd256_pd128(s4), _mm256_extractf128_pd(s4, 1));
    return _mm_cvtsd_f64(_mm_add_sd(s2, _mm_unpackhi_pd(s2, s2)));
}

#undef FX_EACH
#endif /* FASTXENT_KERNEL_MICRO_FMA_H */
