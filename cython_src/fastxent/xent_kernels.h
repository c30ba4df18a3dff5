/*
 * fastxent's compiled kernels: blocks of rows of a C-contiguous (rows, classes) buffer.
 *
 * Layout of the C side
 *   xent_math.h    vectorizable exp / log1p / log in double precision
 *   xent_rows.inc  per-row kernels, instantiated for float and double (FX_T)
 *   xent_blocks.inc  block-of-rows entry points, instantiated per element type and per
 *                  instruction set (baseline x86-64, AVX2, AVX-512)
 *   this file      parameters, instantiation and run-time dispatch
 *
 * The Cython modules run `prange` over row blocks and call the fx_* dispatchers below, which
 * jump to the variant for the instruction set selected by fx_set_isa() (the best the CPU
 * supports, or the one forced by FASTXENT_ISA).  With -ffp-contract=off and fixed-lane sums
 * all variants return the same bits.
 */
#ifndef FASTXENT_XENT_KERNELS_H
#define FASTXENT_XENT_KERNELS_H

#include <stdint.h>
#include <math.h>
#include "xent_math.h"

#define FX_LANES 16   /* fixed accumulation lanes: independent of the vector width */
#define FX_CHUNK 4096 /* elements per flat chunk for short binary rows */
#define FX_SHORT 16   /* softmax rows of at most this many classes use the transposed kernel */
#define FX_RG 32      /* rows per transposed group (the vector lanes) */
#define FX_SPLIT_MIN 262144  /* rows of at least this many elements are split across threads */
#define FX_SPLIT_CHUNK 65536 /* ... into chunks of this many elements (fixed: thread-count free) */

typedef struct {
    double keep;        /* 1 - label_smoothing */
    double spread;      /* label_smoothing / C (softmax) or label_smoothing / 2 (sigmoid) */
    double zloss;       /* z-loss coefficient (softmax from logits) */
    double eps;         /* clip for probabilities */
    double gs0;         /* gradient scale common to all rows (1 / reduction denominator) */
    const double *cw;   /* class weights, length C, or NULL */
    const double *pw;   /* pos_weight, length K, or NULL */
    int64_t ignore;     /* label to skip when has_ignore */
    int has_ignore;
} fx_params;

/* Item `item` of a split (rows, n) buffer with nch chunks per row: row, first element, length. */
FX_INLINE void fx_split_item(int64_t n, int64_t item, int64_t nch, int64_t *r, int64_t *k0,
                             int64_t *len)
{
    *r = item / nch;
    *k0 = (item % nch) * FX_SPLIT_CHUNK;
    *len = (n - *k0 < FX_SPLIT_CHUNK) ? n - *k0 : FX_SPLIT_CHUNK;
}

FX_INLINE double fx_lanes_total(const double *a)
{
    /* fixed pairwise order */
    double s8[8];
    for (int j = 0; j < 8; j++) s8[j] = a[j] + a[j + 8];
    double s4[4];
    for (int j = 0; j < 4; j++) s4[j] = s8[j] + s8[j + 4];
    return (s4[0] + s4[2]) + (s4[1] + s4[3]);
}

#define FX_T float
#define FX_F32 1
#define FX_N(name) name##_f32
#include "xent_rows.inc"
#undef FX_T
#undef FX_F32
#undef FX_N
#define FX_T double
#define FX_F32 0
#define FX_N(name) name##_f64
#include "xent_rows.inc"
#undef FX_T
#undef FX_F32
#undef FX_N

/* ---- instruction-set variants of the block entry points ---- */
#if defined(__GNUC__) && (defined(__x86_64__) || defined(_M_X64)) && !defined(FASTXENT_NO_DISPATCH)
#define FX_HAVE_DISPATCH 1
#else
#define FX_HAVE_DISPATCH 0
#endif

#define FX_ISA_ATTR
#define FX_ISA_NAME(name) name##_base
#include "xent_blocks.inc"
#undef FX_ISA_ATTR
#undef FX_ISA_NAME

#if FX_HAVE_DISPATCH
#define FX_ISA_ATTR __attribute__((target("avx2")))
#define FX_ISA_NAME(name) name##_avx2
#include "xent_blocks.inc"
#undef FX_ISA_ATTR
#undef FX_ISA_NAME
#define FX_ISA_ATTR __attribute__((target("avx512f,avx512dq,avx512vl,prefer-vector-width=512")))
#define FX_ISA_NAME(name) name##_avx512
#include "xent_blocks.inc"
#undef FX_ISA_ATTR
#undef FX_ISA_NAME
#endif

/* 0 = baseline x86-64 (SSE2), 1 = AVX2, 2 = AVX-512 */
static int fx_isa_level = 0;

