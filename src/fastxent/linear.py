"""Fused linear + cross-entropy for language-model heads, and perplexity.

A language model's last layer maps hidden states ``h`` (N tokens x d) to logits
``h @ W.T + b`` over a vocabulary of V entries, and the loss is the softmax cross-entropy of
those logits.  With N = 8192 tokens and V = 50257, the logits and their gradient are
8192 x 50257 floats (1.6 GB in float32 each): the largest arrays of the whole training step.
:func:`linear_cross_entropy_and_grad` returns the loss and the gradients with respect to
``h``, ``W`` and ``b`` without ever holding more than one block of logits.

How it works
------------
The rows (tokens) are cut into blocks of ``R`` rows.  For each block:

* **whole vocabulary per block** (the default whenever a block of at least 256 rows, or all
  of them, fits the budget): ``X = h_R @ W.T + b`` (one BLAS product through NumPy), the
  fused softmax kernel of :class:`~fastxent.SparseCategoricalCrossentropy` overwrites ``X``
  with d(loss)/dX in one pass, and two BLAS products give ``d_h[R] = G @ W`` and
  ``d_W += G.T @ h_R`` (the latter in vocabulary slices, so its scratch stays small).  Three
  matrix products in all, as many as the unfused pipeline.
* **vocabulary blocks** (when a block of rows cannot hold the whole vocabulary, or when
  ``chunk_size=(rows, vocab)`` asks for it): pass 1 computes each ``R x Vc`` block of logits,
  its per-row log-sum-exp (by the same kernel), and merges them with the online rule
  ``(m, s) <- (max(m, l), s exp(m - m') + exp(l - m'))``; pass 2 recomputes each block,
  turns it into its slice of the gradient ``gs_i ((1 + 2 z lse_i) exp(x - lse_i) - t')``
  and accumulates ``d_h[R] += G @ W_c``, ``d_W[c] += G.T @ h_R``.  Four matrix products in
  all (the logits are computed twice), like Cut Cross-Entropy.

Memory (beyond the inputs and the outputs ``d_h`` (N x d), ``d_W`` (V x d), ``d_b`` (V))::

    R * Vc * s              the block of logits, overwritten by its gradient (s = itemsize)
  + min(Vc, B) * d * s      scratch of the d_W update, B = max(1, 4 MiB // (d * s))
  + R * d * s               scratch of the d_h update (vocabulary blocks only)
  + 8 * (Vc + 6 N + R * ceil(V / Vc)) bytes    float64 per-row / per-class vectors

plus one copy of ``hidden`` (N x d) / ``weight`` when they are not C-contiguous.  By default
``R * Vc * s <= 64 MiB`` (:data:`DEFAULT_BLOCK_BYTES`), so for N = 8192, V = 50257, d = 768
in float32 a call needs about 68 MB besides its inputs and outputs, where the unfused
pipeline holds the 1.65 GB logits and a 1.65 GB gradient.  The loss alone
(:func:`linear_cross_entropy`) needs only the block and the float64 vectors.

float16 and bfloat16 (``ml_dtypes.bfloat16``) inputs are computed in float32: ``hidden``,
``weight`` and ``bias`` are copied to float32 once (that copy replaces the one above), the
float32 algorithm runs on the copies (s = 4 in the formula) and its gradients are rounded
once to the inputs' dtype, to nearest even.  Besides the formula, such a call holds::

  + 4 * (N + V) * d + 4 * V bytes    the float32 copy of hidden, weight and bias
  + 4 * (N + V) * d bytes            the float32 d_h and d_W, before they are rounded

(the loss alone: the copy only).  For N = 8192, V = 50257, d = 768 that is 180 MB, and
360 MB with the gradients; still never the N x V logits.
"""

from __future__ import annotations

import numbers

import numpy as np

from fastxent import _dispatch, _reduction
from fastxent._config import resolve_n_threads
from fastxent._errors import LabelRangeError
from fastxent._interop import asarray
from fastxent._options import softmax_options
from fastxent._validation import (
    FLOAT_DTYPES,
    as_float_array,
    as_kernel_array,
    broadcast_sample_weight,
    check_fraction,
    check_nonneg_real,
    check_reduction,
    is_low_precision,
    result_dtype,
)

__all__ = ["linear_cross_entropy", "linear_cross_entropy_and_grad", "perplexity"]

