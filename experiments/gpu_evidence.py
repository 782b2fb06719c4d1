r"""GPU evidence: the paper-style CIFAR-10 evaluation of six policies, one GPU.

Reduced CIFAR-10 (4,000 class-balanced training images, the subset of
`configs/cifar10_train_cpu.py`), WRN-28-2, 200 epochs of batch 128 (6,200
steps), the project's evaluation recipe (spec §4.4 scaled to the subset: SGD
Nesterov 0.9, lr 0.1 with a 5-epoch linear warm-up from 0 then cosine to 0,
weight decay 5e-4 off BN, gradient clipping 5, the policy applied per example
and per layer on the device with the eval code's random sign flip), for the
policies none, standard, deepaa_cifar_1, a found policy (JSON), standard_cutout
and trivialaugment, several seeds each; test accuracy on the full 10,000-image
test set. Prints one table (policy, seeds, test accuracy, images/s, wall).

  # Here, once (needs ../shared): the 4k + 10k uint8 images (~40 MB) and the
  # official cifar_1 policy, under the ignored runs/gpu_evidence/.
  python experiments/gpu_evidence.py --prepare
  # On the lent GPU (the device `run` tool; its limit is 600 s a command):
  run(command="PYTHONUNBUFFERED=1 python3 experiments/gpu_evidence.py
           --budget_min=9 --json_out=$OUT/gpu_evidence.json
           2>&1 | tee $OUT/gpu_evidence.log",
      carry=["runs/gpu_evidence"], timeout_s=600)
  # CPU smoke test (CI: tests/test_gpu_evidence.py), < 2 min:
  python experiments/gpu_evidence.py --tiny

Several runs train at once, because one WRN-28-2 at batch 128 leaves a big GPU
idle: every (policy, seed) run is a slice of one stacked state, and one
compiled step updates them all (`--batching=vmap`: `jax.vmap` over runs, the
convolutions become grouped convolutions; `map`: `lax.map` over runs, one run
after the other inside the step; `auto`: the speed check times both and keeps
the faster). The policy is data, not a constant: float32[K_max, 139]
probabilities per run, shorter policies padded with Identity layers at the
end, which leaves their pixels unchanged (a layer's keys do not depend on the
number of layers). Seed s gives a run exactly the initialisation, data order
and augmentation keys of `python -m deepaa_jax.main` with
`config.train.seed = s` (`train.run_keys`, `input_pipeline.epoch_permutation`;
tests/test_gpu_evidence.py checks two steps against `train.make_train_step`).

Speed check first: the stacked step is compiled and timed for `--speed_steps`
steps, a test evaluation is timed, and the total is projected (time so far +
steps x step time + evaluation). Runs that would not fit `--budget_min` are
dropped, last first, and the check repeats once for the runs kept. The run
order is the priority: every seed of none, standard, deepaa_cifar_1 and the
found policy (in `--policies` order), then every seed of the others; so the
extras go first. At least one run is kept (with a warning when even that one
does not fit).

Dependencies: jax, flax, optax, orbax-checkpoint (through `deepaa_jax.utils`),
numpy and Pillow (+ absl and etils, which those pull in). No TensorFlow, CLU,
dm-pix or ml_collections: it uses `deepaa_jax`'s ops, spaces, policies, input
helpers and models, but not `train.py`/`config.py`; the test runs it with
those four blocked. The data and the cifar_1 policy travel as the carried
folder `runs/gpu_evidence/` (`--prepare`); the found policy
(`docs/policies/cifar10_cpu.json`) is tracked.
"""

import time

_T0 = time.monotonic()  # the budget counts from here (imports included).

# pylint: disable=g-import-not-at-top,wrong-import-position
import dataclasses
import functools
import json
import math
import pathlib
import shutil
import sys
from typing import Any, Dict, List, NamedTuple, Sequence, Tuple

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
import optax

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))

from deepaa_jax import input_pipeline as ip
from deepaa_jax import models
from deepaa_jax import policy as policy_lib
from deepaa_jax import space as space_lib
# pylint: enable=g-import-not-at-top,wrong-import-position

_SHARED = REPO.parent / "shared"
_DEFAULT_DIR = REPO / "runs" / "gpu_evidence"