static int fx_cpu_isa_level(void)
{
#if FX_HAVE_DISPATCH
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq")
        && __builtin_cpu_supports("avx512vl"))
        return 2;
    if (__builtin_cpu_supports("avx2"))
        return 1;
#endif
    return 0;
}

/* Select a path; returns the level in force (a level above what the CPU supports is refused
 * and -1 returned). */
static int fx_set_isa(int level)
{
    if (level < 0 || level > fx_cpu_isa_level()) return -1;
    fx_isa_level = level;
    return level;
}

static int fx_get_isa(void) { return fx_isa_level; }

#if FX_HAVE_DISPATCH
#define FX_DISPATCH(name, args)                          \
    switch (fx_isa_level) {                              \
    case 2: return name##_avx512 args;                   \
    case 1: return name##_avx2 args;                     \
    default: return name##_base args;                    \
    }
#else
#define FX_DISPATCH(name, args) return name##_base args;
#endif

#define FX_DECLARE_DISPATCHERS(T, S)                                                          \
static int64_t fx_softmax_logits_rows_##S(const T *x, T *g, T *h, const T *t,               \
        const int64_t *labels, int64_t n, int64_t r0, int64_t r1, const fx_params *P,          \
        const double *gscale, double *loss, double *lse)                                       \
{ FX_DISPATCH(fx_softmax_logits_rows_##S, (x, g, h, t, labels, n, r0, r1, P, gscale, loss, lse)) } \
static int64_t fx_softmax_probs_rows_##S(const T *x, T *g, const T *t,                        \
        const int64_t *labels, int64_t n, int64_t r0, int64_t r1, const fx_params *P,          \
        const double *gscale, double *loss)                                                    \
{ FX_DISPATCH(fx_softmax_probs_rows_##S, (x, g, t, labels, n, r0, r1, P, gscale, loss)) }    \
static void fx_softmax_chunk_stats_##S(const T *x, T *g, int64_t n, double *m, double *s)     \
{ FX_DISPATCH(fx_softmax_chunk_stats_##S, (x, g, n, m, s)) }                                  \
static void fx_scale_##S(T *g, int64_t n, double a)                                           \
{ FX_DISPATCH(fx_scale_##S, (g, n, a)) }                                                       \
static void fx_sigmoid_logits_rows_##S(const T *x, const T *z, T *g, T *h, int64_t n,         \
        int64_t r0, int64_t r1, const fx_params *P, const double *gscale, double *loss)        \
{ FX_DISPATCH(fx_sigmoid_logits_rows_##S, (x, z, g, h, n, r0, r1, P, gscale, loss)) }         \
static void fx_sigmoid_probs_rows_##S(const T *x, const T *z, T *g, int64_t n,                \
        int64_t r0, int64_t r1, const fx_params *P, const double *gscale, double *loss)        \
{ FX_DISPATCH(fx_sigmoid_probs_rows_##S, (x, z, g, n, r0, r1, P, gscale, loss)) }         \
static double fx_sigmoid_chunk_##S(const T *x, const T *z, T *g, T *h, int64_t n,              \
        int64_t item, int64_t nch, int from_logits, const fx_params *P, const double *gscale)   \
{ FX_DISPATCH(fx_sigmoid_chunk_##S, (x, z, g, h, n, item, nch, from_logits, P, gscale)) }    \
static void fx_softmax_split_stats_##S(const T *x, const T *t, const int64_t *labels,           \
        int64_t n, int64_t item, int64_t nch, const fx_params *P, double *st)                  \
{ FX_DISPATCH(fx_softmax_split_stats_##S, (x, t, labels, n, item, nch, P, st)) }              \
static void fx_softmax_split_grad_##S(const T *x, T *g, const T *t, const int64_t *labels,      \
        int64_t n, int64_t item, int64_t nch, const fx_params *P, const double *gscale,        \
        const double *st, const double *rowT, const int8_t *status)                            \
{ FX_DISPATCH(fx_softmax_split_grad_##S, (x, g, t, labels, n, item, nch, P, gscale, st, rowT, \
                                          status)) }                                           \
static int64_t fx_softmax_split_combine_##S(const int64_t *labels, int64_t n, int64_t nch,      \
        int64_t r, const fx_params *P, const double *gscale, double *st, double *loss,         \
        double *lse, double *rowT, int8_t *status)                                             \
{ FX_DISPATCH(fx_softmax_split_combine_##S, (labels, n, nch, r, P, gscale, st, loss, lse,     \
                                             rowT, status)) }

FX_DECLARE_DISPATCHERS(float, f32)
FX_DECLARE_DISPATCHERS(double, f64)

#endif /* FASTXENT_XENT_KERNELS_H */
