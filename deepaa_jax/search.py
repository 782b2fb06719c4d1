"""The DeepAA policy search: layers stacked one at a time (paper §3.3).

Layer k is a softmax over the |T| = 139 transforms, trained with Adam to
maximise the cosine similarity between each search image's clean,
class-matched validation gradient v and the policy-averaged gradient g of the
image augmented by layers 1..k:

  stage 1 (k = 1): g = G p exactly, over all 139 transforms of the image
    (random ops realised once per image and step); reward = mean over the
    search images (paper Eq. 3-5; spec §2.8).
  stage k >= 2: g from M full-chain samples through layers 1..k (Eq. 8), G
    from E independent prefix samples through layers 1..k-1, each followed by
    all 139 transforms (Eq. 7); reward = mean - c * std over the search
    images (Eq. 9-10; spec §2.9).

Everything runs on the device from (state, key): sampling the search images
and their validation batches, the augmentations (`space.apply_all`,
`space.apply_chain_batch`), the gradients, the JVP rewards and the optax
update. With `loop="scan"` one step is a single compiled function; with
`loop="host"` (the CPU default) the backward passes run as a host loop over a
compiled chunk function, which XLA:CPU executes 15-28x faster. On several
devices (all devices of all processes by default, `config.data_parallel`)
each step is data parallel over the S search images (`_sharded_step`, mesh
from `parallel.make_mesh`) and gives the one-device result up to
floating-point reduction order.

Entry point: `search_layer(...)` trains one layer (what a notebook calls).
The job around it -- pretraining the search network, layers 1..K with
checkpoints and exact resume, outputs -- is `search_job.py`.
"""

import dataclasses
from typing import (Any, Callable, Dict, List, Mapping, NamedTuple, Optional,
                    Tuple)

from absl import logging
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from deepaa_jax import parallel
from deepaa_jax import policy as policy_lib
from deepaa_jax import reward as reward_lib
from deepaa_jax import space as space_lib

Array = jax.Array
PyTree = Any


# --------------------------------------------------------------------------
# The policy optimiser.
# --------------------------------------------------------------------------


class KerasAdamState(NamedTuple):
  count: Array
  mu: PyTree
  nu: PyTree


def scale_by_keras_adam(b1: float = 0.9, b2: float = 0.999,
                        eps: float = 1e-7) -> optax.GradientTransformation:
  """Adam as `tf.keras.optimizers.Adam` computes it (the official optimiser).

  Keras adds epsilon to sqrt(v) BEFORE bias correction: the update is
  sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps), i.e. optax's Adam with
  eps / sqrt(1 - b2^t) ("epsilon hat" of the Adam paper).
  """

  def init(params):
    # Two separate buffers (they may be donated).
    return KerasAdamState(jnp.zeros((), jnp.int32),
                          jax.tree.map(jnp.zeros_like, params),
                          jax.tree.map(jnp.zeros_like, params))

  def update(updates, state, params=None):
    del params
    count = state.count + 1
    mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, updates)
    nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, state.nu,
                      updates)
    t = count.astype(jnp.float32)
    factor = jnp.sqrt(1 - b2 ** t) / (1 - b1 ** t)
    out = jax.tree.map(lambda m, v: factor * m / (jnp.sqrt(v) + eps), mu, nu)
    return out, KerasAdamState(count, mu, nu)

  return optax.GradientTransformation(init, update)


def policy_optimizer(config) -> optax.GradientTransformation:
  """Adam(lr 0.025, 0.9, 0.999, eps 1e-7); Keras or optax epsilon placement.

  `config` is a `config.search` section or a `StepSettings` (same fields).
  """
  if config.adam_style == "keras":
    return optax.chain(
        scale_by_keras_adam(config.adam_b1, config.adam_b2, config.adam_eps),
        optax.scale(-config.policy_lr))
  if config.adam_style == "optax":
    return optax.adam(config.policy_lr, config.adam_b1, config.adam_b2,
                      config.adam_eps)
  raise ValueError("config.search.adam_style must be 'keras' or 'optax', got "
                   f"{config.adam_style!r}")


def initial_logits(num_transforms: int, init: str) -> np.ndarray:
  """float32[T] initial layer logits.

  "identity" (official): [8, 0, ..., 0] minus its mean, so p(Identity) =
  e^8 / (e^8 + 138) = 0.956 (spec §2.5). "uniform": zeros.
  """
  if init == "identity":
    logits = np.zeros(num_transforms, np.float32)
    logits[0] = 8.0
    return logits - logits.mean()
  if init == "uniform":
    return np.zeros(num_transforms, np.float32)
  raise ValueError("config.search.init must be 'identity' or 'uniform', got "
                   f"{init!r}")


# --------------------------------------------------------------------------
# Data: search images and class-matched validation batches, on the device.
# --------------------------------------------------------------------------


@flax.struct.dataclass
class SearchData:
  """Device-resident search and validation pools.

  search_images: uint8[Ns, H, W, 3]; search_labels: int32[Ns].
  val_images: uint8[Nv, H, W, 3]; val_labels: int32[Nv].
  search_by_class / val_by_class: int32[C, max count] indices per class
    (padded with 0); search_counts / val_counts: int32[C].
  """
  search_images: Array
  search_labels: Array
  val_images: Array
  val_labels: Array
  search_by_class: Array
  search_counts: Array
  val_by_class: Array
  val_counts: Array
  num_classes: int = flax.struct.field(pytree_node=False)


