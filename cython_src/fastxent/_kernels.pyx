"""fastxent's compiled layer (private): the one extension module.

* ``Options``: a loss's options, validated once by ``fastxent._options`` and frozen here in a
  form the compiled code reads directly.
* ``softmax`` / ``sigmoid``: the kernels of xent_kernels.h on C-contiguous (rows, classes)
  buffers that ``fastxent._dispatch`` laid out; the GIL is released while they run.
* ``plan`` / ``weighted_total`` / ``reduce_total``: the reduction arithmetic (denominator,
  per-row gradient scale, the float64 sum by the kernels' fixed blocks of rows, the sum or
  mean) that ``fastxent._reduction`` exposes.
* ``fast_call``: the common call (ndarrays, class axis last, contiguous) checked, planned,
  run and reduced without leaving compiled code; ``None`` sends a call to the general path.
* output buffers from a NumPy memory handler that reuses large blocks (fx_buffer_cache.h),
  the instruction-set state, OpenMP and build facts, and the elementary functions for the
  accuracy tests.

Nothing here validates what the Python layer validates: arrays reaching ``softmax`` and
``sigmoid`` are trusted to have the documented dtypes, shapes and layout.
"""
cimport numpy as cnp
from libc.stdint cimport int64_t
from libc.string cimport memset

from fastxent._openmp cimport FX_OPENMP_ENABLED, fx_omp_max_threads, fx_omp_num_procs
from fastxent._xent cimport (
    FX_BFLOAT16, FX_FLOAT16, FX_FLOAT32, FX_FLOAT64, FX_NO_MEMORY, FX_SHORT, FX_SPLIT_CHUNK,
    FX_SPLIT_MIN, FX_TEAM_ELEMENTS, fx_bf16_to_f32, fx_binary_focal, fx_blocked_total,
    fx_cpu_isa_level, fx_dot_lanes, fx_exp_nonpos, fx_expf_shifted, fx_f16_to_f32,
    fx_f32_to_bf16, fx_f32_to_f16, fx_get_isa, fx_job, fx_log1p_unit, fx_log1pf_recip,
    fx_log_pos, fx_lowp_convert, fx_n_blocks, fx_round_float, fx_rows_per_block, fx_set_isa,
    fx_set_team_elements, fx_sigmoid, fx_softmax, fx_sum_blocks, fx_team_stats_take,
)

import numpy as np

from fastxent._validation import is_bfloat16

cnp.import_array()

# Kernel paths, chosen by the row length only (never by the thread count):
SHORT_ROWS = FX_SHORT      # softmax rows of at most this many classes: transposed kernel
SPLIT_MIN = FX_SPLIT_MIN   # rows of at least this many elements: split across threads
SPLIT_CHUNK = FX_SPLIT_CHUNK
# Team size (never the results): a loop over k items of n elements in all runs on
# min(n_threads, k, max(1, n // TEAM_ELEMENTS)) threads
TEAM_ELEMENTS = FX_TEAM_ELEMENTS

# reductions, as fastxent._options normalizes them
REDUCTIONS = ("none", "sum", "sum_over_batch_size", "mean_with_sample_weight")
DEF RED_NONE = 0
DEF RED_SUM = 1
DEF RED_BATCH = 2
DEF RED_WEIGHTED = 3

DEF FAMILY_SOFTMAX = 0
DEF FAMILY_SIGMOID = 1

# calls of at least this many elements release the GIL while the kernel runs
DEF NOGIL_ELEMENTS = 4096


# ------------------------------------------------------------------------------------------
# Options
# ------------------------------------------------------------------------------------------

cdef class Options:
    """A loss's options, validated and normalized once (built by ``fastxent._options``).

    Immutable.  ``class_weight`` / ``pos_weight`` are None, a float, or a read-only float64
    vector; ``axis`` is the int given (normalized against each call's ``y_pred``).
    """

    cdef readonly str family        # "softmax" or "sigmoid"
    cdef readonly bint sparse       # softmax: integer labels
    cdef readonly bint from_logits
    cdef readonly double label_smoothing
    cdef readonly int axis
    cdef readonly object class_weight
    cdef readonly object pos_weight
    cdef readonly object ignore_class
    cdef readonly double epsilon
    cdef readonly double z_loss
    cdef readonly str reduction
    cdef readonly object n_threads
    cdef int _family, _red
    cdef double _keep

    def __init__(self, *, str family, bint sparse, bint from_logits, double label_smoothing,
                 int axis, class_weight, pos_weight, ignore_class, double epsilon,
                 double z_loss, str reduction, n_threads):
        self.family = family
        self._family = FAMILY_SOFTMAX if family == "softmax" else FAMILY_SIGMOID
        self.sparse = sparse
        self.from_logits = from_logits
        self.label_smoothing = label_smoothing
        self._keep = 1.0 - label_smoothing
        self.axis = axis
        self.class_weight = class_weight
        self.pos_weight = pos_weight
        self.ignore_class = ignore_class
        self.epsilon = epsilon
        self.z_loss = z_loss
        self.reduction = reduction
        self._red = REDUCTIONS.index(reduction)
        self.n_threads = n_threads

    def __repr__(self):
        names = ("family", "sparse", "from_logits", "label_smoothing", "axis", "class_weight",
                 "pos_weight", "ignore_class", "epsilon", "z_loss", "reduction", "n_threads")
        return "Options(" + ", ".join(f"{n}={getattr(self, n)!r}" for n in names) + ")"


