"""
Scaling out with Dask
=====================

fastxent.dask on a two-process ``distributed.LocalCluster``: the loss and gradient of 2M x 100
float32 logits computed block by block on the workers, the same number as the NumPy path,
then ``SoftmaxRegression`` fitted data-parallel on a Dask array.

Needs the ``dask`` and ``sklearn`` extras (``pip install '.[dask,sklearn]'`` from a clone).
It takes a few minutes on two cores, so the documentation shows it without running it::

    python examples/scaling_out.py

prints::

    mean loss over non-padding rows: 5.0969
    equal to NumPy: True
    21 iterations, accuracy 1.000
"""

import dask
import dask.array as da
import numpy as np
from distributed import Client, LocalCluster

import fastxent as fx
import fastxent.dask as fxd
from fastxent.sklearn import SoftmaxRegression

if __name__ == "__main__":  # worker processes re-import this file
    with LocalCluster(n_workers=2, threads_per_worker=1) as cluster, Client(cluster):
        # 2M x 100 float32 logits (800 MB), generated on the workers in chunks of
        # 100,000 whole rows: the class axis must not be split.
        rng = da.random.default_rng(0)
        logits = rng.standard_normal((2_000_000, 100), chunks=(100_000, 100), dtype=np.float32)
        labels = rng.integers(-1, 100, 2_000_000, chunks=100_000)   # -1: padding

        loss_fn = fxd.SparseCategoricalCrossentropy(from_logits=True, ignore_class=-1)
        loss, grad = loss_fn.loss_and_grad(labels, logits)          # lazy dask arrays
        loss, grad_col_sums = dask.compute(loss, grad.sum(axis=0))  # one kernel pass per block
        print(f"mean loss over non-padding rows: {loss:.4f}")

        # The same numbers as the NumPy path, on a part that fits in memory:
        x, y = dask.compute(logits[:50_000], labels[:50_000])
        part = loss_fn(y, logits[:50_000]).compute()
        print("equal to NumPy:", np.isclose(part, fx.SparseCategoricalCrossentropy(
            from_logits=True, ignore_class=-1)(y, x), rtol=1e-12))

        # Data-parallel training: each L-BFGS step runs on the blocks where they are.
        X = rng.standard_normal((1_000_000, 20), chunks=(125_000, 20))
        y = X[:, :3].argmax(axis=1)
        clf = SoftmaxRegression(alpha=1e-4).fit(X, y)
        X_test, y_test = dask.compute(X[:10_000], y[:10_000])
        print(f"{clf.n_iter_[0]} iterations, accuracy {clf.score(X_test, y_test):.3f}")
