"""Softmax (categorical) cross-entropy kernels (private: fastxent.losses validates inputs).

Every function takes C-contiguous buffers allocated by the Python layer, releases the GIL and
runs an OpenMP ``prange`` over fixed blocks of rows.  Each row is computed by one thread with
the same code whatever the thread count, so results are bitwise identical for any n_threads.
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.stdint cimport int8_t, int64_t

from fastxent._xent cimport (
    FX_SHORT, FX_SPLIT_CHUNK, FX_SPLIT_MIN, fx_cpu_isa_level, fx_get_isa, fx_params, fx_set_isa,
    fx_softmax_logits_rows_f32, fx_softmax_logits_rows_f64, fx_softmax_probs_rows_f32,
    fx_softmax_probs_rows_f64, fx_softmax_split_combine_f32, fx_softmax_split_combine_f64,
    fx_softmax_split_grad_f32, fx_softmax_split_grad_f64, fx_softmax_split_stats_f32,
    fx_softmax_split_stats_f64, fx_exp_nonpos, fx_expf_shifted, fx_log1p_unit, fx_log1pf_recip,
    fx_log_pos, team_size,
)

import numpy as np

# elements per block of rows handed to one thread at a time
DEF BLOCK_ELEMENTS = 32768

# Kernel paths, chosen by the row length only (never by the thread count):
SHORT_ROWS = FX_SHORT      # softmax rows of at most this many classes: transposed kernel
SPLIT_MIN = FX_SPLIT_MIN   # rows of at least this many elements: split across threads
SPLIT_CHUNK = FX_SPLIT_CHUNK


def _elementary(str name, x, double shift=0.0):
    """The kernels' elementary functions on an array, for tests/test_kernel_paths.py:
    "exp" (float64, x <= 0), "log1p" (float64, x in [0, 1]), "log" (float64, x > 0),
    "expf" (float32 exp(x - shift), x <= shift), "log1pf" (float32, x in [0, 1]) and
    "recipf" (float32 1 / (1 + x), x in [0, 1], a by-product of log1pf)."""
    cdef Py_ssize_t i
    cdef double[::1] xd, od
    cdef float[::1] xf, of
    cdef float negm = -<float>shift
    cdef float inv
    if name in ("expf", "log1pf", "recipf"):
        a = np.ascontiguousarray(x, dtype=np.float32)
        out = np.empty_like(a)
        xf = a
        of = out
        for i in range(xf.shape[0]):
            if name == "expf":
                of[i] = fx_expf_shifted(xf[i], negm)
            else:
                of[i] = fx_log1pf_recip(xf[i], &inv)
                if name == "recipf":
                    of[i] = inv
        return out
    a = np.ascontiguousarray(x, dtype=np.float64)
    out = np.empty_like(a)
    xd = a
    od = out
    for i in range(xd.shape[0]):
        if name == "exp":
            od[i] = fx_exp_nonpos(xd[i])
        elif name == "log1p":
            od[i] = fx_log1p_unit(xd[i])
        elif name == "log":
            od[i] = fx_log_pos(xd[i])
        else:
            raise ValueError(f"unknown function {name!r}")
    return out


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

    Rows of at least FX_SPLIT_MIN classes (without the Hessian) are cut into chunks of
    FX_SPLIT_CHUNK classes that the threads share, merged per row with the online
    log-sum-exp rule in chunk order: whether a row is split depends on its length only.
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
    if C >= FX_SPLIT_MIN and hp == NULL:
        return _softmax_split(xp, gp, tp, lp, N, C, &P, sp, lossp, lsep, n_threads)
    cdef int64_t rpb = rows_per_block(C)
    cdef Py_ssize_t nblocks = (N + rpb - 1) // rpb
    cdef Py_ssize_t b
    cdef int64_t r0, r1, bad = 0
    with nogil:
        for b in prange(nblocks, schedule="dynamic",
                        num_threads=team_size(n_threads, nblocks, N * C)):
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
        for b in prange(nblocks, schedule="dynamic",
                        num_threads=team_size(n_threads, nblocks, N * C)):
            r0 = b * rpb
            r1 = r0 + rpb if r0 + rpb < N else N
            if floating is float:
                bad += fx_softmax_probs_rows_f32(xp, gp, tp, lp, C, r0, r1, &P, sp, lossp)
            else:
                bad += fx_softmax_probs_rows_f64(xp, gp, tp, lp, C, r0, r1, &P, sp, lossp)
    return bad


cdef int64_t _softmax_split(const floating *xp, floating *gp, const floating *tp,
                            const int64_t *lp, int64_t N, int64_t C, const fx_params *P,
                            const double *sp, double *lossp, double *lsep, int n_threads):
    """Rows too long for one thread: per-chunk statistics in parallel, an ordered per-row
    merge, then the per-chunk gradient in parallel, recomputed from x (see
    xent_blocks_t.inc)."""
    cdef int64_t nch = (C + FX_SPLIT_CHUNK - 1) // FX_SPLIT_CHUNK
    cdef double[:, ::1] stats = np.empty((N * nch, 4))
    cdef double[::1] row_t = np.empty(N)
    cdef int8_t[::1] status = np.empty(N, dtype=np.int8)
    cdef double *st = &stats[0, 0]
    cdef double *rt = &row_t[0]
    cdef int8_t *stp = &status[0]
    cdef Py_ssize_t item
    cdef int64_t r, bad = 0
    with nogil:
        for item in prange(N * nch, schedule="dynamic",
                           num_threads=team_size(n_threads, N * nch, N * C)):
            if floating is float:
                fx_softmax_split_stats_f32(xp, tp, lp, C, item, nch, P, st + 4 * item)
            else:
                fx_softmax_split_stats_f64(xp, tp, lp, C, item, nch, P, st + 4 * item)
        for r in range(N):
            if floating is float:
                bad += fx_softmax_split_combine_f32(lp, C, nch, r, P, sp, st + 4 * r * nch,
                                                    lossp, lsep, rt, stp)
            else:
                bad += fx_softmax_split_combine_f64(lp, C, nch, r, P, sp, st + 4 * r * nch,
                                                    lossp, lsep, rt, stp)
        if gp != NULL:
            for item in prange(N * nch, schedule="dynamic",
                           num_threads=team_size(n_threads, N * nch, N * C)):
                if floating is float:
                    fx_softmax_split_grad_f32(xp, gp, tp, lp, C, item, nch, P, sp, st + 4 * item,
                                              rt, stp)
                else:
                    fx_softmax_split_grad_f64(xp, gp, tp, lp, C, item, nch, P, sp, st + 4 * item,
                                              rt, stp)
    return bad