FLAGS = flags.FLAGS
flags.DEFINE_bool("prepare", False, "Write --data and --cifar1 from "
                  "--source_npz and --cifar1_source, then exit.")
flags.DEFINE_string("source_npz", str(_SHARED / "data" / "cifar10.npz"),
                    "--prepare: the full CIFAR-10 npz.")
flags.DEFINE_string("cifar1_source", str(
    _SHARED / "official_policies" / "policy_DeepAA_cifar_1.npz"),
                    "--prepare: the official cifar_1 policy file.")
flags.DEFINE_string("data", str(_DEFAULT_DIR / "cifar10_4k.npz"),
                    "The prepared uint8 data (--prepare writes it).")
flags.DEFINE_string("cifar1", str(_DEFAULT_DIR / "policy_DeepAA_cifar_1.npz"),
                    "The official cifar_1 policy (--prepare copies it).")
flags.DEFINE_string("found", str(REPO / "docs" / "policies" /
                                 "cifar10_cpu.json"),
                    "The found policy (our JSON or an official npz).")
flags.DEFINE_list("policies", ["none", "standard", "deepaa_cifar_1", "found",
                               "standard_cutout", "trivialaugment"],
                  "Policies, in priority order (see the docstring).")
flags.DEFINE_integer("seeds", 3, "Seeds per policy (0 .. seeds-1).")
flags.DEFINE_integer("train_size", 4000, "Class-balanced training images.")
flags.DEFINE_integer("subset_seed", 0, "--prepare: seed of the subset draw "
                     "(0: the subset of configs/cifar10_train_cpu.py).")
flags.DEFINE_string("model", "wrn_28_2", "`models.get_model` name.")
flags.DEFINE_float("epochs", 200, "Training epochs.")
flags.DEFINE_integer("batch_size", 128, "Training batch per run.")
flags.DEFINE_float("learning_rate", 0.1, "Peak learning rate.")
flags.DEFINE_float("warmup_epochs", 5, "Linear warm-up from 0, in epochs.")
flags.DEFINE_float("weight_decay", 5e-4, "Weight decay (off BN).")
flags.DEFINE_bool("bf16", False, "Compute in bfloat16 (params float32).")
flags.DEFINE_enum("batching", "auto", ["auto", "vmap", "map"],
                  "How the runs share a step (see the docstring).")
flags.DEFINE_float("budget_min", 12, "Wall-clock budget in minutes, "
                   "compilation included.")
flags.DEFINE_integer("speed_steps", 20, "Timed steps of the speed check.")
flags.DEFINE_integer("eval_batch_size", 1000, "Test batch per run.")
flags.DEFINE_string("json_out", None, "Also write the results here (JSON).")
flags.DEFINE_bool("tiny", False, "CPU smoke test: synthetic data, WRN-10-1, "
                  "2 policies x 1 seed, a few steps (not evidence).")

# The four rows that are kept first, whatever else is asked for.
CORE = ("none", "standard", "deepaa_cifar_1", "found")
# `train.run_keys`: the init key and the run key fold these into key(seed).
TAG_INIT, TAG_STEP = 0, 1
MOMENTUM, CLIP_NORM = 0.9, 5.0  # spec §4.4.
# A policy is applied with the evaluation's level values (`Policy.space`).
EVAL_SPACE = space_lib.get_space("cifar", phase="evaluation")
TINY = dict(train_size=64, test_size=100, model="wrn_10_1", epochs=2,
            batch_size=16, speed_steps=2, eval_batch_size=50, seeds=1,
            policies=["none", "standard"], batching="vmap")


class Run(NamedTuple):
  policy: str
  seed: int


@dataclasses.dataclass(frozen=True)
class Recipe:
  """The training recipe of every run (static in the compiled step)."""
  model: str
  batch_size: int
  epochs: float
  learning_rate: float
  warmup_epochs: float
  weight_decay: float
  bf16: bool
  train_size: int

  @property
  def steps_per_epoch(self) -> int:
    return ip.steps_per_epoch(self.train_size, self.batch_size, True)

  @property
  def total_steps(self) -> int:
    return int(round(self.epochs * self.steps_per_epoch))


