"""The candidates a workload is timed with: fastxent, the copy roofline and the peers.

Every peer is imported lazily, by the worker process that times it: NumPy (the obvious
vectorized code), scikit-learn (``sklearn._loss``), PyTorch (eager ``F.cross_entropy``
forward + backward) and JAX (``jax.jit(jax.value_and_grad(...))``).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# peer -> (module that must be importable, distributions whose versions the report shows)
_PEER_PACKAGES = {
    "sklearn": ("sklearn", ("scikit-learn",)),
    "torch": ("torch", ("torch",)),
    "jax": ("jax", ("jax", "jaxlib")),
}


@dataclass
class Candidate:
    """Something to time.

    Attributes
    ----------
    fn : callable
        ``fn()`` runs the timed call once.
    check : callable or None
        ``check(fn())`` gives ``(mean loss, gradient sample or None)``, the gradient scaled
        like fastxent's mean-reduced gradient, to verify that every candidate computes the
        same thing from the same inputs.
    warm : callable or None
        An untimed warm-up call, when a call of ``fn`` is too costly to spend on one; the
        check is then taken from the first timed call.
    """

    fn: Callable[[], object]
    check: Callable[[object], tuple] | None = None
    warm: Callable[[], object] | None = None


def installed_peers(enabled: bool = True) -> dict:
    """Which peers are installed, without importing them.

    Parameters
    ----------
    enabled : bool
        False: no peer at all (``--no-peers``).

    Returns
    -------
    dict
        ``{"available": {peer: bool}, "versions": {distribution: version}}``.
    """
    available = {"numpy": enabled}
    versions = {}
    for peer, (module, dists) in _PEER_PACKAGES.items():
        available[peer] = enabled and importlib.util.find_spec(module) is not None
        if available[peer]:
            for dist in dists:
                try:
                    versions[dist] = importlib.metadata.version(dist)
                except importlib.metadata.PackageNotFoundError:
                    pass
    return {"available": available, "versions": versions}


def numpy_sparse(labels, logits):
    """The obvious NumPy sparse softmax cross-entropy a user would otherwise write.

    Parameters
    ----------
    labels : ndarray of int, shape (n,)
    logits : ndarray of float, shape (n, C)

    Returns
    -------
    loss : float
        Mean over the rows.
    grad : ndarray, shape (n, C)
        Gradient of the mean loss.
    """
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    total = exp.sum(axis=1, keepdims=True)
    rows = np.arange(len(labels))
    loss = np.mean(np.log(total[:, 0]) - shifted[rows, labels])
    grad = exp / total
    grad[rows, labels] -= 1.0
    grad /= len(labels)
    return loss, grad


def numpy_categorical(targets, logits):
    """The obvious NumPy softmax cross-entropy with probability targets.

    Parameters
    ----------
    targets : ndarray, shape (n, C)
        Rows summing to 1.
    logits : ndarray, shape (n, C)

    Returns
    -------
    loss : float
        Mean over the rows.
    grad : ndarray, shape (n, C)
    """
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    total = exp.sum(axis=1, keepdims=True)
    log_p = shifted - np.log(total)
    loss = -np.mean(np.sum(targets * log_p, axis=1))
    grad = (exp / total - targets) / len(logits)
    return loss, grad


def numpy_binary(targets, logits):
    """The obvious NumPy binary cross-entropy from logits (mean over every element).

    Parameters
    ----------
    targets : ndarray
        0/1 floats, the shape of ``logits``.
    logits : ndarray

    Returns
    -------
    loss : float
    grad : ndarray, the shape of ``logits``
    """
    loss = np.mean(np.logaddexp(0, logits) - targets * logits)
    grad = (1 / (1 + np.exp(-logits)) - targets) / logits.size
    return loss, grad


def sample(grad, kind: str):
    """A small part of a gradient as a float64 list: the first rows, or elements for binary."""
    grad = np.asarray(grad)
    part = grad.ravel()[:1000] if kind == "binary" else grad[:4].ravel()
    return np.asarray(part, dtype=np.float64).tolist()


def build(spec: dict, data: dict) -> Candidate:
    """The candidate ``spec`` on the workload ``data`` (imports its peer on first use).

    Parameters
    ----------
    spec : dict
        ``system`` (``"fastxent"``, ``"roofline"`` or a peer), ``variant`` (fastxent:
        ``"class"``, ``"functional"`` or ``"avx2"``) and ``threads``.
    data : dict
        ``kind``, logits ``x`` and targets ``y`` (see ``workloads.make_data``).

    Returns
    -------
    Candidate
    """
    system, threads = spec["system"], spec.get("threads")
    kind, x, y = data["kind"], data["x"], data["y"]
    if system == "fastxent":
        return _fastxent(kind, x, y, threads, spec.get("variant", "class"))
    if system == "roofline":
        return _roofline(x)
    if system == "numpy":
        fn = {"sparse": numpy_sparse, "categorical": numpy_categorical,
              "binary": numpy_binary}[kind]
        return Candidate(lambda: fn(y, x), lambda out: (float(out[0]), sample(out[1], kind)))
    if system == "sklearn":
        return _sklearn(kind, x, y, threads)
    if system == "torch":
        return _torch(kind, x, y, threads)
    if system == "jax":
        return _jax(kind, x, y)
    raise ValueError(f"unknown candidate system {system!r}")


def _fastxent(kind, x, y, threads, variant):
    import fastxent as fx

    if variant == "functional":
        def functional():
            return fx.sparse_categorical_crossentropy(y, x, from_logits=True, n_threads=threads)
        return Candidate(functional, lambda out: (float(np.mean(out, dtype=np.float64)), None))
    if variant == "float32":  # the same values in float32, converted before the timing
        x = x.astype(np.float32)
        y = y if kind == "sparse" else y.astype(np.float32)
    cls = {"sparse": fx.SparseCategoricalCrossentropy, "categorical": fx.CategoricalCrossentropy,
           "binary": fx.BinaryCrossentropy, "sparse_focal": fx.SparseCategoricalFocalCrossentropy,
           "binary_focal": fx.BinaryFocalCrossentropy, "kl": fx.KLDivergence}[kind]
    loss = cls(from_logits=True, n_threads=threads)  # reused across calls, as in training
    return Candidate(lambda: loss.loss_and_grad(y, x),
                     lambda out: (float(out[0]), sample(out[1], kind)))


def _roofline(x):
    dst = np.empty_like(x)
    dst[...] = 0  # allocated and touched: no page faults inside the timing
    return Candidate(lambda: np.copyto(dst, x))


def _sklearn(kind, x, y, threads):
    from sklearn._loss import loss as sklearn_loss

    if kind == "categorical":
        raise ValueError("scikit-learn has no softmax loss with probability targets")
    n = len(x)
    if kind == "sparse":
        loss = sklearn_loss.HalfMultinomialLoss(n_classes=x.shape[1])
        y_true = y.astype(x.dtype)  # sklearn takes labels as floats of the logits' dtype
        raw, n_terms = x, n
    else:
        loss = sklearn_loss.HalfBinomialLoss()
        y_true, raw, n_terms = y.ravel(), x.ravel(), x.size  # 1-D only: flat views

    def run():
        return loss.loss_gradient(y_true=y_true, raw_prediction=raw, n_threads=threads)

    # per-sample losses and unscaled per-sample gradients
    return Candidate(run, lambda out: (float(np.mean(out[0], dtype=np.float64)),
                                       (np.asarray(sample(out[1], kind)) / n_terms).tolist()))


def _torch(kind, x, y, threads):
    import torch
    import torch.nn.functional as F

    loss_of = F.binary_cross_entropy_with_logits if kind == "binary" else F.cross_entropy
    if kind == "sparse_focal":  # Keras' defaults: alpha 0.25, gamma 2
        def loss_of(logits, labels):
            logp = torch.log_softmax(logits, 1).gather(1, labels[:, None])[:, 0]
            return torch.mean(-0.25 * (1 - torch.exp(logp)) ** 2 * logp)
    elif kind == "binary_focal":  # torchvision's sigmoid_focal_loss without alpha
        def loss_of(logits, targets):
            p = torch.sigmoid(logits)
            ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
            p_t = p * targets + (1 - p) * (1 - targets)
            return torch.mean(ce * (1 - p_t) ** 2)
    elif kind == "kl":
        def loss_of(logits, targets):
            return F.kl_div(torch.log_softmax(logits, 1), targets, reduction="batchmean")
    return torch_step(loss_of, kind, x, y, threads)


def torch_step(loss_of, kind, x, y, threads) -> Candidate:
    """``loss_of(logits, targets)`` forward and backward on tensors sharing ``x`` and ``y``."""
    import torch

    def tensor(a):  # shares a's memory: the same bytes (bfloat16 through its bits)
        if a.dtype.name == "bfloat16":
            return torch.from_numpy(a.view(np.uint16)).view(torch.bfloat16)
        return torch.from_numpy(a)

    xt = tensor(x).requires_grad_(True)
    yt = tensor(y)

    def run():
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        xt.grad = None
        loss = loss_of(xt, yt)
        loss.backward()
        return loss.item(), xt.grad

    return Candidate(run, lambda out: (out[0], sample(out[1].float().numpy(), kind)))


def _jax(kind, x, y):
    import jax

    jax.config.update("jax_enable_x64", True)  # else float64 is silently float32
    jnp = jax.numpy

    if kind == "sparse":
        def loss_of(logits, labels):
            picked = jnp.take_along_axis(logits, labels[:, None], axis=1)[:, 0]
            return jnp.mean(jax.nn.logsumexp(logits, axis=1) - picked)
    elif kind == "categorical":
        def loss_of(logits, targets):
            return -jnp.mean(jnp.sum(targets * jax.nn.log_softmax(logits, axis=1), axis=1))
    elif kind == "binary":
        def loss_of(logits, targets):
            return jnp.mean(jax.nn.softplus(logits) - targets * logits)
    elif kind == "sparse_focal":
        def loss_of(logits, labels):
            logp = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=1), labels[:, None],
                                       axis=1)[:, 0]
            return jnp.mean(-0.25 * (1 - jnp.exp(logp)) ** 2 * logp)
    elif kind == "binary_focal":
        def loss_of(logits, targets):
            p = jax.nn.sigmoid(logits)
            ce = jax.nn.softplus(logits) - targets * logits
            p_t = p * targets + (1 - p) * (1 - targets)
            return jnp.mean(ce * (1 - p_t) ** 2)
    else:  # kl
        def loss_of(logits, targets):
            ent = jnp.sum(jnp.where(targets > 0, targets * jnp.log(targets), 0.0), axis=1)
            return jnp.mean(ent - jnp.sum(targets * jax.nn.log_softmax(logits, axis=1), axis=1))

    value_and_grad = jax.jit(jax.value_and_grad(loss_of))  # compiled by the warm-up call
    xj = jax.device_put(x)  # the data lives in JAX before the timing, as in a JAX program
    yj = jax.device_put(y)

    def run():
        loss, grad = value_and_grad(xj, yj)
        grad.block_until_ready()
        return loss, grad

    return Candidate(run, lambda out: (float(out[0]), sample(out[1], kind)))
