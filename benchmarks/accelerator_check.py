"""Accelerator check: the paths meant for a GPU/TPU, timed where they run.

  python benchmarks/accelerator_check.py                 # one GPU, <= 8 min
  python benchmarks/accelerator_check.py --tiny          # CPU, < 2 min (CI)
  python benchmarks/accelerator_check.py --sections=search,rewards

Prints one table per section (and writes them as JSON with --json_out):

  (a) search   paper-preset search steps: WRN-40-2, 16 search x 64 validation
               images, M = 556, E = 16, chunks of 256, in-graph loops
               (`loop="scan"`), for both reward paths (`reward="jvp"` and
               `"jacobian"`): stage-1 and stage-k s/step, compile s, the
               compiled step's memory (XLA's memory analysis: arguments +
               temporaries) and the device's peak so far, the projected hours
               of 6 layers x 512 steps and their ratio to the paper's 9
               GPU-hours.
  (b) train    training images/s of WRN-40-2 and WRN-28-10 with the cifar_1
               policy applied on device, batch 128, with and without Batch
               Augmentation x8, in float32 and bfloat16.
  (c) chain    `apply_chain_batch` of a 6-layer policy, vectorized (vmap)
               against sequential (`lax.map` + `lax.switch`), and whether
               their pixels agree.
  (d) rewards  JVP rewards against `vmap(grad)` (Jacobian) rewards for the
               same tangent on device: float32 relative error.

`--tiny` runs every section with small sizes (WRN-10-1, 2 search images,
batch 16, ...) so that it finishes on a 2-core CPU in under two minutes; it
is run by tests/test_accelerator_check.py. The numbers of a --tiny run are
not benchmarks.

Dependencies: jax, flax, optax, numpy (and the package's dm-pix and
ml-collections); no TensorFlow, CLU or data files: images are synthetic, and
the policy is the official cifar_1 file when `--policy` (default: the
`../shared` copy) exists, else the 6-layer uniform DeepTA policy (said in the
output).
"""

import json
import pathlib
import sys
import time
import types

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np
import optax

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))

from deepaa_jax import config as config_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from deepaa_jax import input_pipeline as ip  # pylint: disable=g-import-not-at-top,wrong-import-position
from deepaa_jax import policy as policy_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from deepaa_jax import reward as R  # pylint: disable=g-import-not-at-top,wrong-import-position
from deepaa_jax import search as SE  # pylint: disable=g-import-not-at-top,wrong-import-position
from deepaa_jax import space as S  # pylint: disable=g-import-not-at-top,wrong-import-position
from deepaa_jax import train as train_lib  # pylint: disable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS
flags.DEFINE_bool("tiny", False, "Small sizes: all sections on a CPU in "
                  "< 2 min (a smoke test, not a benchmark).")
flags.DEFINE_list("sections", ["search", "train", "chain", "rewards"],
                  "Sections to run, in order.")
flags.DEFINE_string("policy", None, "Policy file for (b) and (c) (default: "
                    "the official cifar_1 npz if found).")
flags.DEFINE_integer("steps", None, "Timed steps per measurement (after one "
                     "warm-up step); default 3, or 1 with --tiny.")
flags.DEFINE_float("deadline_s", 450, "Skip what is left once this many "
                   "seconds have passed (said in the table).")
flags.DEFINE_string("json_out", None, "Write the results as JSON here.")

PAPER_GPU_HOURS = 9.0  # the paper's CIFAR-10 search cost (Table 4).

# Paper preset (spec §2) and the --tiny sizes.
SIZES = {
    "full": dict(search_model="wrn_40_2_search", num_images=16, val_batch=64,
                 gt_samples=556, g_prefixes=16, chunk_size=256,
                 train_models=("wrn_40_2", "wrn_28_10"), batch=128,
                 ba_copies=8, chain_batch=256, reward_images=256),
    # A 2-conv network ("tiny_cnn") keeps compiles and scan-loop backward
    # passes short on a CPU; every code path is the same.
    "tiny": dict(search_model="tiny_cnn", num_images=1, val_batch=2,
                 gt_samples=4, g_prefixes=1, chunk_size=139,
                 train_models=("tiny_cnn",), batch=8, ba_copies=2,
                 chain_batch=8, reward_images=16),
}


class TinyCNN(nn.Module):
  """Two strided convolutions, BatchNorm (named bn*, as our models do) and a
  dense layer: the --tiny stand-in for the WRNs."""
  num_classes: int = 10
  dtype: type = jnp.float32

  @nn.compact
  def __call__(self, x, *, train):
    x = nn.Conv(8, (3, 3), strides=2, dtype=self.dtype)(x)
    x = nn.BatchNorm(use_running_average=not train, name="bn1",
                     dtype=self.dtype)(x)
    x = nn.relu(nn.Conv(8, (3, 3), strides=4, dtype=self.dtype)(nn.relu(x)))
    return nn.Dense(self.num_classes, dtype=self.dtype)(
        x.reshape(x.shape[0], -1)).astype(jnp.float32)