def fail(message: str):
  """A user error: one line, exit status 1."""
  print(f"ERROR: {message}", file=sys.stderr)
  sys.exit(1)


# --------------------------------------------------------------------------
# Data.
# --------------------------------------------------------------------------


def prepare(source_npz, cifar1_source, data_out, cifar1_out, *,
            train_size: int, subset_seed: int) -> Dict[str, Any]:
  """Writes the compact data file and copies the cifar_1 policy.

  Args:
    source_npz: a CIFAR-10 npz (train_images uint8[N, 32, 32, 3],
      train_labels, test_images, test_labels).
    cifar1_source: the official policy_DeepAA_cifar_1.npz.
    data_out: the npz to write: train_images uint8[train_size, 32, 32, 3],
      train_labels int32, test_images uint8[10000, 32, 32, 3], test_labels
      int32 and train_indices int64 (into the source's training split; the
      class-balanced draw of `input_pipeline.random_subset_indices`).
    cifar1_out: where the policy is copied.
    train_size: subset size.
    subset_seed: subset seed.

  Returns:
    {"data": path, "bytes": size, "cifar1": path}.
  """
  source_npz, cifar1_source = pathlib.Path(source_npz), pathlib.Path(
      cifar1_source)
  for path in (source_npz, cifar1_source):
    if not path.is_file():
      fail(f"--prepare needs {path} (--source_npz / --cifar1_source).")
  with np.load(source_npz) as raw:
    labels = raw["train_labels"].astype(np.int32)
    indices = ip.random_subset_indices(labels, train_size, subset_seed,
                                       class_balanced=True)
    arrays = {"train_images": raw["train_images"][indices],
              "train_labels": labels[indices],
              "test_images": raw["test_images"],
              "test_labels": raw["test_labels"].astype(np.int32),
              "train_indices": indices}
  data_out, cifar1_out = pathlib.Path(data_out), pathlib.Path(cifar1_out)
  data_out.parent.mkdir(parents=True, exist_ok=True)
  cifar1_out.parent.mkdir(parents=True, exist_ok=True)
  np.savez_compressed(data_out, **arrays)
  shutil.copyfile(cifar1_source, cifar1_out)
  return {"data": str(data_out), "bytes": data_out.stat().st_size,
          "cifar1": str(cifar1_out)}


def load_data(path) -> Dict[str, np.ndarray]:
  """The prepared arrays (see `prepare`)."""
  path = pathlib.Path(path)
  if not path.is_file():
    fail(f"no data file {path}: run `python experiments/gpu_evidence.py "
         "--prepare` where ../shared exists, and carry runs/gpu_evidence.")
  with np.load(path) as raw:
    return {k: raw[k] for k in ("train_images", "train_labels",
                                "test_images", "test_labels")}


def synthetic_data(train_size: int, test_size: int, *, seed: int = 0):
  """Learnable 32x32 stand-in data for --tiny: each class a colour plus a
  bright square at a class-dependent place, with noise (uint8 images)."""
  rng = np.random.default_rng(seed)
  colours = rng.integers(40, 215, size=(10, 3))

  def make(n):
    labels = np.arange(n, dtype=np.int32) % 10
    images = colours[labels][:, None, None, :] + rng.normal(
        0, 25, size=(n, 32, 32, 3))
    for i, c in enumerate(labels):
      r, q = divmod(int(c), 4)
      images[i, 4 + 8 * r:10 + 8 * r, 4 + 7 * q:10 + 7 * q] = 250
    return {"images": np.clip(images, 0, 255).astype(np.uint8),
            "labels": labels}

  train, test = make(train_size), make(test_size)
  return {"train_images": train["images"], "train_labels": train["labels"],
          "test_images": test["images"], "test_labels": test["labels"]}


# --------------------------------------------------------------------------
# Policies and runs.
# --------------------------------------------------------------------------


