"""fastxent: fast, exact cross-entropy losses and gradients for NumPy.

Keras 3 semantics (``keras.losses``) with PyTorch's extensions (class weights, ignore_index,
pos_weight), computed by fused Cython/OpenMP kernels that read the logits once and write the
gradient once.  See docs/guide/losses.md for the semantics and docs/guide/mapping.md for
the Keras / PyTorch mapping.
"""

__version__ = "0.1.0"

from fastxent._cache import (  # noqa: E402
    _init_buffer_cache_from_env,
    buffer_cache_info,
    set_buffer_cache,
)
from fastxent._config import (  # noqa: E402
    _init_isa_from_env,
    available_isas,
    get_isa,
    openmp_enabled,
    set_isa,
    show_config,
)
from fastxent._errors import LabelRangeError  # noqa: E402
from fastxent.focal import (  # noqa: E402
    BinaryFocalCrossentropy,
    CategoricalFocalCrossentropy,
    CategoricalGeneralizedCrossEntropy,
    KLDivergence,
    SparseCategoricalFocalCrossentropy,
    binary_focal_crossentropy,
    categorical_focal_crossentropy,
    categorical_generalized_cross_entropy,
    kl_divergence,
    sparse_categorical_focal_crossentropy,
)
from fastxent.linear import (  # noqa: E402
    linear_cross_entropy,
    linear_cross_entropy_and_grad,
    perplexity,
)
from fastxent.losses import (  # noqa: E402
    BinaryCrossentropy,
    CategoricalCrossentropy,
    SparseCategoricalCrossentropy,
    binary_crossentropy,
    categorical_crossentropy,
    sparse_categorical_crossentropy,
)
from fastxent.nll import nll_loss, nll_loss_and_grad  # noqa: E402

_init_isa_from_env()
_init_buffer_cache_from_env()

__all__ = [
    "__version__",
    "BinaryCrossentropy",
    "CategoricalCrossentropy",
    "SparseCategoricalCrossentropy",
    "binary_crossentropy",
    "categorical_crossentropy",
    "sparse_categorical_crossentropy",
    "BinaryFocalCrossentropy",
    "CategoricalFocalCrossentropy",
    "SparseCategoricalFocalCrossentropy",
    "KLDivergence",
    "CategoricalGeneralizedCrossEntropy",
    "binary_focal_crossentropy",
    "categorical_focal_crossentropy",
    "sparse_categorical_focal_crossentropy",
    "kl_divergence",
    "categorical_generalized_cross_entropy",
    "nll_loss",
    "nll_loss_and_grad",
    "linear_cross_entropy",
    "linear_cross_entropy_and_grad",
    "perplexity",
    "LabelRangeError",
    "show_config",
    "openmp_enabled",
    "get_isa",
    "set_isa",
    "available_isas",
    "set_buffer_cache",
    "buffer_cache_info",
]
