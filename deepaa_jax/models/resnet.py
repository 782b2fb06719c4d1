"""ImageNet ResNets as in the authors' PyTorch evaluation code.

Follows `DeepAA_evaluate/networks/resnet.py` of github.com/MSU-MLSys-Lab/DeepAA
(itself torchvision's layout, "ResNet v1.5"):

  stem:   conv7x7/2(64) -> bn -> relu -> maxpool3x3/2 (padding 1)
  stages: 64 / 128 / 256 / 512 planes, strides 1 / 2 / 2 / 2
  basic:       conv3x3(stride) -> bn -> relu -> conv3x3 -> bn (+ shortcut, relu)
  bottleneck:  conv1x1 -> bn -> relu -> conv3x3(STRIDE) -> bn -> relu
               -> conv1x1(4x) -> bn                          (+ shortcut, relu)
  shortcut:    identity, or conv1x1(stride) -> bn when the shape changes
  head:   global average pool -> dense

The stride of a bottleneck sits on the 3x3 conv, not on the first 1x1. The
**last BN of every residual block has gamma = 0 at init** (spec §4.4), so each
block starts as the identity; the shortcut BN keeps gamma = 1. Convs have no
bias and N(0, 2 / (kh * kw * out)) kernels; the dense layer uses PyTorch's
default init; BN momentum 0.9 (torch 0.1), eps 1e-5; padding is PyTorch's
symmetric `k // 2`.

BatchNorm modules are named `bn*` so `deepaa_jax.models.bn_param_mask` finds
them.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from deepaa_jax.models import utils

Dtype = Any

BLOCK_KINDS = ("basic", "bottleneck")


def _conv(features: int, kernel: int, stride: int, dtype: Dtype, name: str):
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=utils.torch_padding(kernel), use_bias=False,
                 kernel_init=utils.torch_he_normal_fan_out, dtype=dtype,
                 param_dtype=jnp.float32, name=name)


def _bn(train: bool, dtype: Dtype, name: str, zero_init: bool = False):
  return nn.BatchNorm(
      use_running_average=not train, momentum=0.9, epsilon=1e-5,
      scale_init=nn.initializers.zeros if zero_init else nn.initializers.ones,
      dtype=dtype, param_dtype=jnp.float32, name=name)


def _shortcut(x, out_features: int, stride: int, train: bool, dtype: Dtype):
  if stride == 1 and x.shape[-1] == out_features:
    return x
  x = _conv(out_features, 1, stride, dtype, "downsample_conv")(x)
  return _bn(train, dtype, "bn_downsample")(x)


class BasicBlock(nn.Module):
  """Two 3x3 convs; output channels = planes.

  Attributes:
    planes: block width.
    stride: stride of the first 3x3 conv (and of the shortcut).
    dtype: computation dtype.
  """
  planes: int
  stride: int = 1
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    """x: dtype[B, H, W, C] -> dtype[B, H/stride, W/stride, planes]."""
    out = _conv(self.planes, 3, self.stride, self.dtype, "conv1")(x)
    out = nn.relu(_bn(train, self.dtype, "bn1")(out))
    out = _conv(self.planes, 3, 1, self.dtype, "conv2")(out)
    out = _bn(train, self.dtype, "bn2", zero_init=True)(out)
    return nn.relu(out + _shortcut(x, self.planes, self.stride, train,
                                   self.dtype))


class Bottleneck(nn.Module):
  """1x1 -> 3x3(stride) -> 1x1 bottleneck; output channels = 4 * planes.

  Attributes:
    planes: bottleneck width.
    stride: stride of the 3x3 conv (and of the shortcut).
    dtype: computation dtype.
  """
  planes: int
  stride: int = 1
  dtype: Dtype = jnp.float32

  expansion = 4

  @nn.compact
  def __call__(self, x, *, train: bool):
    """x: dtype[B, H, W, C] -> dtype[B, H/stride, W/stride, 4 * planes]."""
    out_features = self.planes * self.expansion
    out = _conv(self.planes, 1, 1, self.dtype, "conv1")(x)
    out = nn.relu(_bn(train, self.dtype, "bn1")(out))
    out = _conv(self.planes, 3, self.stride, self.dtype, "conv2")(out)
    out = nn.relu(_bn(train, self.dtype, "bn2")(out))
    out = _conv(out_features, 1, 1, self.dtype, "conv3")(out)
    out = _bn(train, self.dtype, "bn3", zero_init=True)(out)
    return nn.relu(out + _shortcut(x, out_features, self.stride, train,
                                   self.dtype))


class ResNet(nn.Module):
  """ImageNet ResNet.

  Attributes:
    stage_sizes: blocks per stage, e.g. (3, 4, 6, 3) for ResNet-50.
    block: "basic" or "bottleneck".
    num_classes: logits dimension.
    base_width: planes of the first stage (64 in every published ResNet;
      smaller values only for tests).
    dtype: computation dtype; parameters and logits stay float32.
  """
  stage_sizes: Sequence[int]
  block: str = "bottleneck"
  num_classes: int = 1000
  base_width: int = 64
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    """Computes logits.

    Args:
      x: float32[B, H, W, 3], standardised images (224x224 for ImageNet; any
        size >= 32 works thanks to the global pool).
      train: batch-statistic BN (make `batch_stats` mutable) when True;
        running statistics, per-example independent, when False.

    Returns:
      float32[B, num_classes] logits.
    """
    if self.block not in BLOCK_KINDS:
      raise ValueError(
          f"ResNet.block must be one of {BLOCK_KINDS}, got {self.block!r}")
    block_cls = BasicBlock if self.block == "basic" else Bottleneck
    x = jnp.asarray(x, self.dtype)
    x = _conv(self.base_width, 7, 2, self.dtype, "conv_stem")(x)
    x = nn.relu(_bn(train, self.dtype, "bn_stem")(x))
    # lax.reduce_window pads max-pool inputs with -inf, like torch MaxPool2d.
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for s, num_blocks in enumerate(self.stage_sizes):
      for b in range(num_blocks):
        stride = 2 if s > 0 and b == 0 else 1
        x = block_cls(self.base_width * 2**s, stride, self.dtype,
                      name=f"stage{s + 1}_block{b + 1}")(x, train=train)
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dense(self.num_classes,
                 kernel_init=utils.torch_default_kernel_init,
                 bias_init=utils.torch_default_bias_init(x.shape[-1]),
                 dtype=self.dtype, param_dtype=jnp.float32, name="head")(x)
    return jnp.asarray(x, jnp.float32)


def resnet18(*, num_classes: int = 1000, dtype: Dtype = jnp.float32,
             **kwargs) -> ResNet:
  """ResNet-18, basic blocks (11,689,512 parameters at 1000 classes)."""
  return ResNet(stage_sizes=(2, 2, 2, 2), block="basic",
                num_classes=num_classes, dtype=dtype, **kwargs)


def resnet50(*, num_classes: int = 1000, dtype: Dtype = jnp.float32,
             **kwargs) -> ResNet:
  """ResNet-50, bottleneck blocks (25,557,032 parameters at 1000 classes)."""
  return ResNet(stage_sizes=(3, 4, 6, 3), block="bottleneck",
                num_classes=num_classes, dtype=dtype, **kwargs)


def resnet200(*, num_classes: int = 1000, dtype: Dtype = jnp.float32,
              **kwargs) -> ResNet:
  """ResNet-200, bottleneck blocks (3, 24, 36, 3) (64,673,832 parameters)."""
  return ResNet(stage_sizes=(3, 24, 36, 3), block="bottleneck",
                num_classes=num_classes, dtype=dtype, **kwargs)
