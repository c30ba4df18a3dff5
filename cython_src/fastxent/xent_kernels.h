/*
 * fastxent's compiled kernels: one translation unit (the fastxent._kernels extension), every
 * function static, one instruction-set state.
 *
 * Layout of the C side
 *   xent_math.h      vectorizable exp / log1p / log (float and double)
 *   xent_rows.inc    per-row kernels, instantiated for float and double (FX_T)
 *   xent_blocks_t.inc  block-of-rows kernels and the OpenMP runners, instantiated per element
 *                    type and per instruction set (baseline x86-64, AVX2, AVX-512) through
 *                    xent_blocks.inc
 *   this file        parameters, the call description (fx_job), instantiation and run-time
 *                    dispatch: fx_softmax() and fx_sigmoid() are the only ways in.
 *
 * fx_softmax / fx_sigmoid pick the runner of the job's element type on the instruction set
 * selected by fx_set_isa() (the best the CPU supports, or the one forced by FASTXENT_ISA).
 * With -ffp-contract=off and fixed-lane sums all variants return the same bits.
 */
#ifndef FASTXENT_XENT_KERNELS_H
#define FASTXENT_XENT_KERNELS_H

#include <stdint.h>
#include <stdlib.h>
#include <math.h>
#include "xent_math.h"
#include "xent_team.h"

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
    double eps;         /* clip for probabilities: lower bound, rounded to the data's dtype */
    double eps_hi;      /* upper bound: 1 - eps computed, then rounded to the data's dtype */
    double gs0;         /* gradient scale common to all rows (1 / reduction denominator) */
    const double *cw;   /* class weights, length C, or NULL */
    const double *pw;   /* pos_weight, length K, or NULL */
    int64_t ignore;     /* label to skip when has_ignore */
    int has_ignore;
} fx_params;

/* v rounded to float and back: the clip bounds of float32 data (Keras casts [eps, 1 - eps] to
 * the data's dtype).  Through a volatile float: GCC 12.2 at -O3 was seen to drop the plain
 * (double)(float)v round trip of a runtime value stored into fx_params (its vectorizer:
 * -fno-tree-vectorize kept it), leaving float32 data clipped at 1 - 1e-7. */
static inline double fx_round_float(double v)
{
    volatile float f = (float)v;
    return (double)f;
}

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

/* One call of a kernel family over a C-contiguous (n_rows, n_cols) buffer: the only way in.
 * Pointers of the element type `dtype` are passed as void *; NULL means "not wanted" (grad,
 * hess, lse, gscale, labels) or "not used" (target with labels, labels with targets). */
typedef struct {
    int dtype;              /* FX_FLOAT32 or FX_FLOAT64 */
    int from_logits;
    int n_threads;          /* upper bound of the OpenMP team (see fx_team_size) */
    int64_t n_rows, n_cols;
    const void *x;          /* logits or probabilities */
    void *grad;             /* gradient, shape of x; may be x itself (in place) */
    void *hess;             /* Hessian diagonal, shape of x */
    const void *target;     /* soft targets (softmax) or binary targets (sigmoid), shape of x */
    const int64_t *labels;  /* integer labels, one per row (softmax) */
    const double *gscale;   /* per-row gradient factor (times P.gs0) */
    double *loss;           /* per-row loss, always written */
    double *lse;            /* per-row log-sum-exp (softmax from logits) */
    fx_params P;
} fx_job;

#define FX_FLOAT32 0
#define FX_FLOAT64 1
#define FX_NO_MEMORY (-1)   /* a runner's return value when its scratch could not be allocated */
#define FX_BLOCK_ELEMENTS 32768  /* elements per block of rows handed to one thread at a time */
#define FX_TEAM_ELEMENTS 65536   /* at most one thread per this many elements */

static inline int64_t fx_rows_per_block(int64_t n)
{
    int64_t b = FX_BLOCK_ELEMENTS / (n > 0 ? n : 1);
    return b > 0 ? b : 1;
}

/* Threads for a loop over n_items blocks holding n_elements in all: never more than there are
 * blocks, nor than one per FX_TEAM_ELEMENTS elements (a smaller share costs less than waking
 * a thread, and far less than waiting for one on a busy machine).  Results do not depend on
 * it: the blocks are the same for any team. */
static inline int fx_team_size(int n_threads, int64_t n_items, int64_t n_elements)
{
    int64_t t = n_threads;
    int64_t by_work = n_elements / FX_TEAM_ELEMENTS;
    if (t > n_items) t = n_items;
    if (t > by_work) t = by_work;
    return (int)(t > 0 ? t : 1);
}

/* What a runner's items read (fx_run_items passes it to every item): the job, rows per block
 * or chunks per row, and per-item / per-row scratch of the split paths. */
typedef struct {
    const fx_job *J;
    int64_t per;
    double *st;
    double *rowT;
    int8_t *status;
} fx_items;

/* sum_i a[i] * w[i] (w NULL: sum_i a[i]) in FX_LANES fixed lanes combined in a fixed order:
 * the one float64 summation of the reductions (losses, weights, denominators). */
static double fx_dot_lanes(const double *a, const double *w, int64_t n)
{
    double acc[FX_LANES] = {0.0};
    int64_t i = 0;
    if (w == NULL) {
        for (; i + FX_LANES <= n; i += FX_LANES)
            for (int j = 0; j < FX_LANES; j++) acc[j] += a[i + j];
        for (int j = 0; i + j < n; j++) acc[j] += a[i + j];
    } else {
        for (; i + FX_LANES <= n; i += FX_LANES)
            for (int j = 0; j < FX_LANES; j++) acc[j] += a[i + j] * w[i + j];
        for (int j = 0; i + j < n; j++) acc[j] += a[i + j] * w[i + j];
    }
    return fx_lanes_total(acc);
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

typedef int64_t (*fx_runner)(const fx_job *);

#if FX_HAVE_DISPATCH
#define FX_RUNNERS(name) { { name##_f32_base, name##_f64_base }, { name##_f32_avx2, name##_f64_avx2 }, \
                           { name##_f32_avx512, name##_f64_avx512 } }
#else
#define FX_RUNNERS(name) { { name##_f32_base, name##_f64_base } }
#endif
static const fx_runner fx_softmax_runners[][2] = FX_RUNNERS(fx_softmax_run);
static const fx_runner fx_sigmoid_runners[][2] = FX_RUNNERS(fx_sigmoid_run);

/* Softmax cross-entropy (labels or soft targets, from logits or probabilities) on the selected
 * instruction-set path.  Returns the number of labels outside [0, n_cols) that were not
 * ignored (their rows hold NaN and a zero gradient), or FX_NO_MEMORY. */
static int64_t fx_softmax(const fx_job *J)
{
    return fx_softmax_runners[fx_isa_level][J->dtype == FX_FLOAT64](J);
}

/* Binary cross-entropy, the mean over each row.  Returns 0, or FX_NO_MEMORY. */
static int64_t fx_sigmoid(const fx_job *J)
{
    return fx_sigmoid_runners[fx_isa_level][J->dtype == FX_FLOAT64](J);
}

#endif /* FASTXENT_XENT_KERNELS_H */