# ------------------------------------------------------------------------------------------
# Reduction arithmetic
# ------------------------------------------------------------------------------------------

cdef double plan_rows(int red, int64_t n, const double *w, const int64_t *labels,
                      bint has_ignore, int64_t ignore, const double *cw, int64_t ncls,
                      const double *scw, double *weff, double *cls) noexcept nogil:
    """The denominator of reduction ``red`` over n rows, and each row's effective weight.

    weff (n doubles, or NULL when there are neither weights nor an ignored label) receives
    sample weight x (label != ignore).  cls (n doubles) is scratch for the per-row class
    weight of a class-weighted mean.  w, labels, cw, scw may be NULL.
    """
    cdef int64_t i, valid = n, y
    cdef bint masked = has_ignore and labels != NULL
    if weff != NULL:
        for i in range(n):
            weff[i] = 1.0 if w == NULL else w[i]
            if masked and labels[i] == ignore:
                weff[i] = 0.0
    if red == RED_NONE or red == RED_SUM:
        return 1.0
    if red == RED_BATCH:
        if masked:
            valid = 0
            for i in range(n):
                valid += labels[i] != ignore
        return <double>valid
    # mean_with_sample_weight: sum of weights x each row's class weight
    if cw != NULL and labels != NULL:
        for i in range(n):
            y = labels[i]
            y = 0 if y < 0 else (ncls - 1 if y >= ncls else y)
            cls[i] = cw[y]
        scw = cls
    if weff == NULL and scw == NULL:
        return <double>n
    if weff == NULL:
        return fx_dot_lanes(scw, NULL, n)
    return fx_dot_lanes(weff, scw, n)


cdef inline double grad_scale(int red, double denom) noexcept nogil:
    if red == RED_NONE or red == RED_SUM:
        return 1.0
    return 1.0 / denom if denom != 0.0 else 0.0


cdef inline double *opt_ptr(object a):
    """Data pointer of a float64 C-contiguous ndarray, or NULL for None."""
    return NULL if a is None else <double *>cnp.PyArray_DATA(<cnp.ndarray>a)


def plan(str reduction, int64_t n_rows, weights=None, labels=None, ignore_class=None,
         class_weight=None, sample_class_weight=None):
    """``(denominator, gs0, effective_weights or None)`` of a reduction over n_rows rows.

    ``weights``: flat float64 sample weights; ``labels``: flat int64 labels (with
    ``ignore_class``, masked rows weigh 0); ``class_weight``: float64 per class (a sparse
    class-weighted mean); ``sample_class_weight``: float64 per row (soft targets).  All
    C-contiguous, as ``fastxent._reduction`` passes them.
    """
    cdef int red = REDUCTIONS.index(reduction)
    cdef bint has_ignore = ignore_class is not None and labels is not None
    cdef int64_t ign = ignore_class if has_ignore else 0
    cdef int64_t ncls = 0 if class_weight is None else len(class_weight)
    weff = None
    if weights is not None or has_ignore:
        weff = np.empty(n_rows)
    cls = np.empty(n_rows) if (red == RED_WEIGHTED and class_weight is not None
                               and labels is not None) else None
    cdef double denom = plan_rows(
        red, n_rows, opt_ptr(weights),
        NULL if labels is None else <const int64_t *>cnp.PyArray_DATA(<cnp.ndarray>labels),
        has_ignore, ign, opt_ptr(class_weight), ncls, opt_ptr(sample_class_weight),
        opt_ptr(weff), opt_ptr(cls))
    return denom, grad_scale(red, denom), weff


def weighted_total(cnp.ndarray values, weights, int64_t row_length):
    """sum(values * weights) (weights None: sum(values)) of float64 C-contiguous per-row
    losses of rows of ``row_length`` elements.

    The kernels' definition of the sum (xent_kernels.h): blocks of ``rows_per_block(row_length)``
    rows, each summed in fixed lanes combined in a fixed order, the blocks added in order.  So
    the total is the one the fast path computes inside the kernel, for any thread count.
    """
    cdef int64_t n = cnp.PyArray_SIZE(values)
    return fx_blocked_total(<const double *>cnp.PyArray_DATA(values), opt_ptr(weights), n,
                            fx_rows_per_block(row_length))


def rows_per_block(int64_t row_length):
    """Rows per fixed block of the kernels (and of their sums) for rows of this length."""
    return fx_rows_per_block(row_length)


def n_blocks(int64_t n_rows, int64_t row_length):
    """The number of fixed blocks of ``n_rows`` rows of this length: the length of a kernel's
    ``block_sums``."""
    return fx_n_blocks(n_rows, fx_rows_per_block(row_length))