def _by_class(labels: np.ndarray, num_classes: int):
  counts = np.bincount(labels, minlength=num_classes)
  table = np.zeros((num_classes, max(1, counts.max())), np.int32)
  for c in range(num_classes):
    idx = np.flatnonzero(labels == c)
    table[c, :len(idx)] = idx
  return table, counts.astype(np.int32)


def make_search_data(search, val, num_classes: int, *,
                     val_batch: Optional[int] = None) -> SearchData:
  """The device-resident pools from a search split and a validation split.

  Args:
    search: the search pool, an `input_pipeline.Split` (anything with
      `images` uint8[Ns, H, W, 3] and `labels` int[Ns]).
    val: the validation pool, likewise uint8[Nv, H, W, 3] / int[Nv].
    num_classes: labels lie in [0, num_classes).
    val_batch: the validation batch per search image (`config.search.
      val_batch`); when given, every class of the search pool must have at
      least this many validation images, because `sample_batch` draws them
      without replacement and would otherwise repeat images silently.

  Returns:
    `SearchData`.

  Raises:
    ValueError: images not uint8[N, H, W, 3], labels not one per image or
      outside [0, num_classes), an empty pool, or (with `val_batch`) a
      search class with fewer than `val_batch` validation images.
  """
  pools = {}
  for what, split in (("search", search), ("validation", val)):
    images, labels = np.asarray(split.images), np.asarray(split.labels)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"{what} images must be uint8[N, H, W, 3], got "
                       f"{images.dtype}{images.shape}")
    if len(labels) != len(images) or len(labels) == 0:
      raise ValueError(f"{what}: {len(images)} images but {len(labels)} labels")
    if labels.min() < 0 or labels.max() >= num_classes:
      raise ValueError(f"{what} labels must be in [0, {num_classes})")
    pools[what] = (images, labels.astype(np.int32))
  s_table, s_counts = _by_class(pools["search"][1], num_classes)
  v_table, v_counts = _by_class(pools["validation"][1], num_classes)
  if val_batch is not None:
    short = [c for c in range(num_classes)
             if s_counts[c] > 0 and v_counts[c] < val_batch]
    if short:
      raise ValueError(
          f"config.search.val_batch={val_batch} exceeds the validation images "
          f"of class(es) {short[:10]} (they have "
          f"{[int(v_counts[c]) for c in short[:10]]}); lower val_batch, use "
          "a larger validation pool, or set "
          "config.search.class_conditional=False.")
  (search_images, search_labels), (val_images, val_labels) = (
      pools["search"], pools["validation"])
  return SearchData(jnp.asarray(search_images), jnp.asarray(search_labels),
                    jnp.asarray(val_images), jnp.asarray(val_labels),
                    jnp.asarray(s_table), jnp.asarray(s_counts),
                    jnp.asarray(v_table), jnp.asarray(v_counts), num_classes)


class Batch(NamedTuple):
  images: Array  # uint8[S, H, W, 3]
  labels: Array  # int32[S]
  val_images: Array  # uint8[S, V, H, W, 3]
  val_labels: Array  # int32[S, V]


def _choose(key: Array, table_row: Array, count: Array, num: int) -> Array:
  """`num` distinct entries of table_row[:count] (uniform without replacement;
  with replacement if count < num)."""
  width = table_row.shape[0]
  scores = jax.random.uniform(key, (width,))
  scores = jnp.where(jnp.arange(width) < count, scores, 2.0)
  first = jnp.argsort(scores)[:num]
  # If the class has fewer than `num` images, wrap around (with replacement).
  first = jnp.where(jnp.arange(num) < count, first,
                    first[jnp.arange(num) % jnp.maximum(count, 1)])
  return table_row[first]


def sample_batch(key: Array, data: SearchData, *, num_images: int,
                 val_batch: int, class_conditional: bool = True) -> Batch:
  """One step's search images, each with its own clean validation batch.

  Official (class_conditional=True, spec §2.6): for each search image draw a
  class uniformly, then one search image and `val_batch` distinct validation
  images of that class. Paper reading (False): the search image uniformly
  from the pool and a validation batch uniformly from the validation pool.
  Drawn from JAX keys, so the search is deterministic given the seed (the
  official sampler uses unseeded Python `random`).
  """
  k_class, k_search, k_val = jax.random.split(key, 3)
  if class_conditional:
    # Only classes present in both pools can be drawn.
    ok = (data.search_counts > 0) & (data.val_counts > 0)
    classes = jax.random.categorical(
        k_class, jnp.where(ok, 0.0, -jnp.inf), shape=(num_images,))
    search_idx = jax.vmap(lambda k, c: _choose(
        k, data.search_by_class[c], data.search_counts[c], 1)[0])(
            jax.random.split(k_search, num_images), classes)
    val_idx = jax.vmap(lambda k, c: _choose(
        k, data.val_by_class[c], data.val_counts[c], val_batch))(
            jax.random.split(k_val, num_images), classes)
  else:
    n_search = data.search_labels.shape[0]
    n_val = data.val_labels.shape[0]
    search_idx = jax.random.randint(k_search, (num_images,), 0, n_search)
    val_idx = jax.vmap(lambda k: jax.random.choice(
        k, n_val, (val_batch,), replace=False))(
            jax.random.split(k_val, num_images))
  return Batch(data.search_images[search_idx], data.search_labels[search_idx],
               data.val_images[val_idx], data.val_labels[val_idx])


# --------------------------------------------------------------------------
# One policy-gradient step.
# --------------------------------------------------------------------------


@flax.struct.dataclass
class SearchModel:
  """The frozen search network: the gradient space w and the rest."""
  w: PyTree
  frozen: PyTree
  loss: reward_lib.PerExampleLoss = flax.struct.field(pytree_node=False)