def load_policies(names: Sequence[str], *, cifar1, found
                  ) -> Dict[str, policy_lib.Policy]:
  """Name -> Policy: a baseline kind, "deepaa_cifar_1" (`cifar1`, the
  official npz) or "found" (`found`: our JSON or an official npz)."""
  space = space_lib.cifar_space()
  out = {}
  for name in names:
    if name == "deepaa_cifar_1":
      if not pathlib.Path(cifar1).is_file():
        fail(f"no cifar_1 policy at {cifar1} (--cifar1; --prepare copies "
             "it).")
      out[name] = policy_lib.load_official_npz(cifar1)
    elif name == "found":
      path = pathlib.Path(found)
      if not path.is_file():
        fail(f"no found policy at {path} (--found).")
      out[name] = (policy_lib.load_official_npz(path)
                   if path.suffix == ".npz" else policy_lib.load_policy(path))
    elif name in policy_lib.KINDS and name != "deepta":
      out[name] = policy_lib.baseline(name, space)
    else:
      fail(f"unknown policy {name!r} in --policies; valid: none, standard, "
           "standard_cutout, trivialaugment, deepaa_cifar_1, found.")
    if out[name].space_name != "cifar":
      fail(f"policy {name!r} is over the {out[name].space_name} space, not "
           "cifar.")
  return out


def run_order(policies: Sequence[str], seeds: int) -> List[Run]:
  """The runs in priority order: every seed of the `CORE` policies (in the
  given order), then every seed of the others; seed-major within each
  group, so dropping from the end removes the extras, then late seeds."""
  core = [p for p in policies if p in CORE]
  rest = [p for p in policies if p not in CORE]
  return ([Run(p, s) for s in range(seeds) for p in core]
          + [Run(p, s) for s in range(seeds) for p in rest])


def stacked_probs(policies: Sequence[policy_lib.Policy]) -> np.ndarray:
  """float32[R, K_max, T]: each policy's layers, then Identity layers up to
  the longest (at least one layer)."""
  space = space_lib.cifar_space()
  depth = max([1] + [p.num_layers for p in policies])
  identity = np.zeros(space.size)
  identity[space.index_of("Identity")] = 1.0
  out = np.empty((len(policies), depth, space.size), np.float32)
  for r, p in enumerate(policies):
    out[r] = np.concatenate([p.probs, np.tile(identity, (
        depth - p.num_layers, 1))]) if p.num_layers < depth else p.probs
  return out


def fit_runs(num_runs: int, *, step_s: float, steps: int, fixed_s: float,
             budget_s: float) -> int:
  """How many of `num_runs` runs fit the budget: the largest n in
  [1, num_runs] with fixed_s + steps * step_s * n / num_runs <= budget_s
  (`step_s` was measured with all `num_runs` runs in one step, so the cost
  is taken as proportional to n; the speed check re-measures the n kept)."""
  per_run = steps * step_s / num_runs
  room = budget_s - fixed_s
  n = int(math.floor(room / per_run)) if per_run > 0 else num_runs
  return max(1, min(num_runs, n))


# --------------------------------------------------------------------------
# The stacked training step.
# --------------------------------------------------------------------------


def run_keys(seed: int) -> Tuple[jax.Array, jax.Array]:
  """(init key, run key) of seed `seed`, as `train.run_keys`."""
  root = jax.random.key(seed)
  return jax.random.fold_in(root, TAG_INIT), jax.random.fold_in(root, TAG_STEP)


def make_optimizer(params, recipe: Recipe) -> optax.GradientTransformation:
  """`train.make_optimizer` for the recipe: clip 5 -> wd (not BN) -> SGD
  Nesterov 0.9 with a linear warm-up from 0 then cosine to 0, per step."""
  spe = recipe.steps_per_epoch
  warm = recipe.warmup_epochs * spe
  after = optax.cosine_decay_schedule(
      recipe.learning_rate, decay_steps=max(recipe.total_steps - warm, 1.0),
      alpha=0.0)
  schedule = after if warm <= 0 else optax.join_schedules(
      [optax.linear_schedule(0.0, recipe.learning_rate, warm), after], [warm])
  decay_mask = jax.tree.map(lambda bn: not bn, models.bn_param_mask(params))
  return optax.chain(
      optax.clip_by_global_norm(CLIP_NORM),
      optax.add_decayed_weights(recipe.weight_decay, mask=decay_mask),
      optax.sgd(schedule, momentum=MOMENTUM, nesterov=True))


def build_model(recipe: Recipe):
  return models.get_model(recipe.model, num_classes=10, dtype=(
      jnp.bfloat16 if recipe.bf16 else jnp.float32))


