"""Train-step throughput: no augmentation vs a 6-layer policy vs policy + BA.

  python benchmarks/train_bench.py                          # WRN-10-1, batch 128
  python benchmarks/train_bench.py --model=wrn_28_10 --batch=128 --ba=8

Three settings of the real compiled train step (`train.make_train_step`:
augmentation on device, normalisation, forward/backward in BN training mode,
the official optax chain):

  none       policy "none" (K = 0);
  policy     the official DeepAA policy cifar_1 (K = 6 layers, random sign on);
  policy+BA  the same with Batch Augmentation, M = --ba copies per image.

Peak memory and compile time come from one subprocess per setting (so each
peak is that setting's alone): on CPU the peak resident set size
(`resource.getrusage` ru_maxrss of the whole process: Python, JAX, XLA's
compiler, the data), on an accelerator
`jax.local_devices()[0].memory_stats()["peak_bytes_in_use"]`. Throughput is
then measured in this process with all three steps compiled, one step of each
setting in turn for --steps rounds after --warmup steps each (so load from
other work on a shared machine hits all settings alike), blocking on every
step; the median seconds per step is reported. "img/s" counts augmented images
(B * M per step); "ratio" is each setting's img/s over the "none" setting's.
Uses random uint8 images: the cost of every op is data-independent except
Equalize/AutoContrast histograms, whose cost does not depend on the content.
"""

import json
import subprocess
import sys
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "wrn_10_1", "Model name (train.build_model).")
flags.DEFINE_integer("batch", 128, "Images per step B (before BA copies).")
flags.DEFINE_integer("ba", 8, "Batch Augmentation copies M for policy+BA.")
flags.DEFINE_integer("steps", 5, "Timed steps per setting.")
flags.DEFINE_integer("warmup", 2, "Untimed steps after compilation.")
flags.DEFINE_integer("image_size", 32, "Image side (CIFAR: 32).")
flags.DEFINE_string("policy", "cifar_1", "Official policy for the policy runs.")
flags.DEFINE_bool("bf16", False, "Compute in bfloat16.")
flags.DEFINE_string("only", None, "Internal: run one setting, print JSON.")
flags.DEFINE_string("json_out", None, "Write the table as JSON here.")

SETTINGS = ("none", "policy", "policy+BA")


def build_setting(setting: str):
  """The compiled step, its state and batch for one setting (after 1 step)."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from deepaa_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from deepaa_jax import policy as policy_lib  # pylint: disable=g-import-not-at-top
  from deepaa_jax import space as space_lib  # pylint: disable=g-import-not-at-top
  from deepaa_jax import train  # pylint: disable=g-import-not-at-top

  copies = FLAGS.ba if setting == "policy+BA" else 1
  space = space_lib.cifar_space()
  if setting == "none":
    policy = policy_lib.baseline("none", space)
  else:
    policy = policy_lib.load_official_npz(
        config_lib.official_policy_path(FLAGS.policy))
  model = train.build_model(ml_collections.ConfigDict({"name": FLAGS.model}),
                            num_classes=10, bf16=FLAGS.bf16)
  tc = config_lib.train_config()
  tc.num_epochs, tc.num_steps = 0, 1000
  shape = (FLAGS.image_size, FLAGS.image_size, 3)
  params, stats = train.init_variables(model, shape, jax.random.key(0))
  tx = train.make_optimizer(tc, params, 100)
  state = train.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                           batch_stats=stats, opt_state=tx.init(params))
  step = train.make_train_step(
      model, policy, tx, mean=(0.4914, 0.4822, 0.4465),
      std=(0.2023, 0.1994, 0.2010), ba_copies=copies, random_sign=True)
  rng = np.random.default_rng(0)
  batch = {"image": jax.device_put(rng.integers(
      0, 256, (FLAGS.batch,) + shape, dtype=np.uint8)),
           "label": jax.device_put(rng.integers(0, 10, FLAGS.batch).astype(
               np.int32))}
  key = jax.random.key(1)
  t = time.time()
  state, metrics = step(state, batch, key)
  jax.block_until_ready(metrics)
  compile_s = time.time() - t
  box = {"state": state}

  def run_one():
    box["state"], out = step(box["state"], batch, key)
    jax.block_until_ready(out)

  info = {"setting": setting, "layers": policy.num_layers, "copies": copies,
          "images_per_step": FLAGS.batch * copies, "compile_s": compile_s}
  return run_one, info


def memory_of_setting(setting: str) -> dict:
  """Compile + warm-up steps of one setting; its compile time and peak."""
  run_one, info = build_setting(setting)
  for _ in range(FLAGS.warmup):
    run_one()
  from deepaa_jax import search  # pylint: disable=g-import-not-at-top
  info["peak_memory_bytes"] = search.peak_memory_bytes()
  return info


def main(argv):
  if FLAGS.only:
    print("RESULT " + json.dumps(memory_of_setting(FLAGS.only)))
    return
  del argv
  passthrough = [
      f"--{name}={FLAGS[name].value}" for name in
      ("model", "batch", "ba", "steps", "warmup", "image_size", "policy",
       "bf16")]
  rows = []
  for setting in SETTINGS:
    out = subprocess.run(
        [sys.executable, __file__, f"--only={setting}"] + passthrough,
        check=True, capture_output=True, text=True)
    line = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
    rows.append(json.loads(line[-1][len("RESULT "):]))
  # Timing: all settings in this process, one step of each in turn, so that
  # load from other work on a shared machine hits them alike.
  runners = [build_setting(setting)[0] for setting in SETTINGS]
  for run_one in runners:
    for _ in range(FLAGS.warmup):
      run_one()
  times = [[] for _ in SETTINGS]
  for _ in range(FLAGS.steps):
    for i, run_one in enumerate(runners):
      t = time.time()
      run_one()
      times[i].append(time.time() - t)
  for row, ts in zip(rows, times):
    row["sec_per_step"] = float(np.median(ts))
    row["images_per_s"] = row["images_per_step"] / row["sec_per_step"]
  base = rows[0]["images_per_s"]
  print(f"train_bench: {FLAGS.model}, batch {FLAGS.batch}, "
        f"{FLAGS.image_size}x{FLAGS.image_size}, policy {FLAGS.policy}, "
        f"{'bf16' if FLAGS.bf16 else 'float32'}, device {jax.devices()[0]}, "
        f"JAX {jax.__version__}; median of {FLAGS.steps} steps")
  header = (f"{'setting':<10} {'K':>2} {'M':>2} {'img/step':>8} "
            f"{'s/step':>8} {'img/s':>8} {'ratio':>6} {'compile s':>9} "
            f"{'peak MiB':>8}")
  print(header)
  print("-" * len(header))
  for r in rows:
    r["ratio_vs_none"] = r["images_per_s"] / base
    print(f"{r['setting']:<10} {r['layers']:>2} {r['copies']:>2} "
          f"{r['images_per_step']:>8} {r['sec_per_step']:>8.3f} "
          f"{r['images_per_s']:>8.0f} {r['ratio_vs_none']:>6.2f} "
          f"{r['compile_s']:>9.1f} {r['peak_memory_bytes'] / 2**20:>8.0f}")
  if FLAGS.json_out:
    with open(FLAGS.json_out, "w") as f:
      json.dump(rows, f, indent=1)


if __name__ == "__main__":
  app.run(main)