@flax.struct.dataclass
class LayerState:
  """The trainable state of the layer being searched.

  `reward_mean` and `reward_m2` only observe the search (`reward_snr`): the
  policy update never reads them. They are checkpointed with the rest, so a
  resumed layer reports the same signal-to-noise ratio bit for bit.
  """
  step: Array  # int32 scalar
  logits: Array  # float32[T]
  opt_state: PyTree
  # Running mean over the layer's steps of the centred reward R_n - mean_n R_n
  # (Eq. 10), and its sum of squared deviations (Welford).
  reward_mean: Array  # float32[T]
  reward_m2: Array  # float32[T]


@dataclasses.dataclass(frozen=True)
class StepSettings:
  """The static settings of a step (hashable; from `config.search`)."""
  space: space_lib.SearchSpace
  num_images: int  # S, search images per step (16)
  val_batch: int  # V, validation images per search image (64)
  class_conditional: bool
  gt_samples: int  # M, full-chain samples for g in stages >= 2 (4 * 139)
  g_prefixes: int  # E, prefix samples for G in stages >= 2 (16)
  std_coef: float  # c of Eq. 10 in stages >= 2 (1.0)
  stage1_std_coef: float  # c in stage 1 (0.0 officially)
  normalization: str  # "cosine" (official) or "paper"
  loss_scale_stage1: float  # 0.25 officially
  loss_scale_stage_k: Optional[float]  # None: S (officially 16)
  chunk_size: int  # images per chunk of the gradient and JVP passes
  loop: str  # "scan" or "host"
  augment_method: str  # apply_chain_batch method ("auto")
  policy_lr: float  # Adam learning rate (0.025)
  adam_b1: float
  adam_b2: float
  adam_eps: float
  adam_style: str  # "keras" or "optax"
  reward: str = "jvp"  # grad l . u by "jvp" or "jacobian" (vmap(grad) rows)
  # Data parallel over the S search images on this mesh (axis
  # `parallel.DATA`); None: one device, the plain step (`_full_step`).
  mesh: Optional[jax.sharding.Mesh] = None


class Augmented(NamedTuple):
  """A step's images: what the gradients and the JVPs run on."""
  val_images: Array  # float32[S, V, H, W, 3]
  val_labels: Array  # int32[S, V]
  g_images: Array  # float32[S, N_g, H, W, 3]
  g_labels: Array  # int32[S, N_g]
  g_weights: Array  # float32[S, N_g]
  jvp_images: Array  # float32[S, N_r, H, W, 3] (N_r = E * T, or T)
  jvp_labels: Array  # int32[S, N_r]


def _rows(keys: Array, first, count: int) -> Array:
  """keys[first:first + count] (all of `keys` when they are the rows)."""
  if isinstance(first, int) and first == 0 and count == keys.shape[0]:
    return keys
  return jax.lax.dynamic_slice_in_dim(keys, first, count)


def _augment(settings: StepSettings, key: Array, batch: Batch,
             earlier_probs: Array, probs: Array, *, first=0) -> Augmented:
  """Builds the step's augmented images on the device.

  Stage 1 (no earlier layers): the 139 transforms of each search image (one
  realisation of the random ops per image), used both for g = G p (weights
  p) and for the rewards. Stage k: M full-chain samples (layers 1..k, the
  current layer included) for g (weights 1/M), and E prefixes through layers
  1..k-1, each followed by all 139 transforms, for the rewards.

  `batch` may hold only the search images first .. first + s - 1 of the
  step's S = settings.num_images (one device's share): every random draw is
  keyed by the global image (and sample) index, so a device's share equals
  the same rows of the whole batch's result.
  """
  space = settings.space
  s = batch.images.shape[0]  # this call's images (S, or a device's share)
  total = settings.num_images
  t = space.size
  h, w = batch.images.shape[1:3]
  val = batch.val_images.astype(jnp.float32)
  k_dense, k_g, k_prefix = jax.random.split(key, 3)
  images = batch.images.astype(jnp.float32)
  if earlier_probs.shape[0] == 0:
    dense = jax.vmap(lambda k, x: space_lib.apply_all(k, x, space))(
        _rows(jax.random.split(k_dense, total), first, s),
        images)  # [S, T, H, W, 3]
    labels = jnp.repeat(batch.labels[:, None], t, axis=1)
    weights = jnp.broadcast_to(probs[None, :], (s, t))
    return Augmented(val, batch.val_labels, dense, labels, weights, dense,
                     labels)
  m, e = settings.gt_samples, settings.g_prefixes
  # g: M samples of the full chain (layers 1..k), weights 1/M.
  all_probs = jnp.concatenate([earlier_probs, probs[None]], axis=0)
  k_idx, k_apply = jax.random.split(k_g)
  idx = policy_lib.sample_indices(k_idx, all_probs, s * m, offset=first * m)
  chains = space_lib.apply_chain_batch(
      k_apply, jnp.repeat(images, m, axis=0), idx, space,
      method=settings.augment_method, offset=first * m)
  g_images = chains.reshape(s, m, h, w, 3)
  g_labels = jnp.repeat(batch.labels[:, None], m, axis=1)
  g_weights = jnp.full((s, m), 1.0 / m, jnp.float32)
  # G: E prefix samples through layers 1..k-1, then all T transforms.
  k_idx, k_apply, k_all = jax.random.split(k_prefix, 3)
  idx = policy_lib.sample_indices(k_idx, earlier_probs, s * e,
                                  offset=first * e)
  prefixes = space_lib.apply_chain_batch(
      k_apply, jnp.repeat(images, e, axis=0), idx, space,
      method=settings.augment_method, offset=first * e)
  dense = jax.vmap(lambda k, x: space_lib.apply_all(k, x, space))(
      _rows(jax.random.split(k_all, total * e), first * e, s * e),
      prefixes)  # [S*E, T, H, W, 3]
  r_images = dense.reshape(s, e * t, h, w, 3)
  r_labels = jnp.repeat(batch.labels[:, None], e * t, axis=1)
  return Augmented(val, batch.val_labels, g_images, g_labels, g_weights,
                   r_images, r_labels)