def blocks_total(cnp.ndarray block_sums):
    """The total of a kernel's float64 ``block_sums``: the blocks' sums added in block order,
    the same bits as ``weighted_total`` of the per-row losses."""
    return fx_sum_blocks(<const double *>cnp.PyArray_DATA(block_sums),
                         cnp.PyArray_SIZE(block_sums))


cdef inline object _reduced(int red, double total, double denom):
    """A reduction other than "none" of the weighted total: the sum, or the mean (0.0 over
    nothing).  The one definition: ``fast_call`` and ``reduce_total`` use it."""
    if red == RED_SUM:
        return total
    return total / denom if denom != 0.0 else 0.0


def reduce_total(str reduction, double total, double denominator):
    """The reduced loss of ``reduction`` (other than "none") from its weighted ``total``: the
    total for "sum", else ``total / denominator``, and 0.0 for a zero denominator (a mean over
    nothing, Keras' ``divide_no_nan``).  What ``fastxent._reduction.reduce_total`` exposes."""
    return _reduced(REDUCTIONS.index(reduction), total, denominator)


# ------------------------------------------------------------------------------------------
# Element types
# ------------------------------------------------------------------------------------------

cdef extern from "numpy/arrayobject.h":
    enum: NPY_USERDEF   # the first number NumPy gives a dtype registered at run time

# NumPy's number of ml_dtypes.bfloat16 (a dtype registered at run time), once an array of it
# has been seen; fastxent never imports ml_dtypes itself
cdef int _bfloat16_num = -1


cdef int kernel_dtype(cnp.ndarray a) except? -2:
    """The kernels' code of a's dtype (FX_FLOAT32 ...), or -1 for a dtype they do not read."""
    global _bfloat16_num
    cdef int typenum = cnp.PyArray_TYPE(a)
    if typenum == cnp.NPY_FLOAT32:
        return FX_FLOAT32
    if typenum == cnp.NPY_FLOAT64:
        return FX_FLOAT64
    if typenum == cnp.NPY_FLOAT16:
        return FX_FLOAT16
    if typenum == _bfloat16_num:
        return FX_BFLOAT16
    if typenum >= NPY_USERDEF and _bfloat16_num < 0 and is_bfloat16(a.dtype):
        _bfloat16_num = typenum
        return FX_BFLOAT16
    return -1


cdef inline size_t itemsize_of(int typenum):
    return 8 if typenum == cnp.NPY_FLOAT64 else (4 if typenum == cnp.NPY_FLOAT32 else 2)


# ------------------------------------------------------------------------------------------
# Kernels on laid-out rows
# ------------------------------------------------------------------------------------------

cdef inline void *data_or_null(object a):
    return NULL if a is None else cnp.PyArray_DATA(<cnp.ndarray>a)


cdef inline int code_or_none(object a) except? -2:
    return -1 if a is None else kernel_dtype(<cnp.ndarray>a)


cdef int64_t run_job(fx_job *J, bint softmax, bint release) except? -2:
    cdef int64_t ret
    if release:
        with nogil:
            ret = fx_softmax(J) if softmax else fx_sigmoid(J)
    else:
        ret = fx_softmax(J) if softmax else fx_sigmoid(J)
    if ret == FX_NO_MEMORY:
        raise MemoryError("fastxent: could not allocate the kernel's scratch buffers")
    return ret


cdef void fill_job(fx_job *J, int code, int target_code, bint from_logits, int n_threads,
                   int64_t n_rows, int64_t n_cols, const void *x, void *grad, void *hess,
                   const void *target, const int64_t *labels, const double *gscale,
                   double *loss, double *lse, double keep, double spread, double zloss,
                   double eps, double gs0, object class_weight, object pos_weight,
                   object ignore_class, int row_fn=0, double row_a=0.0, double row_b=0.0,
                   double row_c=0.0):
    """Every field of a kernel call, named (the one place a job is filled in).

    ``code`` / ``target_code``: the kernels' codes of x's and the target's dtypes."""
    J.dtype = code
    J.target_dtype = target_code
    J.from_logits = from_logits
    J.n_threads = n_threads
    J.n_rows = n_rows
    J.n_cols = n_cols
    J.x = x
    J.grad = grad
    J.hess = hess
    J.target = target
    J.labels = labels
    J.gscale = gscale
    J.loss = loss
    J.lse = lse
    J.block_sums = NULL
    J.sum_w = NULL
    J.P.keep = keep
    J.P.spread = spread
    J.P.zloss = zloss
    # Keras' clip [eps, 1 - eps] of probabilities: 1 - eps computed in Python, then both bounds
    # cast to the data's dtype (float32: 1 - 1e-7 rounds to 1 - 2**-23); low-precision data is
    # computed in float32, and clipped as float32 data is
    if code != FX_FLOAT64:
        J.P.eps = fx_round_float(eps)
        J.P.eps_hi = fx_round_float(1.0 - eps)
    else:
        J.P.eps = eps
        J.P.eps_hi = 1.0 - eps
    J.P.gs0 = gs0
    J.P.cw = opt_ptr(class_weight)
    J.P.pw = opt_ptr(pos_weight)
    J.P.has_ignore = ignore_class is not None
    J.P.ignore = ignore_class if ignore_class is not None else 0
    J.P.row_fn = row_fn
    J.P.row_a = row_a
    J.P.row_b = row_b
    J.P.row_c = row_c
    J.P.add_xlogx = 0