#: Default bound on the bytes of one block of logits (rows x vocabulary entries x itemsize).
DEFAULT_BLOCK_BYTES = 64 * 2**20
#: Smallest number of rows per block worth a whole-vocabulary pass (BLAS efficiency).
_MIN_FULL_VOCAB_ROWS = 256
#: Rows per block when the vocabulary has to be split.
_SPLIT_VOCAB_ROWS = 1024
#: Bound on the scratch of the d_weight update (a slice of the vocabulary x d).
_DW_SCRATCH_BYTES = 4 * 2**20
#: Kernel options of the vocabulary-block passes: plain labels, no smoothing or z-loss (the
#: block results are combined here), and label -1 marking rows the kernel must zero.
_PLAIN = softmax_options(sparse=True, from_logits=True)
_PLAIN_MASKED = softmax_options(sparse=True, from_logits=True, ignore_class=-1)


def _check_ignore_class(ignore_class):
    if ignore_class is None:
        return None
    if isinstance(ignore_class, bool | np.bool_) or not isinstance(ignore_class, numbers.Integral):
        raise TypeError(f"ignore_class must be None or an int, got {ignore_class!r}")
    value = int(ignore_class)
    if not -(2**63) <= value < 2**63:
        raise ValueError(f"ignore_class must fit in int64, got {value}")
    return value


def _positive_int(value, name):
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a positive int, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be a positive int, got {value}")
    return int(value)