def _prepare(settings: StepSettings, data: SearchData, key: Array,
             earlier_probs: Array, logits: Array) -> Augmented:
  k_batch, k_aug = jax.random.split(key)
  batch = sample_batch(k_batch, data, num_images=settings.num_images,
                       val_batch=settings.val_batch,
                       class_conditional=settings.class_conditional)
  return _augment(settings, k_aug, batch, earlier_probs,
                  jax.nn.softmax(logits))


def _gradients(settings: StepSettings, model: SearchModel, aug: Augmented,
               loop: str):
  """v and g of every search image (trees with a leading axis S)."""
  s, v = aug.val_labels.shape
  v_grad = reward_lib.group_weighted_grads(
      model.loss, model.w, model.frozen, aug.val_images, aug.val_labels,
      jnp.full((s, v), 1.0 / v, jnp.float32), chunk_size=settings.chunk_size,
      loop=loop)
  g_grad = reward_lib.group_weighted_grads(
      model.loss, model.w, model.frozen, aug.g_images, aug.g_labels,
      aug.g_weights, chunk_size=settings.chunk_size, loop=loop)
  return v_grad, g_grad


def _rewards(settings: StepSettings, model: SearchModel, aug: Augmented,
             v_grad: PyTree, g_grad: PyTree):
  """(rewards float32[S, N_r], cos, |g|, |v| float32[S]) by JVP."""
  return reward_lib.rewards_from_gradients(
      model.loss, model.w, model.frozen, v_grad, g_grad, aug.jvp_images,
      aug.jvp_labels, chunk_size=settings.chunk_size,
      normalization=settings.normalization, method=settings.reward)


def _finish(settings: StepSettings, model: SearchModel, state: LayerState,
            aug: Augmented, v_grad: PyTree, g_grad: PyTree, stage1: bool):
  """Rewards (JVP), aggregation, the Adam step, and diagnostics."""
  return _update(settings, state, *_rewards(settings, model, aug, v_grad,
                                            g_grad), stage1)


def _mean_over_prefixes(rewards: Array, num_transforms: int) -> Array:
  """float32[S, E * T] (or [S, T]) -> float32[S, T]: each image's rewards
  averaged over its E prefix samples (Eq. 7)."""
  return rewards.reshape(rewards.shape[0], -1, num_transforms).mean(axis=1)


def _update(settings: StepSettings, state: LayerState, rewards: Array,
            cos: Array, g_norm: Array, v_norm: Array, stage1: bool):
  """Aggregation over the S search images, the Adam step, diagnostics.

  Args:
    settings: static settings.
    state: the layer state.
    rewards: float32[S, N_r] per-image rewards (N_r = E * T, or T).
    cos, g_norm, v_norm: float32[S].
    stage1: the stage-1 aggregate and loss scale.

  Returns:
    (new state, diagnostics: dict of float32 scalars and bool "finite").
  """
  t = settings.space.size
  s = rewards.shape[0]
  per_image = _mean_over_prefixes(rewards, t)
  std_coef = settings.stage1_std_coef if stage1 else settings.std_coef
  reward = reward_lib.regularized_reward(per_image, std_coef=std_coef)
  if stage1:
    scale = settings.loss_scale_stage1
  else:
    scale = (settings.loss_scale_stage_k if settings.loss_scale_stage_k
             is not None else float(s))
  grad = jax.grad(reward_lib.policy_loss)(state.logits, reward, scale=scale)
  optimizer = policy_optimizer(settings)
  updates, opt_state = optimizer.update(grad, state.opt_state, state.logits)
  logits = optax.apply_updates(state.logits, updates)
  probs = jax.nn.softmax(state.logits)
  new_probs = jax.nn.softmax(logits)
  diagnostics = {
      "cos_sim": jnp.mean(cos),
      "reward_mean": jnp.mean(per_image),
      "reward_std": jnp.mean(jnp.std(per_image, axis=0)),
      "expected_reward": jnp.sum(probs * reward),
      "g_norm": jnp.mean(g_norm),
      "v_norm": jnp.mean(v_norm),
      "entropy": -jnp.sum(new_probs * jnp.log(new_probs + 1e-30)),
      "p_identity": new_probs[0],
      "finite": jnp.all(jnp.isfinite(logits)) & jnp.all(jnp.isfinite(reward)),
      **_watched_diagnostics(per_image, reward, logits, std_coef),
  }
  reward_mean, reward_m2 = accumulate_reward(
      state.reward_mean, state.reward_m2, state.step, reward)
  snr, snr_excess = reward_snr(reward_mean, reward_m2, state.step + 1)
  diagnostics["snr"] = snr
  diagnostics["snr_excess"] = snr_excess
  new_state = LayerState(state.step + 1, logits, opt_state, reward_mean,
                         reward_m2)
  return new_state, diagnostics


# The transforms whose rewards are logged every step: Identity and the three
# random ops that carry the official policies' deep layers (spec §5: layers
# 2-5 of cifar_1/cifar_2 put almost all non-Identity mass on them). The same
# indices in both spaces (ImageNet: RandCutout60, RandResizeCrop).
WATCHED = (("identity", 0), ("flip", 136), ("cutout", 137), ("crop", 138))


