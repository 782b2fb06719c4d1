"""Training with a fixed augmentation policy: evaluation runs and pretraining.

One loop serves both uses of supervised training in DeepAA:

* **policy evaluation** (spec §4.3-§4.5): WRN-28-10 / ResNet-50 trained with a
  policy applied per image and per layer, SGD Nesterov, warm-up + cosine (or
  step) learning rate, weight decay off BN, gradient clipping, optional Batch
  Augmentation;
* **search-model pretraining** (spec §2.3): WRN-40-2 (Keras flavour) on the
  official 5,000-image pretraining split with crop + flip + Cutout, cosine
  0.1 -> 1e-7, Keras-style L2 included in the clipped gradient. `train(config,
  workdir)` returns the `TrainState` for the search to use.

The train step is a pure function of (state, batch, key), compiled once:

  uint8[B, H, W, 3] batch
    -> repeat M times (Batch Augmentation; M = 1 without BA)
    -> `policy.apply_policy` per example and layer, on device, with key
       fold_in(fold_in(key, step), 0); copy c of image i is example c*B + i
    -> `input_pipeline.normalize`
    -> model in BN training mode (per copy of B images when BA, as on each
       official GPU) -> mean cross-entropy over the B*M images
    -> gradients -> optax chain (clip, weight decay, SGD) -> new state.

On several devices (all devices of all processes) the step is data parallel
over a 1-D mesh (`parallel.py`): each process feeds only its rows of every
global batch, each device augments its rows with the keys of their global
example indices, BN statistics and gradients are reduced over the global
batch, and the result equals one device's up to floating-point reduction
order.

`run(config, workdir)` is the job (the CLI entry): it loads the data,
builds the model/policy/optimiser, resumes from the latest orbax checkpoint in
`workdir` if there is one (with a loud warning), logs to a CLU writer and to
`workdir/metrics.jsonl`, evaluates on the test split every
`eval_every_epochs` and at the end, and writes `workdir/results.json`. The
data order is a pure function of (seed, epoch) and the keys of (seed, step),
so a run killed and restarted ends with bit-identical parameters.
"""

import dataclasses
import functools
import json
import math
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from absl import logging
import flax
from flax import traverse_util
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from deepaa_jax import config as config_lib
from deepaa_jax import errors
from deepaa_jax import input_pipeline
from deepaa_jax import models
from deepaa_jax import parallel
from deepaa_jax import policy as policy_lib
from deepaa_jax import space as space_lib
from deepaa_jax import streaming
from deepaa_jax import utils

Array = jax.Array
PyTree = Any

# Domain-separation tags folded into the run key (see `_run_keys`).
_TAG_INIT = 0
_TAG_STEP = 1
# config.train fields that do not change the compiled train step.
_NOT_STATIC = ("seed", "eval_every_epochs", "eval_batch_size",
               "checkpoint_every_steps", "keep_checkpoints", "log_every_steps",
               "train_split")
# Fields that may change between an interrupted run and its resumption: they
# do not change results. The data and policy files are compared by content
# (`run_identity`), not by path, so a moved checkout can resume and a changed
# file cannot.
_RESUMABLE_FIELDS = (
    "train.eval_every_epochs", "train.eval_batch_size",
    "train.checkpoint_every_steps", "train.keep_checkpoints",
    "train.log_every_steps", "train.augment_method", "input.data_dir",
    "input.npz_path", "policy.path")
# Policy variant fields (config.policy.first_layers, .then) with their
# defaults: part of a run's identity only when set, so a checkpoint written
# before they existed resumes, and one with another value is refused.
_POLICY_VARIANT_DEFAULTS = (("first_layers", 0), ("then", ""))


def _identity_ignore(config) -> Tuple[str, ...]:
  """The config fields left out of `utils.run_identity`: the resumable ones
  and the policy variant fields at their defaults."""
  return _RESUMABLE_FIELDS + tuple(
      f"policy.{field}" for field, default in _POLICY_VARIANT_DEFAULTS
      if config.policy.get(field, default) == default)

# The loss, gradient or parameters became NaN or infinite (divergence).
NonFiniteLossError = errors.DivergedError