def init_state(recipe: Recipe, seeds: Sequence[int]):
  """The stacked state of runs with these seeds: {"params", "batch_stats",
  "opt_state"}, every leaf with a leading run axis R = len(seeds)."""
  keys = jnp.stack([run_keys(s)[0] for s in seeds])
  return _init_fn(recipe)(keys)


@functools.lru_cache(maxsize=None)
def _init_fn(recipe: Recipe):
  """The compiled stacked init (one per recipe, so compiled once)."""
  model = build_model(recipe)

  def one(key):
    variables = model.init({"params": key, "dropout": key},
                           jnp.zeros((1, 32, 32, 3), jnp.float32),
                           train=False)
    params = variables["params"]
    return {"params": params, "batch_stats": variables["batch_stats"],
            "opt_state": make_optimizer(params, recipe).init(params)}

  return jax.jit(jax.vmap(one))


def augment(key: jax.Array, images: jax.Array, probs: jax.Array) -> jax.Array:
  """`policy.apply_policy(key, images, policy, random_sign=True)` with the
  policy as data: probs float32[K, T] (may be traced); images uint8[B, 32,
  32, 3]; returns float32[B, 32, 32, 3] in [0, 255], the same pixels."""
  k_index, k_apply = jax.random.split(key)
  choice = policy_lib.sample_indices(k_index, probs, images.shape[0])
  return space_lib.apply_chain_batch(  # float32 input, as `apply_policy`.
      k_apply, images.astype(jnp.float32), choice, EVAL_SPACE,
      random_sign=True, method="vectorized")


def _run_step(recipe: Recipe, state, probs, run_key, perm, images, labels,
              j, step):
  """One optimiser step of one run (the body that is vmapped or mapped).

  probs: float32[K, T]; run_key: the run key; perm: int32[spe, B], this
  epoch's batches; images: uint8[N, 32, 32, 3]; labels: int32[N]; j: the
  step within the epoch; step: the global step (keys and schedule).
  """
  model = build_model(recipe)
  tx = make_optimizer(state["params"], recipe)
  idx = jax.lax.dynamic_index_in_dim(perm, j, keepdims=False)
  x, y = images[idx], labels[idx]
  k = jax.random.fold_in(run_key, step)  # `train.step_keys`.
  k_aug, k_model = jax.random.fold_in(k, 0), jax.random.fold_in(k, 1)
  x = ip.normalize(augment(k_aug, x, probs), ip.CIFAR_EVAL_MEAN, ip.CIFAR_STD)

  def loss_fn(params):
    logits, updates = model.apply(
        {"params": params, "batch_stats": state["batch_stats"]}, x,
        train=True, mutable=["batch_stats"],
        rngs={"dropout": jax.random.fold_in(k_model, 1)})
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, (logits, updates["batch_stats"])

  (loss, (logits, stats)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state["params"])
  updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
  params = optax.apply_updates(state["params"], updates)
  accuracy = jnp.mean((jnp.argmax(logits, -1) == y).astype(jnp.float32))
  return ({"params": params, "batch_stats": stats, "opt_state": opt_state},
          {"loss": loss, "accuracy": accuracy})


@functools.lru_cache(maxsize=None)
def make_step(recipe: Recipe, batching: str):
  """The compiled step over R runs: step(state, probs[R, K, T], run_keys[R],
  perms int32[R, spe, B], images, labels, j, step) -> (state, metrics[R]).
  `batching`: "vmap" or "map" (see the module docstring)."""

  def stacked(state, probs, keys, perms, images, labels, j, step):
    def one(s, p, k, perm):
      return _run_step(recipe, s, p, k, perm, images, labels, j, step)
    if batching == "vmap":
      return jax.vmap(one)(state, probs, keys, perms)
    return jax.lax.map(lambda a: one(*a), (state, probs, keys, perms))

  return jax.jit(stacked, donate_argnums=0)


