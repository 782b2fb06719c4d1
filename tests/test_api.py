"""API conventions by introspection (as dm-pix's api_test.py does).

* Random functions take the PRNG key first, and call it `key` (never `rng`).
* Options (parameters with defaults) are keyword-only.
* Everything in `deepaa_jax.__all__` exists and is documented.
"""

import inspect
import types

import pytest

import deepaa_jax
from deepaa_jax import ops
from deepaa_jax import policy
from deepaa_jax import space

_MODULES = [ops, policy, space]


def _public_functions():
  for module in _MODULES + [deepaa_jax]:
    for name, obj in vars(module).items():
      if name.startswith("_") or not inspect.isfunction(obj):
        continue
      if obj.__module__ != module.__name__ and module is not deepaa_jax:
        continue  # re-exports are checked where they are defined
      yield f"{module.__name__}.{name}", obj


FUNCTIONS = sorted(dict(_public_functions()).items())


@pytest.mark.parametrize("qualname,fn", FUNCTIONS, ids=[q for q, _ in FUNCTIONS])
def test_key_first_and_named_key(qualname, fn):
  params = list(inspect.signature(fn).parameters)
  assert "rng" not in params, f"{qualname}: call the PRNG key `key`"
  if "key" in params:
    assert params[0] == "key", f"{qualname}: `key` must be the first argument"


@pytest.mark.parametrize("qualname,fn", FUNCTIONS, ids=[q for q, _ in FUNCTIONS])
def test_options_are_keyword_only(qualname, fn):
  for p in inspect.signature(fn).parameters.values():
    if p.default is not inspect.Parameter.empty:
      assert p.kind == inspect.Parameter.KEYWORD_ONLY, (
          f"{qualname}: option `{p.name}` must be keyword-only")


@pytest.mark.parametrize("qualname,fn", FUNCTIONS, ids=[q for q, _ in FUNCTIONS])
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