# ---------------------------------------------------------------------------
# State, model, optimiser.
# ---------------------------------------------------------------------------


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training; one pytree (checkpointed whole).

  Attributes:
    step: int32[], number of optimiser steps taken.
    params: the model's `params` collection (float32).
    batch_stats: the model's `batch_stats` collection (BN running averages).
    opt_state: the optax state of `make_optimizer`'s chain.
  """
  step: Array
  params: PyTree
  batch_stats: PyTree
  opt_state: PyTree


def build_model(config, *, num_classes: int, bf16: bool = False) -> nn.Module:
  """The network named by `config.model`.

  Args:
    config: the `config.model` section (`name`).
    num_classes: logits dimension.
    bf16: compute in bfloat16 (parameters and logits stay float32).

  Returns:
    An unbound flax module (`models.get_model`: a registered name or any
    "wrn_<depth>_<k>[_search]").
  """
  dtype = jnp.bfloat16 if bf16 else jnp.float32
  return models.get_model(config.name, num_classes=num_classes, dtype=dtype)


def weight_decay_mask(params: PyTree, *, kind: str = "non_bn") -> PyTree:
  """Which parameters get weight decay: a pytree of bools shaped like params.

  Args:
    params: the `params` collection (nested dict).
    kind: "non_bn": every parameter except BN scale/bias, biases included
      (PyTorch evaluation code, `DeepAA_evaluate/train.py:173-185`);
      "keras": conv kernels, conv biases and dense kernels only, i.e. not BN
      and not the dense bias (the Keras L2 of the search network, spec §2.3).
      A dense layer is recognised by its 2-D kernel.

  Returns:
    A nested dict of Python bools with the structure of `params`.
  """
  bn = traverse_util.flatten_dict(models.bn_param_mask(params))
  flat = traverse_util.flatten_dict(params)
  mask = {}
  for path in flat:
    decay = not bn[path]
    if kind == "keras" and path[-1] == "bias":
      kernel = flat.get(path[:-1] + ("kernel",))
      if kernel is not None and np.ndim(kernel) == 2:
        decay = False  # Keras puts no regulariser on the dense bias.
    mask[path] = decay
  return traverse_util.unflatten_dict(mask)


def learning_rate_schedule(train, steps_per_epoch: int) -> optax.Schedule:
  """The official per-iteration learning rate (spec §4.4) as an optax schedule.

  With t = step / steps_per_epoch (fractional epochs, as the official code
  steps its scheduler every iteration), w = warmup_epochs, T the run length in
  epochs, peak = learning_rate:

    t < w:       warmup_init_lr + (peak - warmup_init_lr) * t / w
                 (GradualWarmupScheduler: multiplier 1 starts at 0, the
                 ImageNet multiplier 8 goes 0.1 -> 0.8)
    "cosine":    min_lr + (peak - min_lr) * (1 + cos(pi (t - w) / (T - w))) / 2
    "step":      peak * step_factor ** #{m in step_milestones : t - w >= m}
                 (milestones count from the end of warm-up, so ImageNet's
                 90/180/240 fall at absolute epochs 95/185/245)

  The search-model pretraining (spec §2.3) is "cosine" with w = 0 and
  min_lr = 1e-7. One quirk of the official warm-up class is not reproduced:
  on the first iteration after warm-up it returns the after-scheduler's
  stale lr (for ImageNet 0.1 instead of 0.8) for a single step.

  Args:
    train: the `config.train` section.
    steps_per_epoch: optimiser steps per epoch, > 0.

  Returns:
    A function int step count -> float32 learning rate (jit-able).
  """
  spe = steps_per_epoch
  total = config_lib.total_steps(train, spe)
  peak = float(train.learning_rate)
  warm = float(train.warmup_epochs) * spe
  if train.schedule == "cosine":
    after = optax.cosine_decay_schedule(
        peak, decay_steps=max(total - warm, 1.0),
        alpha=float(train.min_lr) / peak)
  else:  # "step": milestones count from the end of warm-up
    after = optax.piecewise_constant_schedule(
        peak, {int(round(float(m) * spe)): float(train.step_factor)
               for m in train.step_milestones})
  if warm <= 0:
    return after
  return optax.join_schedules(
      [optax.linear_schedule(float(train.warmup_init_lr), peak, warm), after],
      [warm])


def make_optimizer(train, params: PyTree,
                   steps_per_epoch: int) -> optax.GradientTransformation:
  """SGD with the official clipping and weight decay, as one optax chain.

  clip_includes_weight_decay=False (PyTorch evaluation code): clip the raw
  gradient's global norm, then add weight_decay * w (masked), then SGD:
    chain(clip_by_global_norm, add_decayed_weights, sgd).
  clip_includes_weight_decay=True (Keras search pretraining): the L2 term is
  part of the loss, so its gradient is clipped with the rest:
    chain(add_decayed_weights, clip_by_global_norm, sgd).
  `sgd` is optax's trace(momentum, nesterov) then -lr, which equals PyTorch's
  SGD(dampening=0): buf = mu*buf + g; step = lr * (g + mu*buf). (PyTorch's
  clip_grad_norm_ divides by norm + 1e-6; optax by norm.)

  Args:
    train: the `config.train` section.
    params: the parameters (for the weight-decay mask).
    steps_per_epoch: for the learning-rate schedule.

  Returns:
    An optax GradientTransformation.
  """
  schedule = learning_rate_schedule(train, steps_per_epoch)
  mask = weight_decay_mask(params, kind=train.decay_mask)
  clip = (optax.clip_by_global_norm(float(train.grad_clip_norm))
          if train.grad_clip_norm > 0 else optax.identity())
  decay = optax.add_decayed_weights(float(train.weight_decay), mask=mask)
  sgd = optax.sgd(schedule, momentum=float(train.momentum),
                  nesterov=bool(train.nesterov))
  if train.clip_includes_weight_decay:
    return optax.chain(decay, clip, sgd)
  return optax.chain(clip, decay, sgd)


@functools.partial(jax.jit, static_argnums=(0, 1))
def init_variables(model: nn.Module, image_shape: Tuple[int, ...], key: Array):
  """(params, batch_stats) of `model` for images of `image_shape`; compiled
  once per (model, shape) by jit's own cache (init compiles slowly on CPU,
  ~7 s for WRN-10-1)."""
  variables = model.init({"params": key, "shake": key, "dropout": key},
                         jnp.zeros((1,) + tuple(image_shape), jnp.float32),
                         train=False)
  return variables["params"], variables.get("batch_stats", {})


def create_train_state(key: Array, config, model: nn.Module,
                       image_shape: Tuple[int, int, int], *,
                       tx: Optional[optax.GradientTransformation] = None,
                       ) -> TrainState:
  """Initial parameters, BN statistics and optimiser state.

  Args:
    key: PRNG key of the initialisation.
    config: the whole config (`config.train` builds the default optimiser).
    model: the flax module (e.g. from `build_model`).
    image_shape: (H, W, 3) of one input image.
    tx: the optimiser; default `make_optimizer(config.train, params, 1)` (the
      optimiser state's structure and initial values do not depend on the
      schedule, so steps_per_epoch does not matter here).

  Returns:
    TrainState at step 0.
  """
  params, batch_stats = init_variables(model, tuple(image_shape), key)
  if tx is None:
    tx = make_optimizer(config.train, params, 1)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=batch_stats, opt_state=tx.init(params))


# ---------------------------------------------------------------------------
# Steps.
# ---------------------------------------------------------------------------


def step_key(key: Array, step: Array) -> Array:
  """The key of training step `step`: fold_in(key, step) (big_vision)."""
  return jax.random.fold_in(key, step)


def run_keys(seed: int) -> Tuple[Array, Array]:
  """(init key, run key) of a training run with `config.train.seed`."""
  root = jax.random.key(seed)
  return jax.random.fold_in(root, _TAG_INIT), jax.random.fold_in(root,
                                                                 _TAG_STEP)


def step_keys(run_key: Array, step: Array) -> Tuple[Array, Array]:
  """(augmentation key, model key) of training step `step`."""
  k = step_key(run_key, step)
  return jax.random.fold_in(k, 0), jax.random.fold_in(k, 1)


def _index_arg(value, name: str, *, below: Optional[int] = None,
               below_name: str = "") -> int:
  """`value` as an int, if it is a non-negative integer (and < `below`).

  Raises:
    errors.ArgumentError: a bool, a float (1.5 is not read as 1, nor 2.0 as
      2), a negative number, or `value >= below`; one line naming `name`.
  """
  if isinstance(value, (bool, np.bool_)) or not isinstance(
      value, (int, np.integer)):
    raise errors.ArgumentError(f"{name} must be a non-negative integer, got "
                               f"{value!r} ({type(value).__name__})")
  if value < 0 or (below is not None and value >= below):
    bound = f"[0, {below}) ({below_name})" if below is not None else ">= 0"
    raise errors.ArgumentError(f"{name}={value} is outside {bound}")
  return int(value)


def audit_example(policy: policy_lib.Policy, *, seed: int, step: int,
                  example: int, image_shape, random_sign: bool = False,
                  batch_rows: Optional[int] = None
                  ) -> List[Dict[str, Any]]:
  """The exact transforms a training run applied to one example.

  Keys come from (seed, step, global example index) only, so this needs no
  data and no checkpoint: it recomputes the choices and draws of
  `augment_batch` inside step `step` of a run with `config.train.seed=seed`.

  Args:
    policy: the run's policy.
    seed: `config.train.seed`.
    step: the optimiser step (0-based: the step that produced checkpoint
      step + 1).
    example: row of the step's augmented batch; with Batch Augmentation
      (M copies of B images) row c * B + i is copy c of image i.
    image_shape: (H, W, 3) of the training images.
    random_sign: `config.train.random_sign`.
    batch_rows: the rows of the step's augmented batch (M * B), when known:
      `example` must be below it.

  Returns:
    `policy.applied_transforms`' per-layer records (layer, index, name,
    sign, draws, randomness); replay them with `space.replay_transform`.

  Raises:
    errors.ArgumentError: seed, step or example not a non-negative integer
      (step 1.5 is refused, not read as step 1), or example >= batch_rows.
  """
  seed = _index_arg(seed, "seed")
  step = _index_arg(step, "step")
  if batch_rows is not None:
    batch_rows = _index_arg(batch_rows, "batch_rows")
  example = _index_arg(example, "example", below=batch_rows,
                       below_name="the rows of the step's batch")
  _, run_key = run_keys(seed)
  k_aug, _ = step_keys(run_key, jnp.asarray(step, jnp.int32))
  return policy_lib.applied_transforms(k_aug, policy, example, image_shape,
                                       random_sign=random_sign)


def training_example(train_size: int, batch_size: int, *, seed: int,
                     step: int, row: int) -> int:
  """Which training image (index into the in-memory training split) row
  `row` of step `step` holds: the batch order of `input_pipeline.batches`
  (for Batch Augmentation pass row % batch_size).

  Raises:
    errors.ArgumentError: a size, seed or step that is not a non-negative
      integer, a batch larger than the split, or `row` outside
      [0, batch_size) (row -1 would wrap around, row batch_size would be
      the next step's first row).
  """
  train_size = _index_arg(train_size, "train_size")
  batch_size = _index_arg(batch_size, "batch_size", below=train_size + 1,
                          below_name="at most train_size")
  if not batch_size:
    raise errors.ArgumentError("batch_size must be >= 1, got 0")
  seed = _index_arg(seed, "seed")
  step = _index_arg(step, "step")
  row = _index_arg(row, "row", below=batch_size, below_name="batch_size")
  spe = input_pipeline.steps_per_epoch(train_size, batch_size, True)
  epoch, offset = divmod(step, spe)
  order = input_pipeline.epoch_permutation(train_size, seed=seed, epoch=epoch)
  return int(order[offset * batch_size + row])


def augment_batch(key: Array, images: Array, policy: policy_lib.Policy, *,
                  copies: int = 1, random_sign: bool = False,
                  method: str = "auto") -> Array:
  """Repeats a batch M times and augments every copy independently.

  Args:
    key: the augmentation key of the step.
    images: uint8[B, H, W, 3] in [0, 255].
    policy: the policy (static).
    copies: M (Batch Augmentation); the output is the M copies stacked, copy
      c of image i at row c*B + i, and example index c*B + i picks its keys,
      so the copies of one image get independent draws.
    random_sign: the official eval's 50% sign flip (spec §4.2).
    method: `apply_chain_batch` method.

  Returns:
    float32[M*B, H, W, 3] with integer values in [0, 255].
  """
  images = jnp.asarray(images)
  if copies > 1:
    images = jnp.tile(images, (copies, 1, 1, 1))
  return policy_lib.apply_policy(key, images, policy, random_sign=random_sign,
                                 method=method)


def augment_batch_sharded(key: Array, images: Array,
                          policy: policy_lib.Policy, *, mesh,
                          copies: int = 1, random_sign: bool = False,
                          method: str = "auto") -> Array:
  """`augment_batch` with each device augmenting only its own rows.

  Inside a function compiled over `mesh` with `images` sharded over
  `parallel.DATA`, device d holds rows [d*B/n, (d+1)*B/n) and augments copy
  c of them with the keys of examples c*B + d*B/n + j (`apply_policy`'s
  `offset`): the pixels equal `augment_batch`'s on one device. (GSPMD alone
  would not split the CPU's sequential `lax.map` over examples.)

  Args:
    key: the augmentation key of the step (replicated).
    images: uint8[B, H, W, 3], B divisible by `mesh.size`.
    policy: the policy (static).
    mesh: a `parallel.make_mesh` mesh.
    copies, random_sign, method: see `augment_batch`.

  Returns:
    float32[M*B, H, W, 3], rows in `augment_batch`'s order.
  """
  n = images.shape[0]
  per_device = n // mesh.size
  spec = jax.sharding.PartitionSpec

  def local(key, x):
    first = jax.lax.axis_index(parallel.DATA) * per_device
    return jnp.stack([policy_lib.apply_policy(
        key, x, policy, random_sign=random_sign, method=method,
        offset=c * n + first) for c in range(copies)])

  out = jax.shard_map(local, mesh=mesh,
                      in_specs=(spec(), spec(parallel.DATA)),
                      out_specs=spec(None, parallel.DATA),
                      check_vma=False)(key, jnp.asarray(images))
  return out.reshape((copies * n,) + out.shape[2:])  # [M, B] -> [M*B]


def cross_entropy(logits: Array, labels: Array) -> Array:
  """Per-example softmax cross-entropy: float32[N] from float[N, C], int[N]."""
  return optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), labels)


def _forward_train(model: nn.Module, params, batch_stats, x: Array,
                   key: Array, *, groups: int):
  """Logits in BN training mode; with groups > 1, BN statistics per group of
  N/groups consecutive rows (the per-GPU BN of the official BA runs), the new
  running statistics averaged over the groups."""
  variables = {"params": params, "batch_stats": batch_stats}

  def apply(x, k):
    rngs = {"shake": jax.random.fold_in(k, 0),
            "dropout": jax.random.fold_in(k, 1)}
    logits, updates = model.apply(variables, x, train=True,
                                  mutable=["batch_stats"], rngs=rngs)
    return logits, updates.get("batch_stats", {})

  if groups == 1:
    return apply(x, key)
  xs = x.reshape((groups, x.shape[0] // groups) + x.shape[1:])
  keys = jax.vmap(lambda g: jax.random.fold_in(key, g))(jnp.arange(groups))
  logits, stats = jax.vmap(apply)(xs, keys)
  return (logits.reshape((-1,) + logits.shape[2:]),
          jax.tree.map(lambda s: jnp.mean(s, axis=0), stats))


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
  """The optimiser and schedule of `config.train`, as a hashable value: the
  compiled step is found again for an equal spec (`StepSettings`).

  Attributes:
    train: the `config.train` fields that shape the optimiser (frozen).
    steps_per_epoch: for the learning-rate schedule.
  """
  train: ml_collections.FrozenConfigDict
  steps_per_epoch: int

  def build(self, params: PyTree) -> optax.GradientTransformation:
    return make_optimizer(self.train, params, self.steps_per_epoch)

  def schedule(self) -> optax.Schedule:
    return learning_rate_schedule(self.train, self.steps_per_epoch)


@dataclasses.dataclass(frozen=True)
class StepSettings:
  """Everything static about a train step, hashable by value. The step is
  one module-level `jax.jit` with these settings as its static argument, so
  repeated runs in one process (tests, notebooks, sweeps) reuse its
  compilation through jit's own cache."""
  model: nn.Module
  policy_key: Tuple[Any, ...]  # (name, space, shape, probability bytes)
  optimizer: Any  # an `OptimizerSpec`, or an optax GradientTransformation
  schedule: Any  # an optax schedule (for the metrics), or None
  mean: Tuple[float, ...]
  std: Tuple[float, ...]
  ba_copies: int
  groups: int
  random_sign: bool
  augment_method: str
  mesh: Any
  policy: policy_lib.Policy = dataclasses.field(compare=False, hash=False)


def _train_step(settings: StepSettings, state: TrainState, batch,
                key: Array):
  """One optimiser step; see `make_train_step`."""
  tx, schedule = settings.optimizer, settings.schedule
  if isinstance(tx, OptimizerSpec):
    tx, schedule = tx.build(state.params), tx.schedule()
  k_aug, k_model = step_keys(key, state.step)
  if settings.mesh is None:
    images = augment_batch(k_aug, batch["image"], settings.policy,
                           copies=settings.ba_copies,
                           random_sign=settings.random_sign,
                           method=settings.augment_method)
  else:
    images = augment_batch_sharded(
        k_aug, batch["image"], settings.policy, mesh=settings.mesh,
        copies=settings.ba_copies, random_sign=settings.random_sign,
        method=settings.augment_method)
  labels = jnp.tile(batch["label"], settings.ba_copies)
  x = input_pipeline.normalize(images, settings.mean, settings.std)

  def loss_fn(params):
    logits, stats = _forward_train(settings.model, params, state.batch_stats,
                                   x, k_model, groups=settings.groups)
    return jnp.mean(cross_entropy(logits, labels)), (logits, stats)

  (loss, (logits, stats)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {
      "loss": loss,
      "accuracy": jnp.mean((jnp.argmax(logits, -1) == labels).astype(
          jnp.float32)),
      "grad_norm": optax.global_norm(grads),
      "param_norm": optax.global_norm(params),
      "learning_rate": (schedule(state.step) if schedule is not None
                        else jnp.float32(jnp.nan)),
  }
  new_state = state.replace(step=state.step + 1, params=params,
                            batch_stats=stats, opt_state=opt_state)
  if settings.mesh is not None:  # the new state is replicated
    new_state, metrics = jax.lax.with_sharding_constraint(
        (new_state, metrics), parallel.replicated(settings.mesh))
  return new_state, metrics


_train_step_donating = jax.jit(_train_step, static_argnums=0,
                               donate_argnums=1)
_train_step_keeping = jax.jit(_train_step, static_argnums=0)


def make_train_step(model: nn.Module, policy: policy_lib.Policy,
                    tx, *, mean, std, schedule: Optional[optax.Schedule] = None,
                    ba_copies: int = 1, ba_per_copy_bn: bool = True,
                    random_sign: bool = False, augment_method: str = "auto",
                    donate: bool = True, mesh=None) -> Callable:
  """The compiled training step `train_step(state, batch, key)`.

  Args:
    model, policy: static.
    tx: an optax GradientTransformation, or an `OptimizerSpec` (which also
      supplies the schedule, and makes the compiled step reusable by value).
    mean, std: per-channel normalisation constants in [0, 1] units.
    schedule: learning-rate schedule, only to report the lr in the metrics.
    ba_copies: M, Batch Augmentation copies per image.
    ba_per_copy_bn: with M > 1, BN statistics per copy of B images (as each
      of the official 8 GPUs computes them) instead of over all B*M.
    random_sign: see `augment_batch`.
    augment_method: see `augment_batch`.
    donate: donate the input state's buffers (the caller must not reuse it).
    mesh: data parallel over this mesh (`parallel.make_mesh`): the batch
      arrives sharded over `parallel.DATA`, each device augments its rows
      (`augment_batch_sharded`), GSPMD splits the model's forward/backward
      (BN statistics over the whole global batch, as on one device) and the
      new state is replicated. None: one device.

  Returns:
    train_step(state, batch, key) -> (state, metrics): `batch` is
    {"image": uint8[B, H, W, 3], "label": int32[B]}, `key` the run's step
    key root (the step's key is fold_in(key, state.step)); metrics are
    float32 scalars "loss" (mean CE over the B*M augmented images),
    "accuracy", "grad_norm" (before clipping), "param_norm" (after the
    update), "learning_rate".
  """
  settings = StepSettings(
      model=model, policy_key=_policy_fingerprint(policy), optimizer=tx,
      schedule=schedule, mean=tuple(float(v) for v in mean),
      std=tuple(float(v) for v in std), ba_copies=int(ba_copies),
      groups=ba_copies if (ba_copies > 1 and ba_per_copy_bn) else 1,
      random_sign=bool(random_sign), augment_method=augment_method,
      mesh=mesh, policy=policy)
  step = _train_step_donating if donate else _train_step_keeping
  return functools.partial(step, settings)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _eval_step(model: nn.Module, mean: Tuple[float, ...],
               std: Tuple[float, ...], state: TrainState, batch):
  x = input_pipeline.normalize(batch["image"], mean, std)
  logits = model.apply({"params": state.params,
                        "batch_stats": state.batch_stats}, x, train=False)
  mask = batch["mask"]
  labels = batch["label"]
  correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
  # Top-5 (ImageNet's second metric): the label among the 5 largest logits.
  _, top = jax.lax.top_k(logits, min(5, logits.shape[-1]))
  top5 = jnp.any(top == labels[:, None], axis=-1).astype(jnp.float32)
  return {"loss_sum": jnp.sum(cross_entropy(logits, labels) * mask),
          "correct": jnp.sum(correct * mask),
          "correct_top5": jnp.sum(top5 * mask), "count": jnp.sum(mask)}


def make_eval_step(model: nn.Module, *, mean, std) -> Callable:
  """The compiled evaluation step `eval_step(state, batch)`.

  Args:
    model: the flax module (BN in inference mode).
    mean, std: normalisation constants in [0, 1] units.

  Returns:
    eval_step(state, batch) -> {"loss_sum", "correct", "correct_top5",
    "count"} float32 sums
    over the examples with batch["mask"] = 1; batch holds "image"
    uint8[B, H, W, 3], "label" int32[B], "mask" float32[B] (0 for padding).
  """
  return functools.partial(_eval_step, model, tuple(float(v) for v in mean),
                           tuple(float(v) for v in std))


def evaluate(eval_step: Callable, state: TrainState,
             split: input_pipeline.Split, *, batch_size: int,
             sharding=None) -> Dict[str, float]:
  """Test loss and accuracy over a whole split (last batch padded).

  Args:
    eval_step: from `make_eval_step`.
    state: the state to evaluate.
    split: the examples: an in-memory `input_pipeline.Split`, or a
      `streaming.StreamingDataset` (its test split, streamed; each process
      reads its share).
    batch_size: fixed global batch size (one compilation).
    sharding: optional batch sharding.

  Returns:
    {"loss": mean CE, "accuracy": fraction correct (top-1),
    "accuracy_top5": fraction with the label among the top 5 logits,
    "count": N}.
  """
  if getattr(split, "size", None) == 0:  # never a metric from 0 examples
    raise errors.DataError("the evaluation split has no examples; no test "
                           "metric can be computed.")
  totals = np.zeros(4, np.float64)
  for batch in _eval_batches(split, batch_size, sharding):
    out = jax.device_get(eval_step(state, batch))
    totals += [out["loss_sum"], out["correct"], out["correct_top5"],
               out["count"]]
  if totals[3] == 0:
    raise errors.DataError("the evaluation split yielded no examples; no "
                           "test metric can be computed.")
  count = totals[3]
  return {"loss": float(totals[0] / count),
          "accuracy": float(totals[1] / count),
          "accuracy_top5": float(totals[2] / count), "count": int(count)}


# ---------------------------------------------------------------------------
# Input per process.
# ---------------------------------------------------------------------------


def _eval_batches(split, batch_size: int, sharding):
  """Padded evaluation batches (with "mask") on the devices: the whole
  in-memory split, or a streamed split's rows of this process."""
  if streaming.is_streaming(split):
    batches = split.eval_batches(batch_size,
                                 process_index=jax.process_index(),
                                 process_count=jax.process_count())
    mesh = None if sharding is None else sharding.mesh
    yield from streaming.prefetch(batches, functools.partial(
        _put_rows, mesh=mesh, global_size=batch_size))
    return
  for batch in input_pipeline.batches(split, batch_size, seed=0, epoch=0,
                                      shuffle=False, drop_last=False):
    n = batch["label"].shape[0]
    pad = batch_size - n
    batch = {
        "image": np.pad(batch["image"], ((0, pad), (0, 0), (0, 0), (0, 0))),
        "label": np.pad(batch["label"], (0, pad)),
        "mask": np.concatenate([np.ones(n, np.float32),
                                np.zeros(pad, np.float32)]),
    }
    yield _put(batch, sharding)


def _put_rows(batch, *, mesh, global_size: int):
  """This process's rows of a global batch of `global_size`, on the devices
  (sharded over `mesh`; one device when it is None)."""
  if mesh is None:
    return jax.device_put(batch)
  return parallel.from_process_local(batch, mesh, global_size)


def _put(batch, sharding):
  """A global batch that every process holds whole, on the devices."""
  if sharding is None:
    return batch
  if jax.process_count() == 1:
    return jax.device_put(batch, sharding)
  return parallel.shard_batch(batch, sharding.mesh)  # this process's rows


def _process_batches(split: input_pipeline.Split, batch_size: int, *,
                     seed: int, epoch: int, start_step: int, rows: slice):
  """Rows `rows` of each batch of `input_pipeline.batches` (same order,
  drop_last=True), gathering only those rows: one process's input."""
  input_pipeline.batches(split, batch_size, seed=seed, epoch=epoch,
                         start_step=start_step)  # validates the arguments
  order = input_pipeline.epoch_permutation(split.size, seed=seed, epoch=epoch)
  for step in range(start_step, input_pipeline.steps_per_epoch(
      split.size, batch_size, True)):
    idx = order[step * batch_size:(step + 1) * batch_size][rows]
    yield {"image": split.images[idx], "label": split.labels[idx]}


def _train_split(dataset: input_pipeline.Dataset,
                 train) -> input_pipeline.Split:
  if train.train_split == "train":
    return dataset.splits["train"]
  full = dataset.splits.get("train_full", dataset.splits["train"])
  try:
    return input_pipeline.official_search_splits(
        full, allow_small=train.train_split == "pretrain_small")["pretrain"]
  except errors.DataError as e:
    if train.train_split == "pretrain_small":
      raise
    raise errors.DataError(
        f"train_split='pretrain' is CIFAR's train[0:5000] of 50,000 images "
        f"(spec §2.2), but {dataset.name!r} has {full.size}; use "
        "train_split='pretrain_small' (config.train.train_split, or "
        "config.pretrain.train.train_split in a search), the same share of "
        "any training set.") from e


def _save_after_error(save, ckpt, state, pending, check) -> Optional[int]:
  """Saves the current step after Ctrl-C or an input error; returns it (None
  when the state cannot be saved: it diverged, or its buffers were donated
  to the interrupted step)."""
  try:
    if pending is not None:
      check(pending)
    step = int(jax.device_get(state.step))
    save(step)
    ckpt.wait()
    return step
  except Exception:  # pylint: disable=broad-except
    return None


def _policy_fingerprint(policy: policy_lib.Policy):
  """What makes two policies the same step (a static key): name, space,
  probabilities and the variant (first_layers, then; `policy.variant`)."""
  return (policy.name, policy.space_name, policy.probs.shape,
          policy.probs.tobytes(), policy.metadata.get("first_layers", 0),
          policy.metadata.get("then", ""))


def _host_float(x) -> float:
  return float(np.asarray(jax.device_get(x)))


# ---------------------------------------------------------------------------
# Entry points.
# ---------------------------------------------------------------------------


def train(config, workdir, *, dataset: Optional[input_pipeline.Dataset] = None,
          stop_after_step: Optional[int] = None,
          ) -> Tuple[TrainState, Dict[str, Any]]:
  """Trains (resuming from `workdir` if possible) and evaluates.

  Args:
    config: a full `job="train"` config (see `deepaa_jax.config`).
    workdir: output folder: `checkpoints/`, `metrics.jsonl`, `config.json`,
      `results.json`, CLU/TensorBoard event files.
    dataset: an already loaded dataset (default: `load_dataset(config.input)`).
    stop_after_step: end this invocation after this many total steps (a
      checkpoint is saved there), as a preempted job would; a later call
      resumes. None runs to the end.

  Returns:
    (state, metrics): the final TrainState (device arrays) and a dict with
    "test_accuracy", "test_loss", "train_loss", "train_accuracy", "step",
    "wall_time_s", "images_per_s", ... (also written to results.json when
    the run is complete). A finished run (its last checkpoint at the final
    step and its results.json written) is not redone: the state is restored,
    the metrics are read back, and no file is changed.

  Raises:
    errors.ConfigError: invalid config (see `config.validate`), or a batch
      larger than the training split.
    errors.ResumeRefusedError: the workdir's checkpoint belongs to a run with
      other settings, other data or another policy; or the workdir holds a
      finished run (its results.json) without a checkpoint to restore.
    errors.DivergedError (`NonFiniteLossError`): the loss became NaN/inf.
    errors.Interrupted: Ctrl-C (or SIGTERM under `main`); the current step
      was saved first.
    errors.WorkdirError: another live run holds the workdir
      (`utils.WorkdirLock`; a stale lock is taken over with a warning).
  """
  config_lib.validate(config)
  workdir = utils.prepare_workdir(workdir)
  with utils.workdir_lock(workdir, "training"):
    return _train(config, workdir, dataset=dataset,
                  stop_after_step=stop_after_step)


def _train(config, workdir, *, dataset, stop_after_step):
  """`train` in its locked, prepared workdir."""
  t_start = time.time()
  tc = config.train

  # Data: in memory, or streamed a batch at a time (ImageNet).
  if dataset is None:
    dataset = streaming.open_dataset(config.input, stats_dir=workdir)
  streamed = streaming.is_streaming(dataset)
  if streamed:
    train_size, test_size = dataset.train.size, dataset.test.size
    spe = dataset.steps_per_epoch(tc.batch_size, jax.process_count())
    test = dataset  # evaluate() streams its test split
  else:
    split = _train_split(dataset, tc)
    train_size, test = split.size, dataset.splits["test"]
    test_size = test.size
    spe = input_pipeline.steps_per_epoch(split.size, tc.batch_size, True)
  if spe == 0:
    raise errors.ConfigError(
        f"{config_lib.section_of(config)}.train.batch_size={tc.batch_size} "
        f"exceeds the {train_size} "
        f"images of the {tc.train_split!r} split (batches drop the remainder).")
  total = config_lib.total_steps(tc, spe)
  mean, std = dataset.mean, dataset.std  # eval constants (spec §4.3)
  if tc.normalization == "search":  # spec §1.3, for search pretraining
    mean, std = input_pipeline.normalization_constants(
        dataset.name, phase="search", default=(mean, std))

  # Model, policy, optimiser (compiled steps are found again by value).
  num_classes = input_pipeline.check_num_classes(
      dataset, config.model.num_classes,
      field=f"{config_lib.section_of(config)}.model.num_classes")
  model = build_model(config.model, num_classes=num_classes, bf16=tc.bf16)
  policy = policy_lib.make_policy(config.policy,
                                  space_lib.get_space(config.policy.space))
  init_key, run_key = run_keys(tc.seed)
  params0, stats0 = init_variables(model, tuple(dataset.image_shape), init_key)
  # Devices: data parallel over every device of every process (the batch
  # split on axis 0, each process feeding its rows); None: one device.
  mesh = parallel.make_mesh() if jax.device_count() > 1 else None
  optimizer = OptimizerSpec(ml_collections.FrozenConfigDict(
      {k: v for k, v in tc.to_dict().items() if k not in _NOT_STATIC}), spe)
  tx = optimizer.build(params0)
  train_step = make_train_step(
      model, policy, optimizer, mean=mean, std=std, ba_copies=tc.ba_copies,
      ba_per_copy_bn=tc.ba_per_copy_bn, random_sign=tc.random_sign,
      augment_method=tc.augment_method, mesh=mesh)
  eval_step = make_eval_step(model, mean=mean, std=std)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params0,
                     batch_stats=stats0, opt_state=tx.init(params0))
  num_params = models.count_params(params0)

  batch_sharding = parallel.data_sharding(mesh) if mesh is not None else None
  if mesh is not None:  # before the restore, which then restores replicated
    state = parallel.replicate(state, mesh)
    run_key = parallel.replicate(run_key, mesh)

  # Resume: the newest checkpoint that restores, if it is this run's.
  identity = utils.run_identity(config, ignore=_identity_ignore(config),
                                data=dataset.fingerprint(),
                                policy=utils.content_hash(
                                    policy.probs, label=f"{policy.name} "
                                    f"{policy.space_name}"))
  ckpt = utils.Checkpointer(workdir / "checkpoints",
                            keep=tc.keep_checkpoints,
                            save_interval_steps=tc.checkpoint_every_steps)
  resumed_from, restored, meta = ckpt.restore_latest(
      state, with_sharding=mesh is not None)
  meta = meta or {}
  if resumed_from is not None:
    utils.check_identity(meta.get("identity"), identity, workdir)
    state = restored
  start = int(jax.device_get(state.step))
  done = utils.read_json(workdir / "results.json")
  if resumed_from is None and done is not None and done.get("complete"):
    ckpt.close()
    raise errors.ResumeRefusedError(
        f"{workdir} holds a finished training run (results.json: step "
        f"{done.get('step')}, test accuracy {done.get('test_accuracy')}) "
        f"but no checkpoint in {ckpt.directory}, so it is not trained "
        "again over its results; use a new --workdir, or delete its "
        "results.json to train it again.")
  if (resumed_from is not None and start >= total and done is not None
      and done.get("complete") and done.get("step") == start):
    ckpt.close()
    logging.warning("%s holds a finished training run (step %d of %d); "
                    "nothing was redone and no file was changed. Test "
                    "accuracy %s.", workdir, start, total,
                    done.get("test_accuracy"))
    return state, done
  if resumed_from is not None:
    utils.resume_banner(
        "TRAINING", workdir,
        f"It continues from step {resumed_from} of {total} (checkpoint in "
        f"{ckpt.directory}). "
        "The parameters, BN statistics and optimiser state are those of that "
        "checkpoint, not a fresh initialisation.")
    saved_processes = meta.get("processes", jax.process_count())
    if streamed and saved_processes != jax.process_count():
      # Each process streams its own share: another process count is
      # another (equally valid) example order for the rest of the epoch.
      logging.warning(
          "This streamed run was checkpointed with %d processes and resumes "
          "with %d: the rest of epoch %d reads the examples in another order "
          "than an uninterrupted run would (exact resume needs the same "
          "number of processes).", saved_processes, jax.process_count(),
          resumed_from // spe)
  end = total if stop_after_step is None else min(total, int(stop_after_step))

  writer, jsonl, tensorboard = utils.metric_writer(workdir,
                                                   workdir / "metrics.jsonl")
  if jax.process_index() == 0:
    jsonl.truncate_after(resumed_from)  # None: a fresh run drops old records
    utils.write_json(workdir / "config.json", utils.flat_config(config))
  progress = utils.progress_reporter(total, tensorboard, tc.log_every_steps)
  logging.info(
      "Training %s (%d params) with policy %r (%d layers) on %d %s images, "
      "batch %d x %d copies, %d steps (%d per epoch), from step %d; "
      "workdir %s", config.model.name, num_params, policy.name,
      policy.num_layers, train_size, tc.train_split, tc.batch_size,
      tc.ba_copies, total, spe, start, workdir)

  def evaluate_now(step: int) -> Dict[str, float]:
    res = evaluate(eval_step, state, test, batch_size=tc.eval_batch_size,
                   sharding=batch_sharding)
    res["step"] = step
    writer.write_scalars(step, {"epoch": step / spe,
                                "test_loss": res["loss"],
                                "test_accuracy": res["accuracy"],
                                "test_accuracy_top5": res["accuracy_top5"]})
    logging.info("step %d (epoch %.2f): test accuracy %.4f (top-5 %.4f), "
                 "loss %.4f", step, step / spe, res["accuracy"],
                 res["accuracy_top5"], res["loss"])
    return res

  # The last train/test metrics travel with the checkpoint, so that a run
  # resumed at (or killed after) its last step still reports them.
  last_train = dict(meta.get("last_train") or {})
  test_res = meta.get("test")

  def save(at_step: int) -> None:
    # The log's records up to this step are written (a gs:// log uploaded)
    # before the checkpoint can commit: a resume never lacks them.
    writer.flush()
    ckpt.save(at_step, state, {"identity": identity,
                               "last_train": last_train, "test": test_res,
                               "processes": jax.process_count()})

  # The loop. The loss of step s is checked while step s+1 runs.
  window = []
  pending = None  # (step, metrics) awaiting the NaN check
  timed_steps, timed_s, t_first_done = 0, 0.0, None

  def check(item):
    step_done, metrics = item
    loss = _host_float(metrics["loss"])
    norms = {k: _host_float(metrics[k]) for k in ("grad_norm", "param_norm")}
    if not (math.isfinite(loss) and all(map(math.isfinite, norms.values()))):
      raise NonFiniteLossError(
          f"Training diverged (non-finite loss, gradient or parameters) at "
          f"step {step_done} (epoch {step_done / spe:.2f}): loss {loss}, "
          f"gradient norm {norms['grad_norm']:.4g}, parameter norm after the "
          f"update {norms['param_norm']:.4g}, learning rate "
          f"{_host_float(metrics['learning_rate']):.4g}. Last good "
          f"checkpoint: {ckpt.all_steps()[-1:] or 'none'} in "
          f"{ckpt.directory}. Lower config.train.learning_rate, keep "
          "config.train.grad_clip_norm > 0, or turn off config.train.bf16.")

  put_local = functools.partial(_put_rows, mesh=mesh,
                                global_size=tc.batch_size)

  t_loop = time.time()
  step = start
  try:
    while step < end:
      epoch, offset = divmod(step, spe)
      if streamed:  # each process streams its own share of the examples
        batches = streaming.prefetch(dataset.train_batches(
            tc.batch_size, seed=tc.seed, epoch=epoch, start_step=offset,
            process_index=jax.process_index(),
            process_count=jax.process_count()), put_local)
      elif jax.process_count() > 1:  # each process reads only its rows
        batches = _process_batches(
            split, tc.batch_size, seed=tc.seed, epoch=epoch,
            start_step=offset,
            rows=parallel.process_slice(tc.batch_size, mesh))
      else:
        batches = input_pipeline.batches(split, tc.batch_size, seed=tc.seed,
                                         epoch=epoch, start_step=offset)
      for batch in batches:
        if mesh is not None and not streamed:  # (streamed: put by prefetch)
          batch = put_local(batch)
        state, metrics = train_step(state, batch, run_key)
        step += 1
        if pending is not None:
          check(pending)
        pending = (step, metrics)
        if utils.preemption_reached(step):  # several processes: see utils
          raise KeyboardInterrupt("preempted")
        if t_first_done is None:
          jax.block_until_ready(metrics["loss"])
          t_first_done = time.time()  # excludes compilation from images/s
          first_timed = step
        window.append(metrics)
        progress(step, time.time())
        # The last step's evaluation and checkpoint come after the loop.
        checkpoint_now = step < total and ckpt.should_save(step)
        eval_now = (step % spe == 0 and step < total and tc.eval_every_epochs
                    and (step // spe) % tc.eval_every_epochs == 0)
        log_now = step % tc.log_every_steps == 0 or step == end
        if checkpoint_now or eval_now or log_now:
          check(pending)  # never checkpoint or report a diverged state
          pending = None
        if log_now:
          host = jax.device_get(window)
          last_train = {k: float(np.mean([m[k] for m in host]))
                        for k in host[0]}
          window = []
          writer.write_scalars(step, {
              "epoch": step / spe,
              **{f"train_{k}": v for k, v in last_train.items()}})
        if eval_now:
          test_res = evaluate_now(step)
        if checkpoint_now:
          save(step)
        if step >= end:
          break
    if pending is not None:
      check(pending)
    jax.block_until_ready(state)
    if t_first_done is not None:
      timed_steps = step - first_timed
      timed_s = time.time() - t_first_done
    if step >= total and (test_res is None or test_res["step"] != step):
      test_res = evaluate_now(step)
    save(step)
  except errors.DataError as e:  # a bad record: keep what was trained
    saved = _save_after_error(save, ckpt, state, pending, check)
    ckpt.close()
    raise errors.DataError(
        f"{e} (training stopped at step "
        f"{saved if saved is not None else step}; "
        f"{'saved' if saved is not None else 'latest checkpoint'} in "
        f"{ckpt.directory})") from None
  except KeyboardInterrupt:
    saved = _save_after_error(save, ckpt, state, pending, check)
    ckpt.close()
    where = (f"saved at step {saved}" if saved is not None else
             f"latest checkpoint: {ckpt.all_steps()[-1:] or 'none'}")
    raise errors.Interrupted(
        f"Interrupted at step {step} of {total}; {where} in "
        f"{ckpt.directory}. Rerun the same command to resume.") from None
  ckpt.close()
  train_s = time.time() - t_loop

  complete = step >= total
  test_res = test_res if test_res and test_res["step"] == step else {}
  images = tc.batch_size * tc.ba_copies
  metrics = {
      "step": step,
      "total_steps": total,
      "complete": complete,
      "epoch": step / spe,
      "test_accuracy": test_res.get("accuracy"),
      "test_accuracy_top5": test_res.get("accuracy_top5"),
      "test_loss": test_res.get("loss"),
      "train_loss": last_train.get("loss"),
      "train_accuracy": last_train.get("accuracy"),
      "resumed_from_step": resumed_from,
      "wall_time_s": time.time() - t_start,
      "train_time_s": train_s,
      "images_per_s": (timed_steps * images / timed_s if timed_s > 0
                       else None),
      "num_params": num_params,
  }
  writer.flush()
  writer.close()
  if complete and jax.process_index() == 0:
    results = dict(metrics)
    results.update({
        "policy": {"name": policy.name, "kind": config.policy.kind,
                   "num_layers": policy.num_layers,
                   "summary": policy.summary(5)},
        "model": config.model.name,
        "dataset": {"name": dataset.name, "train_split": (
                        dataset.train.spec if streamed else tc.train_split),
                    "train_images": train_size, "test_images": test_size,
                    "pipeline": "stream" if streamed else "memory",
                    "fingerprint": identity["data"]},
        "devices": [str(d) for d in jax.local_devices()],
        "num_devices": jax.device_count(),
        "num_processes": jax.process_count(),
        "jax_version": jax.__version__,
        "jax_threefry_partitionable": bool(
            jax.config.jax_threefry_partitionable),
        "config": json.loads(config.to_json()) if hasattr(config, "to_json")
                  else dict(config),
    })
    utils.write_json(workdir / "results.json", results)
  logging.info("%s: step %d/%d, test accuracy %s, %.1f s",
               "Done" if complete else "Stopped", step, total,
               metrics["test_accuracy"], metrics["wall_time_s"])
  return state, metrics


def run(config, workdir) -> Dict[str, Any]:
  """The training job (the CLI entry): `train(config, workdir)`'s metrics.

  Args:
    config: a full `job="train"` config.
    workdir: output folder (see `train`).

  Returns:
    The final metrics dict (test accuracy/loss, wall time, images/s, ...).
  """
  _, metrics = train(config, workdir)
  return metrics
