"""Data-parallel scaling: search-step and train-step throughput vs devices.

  python benchmarks/scaling_bench.py                      # 1, 2, 4, 8 devices
  python benchmarks/scaling_bench.py --devices=1,8 --steps=3

Each device count runs in its own subprocess with
`XLA_FLAGS=--xla_force_host_platform_device_count=N JAX_PLATFORMS=cpu` (the
count is fixed when JAX starts) and times, after compilation and --warmup
steps, the median seconds of --steps steps of

  search   `search.layer_step`, stage 1 (S search images, each with V
           validation images; WRN-10-1-search on 32x32): with N > 1 the data
           parallel step over a mesh of all N devices (`_sharded_step`: the S
           images split over the devices, rewards gathered); with N = 1 both
           the plain one-device step (`mesh=None`, CPU host loop) and the
           sharded step on a 1-device mesh (same code as N > 1);
  train    `train.make_train_step` (WRN-10-1, batch B, a one-layer uniform
           policy over the 139 transforms) with the batch sharded over the N
           devices (N = 1: the plain one-device step, and a 1-device mesh).

"search img/s" counts search images per second (S / step), "train img/s"
augmented training images per second (B / step); "vs 1 dev" is the ratio to
the plain one-device row. Random uint8 images (costs are data-independent).

Forced host devices share the machine's physical cores: on a 2-core CPU
8 devices do not add compute, so the table measures the overhead of the
data-parallel implementation (partitioning, collectives, smaller per-device
batches), not a speed-up. On N accelerators the same code splits the work N
ways.
"""

import json
import os
import subprocess
import sys
import time

from absl import app
from absl import flags

FLAGS = flags.FLAGS
flags.DEFINE_string("devices", "1,2,4,8", "Forced host device counts.")
flags.DEFINE_integer("num_images", 8, "Search images per step S.")
flags.DEFINE_integer("val_batch", 8, "Validation images per search image V.")
flags.DEFINE_integer("batch", 64, "Training batch B.")
flags.DEFINE_integer("steps", 3, "Timed steps (median).")
flags.DEFINE_integer("warmup", 1, "Untimed steps after compilation.")
flags.DEFINE_integer("child", 0, "Internal: run in this process, print JSON.")
flags.DEFINE_string("json_out", None, "Write the table as JSON here.")


def _median_time(step, steps: int, warmup: int):
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  jax.block_until_ready(step())
  compile_s = time.perf_counter() - start
  for _ in range(warmup):
    jax.block_until_ready(step())
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    jax.block_until_ready(step())
    times.append(time.perf_counter() - start)
  return float(np.median(times)), compile_s


def _search_rows(n: int):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from deepaa_jax import input_pipeline as ip  # pylint: disable=g-import-not-at-top
  from deepaa_jax import models  # pylint: disable=g-import-not-at-top
  from deepaa_jax import parallel  # pylint: disable=g-import-not-at-top
  from deepaa_jax import search as SE  # pylint: disable=g-import-not-at-top
  from deepaa_jax import space as S  # pylint: disable=g-import-not-at-top

  space = S.cifar_space()
  model = models.get_model("wrn_10_1_search", num_classes=10)
  variables = jax.jit(lambda k: model.init(k, jnp.zeros((1, 32, 32, 3)),
                                           train=False))(jax.random.key(0))
  search_model = SE.make_search_model(
      model, variables["params"], variables["batch_stats"],
      mean=ip.CIFAR_SEARCH_MEAN, std=ip.CIFAR_STD)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (1000, 32, 32, 3), dtype=np.uint8)
  labels = np.arange(1000) % 10
  data = SE.make_search_data(
      ip.Split(images[:500], labels[:500]),
      ip.Split(images[500:], labels[500:]), 10)
  config = SE.default_search_config()
  config.num_images = FLAGS.num_images
  config.val_batch = FLAGS.val_batch
  config.chunk_size = 256
  earlier = jnp.zeros((0, space.size), jnp.float32)
  variants = [("plain", None)] if n == 1 else []
  variants.append(("mesh", parallel.make_mesh()))
  rows = []
  for name, mesh in variants:
    settings = SE.step_settings(config, space, mesh=mesh)
    model_, data_ = search_model, data
    if mesh is not None:
      model_, data_ = parallel.replicate((search_model, data), mesh)
    box = {"state": SE.init_layer_state(config, space), "i": 0}

    def step(settings=settings, model_=model_, data_=data_, box=box):
      box["i"] += 1
      box["state"], diag = SE.layer_step(
          settings, model_, data_, box["state"],
          jax.random.fold_in(jax.random.key(1), box["i"]), earlier)
      return box["state"].logits, diag["cos_sim"]

    seconds, compile_s = _median_time(step, FLAGS.steps, FLAGS.warmup)
    rows.append({"what": "search stage 1", "devices": n, "variant": name,
                 "loop": settings.loop + (" in shard_map" if mesh else ""),
                 "step_s": seconds, "compile_s": compile_s,
                 "img_per_s": FLAGS.num_images / seconds})
  return rows


