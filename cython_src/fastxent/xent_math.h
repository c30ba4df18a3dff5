/*
 * Scalar-looking, vectorizable elementary functions for fastxent's kernels.
 *
 * Written as branch-free straight-line double-precision code so that GCC vectorizes them
 * inside `#pragma omp simd` loops on every instruction set (SSE2, AVX2, AVX-512) without
 * -ffast-math.  Built with -ffp-contract=off, every operation is an IEEE-754 operation in
 * the written order, so each path returns the same bits.
 *
 * Accuracy (tests/test_kernel_paths.py, against NumPy's float64 functions): fx_exp_nonpos,
 * fx_log1p_unit and fx_log_pos within 2 ulp of double; fx_expf_shifted within 1 ulp and
 * fx_log1pf_recip within 4 ulp (its 1 / (1 + y) within 3 ulp)
 * of float.
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

/* Loops over strided or indexed data (the transposes and per-row set-up of the short-row
 * kernels) stay scalar: clang would vectorize them into gathers / scatters, slower than scalar
 * code on current x86 cores (GCC does not). */
#if defined(__clang__)
#define FX_SCALAR_LOOP _Pragma("clang loop vectorize(disable)")
#else
#define FX_SCALAR_LOOP
#endif

FX_INLINE int64_t fx_bits(double x) { int64_t i; memcpy(&i, &x, sizeof i); return i; }
FX_INLINE double fx_from_bits(int64_t i) { double x; memcpy(&x, &i, sizeof x); return x; }

/*
 * exp(x) for x <= 0, x = -inf (-> 0) and NaN (-> NaN).  The softmax kernels only ever
 * evaluate exp(x - max) and the sigmoid kernels exp(-|x|), so positive arguments (and
 * overflow) never occur; a positive argument is a caller bug.
 *
 * Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2, a degree-11 polynomial in r
 * (approximation error 3.6e-18), and the scale 2^n applied as 2^(n+64) * 2^-64 so that
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
    /* exp(r) = 1 + r + r^2 Q(r), Q of degree 9 fitted (Lawson-weighted least squares in
     * 50-digit arithmetic) for least maximum relative error of exp on |r| <= 0.3467:
     * 3.6e-18, far below double's 1.1e-16 */
    double q = 2.500004141982112e-08;
    q = q * r + 2.7630278882228503e-07;
    q = q * r + 2.7557586592851227e-06;
    q = q * r + 2.4801493020021454e-05;
    q = q * r + 0.0001984126950616202;
    q = q * r + 0.0013888888943698983;
    q = q * r + 0.008333333333494732;
    q = q * r + 0.041666666666529927;
    q = q * r + 0.16666666666666413;
    q = q * r + 0.5000000000000011;
    double p = (q * (r * r) + r) + 1.0;
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
    /* one division: h enters as a number (see fx_log1pf_recip); (y + 2) + 1 is y + 3 */
    const double h = (double)(y > 0.41421356237309504880);
    double s = (y - h) / ((y + 2.0) + h);
    double k = h * ln2;
    return k + fx_two_atanh_small(s);
}

/* log(x) for x > 0 finite and normal (the probability kernels clip to [eps, 1 - eps] first).
 * x = 2^e m with m in [sqrt(1/2), sqrt 2); log m = 2 atanh((m - 1) / (m + 1)). */
FX_INLINE double fx_log_pos(double x)
{
    const double ln2hi = 6.93147180369123816490e-01;
    const double ln2lo = 1.90821492927058770002e-10;
    const uint64_t one = 0x3ff0000000000000ULL;            /* bits of 1.0: the bias 1023 << 52 */
    uint64_t ix = (uint64_t)fx_bits(x);
    /* eb = e + 1023 with x >= sqrt(1/2) 2^e, so that the mantissa m = x 2^-e lands in
     * [sqrt(1/2), sqrt 2).  Unsigned arithmetic, a logical shift and e converted through the
     * 2^52 trick (exact): instructions every vector path has (AVX2 has no 64-bit arithmetic
     * shift nor int64 -> double conversion, and would run this loop in scalar code). */
    uint64_t eb = (ix - 0x3fe6a09e667f3bcdULL + one) >> 52; /* bits of sqrt(1/2) */
    double m = fx_from_bits((int64_t)(ix - (eb << 52) + one));
    double ed = fx_from_bits((int64_t)(eb | 0x4330000000000000ULL)) - (0x1p52 + 1023.0);
    double s = (m - 1.0) / (m + 1.0);
    return ed * ln2hi + (fx_two_atanh_small(s) + ed * ln2lo);
}

/* log(s) of a softmax row's sum s = sum exp(x - max) (s in [1, n], or NaN for a row with NaN
 * or +inf, or all -inf): fx_log_pos, NaN kept.  One definition for every softmax kernel, so
 * that the group kernels can take the logarithms of a group of rows in one vector loop and
 * still return the bits of a row on its own. */
FX_INLINE double fx_log_sum(double s)
{
    const double l = fx_log_pos(s);
    return (s == s) ? l : s;
}