def _model(name, *, bf16=False):
  if name == "tiny_cnn":
    return TinyCNN(dtype=jnp.bfloat16 if bf16 else jnp.float32)
  return train_lib.build_model(types.SimpleNamespace(name=name),
                               num_classes=10, bf16=bf16)


class Deadline:
  """Skips measurements once `seconds` have passed since construction."""

  def __init__(self, seconds: float):
    self.end = time.perf_counter() + seconds

  def passed(self) -> bool:
    return time.perf_counter() > self.end


def _mib(b) -> str:
  return "n/a" if b is None or b < 0 else f"{b / 2**20:,.0f}"


def _device_peak_bytes():
  """Peak bytes in use on the first device so far (None on the CPU)."""
  try:
    stats = jax.local_devices()[0].memory_stats() or {}
  except Exception:  # pylint: disable=broad-except
    return None
  return stats.get("peak_bytes_in_use")


def _compiled_bytes(compiled):
  """Arguments + outputs + temporaries of a compiled program (XLA)."""
  mem = compiled.memory_analysis()
  if mem is None:
    return None
  return int(sum(getattr(mem, f, 0) or 0 for f in (
      "argument_size_in_bytes", "output_size_in_bytes",
      "temp_size_in_bytes")))


def _time_steps(fn, carry, steps):
  """(first call s, median s of the next `steps` calls); fn(carry) -> carry."""
  t0 = time.perf_counter()
  carry = jax.block_until_ready(fn(carry))
  first = time.perf_counter() - t0
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    carry = jax.block_until_ready(fn(carry))
    times.append(time.perf_counter() - t0)
  return first, float(np.median(times)), carry


def _policy(space):
  path = FLAGS.policy or config_lib.official_policy_path("cifar_1")
  if pathlib.Path(path).is_file():
    loader = (policy_lib.load_policy if path.endswith(".json") else
              policy_lib.load_official_npz)
    return loader(path), pathlib.Path(path).name
  return policy_lib.baseline("deepta", space, num_layers=6), (
      "deepta (6 uniform layers; cifar_1 file not found)")


def _images(n, seed=0):
  rng = np.random.default_rng(seed)
  return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def _search_model(name):
  model = _model(name)
  variables = jax.jit(lambda k: model.init(k, jnp.zeros((1, 32, 32, 3)),
                                           train=False))(jax.random.key(0))
  return SE.make_search_model(model, variables["params"],
                              variables["batch_stats"],
                              mean=ip.CIFAR_SEARCH_MEAN, std=ip.CIFAR_STD)


def section_search(sizes, deadline):
  """(a) Search steps of the paper preset, both reward paths."""
  space = S.cifar_space()
  model = _search_model(sizes["search_model"])
  images, labels = _images(2000), np.arange(2000) % 10
  data = SE.make_search_data(
      ip.Split(images[:1000], labels[:1000]),
      ip.Split(images[1000:], labels[1000:]), 10)
  rows = []
  for method in R.REWARD_METHODS:
    config = SE.default_search_config()
    for k in ("num_images", "val_batch", "gt_samples", "g_prefixes",
              "chunk_size"):
      config[k] = sizes[k]
    config.loop = "scan"
    config.reward = method
    settings = SE.step_settings(config, space)
    per_stage = {}
    for stage, earlier in (("stage 1", jnp.zeros((0, 139))),
                           ("stage k", jnp.full((1, 139), 1 / 139))):
      if deadline.passed():
        rows.append({"reward": method, "stage": stage, "skipped": True})
        continue
      stage1 = earlier.shape[0] == 0
      state = SE.init_layer_state(config, space)
      key = jax.random.key(1)
      t0 = time.perf_counter()
      compiled = SE._full_step_jit.lower(  # pylint: disable=protected-access
          settings, model, data, state, key, earlier, stage1).compile()
      compile_s = time.perf_counter() - t0
      step = [0]

      def one(state, compiled=compiled, earlier=earlier, step=step):
        step[0] += 1
        return compiled(model, data, state, jax.random.key(step[0]),
                        earlier)[0]

      first, steady, _ = _time_steps(one, state, FLAGS.steps)
      per_stage[stage] = steady
      rows.append({"reward": method, "stage": stage, "s_per_step": steady,
                   "compile_s": compile_s, "first_call_s": first,
                   "compiled_bytes": _compiled_bytes(compiled),
                   "device_peak_bytes": _device_peak_bytes()})
    if len(per_stage) == 2:
      hours = 512 * (per_stage["stage 1"] + 5 * per_stage["stage k"]) / 3600
      rows.append({"reward": method, "stage": "6 x 512 steps",
                   "projected_hours": hours,
                   "ratio_to_paper": hours / PAPER_GPU_HOURS})
  print(f"\n(a) search steps: {sizes['search_model']}, S={sizes['num_images']}"
        f" x V={sizes['val_batch']}, M={sizes['gt_samples']}, "
        f"E={sizes['g_prefixes']}, chunk {sizes['chunk_size']}, loop=scan")
  print("| reward | stage | s / step | compile s | compiled MiB | device peak "
        "MiB | projected h (6 x 512) | / paper's 9 GPU-h |")
  print("|---|---|---:|---:|---:|---:|---:|---:|")
  for r in rows:
    if r.get("skipped"):
      print(f"| {r['reward']} | {r['stage']} | skipped (deadline) | | | | | |")
    elif "projected_hours" in r:
      print(f"| {r['reward']} | {r['stage']} | | | | | "
            f"{r['projected_hours']:.2f} | {r['ratio_to_paper']:.2f} |")
    else:
      print(f"| {r['reward']} | {r['stage']} | {r['s_per_step']:.3f} | "
            f"{r['compile_s']:.1f} | {_mib(r['compiled_bytes'])} | "
            f"{_mib(r['device_peak_bytes'])} | | |")
  return rows


