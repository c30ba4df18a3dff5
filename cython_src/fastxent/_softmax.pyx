"""Softmax (categorical) cross-entropy kernels (private: fastxent.losses validates inputs).

Every function takes C-contiguous buffers allocated by the Python layer, releases the GIL and
runs an OpenMP ``prange`` over fixed blocks of rows.  Each row is computed by one thread with
the same code whatever the thread count, so results are bitwise identical for any n_threads.
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.stdint cimport int64_t

from fastxent._xent cimport (
    fx_params, fx_set_isa, fx_get_isa, fx_cpu_isa_level,
    fx_softmax_logits_rows_f32, fx_softmax_logits_rows_f64,
    fx_softmax_probs_rows_f32, fx_softmax_probs_rows_f64,
)

# elements per block of rows handed to one thread at a time
DEF BLOCK_ELEMENTS = 32768


def set_isa(int level):
    """Select the instruction-set path (0 baseline, 1 AVX2, 2 AVX-512); -1 if unsupported."""
    return fx_set_isa(level)


def get_isa():
    return fx_get_isa()


def cpu_isa():
    """Best instruction-set level this CPU supports."""
    return fx_cpu_isa_level()


cdef inline int64_t rows_per_block(int64_t n) noexcept nogil:
    cdef int64_t b = BLOCK_ELEMENTS // (n if n > 0 else 1)
    return b if b > 0 else 1


cdef fx_params make_params(double keep, double spread, double zloss, double eps, double gs0,
                           const double[::1] class_weight, object ignore_class):
    cdef fx_params P
    P.gs0 = gs0
    P.keep = keep
    P.spread = spread
    P.zloss = zloss
    P.eps = eps
    P.cw = &class_weight[0] if class_weight is not None else NULL
    P.pw = NULL
    P.has_ignore = ignore_class is not None
    P.ignore = <int64_t>ignore_class if ignore_class is not None else 0
    return P


def softmax_xent_logits(const floating[:, ::1] x, floating[:, ::1] grad,
                        floating[:, ::1] hess, const floating[:, ::1] target,
                        const int64_t[::1] labels, double gs0, const double[::1] gscale,
                        double[::1] loss, double[::1] lse,
                        double keep, double spread, double zloss,
                        const double[::1] class_weight, object ignore_class, int n_threads):
    """Per-row softmax cross-entropy from logits, its gradient and (optionally) Hessian diagonal.

    Exactly one of ``labels`` (int64, one per row) and ``target`` (same shape as x) is given.
    Row r's gradient is scaled by ``gs0 * gscale[r]``; ``grad``, ``hess``, ``gscale`` and
    ``lse`` may be None.  Returns the number of labels
    outside [0, n_classes) that were not ``ignore_class``.
    """
    cdef int64_t N = x.shape[0], C = x.shape[1]
    cdef fx_params P = make_params(keep, spread, zloss, 0.0, gs0, class_weight, ignore_class)
    cdef const floating *xp = &x[0, 0]
    cdef floating *gp = &grad[0, 0] if grad is not None else NULL
    cdef floating *hp = &hess[0, 0] if hess is not None else NULL
    cdef const floating *tp = &target[0, 0] if target is not None else NULL
    cdef const int64_t *lp = &labels[0] if labels is not None else NULL
    cdef const double *sp = &gscale[0] if gscale is not None else NULL
    cdef double *lossp = &loss[0]
    cdef double *lsep = &lse[0] if lse is not None else NULL
    cdef int64_t rpb = rows_per_block(C)
    cdef Py_ssize_t nblocks = (N + rpb - 1) // rpb
    cdef Py_ssize_t b
    cdef int64_t r0, r1, bad = 0
    with nogil:
        for b in prange(nblocks, schedule="static", num_threads=n_threads):
            r0 = b * rpb
            r1 = r0 + rpb if r0 + rpb < N else N
            if floating is float:
                bad += fx_softmax_logits_rows_f32(xp, gp, hp, tp, lp, C, r0, r1, &P, sp,
                                                  lossp, lsep)
            else:
                bad += fx_softmax_logits_rows_f64(xp, gp, hp, tp, lp, C, r0, r1, &P, sp,
                                                  lossp, lsep)
    return bad


def softmax_xent_probs(const floating[:, ::1] x, floating[:, ::1] grad,
                       const floating[:, ::1] target, const int64_t[::1] labels,
                       double gs0, const double[::1] gscale, double[::1] loss,
                       double keep, double spread, double eps,
                       const double[::1] class_weight, object ignore_class, int n_threads):
    """Per-row cross-entropy from probabilities (Keras ``from_logits=False``) and its gradient."""
    cdef int64_t N = x.shape[0], C = x.shape[1]
    cdef fx_params P = make_params(keep, spread, 0.0, eps, gs0, class_weight, ignore_class)
    cdef const floating *xp = &x[0, 0]
    cdef floating *gp = &grad[0, 0] if grad is not None else NULL
    cdef const floating *tp = &target[0, 0] if target is not None else NULL
    cdef const int64_t *lp = &labels[0] if labels is not None else NULL
    cdef const double *sp = &gscale[0] if gscale is not None else NULL
    cdef double *lossp = &loss[0]
    cdef int64_t rpb = rows_per_block(C)
    cdef Py_ssize_t nblocks = (N + rpb - 1) // rpb
    cdef Py_ssize_t b
    cdef int64_t r0, r1, bad = 0
    with nogil:
        for b in prange(nblocks, schedule="static", num_threads=n_threads):
            r0 = b * rpb
            r1 = r0 + rpb if r0 + rpb < N else N
            if floating is float:
                bad += fx_softmax_probs_rows_f32(xp, gp, tp, lp, C, r0, r1, &P, sp, lossp)
            else:
                bad += fx_softmax_probs_rows_f64(xp, gp, tp, lp, C, r0, r1, &P, sp, lossp)
    return bad