cdef int sum_blocks_into(fx_job *J, object loss, object block_sums, object sum_w) except -1:
    """Where the job's losses go: the per-row ``loss`` array (float64, one per row), or, with
    ``block_sums`` (float64, ``n_blocks(rows, row length)`` entries; ``loss`` None), each fixed
    block's sum of ``sum_w`` x loss (``sum_w`` None: 1), computed as the block's rows are
    (no per-row array is written)."""
    if block_sums is None:
        if loss is None:
            raise ValueError("a kernel call needs loss or block_sums")
        return 0
    if cnp.PyArray_SIZE(<cnp.ndarray>block_sums) != fx_n_blocks(
            J.n_rows, fx_rows_per_block(J.n_cols)):
        raise ValueError("block_sums needs one entry per fixed block of rows (n_blocks)")
    J.block_sums = <double *>cnp.PyArray_DATA(<cnp.ndarray>block_sums)
    J.sum_w = opt_ptr(sum_w)
    return 0


ROW_FUNCTIONS = {"xent": 0, "focal": 1, "gce": 2}


def softmax(*, cnp.ndarray x, grad, hess, target, labels, double gs0, gscale,
            loss, lse, bint from_logits, double keep, double spread,
            double zloss, double eps, class_weight, ignore_class, int n_threads,
            int row_fn=0, double row_a=0.0, double row_b=0.0, block_sums=None, sum_w=None,
            bint add_xlogx=False):
    """Per-row softmax cross-entropy of the (rows, classes) buffer ``x``.

    Exactly one of ``labels`` (int64, one per row) and ``target`` (x's shape) is given.  Row
    r's gradient (and Hessian diagonal) is scaled by ``gs0 * gscale[r]``; ``grad``, ``hess``,
    ``gscale`` and ``lse`` may be None.  The losses go into ``loss`` or, summed by blocks,
    into ``block_sums`` (see ``sum_blocks_into``).  Returns the number of labels outside
    [0, classes) that were not ``ignore_class``.

    ``add_xlogx`` (soft targets from logits, float32 / float64): each row's loss plus
    ``sum_k t_k log t_k`` (0 log 0 = 0; a negative or NaN target gives NaN), the KL
    divergence.

    ``row_fn`` (``ROW_FUNCTIONS``; from logits with labels, no smoothing, class weights,
    z-loss or Hessian, rows shorter than ``SPLIT_MIN``): the gradient of a per-row loss
    ``h(log p_y)`` (focal: ``-row_a (1 - p)**row_b log p``; generalized cross-entropy:
    ``(1 - p**row_b) / row_b``), i.e. the cross-entropy gradient times ``-dh/dlog p``; the
    loss written is still ``-log p_y``.
    """
    cdef fx_job J
    fill_job(&J, kernel_dtype(x), code_or_none(target), from_logits, n_threads,
             cnp.PyArray_DIM(x, 0),
             cnp.PyArray_DIM(x, 1), cnp.PyArray_DATA(x), data_or_null(grad),
             data_or_null(hess), data_or_null(target), <const int64_t *>data_or_null(labels),
             opt_ptr(gscale), <double *>data_or_null(loss), <double *>data_or_null(lse),
             keep, spread, zloss, eps, gs0, class_weight, None, ignore_class, row_fn, row_a,
             row_b)
    sum_blocks_into(&J, loss, block_sums, sum_w)
    if add_xlogx and J.dtype != FX_FLOAT32 and J.dtype != FX_FLOAT64:
        raise TypeError(f"add_xlogx reads float32 or float64 data, got {x.dtype}")
    J.P.add_xlogx = add_xlogx
    return run_job(&J, True, J.n_rows * J.n_cols >= NOGIL_ELEMENTS)


def sigmoid(*, cnp.ndarray x, cnp.ndarray target, grad, hess, double gs0, gscale,
            loss, bint from_logits, double keep, double spread, double eps,
            pos_weight, int n_threads, block_sums=None, sum_w=None):
    """Mean over each row of the elementwise binary cross-entropy; gradient (and, from
    logits, the Hessian diagonal) scaled by ``gs0 * gscale[row] / row length``.  The losses
    go into ``loss`` or, summed by blocks, into ``block_sums`` (see ``sum_blocks_into``)."""
    cdef fx_job J
    fill_job(&J, kernel_dtype(x), kernel_dtype(target), from_logits, n_threads,
             cnp.PyArray_DIM(x, 0),
             cnp.PyArray_DIM(x, 1), cnp.PyArray_DATA(x), data_or_null(grad),
             data_or_null(hess), cnp.PyArray_DATA(target), NULL, opt_ptr(gscale),
             <double *>data_or_null(loss), NULL, keep, spread, 0.0, eps, gs0, None,
             pos_weight, None)
    sum_blocks_into(&J, loss, block_sums, sum_w)
    run_job(&J, False, J.n_rows * J.n_cols >= NOGIL_ELEMENTS)


