"""fastxent next to other OpenMP users in one process: torch, LightGBM and XGBoost each load
an OpenMP runtime (their own copy or the system's).  Every import order runs each library's
threaded code on a tiny workload in a fresh interpreter; fastxent's results must match its
single-threaded ones bitwise, and no run may crash or hang."""

import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("torch")
pytest.importorskip("lightgbm")
pytest.importorskip("xgboost")

WORK = {
    "torch": """
        import torch
        torch.set_num_threads(2)
        a = torch.randn(256, 256)
        assert torch.isfinite(a @ a).all()
    """,
    "lightgbm": """
        import lightgbm, numpy as np
        rng = np.random.default_rng(0)
        X = rng.standard_normal((400, 5)); y = (X[:, 0] > 0).astype(int)
        m = lightgbm.LGBMClassifier(n_estimators=5, num_threads=2, verbose=-1).fit(X, y)
        assert m.predict(X).shape == (400,)
    """,
    "xgboost": """
        import xgboost, numpy as np
        rng = np.random.default_rng(0)
        X = rng.standard_normal((400, 5)); y = (X[:, 0] > 0).astype(int)
        m = xgboost.XGBClassifier(n_estimators=5, n_jobs=2).fit(X, y)
        assert m.predict(X).shape == (400,)
    """,
    "fastxent": """
        import fastxent as fx, numpy as np
        rng = np.random.default_rng(0)
        x = rng.standard_normal((3000, 200)).astype(np.float32); y = rng.integers(0, 200, 3000)
        one = fx.SparseCategoricalCrossentropy(from_logits=True, n_threads=1).loss_and_grad(y, x)
        two = fx.SparseCategoricalCrossentropy(from_logits=True, n_threads=2).loss_and_grad(y, x)
        assert one[0] == two[0] and np.array_equal(one[1], two[1])
    """,
}

ORDERS = [
    ("fastxent", "torch", "lightgbm", "xgboost"),
    ("torch", "lightgbm", "xgboost", "fastxent"),
    ("lightgbm", "fastxent", "xgboost", "torch"),
    ("xgboost", "torch", "fastxent", "lightgbm"),
]


@pytest.mark.parametrize("order", ORDERS, ids=["-".join(o) for o in ORDERS])
def test_import_orders_and_threaded_work(order):
    imports = "\n".join(f"import {name}" for name in order)
    # each library's threaded code, in import order, then once more in reverse order
    work = "".join(textwrap.dedent(WORK[name]) for name in (*order, *reversed(order)))
    code = imports + "\n" + work + "\nprint('ok')\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), (
        f"order {order}: exit {out.returncode}\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
