/*
 * Narrowing float to bfloat16 on AVX-512: the integer rounding of the 16-bit row kernels
 * (cython_src/fastxent/xent_lowp_rows.inc, fx_lp_store) against AVX-512 BF16's
 * vcvtneps2bf16, the gradient pass of a 16-bit row (scale, narrow, store) over one row of
 * 50,256 values in cache, one thread.
 *
 * vcvtneps2bf16 rounds to nearest even like the integer code, but flushes subnormal floats
 * to zero: to return the integer code's bits it needs a check of each vector for subnormal
 * lanes ("checked" below), and that check costs more than the instruction saves.
 *
 *   gcc -O3 -o /tmp/bf16_narrow bench/bf16_narrow.c -lm && /tmp/bf16_narrow
 *
 * Needs a CPU with AVX-512 BF16 (the program says so and stops otherwise).
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define ATTR_512 __attribute__((target("avx512f,avx512bw,avx512vl")))
#define ATTR_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

/* round to nearest even on the integer bits (NaN-free data) */
static inline ATTR_512 __m256i narrow_integer(__m512 v)
{
    const __m512i u = _mm512_castps_si512(v);
    const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    const __m512i r = _mm512_srli_epi32(
        _mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), odd), 16);
    return _mm512_cvtepi32_epi16(r);
}

ATTR_512 __attribute__((noinline)) static void pass_integer(const float *e, uint16_t *g,
                                                            long n, float af)
{
    const __m512 a = _mm512_set1_ps(af);
    for (long k = 0; k + 16 <= n; k += 16)
        _mm256_storeu_si256((__m256i *)(g + k),
                            narrow_integer(_mm512_mul_ps(_mm512_loadu_ps(e + k), a)));
}

/* checked: a vector with a nonzero lane below 2^-126 takes the integer rounding */
ATTR_BF16 __attribute__((noinline)) static void pass_bf16(const float *e, uint16_t *g, long n,
                                                          float af, int checked)
{
    const __m512 a = _mm512_set1_ps(af), tiny = _mm512_set1_ps(0x1p-126f);
    const __m512 zero = _mm512_setzero_ps();
    for (long k = 0; k + 16 <= n; k += 16) {
        const __m512 v = _mm512_mul_ps(_mm512_loadu_ps(e + k), a);
        __m256i h;
        if (checked && (_mm512_cmp_ps_mask(v, tiny, _CMP_LT_OQ)
                        & _mm512_cmp_ps_mask(v, zero, _CMP_NEQ_OQ)))
            h = narrow_integer(v);
        else
            h = (__m256i)_mm512_cvtneps_pbh(v);
        _mm256_storeu_si256((__m256i *)(g + k), h);
    }
}

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

int main(void)
{
    if (!__builtin_cpu_supports("avx512bf16")) {
        puts("this CPU has no AVX-512 BF16");
        return 0;
    }
    const long n = 50256;
    float *e = aligned_alloc(64, (size_t)n * 4);
    uint16_t *g0 = aligned_alloc(64, (size_t)n * 2), *g1 = aligned_alloc(64, (size_t)n * 2);
    srand(1);
    for (long i = 0; i < n; i++) e[i] = expf(-(float)(rand() % 2000) / 100.0f);
    const float af = 1.0f / 3000.0f;
    /* the same bits on normal data; a subnormal value tells the two apart */
    pass_integer(e, g0, n, af);
    pass_bf16(e, g1, n, af, 1);
    printf("checked, normal values: same bits %s\n", memcmp(g0, g1, (size_t)n * 2) ? "no" : "yes");
    e[5] = 0x1p-130f * 3000.0f;
    pass_integer(e, g0, n, af);
    pass_bf16(e, g1, n, af, 0);
    printf("unchecked, one subnormal: same bits %s\n", memcmp(g0, g1, (size_t)n * 2) ? "no" : "yes");
    pass_bf16(e, g1, n, af, 1);
    printf("checked, one subnormal: same bits %s\n", memcmp(g0, g1, (size_t)n * 2) ? "no" : "yes");
    e[5] = 0.5f;
    for (int run = 0; run < 3; run++) {
        double best[3] = {1e9, 1e9, 1e9};
        for (int it = 0; it < 300; it++) {  /* interleaved, the least of each */
            double t0 = now();
            pass_integer(e, g0, n, af);
            double t1 = now();
            pass_bf16(e, g1, n, af, 0);
            double t2 = now();
            pass_bf16(e, g1, n, af, 1);
            double t3 = now();
            best[0] = fmin(best[0], t1 - t0);
            best[1] = fmin(best[1], t2 - t1);
            best[2] = fmin(best[2], t3 - t2);
        }
        printf("ns per element: integer %.4f  vcvtneps2bf16 %.4f  vcvtneps2bf16 checked %.4f\n",
               best[0] / n * 1e9, best[1] / n * 1e9, best[2] / n * 1e9);
    }
    free(e);
    free(g0);
    free(g1);
    return 0;
}
