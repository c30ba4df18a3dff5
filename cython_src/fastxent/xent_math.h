/*
 * Scalar-looking, vectorizable elementary functions for fastxent's kernels.
 *
 * Written as branch-free straight-line double-precision code so that GCC vectorizes them
 * inside `#pragma omp simd` loops on every instruction set (SSE2, AVX2, AVX-512) without
 * -ffast-math.  Built with -ffp-contract=off, every operation is an IEEE-754 operation in
 * the written order, so each path returns the same bits.
 *
 * Accuracy (measured against mpmath in tests/test_math_accuracy.py): fx_exp_nonpos <= 2 ulp,
 * fx_log1p_unit <= 2 ulp, fx_log_pos <= 2 ulp.
 */
#ifndef FASTXENT_XENT_MATH_H
#define FASTXENT_XENT_MATH_H

#include <stdint.h>
#include <math.h>
#include <string.h>

#if defined(__GNUC__)
#define FX_INLINE static inline __attribute__((always_inline))
#else
#define FX_INLINE static inline
#endif

FX_INLINE int64_t fx_bits(double x) { int64_t i; memcpy(&i, &x, sizeof i); return i; }
FX_INLINE double fx_from_bits(int64_t i) { double x; memcpy(&x, &i, sizeof x); return x; }

/*
 * exp(x) for x <= 0, x = -inf (-> 0) and NaN (-> NaN).  The softmax kernels only ever
 * evaluate exp(x - max) and the sigmoid kernels exp(-|x|), so positive arguments (and
 * overflow) never occur; a positive argument is a caller bug.
 *
 * Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2, degree-13 Taylor polynomial in r
 * (truncation error < 5e-18), and the scale 2^n applied as 2^(n+64) * 2^-64 so that
 * results in the subnormal range are rounded once, correctly, instead of flushed to zero.
 */
FX_INLINE double fx_exp_nonpos(double x)
{
    const double magic = 6755399441055744.0;              /* 1.5 * 2^52 */
    const double log2e = 1.4426950408889634074;
    const double ln2hi = 6.93147180369123816490e-01;      /* 0x3fe62e42fee00000 */
    const double ln2lo = 1.90821492927058770002e-10;
    x = (x < -746.0) ? -746.0 : x;                       /* -inf -> 0 below; NaN passes */
    double t = x * log2e + magic;
    double n = t - magic;                                 /* round-to-nearest(x / ln2) */
    double r = (x - n * ln2hi) - n * ln2lo;
    double p = 1.0 / 6227020800.0;                        /* 1/13! */
    p = p * r + 1.0 / 479001600.0;
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    /* low bits of t hold n as a two's-complement integer; n + 1087 is in [1, 1087] */
    double scale = fx_from_bits((fx_bits(t) + 1087) << 52);
    return (p * scale) * 0x1p-64;
}

/* 2 * atanh(s) / s - style odd series helper: returns 2 s (1 + s^2/3 + s^4/5 + ...),
 * accurate for |s| <= 0.1716 (= 3 - 2 sqrt 2). */
FX_INLINE double fx_two_atanh_small(double s)
{
    double s2 = s * s;
    double p = 1.0 / 25.0;
    p = p * s2 + 1.0 / 23.0;
    p = p * s2 + 1.0 / 21.0;
    p = p * s2 + 1.0 / 19.0;
    p = p * s2 + 1.0 / 17.0;
    p = p * s2 + 1.0 / 15.0;
    p = p * s2 + 1.0 / 13.0;
    p = p * s2 + 1.0 / 11.0;
    p = p * s2 + 1.0 / 9.0;
    p = p * s2 + 1.0 / 7.0;
    p = p * s2 + 1.0 / 5.0;
    p = p * s2 + 1.0 / 3.0;
    return 2.0 * s + (2.0 * s) * (s2 * p);
}

/* log1p(y) for y in [0, 1] (NaN passes).  log1p(y) = 2 atanh(y / (2 + y)) for y <= sqrt2-1,
 * and ln2 + 2 atanh((y - 1) / (y + 3)) above, both with |s| <= 0.1716. */
FX_INLINE double fx_log1p_unit(double y)
{
    const double ln2 = 0.69314718055994530942;
    int hi = y > 0.41421356237309504880;
    double s = hi ? (y - 1.0) / (y + 3.0) : y / (2.0 + y);
    double k = hi ? ln2 : 0.0;
    return k + fx_two_atanh_small(s);
}

/* log(x) for x > 0 finite and normal (the probability kernels clip to [eps, 1 - eps] first).
 * x = 2^e m with m in [sqrt(1/2), sqrt 2); log m = 2 atanh((m - 1) / (m + 1)). */
FX_INLINE double fx_log_pos(double x)
{
    const double ln2hi = 6.93147180369123816490e-01;
    const double ln2lo = 1.90821492927058770002e-10;
    int64_t ix = fx_bits(x);
    /* shift so that the mantissa lands in [sqrt(1/2), sqrt 2) */
    int64_t adj = ix - 0x3fe6a09e667f3bcdLL;              /* bits of sqrt(1/2) */
    int64_t e = adj >> 52;                                /* arithmetic: x >= sqrt(1/2)*2^e */
    double m = fx_from_bits(ix - (e << 52));
    double ed = (double)e;
    double s = (m - 1.0) / (m + 1.0);
    return ed * ln2hi + (fx_two_atanh_small(s) + ed * ln2lo);
}

#endif /* FASTXENT_XENT_MATH_H */