def _blocks(chunk_size, n_rows: int, n_vocab: int, itemsize: int) -> tuple[int, int]:
    """Rows and vocabulary entries per block of logits."""
    if chunk_size is None:
        budget = max(1, DEFAULT_BLOCK_BYTES // itemsize)
        rows = budget // n_vocab
        if rows >= min(n_rows, _MIN_FULL_VOCAB_ROWS):
            rows, vocab = max(1, min(n_rows, rows)), n_vocab
        else:
            rows = max(1, min(n_rows, _SPLIT_VOCAB_ROWS))
            vocab = max(1, min(n_vocab, budget // rows))
        n_blocks = -(-n_rows // rows) if n_rows else 1
        rows = max(1, -(-n_rows // n_blocks))  # balance the blocks
        return rows, vocab
    if isinstance(chunk_size, tuple | list):
        if len(chunk_size) != 2:
            raise ValueError(
                f"chunk_size must be an int (rows) or a pair (rows, vocab), got {chunk_size!r}"
            )
        rows = _positive_int(chunk_size[0], "chunk_size[0] (rows per block)")
        vocab = _positive_int(chunk_size[1], "chunk_size[1] (vocabulary entries per block)")
        return min(rows, max(n_rows, 1)), min(vocab, n_vocab)
    rows = _positive_int(chunk_size, "chunk_size")
    return min(rows, max(n_rows, 1)), n_vocab


def _prepare(hidden, weight, labels, bias, sample_weight, ignore_class, label_smoothing,
             z_loss, reduction, chunk_size, n_threads):
    """Validate and convert the arguments of the linear cross-entropy functions."""
    reduction = check_reduction(reduction)
    smoothing = check_fraction(label_smoothing, "label_smoothing")
    z = check_nonneg_real(z_loss, "z_loss")
    ignore_class = _check_ignore_class(ignore_class)
    nt = resolve_n_threads(n_threads)

    h = as_float_array(hidden, "hidden")
    if h.ndim < 1:
        raise ValueError("hidden must have at least one dimension (the hidden size), got a scalar")
    w = asarray(weight, "weight")
    if w.dtype not in FLOAT_DTYPES and not is_low_precision(w.dtype):
        raise TypeError(
            f"weight must have dtype float32, float64, float16 or bfloat16, got {w.dtype}; "
            f"convert it explicitly (e.g. weight.astype(hidden.dtype))"
        )
    if w.dtype != h.dtype:
        raise TypeError(
            f"weight has dtype {w.dtype} but hidden has dtype {h.dtype}; hidden, weight and "
            f"bias must have one dtype: cast one of them (e.g. weight.astype(hidden.dtype))"
        )
    if w.ndim != 2:
        raise ValueError(f"weight must be 2-D (vocabulary, hidden size), got shape {w.shape}")
    n_vocab, d = w.shape
    # float16 / bfloat16: computed in float32 on one float32 copy of hidden, weight and bias
    compute = result_dtype(h.dtype)
    if n_vocab == 0:
        raise ValueError(f"weight has shape {w.shape}: an empty vocabulary")
    if h.shape[-1] != d:
        raise ValueError(
            f"hidden has shape {h.shape} but weight has shape {w.shape}; the last axis of "
            f"hidden must equal weight.shape[1] = {d}"
        )
    b = None
    if bias is not None:
        b = asarray(bias, "bias")
        if b.dtype != h.dtype:
            raise TypeError(
                f"bias has dtype {b.dtype} but hidden has dtype {h.dtype}; hidden, weight and "
                f"bias must have one dtype: cast it (e.g. bias.astype(hidden.dtype))"
            )
        if b.shape != (n_vocab,):
            raise ValueError(
                f"bias has shape {b.shape}, expected ({n_vocab},) (weight.shape[0])"
            )
        b = as_kernel_array(b, dtype=compute)

    batch_shape = h.shape[:-1]
    y = asarray(labels, "labels")
    if y.dtype.kind not in "iu":
        raise TypeError(f"labels must have an integer dtype, got {y.dtype}")
    if y.shape != batch_shape:
        raise ValueError(
            f"labels has shape {y.shape} but hidden has shape {h.shape}; labels needs "
            f"hidden.shape[:-1] = {batch_shape}"
        )
    y_flat = y.reshape(-1)
    ok = (y_flat >= 0) & (y_flat < n_vocab)
    if ignore_class is not None:
        ok |= y_flat == ignore_class
    if not np.all(ok):
        i = int(np.argmin(ok))
        pos = tuple(int(p) for p in np.unravel_index(i, batch_shape)) if batch_shape else ()
        raise LabelRangeError(pos, y_flat[i].item(), n_vocab,
                              int(np.size(ok) - np.count_nonzero(ok)), argument="labels")
    lab = as_kernel_array(y_flat, dtype=np.int64)

    weights = broadcast_sample_weight(sample_weight, batch_shape)
    weights = None if weights is None else as_kernel_array(weights).reshape(-1)
    valid = (lab != ignore_class) if ignore_class is not None else None
    plan = _reduction.plan(reduction, lab.size, row_length=n_vocab, weights=weights,
                           labels=lab, ignore_class=ignore_class)
    opts = softmax_options(sparse=True, from_logits=True, label_smoothing=smoothing,
                           ignore_class=ignore_class, z_loss=z, reduction=reduction)

    h2 = as_kernel_array(h, dtype=compute).reshape(-1, d)
    w2 = as_kernel_array(w, dtype=compute)
    rows, vocab = _blocks(chunk_size, h2.shape[0], n_vocab, compute.itemsize)
    return dict(
        h=h, h2=h2, w2=w2, b=b, lab=lab, plan=plan, valid=valid, batch_shape=batch_shape,
        smoothing=smoothing, z=z, ignore_class=ignore_class, nt=nt, rows=rows, vocab=vocab,
        opts=opts, compute=compute,
    )


def _weight_update(d_weight, g, h_rows, scratch, v0: int) -> None:
    """d_weight[v0 : v0 + g.shape[1]] += g.T @ h_rows, one vocabulary slice at a time."""
    step = scratch.shape[0]
    width = g.shape[1]
    for c0 in range(0, width, step):
        c1 = min(width, c0 + step)
        part = scratch[: c1 - c0]
        np.matmul(g[:, c0:c1].T, h_rows, out=part)
        d_weight[v0 + c0 : v0 + c1] += part


def _run(p: dict, want_grad: bool):
    """Per-row float64 losses and (optionally) the three gradients."""
    h2, w2, b, lab, plan = p["h2"], p["w2"], p["b"], p["lab"], p["plan"]
    n_rows, d = h2.shape
    n_vocab = w2.shape[0]
    dtype = h2.dtype
    rows, vocab = p["rows"], p["vocab"]
    keep, spread, z = 1.0 - p["smoothing"], p["smoothing"] / n_vocab, p["z"]
    nt = p["nt"]

    loss64 = np.zeros(n_rows)
    d_hidden = np.zeros_like(h2) if want_grad else None
    d_weight = np.zeros_like(w2) if want_grad else None
    d_bias64 = np.zeros(n_vocab) if (want_grad and b is not None) else None
    if n_rows == 0:
        return loss64, d_hidden, d_weight, d_bias64

    block = np.empty(min(rows, n_rows) * vocab, dtype=dtype)
    dw_rows = max(1, min(vocab, _DW_SCRATCH_BYTES // max(1, d * dtype.itemsize)))
    dw_scratch = np.empty((dw_rows, d), dtype=dtype) if want_grad else None
    ones = np.ones(min(rows, n_rows), dtype=dtype) if d_bias64 is not None else None

    if vocab >= n_vocab:
        # Whole vocabulary per block: the fused kernel turns the logits into the gradient.
        for r0 in range(0, n_rows, rows):
            r1 = min(n_rows, r0 + rows)
            nr = r1 - r0
            x = block[: nr * n_vocab].reshape(nr, n_vocab)
            h_rows = h2[r0:r1]
            np.matmul(h_rows, w2.T, out=x)
            if b is not None:
                x += b
            rows_plan = _rows_plan(plan, r0, r1, want_grad)
            _dispatch.run_softmax(p["opts"], x, plan=rows_plan, loss=loss64[r0:r1],
                                  labels=lab[r0:r1], grad=x if want_grad else None,
                                  n_threads=nt)
            if want_grad:
                np.matmul(x, w2, out=d_hidden[r0:r1])
                _weight_update(d_weight, x, h_rows, dw_scratch, 0)
                if d_bias64 is not None:
                    d_bias64 += np.matmul(ones[:nr], x)
        return loss64, d_hidden, d_weight, d_bias64

    # Vocabulary blocks: online log-sum-exp (pass 1), then the gradient (pass 2).
    n_chunks = -(-n_vocab // vocab)
    max_rows = min(rows, n_rows)
    rows_idx = np.arange(max_rows)
    zeros_lab = np.zeros(max_rows, dtype=np.int64)
    scratch_loss = np.empty(max_rows)
    chunk_lse = np.empty((n_chunks, max_rows))  # log-sum-exp of each block, per row
    dh_scratch = np.empty((max_rows, d), dtype=dtype) if want_grad else None
    for r0 in range(0, n_rows, rows):
        r1 = min(n_rows, r0 + rows)
        nr = r1 - r0
        h_rows = h2[r0:r1]
        lab_rows = lab[r0:r1]
        m = np.full(nr, -np.inf)  # running shift
        s = np.zeros(nr)  # running sum of exp(x - m)
        x_label = np.zeros(nr)  # logit of the label
        x_sum = np.zeros(nr) if spread else None  # sum of the logits (label smoothing)

        def logits_block(v0, v1, nr=nr, h_rows=h_rows):
            x = block[: nr * (v1 - v0)].reshape(nr, v1 - v0)
            np.matmul(h_rows, w2[v0:v1].T, out=x)
            if b is not None:
                x += b[v0:v1]
            return x

        for j, v0 in enumerate(range(0, n_vocab, vocab)):
            v1 = min(n_vocab, v0 + vocab)
            x = logits_block(v0, v1)
            lse_c = chunk_lse[j, :nr]
            _dispatch.run_softmax(_PLAIN, x, plan=_NO_SCALE, loss=scratch_loss[:nr],
                                  labels=zeros_lab[:nr], lse=lse_c, n_threads=nt)
            m_new = np.maximum(m, lse_c)
            with np.errstate(invalid="ignore"):
                s = s * np.exp(m - m_new) + np.exp(lse_c - m_new)
            m = m_new
            inside = np.flatnonzero((lab_rows >= v0) & (lab_rows < v1))
            x_label[inside] = x[inside, lab_rows[inside] - v0]
            if x_sum is not None:
                x_sum += np.add.reduce(x, axis=1, dtype=np.float64)

        with np.errstate(invalid="ignore"):
            lse = m + np.log(s)
            loss_rows = np.log(s) + keep * (m - x_label)
            if x_sum is not None:
                loss_rows += spread * (n_vocab * m - x_sum)
            if z:
                loss_rows += z * lse * lse
        if p["valid"] is not None:
            loss_rows[~p["valid"][r0:r1]] = 0.0
        loss64[r0:r1] = loss_rows
        if not want_grad:
            continue

        # Pass 2.  The gradient of row i on block c is gs_i (coef_i p_ik - t'_ik) with
        # p = exp(x - lse) and coef = 1 + 2 z lse.  The kernel, run on the block with label
        # col_i and row scale a_i = gs_i coef_i exp(lse_c_i - lse_i), writes
        # a_i exp(x - lse_c) - a_i [k == col_i] = gs_i coef_i p_ik - a_i [k == col_i] in
        # float64 arithmetic; the entry at col_i is then rewritten from its saved logit, and
        # the smoothing term gs_i * spread subtracted.
        gs = np.full(nr, plan.gs0) if plan.weights is None else plan.gs0 * plan.weights[r0:r1]
        coef = gs * (1.0 + 2.0 * z * lse)
        smooth = (gs * spread).astype(dtype)[:, None] if spread else None
        idx = rows_idx[:nr]
        ignored = None if p["valid"] is None else ~p["valid"][r0:r1]
        for j, v0 in enumerate(range(0, n_vocab, vocab)):
            v1 = min(n_vocab, v0 + vocab)
            x = logits_block(v0, v1)
            inside = (lab_rows >= v0) & (lab_rows < v1)
            col = np.where(inside, lab_rows - v0, 0)
            x_col = x[idx, col].astype(np.float64)
            with np.errstate(invalid="ignore", over="ignore"):
                scale = coef * np.exp(chunk_lse[j, :nr] - lse)
                at_col = coef * np.exp(x_col - lse) - gs * keep * inside
            kernel_lab, kernel_opts = col, _PLAIN
            if ignored is not None:  # label -1: the kernel zeroes these rows, whatever x holds
                at_col[ignored] = 0.0
                kernel_lab, kernel_opts = np.where(ignored, -1, col), _PLAIN_MASKED
            _dispatch.run_softmax(
                kernel_opts, x, plan=_reduction.Plan("sum", 1.0, 1.0, scale),
                loss=scratch_loss[:nr], labels=kernel_lab, grad=x, n_threads=nt,
            )
            x[idx, col] = at_col
            if smooth is not None:
                x -= smooth
            if v0 == 0:
                np.matmul(x, w2[v0:v1], out=d_hidden[r0:r1])
            else:
                dh = dh_scratch[:nr]
                np.matmul(x, w2[v0:v1], out=dh)
                d_hidden[r0:r1] += dh
            _weight_update(d_weight, x, h_rows, dw_scratch, v0)
            if d_bias64 is not None:
                d_bias64[v0:v1] += np.matmul(ones[:nr], x)
    return loss64, d_hidden, d_weight, d_bias64


#: The plan of a pass that only wants per-row statistics (no gradient is written).
_NO_SCALE = _reduction.Plan("sum", 1.0, 0.0, None)


def _rows_plan(plan: _reduction.Plan, r0: int, r1: int, want_grad: bool) -> _reduction.Plan:
    """``plan`` restricted to rows r0:r1 (the gradient scale 0 when none is written)."""
    weights = None if plan.weights is None else plan.weights[r0:r1]
    return _reduction.Plan(plan.reduction, plan.denominator, plan.gs0 if want_grad else 0.0,
                           weights, plan.row_length)


def _reduce(loss64, p):
    """The reduced loss; per-token losses in hidden's dtype, float32 for float16 / bfloat16."""
    return _reduction.reduce(loss64, p["plan"], p["batch_shape"], p["compute"])


def linear_cross_entropy(
    hidden,
    weight,
    labels,
    bias=None,
    *,
    sample_weight=None,
    ignore_class: int | None = None,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    reduction: str = "sum_over_batch_size",
    chunk_size: int | tuple[int, int] | None = None,
    n_threads: int | None = None,
) -> float | np.ndarray:
    """Sparse softmax cross-entropy of ``hidden @ weight.T + bias``, without the logits.

    Equal to ``SparseCategoricalCrossentropy(from_logits=True, ...)(labels, hidden @ weight.T
    + bias)`` but never holds more than one block of the ``N x V`` logits in memory (see the
    module docstring for the algorithm and the memory formula).

    Parameters
    ----------
    hidden : ndarray of float32, float64, float16 or bfloat16, shape (..., d)
        Hidden states, e.g. (batch, seq, d); N = the product of the leading dimensions.
        float16 and bfloat16 (``ml_dtypes.bfloat16``) are computed in float32, on one
        float32 copy of ``hidden``, ``weight`` and ``bias`` (never of the logits).
    weight : ndarray, shape (V, d), dtype of ``hidden``
        Output projection (an ``nn.Linear(d, V)`` weight, or a tied embedding matrix).
    labels : array_like of integers, shape hidden.shape[:-1]
        Target token ids in ``[0, V)`` (or ``ignore_class``).
    bias : ndarray of shape (V,), dtype of ``hidden``, optional
    sample_weight : array_like, optional
        Per-token weights, broadcastable to ``labels.shape`` (lower-rank weights are aligned
        to the leading dimensions, as in the loss classes).
    ignore_class : int, optional
        Label of padding tokens (PyTorch's ``ignore_index``, e.g. -100): loss 0, zero
        gradient, not counted by ``"sum_over_batch_size"``.
    label_smoothing : float in [0, 1]
        The target of each token becomes ``(1 - label_smoothing) one_hot + label_smoothing / V``.
    z_loss : float >= 0
        Adds ``z_loss * lse**2`` per token (PaLM's z-loss), ``lse`` the log-sum-exp of the
        token's logits.
    reduction : {"sum_over_batch_size", "mean", "sum", "mean_with_sample_weight", "none"}
        As in :class:`~fastxent.SparseCategoricalCrossentropy`.  ``"none"`` returns the
        per-token (weighted) losses.
    chunk_size : int or (int, int), optional
        Rows (tokens) per block, with the whole vocabulary; or ``(rows, vocab)`` to split the
        vocabulary as well (two passes, merged with the online log-sum-exp rule).  None picks
        blocks of at most :data:`DEFAULT_BLOCK_BYTES` (64 MiB) of logits.
    n_threads : int or None
        Threads of fastxent's kernels (None: OpenMP default, -1: all cores).  The matrix
        products run on NumPy's BLAS with its own thread setting.

    Returns
    -------
    float, or ndarray of shape ``labels.shape`` for ``reduction="none"``: hidden's dtype,
    float32 for float16 / bfloat16 (the losses of ``hidden.astype(np.float32)``, as the other
    losses return them).

    Examples
    --------
    >>> import numpy as np, fastxent as fx
    >>> rng = np.random.default_rng(0)
    >>> hidden = rng.standard_normal((2, 5, 8))           # (batch, seq, d)
    >>> weight = rng.standard_normal((11, 8))             # (vocab, d)
    >>> labels = rng.integers(0, 11, size=(2, 5))
    >>> labels[1, 3:] = -100                              # padding
    >>> loss = fx.linear_cross_entropy(hidden, weight, labels, ignore_class=-100)
    >>> unfused = fx.SparseCategoricalCrossentropy(from_logits=True, ignore_class=-100)
    >>> bool(np.isclose(loss, unfused(labels, hidden @ weight.T)))
    True
    """
    p = _prepare(hidden, weight, labels, bias, sample_weight, ignore_class, label_smoothing,
                 z_loss, reduction, chunk_size, n_threads)
    loss64, *_ = _run(p, want_grad=False)
    return _reduce(loss64, p)


def linear_cross_entropy_and_grad(
    hidden,
    weight,
    labels,
    bias=None,
    *,
    sample_weight=None,
    ignore_class: int | None = None,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    reduction: str = "sum_over_batch_size",
    chunk_size: int | tuple[int, int] | None = None,
    n_threads: int | None = None,
) -> tuple[float | np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """The loss of :func:`linear_cross_entropy` and its gradients, without the logits.

    Parameters
    ----------
    hidden, weight, labels, bias, sample_weight, ignore_class, label_smoothing, z_loss, \
reduction, chunk_size, n_threads
        As in :func:`linear_cross_entropy`.

    Returns
    -------
    loss : float, or ndarray of shape ``labels.shape`` for ``reduction="none"`` (hidden's
        dtype; float32 for float16 / bfloat16)
    d_hidden : ndarray, shape and dtype of ``hidden``
        d(loss)/d(hidden).  With ``reduction="none"``, the gradient of the sum of the
        per-token losses.
    d_weight : ndarray, shape (V, d), dtype of ``hidden``
    d_bias : ndarray of shape (V,) and hidden's dtype, or None when ``bias`` is None

    Notes
    -----
    With G = d(loss)/d(logits) (never stored whole), ``d_hidden = G @ weight``,
    ``d_weight = G.T @ hidden`` and ``d_bias = G.sum(0)``; ``G`` is built one block at a time
    and each block is consumed by two BLAS products.  float32 inputs keep the log-sum-exp,
    the losses and ``d_bias`` in float64.

    float16 and bfloat16 inputs give the results of their float32 values: the loss of
    ``hidden.astype(np.float32)``, ``weight.astype(np.float32)`` (and bias), and its three
    gradients rounded once to the inputs' dtype (to nearest even; a value beyond float16's
    range becomes ``inf``).  The float32 copies and gradients cost ``8 * (N + V) * d`` bytes
    (see the module docstring).

    Examples
    --------
    >>> import numpy as np, fastxent as fx
    >>> rng = np.random.default_rng(0)
    >>> hidden = rng.standard_normal((6, 4)).astype(np.float32)
    >>> weight = rng.standard_normal((9, 4)).astype(np.float32)
    >>> bias = np.zeros(9, dtype=np.float32)
    >>> labels = np.array([1, 2, 3, 4, 5, 6])
    >>> loss, d_h, d_w, d_b = fx.linear_cross_entropy_and_grad(
    ...     hidden, weight, labels, bias, chunk_size=(4, 5))
    >>> d_h.shape, d_w.shape, d_b.shape
    ((6, 4), (9, 4), (9,))
    >>> _, g = fx.SparseCategoricalCrossentropy(from_logits=True).loss_and_grad(
    ...     labels, hidden @ weight.T + bias)
    >>> bool(np.allclose(d_w, g.T @ hidden, atol=1e-6))
    True
    """
    p = _prepare(hidden, weight, labels, bias, sample_weight, ignore_class, label_smoothing,
                 z_loss, reduction, chunk_size, n_threads)
    loss64, d_hidden, d_weight, d_bias64 = _run(p, want_grad=True)
    loss = _reduce(loss64, p)
    shape, dtype, compute = p["h"].shape, p["h"].dtype, p["compute"]
    del p  # float16 / bfloat16: their float32 copies are freed before the gradients are rounded
    # float16 / bfloat16: the float32 gradients rounded once, to nearest even (beyond
    # float16's range to inf, as the losses' kernels round, without a warning)
    with np.errstate(over="ignore"):
        d_hidden = d_hidden.reshape(shape).astype(dtype, copy=False)
        d_weight = d_weight.astype(dtype, copy=False)
        d_bias = None if d_bias64 is None else d_bias64.astype(compute).astype(dtype,
                                                                               copy=False)
    return loss, d_hidden, d_weight, d_bias


def perplexity(
    y_true,
    y_pred,
    *,
    from_logits: bool = True,
    ignore_class: int | None = None,
    sample_weight=None,
    axis: int = -1,
    n_threads: int | None = None,
) -> float:
    """Perplexity: ``exp`` of the (weighted) mean token cross-entropy.

    ``perplexity = exp(sum_i w_i l_i / sum_i w_i)`` over the tokens whose label is not
    ``ignore_class``, with ``l_i`` the per-token sparse cross-entropy (natural log) and
    ``w_i`` the sample weights (1 by default).  This is
    ``exp(SparseCategoricalCrossentropy(..., reduction="mean_with_sample_weight"))`` and
    torchmetrics' ``Perplexity(ignore_index=...)``.

    Parameters
    ----------
    y_true : array_like of integers
        Token ids, shape of ``y_pred`` without ``axis``.
    y_pred : ndarray of float32 or float64
        Logits (default) or probabilities (``from_logits=False``), vocabulary along ``axis``.
    from_logits : bool
        True by default (language-model heads output logits), unlike the loss functions.
    ignore_class : int, optional
        Padding label: those tokens count neither in the numerator nor the denominator.
    sample_weight : array_like, optional
        Per-token weights broadcastable to the per-token loss shape.
    axis : int
        The vocabulary axis.
    n_threads : int or None

    Returns
    -------
    float
        NaN when no token counts (all ignored, zero total weight or an empty batch); ``inf``
        when the mean cross-entropy overflows ``exp``.

    Examples
    --------
    >>> import numpy as np, fastxent as fx
    >>> logits = np.zeros((2, 3, 4))          # uniform over 4 tokens
    >>> labels = np.array([[0, 1, 2], [3, -100, -100]])
    >>> round(fx.perplexity(labels, logits, ignore_class=-100), 10)
    4.0
    """
    opts = softmax_options(sparse=True, from_logits=from_logits, axis=axis,
                           ignore_class=ignore_class, n_threads=n_threads,
                           reduction="mean_with_sample_weight")
    out = _dispatch.softmax(opts, y_true, y_pred, sample_weight)
    if out.denominator == 0.0:
        return float("nan")
    return _reduction.exp_of_mean(out.loss)