@functools.lru_cache(maxsize=None)
def make_eval(recipe: Recipe):
  """The compiled test step: (params[R], batch_stats[R], images uint8[B, ...],
  labels int32[B], mask float32[B]) -> int32[R] correct predictions."""
  model = build_model(recipe)

  def one(params, stats, images, labels, mask):
    x = ip.normalize(images, ip.CIFAR_EVAL_MEAN, ip.CIFAR_STD)
    logits = model.apply({"params": params, "batch_stats": stats}, x,
                         train=False)
    return jnp.sum((jnp.argmax(logits, -1) == labels) * mask)

  return jax.jit(jax.vmap(one, in_axes=(0, 0, None, None, None)))


def evaluate(eval_fn, state, images: np.ndarray, labels: np.ndarray, *,
             batch_size: int) -> np.ndarray:
  """float64[R]: test accuracy of every run over all of `images`."""
  n = images.shape[0]
  correct = 0
  for start in range(0, n, batch_size):
    x, y = images[start:start + batch_size], labels[start:start + batch_size]
    mask = np.ones(batch_size, np.float32)
    if x.shape[0] < batch_size:  # pad the last batch, masked out.
      pad = batch_size - x.shape[0]
      mask[x.shape[0]:] = 0
      x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])
      y = np.concatenate([y, np.zeros(pad, y.dtype)])
    correct = correct + eval_fn(state["params"], state["batch_stats"], x, y,
                                mask)
  return np.asarray(correct, np.float64) / n


def epoch_perms(runs: Sequence[Run], recipe: Recipe, epoch: int) -> np.ndarray:
  """int32[R, spe, B]: each run's batches of `epoch`
  (`input_pipeline.epoch_permutation` of its seed, drop_last)."""
  spe, b = recipe.steps_per_epoch, recipe.batch_size
  return np.stack([ip.epoch_permutation(recipe.train_size, seed=r.seed,
                                        epoch=epoch)[:spe * b].reshape(spe, b)
                   for r in runs]).astype(np.int32)


class Trainer:
  """R runs trained together; `steps(n)` advances all of them."""

  def __init__(self, runs: Sequence[Run], policies, recipe: Recipe, data,
               batching: str):
    self.runs, self.recipe = list(runs), recipe
    self.probs = jnp.asarray(stacked_probs([policies[r.policy]
                                            for r in runs]))
    self.keys = jnp.stack([run_keys(r.seed)[1] for r in runs])
    self.images = jnp.asarray(data["train_images"])
    self.labels = jnp.asarray(data["train_labels"])
    self.state = init_state(recipe, [r.seed for r in runs])
    self.step_fn = make_step(recipe, batching)
    self.step = 0
    self._perms, self._epoch = None, -1

  def steps(self, n: int):
    """Runs n steps; returns the last metrics (host arrays, blocking)."""
    spe = self.recipe.steps_per_epoch
    metrics = None
    for _ in range(n):
      epoch, j = divmod(self.step, spe)
      if epoch != self._epoch:
        self._perms = jnp.asarray(epoch_perms(self.runs, self.recipe, epoch))
        self._epoch = epoch
      self.state, metrics = self.step_fn(
          self.state, self.probs, self.keys, self._perms, self.images,
          self.labels, jnp.int32(j), jnp.int32(self.step))
      self.step += 1
    return jax.device_get(metrics)


# --------------------------------------------------------------------------
# Speed check, training, table.
# --------------------------------------------------------------------------


def elapsed() -> float:
  return time.monotonic() - _T0


def speed_check(runs, policies, recipe, data, batching, *, steps: int,
                eval_batch: int) -> Dict[str, float]:
  """Compiles and times the stacked step (and one test evaluation)."""
  trainer = Trainer(runs, policies, recipe, data, batching)
  t = time.monotonic()
  trainer.steps(1)
  compile_s = time.monotonic() - t
  t = time.monotonic()
  trainer.steps(steps)
  step_s = (time.monotonic() - t) / steps
  t = time.monotonic()
  evaluate(make_eval(recipe), trainer.state, data["test_images"],
           data["test_labels"], batch_size=eval_batch)
  return {"batching": batching, "runs": len(runs), "compile_s": compile_s,
          "step_s": step_s, "eval_s": time.monotonic() - t}


