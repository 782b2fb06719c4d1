"""Wide ResNets (Zagoruyko & Komodakis, 2016) in the two flavours DeepAA uses.

`variant="search"` reproduces the authors' TF/Keras network used for policy
search (`resnet.py:16-236` of github.com/MSU-MLSys-Lab/DeepAA; spec §2.3);
`variant="eval"` reproduces their PyTorch evaluation network
(`DeepAA_evaluate/networks/wideresnet.py`; spec §4.4). Both share the block
topology and therefore the parameter shapes and counts:

  stem:   conv3x3(16)
  groups: widths 16k / 32k / 64k, n = (depth - 4) / 6 blocks each,
          strides 1 / 2 / 2 (applied in the group's first block)
  block:  out = conv3x3(relu(bn2(conv3x3(relu(bn1(x))))), stride)  [stride on
          the SECOND conv] + shortcut(x), where the shortcut is the raw block
          input x (not the pre-activated one), or a 1x1 conv with the block
          stride and a bias (no BN) when the shape changes
  head:   bn -> relu -> global average pool -> dense

Every conv has a bias. The variants differ only in details:

| | search (Keras) | eval (PyTorch) |
|---|---|---|
| conv kernel init | he_normal (truncated, fan_in) | kaiming_uniform(a=√5) |
| conv bias init | zeros | U(±1/√fan_in) |
| dense init | glorot_uniform, bias 0 | kaiming_uniform(a=√5), U(±1/√fan_in) |
| BN | momentum 0.9, eps 1e-3 | momentum 0.9 (torch 0.1), eps 1e-5 |
| 3x3 stride-2 padding | TF 'SAME' (0 before, 1 after) | symmetric 1 |

The last row matters: at stride 2, TF 'SAME' samples output pixel i at input
centre 2i+1 and PyTorch's `padding=1` at 2i, so weights ported between the two
would not give the same activations. Dropout (between conv1 and bn2, as in both
sources) is 0 in every DeepAA config and needs a `dropout` rng when > 0.

Not part of the model but easy to get wrong when pretraining the search
network: the Keras L2 (2.5e-4, i.e. weight decay 5e-4) covers every conv kernel
and bias and the dense kernel, but neither the dense bias nor BN.

One unavoidable difference from both sources: flax updates the BN running
variance with the biased batch variance, PyTorch with the unbiased one (a factor
n/(n-1) with n = B*H*W >= 8192 for CIFAR batches of 128, i.e. < 0.02 %).

BatchNorm modules are named `bn*` so `deepaa_jax.models.bn_param_mask` finds
them.
"""

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from deepaa_jax.models import utils

Dtype = Any

VARIANTS = ("search", "eval")


def _check_variant(variant: str) -> None:
  if variant not in VARIANTS:
    raise ValueError(
        f"WideResNet.variant must be one of {VARIANTS}, got {variant!r}")


def _conv(x, features: int, kernel: int, stride: int, *, variant: str,
          dtype: Dtype, name: str):
  """A biased conv with the variant's padding and initialisers."""
  if variant == "search":
    padding = "SAME"
    kernel_init = nn.initializers.he_normal()  # = Keras 'he_normal'
    bias_init = nn.initializers.zeros
  else:
    padding = utils.torch_padding(kernel)
    kernel_init = utils.torch_default_kernel_init
    bias_init = utils.torch_default_bias_init(x.shape[-1] * kernel * kernel)
  return nn.Conv(
      features, (kernel, kernel), strides=(stride, stride), padding=padding,
      use_bias=True, kernel_init=kernel_init, bias_init=bias_init,
      dtype=dtype, param_dtype=jnp.float32, name=name)(x)


def _bn(variant: str, train: bool, dtype: Dtype, name: str) -> nn.BatchNorm:
  # Keras momentum 0.9 and PyTorch momentum 0.1 both keep 0.9 of the old
  # running statistic, which is flax's convention.
  return nn.BatchNorm(
      use_running_average=not train, momentum=0.9,
      epsilon=1e-3 if variant == "search" else 1e-5,
      dtype=dtype, param_dtype=jnp.float32, name=name)


class WideBasicBlock(nn.Module):
  """Pre-activation wide basic block, stride on the second conv.

  Attributes:
    features: output channels.
    stride: spatial stride of the block (1 or 2), applied by conv2 and by the
      1x1 shortcut conv.
    variant: "search" or "eval" (see module docstring).
    dropout_rate: dropout between conv1 and bn2.
    dtype: computation dtype.
  """
  features: int
  stride: int = 1
  variant: str = "eval"
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    """x: dtype[B, H, W, C_in] -> dtype[B, H/stride, W/stride, features]."""
    conv = functools.partial(_conv, variant=self.variant, dtype=self.dtype)
    out = nn.relu(_bn(self.variant, train, self.dtype, "bn1")(x))
    out = conv(out, self.features, 3, 1, name="conv1")
    if self.dropout_rate > 0:
      out = nn.Dropout(self.dropout_rate, deterministic=not train)(out)
    out = nn.relu(_bn(self.variant, train, self.dtype, "bn2")(out))
    out = conv(out, self.features, 3, self.stride, name="conv2")
    # The shortcut reads the raw input x, not relu(bn1(x)): Keras
    # `preact_shortcuts=False` and PyTorch `self.shortcut(x)` agree.
    if self.stride != 1 or x.shape[-1] != self.features:
      x = conv(x, self.features, 1, self.stride, name="shortcut_conv")
    return out + x


