"""Networks for DeepAA search and evaluation, and parameter helpers.

Every model is a `flax.linen.Module` called as `model.apply(variables, x,
train=...)` with `x: float32[B, H, W, 3]` standardised images and returning
`float32[B, num_classes]` logits (the computation may run in `dtype`, e.g.
bfloat16). BatchNorm state lives in the `batch_stats` collection; BN uses
running averages when `train=False`, which makes each example's logits
independent of the rest of the batch. Shake-Shake additionally needs a
`"shake"` rng in train mode.

Typical use:

  model = get_model("wrn_28_10", num_classes=10)
  variables = model.init(key, jnp.zeros((1, 32, 32, 3)), train=False)
  logits, updates = model.apply(variables, images, train=True,
                                mutable=["batch_stats"])

On CPU, XLA spends ~0.1-0.5 s compiling each random initialiser with the
default threefry keys, so `init` of even WRN-10-1 compiles for ~15 s; CPU
tests can init once and share the variables, or use
`jax.random.key(seed, impl="unsafe_rbg")` (~2 s).
"""

import re
from typing import Any, Callable, Dict, Optional, Tuple

import flax.linen as nn
import jax.numpy as jnp

from deepaa_jax.models.resnet import ResNet
from deepaa_jax.models.resnet import resnet18
from deepaa_jax.models.resnet import resnet200
from deepaa_jax.models.resnet import resnet50
from deepaa_jax.models.shake_shake import ShakeShake
from deepaa_jax.models.shake_shake import shake_shake_mix
from deepaa_jax.models.shake_shake import shake_shake_26_2x96d
from deepaa_jax.models.utils import bn_param_mask
from deepaa_jax.models.utils import count_params
from deepaa_jax.models.utils import merge_bn
from deepaa_jax.models.utils import split_bn
from deepaa_jax.models.wide_resnet import WideResNet
from deepaa_jax.models.wide_resnet import wrn_10_1
from deepaa_jax.models.wide_resnet import wrn_28_10
from deepaa_jax.models.wide_resnet import wrn_40_2


def _variant(factory, variant):
  return lambda **kw: factory(variant=variant, **kw)


# name -> factory(*, num_classes, dtype, **kwargs).
_REGISTRY: Dict[str, Callable[..., nn.Module]] = {
    # PyTorch evaluation networks (DeepAA_evaluate/networks).
    "wrn_28_10": _variant(wrn_28_10, "eval"),
    "wrn_40_2": _variant(wrn_40_2, "eval"),
    "wrn_10_1": _variant(wrn_10_1, "eval"),
    "shake_shake_26_2x96d": shake_shake_26_2x96d,
    "resnet18": resnet18,
    "resnet50": resnet50,
    "resnet200": resnet200,
    # TF/Keras search networks (resnet.py); WRN-40-2 is the one DeepAA uses.
    "wrn_40_2_search": _variant(wrn_40_2, "search"),
    "wrn_28_10_search": _variant(wrn_28_10, "search"),
    "wrn_10_1_search": _variant(wrn_10_1, "search"),
}

MODEL_NAMES = tuple(sorted(_REGISTRY))
# WideResNets of any depth 6n+4 >= 10 and width k, beyond the registered
# names: "wrn_16_4" is WRN-16-4 (PyTorch eval flavour), "wrn_16_4_search" the
# Keras one.
_WRN_PATTERN = re.compile(r"^wrn_(\d+)_(\d+)(_search)?$")


def wrn_spec(name: str) -> Optional[Tuple[int, int, str]]:
  """(depth, widen_factor, "eval" | "search") of a valid "wrn_<d>_<k>[_search]"
  name (depth = 6n + 4 >= 10, k >= 1), else None."""
  match = _WRN_PATTERN.match(name)
  if not match:
    return None
  depth, width = int(match.group(1)), int(match.group(2))
  if depth < 10 or (depth - 4) % 6 or width < 1:
    return None
  return depth, width, "search" if match.group(3) else "eval"


_RESNET_PATTERN = re.compile(r"^(resnet(?:18|50|200))_w(\d+)$")


def resnet_spec(name: str) -> Optional[Tuple[str, int]]:
  """(registered ResNet, base width) of a "resnet<18|50|200>_w<N>" name: the
  same ResNet with N planes in its first stage instead of 64 (narrow
  networks for CPU tests and small configs), else None."""
  match = _RESNET_PATTERN.match(name)
  if not match or int(match.group(2)) < 1:
    return None
  return match.group(1), int(match.group(2))


def is_known_model(name: str) -> bool:
  """Whether `get_model` builds `name`."""
  return (name in _REGISTRY or wrn_spec(name) is not None
          or resnet_spec(name) is not None)


def get_model(name: str, *, num_classes: int, dtype: Any = jnp.float32,
              **kwargs) -> nn.Module:
  """Builds a model by name.

  Args:
    name: one of `MODEL_NAMES`, "wrn_<depth>_<k>[_search]" for any
      WideResNet with depth = 6n + 4 >= 10, or "resnet<18|50|200>_w<N>" for
      a ResNet of base width N.
    num_classes: logits dimension (10 / 100 for CIFAR, 1000 for ImageNet).
    dtype: computation dtype (parameters and logits stay float32).
    **kwargs: extra module fields, e.g. `dropout_rate` for WRNs or
      `base_width` for ResNets.

  Returns:
    An unbound flax module; call it with `train=` keyword.

  Raises:
    ValueError: for an unknown name; the message lists the valid ones.
  """
  if name in _REGISTRY:
    return _REGISTRY[name](num_classes=num_classes, dtype=dtype, **kwargs)
  narrow = resnet_spec(name)
  if narrow is not None:
    return _REGISTRY[narrow[0]](num_classes=num_classes, dtype=dtype,
                                base_width=narrow[1], **kwargs)
  spec = wrn_spec(name)
  if spec is None:
    raise ValueError(
        f"Unknown model {name!r}; valid names: {', '.join(MODEL_NAMES)}, or "
        "'wrn_<depth>_<k>[_search]' with depth = 6n+4 >= 10, or "
        "'resnet<18|50|200>_w<base width>'")
  depth, width, variant = spec
  return WideResNet(depth=depth, widen_factor=width, num_classes=num_classes,
                    variant=variant, dtype=dtype, **kwargs)


__all__ = [
    "MODEL_NAMES",
    "ResNet",
    "ShakeShake",
    "WideResNet",
    "bn_param_mask",
    "count_params",
    "get_model",
    "is_known_model",
    "merge_bn",
    "resnet18",
    "resnet200",
    "resnet50",
    "resnet_spec",
    "shake_shake_mix",
    "shake_shake_26_2x96d",
    "split_bn",
    "wrn_10_1",
    "wrn_28_10",
    "wrn_40_2",
    "wrn_spec",
]