def plan(runs, policies, recipe, data, *, batching: str, budget_s: float,
         speed_steps: int, eval_batch: int):
  """The speed check: (runs kept, batching, checks made, dropped runs)."""
  checks = []
  modes = ["vmap", "map"] if batching == "auto" else [batching]
  for mode in modes:
    checks.append(speed_check(runs, policies, recipe, data, mode,
                              steps=speed_steps, eval_batch=eval_batch))
    print(_check_line(checks[-1]), flush=True)
  best = min(checks, key=lambda c: c["step_s"])
  keep = len(runs)
  for attempt in range(2):
    # Another compile (if rows drop) and the evaluation at the end.
    fixed = elapsed() + best["compile_s"] + best["eval_s"]
    keep = fit_runs(best["runs"], step_s=best["step_s"],
                    steps=recipe.total_steps, fixed_s=fixed,
                    budget_s=budget_s)
    if keep == best["runs"] or attempt == 1:
      break
    checks.append(speed_check(runs[:keep], policies, recipe, data,
                              best["batching"], steps=speed_steps,
                              eval_batch=eval_batch))
    best = checks[-1]
    print(_check_line(best), flush=True)
  projected = (elapsed() + best["compile_s"] + best["eval_s"]
               + recipe.total_steps * best["step_s"] * keep / best["runs"])
  print(f"projected total {projected / 60:.1f} min for {keep} of {len(runs)}"
        f" runs ({best['batching']}); budget {budget_s / 60:.1f} min",
        flush=True)
  if projected > budget_s:
    print(f"WARNING: even {keep} run(s) are projected over the budget; "
          "training them anyway.", flush=True)
  return runs[:keep], best["batching"], checks, runs[keep:]


def _check_line(c) -> str:
  return (f"speed check ({c['batching']}, {c['runs']} runs): compile "
          f"{c['compile_s']:.1f} s, {c['step_s'] * 1e3:.1f} ms/step, test "
          f"evaluation {c['eval_s']:.1f} s")


