"""API conventions by introspection (as dm-pix's api_test.py does).

* Random functions take the PRNG key first, and call it `key` (never `rng`).
* Options (parameters with defaults) are keyword-only.
* Everything in `deepaa_jax.__all__` exists and is documented.
* The package `__init__` is lazy: `import deepaa_jax.pil` imports no JAX.
"""

import inspect
import subprocess
import sys
import types

import pytest

import deepaa_jax
from deepaa_jax import ops
from deepaa_jax import policy
from deepaa_jax import space

_MODULES = [ops, policy, space]


def _public_functions():
  # The package's names are lazy (module `__getattr__`), so they are read
  # through `__all__`, not `vars`.
  package = {name: getattr(deepaa_jax, name) for name in deepaa_jax.__all__}
  for module in _MODULES + [deepaa_jax]:
    names = package if module is deepaa_jax else vars(module)
    for name, obj in names.items():
      if name.startswith("_") or not inspect.isfunction(obj):
        continue
      if obj.__module__ != module.__name__ and module is not deepaa_jax:
        continue  # re-exports are checked where they are defined
      yield f"{module.__name__}.{name}", obj


FUNCTIONS = sorted(dict(_public_functions()).items())
_IDS = [q for q, _ in FUNCTIONS]


@pytest.mark.parametrize("qualname,fn", FUNCTIONS, ids=_IDS)
def test_key_first_and_named_key(qualname, fn):
  params = list(inspect.signature(fn).parameters)
  assert "rng" not in params, f"{qualname}: call the PRNG key `key`"
  if "key" in params:
    assert params[0] == "key", f"{qualname}: `key` must be the first argument"


@pytest.mark.parametrize("qualname,fn", FUNCTIONS, ids=_IDS)
def test_options_are_keyword_only(qualname, fn):
  for p in inspect.signature(fn).parameters.values():
    if p.default is not inspect.Parameter.empty:
      assert p.kind == inspect.Parameter.KEYWORD_ONLY, (
          f"{qualname}: option `{p.name}` must be keyword-only")


@pytest.mark.parametrize("qualname,fn", FUNCTIONS, ids=_IDS)
def test_public_functions_are_documented(qualname, fn):
  assert fn.__doc__ and fn.__doc__.strip(), f"{qualname} has no docstring"


def test_all_names_exist_and_are_documented():
  for name in deepaa_jax.__all__:
    obj = getattr(deepaa_jax, name)
    if isinstance(obj, types.ModuleType):
      continue
    assert obj.__doc__, name


def test_random_op_samplers_and_appliers_are_paired():
  """Every random op has a sampler (`sample_*`, key first) and a
  deterministic apply that takes the draws (so tests can feed Pillow)."""
  pairs = {"sample_flip": "flip", "sample_cutout_center": "cutout",
           "sample_crop_offsets": "pad_crop",
           "sample_resized_crop_box": "resized_crop"}
  for sampler, apply in pairs.items():
    assert list(inspect.signature(getattr(ops, sampler)).parameters)[0] == "key"
    assert "key" not in inspect.signature(getattr(ops, apply)).parameters


def test_lazy_names_are_the_defining_modules_objects():
  from deepaa_jax import search  # pylint: disable=g-import-not-at-top
  from deepaa_jax import search_layer  # pylint: disable=g-import-not-at-top
  assert search_layer is search.search_layer
  assert deepaa_jax.Policy is policy.Policy
  assert deepaa_jax.ops is ops
  assert set(deepaa_jax.__all__) <= set(dir(deepaa_jax))
  assert "__version__" in dir(deepaa_jax)
  with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
    deepaa_jax.not_a_name  # pylint: disable=pointless-statement


def test_importing_pil_loads_no_jax():
  """A fresh interpreter: the package and `deepaa_jax.pil` import no JAX
  (PyTorch DataLoader workers need only NumPy and Pillow), and the first
  public name used loads it."""
  code = (
      "import sys\n"
      "import deepaa_jax, deepaa_jax.pil\n"
      "assert deepaa_jax.pil.DeepAAPolicy\n"
      "heavy = [m for m in sys.modules if m.split('.')[0] in\n"
      "         ('jax', 'jaxlib', 'flax', 'optax', 'tensorflow')]\n"
      "assert not heavy, heavy\n"
      "from deepaa_jax import cifar_space\n"
      "assert 'jax' in sys.modules and cifar_space().size == 139\n")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True,
                          text=True, timeout=120, check=False)
  assert result.returncode == 0, result.stderr
