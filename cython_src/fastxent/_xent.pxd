# Declarations of the C kernels in xent_kernels.h (shared by _softmax and _sigmoid).
from libc.stdint cimport int8_t, int64_t


cdef extern from "xent_kernels.h" nogil:
    ctypedef struct fx_params:
        double keep
        double spread
        double zloss
        double eps
        double gs0
        const double *cw
        const double *pw
        int64_t ignore
        int has_ignore

    const int FX_SPLIT_MIN
    const int FX_SHORT
    const int FX_SPLIT_CHUNK

    # elementary functions (for the accuracy tests)
    double fx_exp_nonpos(double x)
    double fx_log1p_unit(double y)
    double fx_log_pos(double x)
    float fx_expf_shifted(float x, float negm)
    float fx_log1pf_recip(float y, float *inv)

    int fx_set_isa(int level)
    int fx_get_isa()
    int fx_cpu_isa_level()

    int64_t fx_softmax_logits_rows_f32(const float *x, float *g, float *h, const float *t,
                                       const int64_t *labels, int64_t n, int64_t r0, int64_t r1,
                                       const fx_params *P, const double *gscale, double *loss,
                                       double *lse)
    int64_t fx_softmax_logits_rows_f64(const double *x, double *g, double *h, const double *t,
                                       const int64_t *labels, int64_t n, int64_t r0, int64_t r1,
                                       const fx_params *P, const double *gscale, double *loss,
                                       double *lse)
    int64_t fx_softmax_probs_rows_f32(const float *x, float *g, const float *t,
                                      const int64_t *labels, int64_t n, int64_t r0, int64_t r1,
                                      const fx_params *P, const double *gscale, double *loss)
    int64_t fx_softmax_probs_rows_f64(const double *x, double *g, const double *t,
                                      const int64_t *labels, int64_t n, int64_t r0, int64_t r1,
                                      const fx_params *P, const double *gscale, double *loss)
    void fx_softmax_chunk_stats_f32(const float *x, float *g, int64_t n, double *m, double *s)
    void fx_softmax_chunk_stats_f64(const double *x, double *g, int64_t n, double *m, double *s)
    void fx_scale_f32(float *g, int64_t n, double a)
    void fx_scale_f64(double *g, int64_t n, double a)
    void fx_sigmoid_logits_rows_f32(const float *x, const float *z, float *g, float *h, int64_t n,
                                    int64_t r0, int64_t r1, const fx_params *P,
                                    const double *gscale, double *loss)
    void fx_sigmoid_logits_rows_f64(const double *x, const double *z, double *g, double *h,
                                    int64_t n, int64_t r0, int64_t r1, const fx_params *P,
                                    const double *gscale, double *loss)
    void fx_sigmoid_probs_rows_f32(const float *x, const float *z, float *g, int64_t n,
                                   int64_t r0, int64_t r1, const fx_params *P,
                                   const double *gscale, double *loss)
    void fx_sigmoid_probs_rows_f64(const double *x, const double *z, double *g, int64_t n,
                                   int64_t r0, int64_t r1, const fx_params *P,
                                   const double *gscale, double *loss)
    double fx_sigmoid_chunk_f32(
        const float *x, const float *z, float *g, float *h, int64_t n, int64_t item, int64_t nch,
        int from_logits, const fx_params *P, const double *gscale)
    void fx_softmax_split_stats_f32(
        const float *x, const float *t, const int64_t *labels, int64_t n, int64_t item,
        int64_t nch, const fx_params *P, double *st)
    void fx_softmax_split_grad_f32(
        const float *x, float *g, const float *t, const int64_t *labels, int64_t n, int64_t item,
        int64_t nch, const fx_params *P, const double *gscale, const double *st,
        const double *rowT, const int8_t *status)
    int64_t fx_softmax_split_combine_f32(
        const int64_t *labels, int64_t n, int64_t nch, int64_t r, const fx_params *P,
        const double *gscale, double *st, double *loss, double *lse, double *rowT,
        int8_t *status)
    double fx_sigmoid_chunk_f64(
        const double *x, const double *z, double *g, double *h, int64_t n, int64_t item, int64_t nch,
        int from_logits, const fx_params *P, const double *gscale)
    void fx_softmax_split_stats_f64(
        const double *x, const double *t, const int64_t *labels, int64_t n, int64_t item,
        int64_t nch, const fx_params *P, double *st)
    void fx_softmax_split_grad_f64(
        const double *x, double *g, const double *t, const int64_t *labels, int64_t n, int64_t item,
        int64_t nch, const fx_params *P, const double *gscale, const double *st,
        const double *rowT, const int8_t *status)
    int64_t fx_softmax_split_combine_f64(
        const int64_t *labels, int64_t n, int64_t nch, int64_t r, const fx_params *P,
        const double *gscale, double *st, double *loss, double *lse, double *rowT,
        int8_t *status)


cdef inline int team_size(int n_threads, Py_ssize_t n_items, int64_t n_elements) noexcept nogil:
    """Threads for a prange over n_items blocks holding n_elements in all: never more than
    there are blocks, nor than one per 65,536 elements (a smaller share costs less than
    waking a thread, and far less than waiting for one on a busy machine).  Results do not
    depend on it: the blocks are the same for any team."""
    cdef int64_t by_work = n_elements // 65536
    cdef int64_t t = n_threads
    if t > n_items:
        t = n_items
    if t > by_work:
        t = by_work
    return <int>(t if t > 0 else 1)