def _train_rows(n: int):
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from deepaa_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from deepaa_jax import input_pipeline as ip  # pylint: disable=g-import-not-at-top
  from deepaa_jax import parallel  # pylint: disable=g-import-not-at-top
  from deepaa_jax import policy as policy_lib  # pylint: disable=g-import-not-at-top
  from deepaa_jax import space as S  # pylint: disable=g-import-not-at-top
  from deepaa_jax import train  # pylint: disable=g-import-not-at-top

  config = config_lib.base_config()
  config.model.name = "wrn_10_1"
  config.policy.kind = "deepta"
  config.policy.num_layers = 1
  config.train.warmup_epochs = 0.0
  model = train.build_model(config.model, num_classes=10)
  policy = policy_lib.make_policy(config.policy, S.cifar_space())
  rng = np.random.default_rng(0)
  batch = {"image": rng.integers(0, 256, (FLAGS.batch, 32, 32, 3),
                                 dtype=np.uint8),
           "label": (np.arange(FLAGS.batch) % 10).astype(np.int32)}
  variants = [("plain", None)] if n == 1 else []
  variants.append(("mesh", parallel.make_mesh()))
  rows = []
  for name, mesh in variants:
    state = train.create_train_state(jax.random.key(0), config, model,
                                     (32, 32, 3))
    tx = train.make_optimizer(config.train, state.params, 100)
    train_step = train.make_train_step(model, policy, tx, mean=ip.CIFAR_EVAL_MEAN,
                                       std=ip.CIFAR_STD, mesh=mesh)
    key = jax.random.key(1)
    device_batch = batch
    if mesh is not None:
      state, key = parallel.replicate((state, key), mesh)
      device_batch = parallel.from_process_local(batch, mesh, FLAGS.batch)
    box = {"state": state}

    def step(train_step=train_step, device_batch=device_batch, key=key,
             box=box):
      box["state"], metrics = train_step(box["state"], device_batch, key)
      return metrics["loss"]

    seconds, compile_s = _median_time(step, FLAGS.steps, FLAGS.warmup)
    rows.append({"what": "train step", "devices": n, "variant": name,
                 "loop": "", "step_s": seconds, "compile_s": compile_s,
                 "img_per_s": FLAGS.batch / seconds})
  return rows


def _child(n: int):
  import jax  # pylint: disable=g-import-not-at-top
  assert jax.device_count() == n, (jax.device_count(), n)
  rows = _search_rows(n) + _train_rows(n)
  print("JSON " + json.dumps(rows), flush=True)


def main(argv):
  del argv
  if FLAGS.child:
    _child(FLAGS.child)
    return
  rows = []
  for n in [int(d) for d in FLAGS.devices.split(",")]:
    env = dict(os.environ,
               XLA_FLAGS=f"--xla_force_host_platform_device_count={n}",
               JAX_PLATFORMS="cpu")
    args = [sys.executable, __file__, f"--child={n}"] + [
        f"--{k}={getattr(FLAGS, k)}" for k in
        ("num_images", "val_batch", "batch", "steps", "warmup")]
    out = subprocess.run(args, env=env, capture_output=True, text=True,
                         check=False)
    line = [l for l in out.stdout.splitlines() if l.startswith("JSON ")]
    if out.returncode or not line:
      sys.exit(f"{n} devices failed:\n{out.stderr[-3000:]}")
    rows += json.loads(line[-1][5:])
    print(f"{n} device(s) done", file=sys.stderr, flush=True)
  base = {r["what"]: r["img_per_s"] for r in rows
          if r["devices"] == 1 and r["variant"] == "plain"}
  header = (f"{'workload':15} {'devices':>7} {'variant':7} {'compile s':>9} "
            f"{'step s':>8} {'img/s':>8} {'vs 1 dev':>8}")
  print(f"jax {__import__('jax').__version__}, {os.cpu_count()} CPU cores; "
        f"search S={FLAGS.num_images}, V={FLAGS.val_batch}; train B="
        f"{FLAGS.batch}; median of {FLAGS.steps} steps")
  print(header)
  print("-" * len(header))
  for r in rows:
    r["vs_one_device"] = r["img_per_s"] / base[r["what"]]
    print(f"{r['what']:15} {r['devices']:>7} {r['variant']:7} "
          f"{r['compile_s']:>9.1f} {r['step_s']:>8.3f} {r['img_per_s']:>8.1f} "
          f"{r['vs_one_device']:>7.2f}x")
  if FLAGS.json_out:
    with open(FLAGS.json_out, "w") as f:
      json.dump(rows, f, indent=1)


if __name__ == "__main__":
  app.run(main)