def _watched_diagnostics(per_image: Array, reward: Array, logits: Array,
                         std_coef: float) -> Dict[str, Array]:
  """Per watched transform n: the regularised reward R_n (Eq. 10) and its
  two parts, mean_i r_in and c * std_i r_in, and the logit above the mean
  logit (how far the layer has moved it). `per_image: float32[S, T]`."""
  mean = jnp.mean(per_image, axis=0)
  penalty = std_coef * jnp.std(per_image, axis=0)
  centred = logits - jnp.mean(logits)
  out = {}
  for name, n in WATCHED:
    out[f"R_{name}"] = reward[n]
    out[f"R_mean_{name}"] = mean[n]
    out[f"R_std_{name}"] = penalty[n]
    out[f"logit_{name}"] = centred[n]
  return out


# --------------------------------------------------------------------------
# The reward's signal-to-noise ratio.
# --------------------------------------------------------------------------

# snr_excess below this at the end of a layer: the spread of the mean rewards
# is within twice what step-to-step noise alone produces (1), so the layer's
# ranking of the transforms is mostly noise.
SNR_WARN_EXCESS = 2.0


def accumulate_reward(mean: Array, m2: Array, count: Array,
                      reward: Array) -> Tuple[Array, Array]:
  """Adds one step's regularised reward to the running statistics.

  The reward is centred over the transforms first (R_n - mean_n R_n): the
  policy gradient p * (R - p.R) does not change when a constant is added to
  every R_n, so noise common to all transforms does not move the policy and
  is not counted as noise. Welford's update keeps the float32 variance
  accurate when a transform's mean reward is far larger than its noise.

  Args:
    mean: float32[T], the running mean over the `count` steps so far.
    m2: float32[T], their sum of squared deviations from `mean`.
    count: int32 scalar, the steps already accumulated.
    reward: float32[T], this step's R (Eq. 10).

  Returns:
    (mean, m2) over count + 1 steps, float32[T] each.
  """
  centred = reward - jnp.mean(reward)
  delta = centred - mean
  mean = mean + delta / (count + 1).astype(jnp.float32)
  return mean, m2 + delta * (centred - mean)


def reward_snr(mean: Array, m2: Array,
               count: Array) -> Tuple[Array, Array]:
  """The reward's signal-to-noise ratio over a layer's first N steps.

  With m_n the mean over the N steps of transform n's centred reward and
  s_n its standard deviation over the steps (ddof 1, from `m2`):

    snr = std_n(m_n) / rms_n(s_n)   (std over the T transforms, ddof 1)

  is the spread of what the layer learns about the transforms against the
  noise of one step. Pure noise (no real difference between transforms)
  still spreads the means by about rms(s) / sqrt(N), so

    snr_excess = snr * sqrt(N)

  is ~1 for noise alone (sqrt(T / (T - 1)) with the centring) and >> 1 when
  the transforms are told apart; `SNR_WARN_EXCESS` is the warning level.

  Args:
    mean, m2: float32[T], from `accumulate_reward` (`LayerState.reward_mean`,
      `reward_m2`).
    count: N, the steps accumulated.

  Returns:
    (snr, snr_excess): float32 scalars; NaN while N < 2.
  """
  n = jnp.asarray(count).astype(jnp.float32)
  noise = jnp.sqrt(jnp.mean(m2) / (n - 1))
  snr = jnp.std(mean, ddof=1) / noise
  snr = jnp.where(n >= 2, snr, jnp.nan)
  return snr, snr * jnp.sqrt(n)


def layer_snr(state: LayerState) -> Dict[str, float]:
  """{"snr", "snr_excess"} of a layer state (`reward_snr`), as floats."""
  snr, excess = reward_snr(state.reward_mean, state.reward_m2, state.step)
  return {"snr": float(snr), "snr_excess": float(excess)}


def snr_warning(layer: int, snr_excess: float) -> Optional[str]:
  """The one-line warning for a layer whose rewards are mostly noise, or
  None (`snr_excess` >= `SNR_WARN_EXCESS`, or NaN: too few steps)."""
  if not snr_excess < SNR_WARN_EXCESS:
    return None
  return (f"Layer {layer}: reward signal-to-noise excess {snr_excess:.2f} < "
          f"{SNR_WARN_EXCESS:g} (1 = noise alone): the search cannot tell the "
          "transforms apart; pretrain the search network longer, or raise "
          "config.search.num_images or steps_per_layer.")


_MAX_UNROLLED_CHUNKS = 32


