"""Cross-entropy on Dask arrays, block by block on the workers (``pip install '.[dask]'``).

The arrays stay where they are: every block of ``y_pred`` (whole rows: the class axis in one
chunk) runs fastxent's compiled kernel on the worker that holds it, and only per-block scalars
travel to be combined.

* :func:`categorical_crossentropy`, :func:`sparse_categorical_crossentropy` and
  :func:`binary_crossentropy` return the per-sample losses as a Dask array, like their NumPy
  namesakes in :mod:`fastxent`.
* The focal family likewise: :func:`binary_focal_crossentropy`,
  :func:`categorical_focal_crossentropy`, :func:`sparse_categorical_focal_crossentropy`,
  :func:`kl_divergence` and :func:`categorical_generalized_cross_entropy`.
* :class:`CategoricalCrossentropy`, :class:`SparseCategoricalCrossentropy`,
  :class:`BinaryCrossentropy`, :class:`BinaryFocalCrossentropy`,
  :class:`CategoricalFocalCrossentropy`, :class:`SparseCategoricalFocalCrossentropy`,
  :class:`KLDivergence` and :class:`CategoricalGeneralizedCrossEntropy` take the options of
  the NumPy classes (they are subclasses); calling one and its ``loss_and_grad`` /
  ``gradient`` take and return Dask arrays.  Reductions are exact, not means of block means.
* :class:`WorkerMemoryError` (a ``MemoryError``): what the fit and the metrics' update raise
  for ``distributed.KilledWorker``, a block too large for a worker's memory limit.

``SoftmaxRegression.fit`` (:mod:`fastxent.sklearn`) with a Dask ``X`` is fitted here,
data-parallel, on the in-memory fit's objective (:mod:`fastxent._glm`).

Workers run the kernels with the OpenMP thread count of their process; the ``distributed``
nanny sets ``OMP_NUM_THREADS=1`` by default, which is right when every worker thread runs
blocks in parallel.

The package holds ``_losses`` (the loss graphs: the functions and classes above), ``_fit``
(the distributed fit, :func:`_fit_softmax_regression`, which ``SoftmaxRegression.fit`` calls
for a Dask ``X``) and ``_metrics`` (the per-block states of :mod:`fastxent.metrics`' metrics
given Dask arrays, imported by them on first use).
"""

from fastxent.dask._faults import WorkerMemoryError
from fastxent.dask._fit import _fit_softmax_regression  # noqa: F401  (SoftmaxRegression.fit's)
from fastxent.dask._losses import (
    BinaryCrossentropy,
    BinaryFocalCrossentropy,
    CategoricalCrossentropy,
    CategoricalFocalCrossentropy,
    CategoricalGeneralizedCrossEntropy,
    KLDivergence,
    SparseCategoricalCrossentropy,
    SparseCategoricalFocalCrossentropy,
    binary_crossentropy,
    binary_focal_crossentropy,
    categorical_crossentropy,
    categorical_focal_crossentropy,
    categorical_generalized_cross_entropy,
    kl_divergence,
    sparse_categorical_crossentropy,
    sparse_categorical_focal_crossentropy,
)

__all__ = [
    "categorical_crossentropy",
    "sparse_categorical_crossentropy",
    "binary_crossentropy",
    "CategoricalCrossentropy",
    "SparseCategoricalCrossentropy",
    "BinaryCrossentropy",
    "binary_focal_crossentropy",
    "categorical_focal_crossentropy",
    "sparse_categorical_focal_crossentropy",
    "kl_divergence",
    "categorical_generalized_cross_entropy",
    "BinaryFocalCrossentropy",
    "CategoricalFocalCrossentropy",
    "SparseCategoricalFocalCrossentropy",
    "KLDivergence",
    "CategoricalGeneralizedCrossEntropy",
    "WorkerMemoryError",
]

# The public names are fastxent.dask's (their repr, pickles, help() and doctests say so).
for _name in __all__:
    globals()[_name].__module__ = __name__
del _name
