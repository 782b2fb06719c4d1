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

The names are loaded lazily (PEP 562 module `__getattr__`): importing the
package, or a JAX-free submodule such as `deepaa_jax.pil`, imports no JAX.
`from deepaa_jax import search_layer` imports `deepaa_jax.search` (and JAX)
on first use, exactly as an eager import would.
"""

import importlib

__version__ = "0.1.0"

# Public name -> the submodule that defines it (None: the name is the
# submodule itself).
_SOURCES = {
    "ops": None,
    "Policy": "policy",
    "apply_policy": "policy",
    "baseline": "policy",
    "load_official_npz": "policy",
    "load_policy": "policy",
    "make_policy": "policy",
    "save_policy": "policy",
    "make_search_data": "search",
    "make_search_model": "search",
    "search_layer": "search",
    "SearchSpace": "space",
    "apply_all": "space",
    "apply_chain": "space",
    "apply_chain_batch": "space",
    "apply_transform": "space",
    "cifar_space": "space",
    "get_space": "space",
    "imagenet_space": "space",
}

__all__ = tuple(_SOURCES)


def __getattr__(name):
  """Imports a public name's module on first use and caches the name."""
  if name not in _SOURCES:
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
  module = importlib.import_module(f"{__name__}.{_SOURCES[name] or name}")
  value = module if _SOURCES[name] is None else getattr(module, name)
  globals()[name] = value
  return value


def __dir__():
  return sorted(set(globals()) | set(__all__))