def _sharded_loop(settings: StepSettings, aug: Augmented) -> str:
  """The chunk loop inside `_sharded_step` for one device's images."""
  if settings.loop != "host":
    return settings.loop
  resolve = reward_lib.resolve_chunk
  chunks = sum(groups * (n // resolve(settings.chunk_size, n))
               for groups, n in (aug.val_labels.shape, aug.g_labels.shape))
  return "host" if chunks <= _MAX_UNROLLED_CHUNKS else "scan"


def _sharded_step(settings: StepSettings, model: SearchModel,
                  data: SearchData, state: LayerState, key: Array,
                  earlier_probs: Array, stage1: bool):
  """`_full_step` data parallel over the S search images.

  The batch is sampled from the (replicated) pools exactly as `_prepare`
  does; each device of `settings.mesh` then augments its S / n search images
  (keys from the global image index: `_augment(first=...)`), computes their
  v, g and JVP rewards (`jax.shard_map`), and the per-image rewards [S, T]
  (mean over prefixes) and norms are gathered to every device before the
  mean - c * std aggregate and the (replicated) Adam step. The result equals
  `_full_step` up to floating-point reduction order.

  The whole step is one compiled program. `settings.loop` picks how the
  backward chunks run inside it: "scan" as a `lax.scan`, "host" unrolled
  (the host loop of `reward.group_weighted_grads`, traced: one backward
  pass per chunk in straight-line code), which is what XLA:CPU runs fast;
  "host" falls back to "scan" when a device would unroll more than
  `_MAX_UNROLLED_CHUNKS` backward passes (compile time grows with them).
  """
  mesh = settings.mesh
  per_device = settings.num_images // mesh.size
  k_batch, k_aug = jax.random.split(key)
  batch = sample_batch(k_batch, data, num_images=settings.num_images,
                       val_batch=settings.val_batch,
                       class_conditional=settings.class_conditional)
  probs = jax.nn.softmax(state.logits)

  def local(model, batch, k_aug, earlier_probs, probs):
    first = jax.lax.axis_index(parallel.DATA) * per_device
    aug = _augment(settings, k_aug, batch, earlier_probs, probs, first=first)
    v_grad, g_grad = _gradients(settings, model, aug,
                                _sharded_loop(settings, aug))
    rewards, cos, g_norm, v_norm = _rewards(settings, model, aug, v_grad,
                                            g_grad)
    # Mean over the E prefixes here, so only [S, T] rewards are gathered.
    rewards = _mean_over_prefixes(rewards, settings.space.size)
    return rewards, cos, g_norm, v_norm

  spec = jax.sharding.PartitionSpec
  per_image = jax.shard_map(
      local, mesh=mesh, in_specs=(spec(), spec(parallel.DATA), spec(), spec(),
                                  spec()),
      out_specs=spec(parallel.DATA),
      # Scan carries start replicated and become per-device; no check.
      check_vma=False)(model, batch, k_aug, earlier_probs, probs)
  # Gather: every device aggregates all S images, in the one-device order.
  per_image = jax.lax.with_sharding_constraint(per_image,
                                               parallel.replicated(mesh))
  out = _update(settings, state, *per_image, stage1)
  return jax.lax.with_sharding_constraint(out, parallel.replicated(mesh))


def _full_step(settings: StepSettings, model: SearchModel, data: SearchData,
               state: LayerState, key: Array, earlier_probs: Array,
               stage1: bool):
  if settings.mesh is not None:
    return _sharded_step(settings, model, data, state, key, earlier_probs,
                         stage1)
  aug = _prepare(settings, data, key, earlier_probs, state.logits)
  v_grad, g_grad = _gradients(settings, model, aug, "scan")
  return _finish(settings, model, state, aug, v_grad, g_grad, stage1)


# Compiled once per (static settings, shapes): module-level jits with the
# hashable settings as static arguments, so repeated `search_layer` calls
# (layers, resumes, notebooks) reuse the compilation.
_full_step_jit = jax.jit(_full_step, static_argnums=(0, 6), donate_argnums=(3,))
_prepare_jit = jax.jit(_prepare, static_argnums=(0,))
_augment_jit = jax.jit(_augment, static_argnums=(0,))
_finish_jit = jax.jit(_finish, static_argnums=(0, 6), donate_argnums=(2,))


def layer_step(settings: StepSettings, model: SearchModel, data: SearchData,
               state: LayerState, key: Array, earlier_probs: Array):
  """One policy-gradient step of the current layer.

  Args:
    settings: static settings (`step_settings(config.search, space)`). With
      `settings.mesh`, the step is data parallel over its devices (one
      compiled step, see `_sharded_step`) and the inputs are replicated over
      the mesh here (a no-op once they are).
    model: the frozen search network.
    data: the device-resident pools.
    state: the layer's state (donated: do not reuse it).
    key: this step's key.
    earlier_probs: float32[k-1, T] probabilities of the earlier layers.

  Returns:
    (new state, diagnostics: dict of scalars).
  """
  stage1 = earlier_probs.shape[0] == 0
  if settings.mesh is not None:
    model, data, state, key, earlier_probs = parallel.replicate(
        (model, data, state, key, earlier_probs), settings.mesh)
    return _full_step_jit(settings, model, data, state, key, earlier_probs,
                          stage1)
  if settings.loop == "scan":
    return _full_step_jit(settings, model, data, state, key, earlier_probs,
                          stage1)
  if settings.loop != "host":
    raise ValueError(f"config.search.loop must be one of "
                     f"{reward_lib.LOOPS + ('auto',)}, got {settings.loop!r}")
  aug = _prepare_jit(settings, data, key, earlier_probs, state.logits)
  v_grad, g_grad = _gradients(settings, model, aug, "host")
  return _finish_jit(settings, model, state, aug, v_grad, g_grad, stage1)


def batch_rewards(settings: StepSettings, model: SearchModel, batch: Batch,
                  key: Array, earlier_probs: Array, probs: Array):
  """The per-image rewards of one step on a given batch (no update).

  What a step aggregates with mean - c * std: stage 1 (no earlier layers)
  r_in = d cos(v_i, g_i) / d p_n exactly; stage k the Monte-Carlo estimate
  (Eq. 7-8), averaged over the E prefixes. For tests, notebooks and
  benchmarks; one device, `settings.loop` picks the backward loop.

  Args:
    settings: static settings (`step_settings`).
    model: the frozen search network.
    batch: the S search images with their validation batches (`Batch`).
    key: the augmentation key.
    earlier_probs: float32[k-1, T] (k = 1: shape [0, T]).
    probs: float32[T], the current layer.

  Returns:
    (rewards float32[S, T], cos float32[S]).
  """
  aug = _augment_jit(settings, key, batch, jnp.asarray(earlier_probs),
                     jnp.asarray(probs))
  v_grad, g_grad = _gradients(settings, model, aug, settings.loop)
  rewards, cos, _, _ = _rewards(settings, model, aug, v_grad, g_grad)
  return _mean_over_prefixes(rewards, settings.space.size), cos


_ONE_DEVICE_HINT = (", or set config.search.data_parallel=False to search "
                    "on one device")


def step_settings(config, space: space_lib.SearchSpace, *,
                  mesh: Optional[jax.sharding.Mesh] = None) -> StepSettings:
  """`StepSettings` from a `config.search` section (validated).

  Args:
    config: the `config.search` section.
    space: the search space.
    mesh: data parallel over this mesh (`parallel.make_mesh`); None: one
      device. `config.num_images` must be divisible by its size.

  Raises:
    ValueError: naming `config.search.num_images` if it does not split over
      the mesh.
  """
  if mesh is not None:
    parallel.check_divisible(config.num_images, "search.num_images",
                             num_devices=mesh.size, hint=_ONE_DEVICE_HINT)
  loop = config.loop
  if loop == "auto":
    loop = "host" if jax.default_backend() == "cpu" else "scan"
  gt = config.gt_samples_factor * space.size if config.gt_samples == 0 else (
      config.gt_samples)
  return StepSettings(
      space=space, num_images=config.num_images, val_batch=config.val_batch,
      class_conditional=config.class_conditional, gt_samples=int(gt),
      g_prefixes=config.g_prefixes, std_coef=config.std_coef,
      stage1_std_coef=config.stage1_std_coef,
      normalization=config.normalization,
      loss_scale_stage1=config.loss_scale_stage1,
      loss_scale_stage_k=(config.loss_scale_stage_k or None),
      chunk_size=config.chunk_size, loop=loop,
      augment_method=config.augment_method, policy_lr=config.policy_lr,
      adam_b1=config.adam_b1, adam_b2=config.adam_b2,
      adam_eps=config.adam_eps, adam_style=config.adam_style,
      reward=config.get("reward", "jvp"), mesh=mesh)


# --------------------------------------------------------------------------
# One layer, as a notebook calls it.
# --------------------------------------------------------------------------


def init_layer_state(config, space: space_lib.SearchSpace) -> LayerState:
  logits = jnp.asarray(initial_logits(space.size, config.init))
  return LayerState(jnp.zeros((), jnp.int32), logits,
                    policy_optimizer(config).init(logits),
                    jnp.zeros(space.size, jnp.float32),
                    jnp.zeros(space.size, jnp.float32))


def _to_host(diag: Mapping[str, Array]) -> Dict[str, float]:
  return {k: float(v) for k, v in jax.device_get(dict(diag)).items()}


def search_layer(key: Array, model: SearchModel, earlier_layers, data:
                 SearchData, config, *, state: Optional[LayerState] = None,
                 num_steps: Optional[int] = None,
                 callback: Optional[Callable] = None,
                 progress: bool = False,
                 mesh: Optional[jax.sharding.Mesh] = None):
  """Trains one policy layer on top of `earlier_layers`.

  Args:
    key: the layer's PRNG key; step s uses fold_in(key, s), so results do not
      depend on where a run was interrupted.
    model: the frozen search network (`make_search_model`).
    earlier_layers: float[k-1, T] probabilities of layers 1..k-1 (k = 1: an
      empty [0, T] array), or a `Policy`.
    data: the device-resident pools (`make_search_data`).
    config: the `config.search` section.
    state: resume from this layer state (default: a fresh layer).
    num_steps: total steps for the layer (default `config.steps_per_layer`).
    callback: called as callback(step, state, diagnostics) after each step
      (checkpointing, logging); may return True to stop early.
    progress: report steps/s and ETA (CLU's `ReportProgress`, in the log)
      every tenth of the layer.
    mesh: run each step data parallel over this mesh (the S search images
      split over its devices, `parallel.make_mesh`). Default: all devices of
      all processes when there are several and `config.data_parallel`
      (default True), else one device. The result does not depend on the
      device count beyond floating-point reduction order.

  Returns:
    (logits float32[T], history: dict of float lists, one entry per step,
     plus "top5": per-step list of (index, probability) pairs). The history's
     "snr" and "snr_excess" are the reward's signal-to-noise ratio so far
     (`reward_snr`); a layer that ends with snr_excess < `SNR_WARN_EXCESS`
     logs a one-line warning.

  Raises:
    ValueError: `config.num_images` not divisible by the mesh's devices.
  """
  space = space_lib.get_space(config.space)
  if isinstance(earlier_layers, policy_lib.Policy):
    earlier_layers = earlier_layers.probs
  earlier = jnp.asarray(np.asarray(earlier_layers, np.float32).reshape(
      -1, space.size))
  if mesh is None and config.get("data_parallel", True) and (
      jax.device_count() > 1):
    mesh = parallel.make_mesh()
  settings = step_settings(config, space, mesh=mesh)
  state = state if state is not None else init_layer_state(config, space)
  if mesh is not None:  # once, not every step: the pools are large
    model, data, earlier = parallel.replicate((model, data, earlier), mesh)
  total = int(num_steps if num_steps is not None else config.steps_per_layer)
  history: Dict[str, List[Any]] = {}
  report = None
  if progress:  # CLU imports TensorFlow: only when asked for
    from clu import periodic_actions  # pylint: disable=g-import-not-at-top
    report = periodic_actions.ReportProgress(
        num_train_steps=total, every_steps=max(1, total // 10))
  while int(state.step) < total:
    step = int(state.step)
    state, diag = layer_step(settings, model, data, state,
                             jax.random.fold_in(key, step), earlier)
    diag = _to_host(diag)
    if not diag.pop("finite"):
      raise FloatingPointError(
          f"non-finite policy logits or rewards at layer "
          f"{earlier.shape[0] + 1}, step {step}: {diag}")
    probs = np.asarray(jax.nn.softmax(state.logits))
    top = np.argsort(-probs)[:5]
    diag_top = [(int(i), float(probs[i])) for i in top]
    for name, value in diag.items():
      history.setdefault(name, []).append(value)
    history.setdefault("top5", []).append(diag_top)
    if report is not None:
      report(step + 1)
    if callback is not None and callback(step + 1, state, dict(diag,
                                                               top5=diag_top)):
      break
  if int(state.step) >= total:
    warning = snr_warning(earlier.shape[0] + 1,
                          layer_snr(state)["snr_excess"])
    if warning:
      logging.warning(warning)
  return np.asarray(state.logits), history


# --------------------------------------------------------------------------
# The search model.
# --------------------------------------------------------------------------


def make_search_model(model, params, batch_stats, *, mean, std) -> SearchModel:
  """Freezes a trained network for the search: BN in inference mode, the
  gradient space without BN gamma/beta (spec §2.4), no L2 in the loss."""
  w, frozen = reward_lib.split_frozen(params, batch_stats)
  loss = reward_lib.PerExampleLoss(model, tuple(float(m) for m in mean),
                                   tuple(float(s) for s in std))
  return SearchModel(w, frozen, loss)


def default_search_config():
  """The `config.search` section: the official recipe (spec §2) by default.

  Where the paper and the official code differ (spec §2.13) both are
  available; the default is the code, because the code produced the shipped
  policies and its reward is the exact derivative of the cosine.
  """
  c = ml_collections.ConfigDict()
  c.space = "cifar"  # transform set: "cifar" or "imagenet" (139 each).
  c.num_layers = 6  # K, policy layers searched one at a time (paper: 6 for CIFAR).
  c.steps_per_layer = 1024  # Adam steps per layer (code README 1024; paper 512).
  c.num_images = 16  # search images per step (`train_same_labels`).
  c.val_batch = 64  # clean validation images per search image (code: 64).
  c.class_conditional = True  # val batch of the search image's class (code) vs any class (paper).
  c.gt_samples = 0  # M, full-chain samples for g at k >= 2; 0 = gt_samples_factor * |T|.
  c.gt_samples_factor = 4  # EXP_gT_factor: M = 4 * 139 = 556 (code).
  c.g_prefixes = 16  # E, prefix samples for G at k >= 2 (EXP_G, code).
  c.std_coef = 1.0  # c of Eq. 10 for k >= 2 (paper and code: 1).
  c.stage1_std_coef = 0.0  # c in stage 1 (code: plain mean).
  c.normalization = "cosine"  # r / (|g||v|) = d cos / d p (code) or r / |g| (paper Eq. 5).
  # grad l(t_n x) . u by forward-mode "jvp" (G never built) or "jacobian"
  # (G's rows from jax.vmap(jax.grad), chunk by chunk; equal within float32).
  # jvp is the default: on CPU (WRN-10-1, configs/cifar10_cpu.py sizes) it is
  # measured faster (benchmarks/README.md); on GPU it is timed by
  # benchmarks/accelerator_check.py, not yet run on one.
  c.reward = "jvp"
  c.loss_scale_stage1 = 0.25  # mult_factor of stage 1 (code).
  c.loss_scale_stage_k = 0.0  # mult_factor of stages >= 2; 0 = num_images (code: 16).
  c.init = "identity"  # initial logits: [8, 0, ...] - mean, p(Identity)=0.956 (code), or "uniform".
  c.policy_lr = 0.025  # Adam learning rate (paper and code).
  c.adam_b1 = 0.9  # Adam beta1 (Keras default).
  c.adam_b2 = 0.999  # Adam beta2 (Keras default).
  c.adam_eps = 1e-7  # Adam epsilon (Keras default).
  c.adam_style = "keras"  # epsilon before bias correction (Keras, code) or "optax".
  c.chunk_size = 256  # images per gradient/JVP chunk (_PARALLEL_BATCH for WRN-40-2).
  c.loop = "auto"  # chunk loop: "scan" (in-graph), "host", or "auto" (host on CPU).
  c.augment_method = "auto"  # apply_chain_batch method: auto/sequential/vectorized.
  c.stop_identity_threshold = 0.0  # stop adding layers once p(Identity) >= this (0 = off).
  c.seed = 0  # PRNG seed of the search (data sampling, augmentation).
  c.data_parallel = True  # split num_images over all devices (if > 1); same policy as 1 device.
  c.data_split = "official"  # pools: spec §2.2 ranges of the 50k train set, "small" (same shares), or "stream".
  # data_split="stream" (streamed input, e.g. ImageNet): the pools are TFDS
  # slices of config.input's dataset read into memory at S x S, disjoint from
  # the pretraining split config.input.tfds_train_split.
  c.search_pool = ""  # "stream": TFDS slice of the search pool (official ImageNet: 100,000 random images).
  c.val_pool = ""  # "stream": TFDS slice the validation pool is read from (official ImageNet: 400,000).
  c.val_per_class = 0  # "stream": keep the first N validation images of each class (0 = all): bounds memory.
  c.checkpoint_every_steps = 50  # search checkpoint period (and after each layer).
  c.lock()  # a typo inside a config file fails like one on the command line
  return c
