"""Parameter helpers and PyTorch-compatible initialisers shared by the models.

BatchNorm detection is structural, by a naming convention that every model in
`deepaa_jax.models` follows: **a BatchNorm module's name starts with `bn`**
(`bn1`, `bn_final`, `bn_shortcut`, ...) and no other module's name does. Its
parameters are the leaves `<...>/bn*/scale` and `<...>/bn*/bias`. Flax's
automatic names (`BatchNorm_0`, ...) are recognised too, so third-party modules
that leave BatchNorm unnamed also work.

Two consumers need the split:
  * evaluation training applies weight decay to every parameter except BN
    scale/bias (`DeepAA_evaluate/train.py:173-185`);
  * the DeepAA search differentiates only w.r.t. conv/dense kernels and
    biases: BN γ/β are frozen and excluded from the gradient space (spec §2.4).
    `split_bn` / `merge_bn` give that space directly.
"""

import math
from typing import Any, Callable, Mapping, Tuple

import jax
import jax.numpy as jnp
from flax import traverse_util
from flax.core import frozen_dict

PyTree = Any
Params = Mapping[str, Any]

# Leaf names that flax.linen.BatchNorm creates in the `params` collection.
_BN_LEAVES = ("scale", "bias")


def is_bn_module_name(name: str) -> bool:
  """Whether `name` is a BatchNorm module name under the convention above."""
  return name.startswith("bn") or name.startswith("BatchNorm_")


def _is_bn_path(path: Tuple[str, ...]) -> bool:
  return (len(path) >= 2 and path[-1] in _BN_LEAVES
          and is_bn_module_name(path[-2]))


def _flatten(params: Params) -> dict:
  if isinstance(params, frozen_dict.FrozenDict):
    params = params.unfreeze()
  return traverse_util.flatten_dict(params)


def _unflatten_like(like: Params, flat: dict):
  # Keep FrozenDict-ness: optax.masked and tree_map need identical pytree types.
  tree = traverse_util.unflatten_dict(flat)
  if isinstance(like, frozen_dict.FrozenDict):
    return frozen_dict.freeze(tree)
  return tree


def bn_param_mask(params: Params) -> PyTree:
  """Marks BatchNorm scale/bias leaves.

  Args:
    params: a nested dict of parameters (the `params` collection of a model
      from `deepaa_jax.models`; leaves may be arrays or `jax.ShapeDtypeStruct`).

  Returns:
    A pytree with the structure of `params` whose leaves are Python bools:
    True for BN scale/bias, False otherwise. Usable as an `optax.masked` mask
    (e.g. negate it for weight decay).
  """
  flat = _flatten(params)
  return _unflatten_like(params, {path: _is_bn_path(path) for path in flat})


def split_bn(params: Params) -> Tuple[Params, Params]:
  """Partitions parameters into (non-BN, BN) nested dicts.

  Each output keeps only its own leaves, at their original paths; modules
  that end up with no leaves are dropped. Outputs are dicts, or FrozenDicts
  if `params` is one. `merge_bn` is the exact inverse.

  Args:
    params: nested dict of parameters.

  Returns:
    `(non_bn, bn)`: `non_bn` holds conv/dense kernels and biases (the DeepAA
    search's gradient space), `bn` holds BN scale/bias.
  """
  flat = _flatten(params)
  non_bn = {p: v for p, v in flat.items() if not _is_bn_path(p)}
  bn = {p: v for p, v in flat.items() if _is_bn_path(p)}
  return _unflatten_like(params, non_bn), _unflatten_like(params, bn)


def merge_bn(non_bn: Params, bn: Params) -> Params:
  """Inverse of `split_bn`: `merge_bn(*split_bn(p))` equals `p` leaf by leaf.

  Args:
    non_bn: first output of `split_bn` (possibly transformed leaf-wise, e.g.
      a gradient or a tangent).
    bn: second output of `split_bn`.

  Returns:
    The full nested parameter dict.

  Raises:
    ValueError: if a path appears in both inputs.
  """
  flat_a, flat_b = _flatten(non_bn), _flatten(bn)
  overlap = flat_a.keys() & flat_b.keys()
  if overlap:
    raise ValueError(
        f"merge_bn: {len(overlap)} paths occur in both inputs, e.g. "
        f"{'/'.join(sorted(overlap)[0])}")
  return _unflatten_like(non_bn, {**flat_a, **flat_b})


def count_params(params: PyTree) -> int:
  """Total number of scalars in `params` (arrays or ShapeDtypeStructs)."""
  return sum(math.prod(getattr(leaf, "shape", None) or jnp.shape(leaf))
             for leaf in jax.tree.leaves(params))


# --- PyTorch default initialisers ---------------------------------------------
# nn.Conv2d / nn.Linear reset_parameters(): kaiming_uniform_(a=sqrt(5)) gives
# U(-b, b) with b = sqrt(6 / ((1 + 5) * fan_in)) = 1/sqrt(fan_in), i.e.
# variance 1/(3 fan_in); the bias is U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

torch_default_kernel_init = jax.nn.initializers.variance_scaling(
    1.0 / 3.0, "fan_in", "uniform")


def torch_default_bias_init(fan_in: int) -> Callable[..., jax.Array]:
  """PyTorch's default bias init, U(±1/sqrt(fan_in)), for a layer's fan-in.

  Flax bias initialisers only see the bias shape, so the fan-in
  (in_channels * kh * kw for a conv, in_features for a dense layer) is bound
  here.
  """
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


# `m.weight.data.normal_(0, sqrt(2 / (kh * kw * out_channels)))`, as in the
# authors' ResNet and Shake-Shake: an untruncated He normal on fan-out.
torch_he_normal_fan_out = jax.nn.initializers.variance_scaling(
    2.0, "fan_out", "normal")


def torch_padding(kernel_size: int) -> Tuple[Tuple[int, int], Tuple[int, int]]:
  """Symmetric `padding=k//2` as in PyTorch (not TF 'SAME' at stride 2)."""
  p = kernel_size // 2
  return ((p, p), (p, p))