def section_train(sizes, deadline):
  """(b) Training images/s with the policy on device, +-BA, f32/bf16."""
  space = S.cifar_space()
  policy, policy_name = _policy(space)
  batch = sizes["batch"]
  rng = np.random.default_rng(0)
  data = {"image": jnp.asarray(_images(batch)),
          "label": jnp.asarray(rng.integers(0, 10, batch), jnp.int32)}
  rows = []
  for name in sizes["train_models"]:
    for copies in (1, sizes["ba_copies"]):
      for bf16 in (False, True):
        if deadline.passed():
          rows.append({"model": name, "copies": copies, "bf16": bf16,
                       "skipped": True})
          continue
        model = _model(name, bf16=bf16)
        tx = optax.sgd(0.1, momentum=0.9, nesterov=True)
        params, stats = train_lib.init_variables(
            model, (32, 32, 3), jax.random.key(0))
        state = train_lib.TrainState(jnp.zeros((), jnp.int32), params, stats,
                                     tx.init(params))
        step_fn = train_lib.make_train_step(
            model, policy, tx, mean=ip.CIFAR_EVAL_MEAN, std=ip.CIFAR_STD,
            ba_copies=copies, random_sign=True)
        key = jax.random.key(1)
        first, steady, _ = _time_steps(
            lambda s, step_fn=step_fn: step_fn(s, data, key)[0], state,
            FLAGS.steps)
        rows.append({"model": name, "copies": copies, "bf16": bf16,
                     "first_call_s": first, "s_per_step": steady,
                     "images_per_s": batch * copies / steady,
                     "device_peak_bytes": _device_peak_bytes()})
  print(f"\n(b) training, batch {batch}, policy {policy_name} on device "
        "(random sign flip), SGD Nesterov")
  print("| model | BA copies | dtype | s / step | augmented images / s | "
        "first call s (compile) |")
  print("|---|---:|---|---:|---:|---:|")
  for r in rows:
    dtype = "bf16" if r["bf16"] else "f32"
    if r.get("skipped"):
      print(f"| {r['model']} | {r['copies']} | {dtype} | skipped (deadline) "
            "| | |")
    else:
      print(f"| {r['model']} | {r['copies']} | {dtype} | "
            f"{r['s_per_step']:.4f} | {r['images_per_s']:,.0f} | "
            f"{r['first_call_s']:.1f} |")
  return rows


