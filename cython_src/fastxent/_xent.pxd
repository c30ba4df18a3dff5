# The C kernel layer (xent_kernels.h), declared once: the call description and its two
# entry points, the instruction-set state, the reduction sums and the elementary functions.
from libc.stdint cimport int64_t


cdef extern from "xent_kernels.h" nogil:
    ctypedef struct fx_params:
        double keep
        double spread
        double zloss
        double eps
        double eps_hi
        double gs0
        const double *cw
        const double *pw
        int64_t ignore
        int has_ignore
        int row_fn
        double row_a
        double row_b
        double row_c
        int add_xlogx

    ctypedef struct fx_job:
        int dtype
        int target_dtype
        int from_logits
        int n_threads
        int64_t n_rows
        int64_t n_cols
        const void *x
        void *grad
        void *hess
        const void *target
        const int64_t *labels
        const double *gscale
        double *loss
        double *lse
        double *block_sums
        const double *sum_w
        fx_params P

    const int FX_FLOAT32
    const int FX_FLOAT64
    const int FX_FLOAT16
    const int FX_BFLOAT16
    const int FX_NO_MEMORY
    const int FX_SPLIT_MIN
    const int FX_SHORT
    const int FX_SPLIT_CHUNK
    const int FX_TEAM_ELEMENTS

    int64_t fx_softmax(const fx_job *J)
    int64_t fx_sigmoid(const fx_job *J)
    int64_t fx_binary_focal(const fx_job *J)
    double fx_dot_lanes(const double *a, const double *w, int64_t n)
    double fx_sum_blocks(const double *part, int64_t nblocks)
    double fx_blocked_total(const double *a, const double *w, int64_t n, int64_t rpb)
    int64_t fx_rows_per_block(int64_t n)
    int64_t fx_n_blocks(int64_t n, int64_t rpb)
    double fx_round_float(double v)

    # the team size's elements per thread, and what the teams did (for the tests)
    int64_t fx_set_team_elements(int64_t n)
    void fx_team_stats_take(int *stats)

    int fx_set_isa(int level)
    int fx_get_isa()
    int fx_cpu_isa_level()

    # elementary functions (for the accuracy tests)
    double fx_exp_nonpos(double x)
    double fx_log1p_unit(double y)
    double fx_log_pos(double x)
    float fx_expf_shifted(float x, float negm)
    float fx_log1pf_recip(float y, float *inv)

    # conversions of the low-precision formats (for the conversion tests)
    float fx_f16_to_f32(unsigned int h)
    unsigned int fx_f32_to_f16(float f)
    float fx_bf16_to_f32(unsigned int h)
    unsigned int fx_f32_to_bf16(float f)
    void fx_lowp_convert(int code, int widen, const void *src, void *dst, int64_t n)