def train_and_evaluate(runs, policies, recipe, data, *, batching: str,
                       eval_batch: int) -> Dict[str, Any]:
  """Trains the runs together from step 0 and evaluates them."""
  trainer = Trainer(runs, policies, recipe, data, batching)
  total = recipe.total_steps
  report = max(1, total // 10)
  t = time.monotonic()
  done = 0
  while done < total:
    n = min(report, total - done)
    metrics = trainer.steps(n)
    done += n
    loss = np.asarray(metrics["loss"])
    if not np.all(np.isfinite(loss)):
      bad = [runs[i] for i in np.flatnonzero(~np.isfinite(loss))]
      fail(f"non-finite loss at step {done} in runs {bad}.")
    print(f"step {done}/{total} ({elapsed() / 60:.1f} min): loss "
          + " ".join(f"{v:.3f}" for v in loss), flush=True)
  train_s = time.monotonic() - t
  t = time.monotonic()
  accuracy = evaluate(make_eval(recipe), trainer.state, data["test_images"],
                      data["test_labels"], batch_size=eval_batch)
  return {"accuracy": accuracy, "train_s": train_s,
          "eval_s": time.monotonic() - t}


def table(runs: Sequence[Run], result: Dict[str, Any], recipe: Recipe,
          dropped: Sequence[Run], policies_asked: Sequence[str]) -> str:
  """The markdown table: one row per policy (in `policies_asked` order)."""
  images_per_run = recipe.total_steps * recipe.batch_size
  wall = result["train_s"] + result["eval_s"]
  lines = ["| policy | seeds | test accuracy % (mean ± sd) | per seed | "
           "images/s | wall |", "|---|---|---|---|---|---|"]
  for name in policies_asked:
    rows = [i for i, r in enumerate(runs) if r.policy == name]
    if not rows:
      lines.append(f"| {name} | 0 (dropped) | – | – | – | – |")
      continue
    acc = 100 * np.asarray(result["accuracy"])[rows]
    sd = f" ± {acc.std(ddof=1):.2f}" if len(acc) > 1 else ""
    seeds = ",".join(str(runs[i].seed) for i in rows)
    rate = len(rows) * images_per_run / result["train_s"]
    lines.append(f"| {name} | {len(rows)} ({seeds}) | {acc.mean():.2f}{sd} | "
                 + " / ".join(f"{a:.2f}" for a in acc)
                 + f" | {rate:,.0f} | {wall / 60:.1f} min |")
  total_rate = len(runs) * images_per_run / result["train_s"]
  lines.append("")
  gone = ", ".join(f"{r.policy}/{r.seed}" for r in dropped) or "none"
  lines.append(f"{len(runs)} runs trained together: {total_rate:,.0f} "
               f"training images/s in all, training {result['train_s']:.0f} s"
               f", test evaluation {result['eval_s']:.1f} s; wall is the "
               f"shared training + evaluation time. Dropped by the speed "
               f"check: {gone}.")
  return "\n".join(lines)


def main(argv):
  if len(argv) > 1:
    fail(f"unexpected arguments {argv[1:]}")
  if FLAGS.prepare:
    out = prepare(FLAGS.source_npz, FLAGS.cifar1_source, FLAGS.data,
                  FLAGS.cifar1, train_size=FLAGS.train_size,
                  subset_seed=FLAGS.subset_seed)
    print(f"wrote {out['data']} ({out['bytes'] / 2**20:.1f} MiB) and "
          f"{out['cifar1']}")
    return
  settings = {k: getattr(FLAGS, k) for k in (
      "train_size", "model", "epochs", "batch_size", "speed_steps",
      "eval_batch_size", "seeds", "policies", "batching")}
  if FLAGS.tiny:  # the tiny sizes, except where a flag was given.
    settings.update({k: v for k, v in TINY.items()
                     if k in settings and not FLAGS[k].present})
    data = synthetic_data(settings["train_size"], TINY["test_size"])
    # Fast compiles of a tiny network (flax examples' tests do the same).
    jax.config.update("jax_disable_most_optimizations", True)
  else:
    data = load_data(FLAGS.data)
  settings["train_size"] = int(data["train_images"].shape[0])
  if settings["seeds"] < 1:
    fail(f"--seeds must be >= 1, got {settings['seeds']}.")
  recipe = Recipe(model=settings["model"], batch_size=settings["batch_size"],
                  epochs=settings["epochs"],
                  learning_rate=FLAGS.learning_rate,
                  warmup_epochs=FLAGS.warmup_epochs,
                  weight_decay=FLAGS.weight_decay, bf16=FLAGS.bf16,
                  train_size=settings["train_size"])
  if recipe.steps_per_epoch < 1 or recipe.total_steps < 1:
    fail(f"{recipe.train_size} training images make no step of batch "
         f"{recipe.batch_size} x {recipe.epochs} epochs.")
  policies = load_policies(settings["policies"], cifar1=FLAGS.cifar1,
                           found=FLAGS.found)
  runs = run_order(settings["policies"], settings["seeds"])
  print(f"{jax.devices()[0].device_kind} ({jax.default_backend()}); "
        f"{len(runs)} runs of {recipe.model}, {recipe.total_steps} steps of "
        f"{recipe.batch_size} on {recipe.train_size} images, test "
        f"{data['test_images'].shape[0]}", flush=True)
  kept, batching, checks, dropped = plan(
      runs, policies, recipe, data, batching=settings["batching"],
      budget_s=60 * FLAGS.budget_min, speed_steps=settings["speed_steps"],
      eval_batch=settings["eval_batch_size"])
  result = train_and_evaluate(kept, policies, recipe, data,
                              batching=batching,
                              eval_batch=settings["eval_batch_size"])
  text = table(kept, result, recipe, dropped, settings["policies"])
  print(text)
  print(f"total {elapsed() / 60:.1f} min")
  if FLAGS.json_out:
    out = {"tiny": FLAGS.tiny, "device": jax.devices()[0].device_kind,
           "backend": jax.default_backend(), "jax": jax.__version__,
           "recipe": dataclasses.asdict(recipe),
           "total_steps": recipe.total_steps, "batching": batching,
           "speed_checks": checks,
           "runs": [{"policy": r.policy, "seed": r.seed,
                     "test_accuracy": float(a)}
                    for r, a in zip(kept, result["accuracy"])],
           "dropped": [r._asdict() for r in dropped],
           "train_s": result["train_s"], "eval_s": result["eval_s"],
           "total_s": elapsed(), "table": text}
    pathlib.Path(FLAGS.json_out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
  app.run(main)