def section_chain(sizes, deadline):
  """(c) apply_chain_batch, vectorized against sequential."""
  space = S.cifar_space()
  policy, policy_name = _policy(space)
  n = sizes["chain_batch"]
  images = jnp.asarray(_images(n), jnp.float32)
  idx = policy_lib.sample_indices(jax.random.key(2),
                                  jnp.asarray(policy.probs, jnp.float32), n)
  rows, outs = [], {}
  for method in ("vectorized", "sequential"):
    if deadline.passed():
      rows.append({"method": method, "skipped": True})
      continue
    fn = jax.jit(lambda k, x, i, method=method: S.apply_chain_batch(
        k, x, i, space, method=method))
    key = jax.random.key(3)
    first, steady, _ = _time_steps(lambda c, fn=fn: fn(key, images, idx),
                                   None, FLAGS.steps)
    outs[method] = np.asarray(fn(key, images, idx))
    rows.append({"method": method, "ms_per_batch": 1e3 * steady,
                 "images_per_s": n / steady, "first_call_s": first})
  same = (np.array_equal(outs["vectorized"], outs["sequential"])
          if len(outs) == 2 else None)
  print(f"\n(c) apply_chain_batch: {n} images x {policy.num_layers} layers "
        f"({policy_name}); pixels identical: {same}")
  print("| method | ms / batch | images / s | first call s (compile) |")
  print("|---|---:|---:|---:|")
  for r in rows:
    if r.get("skipped"):
      print(f"| {r['method']} | skipped (deadline) | | |")
    else:
      print(f"| {r['method']} | {r['ms_per_batch']:.2f} | "
            f"{r['images_per_s']:,.0f} | {r['first_call_s']:.1f} |")
  return {"rows": rows, "pixels_identical": same}


def section_rewards(sizes, deadline):
  """(d) JVP rewards against vmap(grad) rewards, float32, on device."""
  if deadline.passed():
    print("\n(d) rewards: skipped (deadline)")
    return {"skipped": True}
  model = _search_model(sizes["search_model"])
  n = sizes["reward_images"]
  images = jnp.asarray(_images(n, seed=4), jnp.float32)[None]
  labels = jnp.asarray(np.arange(n) % 10, jnp.int32)[None]
  # A realistic tangent: u = v - (v.g/|g|^2) g from two real gradient sums.
  half = n // 2
  v = R.group_weighted_grads(model.loss, model.w, model.frozen,
                             images[:, :half], labels[:, :half],
                             jnp.full((1, half), 1.0 / half),
                             chunk_size=sizes["chunk_size"], loop="scan")
  g = R.group_weighted_grads(model.loss, model.w, model.frozen,
                             images[:, half:], labels[:, half:],
                             jnp.full((1, n - half), 1.0 / (n - half)),
                             chunk_size=sizes["chunk_size"], loop="scan")
  u = jax.vmap(R.tangent)(v, g)
  out, times = {}, {}
  for method, fn in (("jvp", R.jvp_rewards), ("jacobian", R.jacobian_rewards)):
    f = jax.jit(lambda i, l, fn=fn: fn(model.loss, model.w, model.frozen, i,
                                       l, u, chunk_size=sizes["chunk_size"]))
    _, steady, _ = _time_steps(lambda c, f=f: f(images, labels), None,
                               FLAGS.steps)
    out[method], times[method] = np.asarray(f(images, labels)), steady
  err = float(np.max(np.abs(out["jvp"] - out["jacobian"])) /
              np.max(np.abs(out["jacobian"])))
  print(f"\n(d) rewards of {n} images ({sizes['search_model']}, chunk "
        f"{sizes['chunk_size']}): JVP {1e3 * times['jvp']:.1f} ms, "
        f"vmap(grad) {1e3 * times['jacobian']:.1f} ms; float32 max relative "
        f"difference {err:.2e}")
  return {"images": n, "jvp_s": times["jvp"], "jacobian_s": times["jacobian"],
          "max_relative_difference": err}


SECTIONS = {"search": section_search, "train": section_train,
            "chain": section_chain, "rewards": section_rewards}


def main(argv):
  del argv
  unknown = [s for s in FLAGS.sections if s not in SECTIONS]
  if unknown:
    raise app.UsageError(f"--sections: unknown {unknown}; valid: "
                         f"{sorted(SECTIONS)}")
  sizes = SIZES["tiny" if FLAGS.tiny else "full"]
  if FLAGS.steps is None:
    FLAGS.steps = 1 if FLAGS.tiny else 3
  t0 = time.perf_counter()
  deadline = Deadline(FLAGS.deadline_s)
  print(f"devices: {jax.devices()}  jax {jax.__version__}  "
        f"{'--tiny (not a benchmark)' if FLAGS.tiny else 'paper sizes'}")
  results = {"device": str(jax.devices()[0]), "device_kind":
             jax.devices()[0].device_kind, "tiny": FLAGS.tiny,
             "jax": jax.__version__, "sizes": {k: v for k, v in sizes.items()}}
  for name in FLAGS.sections:
    results[name] = SECTIONS[name](sizes, deadline)
  results["wall_s"] = time.perf_counter() - t0
  print(f"\nTotal {results['wall_s']:.0f} s on {jax.devices()[0].device_kind}")
  if FLAGS.json_out:
    pathlib.Path(FLAGS.json_out).write_text(json.dumps(results, indent=1,
                                                       default=str))


if __name__ == "__main__":
  app.run(main)
