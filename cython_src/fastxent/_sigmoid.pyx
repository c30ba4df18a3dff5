"""Sigmoid (binary) cross-entropy kernels (private: fastxent.losses validates inputs).

Rows of a C-contiguous (rows, n) buffer; the per-row loss is the mean over the row (Keras'
``BinaryCrossentropy`` averages over the last axis).  GIL released, OpenMP over fixed blocks.
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.stdint cimport int64_t

from fastxent._xent cimport (
    FX_SPLIT_CHUNK, FX_SPLIT_MIN, fx_get_isa, fx_params, fx_set_isa, fx_sigmoid_chunk_f32,
    fx_sigmoid_chunk_f64, fx_sigmoid_logits_rows_f32, fx_sigmoid_logits_rows_f64,
    fx_sigmoid_probs_rows_f32, fx_sigmoid_probs_rows_f64, team_size,
)

import numpy as np

DEF BLOCK_ELEMENTS = 32768


def set_isa(int level):
    return fx_set_isa(level)


def get_isa():
    return fx_get_isa()


cdef inline int64_t rows_per_block(int64_t n) noexcept nogil:
    cdef int64_t b = BLOCK_ELEMENTS // (n if n > 0 else 1)
    return b if b > 0 else 1


def sigmoid_xent(const floating[:, ::1] x, const floating[:, ::1] z, floating[:, ::1] grad,
                 floating[:, ::1] hess, double gs0, const double[::1] gscale,
                 double[::1] loss,
                 bint from_logits, double keep, double spread, double eps,
                 const double[::1] pos_weight, int n_threads):
    """Mean over each row of the elementwise binary cross-entropy; gradient (and, from
    logits, the Hessian diagonal) scaled by gs0 * gscale[row] / n.

    Rows of at least FX_SPLIT_MIN elements are cut into chunks of FX_SPLIT_CHUNK elements
    that the threads share; each row's chunk sums are then added in chunk order.  Whether a
    row is split depends only on its length, never on the thread count.
    """
    cdef int64_t N = x.shape[0], K = x.shape[1]
    cdef fx_params P
    P.keep = keep
    P.spread = spread
    P.zloss = 0.0
    P.eps = eps
    P.gs0 = gs0
    P.cw = NULL
    P.pw = &pos_weight[0] if pos_weight is not None else NULL
    P.ignore = 0
    P.has_ignore = 0
    cdef const floating *xp = &x[0, 0]
    cdef const floating *zp = &z[0, 0]
    cdef floating *gp = &grad[0, 0] if grad is not None else NULL
    cdef floating *hp = &hess[0, 0] if hess is not None else NULL
    cdef const double *sp = &gscale[0] if gscale is not None else NULL
    cdef double *lossp = &loss[0]
    if K >= FX_SPLIT_MIN:
        _sigmoid_split(xp, zp, gp, hp, N, K, from_logits, &P, sp, lossp, n_threads)
        return
    cdef int64_t rpb = rows_per_block(K)
    cdef Py_ssize_t nblocks = (N + rpb - 1) // rpb
    cdef Py_ssize_t b
    cdef int64_t r0, r1
    with nogil:
        for b in prange(nblocks, schedule="dynamic",
                        num_threads=team_size(n_threads, nblocks, N * K)):
            r0 = b * rpb
            r1 = r0 + rpb if r0 + rpb < N else N
            if floating is float:
                if from_logits:
                    fx_sigmoid_logits_rows_f32(xp, zp, gp, hp, K, r0, r1, &P, sp, lossp)
                else:
                    fx_sigmoid_probs_rows_f32(xp, zp, gp, K, r0, r1, &P, sp, lossp)
            else:
                if from_logits:
                    fx_sigmoid_logits_rows_f64(xp, zp, gp, hp, K, r0, r1, &P, sp, lossp)
                else:
                    fx_sigmoid_probs_rows_f64(xp, zp, gp, K, r0, r1, &P, sp, lossp)


cdef void _sigmoid_split(const floating *xp, const floating *zp, floating *gp, floating *hp,
                         int64_t N, int64_t K, bint from_logits, const fx_params *P,
                         const double *sp, double *lossp, int n_threads):
    """Long rows: chunks of FX_SPLIT_CHUNK elements in parallel, then an ordered sum per row."""
    cdef int64_t nch = (K + FX_SPLIT_CHUNK - 1) // FX_SPLIT_CHUNK
    cdef double[::1] part = np.empty(N * nch)
    cdef double *pp = &part[0]
    cdef Py_ssize_t item
    cdef int64_t r, c
    cdef double total
    with nogil:
        for item in prange(N * nch, schedule="dynamic",
                           num_threads=team_size(n_threads, N * nch, N * K)):
            if floating is float:
                pp[item] = fx_sigmoid_chunk_f32(xp, zp, gp, hp, K, item, nch, from_logits, P, sp)
            else:
                pp[item] = fx_sigmoid_chunk_f64(xp, zp, gp, hp, K, item, nch, from_logits, P, sp)
        for r in range(N):
            total = 0.0
            for c in range(nch):
                total = total + pp[r * nch + c]
            lossp[r] = total / <double>K
