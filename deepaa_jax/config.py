"""Config building blocks for training runs, and their validation.

Config files (`configs/*.py`) assemble a run from these sections and override
what differs (big_vision / flax examples style):

  config.job     "train"
  config.model   `model_config()`   which network
  config.policy  `policy_config()`  which augmentation policy
  config.train   `train_config()`   optimisation, schedule, BA, bookkeeping
  config.input   `input_pipeline.default_input_config()`  which data

Every field has a one-line comment giving the official DeepAA value where one
exists (spec = `shared/reference/official_deepaa_spec.md`; §4.4 for the
evaluation recipe, §4.5 for Batch Augmentation, §2.3 for the search-model
pretraining).

`validate(config)` runs the semantic checks (the lock on the ConfigDict already
rejects unknown field names) and raises `ValueError` whose message names the
field and the allowed values, before anything is compiled.
`total_steps(config.train, steps_per_epoch)` is the one place that turns
`num_epochs` / `num_steps` into a step count (big_vision `utils.steps`).
"""

import importlib.util
import math
import pathlib
import re
from typing import Any, Optional, Sequence, Tuple

import jax
import ml_collections

from deepaa_jax import errors
from deepaa_jax import input_pipeline
from deepaa_jax import models
from deepaa_jax import official
from deepaa_jax import parallel
from deepaa_jax import policy as policy_lib
from deepaa_jax import reward as reward_lib
from deepaa_jax import streaming
from deepaa_jax import utils

SCHEDULES = ("cosine", "step")
DECAY_MASKS = ("non_bn", "keras")
TRAIN_SPLITS = ("train", "pretrain", "pretrain_small")
AUGMENT_METHODS = ("auto", "sequential", "vectorized")
NORMALIZATIONS = ("eval", "search")
POLICY_SPACES = ("cifar", "imagenet")
SEARCH_DATA_SPLITS = ("official", "small", "stream")


# ---------------------------------------------------------------------------
# Paths.
# ---------------------------------------------------------------------------


def official_policy_path(name: str) -> str:
  """Absolute path of an official policy file, `policy_DeepAA_<name>.npz`.

  The `../shared/official_policies` copy (relative to the current
  directory, then to the repository root) when present, else its cache file
  (`official.local_path`), which need not exist yet: the first run that
  uses the policy downloads it from the authors' repository at a pinned
  commit and checks its sha256 (`official.fetch`).

  Args:
    name: "cifar_1", "cifar_2", "imagenet_1" or "imagenet_2".

  Returns:
    An absolute path string (the file may not exist yet).
  """
  return str(official.local_path(name))


