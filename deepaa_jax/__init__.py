"""deepaa-jax: Deep AutoAugment (Zheng et al., ICLR 2022) in JAX/Flax.

Public API (see README.md for how the pieces fit):
  * `ops`: the 18 DeepAA image operations as pure JAX functions, pixel-exact
    to Pillow.
  * `SearchSpace`, `cifar_space`, `imagenet_space`, `apply_all`,
    `apply_transform`, `apply_chain`, `apply_chain_batch`: the 139-transform
    search spaces and their on-device application.
  * `Policy`, `apply_policy`, `baseline`, `load_official_npz`, `load_policy`,
    `save_policy`, `make_policy`: augmentation policies as values.
  * `search_layer`, `make_search_model`, `make_search_data`: one layer of the
    DeepAA search, as a notebook calls it (`search_job.run` is the whole
    search job).
"""

from deepaa_jax import ops
from deepaa_jax.policy import apply_policy
from deepaa_jax.policy import baseline
from deepaa_jax.policy import load_official_npz
from deepaa_jax.policy import load_policy
from deepaa_jax.policy import make_policy
from deepaa_jax.policy import Policy
from deepaa_jax.policy import save_policy
from deepaa_jax.search import make_search_data
from deepaa_jax.search import make_search_model
from deepaa_jax.search import search_layer
from deepaa_jax.space import apply_all
from deepaa_jax.space import apply_chain
from deepaa_jax.space import apply_chain_batch
from deepaa_jax.space import apply_transform
from deepaa_jax.space import cifar_space
from deepaa_jax.space import get_space
from deepaa_jax.space import imagenet_space
from deepaa_jax.space import SearchSpace

__version__ = "0.1.0"

__all__ = (
    "ops",
    "Policy",
    "apply_policy",
    "baseline",
    "load_official_npz",
    "load_policy",
    "make_policy",
    "save_policy",
    "make_search_data",
    "make_search_model",
    "search_layer",
    "SearchSpace",
    "apply_all",
    "apply_chain",
    "apply_chain_batch",
    "apply_transform",
    "cifar_space",
    "get_space",
    "imagenet_space",
)
