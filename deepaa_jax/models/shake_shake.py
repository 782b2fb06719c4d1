"""Shake-Shake ResNet for CIFAR (Gastaldi, 2017), as in the authors' code.

Follows `DeepAA_evaluate/networks/shakeshake/shake_resnet.py` and
`shakeshake.py` of github.com/MSU-MLSys-Lab/DeepAA:

  stem:   conv3x3(16) with bias, no BN
  stages: widths w / 2w / 4w, n = (depth - 2) / 6 blocks each, strides 1/2/2
  block:  out = shortcut(x) + mix(branch1(x), branch2(x)), each branch
          relu -> conv3x3(stride) -> bn -> relu -> conv3x3 -> bn, convs without
          bias; the shortcut is the identity when channels match, else
          relu -> two 1x1 convs of width out/2 on x[::s, ::s] and on x shifted
          by one pixel (x[1:, 1:] zero-padded at the end) -> concat -> bn
  head:   relu -> global average pool -> dense

Shake-shake mixing, per example b (coefficients broadcast over H, W, C):
  train: forward  alpha_b * h1 + (1 - alpha_b) * h2,  alpha_b ~ U[0, 1)
         backward dL/dh1 = beta_b * g, dL/dh2 = (1 - beta_b) * g, with an
         independent beta_b ~ U[0, 1)   ("Shake-Shake-Image")
  eval:  0.5 * h1 + 0.5 * h2 (no custom gradient, so forward-mode AD works)

**Randomness:** in train mode every block draws alpha and beta from the flax
rng stream `"shake"`:
  `model.apply(variables, x, train=True, rngs={"shake": key},
  mutable=["batch_stats"])`.
Eval mode needs no rng. Each block also sows its coefficients, float32[B],
as `intermediates/<block>/shake_alpha` and `.../shake_beta` (recorded only
when `intermediates` is mutable).

Initialisation as the authors': conv kernels N(0, 2 / (kh * kw * out)), the
stem bias and the dense kernel PyTorch-default, dense bias 0, BN scale 1 and
bias 0, BN momentum 0.9 (torch 0.1) and eps 1e-5.

BatchNorm modules are named `bn*` so `deepaa_jax.models.bn_param_mask` finds
them.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from deepaa_jax.models import utils

Dtype = Any


@jax.custom_vjp
def shake_shake_mix(x1, x2, alpha, beta):
  """Shake-shake mix: forward with `alpha`, backward with `beta`.

  Args:
    x1: float[B, ...], first branch output.
    x2: float[B, ...], second branch output (same shape/dtype as x1).
    alpha: float[B, 1, ..., 1] (broadcastable to x1) in [0, 1], forward
      coefficient.
    beta: like alpha, backward coefficient.

  Returns:
    alpha * x1 + (1 - alpha) * x2. Its VJP sends cotangent g to
    (beta * g, (1 - beta) * g) and zero to alpha and beta.
  """
  return alpha * x1 + (1 - alpha) * x2


def _shake_shake_fwd(x1, x2, alpha, beta):
  return shake_shake_mix(x1, x2, alpha, beta), (alpha, beta)


def _shake_shake_bwd(res, g):
  alpha, beta = res
  # The coefficients are random draws, not learnable: their cotangent is 0.
  return (beta * g, (1 - beta) * g, jnp.zeros_like(alpha), jnp.zeros_like(beta))


shake_shake_mix.defvjp(_shake_shake_fwd, _shake_shake_bwd)


def _bn(train: bool, dtype: Dtype, name: str) -> nn.BatchNorm:
  return nn.BatchNorm(use_running_average=not train, momentum=0.9,
                      epsilon=1e-5, dtype=dtype, param_dtype=jnp.float32,
                      name=name)


def _conv(features: int, kernel: int, stride: int, dtype: Dtype, name: str):
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=utils.torch_padding(kernel), use_bias=False,
                 kernel_init=utils.torch_he_normal_fan_out, dtype=dtype,
                 param_dtype=jnp.float32, name=name)


class ShakeBranch(nn.Module):
  """relu -> conv3x3(stride) -> bn -> relu -> conv3x3 -> bn."""
  features: int
  stride: int = 1
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    x = nn.relu(x)
    x = _conv(self.features, 3, self.stride, self.dtype, "conv1")(x)
    x = nn.relu(_bn(train, self.dtype, "bn1")(x))
    x = _conv(self.features, 3, 1, self.dtype, "conv2")(x)
    return _bn(train, self.dtype, "bn2")(x)


class ShakeShortcut(nn.Module):
  """Projection shortcut: two half-width 1x1 convs on offset subsamplings."""
  features: int
  stride: int = 1
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    h = nn.relu(x)
    s = self.stride
    h1 = h[:, ::s, ::s, :]
    # torch F.pad(h, (-1, 1, -1, 1)): drop the first row/column, append a zero
    # one; the second path thus sees the pixels the first path skips.
    h2 = jnp.pad(h[:, 1:, 1:, :], ((0, 0), (0, 1), (0, 1), (0, 0)))
    h2 = h2[:, ::s, ::s, :]
    h1 = _conv(self.features // 2, 1, 1, self.dtype, "conv1")(h1)
    h2 = _conv(self.features // 2, 1, 1, self.dtype, "conv2")(h2)
    return _bn(train, self.dtype, "bn")(jnp.concatenate([h1, h2], axis=-1))


class ShakeBlock(nn.Module):
  """Two-branch residual block with shake-shake mixing.

  Attributes:
    features: output channels.
    stride: spatial stride (first block of a stage).
    dtype: computation dtype.
  """
  features: int
  stride: int = 1
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    """x: dtype[B, H, W, C_in] -> dtype[B, H/stride, W/stride, features]."""
    h1 = ShakeBranch(self.features, self.stride, self.dtype,
                     name="branch1")(x, train=train)
    h2 = ShakeBranch(self.features, self.stride, self.dtype,
                     name="branch2")(x, train=train)
    if train:
      key_alpha, key_beta = jax.random.split(self.make_rng("shake"))
      batch = x.shape[0]
      alpha = jax.random.uniform(key_alpha, (batch,), jnp.float32)
      beta = jax.random.uniform(key_beta, (batch,), jnp.float32)
      self.sow("intermediates", "shake_alpha", alpha)
      self.sow("intermediates", "shake_beta", beta)
      coef = lambda c: c.reshape((batch, 1, 1, 1)).astype(h1.dtype)
      h = shake_shake_mix(h1, h2, coef(alpha), coef(beta))
    else:
      h = 0.5 * h1 + 0.5 * h2
    if x.shape[-1] == self.features and self.stride == 1:
      shortcut = x
    else:
      shortcut = ShakeShortcut(self.features, self.stride, self.dtype,
                               name="shortcut")(x, train=train)
    return h + shortcut


class ShakeShake(nn.Module):
  """Shake-Shake-depth-2xw for 32x32 inputs (26 2x96d by default).

  Attributes:
    depth: 6n + 2 (26 gives n = 4 blocks per stage).
    base_width: w, the width of the first stage (stages w, 2w, 4w).
    num_classes: logits dimension.
    dtype: computation dtype; parameters and logits stay float32.
  """
  depth: int = 26
  base_width: int = 96
  num_classes: int = 10
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    """Computes logits.

    Args:
      x: float32[B, H, W, 3], standardised images.
      train: shake-shake mixing (needs the `"shake"` rng) and batch-statistic
        BN (make `batch_stats` mutable) when True; 0.5/0.5 mixing and running
        BN statistics, per-example independent, when False.

    Returns:
      float32[B, num_classes] logits.
    """
    if (self.depth - 2) % 6 != 0 or self.depth < 8:
      raise ValueError(
          f"ShakeShake.depth must be 6n+2 with n >= 1, got {self.depth}")
    n = (self.depth - 2) // 6
    x = jnp.asarray(x, self.dtype)
    x = nn.Conv(16, (3, 3), padding=utils.torch_padding(3), use_bias=True,
                kernel_init=utils.torch_he_normal_fan_out,
                bias_init=utils.torch_default_bias_init(x.shape[-1] * 9),
                dtype=self.dtype, param_dtype=jnp.float32,
                name="conv_stem")(x)
    w = self.base_width
    for s, (width, stride) in enumerate(zip((w, 2 * w, 4 * w), (1, 2, 2))):
      for b in range(n):
        x = ShakeBlock(width, stride if b == 0 else 1, self.dtype,
                       name=f"stage{s + 1}_block{b + 1}")(x, train=train)
    x = jnp.mean(nn.relu(x), axis=(1, 2))
    x = nn.Dense(self.num_classes,
                 kernel_init=utils.torch_default_kernel_init,
                 bias_init=nn.initializers.zeros, dtype=self.dtype,
                 param_dtype=jnp.float32, name="head")(x)
    return jnp.asarray(x, jnp.float32)


def shake_shake_26_2x96d(*, num_classes: int = 10, dtype: Dtype = jnp.float32,
                         **kwargs) -> ShakeShake:
  """Shake-Shake 26 2x96d (26,192,906 parameters at 10 classes)."""
  return ShakeShake(depth=26, base_width=96, num_classes=num_classes,
                    dtype=dtype, **kwargs)