cdef int float_code(cnp.ndarray a) except -2:
    """The kernel code of a float32 / float64 buffer (the kernels that read only these)."""
    cdef int code = kernel_dtype(a)
    if code != FX_FLOAT32 and code != FX_FLOAT64:
        raise TypeError(f"this kernel reads float32 or float64 data, got {a.dtype}")
    return code


def binary_focal(*, cnp.ndarray x, cnp.ndarray target, grad, hess, double gs0, gscale,
                 loss, double keep, double spread, double gamma, double a1, double a0,
                 int n_threads, block_sums=None, sum_w=None):
    """Binary focal cross-entropy from logits, each row's mean into ``loss`` (float64) or,
    summed by blocks, into ``block_sums`` (see ``sum_blocks_into``); the gradient and Hessian
    diagonal (None: not wanted) scaled by ``gs0 * gscale[row] / n``.  ``a1`` / ``a0`` weigh
    positives / negatives (1 and 1 without class balancing)."""
    cdef fx_job J
    fill_job(&J, float_code(x), float_code(target), True, n_threads, cnp.PyArray_DIM(x, 0),
             cnp.PyArray_DIM(x, 1), cnp.PyArray_DATA(x), data_or_null(grad),
             data_or_null(hess), cnp.PyArray_DATA(target), NULL, opt_ptr(gscale),
             <double *>data_or_null(loss), NULL, keep, spread, 0.0, 1e-7, gs0, None,
             None, None, 0, a1, gamma, a0)
    sum_blocks_into(&J, loss, block_sums, sum_w)
    if J.n_rows * J.n_cols >= NOGIL_ELEMENTS:
        with nogil:
            fx_binary_focal(&J)
    else:
        fx_binary_focal(&J)


# ------------------------------------------------------------------------------------------
# The fast path
# ------------------------------------------------------------------------------------------

cdef inline bint plain_array(object a, int typenum):
    """a is exactly an ndarray of ``typenum``, C-contiguous and aligned."""
    if type(a) is not np.ndarray:
        return False
    cdef cnp.ndarray arr = <cnp.ndarray>a
    return (cnp.PyArray_TYPE(arr) == typenum and cnp.PyArray_IS_C_CONTIGUOUS(arr)
            and cnp.PyArray_ISALIGNED(arr))


cdef inline bint same_dims(cnp.ndarray a, cnp.ndarray b, int nd):
    cdef int i
    for i in range(nd):
        if cnp.PyArray_DIM(a, i) != cnp.PyArray_DIM(b, i):
            return False
    return True


cdef inline bint weight_vector(object w, int64_t length):
    return w is None or (type(w) is np.ndarray and cnp.PyArray_NDIM(<cnp.ndarray>w) == 1
                         and cnp.PyArray_DIM(<cnp.ndarray>w, 0) == length)


cdef int resolve_threads(object n_threads) except -1:
    if n_threads is None:
        return max(1, fx_omp_max_threads())
    if type(n_threads) is int and n_threads == 1:
        return 1
    # -1 and explicit counts: the Python rules (threadpool limits; a serial build warns)
    from fastxent._config import resolve_n_threads
    return resolve_n_threads(n_threads)


cdef inline bint _disjoint(cnp.ndarray a, object b):
    """The bytes of contiguous ``a`` and of ``b`` (None, or a contiguous ndarray) do not meet."""
    if b is None:
        return True
    cdef cnp.ndarray other = <cnp.ndarray>b
    cdef char *a0 = <char *>cnp.PyArray_DATA(a)
    cdef char *b0 = <char *>cnp.PyArray_DATA(other)
    return (a0 + cnp.PyArray_NBYTES(a) <= b0 or b0 + cnp.PyArray_NBYTES(other) <= a0
            or cnp.PyArray_NBYTES(a) == 0 or cnp.PyArray_NBYTES(other) == 0)


