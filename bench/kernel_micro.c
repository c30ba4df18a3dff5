/*
 * The compiled kernels alone, timed from C on one thread: no Python, no allocation, no
 * threads.  Built by bench/kernel_micro.sh once per instruction-set attribute (and, for the
 * fused multiply-add experiments, with contraction allowed, or with the exponential pass of
 * bench/kernel_micro_fma.h: FX_MICRO_FMA_EXP = 1 for AVX2 + FMA, 2 for AVX-512), each binary
 * run in turn.
 *
 *   kernel_micro ROWS COLS LABEL
 *
 * prints ns per element (minimum over rounds) of: the softmax row kernel with integer labels
 * over ROWS x COLS float32 logits (max pass, exponential pass, scaling pass, log), the
 * exponential pass alone, the binary span kernel (loss + gradient) over 16,384 elements in
 * cache, and for COLS <= 16 the short-row kernel.
 */
#define _POSIX_C_SOURCE 199309L
#include "xent_kernels.h"
#include <stdio.h>
#include <time.h>

#ifndef FX_MICRO_ATTR
#define FX_MICRO_ATTR
#endif

#ifdef FX_MICRO_FMA_EXP
#include "kernel_micro_fma.h"
#if FX_MICRO_FMA_EXP == 2
#define FX_MICRO_EXPSUM fx_row_expsum_f32_avx512
#else
#define FX_MICRO_EXPSUM fx_row_expsum_f32_avx2
#endif
/* fx_softmax_logits_row_f32 for an integer label without smoothing or class weights (the
 * case timed here), its exponential pass replaced by FX_MICRO_EXPSUM */
FX_MICRO_ATTR static inline double
fma_softmax_row(const float *x, float *g, int64_t y, int64_t n, const fx_params *P, double *lse)
{
    const double m = fx_row_max_f32(x, n);
    const double T = P->keep, dot = (T != 0.0) ? T * (m - (double)x[y]) : 0.0;
    const double s = FX_MICRO_EXPSUM(x, g, n, m);
    return fx_softmax_row_finish_f32(g, NULL, y, n, P, 1.0, m, s, fx_log_sum(s), T, dot, lse,
                                     NULL);
}
#define FX_MICRO_ROW(x, g, y, n, P, lse, T) fma_softmax_row(x, g, y, n, P, lse)
#define FX_MICRO_EXP(x, g, n, m) FX_MICRO_EXPSUM(x, g, n, m)
#else
#define FX_MICRO_ROW(x, g, y, n, P, lse, T) \
    fx_softmax_logits_row_f32(x, g, NULL, y, n, P, 1.0, lse, T)
#define FX_MICRO_EXP(x, g, n, m) fx_row_expsum_f32(x, g, n, m)
#endif

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

FX_MICRO_ATTR __attribute__((noinline)) static double
run_rows(const float *x, float *g, const int64_t *y, int64_t nr, int64_t n, const fx_params *P)
{
    double tot = 0.0, lse, T;
    for (int64_t r = 0; r < nr; r++)
        tot += FX_MICRO_ROW(x + r * n, g + r * n, y[r], n, P, &lse, &T);
    (void)T;
    return tot;
}

FX_MICRO_ATTR __attribute__((noinline)) static double
run_exp(const float *x, float *g, int64_t nr, int64_t n)
{
    double tot = 0.0;
    for (int64_t r = 0; r < nr; r++) tot += FX_MICRO_EXP(x + r * n, g + r * n, n, 3.0);
    return tot;
}

FX_MICRO_ATTR __attribute__((noinline)) static double
run_binary(const float *x, const float *z, float *g, int64_t n, const fx_params *P)
{
    return fx_sigmoid_logits_span_f32(x, z, g, NULL, n, NULL, P, 1.0);
}

FX_MICRO_ATTR __attribute__((noinline)) static int64_t
run_short(const float *x, float *g, const int64_t *y, int64_t nr, int64_t n, const fx_params *P,
          double *loss)
{
    return fx_softmax_logits_short_rows_f32(x, g, NULL, y, n, 0, nr, P, NULL, loss, NULL);
}

#define BEST(expr, rounds, best)                                                         \
    do {                                                                                 \
        for (int rep_ = 0; rep_ < (rounds); rep_++) {                                    \
            double t0_ = now();                                                          \
            sink += (double)(expr);                                                      \
            double t1_ = now() - t0_;                                                    \
            if (t1_ < (best)) (best) = t1_;                                              \
        }                                                                                \
    } while (0)

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: %s ROWS COLS LABEL\n", argv[0]);
        return 2;
    }
    const int64_t nr = atoll(argv[1]), n = atoll(argv[2]), N = nr * n, NB = 16384;
    float *x = aligned_alloc(64, (size_t)(N + NB) * 4), *g = aligned_alloc(64, (size_t)(N + NB) * 4);
    float *z = aligned_alloc(64, (size_t)NB * 4);
    int64_t *y = malloc((size_t)nr * 8);
    double *loss = malloc((size_t)nr * 8);
    unsigned s = 1;
    for (int64_t i = 0; i < N + NB; i++) {   /* uniform logits in [-3, 3) */
        s = s * 1103515245u + 12345u;
        x[i] = ((float)(s >> 8) / 16777216.0f - 0.5f) * 6.0f;
    }
    for (int64_t i = 0; i < NB; i++) z[i] = (float)((i % 3) == 0);
    for (int64_t r = 0; r < nr; r++) y[r] = r % n;
    fx_params P = {0};
    P.keep = 1.0;
    P.gs0 = 1.0;
    double sink = 0.0, rows = 1e9, ex = 1e9, bin = 1e9, sh = 1e9;
    for (int round = 0; round < 5; round++) {   /* interleaved rounds */
        BEST(run_rows(x, g, y, nr, n, &P), 40, rows);
        BEST(run_exp(x, g, nr, n), 40, ex);
        BEST(run_binary(x, z, g, NB, &P), 400, bin);
        if (n <= FX_SHORT) BEST(run_short(x, g, y, nr, n, &P, loss), 40, sh);
    }
    printf("%-22s %8lld x %-6lld rows %6.3f  exp pass %6.3f  binary %6.3f", argv[3],
           (long long)nr, (long long)n, rows / (double)N * 1e9, ex / (double)N * 1e9,
           bin / (double)NB * 1e9);
    if (n <= FX_SHORT) printf("  short rows %6.3f", sh / (double)N * 1e9);
    printf("  ns/element (checksum %g)\n", sink);
    return 0;
}
