"""The benchmark's workloads, grouped as on the command line, and their performance goals."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import numpy as np

MODES = ("full", "quick", "tiny")
PEERS = ("numpy", "sklearn", "torch", "jax")
DISPLAY = {
    "fastxent": "fastxent",
    "roofline": "copy roofline",
    "numpy": "NumPy",
    "sklearn": "scikit-learn",
    "torch": "PyTorch",
    "jax": "JAX",
    "threads": "thread scaling",
    "busy": "busy core",
    "functional": "functional form",
    "avx2": "AVX2 path",
    "float32": "fastxent float32",
}
# Goals compared with the row's own fastxent time ("at most" goals: the smaller the better).
_AT_MOST = ("roofline", "busy", "functional", "avx2")


@dataclass(frozen=True)
class Target:
    """One performance goal of a row.

    Parameters
    ----------
    what : str
        ``"roofline"``: fastxent time <= ``bound`` x the copy roofline.  A peer name
        (``"numpy"``, ``"sklearn"``, ``"torch"``, ``"jax"``): the peer's time >= ``bound`` x
        fastxent's.  ``"threads"``: the 1-thread time >= ``bound`` x the all-threads time.
        ``"busy"``: with one core busy, the 2-thread time <= ``bound`` x the 1-thread time.
        ``"functional"``: the functional form's time <= ``bound`` x the class call's.
        ``"avx2"``: the AVX2 path's time <= ``bound`` x the default path's.
    bound : float
        The factor.
    """

    what: str
    bound: float

    @property
    def at_most(self) -> bool:
        """True when the measured ratio must stay at or below the bound."""
        return self.what in _AT_MOST

    def text(self, n_threads: int) -> str:
        """The goal in words, e.g. ``"<= 1.7x the copy roofline"``."""
        b = f"{self.bound:g}x"
        if self.what == "roofline":
            return f"<= {b} the copy roofline"
        if self.what == "threads":
            return f"{n_threads} threads >= {b} faster than 1"
        if self.what == "busy":
            return f"2 threads <= {b} the time of 1 thread while a core is busy"
        if self.what == "functional":
            return f"functional form <= {b} the class call"
        if self.what == "avx2":
            return f"AVX2 path <= {b} the time of the default path"
        if self.bound == 1:
            return f"faster than {DISPLAY[self.what]}"
        return f">= {b} faster than {DISPLAY[self.what]}"


@dataclass(frozen=True)
class Workload:
    """One data set of a group, timed with every candidate of the group.

    Parameters
    ----------
    group : str
        The group's name, as given to ``--only`` / ``--workloads``.
    kind : str
        ``"sparse"``, ``"categorical"`` or ``"binary"`` (all from logits); the focal group's
        ``"sparse_focal"``, ``"binary_focal"`` (Keras' defaults: alpha 0.25, gamma 2) and
        ``"kl"`` (KL divergence from logits).
    shape : tuple of int
        Shape of the logits.
    dtype : str
    targets : tuple of Target
    peers : tuple of str
        The peers this workload is timed against (when installed).
    thread_scaling : bool
        Also time fastxent (and the threaded peers) with 1 thread.
    functional : bool
        Also time the functional form ``fastxent.sparse_categorical_crossentropy``
        (loss only).
    avx2 : bool
        Also time fastxent in a worker with ``FASTXENT_ISA=avx2``.
    float32 : bool
        Also time fastxent on the same values as float32 (for float16 / bfloat16 workloads).
    busy : bool
        Time fastxent with 1 and 2 threads while another process spins a core.
    many_calls : bool
        Short calls: each sample times as many calls as last ``min_sample_s`` (timeit-like) and
        the statistic is the median of the samples.
    full_shape : tuple of int
        The full run's shape when this mode shrinks it, else empty.
    """

    group: str
    kind: str
    shape: tuple
    dtype: str
    targets: tuple = ()
    peers: tuple = PEERS
    thread_scaling: bool = False
    functional: bool = False
    avx2: bool = False
    float32: bool = False
    busy: bool = False
    many_calls: bool = False
    full_shape: tuple = ()

    @property
    def label(self) -> str:
        """The row label, e.g. ``"sparse 8,192 x 1,000 float32"``."""
        kind = {
            "sparse": "sparse",
            "categorical": "categorical (probability targets)",
            "binary": "binary from logits",
            "sparse_focal": "sparse focal (gamma 2)",
            "binary_focal": "binary focal (gamma 2)",
            "kl": "KL divergence from logits",
        }[self.kind]
        shape = " x ".join(f"{s:,}" for s in self.shape)
        if self.kind == "binary" and len(self.shape) == 1:
            shape = f"{self.shape[0]:,} elements"
        return f"{kind} {shape} {self.dtype}"

    def fastxent_rows(self, n_threads: int) -> list[tuple[str, int, str]]:
        """The fastxent candidates as ``(variant, threads, role)``, one table row each.

        The ``"main"`` row carries the copy roofline and the peers; the others are compared
        with it (``"threads"``: 1 thread; ``"busy"``: 2 threads next to the 1-thread main row;
        ``"functional"``; ``"avx2"``).
        """
        if self.busy:
            return [("class", 1, "main"), ("class", 2, "busy")]
        rows = [("class", n_threads, "main")]
        if self.thread_scaling and n_threads > 1:
            rows.append(("class", 1, "threads"))
        if self.functional:
            rows.append(("functional", n_threads, "functional"))
        if self.avx2:
            rows.append(("avx2", n_threads, "avx2"))
        if self.float32:
            rows.append(("float32", n_threads, "float32"))
        return rows


# Sparse 8192 x 1000 float32 is the reference workload of several groups.
_SPARSE_MAIN = {"full": (8192, 1000), "quick": (8192, 1000), "tiny": (64, 100)}
_SMALL_CALLS = ((32, 10), (256, 100))
_SMALL_GOALS = (Target("numpy", 3), Target("jax", 1), Target("torch", 1),
                Target("functional", 2))

# group -> [(kind, {mode: shape}, dtype, targets, options)]
_GROUPS = {
    "sparse": [("sparse", _SPARSE_MAIN, "float32",
                (Target("roofline", 1.3), Target("jax", 2), Target("sklearn", 8),
                 Target("torch", 5), Target("threads", 1.7)),
                {"thread_scaling": True})],
    "vocab": [("sparse", {"full": (2048, 50257), "quick": (512, 50257), "tiny": (8, 5000)},
               "float32", (Target("roofline", 1.25), Target("jax", 3)), {})],
    "short-rows": [("sparse", {"full": (1_000_000, 10), "quick": (1_000_000, 10),
                               "tiny": (2000, 10)},
                    "float32", (Target("roofline", 2.5), Target("sklearn", 4),
                                Target("jax", 4)), {})],
    "float64": [("sparse", _SPARSE_MAIN, "float64", (Target("roofline", 1.25),), {})],
    "categorical": [("categorical", _SPARSE_MAIN, "float32", (Target("roofline", 1.8),), {})],
    "binary": [("binary", {"full": (10_000_000,), "quick": (10_000_000,), "tiny": (5000,)},
                "float32", (Target("roofline", 2), Target("torch", 4)), {})],
    "split-row": [("sparse", {"full": (2, 10_000_000), "quick": (2, 4_000_000),
                              "tiny": (2, 20_000)},
                   "float32", (Target("threads", 1.7),), {"thread_scaling": True})],
    "small": [("sparse", dict.fromkeys(MODES, shape), "float32", _SMALL_GOALS,
               {"peers": ("numpy", "torch", "jax"), "functional": True, "many_calls": True})
              for shape in _SMALL_CALLS],
    "in-cache": [("sparse", {"full": full, "quick": full, "tiny": tiny}, "float32",
                  (Target("jax", 1.3), Target("numpy", 3)), {"many_calls": True})
                 for full, tiny in (((1024, 1000), (64, 100)), ((4096, 256), (128, 32)))],
    "binary-shapes": [("binary", {"full": full, "quick": full, "tiny": tiny}, "float32",
                       (Target("roofline", 2),), {})
                      for full, tiny in (((1_000_000, 10), (2000, 10)),
                                         ((10_000_000, 1), (20_000, 1)))],
    "focal": [(kind, _SPARSE_MAIN, "float32",
               (Target("roofline", 2), Target("torch", 1), Target("jax", 1)),
               {"peers": ("torch", "jax")})
              for kind in ("sparse_focal", "binary_focal", "kl")],
    "low-precision": [("sparse", shapes, dtype,
                       (Target("roofline", 1.4), Target("float32", 1.5), Target("torch", 3)),
                       {"peers": ("torch",), "float32": True})
                      for shapes in (_SPARSE_MAIN, {"full": (2048, 50257),
                                                    "quick": (512, 50257), "tiny": (8, 5000)})
                      for dtype in ("bfloat16", "float16")],
    "busy-core": [("sparse", _SPARSE_MAIN, "float32", (Target("busy", 1.1),),
                   {"peers": (), "busy": True}),
                  ("sparse", {"full": (4096, 256), "quick": (4096, 256), "tiny": (512, 256)},
                   "float32", (Target("busy", 1.1),),
                   {"peers": (), "busy": True, "many_calls": True})],
    "avx2": [("sparse", _SPARSE_MAIN, "float32", (Target("avx2", 1.3),),
              {"peers": (), "avx2": True}),
             ("sparse", {"full": (1_000_000, 10), "quick": (1_000_000, 10), "tiny": (2000, 10)},
              "float32", (Target("avx2", 1.3),), {"peers": (), "avx2": True}),
             ("binary", {"full": (10_000_000,), "quick": (10_000_000,), "tiny": (5000,)},
              "float32", (Target("avx2", 1.3),), {"peers": (), "avx2": True}),
             ("sparse", dict.fromkeys(MODES, (256, 100)), "float32", (Target("avx2", 1.3),),
              {"peers": (), "avx2": True, "many_calls": True})],
}
GROUP_HELP = {
    "sparse": "sparse labels, the reference size, with thread scaling",
    "vocab": "sparse labels, a language model's vocabulary",
    "short-rows": "sparse labels, a million rows of 10 classes",
    "float64": "sparse labels in double precision",
    "categorical": "probability targets",
    "binary": "binary from logits, 10 million elements",
    "split-row": "two rows of 10 million classes (one row shared by the threads)",
    "small": "minibatch training: small calls, class and functional form",
    "in-cache": "sparse labels, logits that fit in the cache",
    "binary-shapes": "binary from logits as 2-D arrays",
    "focal": "sparse focal, binary focal and KL divergence from logits",
    "low-precision": "sparse labels on bfloat16 / float16 logits (bfloat16 needs ml_dtypes)",
    "busy-core": "1 and 2 threads while another process spins a core",
    "avx2": "fastxent forced onto its AVX2 path against its default path",
    "plot": "effective bandwidth against the number of classes (PNG)",
    "torch": "fastxent.torch.cross_entropy against F.cross_entropy, forward + backward",
    "linear": "fused linear + cross-entropy: time and peak memory",
}
GROUP_NAMES = list(GROUP_HELP)  # _GROUPS, then "plot", "torch" and "linear"

# number of classes for the bandwidth plot, and the bytes of logits per point
PLOT_CLASSES = {"full": (10, 100, 1000, 10000, 50257), "quick": (10, 1000, 50257),
                "tiny": (10, 100)}
PLOT_BYTES = {"full": 32 * 2**20, "quick": 16 * 2**20, "tiny": 64 * 2**10}
# fused linear + cross-entropy: (tokens N, hidden d, vocabulary V) and its goals
LINEAR_SIZE = {"full": (8192, 768, 50257), "quick": (2048, 256, 8192), "tiny": (64, 16, 300)}
LINEAR_GOAL_TIME = 1.3  # fused <= 1.3x the unfused pipeline
LINEAR_GOAL_MEMORY = 0.10  # peak above inputs and outputs <= 10% of the logits
# default rounds, the time after which a workload stops adding rounds (at least 3 rounds), and
# the least duration of one sample of the many-calls workloads
REPEAT = {"full": 9, "quick": 3, "tiny": 1}
BUDGET_S = {"full": 25.0, "quick": 4.0, "tiny": 0.5}
MIN_SAMPLE_S = {"full": 0.02, "quick": 0.02, "tiny": 0.001}


def workloads(mode: str, groups=None) -> list[Workload]:
    """The workloads of ``mode`` (``"full"``, ``"quick"`` or ``"tiny"``).

    Parameters
    ----------
    mode : str
        ``"quick"`` shrinks the two largest workloads; ``"tiny"`` is for tests.
    groups : collection of str, optional
        Keep these groups only (default: every group).

    Returns
    -------
    list of Workload
    """
    out = []
    for group, specs in _GROUPS.items():
        if groups is not None and group not in groups:
            continue
        for kind, shapes, dtype, targets, options in specs:
            if dtype == "bfloat16" and importlib.util.find_spec("ml_dtypes") is None:
                continue  # bfloat16 arrays need ml_dtypes (the lowp extra)
            shape = shapes[mode]
            out.append(Workload(group, kind, shape, dtype, targets,
                                full_shape=shapes["full"] if shape != shapes["full"] else (),
                                **options))
    return out


def itemsize(dtype) -> int:
    """Bytes per element of a workload's dtype name (bfloat16 without importing ml_dtypes)."""
    return 2 if str(dtype) in ("bfloat16", "float16") else np.dtype(dtype).itemsize


def make_data(kind: str, shape: tuple, dtype, seed: int = 0) -> dict:
    """Logits ``x`` and targets ``y`` for ``kind``; the same seed gives the same arrays.

    Parameters
    ----------
    kind : str
        ``"sparse"`` / ``"sparse_focal"`` (integer labels), ``"categorical"`` / ``"kl"``
        (probability rows) or ``"binary"`` / ``"binary_focal"`` (0/1 floats).
    shape : tuple of int
    dtype : str or numpy.dtype
        float16 and bfloat16 (ml_dtypes, imported here) data are float32 data rounded.
    seed : int

    Returns
    -------
    dict
        ``{"x": logits, "y": targets}``.
    """
    rng = np.random.default_rng(seed)
    low = str(dtype) in ("bfloat16", "float16")
    if str(dtype) == "bfloat16":
        import ml_dtypes

        dtype = ml_dtypes.bfloat16
    final, dtype = np.dtype(dtype), np.dtype(np.float32 if low else dtype)
    x = rng.standard_normal(shape, dtype=dtype)
    if kind in ("sparse", "sparse_focal"):
        y = rng.integers(0, shape[-1], shape[:-1])
    elif kind in ("categorical", "kl"):
        y = rng.standard_normal(shape, dtype=dtype)
        y -= y.max(axis=-1, keepdims=True)
        np.exp(y, out=y)
        y /= y.sum(axis=-1, keepdims=True)
    elif kind in ("binary", "binary_focal"):
        y = (rng.random(shape) < 0.5).astype(dtype)
    else:
        raise ValueError(f"kind must be 'sparse', 'categorical' or 'binary', got {kind!r}")
    if low:
        x = x.astype(final)
        y = y if kind == "sparse" else y.astype(final)
    return {"x": x, "y": y}


def linear_inputs(n: int, d: int, v: int, seed: int = 0):
    """Hidden states (n, d), output weights (v, d) scaled for unit-size logits, labels (n,)."""
    rng = np.random.default_rng(seed)
    hidden = rng.standard_normal((n, d), dtype=np.float32)
    weight = rng.standard_normal((v, d), dtype=np.float32)
    weight *= np.float32(1 / np.sqrt(d))
    labels = rng.integers(0, v, n)
    return hidden, weight, labels