def fast_call(Options o, y_true, y_pred, sample_weight, bint want_grad, grad_out=None,
              bint inplace=False):
    """The reduced loss (and gradient) of a common call, or None for the general path.

    Common: y_pred an ndarray of float32/float64/float16/bfloat16, C-contiguous and aligned,
    class axis last; y_true int64 labels of y_pred's shape less the class axis (sparse), or an
    array of y_pred's dtype (or float32 beside float16/bfloat16) and shape (categorical,
    binary; binary targets of shape (N,) beside y_pred (N, 1) too, as Keras' rank rule reads
    them); sample_weight None or, for 2-d y_pred,
    a float64 vector with one weight per row; class / positive weights None or one per
    class.  A bad label also returns None: the general path raises the error.

    The gradient goes into a new array, into ``grad_out`` (an ndarray of y_pred's shape and
    dtype, C-contiguous, aligned, writeable, sharing no memory with the inputs) or, with
    ``inplace``, over a writeable y_pred that shares no memory with y_true / sample_weight;
    any other buffer takes the general path, whose checks raise the error.
    """
    if (grad_out is not None or inplace) and not want_grad:
        return None
    if grad_out is not None and inplace:
        return None
    if type(y_pred) is not np.ndarray:
        return None
    cdef cnp.ndarray x = <cnp.ndarray>y_pred
    cdef int typenum = cnp.PyArray_TYPE(x)
    cdef int code = kernel_dtype(x)
    if code < 0:
        return None
    cdef bint lowp = code == FX_FLOAT16 or code == FX_BFLOAT16
    if not (cnp.PyArray_IS_C_CONTIGUOUS(x) and cnp.PyArray_ISALIGNED(x)):
        return None
    cdef int nd = cnp.PyArray_NDIM(x)
    if nd < 1 or (o.axis != -1 and o.axis != nd - 1):
        return None
    cdef int64_t C = cnp.PyArray_DIM(x, nd - 1)
    cdef int64_t size = cnp.PyArray_SIZE(x)
    if C == 0 or size == 0:
        return None
    cdef int64_t N = size // C
    cdef bint softmax = o._family == FAMILY_SOFTMAX
    if softmax and not o.sparse and C == 1:
        return None   # Keras warns about a single class: the general path does too
    cdef cnp.ndarray t
    if softmax and o.sparse:
        if not plain_array(y_true, cnp.NPY_INT64):
            return None
        t = <cnp.ndarray>y_true
        if cnp.PyArray_NDIM(t) != nd - 1 or not same_dims(t, x, nd - 1):
            return None
    else:
        if not (plain_array(y_true, typenum) or (lowp and plain_array(y_true, cnp.NPY_FLOAT32))):
            return None
        t = <cnp.ndarray>y_true
        if not ((cnp.PyArray_NDIM(t) == nd and same_dims(t, x, nd))
                # Keras' rank rule: binary targets (N,) beside y_pred (N, 1) are (N, 1)
                or (not softmax and nd == 2 and C == 1 and cnp.PyArray_NDIM(t) == 1
                    and cnp.PyArray_DIM(t, 0) == N)):
            return None
    if sample_weight is not None and not (
            nd == 2 and plain_array(sample_weight, cnp.NPY_FLOAT64)
            and weight_vector(sample_weight, N)):
        return None
    if not weight_vector(o.class_weight, C) or not weight_vector(o.pos_weight, C):
        return None
    if softmax and not o.sparse and o.class_weight is not None and o._red == RED_WEIGHTED:
        return None   # the class-weighted mean of soft targets: planned by the general path
    cdef cnp.ndarray grad = None
    if grad_out is not None:
        if not plain_array(grad_out, typenum):
            return None
        grad = <cnp.ndarray>grad_out
        if not (cnp.PyArray_NDIM(grad) == nd and same_dims(grad, x, nd)
                and cnp.PyArray_ISWRITEABLE(grad) and _disjoint(grad, x)
                and _disjoint(grad, t) and _disjoint(grad, sample_weight)):
            return None
    elif inplace:
        if not (cnp.PyArray_ISWRITEABLE(x) and _disjoint(x, t) and _disjoint(x, sample_weight)):
            return None
        grad = x
    cdef int n_threads = resolve_threads(o.n_threads)

    if want_grad and grad is None:
        grad = _empty(nd, cnp.PyArray_DIMS(x), typenum)
    # per-row scratch, as needed: the losses (reduction "none" only: any other reduction
    # takes the kernel's sums of its fixed blocks), the effective weights and the class
    # weights of a weighted mean.  An ndarray, so that a large one gets NumPy's huge pages (or
    # a reused block of the cache) instead of a page fault per 4 KiB.
    cdef const int64_t *labels = NULL
    if softmax and o.sparse:
        labels = <const int64_t *>cnp.PyArray_DATA(t)
    cdef bint use_weff = sample_weight is not None or (labels != NULL
                                                      and o.ignore_class is not None)
    cdef bint per_row = o._red == RED_NONE
    cdef bint use_cls = (o._red == RED_WEIGHTED and labels != NULL
                         and o.class_weight is not None)
    cdef int64_t nblocks = fx_n_blocks(N, fx_rows_per_block(C))
    cdef cnp.npy_intp n_scratch = N * (per_row + use_weff + use_cls) + (0 if per_row
                                                                        else nblocks)
    cdef cnp.ndarray scratch_arr = _empty(1, &n_scratch, cnp.NPY_FLOAT64)
    cdef double *scratch = <double *>cnp.PyArray_DATA(scratch_arr)
    cdef double *loss = scratch if per_row else NULL
    cdef double *sums = NULL if per_row else scratch
    scratch += N if per_row else nblocks
    cdef double *weff = NULL
    if use_weff:
        weff = scratch
        scratch += N
    cdef double *cls = scratch if use_cls else NULL
    cdef fx_job J
    cdef double denom
    cdef int64_t bad
    denom = plan_rows(o._red, N, opt_ptr(sample_weight), labels, o.ignore_class is not None,
                      o.ignore_class or 0, opt_ptr(o.class_weight), C, NULL, weff, cls)
    fill_job(&J, code, -1 if labels != NULL else kernel_dtype(t), o.from_logits, n_threads, N,
             C, cnp.PyArray_DATA(x),
             NULL if grad is None else cnp.PyArray_DATA(grad), NULL,
             NULL if labels != NULL else cnp.PyArray_DATA(t), labels, weff, loss, NULL,
             o._keep, o.label_smoothing / (C if softmax else 2.0), o.z_loss, o.epsilon,
             grad_scale(o._red, denom), o.class_weight, o.pos_weight, o.ignore_class)
    J.block_sums = sums
    J.sum_w = weff
    bad = run_job(&J, softmax, size >= NOGIL_ELEMENTS)
    if bad:
        return None
    if grad is not None and o._red >= RED_BATCH and denom == 0.0:
        # a mean over nothing is 0.0, and so is its gradient (0 * NaN would be NaN)
        memset(cnp.PyArray_DATA(grad), 0, cnp.PyArray_NBYTES(grad))
    if per_row:
        value = _weighted_rows(loss, weff, N, nd - 1, cnp.PyArray_DIMS(x),
                               cnp.NPY_FLOAT32 if lowp else typenum)
    else:
        value = _reduced(o._red, fx_sum_blocks(sums, nblocks), denom)
    return (value, grad) if want_grad else value