def load_config_file(path, *args) -> ml_collections.ConfigDict:
  """`get_config(*args)` of a config file, loaded by its path.

  Config files build on each other (`cifar10_cpu.py` on `cifar10.py`) and
  scripts and tests load them through this, so that nothing depends on the
  working directory or on `configs/` being importable.

  Args:
    path: a `configs/*.py`-style file defining `get_config`.
    *args: passed to `get_config` (e.g. the policy name of the eval configs).
  """
  path = pathlib.Path(path)
  spec = importlib.util.spec_from_file_location(f"deepaa_config_{path.stem}",
                                                path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(*args)


# ---------------------------------------------------------------------------
# Sections.
# ---------------------------------------------------------------------------


def model_config() -> ml_collections.ConfigDict:
  """The `config.model` section: the network (paper CIFAR default: WRN-28-10)."""
  c = ml_collections.ConfigDict()
  c.name = "wrn_28_10"  # models.MODEL_NAMES, or "wrn_<depth>_<k>[_search]" for any WRN.
  c.num_classes = 0  # logits; 0 = the dataset's number of classes.
  c.lock()  # a typo inside a config file fails like one on the command line
  return c


def policy_config() -> ml_collections.ConfigDict:
  """The `config.policy` section: the augmentation policy (see `policy.py`)."""
  c = ml_collections.ConfigDict()
  c.kind = "official"  # none|standard|standard_cutout|trivialaugment|deepta|official|file.
  c.path = official_policy_path("cifar_1")  # npz (official) or JSON (file) policy; other kinds ignore it.
  c.num_layers = 6  # K for kind="deepta" (paper §4.4: 6 uniform layers).
  c.space = "cifar"  # transform set the policy is over: "cifar" or "imagenet".
  c.first_layers = 0  # keep the first k layers (Table 5 depth ablation); 0 = all.
  c.then = ""  # baseline after the policy's layers (§4.4 DeepAA-simple); "" = none.
  c.lock()  # a typo inside a config file fails like one on the command line
  return c


def train_config() -> ml_collections.ConfigDict:
  """The `config.train` section, defaulting to the CIFAR WRN-28-10 recipe.

  Official values (spec §4.4): batch 128, 200 epochs, lr 0.1 with a 5-epoch
  linear warm-up from 0 then cosine to 0 (per-iteration fractional epochs),
  SGD Nesterov 0.9, weight decay 5e-4 on every non-BN parameter, gradient
  norm clipped at 5, the policy applied with the eval code's random sign flip.
  """
  c = ml_collections.ConfigDict()
  # Duration: exactly one of the two is > 0 (`total_steps` converts).
  c.num_epochs = 200.0  # epochs of `train_split`, may be fractional (official CIFAR: 200).
  c.num_steps = 0  # alternatively a number of steps; 0 = use num_epochs.
  c.batch_size = 128  # images drawn per step, before BA copies (official: 128).
  # Learning rate (spec §4.4: GradualWarmupScheduler + after-scheduler).
  c.learning_rate = 0.1  # peak lr, reached at the end of warm-up (CIFAR 0.1).
  c.schedule = "cosine"  # after warm-up: "cosine" (CIFAR) or "step" (ImageNet).
  c.warmup_epochs = 5.0  # linear warm-up length (official: 5; search pretraining: 0).
  c.warmup_init_lr = 0.0  # lr at step 0 (CIFAR 0; ImageNet 0.1, i.e. multiplier 8 to 0.8).
  c.min_lr = 0.0  # cosine floor at the last step (eval: 0; search pretraining: 1e-7).
  c.step_milestones = (90, 180, 240)  # "step": epochs AFTER warm-up (official: 95/185/245 absolute).
  c.step_factor = 0.1  # "step": lr multiplier at each milestone.
  # Optimiser: clip -> weight decay -> SGD (order per clip_includes_weight_decay).
  c.momentum = 0.9  # SGD momentum (official: 0.9).
  c.nesterov = True  # Nesterov momentum (official: True).
  c.weight_decay = 5e-4  # wd * w added to the gradient (CIFAR 5e-4, ImageNet 1e-4; Keras L2 2.5e-4 = 5e-4).
  c.decay_mask = "non_bn"  # "non_bn": all but BN (PyTorch eval); "keras": conv w/b + dense kernel (search L2).
  c.grad_clip_norm = 5.0  # global-norm clipping threshold; 0 disables (ImageNet: 0).
  c.clip_includes_weight_decay = False  # False: clip raw grads then add wd (PyTorch); True: clip grad of loss+L2 (Keras).
  # Augmentation.
  c.ba_copies = 1  # M, Batch Augmentation: each image augmented M times per step (official BA: 8).
  c.ba_per_copy_bn = True  # BA: BN batch statistics per copy of B images, as on each official GPU.
  c.random_sign = True  # eval code's 50% sign flip of shear/translate/rotate (spec §4.2).
  c.augment_method = "auto"  # apply_chain_batch: auto|sequential|vectorized (auto: sequential on CPU).
  c.bf16 = False  # compute in bfloat16 (params, loss and optimiser stay float32).
  c.normalization = "eval"  # mean/std: "eval" (0.4914, ...; spec §4.3) or "search" (0.49139968, ...; §1.3).
  # Data and bookkeeping.
  c.train_split = "train"  # "train"; "pretrain": train[0:5000] (spec §2.2); "pretrain_small": same share of toy data.
  c.eval_every_epochs = 20  # test-set evaluation period in epochs (official: 20); 0 = only at the end.
  c.eval_batch_size = 1000  # test batch size (the last batch is padded, never dropped).
  c.checkpoint_every_steps = 1000  # orbax checkpoint period (also at the end); 0 = only at the end.
  c.keep_checkpoints = 2  # orbax max_to_keep.
  c.log_every_steps = 100  # training-metric logging period (metrics.jsonl, CLU writer).
  c.seed = 0  # PRNG seed: init, data order (seed, epoch) and augmentation keys.
  c.lock()  # a typo inside a config file fails like one on the command line
  return c


def base_config() -> ml_collections.ConfigDict:
  """A complete `job="train"` config with all sections at their defaults."""
  config = ml_collections.ConfigDict()
  config.job = "train"  # main.py dispatch.
  config.model = model_config()
  config.policy = policy_config()
  config.train = train_config()
  config.input = input_pipeline.default_input_config()
  return config


def search_pretraining_config() -> ml_collections.ConfigDict:
  """The official search-model pretraining (spec §2.3) as a train config.

  WRN-40-2 (Keras flavour) on the first 5,000 CIFAR-10 training images
  (spec §2.2), batch 128 with drop_last (39 steps per epoch), 45 epochs
  (1,755 steps), crop -> flip -> Cutout-16, SGD Nesterov 0.9, cosine 0.1 ->
  1e-7 with no warm-up, Keras L2 2.5e-4 (wd 5e-4) on conv kernels/biases and
  the dense kernel, global-norm clipping at 5 of the gradient INCLUDING the
  L2 term, search-time normalisation constants. `train.train(config,
  workdir)` returns the state whose params/batch_stats the search uses.
  """
  config = base_config()
  config.model.name = "wrn_40_2_search"  # Keras WRN-40-2 (spec §2.3).
  config.policy.kind = "standard_cutout"  # "augmentation_default": crop, flip, cutout 16.
  config.train.train_split = "pretrain"  # train[0:5000] in the original order.
  config.train.num_epochs = 45.0  # nb_epochs 45 (README).
  config.train.batch_size = 128  # 39 steps per epoch.
  config.train.learning_rate = 0.1  # pretrain_lr 0.1.
  config.train.schedule = "cosine"  # lr_scheduler.py:42-49.
  config.train.warmup_epochs = 0.0  # no warm-up.
  config.train.min_lr = 1e-7  # cosine floor.
  config.train.weight_decay = 5e-4  # Keras L2 2.5e-4.
  config.train.decay_mask = "keras"  # conv kernels + biases, dense kernel.
  config.train.grad_clip_norm = 5.0  # global norm 5.
  config.train.clip_includes_weight_decay = True  # L2 is in the loss.
  config.train.random_sign = False  # search semantics (no signed ops anyway).
  config.train.normalization = "search"  # 0.49139968, ... (spec §1.3).
  config.train.eval_every_epochs = 0  # the official code never uses the test set.
  config.train.checkpoint_every_steps = 500  # resumable pretraining.
  return config


def default_pretrain_config() -> ml_collections.ConfigDict:
  """`config.pretrain` of a search config: the official search-network
  pretraining (spec §2.3).

  `search_pretraining_config()` without its `input` section (the search
  config's `input` governs every stage): WRN-40-2 (Keras variant) on
  train[0:5000] (the paper says 4,000 random images), 45 epochs of batch 128,
  crop + flip + cutout, Nesterov SGD with cosine 0.1 -> 1e-7 and no warm-up,
  global-norm clipping 5 of the gradient of loss + L2 (Keras), weight decay
  5e-4 on conv kernels, conv biases and the dense kernel.
  """
  c = search_pretraining_config()
  del c["input"]
  del c["job"]
  c.policy.path = ""  # kind "standard_cutout" needs no file.
  c.lock()
  return c


def default_evaluate_config() -> ml_collections.ConfigDict:
  """`config.evaluate` of a search config: train an evaluation model with the
  found policy.

  Defaults to the paper's CIFAR evaluation (WRN-28-10, 200 epochs, spec
  §4.4), disabled (`enabled=False`) because it is a long job of its own.
  """
  c = base_config()
  del c["input"]
  del c["job"]
  c.enabled = False  # train an evaluation model after the search.
  c.policy.kind = "file"  # set to the found policy by `search_job.run`.
  c.policy.path = ""
  c.lock()
  return c


# ---------------------------------------------------------------------------
# Durations.
# ---------------------------------------------------------------------------


def total_steps(train: Any, steps_per_epoch: int) -> int:
  """Number of optimiser steps of a run (big_vision `steps()` style).

  Args:
    train: the `config.train` section; exactly one of `num_epochs` (may be
      fractional) and `num_steps` is > 0.
    steps_per_epoch: batches per epoch (drop_last), > 0.

  Returns:
    num_steps, or round(num_epochs * steps_per_epoch) (at least 1).

  Raises:
    ValueError: neither or both durations set, or steps_per_epoch <= 0.
  """
  epochs, steps = float(train.num_epochs), int(train.num_steps)
  if (epochs > 0) == (steps > 0):
    raise ValueError(
        "Exactly one of config.train.num_epochs and config.train.num_steps "
        f"must be > 0 (the other 0), got num_epochs={train.num_epochs}, "
        f"num_steps={train.num_steps}.")
  if steps_per_epoch <= 0:
    raise ValueError(f"steps_per_epoch must be > 0, got {steps_per_epoch}.")
  if steps > 0:
    return steps
  return max(1, int(round(epochs * steps_per_epoch)))


# ---------------------------------------------------------------------------
# Validation: once per job, before any data is loaded or anything compiled.
# ---------------------------------------------------------------------------

# The sections each job reads; anything else at the top level is a typo.
_JOB_SECTIONS = {
    "train": ("job", "model", "policy", "train", "input"),
    "search": ("job", "input", "pretrain", "pretrain_checkpoint", "search",
               "evaluate"),
    "demo": None,  # the demo config is free-form
    "inspect": ("job", "seed", "policy", "input", "inspect"),
}


def _one_of(field: str, value: Any, allowed: Sequence[Any]) -> None:
  if value not in allowed:
    raise errors.ConfigError(
        f"{field} must be one of {tuple(allowed)}, got {value!r}")


def _check(condition: bool, field: str, requirement: str, value: Any) -> None:
  if not condition:
    raise errors.ConfigError(f"{field} must be {requirement}, got {value!r}")


def _check_finite(config, prefix: str = "config") -> None:
  """Every float field finite: `inf` passes `> 0` checks and fails late."""
  for key, value in utils.flat_config(config).items():
    if isinstance(value, float) and not math.isfinite(value):
      raise errors.ConfigError(
          f"{prefix}.{key} must be a finite number, got {value!r}")


def _check_sections(config, job: str) -> None:
  allowed = _JOB_SECTIONS.get(job)
  if allowed is None:
    return
  for key in config.keys():
    if key not in allowed:
      hint = errors.did_you_mean(key, allowed, show="config.{}".format)
      raise errors.ConfigError(
          f"config.{key} is not a field of a job={job!r} config (fields: "
          f"{', '.join(allowed)}){hint}")
  for key in allowed:
    if key not in config:
      raise errors.ConfigError(
          f"config.{key} is missing from this job={job!r} config; build it "
          "from deepaa_jax.config (see configs/).")


def validate(config) -> None:
  """Semantic checks of a whole config, by `config.job`; cheap, before any
  data is loaded or anything is compiled.

  Unknown field names are rejected by the ConfigDict lock (sections are
  locked when built, so a typo inside a config file's `get_config` fails
  too) and here for top-level sections; this checks values: finite numbers,
  positive sizes, known names, consistent durations, batch sizes divisible
  by the device count, files that must exist.

  Raises:
    errors.ConfigError: the first problem found; the message names the
      field (`config.train.schedule ...`) and the allowed values.
  """
  job = config.get("job", "train")
  _one_of("config.job", job, tuple(_JOB_SECTIONS))
  _check_sections(config, job)
  _check_finite(config)
  if job == "train":
    _validate_train(config)
  elif job == "search":
    _validate_search(config)
  elif job == "inspect":
    _validate_inspect(config)


def _validate_inspect(config) -> None:
  """The checks of a `job="inspect"` config (`inspect_job`). Policy files
  are checked when read, each problem as one line naming the file."""
  p, c = config.policy, config.inspect
  _one_of("config.policy.kind", p.kind, ("auto",) + policy_lib.KINDS)
  _one_of("config.policy.space", p.space, ("auto",) + POLICY_SPACES)
  if p.kind in ("auto", "official", "file") and not str(p.path).strip():
    raise errors.ConfigError(
        f"config.policy.path is required for config.policy.kind={p.kind!r}: "
        "a JSON policy, an official npz, an official name (cifar_1, ...) or "
        "a baseline name (standard, ...)")
  _check(isinstance(p.num_layers, int) and p.num_layers >= 1,
         "config.policy.num_layers", "an integer >= 1 (K of deepta)",
         p.num_layers)
  _validate_policy_variant(p, lambda field: f"config.policy.{field}")
  _check(isinstance(config.seed, int) and config.seed >= 0, "config.seed",
         "a non-negative integer", config.seed)
  for field in ("num_images", "samples", "top_k"):
    _check(isinstance(c[field], int) and c[field] >= 1,
           f"config.inspect.{field}", "an integer >= 1", c[field])
  for field in ("image_size", "layer_images", "audit_seed",
                "audit_image_size"):
    _check(isinstance(c[field], int) and c[field] >= 0,
           f"config.inspect.{field}", "an integer >= 0", c[field])
  _check(isinstance(c.audit_step, int) and c.audit_step >= -1,
         "config.inspect.audit_step", "an integer >= 0 (-1: no audit)",
         c.audit_step)
  _check(isinstance(c.audit_examples, int) and c.audit_examples >= 1,
         "config.inspect.audit_examples", "an integer >= 1",
         c.audit_examples)
  _one_of("config.input.source", config.input.source, input_pipeline.INPUT_SOURCES)


def _validate_policy_variant(p, name) -> None:
  """config.policy.first_layers and .then (`policy.make_policy`); `name(f)`
  is the full name of field f. Whether first_layers fits the policy's
  layer count is checked when the policy is read."""
  k = p.first_layers
  _check(isinstance(k, int) and not isinstance(k, bool) and k >= 0,
         name("first_layers"), "an integer >= 0 (0 = all layers)", k)
  if p.then not in ("",) + policy_lib.THEN_KINDS:
    raise errors.ConfigError(
        f"{name('then')} must be a baseline made of layers, one of "
        f"{policy_lib.THEN_KINDS} (or '' for none), got {p.then!r}")


def _validate_train(config, prefix: str = "config") -> None:
  """The checks of a `job="train"` config. `prefix` names the section where
  the user sets these fields (a search's "config.pretrain")."""
  m, p, t, i = config.model, config.policy, config.train, config.input
  name = lambda section, field: (  # pylint: disable=g-long-lambda
      f"config.input.{field}" if section == "input" else
      f"{prefix}.{section}.{field}")

  # Model.
  if not models.is_known_model(m.name):
    raise errors.ConfigError(
        f"{name('model', 'name')} must be one of {models.MODEL_NAMES} or "
        f"'wrn_<depth>_<k>[_search]' with depth = 6n+4 >= 10, got {m.name!r}")
  _check(m.num_classes >= 0, name("model", "num_classes"),
         ">= 0 (0 = from the dataset)", m.num_classes)

  # Policy.
  _one_of(name("policy", "kind"), p.kind, policy_lib.KINDS)
  _one_of(name("policy", "space"), p.space, POLICY_SPACES)
  if p.kind in ("official", "file"):
    if not p.path:
      raise errors.ConfigError(
          f"{name('policy', 'path')} is required for "
          f"{name('policy', 'kind')}={p.kind!r}")
    # An official policy (by name or by its file name) that is not here
    # yet is fetched on first use (`official.fetch`, in make_policy).
    if (not utils.resolve_path(p.path).is_file()
        and (p.kind != "official" or official.name_of(p.path) is None)):
      raise errors.ConfigError(
          f"{name('policy', 'path')}: no policy file at {p.path!r} (needed "
          f"by {name('policy', 'kind')}={p.kind!r})")
  if p.kind == "deepta":
    _check(p.num_layers >= 1, name("policy", "num_layers"), ">= 1",
           p.num_layers)
  _validate_policy_variant(p, lambda field: name("policy", field))

  # Duration.
  _check(t.num_epochs >= 0, name("train", "num_epochs"), ">= 0", t.num_epochs)
  _check(t.num_steps >= 0, name("train", "num_steps"), ">= 0", t.num_steps)
  if (t.num_epochs > 0) == (t.num_steps > 0):
    raise errors.ConfigError(
        f"Exactly one of {name('train', 'num_epochs')} and "
        f"{name('train', 'num_steps')} must be > 0 (the other 0), got "
        f"num_epochs={t.num_epochs}, num_steps={t.num_steps}")

  # Batch sizes and devices.
  n_dev = jax.device_count()
  for field in ("batch_size", "eval_batch_size"):
    value = t[field]
    _check(isinstance(value, int) and value > 0, name("train", field),
           "a positive integer", value)
    if value % n_dev:
      raise errors.ConfigError(
          f"{name('train', field)}={value} must be divisible by the number "
          f"of devices ({n_dev}, jax.device_count())")
  _check(t.ba_copies >= 1, name("train", "ba_copies"), ">= 1 (1 = no BA)",
         t.ba_copies)

  # Learning rate.
  _check(t.learning_rate > 0, name("train", "learning_rate"), "> 0",
         t.learning_rate)
  _one_of(name("train", "schedule"), t.schedule, SCHEDULES)
  _check(t.warmup_epochs >= 0, name("train", "warmup_epochs"), ">= 0",
         t.warmup_epochs)
  _check(t.warmup_init_lr >= 0, name("train", "warmup_init_lr"), ">= 0",
         t.warmup_init_lr)
  _check(0 <= t.min_lr <= t.learning_rate, name("train", "min_lr"),
         f"in [0, learning_rate={t.learning_rate}]", t.min_lr)
  if t.num_epochs > 0:
    _check(t.warmup_epochs < t.num_epochs, name("train", "warmup_epochs"),
           f"< num_epochs={t.num_epochs}", t.warmup_epochs)
  milestones = tuple(t.step_milestones)
  _check(all(x >= 0 for x in milestones) and
         list(milestones) == sorted(milestones),
         name("train", "step_milestones"),
         "non-negative epochs (after warm-up) in increasing order", milestones)
  _check(0 < t.step_factor <= 1, name("train", "step_factor"), "in (0, 1]",
         t.step_factor)

  # Optimiser.
  _check(0 <= t.momentum < 1, name("train", "momentum"), "in [0, 1)",
         t.momentum)
  _check(t.weight_decay >= 0, name("train", "weight_decay"), ">= 0",
         t.weight_decay)
  _one_of(name("train", "decay_mask"), t.decay_mask, DECAY_MASKS)
  _check(t.grad_clip_norm >= 0, name("train", "grad_clip_norm"),
         ">= 0 (0 disables)", t.grad_clip_norm)

  # Augmentation and bookkeeping.
  _one_of(name("train", "augment_method"), t.augment_method, AUGMENT_METHODS)
  _one_of(name("train", "train_split"), t.train_split, TRAIN_SPLITS)
  _one_of(name("train", "normalization"), t.normalization, NORMALIZATIONS)
  _check(t.eval_every_epochs >= 0, name("train", "eval_every_epochs"),
         ">= 0 (0 = only at the end)", t.eval_every_epochs)
  _check(t.checkpoint_every_steps >= 0, name("train", "checkpoint_every_steps"),
         ">= 0 (0 = only at the end)", t.checkpoint_every_steps)
  _check(t.keep_checkpoints >= 1, name("train", "keep_checkpoints"), ">= 1",
         t.keep_checkpoints)
  _check(t.log_every_steps >= 1, name("train", "log_every_steps"), ">= 1",
         t.log_every_steps)
  _check(isinstance(t.seed, int) and t.seed >= 0, name("train", "seed"),
         "a non-negative integer", t.seed)

  # Input.
  _one_of("config.input.source", i.source, input_pipeline.INPUT_SOURCES)
  _check(i.train_subset >= 0, "config.input.train_subset", ">= 0 (0 = all)",
         i.train_subset)
  if t.train_split != "train" and i.train_subset:
    raise errors.ConfigError(
        f"config.input.train_subset must be 0 with "
        f"{name('train', 'train_split')}={t.train_split!r} (the pretraining "
        f"split is a fixed slice of the full training set), got "
        f"{i.train_subset}")
  _one_of("config.input.pipeline", i.pipeline, streaming.PIPELINES)
  streams = i.pipeline == "stream" or (
      i.pipeline == "auto" and i.source == "tfds"
      and i.name.startswith("imagenet"))
  if i.name.startswith("imagenet") and not streams:
    raise errors.ConfigError(
        f"config.input.name={i.name!r} is too large to hold in memory: read "
        "it as a prepared TFDS dataset with --config.input.source=tfds and "
        "--config.input.pipeline=auto (or stream).")
  if i.pipeline == "stream" and i.source != "tfds":
    raise errors.ConfigError(
        "config.input.pipeline='stream' reads a prepared TFDS dataset; set "
        "--config.input.source=tfds (and config.input.data_dir).")
  _check(i.image_size >= 1, "config.input.image_size", ">= 1", i.image_size)
  _check(i.resize_size == 0 or i.resize_size >= i.image_size,
         "config.input.resize_size",
         f"0 or >= config.input.image_size ({i.image_size})", i.resize_size)
  _check(i.shuffle_buffer >= 1, "config.input.shuffle_buffer", ">= 1",
         i.shuffle_buffer)
  _check(i.stats_images >= 1, "config.input.stats_images", ">= 1",
         i.stats_images)
  if streams and (i.train_subset or t.train_split != "train"):
    raise errors.ConfigError(
        f"a streamed dataset trains on config.input.tfds_train_split "
        f"({i.tfds_train_split!r}); take a subset with a TFDS slice such as "
        "--config.input.tfds_train_split='train[:200000]' instead of "
        f"config.input.train_subset={i.train_subset} / "
        f"{name('train', 'train_split')}={t.train_split!r}.")
  # The default CIFAR-10 npz, when absent, falls back to TFDS cifar10
  # (`input_pipeline.load_dataset`), which says in one line if it cannot.
  if (i.source == "npz" and not utils.resolve_path(i.npz_path).is_file()
      and not (i.name == "cifar10"
               and input_pipeline.is_default_npz_path(i.npz_path))):
    raise errors.ConfigError(
        f"config.input.npz_path: no npz file at {str(i.npz_path)!r} for "
        f"dataset {i.name!r}; pass --config.input.npz_path=/path/to/file.npz "
        "(keys train_images, train_labels, test_images, test_labels)")
  if p.space == "imagenet" and not streams:
    raise errors.ConfigError(
        f"{name('policy', 'space')}='imagenet' does not fit "
        f"config.input.name={i.name!r} held in memory (the ImageNet space "
        "works on streamed S x S images, config.input.pipeline=stream); use "
        "space 'cifar'")


def train_job_config(section, input_config, *,
                     name: str = "") -> ml_collections.ConfigDict:
  """A `job="train"` config from a search config's `pretrain`/`evaluate`
  section (which carries no `input`: the search config's `input` governs
  every stage). `name` ("pretrain", "evaluate"; default: "evaluate" for a
  section with `enabled`, else "pretrain") is where the user sets its
  fields: the training run's messages name `config.<name>.train.batch_size`,
  not `config.train.batch_size` (`section_of`)."""
  cfg = ml_collections.ConfigDict(section.to_dict())
  cfg.job = "train"
  cfg.input = ml_collections.ConfigDict(input_config.to_dict())
  if "enabled" in cfg:
    del cfg["enabled"]
    name = name or "evaluate"
  # An attribute, not a field: it changes no run identity or saved config.
  object.__setattr__(cfg, "_deepaa_section", f"config.{name or 'pretrain'}")
  return cfg


def section_of(config) -> str:
  """Where the user sets the fields of a train config: "config", or
  "config.pretrain" / "config.evaluate" for one built by `train_job_config`
  from a search config's section."""
  return getattr(config, "_deepaa_section", None) or "config"


def _input_streams(i) -> bool:
  """Whether `config.input` streams (as `streaming.wants_streaming` decides
  without opening anything)."""
  return i.pipeline == "stream" or (
      i.pipeline == "auto" and i.source == "tfds"
      and str(i.name).startswith("imagenet"))


_SLICE = re.compile(r"^\s*(\w+)\[\s*(-?\d*)\s*:\s*(-?\d*)\s*\]\s*$")


def _slice_range(spec: str) -> Optional[Tuple[str, int, float]]:
  """(split, start, stop) of a TFDS spec "name[a:b]" with non-negative
  integer bounds or a whole split "name"; None for anything else (percent
  slices, unions), which is then not checked."""
  spec = str(spec).strip()
  if re.fullmatch(r"\w+", spec):
    return spec, 0, math.inf
  match = _SLICE.match(spec)
  if not match or match.group(2).startswith("-") or match.group(
      3).startswith("-"):
    return None
  start = int(match.group(2) or 0)
  stop = int(match.group(3)) if match.group(3) else math.inf
  return match.group(1), start, stop


def _validate_search_pools(config) -> None:
  """data_split="stream" iff the input streams; its pools are set, and the
  pretraining split and the two pools do not overlap (integer slices)."""
  s, i = config.search, config.input
  streams = _input_streams(i)
  _check(s.val_per_class >= 0, "config.search.val_per_class", ">= 0 (0 = all)",
         s.val_per_class)
  if s.space == "imagenet" and not streams:
    raise errors.ConfigError(
        "config.search.space='imagenet' works on streamed S x S images; set "
        "--config.input.source=tfds --config.input.pipeline=stream and "
        "--config.search.data_split=stream (see configs/imagenet.py).")
  if streams != (s.data_split == "stream"):
    raise errors.ConfigError(
        f"config.search.data_split={s.data_split!r} does not fit "
        f"config.input.pipeline={i.pipeline!r} (source {i.source!r}, name "
        f"{i.name!r}): a streamed input takes data_split='stream' with "
        "config.search.search_pool / val_pool (TFDS slices read into memory), "
        "an input held in memory takes 'official' or 'small'.")
  if not streams:
    return
  for field in ("search_pool", "val_pool"):
    if not str(s[field]).strip():
      raise errors.ConfigError(
          f"config.search.{field} must name a TFDS split slice with "
          f"data_split='stream', e.g. 'train[200000:210000]', got {s[field]!r}")
  if s.val_per_class and s.class_conditional and s.val_per_class < s.val_batch:
    raise errors.ConfigError(
        f"config.search.val_per_class={s.val_per_class} must be 0 or >= "
        f"config.search.val_batch={s.val_batch} (class-conditional validation "
        "batches are drawn without replacement from one class), or set "
        "config.search.class_conditional=False")
  named = {"config.input.tfds_train_split (pretraining)": i.tfds_train_split,
           "config.search.search_pool": s.search_pool,
           "config.search.val_pool": s.val_pool}
  if config.pretrain_checkpoint:  # a given network: its data is not ours
    del named["config.input.tfds_train_split (pretraining)"]
  ranges = {k: _slice_range(v) for k, v in named.items()}
  keys = [k for k, r in ranges.items() if r is not None]
  for a_index, a in enumerate(keys):
    for b in keys[a_index + 1:]:
      (split_a, lo_a, hi_a), (split_b, lo_b, hi_b) = ranges[a], ranges[b]
      if split_a == split_b and max(lo_a, lo_b) < min(hi_a, hi_b):
        raise errors.ConfigError(
            f"{a}={named[a]!r} overlaps {b}={named[b]!r}: the pretraining "
            "set and the search and validation pools must be disjoint slices "
            "(e.g. 'train[:200000]', 'train[200000:210000]', "
            "'train[210000:330000]'), unless a given network is searched "
            "with (config.pretrain_checkpoint).")


def _validate_search(config) -> None:
  """The checks of a `job="search"` config (and of its pretrain/evaluate
  sections, named where the user sets them)."""
  s = config.search
  _one_of("config.search.space", s.space, POLICY_SPACES)
  for field in ("num_layers", "steps_per_layer", "num_images", "val_batch",
                "g_prefixes", "chunk_size", "checkpoint_every_steps"):
    _check(isinstance(s[field], int) and s[field] >= 1, f"config.search.{field}",
           "an integer >= 1", s[field])
  _check(s.gt_samples >= 0, "config.search.gt_samples",
         ">= 0 (0: gt_samples_factor * |T|)", s.gt_samples)
  _check(s.gt_samples_factor >= 1, "config.search.gt_samples_factor", ">= 1",
         s.gt_samples_factor)
  _one_of("config.search.normalization", s.normalization,
          reward_lib.NORMALIZATIONS)
  _one_of("config.search.reward", s.reward, reward_lib.REWARD_METHODS)
  _one_of("config.search.loop", s.loop, reward_lib.LOOPS + ("auto",))
  _one_of("config.search.init", s.init, ("identity", "uniform"))
  _one_of("config.search.adam_style", s.adam_style, ("keras", "optax"))
  _one_of("config.search.augment_method", s.augment_method, AUGMENT_METHODS)
  _check(0.0 <= s.stop_identity_threshold <= 1.0,
         "config.search.stop_identity_threshold", "in [0, 1]",
         s.stop_identity_threshold)
  _check(s.policy_lr > 0, "config.search.policy_lr", "> 0", s.policy_lr)
  _check(s.std_coef >= 0, "config.search.std_coef", ">= 0", s.std_coef)
  _check(s.stage1_std_coef >= 0, "config.search.stage1_std_coef", ">= 0",
         s.stage1_std_coef)
  _check(s.loss_scale_stage1 > 0, "config.search.loss_scale_stage1", "> 0",
         s.loss_scale_stage1)
  _check(s.loss_scale_stage_k >= 0, "config.search.loss_scale_stage_k",
         ">= 0 (0 = num_images)", s.loss_scale_stage_k)
  _one_of("config.search.data_split", s.data_split, SEARCH_DATA_SPLITS)
  _check(isinstance(s.seed, int) and not isinstance(s.seed, bool) and
         s.seed >= 0, "config.search.seed", "a non-negative integer", s.seed)
  _validate_search_pools(config)
  if s.data_parallel and jax.device_count() > 1:
    try:
      parallel.check_divisible(
          s.num_images, "search.num_images",
          hint=(", or set config.search.data_parallel=False to search on "
                "one device"))
    except ValueError as e:
      raise errors.ConfigError(str(e)) from None
  for section in ("pretrain", "evaluate"):
    if section == "evaluate" and not config.evaluate.enabled:
      continue
    cfg = train_job_config(config[section], config.input, name=section)
    if section == "evaluate":  # the policy file is the search's output
      cfg.policy.kind, cfg.policy.path = "none", ""
    _validate_train(cfg, prefix=f"config.{section}")
  first_layers = config.evaluate.policy.first_layers
  if config.evaluate.enabled and first_layers > s.num_layers:
    raise errors.ConfigError(
        f"config.evaluate.policy.first_layers={first_layers} but the search "
        f"finds config.search.num_layers={s.num_layers} layer(s)")