/* ---- single precision (float data) ---- */

FX_INLINE int32_t fx_bits_f(float x) { int32_t i; memcpy(&i, &x, sizeof i); return i; }
FX_INLINE float fx_from_bits_f(int32_t i) { float x; memcpy(&x, &i, sizeof x); return x; }

/*
 * exp(x - m) for float x <= m (the row max), x = -inf (-> 0) and NaN (-> NaN), in single
 * precision, with the subtraction made exact: d = fl(x - m) and its rounding error err come
 * from Knuth's TwoSum, and exp(d + err) is evaluated, so the result does not lose accuracy
 * for large |x - m| (a plain float32 exp(x - m) has a relative error up to |x - m| * 2^-24).
 *
 * Cody-Waite reduction d = n ln2 + r with a 9-bit ln2hi (n ln2hi is exact for |n| <= 150),
 * |r| <= ln2/2 + tiny, a degree-6 polynomial 1 + r + r^2 P(r), and 2^n applied as
 * 2^(n+64) * 2^-64 so that subnormal results are rounded once, correctly.  Error <= 1 ulp
 * of float against the exactly shifted value (tests/test_kernel_paths.py).
 */
/* exp(d + err) for float d <= 0 (or -inf, NaN) and a small correction err (0 when d is
 * exact); the core of fx_expf_shifted and fx_expf_nonpos below. */
FX_INLINE float fx_expf_core(float d, float err)
{
    const float magic = 12582912.0f;                      /* 1.5 * 2^23 */
    const float log2e = 1.44269504088896341f;
    const float ln2hi = 0.693359375f;                      /* 0x3f318000: 9 significant bits */
    const float ln2lo = -2.12194440e-4f;
    int under = d < -104.0f;                              /* exp < 2^-150: rounds to 0 */
    d = under ? -104.0f : d;                              /* -inf -> 0 below; NaN passes */
    err = under ? 0.0f : err;                             /* (err is NaN when x = -inf) */
    float t = d * log2e + magic;
    float nf = t - magic;                                  /* round-to-nearest(d / ln2) */
    float r = ((d - nf * ln2hi) - nf * ln2lo) + err;
    /* exp(r) = 1 + r + r^2 P(r), P of degree 4 fitted for least maximum relative error of
     * exp on |r| <= 0.3476 (3.1e-9, far below float's 6e-8) */
    float p = 1.3814171543e-3f;
    p = p * r + 8.3689205348e-3f;
    p = p * r + 4.1668407619e-2f;
    p = p * r + 1.6666519642e-1f;
    p = p * r + 4.9999994040e-1f;
    float y = (p * (r * r) + r) + 1.0f;
    /* the low bits of t hold n (two's complement); n + 64 + 127 is in [41, 191] */
    float scale = fx_from_bits_f((int32_t)(((uint32_t)fx_bits_f(t) + 191u) << 23));
    return (y * scale) * 0x1p-64f;
}

FX_INLINE float fx_expf_shifted(float x, float negm)
{
    float d = x + negm;
    float bp = d - x;                                      /* TwoSum(x, -m) */
    float ap = d - bp;
    float err = (x - ap) + (negm - bp);
    return fx_expf_core(d, err);
}

/* exp(d) for float d <= 0, -inf (-> 0) and NaN. */
FX_INLINE float fx_expf_nonpos(float d) { return fx_expf_core(d, 0.0f); }

/* log1p(y) for float y in [0, 1] (NaN passes), and *inv = 1 / (1 + y), with one division
 * for both: log1p(y) = 2 atanh(s) with s = y / (2 + y) for y <= sqrt2 - 1 and
 * ln2 + 2 atanh((y - 1) / (y + 3)) above (|s| <= 0.1716, series to s^9, truncation < 3e-9);
 * q = 1 / ((1 + y) den) gives both s = num (1 + y) q and 1 / (1 + y) = den q (the extra
 * roundings cost accuracy: within 4 ulp and 3 ulp of float, tests/test_kernel_paths.py). */
FX_INLINE float fx_log1pf_recip(float y, float *inv)
{
    const float ln2 = 0.693147180559945f;
    /* h = 1 above sqrt2 - 1, else 0, entering the formulas as a number: with a select between
     * two whole expressions GCC evaluated both branches, the division included.  den is
     * (y + 2) + h, the same bits as y + 3 when h = 1 (both sums lie in [2, 4]: one spacing,
     * so the first rounding is the only one). */
    const float h = (float)(y > 0.41421356f);
    float den = (y + 2.0f) + h;
    float num = y - h;
    float u = 1.0f + y;
    float q = 1.0f / (u * den);
    *inv = den * q;
    float s = num * (u * q);
    float k = h * ln2;
    float s2 = s * s;
    float p = 1.0f / 9.0f;
    p = p * s2 + 1.0f / 7.0f;
    p = p * s2 + 1.0f / 5.0f;
    p = p * s2 + 1.0f / 3.0f;
    return k + (2.0f * s + (2.0f * s) * (s2 * p));
}

#endif /* FASTXENT_XENT_MATH_H */