cdef object _weighted_rows(const double *loss, const double *weff, int64_t n, int nd,
                           cnp.npy_intp *dims, int typenum):
    """Reduction "none": loss x weight per row, in the result's dtype and batch shape."""
    cdef int64_t i
    cdef cnp.ndarray out = cnp.PyArray_EMPTY(nd, dims, typenum, 0)
    cdef float *of
    cdef double *od
    if typenum == cnp.NPY_FLOAT32:
        of = <float *>cnp.PyArray_DATA(out)
        for i in range(n):
            of[i] = <float>(loss[i] * (1.0 if weff == NULL else weff[i]))
    else:
        od = <double *>cnp.PyArray_DATA(out)
        for i in range(n):
            od[i] = loss[i] * (1.0 if weff == NULL else weff[i])
    return out


# ------------------------------------------------------------------------------------------
# Output buffers: a NumPy memory handler that reuses large blocks (fx_buffer_cache.h)
# ------------------------------------------------------------------------------------------

cdef extern from "numpy/arrayobject.h":
    object PyDataMem_SetHandler(object handler)

cdef extern from "fx_buffer_cache.h":
    object fx_cache_capsule()
    void fx_cache_configure(size_t limit)
    size_t fx_cache_held
    size_t fx_cache_limit
    size_t fx_cache_min
    size_t fx_cache_hits
    size_t fx_cache_misses
    const int FX_CACHE_SLOTS

_HANDLER = fx_cache_capsule()


cdef cnp.ndarray _empty(int nd, cnp.npy_intp *dims, int typenum):
    """An uninitialized C-order array; blocks of the cache's size come from the cache."""
    cdef size_t nbytes = itemsize_of(typenum)
    cdef int i
    for i in range(nd):
        nbytes *= <size_t>dims[i]
    if fx_cache_limit == 0 or nbytes < fx_cache_min:
        return cnp.PyArray_EMPTY(nd, dims, typenum, 0)
    old = PyDataMem_SetHandler(_HANDLER)
    try:
        return cnp.PyArray_EMPTY(nd, dims, typenum, 0)
    finally:
        PyDataMem_SetHandler(old)


def empty_like(cnp.ndarray a):
    """``np.empty_like(a)`` (C order), its memory from the caching handler when large."""
    return _empty(cnp.PyArray_NDIM(a), cnp.PyArray_DIMS(a), cnp.PyArray_TYPE(a))


def configure_cache(size_t limit_bytes):
    """Free the cached blocks and hold at most ``limit_bytes`` from now on (0: no cache)."""
    fx_cache_configure(limit_bytes)


def cache_info():
    return {
        "limit_bytes": fx_cache_limit,
        "held_bytes": fx_cache_held,
        "min_block_bytes": fx_cache_min,
        "slots": FX_CACHE_SLOTS,
        "hits": fx_cache_hits,
        "misses": fx_cache_misses,
    }


# ------------------------------------------------------------------------------------------
# Instruction set, OpenMP and build facts
# ------------------------------------------------------------------------------------------

def set_isa(int level):
    """Select the instruction-set path (0 baseline, 1 AVX2, 2 AVX-512); -1 if unsupported."""
    return fx_set_isa(level)


def get_isa():
    return fx_get_isa()


def cpu_isa():
    """Best instruction-set level this CPU supports and this build compiled as such."""
    return fx_cpu_isa_level()


