"""pytest configuration shared by the fastxent test-suite.

Keras 3 picks its backend when it is first imported; the tests compare against its
NumPy backend, so KERAS_BACKEND must be set before anything imports keras.
"""

import os

os.environ["KERAS_BACKEND"] = "numpy"

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def rng(request):
    """A generator seeded from the test's node id: reproducible and different per test."""
    seed = sum(request.node.nodeid.encode()) * 7919 % (2**32)
    return np.random.default_rng(seed)