class WideResNet(nn.Module):
  """WRN-depth-k for 32x32 inputs (any depth = 6n + 4, any width k).

  Attributes:
    depth: total conv depth, 6n + 4 (e.g. 28, 40).
    widen_factor: k; group widths are 16k, 32k, 64k.
    num_classes: logits dimension.
    variant: "search" (authors' TF/Keras search network) or "eval" (authors'
      PyTorch evaluation network); see the module docstring.
    dropout_rate: dropout inside each block (0 in DeepAA).
    dtype: computation dtype (e.g. jnp.bfloat16); parameters stay float32 and
      the logits are returned in float32.
  """
  depth: int = 28
  widen_factor: int = 10
  num_classes: int = 10
  variant: str = "eval"
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    """Computes logits.

    Args:
      x: float32[B, H, W, 3], standardised images (H = W = 32 for CIFAR).
      train: BN uses batch statistics and updates `batch_stats` (make it
        mutable) when True; running averages when False, in which case
        example i's logits depend only on example i.

    Returns:
      float32[B, num_classes] logits.
    """
    _check_variant(self.variant)
    if (self.depth - 4) % 6 != 0 or self.depth < 10:
      raise ValueError(
          f"WideResNet.depth must be 6n+4 with n >= 1, got {self.depth}")
    n = (self.depth - 4) // 6
    k = self.widen_factor
    x = jnp.asarray(x, self.dtype)
    x = _conv(x, 16, 3, 1, variant=self.variant, dtype=self.dtype,
              name="conv_stem")
    for g, (width, stride) in enumerate(zip((16 * k, 32 * k, 64 * k),
                                            (1, 2, 2))):
      for b in range(n):
        x = WideBasicBlock(
            features=width, stride=stride if b == 0 else 1,
            variant=self.variant, dropout_rate=self.dropout_rate,
            dtype=self.dtype, name=f"group{g + 1}_block{b + 1}")(
                x, train=train)
    x = nn.relu(_bn(self.variant, train, self.dtype, "bn_final")(x))
    x = jnp.mean(x, axis=(1, 2))
    if self.variant == "search":
      kernel_init = nn.initializers.glorot_uniform()  # Keras Dense default
      bias_init = nn.initializers.zeros
    else:
      kernel_init = utils.torch_default_kernel_init
      bias_init = utils.torch_default_bias_init(x.shape[-1])
    x = nn.Dense(self.num_classes, kernel_init=kernel_init,
                 bias_init=bias_init, dtype=self.dtype,
                 param_dtype=jnp.float32, name="head")(x)
    return jnp.asarray(x, jnp.float32)


def wrn_28_10(*, num_classes: int = 10, variant: str = "eval",
              dtype: Dtype = jnp.float32, **kwargs) -> WideResNet:
  """WRN-28-10, the CIFAR evaluation network: 36,489,290 parameters (C10)."""
  return WideResNet(depth=28, widen_factor=10, num_classes=num_classes,
                    variant=variant, dtype=dtype, **kwargs)


def wrn_40_2(*, num_classes: int = 10, variant: str = "eval",
             dtype: Dtype = jnp.float32, **kwargs) -> WideResNet:
  """WRN-40-2: 2,246,474 parameters (C10); `variant="search"` searches."""
  return WideResNet(depth=40, widen_factor=2, num_classes=num_classes,
                    variant=variant, dtype=dtype, **kwargs)


def wrn_10_1(*, num_classes: int = 10, variant: str = "eval",
             dtype: Dtype = jnp.float32, **kwargs) -> WideResNet:
  """WRN-10-1 (78,186 parameters): a CPU-sized stand-in for tests and demos.

  One block per group (the smallest WRN). Measured with jax 0.10.2 on 2 CPU
  cores, float32, jitted, batch of 128 32x32 images: forward + backward in
  train mode ≈ 0.6 s (WRN-16-1: ≈ 0.95 s), eval-mode forward ≈ 0.07 s; first
  call (compile) ≈ 3 s. Compiling `init` is the slow part on CPU: ≈ 15 s with
  default (threefry) keys, ≈ 2 s with `jax.random.key(s, impl="unsafe_rbg")`.
  """
  return WideResNet(depth=10, widen_factor=1, num_classes=num_classes,
                    variant=variant, dtype=dtype, **kwargs)