def _set_team_elements(int64_t n):
    """For the tests: at most one thread per ``n`` elements from now on (``n <= 0``: the
    default, ``TEAM_ELEMENTS``), so that small inputs run on teams; returns the value
    replaced.  It changes the team size only, and no result depends on the team size."""
    return fx_set_team_elements(n)


def _team_stats():
    """For the tests: ``(team, busy)``, the largest team the kernels ran a loop on and the
    most threads of one such loop that computed an item, since the last call (both 1 when
    every loop ran on the calling thread); both start again from 1."""
    cdef int stats[2]
    fx_team_stats_take(stats)
    return stats[0], stats[1]


def openmp_enabled():
    return bool(FX_OPENMP_ENABLED)


def max_threads():
    """OpenMP's default team size (honours OMP_NUM_THREADS); 1 in a serial build."""
    return fx_omp_max_threads()


def num_procs():
    """Processors available to this process (OpenMP's count); 1 in a serial build."""
    return fx_omp_num_procs()


cdef extern from "fastxent_build.h":
    const char *FASTXENT_BUILD_CFLAGS
    const char *FASTXENT_BUILD_LDFLAGS
    const char *FASTXENT_BUILD_COMPILER
    const char *FASTXENT_BUILD_OPENMP_NOTE
    const char *FASTXENT_BUILD_ISA_NOTE
    const int FASTXENT_BUILD_ISA_MAX

cdef extern from "xent_isa.h":
    const char *FX_ISA_SPELLING


def build_note():
    """Why the build is (or is not) multi-threaded: the OpenMP probe's verdict at build time."""
    return FASTXENT_BUILD_OPENMP_NOTE.decode()


def isa_build():
    """The instruction-set variants as built: the highest level whose code the build-time probe
    found to use its registers (0 baseline, 1 AVX2 / ymm, 2 AVX-512 / zmm), the probe's note,
    and the attribute spelling compiled (buildtools/isa_probe.py, xent_isa.h)."""
    return {"max_level": FASTXENT_BUILD_ISA_MAX, "note": FASTXENT_BUILD_ISA_NOTE.decode(),
            "spelling": FX_ISA_SPELLING.decode()}


def build_flags():
    return {
        "compiler": FASTXENT_BUILD_COMPILER.decode(),
        "cflags": FASTXENT_BUILD_CFLAGS.decode(),
        "ldflags": FASTXENT_BUILD_LDFLAGS.decode(),
    }


# ------------------------------------------------------------------------------------------
# Elementary functions, for tests/test_kernel_paths.py
# ------------------------------------------------------------------------------------------

def elementary(str name, x, double shift=0.0):
    """The kernels' elementary functions on an array: "exp" (float64, x <= 0), "log1p"
    (float64, x in [0, 1]), "log" (float64, x > 0), "expf" (float32 exp(x - shift),
    x <= shift), "log1pf" (float32, x in [0, 1]) and "recipf" (float32 1 / (1 + x), x in
    [0, 1], a by-product of log1pf)."""
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
    if name not in ("exp", "log1p", "log"):
        raise ValueError(f"unknown function {name!r}")
    a = np.ascontiguousarray(x, dtype=np.float64)
    out = np.empty_like(a)
    xd = a
    od = out
    for i in range(xd.shape[0]):
        if name == "exp":
            od[i] = fx_exp_nonpos(xd[i])
        elif name == "log1p":
            od[i] = fx_log1p_unit(xd[i])
        else:
            od[i] = fx_log_pos(xd[i])
    return out


def convert(str name, values, bint rows=False):
    """The kernels' conversions, for tests/test_lowp.py: "f16_to_f32" and "bf16_to_f32" widen
    uint16 bit patterns to float32; "f32_to_f16" and "f32_to_bf16" narrow float32 values to
    uint16 bit patterns (rounded to nearest even).  Element by element (xent_lowp.h), or with
    ``rows=True`` as the 16-bit row kernels of the selected instruction-set path convert a
    row (vectors, then an element tail)."""
    if name not in ("f16_to_f32", "bf16_to_f32", "f32_to_f16", "f32_to_bf16"):
        raise ValueError(f"unknown conversion {name!r}")
    cdef bint widen = name.endswith("_to_f32")
    src = np.ascontiguousarray(values, dtype=np.uint16 if widen else np.float32)
    out = np.empty(src.shape[0], dtype=np.float32 if widen else np.uint16)
    cdef unsigned short[::1] h = src if widen else out
    cdef float[::1] f = out if widen else src
    cdef Py_ssize_t i
    if rows:
        if h.shape[0]:
            fx_lowp_convert(FX_BFLOAT16 if "bf16" in name else FX_FLOAT16, widen,
                            &h[0] if widen else &f[0], &f[0] if widen else &h[0], h.shape[0])
        return out
    for i in range(h.shape[0]):
        if name == "f16_to_f32":
            f[i] = fx_f16_to_f32(h[i])
        elif name == "bf16_to_f32":
            f[i] = fx_bf16_to_f32(h[i])
        elif name == "f32_to_f16":
            h[i] = fx_f32_to_f16(f[i])
        else:
            h[i] = fx_f32_to_bf16(f[i])
    return out
