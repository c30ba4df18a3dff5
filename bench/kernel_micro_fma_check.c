/*
 * Accuracy of the FMA exponential pass of bench/kernel_micro_fma.h against exp in float64, and
 * its agreement with fx_expf_shifted (xent_math.h):
 *   - m = 0: every float32 x <= 0 (about 2.1e9 arguments, a minute); other shifts m: every
 *     61st float32 v <= 0, x = fl(m + v) <= m;
 *   - special values (-inf, NaN, 0, underflow) and row sums of every length up to 80 and more:
 *     the AVX2 and AVX-512 versions give the same bits, write nothing past the row, and sum
 *     to exp's float64 sum within 1e-6.
 * Prints, per shift, the largest error in ulp of float (results >= 2^-126) and in units of
 * 2^-149 (smaller results), and the count of results that differ from fx_expf_shifted's.
 *
 *   cc -O2 -std=c11 -fno-math-errno -fno-trapping-math -ffp-contract=off -fopenmp-simd \
 *      -Icython_src/fastxent -Ibuild/fastxent_generated bench/kernel_micro_fma_check.c -lm
 * (QUICK=1 in the environment: the special values and sums only.)  Needs a CPU with AVX-512.
 */
#include "kernel_micro_fma.h"
#include <stdio.h>
#include <stdlib.h>

static double err_units(float got, double exact)
{
    if (exact < 0x1p-126) return fabs((double)got - exact) / 0x1p-149;
    const float r = (float)exact;
    return fabs((double)got - exact) / ((double)nextafterf(fabsf(r), INFINITY) - fabs((double)r));
}

FX_ATTR_AVX512 __attribute__((noinline)) static double
sum512(const float *x, float *g, int64_t n, double m) { return fx_row_expsum_f32_avx512(x, g, n, m); }
FX_MICRO_FMA_AVX2 __attribute__((noinline)) static double
sum256(const float *x, float *g, int64_t n, double m) { return fx_row_expsum_f32_avx2(x, g, n, m); }

static int same(const void *a, const void *b, size_t n) { return memcmp(a, b, n) == 0; }

int main(void)
{
    enum { B = 1 << 16 };
    static float x[B], e1[B], e2[B], e0[B];
    const float shifts[] = {0.0f, 3.7f, -20.5f, 30.000002f, 88.0f, 1e4f};
    int bad = 0;
    for (int si = 0; !getenv("QUICK") && si < (int)(sizeof shifts / sizeof shifts[0]); si++) {
        const float m = shifts[si];
        const uint32_t step = (si == 0) ? 1u : 61u;
        double worst[3] = {0, 0, 0}, worst_sub[3] = {0, 0, 0};
        long differ = 0, paths = 0, total = 0;
        int64_t cnt = 0;
        for (uint64_t b = 0x80000000u; b <= 0xff800000u; b += step) {
            float v;
            const uint32_t bits = (uint32_t)b;
            memcpy(&v, &bits, 4);
            const float xv = v + m;
            if (xv <= m) x[cnt++] = xv;
            if (cnt < B && b + step <= 0xff800000u) continue;
            (void)sum512(x, e1, cnt, m);
            (void)sum256(x, e2, cnt, m);
            for (int64_t i = 0; i < cnt; i++) e0[i] = fx_expf_shifted(x[i], -m);
            for (int64_t i = 0; i < cnt; i++) {
                const double ex = exp((double)x[i] - (double)m);
                const float got[3] = {e1[i], e2[i], e0[i]};
                double *w = (ex < 0x1p-126) ? worst_sub : worst;
                for (int j = 0; j < 3; j++) {
                    const double u = err_units(got[j], ex);
                    if (u > w[j]) w[j] = u;
                }
                differ += !same(&e1[i], &e0[i], 4);
                paths += !same(&e1[i], &e2[i], 4);
            }
            total += cnt;
            cnt = 0;
        }
        printf("m = %-10g ulp: AVX-512 %.4f, AVX2 %.4f, fx_expf_shifted %.4f | below 2^-126, "
               "units of 2^-149: %.3f %.3f %.3f | differ from fx_expf_shifted %ld, AVX2 vs "
               "AVX-512 %ld, of %ld\n", m, worst[0], worst[1], worst[2], worst_sub[0],
               worst_sub[1], worst_sub[2], differ, paths, total);
        bad += worst[0] > 1.0 || worst_sub[0] > 1.0 || paths != 0;
    }
    const float sp[16] = {-INFINITY, NAN, 0.0f, -0.0f, -200.0f, -104.0f, -103.97f, -87.5f,
                          -1e-30f, -1e38f, -3.4e38f, -1.0f, -2.0f, -3.0f, -4.0f, -5.0f};
    (void)sum512(sp, e1, 16, 0.0);
    (void)sum256(sp, e2, 16, 0.0);
    bad += !(e1[0] == 0.0f && e1[1] != e1[1] && e1[2] == 1.0f && e1[3] == 1.0f && e1[4] == 0.0f
             && e1[5] == 0.0f && e1[6] == 0x1p-149f && e1[9] == 0.0f && e1[10] == 0.0f);
    bad += !same(e1, e2, 4) || !same(e1 + 2, e2 + 2, 14 * 4) || e2[1] == e2[1];
    static float xs[4096], ga[4200], gb[4200];
    unsigned s = 7;
    for (int i = 0; i < 4096; i++) {
        s = s * 1103515245u + 12345u;
        xs[i] = ((float)(s >> 8) / 16777216.0f - 0.5f) * 60.0f;
    }
    xs[5] = xs[77] = -INFINITY;
    for (int n = 1; n <= 4096; n += (n < 80 ? 1 : 37)) {
        for (int i = 0; i < 4200; i++) ga[i] = gb[i] = 7.0f;
        float mx = -INFINITY;
        for (int i = 0; i < n; i++) mx = xs[i] > mx ? xs[i] : mx;
        const double sa = sum512(xs, ga, n, mx), sb = sum256(xs, gb, n, mx);
        const double sn = sum512(xs, NULL, n, mx), sr = sum256(xs, NULL, n, mx);
        double s0 = 0.0;
        for (int i = 0; i < n; i++) s0 += exp((double)xs[i] - (double)mx);
        int ok = same(&sa, &sb, 8) && same(&sa, &sn, 8) && same(&sa, &sr, 8)
                 && same(ga, gb, sizeof ga) && fabs(sa - s0) <= 1e-6 * s0;
        for (int i = n; i < 4200; i++) ok &= ga[i] == 7.0f;
        if (!ok) printf("row sums of %d elements: %.17g %.17g %.17g %.17g, exp %.17g\n", n, sa,
                        sb, sn, sr, s0);
        bad += !ok;
    }
    printf("%s\n", bad ? "FAILED" : "special values, row sums and tails: ok");
    return bad != 0;
}
